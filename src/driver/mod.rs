//! The one driver loop (DESIGN.md §1): it moves bytes between the two legs' sockets and a
//! sans-IO session of either direction ([`Machine`]), and carries out the session's actions in
//! order. It decides nothing about SMTP itself. Every wait has a deadline: the session's, or,
//! should the session have set none, the longest wait the listener allows.
//!
//! `handshake` holds the TLS handshakes and what is recorded of them, `events` what a
//! session's events become (metrics, logs).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use smtp_core::session::{Action, DnsFailure, Leg, LoopSeen, Machine, TlsInfo, TlsStart};
use tokio::time::{sleep_until, timeout_at, Sleep};

use crate::io::{Read, Stream};
use crate::shutdown::Shutdown;
use crate::snapshot::ListenerRuntime;

mod events;
mod handshake;

pub(crate) use handshake::accept_tls;

/// Numbers the sessions of this process, for the protocol log.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// The next session's number (taken before its implicit TLS handshake, which it names).
pub fn next_session_id() -> u64 {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

/// How a session's run on the thread it started on ended.
#[derive(Debug)]
pub enum Served {
    /// The session is over; the client's connection if it closes with a linger
    /// ([`Driver::lingering`]). Boxed, as the moved session is: a close lingers only after
    /// an error, a timeout or shutdown, and the connection's task holds this result's place
    /// beside the session's wait, for the session's whole life.
    Ended(Option<Box<Stream>>),
    /// The session started on the admission threads and is to go on on the sessions' threads
    /// ([`Ran::Moved`]): the rest of it, to be run there.
    Moved(Moving),
}

/// The rest of a session that moves to the sessions' threads: its sockets are registered with
/// the runtime that first polls it. Its output is as [`Served::Ended`]'s.
pub struct Moving(Pin<Box<dyn Future<Output = Option<Stream>> + Send>>);

impl std::fmt::Debug for Moving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Moving")
    }
}

impl Future for Moving {
    type Output = Option<Stream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Serve `session` over `client` (session `id` of `l`, from `peer`) until
/// it ends, or until it is to move ([`Ran::Moved`]). Either way its closing line is written
/// once, at its end.
///
/// Its future is most of what every idle session holds (C of ../shared/bench), so it keeps
/// each value once. It is no async fn, which would keep its arguments beside the locals they
/// are moved to (the session twice, 664 octets each); the driver is made before its wait, not
/// in it, where the stream, address and id it took would keep their room beside it; and the
/// listener and the shutdown watch are borrowed from the connection's task, which holds them
/// anyway. When the session began, its closing line asks the session.
#[allow(clippy::manual_async_fn)]
pub fn serve<'a, M: Machine + Send + 'static>(
    l: &'a Arc<ListenerRuntime>,
    mut session: M,
    client: Stream,
    (peer, id): (SocketAddr, u64),
    shutdown: &'a mut crate::shutdown::Watch,
) -> impl Future<Output = Served> + Send + 'a {
    let mut driver = Driver::new(l, peer, id, client);
    async move {
        if driver.run(&mut session, shutdown).await == Ran::Moved {
            let parked = driver.park();
            let rest = resume(Arc::clone(l), session, parked, shutdown.clone());
            return Served::Moved(Moving(Box::pin(rest)));
        }
        driver.ended(session.started(), session.client_tls());
        Served::Ended(driver.lingering().map(Box::new))
    }
}

/// The rest of a session that moved: run where it is first polled, to its end.
async fn resume<M: Machine + Send>(
    l: Arc<ListenerRuntime>,
    mut session: M,
    parked: Parked,
    mut shutdown: crate::shutdown::Watch,
) -> Option<Stream> {
    let peer = parked.peer;
    let mut driver = match Driver::resume(&l, parked) {
        Ok(driver) => driver,
        Err(e) => {
            tracing::info!(listener = %l.name, %peer, error = %e, "connection lost");
            return None;
        }
    };
    // Resumed on the sessions' threads, it does not move again.
    let _closed = driver.run(&mut session, &mut shutdown).await;
    driver.ended(session.started(), session.client_tls());
    driver.lingering()
}

/// Where protocol log lines go: filter them with `smtp_sidecar::protocol=info`.
const PROTOCOL: &str = "smtp_sidecar::protocol";

/// One session's sockets and what the loop knows of them.
#[derive(Debug)]
pub struct Driver<'a> {
    l: &'a ListenerRuntime,
    pub id: u64,
    peer: SocketAddr,
    client: Stream,
    backend: Stream,
    /// The pool's index of the server the backend leg is connected to.
    backend_server: Option<usize>,
    /// Legs written to in this batch of actions, whose TLS buffers the batch's end flushes.
    /// Only writes make a leg dirty: what TLS itself queues after a handshake (a session
    /// ticket) waits for the first reply and leaves with it.
    dirty: [bool; 2],
    /// When the last write to the backend leg ended, until its reply's first bytes arrive:
    /// one command at a time, so that is the backend's reply latency.
    awaiting_backend: Option<Instant>,
    /// What this session's events added up to, for its closing log line.
    tally: events::Tally,
    /// The one timer of the session: its deadline while the loop waits, a write's while a
    /// write waits. Boxed: a timer is pinned, and the driver moves.
    timer: Pin<Box<Sleep>>,
    /// The session closed with [`Action::Close`]'s `linger`: the client's connection, its
    /// close_notify sent, is left for [`Driver::lingering`].
    linger: bool,
    /// The client's TLS handshake after `STARTTLS` failed under an announced handshake flood:
    /// the failure went without a line of its own, and so does the session's end
    /// ([`Driver::ended`]); the flood's last line counts it.
    quiet_end: bool,
}

/// How [`Driver::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Ran {
    /// The session closed.
    Closed,
    /// The session was started on the admission threads under handshake pressure, the pressure
    /// is over, and it waits for its peers: it is to go on on the sessions' threads
    /// ([`Driver::park`], [`Driver::resume`]).
    Moved,
}

/// A session's driver between two runtimes: what it holds, with no borrow and no timer.
#[derive(Debug)]
pub struct Parked {
    id: u64,
    peer: SocketAddr,
    client: Stream,
    backend: Stream,
    backend_server: Option<usize>,
    awaiting_backend: Option<Instant>,
    tally: events::Tally,
}

impl<'a> Driver<'a> {
    /// A driver for session `id`'s client connection (plain, or already TLS for implicit
    /// TLS). Its timer is the runtime's it is made on.
    pub fn new(l: &'a ListenerRuntime, peer: SocketAddr, id: u64, client: Stream) -> Self {
        Driver {
            l,
            id,
            peer,
            client,
            backend: Stream::None,
            backend_server: None,
            dirty: [false; 2],
            awaiting_backend: None,
            tally: events::Tally::default(),
            timer: Box::pin(sleep_until(tokio::time::Instant::now() + l.longest_wait())),
            linger: false,
            quiet_end: false,
        }
    }

    /// After [`Ran::Moved`]: what the driver holds, to be resumed on another runtime. Nothing
    /// is buffered for a write at that point (the loop moves only where it would wait).
    pub fn park(self) -> Parked {
        Parked {
            id: self.id,
            peer: self.peer,
            client: self.client,
            backend: self.backend,
            backend_server: self.backend_server,
            awaiting_backend: self.awaiting_backend,
            tally: self.tally,
        }
    }

    /// A parked driver, its sockets registered with the runtime this is called on and a timer
    /// of that runtime's (the sessions', where it does not move again: [`Driver::moves`]).
    pub fn resume(l: &'a ListenerRuntime, parked: Parked) -> std::io::Result<Self> {
        let mut driver = Driver::new(l, parked.peer, parked.id, parked.client.rebind()?);
        driver.backend = parked.backend.rebind()?;
        driver.backend_server = parked.backend_server;
        driver.awaiting_backend = parked.awaiting_backend;
        driver.tally = parked.tally;
        Ok(driver)
    }

    /// Whether the session, waiting for its peers, is to move to the sessions' threads: it
    /// runs on the admission threads, where a listener under handshake pressure starts its
    /// sessions ([`crate::io::admission`]), and the pressure is over. A connection to the
    /// backend over TLS cannot be moved (tokio-rustls' client stream cannot be taken apart
    /// and put together again): such a session ends where it started.
    fn moves(&self) -> bool {
        crate::io::admission::here()
            && !self.l.handshakes_pressed()
            && self.client.rebinds()
            && self.backend.rebinds()
    }

    /// After [`Driver::run`]: the client's connection if the session ended with a lingering
    /// close ([`Action::Close`]), to be finished with [`Stream::linger`] once the session has
    /// given up its place among the listener's connections.
    pub fn lingering(&mut self) -> Option<Stream> {
        self.linger.then(|| std::mem::take(&mut self.client))
    }

    /// Run `session` until it closes, or until it is to move to the sessions' threads.
    pub async fn run<M: Machine>(
        &mut self,
        session: &mut M,
        shutdown: &mut crate::shutdown::Watch,
    ) -> Ran {
        // Try a read before waiting for readiness: after a TLS handshake, a full read or a
        // move, bytes may already be buffered (in rustls or the kernel) with no new readiness
        // to come.
        let (mut client_more, mut backend_more) = (true, true);
        loop {
            // Not `while let`: its `Option` would stay beside the action in every wait.
            loop {
                let Some(action) = session.poll_action() else {
                    break;
                };
                // Events first: protocol log lines must be written before a handshake's.
                self.record_events(session);
                // Writes of one batch leave together (a reply and the close_notify after it
                // in one system call); anything else waits for them first.
                if !matches!(action, Action::Write(..) | Action::Close { .. }) {
                    self.flush(session).await;
                }
                match self.act(session, &action, shutdown).await {
                    Step::Go => {}
                    Step::Readable(Leg::Client) => client_more = true,
                    Step::Readable(Leg::Backend) => backend_more = true,
                    Step::Close { linger } => {
                        self.close(linger).await;
                        self.record_events(session);
                        return Ran::Closed;
                    }
                }
            }
            if self.flush(session).await {
                // A leg was lost: the session has more to do.
                continue;
            }
            self.record_events(session);
            if session.is_closed() {
                return Ran::Closed;
            }
            if client_more && session.wants_bytes(Leg::Client) {
                let m = &self.l.metrics;
                let budget = session.read_budget(Leg::Client);
                match self.client.read_now(budget, |data| {
                    m.bytes(true, true, data.len());
                    session.handle_bytes(Leg::Client, data, Instant::now());
                }) {
                    Read::Data { more } => {
                        client_more = more;
                        continue;
                    }
                    Read::Closed => {
                        session.handle_eof(Leg::Client, Instant::now());
                        continue;
                    }
                    Read::Alert(alert) => {
                        session.handle_tls_alert(Leg::Client, alert, Instant::now());
                        continue;
                    }
                    Read::WouldBlock => client_more = false,
                }
            }
            if backend_more && session.wants_bytes(Leg::Backend) {
                let m = &self.l.metrics;
                let awaiting = &mut self.awaiting_backend;
                let budget = session.read_budget(Leg::Backend);
                match self.backend.read_now(budget, |data| {
                    let now = Instant::now();
                    if let Some(sent) = awaiting.take() {
                        m.reply_seconds.observe((now - sent).as_secs_f64());
                    }
                    m.bytes(false, true, data.len());
                    session.handle_bytes(Leg::Backend, data, now);
                }) {
                    Read::Data { more } => {
                        backend_more = more;
                        continue;
                    }
                    Read::Closed => {
                        self.backend = Stream::None;
                        session.handle_eof(Leg::Backend, Instant::now());
                        continue;
                    }
                    Read::Alert(alert) => {
                        self.backend = Stream::None;
                        session.handle_tls_alert(Leg::Backend, alert, Instant::now());
                        continue;
                    }
                    Read::WouldBlock => backend_more = false,
                }
            }
            if self.moves() {
                return Ran::Moved;
            }
            let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
            // The session always sets one while it waits; should it not, the session is
            // stalled, and ends after the longest wait the listener allows.
            let stalled = deadline.is_none();
            let deadline =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + self.l.longest_wait());
            // Moving the timer later costs no work in tokio's timer wheel; a new timer per wait
            // was registered and removed each time.
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            tokio::select! {
                () = self.client.readable(), if session.wants_bytes(Leg::Client) => client_more = true,
                () = self.backend.readable(), if session.wants_bytes(Leg::Backend) => backend_more = true,
                () = self.timer.as_mut() => {
                    if stalled {
                        tracing::warn!(listener = %self.l.name, peer = %self.peer, "session stalled with no deadline; closing");
                        self.close(false).await;
                        return Ran::Closed;
                    }
                    session.handle_timeout(Instant::now());
                }
                state = std::future::poll_fn(|cx| shutdown.poll_change(cx)) => {
                    match state {
                        Shutdown::Running => {}
                        Shutdown::Draining => session.handle_shutdown(Instant::now()),
                        Shutdown::GraceOver => session.handle_grace_expired(Instant::now()),
                    }
                }
            }
        }
    }

    /// The session is over: one line says how it went (its length is recorded where the
    /// listener's count of it ends, `crate::listener`), unless
    /// it was a flood's attempt that ended in a failed handshake with no message
    /// ([`Driver::quiet_end`]): a flood's thousands a second would bury the log.
    pub fn ended(&self, started: Instant, tls: Option<&TlsInfo>) {
        let elapsed = started.elapsed();
        let l = self.l;
        let t = self.tally;
        if self.quiet_end && t == events::Tally::default() {
            return;
        }
        let version = tls.map_or("none", |t| t.version.as_str());
        let subject = tls
            .and_then(|t| t.client_cert.cert())
            .map_or("-", |c| c.subject.as_str());
        tracing::info!(listener = %l.name, peer = %self.peer, session = self.id, tls = version,
            client_certificate = subject, accepted = t.accepted, refused = t.refused,
            failed = t.failed, duration_ms = elapsed.as_millis() as u64, "session ended");
    }

    fn record_events<M: Machine>(&mut self, session: &mut M) {
        while let Some(event) = session.poll_event() {
            let tls = session.message_tls();
            let (peer, server) = (self.peer, self.backend_server);
            events::record(self.l, tls, event, peer, self.id, server, &mut self.tally);
        }
    }

    /// Carry out one action. By reference: the loop's wait holds the action once.
    async fn act<M: Machine>(
        &mut self,
        session: &mut M,
        action: &Action,
        shutdown: &crate::shutdown::Watch,
    ) -> Step {
        let l = self.l;
        match action {
            &Action::Write(leg, ref bytes) => {
                // A closed session writes nothing more: what it wrote to the backend is that
                // leg's last (a QUIT), and `close` drops the leg next, with nothing read.
                let last = leg == Leg::Backend && session.is_closed();
                let (stream, timer) = self.stream_and_timer(leg);
                let written = match last {
                    true => within(timer, l.write_timeout, stream.write_last(bytes)).await,
                    false => within(timer, l.write_timeout, stream.write(bytes)).await,
                };
                if !matches!(written, Some(Ok(()))) {
                    stalled(stream, written.is_none());
                    session.handle_lost(leg, Instant::now());
                    return Step::Go;
                }
                l.metrics.bytes(leg == Leg::Client, false, bytes.len());
                self.dirty[leg.index()] = true;
                if leg == Leg::Backend {
                    // One command at a time: the next bytes back are its reply.
                    self.awaiting_backend = Some(Instant::now());
                }
            }
            Action::ConnectBackend => {
                let seen = |s: &str, up| l.metrics.backend_up(s, up, crate::clock::unix_now());
                // Boxed, as the other rare waits: with an implicit-TLS hop the connect holds a
                // whole client handshake, and every idle session's future would carry room for
                // it.
                let tls_failed = |kind| l.metrics.handshake_error(false, kind);
                let connect = l.pool.connect(&l.name, seen, tls_failed);
                // An originate listener's relay: no later than the session's deadline (the
                // set-up's budget), as a next hop's connect. Boxed with its timer.
                let deadline = l.originate().and(session.poll_timeout());
                let connected = match deadline {
                    Some(at) => {
                        let at = tokio::time::Instant::from_std(at);
                        Box::pin(timeout_at(at, connect)).await
                    }
                    None => Ok(Box::pin(connect).await),
                };
                match connected {
                    // Cut by the deadline: the session says why (the set-up's budget); the
                    // relay is not to blame.
                    Err(_) => session.handle_connect_failed("timed out", Instant::now()),
                    Ok(Ok((stream, _))) if self.relay_loops(&stream, session) => {}
                    Ok(connected) => self.backend_connected(session, connected),
                }
            }
            Action::Connect(target) => {
                // A next hop that is one of our own listeners (an MX at this host's address)
                // is a mail loop: the legacy server behind a terminate listener relays back
                // to us.
                let bound = l.originate().map(|o| &o.bound);
                let loops = |local| bound.and_then(|b| b.loops_back(target.addr, local));
                if let Some(ours) = loops(None) {
                    let why = format!(
                        "{} is the sidecar's own listener {ours} (a mail loop)",
                        target.addr
                    );
                    session.handle_connect_loops(&why, LoopSeen::ByAddress, Instant::now());
                    return Step::Go;
                }
                let connect = tokio::net::TcpStream::connect(target.addr);
                // `connect_timeout`, and no later than the session's own deadline (a next
                // hop's set-up has a budget as a whole).
                let mut deadline = tokio::time::Instant::now() + l.connect_timeout;
                if let Some(at) = session.poll_timeout() {
                    deadline = deadline.min(tokio::time::Instant::from_std(at));
                }
                // Boxed, as the other originate-only waits: a session's future is as large as
                // its largest wait, and every idle terminate session would pay for these.
                match Box::pin(timeout_at(deadline, connect)).await {
                    Ok(Ok(stream)) => {
                        if let Some(ours) = loops(stream.local_addr().ok()) {
                            let why = format!("{} is this host, at the sidecar's own listener {ours} (a mail loop)", target.addr);
                            // Only by the addresses seen on this side (a NAT rule may send
                            // the connection elsewhere): not a sure loop.
                            let seen = LoopSeen::OnceConnected;
                            session.handle_connect_loops(&why, seen, Instant::now());
                            return Step::Go;
                        }
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY on next hop socket");
                        }
                        self.connected_backend(Stream::Plain(stream));
                        session.handle_connected(Instant::now());
                    }
                    Ok(Err(e)) => session.handle_connect_failed(&e.to_string(), Instant::now()),
                    Err(_) => session.handle_connect_failed("timed out", Instant::now()),
                }
            }
            Action::Resolve(domain) => {
                let resolver = l
                    .originate()
                    .and_then(|o| Some((o.resolver.as_ref()?, o.mx_port)));
                // `resolver.timeout`, and no later than the session's own deadline (the
                // set-up's budget), as a connect.
                let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
                let result = match resolver {
                    Some((resolver, port)) => {
                        let lookup = resolver.next_hops(domain, port);
                        let found = match deadline {
                            Some(at) => {
                                Box::pin(timeout_at(at, lookup)).await.unwrap_or_else(|_| {
                                    Err(crate::mx::MxError::TempFail(
                                        "the session's deadline came first".into(),
                                    ))
                                })
                            }
                            None => Box::pin(lookup).await,
                        };
                        found.map_err(|e| {
                            tracing::info!(listener = %l.name, peer = %self.peer, %domain, error = %e, "MX look-up failed");
                            e.failure()
                        })
                    }
                    None => Err(DnsFailure::Temporary),
                };
                session.handle_resolved(result, Instant::now());
            }
            &Action::Disconnect(leg) => {
                let (stream, timer) = self.stream_and_timer(leg);
                let closed = within(timer, l.write_timeout, stream.close()).await;
                stalled(stream, closed.is_none());
            }
            &Action::Abort(leg) => {
                // An abortive close (RST): the backend discards the message in flight, and no
                // TIME_WAIT is left behind, so sessions that have many messages refused cannot
                // use up the ports toward a backend on another host.
                self.stream(leg).reset();
            }
            Action::StartTls(TlsStart::Server) => {
                let (Stream::Plain(tcp), Some(acceptor)) =
                    (std::mem::take(&mut self.client), &l.acceptor)
                else {
                    session.handle_tls_failed(Leg::Client, Instant::now());
                    return Step::Go;
                };
                // The plain stream is moved into the TLS stream: no plaintext buffer survives
                // the upgrade (DESIGN.md rule 4).
                let deadline = handshake_deadline(session, l);
                let handshake =
                    accept_tls(l, acceptor, tcp, deadline, Vec::new(), self.id, self.peer);
                match within_grace(handshake, shutdown).await {
                    Some(Some(accepted)) => {
                        self.client = accepted.stream;
                        let info = accepted.info;
                        session.handle_tls_established(Leg::Client, info, Instant::now());
                        return Step::Readable(Leg::Client);
                    }
                    Some(None) => {
                        self.quiet_end = l.quiet_handshake_failure();
                        session.handle_tls_failed(Leg::Client, Instant::now());
                    }
                    None => session.handle_grace_expired(Instant::now()),
                }
            }
            Action::StartTls(TlsStart::Client(ask)) => {
                let Stream::Plain(tcp) = std::mem::take(&mut self.backend) else {
                    session.handle_tls_failed(Leg::Backend, Instant::now());
                    return Step::Go;
                };
                // As on the client leg: the plain stream is moved into the TLS stream.
                let deadline = handshake_deadline(session, l);
                let handshake = handshake::connect_tls(l, tcp, ask, deadline, self.id, self.peer);
                match within_grace(handshake, shutdown).await {
                    Some(Some((tls, info))) => {
                        self.backend = tls;
                        session.handle_tls_established(Leg::Backend, info, Instant::now());
                        return Step::Readable(Leg::Backend);
                    }
                    Some(None) => session.handle_tls_failed(Leg::Backend, Instant::now()),
                    None => session.handle_grace_expired(Instant::now()),
                }
            }
            Action::StartTls(TlsStart::Backend) => {
                let (Stream::Plain(tcp), Some(server)) =
                    (std::mem::take(&mut self.backend), self.backend_server)
                else {
                    session.handle_tls_failed(Leg::Backend, Instant::now());
                    return Step::Go;
                };
                let deadline = handshake_deadline(session, l);
                match within_grace(l.pool.starttls(server, tcp, deadline), shutdown).await {
                    Some(Ok(Stream::ClientTls(tls))) => {
                        let info =
                            handshake::backend_tls_done(l, tls.get_ref().1, self.id, self.peer);
                        self.backend = Stream::ClientTls(tls);
                        session.handle_tls_established(Leg::Backend, info, Instant::now());
                        return Step::Readable(Leg::Backend);
                    }
                    Some(Ok(_)) => session.handle_tls_failed(Leg::Backend, Instant::now()),
                    Some(Err(e)) => {
                        tracing::warn!(listener = %l.name, peer = %self.peer, reason = %e, "TLS to the backend failed");
                        l.metrics.handshake_error(false, e.kind());
                        session.handle_tls_failed(Leg::Backend, Instant::now());
                    }
                    None => session.handle_grace_expired(Instant::now()),
                }
            }
            // Closed by the loop: `act`'s future would otherwise hold room for the close's
            // two waits beside its own, in every idle session's task.
            &Action::Close { linger } => return Step::Close { linger },
        }
        Step::Go
    }

    /// Whether an originate listener's relay, just connected as `stream`, is one of our own
    /// listeners (a relay given by a host name, which `check` cannot tell apart: `localhost`):
    /// a mail loop, as an MX there is, told to the session; the connection is dropped.
    fn relay_loops<M: Machine>(&self, stream: &Stream, session: &mut M) -> bool {
        let bound = self.l.originate().map(|o| &o.bound);
        let tcp = stream.tcp();
        let (Some(bound), Some(peer)) = (bound, tcp.and_then(|t| t.peer_addr().ok())) else {
            return false;
        };
        let local = tcp.and_then(|t| t.local_addr().ok());
        let (ours, seen) = match bound.loops_back(peer, None) {
            Some(ours) => (ours, LoopSeen::ByAddress),
            None => match bound.loops_back(peer, local) {
                // Only by the addresses seen on this side: not a sure loop (a NAT rule).
                Some(ours) => (ours, LoopSeen::OnceConnected),
                None => return false,
            },
        };
        let why = format!("the relay at {peer} is the sidecar's own listener {ours} (a mail loop)");
        session.handle_connect_loops(&why, seen, Instant::now());
        true
    }

    /// The backend pool's answer to [`Action::ConnectBackend`].
    fn backend_connected<M: Machine>(
        &mut self,
        session: &mut M,
        connected: Result<(Stream, usize), String>,
    ) {
        let l = self.l;
        match connected {
            Ok((stream, server)) => {
                if let Stream::ClientTls(tls) = &stream {
                    handshake::backend_tls_done(l, tls.get_ref().1, self.id, self.peer);
                }
                self.connected_backend(stream);
                self.backend_server = Some(server);
                session.handle_connected(Instant::now());
            }
            Err(reason) => {
                tracing::warn!(listener = %l.name, peer = %self.peer, %reason, "backend unreachable");
                session.handle_connect_failed(&reason, Instant::now());
            }
        }
    }

    /// Send what writes left buffered on either leg, each under the write deadline. Returns
    /// whether a leg was lost (the session was told, and its connection dropped).
    async fn flush<M: Machine>(&mut self, session: &mut M) -> bool {
        let write_timeout = self.l.write_timeout;
        let mut lost = false;
        for leg in [Leg::Client, Leg::Backend] {
            if !std::mem::take(&mut self.dirty[leg.index()]) {
                continue;
            }
            let (stream, timer) = self.stream_and_timer(leg);
            let flushed = within(timer, write_timeout, stream.flush()).await;
            if !matches!(flushed, Some(Ok(()))) {
                stalled(stream, flushed.is_none());
                session.handle_lost(leg, Instant::now());
                lost = true;
            }
        }
        lost
    }

    /// A leg's connection and the session's timer, for a write under a deadline.
    fn stream_and_timer(&mut self, leg: Leg) -> (&mut Stream, &mut Pin<Box<Sleep>>) {
        let stream = match leg {
            Leg::Client => &mut self.client,
            Leg::Backend => &mut self.backend,
        };
        (stream, &mut self.timer)
    }

    /// A new connection on the backend leg (a backend server, a next hop). Its first bytes
    /// are its greeting, not the reply to what was written on the connection before it (a
    /// QUIT, a body the old server refused): `backend_reply_seconds` times replies only.
    fn connected_backend(&mut self, stream: Stream) {
        self.backend = stream;
        self.awaiting_backend = None;
    }

    /// A leg's connection.
    fn stream(&mut self, leg: Leg) -> &mut Stream {
        self.stream_and_timer(leg).0
    }

    /// Close both legs, each under the write deadline. `linger` (see [`Action::Close`]): the
    /// client's connection, once its close_notify is sent, is kept for [`Driver::lingering`].
    async fn close(&mut self, linger: bool) {
        let write_timeout = self.l.write_timeout;
        let closed = within(&mut self.timer, write_timeout, self.backend.close()).await;
        stalled(&mut self.backend, closed.is_none());
        // A connection already dropped (a write that timed out) has nothing to linger for.
        let linger = linger && self.client.tcp().is_some();
        let notify = self.client.close_notify(!linger);
        let sent = within(&mut self.timer, write_timeout, notify).await;
        self.linger = linger && matches!(sent, Some(Ok(())));
        if sent.is_none() {
            self.client.reset();
        } else if !self.linger {
            self.client = Stream::None;
        }
    }
}

/// After a write, flush or close of `stream` that did not succeed: one that made no
/// progress within the write deadline (`timed_out`) leaves the connection reset, so that
/// nothing waits on it again (the close would, for another deadline) and what the peer did
/// not read is not left queued in the kernel past the session. One that failed with an error
/// keeps it: its close then fails at once, or sends the TLS alert rustls has queued (a
/// client's broken record is answered with its alert, RFC 8446 §6).
fn stalled(stream: &mut Stream, timed_out: bool) {
    if timed_out {
        stream.reset();
    }
}

/// `work`, or `None` if it has to wait and does not finish within `limit` (measured on
/// `timer`, which the loop sets back to the session's deadline before its next wait): every
/// write, flush and close of a leg goes under the write deadline through here. Most complete
/// at once: they cost no clock read and no timer.
fn within<F: Future + Unpin>(
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
    work: F,
) -> Within<'_, F> {
    Within {
        timer,
        limit,
        work,
        armed: false,
    }
}

/// [`within`]'s wait: a hand-written future over the work and a reference to the timer (an
/// async fn would hold its arguments twice, and a `select!` between them).
#[must_use = "futures do nothing unless awaited"]
struct Within<'a, F> {
    timer: &'a mut Pin<Box<Sleep>>,
    limit: Duration,
    work: F,
    /// The timer is set: `work` has had to wait once.
    armed: bool,
}

impl<F: Future + Unpin> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(done) = Pin::new(&mut this.work).poll(cx) {
            return Poll::Ready(Some(done));
        }
        if !this.armed {
            this.armed = true;
            this.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + this.limit);
        }
        this.timer.as_mut().poll(cx).map(|()| None)
    }
}

/// The deadline of a handshake: the session's, or the handshake timeout if it set none (every
/// wait has one).
fn handshake_deadline<M: Machine>(session: &M, l: &ListenerRuntime) -> tokio::time::Instant {
    session.poll_timeout().map_or_else(
        || tokio::time::Instant::now() + l.tls_handshake_timeout(),
        tokio::time::Instant::from_std,
    )
}

/// `work`, a TLS handshake inside a session, unless the shutdown's grace ends first (`None`).
/// A handshake is awaited in an action, where the loop sees no shutdown: a peer silent in it
/// (a client after STARTTLS's `220`, a next hop or a backend) would hold the process past
/// the grace until the handshake's deadline. The grace is watched on a clone of the
/// session's watch, so that the changes seen on the way (draining) are still news to the
/// loop. Boxed, the wait with the handshake: a handshake's state is large and comes once
/// per session, and the future every idle session holds need not carry room for it.
fn within_grace<'a, T: 'a>(
    work: impl Future<Output = T> + 'a,
    shutdown: &'a crate::shutdown::Watch,
) -> Pin<Box<impl Future<Output = Option<T>> + 'a>> {
    Box::pin(async move {
        let mut watch = shutdown.clone();
        let grace_over = async {
            while watch.borrow() != Shutdown::GraceOver {
                std::future::poll_fn(|cx| watch.poll_change(cx)).await;
            }
        };
        tokio::select! {
            done = work => Some(done),
            () = grace_over => None,
        }
    })
}

/// What the loop does after an action.
enum Step {
    Go,
    /// The leg changed (TLS): try a read before waiting for readiness.
    Readable(Leg),
    /// The session closes: both legs are to be closed (see [`Action::Close`]).
    Close {
        linger: bool,
    },
}

#[cfg(test)]
mod tests;
