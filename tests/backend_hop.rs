//! The encrypted hop to the backend and XCLIENT (issue 15, SPEC §3 `backend`), end to end: the
//! real binary in front of a test backend with a real rustls server on 127.0.0.1. What the
//! backend receives is asserted byte for byte, before and inside TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::binary::{start_binary, Binary};
use common::next_hop::{Cert, End, NextHop, NextHopPki, RunningNextHop, Session};
use common::Client;
use smtp_sidecar::runtime::Running;

const BODY: &str = "Subject: hop\r\n\r\n..a dot line\r\n";

/// The sidecar in front of `backend`, with `backend.tls`/`tls_verify`/`xclient` as given;
/// health checks rare enough that none runs during a test.
fn sidecar(backend: &RunningNextHop, pki: &NextHopPki, hop: &str) -> Binary {
    start_binary(&format!(
        "hostname: mx.test\n\
         shutdown_grace: 2s\n\
         {trust}\
         listeners:\n\
         \x20 - name: inbound\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   backend:\n\
         \x20     servers: [\"127.0.0.1:{port}\"]\n\
         \x20     connect_timeout: 2s\n\
         \x20     health_check_interval: 1h\n\
         {hop}\
         \x20   policy:\n\
         \x20     received_header: false\n",
        trust = pki.trust_yaml(),
        port = backend.addr.port(),
    ))
}

/// A plaintext client delivers one message and quits; returns the replies to MAIL..QUIT.
async fn deliver(addr: std::net::SocketAddr) -> String {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    let ehlo = c.cmd("EHLO client.test").await;
    assert_eq!(
        ehlo.matches("STARTTLS").count(),
        1,
        "only the sidecar's own STARTTLS: {ehlo}"
    );
    let mut replies = String::new();
    for line in ["MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"] {
        replies.push_str(&c.cmd(line).await);
    }
    c.send(format!("{BODY}.\r\n").as_bytes()).await;
    replies.push_str(&c.reply().await);
    replies.push_str(&c.cmd("QUIT").await);
    replies
}

const DELIVERED: &str = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
                         250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n";

/// What the backend receives of [`deliver`] after its greeting (dot-stuffing kept).
fn dialogue(ehlo: &str) -> String {
    format!("{ehlo}MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n{BODY}.\r\nQUIT\r\n")
}

/// Both hops, verified against the test CA and the server's IP address: what the backend
/// receives before TLS (our EHLO and STARTTLS, or nothing) and inside it, byte for byte.
#[tokio::test]
async fn tls_hop_verified_against_the_servers_address() {
    let pki = NextHopPki::new();
    for (hop, plaintext) in [
        ("starttls", "EHLO mx.test\r\nSTARTTLS\r\n"),
        ("implicit", ""),
    ] {
        let builder = NextHop::builder().host("127.0.0.1");
        let backend = match hop {
            "starttls" => builder.starttls(&pki, Cert::Valid),
            _ => builder.implicit_tls(&pki, Cert::Valid),
        }
        .start()
        .await;
        let bin = sidecar(&backend, &pki, &format!("      tls: {hop}\n"));
        assert_eq!(deliver(bin.addr("inbound").unwrap()).await, DELIVERED);
        let s = backend.next_session().await;
        assert_eq!(String::from_utf8_lossy(&s.plaintext), plaintext, "{hop}");
        assert_eq!(
            String::from_utf8_lossy(&s.encrypted),
            dialogue("EHLO client.test\r\n"),
            "{hop}"
        );
        assert_eq!(s.messages.len(), 1);
        assert!(s.tls.is_some());
        assert_eq!(s.end, End::Quit);
    }
}

/// A certificate that does not verify (wrong name, untrusted issuer, expired, revoked), or
/// no STARTTLS at all: the client gets 421 4.4.2 and the backend never sees a command in the
/// clear beyond our EHLO and STARTTLS.
#[tokio::test]
async fn a_hop_that_cannot_be_verified_carries_nothing() {
    let pki = NextHopPki::new();
    for cert in [
        Cert::WrongName,
        Cert::Untrusted,
        Cert::Expired,
        Cert::Revoked,
    ] {
        let backend = NextHop::builder()
            .host("127.0.0.1")
            .starttls(&pki, cert)
            .start()
            .await;
        let bin = sidecar(&backend, &pki, "      tls: starttls\n");
        let mut c = Client::connect(bin.addr("inbound").unwrap()).await;
        assert_eq!(
            c.read_to_close().await,
            "421 4.4.2 Backend unavailable, try again later\r\n",
            "{cert:?}"
        );
        let s = backend.next_session().await;
        assert_eq!(s.plaintext, b"EHLO mx.test\r\nSTARTTLS\r\n", "{cert:?}");
        assert!(
            matches!(s.end, End::HandshakeFailed(_)),
            "{cert:?}: {:?}",
            s.end
        );
        assert!(bin.log().contains("TLS to the backend failed"), "{cert:?}");
    }
    let backend = NextHop::builder().host("127.0.0.1").start().await;
    let bin = sidecar(&backend, &pki, "      tls: starttls\n");
    let mut c = Client::connect(bin.addr("inbound").unwrap()).await;
    assert_eq!(
        c.read_to_close().await,
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    let s = backend.next_session().await;
    assert_eq!(s.plaintext, b"EHLO mx.test\r\n");
    assert!(bin.log().contains("STARTTLS not offered"));
}

/// `tls_verify: false`: a legacy server's certificate nobody vouches for is taken, and the
/// operator is warned at start.
#[tokio::test]
async fn tls_verify_false_takes_any_certificate_with_a_warning() {
    let pki = NextHopPki::new();
    let backend = NextHop::builder()
        .host("127.0.0.1")
        .starttls(&pki, Cert::Untrusted)
        .start()
        .await;
    let bin = sidecar(
        &backend,
        &pki,
        "      tls: starttls\n      tls_verify: false\n",
    );
    assert!(bin.log().contains("backend.tls_verify is false"));
    assert_eq!(deliver(bin.addr("inbound").unwrap()).await, DELIVERED);
    assert_eq!(backend.next_session().await.messages.len(), 1);
}

/// XCLIENT where the backend offers it: the client's address and port as the backend saw
/// the sidecar's peer, its HELO name and protocol, then the EHLO again; inside the TLS hop.
#[tokio::test]
async fn xclient_over_the_tls_hop() {
    let pki = NextHopPki::new();
    let backend = NextHop::builder()
        .host("127.0.0.1")
        .starttls(&pki, Cert::Valid)
        .extensions(&["8BITMIME", "XCLIENT NAME ADDR PORT PROTO HELO LOGIN"])
        .start()
        .await;
    let bin = sidecar(&backend, &pki, "      tls: starttls\n      xclient: true\n");
    let addr = bin.addr("inbound").unwrap();
    let mut c = Client::connect(addr).await;
    let port = c.local_port();
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("XCLIENT"), "{ehlo}");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let s: Session = backend.next_session().await;
    assert_eq!(
        String::from_utf8_lossy(&s.encrypted),
        format!(
            "EHLO client.test\r\n\
             XCLIENT ADDR=127.0.0.1 PORT={port} NAME=[UNAVAILABLE] HELO=client.test PROTO=ESMTP\r\n\
             EHLO client.test\r\nQUIT\r\n"
        )
    );
    assert!(!bin.log().contains("does not offer XCLIENT"));
}

/// A backend without XCLIENT: the session goes on, and it is logged once for the server,
/// not once per session.
#[tokio::test]
async fn a_backend_without_xclient_is_logged_once() {
    let pki = NextHopPki::new();
    let backend = NextHop::builder().start().await;
    let bin = sidecar(&backend, &pki, "      xclient: true\n");
    for _ in 0..2 {
        assert_eq!(deliver(bin.addr("inbound").unwrap()).await, DELIVERED);
        let s = backend.next_session().await;
        assert_eq!(
            String::from_utf8_lossy(&s.plaintext),
            dialogue("EHLO client.test\r\n")
        );
    }
    assert_eq!(bin.log().matches("does not offer XCLIENT").count(), 1);
}

/// The health checks speak the hop's TLS: STARTTLS (or implicit) and EHLO inside, so a
/// server whose certificate does not verify is marked down before any session meets it.
#[tokio::test]
async fn health_checks_go_over_the_tls_hop() {
    let pki = NextHopPki::new();
    let (bad, good, running) = bad_and_good_starttls_servers(&pki, "100ms").await;
    let check = good.next_session().await;
    assert_eq!(check.plaintext, b"EHLO mx.test\r\nSTARTTLS\r\n");
    assert_eq!(check.encrypted, b"EHLO mx.test\r\nQUIT\r\n");
    assert_eq!(check.end, End::Quit);
    let failed = bad.next_session().await;
    assert!(
        matches!(failed.end, End::HandshakeFailed(_)),
        "{:?}",
        failed.end
    );
    let up = |server: std::net::SocketAddr| {
        running
            .metrics
            .backend_up
            .with_label_values(&["inbound", &server.to_string()])
            .get()
    };
    let started = std::time::Instant::now();
    while up(bad.addr) != 0 || up(good.addr) != 1 {
        assert!(started.elapsed() < common::T, "checks did not settle");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.shutdown().await;
}

/// A handshake with the backend that fails is counted on side "client" by why, on either
/// hop: a certificate that does not verify by its reason, bytes that are not TLS as
/// `protocol`. The client is told 421 4.4.2 each time.
#[tokio::test]
async fn failed_hop_handshakes_are_counted_by_reason() {
    let pki = NextHopPki::new();
    for (hop, cert, reason) in [
        ("starttls", Some(Cert::Untrusted), "certificate_untrusted"),
        ("implicit", Some(Cert::Untrusted), "certificate_untrusted"),
        ("starttls", Some(Cert::Expired), "certificate_expired"),
        ("implicit", Some(Cert::WrongName), "certificate_invalid"),
        ("starttls", None, "protocol"),
    ] {
        let builder = NextHop::builder().host("127.0.0.1");
        let backend = match (hop, cert) {
            ("implicit", Some(cert)) => builder.implicit_tls(&pki, cert),
            (_, Some(cert)) => builder.starttls(&pki, cert),
            (_, None) => builder.fail_handshake(),
        }
        .start()
        .await;
        let yaml = format!(
            "hostname: mx.test\nshutdown_grace: 2s\n{trust}listeners:\n  - name: inbound\n    \
             mode: terminate\n    listen: 127.0.0.1:0\n    backend:\n      servers: \
             [\"{addr}\"]\n      connect_timeout: 2s\n      health_check_interval: 1h\n      \
             tls: {hop}\n",
            trust = pki.trust_yaml(),
            addr = backend.addr,
        );
        let running = common::start(&yaml).await;
        let mut c = Client::connect(running.addr("inbound").unwrap()).await;
        assert_eq!(
            c.read_to_close().await,
            "421 4.4.2 Backend unavailable, try again later\r\n",
            "{hop} {cert:?}"
        );
        let m = &running.metrics;
        let failed = |reason: &str| {
            m.tls_handshake_errors_total
                .with_label_values(&["inbound", "client", reason])
                .get()
        };
        let all: u64 = [
            "timeout",
            "no_certificate",
            "certificate_expired",
            "certificate_revoked",
            "certificate_untrusted",
            "certificate_invalid",
            "protocol",
        ]
        .iter()
        .map(|r| failed(r))
        .sum();
        assert_eq!((failed(reason), all), (1, 1), "{hop} {cert:?}");
        drop(c);
        running.shutdown().await;
    }
}

/// A TLS backend that stops reading in the middle of a message: the body's write to it gives
/// up at the write deadline (the command timeout), the client hears `421 4.4.2`, and its
/// connection closes right after. The dead connection is dropped when its write fails, not
/// asked for a close_notify that would wait out a second deadline behind the same full
/// buffers before the client's close.
#[tokio::test]
async fn a_stalled_tls_hop_closes_the_session_at_its_write_deadline() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let pki = NextHopPki::new();
    let backend = NextHop::builder()
        .host("127.0.0.1")
        .implicit_tls(&pki, Cert::Valid)
        .stall_after(1)
        .start()
        .await;
    let yaml = format!(
        "hostname: mx.test\nshutdown_grace: 2s\n{trust}listeners:\n  - name: inbound\n    \
         mode: terminate\n    listen: 127.0.0.1:0\n    backend:\n      servers: [\"{addr}\"]\n      \
         connect_timeout: 2s\n      health_check_interval: 1h\n      tls: implicit\n    \
         policy:\n      timeouts: {{command: 2s}}\n",
        trust = pki.trust_yaml(),
        addr = backend.addr,
    );
    let running = common::start(&yaml).await;
    let (mut read, mut write) =
        common::plain_client_in_data(running.addr("inbound").unwrap()).await;
    let mut reply = String::new();
    // More body than every buffer between us and the stalled backend holds.
    let sender = tokio::spawn(async move {
        let chunk =
            b"a line of a message body the backend never reads ...........\r\n".repeat(1024);
        while write.write_all(&chunk).await.is_ok() {}
    });
    reply.clear();
    let read_reply = tokio::time::timeout(common::T, read.read_line(&mut reply));
    read_reply
        .await
        .expect("a reply in time")
        .expect("the reply, not a reset");
    let replied = std::time::Instant::now();
    assert_eq!(reply, "421 4.4.2 Backend unavailable, try again later\r\n");
    // Closed at once: well within the 2 s another write deadline would take.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(common::T, read.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0) | Err(_))), "{end:?} {rest:?}");
    let waited = replied.elapsed();
    assert!(
        waited < std::time::Duration::from_millis(1000),
        "closed {waited:?} after the 421"
    );
    sender.abort();
    running.shutdown().await;
}

/// A server whose hop cannot be had (here its certificate names another host, under
/// `tls: starttls`, where the handshake is the session's) is marked down as a failed connect
/// is: the session that found it is told `421 4.4.2`, `backend_up` says 0, and the next
/// session goes to the other server.
#[tokio::test]
async fn a_server_whose_starttls_hop_fails_is_marked_down() {
    let pki = NextHopPki::new();
    let (bad, _good, running) = bad_and_good_starttls_servers(&pki, "1h").await;
    let addr = running.addr("inbound").unwrap();
    let mut c = Client::connect(addr).await;
    let first = c.read_to_close().await;
    let up_bad = running
        .metrics
        .backend_up
        .with_label_values(&["inbound", &bad.addr.to_string()])
        .get();
    let mut c = Client::connect(addr).await;
    let second = c.reply().await;
    assert_eq!(
        (first.as_str(), up_bad, second.as_str()),
        (
            "421 4.4.2 Backend unavailable, try again later\r\n",
            0,
            "220 mx.test ESMTP\r\n"
        ),
        "bad server not marked down / backend_up says 1 for it"
    );
    running.shutdown().await;
}

/// Two `tls: starttls` backend servers, the first with a certificate for another host,
/// health-checked every `interval`: the servers (kept running) and the sidecar.
async fn bad_and_good_starttls_servers(
    pki: &NextHopPki,
    interval: &str,
) -> (RunningNextHop, RunningNextHop, Running) {
    let good = NextHop::builder()
        .host("127.0.0.1")
        .starttls(pki, Cert::Valid)
        .start()
        .await;
    let bad = NextHop::builder()
        .host("127.0.0.1")
        .starttls(pki, Cert::WrongName)
        .start()
        .await;
    let running = common::start(&format!(
        "hostname: mx.test\n\
         {trust}\
         listeners:\n\
         \x20 - name: inbound\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   backend:\n\
         \x20     servers: [\"{bad}\", \"{good}\"]\n\
         \x20     tls: starttls\n\
         \x20     connect_timeout: 2s\n\
         \x20     health_check_interval: {interval}\n",
        trust = pki.trust_yaml(),
        bad = bad.addr,
        good = good.addr,
    ))
    .await;
    (bad, good, running)
}
