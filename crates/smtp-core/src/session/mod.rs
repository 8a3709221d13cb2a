//! The session machinery both directions share (DESIGN.md §1, after quinn-proto): a session
//! sits between two legs, the **client** (who connected to us) and the **backend** (the legacy
//! server in terminate mode, the next hop in originate mode). The driver feeds it bytes, time
//! and the outcome of what it asked for through `handle_*`, and carries out what
//! [`Machine::poll_action`] returns, in order.
//!
//! This file holds the vocabulary between a session and its driver: [`Leg`], [`Action`],
//! [`Event`] and the [`Machine`] trait the one driver loop is written against. `conn` holds
//! [`Conn`], the part every session has (line reader, reply parser, output buffers per leg,
//! the action and event queues, the timer table, the error and drain state, body relaying);
//! `protocol_log` the protocol log lines, `received` the Received header, `tls_info` what a
//! completed handshake reports.

use std::time::{Duration, Instant};

use bytes::Bytes;

mod conn;
mod protocol_log;
pub(crate) mod received;
mod tls_info;

pub(crate) use conn::Conn;
pub use protocol_log::Direction;
pub use tls_info::{ClientCert, PeerCert, TlsInfo};

/// One of the two connections of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The peer that connected to us: an internet MTA (terminate), the legacy MTA (originate).
    Client,
    /// The connection we open: the legacy server (terminate), the next hop (originate).
    Backend,
}

/// What the driver must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the leg (and flush them).
    Write(Leg, Bytes),
    /// Open the backend connection to the configured servers, in order; answer with
    /// [`Machine::handle_connected`] or [`Machine::handle_connect_failed`].
    ConnectBackend,
    /// Start the TLS handshake on the leg: the server side on the client leg. Everything
    /// written before has been flushed; whatever plaintext the peer sent after asking for TLS
    /// must be discarded (RFC 3207 §4.2). Answer with [`Machine::handle_tls_established`] or
    /// [`Machine::handle_tls_failed`].
    StartTls(Leg),
    /// Drop the leg's connection without a word (an abortive close: a backend discards a
    /// message whose end of data never came).
    Abort(Leg),
    /// Close both connections. Nothing follows.
    Close,
}

/// Things that happened, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The backend answered 2xx to the end of data.
    MessageAccepted { bytes: u64 },
    /// That accepted message came from a `domain_secure` sender domain over a verified
    /// mutual-TLS session; `domain` is the listed domain as configured.
    DomainSecureAccepted { domain: String },
    /// Refused by us or by the backend.
    MessageRejected,
    /// Lost mid-message (backend gone, timeout, client gone): the client was never told 250.
    MessageFailed,
    /// A policy refusal, with a short stable reason for a metric label. `enforced: false`:
    /// audit mode, the command went through.
    PolicyRejection {
        reason: &'static str,
        enforced: bool,
    },
    /// A Domain Security refusal (also reported as a [`Event::PolicyRejection`]), with what
    /// was missing, for the log.
    DomainSecureRefused(crate::inbound::DomainSecureRefusal),
    /// The backend misbehaved or went away; the session ends with `421 4.4.2`.
    BackendFailed { reason: String },
    /// A line of the client dialogue for the protocol log, secrets masked (only when the
    /// listener has `protocol_log`).
    Protocol { direction: Direction, line: String },
}

/// A session as the driver sees it: the one driver loop is written against this, for both
/// directions. Every `handle_*` may queue actions and events; the driver drains them after
/// each call.
pub trait Machine {
    /// The next action to carry out.
    fn poll_action(&mut self) -> Option<Action>;
    /// The next event to count or log.
    fn poll_event(&mut self) -> Option<Event>;
    /// The earliest deadline; call [`Machine::handle_timeout`] when it has passed.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether the driver should read from the leg now (backpressure).
    fn wants_bytes(&self, leg: Leg) -> bool;
    fn is_closed(&self) -> bool;
    /// Whether the client leg is encrypted (for metric labels).
    fn client_tls(&self) -> bool;

    fn handle_bytes(&mut self, leg: Leg, data: &[u8], now: Instant);
    /// The peer shut down its sending side.
    fn handle_eof(&mut self, leg: Leg, now: Instant);
    /// The leg failed (a reset, a write that could not be done).
    fn handle_lost(&mut self, leg: Leg, now: Instant);
    /// The connection asked for by [`Action::ConnectBackend`] is open.
    fn handle_connected(&mut self, now: Instant);
    fn handle_connect_failed(&mut self, reason: &str, now: Instant);
    /// The handshake asked for by [`Action::StartTls`] completed.
    fn handle_tls_established(&mut self, leg: Leg, info: TlsInfo, now: Instant);
    fn handle_tls_failed(&mut self, leg: Leg, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    /// Shutdown begins: finish the transaction in flight, then `421 4.3.2` (DESIGN.md rule 6).
    fn handle_shutdown(&mut self, now: Instant);
    /// The shutdown grace period is over: whatever is left is told `421 4.3.2` and closed.
    fn handle_grace_expired(&mut self, now: Instant);
}

/// The deadlines of a session's waits (DESIGN.md rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From our greeting to the client's first command.
    pub greeting: Duration,
    /// Waiting for each further command (and each AUTH response line).
    pub command: Duration,
    /// Waiting for each block of message data.
    pub data_block: Duration,
    pub tls_handshake: Duration,
    /// Waiting for the backend's (or next hop's) greeting and each of its replies.
    pub backend_reply: Duration,
}
