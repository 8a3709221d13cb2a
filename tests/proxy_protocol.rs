//! End to end: `proxy_protocol: true` listeners behind a load balancer. The address a PROXY
//! v1/v2 header gives is the client's (the backend's Received header shows it, byte for byte;
//! per-address limits count it); a connection without a valid header is closed without one
//! byte of SMTP; v2 LOCAL (the balancer's health check) goes on with the socket's address.
//! The headers are written out by hand here, not with the parser the sidecar uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::binary::start_binary;
use common::*;
use smtp_sidecar::runtime::Running;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for a TCP over IPv4 connection from `src:sport` to 192.0.2.25:25.
fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[192, 0, 2, 25]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

/// A v2 LOCAL header, as HAProxy sends for its own health checks.
fn v2_local() -> Vec<u8> {
    [V2_SIGNATURE, &[0x20, 0x00, 0x00, 0x00]].concat()
}

/// A v2 LOCAL header that carries addresses anyway (they are to be ignored).
fn v2_local_with_addresses() -> Vec<u8> {
    let mut h = v2_tcp4([203, 0, 113, 99], 1);
    h[12] = 0x20;
    h
}

/// One terminate listener with `proxy_protocol: true` and Received headers on; `policy` is
/// more policy lines (indented 6 spaces).
fn yaml(backend: SocketAddr, tls: &str, policy: &str) -> String {
    format!(
        "hostname: mx.test\n\
         shutdown_grace: 2s\n\
         listeners:\n\
         \x20 - name: inbound\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   tls: {tls}\n\
         \x20   proxy_protocol: true\n\
         \x20   backend:\n\
         \x20     servers: [\"{backend}\"]\n\
         \x20     connect_timeout: 2s\n\
         \x20   policy:\n\
         \x20     received_header: true\n\
         {policy}"
    )
}

async fn sidecar(tls: &str, policy: &str) -> (Running, Recorder) {
    let (backend, rec) = recording_backend().await;
    (start(&yaml(backend, tls, policy)).await, rec)
}

/// A plaintext client whose connection begins with `header`.
async fn proxied(addr: SocketAddr, header: &[u8]) -> Client {
    let mut c = Client::connect(addr).await;
    c.send(header).await;
    c
}

/// A whole plaintext session from the greeting on, one message.
async fn deliver(c: &mut Client) {
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c
        .cmd("EHLO client.test")
        .await
        .starts_with("250-mx.test\r\n"));
    envelope(c).await;
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
}

async fn envelope(c: &mut Client) {
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
}

/// The one message the backend received: our Received header naming `literal` as the
/// client, byte for byte but for its date, then the message as sent.
fn assert_received_from(rec: &Recorder, literal: &str, with: &str) {
    let messages = rec.messages();
    let [m] = messages.as_slice() else {
        panic!("{} messages", messages.len())
    };
    assert_received(m, literal, with);
}

fn assert_received(m: &[u8], literal: &str, with: &str) {
    let m = String::from_utf8_lossy(m);
    let head = format!(
        "Received: from client.test ({literal})\r\n\tby mx.test (smtp-sidecar) with {with};\r\n\t"
    );
    let rest = m
        .strip_prefix(&head)
        .unwrap_or_else(|| panic!("want {head:?}, got {m:?}"));
    let (date, rest) = rest.split_once("\r\n").expect("a date line");
    assert!(date.ends_with(" +0000"), "{date:?}");
    assert_eq!(rest, "Subject: x\r\n\r\nx\r\n.\r\n");
}

/// Everything the sidecar sends until it closes (a reset counts as a close).
async fn bytes_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The value of one series on `/metrics` (0 when absent).
fn metric(running: &Running, series: &str) -> f64 {
    running
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn header_errors(running: &Running, reason: &str) -> f64 {
    metric(
        running,
        &format!(
            "smtp_sidecar_proxy_header_errors_total{{listener=\"inbound\",reason=\"{reason}\"}}"
        ),
    )
}

/// Through the real binary and its configuration file: a v1 TCP4 header's address is the
/// client's in the Received header, and the log names the balancer's once, at debug.
#[tokio::test]
async fn v1_tcp4_address_is_the_clients() {
    let (backend, rec) = recording_backend().await;
    let config = yaml(backend, "starttls", "      timeouts: {proxy_header: 5s}\n");
    let binary = start_binary(&format!("log: {{level: debug}}\n{config}"));
    let addr = binary.addr("inbound").unwrap();
    let mut c = proxied(addr, b"PROXY TCP4 203.0.113.7 192.0.2.25 51234 25\r\n").await;
    deliver(&mut c).await;
    assert_received_from(&rec, "[203.0.113.7]", "ESMTP");
    // The backend's own transcript: nothing of the header reached it.
    let t = rec.closed(1).await;
    assert!(
        String::from_utf8_lossy(&t[0]).starts_with("EHLO client.test\r\nMAIL FROM:<a@x.test>"),
        "{:?}",
        String::from_utf8_lossy(&t[0])
    );
    let log = binary.log();
    let line = log
        .lines()
        .find(|l| l.contains("proxied connection"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("peer=203.0.113.7:51234"), "{line}");
    assert!(line.contains("proxy=127.0.0.1:"), "{line}");
    assert!(line.contains("header=\"v1 TCP4\""), "{line}");
}

#[tokio::test]
async fn v1_tcp6_address_is_the_clients() {
    let (running, rec) = sidecar("starttls", "").await;
    let header = b"PROXY TCP6 2001:db8::7 2001:db8::25 51234 25\r\n";
    let mut c = proxied(running.addr("inbound").unwrap(), header).await;
    deliver(&mut c).await;
    assert_received_from(&rec, "[IPv6:2001:db8::7]", "ESMTP");
}

#[tokio::test]
async fn v2_tcp4_address_is_the_clients() {
    let (running, rec) = sidecar("starttls", "").await;
    let header = v2_tcp4([198, 51, 100, 9], 40000);
    let mut c = proxied(running.addr("inbound").unwrap(), &header).await;
    deliver(&mut c).await;
    assert_received_from(&rec, "[198.51.100.9]", "ESMTP");
    assert_eq!(
        metric(
            &running,
            "smtp_sidecar_connections_total{listener=\"inbound\"}"
        ),
        1.0
    );
}

/// The balancer's health check: a LOCAL header (with addresses or without), and the session
/// is the balancer's own.
#[tokio::test]
async fn v2_local_uses_the_socket_address() {
    let (running, rec) = sidecar("starttls", "").await;
    for header in [v2_local(), v2_local_with_addresses()] {
        let mut c = proxied(running.addr("inbound").unwrap(), &header).await;
        deliver(&mut c).await;
    }
    let messages = rec.messages();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_received(m, "[127.0.0.1]", "ESMTP");
    }
}

/// Headers that name no client (v2 LOCAL, v1 UNKNOWN: the balancer's health checks) leave
/// the balancer's own address, which is never limited per address: with
/// `max_connections_per_ip: 1`, three of them at once are all served.
#[tokio::test]
async fn headers_without_a_client_are_not_limited_per_address() {
    let (running, _rec) = sidecar("starttls", "      max_connections_per_ip: 1\n").await;
    let addr = running.addr("inbound").unwrap();
    let mut open = Vec::new();
    for header in [
        v2_local(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2_local_with_addresses(),
    ] {
        let mut c = proxied(addr, &header).await;
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
        open.push(c);
    }
    for c in &mut open {
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    }
    assert_eq!(
        metric(
            &running,
            "smtp_sidecar_connections_refused_total{listener=\"inbound\"}"
        ),
        0.0
    );
}

/// An IPv6 client counts by its /64: another address of the same /64 finds its one place
/// taken, an address of another /64 does not.
#[tokio::test]
async fn per_ip_limit_counts_an_ipv6_client_by_its_64() {
    let (running, _rec) = sidecar("starttls", "      max_connections_per_ip: 1\n").await;
    let addr = running.addr("inbound").unwrap();
    let header = |src: &str| format!("PROXY TCP6 {src} 2001:db8::25 1001 25\r\n");
    let mut first = proxied(addr, header("2001:db8:1:2::1").as_bytes()).await;
    assert_eq!(first.reply().await, "220 mx.test ESMTP\r\n");
    let mut same = proxied(addr, header("2001:db8:1:2:ffff::2").as_bytes()).await;
    assert_eq!(
        same.read_to_close().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    let mut other = proxied(addr, header("2001:db8:1:3::1").as_bytes()).await;
    assert_eq!(other.reply().await, "220 mx.test ESMTP\r\n");
}

/// The header split across writes, the split points inside the signature, the addresses and
/// the CRLF: one header all the same.
#[tokio::test]
async fn header_split_across_writes() {
    let (running, rec) = sidecar("starttls", "").await;
    let addr = running.addr("inbound").unwrap();
    let mut c = Client::connect(addr).await;
    let header = b"PROXY TCP4 203.0.113.8 192.0.2.25 1025 25\r\n";
    for piece in [&header[..3], &header[3..17], &header[17..42], &header[42..]] {
        c.send(piece).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    deliver(&mut c).await;
    assert_received_from(&rec, "[203.0.113.8]", "ESMTP");

    // And a v2 header cut inside its fixed part and inside its addresses.
    let header = v2_tcp4([203, 0, 113, 9], 1026);
    let mut c = Client::connect(addr).await;
    for piece in [&header[..5], &header[5..15], &header[15..20], &header[20..]] {
        c.send(piece).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.starts_with("250-mx.test"));
}

/// The client's first commands in the same write as the header: not one octet of them lost.
#[tokio::test]
async fn smtp_pipelined_right_after_the_header() {
    let (running, rec) = sidecar("starttls", "").await;
    let addr = running.addr("inbound").unwrap();
    let mut c = Client::connect(addr).await;
    c.send(b"PROXY TCP4 203.0.113.10 192.0.2.25 1025 25\r\nEHLO client.test\r\n")
        .await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.reply().await.starts_with("250-mx.test\r\n"));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Ok\r\n");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    assert_received_from(&rec, "[203.0.113.10]", "ESMTP");
}

/// A client that talks SMTP at once, as it would to a listener without PROXY: closed, no
/// greeting, no backend connection, counted as `missing`.
#[tokio::test]
async fn missing_header_is_closed_without_a_byte() {
    let (running, rec) = sidecar("starttls", "").await;
    let mut tcp = TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    tcp.write_all(b"EHLO client.test\r\n").await.unwrap();
    assert_eq!(bytes_until_closed(&mut tcp).await, b"");
    assert_eq!(header_errors(&running, "missing"), 1.0);
    assert_eq!(
        metric(
            &running,
            "smtp_sidecar_connections_total{listener=\"inbound\"}"
        ),
        0.0
    );
    assert!(rec.transcripts.lock().unwrap().is_empty());
}

/// Headers that begin right but go wrong: closed without a byte, counted as `invalid`, the
/// reason in the log (the real binary).
#[tokio::test]
async fn garbled_header_is_closed_without_a_byte() {
    let (running, _rec) = sidecar("starttls", "").await;
    let addr = running.addr("inbound").unwrap();
    let mut bad_version = v2_tcp4([203, 0, 113, 7], 1);
    bad_version[12] = 0x11;
    let garbled: [&[u8]; 4] = [
        b"PROXY TCP4 203.0.113.300 192.0.2.25 1 25\r\nEHLO client.test\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.25 1 25\nEHLO client.test\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.25 1 25 and then some more words\r\n",
        &bad_version,
    ];
    for header in garbled {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(header).await.unwrap();
        assert_eq!(bytes_until_closed(&mut tcp).await, b"", "{header:?}");
    }
    assert_eq!(header_errors(&running, "invalid"), 4.0);

    let (backend, _rec) = recording_backend().await;
    let binary = start_binary(&yaml(backend, "starttls", ""));
    let mut tcp = TcpStream::connect(binary.addr("inbound").unwrap())
        .await
        .unwrap();
    tcp.write_all(garbled[0]).await.unwrap();
    assert_eq!(bytes_until_closed(&mut tcp).await, b"");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !binary.log().contains("no valid PROXY header") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = binary.log();
    let line = log
        .lines()
        .find(|l| l.contains("no valid PROXY header"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("invalid PROXY v1 header"), "{line}");
    assert!(line.contains("proxy=127.0.0.1:"), "{line}");
}

/// A connection that sends nothing (or half a header) waits for no greeting: it is closed
/// without a byte when `timeouts.proxy_header` is over.
#[tokio::test]
async fn header_deadline() {
    let (running, _rec) = sidecar("starttls", "      timeouts: {proxy_header: 1s}\n").await;
    let addr = running.addr("inbound").unwrap();
    for sent in [&b""[..], b"PROXY TCP4 203.0.113."] {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        assert_eq!(bytes_until_closed(&mut tcp).await, b"");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
    assert_eq!(header_errors(&running, "timeout"), 2.0);
}

/// `max_connections_per_ip` counts the header's address, not the balancer's: two clients
/// behind one balancer both get in, a second connection of one of them gets `421 4.7.0`,
/// and its place comes back when its first session ends.
#[tokio::test]
async fn per_ip_limit_counts_the_proxied_address() {
    let (running, _rec) = sidecar("starttls", "      max_connections_per_ip: 1\n").await;
    let addr = running.addr("inbound").unwrap();
    let one = b"PROXY TCP4 203.0.113.1 192.0.2.25 1001 25\r\n";
    let two = b"PROXY TCP4 203.0.113.2 192.0.2.25 1002 25\r\n";
    let mut first = proxied(addr, one).await;
    assert_eq!(first.reply().await, "220 mx.test ESMTP\r\n");
    let mut second = proxied(addr, two).await;
    assert_eq!(second.reply().await, "220 mx.test ESMTP\r\n");

    let mut again = proxied(addr, b"PROXY TCP4 203.0.113.1 192.0.2.25 1003 25\r\n").await;
    assert_eq!(
        again.read_to_close().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert_eq!(
        metric(
            &running,
            "smtp_sidecar_connections_refused_total{listener=\"inbound\"}"
        ),
        1.0
    );
    // The second client is unaffected, and the first one's place is free once it has gone.
    assert!(second
        .cmd("EHLO client.test")
        .await
        .starts_with("250-mx.test"));
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(first.closed().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = proxied(addr, one).await;
        let reply = c.reply().await;
        if reply == "220 mx.test ESMTP\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stream whose first write carries `prefix` before the caller's bytes, in one write: the
/// header and the ClientHello in one segment, as a balancer may send them.
struct PrefixFirstWrite {
    tcp: TcpStream,
    prefix: Option<Vec<u8>>,
}

impl AsyncRead for PrefixFirstWrite {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixFirstWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(prefix) = self.prefix.take() else {
            return Pin::new(&mut self.tcp).poll_write(cx, buf);
        };
        let all = [prefix.as_slice(), buf].concat();
        match Pin::new(&mut self.tcp).poll_write(cx, &all) {
            Poll::Ready(Ok(n)) => {
                // A fresh loopback socket takes a few hundred octets whole.
                assert_eq!(n, all.len(), "a partial first write");
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.prefix = Some(prefix);
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Implicit TLS: the header comes before the handshake (here in the same segment as the
/// ClientHello), and the session inside TLS has the header's address.
#[tokio::test]
async fn implicit_tls_listener_reads_the_header_before_the_handshake() {
    let (running, rec) = sidecar("implicit", "").await;
    let tcp = TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let io = PrefixFirstWrite {
        tcp,
        prefix: Some(v2_tcp4([192, 0, 2, 77], 50000)),
    };
    let tls = tls_connect(io).await.expect("handshake after the header");
    let mut io = BufReader::new(tls);
    let mut line = String::new();
    let mut dialogue = Vec::new();
    for cmd in [
        "",
        "EHLO client.test",
        "MAIL FROM:<a@x.test>",
        "RCPT TO:<b@y.test>",
        "DATA",
        "Subject: x\r\n\r\nx\r\n.",
        "QUIT",
    ] {
        if !cmd.is_empty() {
            io.get_mut()
                .write_all(format!("{cmd}\r\n").as_bytes())
                .await
                .unwrap();
        }
        // The last line of each reply.
        loop {
            line.clear();
            tokio::time::timeout(T, io.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        dialogue.push(line[..3].to_owned());
    }
    assert_eq!(dialogue, ["220", "250", "250", "250", "354", "250", "221"]);
    let messages = rec.messages();
    let m = String::from_utf8_lossy(&messages[0]);
    assert!(
        m.starts_with(
            "Received: from client.test ([192.0.2.77])\r\n\tby mx.test (smtp-sidecar) with ESMTPS\r\n\t(version=TLSv1.3 cipher="
        ),
        "{m}"
    );

    // Without a header, the ClientHello itself is refused as a missing header.
    let mut tcp = TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    assert!(tls_connect(&mut tcp).await.is_err());
    assert_eq!(header_errors(&running, "missing"), 1.0);
}
