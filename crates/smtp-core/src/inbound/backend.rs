//! The backend leg of a session: its greeting, its replies, its failure, and bringing a new
//! connection back to where the client is.

use std::time::Instant;

use super::{Backend, Event, Mode, Pending, Session};
use crate::reply::Reply;

impl Session {
    /// The backend is unusable: the client gets `421 4.4.2`, never a 250 (SPEC §1.1).
    pub(super) fn backend_failed(&mut self, reason: String) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.fail_message_in_flight();
        self.events.push_back(Event::BackendFailed { reason });
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
        self.backend_deadline = None;
        match self.backend {
            Backend::Greeting if reply.code == 220 => {
                if matches!(self.mode, Mode::Starting) {
                    self.backend = Backend::Ready;
                    self.mode = Mode::Commands;
                    let greeting = format!("220 {} ESMTP", self.cfg.hostname);
                    self.send(&greeting);
                    self.client_deadline = Some(now + self.cfg.timeouts.greeting);
                } else {
                    self.replay_helo(now);
                }
            }
            Backend::Greeting => {
                let text = reply.lines.join(" / ");
                self.backend_failed(format!("greeting refused: {} {text}", reply.code));
            }
            Backend::Replaying => self.backend = Backend::Ready,
            Backend::Ready if matches!(self.mode, Mode::Await(_)) => {
                let Mode::Await(pending) = std::mem::replace(&mut self.mode, Mode::Commands) else {
                    return;
                };
                self.complete(pending, reply, now);
            }
            _ => {
                let text = reply.lines.join(" / ");
                self.backend_failed(format!("unexpected reply: {} {text}", reply.code));
            }
        }
    }

    /// After a reconnect, bring the backend back to where the client is: greeted.
    pub(super) fn replay_helo(&mut self, now: Instant) {
        match self.helo.clone() {
            Some((name, esmtp)) => {
                let verb = if esmtp { "EHLO" } else { "HELO" };
                self.out_backend.extend_from_slice(verb.as_bytes());
                self.out_backend.extend_from_slice(b" ");
                self.out_backend.extend_from_slice(name.as_bytes());
                self.out_backend.extend_from_slice(b"\r\n");
                self.backend = Backend::Replaying;
                self.backend_deadline = Some(now + self.cfg.timeouts.backend_reply);
            }
            None => self.backend = Backend::Ready,
        }
    }

    /// Forward a serialised command and wait for its reply.
    pub(super) fn forward(&mut self, bytes: &[u8], pending: Pending, now: Instant) {
        self.out_backend.extend_from_slice(bytes);
        self.mode = Mode::Await(pending);
        self.client_deadline = None;
        self.backend_deadline = Some(now + self.cfg.timeouts.backend_reply);
    }
}
