//! Internals every part of the session uses: queueing replies, actions and events, closing,
//! and losing a message in flight.

use super::{Action, Backend, Event, Mode, Pending, Session};
use crate::reply::Reply;
use crate::timer::Timer;

impl Session {
    /// A message that was streaming, or waiting for the backend's verdict, is lost: the
    /// client was never told 250 and will retry.
    pub(super) fn fail_message_in_flight(&mut self) {
        if matches!(
            self.mode,
            Mode::Data(_) | Mode::Await(Pending::EndOfData { .. })
        ) {
            self.events.push_back(Event::MessageFailed);
        }
        if matches!(self.mode, Mode::Data(_)) && self.backend != Backend::Gone {
            // The backend must discard the partial message.
            self.drop_backend();
        }
    }

    /// Drop the backend connection without a word (the driver resets it): a message in
    /// flight there is discarded, and nothing still queued for it is sent.
    pub(super) fn drop_backend(&mut self) {
        self.out_backend.clear();
        self.control(Action::CloseBackend);
        self.backend = Backend::Gone;
        self.timers.stop(Timer::Backend);
    }

    pub(super) fn shutdown_now(&mut self) {
        self.send("421 4.3.2 Service shutting down");
        self.close();
    }

    /// Queue a reply line to the client (CRLF appended).
    pub(super) fn send(&mut self, line: &str) {
        self.out_client.extend_from_slice(line.as_bytes());
        self.out_client.extend_from_slice(b"\r\n");
        self.log_replies(line.as_bytes());
    }

    pub(super) fn send_reply(&mut self, reply: &Reply) {
        let start = self.out_client.len();
        reply.write_to(&mut self.out_client);
        if self.cfg.protocol_log {
            let written = self.out_client[start..].to_vec();
            self.log_replies(&written);
        }
    }

    /// Queue a control action after everything written so far.
    pub(super) fn control(&mut self, action: Action) {
        self.flush();
        self.actions.push_back(action);
    }

    pub(super) fn flush(&mut self) {
        if !self.out_client.is_empty() {
            let bytes = self.out_client.split().freeze();
            self.actions.push_back(Action::WriteClient(bytes));
        }
        if !self.out_backend.is_empty() {
            let bytes = self.out_backend.split().freeze();
            self.actions.push_back(Action::WriteBackend(bytes));
        }
    }

    pub(super) fn close(&mut self) {
        if !matches!(self.mode, Mode::Closed) {
            self.control(Action::Close);
            self.mode = Mode::Closed;
            self.timers.stop_all();
        }
    }

    /// A refusal that protects the backend or the session's bounds (size, recipients, bare
    /// newlines...): always enforced, audit mode or not.
    pub(super) fn policy_rejection(&mut self, reason: &'static str) {
        self.events.push_back(Event::PolicyRejection {
            reason,
            enforced: true,
        });
    }

    /// A refusal of the TLS policy (`require_tls`, `auth_requires_tls`, `domain_secure`);
    /// returns whether it is enforced. In audit mode (`enforce: false`) it is only reported
    /// and the caller lets the command through.
    pub(super) fn tls_policy_rejection(&mut self, reason: &'static str) -> bool {
        let enforced = self.cfg.enforce;
        self.events
            .push_back(Event::PolicyRejection { reason, enforced });
        enforced
    }

    /// A command or the replay of one is outstanding at the backend.
    pub(super) fn awaits_backend(&self) -> bool {
        matches!(self.mode, Mode::Await(_))
            || matches!(
                self.backend,
                Backend::Greeting | Backend::Replaying(_) | Backend::Connecting
            )
    }
}
