//! End to end: the real listener on 127.0.0.1, real TLS, a recording backend; what reaches
//! the backend is asserted byte for byte, what the client sees by exact reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scripted::{scripted_backend, Script};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn sidecar(
    policy: &str,
) -> (
    std::net::SocketAddr,
    Recorder,
    smtp_sidecar::runtime::Running,
) {
    let (backend, rec) = recording_backend().await;
    let running = start(&config_yaml(backend, "starttls", policy)).await;
    (running.addr("inbound").unwrap(), rec, running)
}

async fn envelope(c: &mut Client) {
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
}

#[tokio::test]
async fn starttls_message_reaches_backend_byte_exact() {
    let (addr, rec, _r) = sidecar("").await;
    let mut c = Client::starttls_session(addr).await;
    envelope(&mut c).await;
    c.send(b"Subject: test\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let t = rec.closed(1).await;
    assert_eq!(
        String::from_utf8_lossy(&t[0]),
        "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
         Subject: test\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n"
    );
}

#[tokio::test]
async fn received_header_names_client_and_tls() {
    let (backend, rec) = recording_backend().await;
    let yaml = config_yaml(backend, "starttls", "")
        .replace("received_header: false", "received_header: true");
    let running = start(&yaml).await;
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    envelope(&mut c).await;
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 "));
    let m = String::from_utf8(rec.messages()[0].clone()).unwrap();
    assert!(m.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby mx.test (smtp-sidecar) with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_"), "{m}");
    assert!(m.ends_with(" +0000\r\nSubject: x\r\n\r\nx\r\n.\r\n"), "{m}");
}

/// Nothing the client sends can reopen or continue our Received header, the one hop the
/// backend did not write itself: not its EHLO name (`(` would open a comment swallowing the
/// address, `by`, `with` and the date), not a first body line that starts with white space
/// (RFC 5322 §2.2.3 folding), which follows an empty line and is body.
#[tokio::test]
async fn the_client_cannot_reopen_or_continue_our_received_header() {
    let (backend, rec) = recording_backend().await;
    let yaml = config_yaml(backend, "starttls", "")
        .replace("received_header: false", "received_header: true");
    let running = start(&yaml).await;
    let mut c = Client::starttls_session_as(running.addr("inbound").unwrap(), "a(").await;
    envelope(&mut c).await;
    let body = " (client certificate verified: subject \"CN=mail.bank.test\")\r\n\
                Subject: x\r\n\r\nx\r\n.\r\n";
    c.send(body.as_bytes()).await;
    assert!(c.reply().await.starts_with("250 "));
    let m = String::from_utf8(rec.messages()[0].clone()).unwrap();
    let head = "Received: from a? ([127.0.0.1])\r\n\tby mx.test (smtp-sidecar) with ESMTPS\r\n\t\
                (version=TLSv1.3 cipher=TLS13_";
    assert!(m.starts_with(head), "{m}");
    assert!(m.ends_with(&format!(" +0000\r\n\r\n{body}")), "{m}");
    assert_eq!(
        m.matches("\r\n\t").count(),
        3,
        "three lines of ours continue it: {m}"
    );
}

/// On a dual-stack listener (`[::]`) an IPv4 client arrives as an IPv4-mapped IPv6
/// address; the Received header the backend trusts names it by its IPv4 address, as a
/// listener on an IPv4 address would, not as `[IPv6:::ffff:127.0.0.1]`.
#[tokio::test]
async fn a_dual_stack_listener_knows_an_ipv4_client_by_its_ipv4_address() {
    let (backend, rec) = recording_backend().await;
    let yaml = config_yaml(backend, "starttls", "")
        .replace("received_header: false", "received_header: true")
        .replace("listen: 127.0.0.1:0", "listen: \"[::]:0\"");
    let running = start(&yaml).await;
    let port = running.addr("inbound").unwrap().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Client::starttls_session_as(addr, "client.test").await;
    envelope(&mut c).await;
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 "));
    let m = String::from_utf8(rec.messages()[0].clone()).unwrap();
    assert!(
        m.starts_with("Received: from client.test ([127.0.0.1])\r\n"),
        "{m}"
    );
}

#[tokio::test]
async fn implicit_tls_message() {
    let (backend, rec) = recording_backend().await;
    let running = start(&config_yaml(backend, "implicit", "")).await;
    let mut c = Client::connect_implicit(running.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active\r\n");
    envelope(&mut c).await;
    c.send(b"hello\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(rec.messages(), vec![b"hello\r\n.\r\n".to_vec()]);
}

#[tokio::test]
async fn pipelined_transaction_in_one_write() {
    let (addr, rec, _r) = sidecar("").await;
    let mut c = Client::starttls_session(addr).await;
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Ok\r\n");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send(b"x\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    assert_eq!(rec.messages(), vec![b"x\r\n.\r\n".to_vec()]);
}

#[tokio::test]
async fn fifty_megabyte_message_streams_through() {
    let (addr, rec, _r) = sidecar("      max_message_size: 64MiB\n").await;
    let mut c = Client::starttls_session(addr).await;
    envelope(&mut c).await;
    let line = [b"x".repeat(76).as_slice(), b"\r\n"].concat();
    let block: Vec<u8> = line.iter().copied().cycle().take(78 * 13_000).collect();
    let mut sent = 0usize;
    while sent < 50_000_000 {
        c.send(&block).await;
        sent += block.len();
    }
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let m = rec.messages();
    assert_eq!(m[0].len(), sent + 3);
    assert!(m[0].ends_with(b"xx\r\n.\r\n"));
}

const SMUGGLING: [&str; 5] = ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"];

#[tokio::test]
async fn smuggling_sequences_are_rejected() {
    for seq in SMUGGLING {
        let (addr, rec, _r) = sidecar("").await;
        let mut c = Client::starttls_session(addr).await;
        envelope(&mut c).await;
        let body = format!(
            "a{seq}MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n"
        );
        c.send(body.as_bytes()).await;
        c.send(b"tail\r\n.\r\n").await;
        assert_eq!(
            c.reply().await,
            "550 5.6.11 Bare line feed or carriage return not allowed\r\n",
            "{seq:?}"
        );
        // The session goes on over a fresh backend connection.
        assert_eq!(
            c.cmd("MAIL FROM:<a@x.test>").await,
            "250 2.1.0 Ok\r\n",
            "{seq:?}"
        );
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
        let t = rec.closed(2).await;
        assert!(rec.messages().is_empty(), "{seq:?}: no message delivered");
        let first = String::from_utf8_lossy(&t[0]);
        let body = first.split_once("DATA\r\n").map(|(_, b)| b);
        // Only the clean prefix was forwarded before the connection was dropped.
        assert!(
            matches!(body, Some("" | "a" | "a\r\n")),
            "{seq:?}: backend saw {first:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&t[1]),
            "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n"
        );
    }
}

#[tokio::test]
async fn smuggling_sequences_are_normalized() {
    for seq in SMUGGLING {
        let (addr, rec, _r) = sidecar("      bare_newlines: normalize\n").await;
        let mut c = Client::starttls_session(addr).await;
        envelope(&mut c).await;
        c.send(format!("a{seq}b\r\n.\r\n").as_bytes()).await;
        assert!(c.reply().await.starts_with("250 2.0.0"), "{seq:?}");
        assert_eq!(
            rec.messages(),
            vec![b"a\r\n..\r\nb\r\n.\r\n".to_vec()],
            "{seq:?}"
        );
    }
}

#[tokio::test]
async fn starttls_and_command_in_one_write_is_not_executed() {
    let (addr, rec, _r) = sidecar("").await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.send(b"STARTTLS\r\nMAIL FROM:<x@evil.test>\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = c.upgrade().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "503 5.5.1 Send EHLO first\r\n"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let t = rec.closed(1).await;
    assert_eq!(
        String::from_utf8_lossy(&t[0]),
        "EHLO client.test\r\nQUIT\r\n"
    );
}

#[tokio::test]
async fn nul_and_binary_garbage_never_reach_the_backend() {
    let (addr, rec, _r) = sidecar("").await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    assert_eq!(
        c.cmd("EHLO client\0.test").await,
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    c.send(b"\xff\xfe\x00\x01garbage\r\n").await;
    assert_eq!(c.reply().await, "500 5.5.1 Command unrecognized\r\n");
    let mut c = {
        assert!(c.cmd("EHLO client.test").await.starts_with("250-mx.test"));
        assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
        c.upgrade().await
    };
    c.cmd("EHLO client.test").await;
    envelope(&mut c).await;
    c.send(b"a\0b\r\n.\r\n").await;
    assert_eq!(c.reply().await, "550 5.6.11 NUL character not allowed\r\n");
    c.cmd("QUIT").await;
    for t in rec.closed(2).await {
        assert!(!t.contains(&0), "NUL reached the backend: {t:?}");
        assert!(!t.windows(7).any(|w| w == b"garbage"));
    }
}

#[tokio::test]
async fn tls_client_hello_on_starttls_port() {
    let (addr, rec, _r) = sidecar("").await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 19];
    tcp.read_exact(&mut greeting).await.unwrap();
    // A client that speaks TLS at once: the handshake fails, nothing reaches the backend.
    let result = tokio::time::timeout(T, common::tls_connect(tcp)).await;
    assert!(result.is_err() || result.unwrap().is_err());
    // The session ends with the client; its backend connection never got a byte.
    let t = rec.closed(1).await;
    assert_eq!(String::from_utf8_lossy(&t[0]), "");
}

#[tokio::test]
async fn overlong_lines_are_refused_and_the_session_resynchronises() {
    let (addr, _rec, _r) = sidecar("").await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 Line too long\r\n");
    let huge = "A".repeat(100_000);
    assert_eq!(c.cmd(&huge).await, "500 5.5.2 Line too long\r\n");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    assert!(c.cmd("EHLO client.test").await.starts_with("250-"));
    // 512 octets for a command, 2048 when it carries ESMTP parameters (RFC 5321 §4.5.3.1.4).
    let no_params = format!("MAIL FROM:<{}@x.test>", "a".repeat(240));
    assert_eq!(c.cmd(&no_params).await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok\r\n");
    // Past 512 the line is parsed, so its parameter meets the parameter rules (here: DSN was
    // not offered) rather than the line limit.
    let with_params = format!("MAIL FROM:<a@x.test> ENVID={}", "e".repeat(1500));
    assert_eq!(
        c.cmd(&with_params).await,
        "555 5.5.4 Unsupported parameter\r\n"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok\r\n");
    let too_long = format!("MAIL FROM:<a@x.test> ENVID={}", "e".repeat(2100));
    assert_eq!(c.cmd(&too_long).await, "500 5.5.2 Line too long\r\n");
    let rcpt_too_long = format!("RCPT TO:<{}@y.test>", "b".repeat(600));
    assert_eq!(c.cmd(&rcpt_too_long).await, "500 5.5.2 Line too long\r\n");
}

#[tokio::test]
async fn policy_replies() {
    let (addr, _rec, _r) =
        sidecar("      require_tls: true\n      max_recipients: 1\n      max_message_size: 1000\n")
            .await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN AGEAYg==").await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(
        c.cmd("STARTTLS x").await,
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = c.upgrade().await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("250-SIZE 1000\r\n") || ehlo.contains("250 SIZE 1000\r\n"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=1001").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<c@y.test>").await,
        "452 4.5.3 Too many recipients\r\n"
    );
    assert_eq!(
        c.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    c.send(&[b"y".repeat(2000).as_slice(), b"\r\n.\r\n"].concat())
        .await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active\r\n");
}

#[tokio::test]
async fn auth_before_tls_is_refused() {
    let (addr, _rec, _r) = sidecar("").await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("AUTH PLAIN AGEAYg==").await,
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
}

#[tokio::test]
async fn starttls_unavailable_without_certificate() {
    let (backend, _rec) = recording_backend().await;
    let running = start_without_certificate(&config_yaml(backend, "starttls", "")).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    assert!(!c.cmd("EHLO client.test").await.contains("STARTTLS"));
    assert_eq!(
        c.cmd("STARTTLS").await,
        "454 4.7.0 TLS not available due to temporary reason\r\n"
    );
}

#[tokio::test]
async fn too_many_connections_per_ip() {
    let (addr, _rec, _r) = sidecar("      max_connections_per_ip: 1\n").await;
    let (mut first, mut second) = one_place_per_address(addr).await;
    assert!(second.closed().await);
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = Client::connect(addr).await;
    assert_eq!(third.reply().await, "220 mx.test ESMTP\r\n");
}

#[tokio::test]
async fn backend_down_at_connect() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let running = start(&config_yaml(dead, "starttls", "")).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn backend_failover_to_the_next_server() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let (backend, _rec) = recording_backend().await;
    let yaml = config_yaml(dead, "starttls", "").replace(
        &format!("[\"{dead}\"]"),
        &format!("[\"{dead}\", \"{backend}\"]"),
    );
    let running = start(&yaml).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
}

/// A backend that accepts the envelope, then dies after the first body bytes.
async fn dying_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 dying ESMTP\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        for reply in [
            &b"250 dying\r\n"[..],
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
        ] {
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(reply).await.unwrap();
        }
        let _ = s.read(&mut buf).await.unwrap();
        drop(s);
    });
    addr
}

#[tokio::test]
async fn backend_killed_mid_message_gives_4xx_never_250() {
    let backend = dying_backend().await;
    let running = start(&config_yaml(backend, "starttls", "")).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await, "354 go\r\n");
    c.send(b"first part\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        c.send(b"second part\r\n.\r\n").await;
    })
    .await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
}

#[tokio::test]
async fn idle_client_times_out() {
    let (addr, _rec, _r) = sidecar("      timeouts: {greeting: 1s, command: 1s}\n").await;
    let mut c = Client::connect(addr).await;
    c.reply().await;
    assert_eq!(c.reply().await, "421 4.4.2 Timeout, closing connection\r\n");
    assert!(c.closed().await);
}

async fn tls12_client(addr: std::net::SocketAddr) -> std::io::Result<Client> {
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    c.try_upgrade(client_tls_config_with(&[&rustls::version::TLS12]))
        .await
}

#[tokio::test]
async fn tls12_works_and_tls_min_version_13_refuses_it() {
    let (addr, rec, _r) = sidecar("").await;
    let mut c = tls12_client(addr)
        .await
        .expect("TLS 1.2 accepted by default");
    c.cmd("EHLO client.test").await;
    envelope(&mut c).await;
    c.send(b"x\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(rec.messages().len(), 1);
    let (addr13, _rec, _r13) = sidecar("      tls_min_version: \"1.3\"\n").await;
    assert!(
        tls12_client(addr13).await.is_err(),
        "a TLS 1.2-only client must be refused"
    );
}

/// A backend that answers up to DATA's 354 and then reads nothing more: the sidecar's write of
/// the body waits once the sockets' buffers are full, and gives up after the write deadline
/// (the command timeout), dropping the connection, while the client keeps sending. Should the
/// wait have no deadline, the backend's late reads would keep finding body bytes.
#[tokio::test]
async fn a_write_the_backend_never_reads_ends_at_the_write_deadline() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let backend = listener.local_addr().unwrap();
    let (held_tx, mut held) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let held_tx = held_tx.clone();
            tokio::spawn(async move {
                let mut io = tokio::io::BufReader::new(tcp);
                io.get_mut().write_all(b"220 legacy.test\r\n").await.ok()?;
                loop {
                    let mut line = String::new();
                    if tokio::io::AsyncBufReadExt::read_line(&mut io, &mut line)
                        .await
                        .ok()?
                        == 0
                    {
                        return None;
                    }
                    let reply: &[u8] = match &line.to_ascii_uppercase()[..4] {
                        "DATA" => b"354 go ahead\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"250 ok\r\n",
                    };
                    io.get_mut().write_all(reply).await.ok()?;
                    if reply.starts_with(b"354") {
                        // Hold the connection, reading nothing.
                        return held_tx.send(io.into_inner()).await.ok();
                    }
                }
            });
        }
    });
    let yaml = config_yaml(backend, "starttls", "      timeouts: {command: 1s}\n");
    let running = start(&yaml).await;
    let (_replies, mut client) = plain_client_in_data(running.addr("inbound").unwrap()).await;
    // The body goes on and on, until the sidecar stops taking it.
    let sender = tokio::spawn(async move {
        let chunk = b"an ordinary line of a message body that never ends ......\r\n".repeat(1024);
        while client.write_all(&chunk).await.is_ok() {}
    });
    let mut stalled = tokio::time::timeout(Duration::from_secs(5), held.recv())
        .await
        .expect("DATA reached the backend")
        .unwrap();
    // Past the write deadline (1 s), the sidecar has dropped the connection: at most what the
    // backend's small buffers held is left to read. Without the deadline the body would keep
    // coming, until the message size limit (50 MiB) cut it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut buf, mut total) = (vec![0u8; 64 * 1024], 0);
        while let Ok(n @ 1..) = stalled.read(&mut buf).await {
            total += n;
        }
        total
    })
    .await
    .expect("the connection ended");
    assert!(
        drained < 1 << 20,
        "the sidecar kept writing: {drained} octets more"
    );
    sender.abort();
}

/// A client whose command comes with a record that does not decrypt, in one segment: the
/// command is read, the stream has failed, and the reply cannot be written; the client still
/// gets the TLS alert that says why (RFC 8446 §6), then the close, not a reset.
#[tokio::test]
async fn a_bad_record_behind_a_command_is_answered_with_its_alert() {
    use std::io::{Read as _, Write as _};
    let (backend, _rec) = recording_backend().await;
    let running = start(&config_yaml(backend, "implicit", "")).await;
    let mut tcp = tokio::net::TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
    let mut tls = rustls::ClientConnection::new(client_tls_config(), name).unwrap();
    let mut plain = Vec::new();
    // The handshake, and the greeting that comes with it or after it.
    while tls.is_handshaking() || !plain.ends_with(b"\r\n") {
        let mut out = Vec::new();
        tls.write_tls(&mut out).unwrap();
        tcp.write_all(&out).await.unwrap();
        if tls.wants_read() {
            let mut buf = vec![0u8; 16 * 1024];
            let n = tokio::time::timeout(common::T, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed in the handshake");
            tls.read_tls(&mut &buf[..n]).unwrap();
            tls.process_new_packets().unwrap();
            let _ = tls.reader().read_to_end(&mut plain);
        }
    }
    assert_eq!(plain, b"220 mx.test ESMTP\r\n");
    // NOOP, then an application-data record of 40 octets that decrypt to nothing.
    tls.writer().write_all(b"NOOP\r\n").unwrap();
    let mut out = Vec::new();
    tls.write_tls(&mut out).unwrap();
    out.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 40]);
    out.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    tcp.write_all(&out).await.unwrap();
    let mut received = Vec::new();
    let end = tokio::time::timeout(common::T, tcp.read_to_end(&mut received))
        .await
        .unwrap();
    assert!(end.is_ok(), "{end:?} after {} octets", received.len());
    tls.read_tls(&mut &received[..]).unwrap();
    let alert = tls.process_new_packets().unwrap_err();
    assert_eq!(
        alert,
        rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
    );
}

/// `bytes_total` counts the SMTP octets each leg carried as the session read and wrote them,
/// exactly: on a TLS leg the decrypted ones (no handshake, no record overhead), and on an
/// implicit-TLS listener the greeting sent with the handshake too.
#[tokio::test]
async fn bytes_total_counts_every_octet_of_each_leg() {
    for tls in ["starttls", "implicit"] {
        let (backend, transcripts) = scripted_backend(Script::default()).await;
        let running = start(&config_yaml(backend, tls, "")).await;
        let addr = running.addr("inbound").unwrap();
        // What the client sent and read, in SMTP octets.
        let (mut sent, mut read) = (0, 0);
        let mut c = match tls {
            "implicit" => Client::connect_implicit(addr).await,
            _ => Client::connect(addr).await,
        };
        let greeting = c.reply().await;
        assert_eq!(greeting, "220 mx.test ESMTP\r\n", "{tls}");
        read += greeting.len();
        if tls == "starttls" {
            for cmd in ["EHLO client.test", "STARTTLS"] {
                sent += cmd.len() + 2;
                read += c.cmd(cmd).await.len();
            }
            c = c.upgrade().await;
        }
        for cmd in [
            "EHLO client.test",
            "MAIL FROM:<a@x.test>",
            "RCPT TO:<b@y.test>",
            "DATA",
            "Subject: bytes\r\n\r\nhello\r\n.",
            "QUIT",
        ] {
            sent += cmd.len() + 2;
            read += c.cmd(cmd).await.len();
        }
        assert!(c.closed().await);
        let m = &running.metrics;
        eventually(
            || m.connections_active.with_label_values(&["inbound"]).get() == 0,
            "session ended",
        )
        .await;
        let counted = |leg: &str, direction: &str| {
            m.bytes_total
                .with_label_values(&["inbound", leg, direction])
                .get() as usize
        };
        let received = transcripts.wait_for(0, "QUIT\r\n").await;
        assert_eq!(received.len(), 1, "{tls}: one backend connection");
        let (backend_received, backend_sent) = (received[0].len(), transcripts.sent()[0]);
        assert_eq!(
            [
                counted("client", "received"),
                counted("client", "sent"),
                counted("backend", "sent"),
                counted("backend", "received"),
            ],
            [sent, read, backend_received, backend_sent],
            "{tls}: client received, client sent, backend sent, backend received"
        );
        running.shutdown().await;
    }
}

/// A connection whose implicit-TLS handshake fails is a session like any other for the
/// metrics: counted in `connections_total`, and its length in `session_duration_seconds`.
#[tokio::test]
async fn a_failed_implicit_handshake_is_a_session_with_a_duration() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&config_yaml(backend, "implicit", "")).await;
    let mut tcp = tokio::net::TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    tcp.write_all(b"EHLO this is not a ClientHello\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut rest)).await;
    let m = &running.metrics;
    eventually(
        || m.connections_active.with_label_values(&["inbound"]).get() == 0,
        "session ended",
    )
    .await;
    let sessions = m.connections_total.with_label_values(&["inbound"]).get();
    let timed = m
        .session_duration_seconds
        .with_label_values(&["inbound"])
        .get_sample_count();
    assert_eq!((sessions, timed), (1, 1));
}

/// Replies by command and class, transactions, messages and handshakes, counted exactly:
/// every non-zero series of those families after a known set of sessions, pipelined commands
/// and failed handshakes among them (the held replies of a pipelined batch are each counted
/// for their own command).
#[tokio::test]
async fn replies_transactions_and_handshakes_are_counted_exactly() {
    let (backend, _rec) = recording_backend().await;
    let policy = "      timeouts: {tls_handshake: 1s}\n";
    let running = start(&config_yaml(backend, "starttls", policy)).await;
    let addr = running.addr("inbound").unwrap();

    // A delivered message, a pipelined one, an abandoned transaction and odd commands.
    let mut c = Client::starttls_session(addr).await;
    envelope(&mut c).await;
    assert!(c
        .cmd("Subject: 1\r\n\r\none\r\n.")
        .await
        .starts_with("250 "));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Ok\r\n");
    assert!(c.reply().await.starts_with("354 "));
    assert!(c
        .cmd("Subject: 2\r\n\r\ntwo\r\n.")
        .await
        .starts_with("250 "));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert!(c.cmd("RSET").await.starts_with("250 "));
    assert!(c.cmd("NOOP").await.starts_with("250 "));
    assert!(c.cmd("XYZZY").await.starts_with("500 "));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(c.closed().await);
    // STARTTLS, then bytes that are no ClientHello.
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("STARTTLS").await.starts_with("220 "));
    c.send(b"this is no ClientHello\r\n").await;
    c.read_to_close().await;
    // STARTTLS, then nothing until the handshake's deadline.
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("STARTTLS").await.starts_with("220 "));
    c.read_to_close().await;

    let m = &running.metrics;
    eventually(
        || m.connections_active.with_label_values(&["inbound"]).get() == 0,
        "sessions ended",
    )
    .await;
    let families = [
        "smtp_sidecar_replies_total{",
        "smtp_sidecar_transactions_total{",
        "smtp_sidecar_messages_total{",
        "smtp_sidecar_tls_handshakes_total{",
        "smtp_sidecar_tls_handshake_errors_total{",
    ];
    let exposition = m.render();
    let counted: Vec<&str> = exposition
        .lines()
        .filter(|l| families.iter().any(|f| l.starts_with(f)) && !l.ends_with(" 0"))
        .collect();
    let want = [
        "smtp_sidecar_messages_total{listener=\"inbound\",result=\"accepted\",tls=\"yes\"} 2",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"data_end\",listener=\"inbound\"} 2",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"ehlo\",listener=\"inbound\"} 4",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"greeting\",listener=\"inbound\"} 3",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"mail\",listener=\"inbound\"} 3",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"noop\",listener=\"inbound\"} 1",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"quit\",listener=\"inbound\"} 1",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"rcpt\",listener=\"inbound\"} 2",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"rset\",listener=\"inbound\"} 1",
        "smtp_sidecar_replies_total{class=\"2xx\",command=\"starttls\",listener=\"inbound\"} 3",
        "smtp_sidecar_replies_total{class=\"3xx\",command=\"data\",listener=\"inbound\"} 2",
        "smtp_sidecar_replies_total{class=\"5xx\",command=\"invalid\",listener=\"inbound\"} 1",
        "smtp_sidecar_tls_handshake_errors_total{listener=\"inbound\",reason=\"protocol\",side=\"server\"} 1",
        "smtp_sidecar_tls_handshake_errors_total{listener=\"inbound\",reason=\"timeout\",side=\"server\"} 1",
        "smtp_sidecar_tls_handshakes_total{listener=\"inbound\",result=\"error\",side=\"server\",version=\"\"} 2",
        "smtp_sidecar_tls_handshakes_total{listener=\"inbound\",result=\"ok\",side=\"server\",version=\"TLSv1.3\"} 1",
        "smtp_sidecar_transactions_total{listener=\"inbound\"} 3",
    ];
    assert_eq!(counted, want, "{exposition}");
}
