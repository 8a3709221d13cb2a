//! The next hop leg: finding it (MX or the fixed relay), connecting address after address,
//! greeting, EHLO, STARTTLS and the certificate check as the recipient domain's level asks,
//! MAIL; then the replies to what the client sends through it, and its failures.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::policy::{self, TlsFailure, TlsFailureReport};
use super::state::{HopState, Mode, Pending, Phase, RouteInfo};
use super::{Level, NextHop, OnFailure, Session};
use crate::command::{Command, Param};
use crate::ehlo::Offered;
use crate::params::{check_mail, drop_for_next_hop};
use crate::reply::{answers, success, Reply};
use crate::session::{
    Action, DnsFailure, Event, Leg, LegFailure, Route, Target, TlsClient, TlsInfo, TlsStart,
};
use crate::timer::Timer;

/// Addresses tried for one transaction (Postfix's `smtp_mx_address_limit`): the legacy MTA
/// waits for its RCPT reply (5 minutes, RFC 5321 §4.5.3.2) while they are tried, and a
/// hostile DNS answer must not make us try hundreds.
pub const MAX_TARGETS: usize = 5;

/// The share of the command timeout a next hop's set-up may take, every address and step
/// together (tenths): what the legacy MTA waits for its RCPT's reply is about as long
/// (RFC 5321 §4.5.3.2.3: 5 minutes), counted from when it sent the RCPT, and the reply must
/// reach it before it gives up.
pub(super) const SETUP_SHARE: u32 = 9;

/// Why a next hop was given up when the set-up's budget was spent (the log's and the
/// event's reason), so that it is not taken for the next hop's silence.
pub(super) const SETUP_TIMED_OUT: &str = "set-up not done in time";

/// The budget of a next hop's set-up, for a command timeout of `command`.
pub(super) fn setup_budget(command: Duration) -> Duration {
    command * SETUP_SHARE / 10
}

/// Refused domains remembered in one transaction; past that, the oldest is forgotten (a
/// new attempt is made for it, nothing worse).
const MAX_REFUSED_DOMAINS: usize = 16;

impl Session {
    /// The first recipient named the domain: find its next hop.
    pub(super) fn open_hop(&mut self, domain: &str, now: Instant) {
        // `hop_tls` stays the last message's: the driver reads it after this call, for the
        // events of a message whose end the same read brought (a legacy MTA pipelines its
        // next MAIL and RCPT behind its end of data). The next message sets it anew.
        self.hop = Default::default();
        self.hop_timer(self.cfg.timeouts.backend_reply, now);
        match &self.cfg.next_hop {
            NextHop::Mx => {
                self.hop.state = HopState::Resolving;
                self.conn.control(Action::Resolve(domain.to_owned()));
            }
            NextHop::Relay { host } => {
                self.hop.host = host.clone();
                self.hop.state = HopState::Connecting;
                self.conn.control(Action::ConnectBackend);
            }
        }
    }

    pub(super) fn resolved(&mut self, result: Result<Vec<Route>, DnsFailure>, now: Instant) {
        self.hop.state = HopState::None;
        let routes = match result {
            Ok(routes) => routes,
            Err(failure) => {
                let host = self.route().map(|r| r.domain.clone()).unwrap_or_default();
                self.conn.event(Event::NextHopFailed {
                    host,
                    kind: LegFailure::Dns,
                    reason: failure.to_string(),
                });
                return self.setup_failed(failure.reply().to_owned(), now);
            }
        };
        self.hop.targets = routes
            .into_iter()
            .flat_map(|route| {
                let host = route.host;
                route.addrs.into_iter().map(move |addr| Target {
                    host: host.clone(),
                    addr,
                })
            })
            .take(MAX_TARGETS)
            .collect();
        if self.hop.targets.is_empty() {
            return self.setup_failed(DnsFailure::NoAddress.reply().to_owned(), now);
        }
        self.connect_next(now);
    }

    /// Connect to the next address, or answer the waiting RCPT when none is left.
    fn connect_next(&mut self, now: Instant) {
        // Addresses left untried because the budget is spent: not only loops, then.
        let cut = self.setup_over(now) && !self.hop.targets.is_empty();
        if cut {
            // The budget is spent: no other address.
            self.hop.targets.clear();
        }
        let Some(target) = self.hop.targets.pop_front() else {
            let looped = !cut && self.hop.loops > 0 && self.hop.loops == self.hop.failed;
            let unmet = self.hop.policy_unmet.take();
            let reply = unmet.map(|(host, failure)| {
                // A bounce (`on_failure: bounce`) only when the policy judged every address
                // that is not this relay: one that could not be reached, or was not tried for
                // the budget, may meet it when the legacy MTA tries again.
                let on_failure = match cut || self.hop.unjudged {
                    true => OnFailure::Defer,
                    false => self.cfg.on_failure,
                };
                let route = self.route();
                let (level, domain) = route.map_or((Level::None, ""), |r| (r.level, &r.domain));
                policy::reply(on_failure, level, domain, &host, &failure)
            });
            let reply = reply.unwrap_or_else(|| {
                let domain = self.route().map(|r| r.domain.as_str()).unwrap_or_default();
                let domain = policy::printable(domain);
                if looped {
                    // Every address is this relay (RFC 3463 X.4.6, as Postfix bounces mail
                    // that loops back to itself): no retry will do better.
                    format!("550 5.4.6 Mail for {domain} loops back to this relay")
                } else {
                    format!("451 4.4.1 No next hop for {domain} could be reached")
                }
            });
            return self.setup_failed(reply, now);
        };
        self.hop.host = target.host.clone();
        self.hop.current = Some(target.addr);
        self.hop.state = HopState::Connecting;
        self.hop.tls = None;
        // The driver's connect waits until this deadline at most.
        self.hop_timer(self.cfg.timeouts.backend_reply, now);
        self.conn.control(Action::Connect(Box::new(target)));
    }

    /// The connection asked for could not be made (`kind`: [`LegFailure::Unreachable`], or
    /// [`LegFailure::Loop`]): the next address, and the waiting RCPT answered if none is left.
    pub(super) fn connect_failed(&mut self, kind: LegFailure, reason: &str, now: Instant) {
        if self.hop.state == HopState::Connecting {
            self.hop.state = HopState::None;
            // Cut short by the set-up's budget, this is its timeout (`attempt_failed`).
            self.attempt_failed(kind, format!("connect failed: {reason}"), now);
            // A failure answers the waiting RCPT: what was pipelined behind it goes on.
            self.process_input(now);
        }
    }

    /// The current connection attempt failed: the next address, if there is one.
    /// Past the set-up's budget, whatever failed is the budget's timeout, and no address is
    /// left ([`Session::connect_next`]).
    pub(super) fn attempt_failed(&mut self, kind: LegFailure, reason: String, now: Instant) {
        self.hop.failed += 1;
        let (kind, reason) = match self.setup_over(now) {
            true => (LegFailure::Timeout, SETUP_TIMED_OUT.to_owned()),
            false => (kind, reason),
        };
        if !matches!(kind, LegFailure::Policy | LegFailure::Loop) {
            self.hop.unjudged = true;
        }
        self.conn.event(Event::NextHopFailed {
            host: self.hop.host.clone(),
            kind,
            reason: reason.clone(),
        });
        if self.hop.state.connected() {
            self.conn.abort(Leg::Backend);
        }
        self.hop.state = HopState::None;
        self.conn.backend_in.clear();
        self.hop.last_failure = Some(reason);
        // Of the connection given up: the next address's is judged on its own.
        self.hop.plain_only = false;
        self.hop.audited = false;
        match self.cfg.next_hop {
            NextHop::Mx => self.connect_next(now),
            NextHop::Relay { .. } => {
                self.hop.targets.clear();
                self.connect_next(now);
            }
        }
    }

    /// The set-up has spent its budget ([`setup_budget`]): the attempt in progress is given
    /// up, no other address is tried, and the RCPT is answered as when none is left.
    pub(super) fn setup_expired(&mut self, now: Instant) {
        self.attempt_failed(LegFailure::Timeout, SETUP_TIMED_OUT.into(), now);
    }

    /// Whether a set-up is in progress and its budget spent at `now`.
    pub(super) fn setup_over(&self, now: Instant) -> bool {
        matches!(self.mode, Mode::Await(Pending::Setup { until, .. }) if now >= until)
    }

    /// Whether the RCPT that opened the set-up still waits for its reply with the budget
    /// spent at `now`: the next hop is given up as in [`Session::setup_expired`], though
    /// with the RCPT already in its hands.
    pub(super) fn first_rcpt_over(&self, now: Instant) -> bool {
        matches!(self.mode, Mode::Await(Pending::Rcpt))
            && self.hop.first_rcpt_until.is_some_and(|until| now >= until)
    }

    /// Wait for the next hop's next step for `wait` at most, and during a set-up no longer
    /// than its budget lasts: every step of it (the connect, each reply, the handshake) ends
    /// by then.
    pub(super) fn hop_timer(&mut self, wait: Duration, now: Instant) {
        let mut at = now + wait;
        if let Mode::Await(Pending::Setup { until, .. }) = self.mode {
            at = at.min(until);
        }
        self.conn.timers.set(Timer::Backend, at);
    }

    /// The RCPT that was to open the next hop session gets `reply`; so does every further
    /// recipient of that domain in this transaction.
    fn setup_failed(&mut self, reply: String, now: Instant) {
        self.drop_hop();
        let Phase::ExpectRcpt(tx) = &mut self.phase else {
            return;
        };
        if let Some(route) = tx.route.take() {
            if tx.refused.len() >= MAX_REFUSED_DOMAINS {
                tx.refused.remove(0);
            }
            tx.refused.push((route.domain, reply.clone()));
        }
        self.conn.send(&reply);
        self.expect_command(now);
    }

    /// Forget the next hop connection (reset if open).
    fn drop_hop(&mut self) {
        if self.hop.state.connected() {
            self.conn.abort(Leg::Backend);
        }
        self.hop = Default::default();
        self.conn.backend_in.clear();
        self.conn.timers.stop(Timer::Backend);
    }

    /// Report a message's outcome, with the TLS of the next hop session that carried it
    /// (`messages_total{tls}`): the session in place, or the last one if it is gone.
    pub(super) fn message_event(&mut self, event: Event) {
        self.note_hop_tls();
        self.conn.event(event);
    }

    /// Keep whether the next hop session in place, if any, is TLS, for when it is gone.
    pub(super) fn note_hop_tls(&mut self) {
        if self.hop.state != HopState::None {
            self.hop_tls = self.hop.tls.is_some();
        }
    }

    pub(super) fn route(&self) -> Option<&RouteInfo> {
        match &self.phase {
            Phase::ExpectRcpt(tx) => tx.route.as_ref(),
            _ => None,
        }
    }

    fn level(&self) -> Level {
        self.route().map_or(Level::None, |r| r.level)
    }

    /// Whether the next hop owes us a reply now.
    fn awaits_hop(&self) -> bool {
        match self.hop.state {
            HopState::Greeting
            | HopState::Ehlo { .. }
            | HopState::Helo
            | HopState::StartTls
            | HopState::Mail => true,
            HopState::Ready => matches!(
                self.mode,
                Mode::Await(Pending::Rcpt | Pending::Data | Pending::EndOfData { .. })
            ),
            _ => false,
        }
    }

    pub(super) fn hop_bytes(&mut self, data: &[u8], now: Instant) {
        if matches!(
            self.hop.state,
            HopState::None | HopState::Resolving | HopState::Connecting | HopState::Handshaking
        ) {
            return;
        }
        if !data.is_empty() && !self.awaits_hop() {
            // One command at a time: nothing may arrive while none is outstanding.
            return self.hop_failed(
                LegFailure::Protocol,
                "bytes sent with no command outstanding",
                now,
            );
        }
        self.conn.backend_in.push(data);
        loop {
            match self.conn.backend_in.next_reply() {
                // One command at a time: a reply with bytes behind it answered something we
                // never sent (or is an attempt to answer the next one ahead of time).
                Ok(Some(_)) if self.conn.backend_in.buffered() > 0 => {
                    return self.hop_failed(
                        LegFailure::Protocol,
                        "bytes sent with no command outstanding",
                        now,
                    );
                }
                Ok(Some(reply)) => self.on_hop_reply(reply, now),
                Ok(None) => break,
                Err(e) => {
                    return self.hop_failed(LegFailure::Protocol, &format!("bad reply: {e}"), now)
                }
            }
            if self.conn.is_closed() || !self.awaits_hop() {
                break;
            }
        }
        self.process_input(now);
    }

    fn on_hop_reply(&mut self, reply: Reply, now: Instant) {
        self.conn.timers.stop(Timer::Backend);
        match self.hop.state {
            HopState::Greeting if reply.code == 220 => self.send_hello(true, now),
            HopState::Greeting => {
                self.attempt_failed(LegFailure::Refused, refused("greeting", &reply), now)
            }
            HopState::Ehlo { after_tls } if reply.code == 250 => {
                self.hop.offered = Offered::from_reply(&reply);
                // STARTTLS takes no parameter (RFC 3207 §4): a line with one is not the offer.
                self.hop.starttls = reply.extension("STARTTLS") == Some("");
                self.after_hello(after_tls, now);
            }
            HopState::Ehlo { after_tls: false } if reply.code >= 500 => {
                self.send_hello(false, now);
            }
            HopState::Ehlo { .. } => {
                self.attempt_failed(LegFailure::Refused, refused("EHLO", &reply), now)
            }
            HopState::Helo if reply.code == 250 => {
                self.hop.offered = Offered::default();
                self.hop.starttls = false;
                self.after_hello(false, now);
            }
            HopState::Helo => {
                self.attempt_failed(LegFailure::Refused, refused("HELO", &reply), now)
            }
            HopState::StartTls if reply.code == 220 => self.start_tls(now),
            HopState::StartTls if policy::needs_tls(self.level()) => {
                self.tls_unmet(TlsFailure::StartTlsRefused, now);
            }
            // `may`: a refused STARTTLS leaves the session usable in plaintext.
            HopState::StartTls => self.send_mail(now),
            HopState::Mail if reply.code == 250 => {
                self.hop.state = HopState::Ready;
                if self.setup_over(now) {
                    return self.setup_expired(now);
                }
                if let Mode::Await(Pending::Setup { rcpt, until }) =
                    std::mem::replace(&mut self.mode, Mode::Commands)
                {
                    self.forward_rcpt(rcpt, now);
                    // The RCPT that opened the set-up is answered within its budget too.
                    if matches!(self.mode, Mode::Await(Pending::Rcpt)) {
                        let at = (now + self.cfg.timeouts.backend_reply).min(until);
                        self.conn.timers.set(Timer::Backend, at);
                        self.hop.first_rcpt_until = Some(until);
                    }
                }
            }
            // A 3xx, or a 2xx but 250, answers no MAIL: the next hop is broken, and its reply
            // no RCPT's (a 221 passed on would be taken for the recipient's acceptance).
            HopState::Mail if !answers(success::OK, reply.code) => {
                self.hop_failed(LegFailure::Protocol, &refused("reply to MAIL", &reply), now)
            }
            // The next hop refused the sender: its own words answer the RCPT.
            HopState::Mail => {
                let mut out = BytesMut::new();
                for_client(reply).write_to(&mut out);
                let text = String::from_utf8_lossy(&out).trim_end().to_owned();
                self.quit_hop();
                self.setup_failed(text, now);
            }
            HopState::Ready => self.transaction_reply(reply, now),
            _ => self.hop_failed(
                LegFailure::Protocol,
                &refused("unexpected reply", &reply),
                now,
            ),
        }
    }

    /// EHLO (or HELO) with our name.
    fn send_hello(&mut self, esmtp: bool, now: Instant) {
        let name = self.cfg.hostname.clone();
        let cmd = if esmtp {
            Command::Ehlo(name)
        } else {
            Command::Helo(name)
        };
        cmd.write_to(self.conn.out(Leg::Backend));
        self.hop.state = if esmtp {
            HopState::Ehlo { after_tls: false }
        } else {
            HopState::Helo
        };
        self.wait_hop(now);
    }

    fn wait_hop(&mut self, now: Instant) {
        self.hop_timer(self.cfg.timeouts.backend_reply, now);
    }

    /// The next hop's capabilities are known: STARTTLS as the level asks, else MAIL.
    fn after_hello(&mut self, after_tls: bool, now: Instant) {
        let level = self.level();
        if after_tls || self.hop.plain_only || !policy::wants_tls(level) {
            return self.send_mail(now);
        }
        if self.hop.starttls {
            self.conn.write(Leg::Backend, b"STARTTLS\r\n");
            self.hop.state = HopState::StartTls;
            return self.wait_hop(now);
        }
        if policy::needs_tls(level) {
            return self.tls_unmet(TlsFailure::NoStartTls, now);
        }
        self.send_mail(now);
    }

    fn start_tls(&mut self, now: Instant) {
        if self.conn.backend_in.buffered() > 0 {
            // RFC 3207 §4.2: nothing sent before the handshake may be taken as part of it.
            return self.attempt_failed(
                LegFailure::Protocol,
                "bytes after the 220 to STARTTLS".into(),
                now,
            );
        }
        let Some(route) = self.route() else {
            return;
        };
        let level = route.level;
        let mut names = vec![self.hop.host.clone()];
        if route.domain != self.hop.host {
            names.push(route.domain.clone());
        }
        let client = TlsClient {
            server_name: self.hop.host.clone(),
            verify: policy::verifies(level),
            names,
            present_certificate: level == Level::DomainSecure,
        };
        self.hop.state = HopState::Handshaking;
        // The driver's handshake waits until this deadline at most.
        self.hop_timer(self.cfg.timeouts.tls_handshake, now);
        self.conn
            .control(Action::StartTls(TlsStart::Client(Box::new(client))));
    }

    pub(super) fn hop_tls(&mut self, info: TlsInfo, now: Instant) {
        self.conn.backend_in.clear();
        let failure = policy::judge(self.level(), &info);
        self.hop.tls = Some(info);
        if let Some(failure) = failure {
            if !self.report_unmet(failure, now) {
                return;
            }
        }
        // RFC 3207 §4.2: EHLO again; what the next hop offered before TLS is forgotten.
        Command::Ehlo(self.cfg.hostname.clone()).write_to(self.conn.out(Leg::Backend));
        self.hop.state = HopState::Ehlo { after_tls: true };
        self.wait_hop(now);
    }

    pub(super) fn hop_tls_failed(&mut self, now: Instant) {
        self.tls_failed(TlsFailure::Handshake, now);
    }

    /// The next hop sent a fatal TLS alert. Right after our side of the handshake, before
    /// its first reply inside TLS, that is its verdict on our last flight (in TLS 1.3 the
    /// server judges our certificate once our handshake is done): the handshake failed, as
    /// the policy sees it. Later, it is a connection lost like any other.
    pub(super) fn hop_alert(&mut self, alert: &str, now: Instant) {
        if self.hop.state == (HopState::Ehlo { after_tls: true }) {
            self.tls_failed(TlsFailure::Alert(alert.to_owned()), now);
            // A failure answers the waiting RCPT: what was pipelined behind it goes on.
            self.process_input(now);
        } else {
            let alert = policy::printable(alert);
            self.hop_failed(LegFailure::Closed, &format!("TLS alert {alert}"), now);
        }
    }

    /// The TLS session the level asked for could not be had: unmet for `encrypt` and above;
    /// `may` (or audit mode) tries again in plaintext.
    fn tls_failed(&mut self, failure: TlsFailure, now: Instant) {
        self.conn.timers.stop(Timer::Backend);
        if policy::needs_tls(self.level()) && !self.report_unmet(failure, now) {
            return;
        }
        // `may` (or audit mode): a new connection to the same address, in plaintext, if the
        // set-up's budget allows one.
        self.conn.abort(Leg::Backend);
        self.conn.backend_in.clear();
        self.hop.state = HopState::None;
        if self.setup_over(now) {
            return self.setup_expired(now);
        }
        self.hop.plain_only = true;
        match (self.cfg.next_hop.clone(), self.hop.current) {
            (NextHop::Mx, Some(addr)) => {
                let host = self.hop.host.clone();
                self.hop.targets.push_front(Target { host, addr });
                self.connect_next(now);
            }
            (NextHop::Mx, None) => {
                self.attempt_failed(LegFailure::Policy, "handshake failed".into(), now)
            }
            (NextHop::Relay { .. }, _) => {
                self.hop.state = HopState::Connecting;
                self.hop.tls = None;
                self.wait_hop(now);
                self.conn.control(Action::ConnectBackend);
            }
        }
    }

    /// The level cannot be met with this connection: see [`Session::report_unmet`]; in
    /// audit mode the session goes on in plaintext, as `may` would.
    fn tls_unmet(&mut self, failure: TlsFailure, now: Instant) {
        if self.report_unmet(failure, now) {
            self.send_mail(now);
        }
    }

    /// Report an unmet level. In audit mode that is all, and the caller goes on as `may`
    /// would (returns true); otherwise the attempt fails and the next address is tried, the
    /// policy's reply kept for when none is left (returns false).
    fn report_unmet(&mut self, failure: TlsFailure, now: Instant) -> bool {
        let Some(route) = self.route().cloned() else {
            return false;
        };
        let enforced = self.cfg.enforce;
        let listed = route
            .listed
            .and_then(|i| self.cfg.policy.domains.get(i))
            .map(|(d, _)| d.clone());
        let host = self.hop.host.clone();
        let label = failure.reason().as_str();
        if enforced {
            self.hop.policy_unmet = Some((host.clone(), failure.clone()));
        } else {
            self.hop.audited = true;
        }
        self.conn
            .event(Event::OutboundTlsFailure(Box::new(TlsFailureReport {
                domain: route.domain,
                listed,
                level: route.level,
                host,
                failure,
                enforced,
            })));
        if enforced {
            if self.hop.state == HopState::Handshaking && self.hop.tls.is_some() {
                // RFC 3207 §4.1: a client that finds the security level unacceptable after
                // the handshake says QUIT at once; nothing else crosses the session.
                self.quit_hop();
            }
            self.attempt_failed(
                LegFailure::Policy,
                format!("TLS policy not met: {label}"),
                now,
            );
        }
        !enforced
    }

    /// MAIL, with the parameters the next hop can take.
    fn send_mail(&mut self, now: Instant) {
        let Phase::ExpectRcpt(tx) = &self.phase else {
            return;
        };
        let Command::Mail { from, params } = &tx.mail else {
            return;
        };
        let mut params: Vec<Param> = params.clone();
        drop_for_next_hop(&mut params, self.hop.offered);
        let forwardable = self.offered.forwardable(self.hop.offered);
        if let Err(e) = check_mail(from, &mut params, forwardable, false, u64::MAX) {
            let reply = e.reply().to_owned();
            self.quit_hop();
            return self.setup_failed(reply, now);
        }
        let mail = Command::Mail {
            from: from.clone(),
            params,
        };
        mail.write_to(self.conn.out(Leg::Backend));
        self.hop.state = HopState::Mail;
        self.wait_hop(now);
    }

    /// A reply within the transaction: to RCPT, DATA or the end of data.
    fn transaction_reply(&mut self, reply: Reply, now: Instant) {
        let Mode::Await(pending) = std::mem::replace(&mut self.mode, Mode::Commands) else {
            return self.hop_failed(
                LegFailure::Protocol,
                &refused("unexpected reply", &reply),
                now,
            );
        };
        if !expects(&pending, reply.code) {
            let reason = format!("reply {} does not answer {pending:?}", reply.code);
            self.mode = Mode::Await(pending);
            return self.hop_failed(LegFailure::Protocol, &reason, now);
        }
        let positive = reply.is_positive();
        let code = reply.code;
        self.conn.send_reply(&for_client(reply));
        match pending {
            Pending::Rcpt => {
                self.hop.first_rcpt_until = None;
                if let (true, Phase::ExpectRcpt(tx)) = (positive, &mut self.phase) {
                    tx.rcpts += 1;
                }
            }
            Pending::Data if code == 354 => return self.enter_data(now),
            Pending::Data | Pending::Setup { .. } => {}
            Pending::EndOfData { bytes } => {
                self.message_done(positive, bytes);
                self.end_transaction();
            }
        }
        self.expect_command(now);
    }

    /// The next hop answered the end of data (end-to-end acknowledgement, SPEC §1.1).
    fn message_done(&mut self, accepted: bool, bytes: u64) {
        if !accepted {
            return self.message_event(Event::MessageRejected);
        }
        self.conn.reset_errors();
        self.message_event(Event::MessageAccepted { bytes });
        let Some(route) = self.route() else {
            return;
        };
        // Verified and mutual: the next hop asked for our certificate and it went.
        let mutual = self
            .hop
            .tls
            .as_ref()
            .is_some_and(|t| policy::judge(Level::DomainSecure, t).is_none());
        if route.level == Level::DomainSecure && mutual && !self.hop.audited {
            let domain = route
                .listed
                .and_then(|i| self.cfg.policy.domains.get(i))
                .map_or_else(|| "other".to_owned(), |(d, _)| d.clone());
            self.conn.event(Event::DomainSecureSent { domain });
        }
    }

    /// The next hop is unusable. During set-up the next address is tried; within a
    /// transaction the client is told `451 4.4.2` for what waits, and the transaction cannot
    /// complete (never a 250 for a message the next hop did not acknowledge).
    pub(super) fn hop_failed(&mut self, kind: LegFailure, reason: &str, now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        self.note_hop_tls();
        match (&self.mode, self.hop.state) {
            (_, HopState::Resolving) => {
                return self.setup_failed(DnsFailure::Temporary.reply().to_owned(), now);
            }
            (Mode::Await(Pending::Setup { .. }), _) => {
                return self.attempt_failed(kind, reason.to_owned(), now);
            }
            _ => {}
        }
        self.conn.event(Event::NextHopFailed {
            host: self.hop.host.clone(),
            kind,
            reason: reason.to_owned(),
        });
        self.drop_hop();
        if let Phase::ExpectRcpt(tx) = &mut self.phase {
            tx.broken = true;
        }
        match std::mem::replace(&mut self.mode, Mode::Commands) {
            Mode::Await(Pending::EndOfData { .. }) => {
                self.message_event(Event::MessageFailed);
                self.conn
                    .send("451 4.4.2 Next hop lost mid-message, try again later");
                self.phase = Phase::ExpectMail;
                self.expect_command(now);
            }
            Mode::Await(_) => {
                self.conn
                    .send("451 4.4.2 Next hop connection lost, try again later");
                self.expect_command(now);
            }
            // The body keeps streaming (to nowhere); its end gets the 451.
            mode @ (Mode::Data(_) | Mode::SkipBdat { .. }) => self.mode = mode,
            Mode::Commands => {}
        }
    }
}

/// Whether `code` can answer the command ([`answers`]).
fn expects(pending: &Pending, code: u16) -> bool {
    let ok = match pending {
        Pending::Data => success::DATA,
        Pending::Setup { .. } | Pending::Rcpt => success::RCPT,
        Pending::EndOfData { .. } => success::OK,
    };
    answers(ok, code)
}

/// The most octets of a reply line the legacy MTA gets, code and CRLF included (RFC 5321
/// §4.5.3.1.5).
pub(super) const MAX_RELAYED_LINE: usize = 512;
/// The most lines of one next hop reply the legacy MTA gets.
const MAX_RELAYED_LINES: usize = 16;

/// A next hop reply as the legacy MTA gets it. `421` is the next hop closing its own
/// session; ours goes on, so the legacy MTA is told `451` (RFC 5321 §4.2.5: 421 means the
/// receiver is closing the channel it is speaking on). The next hop may be hostile and the
/// legacy MTA reads what it says: within RFC 5321's line length, [`MAX_RELAYED_LINES`]
/// lines (the first ones and the last), printable ASCII (anything else `?`), whatever the
/// next hop sent.
fn for_client(mut reply: Reply) -> Reply {
    if reply.code == 421 {
        reply.code = 451;
    }
    if reply.lines.len() > MAX_RELAYED_LINES {
        // The first lines, and the last: the one with the final code says the most.
        let last = reply.lines.pop();
        reply.lines.truncate(MAX_RELAYED_LINES - 1);
        reply.lines.extend(last);
    }
    for line in &mut reply.lines {
        if let Cow::Owned(clean) = crate::reply::printable_text(line, MAX_RELAYED_LINE - 6) {
            *line = clean;
        }
    }
    reply
}

fn refused(what: &str, reply: &Reply) -> String {
    let text = reply.lines.join(" / ");
    format!("{what}: {} {text}", reply.code)
}
