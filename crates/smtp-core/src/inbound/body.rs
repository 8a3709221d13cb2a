//! The message body of a session: entering DATA (with the Received header), streaming through
//! the reframer, and what a refused message does to the backend connection.

use std::time::Instant;

use super::{Backend, Event, Mode, Pending, Phase, Session};
use crate::data::Reframer;
use crate::session::{skip_chunk, ReplyTo};
use crate::timer::Timer;

impl Session {
    pub(super) fn enter_data(&mut self, now: Instant) {
        self.mode = Mode::Data(Box::new(Reframer::new(
            self.cfg.bare_newlines,
            self.cfg.long_lines,
            self.cfg.max_message_size,
        )));
        let header = self.cfg.received_header.then(|| {
            let authenticated = self.auth.is_authenticated();
            self.conn
                .received_header(&self.cfg.hostname, self.tls.as_ref(), authenticated, now)
        });
        let rest = self
            .conn
            .begin_body(header, self.cfg.timeouts.data_block, now);
        if !rest.is_empty() {
            let used = self.feed_body(&rest, now);
            self.conn.client_in.push(&rest[used..]);
        }
        self.body_cut_short(now);
    }

    /// A client that shut down its side before the rest of a body it still owes is gone.
    pub(super) fn body_cut_short(&mut self, now: Instant) {
        if self.conn.client_eof && matches!(self.mode, Mode::Data(_) | Mode::SkipBdat { .. }) {
            self.handle_client_lost(now);
        }
    }

    /// Feed message bytes (DATA body or a BDAT chunk being skipped); returns bytes consumed.
    pub(super) fn feed_body(&mut self, data: &[u8], now: Instant) -> usize {
        self.conn
            .timers
            .set(Timer::Client, now + self.cfg.timeouts.data_block);
        match &mut self.mode {
            Mode::Data(reframer) => {
                let clean_before = reframer.violation().is_none();
                let fed = self.conn.relay_body(reframer, data);
                if clean_before && reframer.violation().is_some() {
                    self.abort_backend_message();
                }
                if fed.finished {
                    self.finish_data(now);
                }
                fed.consumed
            }
            Mode::SkipBdat { remaining, reply } => {
                let reply = *reply;
                let (n, done) = skip_chunk(remaining, data);
                if done {
                    self.send(reply);
                    self.expect_command(now);
                }
                n
            }
            _ => 0,
        }
    }

    /// A message is refused mid-stream: the backend must never see its end of data, so its
    /// connection is dropped (it discards the partial message) and a new one is opened for
    /// the rest of the session. Past the session's replacements there is no new one: the
    /// client still gets its refusal at its end of data, then `421`.
    pub(super) fn abort_backend_message(&mut self) {
        if !self.replace_backend() {
            self.drop_backend();
        }
    }

    pub(super) fn finish_data(&mut self, now: Instant) {
        let Mode::Data(reframer) = std::mem::replace(&mut self.mode, Mode::Commands) else {
            return;
        };
        self.conn.replying_to = ReplyTo::DataEnd;
        match reframer.violation() {
            None => {
                let bytes = reframer.received();
                self.mode = Mode::Await(Pending::EndOfData { bytes });
                self.conn
                    .timers
                    .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
                self.conn.timers.stop(Timer::Client);
                return;
            }
            Some(violation) => {
                let (reason, reply) = violation.refusal();
                self.policy_rejection(reason);
                self.send(reply);
            }
        }
        self.conn.event(Event::MessageRejected);
        self.phase = Phase::ExpectMail;
        if self.backend == Backend::Gone {
            self.send("421 4.7.0 Too many refused messages, closing connection");
            return self.close();
        }
        self.expect_command(now);
    }
}
