//! The open-file limit (`RLIMIT_NOFILE`): raised from the soft to the hard limit at the start
//! of `run` and `demo`, and the arithmetic behind the warning `check` (and `run`) gives when
//! the listeners' `max_connections` cannot fit in it.
//!
//! Each terminate session holds two descriptors (client and backend), so the usual inherited
//! soft limit of 1024 runs out near 500 sessions, far below the default `max_connections`:
//! accepts fail and backend connects get `421 4.4.2`. The hard limit is what the operator (or
//! systemd's `LimitNOFILE=`) granted, and any process may raise its soft limit up to it.

use std::fmt;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::Config;

/// Descriptors one terminate session holds: the client's socket and the backend's.
pub const PER_SESSION: u64 = 2;

/// Descriptors a lingering close holds (the client's socket, after its session ended); a
/// listener has as many of them as `max_connections` at most (`src/listener.rs`).
pub const PER_LINGERING: u64 = 1;

/// Descriptors set aside beyond the sessions: the listening sockets, the admin endpoint's
/// listener and its connections (at most [`crate::admin::MAX_CONNECTIONS`], 16), stdin,
/// stdout and stderr, the runtime's epoll and wake-up descriptors, and the certificate and
/// state files read at start. 64 covers these with room for a handful of listeners.
pub const RESERVED: u64 = 64;

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

/// The limit a `run` of this process would have: the hard one, since `run` raises the soft
/// limit to it.
pub fn hard_limit() -> Limit {
    Limit(getrlimit(Resource::Nofile).maximum)
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

/// The warning when every listener at its `max_connections` would need more descriptors than
/// `limit`, or `None` when they fit.
pub fn shortfall(config: &Config, limit: Limit) -> Option<String> {
    let sessions: u64 = config
        .listeners
        .iter()
        .map(|l| u64::from(l.max_connections()))
        .sum();
    let needed = sessions
        .saturating_mul(PER_SESSION + PER_LINGERING)
        .saturating_add(RESERVED);
    let available = limit.0?;
    (needed > available).then(|| {
        format!(
            "listeners allow up to {sessions} sessions ({PER_SESSION} descriptors each, \
             {PER_LINGERING} each for as many lingering closes, {RESERVED} reserved) but the \
             open-file limit is {available}; raise it (LimitNOFILE= in systemd) or lower \
             max_connections"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_connections: &[u32]) -> Config {
        let mut yaml = String::from("listeners:\n");
        for (i, max) in max_connections.iter().enumerate() {
            yaml.push_str(&format!(
                "  - name: l{i}\n    listen: 127.0.0.1:{}\n    backend: {{servers: [\"127.0.0.1:2526\"]}}\n    policy: {{max_connections: {max}}}\n",
                2600 + i
            ));
        }
        match crate::config::parse(&yaml) {
            Ok(c) => c,
            Err(e) => panic!("{:?}", e.problems),
        }
    }

    #[test]
    fn sessions_of_every_listener_count_against_the_limit() {
        let c = config(&[600, 400]);
        // 1000 sessions: 2000 descriptors, 1000 for lingering closes and 64 reserved.
        assert_eq!(shortfall(&c, Limit(Some(3064))), None);
        let warning = shortfall(&c, Limit(Some(3063))).unwrap_or_default();
        assert!(
            warning.starts_with(
                "listeners allow up to 1000 sessions (2 descriptors each, 1 each for as many \
                 lingering closes, 64 reserved) but the open-file limit is 3063;"
            ),
            "{warning}"
        );
        assert_eq!(shortfall(&c, Limit(None)), None);
    }

    #[test]
    fn the_limit_reads_as_a_number_or_unlimited() {
        assert_eq!(Limit(Some(1024)).to_string(), "1024");
        assert_eq!(Limit(None).to_string(), "unlimited");
    }
}
