//! What a driver hands the session and gets from it: the listener's policy ([`Config`]), the
//! actions to carry out ([`Action`]) and the events to count and log ([`Event`]).

use std::time::Duration;

use bytes::Bytes;

use super::{Direction, DomainSecureRefusal};
use crate::data::{BareNewlines, LongLines};

/// What a listener's policy allows, fixed for the life of a session.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our name: greeting, EHLO reply, Received header.
    pub hostname: String,
    /// STARTTLS can be offered (a STARTTLS listener with a certificate).
    pub starttls: bool,
    pub require_tls: bool,
    pub auth_requires_tls: bool,
    pub bare_newlines: BareNewlines,
    /// Body lines over 998 octets: folded or refused (RFC 5322 §2.1.1).
    pub long_lines: LongLines,
    pub received_header: bool,
    pub max_message_size: u64,
    pub max_recipients: u32,
    /// `domain_secure`: sender domains that need a verified client certificate naming them,
    /// as configured (compared ASCII case-insensitively).
    pub domain_secure: Vec<String>,
    /// What a Domain Security refusal answers: `450 4.7.1` or `550 5.7.1`.
    pub on_failure: OnFailure,
    /// `false`: audit mode; policy refusals are reported ([`Event::PolicyRejection`] with
    /// `enforced: false`) and the command goes through.
    pub enforce: bool,
    pub timeouts: Timeouts,
    /// Emit [`Event::Protocol`] for every command and reply line (`log.protocol_log`).
    pub protocol_log: bool,
}

/// `on_failure` of a terminate listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `450 4.7.1`: the sender keeps the message and retries.
    Defer,
    /// `550 5.7.1`: the sender bounces it.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From our greeting to the client's first command.
    pub greeting: Duration,
    /// Waiting for each further command (and each AUTH response line).
    pub command: Duration,
    /// Waiting for each block of message data.
    pub data_block: Duration,
    pub tls_handshake: Duration,
    /// Waiting for the backend's greeting and each of its replies.
    pub backend_reply: Duration,
}

/// What the driver must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    WriteClient(Bytes),
    WriteBackend(Bytes),
    /// Open a connection to the backend; answer with `handle_backend_connected` or
    /// `handle_backend_connect_failed`.
    ConnectBackend,
    /// Drop the backend connection without a word (aborts a message in flight: a backend
    /// discards a message whose end of data never came).
    CloseBackend,
    /// Start the TLS handshake on the client connection. Everything written before has been
    /// flushed; whatever plaintext the client sent after STARTTLS must be discarded.
    StartTls,
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
    DomainSecureRefused(DomainSecureRefusal),
    /// The backend misbehaved or went away; the session ends with `421 4.4.2`.
    BackendFailed { reason: String },
    /// A line of the client dialogue for the protocol log, secrets masked (only with
    /// `Config::protocol_log`).
    Protocol { direction: Direction, line: String },
}
