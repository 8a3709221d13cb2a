//! [`Conn`]: the part of a session that does not depend on its direction. It owns the two
//! input parsers (client command lines, backend replies), an output buffer per leg, the action
//! and event queues, the timer table, the error count and the drain and end-of-input flags.
//! The state machines above it decide what to say; this says it, in order.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;

use super::{Action, Event, Leg, ReplyTo, TlsInfo};
use crate::data::{Fed, Reframer};
use crate::line::{LineReader, MAX_EXTENDED_LINE};
use crate::reply::{Reply, ReplyParser};
use crate::timer::{Timer, Timers};

/// The body octets one read of the client's connection brings at most (the sidecar reads 128
/// KiB at a time, TLS records or plain bytes), with room for the Received header and a few
/// folds: the size the backend's buffer is made ready for in a bulk transfer.
pub(crate) const BODY_BATCH: usize = 128 * 1024 + 1024;

/// Pipelined command bytes a session holds, outside DATA, before it stops asking for client
/// input (either direction: [`Conn::client_room`]).
const CLIENT_BUFFER_CAP: usize = 8 * 1024;

/// A piece of body data this large (half a full TLS record) is taken for part of a bulk
/// transfer.
const BULK_PIECE: usize = 8 * 1024;

#[derive(Debug)]
pub(crate) struct Conn {
    /// The client's address, and when the session began (monotonic, wall), for Received.
    pub(crate) peer: IpAddr,
    started: (Instant, SystemTime),
    /// The client's EHLO/HELO name and whether it was EHLO. Boxed, not a `String`: no
    /// capacity kept, 8 octets fewer in every session's state.
    pub(crate) helo: Option<(Box<str>, bool)>,
    /// Client command lines, bounded.
    pub(crate) client_in: LineReader,
    /// Backend replies, bounded.
    pub(crate) backend_in: ReplyParser,
    /// Bytes queued for each leg, flushed as one [`Action::Write`] each.
    out: [BytesMut; 2],
    /// The Received header waits in the backend's buffer for the body's first bytes, to
    /// leave with them in one write (one system call and one segment fewer per message).
    hold_backend: bool,
    /// A message body ended: once its last bytes have become a write, the backend's buffer
    /// is given up (see [`Conn::relay_body`]).
    body_done: bool,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    pub(crate) timers: Timers,
    errors: u32,
    /// Protocol errors after which the client is disconnected (`policy.max_errors`).
    max_errors: u32,
    /// Shutdown has begun: the session ends at the next command boundary.
    pub(crate) draining: bool,
    /// The client shut down its sending side: what it sent is still answered, then we close.
    pub(crate) client_eof: bool,
    closed: bool,
    /// Emit [`Event::Protocol`] for every client line and every reply sent to it.
    pub(crate) protocol_log: bool,
    /// Client command lines read (the first one waits for `greeting`, the rest `command`).
    pub(crate) commands_seen: u32,
    /// What the next reply to the client answers.
    pub(crate) replying_to: ReplyTo,
}

impl Conn {
    /// Room left for pipelined client input under [`CLIENT_BUFFER_CAP`]: outside DATA, a
    /// session reads the client only while there is some, and no more than that at once
    /// ([`crate::session::Machine::read_budget`]).
    pub(crate) fn client_room(&self) -> usize {
        CLIENT_BUFFER_CAP.saturating_sub(self.client_in.buffered())
    }

    pub(crate) fn new(
        protocol_log: bool,
        max_errors: u32,
        peer: IpAddr,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        Conn {
            peer,
            started: (now, wall),
            helo: None,
            client_in: LineReader::new(MAX_EXTENDED_LINE),
            backend_in: ReplyParser::new(),
            out: [BytesMut::new(), BytesMut::new()],
            hold_backend: false,
            body_done: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            timers: Timers::default(),
            errors: 0,
            max_errors,
            draining: false,
            client_eof: false,
            closed: false,
            protocol_log,
            commands_seen: 0,
            replying_to: ReplyTo::Greeting,
        }
    }

    /// The next action. What was written for the legs since the last control action becomes
    /// write actions only when the queue has run dry, so what the handlers write between two
    /// polls, with no control action between, leaves in one write per leg: the records of one
    /// TLS read, each handed over on its own, reach the backend together.
    ///
    /// `hold_replies`: the session waits for the backend's answer to a command, so the replies
    /// already written to the client (to commands the client pipelined before it) wait to
    /// leave with that answer, in one write. RFC 2920 lets a server defer its replies while it
    /// works through pipelined commands; it must never wait for the client with replies unsent,
    /// and a session that waits for the backend does not wait for the client. At most
    /// [`MAX_HELD_REPLIES`] octets are held: a client that keeps commands coming must still
    /// read its replies, under the write deadline, or memory would grow with them.
    pub(crate) fn poll_action(&mut self, hold_replies: bool) -> Option<Action> {
        if self.actions.is_empty() {
            self.flush(hold_replies);
        }
        let action = self.actions.pop_front();
        if action.is_none() {
            release(&mut self.actions);
        }
        action
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() {
            release(&mut self.events);
        }
        event
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Queue a reply line to the client (CRLF appended).
    pub(crate) fn send(&mut self, line: &str) {
        let out = &mut self.out[Leg::Client.index()];
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.sent(line);
    }

    /// A reply line (without its CRLF) went to the client: count and log it.
    pub(crate) fn sent(&mut self, line: &str) {
        self.count_reply(line.as_bytes());
        self.log_replies(line.as_bytes());
    }

    /// Queue a (parsed, re-serialised) reply to the client.
    pub(crate) fn send_reply(&mut self, reply: &Reply) {
        let to = self.replying_to;
        self.event(Event::Reply {
            to,
            code: reply.code,
        });
        let out = &mut self.out[Leg::Client.index()];
        let start = out.len();
        reply.write_to(out);
        if self.protocol_log {
            let written = out[start..].to_vec();
            self.log_replies(&written);
        }
    }

    fn count_reply(&mut self, line: &[u8]) {
        let code = line
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let to = self.replying_to;
        self.event(Event::Reply { to, code });
    }

    /// Queue bytes for a leg.
    pub(crate) fn write(&mut self, leg: Leg, bytes: &[u8]) {
        self.out[leg.index()].extend_from_slice(bytes);
    }

    /// The output buffer of a leg, for serialisers that write into one.
    pub(crate) fn out(&mut self, leg: Leg) -> &mut BytesMut {
        &mut self.out[leg.index()]
    }

    /// Feed message data through the reframer to the backend leg. When a piece of a bulk
    /// transfer arrives ([`BULK_PIECE`] or more: a full TLS record, a large plain read) and
    /// the backend's buffer holds less than that, the buffer is made [`BODY_BATCH`] large at
    /// once (moving at most the few KiB it holds): the pieces of one read then reframe into
    /// one buffer, instead of growing it piece by piece and moving what it already holds
    /// each time. A message that comes in smaller pieces (a 2 KiB message, a client writing
    /// line by line) is given no more than it needs.
    ///
    /// The buffer is kept from one read to the next while the body lasts, and given up with
    /// the body's last bytes: a session between messages, or idle after one, holds none.
    pub(crate) fn relay_body(&mut self, reframer: &mut Reframer, data: &[u8]) -> Fed {
        self.hold_backend = false;
        let out = &mut self.out[Leg::Backend.index()];
        if data.len() >= BULK_PIECE && out.len() < BULK_PIECE {
            // Room for BODY_BATCH in all, not beyond what is held: asking for more than the
            // buffer's whole allocation would have it reallocated and copied with the part
            // already sent.
            out.reserve(BODY_BATCH - out.len());
        }
        let fed = reframer.feed(data, out);
        self.body_done |= fed.finished;
        fed
    }

    /// The client's DATA was accepted: the Received header goes first (held until the body's
    /// first bytes join it), the wait for each data block starts, and what the client
    /// pipelined behind DATA is handed back, to be fed as body (RFC 2920 forbids sending it
    /// early; some clients do).
    pub(crate) fn begin_body(
        &mut self,
        header: Option<String>,
        data_block: Duration,
        now: Instant,
    ) -> BytesMut {
        self.body_done = false;
        if let Some(header) = header {
            self.write(Leg::Backend, header.as_bytes());
            self.hold_backend = true;
        }
        self.timers.set(Timer::Client, now + data_block);
        self.client_in.take_remaining()
    }

    /// When the session began.
    pub(crate) fn started(&self) -> Instant {
        self.started.0
    }

    /// The wall clock at `now` (time is passed in; the session only knows when it began).
    pub(crate) fn wall(&self, now: Instant) -> SystemTime {
        self.started.1 + now.saturating_duration_since(self.started.0)
    }

    /// The Received header of a message from this client (RFC 5321 §4.4): its HELO name and
    /// address, our name, the protocol, TLS details when there are any.
    pub(crate) fn received_header(
        &self,
        hostname: &str,
        tls: Option<&TlsInfo>,
        authenticated: bool,
        now: Instant,
    ) -> String {
        super::received::header(
            self.helo.as_ref().map(|h| &*h.0),
            self.peer,
            hostname,
            tls,
            self.helo.as_ref().is_some_and(|h| h.1),
            authenticated,
            self.wall(now),
        )
    }

    /// Queue a control action after everything written so far.
    pub(crate) fn control(&mut self, action: Action) {
        self.flush(false);
        self.actions.push_back(action);
    }

    /// Turn what is queued for each leg into write actions (client first: a reply is never
    /// held back behind a large body write): before a control action, and when the actions
    /// are polled (see [`Conn::poll_action`] for `hold_replies`).
    fn flush(&mut self, hold_replies: bool) {
        for leg in [Leg::Client, Leg::Backend] {
            let held = match leg {
                Leg::Client => hold_replies && self.out[leg.index()].len() < MAX_HELD_REPLIES,
                Leg::Backend => self.hold_backend,
            };
            let out = &mut self.out[leg.index()];
            if !out.is_empty() && !held {
                let bytes = out.split().freeze();
                // The write frees what it took once done, and the next reply reuses the
                // buffer: one allocation per session. A large reply (an EHLO reply) is not
                // kept for that, so that an idle session holds no more than a short reply's.
                // (The backend leg's body has its own rule, below.)
                if leg == Leg::Client && bytes.len() > KEEP_WRITTEN {
                    *out = BytesMut::new();
                }
                self.actions.push_back(Action::Write(leg, bytes));
            }
            if leg == Leg::Backend && self.body_done && out.is_empty() {
                // What `split` left is the rest of the body's buffer (up to BODY_BATCH): the
                // write takes the allocation along and frees it once done.
                self.body_done = false;
                *out = BytesMut::new();
            }
        }
    }

    /// The room a leg's buffer holds, used or not.
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self, leg: Leg) -> usize {
        self.out[leg.index()].capacity()
    }

    /// Whether a leg's buffer holds (a share of) an allocation: not its capacity, which is
    /// none once a write took all of it, while the rest of the allocation is still its.
    #[cfg(test)]
    pub(crate) fn holds_buffer(&self, leg: Leg) -> bool {
        self.out[leg.index()].as_ptr() != BytesMut::new().as_ptr()
    }

    /// Drop a leg's connection without a word; nothing still queued for it is sent.
    pub(crate) fn abort(&mut self, leg: Leg) {
        self.out[leg.index()].clear();
        if leg == Leg::Backend {
            self.hold_backend = false;
        }
        self.control(Action::Abort(leg));
    }

    /// Close both legs after what is queued; every timer stops. Idempotent. The client's
    /// connection lingers unless the client said QUIT or shut down its side (see
    /// [`Action::Close`]).
    pub(crate) fn close(&mut self) {
        self.close_with(!self.client_eof);
    }

    /// The client said QUIT and its `221` is queued: nothing more comes from it, so the close
    /// does not linger.
    pub(crate) fn close_after_quit(&mut self) {
        self.close_with(false);
    }

    fn close_with(&mut self, linger: bool) {
        if !self.closed {
            self.control(Action::Close { linger });
            self.closed = true;
            self.timers.stop_all();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Count a protocol error; at the limit the client is told so and the session closes.
    /// Returns whether the session goes on. Every path that counts an error comes here.
    pub(crate) fn count_error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= self.max_errors {
            self.send("421 4.7.0 Too many errors, closing connection");
            self.close();
            return false;
        }
        true
    }

    /// A delivered message resets the error count (SPEC §4).
    pub(crate) fn reset_errors(&mut self) {
        self.errors = 0;
    }

    /// Shutdown: `421 4.3.2` and close.
    pub(crate) fn shutdown_now(&mut self) {
        self.send("421 4.3.2 Service shutting down");
        self.close();
    }
}

/// The most reply octets held for a pipelined batch (see [`Conn::poll_action`]): an envelope
/// of dozens of recipients, far less than a client that streams commands could pile up.
const MAX_HELD_REPLIES: usize = 4096;

/// A reply written longer than this does not leave its buffer to the client leg for the next
/// one ([`Conn::flush`]): an idle session (workload C) would hold the largest reply of its life,
/// its EHLO reply, to the end.
pub(crate) const KEEP_WRITTEN: usize = 128;

/// Drained queues give their memory back: an idle session holds no queue buffer (DESIGN.md
/// §5), at the price of one allocation when the next batch begins.
fn release<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}

/// Bytes of a BDAT chunk being skipped (RFC 3030 §2: the chunk is data, not commands): how
/// many of `data` are the chunk's, and whether it is now all read.
pub(crate) fn skip_chunk(remaining: &mut u64, data: &[u8]) -> (usize, bool) {
    let n = usize::try_from(*remaining)
        .unwrap_or(usize::MAX)
        .min(data.len());
    *remaining -= n as u64;
    (n, *remaining == 0)
}
