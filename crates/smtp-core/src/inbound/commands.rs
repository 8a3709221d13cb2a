//! Client commands in terminate mode: what the sidecar answers itself (policy, STARTTLS,
//! NOOP, QUIT, errors) and what it forwards, re-serialised, to the backend; then what each
//! backend reply means for the session.

use std::time::Instant;

use bytes::BytesMut;

use super::backend::hello_command;
use super::{Action, Backend, Event, Mode, Pending, Phase, Session, Transaction};
use crate::command::{Command, Verb};
use crate::ehlo::{rewrite_ehlo, EhloPolicy, Offered};
use crate::line::LineEvent;
use crate::params::{check_mail, check_rcpt, ParamError};
use crate::reply::Reply;
use crate::session::{Leg, LegFailure, Refusal, TlsStart};
use crate::timer::Timer;

/// Recipients over `max_recipients` refused in one transaction before each further one
/// counts as an error: a client pipelining a large transaction gets `452` for the excess
/// and sends it again later (RFC 5321 §4.5.3.1.10), it is not misbehaving (Postfix's
/// `smtpd_recipient_overshoot_limit`).
const RECIPIENT_OVERSHOOT: u32 = 1000;

impl Session {
    /// Handle buffered client lines for as long as the session can make progress.
    pub(super) fn process_input(&mut self, now: Instant) {
        loop {
            if self.conn.is_closed() {
                return;
            }
            match self.mode {
                Mode::Commands | Mode::AuthLine
                    if matches!(self.backend, Backend::Ready | Backend::Deferred) => {}
                _ => return,
            }
            if self.conn.draining && !matches!(self.phase, Phase::ExpectRcpt(_)) {
                self.shutdown_now();
                return;
            }
            let Some(event) = self.conn.client_in.next_line() else {
                if self.conn.client_eof {
                    // Everything the client sent has been answered.
                    self.close();
                }
                return;
            };
            if matches!(self.mode, Mode::AuthLine) {
                self.auth_line(event, now);
            } else {
                self.command_line(event, now);
            }
        }
    }

    /// Wait for the next command.
    pub(super) fn expect_command(&mut self, now: Instant) {
        self.mode = Mode::Commands;
        self.conn.wait_for_command(&self.cfg.timeouts, now);
    }

    pub(super) fn command_line(&mut self, event: LineEvent, now: Instant) {
        let cmd = match self.conn.read_command(event) {
            Ok(cmd) => cmd,
            Err(reply) => return self.refuse(reply, now),
        };
        if self.cfg.require_tls
            && self.tls.is_none()
            && needs_tls(cmd.verb())
            && self.tls_policy_rejection(Refusal::TlsRequired)
        {
            if let Command::Bdat { size, .. } = cmd {
                return self.skip_bdat(size, "530 5.7.0 Must issue a STARTTLS command first", now);
            }
            return self.refuse("530 5.7.0 Must issue a STARTTLS command first", now);
        }
        // What the client itself was not offered is refused before a deferred backend is
        // connected for it; what the backend connection did not offer, in `dispatch`.
        if let Some(refusal) = self.unfit_argument(&cmd, self.offered.smtputf8) {
            return self.refuse(refusal, now);
        }
        if self.backend == Backend::Deferred && self.needs_backend(&cmd) {
            return self.connect_for(cmd);
        }
        self.dispatch(cmd, now);
    }

    /// The refusal of a VRFY, EXPN or HELP whose argument the backend must not be given, as
    /// it is forwarded otherwise: non-ASCII in a name or address unless SMTPUTF8 is offered
    /// (`smtputf8`: to the client, and by the backend connection once there is one; RFC 6531
    /// lets VRFY and EXPN carry UTF-8 under it, as MAIL and RCPT), and in a HELP topic at all
    /// (an ASCII string, RFC 5321 §4.1.1.8).
    fn unfit_argument(&self, cmd: &Command, smtputf8: bool) -> Option<&'static str> {
        match cmd {
            Command::Vrfy(arg) | Command::Expn(arg) if !arg.is_ascii() && !smtputf8 => {
                Some("553 5.6.7 Non-ASCII addresses require SMTPUTF8")
            }
            Command::Help(Some(topic)) if !topic.is_ascii() => {
                Some("501 5.5.4 Syntax error in parameters or arguments")
            }
            _ => None,
        }
    }

    /// Whether a command needs the backend connection before anything is looked at. MAIL and
    /// AUTH decide for themselves, once their own checks have passed (a refusal of ours needs
    /// no backend); RSET is ours while nothing has been forwarded; RCPT and DATA are refused
    /// before a MAIL, which connects. HELO and EHLO before TLS are answered from the known
    /// reply ([`Backend::Deferred`]).
    fn needs_backend(&self, cmd: &Command) -> bool {
        match cmd {
            Command::Ehlo(_) | Command::Helo(_) => self.tls.is_some(),
            Command::Vrfy(_) | Command::Expn(_) | Command::Help(_) => true,
            _ => false,
        }
    }

    /// Carry out a client command (its TLS policy already checked).
    pub(super) fn dispatch(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Ehlo(name) => self.hello(name, true, now),
            Command::Helo(name) => self.hello(name, false, now),
            Command::StartTls => self.starttls(now),
            Command::Noop => self.ok("250 2.0.0 OK", now),
            Command::Quit => {
                self.send("221 2.0.0 Bye");
                // RFC 5321 §4.1.1.10; the backend's own 221 is not waited for.
                if self.backend != Backend::Deferred {
                    self.conn.write(Leg::Backend, b"QUIT\r\n");
                }
                self.conn.close_after_quit();
            }
            Command::Rset => {
                self.phase = match self.phase {
                    Phase::ExpectEhlo => Phase::ExpectEhlo,
                    _ => Phase::ExpectMail,
                };
                if self.backend == Backend::Deferred {
                    // No transaction can have begun: there is nothing to reset.
                    return self.ok("250 2.0.0 OK", now);
                }
                self.forward_cmd(&Command::Rset, Pending::Rset, now);
            }
            Command::Mail { .. } => self.mail(cmd, now),
            Command::Rcpt { .. } => self.rcpt(&cmd, now),
            Command::Data => match self.phase {
                Phase::ExpectRcpt(tx) if tx.rcpts > 0 => {
                    self.forward_cmd(&cmd, Pending::Data, now);
                }
                Phase::ExpectRcpt(_) => self.refuse("503 5.5.1 Need RCPT command", now),
                _ => self.refuse("503 5.5.1 Need MAIL command", now),
            },
            Command::Bdat { size, .. } => self.skip_bdat(
                size,
                "502 5.5.1 BDAT not supported (CHUNKING not offered)",
                now,
            ),
            Command::Auth { .. } => self.auth(&cmd, now),
            Command::Vrfy(_) | Command::Expn(_) | Command::Help(_) => {
                let smtputf8 = self.offered.forwardable(self.backend_offered).smtputf8;
                match self.unfit_argument(&cmd, smtputf8) {
                    Some(refusal) => self.refuse(refusal, now),
                    None => self.forward_cmd(&cmd, Pending::Other, now),
                }
            }
            Command::Etrn(_) => self.refuse("502 5.5.1 Command not implemented", now),
        }
    }

    /// Answer the client's HELO/EHLO with the backend's `reply` to it: an EHLO reply
    /// rewritten by the listener's policy (its extensions are what MAIL and RCPT may use), a
    /// HELO with its first line.
    fn answer_hello(&mut self, name: String, esmtp: bool, reply: &Reply) {
        // Accepted, it resets the session (a new offer, no transaction); refused, the
        // session stays as it was (RFC 5321 §4.1.4), its offer and transaction too.
        if !reply.is_positive() {
            return self.send_reply(reply);
        }
        self.offered = Offered::default();
        self.conn.helo = Some((name.into_boxed_str(), esmtp));
        self.phase = Phase::ExpectMail;
        if esmtp {
            let policy = EhloPolicy {
                hostname: self.cfg.hostname.clone(),
                offer_starttls: self.cfg.starttls && self.tls.is_none(),
                // In audit mode AUTH is offered before TLS too: the policy must not
                // change what clients do, only report what it would have refused.
                offer_auth: self.tls.is_some() || !self.cfg.auth_requires_tls || !self.cfg.enforce,
                max_size: self.cfg.max_message_size,
                chunking: false,
            };
            let rewritten = rewrite_ehlo(reply, &policy);
            self.offered = Offered::from_reply(&rewritten);
            self.send_reply(&rewritten);
        } else {
            // A HELO is answered with one line (RFC 5321 §4.1.1.1), also when an EHLO went
            // to the backend to look for XCLIENT: no extension reaches a HELO client.
            let mut reply = reply.clone();
            reply.lines.truncate(1);
            self.send_reply(&reply);
        }
    }

    /// A SASL response line during AUTH (RFC 4954 §4): base64 or `*`, passed as it is.
    pub(super) fn auth_line(&mut self, event: LineEvent, now: Instant) {
        self.conn.log_sasl_response();
        let valid = match &event {
            LineEvent::Line { line, crlf: true } => line
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'*')),
            _ => false,
        };
        match event {
            LineEvent::Line { line, .. } if valid => {
                let mut out = BytesMut::with_capacity(line.len() + 2);
                out.extend_from_slice(&line);
                out.extend_from_slice(b"\r\n");
                self.auth.response(&out);
                self.forward(&out, Pending::Auth, now);
            }
            _ => {
                // Not base64: cancel the exchange (RFC 4954 §4) instead of passing it on. The
                // backend's answer to the cancel is the one reply the client gets.
                self.auth.finish(false);
                self.forward(b"*\r\n", Pending::Other, now);
                self.count_error();
            }
        }
    }

    /// The backend answered the command we forwarded.
    pub(super) fn complete(&mut self, pending: Pending, reply: Reply, now: Instant) {
        match pending {
            Pending::Xclient { name, esmtp } => {
                if reply.code != 220 {
                    let text = reply.lines.join(" / ");
                    let why = format!("XCLIENT refused: {} {text}", reply.code);
                    return self.backend_failed(LegFailure::Refused, why);
                }
                let mut out = BytesMut::new();
                hello_command(name.clone(), esmtp).write_to(&mut out);
                return self.forward(&out, Pending::Ehlo { name, esmtp }, now);
            }
            Pending::Ehlo { name, esmtp } => {
                // The first HELO/EHLO reply of a connection that offers XCLIENT: XCLIENT
                // first, the HELO/EHLO again after its greeting.
                if self.try_xclient(&reply, &name, esmtp) {
                    self.mode = Mode::Await(Pending::Xclient { name, esmtp });
                    return;
                }
                // A backend that refuses a second HELO/EHLO in one session (OpenSMTPD: `503
                // Already identified`) meets one after STARTTLS (RFC 3207 §4.2): the EHLO is
                // sent again on a fresh connection instead. Backends that accept it cost nothing.
                // The new connection is greeted with the new name, then authenticated again.
                if reply.code == 503 && self.backend_helo && self.replace_backend() {
                    self.conn.helo = Some((name.as_str().into(), esmtp));
                    self.mode = Mode::Await(Pending::Ehlo { name, esmtp });
                    return;
                }
                // Kept to answer the EHLO after STARTTLS (moved in once it is rewritten).
                let keep_for_tls = reply.is_positive() && esmtp && self.tls.is_none();
                let keep_for_tls = (keep_for_tls && self.cfg.starttls).then(|| name.clone());
                if reply.is_positive() {
                    self.backend_helo = true;
                    self.backend_offered = Offered::from_reply(&reply);
                }
                self.answer_hello(name, esmtp, &reply);
                if let Some(name) = keep_for_tls {
                    self.before_tls_ehlo = Some(Box::new((name, reply)));
                }
            }
            Pending::Mail { mail, secure } => {
                if reply.is_positive() {
                    self.phase = Phase::ExpectRcpt(Transaction {
                        mail,
                        rcpts: 0,
                        over_limit: 0,
                        secure,
                    });
                }
                self.send_reply(&reply);
            }
            Pending::Rcpt => {
                if let (true, Phase::ExpectRcpt(tx)) = (reply.is_positive(), &mut self.phase) {
                    tx.rcpts += 1;
                }
                self.send_reply(&reply);
            }
            Pending::Data => {
                self.send_reply(&reply);
                if reply.code == 354 {
                    return self.enter_data(now);
                }
            }
            Pending::EndOfData { bytes } => {
                // End-to-end acknowledgement: this 250 is the backend's own (SPEC §1.1).
                self.send_reply(&reply);
                if reply.is_positive() {
                    // A delivered message resets the error count (SPEC §4).
                    self.conn.reset_errors();
                    self.conn.event(Event::MessageAccepted { bytes });
                    if let Phase::ExpectRcpt(Transaction {
                        secure: Some(i), ..
                    }) = self.phase
                    {
                        if let Some(domain) = self.cfg.domain_secure.get(i) {
                            let domain = domain.clone();
                            self.conn.event(Event::DomainSecureAccepted { domain });
                        }
                    }
                } else {
                    self.conn.event(Event::MessageRejected);
                }
                self.phase = Phase::ExpectMail;
            }
            Pending::Auth => {
                self.send_reply(&reply);
                if reply.code == 334 {
                    self.mode = Mode::AuthLine;
                    self.conn
                        .timers
                        .set(Timer::Client, now + self.cfg.timeouts.command);
                    return;
                }
                self.auth.finish(reply.is_positive());
                // A refused AUTH counts (RFC 4954 §4: 535), so guessing passwords through us
                // ends like any other run of errors.
                if reply.code >= 500 && !self.count_error() {
                    return;
                }
            }
            Pending::Rset | Pending::Other => self.send_reply(&reply),
        }
        self.expect_command(now);
    }

    fn hello(&mut self, name: String, esmtp: bool, now: Instant) {
        if let Some(known) = self.known_ehlo.clone() {
            // The backend is deferred: an EHLO is answered from its known EHLO reply, a HELO
            // with our name (the known reply greets the health check, not this client).
            let ours;
            let reply = if esmtp {
                known.as_ref()
            } else {
                ours = Reply::new(250, self.cfg.hostname.clone());
                &ours
            };
            self.answer_hello(name, esmtp, reply);
            return self.expect_command(now);
        }
        if let Some(kept) = self.before_tls_ehlo.take() {
            let (before, reply) = *kept;
            if self.tls.is_some() && esmtp && before == name {
                return self.complete(Pending::Ehlo { name, esmtp }, reply, now);
            }
        }
        let mut out = BytesMut::new();
        self.hello_for_backend(name.clone(), esmtp)
            .write_to(&mut out);
        // An accepted EHLO resets any transaction (RFC 5321 §4.1.4), a refused one leaves it,
        // as the backend does: decided when it answers ([`Session::answer_hello`]).
        self.forward(&out, Pending::Ehlo { name, esmtp }, now);
    }

    fn starttls(&mut self, now: Instant) {
        if self.tls.is_some() {
            return self.refuse("503 5.5.1 TLS already active", now);
        }
        if !self.cfg.starttls {
            return self.refuse("454 4.7.0 TLS not available due to temporary reason", now);
        }
        self.send("220 2.0.0 Ready to start TLS");
        // RFC 3207 §4.2 / CVE-2011-0411: nothing the client sent after STARTTLS survives.
        self.conn.client_in.clear();
        self.mode = Mode::AwaitTls;
        self.conn
            .timers
            .set(Timer::Client, now + self.cfg.timeouts.tls_handshake);
        self.conn.control(Action::StartTls(TlsStart::Server));
    }

    fn mail(&mut self, mut cmd: Command, now: Instant) {
        match self.phase {
            Phase::ExpectEhlo => return self.refuse("503 5.5.1 Send EHLO first", now),
            Phase::ExpectRcpt(_) => return self.refuse("503 5.5.1 Nested MAIL command", now),
            // Its parameters are checked against what the connection itself offers.
            Phase::ExpectMail if self.backend == Backend::Deferred => {
                return self.connect_for(cmd);
            }
            Phase::ExpectMail => {}
        }
        let Command::Mail { from, params } = &mut cmd else {
            return;
        };
        let authenticated = self.auth.is_authenticated();
        let max = self.cfg.max_message_size;
        let offered = self.offered.forwardable(self.backend_offered);
        match check_mail(from, params, offered, authenticated, max) {
            Ok(mail) => {
                let Some(secure) = self.domain_security(from) else {
                    return self.after_reply(now);
                };
                if !self.backend_offered.size {
                    // We enforce the size ourselves; a backend without SIZE never sees one.
                    params.retain(|p| !p.keyword.eq_ignore_ascii_case("SIZE"));
                }
                self.forward_cmd(&cmd, Pending::Mail { mail, secure }, now);
            }
            Err(e) => {
                if e == ParamError::TooBig {
                    self.policy_rejection(Refusal::MessageSize);
                }
                self.refuse(e.reply(), now);
            }
        }
    }

    fn rcpt(&mut self, cmd: &Command, now: Instant) {
        let (Phase::ExpectRcpt(tx), Command::Rcpt { to, params }) = (self.phase, cmd) else {
            return self.refuse("503 5.5.1 Need MAIL command", now);
        };
        let offered = self.offered.forwardable(self.backend_offered);
        if let Err(e) = check_rcpt(to, params, offered, tx.mail) {
            return self.refuse(e.reply(), now);
        }
        if tx.rcpts >= self.cfg.max_recipients {
            let over_limit = tx.over_limit.saturating_add(1);
            if over_limit == 1 {
                // Once per transaction: a thousand excess recipients are one refusal.
                self.policy_rejection(Refusal::MaxRecipients);
            }
            self.send("452 4.5.3 Too many recipients");
            self.phase = Phase::ExpectRcpt(Transaction { over_limit, ..tx });
            if over_limit > RECIPIENT_OVERSHOOT {
                self.count_error();
            }
            return self.after_reply(now);
        }
        self.forward_cmd(cmd, Pending::Rcpt, now);
    }

    fn auth(&mut self, cmd: &Command, now: Instant) {
        if self.tls.is_none()
            && self.cfg.auth_requires_tls
            && self.tls_policy_rejection(Refusal::AuthRequiresTls)
        {
            return self.refuse(
                "538 5.7.11 Encryption required for requested authentication mechanism",
                now,
            );
        }
        match self.phase {
            Phase::ExpectEhlo => self.refuse("503 5.5.1 Send EHLO first", now),
            Phase::ExpectRcpt(_) => self.refuse("503 5.5.1 AUTH not allowed in a transaction", now),
            Phase::ExpectMail if self.auth.is_authenticated() => {
                self.refuse("503 5.5.1 Already authenticated", now)
            }
            Phase::ExpectMail if !self.offered.auth => {
                self.refuse("502 5.5.1 AUTH not offered", now)
            }
            Phase::ExpectMail if self.backend == Backend::Deferred => {
                self.connect_for(cmd.clone());
            }
            // The connection itself must offer it too (a failover server may not).
            Phase::ExpectMail if !self.backend_offered.auth => {
                self.refuse("502 5.5.1 AUTH not offered", now)
            }
            Phase::ExpectMail => {
                let Command::Auth { mechanism, .. } = cmd else {
                    return;
                };
                let mut out = BytesMut::with_capacity(64);
                cmd.write_to(&mut out);
                self.auth.start(mechanism, &out);
                self.forward(&out, Pending::Auth, now);
            }
        }
    }

    fn skip_bdat(&mut self, size: u64, reply: &'static str, now: Instant) {
        if !self.count_error() {
            return;
        }
        // The chunk is data, not commands (RFC 3030 §2): consume exactly `size` octets.
        let rest = self.conn.client_in.take_remaining();
        self.mode = Mode::SkipBdat {
            remaining: size,
            reply,
        };
        if size == 0 {
            self.mode = Mode::Commands;
            self.send(reply);
            self.expect_command(now);
        } else {
            let used = self.feed_body(&rest, now);
            self.conn.client_in.push(&rest[used..]);
            self.body_cut_short(now);
        }
    }

    fn forward_cmd(&mut self, cmd: &Command, pending: Pending, now: Instant) {
        let mut out = BytesMut::with_capacity(64);
        cmd.write_to(&mut out);
        self.forward(&out, pending, now);
    }

    /// A reply of our own that does not count as a protocol error.
    fn ok(&mut self, reply: &str, now: Instant) {
        self.send(reply);
        self.expect_command(now);
    }

    /// A refusal of our own (malformed or not allowed); too many end the session.
    fn refuse(&mut self, reply: &str, now: Instant) {
        self.send(reply);
        self.count_error();
        self.after_reply(now);
    }

    /// Count a protocol error (see [`crate::session::Conn::count_error`]); returns whether
    /// the session goes on.
    pub(super) fn count_error(&mut self) -> bool {
        self.conn.count_error()
    }

    fn after_reply(&mut self, now: Instant) {
        if matches!(self.mode, Mode::Commands) {
            self.expect_command(now);
        }
    }
}

/// Commands refused before TLS under `require_tls` (SPEC §4).
fn needs_tls(verb: Verb) -> bool {
    matches!(
        verb,
        Verb::Mail
            | Verb::Rcpt
            | Verb::Data
            | Verb::Bdat
            | Verb::Auth
            | Verb::Vrfy
            | Verb::Expn
            | Verb::Etrn
    )
}
