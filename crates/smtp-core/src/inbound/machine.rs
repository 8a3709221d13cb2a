//! The terminate session as the one driver loop sees it ([`Machine`]): the client leg is the
//! internet client, the backend leg the legacy server.

use std::time::Instant;

use super::{Action, Event, Session, TlsInfo};
use crate::session::{Leg, Machine};

/// The inherent methods keep their names (the session tests call them).
impl Machine for Session {
    fn poll_action(&mut self) -> Option<Action> {
        Session::poll_action(self)
    }

    fn poll_event(&mut self) -> Option<Event> {
        Session::poll_event(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Session::poll_timeout(self)
    }

    fn wants_bytes(&self, leg: Leg) -> bool {
        match leg {
            Leg::Client => self.wants_client_bytes(),
            // Always read the backend: whatever it sends is answered or is a failure.
            Leg::Backend => true,
        }
    }

    fn read_budget(&self, leg: Leg) -> usize {
        match leg {
            Leg::Client => self.client_read_budget(),
            Leg::Backend => usize::MAX,
        }
    }

    fn is_closed(&self) -> bool {
        Session::is_closed(self)
    }

    fn message_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn client_tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    fn started(&self) -> Instant {
        self.conn.started()
    }

    fn handle_bytes(&mut self, leg: Leg, data: &[u8], now: Instant) {
        match leg {
            Leg::Client => self.handle_client_bytes(data, now),
            Leg::Backend => self.handle_backend_bytes(data, now),
        }
    }

    fn handle_eof(&mut self, leg: Leg, now: Instant) {
        match leg {
            Leg::Client => self.handle_client_eof(now),
            Leg::Backend => self.handle_backend_eof(now),
        }
    }

    fn handle_lost(&mut self, leg: Leg, now: Instant) {
        match leg {
            Leg::Client => self.handle_client_lost(now),
            Leg::Backend => self.handle_backend_eof(now),
        }
    }

    fn handle_connected(&mut self, now: Instant) {
        self.handle_backend_connected(now);
    }

    fn handle_connect_failed(&mut self, reason: &str, now: Instant) {
        self.handle_backend_connect_failed(reason, now);
    }

    fn handle_tls_established(&mut self, leg: Leg, info: TlsInfo, now: Instant) {
        match leg {
            Leg::Client => Session::handle_tls_established(self, info, now),
            Leg::Backend => self.handle_backend_tls_established(now),
        }
    }

    fn handle_tls_failed(&mut self, leg: Leg, now: Instant) {
        match leg {
            Leg::Client => Session::handle_tls_failed(self, now),
            Leg::Backend => self.handle_backend_tls_failed(now),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        Session::handle_timeout(self, now);
    }

    fn handle_shutdown(&mut self, now: Instant) {
        Session::handle_shutdown(self, now);
    }

    fn handle_grace_expired(&mut self, now: Instant) {
        Session::handle_grace_expired(self, now);
    }
}
