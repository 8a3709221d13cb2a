//! Bounded line splitter for SMTP command lines (RFC 5321 §4.5.3.1.4).
//!
//! Phase one of the two-phase parse: find a complete line within the cap, before any parser
//! sees it. The buffer never grows past `cap` + one push: an over-long line is reported once
//! and then discarded up to and including its LF, so the session resynchronises.

use bytes::{Bytes, BytesMut};

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest command line when the command carries ESMTP parameters or SASL data.
pub const MAX_EXTENDED_LINE: usize = 2048;

/// What [`LineReader::next_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its terminator. `crlf` is false when it ended in a bare LF.
    /// `len` is the length on the wire including the terminator.
    Line { line: Bytes, crlf: bool },
    /// A line longer than the cap (terminator included); its bytes were discarded up to and
    /// including the next LF (or are being discarded until it arrives).
    TooLong,
}

#[derive(Debug)]
pub struct LineReader {
    _todo: (),
}

impl LineReader {
    /// `cap`: the longest accepted line, terminator included.
    pub fn new(cap: usize) -> Self {
        let _ = cap;
        todo!()
    }
    /// Append bytes from the peer. Callers bound how much they push (see `buffered`).
    pub fn push(&mut self, data: &[u8]) {
        let _ = data;
        todo!()
    }
    /// The next complete line or over-long-line report, if any.
    pub fn next_line(&mut self) -> Option<LineEvent> {
        todo!()
    }
    /// Bytes held and not yet returned as lines.
    pub fn buffered(&self) -> usize {
        todo!()
    }
    /// Hand over everything buffered (e.g. body bytes pipelined after DATA) and empty the reader.
    pub fn take_remaining(&mut self) -> BytesMut {
        todo!()
    }
    /// Drop everything buffered, including a discard in progress (STARTTLS, RFC 3207 §4.2).
    pub fn clear(&mut self) {
        todo!()
    }
}
