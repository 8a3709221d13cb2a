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
//!
//! A panic is logged through the queue too ([`panic_hook`]), as an error line after the lines
//! logged before it (Rust's own hook writes to standard error at once, ahead of them), and
//! the panicking thread waits until it is written, in case the process aborts next.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::config::{LogConfig, LogFormat};

mod fields;

/// Octets of log lines waiting for standard error at most (some thousands of lines); as
/// many more may be on their way out, so the log holds 2 MiB at most.
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
    // `RUST_LOG` in place of `log.level`, checked as it is: one the subscriber would refuse,
    // or that names no level (`warning`, which it reads as a module's), is said and ignored.
    let (level, ignored) = match std::env::var("RUST_LOG") {
        Ok(env) => match crate::config::log_filter(&env) {
            Ok(level) => (level, None),
            Err(why) => (log.level.clone(), Some(why)),
        },
        Err(_) => (log.level.clone(), None),
    };
    let mut filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The protocol log is written whatever the level of the rest, when `log.protocol_log`
    // asks for it: the sessions decide, from the configuration in force (a reload may turn
    // it on or off), so the filter always lets its lines through.
    if let Ok(directive) = "smtp_sidecar::protocol=info".parse() {
        filter = filter.add_directive(directive);
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
            WRITER.set(true);
            writer.write_out(&mut std::io::stderr(), GATHER);
            let _ = done.send(());
        });
    let guard = match started {
        Ok(_) => {
            // A second `init` (tests) keeps the first queue, as the first subscriber stays.
            if QUEUE.set(Arc::clone(&queue)).is_ok() {
                panic_hook();
            }
            Guard(Some((queue, finished)))
        }
        Err(e) => {
            eprintln!("cannot start the log's writer thread ({e}): logging directly to stderr");
            Guard(None)
        }
    };
    let sink = Sink(guard.0.as_ref().map(|(q, _)| Arc::clone(q)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(sink);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.fmt_fields(fields::TextFields).try_init(),
    };
    if let Some(why) = ignored {
        tracing::warn!(level = %log.level, "RUST_LOG ignored: {why}; log.level applies");
    }
    guard
}

thread_local! {
    /// This thread is the log's writer.
    static WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread is logging a panic ([`panic_hook`]): its line is queued whatever the bound,
    /// and waited for.
    static PANICKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Panics are logged as error lines of the target `smtp_sidecar::panic` (fields `thread`,
/// `location`, and `backtrace` when `RUST_BACKTRACE` asks for one, as Rust's own hook does),
/// after the lines queued before them. The line is queued even into a full queue, and the
/// panicking thread waits until it is written ([`EXIT_WAIT`] at most): a panic that aborts the
/// process next (in a `Drop` while unwinding) still shows. Rust's own hook is kept where the
/// log cannot take the line: a panic of the writer thread itself, or a log that filters
/// errors out.
fn panic_hook() {
    let rusts = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if WRITER.get() || !tracing::enabled!(target: "smtp_sidecar::panic", tracing::Level::ERROR)
        {
            rusts(info);
            return;
        }
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let location = info
            .location()
            .map_or_else(String::new, ToString::to_string);
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let backtrace = std::env::var_os("RUST_BACKTRACE")
            .filter(|v| v != "0")
            .map(|_| std::backtrace::Backtrace::force_capture());
        PANICKING.set(true);
        match backtrace {
            Some(backtrace) => tracing::error!(target: "smtp_sidecar::panic", thread, location,
                %backtrace, "panicked: {payload}"),
            None => tracing::error!(target: "smtp_sidecar::panic", thread, location,
                "panicked: {payload}"),
        }
        PANICKING.set(false);
    }));
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
    /// A batch was written.
    drained: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    closing: bool,
    /// A panic's line waits: write without letting more gather.
    hurry: bool,
    /// Batches the writer has taken, and written (or given up on) so far.
    taken: u64,
    written: u64,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue, locked to take `line`; or, once the process is closing its log, `None`,
    /// `line` written at once (a thread still at work then, like the admission threads, is
    /// not lost).
    fn open(&self, line: &[u8]) -> Option<MutexGuard<'_, Pending>> {
        let pending = self.lock();
        if !pending.closing {
            return Some(pending);
        }
        drop(pending);
        let _ = std::io::stderr().lock().write_all(line);
        None
    }

    /// One formatted line (tracing-subscriber writes an event with one `write_all`): queued
    /// whole, or dropped whole if it does not fit ([`Queue::open`] once the log is closing).
    fn push(&self, line: &[u8]) {
        let Some(mut pending) = self.open(line) else {
            return;
        };
        let need = pending.lines.len() + line.len();
        if need > QUEUE_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if need > pending.lines.capacity() {
            // Grown in steps that stop at the bound, not doubled past it.
            let to = (2 * need).clamp(4096, QUEUE_BYTES);
            let len = pending.lines.len();
            pending.lines.reserve_exact(to - len);
        }
        let first = pending.lines.is_empty();
        pending.lines.extend_from_slice(line);
        drop(pending);
        if first {
            self.ready.notify_one();
        }
    }

    /// A panic's line ([`panic_hook`]): queued whatever the bound, written without waiting
    /// for more lines, and waited for until it is written, [`EXIT_WAIT`] at most.
    fn push_and_wait(&self, line: &[u8]) {
        let Some(mut pending) = self.open(line) else {
            return;
        };
        pending.lines.extend_from_slice(line);
        pending.hurry = true;
        let batch = pending.taken + 1;
        self.ready.notify_one();
        let _written = self
            .drained
            .wait_timeout_while(pending, EXIT_WAIT, |p| p.written < batch)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Less than half the queue is taken: a line now would fit.
    fn has_room(&self) -> bool {
        self.lock().lines.len() < QUEUE_BYTES / 2
    }

    /// The writer thread: waits for lines, lets more gather for `gather` ([`GATHER`]), writes
    /// them out in one go; until the process is closing and nothing is left.
    fn write_out(&self, out: &mut impl Write, gather: Duration) {
        let mut batch = Vec::new();
        // The last write stopped within a line: the next begins with a line end of its own.
        let mut mid_line = false;
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
            // More lines gather for `gather`, unless a panic's line waits or the log closes.
            pending = self
                .ready
                .wait_timeout_while(pending, gather, |p| !p.closing && !p.hurry)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            pending.hurry = false;
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.taken += 1;
            let this = pending.taken;
            drop(pending);
            // A reader that stalls holds this thread here, and only this thread.
            if mid_line {
                mid_line = write_some(out, b"\n") > 0;
            }
            let written = write_some(out, &batch);
            if let Some(rest) = batch.get(written..).filter(|rest| !rest.is_empty()) {
                let lines = rest.iter().filter(|&&b| b == b'\n').count();
                self.dropped
                    .fetch_add(u64::try_from(lines).unwrap_or(u64::MAX), Ordering::Relaxed);
                mid_line = written > 0 && batch.get(written - 1) != Some(&b'\n');
            }
            let _ = out.flush();
            self.lock().written = this;
            self.drained.notify_all();
            batch.clear();
            if batch.capacity() > SPARE_KEPT {
                batch = Vec::new();
            }
        }
    }
}

/// Writes `bytes` to `out` until done or it fails (a reader gone); how many were written. A
/// standard error handed over non-blocking is waited for.
fn write_some(out: &mut impl Write, bytes: &[u8]) -> usize {
    let mut written = 0;
    while let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
        match out.write(rest) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(GATHER),
            Err(_) => break,
        }
    }
    written
}

/// The subscriber's writer: the queue, or (no writer thread) standard error.
struct Sink(Option<Arc<Queue>>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self.0.as_deref())
    }
}

/// Where one event's line goes: the queue, or standard error at once.
struct Line<'a>(Option<&'a Queue>);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.write_all(line).map(|()| line.len())
    }

    /// Queued whole; without a writer thread, written under stderr's lock, so that another
    /// thread's line cannot come between its parts.
    fn write_all(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self.0 {
            Some(queue) if PANICKING.get() => {
                queue.push_and_wait(line);
                Ok(())
            }
            Some(queue) => {
                queue.push(line);
                Ok(())
            }
            None => std::io::stderr().lock().write_all(line),
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
    /// One warning for the lines dropped since the last one, if any, once the queue has room
    /// for it. Called periodically.
    pub fn report(&mut self) {
        let dropped = dropped_lines();
        let room = QUEUE.get().is_some_and(|q| q.has_room());
        if dropped > self.reported && room {
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

    fn recorded() -> (Recorded, Arc<Mutex<Vec<Vec<u8>>>>) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        (Recorded(Arc::clone(&writes)), writes)
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
        assert!(queue.lock().lines.capacity() <= QUEUE_BYTES);
        queue.lock().closing = true;
        let (mut out, writes) = recorded();
        queue.write_out(&mut out, GATHER);
        let writes = writes.lock().unwrap();
        // Closing: everything queued in one write, nothing waited for.
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].len(), fit * 1000 + 6);
        assert!(writes[0].ends_with(b"xshort\n"));
    }

    #[test]
    fn the_lines_of_a_moment_are_one_write() {
        let queue = Arc::new(Queue::default());
        let (mut out, writes) = recorded();
        let writer = {
            let queue = Arc::clone(&queue);
            // A long moment, so that the pushes below fit in it however slow the machine.
            std::thread::spawn(move || queue.write_out(&mut out, Duration::from_millis(300)))
        };
        for i in 0..100 {
            queue.push(format!("line {i}\n").as_bytes());
        }
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writes.lock().unwrap().concat().len() < want.len() {
            assert!(std::time::Instant::now() < deadline, "not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        queue.lock().closing = true;
        queue.ready.notify_one();
        writer.join().unwrap();
        let writes = writes.lock().unwrap();
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(String::from_utf8(writes.concat()).unwrap(), want);
    }

    /// Takes 6 octets, fails once (a reader that went away and came back), then takes all.
    struct FailsOnce(Arc<Mutex<Vec<u8>>>, u8);

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.1 += 1;
            let n = match self.1 {
                1 => buf.len().min(6),
                2 => return Err(std::io::ErrorKind::BrokenPipe.into()),
                _ => buf.len(),
            };
            self.0.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn what_a_failed_write_leaves_is_counted_and_the_next_starts_on_a_line_of_its_own() {
        let queue = Arc::new(Queue::default());
        let written = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (queue, written) = (Arc::clone(&queue), Arc::clone(&written));
            std::thread::spawn(move || {
                queue.write_out(&mut FailsOnce(written, 0), Duration::ZERO);
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let wait = |done: &dyn Fn() -> bool| {
            while !done() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        queue.push(b"one\ntwo\nthree\n");
        // "one\ntw" taken, then the write failed: two lines lost.
        wait(&|| queue.dropped.load(Ordering::Relaxed) == 2);
        queue.push(b"four\n");
        wait(&|| written.lock().unwrap().ends_with(b"four\n"));
        queue.lock().closing = true;
        queue.ready.notify_one();
        writer.join().unwrap();
        assert_eq!(
            String::from_utf8(written.lock().unwrap().clone()).unwrap(),
            "one\ntw\nfour\n"
        );
    }
}
