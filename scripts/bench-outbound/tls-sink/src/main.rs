//! bench-tls-sink: the next hop of `scripts/bench-outbound.sh`. An SMTP sink like the shared
//! harness's smtp-fastsink (accepts every message, discards the data, scans DATA with memmem
//! over 64 KiB reads, TCP_NODELAY, replies flushed when the input runs dry) that also offers
//! STARTTLS (rustls with *ring*), so that both peers under test deliver to it over TLS.
//!
//! Every handshake is a full one: no session cache, no TLS 1.3 tickets, whoever the client is.
//! It counts what arrives and rewrites `--stats FILE` (JSON, atomically) every 100 ms:
//! sessions, TLS handshakes (per version/suite/group), messages over TLS and in plaintext,
//! bytes, and the Unix times of the first and last message accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use memchr::memmem;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[derive(Parser, Debug)]
#[command(about = "STARTTLS SMTP sink: accepts and discards every message, counts them")]
struct Args {
    /// listen address
    #[arg(default_value = "127.0.0.1:2527")]
    listen: SocketAddr,
    /// PEM certificate chain
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key
    #[arg(long)]
    key: PathBuf,
    /// JSON counters, rewritten every 100 ms
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    handshakes: AtomicU64,
    handshake_errors: AtomicU64,
    messages_tls: AtomicU64,
    messages_plain: AtomicU64,
    bytes: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    negotiated: Mutex<BTreeMap<String, u64>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Stats {
    fn message(&self, tls: bool, bytes: u64) {
        let t = now_ns();
        let _ = self.first_ns.compare_exchange(0, t, Relaxed, Relaxed);
        self.last_ns.fetch_max(t, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        if tls {
            self.messages_tls.fetch_add(1, Relaxed);
        } else {
            self.messages_plain.fetch_add(1, Relaxed);
        }
    }

    fn json(&self) -> String {
        let neg = self.negotiated.lock().map(|m| m.clone()).unwrap_or_default();
        let neg: Vec<String> = neg.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!(
            "{{\"sessions\": {}, \"handshakes\": {}, \"handshake_errors\": {}, \
             \"messages_tls\": {}, \"messages_plain\": {}, \"bytes\": {}, \
             \"first_message_unix\": {:.6}, \"last_message_unix\": {:.6}, \
             \"negotiated\": {{{}}}}}\n",
            self.sessions.load(Relaxed),
            self.handshakes.load(Relaxed),
            self.handshake_errors.load(Relaxed),
            self.messages_tls.load(Relaxed),
            self.messages_plain.load(Relaxed),
            self.bytes.load(Relaxed),
            self.first_ns.load(Relaxed) as f64 / 1e9,
            self.last_ns.load(Relaxed) as f64 / 1e9,
            neg.join(", ")
        )
    }
}

const EHLO_PLAIN: &[u8] = b"250-tls-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
250-SIZE 1073741824\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";
const EHLO_TLS: &[u8] = b"250-tls-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
250-SIZE 1073741824\r\n250 ENHANCEDSTATUSCODES\r\n";
const MAX_LINE: usize = 4096;

enum End<S> {
    Closed,
    StartTls(S),
}

/// One SMTP conversation on `stream` until QUIT, EOF, or STARTTLS (then the stream is handed
/// back, with nothing buffered: bytes pipelined after STARTTLS end the session).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tls: bool,
    stats: &Stats,
) -> std::io::Result<End<S>> {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let eod = memmem::Finder::new(b"\r\n.\r\n");
    if !tls {
        r.get_mut().write_all(b"220 tls-sink ESMTP\r\n").await?;
    }
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(End::Closed);
        }
        if !line.ends_with(b"\n") {
            r.get_mut().write_all(b"500 5.5.2 Line too long\r\n").await?;
            return Ok(End::Closed);
        }
        let verb: Vec<u8> = line.iter().take(4).map(|b| b.to_ascii_uppercase()).collect();
        let mut quit = false;
        match &verb[..] {
            b"EHLO" => out.extend_from_slice(if tls { EHLO_TLS } else { EHLO_PLAIN }),
            b"HELO" => out.extend_from_slice(b"250 tls-sink\r\n"),
            b"STAR" if !tls => {
                out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                let pipelined = !r.buffer().is_empty();
                r.get_mut().write_all(&out).await?;
                r.get_mut().flush().await?;
                if pipelined {
                    return Ok(End::Closed);
                }
                return Ok(End::StartTls(r.into_inner()));
            }
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                quit = true;
            }
            b"DATA" => {
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                r.get_mut().write_all(&out).await?;
                r.get_mut().flush().await?;
                out.clear();
                let mut total: u64 = 0;
                let mut prev: Vec<u8> = b"\r\n".to_vec();
                loop {
                    let chunk = r.fill_buf().await?;
                    if chunk.is_empty() {
                        return Ok(End::Closed);
                    }
                    let head = &chunk[..chunk.len().min(4)];
                    let mut joined = prev.clone();
                    joined.extend_from_slice(head);
                    let end = if let Some(p) = eod.find(&joined) {
                        Some(p + 5 - prev.len())
                    } else {
                        eod.find(chunk).map(|p| p + 5)
                    };
                    if let Some(end) = end {
                        r.consume(end);
                        total += end as u64;
                        break;
                    }
                    let len = chunk.len();
                    prev.extend_from_slice(&chunk[len.saturating_sub(4)..]);
                    let cut = prev.len().saturating_sub(4);
                    prev.drain(..cut);
                    r.consume(len);
                    total += len as u64;
                }
                stats.message(tls, total);
                out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
            }
            _ => out.extend_from_slice(b"502 5.5.2 Command not recognized\r\n"),
        }
        if quit || r.buffer().is_empty() {
            r.get_mut().write_all(&out).await?;
            r.get_mut().flush().await?;
            out.clear();
        }
        if quit {
            let _ = r.get_mut().shutdown().await;
            return Ok(End::Closed);
        }
    }
}

async fn session(stream: TcpStream, acceptor: TlsAcceptor, stats: Arc<Stats>) {
    let _ = stream.set_nodelay(true);
    stats.sessions.fetch_add(1, Relaxed);
    let tcp = match converse(stream, false, &stats).await {
        Ok(End::StartTls(tcp)) => tcp,
        _ => return,
    };
    let tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(_) => {
            stats.handshake_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    stats.handshakes.fetch_add(1, Relaxed);
    {
        let c = tls.get_ref().1;
        let key = format!(
            "{:?} {:?} {:?}",
            c.protocol_version(),
            c.negotiated_cipher_suite().map(|s| s.suite()),
            c.negotiated_key_exchange_group().map(|g| g.name())
        )
        .replace('"', "");
        if let Ok(mut m) = stats.negotiated.lock() {
            *m.entry(key).or_insert(0) += 1;
        }
    }
    let _ = converse(tls, true, &stats).await;
}

fn main() {
    let args = Args::parse();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.cert)
        .and_then(|i| i.collect())
        .unwrap_or_else(|e| panic!("{}: {e}", args.cert.display()));
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .unwrap_or_else(|e| panic!("{}: {e}", args.key.display()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate and key");
    // Full handshake every time, for every client: no resumption of any kind.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let stats = Arc::new(Stats::default());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        if let Some(path) = args.stats.clone() {
            let stats = stats.clone();
            tokio::spawn(async move {
                let tmp = path.with_extension("tmp");
                loop {
                    if std::fs::write(&tmp, stats.json()).is_ok() {
                        let _ = std::fs::rename(&tmp, &path);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(args.listen).expect("bind");
        let listener: TcpListener = socket.listen(4096).expect("listen");
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(session(s, acceptor.clone(), stats.clone()));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}
