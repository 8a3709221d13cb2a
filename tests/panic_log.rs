//! A panic is logged through the log's queue (`src/log.rs`), after the lines logged before it,
//! where Rust's own hook would write it to standard error ahead of them. The test runs itself
//! again as a child process (`PANIC_LOG_CHILD`) whose standard error it reads: the log is the
//! process's, set up once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtp_sidecar::config::{LogConfig, LogFormat};

const TEST: &str = "a_panic_is_logged_after_the_lines_before_it";

#[test]
fn a_panic_is_logged_after_the_lines_before_it() {
    if std::env::var_os("PANIC_LOG_CHILD").is_some() {
        child();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env("PANIC_LOG_CHILD", "1")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8(out.stderr).unwrap();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
    };
    let panic = at("panicked: the worker's panic");
    assert!(at("line 99 before") < panic, "{log}");
    assert!(panic < at("after the panic"), "{log}");
    // One line, an error of its own target, with the thread and where.
    let line = log[panic..].lines().next().unwrap();
    let line = log[..panic]
        .rsplit_once('\n')
        .map_or("", |(_, l)| l)
        .to_owned()
        + line;
    assert!(line.contains("ERROR smtp_sidecar::panic"), "{line}");
    assert!(line.contains("thread=\"worker\""), "{line}");
    assert!(line.contains("tests/panic_log.rs:"), "{line}");
    assert_eq!(log.matches("the worker's panic").count(), 1, "{log}");
}

/// Logs 100 lines, panics on a thread, logs one more, and exits (its guard writes the queue).
fn child() {
    let _log = smtp_sidecar::log::init(&LogConfig {
        format: LogFormat::Text,
        level: "info".into(),
        protocol_log: false,
    });
    for i in 0..100 {
        tracing::info!("line {i} before");
    }
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(|| panic!("the worker's panic"))
        .unwrap();
    assert!(worker.join().is_err());
    tracing::info!("after the panic");
}
