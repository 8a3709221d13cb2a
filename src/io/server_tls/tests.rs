//! The unbuffered server stream against rustls clients over real sockets on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::ServerTls;
use crate::io::Read;
use crate::tls::test_util::{client_config, ec_cert};

const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A fresh ECDSA certificate for `mx.test` and its key.
fn server_cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let (cert, key) = ec_cert("mx.test");
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    (cert, key)
}

fn pki(versions: &[&'static SupportedProtocolVersion]) -> Pki {
    let (cert, key) = server_cert();
    pki_from(cert, key, versions, None)
}

/// A server serving `cert` (and asking clients for a certificate with `verifier`), and a
/// client that trusts it.
fn pki_from(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Pki {
    let builder = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut server = builder.with_single_cert(vec![cert.clone()], key).unwrap();
    server.send_tls13_tickets = 1;
    // As the sidecar's own configuration (`crate::tls::server_config`).
    server.send_half_rtt_data = true;
    Pki {
        server: Arc::new(server),
        client: Arc::new(client_config(&cert, versions)),
    }
}

/// A listener and a connected pair of sockets: (server side, client side).
async fn sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (server, client) = tokio::join!(listener.accept(), client);
    (server.unwrap().0, client.unwrap())
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// A handshake between `server` and a client with `client` over real sockets: both results.
async fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (std::io::Result<ServerTls>, std::io::Result<Client>) {
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let (server_tcp, client_tcp) = sockets().await;
    let accept = ServerTls::accept(server_tcp, server.clone(), &[], None);
    tokio::join!(accept, connector.connect(name(), client_tcp))
}

/// A completed handshake.
async fn connected(pki: &Pki) -> (ServerTls, Client) {
    let (tls, client) = handshake(&pki.server, &pki.client).await;
    (tls.unwrap(), client.unwrap())
}

/// Read until `want` bytes have been delivered (or the stream closes).
async fn read_exactly(tls: &mut ServerTls, want: usize) -> (Vec<u8>, Read) {
    let mut got = Vec::new();
    loop {
        let r = tls.read_now(usize::MAX, |data| got.extend_from_slice(data));
        match r {
            Read::Closed => return (got, r),
            _ if got.len() >= want => return (got, r),
            Read::Data { more: true } => {}
            _ => tls.tcp().readable().await.unwrap(),
        }
    }
}

/// Everything `peer` sends until it closes cleanly (a TLS peer: with its close_notify).
async fn to_the_end(peer: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut all = Vec::new();
    peer.read_to_end(&mut all).await.expect("a clean close");
    all
}

fn name() -> ServerName<'static> {
    ServerName::try_from("mx.test").unwrap()
}

/// TLS 1.3: the ticket waits for the first reply; the reply and the close_notify arrive; the
/// session holds no buffer while idle; the ticket lets the next connection resume.
#[tokio::test]
async fn tls13_reply_ticket_close_and_resumption() {
    let pki = pki(TLS13);
    for round in 0..2 {
        let (mut tls, mut client) = connected(&pki).await;
        let kind = tls.conn().handshake_kind();
        if round == 0 {
            assert_eq!(kind, Some(HandshakeKind::Full));
            assert!(tls.buffered() > 0, "the ticket waits for the first reply");
        } else {
            assert_eq!(kind, Some(HandshakeKind::Resumed));
        }
        client.write_all(b"EHLO client.test\r\n").await.unwrap();
        let (got, _) = read_exactly(&mut tls, 18).await;
        assert_eq!(got, b"EHLO client.test\r\n");
        assert_eq!(tls.partial.capacity(), 0, "no read buffer while idle");
        tls.write(b"250 mx.test\r\n").unwrap();
        tls.close(false).await.unwrap();
        assert_eq!(tls.out.capacity(), 0, "no write buffer after a flush");
        assert_eq!(to_the_end(&mut client).await, b"250 mx.test\r\n");
    }
}

/// A handshake done on the admission threads (a listener under a handshake flood), the
/// session going on on this runtime: the ticket held for the first reply, the command and
/// the reply all arrive as they would have on one runtime.
#[tokio::test]
async fn a_handshake_done_on_the_admission_threads_carries_on_here() {
    let pki = pki(TLS13);
    let (server_tcp, client_tcp) = sockets().await;
    let server_tcp = server_tcp.into_std().unwrap();
    let config = pki.server.clone();
    let accept = crate::io::admission::handle().unwrap().spawn(async move {
        ServerTls::accept(TcpStream::from_std(server_tcp)?, config, &[], None).await
    });
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let (tls, client) = tokio::join!(accept, connector.connect(name(), client_tcp));
    let (mut tls, mut client) = (tls.unwrap().unwrap().rebind().unwrap(), client.unwrap());
    assert!(
        tls.buffered() > 0,
        "the ticket still waits for the first reply"
    );
    client.write_all(b"EHLO client.test\r\n").await.unwrap();
    let (got, _) = read_exactly(&mut tls, 18).await;
    assert_eq!(got, b"EHLO client.test\r\n");
    tls.write(b"250 mx.test\r\n").unwrap();
    tls.close(false).await.unwrap();
    assert_eq!(to_the_end(&mut client).await, b"250 mx.test\r\n");
}

/// TLS 1.2: the server's Finished leaves at once (the client waits for it).
#[tokio::test]
async fn tls12_handshake_and_dialogue() {
    let pki = pki(TLS12);
    let (mut tls, mut client) = connected(&pki).await;
    assert_eq!(tls.buffered(), 0);
    client.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut tls, 6).await.0, b"QUIT\r\n");
    tls.write(b"221 bye\r\n").unwrap();
    tls.close(false).await.unwrap();
    assert_eq!(to_the_end(&mut client).await, b"221 bye\r\n");
}

/// A client that sends a command with its Finished, before our greeting: the command is
/// kept while we write, and read after.
#[tokio::test]
async fn data_with_the_finished_survives_our_first_write() {
    let pki = pki(TLS13);
    let (server, client) = sockets().await;
    let client = client.into_std().unwrap();
    client.set_nonblocking(false).unwrap();
    let config = pki.client.clone();
    let peer = std::thread::spawn(move || {
        let mut tcp = client;
        let mut conn = rustls::ClientConnection::new(config, name()).unwrap();
        // Written before the handshake ends: rustls sends it right after the Finished.
        conn.writer().write_all(b"EHLO early.test\r\n").unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply);
        reply
    });
    let mut tls = ServerTls::accept(server, pki.server.clone(), &[], None)
        .await
        .unwrap();
    // Give the early command time to arrive before we write.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tls.write(b"220 mx.test\r\n").unwrap();
    assert_eq!(tls.held, b"EHLO early.test\r\n", "came with the Finished");
    tls.flush().await.unwrap();
    assert_eq!(read_exactly(&mut tls, 17).await.0, b"EHLO early.test\r\n");
    tls.close(false).await.unwrap();
    drop(tls);
    assert_eq!(peer.join().unwrap(), b"220 mx.test\r\n");
}

/// A key update from the client is answered, and a large write arrives whole through
/// records cut across reads.
#[tokio::test]
async fn key_update_and_records_cut_across_reads() {
    let pki = pki(TLS13);
    let (mut tls, mut client) = connected(&pki).await;
    client.get_mut().1.refresh_traffic_keys().unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let body = body.clone();
        tokio::spawn(async move {
            for chunk in body.chunks(7_000) {
                client.write_all(chunk).await.unwrap();
                client.flush().await.unwrap();
            }
            client
        })
    };
    let (got, _) = read_exactly(&mut tls, body.len()).await;
    assert!(got == body, "the body arrives whole and in order");
    let mut client = writer.await.unwrap();
    tls.write(b"250 ok\r\n").unwrap();
    tls.close(false).await.unwrap();
    assert_eq!(to_the_end(&mut client).await, b"250 ok\r\n");
}

/// A handshake that fails sends its alert: the client learns why.
#[tokio::test]
async fn a_failed_handshake_sends_its_alert() {
    let pki = pki(TLS13);
    let only_12 = self::pki(TLS12).client;
    let (tls, client) = handshake(&pki.server, &only_12).await;
    assert!(tls.is_err());
    let err = client.expect_err("no common version").to_string();
    assert!(err.contains("ProtocolVersion"), "{err}");
}

/// A record that does not decrypt after the handshake: the stream reports the close, refuses
/// to write, and closes with the alert rustls queued, never asking rustls again.
#[tokio::test]
async fn a_bad_record_after_the_handshake_ends_the_stream_cleanly() {
    let pki = pki(TLS13);
    let (mut tls, mut client) = connected(&pki).await;
    // An application-data record of 40 random-looking octets, then a good record.
    let mut bad = vec![0x17, 0x03, 0x03, 0x00, 40];
    bad.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    client.get_mut().0.write_all(&bad).await.unwrap();
    client.write_all(b"NOOP\r\n").await.unwrap();
    let (got, r) = read_exactly(&mut tls, 1).await;
    assert!(got.is_empty(), "nothing after a bad record is delivered");
    assert_eq!(r, Read::Closed);
    assert!(tls.failed);
    assert_eq!(
        tls.read_now(usize::MAX, |_| panic!("no data")),
        Read::Closed
    );
    assert_eq!(
        tls.write(b"250 ok\r\n").unwrap_err().kind(),
        std::io::ErrorKind::BrokenPipe
    );
    tls.close(false).await.unwrap();
    let mut rest = Vec::new();
    let err = client.read_to_end(&mut rest).await.unwrap_err();
    assert!(err.to_string().contains("BadRecordMac"), "{err}");
}

/// A flushed output buffer is the thread's spare: the next batch starts in it (empty, with
/// nothing of the last session's bytes), and one over the bound is freed instead.
#[test]
fn the_spare_output_buffer_is_reused_emptied_and_bounded() {
    use super::{append, give_back, SPARE, SPARE_MAX};
    let mut out = Vec::new();
    append(&mut out, |b| {
        b[..9].copy_from_slice(b"250 ok\r\n!");
        Ok(9)
    })
    .unwrap();
    let first = out.as_ptr();
    give_back(out);
    let mut next = Vec::new();
    append(&mut next, |_| Ok(0)).unwrap();
    assert_eq!(next.as_ptr(), first, "the next batch starts in the spare");
    assert!(
        next.is_empty(),
        "and none of the last batch's bytes are in it"
    );
    give_back(next);
    // A second buffer while the spare is there is freed; so is one over the bound.
    give_back(Vec::with_capacity(64));
    let kept = SPARE.take();
    assert_eq!(kept.as_ptr(), first);
    give_back(Vec::with_capacity(SPARE_MAX + 1));
    assert_eq!(SPARE.take().capacity(), 0, "a big buffer is not kept");
}

/// A read's budget bounds what is taken from the socket, but never below a whole record: with
/// four full records waiting and a budget of 100 octets, each read delivers one record.
#[tokio::test]
async fn a_read_budget_takes_a_record_at_a_time() {
    let pki = pki(TLS13);
    let (mut tls, mut client) = connected(&pki).await;
    let body = vec![b'x'; 4 * 16_384];
    client.write_all(&body).await.unwrap();
    client.flush().await.unwrap();
    // All four records in the socket before the first read: a read that found only part of
    // them would leave a longer partial record, and the next could complete two.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut got = Vec::new();
    let mut reads = Vec::new();
    while got.len() < body.len() {
        let before = got.len();
        match tls.read_now(100, |data| got.extend_from_slice(data)) {
            Read::Data { .. } => reads.push(got.len() - before),
            Read::WouldBlock => tls.tcp().readable().await.unwrap(),
            Read::Closed | Read::Alert(_) => panic!("closed after {} octets", got.len()),
        }
    }
    assert_eq!(got, body);
    assert_eq!(reads, [16_384; 4], "one record per read");
}

const GREETING: &[u8] = b"220 mx.test ESMTP\r\n";

/// A client on a blocking socket that takes the server's flights, and what came with them,
/// without sending its own Finished: what it holds when the handshake is over on its side
/// (or when the server has sent nothing more for a while).
fn before_our_finished(
    config: Arc<ClientConfig>,
    tcp: TcpStream,
) -> (rustls::ClientConnection, std::net::TcpStream, Vec<u8>) {
    let mut tcp = tcp.into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut conn = rustls::ClientConnection::new(config, name()).unwrap();
    // The ClientHello.
    while conn.wants_write() {
        conn.write_tls(&mut tcp).unwrap();
    }
    let mut early = Vec::new();
    loop {
        match conn.read_tls(&mut tcp) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("{e}"),
        }
        conn.process_new_packets().unwrap();
        let mut buf = [0; 256];
        while let Ok(n) = conn.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            early.extend_from_slice(&buf[..n]);
        }
        if early.len() >= GREETING.len() {
            break;
        }
    }
    (conn, tcp, early)
}

/// TLS 1.3 without a client certificate: the greeting leaves with the server's flight, and
/// the client holds it before it has sent its Finished. The handshake still ends with that
/// Finished, and the session goes on.
#[tokio::test]
async fn tls13_greeting_leaves_with_the_handshake() {
    let pki = pki(TLS13);
    let (server_tcp, client_tcp) = sockets().await;
    let config = pki.client.clone();
    let peer = std::thread::spawn(move || {
        let (mut conn, mut tcp, early) = before_our_finished(config, client_tcp);
        assert!(!conn.is_handshaking(), "the server's Finished came");
        assert_eq!(early, GREETING, "the greeting came before our Finished");
        conn.writer().write_all(b"EHLO client.test\r\n").unwrap();
        tcp.set_read_timeout(None).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.flush().unwrap();
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply);
        reply
    });
    let mut tls = ServerTls::accept(server_tcp, pki.server.clone(), GREETING, None)
        .await
        .unwrap();
    assert!(tls.sent_half_rtt());
    assert!(
        !tls.conn().is_handshaking(),
        "ended with the client's Finished"
    );
    assert_eq!(read_exactly(&mut tls, 18).await.0, b"EHLO client.test\r\n");
    tls.write(b"250 mx.test\r\n").unwrap();
    tls.close(false).await.unwrap();
    drop(tls);
    assert_eq!(peer.join().unwrap(), b"250 mx.test\r\n");
}

/// A TLS 1.3 server that asks for a client certificate (and takes a client without one).
fn asking() -> Pki {
    let (cert, key) = server_cert();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    pki_from(cert, key, TLS13, Some(verifier))
}

/// Where half-RTT data cannot be sent, nothing is sent before the client's Finished and the
/// handshake says so: TLS 1.2, and a full TLS 1.3 handshake with a client certificate asked
/// for (rustls sends nothing to a client it may still have to authenticate).
#[tokio::test]
async fn no_greeting_with_the_handshake_for_tls12_or_a_client_certificate() {
    for (what, pki) in [("TLS 1.2", pki(TLS12)), ("client certificate", asking())] {
        let (server_tcp, client_tcp) = sockets().await;
        let config = pki.client.clone();
        let peer = std::thread::spawn(move || {
            let (mut conn, mut tcp, early) = before_our_finished(config, client_tcp);
            assert_eq!(early, b"", "nothing before our Finished ({what})");
            tcp.set_read_timeout(None).unwrap();
            while conn.is_handshaking() || conn.wants_write() {
                conn.complete_io(&mut tcp).unwrap();
            }
        });
        let tls = ServerTls::accept(server_tcp, pki.server.clone(), GREETING, None)
            .await
            .unwrap();
        assert!(!tls.sent_half_rtt(), "{what}");
        peer.join().unwrap();
    }
}

/// Whether `tcp` has received anything within 50 ms (a byte, or the end of the stream).
async fn arrives(tcp: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let wait = std::time::Duration::from_millis(50);
    tokio::time::timeout(wait, tcp.peek(&mut byte))
        .await
        .is_ok()
}

/// A connection's last bytes, with its close following at once: the kernel holds them for
/// the close's FIN (one segment), and they arrive whole with it. On TLS (the reply and the
/// close_notify), and on a plain connection (a QUIT to the backend).
#[tokio::test]
async fn last_bytes_wait_for_the_fin_and_arrive_with_it() {
    let pki = pki(TLS13);
    let (mut tls, mut client) = connected(&pki).await;
    tls.write(b"221 2.0.0 Bye\r\n").unwrap();
    tls.close(true).await.unwrap();
    assert!(
        !arrives(client.get_mut().0).await,
        "held for the FIN until the socket closes"
    );
    drop(tls);
    assert_eq!(to_the_end(&mut client).await, b"221 2.0.0 Bye\r\n");

    let (ours, mut theirs) = sockets().await;
    let mut plain = crate::io::Stream::Plain(ours);
    plain.write_last(b"QUIT\r\n").await.unwrap();
    assert!(!arrives(&mut theirs).await, "held for the FIN");
    drop(plain);
    assert_eq!(to_the_end(&mut theirs).await, b"QUIT\r\n");
}

/// Without a close to follow (a lingering close shuts the socket down later), the last
/// reply leaves at once.
#[tokio::test]
async fn a_close_that_lingers_sends_at_once() {
    let pki = pki(TLS13);
    let (mut tls, mut client) = connected(&pki).await;
    tls.write(b"421 4.4.2 Timeout, closing connection\r\n")
        .unwrap();
    tls.close(false).await.unwrap();
    assert!(arrives(client.get_mut().0).await, "sent before any close");
}

/// A session resumed on a listener that asks for client certificates: its client was
/// authenticated by the ticket (no certificate is asked for again), and rustls sends the
/// greeting with the handshake, as on any TLS 1.3 listener. The full handshake before it did
/// not.
#[tokio::test]
async fn a_resumed_session_asked_for_a_certificate_is_greeted_in_the_handshake() {
    let pki = asking();
    for round in 0..2 {
        let (server_tcp, client_tcp) = sockets().await;
        let config = pki.client.clone();
        let peer = std::thread::spawn(move || {
            let (mut conn, mut tcp, early) = before_our_finished(config, client_tcp);
            tcp.set_read_timeout(None).unwrap();
            // Our Finished, then the ticket and the close_notify.
            let mut rest = Vec::new();
            rustls::Stream::new(&mut conn, &mut tcp)
                .read_to_end(&mut rest)
                .unwrap();
            (early, rest)
        });
        let mut tls = ServerTls::accept(server_tcp, pki.server.clone(), GREETING, None)
            .await
            .unwrap();
        let kind = tls.conn().handshake_kind();
        let sent = tls.sent_half_rtt();
        tls.close(false).await.unwrap();
        drop(tls);
        let (early, rest) = peer.join().unwrap();
        assert_eq!(rest, b"");
        if round == 0 {
            assert_eq!(kind, Some(HandshakeKind::Full));
            assert!(!sent);
            assert_eq!(early, b"", "nothing before our Finished");
        } else {
            assert_eq!(kind, Some(HandshakeKind::Resumed));
            assert!(sent);
            assert_eq!(early, GREETING, "the greeting before our Finished");
        }
    }
}

/// A rustls client's ClientHello, as one record.
fn real_client_hello() -> Vec<u8> {
    let pki = pki(TLS13);
    let mut conn = rustls::ClientConnection::new(Arc::clone(&pki.client), name()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// The same handshake payload re-cut into records of `size` octets each.
fn in_records(record: &[u8], size: usize) -> Vec<u8> {
    let payload = &record[5..];
    let mut out = Vec::new();
    for piece in payload.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// The wait for a ClientHello before a handshake slot: whole only when every octet of the
/// message is in, however it is cut into records (a tiny first record is not the
/// ClientHello), anything that is not one lets the handshake fail at once, and one longer
/// than the bound is refused.
#[test]
fn a_client_hello_is_whole_only_when_all_of_it_is_in() {
    use super::{hello_state, Hello, MAX_CLIENT_HELLO};
    let hello = real_client_hello();
    for recut in [
        hello.clone(),
        in_records(&hello, 100),
        in_records(&hello, 1),
    ] {
        assert_eq!(hello_state(&recut), Hello::Whole);
        // Every octet short of the end, wherever the cut falls (a record header, the
        // message's header, a payload): not yet.
        for cut in 1..recut.len() {
            assert_eq!(hello_state(&recut[..cut]), Hello::Incomplete, "cut {cut}");
        }
    }
    // The attack: a first record of one octet, then silence.
    assert_eq!(hello_state(&[22, 3, 1, 0, 1, 1]), Hello::Incomplete);
    // Not a ClientHello: the handshake refuses it at once, no need to wait.
    assert_eq!(hello_state(b""), Hello::Other);
    assert_eq!(hello_state(b"EHLO x\r\n"), Hello::Other);
    assert_eq!(hello_state(&[23, 3, 3, 0, 5]), Hello::Other);
    assert_eq!(hello_state(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Hello::Other);
    assert_eq!(hello_state(&[22, 3, 1, 0, 0]), Hello::Other);
    // Longer than the bound, said in its header: refused before the rest comes.
    let long = u32::try_from(MAX_CLIENT_HELLO - 3).unwrap().to_be_bytes();
    assert_eq!(
        hello_state(&[22, 3, 1, 0, 4, 1, long[1], long[2], long[3]]),
        Hello::TooLong
    );
    let just = u32::try_from(MAX_CLIENT_HELLO - 4).unwrap().to_be_bytes();
    assert_eq!(
        hello_state(&[22, 3, 1, 0, 4, 1, just[1], just[2], just[3]]),
        Hello::Incomplete
    );
}

/// `work`'s result; a test that would hang fails instead.
async fn within<F: std::future::Future>(work: F) -> F::Output {
    let limit = std::time::Duration::from_secs(60);
    tokio::time::timeout(limit, work)
        .await
        .expect("done in a minute")
}

/// Whether `work`'s first poll has to wait.
async fn waits_at_first<F: std::future::Future + Unpin>(work: &mut F) -> bool {
    use std::task::Poll;
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *work).poll(cx).is_pending()))
        .await
}

/// More than loopback's socket buffers hold (with this machine's default `tcp_wmem` and
/// `tcp_rmem`), in a pattern that shows a byte lost, doubled or out of place.
fn more_than_the_sockets_hold() -> Vec<u8> {
    (0..32u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// `work` (a write or close toward `peer`, which reads nothing yet) has to wait at first; then
/// `peer` reads to its connection's end, and `work` is done: its result, and the reader,
/// which returns what `peer` read once the caller has closed the connection.
async fn waits_then_peer_reads<W, P>(
    mut work: W,
    mut peer: P,
) -> (W::Output, tokio::task::JoinHandle<Vec<u8>>)
where
    W: std::future::Future + Unpin,
    P: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    assert!(
        waits_at_first(&mut work).await,
        "the peer reads nothing yet"
    );
    let reader = tokio::spawn(async move { to_the_end(&mut peer).await });
    (within(work).await, reader)
}

/// A write that has to wait for its peer to read keeps its progress across polls, on each
/// kind of leg: the peer gets every byte once, in order, and nothing after them. Each is seen
/// to wait first.
#[tokio::test]
async fn writes_that_wait_for_the_peer_arrive_whole() {
    use crate::io::Stream;
    let data = Arc::new(more_than_the_sockets_hold());

    // Plain TCP (the backend leg).
    let (ours, theirs) = sockets().await;
    let mut plain = Stream::Plain(ours);
    let (written, reader) = waits_then_peer_reads(plain.write(&data), theirs).await;
    written.unwrap();
    drop(plain);
    assert!(within(reader).await.unwrap() == *data);

    // Server TLS (the client leg): a write beyond the flush threshold is sent at once.
    let pki = pki(TLS13);
    let (tls, client) = connected(&pki).await;
    let mut server = Stream::ServerTls(Box::new(tls));
    let (written, reader) = waits_then_peer_reads(server.write(&data), client).await;
    written.unwrap();
    within(server.close()).await;
    assert!(within(reader).await.unwrap() == *data);

    // Client TLS (an originate session's next hop): what does not fit in rustls' buffer is
    // written out and flushed.
    let (tls, client) = connected(&pki).await;
    let mut next_hop = Stream::ClientTls(Box::new(client));
    let mut write = next_hop.write(&data);
    assert!(
        waits_at_first(&mut write).await,
        "the server reads nothing yet"
    );
    let want = data.len();
    let reader = tokio::spawn(async move {
        let mut tls = tls;
        // One octet more than was sent: only the close ends the read.
        read_exactly(&mut tls, want + 1).await
    });
    within(write).await.unwrap();
    within(next_hop.close()).await;
    let (got, end) = within(reader).await.unwrap();
    assert!(got == *data);
    assert_eq!(end, Read::Closed);
}

/// The last bytes of a plain connection, sent before its FIN, and the close of each kind of
/// TLS leg, with more buffered than the socket takes at once: sent whole, once, and the
/// connection closed after them.
#[tokio::test]
async fn last_writes_and_closes_that_wait_send_everything_once() {
    use crate::io::Stream;
    let data = Arc::new(more_than_the_sockets_hold());

    // Plain: the part that fits leaves with `MSG_MORE`, the rest as the socket takes it.
    let (ours, theirs) = sockets().await;
    let mut plain = Stream::Plain(ours);
    let (written, reader) = waits_then_peer_reads(plain.write_last(&data), theirs).await;
    written.unwrap();
    drop(plain);
    assert!(within(reader).await.unwrap() == *data);

    // Server TLS: the replies of a batch, then the close_notify, in the close's flush.
    let pki = pki(TLS13);
    let (mut tls, client) = connected(&pki).await;
    tls.write(&data).unwrap();
    let mut server = Stream::ServerTls(Box::new(tls));
    let ((), reader) = waits_then_peer_reads(server.close(), client).await;
    assert!(matches!(server, Stream::None), "closed once sent");
    let got = within(reader).await.unwrap();
    assert!(got == *data, "one close_notify, after it all");

    // Client TLS: its close_notify after what its buffer still holds.
    let (mut tls, mut client) = connected(&pki).await;
    client.get_mut().1.set_buffer_limit(None);
    client.get_mut().1.writer().write_all(&data).unwrap();
    let mut next_hop = Stream::ClientTls(Box::new(client));
    let mut close = next_hop.close_notify(true);
    assert!(
        waits_at_first(&mut close).await,
        "the server reads nothing yet"
    );
    let want = data.len();
    let reader = tokio::spawn(async move { read_exactly(&mut tls, want + 1).await });
    within(close).await.unwrap();
    let (got, end) = within(reader).await.unwrap();
    assert!(got == *data);
    assert_eq!(end, Read::Closed);
}
