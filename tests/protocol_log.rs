//! The protocol log of the real binary: every command and reply line with its session,
//! listener and peer, the certificates of each handshake, and never an AUTH secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;

use common::binary::start_binary;
use common::scripted::{scripted_backend, Script, PLAIN_IR};
use common::*;
use partner_pki::{client_config, PartnerPki};

#[tokio::test]
async fn every_line_and_certificate_is_logged_and_no_secret() {
    let (backend, _t) = scripted_backend(Script::default()).await;
    // The rest of the log at warn (but the line start_binary waits for): the protocol log is
    // written anyway.
    let yaml = format!(
        "log:\n  level: warn,smtp_sidecar::runtime=info\n  protocol_log: true\n{}",
        config_yaml(backend, "starttls", "")
    );
    let sidecar = start_binary(&yaml);
    let mut c = Client::starttls_session(sidecar.addr("inbound").unwrap()).await;
    let auth = format!("AUTH PLAIN {PLAIN_IR}");
    assert!(c.cmd(&auth).await.starts_with("235 "));
    assert_eq!(
        c.cmd("AUTH LOGIN").await,
        "503 5.5.1 Already authenticated\r\n"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(c.closed().await);
    let log = sidecar.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("smtp_sidecar::protocol"))
        .collect();
    let dialogue: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split("smtp_sidecar::protocol: ").nth(1))
        .map(|rest| rest.split(" session=").next().unwrap())
        .collect();
    assert_eq!(
        dialogue,
        [
            "> 220 mx.test ESMTP",
            "< EHLO client.test",
            "> 250-mx.test",
            "> 250-PIPELINING",
            "> 250-8BITMIME",
            "> 250-DSN",
            "> 250-SIZE 10000000",
            "> 250 STARTTLS",
            "< STARTTLS",
            "> 220 2.0.0 Ready to start TLS",
            "TLS established",
            "certificate",
            "no remote certificate",
            "< EHLO client.test",
            "> 250-mx.test",
            "> 250-PIPELINING",
            "> 250-8BITMIME",
            "> 250-DSN",
            "> 250-AUTH PLAIN LOGIN",
            "> 250 SIZE 10000000",
            "< AUTH PLAIN ****",
            "> 235 2.7.0 Authentication successful",
            "< AUTH LOGIN",
            "> 503 5.5.1 Already authenticated",
            "< QUIT",
            "> 221 2.0.0 Bye",
        ],
        "{log}"
    );
    assert!(
        !log.contains(PLAIN_IR),
        "the AUTH secret was logged:\n{log}"
    );
    // Every line names its session, listener and peer.
    for l in &lines {
        assert!(
            l.contains(" session=1 listener=inbound peer=127.0.0.1:"),
            "{l}"
        );
    }
    let cert = lines.iter().find(|l| l.contains(" certificate ")).unwrap();
    for field in [
        "side=\"local\"",
        "subject=\"CN=mx.test\"",
        "issuer=\"CN=mx.test\"",
        "sans=mx.test",
    ] {
        assert!(cert.contains(field), "{field} missing: {cert}");
    }
    let sha1 = cert
        .split(" sha1=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(
        sha1.len() == 40 && sha1.bytes().all(|b| b.is_ascii_hexdigit()),
        "{cert}"
    );
    let tls = lines
        .iter()
        .find(|l| l.contains("TLS established"))
        .unwrap();
    assert!(tls.contains("version=\"TLSv1.3\""), "{tls}");
}

/// With a client certificate, the handshake's lines name both certificates: ours and the
/// partner's, with the fields of Exchange's verbose log.
#[tokio::test]
async fn the_client_certificate_is_logged_with_its_fields() {
    let pki = PartnerPki::new();
    let (backend, _rec) = recording_backend().await;
    let yaml = format!(
        "log:\n  level: warn,smtp_sidecar::runtime=info\n  protocol_log: true\n{}{}",
        pki.trust_yaml(),
        config_yaml(backend, "starttls", "      client_certificates: request\n")
    );
    let sidecar = start_binary(&yaml);
    let mut c = Client::connect(sidecar.addr("inbound").unwrap()).await;
    c.reply().await;
    c.cmd("EHLO partner.test").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let (config, _) = client_config(Some(&pki.partner));
    let mut c = c.try_upgrade(config).await.expect("handshake");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(c.closed().await);
    let log = sidecar.log();
    let remote = log
        .lines()
        .find(|l| l.contains(" certificate ") && l.contains("side=\"remote\""))
        .unwrap_or_else(|| panic!("no remote certificate line:\n{log}"));
    let partner = &pki.partner;
    let leaf = smtp_sidecar::tls::CertInfo::from_der(&partner.chain[0]).unwrap();
    for field in [
        format!("subject={:?}", leaf.subject),
        format!("issuer={:?}", leaf.issuer),
        format!("serial={}", leaf.serial),
        format!("sha1={}", leaf.sha1),
        format!("sans={}", leaf.sans.join(",")),
        format!("not_before={}", leaf.not_before_rfc3339()),
        format!("not_after={}", leaf.not_after_rfc3339()),
    ] {
        assert!(remote.contains(&field), "{field} missing: {remote}");
    }
    assert!(
        log.contains("side=\"local\" subject=\"CN=mx.test\""),
        "{log}"
    );
}

/// Under `client_certificates: require` a refused certificate is logged too: rustls keeps
/// none of a failed handshake, the sidecar does (every certificate received is in the
/// protocol log). A client with none is logged as such.
#[tokio::test]
async fn a_refused_client_certificate_is_logged() {
    let pki = PartnerPki::new();
    let (backend, _rec) = recording_backend().await;
    let yaml = format!(
        "log:\n  level: warn,smtp_sidecar::runtime=info\n  protocol_log: true\n{}{}",
        pki.trust_yaml(),
        config_yaml(backend, "starttls", "      client_certificates: require\n")
    );
    let sidecar = start_binary(&yaml);
    for identity in [Some(&pki.expired), None] {
        let mut c = Client::connect(sidecar.addr("inbound").unwrap()).await;
        c.reply().await;
        c.cmd("EHLO partner.test").await;
        assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
        let (config, _) = client_config(identity);
        // TLS 1.3: the client's side completes; the server's alert comes after.
        if let Ok(mut c) = c.try_upgrade(config).await {
            c.send(b"QUIT\r\n").await;
            assert!(c.closed().await);
        }
    }
    sidecar.wait_log("side=\"remote\"", 1).await;
    sidecar.wait_log("no remote certificate", 1).await;
    let log = sidecar.log();
    let remote: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" certificate ") && l.contains("side=\"remote\""))
        .collect();
    assert_eq!(remote.len(), 1, "{log}");
    let leaf = smtp_sidecar::tls::CertInfo::from_der(&pki.expired.chain[0]).unwrap();
    for field in [
        format!("subject={:?}", leaf.subject),
        format!("serial={}", leaf.serial),
        format!("sha1={}", leaf.sha1),
    ] {
        assert!(remote[0].contains(&field), "{field} missing: {}", remote[0]);
    }
    assert!(log.contains("no remote certificate"), "{log}");
}

/// `log.protocol_log` turned on by a reload, with the rest of the log at warn: the next
/// session's lines are written (the log's filter lets them through from the start; the
/// configuration in force decides).
#[tokio::test]
async fn a_reload_turns_the_protocol_log_on() {
    let (backend, _t) = scripted_backend(Script::default()).await;
    let level = "log:\n  level: warn,smtp_sidecar::runtime=info\n";
    let rest = config_yaml(backend, "starttls", "");
    let sidecar = start_binary(&format!("{level}  protocol_log: false\n{rest}"));
    let quit = |c: Client| async move {
        let mut c = c;
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
        assert!(c.closed().await);
    };
    let c = Client::starttls_session(sidecar.addr("inbound").unwrap()).await;
    quit(c).await;

    let config = sidecar
        .config()
        .replace("protocol_log: false", "protocol_log: true");
    std::fs::write(sidecar.config_path(), config).unwrap();
    sidecar.signal("HUP");
    sidecar.wait_log("configuration reloaded", 1).await;
    // Lines are written in order: none of the first session's came before this one.
    assert!(!sidecar.log().contains("smtp_sidecar::protocol"));
    let c = Client::starttls_session(sidecar.addr("inbound").unwrap()).await;
    quit(c).await;
    sidecar.wait_log("< QUIT", 1).await;
    let log = sidecar.log();
    for line in [
        "> 220 mx.test ESMTP",
        "< EHLO client.test",
        "TLS established",
    ] {
        assert!(log.contains(line), "{line:?} not in the log:\n{log}");
    }
}

/// The certificate logged as ours is the one the handshake served: with an ECDSA and an RSA
/// certificate for the same name, a client that knows RSA signatures only gets the RSA one,
/// and the log names it, not the ECDSA certificate a client with SNI alone would get.
#[tokio::test]
async fn the_certificate_logged_is_the_one_the_handshake_served() {
    use common::pki::{sha256, KeyFormat, Pki, Spec};
    use rustls::SignatureScheme as S;
    use std::sync::Arc;
    let pki = Pki::new("served");
    let ecdsa = pki.leaf("ecdsa", Spec::ca(&["mx.test"]).years(2024, 2090));
    let rsa = pki.leaf(
        "rsa",
        Spec::ca(&["mx.test"])
            .years(2021, 2090)
            .key(KeyFormat::RsaPkcs1),
    );
    let (backend, _rec) = recording_backend().await;
    let yaml = format!(
        "log:\n  level: warn,smtp_sidecar::runtime=info\n  protocol_log: true\n\
         certificates:\n{}{}{}",
        ecdsa.yaml_entry(),
        rsa.yaml_entry(),
        config_yaml(backend, "implicit", "")
    );
    let sidecar = start_binary(&yaml);
    let addr = sidecar.addr("inbound").unwrap();
    let rsa_only = [
        S::RSA_PSS_SHA256,
        S::RSA_PSS_SHA384,
        S::RSA_PSS_SHA512,
        S::RSA_PKCS1_SHA256,
        S::RSA_PKCS1_SHA384,
        S::RSA_PKCS1_SHA512,
    ];
    for (schemes, want) in [(None, &ecdsa), (Some(rsa_only.to_vec()), &rsa)] {
        let (config, seen) = showing_client_config(schemes.clone());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let tls = tls_connect_with(Arc::new(config), tcp).await.unwrap();
        // The greeting: the handshake is over on the sidecar's side too, and logged.
        let mut c = Client::from_io(tls, local);
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
        let served = seen.lock().unwrap().take().unwrap();
        assert_eq!(sha256(&served), sha256(&want.der), "{schemes:?}");
    }
    let mut logged = Vec::new();
    for _ in 0..100 {
        let log = sidecar.log();
        logged = log
            .lines()
            .filter(|l| l.contains(" certificate ") && l.contains("side=\"local\""))
            .map(|l| {
                l.split(" sha1=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        if logged.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        logged,
        [ecdsa.info().sha1, rsa.info().sha1],
        "{}",
        sidecar.log()
    );
}
