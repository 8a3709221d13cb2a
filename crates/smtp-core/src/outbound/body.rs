//! The message body: streamed from the legacy MTA through the reframer to the next hop, so
//! the next hop receives canonical CRLF, correctly dot-stuffed SMTP with one end of data,
//! exactly as inbound. A message refused mid-stream, or whose next hop was lost, is answered
//! after the client's real end of data, never with 250.

use std::time::Instant;

use super::state::{HopState, Mode, Pending, Phase};
use super::Session;
use crate::data::Reframer;
use crate::session::{skip_chunk, Event, Leg, ReplyTo};
use crate::timer::Timer;

impl Session {
    pub(super) fn enter_data(&mut self, now: Instant) {
        self.mode = Mode::Data(Box::new(Reframer::new(
            self.cfg.bare_newlines,
            self.cfg.long_lines,
            self.cfg.max_message_size,
        )));
        let header = self.cfg.received_header.then(|| {
            let authenticated = false;
            self.conn
                .received_header(&self.cfg.hostname, None, authenticated, now)
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

    /// A client that shut down mid-body cannot finish its message.
    pub(super) fn body_cut_short(&mut self, now: Instant) {
        if self.conn.client_eof && matches!(self.mode, Mode::Data(_) | Mode::SkipBdat { .. }) {
            use crate::session::Machine;
            self.handle_lost(Leg::Client, now);
        }
    }

    /// Feed body bytes; returns how many were part of the body.
    pub(super) fn feed_body(&mut self, data: &[u8], now: Instant) -> usize {
        self.conn
            .timers
            .set(Timer::Client, now + self.cfg.timeouts.data_block);
        match &mut self.mode {
            Mode::Data(reframer) => {
                let clean_before = reframer.violation().is_none();
                let fed = self.conn.relay_body(reframer, data);
                if clean_before && reframer.violation().is_some() {
                    // The next hop must discard the partial message: its connection is
                    // reset, and the rest of the body goes nowhere.
                    self.abort_hop_message();
                }
                if self.hop.state == HopState::None {
                    self.conn.out(Leg::Backend).clear();
                }
                if fed.finished {
                    self.finish_data(now);
                }
                fed.consumed
            }
            Mode::SkipBdat { remaining } => {
                let (n, done) = skip_chunk(remaining, data);
                if done {
                    self.conn
                        .send("502 5.5.1 BDAT not supported (CHUNKING not offered)");
                    self.expect_command(now);
                }
                n
            }
            _ => 0,
        }
    }

    fn abort_hop_message(&mut self) {
        self.note_hop_tls();
        self.conn.abort(Leg::Backend);
        self.hop = Default::default();
        self.conn.backend_in.clear();
        self.conn.timers.stop(Timer::Backend);
    }

    fn finish_data(&mut self, now: Instant) {
        let Mode::Data(reframer) = std::mem::replace(&mut self.mode, Mode::Commands) else {
            return;
        };
        self.conn.replying_to = ReplyTo::DataEnd;
        let reply = match reframer.violation() {
            None if self.hop.state == HopState::Ready => {
                let bytes = reframer.received();
                self.mode = Mode::Await(Pending::EndOfData { bytes });
                self.conn.timers.stop(Timer::Client);
                self.conn
                    .timers
                    .set(Timer::Backend, now + self.cfg.timeouts.backend_reply);
                return;
            }
            None => {
                self.message_event(Event::MessageFailed);
                self.end_transaction();
                self.conn
                    .send("451 4.4.2 Next hop lost mid-message, try again later");
                return self.expect_command(now);
            }
            Some(violation) => {
                let (reason, reply) = violation.refusal();
                self.policy_rejection(reason);
                reply
            }
        };
        self.message_event(Event::MessageRejected);
        self.end_transaction();
        self.conn.send(reply);
        self.expect_command(now);
    }

    /// A message that was streaming, or waiting for the next hop's verdict, is lost: the
    /// client was never told 250 and will retry. The next hop must discard it.
    pub(super) fn fail_message_in_flight(&mut self) {
        if matches!(
            self.mode,
            Mode::Data(_) | Mode::Await(Pending::EndOfData { .. })
        ) {
            self.message_event(Event::MessageFailed);
        }
        if matches!(self.mode, Mode::Data(_)) && self.hop.state != HopState::None {
            self.abort_hop_message();
        }
        if matches!(self.phase, Phase::ExpectRcpt(_)) {
            self.phase = Phase::ExpectMail;
        }
    }
}
