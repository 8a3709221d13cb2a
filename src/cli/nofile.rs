//! The open-file limit (`RLIMIT_NOFILE`): raised from the soft to the hard limit at the start
//! of `run` and `demo`.
//!
//! Each terminate session holds two descriptors (client and backend), so the usual inherited
//! soft limit of 1024 runs out near 500 sessions, far below the default `max_connections`:
//! accepts fail and backend connects get `421 4.4.2`. The hard limit is what the operator (or
//! systemd's `LimitNOFILE=`) granted, and any process may raise its soft limit up to it.

use std::fmt;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// An open-file limit as the kernel reports it: `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// Raise the soft limit to the hard one and log both figures; returns the soft limit now in
/// force. A failure is logged and leaves the limit as it was: the sidecar still runs, with
/// fewer sessions possible.
pub fn raise_to_hard_limit() -> Limit {
    let before = getrlimit(Resource::Nofile);
    let (soft, hard) = (Limit(before.current), Limit(before.maximum));
    if soft == hard {
        tracing::info!(limit = %soft, "open-file limit already at the hard limit");
        return soft;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(before = %soft, after = %hard, "open-file limit raised to the hard limit");
            hard
        }
        Err(e) => {
            tracing::warn!(limit = %soft, hard = %hard, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}
