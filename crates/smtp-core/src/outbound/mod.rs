//! The originate-mode session: the legacy MTA relays to us as its smart host, in plaintext;
//! we deliver each transaction to the next hop over TLS as the recipient domain's policy
//! demands, **without a queue**: every decision is answered to the legacy MTA in the same
//! session, so it keeps ownership of the message and retries or bounces as it always did.
//!
//! The dialogue with the legacy MTA is ours (greeting, EHLO reply, MAIL); the next hop
//! session opens lazily at the first RCPT, when the recipient domain is known: look up its
//! MX (or use the fixed relay), connect, EHLO, STARTTLS as the level asks, EHLO again, check
//! the certificate, MAIL; then that RCPT and the ones after it, DATA and the body go through
//! one at a time, and the legacy MTA gets `250` to its end of data only after the next hop's.
//! One next hop session serves one transaction; it is closed with QUIT after the end of data.
//!
//! This file holds the [`Session`] and its [`Machine`] surface; `api` the listener's policy;
//! `state` the private state; `commands` the client's commands; `hop` the next hop leg (set
//! up, replies, failures); `policy` the TLS level decision and its replies; `body` the
//! message body.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::ehlo::Offered;
use crate::session::{
    Action, Conn, DnsFailure, Event, Leg, LegFailure, LoopSeen, Machine, Route, TlsInfo,
};
use crate::timer::Timer;

mod api;
mod body;
mod commands;
mod hop;
mod policy;
mod state;

pub use api::{Config, DomainPolicy, Level, NextHop, OnFailure};
pub use hop::MAX_TARGETS;
pub use policy::{TlsFailure, TlsFailureReport};

use hop::SETUP_TIMED_OUT;
use state::{Hop, HopState, Mode, Phase};

#[derive(Debug)]
pub struct Session {
    /// Shared by every session of the listener.
    cfg: Arc<Config>,
    phase: Phase,
    mode: Mode,
    /// What the client was offered (parameters follow it).
    offered: Offered,
    hop: Hop,
    /// The last message's next hop session was TLS (kept after that session is closed, for
    /// the event that reports the message): set with each message's event
    /// ([`Session::message_event`]).
    hop_tls: bool,
    conn: Conn,
}

impl Session {
    /// A new session for the legacy MTA at `peer`; `wall` is the wall clock at `now`, for the
    /// Received header. Our greeting leaves at the driver's first poll: no next hop is
    /// needed before RCPT.
    pub fn new(cfg: impl Into<Arc<Config>>, peer: IpAddr, now: Instant, wall: SystemTime) -> Self {
        let cfg: Arc<Config> = cfg.into();
        let mut s = Session {
            conn: Conn::new(cfg.protocol_log, cfg.max_errors, peer, now, wall),
            cfg,
            phase: Phase::ExpectEhlo,
            mode: Mode::Commands,
            offered: Offered::default(),
            hop: Hop::default(),
            hop_tls: false,
        };
        let greeting = format!("220 {} ESMTP", s.cfg.hostname);
        s.conn.send(&greeting);
        s.conn
            .timers
            .set(Timer::Client, now + s.cfg.timeouts.greeting);
        s
    }
}

impl Machine for Session {
    fn poll_action(&mut self) -> Option<Action> {
        // As inbound: while a client's command waits for the next hop, the replies to the
        // commands the client pipelined before it wait to leave with its reply.
        let hold_replies = matches!(self.mode, Mode::Await(_));
        self.conn.poll_action(hold_replies)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.conn.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    fn started(&self) -> Instant {
        self.conn.started()
    }

    fn wants_bytes(&self, leg: Leg) -> bool {
        match leg {
            Leg::Client => match self.mode {
                _ if self.conn.client_eof || self.conn.is_closed() => false,
                Mode::Data(_) | Mode::SkipBdat { .. } => true,
                _ => self.conn.client_room() > 0,
            },
            Leg::Backend => self.hop.state != HopState::None,
        }
    }

    fn read_budget(&self, leg: Leg) -> usize {
        match (leg, &self.mode) {
            (Leg::Client, Mode::Data(_) | Mode::SkipBdat { .. }) | (Leg::Backend, _) => usize::MAX,
            (Leg::Client, _) => self.conn.client_room(),
        }
    }

    fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn message_tls(&self) -> bool {
        self.hop_tls
    }

    fn handle_bytes(&mut self, leg: Leg, data: &[u8], now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        match leg {
            Leg::Client => {
                let data = match self.mode {
                    Mode::Data(_) | Mode::SkipBdat { .. } => {
                        let used = self.feed_body(data, now);
                        &data[used..]
                    }
                    _ => data,
                };
                if !data.is_empty() {
                    self.conn.client_in.push(data);
                }
                self.process_input(now);
            }
            Leg::Backend => self.hop_bytes(data, now),
        }
    }

    fn handle_eof(&mut self, leg: Leg, now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        match leg {
            Leg::Client => {
                self.conn.client_eof = true;
                if matches!(self.mode, Mode::Data(_) | Mode::SkipBdat { .. }) {
                    return self.handle_lost(Leg::Client, now);
                }
                self.process_input(now);
            }
            // With no connection open, it is the one let go before (its QUIT's write
            // failed, or it closed): no failure of what comes next.
            Leg::Backend if !self.hop.state.connected() => {}
            Leg::Backend => self.hop_failed(LegFailure::Closed, "connection closed", now),
        }
    }

    /// On the next hop leg, right after our handshake and before the next hop's first reply,
    /// an alert is a TLS handshake failure for the policy (`450 4.7.5` / `550 5.7.5`, reason
    /// `handshake_failed`), not a lost connection: a TLS 1.3 next hop refuses our certificate
    /// only after our side of the handshake has completed. Later, a lost connection, as a
    /// close without an alert is. (The legacy MTA's leg is plaintext: there, a close.)
    fn handle_tls_alert(&mut self, leg: Leg, alert: &str, now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        match leg {
            Leg::Client => self.handle_eof(leg, now),
            Leg::Backend if !self.hop.state.connected() => {}
            Leg::Backend => self.hop_alert(alert, now),
        }
    }

    fn handle_lost(&mut self, leg: Leg, now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        match leg {
            Leg::Client => {
                self.fail_message_in_flight();
                self.close();
            }
            Leg::Backend if !self.hop.state.connected() => {}
            Leg::Backend => self.hop_failed(LegFailure::Closed, "connection lost", now),
        }
    }

    fn handle_connected(&mut self, now: Instant) {
        if self.hop.state == HopState::Connecting {
            self.hop.state = HopState::Greeting;
            self.conn.backend_in.clear();
            self.hop_timer(self.cfg.timeouts.backend_reply, now);
        }
    }

    fn handle_connect_loops(&mut self, reason: &str, seen: LoopSeen, now: Instant) {
        if self.hop.state == HopState::Connecting && seen == LoopSeen::ByAddress {
            self.hop.loops += 1;
        }
        self.connect_failed(LegFailure::Loop, reason, now);
    }

    fn handle_connect_failed(&mut self, reason: &str, now: Instant) {
        self.connect_failed(LegFailure::Unreachable, reason, now);
    }

    fn handle_resolved(&mut self, result: Result<Vec<Route>, DnsFailure>, now: Instant) {
        if self.hop.state == HopState::Resolving {
            self.resolved(result, now);
            // A failure answers the waiting RCPT: what was pipelined behind it goes on.
            self.process_input(now);
        }
    }

    fn handle_tls_established(&mut self, leg: Leg, info: TlsInfo, now: Instant) {
        if leg == Leg::Backend && self.hop.state == HopState::Handshaking {
            self.hop_tls(info, now);
            // A failure answers the waiting RCPT: what was pipelined behind it goes on.
            self.process_input(now);
        }
    }

    fn handle_tls_failed(&mut self, leg: Leg, now: Instant) {
        if leg == Leg::Backend && self.hop.state == HopState::Handshaking {
            // Cut short by the set-up's budget: not the next hop's failure to meet the
            // policy.
            if self.setup_over(now) {
                self.setup_expired(now);
            } else {
                self.hop_tls_failed(now);
            }
            // A failure answers the waiting RCPT: what was pipelined behind it goes on.
            self.process_input(now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.conn.timers.expired(now) {
            Some(Timer::Backend) if self.first_rcpt_over(now) => {
                self.hop_failed(LegFailure::Timeout, SETUP_TIMED_OUT, now);
            }
            Some(Timer::Backend) => self.hop_failed(LegFailure::Timeout, "no reply in time", now),
            Some(Timer::Client) => {
                self.fail_message_in_flight();
                self.conn.send("421 4.4.2 Timeout, closing connection");
                self.close();
            }
            None => {}
        }
        self.process_input(now);
    }

    fn handle_shutdown(&mut self, now: Instant) {
        self.conn.draining = true;
        if matches!(self.mode, Mode::Commands)
            && !matches!(self.phase, Phase::ExpectRcpt(_))
            && self.conn.client_in.buffered() == 0
        {
            self.conn.shutdown_now();
        }
        self.process_input(now);
    }

    fn handle_grace_expired(&mut self, _now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        self.fail_message_in_flight();
        self.conn.shutdown_now();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
