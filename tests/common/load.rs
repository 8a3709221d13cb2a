//! A load client for the tests that change things under traffic (`tests/reload_load.rs`,
//! `tests/failover.rs`): a failure is a value, not a panic, so that a test can count them;
//! each session keeps when it began and was greeted, the SIZE every EHLO reply offered, the
//! messages the server answered 250 to, and what went wrong.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{client_tls_config, Io};

/// The wait for a connection, a handshake or a reply.
pub const WAIT: Duration = Duration::from_secs(10);

/// One session as the client saw it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Which load client ran it.
    pub client: usize,
    /// Just before `connect`.
    pub began: Instant,
    /// When the greeting arrived (a `220` or not).
    pub greeted: Option<Instant>,
    pub ended: Instant,
    /// The SIZE of each EHLO reply, in order (after STARTTLS only the one inside TLS).
    pub sizes: Vec<u64>,
    /// The ids of the messages answered `250` at the end of data.
    pub accepted: Vec<String>,
    /// What ended the session early: an unexpected reply, a closed connection, a timeout.
    pub error: Option<String>,
}

impl Session {
    pub fn new(client: usize) -> Session {
        let now = Instant::now();
        Session {
            client,
            began: now,
            greeted: None,
            ended: now,
            sizes: Vec::new(),
            accepted: Vec::new(),
            error: None,
        }
    }

    /// Record how `body` ended.
    pub fn finish(&mut self, result: Result<(), String>) {
        self.ended = Instant::now();
        self.error = result.err();
    }
}

/// A client connection, plaintext or inside TLS.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect: timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        Ok(Conn {
            io: BufReader::new(Box::new(tcp)),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let io = self.io.get_mut();
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        tokio::time::timeout(WAIT, write)
            .await
            .map_err(|_| "write: timed out".to_owned())?
            .map_err(|e| format!("write: {e}"))
    }

    /// One whole reply; a connection closed or reset before its last line is an error.
    pub async fn reply(&mut self) -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.io.read_line(&mut line))
                .await
                .map_err(|_| format!("no reply within {WAIT:?} after {all:?}"))?
                .map_err(|e| format!("read: {e} after {all:?}"))?;
            if n == 0 {
                return Err(format!("connection closed after {all:?}"));
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
    }

    /// The next reply, which must begin with `code`.
    pub async fn expect(&mut self, code: &str, after: &str) -> Result<String, String> {
        let reply = self.reply().await?;
        if reply.starts_with(code) {
            Ok(reply)
        } else {
            Err(format!("{after}: {reply:?}"))
        }
    }

    /// Send `line`; its reply must begin with `code`.
    pub async fn cmd(&mut self, line: &str, code: &str) -> Result<String, String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.expect(code, line).await
    }

    /// `STARTTLS`, `220`, the handshake (`config` keeps the client's session cache, so a
    /// client that reuses it resumes).
    pub async fn starttls(mut self, config: Arc<rustls::ClientConfig>) -> Result<Conn, String> {
        self.cmd("STARTTLS", "220").await?;
        if !self.io.buffer().is_empty() {
            return Err("plaintext after the 220 to STARTTLS".to_owned());
        }
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from("mx.test").map_err(|e| e.to_string())?;
        let tls = tokio::time::timeout(WAIT, connector.connect(name, self.io.into_inner()))
            .await
            .map_err(|_| "TLS handshake: timed out".to_owned())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(Conn {
            io: BufReader::new(Box::new(tls)),
        })
    }

    /// `EHLO`; the SIZE it offers is pushed on `s.sizes`.
    pub async fn ehlo(&mut self, s: &mut Session) -> Result<u64, String> {
        let reply = self.cmd("EHLO client.test", "250").await?;
        let size = size_of(&reply).ok_or_else(|| format!("no SIZE in {reply:?}"))?;
        s.sizes.push(size);
        Ok(size)
    }

    /// Connect, greeting, EHLO, and with `tls` STARTTLS and EHLO again: a session ready for
    /// a transaction.
    pub async fn open(
        addr: SocketAddr,
        tls: Option<&Arc<rustls::ClientConfig>>,
        s: &mut Session,
    ) -> Result<Conn, String> {
        s.began = Instant::now();
        let mut c = Conn::connect(addr).await?;
        let greeting = c.reply().await;
        s.greeted = Some(Instant::now());
        let greeting = greeting?;
        if !greeting.starts_with("220 ") {
            return Err(format!("greeting: {greeting:?}"));
        }
        match tls {
            None => {
                c.ehlo(s).await?;
                Ok(c)
            }
            Some(config) => {
                c.cmd("EHLO client.test", "250").await?;
                let mut c = c.starttls(Arc::clone(config)).await?;
                c.ehlo(s).await?;
                Ok(c)
            }
        }
    }

    /// One transaction carrying [`message`]`(id)`, declared with `SIZE=`; its id is pushed on
    /// `s.accepted` once the server said `250` to the end of data.
    pub async fn transaction(&mut self, id: &str, s: &mut Session) -> Result<(), String> {
        let m = message(id);
        self.cmd(
            &format!("MAIL FROM:<load@client.test> SIZE={}", m.len()),
            "250",
        )
        .await?;
        self.cmd("RCPT TO:<sink@backend.test>", "250").await?;
        self.cmd("DATA", "354").await?;
        self.send(&m).await?;
        self.expect("250", &format!("end of data of {id}")).await?;
        s.accepted.push(id.to_owned());
        Ok(())
    }

    pub async fn quit(&mut self) -> Result<(), String> {
        self.cmd("QUIT", "221").await.map(drop)
    }
}

/// A client TLS configuration shared by one load client's sessions (any certificate taken).
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    client_tls_config()
}

/// The SIZE line of an EHLO reply.
pub fn size_of(ehlo: &str) -> Option<u64> {
    ehlo.lines()
        .find_map(|l| l.get(4..)?.strip_prefix("SIZE "))
        .and_then(|n| n.trim().parse().ok())
}

/// The message with id `id`, as sent after `354` and as the backend receives it (the
/// listener adds no Received header): a Message-ID that names it, body lines that repeat it
/// (so that a message swapped or cut short shows), one dot-stuffed line, the end of data.
pub fn message(id: &str) -> Vec<u8> {
    let mut m = format!("Message-ID: <{id}@load.test>\r\nSubject: load {id}\r\n\r\n");
    for i in 0..16 {
        m.push_str(&format!("{id} line {i:02} of the body\r\n"));
    }
    m.push_str("..a line that begins with a dot\r\n.\r\n");
    m.into_bytes()
}

/// The id in a message's Message-ID (as [`message`] wrote it).
pub fn message_id(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let rest = text.strip_prefix("Message-ID: <")?;
    Some(rest.split('@').next()?.to_owned())
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
