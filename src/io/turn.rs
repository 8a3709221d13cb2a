//! Whose turn it is in a server handshake that holds one of its listener's `max_handshakes`
//! slots: ours (rustls works on what the client sent, or its flight is on its way out) or the
//! client's (we wait for its next flight). A handshake that has waited for its client for
//! long, while every slot is taken and another connection wants one, can be cut, and its
//! slot goes to the other ([`crate::snapshot::HandshakeSlots`] decides which).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

/// A handshake's turn, shared between the handshake and its listener's slots.
#[derive(Debug)]
pub struct Turn {
    /// The slots' clock: what `waiting_since` counts from.
    born: Instant,
    /// Nanoseconds after `born`, plus one, since the handshake waits for its client; 0 while
    /// it is our turn.
    waiting_since: AtomicU64,
    /// Cut: the handshake ends at its next wait for the client, or in the one it is in.
    cut: AtomicBool,
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
            waiting_since: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The handshake waits for its client from now.
    pub(crate) fn clients(&self) {
        let since = nanos_since(self.born).saturating_add(1);
        self.waiting_since.store(since, Ordering::Relaxed);
    }

    /// The client's flight is in: our turn.
    pub(crate) fn ours(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    /// Since when (nanoseconds after the slots' birth) the handshake has waited for its
    /// client: `None` on our turn, or once cut.
    pub(crate) fn waiting_since(&self) -> Option<u64> {
        if self.cut.load(Ordering::Relaxed) {
            return None;
        }
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since - 1),
        }
    }

    /// Cut the handshake: [`Turn::was_cut`] ends now, or at once when next awaited.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        // A permit is kept when the handshake is not waiting yet.
        self.wake.notify_one();
    }

    /// Ends when the handshake is cut.
    pub(crate) async fn was_cut(&self) {
        self.wake.notified().await;
    }

    /// The handshake's wait for its client's flight (`wait`), ended by [`Turn::cut`] with
    /// [`Stalled`].
    pub(crate) async fn client_turn<T>(
        &self,
        wait: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        self.clients();
        let result = tokio::select! {
            biased;
            result = wait => result,
            () = self.was_cut() => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, Stalled)),
        };
        self.ours();
        result
    }
}

/// The handshake ended with [`Stalled`].
pub(crate) fn was_stalled(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stalled>())
}

/// Nanoseconds from `born` to now.
pub(crate) fn nanos_since(born: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(born).as_nanos()).unwrap_or(u64::MAX)
}
