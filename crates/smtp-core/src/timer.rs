//! The timer table of a session: one deadline per [`Timer`], the earliest of them what
//! `poll_timeout` reports, and on `handle_timeout` the one that fired. Time is passed in; no
//! clock is read here (DESIGN.md rule 5: every wait has a deadline, tested on a virtual clock).

use std::time::Instant;

/// What a session can be waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The next reply (greeting, each command reply) from the backend or next hop.
    Backend,
    /// The client's next command, data block or TLS handshake.
    Client,
}

impl Timer {
    /// In the order a due timer is reported when several are: the backend's silence is the
    /// cause when both legs are waiting.
    const ALL: [Timer; 2] = [Timer::Backend, Timer::Client];

    fn index(self) -> usize {
        match self {
            Timer::Backend => 0,
            Timer::Client => 1,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timers([Option<Instant>; 2]);

impl Timers {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer.index()] = Some(at);
    }

    pub fn stop(&mut self, timer: Timer) {
        self.0[timer.index()] = None;
    }

    pub fn stop_all(&mut self) {
        self.0 = [None; 2];
    }

    /// The earliest deadline set.
    pub fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The timer due at `now`, stopped as it is reported (see [`Timer::ALL`] for the order).
    pub fn expired(&mut self, now: Instant) -> Option<Timer> {
        let due = Timer::ALL
            .into_iter()
            .find(|t| self.0[t.index()].is_some_and(|at| at <= now))?;
        self.stop(due);
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn earliest_first_and_backend_before_client_when_both_are_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!((timers.next(), timers.expired(t0)), (None, None));
        timers.set(Timer::Client, t0 + Duration::from_secs(5));
        timers.set(Timer::Backend, t0 + Duration::from_secs(9));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(timers.expired(t0 + Duration::from_secs(4)), None);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(timers.expired(later), Some(Timer::Backend));
        assert_eq!(timers.expired(later), Some(Timer::Client));
        assert_eq!(timers.expired(later), None);
        timers.set(Timer::Client, later);
        timers.stop_all();
        assert_eq!(timers.next(), None);
    }
}
