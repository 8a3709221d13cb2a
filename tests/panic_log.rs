//! A panic is logged through the log's queue (`src/log.rs`), after the lines logged before it,
//! where Rust's own hook would write it to standard error ahead of them; and it is written
//! before the panicking thread goes on, so that a process that aborts next still shows it.
//! Each test runs itself again as a child process (`PANIC_LOG_CHILD`) whose standard error it
//! reads: the log is the process's, set up once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtp_sidecar::config::{LogConfig, LogFormat};

/// The child's standard error, and whether it exited with success.
fn child(test: &str) -> (String, bool) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("PANIC_LOG_CHILD", test)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (String::from_utf8(out.stderr).unwrap(), out.status.success())
}

fn is_child(test: &str) -> bool {
    std::env::var_os("PANIC_LOG_CHILD").is_some_and(|t| t == test)
}

fn log_100_lines() -> smtp_sidecar::log::Guard {
    let guard = smtp_sidecar::log::init(&LogConfig {
        format: LogFormat::Text,
        level: "info".into(),
        protocol_log: false,
    });
    for i in 0..100 {
        tracing::info!("line {i} before");
    }
    guard
}

fn at(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
}

#[test]
fn a_panic_is_logged_after_the_lines_before_it() {
    const TEST: &str = "a_panic_is_logged_after_the_lines_before_it";
    if is_child(TEST) {
        let _log = log_100_lines();
        let worker = std::thread::Builder::new()
            .name("worker".into())
            .spawn(|| panic!("the worker's panic"))
            .unwrap();
        assert!(worker.join().is_err());
        tracing::info!("after the panic");
        return;
    }
    let (log, ok) = child(TEST);
    assert!(ok, "{log}");
    let panic = at(&log, "panicked: the worker's panic");
    assert!(at(&log, "line 99 before") < panic, "{log}");
    assert!(panic < at(&log, "after the panic"), "{log}");
    // One line, an error of its own target, with the thread and where.
    let start = log[..panic].rfind('\n').map_or(0, |i| i + 1);
    let line = log[start..].lines().next().unwrap();
    assert!(line.contains("ERROR smtp_sidecar::panic"), "{line}");
    assert!(line.contains("thread=\"worker\""), "{line}");
    assert!(line.contains("tests/panic_log.rs:"), "{line}");
    assert_eq!(log.matches("the worker's panic").count(), 1, "{log}");
}

/// A panic whose unwinding panics again aborts the process at once: the first panic's line
/// and the lines before it were written before the abort.
#[test]
fn a_panic_is_written_before_the_process_can_abort() {
    const TEST: &str = "a_panic_is_written_before_the_process_can_abort";
    if is_child(TEST) {
        struct PanicsWhenDropped;
        impl Drop for PanicsWhenDropped {
            fn drop(&mut self) {
                panic!("the second panic");
            }
        }
        let _log = log_100_lines();
        let _bomb = PanicsWhenDropped;
        panic!("the first panic");
    }
    let (log, ok) = child(TEST);
    assert!(!ok, "the child was to abort:\n{log}");
    assert!(
        at(&log, "line 99 before") < at(&log, "panicked: the first panic"),
        "{log}"
    );
}
