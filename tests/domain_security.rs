//! Client certificates and Domain Security, end to end: the real listener on 127.0.0.1 with
//! real TLS (rustls clients presenting certificates of a partner PKI made with rcgen), a
//! recording backend, exact reply lines and exact counter values after each session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use partner_pki::{client_config, Identity, PartnerPki};
use smtp_sidecar::runtime::Running;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const FROM_BANK: &str = "MAIL FROM:<alice@woodgrovebank.com>";

struct Sidecar {
    running: Running,
    addr: SocketAddr,
    backend: Recorder,
    implicit: bool,
}

async fn sidecar(pki: &PartnerPki, policy: &str, received_header: bool) -> Sidecar {
    sidecar_with(pki, "starttls", policy, received_header).await
}

/// A sidecar whose listener's `tls` is `tls` (`starttls` or `implicit`).
async fn sidecar_with(pki: &PartnerPki, tls: &str, policy: &str, received_header: bool) -> Sidecar {
    let (backend_addr, backend) = recording_backend().await;
    let mut yaml = pki.trust_yaml() + &config_yaml(backend_addr, tls, policy);
    if received_header {
        yaml = yaml.replace("received_header: false", "received_header: true");
    }
    let running = start(&yaml).await;
    let addr = running.addr("inbound").unwrap();
    Sidecar {
        running,
        addr,
        backend,
        implicit: tls == "implicit",
    }
}

impl Sidecar {
    /// Every `smtp_sidecar_policy_rejections_total` and `domain_secure_messages_received`
    /// series with a value, as exposed on /metrics.
    fn counters(&self) -> Vec<String> {
        self.running
            .metrics
            .render()
            .lines()
            .filter(|l| {
                (l.starts_with("smtp_sidecar_policy_rejections_total{")
                    || l.starts_with("smtp_sidecar_domain_secure_messages_received_total{"))
                    && !l.ends_with(" 0")
            })
            .map(str::to_owned)
            .collect()
    }

    fn handshake_errors(&self) -> u64 {
        self.running
            .metrics
            .tls_handshakes_total
            .with_label_values(&["inbound", "server", "error", ""])
            .get()
    }
}

/// Greeting, EHLO, STARTTLS, a handshake presenting `identity`, EHLO again.
async fn mutual_tls(addr: SocketAddr, identity: Option<&Identity>) -> (Client, bool) {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.contains("250 STARTTLS\r\n"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let (config, asked) = client_config(identity);
    let mut c = c.try_upgrade(config).await.expect("handshake");
    assert!(c
        .cmd("EHLO client.test")
        .await
        .starts_with("250-mx.test\r\n"));
    (c, asked.was_asked())
}

/// A whole message after MAIL was accepted; returns the final reply.
async fn deliver(c: &mut Client) -> String {
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.cmd("Subject: hi\r\n\r\nhello\r\n.").await
}

#[tokio::test]
async fn none_sends_no_certificate_request() {
    let pki = PartnerPki::new();
    let s = sidecar(&pki, "", false).await;
    let (mut c, asked) = mutual_tls(s.addr, Some(&pki.partner)).await;
    assert!(
        !asked,
        "client_certificates: none must not send a CertificateRequest"
    );
    // Without a certificate nothing is domain-secure, and nothing is refused either: no
    // domain is listed.
    assert_eq!(c.cmd(FROM_BANK).await, "250 2.1.0 Ok\r\n");
    assert!(deliver(&mut c).await.starts_with("250 2.0.0 Ok"));
    assert_eq!(s.counters(), Vec::<String>::new());
}

#[tokio::test]
async fn request_asks_hints_the_partner_ca_and_lets_every_client_in() {
    let pki = PartnerPki::new();
    let policy = "      client_certificates: request\n";
    let s = sidecar(&pki, policy, false).await;
    for identity in [
        None,
        Some(&pki.partner),
        Some(&pki.expired),
        Some(&pki.revoked),
        Some(&pki.untrusted),
    ] {
        let (mut c, asked) = mutual_tls(s.addr, identity).await;
        assert!(asked, "request sends a CertificateRequest");
        assert_eq!(
            c.cmd("MAIL FROM:<a@example.test>").await,
            "250 2.1.0 Ok\r\n"
        );
        assert!(deliver(&mut c).await.starts_with("250 2.0.0 Ok"));
    }
    assert_eq!(s.backend.messages().len(), 5);
    assert_eq!(s.handshake_errors(), 0);
}

#[tokio::test]
async fn request_hints_only_the_configured_ca() {
    let pki = PartnerPki::new();
    let s = sidecar(&pki, "      client_certificates: request\n", false).await;
    let mut c = Client::connect(s.addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("STARTTLS").await;
    let (config, asked) = client_config(None);
    let _c = c.try_upgrade(config).await.unwrap();
    let hints = asked.hints.lock().unwrap().clone();
    assert_eq!(hints.len(), 1, "the root of ca_files only");
    let hint = String::from_utf8_lossy(&hints[0]).into_owned();
    assert!(hint.contains("Woodgrove Root CA"), "{hint}");
}

/// Greeting, EHLO and STARTTLS by hand, on a plain socket ready for the handshake.
async fn plain_until_starttls(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut plain = BufReader::new(tcp);
    let mut line = String::new();
    plain.read_line(&mut line).await.unwrap();
    plain.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
    loop {
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        if line.starts_with("250 ") {
            break;
        }
    }
    plain.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    line.clear();
    plain.read_line(&mut line).await.unwrap();
    assert_eq!(line, "220 2.0.0 Ready to start TLS\r\n");
    assert!(plain.buffer().is_empty());
    plain.into_inner()
}

/// STARTTLS, then a handshake that the server is expected to refuse: returns the error the
/// client gets (in TLS 1.3 the alert arrives after the client's Finished, so it surfaces on
/// the first read).
async fn refused_handshake(addr: SocketAddr, identity: Option<&Identity>) -> String {
    let tcp = plain_until_starttls(addr).await;
    let (config, _) = client_config(identity);
    let mut tls = match tls_connect_with(config, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let _ = tls.write_all(b"EHLO c\r\n").await;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(T, tls.read(&mut buf)).await.unwrap() {
        Ok(0) => "closed without an alert".to_owned(),
        Ok(n) => panic!(
            "the session went on: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn require_refuses_the_handshake_without_a_valid_certificate() {
    let pki = PartnerPki::new();
    let s = sidecar(&pki, "      client_certificates: require\n", false).await;
    for (identity, alert) in [
        (None, "CertificateRequired"),
        (Some(&pki.expired), "CertificateExpired"),
        (Some(&pki.revoked), "CertificateRevoked"),
        (Some(&pki.untrusted), "UnknownCA"),
        (Some(&pki.server_only), "UnsupportedCertificate"),
    ] {
        let error = refused_handshake(s.addr, identity).await;
        assert!(
            error.contains("received fatal alert") && error.contains(alert),
            "{alert}: {error}"
        );
    }
    // Counted by the server's task once the alert is sent, maybe after the client read it.
    eventually(|| s.handshake_errors() == 5, "5 handshake errors counted").await;
    // The partner's own certificate passes and its mail is domain-secure only where listed.
    let (mut c, _) = mutual_tls(s.addr, Some(&pki.partner)).await;
    assert_eq!(c.cmd(FROM_BANK).await, "250 2.1.0 Ok\r\n");
    assert!(deliver(&mut c).await.starts_with("250 2.0.0 Ok"));
    assert_eq!(s.counters(), Vec::<String>::new());
}

/// Every way a listed sender can fall short, on one sidecar with `extra` policy lines:
/// returns the reply to MAIL FROM for each.
async fn each_failure(s: &Sidecar, pki: &PartnerPki) -> Vec<String> {
    let mut replies = Vec::new();
    // No TLS at all.
    let mut c = Client::connect(s.addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    replies.push(c.cmd(FROM_BANK).await);
    // TLS, no client certificate; one that did not verify; one for another domain.
    for identity in [None, Some(&pki.expired), Some(&pki.other_domain)] {
        let (mut c, _) = mutual_tls(s.addr, identity).await;
        let reply = c.cmd(FROM_BANK).await;
        if reply.starts_with("250") {
            // Audit mode: the message goes through.
            assert!(deliver(&mut c).await.starts_with("250 2.0.0 Ok"));
        } else {
            // The session goes on: another sender is judged on its own.
            assert_eq!(
                c.cmd("MAIL FROM:<carol@example.test>").await,
                "250 2.1.0 Ok\r\n"
            );
        }
        replies.push(reply);
    }
    replies
}

fn expected_replies(code: &str) -> Vec<String> {
    [
        "no TLS",
        "no client certificate",
        "client certificate did not verify (expired)",
        "client certificate not valid for woodgrovebank.com",
    ]
    .iter()
    .map(|what| {
        format!(
            "{code} Domain Security: mail from woodgrovebank.com requires mutual TLS; {what}\r\n"
        )
    })
    .collect()
}

fn rejections(enforced: &str) -> Vec<String> {
    let mut lines: Vec<String> = [
        "domain_secure_certificate_unverified",
        "domain_secure_name_mismatch",
        "domain_secure_no_client_certificate",
        "domain_secure_no_tls",
    ]
    .iter()
    .map(|reason| {
        format!(
            "smtp_sidecar_policy_rejections_total{{enforced=\"{enforced}\",listener=\"inbound\",\
             reason=\"{reason}\"}} 1"
        )
    })
    .collect();
    lines.insert(
        0,
        "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",\
         listener=\"inbound\"} 1"
            .to_owned(),
    );
    lines
}

async fn domain_security(on_failure: &str, enforce: bool) -> (Sidecar, Vec<String>) {
    let pki = PartnerPki::new();
    let policy = format!(
        "      client_certificates: request\n      domain_secure: [WoodgroveBank.com]\n      \
         on_failure: {on_failure}\n      enforce: {enforce}\n"
    );
    let s = sidecar(&pki, &policy, false).await;
    let replies = each_failure(&s, &pki).await;
    // The partner itself, properly configured: accepted and counted once delivered.
    let (mut c, _) = mutual_tls(s.addr, Some(&pki.partner)).await;
    assert_eq!(c.cmd(FROM_BANK).await, "250 2.1.0 Ok\r\n");
    assert!(deliver(&mut c).await.starts_with("250 2.0.0 Ok"));
    (s, replies)
}

#[tokio::test]
async fn domain_security_defer() {
    let (s, replies) = domain_security("defer", true).await;
    assert_eq!(replies, expected_replies("450 4.7.1"));
    assert_eq!(s.counters(), rejections("true"));
    assert_eq!(s.backend.messages().len(), 1, "only the partner's message");
}

#[tokio::test]
async fn domain_security_reject() {
    let (s, replies) = domain_security("reject", true).await;
    assert_eq!(replies, expected_replies("550 5.7.1"));
    assert_eq!(s.counters(), rejections("true"));
    assert_eq!(s.backend.messages().len(), 1);
}

#[tokio::test]
async fn domain_security_audit_lets_mail_through_uncounted() {
    let (s, replies) = domain_security("reject", false).await;
    assert_eq!(replies, vec!["250 2.1.0 Ok\r\n".to_owned(); 4]);
    // Each would-be refusal counted with enforced="false"; only the partner's own message
    // is domain-secure.
    assert_eq!(s.counters(), rejections("false"));
    // The plaintext MAIL went no further (no RCPT in that session); the three TLS ones and
    // the partner's were delivered.
    assert_eq!(s.backend.messages().len(), 4);
}

#[tokio::test]
async fn revoked_and_untrusted_are_named_in_the_refusal() {
    let pki = PartnerPki::new();
    let policy = "      client_certificates: request\n      domain_secure: [woodgrovebank.com]\n";
    let s = sidecar(&pki, policy, false).await;
    for (identity, why) in [
        (&pki.revoked, "revoked"),
        (&pki.untrusted, "untrusted issuer"),
        (&pki.server_only, "not for client authentication"),
    ] {
        let (mut c, _) = mutual_tls(s.addr, Some(identity)).await;
        assert_eq!(
            c.cmd(FROM_BANK).await,
            format!(
                "450 4.7.1 Domain Security: mail from woodgrovebank.com requires mutual TLS; \
                 client certificate did not verify ({why})\r\n"
            )
        );
    }
}

#[tokio::test]
async fn received_header_names_the_verified_certificate() {
    let pki = PartnerPki::new();
    let policy = "      client_certificates: request\n      domain_secure: [woodgrovebank.com]\n";
    let s = sidecar(&pki, policy, true).await;
    for identity in [&pki.partner, &pki.expired] {
        let (mut c, _) = mutual_tls(s.addr, Some(identity)).await;
        assert_eq!(
            c.cmd("MAIL FROM:<a@example.test>").await,
            "250 2.1.0 Ok\r\n"
        );
        assert!(deliver(&mut c).await.starts_with("250 2.0.0 Ok"));
    }
    let messages = s.backend.messages();
    let verified = String::from_utf8_lossy(&messages[0]).into_owned();
    let header = format!(
        "\r\n\t(client certificate verified: subject \"{}\"\r\n\tissuer \"{}\");\r\n",
        pki.partner.subject, pki.partner.issuer
    );
    assert!(verified.contains(&header), "{verified}");
    let expired = String::from_utf8_lossy(&messages[1]).into_owned();
    assert!(!expired.contains("client certificate"), "{expired}");
}

#[tokio::test]
async fn check_prints_the_trust_and_the_crl() {
    let pki = PartnerPki::new();
    let yaml = format!(
        "hostname: mx.test\nstate_dir: {}\n{}listeners:\n  - name: inbound\n    mode: terminate\n    \
         listen: 127.0.0.1:2525\n    backend: {{servers: [\"127.0.0.1:2526\"]}}\n    policy:\n      \
         client_certificates: require\n      domain_secure: [woodgrovebank.com]\n",
        pki.dir.0.display(),
        pki.trust_yaml()
    )
    .replace(
        &format!("[\"{}\"]\n", pki.crl_pem.display()),
        &format!(
            "[\"{}\", \"{}\"]\n",
            pki.crl_pem.display(),
            pki.crl_der.display()
        ),
    );
    let file = pki.dir.0.join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("trust: 1 anchors\n  system roots: off\n"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "  ca file {}: 1 anchors\n",
        pki.root_file.display()
    )));
    for crl in [&pki.crl_pem, &pki.crl_der] {
        assert!(
            stdout.contains(&format!(
                "  crl {}: issuer CN=Woodgrove Issuing CA, O=Woodgrove Bank, 1 revoked, next \
                 update 2089-06-01T00:00:00Z\n",
                crl.display()
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains(
        "client_certificates: require, domain_secure: [woodgrovebank.com], on_failure: defer, \
         enforce: true"
    ));

    // A missing CA file and a CRL that is not one fail check, named by key path.
    std::fs::write(pki.dir.0.join("bad.crl"), "not a crl").unwrap();
    let broken = format!(
        "trust:\n  system_roots: false\n  ca_files: [\"{0}/missing.pem\"]\n  crl_files: [\"{0}/bad.crl\"]\n{1}",
        pki.dir.0.display(),
        config_yaml("127.0.0.1:2526".parse().unwrap(), "starttls", "")
    );
    std::fs::write(&file, broken).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("trust.ca_files[0]: "), "{stderr}");
    assert!(stderr.contains("missing.pem: cannot read"), "{stderr}");
    assert!(stderr.contains("trust.crl_files[0]: "), "{stderr}");
}

#[tokio::test]
async fn a_resumed_session_keeps_its_verified_certificate() {
    let pki = PartnerPki::new();
    for mode in ["request", "require"] {
        let policy = format!(
            "      client_certificates: {mode}\n      domain_secure: [woodgrovebank.com]\n"
        );
        let s = sidecar(&pki, &policy, false).await;
        // One client configuration for both sessions: its session cache lets the second
        // resume the first.
        let (config, _) = client_config(Some(&pki.partner));
        for round in 0..2 {
            let tcp = plain_until_starttls(s.addr).await;
            let tls = tls_connect_with(Arc::clone(&config), tcp).await.unwrap();
            let kind = tls.get_ref().1.handshake_kind();
            let want = if round == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "{mode} {round}");
            let mut tls = BufReader::new(tls);
            let mut say = async |line: &str| {
                tls.get_mut()
                    .write_all(format!("{line}\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut all = String::new();
                loop {
                    let mut reply = String::new();
                    tls.read_line(&mut reply).await.unwrap();
                    all.push_str(&reply);
                    if reply.as_bytes().get(3) != Some(&b'-') {
                        return all;
                    }
                }
            };
            say("EHLO client.test").await;
            assert_eq!(say(FROM_BANK).await, "250 2.1.0 Ok\r\n", "{mode} {round}");
            assert_eq!(say("RCPT TO:<bob@example.test>").await, "250 2.1.5 Ok\r\n");
            assert!(say("DATA").await.starts_with("354 "));
            assert!(say("hi\r\n.").await.starts_with("250 2.0.0 Ok"));
            say("QUIT").await;
        }
        let resumed = s.running.metrics.render();
        assert!(
            resumed.contains(
                "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",\
                 listener=\"inbound\"} 2"
            ),
            "{resumed}"
        );
    }
}

/// Under `require`, a resumed session carries the chain its first handshake verified,
/// checked again when it resumes: a certificate that has expired since is refused as a full
/// handshake with it would be (the connection closed right after the handshake, counted as a
/// failed one), not served for as long as its ticket lasts. On a STARTTLS listener, and on an
/// implicit-TLS one, where the greeting is not sent with the handshake (TLS 1.3 half-RTT data)
/// since the session may yet be refused: the refused client reads nothing at all.
#[tokio::test]
async fn a_resumed_session_whose_certificate_expired_since_is_refused_under_require() {
    let pki = PartnerPki::new();
    let policy = "      client_certificates: require\n";
    let starttls = sidecar(&pki, policy, false).await;
    let implicit = sidecar_with(&pki, "implicit", policy, false).await;
    // A client configuration (and its session cache) for each listener.
    let configs = [0, 1].map(|_| client_config(Some(&pki.expiring)).0);
    let handshake = async |s: &Sidecar| {
        let tcp = match s.implicit {
            true => TcpStream::connect(s.addr).await.unwrap(),
            false => plain_until_starttls(s.addr).await,
        };
        let config = Arc::clone(&configs[usize::from(s.implicit)]);
        tls_connect_with(config, tcp).await.unwrap()
    };
    for s in [&starttls, &implicit] {
        let tls = handshake(s).await;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        let mut tls = BufReader::new(tls);
        if s.implicit {
            let mut greeting = String::new();
            tls.read_line(&mut greeting).await.unwrap();
            assert_eq!(greeting, "220 mx.test ESMTP\r\n");
        }
        tls.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
        let mut line = String::new();
        tls.read_line(&mut line).await.unwrap();
        assert_eq!(
            line, "250-mx.test\r\n",
            "served while the certificate is valid"
        );
    }

    let wait = pki.expiring_at.duration_since(std::time::SystemTime::now());
    tokio::time::sleep(wait.unwrap_or_default() + Duration::from_secs(1)).await;
    for s in [&starttls, &implicit] {
        let errors = s.handshake_errors();
        let mut tls = handshake(s).await;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        let _ = tls.write_all(b"EHLO c\r\n").await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(T, tls.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("served: {:?}", String::from_utf8_lossy(&buf[..n])),
        }
        eventually(|| s.handshake_errors() == errors + 1, "the refusal counted").await;
    }
}
