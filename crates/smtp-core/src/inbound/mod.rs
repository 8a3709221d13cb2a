//! The terminate-mode session: one client, one legacy backend, the sidecar in between.
//!
//! A plain state machine with no I/O (DESIGN.md §2, after quinn-proto): the driver feeds it
//! bytes and time through `handle_*`, and carries out what [`Session::poll_action`] returns,
//! in order. Two pieces of state are tracked separately:
//! - [`Phase`]: where the SMTP dialogue stands (`ExpectEhlo`, `ExpectMail`, `ExpectRcpt`);
//! - [`Mode`]: what the session is doing right now (reading commands, waiting for a backend
//!   reply, streaming a message body, waiting for a TLS handshake...).
//!
//! Commands are handled one at a time: a forwarded command waits for the backend's reply
//! before the next pipelined one is looked at, so replies stay in order and the backend sees
//! a strictly sequential session. Every wait carries a deadline ([`Session::poll_timeout`]).
//!
//! This file holds the types and the `handle_*`/`poll_*` surface; `commands` the client's
//! commands (and the error limit), `params` the MAIL/RCPT parameter rules, `auth` the
//! authentication state and its replay, `backend` the backend leg (reply checks, replacing and
//! replaying a connection), `body` the message body, `received` the Received header,
//! `domain_secure` the Domain Security decision at MAIL FROM, `tls_info` what the driver
//! reports of a completed handshake (the client certificate included).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::data::{BareNewlines, LongLines, Reframer};
use crate::ehlo::Offered;
use crate::line::{LineReader, MAX_EXTENDED_LINE};
use crate::reply::{Reply, ReplyParser};

mod auth;
mod backend;
mod body;
mod commands;
mod domain_secure;
mod params;
mod protocol_log;
mod received;
mod tls_info;

pub use domain_secure::{DomainSecureRefusal, Missing};
pub use tls_info::{ClientCert, PeerCert, TlsInfo};

use auth::AuthState;
use params::MailParams;
pub use protocol_log::Direction;

/// Pipelined command bytes buffered before the session stops asking for more client input.
const CLIENT_BUFFER_CAP: usize = 8 * 1024;

/// Backend connections a session may replace (after refused messages, or for a backend that
/// refuses a second EHLO) before it ends with `421`: one pipelining client must not be able
/// to drive an unbounded rate of backend connections.
const MAX_BACKEND_REPLACEMENTS: u32 = 5;

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

/// Where the SMTP dialogue stands (RFC 5321 §4.1.4 ordering). Named for what the session
/// expects next, as rustls names its handshake states.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ExpectEhlo,
    ExpectMail,
    ExpectRcpt(Transaction),
}

/// What a transaction keeps between MAIL and the end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transaction {
    mail: MailParams,
    /// Recipients the backend accepted.
    rcpts: u32,
    /// Recipients refused by us for being over `max_recipients`.
    over_limit: u32,
    /// The sender's domain is `cfg.domain_secure[i]` and the session met Domain Security
    /// for it (never set when a refusal was let through in audit mode).
    secure: Option<usize>,
}

/// A command forwarded to the backend whose reply we wait for.
#[derive(Debug)]
enum Pending {
    Ehlo {
        name: String,
        esmtp: bool,
    },
    Mail {
        mail: MailParams,
        secure: Option<usize>,
    },
    Rcpt,
    Data,
    EndOfData {
        bytes: u64,
    },
    Rset,
    Auth,
    Other,
}

impl Pending {
    /// Whether `code` can answer this command (RFC 5321 §4.2, §4.3.2): anything else is a
    /// backend protocol violation, never passed to the client (a `250` to DATA would have the
    /// client send its body as commands).
    fn expects(&self, code: u16) -> bool {
        let class = code / 100;
        match self {
            Pending::Data => code == 354 || class == 4 || class == 5,
            Pending::Auth => code == 235 || code == 334 || class == 4 || class == 5,
            _ => matches!(class, 2 | 4 | 5),
        }
    }
}

#[derive(Debug)]
enum Mode {
    /// Waiting for the backend's greeting before ours.
    Starting,
    Commands,
    Await(Pending),
    Data(Box<Reframer>),
    /// Discarding the chunk of a BDAT we do not carry, then answering `reply`.
    SkipBdat {
        remaining: u64,
        reply: &'static str,
    },
    /// AUTH: the next client line is a SASL response, not a command (RFC 4954 §4).
    AuthLine,
    AwaitTls,
    Closed,
}

/// The backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Connecting,
    Greeting,
    /// Reconnected: bringing the new connection back to where the client is.
    Replaying(Replay),
    Ready,
    Gone,
}

/// A step of bringing a new backend connection back to where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Our HELO/EHLO replay is in flight.
    Helo,
    /// The AUTH exchange is being replayed; `next` is the next recorded client line.
    Auth { next: usize },
}

#[derive(Debug)]
pub struct Session {
    cfg: Config,
    peer: IpAddr,
    tls: Option<TlsInfo>,
    started: (Instant, SystemTime),
    phase: Phase,
    mode: Mode,
    backend: Backend,
    /// The client's EHLO/HELO name and whether it was EHLO.
    helo: Option<(String, bool)>,
    /// The extensions offered to the client in the last EHLO reply: MAIL/RCPT parameters
    /// follow them.
    offered: Offered,
    /// What the current backend connection itself offered in its last EHLO reply: a
    /// parameter it did not offer is never forwarded to it (SIZE is removed, since we enforce
    /// the limit ourselves; others are refused).
    backend_offered: Offered,
    /// The backend's reply to a client EHLO that was sent again on a fresh connection, held
    /// until that connection is authenticated again.
    ehlo_reply: Option<Reply>,
    auth: AuthState,
    /// The current backend connection has accepted a HELO/EHLO.
    backend_helo: bool,
    /// Backend connections replaced so far (bounded by [`MAX_BACKEND_REPLACEMENTS`]).
    replacements: u32,
    commands_seen: u32,
    errors: u32,
    draining: bool,
    /// The client shut down its sending side: what it sent is still answered, then we close.
    client_eof: bool,
    client_in: LineReader,
    backend_in: ReplyParser,
    out_client: BytesMut,
    out_backend: BytesMut,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    client_deadline: Option<Instant>,
    backend_deadline: Option<Instant>,
}

impl Session {
    /// A new session for a client at `peer`. `tls` is set when the connection is already TLS
    /// (implicit TLS, port 465). `wall` is the wall clock at `now`, for the Received header.
    pub fn new(
        cfg: Config,
        peer: IpAddr,
        tls: Option<TlsInfo>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let mut s = Session {
            cfg,
            peer,
            tls,
            started: (now, wall),
            phase: Phase::ExpectEhlo,
            mode: Mode::Starting,
            backend: Backend::Connecting,
            helo: None,
            offered: Offered::default(),
            backend_offered: Offered::default(),
            ehlo_reply: None,
            auth: AuthState::default(),
            backend_helo: false,
            replacements: 0,
            commands_seen: 0,
            errors: 0,
            draining: false,
            client_eof: false,
            client_in: LineReader::new(MAX_EXTENDED_LINE),
            backend_in: ReplyParser::new(),
            out_client: BytesMut::new(),
            out_backend: BytesMut::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            client_deadline: None,
            backend_deadline: None,
        };
        s.actions.push_back(Action::ConnectBackend);
        s
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest deadline; call [`Session::handle_timeout`] when it has passed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.client_deadline, self.backend_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the driver should read from the client now (backpressure: a session that is
    /// waiting on the backend holds at most [`CLIENT_BUFFER_CAP`] of pipelined input).
    pub fn wants_client_bytes(&self) -> bool {
        match self.mode {
            _ if self.client_eof => false,
            Mode::Starting | Mode::AwaitTls | Mode::Closed => false,
            Mode::Data(_) | Mode::SkipBdat { .. } => true,
            _ => self.client_in.buffered() < CLIENT_BUFFER_CAP,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub fn handle_client_bytes(&mut self, data: &[u8], now: Instant) {
        let data = match self.mode {
            Mode::Data(_) | Mode::SkipBdat { .. } => {
                let used = self.feed_body(data, now);
                &data[used..]
            }
            Mode::Closed | Mode::AwaitTls | Mode::Starting => &[][..],
            _ => data,
        };
        if !data.is_empty() {
            self.client_in.push(data);
        }
        self.process_input(now);
        self.flush();
    }

    /// The client shut down its sending side. What it sent before is still processed and
    /// answered (a client may send its whole pipelined dialogue and then shut down, RFC 2920
    /// §3.1), then the session closes; a message still streaming is lost.
    pub fn handle_client_eof(&mut self, now: Instant) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.client_eof = true;
        match self.mode {
            Mode::Data(_) | Mode::SkipBdat { .. } | Mode::AwaitTls | Mode::Starting => {
                self.handle_client_lost(now);
            }
            _ => {
                self.process_input(now);
                self.flush();
            }
        }
    }

    /// The client connection failed (a reset, a write that could not be done): nothing more
    /// can be said to it.
    pub fn handle_client_lost(&mut self, _now: Instant) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.fail_message_in_flight();
        self.close();
    }

    pub fn handle_backend_connected(&mut self, now: Instant) {
        if self.backend == Backend::Connecting {
            self.backend = Backend::Greeting;
            self.backend_helo = false;
            self.backend_in.clear();
            self.backend_deadline = Some(now + self.cfg.timeouts.backend_reply);
        }
    }

    pub fn handle_backend_connect_failed(&mut self, reason: &str, _now: Instant) {
        self.backend_failed(format!("connect failed: {reason}"));
        self.flush();
    }

    pub fn handle_backend_bytes(&mut self, data: &[u8], now: Instant) {
        if matches!(self.mode, Mode::Closed) || self.backend == Backend::Connecting {
            return;
        }
        if !data.is_empty() && !self.awaits_backend() {
            // One command at a time: nothing may arrive while none is outstanding, not even
            // the start of a line that would become the next command's reply.
            self.backend_failed("bytes sent with no command outstanding".into());
            return self.flush();
        }
        self.backend_in.push(data);
        loop {
            match self.backend_in.next_reply() {
                Ok(Some(reply)) => {
                    self.on_backend_reply(reply, now);
                    if !self.awaits_backend() && self.backend_in.buffered() > 0 {
                        // One command at a time: whatever follows its reply was not asked for.
                        self.backend_failed("bytes sent with no command outstanding".into());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.backend_failed(format!("bad reply: {e}"));
                    break;
                }
            }
            if matches!(self.mode, Mode::Closed) || self.backend == Backend::Connecting {
                break;
            }
        }
        self.process_input(now);
        self.flush();
    }

    pub fn handle_backend_eof(&mut self, _now: Instant) {
        if self.backend != Backend::Connecting {
            self.backend_failed("connection closed".into());
            self.flush();
        }
    }

    /// The TLS handshake that followed [`Action::StartTls`] completed.
    pub fn handle_tls_established(&mut self, info: TlsInfo, now: Instant) {
        if !matches!(self.mode, Mode::AwaitTls) {
            return;
        }
        // RFC 3207 §4.2: forget everything learned before TLS (authentication included);
        // the client starts with EHLO. A backend connection that was authenticated in
        // plaintext would stay so: the session goes on over a fresh one.
        self.tls = Some(info);
        if self.auth.is_authenticated() && !self.replace_backend() {
            self.backend_failed("authenticated backend connection cannot be replaced".into());
        }
        self.auth = AuthState::None;
        self.helo = None;
        self.offered = Offered::default();
        self.phase = Phase::ExpectEhlo;
        self.client_in.clear();
        self.mode = Mode::Commands;
        self.client_deadline = Some(now + self.cfg.timeouts.command);
        self.flush();
    }

    /// The TLS handshake failed: nothing can be said to the client in plaintext any more.
    pub fn handle_tls_failed(&mut self, _now: Instant) {
        self.close();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.backend_deadline.is_some_and(|d| d <= now) {
            self.backend_deadline = None;
            self.backend_failed("no reply in time".into());
        } else if self.client_deadline.is_some_and(|d| d <= now) {
            self.client_deadline = None;
            match self.mode {
                Mode::AwaitTls => self.close(),
                _ => {
                    self.fail_message_in_flight();
                    self.send("421 4.4.2 Timeout, closing connection");
                    self.close();
                }
            }
        }
        self.flush();
    }

    /// Shutdown begins: finish the transaction in flight, then `421 4.3.2` at the next
    /// command boundary (DESIGN.md rule 6).
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.draining = true;
        if matches!(self.mode, Mode::Commands)
            && !matches!(self.phase, Phase::ExpectRcpt(_))
            && self.client_in.buffered() == 0
        {
            self.shutdown_now();
        }
        self.process_input(now);
        self.flush();
    }

    /// The shutdown grace period is over: whatever is left is told `421 4.3.2` and closed.
    pub fn handle_grace_expired(&mut self, _now: Instant) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.fail_message_in_flight();
        if matches!(self.mode, Mode::AwaitTls | Mode::Starting) {
            self.close();
        } else {
            self.shutdown_now();
        }
        self.flush();
    }

    // ----- internals shared by the submodules -----

    /// A message that was streaming, or waiting for the backend's verdict, is lost: the
    /// client was never told 250 and will retry.
    fn fail_message_in_flight(&mut self) {
        if matches!(
            self.mode,
            Mode::Data(_) | Mode::Await(Pending::EndOfData { .. })
        ) {
            self.events.push_back(Event::MessageFailed);
        }
        if matches!(self.mode, Mode::Data(_)) && self.backend != Backend::Gone {
            // Reset the backend connection: it must discard the partial message.
            self.control(Action::CloseBackend);
            self.backend = Backend::Gone;
        }
    }

    fn shutdown_now(&mut self) {
        self.send("421 4.3.2 Service shutting down");
        self.close();
    }

    /// Queue a reply line to the client (CRLF appended).
    fn send(&mut self, line: &str) {
        self.out_client.extend_from_slice(line.as_bytes());
        self.out_client.extend_from_slice(b"\r\n");
        self.log_replies(line.as_bytes());
    }

    fn send_reply(&mut self, reply: &Reply) {
        let start = self.out_client.len();
        reply.write_to(&mut self.out_client);
        if self.cfg.protocol_log {
            let written = self.out_client[start..].to_vec();
            self.log_replies(&written);
        }
    }

    /// Queue a control action after everything written so far.
    fn control(&mut self, action: Action) {
        self.flush();
        self.actions.push_back(action);
    }

    fn flush(&mut self) {
        if !self.out_client.is_empty() {
            let bytes = self.out_client.split().freeze();
            self.actions.push_back(Action::WriteClient(bytes));
        }
        if !self.out_backend.is_empty() {
            let bytes = self.out_backend.split().freeze();
            self.actions.push_back(Action::WriteBackend(bytes));
        }
    }

    fn close(&mut self) {
        if !matches!(self.mode, Mode::Closed) {
            self.control(Action::Close);
            self.mode = Mode::Closed;
            self.client_deadline = None;
            self.backend_deadline = None;
        }
    }

    /// A refusal that protects the backend or the session's bounds (size, recipients, bare
    /// newlines...): always enforced, audit mode or not.
    fn policy_rejection(&mut self, reason: &'static str) {
        self.events.push_back(Event::PolicyRejection {
            reason,
            enforced: true,
        });
    }

    /// A refusal of the TLS policy (`require_tls`, `auth_requires_tls`, `domain_secure`);
    /// returns whether it is enforced. In audit mode (`enforce: false`) it is only reported
    /// and the caller lets the command through.
    fn tls_policy_rejection(&mut self, reason: &'static str) -> bool {
        let enforced = self.cfg.enforce;
        self.events
            .push_back(Event::PolicyRejection { reason, enforced });
        enforced
    }

    /// A command or the replay of one is outstanding at the backend.
    fn awaits_backend(&self) -> bool {
        matches!(self.mode, Mode::Await(_))
            || matches!(
                self.backend,
                Backend::Greeting | Backend::Replaying(_) | Backend::Connecting
            )
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod hardening_tests;

#[cfg(test)]
mod domain_secure_tests;
