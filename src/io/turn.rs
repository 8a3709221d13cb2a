//! Whose turn it is in a server handshake that holds one of its listener's `max_handshakes`
//! slots: ours (rustls works on what the client sent, or its flight is on its way out) or the
//! client's (we wait for its next flight). A handshake that has waited for its client for
//! long, while every slot is taken and another connection wants one, can be cut, and its
//! slot goes to the other ([`crate::snapshot::HandshakeSlots`] decides which).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

/// `Turn::state` once cut: for good.
const CUT: u64 = u64::MAX;

/// A handshake's turn, shared between the handshake and its listener's slots.
#[derive(Debug)]
pub struct Turn {
    /// The slots' clock: what the times here count from.
    born: Instant,
    /// 0 while it is our turn; [`CUT`] once cut; otherwise nanoseconds after `born`, plus
    /// one, since the handshake waits for its client's next flight: from when it first
    /// waited after its last progress, so that a client trickling an octet at a time does
    /// not wait anew with each. Changed only by compare-and-swap, so that a cut and the
    /// client's flight cannot both win.
    state: AtomicU64,
    /// The connection admitted past a full set of slots that counts on this handshake's
    /// slot (its socket's address), and until when (nanoseconds after `born`):
    /// [`Turn::reserve`].
    reserved: Mutex<Option<(SocketAddr, u64)>>,
    /// Where the slot goes when its handshake ends after a cut: to the one that cut it.
    handover: Mutex<Option<oneshot::Sender<OwnedSemaphorePermit>>>,
    wake: Notify,
}

/// A handshake ended because it waited for its client while others wanted its slot.
#[derive(Debug, thiserror::Error)]
#[error("stalled: waited for the client while every handshake slot was taken (max_handshakes)")]
pub struct Stalled;

impl Turn {
    pub(crate) fn new(born: Instant) -> Self {
        Turn {
            born,
            state: AtomicU64::new(0),
            reserved: Mutex::new(None),
            handover: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    /// The handshake waits for its client from now, unless it already did (or was cut).
    pub(crate) fn clients(&self) {
        let since = nanos_since(self.born).saturating_add(1).min(CUT - 1);
        let _ = self
            .state
            .compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The client's flight was taken and the handshake went on (rustls answered it, or it
    /// is done): our turn. `false` if the handshake was cut first.
    pub(crate) fn ours(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != CUT).then_some(0)
            })
            .is_ok()
    }

    /// Since when (nanoseconds after the slots' birth) the handshake has waited for its
    /// client: `None` on our turn, or once cut.
    pub(crate) fn waiting_since(&self) -> Option<u64> {
        match self.state.load(Ordering::Acquire) {
            0 | CUT => None,
            since => Some(since - 1),
        }
    }

    /// The connection at `socket`, admitted past a full set of slots, counts on this
    /// stalled handshake's slot until `until` (nanoseconds after the slots' birth); `false`
    /// if another already does at `now`.
    pub(crate) fn reserve(&self, socket: SocketAddr, now: u64, until: u64) -> bool {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        match *reserved {
            Some((_, until)) if until > now => false,
            _ => {
                *reserved = Some((socket, until));
                true
            }
        }
    }

    /// The connection at `socket` no longer counts on this handshake's slot (it ended, or
    /// took its slot).
    pub(crate) fn unreserve(&self, socket: SocketAddr) {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if reserved.is_some_and(|(kept_for, _)| kept_for == socket) {
            *reserved = None;
        }
    }

    /// Whom the handshake's slot is reserved for at `now`, if anyone.
    pub(crate) fn reserved_for(&self, now: u64) -> Option<SocketAddr> {
        self.reservation(now).map(|(socket, _)| socket)
    }

    /// Whom the handshake's slot is reserved for at `now`, and until when.
    pub(crate) fn reservation(&self, now: u64) -> Option<(SocketAddr, u64)> {
        let reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        reserved.filter(|(_, until)| *until > now)
    }

    /// Cut the handshake if it still waits for its client since `since`: its slot goes to
    /// the receiver returned when the handshake ends. `None` if its client's flight came
    /// first (or another cut it).
    pub(crate) fn cut(&self, since: u64) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        self.state
            .compare_exchange(since + 1, CUT, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let (tx, rx) = oneshot::channel();
        *self.handover.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        // A permit is kept when the handshake is not waiting yet.
        self.wake.notify_one();
        Some(rx)
    }

    /// The slot's permit, as its handshake ends: to the one that cut it, if any (or back to
    /// the slots, if that one no longer waits).
    pub(crate) fn give_back(&self, permit: OwnedSemaphorePermit) {
        let to = self
            .handover
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(to) = to {
            let _ = to.send(permit);
        }
    }

    /// The handshake's wait for its client (`wait`: our flight out, more of the client's
    /// in), ended by [`Turn::cut`] with [`Stalled`]; cut before what came was taken, it ends
    /// so too. The turn is ours again only once the handshake goes on ([`Turn::ours`]).
    pub(crate) async fn client_turn<T>(
        &self,
        wait: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        self.clients();
        let result = tokio::select! {
            biased;
            result = wait => result,
            () = self.wake.notified() => Err(stalled()),
        };
        if self.state.load(Ordering::Acquire) == CUT {
            return Err(stalled());
        }
        result
    }
}

pub(crate) fn stalled() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, Stalled)
}

/// The handshake ended with [`Stalled`].
pub(crate) fn was_stalled(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stalled>())
}

/// Nanoseconds from `born` to now.
pub(crate) fn nanos_since(born: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(born).as_nanos()).unwrap_or(u64::MAX)
}
