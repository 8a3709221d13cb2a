//! The legacy server(s) of a listener as a pool (SPEC §3, issue 15 "Pool with health
//! checks"): `backend.servers` in order, each under `connect_timeout`, skipping the servers
//! marked down. A failed connection marks its server down at once, so the next session skips
//! it; an SMTP health check (connect, `220`, EHLO, QUIT) every [`CHECK_INTERVAL`] marks each
//! server up or down, and is what brings a server back. With every server down, a session is
//! refused at once (`421 4.4.2`) without waiting for any connect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use smtp_core::reply::{Reply, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

use crate::metrics::ListenerMetrics;
use crate::runtime::Shutdown;

/// How often each server is checked. Fixed for now: issue 15 gives the fixed waits keys later.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The longest a check waits for each reply (greeting, EHLO), and for each write.
pub const CHECK_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes a check reads from a server: a hostile one cannot make it buffer more.
const CHECK_MAX_BYTES: usize = 64 * 1024;

/// One listener's servers, in order, and what is known of each.
#[derive(Debug)]
pub struct Pool {
    servers: Vec<Server>,
    connect_timeout: Duration,
}

#[derive(Debug)]
struct Server {
    addr: String,
    /// `true` while up or not yet checked (so the first sessions try it).
    up: AtomicBool,
}

impl Pool {
    pub fn new(servers: &[String], connect_timeout: Duration) -> Self {
        Pool {
            servers: servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    up: AtomicBool::new(true),
                })
                .collect(),
            connect_timeout,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Whether `server` is tried by new sessions (up, or not yet checked).
    pub fn is_up(&self, server: &str) -> bool {
        self.servers
            .iter()
            .any(|s| s.addr == server && s.up.load(Ordering::Relaxed))
    }

    /// Mark server `i` up or down; a change is logged (down with `why`).
    fn mark(&self, listener: &str, i: usize, up: bool, why: &str) {
        let Some(s) = self.servers.get(i) else { return };
        if s.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(listener, server = %s.addr, "backend server up again");
            } else {
                tracing::warn!(listener, server = %s.addr, reason = %why, "backend server marked down: skipped until a health check passes");
            }
        }
    }

    /// Connect to the first server not marked down that answers; a failure marks its server
    /// down. The error names every attempt, or says that every server is marked down (then
    /// no connection is tried at all). `seen` learns of each attempt, for `backend_up`.
    pub async fn connect(
        &self,
        listener: &str,
        seen: impl Fn(&str, bool),
    ) -> Result<TcpStream, String> {
        let mut failures = Vec::new();
        for (i, server) in self.servers.iter().enumerate() {
            if !server.up.load(Ordering::Relaxed) {
                failures.push(format!("{}: marked down", server.addr));
                continue;
            }
            let connect = TcpStream::connect(server.addr.as_str());
            let why = match timeout(self.connect_timeout, connect).await {
                Ok(Ok(stream)) => {
                    seen(&server.addr, true);
                    // Replies and commands are small and latency-bound (DESIGN.md §5).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY on backend socket");
                    }
                    return Ok(stream);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {:?}", self.connect_timeout),
            };
            seen(&server.addr, false);
            self.mark(listener, i, false, &why);
            failures.push(format!("{}: {why}", server.addr));
        }
        Err(failures.join("; "))
    }

    /// Check every server each [`CHECK_INTERVAL`] until shutdown begins: one round at a time
    /// (so one check per server at a time), the servers of a round concurrently.
    pub async fn health_checks(
        &self,
        listener: &str,
        hostname: &str,
        metrics: &ListenerMetrics,
        mut shutdown: watch::Receiver<Shutdown>,
    ) {
        let mut ticks = tokio::time::interval_at(Instant::now() + CHECK_INTERVAL, CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() != Shutdown::Running {
                        return;
                    }
                    continue;
                }
            }
            let round = self.servers.iter().enumerate().map(|(i, s)| async move {
                let result = check(&s.addr, hostname, self.connect_timeout).await;
                metrics.backend_up(&s.addr, result.is_ok(), crate::runtime::unix_now());
                match result {
                    Ok(()) => self.mark(listener, i, true, ""),
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

/// One SMTP health check: connect (under `connect_timeout`), a `220` greeting, `EHLO
/// <hostname>` answered 2xx, then `QUIT`. Every wait has a deadline.
pub async fn check(server: &str, hostname: &str, connect_timeout: Duration) -> Result<(), String> {
    let mut tcp = match timeout(connect_timeout, TcpStream::connect(server)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err(format!("connect: timed out after {connect_timeout:?}")),
    };
    let mut replies = Replies {
        parser: ReplyParser::new(),
        read: 0,
    };
    let greeting = replies
        .next(&mut tcp)
        .await
        .map_err(|e| format!("greeting: {e}"))?;
    if greeting.code != 220 {
        return Err(format!("greeting: {}", one_line(&greeting)));
    }
    write(&mut tcp, format!("EHLO {hostname}\r\n").as_bytes()).await?;
    let ehlo = replies
        .next(&mut tcp)
        .await
        .map_err(|e| format!("EHLO: {e}"))?;
    if !ehlo.is_positive() {
        return Err(format!("EHLO: {}", one_line(&ehlo)));
    }
    // The check has passed. QUIT, then wait for the server to close first, so that the
    // TIME_WAIT of a check every few seconds is the server's, not ours; one that does not
    // close in time is reset.
    let _ = write(&mut tcp, b"QUIT\r\n").await;
    let mut rest = [0u8; 512];
    let closed = timeout(CHECK_REPLY_TIMEOUT, async {
        loop {
            match tcp.read(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if closed.is_err() {
        let _ = tcp.set_zero_linger();
    }
    Ok(())
}

async fn write(tcp: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    match timeout(CHECK_REPLY_TIMEOUT, tcp.write_all(bytes)).await {
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
}

impl Replies {
    /// The next whole reply, within [`CHECK_REPLY_TIMEOUT`].
    async fn next(&mut self, tcp: &mut TcpStream) -> Result<Reply, String> {
        let deadline = Instant::now() + CHECK_REPLY_TIMEOUT;
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
                Err(_) => return Err(format!("no reply within {CHECK_REPLY_TIMEOUT:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
