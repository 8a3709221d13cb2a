//! The backend leg of a session: its greeting, its replies, its failure, and bringing a new
//! connection back to where the client is.

use std::time::Instant;

use super::auth::AuthReplay;
use super::{
    Action, Backend, Event, Mode, Pending, Replay, Secure, Session, MAX_BACKEND_REPLACEMENTS,
};
use crate::command::Command;
use crate::ehlo::Offered;
use crate::reply::Reply;
use crate::session::{Leg, LegFailure, TlsStart};
use crate::timer::Timer;

impl Session {
    /// The backend is unusable: the client gets `421 4.4.2`, never a 250 (SPEC §1.1).
    pub(super) fn backend_failed(&mut self, kind: LegFailure, reason: String) {
        if self.conn.is_closed() {
            return;
        }
        self.fail_message_in_flight();
        self.conn.event(Event::BackendFailed { kind, reason });
        self.backend = Backend::Gone;
        match self.mode {
            // Mid-handshake there is no way to tell the client anything.
            Mode::AwaitTls => self.close(),
            _ => {
                self.send("421 4.4.2 Backend unavailable, try again later");
                self.close();
            }
        }
    }

    pub(super) fn on_backend_reply(&mut self, reply: Reply, now: Instant) {
        self.conn.timers.stop(Timer::Backend);
        match self.backend {
            Backend::Greeting if reply.code == 220 => {
                if self.cfg.hop.starttls {
                    Command::Ehlo(self.cfg.hostname.clone()).write_to(self.conn.out(Leg::Backend));
                    self.securing(Secure::Ehlo, now);
                } else {
                    self.secured(now);
                }
            }
            Backend::Greeting => {
                let text = reply.lines.join(" / ");
                self.backend_failed(
                    LegFailure::Refused,
                    format!("greeting refused: {} {text}", reply.code),
                );
            }
            Backend::Securing(step) => self.secure_step(step, &reply, now),
            Backend::Replaying(step) => self.replayed(step, &reply, now),
            Backend::Ready if matches!(self.mode, Mode::Await(_)) => {
                let Mode::Await(pending) = std::mem::replace(&mut self.mode, Mode::Commands) else {
                    return;
                };
                if !pending.expects(reply.code) {
                    let text = reply.lines.join(" / ");
                    return self.backend_failed(
                        LegFailure::Protocol,
                        format!("reply {} {text} does not answer {pending:?}", reply.code),
                    );
                }
                self.complete(pending, reply, now);
            }
            _ => {
                let text = reply.lines.join(" / ");
                self.backend_failed(
                    LegFailure::Protocol,
                    format!("unexpected reply: {} {text}", reply.code),
                );
            }
        }
    }

    /// The backend's answer to a step of setting up TLS: STARTTLS must be offered and
    /// accepted, then the driver does the handshake ([`TlsStart::Backend`]). A backend that
    /// cannot is a failed backend: the client is never served in plaintext over a hop that
    /// must be encrypted.
    fn secure_step(&mut self, step: Secure, reply: &Reply, now: Instant) {
        match step {
            Secure::Ehlo if reply.code == 250 && reply.extension("STARTTLS").is_some() => {
                Command::StartTls.write_to(self.conn.out(Leg::Backend));
                self.securing(Secure::StartTls, now);
            }
            Secure::StartTls if reply.code == 220 => {
                self.conn.control(Action::StartTls(TlsStart::Backend));
                self.securing(Secure::Handshake, now);
            }
            _ => {
                let text = reply.lines.join(" / ");
                let why = match step {
                    Secure::Ehlo if reply.code == 250 => "STARTTLS not offered",
                    Secure::Ehlo => "EHLO refused",
                    _ => "STARTTLS refused",
                };
                self.backend_failed(LegFailure::Tls, format!("{why}: {} {text}", reply.code));
            }
        }
    }

    fn securing(&mut self, step: Secure, now: Instant) {
        self.backend = Backend::Securing(step);
        let wait = match step {
            Secure::Handshake => self.cfg.timeouts.tls_handshake,
            _ => self.cfg.timeouts.backend_reply,
        };
        self.conn.timers.set(Timer::Backend, now + wait);
    }

    /// The new backend connection is greeted (and encrypted, if the hop asks for it): the
    /// client gets our greeting, or the connection is brought back to where the client is.
    pub(super) fn secured(&mut self, now: Instant) {
        self.conn.timers.stop(Timer::Backend);
        if matches!(self.mode, Mode::Starting) {
            self.backend = Backend::Ready;
            self.greet(now);
        } else {
            self.replay_helo(now);
        }
    }

    /// Our greeting: the session starts reading commands.
    pub(super) fn greet(&mut self, now: Instant) {
        let greeting = self.cfg.greeting();
        self.conn.write(Leg::Client, greeting.as_bytes());
        self.greeted(&greeting, now);
    }

    /// The greeting is out (written by [`Session::greet`], or sent with the handshake): it is
    /// counted and logged as any reply, and the session waits for the first command.
    pub(super) fn greeted(&mut self, greeting: &str, now: Instant) {
        self.mode = Mode::Commands;
        self.conn.sent(greeting.trim_end());
        self.conn
            .timers
            .set(Timer::Client, now + self.cfg.timeouts.greeting);
    }

    /// Open a [`Backend::Deferred`] connection (nothing otherwise). It is brought to where
    /// the client is as a replaced one is ([`Session::replay_helo`]); commands wait for it.
    pub(super) fn connect_deferred(&mut self) {
        if self.backend == Backend::Deferred {
            self.known_ehlo = None;
            self.conn.control(Action::ConnectBackend);
            self.backend = Backend::Connecting;
        }
    }

    /// `cmd` needs the backend, which is deferred: connect, and carry it out once the
    /// connection is where the client is. The client's wait is the backend's from here.
    pub(super) fn connect_for(&mut self, cmd: Command) {
        self.waiting = Some(Box::new(cmd));
        self.conn.timers.stop(Timer::Client);
        self.connect_deferred();
    }

    /// `hop.xclient`, at the first HELO/EHLO reply of a backend connection: when it offers
    /// XCLIENT, send the client's address with the attributes it offers and return true (the
    /// reply is not the answer: the HELO/EHLO goes again after XCLIENT's new greeting).
    /// Otherwise the reply stands, and a backend without XCLIENT is reported.
    pub(super) fn try_xclient(&mut self, reply: &Reply, helo: &str, esmtp: bool) -> bool {
        if !self.cfg.hop.xclient || self.xclient_asked || !reply.is_positive() {
            return false;
        }
        self.xclient_asked = true;
        let Some(offered) = xclient_attributes(reply) else {
            self.conn.event(Event::XclientNotOffered);
            return false;
        };
        let client = std::net::SocketAddr::new(self.conn.peer, self.client_port);
        let line = xclient_line(&offered, client, helo, esmtp);
        self.conn.write(Leg::Backend, line.as_bytes());
        true
    }

    /// The HELO/EHLO that goes to a backend connection: EHLO when XCLIENT is still to be
    /// looked for (a HELO reply lists no extensions), else what the client said.
    pub(super) fn hello_for_backend(&self, name: String, esmtp: bool) -> Command {
        let probe = self.cfg.hop.xclient && !self.xclient_asked;
        hello_command(name, esmtp || probe)
    }

    /// Replace the backend connection: the old one is dropped without a word (a message in
    /// flight there is discarded), a new one is opened and brought back to where the client
    /// is. Returns false, changing nothing, once the session has used its replacements.
    pub(super) fn replace_backend(&mut self) -> bool {
        if self.replacements >= MAX_BACKEND_REPLACEMENTS {
            return false;
        }
        self.replacements += 1;
        self.drop_backend();
        self.conn.control(Action::ConnectBackend);
        self.backend = Backend::Connecting;
        true
    }

    /// After a reconnect, bring the backend back to where the client is: greeted, then
    /// authenticated; then send the command that was waiting for it, if any.
    pub(super) fn replay_helo(&mut self, now: Instant) {
        match self.conn.helo.clone() {
            Some((name, esmtp)) => {
                let hello = self.hello_for_backend(name.into(), esmtp);
                hello.write_to(self.conn.out(Leg::Backend));
                self.replay_step(Replay::Helo, now);
            }
            None => self.replay_auth(0, now),
        }
    }

    /// The backend answered a step of the replay.
    fn replayed(&mut self, step: Replay, reply: &Reply, now: Instant) {
        // A refusal (4xx, 5xx) of the client's own HELO/EHLO is the client's to hear; any
        // other reply but 250 breaks the protocol (`reply::answers`).
        let refused = matches!(reply.code / 100, 4 | 5);
        if step == Replay::Helo && refused && self.waiting.is_some() {
            return self.helo_refused(reply, now);
        }
        match step {
            Replay::Xclient if reply.code == 220 => self.replay_helo(now),
            Replay::Helo if reply.code == 250 => {
                if self.xclient_pending(reply) {
                    return self.replay_step(Replay::Xclient, now);
                }
                self.backend_helo = true;
                // The new connection may be another server (failover) offering less.
                self.backend_offered = Offered::from_reply(reply);
                if matches!(self.mode, Mode::Await(Pending::Ehlo { .. })) {
                    // The client's own EHLO: its answer once authentication is back.
                    self.ehlo_reply = Some(Box::new(reply.clone()));
                }
                self.replay_auth(0, now);
            }
            Replay::Auth { next } if reply.code == 334 => self.replay_auth(next, now),
            Replay::Auth { .. } if reply.code == 235 => self.replay_done(now),
            _ => {
                let text = reply.lines.join(" / ");
                self.backend_failed(
                    LegFailure::Replay,
                    format!(
                        "new connection refused the replay ({step:?}): {} {text}",
                        reply.code
                    ),
                );
            }
        }
    }

    /// A deferred connection refused the client's HELO/EHLO, which was answered from the
    /// known reply: the client gets the backend's refusal for the command that waited, and
    /// the session is back before its HELO/EHLO, on this connection.
    fn helo_refused(&mut self, reply: &Reply, now: Instant) {
        self.waiting = None;
        self.backend = Backend::Ready;
        self.conn.timers.stop(Timer::Backend);
        self.conn.helo = None;
        self.offered = Offered::default();
        self.phase = super::Phase::ExpectEhlo;
        self.send_reply(reply);
        if self.count_error() {
            self.expect_command(now);
        }
    }

    /// Send recorded AUTH line `next`, or finish the replay when there is nothing to send.
    fn replay_auth(&mut self, next: usize, now: Instant) {
        match self.auth.replay() {
            AuthReplay::Nothing if next == 0 => self.replay_done(now),
            AuthReplay::Lines(lines) if next < lines.len() => {
                self.conn.write(Leg::Backend, lines[next].bytes());
                self.replay_step(Replay::Auth { next: next + 1 }, now);
            }
            AuthReplay::Impossible => {
                self.backend_failed(
                    LegFailure::Replay,
                    "authentication cannot be replayed on a new connection".into(),
                );
            }
            _ => self.backend_failed(
                LegFailure::Replay,
                "backend asked for more than the recorded exchange".into(),
            ),
        }
    }

    fn replay_step(&mut self, step: Replay, now: Instant) {
        self.backend = Backend::Replaying(step);
        self.conn
            .timers
            .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
    }

    /// The new connection is where the old one was. A client EHLO that was sent again on it
    /// (the old connection refused a second one) gets its answer now.
    fn replay_done(&mut self, now: Instant) {
        self.backend = Backend::Ready;
        self.conn.timers.stop(Timer::Backend);
        if let Some(reply) = self.ehlo_reply.take() {
            let mode = std::mem::replace(&mut self.mode, Mode::Commands);
            if let Mode::Await(pending @ Pending::Ehlo { .. }) = mode {
                self.complete(pending, *reply, now);
            }
        }
        if let Some(cmd) = self.waiting.take() {
            if self.conn.draining {
                // Shutdown began while connecting: the command is answered `421 4.3.2`.
                return self.shutdown_now();
            }
            self.dispatch(*cmd, now);
        }
    }

    /// Forward a serialised command and wait for its reply.
    pub(super) fn forward(&mut self, bytes: &[u8], pending: Pending, now: Instant) {
        if self.backend == Backend::Deferred {
            // Every command that needs the backend connects it first (`connect_for`).
            debug_assert_ne!(self.backend, Backend::Deferred, "forwarded, not connected");
            return self.backend_failed(LegFailure::Protocol, "not connected".into());
        }
        self.before_tls_ehlo = None;
        self.conn.write(Leg::Backend, bytes);
        self.mode = Mode::Await(pending);
        self.conn.timers.stop(Timer::Client);
        self.conn
            .timers
            .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
    }

    /// [`Session::try_xclient`] with the client's recorded HELO/EHLO (a replay).
    fn xclient_pending(&mut self, reply: &Reply) -> bool {
        match self.conn.helo.clone() {
            Some((name, esmtp)) => self.try_xclient(reply, &name, esmtp),
            None => false,
        }
    }
}

/// The XCLIENT attributes an EHLO reply offers (`XCLIENT NAME ADDR PORT ...`, upper-cased),
/// or `None` when it does not offer XCLIENT.
fn xclient_attributes(reply: &Reply) -> Option<Vec<String>> {
    let offered = reply.extension("XCLIENT")?;
    Some(
        offered
            .split_ascii_whitespace()
            .map(str::to_ascii_uppercase)
            .collect(),
    )
}

/// The XCLIENT command (Postfix's XCLIENT_README): of ADDR, PORT, NAME, HELO and PROTO, those
/// the backend offered. We look up no reverse name, so NAME is `[UNAVAILABLE]`; a HELO name
/// over 255 octets (more than a host name can be) is `[UNAVAILABLE]` too. Values are xtext
/// (RFC 3461 §4).
pub(super) fn xclient_line(
    offered: &[String],
    client: std::net::SocketAddr,
    helo: &str,
    esmtp: bool,
) -> String {
    let addr = match client.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("IPV6:{ip}"),
    };
    let helo = if helo.len() <= 255 {
        xtext(helo)
    } else {
        "[UNAVAILABLE]".into()
    };
    let attributes = [
        ("ADDR", addr),
        ("PORT", client.port().to_string()),
        ("NAME", "[UNAVAILABLE]".into()),
        ("HELO", helo),
        ("PROTO", if esmtp { "ESMTP" } else { "SMTP" }.into()),
    ];
    let mut line = String::from("XCLIENT");
    for (name, value) in attributes {
        if offered.iter().any(|o| o == name) {
            line.push_str(&format!(" {name}={value}"));
        }
    }
    line.push_str("\r\n");
    line
}

/// xtext (RFC 3461 §4): `+`, `=`, controls, space and non-ASCII as `+HH`.
fn xtext(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

pub(super) fn hello_command(name: String, esmtp: bool) -> Command {
    if esmtp {
        Command::Ehlo(name)
    } else {
        Command::Helo(name)
    }
}
