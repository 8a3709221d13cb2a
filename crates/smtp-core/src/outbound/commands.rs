//! The legacy MTA's commands in originate mode. The dialogue up to MAIL is ours; RCPT opens
//! (or uses) the next hop session of the transaction; DATA and the body go through to it.

use std::time::Instant;

use bytes::BytesMut;

use super::hop::setup_budget;
use super::state::{Pending, RouteInfo, Tx};
use super::{policy, HopState, Mode, NextHop, Phase, Session};
use crate::command::Command;
use crate::ehlo::Offered;
use crate::line::LineEvent;
use crate::params::{check_mail, check_rcpt, drop_for_next_hop, ParamError};
use crate::session::{Action, DnsFailure, Event, Leg, Refusal};
use crate::timer::Timer;

/// Recipients over `max_recipients` refused in one transaction before each further one
/// counts as an error (as inbound: Postfix's `smtpd_recipient_overshoot_limit`).
const RECIPIENT_OVERSHOOT: u32 = 1000;

impl Session {
    /// Handle buffered client lines for as long as the session can make progress.
    pub(super) fn process_input(&mut self, now: Instant) {
        loop {
            if self.conn.is_closed() || !matches!(self.mode, Mode::Commands) {
                return;
            }
            if self.conn.draining && !matches!(self.phase, Phase::ExpectRcpt(_)) {
                self.conn.shutdown_now();
                return;
            }
            let Some(event) = self.conn.client_in.next_line() else {
                if self.conn.client_eof {
                    // Everything the client sent has been answered.
                    self.close();
                }
                return;
            };
            self.command_line(event, now);
        }
    }

    /// Wait for the next command.
    pub(super) fn expect_command(&mut self, now: Instant) {
        self.mode = Mode::Commands;
        self.conn.wait_for_command(&self.cfg.timeouts, now);
    }

    fn command_line(&mut self, event: LineEvent, now: Instant) {
        let cmd = match self.conn.read_command(event) {
            Ok(cmd) => cmd,
            Err(reply) => return self.refuse(reply, now),
        };
        match cmd {
            Command::Ehlo(name) => self.hello(name, true, now),
            Command::Helo(name) => self.hello(name, false, now),
            Command::Mail { .. } => self.mail(cmd, now),
            Command::Rcpt { .. } => self.rcpt(cmd, now),
            Command::Data => self.data(now),
            Command::Rset => {
                self.end_transaction();
                if !matches!(self.phase, Phase::ExpectEhlo) {
                    self.phase = Phase::ExpectMail;
                }
                self.ok("250 2.0.0 OK", now);
            }
            Command::Noop => self.ok("250 2.0.0 OK", now),
            Command::Quit => {
                self.conn.send("221 2.0.0 Bye");
                self.release_hop();
                self.conn.close_after_quit();
            }
            Command::Vrfy(_) => self.ok("252 2.5.0 Cannot VRFY user, but will accept message", now),
            Command::Bdat { size, .. } => self.skip_bdat(size, now),
            Command::StartTls => self.refuse("502 5.5.1 STARTTLS not offered", now),
            Command::Auth { .. } => self.refuse("502 5.5.1 AUTH not offered", now),
            Command::Expn(_) | Command::Help(_) | Command::Etrn(_) => {
                self.refuse("502 5.5.1 Command not implemented", now)
            }
        }
    }

    /// Our own EHLO reply: the extensions we can carry to any next hop (the list).
    fn hello(&mut self, name: String, esmtp: bool, now: Instant) {
        self.end_transaction();
        let host = &self.cfg.hostname;
        if esmtp {
            let size = self.cfg.max_message_size;
            let reply = format!(
                "250-{host}\r\n250-PIPELINING\r\n250-SIZE {size}\r\n250-8BITMIME\r\n\
                 250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SMTPUTF8"
            );
            self.offered = Offered {
                size: true,
                eight_bit_mime: true,
                dsn: true,
                smtputf8: true,
                auth: false,
            };
            self.conn.send(&reply);
        } else {
            self.offered = Offered::default();
            self.conn.send(&format!("250 {host}"));
        }
        self.conn.helo = Some((name.into_boxed_str(), esmtp));
        self.phase = Phase::ExpectMail;
        self.expect_command(now);
    }

    fn mail(&mut self, mut cmd: Command, now: Instant) {
        match self.phase {
            Phase::ExpectEhlo => return self.refuse("503 5.5.1 Send EHLO first", now),
            Phase::ExpectRcpt(_) => return self.refuse("503 5.5.1 Nested MAIL command", now),
            Phase::ExpectMail => {}
        }
        let Command::Mail { from, params } = &mut cmd else {
            return;
        };
        match check_mail(from, params, self.offered, false, self.cfg.max_message_size) {
            Ok(params) => {
                self.phase = Phase::ExpectRcpt(Box::new(Tx {
                    mail: cmd,
                    params,
                    rcpts: 0,
                    over_limit: 0,
                    route: None,
                    refused: Vec::new(),
                    broken: false,
                }));
                self.ok("250 2.1.0 Ok", now);
            }
            Err(e) => {
                if e == ParamError::TooBig {
                    self.policy_rejection(Refusal::MessageSize);
                }
                self.refuse(e.reply(), now);
            }
        }
    }

    fn rcpt(&mut self, cmd: Command, now: Instant) {
        let (Phase::ExpectRcpt(tx), Command::Rcpt { to, params }) = (&mut self.phase, &cmd) else {
            return self.refuse("503 5.5.1 Need MAIL command", now);
        };
        if let Err(e) = check_rcpt(to, params, self.offered, tx.params) {
            return self.refuse(e.reply(), now);
        }
        if tx.rcpts >= self.cfg.max_recipients {
            tx.over_limit = tx.over_limit.saturating_add(1);
            let (first, over) = (tx.over_limit == 1, tx.over_limit > RECIPIENT_OVERSHOOT);
            if first {
                self.policy_rejection(Refusal::MaxRecipients);
            }
            self.conn.send("452 4.5.3 Too many recipients");
            if over && !self.conn.count_error() {
                return;
            }
            return self.expect_command(now);
        }
        let domain = match recipient_domain(to) {
            Ok(domain) => domain,
            Err(refused) => return self.reply_rcpt(refused, now),
        };
        if tx.broken {
            return self.reply_rcpt("451 4.4.2 Next hop connection lost, try again later", now);
        }
        if let Some((_, reply)) = tx.refused.iter().find(|(d, _)| *d == domain) {
            let reply = reply.clone();
            return self.reply_rcpt(&reply, now);
        }
        let (level, listed) = self.cfg.policy.level(&domain);
        match &tx.route {
            None => {
                tx.route = Some(RouteInfo {
                    domain: domain.clone(),
                    level,
                    listed,
                });
                let until = now + setup_budget(self.cfg.timeouts.command);
                self.mode = Mode::Await(Pending::Setup { rcpt: cmd, until });
                self.conn.timers.stop(Timer::Client);
                self.open_hop(&domain, now);
            }
            Some(route) if route.domain == domain => self.forward_rcpt(cmd, now),
            // With a fixed relay, a recipient of another domain may share the session when
            // its level demands nothing more than the first one's and no certificate check:
            // the relay's certificate was checked against the relay's name or the first
            // domain's, and may name only that domain. With MX, another domain is another
            // next hop. Either way the client sends the rest in another transaction.
            Some(route)
                if self.cfg.next_hop != NextHop::Mx
                    && level <= route.level
                    && !policy::verifies(level) =>
            {
                self.forward_rcpt(cmd, now)
            }
            Some(_) => self.reply_rcpt("452 4.5.3 Too many recipients", now),
        }
    }

    /// RCPT to the next hop, without the DSN parameters of one that did not offer DSN.
    pub(super) fn forward_rcpt(&mut self, mut rcpt: Command, now: Instant) {
        if self.hop.state != HopState::Ready {
            return self.reply_rcpt("451 4.4.2 Next hop connection lost, try again later", now);
        }
        if let Command::Rcpt { params, .. } = &mut rcpt {
            drop_for_next_hop(params, self.hop.offered);
        }
        let mut line = BytesMut::with_capacity(64);
        rcpt.write_to(&mut line);
        self.forward(&line, Pending::Rcpt, now);
    }

    /// A reply (to RCPT or DATA) that is no protocol error of the client's.
    fn reply_rcpt(&mut self, reply: &str, now: Instant) {
        self.conn.send(reply);
        self.expect_command(now);
    }

    fn data(&mut self, now: Instant) {
        let Phase::ExpectRcpt(tx) = &self.phase else {
            return self.refuse("503 5.5.1 Need MAIL command", now);
        };
        if tx.broken {
            return self.reply_rcpt("451 4.4.2 Next hop connection lost, try again later", now);
        }
        if tx.rcpts == 0 {
            // Not an error of the client's: a pipelining MTA sends DATA before it knows its
            // recipients were refused (RFC 2920 §3.1), and must not be cut off for that.
            return self.reply_rcpt("554 5.5.1 No valid recipients", now);
        }
        if self.hop.state != HopState::Ready {
            return self.reply_rcpt("451 4.4.2 Next hop connection lost, try again later", now);
        }
        self.forward(b"DATA\r\n", Pending::Data, now);
    }

    fn skip_bdat(&mut self, size: u64, now: Instant) {
        if !self.conn.count_error() {
            return;
        }
        // The chunk is data, not commands (RFC 3030 §2): consume exactly `size` octets.
        let rest = self.conn.client_in.take_remaining();
        self.mode = Mode::SkipBdat { remaining: size };
        let used = self.feed_body(&rest, now);
        self.conn.client_in.push(&rest[used..]);
        self.body_cut_short(now);
    }

    /// Send a command to the next hop and wait for its reply.
    pub(super) fn forward(&mut self, line: &[u8], pending: Pending, now: Instant) {
        self.conn.write(Leg::Backend, line);
        self.mode = Mode::Await(pending);
        self.conn.timers.stop(Timer::Client);
        self.conn
            .timers
            .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
    }

    /// The transaction is over (RSET, EHLO, end of data): its next hop session is closed.
    pub(super) fn end_transaction(&mut self) {
        self.release_hop();
        if matches!(self.phase, Phase::ExpectRcpt(_)) {
            self.phase = Phase::ExpectMail;
        }
    }

    /// Close the next hop session, if any: with QUIT when it is idle, else with a reset.
    pub(super) fn release_hop(&mut self) {
        match self.hop.state {
            HopState::None => {}
            HopState::Ready if matches!(self.mode, Mode::Commands) => self.quit_hop(),
            _ => self.conn.abort(Leg::Backend),
        }
        self.hop = Default::default();
        self.conn.backend_in.clear();
        self.conn.timers.stop(Timer::Backend);
    }

    /// QUIT (its reply is not waited for, RFC 5321 §4.1.1.10) and close the next hop session.
    pub(super) fn quit_hop(&mut self) {
        self.conn.write(Leg::Backend, b"QUIT\r\n");
        self.conn.control(Action::Disconnect(Leg::Backend));
        self.hop.state = HopState::None;
    }

    pub(super) fn ok(&mut self, reply: &str, now: Instant) {
        self.conn.send(reply);
        self.expect_command(now);
    }

    /// A refusal of our own; too many end the session.
    fn refuse(&mut self, reply: &str, now: Instant) {
        self.conn.send(reply);
        if self.conn.count_error() {
            self.expect_command(now);
        }
    }

    pub(super) fn policy_rejection(&mut self, reason: Refusal) {
        self.conn.event(Event::PolicyRejection {
            reason,
            enforced: true,
        });
    }

    pub(super) fn close(&mut self) {
        self.conn.close();
    }
}

/// The domain of a recipient address, ASCII lower case, without its trailing dot; or the
/// reply that refuses the RCPT: for an address literal or no domain at all (a next hop is
/// found by name), and for a domain that is no domain name ([`crate::idn::routable`]), with
/// a fixed relay as with MX, since the policy's level is looked up by that name.
fn recipient_domain(to: &str) -> Result<String, &'static str> {
    const UNROUTABLE: &str = "550 5.1.3 Recipient address has no domain we can route";
    let (_, domain) = to.rsplit_once('@').ok_or(UNROUTABLE)?;
    if domain.strip_suffix('.').unwrap_or(domain).is_empty() || domain.starts_with('[') {
        return Err(UNROUTABLE);
    }
    // As written, trailing dot and all: `routable` takes one off itself, and two would make
    // `example.net..` a name.
    crate::idn::routable(domain).map_err(|_| DnsFailure::InvalidDomain.reply())?;
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    Ok(domain.to_ascii_lowercase())
}
