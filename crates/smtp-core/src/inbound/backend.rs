//! The backend leg of a session: its greeting, its replies, its failure, and bringing a new
//! connection back to where the client is.

use std::time::Instant;

use super::auth::AuthReplay;
use super::{Action, Backend, Event, Mode, Pending, Replay, Session, MAX_BACKEND_REPLACEMENTS};
use crate::command::Command;
use crate::ehlo::Offered;
use crate::reply::Reply;
use crate::session::{Leg, LegFailure};
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
                if matches!(self.mode, Mode::Starting) {
                    self.backend = Backend::Ready;
                    self.mode = Mode::Commands;
                    let greeting = format!("220 {} ESMTP", self.cfg.hostname);
                    self.send(&greeting);
                    self.conn
                        .timers
                        .set(Timer::Client, now + self.cfg.timeouts.greeting);
                } else {
                    self.replay_helo(now);
                }
            }
            Backend::Greeting => {
                let text = reply.lines.join(" / ");
                self.backend_failed(
                    LegFailure::Refused,
                    format!("greeting refused: {} {text}", reply.code),
                );
            }
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
                hello_command(name, esmtp).write_to(self.conn.out(Leg::Backend));
                self.replay_step(Replay::Helo, now);
            }
            None => self.replay_auth(0, now),
        }
    }

    /// The backend answered a step of the replay.
    fn replayed(&mut self, step: Replay, reply: &Reply, now: Instant) {
        match step {
            Replay::Helo if reply.is_positive() => {
                self.backend_helo = true;
                // The new connection may be another server (failover) offering less.
                self.backend_offered = Offered::from_reply(reply);
                if matches!(self.mode, Mode::Await(Pending::Ehlo { .. })) {
                    // The client's own EHLO: its answer once authentication is back.
                    self.ehlo_reply = Some(reply.clone());
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
                self.complete(pending, reply, now);
            }
        }
    }

    /// Forward a serialised command and wait for its reply.
    pub(super) fn forward(&mut self, bytes: &[u8], pending: Pending, now: Instant) {
        self.conn.write(Leg::Backend, bytes);
        self.mode = Mode::Await(pending);
        self.conn.timers.stop(Timer::Client);
        self.conn
            .timers
            .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
    }
}

pub(super) fn hello_command(name: String, esmtp: bool) -> Command {
    if esmtp {
        Command::Ehlo(name)
    } else {
        Command::Helo(name)
    }
}
