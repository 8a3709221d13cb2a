//! The cheap side of a TLS handshake flood, for `scripts/bench-flood.sh --flood-kind hello`.
//!
//! Each attempt connects, sends one ClientHello (on a STARTTLS port after the greeting, `EHLO`
//! and `STARTTLS`), waits for the first record of the server's answer and closes. A TLS 1.3
//! server sends its whole first flight at once, so by then it has done the handshake's key
//! exchange and signature; the client has done no cryptography at all: the ClientHello is
//! made once, at start, and sent again on every connection. That is the asymmetry a real
//! flood uses, and it lets one core of load push a server on another core far past its
//! handshake capacity (`smtp-loadgen`'s full handshakes cost it about what they cost the
//! server, so on a two-core machine the load generator's core fills up first).
//!
//! Output: one JSON line with the fields of `smtp-loadgen`'s that the flood script reads.
//! An attempt is "ok" when the server answered the ClientHello with a handshake record.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "TLS ClientHello flood: connect, send a ClientHello, read the answer, close")]
struct Args {
    /// The listener to flood.
    #[arg(long)]
    addr: SocketAddr,
    /// implicit: the ClientHello at once; starttls: after greeting, EHLO and STARTTLS.
    #[arg(long, value_enum, default_value = "implicit")]
    tls: Tls,
    /// Attempts in all.
    #[arg(short = 'n', default_value_t = 1000)]
    sessions: usize,
    /// Attempts in flight at once.
    #[arg(short = 'c', default_value_t = 100)]
    concurrency: usize,
    /// An attempt's time limit, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// A label copied into the output.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Tls {
    Implicit,
    Starttls,
}

/// A ClientHello for `localhost` offering TLS 1.3 and 1.2, made by rustls' client.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a client");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("writing to a Vec");
    }
    hello
}

/// One attempt: the time until the server's first handshake record, or what went wrong,
/// named by its step as `smtp-loadgen` names them ("connect: …", "TLS handshake: …").
async fn attempt(addr: SocketAddr, tls: Tls, hello: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| io("connect", &e))?;
    let _ = s.set_nodelay(true);
    if tls == Tls::Starttls {
        let mut buf = Vec::new();
        reply(&mut s, &mut buf, "greeting", b"220").await?;
        s.write_all(b"EHLO flood.example\r\n")
            .await
            .map_err(|e| io("EHLO", &e))?;
        reply(&mut s, &mut buf, "EHLO", b"250").await?;
        s.write_all(b"STARTTLS\r\n")
            .await
            .map_err(|e| io("STARTTLS", &e))?;
        reply(&mut s, &mut buf, "STARTTLS", b"220").await?;
    }
    s.write_all(hello)
        .await
        .map_err(|e| io("TLS handshake", &e))?;
    let mut first = [0u8; 1];
    match s.read(&mut first).await {
        Ok(0) => Err("TLS handshake: closed by the server".into()),
        Ok(_) if first[0] == 22 => Ok(t0.elapsed()),
        Ok(_) if first[0] == 21 => Err("TLS handshake: alert".into()),
        Ok(_) => Err("TLS handshake: not a TLS record".into()),
        Err(e) => Err(io("TLS handshake", &e)),
    }
    // Dropped here: the connection closes with the server's flight unread, as a flood's does.
}

/// Reads one SMTP reply (all its lines) and checks its code.
async fn reply(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    step: &str,
    want: &[u8],
) -> Result<(), String> {
    loop {
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if line.len() < 4 || line[3] != b'-' {
                return if line.starts_with(want) {
                    Ok(())
                } else {
                    let code = String::from_utf8_lossy(&line[..line.len().min(3)]).into_owned();
                    Err(format!("{step}: {code}"))
                };
            }
        }
        if buf.len() > 4096 {
            return Err(format!("{step}: reply too long"));
        }
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) => return Err(format!("{step}: closed by the server")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io(step, &e)),
        }
    }
}

fn io(step: &str, e: &std::io::Error) -> String {
    format!("{step}: {:?}", e.kind())
}

/// This process's CPU time (user + system), from /proc/self/stat in clock ticks of 1/100 s.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 of the file (utime, stime) are the 12th and 13th after the name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "null".into();
    }
    let rank = ((sorted.len() as f64) * p / 100.0).ceil() as usize;
    let d = sorted[rank.clamp(1, sorted.len()) - 1];
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let hello: Arc<[u8]> = client_hello().into();
    let limit = Duration::from_secs(args.timeout);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();

    let mut tasks = tokio::task::JoinSet::new();
    let (mut started, mut ok) = (0usize, Vec::with_capacity(args.sessions));
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let (mut errors, mut first_error) = (0usize, None::<String>);
    loop {
        while started < args.sessions && tasks.len() < args.concurrency.max(1) {
            let (addr, tls, hello) = (args.addr, args.tls, Arc::clone(&hello));
            tasks.spawn(async move {
                match tokio::time::timeout(limit, attempt(addr, tls, &hello)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("session timed out after {limit:?}")),
                }
            });
            started += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        match done.unwrap_or_else(|e| Err(format!("task: {e}"))) {
            Ok(d) => ok.push(d),
            Err(kind) => {
                errors += 1;
                first_error.get_or_insert_with(|| kind.clone());
                if kinds.len() < 8 || kinds.contains_key(&kind) {
                    *kinds.entry(kind).or_default() += 1;
                }
            }
        }
    }

    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    ok.sort();
    let kinds = kinds
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_str(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let label = args.label.as_deref().map_or("null".into(), json_str);
    let first_error = first_error.as_deref().map_or("null".into(), json_str);
    println!(
        "{{\"label\": {label}, \"mode\": \"hello\", \"addr\": \"{}\", \"tls\": \"{:?}\", \
         \"sessions\": {}, \"sessions_ok\": {}, \"concurrency\": {}, \"elapsed_s\": {elapsed:.3}, \
         \"sessions_per_s\": {:.3}, \"handshake_ms\": {{\"p50\": {}, \"p99\": {}}}, \
         \"errors\": {errors}, \"first_error\": {first_error}, \"error_kinds\": {{{kinds}}}, \
         \"loadgen_cpu_s\": {cpu:.3}, \"loadgen_cpu_util\": {:.3}}}",
        args.addr,
        args.tls,
        args.sessions,
        ok.len(),
        args.concurrency,
        ok.len() as f64 / elapsed.max(1e-9),
        pct(&ok, 50.0),
        pct(&ok, 99.0),
        cpu / elapsed.max(1e-9),
    );
}
