//! The process's log (`log:` of SPEC §3): tracing events as text or JSON lines on standard
//! error, written by a thread of their own.
//!
//! Standard error is a pipe to whatever collects the log (journald, a container runtime, a
//! terminal), and a pipe that is not read fills: written from the runtime's threads, the next
//! line would stop every session, the health checks and the admin endpoint until it is read.
//! So a line is appended to a bounded queue ([`QUEUE_BYTES`]) that the thread `log` writes
//! out; when the queue is full, the line is dropped, never waited for. Dropped lines are
//! counted ([`dropped_lines`]: `smtp_sidecar_log_lines_dropped_total`), and [`Drops::report`]
//! says how many in the log itself once it can.
//!
//! The thread is woken once for the lines of [`GATHER`], not once per line: at the default
//! level every session logs a line, and a wake-up of another thread per line cost a session
//! of workload A more than the line's own `write(2)` did.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::config::{LogConfig, LogFormat};

/// Octets of log lines waiting for standard error at most (some thousands of lines).
pub const QUEUE_BYTES: usize = 1 << 20;

/// How long the writer lets lines gather after the first before it writes them out: the
/// longest a line waits when standard error is read.
pub const GATHER: Duration = Duration::from_millis(5);

/// How long the exit waits for the queued lines to be written.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// What the writer keeps of its buffer between writes; a burst's larger one is given back.
const SPARE_KEPT: usize = 64 * 1024;

/// The queue of the process's log, once [`init`] made it.
static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// Log to standard error as `log` says until the guard is dropped, which writes what is still
/// queued first (waiting [`EXIT_WAIT`] at most, so that a stalled reader cannot hold up the
/// exit). If the writer thread cannot be started, lines are written by whoever logs them.
pub fn init(log: &LogConfig) -> Guard {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Asked for, the protocol log is written whatever the level of the rest.
    if log.protocol_log {
        if let Ok(directive) = "smtp_sidecar::protocol=info".parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Colour only for a person at a terminal: a file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let queue = Arc::new(Queue::default());
    let (done, finished) = std::sync::mpsc::channel();
    let writer = Arc::clone(&queue);
    let started = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || {
            writer.write_out(&mut std::io::stderr());
            let _ = done.send(());
        });
    let guard = match started {
        Ok(_) => {
            // A second `init` (tests) keeps the first queue, as the first subscriber stays.
            let _ = QUEUE.set(Arc::clone(&queue));
            Guard(Some((queue, finished)))
        }
        Err(e) => {
            eprintln!("cannot start the log's writer thread ({e}): logging directly to stderr");
            Guard(None)
        }
    };
    let make = {
        let queue = guard.0.as_ref().map(|(q, _)| Arc::clone(q));
        move || Line(queue.clone())
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(make);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// Log lines dropped since the start because standard error was not read fast enough.
pub fn dropped_lines() -> u64 {
    QUEUE.get().map_or(0, |q| q.dropped.load(Ordering::Relaxed))
}

/// Writes what is queued when the process is done with its log ([`init`]).
#[derive(Debug)]
pub struct Guard(Option<(Arc<Queue>, std::sync::mpsc::Receiver<()>)>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((queue, finished)) = self.0.take() {
            queue.lock().closing = true;
            queue.ready.notify_one();
            let _ = finished.recv_timeout(EXIT_WAIT);
        }
    }
}

/// Lines on their way from the threads that log to the writer thread.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Lines arrived in an empty queue, or the process is closing.
    ready: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    closing: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One formatted line (tracing-subscriber writes an event with one `write_all`): queued
    /// whole, or dropped whole if it does not fit.
    fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.lines.len() + line.len() > QUEUE_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = pending.lines.is_empty();
        pending.lines.extend_from_slice(line);
        drop(pending);
        if first {
            self.ready.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets more gather for [`GATHER`], writes them out
    /// in one go; until the process is closing and nothing is left.
    fn write_out(&self, out: &mut impl Write) {
        let mut batch = Vec::new();
        loop {
            let mut pending = self.lock();
            while pending.lines.is_empty() && !pending.closing {
                pending = self
                    .ready
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pending.lines.is_empty() {
                return;
            }
            if !pending.closing {
                drop(pending);
                std::thread::sleep(GATHER);
                pending = self.lock();
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            drop(pending);
            // A reader that stalls holds this thread here, and only this thread.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if batch.capacity() > SPARE_KEPT {
                batch = Vec::new();
            }
        }
    }
}

/// Where one event's line goes: the queue, or (no writer thread) standard error at once.
struct Line(Option<Arc<Queue>>);

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(queue) => {
                queue.push(line);
                Ok(line.len())
            }
            None => std::io::stderr().write(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What [`Drops::report`] has said so far.
#[derive(Debug, Default)]
pub struct Drops {
    reported: u64,
}

impl Drops {
    /// One warning for the lines dropped since the last one, if any. Called periodically: while
    /// the queue stays full the warning is dropped too, and counted in the next.
    pub fn report(&mut self) {
        let dropped = dropped_lines();
        if dropped > self.reported {
            tracing::warn!(
                lines = dropped - self.reported,
                "log lines dropped: standard error was not read fast enough"
            );
            self.reported = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each write.
    struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_whole_in_order_and_dropped_whole_when_the_queue_is_full() {
        let queue = Queue::default();
        let line = vec![b'x'; 1000];
        let fit = QUEUE_BYTES / line.len();
        for _ in 0..fit + 3 {
            queue.push(&line);
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        queue.push(b"short\n");
        assert_eq!(queue.lock().lines.len(), fit * 1000 + 6);
        queue.lock().closing = true;
        let writes = Arc::new(Mutex::new(Vec::new()));
        queue.write_out(&mut Recorded(Arc::clone(&writes)));
        let writes = writes.lock().unwrap();
        // Closing: everything queued in one write, nothing waited for.
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].len(), fit * 1000 + 6);
        assert!(writes[0].ends_with(b"xshort\n"));
    }

    #[test]
    fn the_lines_of_a_moment_are_one_write() {
        let queue = Arc::new(Queue::default());
        let writes = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (queue, writes) = (Arc::clone(&queue), Arc::clone(&writes));
            std::thread::spawn(move || queue.write_out(&mut Recorded(writes)))
        };
        for i in 0..100 {
            queue.push(format!("line {i}\n").as_bytes());
        }
        queue.lock().closing = true;
        queue.ready.notify_one();
        writer.join().unwrap();
        let writes = writes.lock().unwrap();
        let all: Vec<u8> = writes.concat();
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), want);
        assert!(writes.len() <= 2, "{} writes", writes.len());
    }
}
