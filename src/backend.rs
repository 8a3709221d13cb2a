//! The legacy server(s) of a listener as a pool (SPEC §3, issue 15 "Pool with health
//! checks"): `backend.servers` in order, each under `connect_timeout`, skipping the servers
//! marked down. A failed connection marks its server down at once, so the next session skips
//! it; an SMTP health check (connect, `220`, EHLO, QUIT; over the hop's TLS when it has one)
//! every `health_check_interval` marks each server up or down, and is what brings a server
//! back. With every server down, a session is refused at once (`421 4.4.2`) without waiting
//! for any connect.
//!
//! The encrypted hop (`backend.tls`) is the pool's too: an implicit-TLS connection is
//! handshaken here before the session sees it, and the session's STARTTLS with the backend
//! ends in [`Pool::starttls`]; each is checked as `backend.tls_verify` says, against the
//! server's host name or address.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use smtp_core::reply::{Reply, ReplyParser};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::metrics::HandshakeError;

use crate::io::Stream;
use crate::metrics::ListenerMetrics;
use crate::shutdown::Shutdown;

/// How often each server is checked unless `backend.health_check_interval` says otherwise.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The longest a check waits for each write, and for each reply (greeting, EHLO) unless the
/// pool says otherwise ([`Pool::with_reply_timeout`]).
pub const CHECK_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a check waits for a reply whatever the sessions wait: a check round waits for
/// its slowest server, and what the others are found to be waits with it.
pub const MAX_CHECK_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes a check reads from a server: a hostile one cannot make it buffer more.
const CHECK_MAX_BYTES: usize = 64 * 1024;

/// One listener's servers, in order, and what is known of each.
#[derive(Debug)]
pub struct Pool {
    servers: Vec<Server>,
    connect_timeout: Duration,
    check_interval: Duration,
    /// How long a check waits for each reply.
    reply_timeout: Duration,
    tls: Option<HopTls>,
}

/// The encrypted hop to the servers (`backend.tls`).
#[derive(Debug, Clone)]
pub struct HopTls {
    /// TLS from the first byte; otherwise the session does STARTTLS first.
    pub implicit: bool,
    /// From [`crate::tls::backend_config`]: verifying or not, as `tls_verify` says.
    pub config: Arc<rustls::ClientConfig>,
}

#[derive(Debug)]
struct Server {
    addr: String,
    /// `true` while up or not yet checked (so the first sessions try it).
    up: AtomicBool,
    /// `backend.xclient` is on and this server was seen without XCLIENT (logged once).
    no_xclient: AtomicBool,
    /// Its EHLO reply to the last health check that passed (over the hop's TLS when it has
    /// one); cleared when it is marked down.
    ehlo: ArcSwapOption<Reply>,
}

impl Pool {
    /// Plain connections, checked every [`CHECK_INTERVAL`].
    pub fn new(servers: &[String], connect_timeout: Duration) -> Self {
        Pool {
            servers: servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    up: AtomicBool::new(true),
                    no_xclient: AtomicBool::new(false),
                    ehlo: ArcSwapOption::empty(),
                })
                .collect(),
            connect_timeout,
            check_interval: CHECK_INTERVAL,
            reply_timeout: CHECK_REPLY_TIMEOUT,
            tls: None,
        }
    }

    /// A check waits for each reply as long as a session waits for the backend's
    /// (`timeouts.backend_reply`), up to [`MAX_CHECK_REPLY_TIMEOUT`]: a server that greets
    /// slowly (a reverse lookup, a greet pause) but serves every session is not down.
    pub fn with_reply_timeout(mut self, sessions_wait: Duration) -> Self {
        self.reply_timeout = check_reply_timeout(sessions_wait);
        self
    }

    /// A terminate listener's hop: how often to check, and its TLS.
    pub fn with_hop(mut self, check_interval: Duration, tls: Option<HopTls>) -> Self {
        self.check_interval = check_interval;
        self.tls = tls;
        self
    }

    /// The session's STARTTLS with server `server` (an index from [`Pool::connect`]) was
    /// accepted: the handshake, by `deadline`.
    pub async fn starttls(
        &self,
        server: usize,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<Stream, HopTlsError> {
        let (Some(tls), Some(s)) = (&self.tls, self.servers.get(server)) else {
            return Err(HopTlsError::Unusable(
                "no TLS configured for the backend".into(),
            ));
        };
        let stream = timeout_at(deadline, handshake(tls, &s.addr, tcp))
            .await
            .map_err(|_| HopTlsError::Timeout)??;
        Ok(Stream::ClientTls(Box::new(stream)))
    }

    /// Log, once per server, that it does not offer XCLIENT although `backend.xclient` is on.
    pub fn xclient_not_offered(&self, listener: &str, server: usize) {
        if let Some(s) = self.servers.get(server) {
            if !s.no_xclient.swap(true, Ordering::Relaxed) {
                tracing::warn!(listener, server = %s.addr, "backend does not offer XCLIENT: it sees the sidecar's address, not the client's (logged once per server)");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Whether a new session tries any server: one is up, or not yet checked.
    pub fn any_up(&self) -> bool {
        self.servers.iter().any(|s| s.up.load(Ordering::Relaxed))
    }

    /// Whether `server` is tried by new sessions (up, or not yet checked).
    pub fn is_up(&self, server: &str) -> bool {
        self.servers
            .iter()
            .any(|s| s.addr == server && s.up.load(Ordering::Relaxed))
    }

    /// The EHLO reply of the server a new session connects to (the first not marked down),
    /// from its last health check; `None` until one has passed. A session started under a
    /// handshake flood answers its client's EHLO before STARTTLS with it and connects only
    /// once it needs the backend (`smtp_core::inbound::Session::new_deferred`).
    pub fn known_ehlo(&self) -> Option<Arc<Reply>> {
        let first = self.servers.iter().find(|s| s.up.load(Ordering::Relaxed))?;
        first.ehlo.load_full()
    }

    /// A session found server `i` unusable before serving anything on it (its STARTTLS not
    /// offered or refused, its handshake failed): marked down, as a failed connect is, so the
    /// next session skips it until a health check passes. Its address, for `backend_up`.
    pub fn session_failed(&self, listener: &str, i: usize, why: &str) -> Option<&str> {
        self.mark(listener, i, false, why);
        self.servers.get(i).map(|s| s.addr.as_str())
    }

    /// Mark server `i` up or down; a change is logged (down with `why`).
    fn mark(&self, listener: &str, i: usize, up: bool, why: &str) {
        let Some(s) = self.servers.get(i) else { return };
        if !up {
            s.ehlo.store(None);
        }
        if s.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(listener, server = %s.addr, "backend server up again");
            } else {
                tracing::warn!(listener, server = %s.addr, reason = %why, "backend server marked down: skipped until a health check passes");
            }
        }
    }

    /// Connect to the first server not marked down that answers (and, for implicit TLS,
    /// completes its handshake, all within `connect_timeout`); a failure marks its server
    /// down. Returns the connection and the server's index. The error names every attempt,
    /// or says that every server is marked down (then no connection is tried at all). `seen`
    /// learns of each attempt, for `backend_up`, and `tls_failed` of each implicit-TLS
    /// handshake that failed (one cut short by `connect_timeout` is counted as a timed-out
    /// connection only).
    pub async fn connect(
        &self,
        listener: &str,
        seen: impl Fn(&str, bool),
        tls_failed: impl Fn(HandshakeError),
    ) -> Result<(Stream, usize), String> {
        let mut failures = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            if !server.up.load(Ordering::Relaxed) {
                failures.push(format!("{}: marked down", server.addr));
                continue;
            }
            let connect = self.open(&server.addr, &tls_failed);
            let why = match timeout(self.connect_timeout, connect).await {
                Ok(Ok(stream)) => {
                    seen(&server.addr, true);
                    return Ok((stream, i));
                }
                Ok(Err(e)) => e,
                Err(_) => format!("timed out after {:?}", self.connect_timeout),
            };
            seen(&server.addr, false);
            self.mark(listener, i, false, &why);
            failures.push(format!("{}: {why}", server.addr));
        }
        Err(failures.join("; "))
    }

    /// One connection to `addr`: TCP, then the handshake for implicit TLS (its failure told
    /// to `tls_failed` too).
    async fn open(
        &self,
        addr: &str,
        tls_failed: &impl Fn(HandshakeError),
    ) -> Result<Stream, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        // Replies and commands are small and latency-bound (DESIGN.md §5).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on backend socket");
        }
        match &self.tls {
            Some(tls) if tls.implicit => {
                let stream = handshake(tls, addr, tcp).await.map_err(|e| {
                    tls_failed(e.kind());
                    e.to_string()
                })?;
                Ok(Stream::ClientTls(Box::new(stream)))
            }
            _ => Ok(Stream::Plain(tcp)),
        }
    }

    /// Check every server each `health_check_interval` until shutdown begins: one round at a time
    /// (so one check per server at a time), the servers of a round concurrently.
    pub async fn health_checks(
        &self,
        listener: &str,
        hostname: &str,
        metrics: &ListenerMetrics,
        mut shutdown: crate::shutdown::Watch,
    ) {
        let every = self.check_interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                r = shutdown.changed() => {
                    if r.is_err() || shutdown.borrow() != Shutdown::Running {
                        return;
                    }
                    continue;
                }
            }
            let round = self.servers.iter().enumerate().map(|(i, s)| async move {
                let tls = self.tls.as_ref();
                let waits = (self.connect_timeout, self.reply_timeout);
                let result = check(&s.addr, hostname, waits, tls).await;
                metrics.backend_up(&s.addr, result.is_ok(), crate::clock::unix_now());
                match result {
                    Ok(ehlo) => {
                        s.ehlo.store(Some(Arc::new(ehlo)));
                        self.mark(listener, i, true, "");
                    }
                    Err(why) => self.mark(listener, i, false, &format!("health check: {why}")),
                }
            });
            tokio::select! {
                () = join_all(round) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Run futures concurrently to completion (a small `join_all`, to add no dependency).
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// A client handshake with server `addr` over `tcp`, named by its host part.
async fn handshake(
    tls: &HopTls,
    addr: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HopTlsError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let name = crate::tls::server_name(host)
        .ok_or_else(|| HopTlsError::Unusable(format!("unusable name {host:?}")))?;
    tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
        .connect(name, tcp)
        .await
        .map_err(HopTlsError::Failed)
}

/// A TLS handshake with a backend server that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HopTlsError {
    #[error("TLS handshake timed out")]
    Timeout,
    /// No handshake could be tried (no TLS configuration, a server name rustls refuses).
    #[error("{0}")]
    Unusable(String),
    /// The handshake failed: the server's certificate refused (`backend.tls_verify`), an
    /// alert, not TLS at all...
    #[error("TLS handshake: {0}")]
    Failed(std::io::Error),
}

impl HopTlsError {
    /// Its reason in `tls_handshake_errors_total`.
    pub fn kind(&self) -> HandshakeError {
        match self {
            HopTlsError::Timeout => HandshakeError::Timeout,
            HopTlsError::Unusable(_) => HandshakeError::Protocol,
            HopTlsError::Failed(e) => HandshakeError::of(e),
        }
    }
}

/// How long a check waits for each reply when sessions wait `sessions_wait`
/// ([`Pool::with_reply_timeout`]).
pub fn check_reply_timeout(sessions_wait: Duration) -> Duration {
    sessions_wait.min(MAX_CHECK_REPLY_TIMEOUT)
}

/// One SMTP health check: connect (under `connect_timeout`), a `220` greeting, `EHLO
/// <hostname>` answered 2xx, then `QUIT`, each reply within `reply_timeout`. Over the hop's
/// TLS: implicit from the start, or STARTTLS (offered and accepted) and EHLO again. Every
/// wait has a deadline. The EHLO reply (the last one: over TLS when the hop has it) is what
/// the server offers a session. A refused EHLO fails: sessions pass the client's EHLO on, so
/// a server that refuses it (a policy refusal, or one that knows only HELO) cannot offer
/// them STARTTLS or XCLIENT, and the next server may.
pub async fn check(
    server: &str,
    hostname: &str,
    (connect_timeout, reply_timeout): (Duration, Duration),
    tls: Option<&HopTls>,
) -> Result<Reply, String> {
    let mut tcp = match timeout(connect_timeout, TcpStream::connect(server)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err(format!("connect: timed out after {connect_timeout:?}")),
    };
    let Some(tls) = tls else {
        let ehlo = greet(&mut tcp, hostname, reply_timeout).await?;
        quit(&mut tcp).await;
        return Ok(ehlo);
    };
    let handshake = |tcp| async move {
        timeout(connect_timeout, handshake(tls, server, tcp))
            .await
            .map_err(|_| "TLS handshake: timed out".to_owned())?
            .map_err(|e| e.to_string())
    };
    if tls.implicit {
        let mut stream = handshake(tcp).await?;
        let ehlo = greet(&mut stream, hostname, reply_timeout).await?;
        quit(&mut stream).await;
        return Ok(ehlo);
    }
    let ehlo = greet(&mut tcp, hostname, reply_timeout).await?;
    if ehlo.extension("STARTTLS").is_none() {
        return Err("STARTTLS not offered".into());
    }
    write(&mut tcp, b"STARTTLS\r\n").await?;
    let mut replies = Replies::new(reply_timeout);
    let reply = replies
        .next(&mut tcp)
        .await
        .map_err(|e| format!("STARTTLS: {e}"))?;
    if reply.code != 220 || replies.parser.buffered() > 0 {
        return Err(format!("STARTTLS: {}", one_line(&reply)));
    }
    let mut stream = handshake(tcp).await?;
    let ehlo = ehlo_on(&mut stream, &mut Replies::new(reply_timeout), hostname).await?;
    quit(&mut stream).await;
    Ok(ehlo)
}

/// The greeting (`220`) and our EHLO (2xx), each within `reply_timeout`; the EHLO reply.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hostname: &str,
    reply_timeout: Duration,
) -> Result<Reply, String> {
    let mut replies = Replies::new(reply_timeout);
    let greeting = replies
        .next(s)
        .await
        .map_err(|e| format!("greeting: {e}"))?;
    if greeting.code != 220 {
        return Err(format!("greeting: {}", one_line(&greeting)));
    }
    ehlo_on(s, &mut replies, hostname).await
}

async fn ehlo_on<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    replies: &mut Replies,
    hostname: &str,
) -> Result<Reply, String> {
    write(s, format!("EHLO {hostname}\r\n").as_bytes()).await?;
    let ehlo = replies.next(s).await.map_err(|e| format!("EHLO: {e}"))?;
    if !ehlo.is_positive() {
        return Err(format!("EHLO: {}", one_line(&ehlo)));
    }
    Ok(ehlo)
}

/// The check has passed. QUIT, then wait for the server to close first, so that the
/// TIME_WAIT of a check every few seconds is the server's, not ours; one that does not close
/// in time is reset.
async fn quit<S: AsyncRead + AsyncWrite + Unpin + Socket>(s: &mut S) {
    let _ = write(s, b"QUIT\r\n").await;
    let mut rest = [0u8; 512];
    let closed = timeout(CHECK_REPLY_TIMEOUT, async {
        loop {
            match s.read(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if closed.is_err() {
        let _ = s.tcp().set_zero_linger();
    }
}

/// The TCP connection under a check's stream.
trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

async fn write<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Result<(), String> {
    match timeout(CHECK_REPLY_TIMEOUT, s.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Err(_) => Err("write: timed out".into()),
    }
}

fn one_line(reply: &Reply) -> String {
    format!(
        "{} {}",
        reply.code,
        reply.lines.first().map_or("", String::as_str)
    )
}

/// The replies of one check's connection, within [`CHECK_MAX_BYTES`] in all.
struct Replies {
    parser: ReplyParser,
    read: usize,
    /// How long each reply may take.
    wait: Duration,
}

impl Replies {
    fn new(wait: Duration) -> Self {
        Replies {
            parser: ReplyParser::new(),
            read: 0,
            wait,
        }
    }

    /// The next whole reply, within the wait.
    async fn next<S: AsyncRead + Unpin>(&mut self, tcp: &mut S) -> Result<Reply, String> {
        let deadline = Instant::now() + self.wait;
        let mut buf = [0u8; 2048];
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(format!("{e:?}")),
            }
            if self.read >= CHECK_MAX_BYTES {
                return Err(format!("more than {CHECK_MAX_BYTES} bytes"));
            }
            let room = buf.len().min(CHECK_MAX_BYTES - self.read);
            match timeout_at(deadline, tcp.read(&mut buf[..room])).await {
                Ok(Ok(0)) => return Err("connection closed".into()),
                Ok(Ok(n)) => {
                    self.read += n;
                    self.parser.push(&buf[..n]);
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no reply within {:?}", self.wait)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
