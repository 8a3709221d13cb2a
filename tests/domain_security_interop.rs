//! Domain Security with a real partner MTA's TLS stack: `openssl s_client -starttls smtp
//! -cert/-key` presenting certificates of the rcgen partner PKI to the real binary, the
//! counters scraped from its /metrics, the refusal reasons read from its log. A missing tool
//! is a failure naming its Debian package, never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::binary::{start_binary, Binary};
use common::process::free_port;
use common::*;
use partner_pki::{Identity, PartnerPki};

fn tool(name: &str, package: &str) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: apt-get install {package}"));
    Command::new(found)
}

/// `openssl s_client -starttls smtp` presenting `identity`, driven line by line: each line
/// is written once the reply to the previous one arrived; stops at the first reply that
/// does not start with the expected code. Returns every reply line received.
fn s_client(
    addr: SocketAddr,
    identity: &Identity,
    pki: &PartnerPki,
    script: &[(&str, &str)],
) -> String {
    let mut child = tool("openssl", "openssl")
        .args(["s_client", "-starttls", "smtp", "-crlf", "-quiet", "-brief"])
        .args(["-connect", &addr.to_string(), "-name", "partner.test"])
        .arg("-cert")
        .arg(&identity.cert_file)
        .arg("-key")
        .arg(&identity.key_file)
        .arg("-cert_chain")
        .arg(&pki.intermediate_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let mut stdin = child.stdin.take().unwrap();
    for (send, code) in script {
        if stdin
            .write_all(send.as_bytes())
            .and_then(|()| stdin.flush())
            .is_err()
        {
            break;
        }
        let mut last = String::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
            out.push_str(&line);
            out.push('\n');
            last = line;
            if last.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        if !last.starts_with(code) {
            break;
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    out
}

/// The binary's log once it contains `wanted` (5 s at most).
fn wait_for_log(sc: &Binary, wanted: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = sc.log();
        if log.contains(wanted) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET /metrics over plain HTTP/1.0.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Scrape until `series` has `value` (5 s at most): the binary counts an event just after
/// writing the reply that the client has already read.
fn scrape_until(port: u16, series: &str, value: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(port);
        if metric(&body, series).as_deref() == Some(value) || std::time::Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(body: &str, series: &str) -> Option<String> {
    body.lines()
        .find(|l| l.starts_with(series))
        .map(|l| l[series.len()..].trim().to_owned())
}

fn sidecar(pki: &PartnerPki, backend: SocketAddr, policy: &str, metrics: u16) -> Binary {
    sidecar_trusting(&pki.trust_yaml(), backend, policy, metrics)
}

fn sidecar_trusting(trust: &str, backend: SocketAddr, policy: &str, metrics: u16) -> Binary {
    let yaml = format!(
        "metrics:\n  listen: 127.0.0.1:{metrics}\n{}{}",
        trust,
        config_yaml(backend, "starttls", policy)
            .replace("received_header: false", "received_header: true")
    );
    start_binary(&yaml)
}

const MESSAGE: [(&str, &str); 5] = [
    ("EHLO partner.test\n", "250"),
    ("MAIL FROM:<alice@woodgrovebank.com>\n", "250"),
    ("RCPT TO:<bob@example.test>\n", "250"),
    ("DATA\n", "354"),
    ("Subject: domain secure\n\nhello\n.\n", "250"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_partner_with_its_certificate_is_domain_secure() {
    let pki = PartnerPki::new();
    let (backend, rec) = recording_backend().await;
    let metrics = free_port();
    let policy =
        "      client_certificates: request\n      domain_secure: [woodgrovebank.com]\n      \
                  on_failure: reject\n";
    let sc = sidecar(&pki, backend, policy, metrics);
    let addr = sc.addr("inbound").unwrap();

    let out = tokio::task::block_in_place(|| s_client(addr, &pki.partner, &pki, &MESSAGE));
    assert!(out.contains("\n250 2.1.0 Ok\n"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
    let messages = rec.messages();
    assert_eq!(messages.len(), 1);
    let message = String::from_utf8_lossy(&messages[0]).into_owned();
    assert!(
        message.contains(&format!(
            "(client certificate verified: subject \"{}\"\r\n\tissuer \"{}\")",
            pki.partner.subject, pki.partner.issuer
        )),
        "{message}"
    );

    // The same partner with its expired certificate: refused, the log says why.
    let out = tokio::task::block_in_place(|| s_client(addr, &pki.expired, &pki, &MESSAGE));
    assert!(
        out.contains(
            "550 5.7.1 Domain Security: mail from woodgrovebank.com requires mutual TLS; \
             client certificate did not verify (expired)\n"
        ),
        "{out}"
    );
    let unverified = "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"inbound\",reason=\"domain_secure_certificate_unverified\"}";
    let body = tokio::task::block_in_place(|| scrape_until(metrics, unverified, "1"));
    assert_eq!(
        metric(
            &body,
            "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",listener=\"inbound\"}"
        )
        .as_deref(),
        Some("1"),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"inbound\",reason=\"domain_secure_certificate_unverified\"}"
        )
        .as_deref(),
        Some("1"),
        "{body}"
    );
    let log = tokio::task::block_in_place(|| wait_for_log(&sc, "treated as none"));
    assert!(
        log.contains("client certificate did not verify; treated as none"),
        "{log}"
    );
    assert!(log.contains("reason=expired"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_partner_refused_by_require_names_the_reason() {
    let pki = PartnerPki::new();
    let (backend, rec) = recording_backend().await;
    let metrics = free_port();
    let sc = sidecar(
        &pki,
        backend,
        "      client_certificates: require\n",
        metrics,
    );
    let addr = sc.addr("inbound").unwrap();
    for (identity, why) in [
        (&pki.revoked, "revoked"),
        (&pki.expired, "expired"),
        (&pki.untrusted, "untrusted issuer"),
    ] {
        let out = tokio::task::block_in_place(|| s_client(addr, identity, &pki, &MESSAGE));
        assert!(!out.contains("250 2.1.0"), "{why}: {out}");
        // The server logs after sending its alert: the client may have its answer first.
        let wanted = format!("client_certificate=\"{why}\"");
        let log = tokio::task::block_in_place(|| wait_for_log(&sc, &wanted));
        assert!(log.contains(&wanted), "{why}: {log}");
    }
    assert!(rec.messages().is_empty());
    let body = tokio::task::block_in_place(|| {
        scrape_until(metrics, "smtp_sidecar_tls_handshakes_total{listener=\"inbound\",result=\"error\",side=\"server\",version=\"\"}", "3")
    });
    assert_eq!(
        metric(
            &body,
            "smtp_sidecar_tls_handshakes_total{listener=\"inbound\",result=\"error\",side=\"server\",version=\"\"}"
        )
        .as_deref(),
        Some("3"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_partner_with_its_certificate_is_domain_secure() {
    let pki = PartnerPki::new();
    let (backend, rec) = recording_backend().await;
    let metrics = free_port();
    let policy = "      client_certificates: request\n      domain_secure: [woodgrovebank.com]\n";
    // swaks sends its certificate without the chain (Net::SSLeay's use_certificate_file):
    // the partner's issuing CA is anchored itself, as an operator would for such a partner.
    let trust = pki.trust_yaml_anchoring_intermediate();
    let sc = sidecar_trusting(&trust, backend, policy, metrics);
    let addr = sc.addr("inbound").unwrap();
    let run = |identity: &Identity| {
        let out = tool("swaks", "swaks")
            .args([
                "--server",
                &addr.to_string(),
                "--tls",
                "--helo",
                "partner.test",
            ])
            .args([
                "--from",
                "alice@woodgrovebank.com",
                "--to",
                "bob@example.test",
            ])
            .arg("--tls-cert")
            .arg(&identity.cert_file)
            .arg("--tls-key")
            .arg(&identity.key_file)
            .args(["--timeout", "20"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = tokio::task::block_in_place(|| run(&pki.partner));
    assert!(out.contains("<~  250 2.0.0 Ok: queued as "), "{out}");
    let out = tokio::task::block_in_place(|| run(&pki.untrusted));
    assert!(
        out.contains(
            "<~* 450 4.7.1 Domain Security: mail from woodgrovebank.com requires mutual TLS; \
             client certificate did not verify (untrusted issuer)"
        ),
        "{out}"
    );
    assert_eq!(rec.messages().len(), 1);
    let body = tokio::task::block_in_place(|| {
        scrape_until(metrics, "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",listener=\"inbound\"}", "1")
    });
    assert_eq!(
        metric(
            &body,
            "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",listener=\"inbound\"}"
        )
        .as_deref(),
        Some("1"),
        "{body}"
    );
}
