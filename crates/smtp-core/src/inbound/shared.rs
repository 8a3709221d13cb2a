//! Internals every part of the terminate session uses: closing, losing a message in flight,
//! dropping the backend connection, and policy refusals. Replies, writes and queues are the
//! shared [`crate::session::Conn`]'s.

use super::{Backend, Event, Mode, Pending, Secure, Session};
use crate::reply::Reply;
use crate::session::{Leg, Refusal};
use crate::timer::Timer;

impl Session {
    /// A message that was streaming, or waiting for the backend's verdict, is lost: the
    /// client was never told 250 and will retry.
    pub(super) fn fail_message_in_flight(&mut self) {
        if matches!(
            self.mode,
            Mode::Data(_) | Mode::Await(Pending::EndOfData { .. })
        ) {
            self.conn.event(Event::MessageFailed);
        }
        if matches!(self.mode, Mode::Data(_)) && self.backend != Backend::Gone {
            // The backend must discard the partial message.
            self.drop_backend();
        }
    }

    /// Drop the backend connection without a word (the driver resets it): a message in
    /// flight there is discarded, and nothing still queued for it is sent.
    pub(super) fn drop_backend(&mut self) {
        self.before_tls_ehlo = None;
        self.conn.abort(Leg::Backend);
        self.backend = Backend::Gone;
        self.conn.timers.stop(Timer::Backend);
    }

    pub(super) fn shutdown_now(&mut self) {
        self.conn.shutdown_now();
    }

    /// Queue a reply line to the client (CRLF appended).
    pub(super) fn send(&mut self, line: &str) {
        self.conn.send(line);
    }

    pub(super) fn send_reply(&mut self, reply: &Reply) {
        self.conn.send_reply(reply);
    }

    pub(super) fn close(&mut self) {
        self.conn.close();
    }

    /// A refusal that protects the backend or the session's bounds (size, recipients, bare
    /// newlines...): always enforced, audit mode or not.
    pub(super) fn policy_rejection(&mut self, reason: Refusal) {
        self.conn.event(Event::PolicyRejection {
            reason,
            enforced: true,
        });
    }

    /// A refusal of the TLS policy (`require_tls`, `auth_requires_tls`, `domain_secure`);
    /// returns whether it is enforced. In audit mode (`enforce: false`) it is only reported
    /// and the caller lets the command through.
    pub(super) fn tls_policy_rejection(&mut self, reason: Refusal) -> bool {
        let enforced = self.cfg.enforce;
        self.conn.event(Event::PolicyRejection { reason, enforced });
        enforced
    }

    /// A command or the replay of one is outstanding at the backend.
    pub(super) fn awaits_backend(&self) -> bool {
        matches!(self.mode, Mode::Await(_))
            || matches!(
                self.backend,
                Backend::Greeting
                    | Backend::Replaying(_)
                    | Backend::Connecting
                    | Backend::Securing(Secure::Ehlo | Secure::StartTls)
            )
    }
}
