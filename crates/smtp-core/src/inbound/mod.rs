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
//! The parts every session has (buffers, queues, timers, the error count, body relaying, the
//! protocol log and the Received header) live in [`crate::session`]; this module keeps what is
//! particular to terminate mode. This file holds the [`Session`] and its `handle_*`/`poll_*`
//! surface; `machine` its [`crate::session::Machine`] implementation for the driver; `api`
//! the listener's policy ([`Config`]); `state` the private state types; `shared` the internals every part uses (closing, losing a
//! message in flight, policy refusals), `commands` the client's commands (MAIL/RCPT parameters
//! follow `crate::params`), `auth` the authentication state and its replay, `backend` the
//! backend leg (reply checks, replacing and replaying a connection), `body` the message body,
//! `domain_secure` the Domain Security decision at MAIL FROM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::command::Command;
use crate::ehlo::Offered;
use crate::reply::Reply;
use crate::session::{Conn, LegFailure};
use crate::timer::Timer;

mod api;
mod auth;
mod backend;
mod body;
mod commands;
mod domain_secure;
mod machine;
mod shared;
mod state;

pub use crate::session::{
    Action, ClientCert, Direction, Event, PeerCert, Refusal, Timeouts, TlsInfo,
};
pub use api::{Config, Hop, OnFailure};
pub use domain_secure::{DomainSecureRefusal, Missing};

use auth::AuthState;
use state::{Backend, Mode, Pending, Phase, Replay, Secure, Transaction};

/// Backend connections a session may replace (after refused messages, or for a backend that
/// refuses a second EHLO) before it ends with `421`: one pipelining client must not be able
/// to drive an unbounded rate of backend connections.
const MAX_BACKEND_REPLACEMENTS: u32 = 5;

#[derive(Debug)]
pub struct Session {
    /// Shared by every session of the listener: an idle session holds a pointer, not a copy.
    cfg: Arc<Config>,
    tls: Option<TlsInfo>,
    phase: Phase,
    mode: Mode,
    backend: Backend,
    /// The extensions offered to the client in the last EHLO reply: MAIL/RCPT parameters
    /// follow them.
    offered: Offered,
    /// What the current backend connection itself offered in its last EHLO reply: a
    /// parameter it did not offer is never forwarded to it (SIZE is removed, since we enforce
    /// the limit ourselves; others are refused).
    backend_offered: Offered,
    /// The backend's reply to a client EHLO that was sent again on a fresh connection, held
    /// until that connection is authenticated again. Boxed, as `before_tls_ehlo`: rare, and
    /// every idle session's task would hold room for it.
    ehlo_reply: Option<Box<Reply>>,
    /// Before STARTTLS: the name of the client's EHLO and the backend's positive reply to it,
    /// while nothing else has been sent to this backend connection. The same EHLO after
    /// STARTTLS (RFC 3207 §4.2) is answered from it: the backend would be asked to return to
    /// the state it is in, and one round trip per session is saved. Boxed: it is kept from an
    /// EHLO before TLS on a listener that offers STARTTLS until the next EHLO or the next
    /// command sent to the backend, and an idle session's task would otherwise hold its room
    /// for good.
    before_tls_ehlo: Option<Box<(String, Reply)>>,
    auth: AuthState,
    /// The current backend connection has accepted a HELO/EHLO.
    backend_helo: bool,
    /// Backend connections replaced so far (bounded by [`MAX_BACKEND_REPLACEMENTS`]).
    replacements: u32,
    /// The client's port, for XCLIENT (its address is `conn.peer`).
    client_port: u16,
    /// Whether XCLIENT was considered on the current backend connection (`hop.xclient`: at
    /// its first HELO/EHLO reply).
    xclient_asked: bool,
    /// While the backend is [`Backend::Deferred`]: the backend's EHLO reply that answers the
    /// client's EHLO before STARTTLS (the listener's, shared).
    known_ehlo: Option<Arc<Reply>>,
    /// A command that opened a deferred backend connection: it is carried out once the
    /// connection is where the client is.
    waiting: Option<Box<Command>>,
    conn: Conn,
}

impl Session {
    /// A new session for a client at `peer`. `tls` is set when the connection is already TLS
    /// (implicit TLS, port 465). `wall` is the wall clock at `now`, for the Received header.
    pub fn new(
        cfg: impl Into<Arc<Config>>,
        peer: SocketAddr,
        tls: Option<TlsInfo>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let mut s = Session::build(cfg.into(), peer, tls, now, wall);
        s.conn.control(Action::ConnectBackend);
        s
    }

    /// A new plaintext session that greets at once and connects to the backend only when it
    /// needs it ([`Backend::Deferred`]): once TLS is up, or for the first command before it
    /// that the backend must answer. `ehlo` is a positive EHLO reply of the backend (the
    /// listener's health check's): the client's EHLO before STARTTLS is answered from it,
    /// rewritten as any other. A flood of connections that never get past STARTTLS then
    /// costs the backend nothing.
    pub fn new_deferred(
        cfg: impl Into<Arc<Config>>,
        peer: SocketAddr,
        ehlo: Arc<Reply>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let mut s = Session::build(cfg.into(), peer, None, now, wall);
        s.backend = Backend::Deferred;
        s.known_ehlo = Some(ehlo);
        s.greet(now);
        s
    }

    /// A new implicit-TLS session whose greeting ([`Config::greeting`]) already left with the
    /// server's last handshake flight, as TLS 1.3 half-RTT data: it connects to the backend
    /// at once, and the client's first command waits for the connection, as after STARTTLS
    /// in a [`Session::new_deferred`] session. A backend that cannot be reached, or refuses
    /// the session, is told to the client as `421 4.4.2` as soon as it is known (usually before
    /// the client's first command), and the session closes.
    pub fn new_greeted(
        cfg: impl Into<Arc<Config>>,
        peer: SocketAddr,
        tls: TlsInfo,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let mut s = Session::build(cfg.into(), peer, Some(tls), now, wall);
        s.backend = Backend::Deferred;
        let greeting = s.cfg.greeting();
        s.greeted(&greeting, now);
        s.connect_deferred();
        s
    }

    fn build(
        cfg: Arc<Config>,
        peer: SocketAddr,
        tls: Option<TlsInfo>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        Session {
            conn: Conn::new(cfg.protocol_log, cfg.max_errors, peer.ip(), now, wall),
            cfg,
            tls,
            phase: Phase::ExpectEhlo,
            mode: Mode::Starting,
            backend: Backend::Connecting,
            offered: Offered::default(),
            backend_offered: Offered::default(),
            ehlo_reply: None,
            before_tls_ehlo: None,
            auth: AuthState::default(),
            backend_helo: false,
            replacements: 0,
            client_port: peer.port(),
            xclient_asked: false,
            known_ehlo: None,
            waiting: None,
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        // Replies to pipelined commands leave together, once the backend has answered the
        // last one of them: while a client's command waits for the backend's reply, what was
        // written to the client answers commands the client sent before it. (The backend's
        // own states, a reconnection or a replay, are not the client's commands: a reply
        // written before them is what the client waits for.)
        let hold_replies = matches!(self.mode, Mode::Await(_));
        self.conn.poll_action(hold_replies)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.conn.poll_event()
    }

    /// The earliest deadline; call [`Session::handle_timeout`] when it has passed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// How much of the client's input the driver may read at once: in DATA (or while a BDAT
    /// chunk is skipped) as much as it reads, else what still fits under
    /// 8 KiB of pipelined input (the session's `client_room`).
    pub fn client_read_budget(&self) -> usize {
        match self.mode {
            Mode::Data(_) | Mode::SkipBdat { .. } => usize::MAX,
            _ => self.conn.client_room(),
        }
    }

    /// Whether the driver should read from the client now (backpressure: a session that is
    /// waiting on the backend holds at most 8 KiB of pipelined input, its `client_room`).
    pub fn wants_client_bytes(&self) -> bool {
        match self.mode {
            _ if self.conn.client_eof || self.conn.is_closed() => false,
            Mode::Starting | Mode::AwaitTls => false,
            Mode::Data(_) | Mode::SkipBdat { .. } => true,
            _ => self.conn.client_room() > 0,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub fn handle_client_bytes(&mut self, data: &[u8], now: Instant) {
        let data = match self.mode {
            _ if self.conn.is_closed() => &[][..],
            Mode::Data(_) | Mode::SkipBdat { .. } => {
                let used = self.feed_body(data, now);
                &data[used..]
            }
            Mode::AwaitTls | Mode::Starting => &[][..],
            _ => data,
        };
        if !data.is_empty() {
            self.conn.client_in.push(data);
        }
        self.process_input(now);
    }

    /// The client shut down its sending side. What it sent before is still processed and
    /// answered (a client may send its whole pipelined dialogue and then shut down, RFC 2920
    /// §3.1), then the session closes; a message still streaming is lost.
    pub fn handle_client_eof(&mut self, now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        self.conn.client_eof = true;
        match self.mode {
            Mode::Data(_) | Mode::SkipBdat { .. } | Mode::AwaitTls | Mode::Starting => {
                self.handle_client_lost(now);
            }
            _ => self.process_input(now),
        }
    }

    /// The client connection failed (a reset, a write that could not be done): nothing more
    /// can be said to it.
    pub fn handle_client_lost(&mut self, _now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        self.fail_message_in_flight();
        self.close();
    }

    pub fn handle_backend_connected(&mut self, now: Instant) {
        if self.backend == Backend::Connecting {
            self.backend = Backend::Greeting;
            self.backend_helo = false;
            self.xclient_asked = false;
            self.conn.backend_in.clear();
            self.conn
                .timers
                .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
        }
    }

    pub fn handle_backend_connect_failed(&mut self, reason: &str, _now: Instant) {
        self.backend_failed(LegFailure::Unreachable, format!("connect failed: {reason}"));
    }

    pub fn handle_backend_bytes(&mut self, data: &[u8], now: Instant) {
        if self.conn.is_closed() || matches!(self.backend, Backend::Connecting | Backend::Deferred)
        {
            return;
        }
        if !data.is_empty() && !self.awaits_backend() {
            // One command at a time: nothing may arrive while none is outstanding, not even
            // the start of a line that would become the next command's reply.
            self.backend_failed(
                LegFailure::Protocol,
                "bytes sent with no command outstanding".into(),
            );
            return;
        }
        self.conn.backend_in.push(data);
        match self.conn.backend_in.next_reply() {
            Ok(Some(reply)) => {
                self.on_backend_reply(reply, now);
                // One command at a time, so whatever follows its reply was not asked for. That
                // holds even when handling the reply sent the next command (the body after
                // 354, the client's command after a replay, EHLO after XCLIENT's greeting):
                // these bytes were sent before that command was, so they cannot answer it.
                // The connection is dropped with what was queued for it: a message's end of
                // data never reaches a backend that answered it ahead of time. (A connection
                // being replaced is dropped already, with whatever it sent.)
                let unasked = self.conn.backend_in.buffered() > 0;
                if unasked && !self.conn.is_closed() && self.backend != Backend::Connecting {
                    if self.backend != Backend::Gone {
                        self.drop_backend();
                    }
                    self.backend_failed(
                        LegFailure::Protocol,
                        "bytes sent with no command outstanding".into(),
                    );
                }
            }
            Ok(None) => {}
            Err(e) => self.backend_failed(LegFailure::Protocol, format!("bad reply: {e}")),
        }
        self.process_input(now);
    }

    pub fn handle_backend_eof(&mut self, _now: Instant) {
        if !matches!(self.backend, Backend::Connecting | Backend::Deferred) {
            self.backend_failed(LegFailure::Closed, "connection closed".into());
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
        let authenticated = self.auth.is_authenticated();
        self.auth = AuthState::None;
        self.conn.helo = None;
        self.offered = Offered::default();
        self.phase = Phase::ExpectEhlo;
        self.conn.client_in.clear();
        self.mode = Mode::Commands;
        if authenticated && !self.replace_backend() {
            // TLS is up: the client is told, inside it, and the session ends there.
            return self.backend_failed(
                LegFailure::Replay,
                "authenticated backend connection cannot be replaced".into(),
            );
        }
        self.conn
            .timers
            .set(Timer::Client, now + self.cfg.timeouts.command);
        // A deferred backend is needed from here on: connected while the client sends its
        // EHLO, which waits for it (unless shutdown began: that EHLO is answered 421).
        if !self.conn.draining {
            self.connect_deferred();
        }
    }

    /// The TLS handshake failed: nothing can be said to the client in plaintext any more.
    pub fn handle_tls_failed(&mut self, _now: Instant) {
        self.close();
    }

    /// The handshake with the backend after its STARTTLS (`hop.starttls`) completed.
    pub fn handle_backend_tls_established(&mut self, now: Instant) {
        if self.backend == Backend::Securing(Secure::Handshake) {
            self.secured(now);
            self.process_input(now);
        }
    }

    /// The handshake with the backend failed (its certificate included, when checked).
    pub fn handle_backend_tls_failed(&mut self, _now: Instant) {
        if self.backend == Backend::Securing(Secure::Handshake) {
            self.backend_failed(LegFailure::Tls, "TLS handshake failed".into());
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.conn.timers.expired(now) {
            Some(Timer::Backend) => {
                self.backend_failed(LegFailure::Timeout, "no reply in time".into())
            }
            Some(Timer::Client) => match self.mode {
                Mode::AwaitTls => self.close(),
                _ => {
                    self.fail_message_in_flight();
                    self.conn.send("421 4.4.2 Timeout, closing connection");
                    self.close();
                }
            },
            None => {}
        }
    }

    /// Shutdown begins: finish the transaction in flight, then `421 4.3.2` at the next
    /// command boundary (DESIGN.md rule 6).
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.conn.draining = true;
        if matches!(self.mode, Mode::Commands)
            && !matches!(self.phase, Phase::ExpectRcpt(_))
            && self.conn.client_in.buffered() == 0
        {
            self.shutdown_now();
        }
        self.process_input(now);
    }

    /// The shutdown grace period is over: whatever is left is told `421 4.3.2` and closed.
    pub fn handle_grace_expired(&mut self, _now: Instant) {
        if self.conn.is_closed() {
            return;
        }
        self.fail_message_in_flight();
        if matches!(self.mode, Mode::AwaitTls | Mode::Starting) {
            self.close();
        } else {
            self.shutdown_now();
        }
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

#[cfg(test)]
mod hop_tests;

#[cfg(test)]
mod deferred_tests;

#[cfg(test)]
mod received_tests;
