//! What one configuration becomes once built ([`crate::runtime`]'s build): a [`Snapshot`],
//! immutable, with one [`ListenerRuntime`] per listener. A session reads its listener's `Arc`
//! once, when it is accepted, and keeps it to the end; a reload builds a new snapshot and the
//! accept loops hand out its listeners from then on.
//!
//! This module holds only the types, so that the accept loop and the session drivers, which
//! read them, need nothing of the runtime that builds and swaps them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::backend::Pool;
use crate::config::Config;
use crate::io::turn::Turn;
use crate::metrics::ListenerMetrics;
use crate::tls::{CertInfo, CertPlan, CertStore, ClientAuth, ClientTls, Trust};

/// Everything built from one configuration: the configuration itself, the certificate store
/// and trust read for it, and each listener's runtime. Nothing in it changes once built; a
/// reload builds a new one and swaps it whole.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub store: Arc<CertStore>,
    pub trust: Arc<Trust>,
    /// In configuration order, by the `listen` address of the configuration.
    pub listeners: Vec<(SocketAddr, Arc<ListenerRuntime>)>,
    /// What the operator must hear of but does not stop the configuration: logged by `run`
    /// and by a reload that puts this snapshot in force.
    pub warnings: Vec<Warning>,
    /// Where the listeners in force are bound, once they are: set by `run` and by the
    /// reload that puts a snapshot in force; the previous snapshot's, shared.
    pub bound: Arc<Bound>,
}

/// The addresses the listeners in force are bound to (with port 0, the port taken), once
/// known: a next hop there is the sidecar itself ([`Bound::loops_back`]). One value for the
/// snapshots that follow each other by reload, so that a session of an older one sees the
/// listeners a reload added.
#[derive(Debug, Default)]
pub struct Bound(arc_swap::ArcSwap<Vec<SocketAddr>>);

impl Bound {
    /// The listeners in force are bound at `addrs`.
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        self.0.store(Arc::new(addrs));
    }

    /// The listener a connection to `target` arrives at, if it is one of ours: by the
    /// addresses alone ([`crate::config::reaches`]: the same address, or a wildcard listener
    /// and a loopback one), or, once connected from `local`, a connection from this host to
    /// its own address (local and remote address the same: one of the host's other
    /// addresses, on the port of a wildcard listener or one bound there).
    pub fn loops_back(&self, target: SocketAddr, local: Option<SocketAddr>) -> Option<SocketAddr> {
        let ip = target.ip().to_canonical();
        let this_host = local.is_some_and(|local| local.ip().to_canonical() == ip);
        self.0.load().iter().copied().find(|listen| {
            crate::config::reaches(target, *listen)
                || (this_host
                    && listen.port() == target.port()
                    && ((listen.ip().is_unspecified() && (listen.is_ipv6() || ip.is_ipv4()))
                        || listen.ip().to_canonical() == ip))
        })
    }
}

/// A finding of the build that leaves a listener working, but less than configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub listener: String,
    /// Logged at error rather than warning level: the listener lacks something its
    /// configuration asks for (a certificate rule that matches nothing).
    pub error: bool,
    pub message: String,
}

/// How long a listener counts as under pressure, or flooded, after the last sign of it
/// ([`PRESS_BURST`], [`ListenerRuntime::handshakes_flooded`]): a flood comes in waves, and each move of a
/// listener's work between the sessions' threads and the admission threads costs a little.
pub const PRESSURE_HOLD: Duration = Duration::from_secs(1);

/// Handshakes begun within [`PRESS_WINDOW`] beyond which a listener is under pressure (or half
/// its slots, if fewer): 160 a second in a burst, each ~150 µs of CPU in one piece that
/// established sessions' wake-ups would wait behind (a flood of 8 ClientHellos at a time,
/// ~400 a second, took their p99 from 1.2–3.3 to 6.1–8.6 ms; with pressure above 4
/// handshakes in progress, from 2.1–3.4 to 3.6–4.4). Handshakes begun, not in progress: one
/// that waits for a slow or silent client costs no CPU, and a few of those must not keep a
/// listener under pressure.
pub const PRESS_BURST: usize = 8;

/// See [`PRESS_BURST`].
pub const PRESS_WINDOW: Duration = Duration::from_millis(50);

/// Connections taken from the accept queue in a row that are never a flood, whatever the
/// slots: senders that open several connections at once (Postfix opens a few to each
/// destination), on a listener with few slots, are not one.
const QUEUED_FLOOR: usize = 32;

/// How long a handshake may wait for its client's next flight before its slot can go to
/// another connection, when every slot is taken ([`HandshakeSlots::take`]). The client's turn
/// is one round trip and its own cryptography, under a second nearly anywhere; a client that
/// sends its ClientHello and then nothing would otherwise keep its slot for the whole
/// `tls_handshake` (30 s), and `max_handshakes` of them, from a few addresses, would have the
/// listener refuse every new connection as long as they came back. To keep a listener full
/// now takes `max_handshakes` new ClientHellos a second, each with its handshake's work: a
/// flood, which the listener sees as one. The price: while every slot is taken, a client
/// slower than this loses its handshake to a newcomer.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// How often a connection waiting for a slot looks again for a handshake stalled since it
/// began waiting.
const STALLED_LOOK: Duration = Duration::from_millis(250);

/// A listener's `max_handshakes` slots: one is taken for each handshake in progress; with
/// none free, new connections are refused, unless one of the handshakes has waited for its
/// client for [`STALLED_AFTER`]: one new connection a second is then admitted on it
/// ([`HandshakeSlots::room`]), and the first handshake that waits for a slot cuts it and is
/// given its slot.
#[derive(Debug)]
pub struct HandshakeSlots {
    slots: Arc<tokio::sync::Semaphore>,
    /// Whose turn it is in each handshake holding a slot.
    holders: Arc<Mutex<Holders>>,
    total: usize,
    /// When the slots were made; the origin of `pressed_until`.
    born: tokio::time::Instant,
    /// Nanoseconds after `born` until which the listener is under pressure (0: never was).
    pressed_until: AtomicU64,
    /// The same, for a flood.
    flooded_until: AtomicU64,
    /// When the last handshakes began (nanoseconds after `born`), newest at `next - 1`.
    begun: Mutex<Begun>,
    /// A flood was announced in the log and is not over: its failed handshakes are counted,
    /// not logged one by one.
    announced: AtomicBool,
}

/// The turns of the handshakes holding slots, at the index their [`Slot`] keeps.
#[derive(Debug, Default)]
struct Holders {
    turns: Vec<Option<Arc<Turn>>>,
    free: Vec<usize>,
    /// Before when (nanoseconds after the slots' birth) no handshake can be stalled and kept
    /// for nobody, as the last look at every turn found ([`Holders::next_room`]); 0: look.
    /// While every slot is taken, each connection the accept loop takes asks for room: under
    /// a flood, thousands a second, which would otherwise each look at all `max_handshakes`
    /// turns. A turn's wait only starts later or ends, and a new handshake's can stall no
    /// sooner than [`STALLED_AFTER`] from now; only a reservation given up early makes room
    /// sooner, and that clears this.
    quiet_until: u64,
}

impl Holders {
    /// The earliest moment from `now` at which one of these handshakes may be stalled and
    /// kept for nobody, none being at `now`: when a wait began stalls, when a reservation
    /// ends, and a handshake on our turn may start waiting now. (Its wait's start is read off
    /// the clock just before it is stored: a thread preempted in between makes the answer
    /// late by as long, and a stalled handshake is let go that much later.)
    fn next_room(&self, now: u64) -> u64 {
        let stall = nanos(STALLED_AFTER);
        let earliest = |turn: &Arc<Turn>| {
            let stalls = turn.waiting_since().unwrap_or(now).saturating_add(stall);
            let freed = turn.reservation(now).map_or(0, |(_, until)| until);
            stalls.max(freed)
        };
        let never = now.saturating_add(stall);
        self.turns
            .iter()
            .flatten()
            .map(earliest)
            .fold(never, u64::min)
    }
}

/// A stalled handshake kept for one connection let in past a full set of slots
/// ([`HandshakeSlots::keep_room`]): given up when dropped, so that a connection that ends before
/// its ClientHello (a STARTTLS session that quits, a bad PROXY header) keeps it no longer.
#[derive(Debug)]
pub struct Reservation {
    turn: Arc<Turn>,
    socket: SocketAddr,
    holders: Arc<Mutex<Holders>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.quiet_until = 0;
        self.turn.unreserve(self.socket);
    }
}

/// A taken slot, given back when dropped (to the handshake that cut it, if one did).
#[derive(Debug)]
pub struct Slot {
    /// Taken out only by the drop.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    turn: Arc<Turn>,
    index: usize,
    holders: Arc<Mutex<Holders>>,
}

impl Slot {
    /// Whose turn it is in the handshake that holds this slot: the handshake keeps it up to
    /// date, and is cut through it.
    pub fn turn(&self) -> Arc<Turn> {
        Arc::clone(&self.turn)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.turns[self.index] = None;
        holders.free.push(self.index);
        drop(holders);
        if let Some(permit) = self.permit.take() {
            self.turn.give_back(permit);
        }
    }
}

#[derive(Debug, Default)]
struct Begun {
    at: [Option<u64>; PRESS_BURST + 1],
    next: usize,
}

impl HandshakeSlots {
    pub fn new(total: usize) -> Self {
        HandshakeSlots {
            slots: Arc::new(tokio::sync::Semaphore::new(total)),
            holders: Arc::default(),
            total,
            born: tokio::time::Instant::now(),
            pressed_until: AtomicU64::new(0),
            flooded_until: AtomicU64::new(0),
            begun: Mutex::default(),
            announced: AtomicBool::new(false),
        }
    }

    /// Wait for a slot, held until dropped: a handshake begins. With none free, the handshake
    /// that has waited longest for its client, once [`STALLED_AFTER`], is cut and its slot
    /// given to this one (looked for at once, then every [`STALLED_LOOK`]); otherwise the
    /// first slot given back. Done once the newcomer's whole ClientHello is in, so that
    /// connecting alone cuts nothing, and each waiting handshake cuts at most one at a time.
    ///
    /// `socket`: the connection's address, as the accept loop saw it, for a connection let in
    /// past a full set of slots on a stalled handshake ([`HandshakeSlots::keep_room`]): it
    /// cuts that one, or if it can no longer, another stalled one; if none is, it waits for
    /// a slot given back only for what is left of the second it was let in for.
    ///
    /// `cut`: false for a connection whose first bytes are no whole ClientHello, which
    /// rustls may still answer (warning alerts before one, or one followed by a FIN): it
    /// takes a slot as any handshake does, but cuts none.
    pub async fn take(
        &self,
        socket: impl FnOnce() -> Option<SocketAddr>,
        cut: bool,
    ) -> Option<Slot> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) if !cut => {
                // Let in on a stalled handshake, it gives that one up for a ClientHello to
                // cut, and waits for a slot given back only what is left of its second.
                let socket = socket();
                let queued = Arc::clone(&self.slots).acquire_owned();
                match self.kept_until(socket) {
                    Some(until) => {
                        self.give_up(socket);
                        tokio::time::timeout_at(until, queued).await.ok()?.ok()?
                    }
                    None => queued.await.ok()?,
                }
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => self.wait(socket()).await?,
        };
        self.begin(self.now());
        let turn = Arc::new(Turn::new(self.born));
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match holders.free.pop() {
            Some(index) => {
                holders.turns[index] = Some(Arc::clone(&turn));
                index
            }
            None => {
                holders.turns.push(Some(Arc::clone(&turn)));
                holders.turns.len() - 1
            }
        };
        drop(holders);
        Some(Slot {
            permit: Some(permit),
            turn,
            index,
            holders: Arc::clone(&self.holders),
        })
    }

    /// A slot for a handshake that found none free: its place in the queue for one given
    /// back, or the slot of a stalled handshake it cut.
    async fn wait(&self, socket: Option<SocketAddr>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut queued = std::pin::pin!(Arc::clone(&self.slots).acquire_owned());
        let mut cut = self.cut_stalled(socket);
        if let (None, Some(until)) = (&cut, self.kept_until(socket)) {
            // Let in for a handshake that went on since: a slot given back within the
            // second it was kept for, or none.
            let given = tokio::time::timeout_at(until, &mut queued).await;
            return given.ok()?.ok();
        }
        loop {
            if cut.is_none() {
                cut = self.cut_stalled(socket);
            }
            tokio::select! {
                permit = &mut queued => return permit.ok(),
                given = async { cut.as_mut()?.await.ok() }, if cut.is_some() => match given {
                    Some(permit) => return Some(permit),
                    // Its handshake ended without the permit: look again.
                    None => cut = None,
                },
                () = tokio::time::sleep(STALLED_LOOK), if cut.is_none() => {}
            }
        }
    }

    /// Cut a stalled handshake ([`STALLED_AFTER`]) for the connection at `socket`: the one
    /// reserved for it, if any, or the one that has waited longest of those not reserved for
    /// another. Its slot comes through the receiver when its task has ended.
    fn cut_stalled(
        &self,
        socket: Option<SocketAddr>,
    ) -> Option<tokio::sync::oneshot::Receiver<tokio::sync::OwnedSemaphorePermit>> {
        let now = self.now();
        let holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stalled: Vec<_> = stalled(&holders, now).collect();
        // Reserved for this connection first, then the oldest.
        stalled.sort_unstable_by_key(|(since, turn)| {
            let reserved = turn.reserved_for(now);
            (socket.is_none() || reserved != socket, *since, reserved)
        });
        stalled
            .into_iter()
            .filter(|(_, turn)| turn.reserved_for(now).is_none_or(|r| Some(r) == socket))
            .find_map(|(since, turn)| turn.cut(since))
    }

    /// The stalled handshake kept for the connection at `socket` is no longer kept.
    fn give_up(&self, socket: Option<SocketAddr>) {
        let Some(socket) = socket else {
            return;
        };
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.quiet_until = 0;
        for turn in holders.turns.iter().flatten() {
            turn.unreserve(socket);
        }
    }

    /// Until when a stalled handshake is kept for the connection at `socket`, if one is (it
    /// was let in on it past a full set of slots).
    fn kept_until(&self, socket: Option<SocketAddr>) -> Option<tokio::time::Instant> {
        let socket = socket?;
        let now = self.now();
        let holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = holders.turns.iter().flatten().find_map(|turn| {
            let (kept_for, until) = turn.reservation(now)?;
            (kept_for == socket).then_some(until)
        });
        drop(holders);
        kept.map(|until| self.born + Duration::from_nanos(until))
    }

    /// Room for a new connection although every slot may be taken: a free slot, or a
    /// stalled handshake no other connection counts on. Asked of every connection accepted
    /// while every slot is taken: a look at the handshakes' turns, once per quiet spell
    /// ([`Holders::quiet_until`]), not once per connection.
    pub fn room(&self) -> bool {
        if !self.full() {
            return true;
        }
        let now = self.now();
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if now < holders.quiet_until {
            return false;
        }
        let room = stalled(&holders, now).any(|(_, turn)| turn.reserved_for(now).is_none());
        if !room {
            holders.quiet_until = holders.next_room(now);
        }
        room
    }

    /// The room for the connection at `socket`: `Some(None)` a free slot; `Some(kept)` a
    /// stalled handshake kept for it, for at most [`STALLED_AFTER`] or until `kept` is
    /// dropped ([`Turn::reserve`]); `None` none. So stalled handshakes admit one connection a
    /// second each, not every connection of a flood that has a few of them, and each such
    /// connection takes the slot it was let in on ([`HandshakeSlots::take`]).
    fn keep_room(&self, socket: SocketAddr) -> Option<Option<Reservation>> {
        if !self.full() {
            return Some(None);
        }
        let now = self.now();
        let until = now.saturating_add(nanos(STALLED_AFTER));
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if now < holders.quiet_until {
            return None;
        }
        // `reserve` takes only a handshake no other connection counts on.
        let Some((_, turn)) =
            stalled(&holders, now).find(|(_, turn)| turn.reserve(socket, now, until))
        else {
            holders.quiet_until = holders.next_room(now);
            return None;
        };
        let turn = Arc::clone(turn);
        let holders = Arc::clone(&self.holders);
        Some(Some(Reservation {
            turn,
            socket,
            holders,
        }))
    }

    /// A handshake begins at `now`: more than [`PRESS_BURST`] (or half the slots, if fewer)
    /// within [`PRESS_WINDOW`] is pressure.
    fn begin(&self, now: u64) {
        let burst = PRESS_BURST.min(self.total / 2).max(1);
        let mut begun = self.begun.lock().unwrap_or_else(PoisonError::into_inner);
        let n = begun.at.len();
        let next = begun.next;
        begun.at[next] = Some(now);
        begun.next = (next + 1) % n;
        // The start `burst` before this one: with it, `burst + 1` within the window.
        let earlier = begun.at[(next + n - burst) % n];
        drop(begun);
        if earlier.is_some_and(|at| now.saturating_sub(at) <= nanos(PRESS_WINDOW)) {
            self.press(now);
        }
    }

    fn full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// A burst of handshakes ([`PRESS_BURST`]) or a flood, now or within the last
    /// [`PRESSURE_HOLD`].
    fn pressed(&self) -> bool {
        self.flooded() || self.now() < self.pressed_until.load(Ordering::Relaxed)
    }

    /// More than half the slots taken now, or a flood seen within the last [`PRESSURE_HOLD`]
    /// (this, or [`HandshakeSlots::queued`]).
    fn flooded(&self) -> bool {
        let now = self.now();
        if self.slots.available_permits() < self.total / 2 {
            self.flood(now);
            return true;
        }
        now < self.flooded_until.load(Ordering::Relaxed)
    }

    /// The accept loop took `waiting` connections in a row without finding the accept queue
    /// empty: more than half as many as there are slots (and more than [`QUEUED_FLOOR`]) is
    /// a flood too. A STARTTLS flood takes no slot before its `STARTTLS`, and until its
    /// handshakes were under way it was accepted and served at the sessions' priority; its
    /// connections arrive faster than the loop takes them. So do ordinary ones
    /// when the sessions leave the loop no time, and their work then waits for the sessions
    /// too, which is what pressure is for.
    fn queued(&self, waiting: u32) {
        let waiting = usize::try_from(waiting).unwrap_or(usize::MAX);
        if waiting > (self.total / 2).max(QUEUED_FLOOR) {
            self.flood(self.now());
        }
    }

    /// Nanoseconds since the slots were made.
    fn now(&self) -> u64 {
        crate::io::turn::nanos_since(self.born)
    }

    /// Flooded, and so under pressure, from `now` for [`PRESSURE_HOLD`].
    fn flood(&self, now: u64) {
        self.press(now);
        // Never earlier than another thread's later mark.
        self.flooded_until
            .fetch_max(now.saturating_add(nanos(PRESSURE_HOLD)), Ordering::Relaxed);
    }

    /// Under pressure from `now` for [`PRESSURE_HOLD`].
    fn press(&self, now: u64) {
        self.pressed_until
            .fetch_max(now.saturating_add(nanos(PRESSURE_HOLD)), Ordering::Relaxed);
    }
}

/// The handshakes that have waited for their clients for [`STALLED_AFTER`] at `now`, and
/// since when.
fn stalled(holders: &Holders, now: u64) -> impl Iterator<Item = (u64, &Arc<Turn>)> {
    holders
        .turns
        .iter()
        .flatten()
        .filter_map(|turn| Some((turn.waiting_since()?, turn)))
        .filter(move |(since, _)| now.saturating_sub(*since) >= nanos(STALLED_AFTER))
}

/// A duration in nanoseconds, as the slots' clock counts them.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Everything a session of one listener needs, fixed when the snapshot is built.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub name: String,
    pub implicit_tls: bool,
    /// `None`: no certificate, so no STARTTLS (`454 4.7.0`).
    pub acceptor: Option<Arc<rustls::ServerConfig>>,
    /// `client_certificates`: what a session learns of the client's certificate.
    pub client_auth: ClientAuth,
    /// What each session is given, by mode.
    pub mode: ModeRuntime,
    /// Where `ConnectBackend` goes: the legacy server(s), or an originate listener's relay,
    /// with what the health checks know of each. Shared with the next snapshot when a reload
    /// leaves what it is built from unchanged, so that what the checks learnt survives.
    pub pool: Arc<Pool>,
    pub connect_timeout: Duration,
    /// Deadline for writing to either peer.
    pub write_timeout: Duration,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    /// `proxy_protocol: true`: the deadline of the PROXY header each connection begins with.
    pub proxy_header: Option<Duration>,
    /// `max_handshakes` slots for TLS handshakes in progress (a terminate listener that can
    /// do TLS).
    pub handshakes: Option<HandshakeSlots>,
    /// This listener's series, labels resolved; shared with each session's count
    /// (`crate::listener`), which outlives nothing of it but must end it.
    pub metrics: Arc<ListenerMetrics>,
    /// How the certificate is chosen, to name the one served in the protocol log.
    pub certificates: CertPlan,
}

/// The mode-specific part of a listener's runtime.
#[derive(Debug)]
pub enum ModeRuntime {
    Terminate(Arc<smtp_core::inbound::Config>),
    Originate(Box<OriginateRuntime>),
}

/// What an originate listener's sessions need beyond their policy.
#[derive(Debug)]
pub struct OriginateRuntime {
    pub session: Arc<smtp_core::outbound::Config>,
    /// `next_hop: mx`: the MX resolver and the port next hops are contacted on.
    pub resolver: Option<crate::mx::MxResolver>,
    pub mx_port: u16,
    /// The TLS client toward next hops, and the certificate it presents (for the log).
    pub client_tls: ClientTls,
    pub client_certificate: Option<CertInfo>,
    /// Where the listeners in force are bound: an MX there is a mail loop.
    pub bound: Arc<Bound>,
}

impl ListenerRuntime {
    /// `log.protocol_log`: command, reply and certificate lines of every session.
    pub fn protocol_log(&self) -> bool {
        match &self.mode {
            ModeRuntime::Terminate(c) => c.protocol_log,
            ModeRuntime::Originate(o) => o.session.protocol_log,
        }
    }

    fn timeouts(&self) -> &smtp_core::session::Timeouts {
        match &self.mode {
            ModeRuntime::Terminate(c) => &c.timeouts,
            ModeRuntime::Originate(o) => &o.session.timeouts,
        }
    }

    /// Our name, as the sessions give it (and the health checks' EHLO).
    pub fn hostname(&self) -> &str {
        match &self.mode {
            ModeRuntime::Terminate(c) => &c.hostname,
            ModeRuntime::Originate(o) => &o.session.hostname,
        }
    }

    /// `terminate` or `originate`.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            ModeRuntime::Terminate(_) => "terminate",
            ModeRuntime::Originate(_) => "originate",
        }
    }

    /// The originate part, for an originate listener.
    pub fn originate(&self) -> Option<&OriginateRuntime> {
        match &self.mode {
            ModeRuntime::Originate(o) => Some(o),
            ModeRuntime::Terminate(_) => None,
        }
    }

    /// Every handshake slot is taken, and no stalled handshake ([`STALLED_AFTER`]) makes room
    /// for one more connection ([`HandshakeSlots::room`]): a new connection is refused before
    /// it costs a handshake.
    pub fn handshakes_full(&self) -> bool {
        self.handshakes.as_ref().is_some_and(|slots| !slots.room())
    }

    /// The handshake room for the connection at `socket`, once it has passed the connection
    /// limits: `None` none (it is refused); `Some(kept)`, a stalled handshake kept for it
    /// while `kept` lives ([`HandshakeSlots::keep_room`]), or a free slot (or no slots).
    pub fn handshake_room(&self, socket: SocketAddr) -> Option<Option<Reservation>> {
        match &self.handshakes {
            Some(slots) => slots.keep_room(socket),
            None => Some(None),
        }
    }

    /// Handshake pressure: more than [`PRESS_BURST`] handshakes begun within [`PRESS_WINDOW`]
    /// (or half the `max_handshakes` slots, if fewer), or a flood
    /// ([`ListenerRuntime::handshakes_flooded`]), now or within the last [`PRESSURE_HOLD`]. The listener's accepts and server handshakes
    /// then run on the admission threads, below the established sessions' priority
    /// ([`crate::io::admission`]): each handshake is ~150 µs of CPU in one piece, and a few
    /// of them ahead of an established session's every wake-up add up over a message.
    pub fn handshakes_pressed(&self) -> bool {
        self.handshakes
            .as_ref()
            .is_some_and(HandshakeSlots::pressed)
    }

    /// A handshake flood: more than half the `max_handshakes` slots are taken, or were within
    /// the last [`PRESSURE_HOLD`], or that many connections were waiting in the accept queue
    /// at once ([`ListenerRuntime::accept_queue`]). What the log warns of.
    pub fn handshakes_flooded(&self) -> bool {
        self.handshakes
            .as_ref()
            .is_some_and(HandshakeSlots::flooded)
    }

    /// A flood on this listener is announced in the log, or over ([`crate::listener`]'s
    /// accept loop says so).
    pub fn announce_flood(&self, announced: bool) {
        if let Some(slots) = &self.handshakes {
            slots.announced.store(announced, Ordering::SeqCst);
        }
    }

    /// A failed server handshake goes without a line of its own: a flood is announced, whose
    /// last line counts them (`tls_handshake_errors_total` does anyway). A flood's thousands
    /// of abandoned handshakes a second would bury the log, and fill its queue
    /// ([`crate::log`]).
    ///
    /// Asked after the failure is counted: with the fence, a flood's end that stops the quiet
    /// and then reads the count (`listener`'s `end_flood`) either sees this failure counted or
    /// has it logged.
    pub fn quiet_handshake_failure(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.handshakes
            .as_ref()
            .is_some_and(|s| s.announced.load(Ordering::SeqCst))
    }

    /// The accept loop took `waiting` connections from the accept queue in a row without
    /// finding it empty: more than half `max_handshakes` of them (and more than 32) is a
    /// flood ([`ListenerRuntime::handshakes_flooded`]) before any handshake has begun.
    pub fn accept_queue(&self, waiting: u32) {
        if let Some(slots) = &self.handshakes {
            slots.queued(waiting);
        }
    }

    /// The deadline of a TLS handshake (either leg).
    pub fn tls_handshake_timeout(&self) -> Duration {
        self.timeouts().tls_handshake
    }

    /// The longest any single wait of a session may last: the driver's bound for a session
    /// that set no deadline of its own (DESIGN.md rule 5).
    pub fn longest_wait(&self) -> Duration {
        let t = self.timeouts();
        [
            t.greeting,
            t.command,
            t.data_block,
            t.tls_handshake,
            t.backend_reply,
        ]
        .into_iter()
        .chain([self.connect_timeout, self.write_timeout])
        .max()
        .unwrap_or(Duration::from_secs(300))
    }
}

impl Snapshot {
    /// The runtime of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners
            .iter()
            .map(|(_, rt)| rt)
            .find(|rt| rt.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A next hop is one of our listeners by the addresses alone, or, once connected, when
    /// this host connected to its own address on the port of a listener bound there or to
    /// every address; not before the listeners are bound.
    #[test]
    fn a_next_hop_at_our_own_listener_loops_back() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let bound = Bound::default();
        assert_eq!(
            bound.loops_back(a("127.0.0.1:25"), None),
            None,
            "not bound yet"
        );
        bound.set(vec![
            a("127.0.0.1:25"),
            a("0.0.0.0:587"),
            a("192.0.2.7:2525"),
        ]);
        let cases = [
            ("127.0.0.1:25", None, Some("127.0.0.1:25")),
            ("0.0.0.0:25", None, Some("127.0.0.1:25")),
            ("127.0.0.2:587", None, Some("0.0.0.0:587")),
            ("[::ffff:127.0.0.1]:25", None, Some("127.0.0.1:25")),
            ("127.0.0.2:25", None, None),
            // This host's public address, on the wildcard listener's port: known once
            // connected, from the local address.
            ("203.0.113.5:587", None, None),
            (
                "203.0.113.5:587",
                Some("203.0.113.5:40000"),
                Some("0.0.0.0:587"),
            ),
            (
                "192.0.2.7:2525",
                Some("192.0.2.7:40000"),
                Some("192.0.2.7:2525"),
            ),
            // Bound to 127.0.0.1 only: this host's other address on that port is not us.
            ("203.0.113.5:25", Some("203.0.113.5:40000"), None),
            // An IPv4 wildcard takes no IPv6 connection, to this host's address or not.
            ("[2001:db8::5]:587", Some("[2001:db8::5]:40000"), None),
            // Another host.
            ("10.0.0.5:587", Some("10.0.0.1:40000"), None),
            ("10.0.0.5:2525", Some("10.0.0.1:40000"), None),
        ];
        for (target, local, want) in cases {
            let got = bound.loops_back(a(target), local.map(a));
            assert_eq!(got, want.map(a), "{target} from {local:?}");
        }
    }

    /// With every slot taken, a handshake waiting for one cuts the handshake that has waited
    /// longest for its client, once that is `STALLED_AFTER` (also one that stalled after it
    /// began waiting), and is given that slot, ahead of handshakes queued before it; a
    /// handshake on our turn, or one waiting less, is never cut. The accept loop admits one
    /// connection a second on each stalled handshake.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_handshakes_slot_goes_to_the_one_that_cut_it() {
        let ms = Duration::from_millis;
        // Time moves 10 ms at a time, and every task runs as far as it can at each.
        let step = |d: Duration| async move {
            let mut left = d;
            loop {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                if left.is_zero() {
                    break;
                }
                let by = left.min(Duration::from_millis(10));
                tokio::time::advance(by).await;
                left -= by;
            }
        };
        let slots = Arc::new(HandshakeSlots::new(2));
        let take = |slots: &Arc<HandshakeSlots>, socket: Option<SocketAddr>| {
            let slots = Arc::clone(slots);
            tokio::spawn(async move { slots.take(|| socket, true).await })
        };
        let first = slots.take(|| None, true).await.unwrap();
        let second = slots.take(|| None, true).await.unwrap();
        first.turn().clients();
        step(ms(400)).await;
        second.turn().clients();
        assert!(!slots.room(), "full, none stalled");
        // Queued before the first handshake has waited long enough.
        step(ms(100)).await;
        let queued = take(&slots, None);
        step(ms(0)).await;
        // It looks again every 250 ms: at 1 s the first handshake has stalled, and is cut.
        step(ms(500)).await;
        assert!(!first.turn().ours(), "the first handshake is cut");
        assert_eq!(second.turn().waiting_since(), Some(400_000_000));
        assert!(
            !queued.is_finished(),
            "the slot comes when the handshake ends"
        );
        drop(first);
        step(ms(0)).await;
        assert!(queued.is_finished());
        let third = queued.await.unwrap().expect("the first handshake's slot");
        // Another waits from 1.1 s. At 1.4 s the second handshake has stalled: the accept
        // loop lets one connection in on it, which the waiting one leaves alone (looking at
        // 1.6 s), and which cuts it when its ClientHello is in, at 1.7 s.
        step(ms(100)).await;
        let waiting = take(&slots, None);
        step(ms(200)).await;
        assert!(!slots.room(), "full, none stalled yet");
        step(ms(100)).await;
        let admitted: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert!(slots.room(), "a stalled handshake makes room");
        let gone: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        let kept = slots
            .keep_room(gone)
            .expect("room")
            .expect("a stalled handshake");
        assert!(!slots.room(), "for one connection");
        // That connection ends before its ClientHello: the handshake is free for another.
        drop(kept);
        assert!(slots.room());
        let _kept = slots.keep_room(admitted).expect("room").expect("kept");
        assert!(!slots.room(), "one at a time");
        step(ms(300)).await;
        assert_eq!(
            second.turn().waiting_since(),
            Some(400_000_000),
            "left alone"
        );
        let newcomer = take(&slots, Some(admitted));
        step(ms(0)).await;
        assert!(!second.turn().ours(), "the second handshake is cut");
        drop(second);
        step(ms(0)).await;
        assert!(newcomer.is_finished(), "given to the one that cut it");
        let _fourth = newcomer.await.unwrap().expect("a slot");
        // A connection let in on a handshake whose client's flight then came gets a slot
        // given back within the second, or none: it does not queue for longer.
        third.turn().clients();
        step(STALLED_AFTER).await;
        let late: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let _kept_late = slots.keep_room(late).expect("room").expect("kept");
        assert!(third.turn().ours(), "the client's flight came");
        let refused = take(&slots, Some(late));
        step(ms(990)).await;
        assert!(
            !refused.is_finished(),
            "a slot given back within the second would do"
        );
        step(ms(20)).await;
        assert!(refused.is_finished() && refused.await.unwrap().is_none());
        step(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "still waiting: nothing stalled");
        waiting.abort();
        // What is no whole ClientHello cuts no stalled handshake: let in on one, it gives it
        // up at once for a ClientHello to cut, and waits only what is left of its second.
        third.turn().clients();
        step(STALLED_AFTER).await;
        let odd: SocketAddr = "192.0.2.3:4000".parse().unwrap();
        let _kept_odd = slots.keep_room(odd).expect("room").expect("kept");
        assert!(!slots.room(), "kept for the odd one");
        let no_hello = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.take(|| Some(odd), false).await })
        };
        step(ms(0)).await;
        assert!(third.turn().waiting_since().is_some(), "not cut");
        assert!(slots.room(), "given up");
        let hello: SocketAddr = "192.0.2.4:4000".parse().unwrap();
        let _kept = slots.keep_room(hello).expect("room").expect("kept");
        let with_hello = take(&slots, Some(hello));
        step(ms(0)).await;
        assert!(!third.turn().ours(), "cut by the one with a ClientHello");
        drop(third);
        step(ms(0)).await;
        let _fifth = with_hello.await.unwrap().expect("the cut handshake's slot");
        step(ms(1010)).await;
        assert!(no_hello.is_finished() && no_hello.await.unwrap().is_none());
    }
}
