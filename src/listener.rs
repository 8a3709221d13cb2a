//! The accept loop of one listener: connection limits (SPEC §4: `421 4.7.0`), the PROXY
//! header of a `proxy_protocol` listener, one task per session, and a stop when shutdown
//! begins.
//!
//! Behind a load balancer every connection comes from the balancer's address, so a
//! `proxy_protocol` listener admits a connection into `max_connections` at once (which bounds
//! the connections still reading their header) and into `max_connections_per_ip` only once
//! its header has named the client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::driver::Served;
use crate::io::Stream;
use crate::metrics::ListenerMetrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{ListenerRuntime, ModeRuntime, PRESSURE_HOLD};

/// Places taken, in all and per client address, against a maximum of each. A client address
/// counts as its [`place_key`].
#[derive(Debug, Default)]
struct Places {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
}

impl Places {
    /// One more place, and one more for `ip` if given, unless either maximum is reached.
    fn take(&mut self, ip: Option<IpAddr>, max: u32, max_per_ip: u32) -> bool {
        if self.total >= max {
            return false;
        }
        if let Some(ip) = ip {
            if !self.take_ip(ip, max_per_ip) {
                return false;
            }
        }
        self.total += 1;
        true
    }

    /// One more place for `ip` (its place in the total is already held).
    fn take_ip(&mut self, ip: IpAddr, max_per_ip: u32) -> bool {
        let ip = place_key(ip);
        let this_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if this_ip >= max_per_ip {
            return false;
        }
        self.per_ip.insert(ip, this_ip + 1);
        true
    }

    /// Give back a place taken by [`Places::take`] (with `ip` as it stands now).
    fn give_back(&mut self, ip: Option<IpAddr>) {
        self.total = self.total.saturating_sub(1);
        let Some(ip) = ip.map(place_key) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// What `max_connections_per_ip` counts a client address as: an IPv4 address (also when it
/// comes IPv4-mapped, `::ffff:192.0.2.1`, as a dual-stack socket gives it, or through NAT64's
/// well-known prefix, `64:ff9b::192.0.2.1`, RFC 6052, where each IPv4 client is an address
/// of one /96), or an IPv6 address's /64. One host holds a whole /64 (a subscriber's prefix,
/// SLAAC), so counting its addresses one by one would give it 2^64 places.
fn place_key(ip: IpAddr) -> IpAddr {
    const NAT64: u128 = 0x0064_ff9b_u128 << 96;
    match ip.to_canonical() {
        IpAddr::V6(v6) if u128::from(v6) >> 32 == NAT64 >> 32 => {
            IpAddr::V4(std::net::Ipv4Addr::from(u128::from(v6) as u32))
        }
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

/// The open sessions of a listener, and its lingering closes. The maximums are the current
/// runtime's, given at each admission (a reload may change them). Every connection's place
/// holds it: so it also keeps what each connection would otherwise keep for its whole life,
/// in every idle session's task (C of ../shared/bench), for the one case that needs them.
///
/// A listener's, by its name: a reload that moves it to another address, or removes it and
/// adds it back while its sessions still run, hands the new accept loop the same counts
/// (`crate::runtime`), or its limits would hold twice over until those sessions end.
#[derive(Debug)]
pub struct Limits {
    open: Mutex<Places>,
    /// Connections in a lingering close: no longer sessions, so out of the counts above, but
    /// sockets still; as many as sessions at most, in all and per address, so that one
    /// address cannot take every lingering place.
    lingering: Mutex<Places>,
    /// The log lines of refusals by the limits above, and of bad PROXY headers.
    refusals_said: LogBudget,
    proxy_errors_said: LogBudget,
    /// Where sessions run: a session started on the admission threads goes on there.
    sessions: tokio::runtime::Handle,
    /// The runtime's count of what is still running: held by the accept loop and, through
    /// their places, by its connections (a lingering close's too), so it is let go when the
    /// last of them ends.
    _alive: mpsc::Sender<()>,
}

/// Log lines a peer can cause at will, one per connection (a refusal by a connection limit, a
/// bad PROXY header): at most [`LINES_PER_SECOND`] a second for a listener, so that one
/// address connecting in a loop cannot fill the log's queue and push other sessions' lines
/// out. Each is still counted in the metrics, and the next line written says how many were
/// left out.
#[derive(Debug, Default)]
struct LogBudget {
    /// The Unix second being counted, and the lines written in it.
    second: AtomicI64,
    written: AtomicU32,
    left_out: AtomicU64,
}

/// See [`LogBudget`].
const LINES_PER_SECOND: u32 = 10;

impl LogBudget {
    /// `Some` (with the lines left out since the last one written) if a line may be written
    /// at `now`, a Unix second.
    fn take(&self, now: i64) -> Option<u64> {
        // Not exact at a second's turn (two threads may both reset, or one count into the old
        // second): a line more or fewer, never a flood.
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A lingering close's places; released when dropped.
#[derive(Debug)]
struct Lingering {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
}

impl Drop for Lingering {
    fn drop(&mut self) {
        self.limits.lingering().give_back(self.ip);
    }
}

/// One admitted connection; releases its places when dropped.
#[derive(Debug)]
struct Admitted {
    limits: Arc<Limits>,
    /// The address whose place it holds: `None` until a PROXY header has named it.
    ip: Option<IpAddr>,
    /// The stalled handshake it was let in on, past a full set of `max_handshakes` slots.
    kept: Option<Box<crate::snapshot::Reservation>>,
}

impl Limits {
    fn open(&self) -> MutexGuard<'_, Places> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lingering(&self) -> MutexGuard<'_, Places> {
        self.lingering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A place among the listener's connections and, if `ip` is given, among that address's.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>, l: &ListenerRuntime) -> Option<Admitted> {
        self.open()
            .take(ip, l.max_connections, l.max_connections_per_ip)
            .then(|| Admitted {
                limits: Arc::clone(self),
                ip,
                kept: None,
            })
    }
}

impl Admitted {
    /// Give up the session's places (a client reconnecting at once from the same address
    /// must find its place free) for a place among the lingering closes, if one is left for
    /// the listener and for the address: `max_connections` and `max_connections_per_ip`.
    fn into_lingering(self, max: u32, max_per_ip: u32) -> Option<Lingering> {
        let (limits, ip) = (Arc::clone(&self.limits), self.ip);
        drop(self);
        let taken = limits.lingering().take(ip, max, max_per_ip);
        taken.then_some(Lingering { limits, ip })
    }

    /// The place of `ip`, once the PROXY header has named the client; false if that address
    /// has all its places taken (the connection's place in the total goes when it drops).
    fn claim_ip(&mut self, ip: IpAddr, l: &ListenerRuntime) -> bool {
        if self.ip.is_some() {
            return true;
        }
        let claimed = self.limits.open().take_ip(ip, l.max_connections_per_ip);
        if claimed {
            self.ip = Some(ip);
        }
        claimed
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.open().give_back(self.ip);
    }
}

/// The accept queue's length: the kernel caps it at `net.core.somaxconn` (4096 on current
/// kernels). Under a flood the listener refuses fast and clients come straight back; with
/// the default of 128 (tokio's `TcpListener::bind`, as std's) the queue overflows, and the
/// connections the kernel then completes with SYN cookies and drops leave a client of a
/// server-speaks-first protocol waiting for a greeting that never comes.
const LISTEN_BACKLOG: u32 = 4096;

/// Connections accepted in a row before the accept loop lets the sessions whose sockets are
/// ready run: under a flood the queue is never empty, and tokio's budget alone would let one
/// turn of the loop take 128.
const ACCEPT_BURST: u32 = 16;

/// A listening socket for `addr` (`SO_REUSEADDR`, as tokio's `TcpListener::bind`), with a
/// [`LISTEN_BACKLOG`] accept queue and `TCP_NODELAY`: replies are small and latency-bound
/// (DESIGN.md §5), and Linux copies the option to every accepted socket, which saves a
/// system call per session. An IPv6 socket takes IPv4 too (`IPV6_V6ONLY` off, whatever the
/// host's default): `[::]:25` is every address, as the configuration's check of overlapping
/// addresses assumes.
pub fn bind(addr: &SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = tokio::net::TcpSocket::new_v6()?;
            rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(*addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Limits {
    /// A listener's first counts, made on the runtime its sessions run on. Every session
    /// task holds `alive` through its place, so the runtime knows when the last has finished.
    pub fn new(alive: mpsc::Sender<()>) -> Arc<Limits> {
        Arc::new(Limits {
            open: Mutex::new(Places::default()),
            lingering: Mutex::new(Places::default()),
            refusals_said: LogBudget::default(),
            proxy_errors_said: LogBudget::default(),
            sessions: tokio::runtime::Handle::current(),
            _alive: alive,
        })
    }
}

/// Accept connections until shutdown begins or `stop` turns true (the listener was removed
/// by a reload); the socket closes when the loop ends. Each accepted connection reads the
/// listener's current runtime once and its session keeps that `Arc`: a reload swaps `current`
/// for new sessions only. Every session task holds a place in `limits`, the listener's
/// counts ([`Limits`]).
///
/// The loop runs on the sessions' threads, and under handshake pressure on the admission
/// threads ([`crate::io::admission`]): there its accepts and refusals wait for the sessions,
/// and so do the sessions it starts until the pressure is over.
pub async fn accept_loop(
    tcp: TcpListener,
    current: Arc<ArcSwap<ListenerRuntime>>,
    shutdown: crate::shutdown::Watch,
    stop: watch::Receiver<bool>,
    limits: Arc<Limits>,
) {
    let mut accepting = Accepting {
        limits,
        current,
        shutdown,
        stop,
        flood: None,
        quiet: None,
    };
    let Ok(admission) = crate::io::admission::handle() else {
        // No admission threads (`run` said so when it started): pressure is served here too.
        while accepting.accept(&tcp, Place::Sessions).await == Ended::Move {}
        return;
    };
    let mut tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::error!(listener = %accepting.current.load().name, error = %e, "listener closed");
            return;
        }
    };
    loop {
        let Some(here) = accepting.register(&tcp).await else {
            return;
        };
        if accepting.accept(&here, Place::Sessions).await == Ended::Stopped {
            return;
        }
        drop(here);
        tracing::debug!(listener = %accepting.current.load().name,
            "handshake pressure: accepting and handshaking below the established sessions' priority");
        accepting.note_flood();
        let name = accepting.current.load().name.clone();
        let there = admission.spawn(async move {
            let ended = match accepting.register(&tcp).await {
                Some(there) => accepting.accept(&there, Place::Admission).await,
                None => Ended::Stopped,
            };
            (accepting, tcp, ended)
        });
        let ended;
        (accepting, tcp, ended) = match there.await {
            Ok(back) => back,
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "accept loop failed: listener closed");
                return;
            }
        };
        if ended == Ended::Stopped {
            return;
        }
        accepting.note_flood();
        tracing::debug!(listener = %accepting.current.load().name, "handshake pressure over");
    }
}

/// Where an accept loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On the sessions' threads, until handshake pressure.
    Sessions,
    /// On the admission threads, while the pressure lasts.
    Admission,
}

/// Why a turn of an accept loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Shutdown, or the listener was removed.
    Stopped,
    /// Handshake pressure began or ended: the loop goes on on the other threads.
    Move,
}

/// What an accept loop carries from one place to the other.
struct Accepting {
    limits: Arc<Limits>,
    current: Arc<ArcSwap<ListenerRuntime>>,
    shutdown: crate::shutdown::Watch,
    stop: watch::Receiver<bool>,
    /// The flood under way was logged, when the listener's failed server handshakes were
    /// this many.
    flood: Option<u64>,
    /// The configuration whose failed handshakes were last made quiet for a flood.
    quiet: Option<Arc<ListenerRuntime>>,
}

impl Drop for Accepting {
    /// A loop that ends during a flood (shutdown, the listener removed) ends the flood too:
    /// its draining sessions' failed handshakes are logged again, and the count is given.
    fn drop(&mut self) {
        self.end_flood();
    }
}

impl Accepting {
    /// The listening socket, registered with the runtime this runs on (a duplicate of the
    /// descriptor, so that the socket stays open whatever happens to this one). `None` if the
    /// loop must end: stopped while the registration kept failing.
    async fn register(&mut self, tcp: &std::net::TcpListener) -> Option<TcpListener> {
        loop {
            match tcp.try_clone().and_then(TcpListener::from_std) {
                Ok(here) => return Some(here),
                Err(e) => {
                    // Out of file descriptors and the like: as a failed accept.
                    tracing::warn!(listener = %self.current.load().name, error = %e, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        stopped = self.stopped() => if stopped { return None },
                    }
                }
            }
        }
    }

    /// Log a flood's beginning and end ([`ListenerRuntime::handshakes_flooded`]; a burst of
    /// handshakes is pressure, not a flood): a warning when it is first seen, and once it has
    /// not been seen for [`crate::snapshot::PRESSURE_HOLD`], that it is over, whether or not
    /// the pressure lasts.
    fn note_flood(&mut self) {
        let l = self.current.load();
        match (self.flood, l.handshakes_flooded()) {
            (None, true) => {
                // Counted from before the quiet begins: a failure in between is counted and
                // logged, not lost.
                self.flood = Some(l.metrics.server_handshake_errors());
                self.quiet_on(&l, true);
                tracing::warn!(listener = %l.name,
                    "handshake flood: accepting and handshaking below the established sessions' priority; failed handshakes counted until it is over");
            }
            (Some(_), false) => self.end_flood(),
            // Only the configuration in use keeps quiet (a reload's too), and only while the
            // flood is announced: one a reload replaced logs what fails of its handshakes
            // still in progress one by one again.
            (flood, _) => self.quiet_on(&l, flood.is_some()),
        }
    }

    /// The configuration `l` keeps quiet or not; the one that kept quiet before it, if
    /// another, no longer does.
    fn quiet_on(&mut self, l: &Arc<ListenerRuntime>, announced: bool) {
        l.announce_flood(announced);
        if self.quiet.as_ref().is_some_and(|q| Arc::ptr_eq(q, l)) {
            if !announced {
                self.quiet = None;
            }
        } else {
            if let Some(before) = self.quiet.take() {
                before.announce_flood(false);
            }
            self.quiet = announced.then(|| Arc::clone(l));
        }
    }

    /// The flood is over (or the loop ends during one): no configuration keeps quiet any
    /// more, and the last line counts what failed quietly. The quiet ends before the count
    /// is read, so that a failure is either in the count or logged on its own (a failure
    /// counts itself before it looks whether to keep quiet: `driver::handshake`).
    fn end_flood(&mut self) {
        let Some(from) = self.flood.take() else {
            return;
        };
        let l = self.current.load();
        // The configuration in use, and one a reload replaced, if any.
        self.quiet_on(&l, false);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // From the listener's counter, which a reload keeps.
        let failed_handshakes = l.metrics.server_handshake_errors().saturating_sub(from);
        tracing::info!(listener = %l.name, failed_handshakes, "handshake flood over");
    }

    /// Shutdown began or the listener was removed; `false` if neither (a spurious change).
    async fn stopped(&mut self) -> bool {
        tokio::select! {
            changed = self.shutdown.changed() => {
                changed.is_err() || self.shutdown.borrow() != Shutdown::Running
            }
            changed = self.stop.changed() => changed.is_err() || *self.stop.borrow(),
        }
    }

    /// Accept on `tcp` until the loop must stop or move: from the sessions' threads when a
    /// listener comes under handshake pressure, back from the admission threads when the
    /// pressure is over.
    async fn accept(&mut self, tcp: &TcpListener, place: Place) -> Ended {
        let admission = place == Place::Admission;
        // The admission threads look for the end of the pressure even when nothing is accepted.
        let mut look = tokio::time::interval(PRESSURE_HOLD);
        let mut burst = 0;
        // Connections taken in a row without finding the queue empty: arrivals outpacing
        // the loop.
        let mut waiting = 0u32;
        loop {
            tokio::select! {
                (accepted, waited) = accept_noting_wait(tcp) => match accepted {
                    Ok((stream, socket)) => {
                        let l = self.current.load_full();
                        waiting = if waited { 1 } else { waiting.saturating_add(1) };
                        l.accept_queue(waiting);
                        // A flood fills the accept queue: a few connections at a time, then
                        // whatever else is ready to run.
                        burst += 1;
                        if burst == ACCEPT_BURST {
                            burst = 0;
                            tokio::task::yield_now().await;
                        }
                        self.admit(stream, socket, &l);
                        if admission {
                            self.note_flood();
                        }
                        if l.handshakes_pressed() != admission {
                            return Ended::Move;
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listener = %self.current.load().name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        waiting = 0;
                    }
                },
                _ = look.tick(), if admission => {
                    // The accept in progress was dropped: the run starts again.
                    waiting = 0;
                    self.note_flood();
                    if !self.current.load().handshakes_pressed() {
                        return Ended::Move;
                    }
                }
                stopped = self.stopped() => {
                    if stopped {
                        return Ended::Stopped;
                    }
                    waiting = 0;
                }
            }
        }
    }

    /// A new connection: refused, or a session on the threads the loop runs on.
    fn admit(&self, stream: TcpStream, socket: SocketAddr, l: &Arc<ListenerRuntime>) {
        // On a dual-stack listener (`[::]`) an IPv4 client arrives IPv4-mapped: the session,
        // its logs (a refusal's too), the Received header and XCLIENT know it by its IPv4
        // address.
        let socket = SocketAddr::new(socket.ip().to_canonical(), socket.port());
        if l.handshakes_full() {
            // A handshake flood: refused before it costs a handshake, quietly (a log line
            // each would cost more than the refusal).
            l.metrics.refused.inc();
            refuse(stream, l.implicit_tls);
            return;
        }
        // Behind a balancer the socket's address is the balancer's: the client's is known
        // once the header is read.
        let ip = l.proxy_header.is_none().then_some(socket.ip());
        let Some(mut admitted) = self.limits.admit(ip, l) else {
            too_many(stream, socket, l, &self.limits.refusals_said);
            return;
        };
        // Within the limits: a stalled handshake's slot, if that is the room there was, is
        // kept for this connection (not one the limits refused), as long as it lives.
        match l.handshake_room(socket) {
            // Boxed: rare, and an idle session's task would carry its room otherwise.
            Some(kept) => admitted.kept = kept.map(Box::new),
            None => {
                drop(admitted);
                l.metrics.refused.inc();
                refuse(stream, l.implicit_tls);
                return;
            }
        }
        let (l, shutdown) = (Arc::clone(l), self.shutdown.clone());
        // Under pressure, here: the admission threads.
        let accepted = Box::new((stream, socket));
        tokio::spawn(connection(accepted, l, admitted, shutdown));
    }
}

/// `tcp.accept()`, and whether it had to wait: a connection taken without a wait was
/// already in the accept queue.
async fn accept_noting_wait(tcp: &TcpListener) -> (std::io::Result<(TcpStream, SocketAddr)>, bool) {
    let mut waited = false;
    let accepted = std::future::poll_fn(|cx| {
        let polled = tcp.poll_accept(cx);
        waited |= polled.is_pending();
        polled
    })
    .await;
    (accepted, waited)
}

/// One admitted connection: what comes before its session ([`arrive`], and on an
/// implicit-TLS listener the handshake), its session, then its lingering close if it ends
/// with one. Under handshake pressure this runs on the admission threads, below the
/// established sessions' priority, and a session that outlasts the pressure moves to the
/// sessions' threads: the rest of it is spawned there. One future, spawned as it is, whose
/// size every idle session pays for its whole life (C of ../shared/bench): so every value it
/// is given is small, and what it uses only at first (the socket and its address) boxed,
/// since what a task is given keeps its room to the task's end; it is no async fn, which
/// would keep what it is given twice (as arguments, and as the locals they are moved to:
/// [`crate::driver::serve`]); and what its early waits hand on is bound in a scope of its
/// own, so that it is not held beside the session (a value matched in place across a wait
/// is).
#[allow(clippy::manual_async_fn)]
fn connection(
    accepted: Box<(TcpStream, SocketAddr)>,
    l: Arc<ListenerRuntime>,
    admitted: Admitted,
    mut shutdown: crate::shutdown::Watch,
) -> impl std::future::Future<Output = ()> + Send {
    // The connection's place in what its end needs from the start (not beside it, as an
    // argument moved in would be).
    let mut closing = Closing {
        counted: None,
        admitted,
    };
    async move {
        let Some((stream, peer, counted)) = ({
            let (stream, socket) = *accepted;
            let arriving = std::pin::pin!(arrive(stream, socket, &l, &mut closing.admitted));
            let waiting = Waiting::ProxyHeader { proxy: socket };
            before_draining(&mut shutdown, arriving, (&l, waiting)).await
        }) else {
            return;
        };
        closing.counted = Some(counted);
        let served = match &l.mode {
            ModeRuntime::Terminate(cfg) => {
                let Some(opened) = ({
                    let cfg = Arc::clone(cfg);
                    let opening = std::pin::pin!(crate::inbound::open(stream, peer, &l, cfg));
                    let waiting = Waiting::TlsHandshake { peer };
                    before_draining(&mut shutdown, opening, (&l, waiting)).await
                }) else {
                    return closing.end(None, &l).await;
                };
                crate::inbound::serve(opened, &l, &mut shutdown).await
            }
            // Boxed: an originate session's state is larger than a terminate one's, and
            // every idle terminate session's task would hold room for it.
            ModeRuntime::Originate(o) => {
                let cfg = Arc::clone(&o.session);
                Box::pin(crate::outbound::serve(stream, peer, &l, cfg, &mut shutdown)).await
            }
        };
        match served {
            Served::Ended(lingering) => closing.end(lingering.map(|s| *s), &l).await,
            // Started under pressure that is over: the rest on the sessions' threads.
            Served::Moved(moving) => {
                let sessions = closing.admitted.limits.sessions.clone();
                sessions.spawn(async move {
                    let lingering = moving.await;
                    closing.end(lingering, &l).await;
                });
            }
        }
    }
}

/// `work` (a PROXY header's wait, an implicit-TLS handshake), unless shutdown has begun or
/// begins first: then `None`, and the connection is closed, with a line that says what it
/// was `waiting` for; none while `l` is under a handshake flood, whose connections are
/// thousands. The flood itself is asked ([`ListenerRuntime::handshakes_flooded`]), not its
/// announcement in the log: shutdown ends the announcement too (the accept loop's end), and
/// would otherwise let every connection closed after that write its line.
///
/// It is no session yet, and would otherwise hold the shutdown up to that wait's deadline
/// (`proxy_header`, `tls_handshake`: 10 and 30 s) though nothing could be said to it (a `421`
/// needs a session), and so may a client that connects just before a `SIGTERM` and sends
/// nothing. Polled first, `work` that is done at once costs no registration with the watch.
///
/// `work` is pinned where the caller awaits this: an async fn keeps what it is given in its
/// future, and a future given by value would be there twice (as the argument, and in the
/// `select!`), in every connection's task for its whole life (C of ../shared/bench).
async fn before_draining<T>(
    shutdown: &mut crate::shutdown::Watch,
    work: Pin<&mut impl std::future::Future<Output = Option<T>>>,
    (l, waiting): (&ListenerRuntime, Waiting),
) -> Option<T> {
    let draining = async {
        while shutdown.borrow() == Shutdown::Running {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        biased;
        done = work => done,
        () = draining => {
            if !l.handshakes_flooded() {
                waiting.closed(&l.name);
            }
            None
        }
    }
}

/// What a connection that is no session yet waits for ([`before_draining`]).
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// Its PROXY header, from the balancer at `proxy`.
    ProxyHeader { proxy: SocketAddr },
    /// The end of its implicit-TLS handshake, with the client at `peer`.
    TlsHandshake { peer: SocketAddr },
}

impl Waiting {
    /// The line of a connection closed by shutdown before its session began.
    fn closed(self, listener: &str) {
        const WHY: &str = "connection closed: shutting down before its session began";
        match self {
            Waiting::ProxyHeader { proxy } => {
                tracing::info!(%listener, %proxy, waiting = "PROXY header", "{WHY}");
            }
            Waiting::TlsHandshake { peer } => {
                tracing::info!(%listener, %peer, waiting = "TLS handshake", "{WHY}");
            }
        }
    }
}

/// What a connection's end needs, from when it is let in: its place ([`Admitted`]), and its
/// count once it has arrived. [`Closing::end`], once its session is over, counts it out
/// ([`Counted`]) and closes it with a linger if its session ended with one and a place is
/// left (`max_connections`, `max_connections_per_ip` of its listener's runtime `l`, the one
/// it was let in by).
struct Closing {
    /// From its arrival on ([`arrive`]).
    counted: Option<Counted>,
    admitted: Admitted,
}

impl Closing {
    async fn end(self, lingering: Option<Stream>, l: &ListenerRuntime) {
        let Closing { counted, admitted } = self;
        drop(counted);
        let Some(stream) = lingering else {
            return;
        };
        // Without a place (as many lingering closes as `max_connections`, or as
        // `max_connections_per_ip` from this address) the connection closes at once, as it
        // would have without the linger.
        if let Some(_places) = admitted.into_lingering(l.max_connections, l.max_connections_per_ip)
        {
            Box::pin(stream.linger()).await;
        }
    }
}

/// A session in the listener's counts: when dropped, its length is recorded
/// (`session_duration_seconds`, one per session of `connections_total`, whichever way it
/// ended, lingering close excluded) and it leaves `active_sessions`. Dropped also when its
/// task ends without reaching [`Closing::end`]: a panic in the session (which tokio contains
/// to its task), or the runtime's end.
struct Counted {
    /// When the session began: once `connections_total` counted it (after a PROXY header).
    started: Instant,
    /// The series of the listener's runtime it was let in by: one handle for both.
    metrics: Arc<ListenerMetrics>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.metrics.duration.observe(elapsed);
        self.metrics.active.dec();
    }
}

/// What comes before a connection's session: its PROXY header where the listener expects
/// one; the session's client address is the header's. `None` if the connection ended there
/// (logged and counted). The session is counted from here, in `connections_total` and
/// `active_sessions`, until the [`Counted`] it returns is dropped.
async fn arrive(
    mut stream: TcpStream,
    socket: SocketAddr,
    l: &ListenerRuntime,
    admitted: &mut Admitted,
) -> Option<(TcpStream, SocketAddr, Counted)> {
    let peer = match l.proxy_header {
        None => socket,
        // Boxed: most listeners have no balancer in front, and the header's wait, its
        // peek buffer in it, would make every connection's task larger for its whole life.
        Some(limit) => match Box::pin(crate::proxy::read_header_from(&mut stream, limit)).await {
            Ok(header) => {
                let peer = header.source.unwrap_or(socket);
                tracing::debug!(listener = %l.name, %peer, proxy = %socket, header = header.kind,
                    "proxied connection");
                // A header without a client (LOCAL, UNKNOWN: the balancer's health checks)
                // leaves the balancer's own address, which is never limited per address.
                if header.source.is_some() && !admitted.claim_ip(peer.ip(), l) {
                    too_many(stream, peer, l, &admitted.limits.refusals_said);
                    return None;
                }
                peer
            }
            Err(e) => {
                // Not one byte of SMTP to a connection that did not say whose it is.
                l.metrics.proxy_header_error(&e);
                match admitted
                    .limits
                    .proxy_errors_said
                    .take(crate::clock::unix_now())
                {
                    Some(0) => tracing::info!(listener = %l.name, proxy = %socket, reason = %e,
                        "connection closed: no valid PROXY header"),
                    Some(left_out) => tracing::info!(listener = %l.name, proxy = %socket,
                        reason = %e, left_out,
                        "connection closed: no valid PROXY header (and others not logged since the last line)"),
                    None => {}
                }
                let _ = stream.shutdown().await;
                return None;
            }
        },
    };
    l.metrics.connections.inc();
    l.metrics.active.inc();
    let counted = Counted {
        started: Instant::now(),
        metrics: Arc::clone(&l.metrics),
    };
    Some((stream, peer, counted))
}

/// Refused by a connection limit: counted, logged (within `said`), and `421 4.7.0`.
fn too_many(stream: TcpStream, peer: SocketAddr, l: &ListenerRuntime, said: &LogBudget) {
    l.metrics.refused.inc();
    match said.take(crate::clock::unix_now()) {
        Some(0) => tracing::info!(listener = %l.name, %peer, "too many connections"),
        Some(left_out) => tracing::info!(listener = %l.name, %peer, left_out,
            "too many connections (and refusals not logged since the last line)"),
        None => {}
    }
    refuse(stream, l.implicit_tls);
}

/// `421 4.7.0` and close, at once: no task and no wait for a refusal, of which a flood brings
/// thousands a second. The reply goes whole into the new socket's empty send buffer, held
/// there (`MSG_MORE`) for the FIN to leave in the same segment: under a flood, every packet
/// sent on loopback is received on the sidecar's core. On an implicit-TLS port a plaintext
/// reply would be noise, and a handshake is what an overloaded listener can least afford:
/// just close.
fn refuse(stream: TcpStream, implicit_tls: bool) {
    let Ok(stream) = stream.into_std() else {
        return;
    };
    if !implicit_tls {
        let _ = crate::io::send_more(
            &stream,
            b"421 4.7.0 Too many connections, try again later\r\n",
        );
    }
    // The FIN before the close: the close resets a connection whose client has already
    // written (a ClientHello), and the FIN tells it first.
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// The socket really listens with the long queue: `ss` shows a listener's backlog as
    /// its Send-Q.
    #[tokio::test]
    async fn listens_with_the_long_accept_queue() {
        let tcp = super::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let port = tcp.local_addr().unwrap().port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss not found: install the Debian package iproute2");
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: Vec<&str> = text.split_whitespace().collect();
        // The kernel caps the backlog at net.core.somaxconn.
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
        let want = super::LISTEN_BACKLOG.min(cap.trim().parse().unwrap());
        // State, Recv-Q, Send-Q (the backlog), local address, peer address.
        assert_eq!(backlog.get(2), Some(&want.to_string().as_str()), "{text}");
    }

    /// Every idle session holds its connection's task, [`super::connection`]'s future in
    /// tokio's cell, for its whole life: its size is most of what an idle session costs the
    /// sidecar itself (C of ../shared/bench, "memory per idle session" in the performance
    /// log). It grew unnoticed for two stops once, so it has a budget, as allocations do
    /// (`tests/allocations.rs`): the release build's layout, which `cargo +nightly rustc
    /// --release --lib -- -Zprint-type-sizes` shows, and this unoptimised build's, which is
    /// a little larger and tracks it. Tokio's cell adds 104 octets and rounds up to 128: up
    /// to 1,304 it is 1,408, an octet more would make it 1,536. When the future shrinks, lower
    /// the budget to it.
    #[test]
    fn a_connection_task_stays_within_its_budget() {
        const BUDGET: usize = if cfg!(debug_assertions) { 1_312 } else { 1_296 };
        fn output_size<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = output_size(super::connection);
        assert!(
            size <= BUDGET,
            "a connection's future is {size} octets, over its budget of {BUDGET}: every idle \
             session would hold the difference (a value kept across a wait, a larger wait)"
        );
    }

    /// A session whose task panics still leaves `active_sessions` and is timed: the counts
    /// end with the task, not only at the end of [`super::Closing::end`].
    #[tokio::test]
    async fn a_session_that_panics_is_counted_out() {
        let metrics = crate::metrics::Metrics::new().listener("inbound", &[], &[], &[]);
        let metrics = std::sync::Arc::new(metrics);
        let (active, duration) = (metrics.active.clone(), metrics.duration.clone());
        active.inc();
        let counted = super::Counted {
            started: std::time::Instant::now(),
            metrics,
        };
        let session = tokio::spawn(async move {
            let _counted = counted;
            panic!("a session's bug");
        });
        assert!(session.await.unwrap_err().is_panic());
        assert_eq!((active.get(), duration.get_sample_count()), (0, 1));
    }

    /// Ten lines a second; the first line of a later second says how many were left out.
    #[test]
    fn a_log_budget_writes_ten_lines_a_second_and_counts_the_rest() {
        let budget = super::LogBudget::default();
        let first: Vec<_> = (0..13).map(|_| budget.take(100)).collect();
        assert_eq!(first[..10], [Some(0); 10]);
        assert_eq!(first[10..], [None; 3]);
        assert_eq!(budget.take(101), Some(3));
        assert_eq!(budget.take(101), Some(0));
        assert_eq!(
            budget.take(100),
            Some(0),
            "a clock set back starts a second too"
        );
    }

    /// Places are bounded in all and per address, a refused place leaves no trace, and every
    /// place given back leaves the counts as they were (no address lingers in the map).
    #[test]
    fn places_are_bounded_in_all_and_per_address() {
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut p = super::Places::default();
        assert!(p.take(Some(a), 3, 2));
        assert!(p.take(Some(a), 3, 2));
        assert!(!p.take(Some(a), 3, 2), "a has its two places");
        assert_eq!(p.total, 2, "a refused place is not counted");
        assert!(
            p.take(None, 3, 2),
            "one more without an address (a PROXY header unread)"
        );
        assert!(!p.take(Some(b), 3, 2), "all three places are taken");
        assert!(!p.per_ip.contains_key(&b));
        assert!(p.take_ip(b, 2), "the header names b");
        p.give_back(Some(b));
        p.give_back(Some(a));
        assert!(p.take(Some(b), 3, 2));
        p.give_back(Some(b));
        p.give_back(Some(a));
        assert_eq!((p.total, p.per_ip.len()), (0, 0));
    }

    /// An IPv6 client counts by its /64, an IPv4-mapped or NAT64 address as the IPv4
    /// address; every place given back still leaves the map empty.
    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ones_as_ipv4() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut p = super::Places::default();
        assert!(p.take(Some(ip("2001:db8:1:2::1")), 10, 2));
        assert!(p.take(Some(ip("2001:db8:1:2:ffff::9")), 10, 2));
        assert!(
            !p.take(Some(ip("2001:db8:1:2:abcd::1")), 10, 2),
            "the /64 has its two places"
        );
        assert!(p.take(Some(ip("2001:db8:1:3::1")), 10, 2), "another /64");
        assert!(p.take(Some(ip("192.0.2.1")), 10, 2));
        assert!(p.take(Some(ip("::ffff:192.0.2.1")), 10, 2));
        assert!(
            !p.take(Some(ip("192.0.2.1")), 10, 2),
            "one address, two forms"
        );
        // Behind NAT64 every IPv4 client is an address of 64:ff9b::/96: each its own.
        assert!(
            !p.take(Some(ip("64:ff9b::192.0.2.1")), 10, 2),
            "192.0.2.1 again"
        );
        assert!(p.take(Some(ip("64:ff9b::192.0.2.2")), 10, 2));
        assert!(p.take(Some(ip("64:ff9b::192.0.2.3")), 10, 2));
        for a in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff::9",
            "2001:db8:1:3::1",
            "192.0.2.1",
            "::ffff:192.0.2.1",
            "64:ff9b::192.0.2.2",
            "64:ff9b::192.0.2.3",
        ] {
            p.give_back(Some(ip(a)));
        }
        assert_eq!((p.total, p.per_ip.len()), (0, 0));
    }

    /// Accepted sockets inherit `TCP_NODELAY` from the listener; sessions no longer set it.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let tcp = super::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let client = tokio::net::TcpStream::connect(tcp.local_addr().unwrap());
        let (accepted, client) = tokio::join!(tcp.accept(), client);
        let (accepted, _) = accepted.unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(!client.unwrap().nodelay().unwrap(), "the check can tell");
    }
}
