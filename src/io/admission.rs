//! The admission threads: where a listener under handshake pressure (a burst of handshakes,
//! or a flood: [`crate::snapshot::ListenerRuntime::handshakes_pressed`]) accepts, refuses and does
//! its TLS handshakes, below the established sessions' priority.
//!
//! A full TLS handshake costs the server ~100 µs of CPU in one piece; a message of an
//! established session a few µs. Under a flood of new connections far above capacity, the
//! sessions' threads would spend their time accepting, refusing and handshaking, and an
//! established session woken by its socket would wait behind that work: ten milliseconds and
//! more at p99 on one core, whatever the order of tokio's run queue (`max_handshakes` bounds
//! the handshakes in progress, not that). The kernel's scheduler is what can put one piece of
//! work before another at once: these threads run at nice 19, so the moment a session's
//! socket is ready its thread (nice 0) takes the core from them, and they still have every
//! cycle the sessions leave.
//!
//! Handing a connection from one runtime to the other costs a few system calls and a
//! thread's wake-up, so a listener moves its work here only under pressure
//! ([`crate::snapshot::ListenerRuntime::handshakes_pressed`]): its accept loop and its
//! refusals (`crate::listener`), and the connections it accepts meanwhile, whole: what comes
//! before a session (a PROXY header, an implicit-TLS handshake) and the session itself, its
//! greeting, its STARTTLS handshake and whatever it does before the pressure is over; then, the
//! next time it waits for its peers, it moves to the sessions' threads
//! (`crate::driver::Ran::Moved`). A flood's connections, which a flood makes by the thousand
//! whether they stop at the ClientHello, after the handshake or after STARTTLS (a backend
//! connection each), never take the sessions' threads; a real client that arrives during the
//! flood is served as the flood is. Sessions established before the flood stay where they
//! are, but a STARTTLS handshake of theirs during the flood is done here and sent back
//! (`crate::driver::handshake`).
//!
//! A process-wide runtime, built on first use, with as many threads as the process may use
//! cores (with one, a current-thread runtime on a thread of its own), each lowering its own
//! priority (on Linux the nice value is a thread's): a thread may always lower its priority,
//! without privileges.

use std::cell::Cell;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};

/// The nice value of the admission threads: the lowest priority of normal scheduling, so that
/// the kernel gives a thread of the sessions the core at once when it wakes.
pub const NICE: i32 = 19;

static ADMISSION: OnceLock<Result<Handle, String>> = OnceLock::new();

thread_local! {
    /// This thread is one of the admission threads.
    static HERE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller runs on one of the admission threads.
pub fn here() -> bool {
    HERE.with(Cell::get)
}

/// The admission threads' runtime, started on the first call; the error if its threads could
/// not be started (then every listener does all its work on the sessions' threads, as it
/// does when not under pressure).
pub fn handle() -> Result<&'static Handle, &'static str> {
    ADMISSION
        .get_or_init(|| start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(String::as_str)
}

/// With one core, a current-thread runtime on a thread of its own, as the sessions' runtime is
/// then (`cli`): a load that keeps a listener under pressure (workload A) runs here whole,
/// and the multi-thread scheduler, which runs the task woken last first, read a p99 up to a
/// third higher for it. With more cores, a worker per core.
/// The runtime lives as long as the process.
fn start() -> std::io::Result<Handle> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cores == 1 {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        // Only `Runtime::block_on` drives a current-thread runtime's sockets and timers.
        std::thread::Builder::new()
            .name("admission".into())
            .spawn(move || {
                lower_priority();
                runtime.block_on(std::future::pending::<()>());
            })?;
        return Ok(handle);
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("admission")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()?;
    Ok(Box::leak(Box::new(runtime)).handle().clone())
}

/// On an admission thread as it starts: marked as one, at nice [`NICE`].
fn lower_priority() {
    HERE.with(|here| here.set(true));
    // A thread left at the sessions' priority is only an extra thread doing their work:
    // nothing is lost but the priority, which the operator hears of once.
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(error = %e, "admission threads left at the sessions' priority: a handshake flood competes with established sessions");
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// Work spawned on the admission runtime runs on a thread at nice 19, in a process whose
    /// other threads keep their priority.
    #[tokio::test]
    async fn admission_threads_run_at_the_lowest_priority() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let handle = super::handle().unwrap();
        let there = handle
            .spawn(async { rustix::process::getpriority_process(None).unwrap() })
            .await
            .unwrap();
        assert_eq!(there, super::NICE);
        let after = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(after, before, "the test's own thread keeps its priority");
    }
}
