//! The process's log (`log:` of SPEC §3): tracing events as text or JSON lines on standard
//! error, written by a thread of their own.
//!
//! Standard error is a pipe to whatever collects the log (journald, a container runtime, a
//! terminal), and a pipe that is not read fills: written from the runtime's threads, the next
//! line would stop every session, the health checks and the admin endpoint until it is read.
//! So a line goes into a bounded queue ([`QUEUE_LINES`]) that the thread `log` empties; when the
//! queue is full, lines are dropped, never waited for. Dropped lines are counted
//! ([`dropped_lines`]: `smtp_sidecar_log_lines_dropped_total`), and [`Drops::report`] says how
//! many in the log itself once it can.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::{LogConfig, LogFormat};

/// Lines waiting for standard error at most: a few seconds of a busy protocol log, ~2 MB.
pub const QUEUE_LINES: usize = 8192;

/// Lines dropped because the queue was full, counted by the writer.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log to standard error as `log` says, until the guard is dropped: it flushes what is
/// queued (waiting a second at most, so a stalled reader cannot hold up the exit).
pub fn init(log: &LogConfig) -> WorkerGuard {
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
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("log")
        .finish(std::io::stderr());
    // A second `init` (tests) keeps the first counter, as the first subscriber stays.
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// Log lines dropped since the start because standard error was not read fast enough.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
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
