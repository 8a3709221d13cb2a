//! Sans-IO SMTP protocol core of smtp-sidecar.
//!
//! Everything that decides what bytes go where lives here, with no sockets, no tokio and no
//! clock: bytes and time go in through `handle_*` methods, what to do comes out of `poll_*`.
//! The drivers in the `smtp-sidecar` crate only move bytes between sockets and this crate.
//!
//! | module | owns |
//! |---|---|
//! | [`line`] | the bounded line splitter for command lines |
//! | [`command`] | nom parser and serialiser for client commands |
//! | [`reply`] | streaming nom parser and serialiser for server replies, with caps |
//! | [`ehlo`] | the EHLO capability rewrite (allow-list) |
//! | [`idn`] | the A-labels a non-ASCII domain maps to, for policy matching |
//! | [`date`] | calendar dates (RFC 5322, RFC 3339) from a time passed in |
//! | `params` | MAIL/RCPT parameter rules: what a client may send, given what it was offered |
//! | [`data`] | the DATA reframer: dot-stuffing, bare CR/LF, NUL, end-of-data |
//! | [`session`] | what both directions share: legs, actions, events, the [`session::Machine`] a driver runs, the connection part (buffers, queues, timers, errors), protocol log, Received header |
//! | [`inbound`] | the terminate-mode session state machine |
//! | [`testing`] | an in-memory client/backend harness with a virtual clock |
//! | [`timer`] | the timer table: a deadline per [`timer::Timer`], the earliest reported |
#![forbid(unsafe_code)]

pub mod command;
pub mod data;
pub mod date;
pub mod ehlo;
pub mod idn;
pub mod inbound;
pub mod line;
pub mod outbound;
mod params;
pub mod reply;
pub mod session;
pub mod testing;
pub mod timer;

#[cfg(test)]
mod proptest_support;
