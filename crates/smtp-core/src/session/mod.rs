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
//! `commands` reading a client command line; `protocol_log` the protocol log lines, `received` the Received header, `tls_info` what a
//! completed handshake reports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

mod commands;
mod conn;
mod protocol_log;
pub(crate) mod received;
mod refusal;
mod reply_to;
mod tls_info;

pub(crate) use conn::{skip_chunk, Conn};
#[cfg(test)]
pub(crate) use conn::{BODY_BATCH, KEEP_WRITTEN};
pub use protocol_log::{unsafe_in_log, Direction};
pub use refusal::{LegFailure, Refusal};
pub use reply_to::ReplyTo;
pub use tls_info::{ClientCert, OurCert, PeerCert, TlsInfo};

/// One of the two connections of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The peer that connected to us: an internet MTA (terminate), the legacy MTA (originate).
    Client,
    /// The connection we open: the legacy server (terminate), the next hop (originate).
    Backend,
}

impl Leg {
    /// 0 or 1, for per-leg arrays.
    pub fn index(self) -> usize {
        match self {
            Leg::Client => 0,
            Leg::Backend => 1,
        }
    }
}

/// What the driver must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the leg (and flush them).
    Write(Leg, Bytes),
    /// Open the backend connection to the configured servers, in order (the legacy server,
    /// or an originate listener's fixed relay); answer with [`Machine::handle_connected`] or
    /// [`Machine::handle_connect_failed`].
    ConnectBackend,
    /// Open the backend connection to one address of a next hop; answered the same way.
    /// (Boxed, as the other rare large payloads: every session queues actions, so the
    /// enum's size is paid per queued action.)
    Connect(Box<Target>),
    /// Look up where mail for a domain goes (MX, else A/AAAA); answer with
    /// [`Machine::handle_resolved`].
    Resolve(String),
    /// Start a TLS handshake. Everything written before has been flushed; whatever
    /// plaintext the peer sent after agreeing to TLS must be discarded (RFC 3207 §4.2).
    /// Answer with [`Machine::handle_tls_established`] or [`Machine::handle_tls_failed`].
    StartTls(TlsStart),
    /// Close the leg after what was written to it (a FIN: after QUIT).
    Disconnect(Leg),
    /// Drop the leg's connection without a word (an abortive close: a backend discards a
    /// message whose end of data never came).
    Abort(Leg),
    /// Close both connections. Nothing follows. `linger`: the client may still be sending
    /// (it neither said QUIT nor shut down its side), so its connection gets a lingering
    /// close: our side shut down after the last reply, then what it still sends read and
    /// thrown away until it closes too (bounded). A close with unread input would send a
    /// reset, and a reset can destroy the last reply before the client reads it (Windows
    /// discards what it received; a client still writing sees only the write fail).
    Close { linger: bool },
}

/// One address of a next hop, with the host name it was found under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// A mail exchanger of a domain, in preference order, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The MX host (no trailing dot), or the domain itself when it has no MX (RFC 5321 §5.1).
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain's next hops could not be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    /// RFC 7505: the domain says it accepts no mail.
    #[error("null MX")]
    NullMx,
    #[error("no such domain")]
    NoSuchDomain,
    /// Neither MX nor address records.
    #[error("no mail server address")]
    NoAddress,
    #[error("not a valid domain name")]
    InvalidDomain,
    /// SERVFAIL, a timeout: the legacy MTA should try again later.
    #[error("temporary DNS failure")]
    Temporary,
    /// The mail servers' addresses are all this host's (loopback, unspecified) or no host's
    /// (link-local, multicast, reserved): mail to them would loop or go nowhere.
    #[error("no routable mail server address")]
    Unroutable,
}

impl DnsFailure {
    /// The reply to the RCPT that needed the look-up (SPEC §4, RFC 7505 §4.2, RFC 3463).
    pub fn reply(self) -> &'static str {
        match self {
            DnsFailure::NullMx => "550 5.1.10 Recipient domain does not accept mail (null MX)",
            DnsFailure::NoSuchDomain => "550 5.1.2 Recipient domain does not exist",
            DnsFailure::NoAddress => "550 5.1.2 Recipient domain has no mail server address",
            DnsFailure::InvalidDomain => "501 5.1.3 Recipient domain is not a valid domain name",
            DnsFailure::Temporary => "451 4.4.3 Temporary DNS failure for the recipient domain",
            DnsFailure::Unroutable => {
                "550 5.4.4 Recipient domain's mail servers have no routable address"
            }
        }
    }
}

/// Which side of a TLS handshake to play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsStart {
    /// The server side, on the client leg (the client sent STARTTLS).
    Server,
    /// The client side, on the backend leg toward a next hop.
    Client(Box<TlsClient>),
    /// The client side, on the backend leg toward a terminate listener's legacy server, after
    /// its STARTTLS: the driver knows which server that is and how its certificate is checked
    /// (`backend.tls_verify`); a certificate that fails the check fails the handshake.
    Backend,
}

impl TlsStart {
    pub fn leg(&self) -> Leg {
        match self {
            TlsStart::Server => Leg::Client,
            TlsStart::Client(_) | TlsStart::Backend => Leg::Backend,
        }
    }
}

/// How to handshake with a next hop. The handshake itself accepts any certificate: whether
/// it is good enough is the session's decision, on what the driver reports of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClient {
    /// Sent as SNI.
    pub server_name: String,
    /// Verify the chain against `trust` and check that it is valid for one of `names`
    /// (the next hop host, then the recipient domain); report the outcome.
    pub verify: bool,
    pub names: Vec<String>,
    /// Present our client certificate (mutual TLS).
    pub present_certificate: bool,
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
    PolicyRejection { reason: Refusal, enforced: bool },
    /// A Domain Security refusal (also reported as a [`Event::PolicyRejection`]), with what
    /// was missing, for the log.
    DomainSecureRefused(crate::inbound::DomainSecureRefusal),
    /// The backend misbehaved or went away; the session ends with `421 4.4.2`.
    BackendFailed { kind: LegFailure, reason: String },
    /// A next hop could not be used (unreachable, refused, misbehaved, lost); the legacy MTA
    /// was told `4xx`, or the next one was tried.
    NextHopFailed {
        host: String,
        kind: LegFailure,
        reason: String,
    },
    /// A recipient domain's TLS level could not be met with a next hop.
    OutboundTlsFailure(Box<crate::outbound::TlsFailureReport>),
    /// The next hop answered 2xx to the end of a message sent over verified mutual TLS to a
    /// `domain-secure` domain; `domain` is the listed domain as configured.
    DomainSecureSent { domain: String },
    /// `backend.xclient` is on, but the backend connection did not offer XCLIENT: it sees
    /// the sidecar's address as the client's.
    XclientNotOffered,
    /// A reply was sent to the client (one per reply, multi-line or not).
    Reply { to: ReplyTo, code: u16 },
    /// A line of the client dialogue for the protocol log, secrets masked (only when the
    /// listener has `protocol_log`).
    Protocol { direction: Direction, line: String },
}

/// How a next hop was found to be the sidecar's own listener
/// ([`Machine::handle_connect_loops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopSeen {
    /// By its address, before connecting: it is ours for sure.
    ByAddress,
    /// Once connected, by the addresses this side of the connection sees (this host's own
    /// address on a listener's port): a NAT rule may have sent it elsewhere.
    OnceConnected,
}

/// A session as the driver sees it: the one driver loop is written against this, for both
/// directions. Every `handle_*` may queue actions and events; the driver drains the actions
/// (until `poll_action` gives `None`) before it waits for anything, and may make several calls
/// in between (the records of one read): what they write leaves in one write per leg.
pub trait Machine {
    /// The next action to carry out.
    fn poll_action(&mut self) -> Option<Action>;
    /// The next event to count or log.
    fn poll_event(&mut self) -> Option<Event>;
    /// The earliest deadline; call [`Machine::handle_timeout`] when it has passed.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether the driver should read from the leg now (backpressure).
    fn wants_bytes(&self, leg: Leg) -> bool;
    /// The most the driver should read from the leg at once, when it reads: what the session
    /// will still buffer (a whole read of pipelined input would otherwise be held past the
    /// session's bound). `usize::MAX`: as much as the driver reads.
    fn read_budget(&self, leg: Leg) -> usize {
        let _ = leg;
        usize::MAX
    }
    fn is_closed(&self) -> bool;
    /// Whether this session's messages travel over TLS on the leg its listener protects (for
    /// `messages_total{tls}`): the client leg in terminate mode, the next hop in originate.
    fn message_tls(&self) -> bool;
    /// The client leg's TLS, once established (the session's closing log line names it).
    fn client_tls(&self) -> Option<&TlsInfo> {
        None
    }
    /// When the session began, as it was made (the closing log line gives its length).
    fn started(&self) -> Instant;

    fn handle_bytes(&mut self, leg: Leg, data: &[u8], now: Instant);
    /// The peer shut down its sending side.
    fn handle_eof(&mut self, leg: Leg, now: Instant);
    /// The leg's TLS connection failed on a fatal alert from its peer (`alert`: its RFC 8446
    /// name, e.g. `certificate_required`): the driver's report of a read that failed on one.
    /// Unless a direction has a use for the name, the peer is gone: a close.
    fn handle_tls_alert(&mut self, leg: Leg, alert: &str, now: Instant) {
        let _ = alert;
        self.handle_eof(leg, now);
    }
    /// The leg failed (a reset, a write that could not be done).
    fn handle_lost(&mut self, leg: Leg, now: Instant);
    /// The connection asked for by [`Action::ConnectBackend`] or [`Action::Connect`] is open.
    fn handle_connected(&mut self, now: Instant);
    fn handle_connect_failed(&mut self, reason: &str, now: Instant);
    /// [`Action::Connect`]'s address is the sidecar's own listener (`reason` says which): a
    /// mail loop, not tried, or (`seen`) closed once connected. A failed connect unless the
    /// machine tells them apart.
    fn handle_connect_loops(&mut self, reason: &str, seen: LoopSeen, now: Instant) {
        let _ = seen;
        self.handle_connect_failed(reason, now);
    }
    /// The answer to [`Action::Resolve`]: next hops in preference order.
    fn handle_resolved(&mut self, _result: Result<Vec<Route>, DnsFailure>, _now: Instant) {}
    /// The handshake asked for by [`Action::StartTls`] completed; on the backend leg,
    /// `info.client_cert` is the next hop's certificate as verified (if asked to).
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
