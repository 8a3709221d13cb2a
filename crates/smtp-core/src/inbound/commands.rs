//! Client commands in terminate mode: what the sidecar answers itself (policy, STARTTLS,
//! NOOP, QUIT, errors) and what it forwards, re-serialised, to the backend; then what each
//! backend reply means for the session.

use std::time::Instant;

use bytes::BytesMut;

use super::{Action, Backend, Event, Mode, Pending, Phase, Session};
use crate::command::{parse_command, Command, CommandError, Param, Verb};
use crate::ehlo::{rewrite_ehlo, EhloPolicy};
use crate::line::{LineEvent, MAX_COMMAND_LINE};
use crate::reply::Reply;

/// Errors in a row after which the client is disconnected (a client speaking another
/// protocol, or a TLS ClientHello on the STARTTLS port, must not hold a session forever).
const MAX_ERRORS: u32 = 20;

/// MAIL parameters of the extensions we pass (SPEC §4 allow-list).
const MAIL_PARAMS: &[&str] = &["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"];
/// RCPT parameters of the extensions we pass (DSN, RFC 3461).
const RCPT_PARAMS: &[&str] = &["NOTIFY", "ORCPT"];

impl Session {
    /// Handle buffered client lines for as long as the session can make progress.
    pub(super) fn process_input(&mut self, now: Instant) {
        loop {
            match self.mode {
                Mode::Commands | Mode::AuthLine if self.backend == Backend::Ready => {}
                _ => return,
            }
            if self.draining && !matches!(self.phase, Phase::ExpectRcpt { .. }) {
                self.shutdown_now();
                return;
            }
            let Some(event) = self.client_in.next_line() else {
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
        let wait = if self.commands_seen == 0 {
            self.cfg.timeouts.greeting
        } else {
            self.cfg.timeouts.command
        };
        self.client_deadline = Some(now + wait);
    }

    pub(super) fn command_line(&mut self, event: LineEvent, now: Instant) {
        let LineEvent::Line { line, crlf } = event else {
            return self.refuse("500 5.5.2 Line too long", now);
        };
        if !crlf {
            // A bare LF is how SMTP smuggling starts; commands must end in CRLF.
            return self.refuse("500 5.5.2 Bare line feed not allowed", now);
        }
        self.commands_seen += 1;
        let cmd = match parse_command(&line) {
            Ok(cmd) if line.len() + 2 > cmd.max_line_len() => {
                return self.refuse("500 5.5.2 Line too long", now);
            }
            Ok(cmd) => cmd,
            Err(_) if line.len() + 2 > MAX_COMMAND_LINE => {
                return self.refuse("500 5.5.2 Line too long", now);
            }
            Err(CommandError::Unknown) => {
                return self.refuse("500 5.5.1 Command unrecognized", now);
            }
            Err(CommandError::Syntax(_)) => {
                return self.refuse("501 5.5.4 Syntax error in parameters or arguments", now);
            }
        };
        if self.cfg.require_tls && self.tls.is_none() && needs_tls(cmd.verb()) {
            self.policy_rejection("tls_required");
            if let Command::Bdat { size, .. } = cmd {
                return self.skip_bdat(size, "530 5.7.0 Must issue a STARTTLS command first", now);
            }
            return self.refuse("530 5.7.0 Must issue a STARTTLS command first", now);
        }
        match cmd {
            Command::Ehlo(name) => self.hello(name, true, now),
            Command::Helo(name) => self.hello(name, false, now),
            Command::StartTls => self.starttls(now),
            Command::Noop => self.ok("250 2.0.0 OK", now),
            Command::Quit => {
                self.send("221 2.0.0 Bye");
                self.out_backend.extend_from_slice(b"QUIT\r\n");
                self.close();
            }
            Command::Rset => {
                self.phase = match self.phase {
                    Phase::ExpectEhlo => Phase::ExpectEhlo,
                    _ => Phase::ExpectMail,
                };
                self.forward_cmd(&Command::Rset, Pending::Rset, now);
            }
            Command::Mail { ref params, .. } => self.mail(&cmd, params, now),
            Command::Rcpt { ref params, .. } => self.rcpt(&cmd, params, now),
            Command::Data => match self.phase {
                Phase::ExpectRcpt { rcpts } if rcpts > 0 => {
                    self.forward_cmd(&cmd, Pending::Data, now);
                }
                Phase::ExpectRcpt { .. } => self.refuse("503 5.5.1 Need RCPT command", now),
                _ => self.refuse("503 5.5.1 Need MAIL command", now),
            },
            Command::Bdat { size, .. } => self.skip_bdat(
                size,
                "502 5.5.1 BDAT not supported (CHUNKING not offered)",
                now,
            ),
            Command::Auth { .. } => self.auth(&cmd, now),
            Command::Vrfy(_) | Command::Expn(_) | Command::Help(_) => {
                self.forward_cmd(&cmd, Pending::Other, now);
            }
            Command::Etrn(_) => self.refuse("502 5.5.1 Command not implemented", now),
        }
    }

    /// A SASL response line during AUTH (RFC 4954 §4): base64 or `*`, passed as it is.
    pub(super) fn auth_line(&mut self, event: LineEvent, now: Instant) {
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
                self.forward(&out, Pending::Auth, now);
            }
            _ => {
                // Not base64: cancel the exchange (RFC 4954 §4) instead of passing it on. The
                // backend's answer to the cancel is the one reply the client gets.
                self.forward(b"*\r\n", Pending::Other, now);
                self.errors += 1;
            }
        }
    }

    /// The backend answered the command we forwarded.
    pub(super) fn complete(&mut self, pending: Pending, reply: Reply, now: Instant) {
        match pending {
            Pending::Ehlo { name, esmtp } => {
                if reply.is_positive() {
                    self.helo = Some((name, esmtp));
                    self.phase = Phase::ExpectMail;
                }
                if esmtp {
                    let policy = EhloPolicy {
                        hostname: self.cfg.hostname.clone(),
                        offer_starttls: self.cfg.starttls && self.tls.is_none(),
                        offer_auth: self.tls.is_some() || !self.cfg.auth_requires_tls,
                        max_size: self.cfg.max_message_size,
                        chunking: false,
                    };
                    let rewritten = rewrite_ehlo(&reply, &policy);
                    self.send_reply(&rewritten);
                } else {
                    self.send_reply(&reply);
                }
            }
            Pending::Mail => {
                if reply.is_positive() {
                    self.phase = Phase::ExpectRcpt { rcpts: 0 };
                }
                self.send_reply(&reply);
            }
            Pending::Rcpt => {
                if let (true, Phase::ExpectRcpt { rcpts }) = (reply.is_positive(), self.phase) {
                    self.phase = Phase::ExpectRcpt { rcpts: rcpts + 1 };
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
                self.events.push_back(if reply.is_positive() {
                    Event::MessageAccepted { bytes }
                } else {
                    Event::MessageRejected
                });
                self.phase = Phase::ExpectMail;
            }
            Pending::Auth => {
                self.send_reply(&reply);
                if reply.code == 334 {
                    self.mode = Mode::AuthLine;
                    self.client_deadline = Some(now + self.cfg.timeouts.command);
                    return;
                }
                if reply.is_positive() {
                    self.authenticated = true;
                }
            }
            Pending::Rset | Pending::Other => self.send_reply(&reply),
        }
        self.expect_command(now);
    }

    fn hello(&mut self, name: String, esmtp: bool, now: Instant) {
        let mut out = BytesMut::new();
        let cmd = if esmtp {
            Command::Ehlo(name.clone())
        } else {
            Command::Helo(name.clone())
        };
        cmd.write_to(&mut out);
        // EHLO resets any transaction (RFC 5321 §4.1.4); the backend does the same.
        if self.phase != Phase::ExpectEhlo {
            self.phase = Phase::ExpectMail;
        }
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
        self.client_in.clear();
        self.mode = Mode::AwaitTls;
        self.client_deadline = Some(now + self.cfg.timeouts.tls_handshake);
        self.control(Action::StartTls);
    }

    fn mail(&mut self, cmd: &Command, params: &[Param], now: Instant) {
        match self.phase {
            Phase::ExpectEhlo => return self.refuse("503 5.5.1 Send EHLO first", now),
            Phase::ExpectRcpt { .. } => return self.refuse("503 5.5.1 Nested MAIL command", now),
            Phase::ExpectMail => {}
        }
        if let Some(reply) = unsupported_param(params, MAIL_PARAMS) {
            return self.refuse(reply, now);
        }
        if let Some(p) = params
            .iter()
            .find(|p| p.keyword.eq_ignore_ascii_case("SIZE"))
        {
            match p.value.as_deref().map(str::parse::<u64>) {
                Some(Ok(size)) if size > self.cfg.max_message_size => {
                    self.policy_rejection("message_size");
                    return self.refuse(
                        "552 5.3.4 Message size exceeds fixed maximum message size",
                        now,
                    );
                }
                Some(Ok(_)) => {}
                _ => return self.refuse("501 5.5.4 Invalid SIZE parameter", now),
            }
        }
        self.forward_cmd(cmd, Pending::Mail, now);
    }

    fn rcpt(&mut self, cmd: &Command, params: &[Param], now: Instant) {
        let Phase::ExpectRcpt { rcpts } = self.phase else {
            return self.refuse("503 5.5.1 Need MAIL command", now);
        };
        if let Some(reply) = unsupported_param(params, RCPT_PARAMS) {
            return self.refuse(reply, now);
        }
        if rcpts >= self.cfg.max_recipients {
            self.policy_rejection("max_recipients");
            return self.refuse("452 4.5.3 Too many recipients", now);
        }
        self.forward_cmd(cmd, Pending::Rcpt, now);
    }

    fn auth(&mut self, cmd: &Command, now: Instant) {
        if self.tls.is_none() && self.cfg.auth_requires_tls {
            self.policy_rejection("auth_requires_tls");
            return self.refuse(
                "538 5.7.11 Encryption required for requested authentication mechanism",
                now,
            );
        }
        match self.phase {
            Phase::ExpectEhlo => self.refuse("503 5.5.1 Send EHLO first", now),
            Phase::ExpectRcpt { .. } => {
                self.refuse("503 5.5.1 AUTH not allowed in a transaction", now)
            }
            Phase::ExpectMail if self.authenticated => {
                self.refuse("503 5.5.1 Already authenticated", now)
            }
            Phase::ExpectMail => self.forward_cmd(cmd, Pending::Auth, now),
        }
    }

    fn skip_bdat(&mut self, size: u64, reply: &'static str, now: Instant) {
        // The chunk is data, not commands (RFC 3030 §2): consume exactly `size` octets.
        let rest = self.client_in.take_remaining();
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
            self.client_in.push(&rest[used..]);
        }
        self.errors += 1;
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
        self.errors += 1;
        self.after_error(now);
    }

    fn after_error(&mut self, now: Instant) {
        if self.errors >= MAX_ERRORS {
            self.send("421 4.7.0 Too many errors, closing connection");
            self.close();
        } else if matches!(self.mode, Mode::Commands) {
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

/// A parameter of an extension we do not pass (e.g. BODY=BINARYMIME) is refused here rather
/// than handed to a backend that may misparse it.
fn unsupported_param(params: &[Param], allowed: &[&str]) -> Option<&'static str> {
    for p in params {
        if !allowed.iter().any(|a| p.keyword.eq_ignore_ascii_case(a)) {
            return Some("555 5.5.4 Unsupported parameter");
        }
        if p.keyword.eq_ignore_ascii_case("BODY")
            && !p.value.as_deref().is_some_and(|v| {
                v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME")
            })
        {
            return Some("555 5.5.4 Unsupported BODY type");
        }
    }
    None
}
