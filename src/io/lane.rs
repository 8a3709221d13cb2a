//! The CPU lane of TLS handshakes: established sessions first.
//!
//! A full TLS handshake costs the server ~100 µs of CPU in one piece (key exchange and
//! signature, when rustls takes the ClientHello); a message of an established session costs a
//! few µs. Under a flood of new connections, every handshake task in tokio's run queue ran
//! before an established session woken by its socket, since the runtime looks at its sockets
//! only when the queue is empty or every 61 tasks: tens of milliseconds of wait for a session
//! that needed microseconds. `max_handshakes` bounds the handshakes in progress, not that.
//!
//! The lane lets the handshakes' CPU work through one at a time per worker thread, each piece
//! only after the runtime has looked at its sockets again (a task that yields waits until
//! then): between two handshakes, every established session with bytes waiting is served.
//! A handshake never waits for the network in the lane, so a slow or silent client holds it
//! only for its own CPU work. Handshakes still use the whole core when nothing else waits.
//!
//! It costs a yield and a wait for the runtime's next look at its sockets per piece, so a
//! listener sends its handshakes through it only under pressure: more than half of its
//! `max_handshakes` slots taken ([`crate::snapshot::ListenerRuntime::handshakes_pressed`]).
//! The runtime also looks at its sockets every 8 tasks instead of 61 (`cli`), so that a
//! session woken by its socket waits for few others.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Handshake CPU work, a piece at a time per worker thread (see the module).
#[derive(Debug)]
pub struct Lane(Semaphore);

impl Lane {
    /// A lane for a runtime of `workers` threads.
    pub fn new(workers: usize) -> Self {
        Lane(Semaphore::new(workers.max(1)))
    }

    /// A lane for the runtime it is made in: a place per worker thread (one on the
    /// current-thread runtime `cli` picks for one core; one outside any runtime).
    pub fn for_this_runtime() -> Self {
        let workers =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        Lane::new(workers)
    }

    /// Wait for a place, then yield once, so that the sessions whose sockets became ready
    /// run first; the place is held until the returned permit is dropped. Hold it across CPU
    /// work only, never across a wait for the network.
    pub async fn enter(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed; should it be, the work goes on without a place.
        let permit = self.0.acquire().await.ok();
        tokio::task::yield_now().await;
        permit
    }
}

#[cfg(test)]
mod tests;
