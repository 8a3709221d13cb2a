//! The DATA reframer (RFC 5321 §4.1.1.4, §4.5.2): turns what a client sends after `354` into
//! canonical SMTP for the backend. End-of-data is CRLF `.` CRLF and nothing else; bare CR, bare
//! LF and NUL never reach the backend; dot-stuffing is carried exactly.

use bytes::BytesMut;

/// `policy.bare_newlines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewlines {
    /// Refuse the message (`550 5.6.11`) once the real end of data arrives.
    Reject,
    /// Turn bare LF / bare CR into CRLF, drop NUL, dot-stuff any `.` line that creates.
    Normalize,
}

/// Why a message is refused; once set, no more output is produced for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Bare LF or bare CR under `Reject`.
    BareNewline,
    /// A NUL byte under `Reject`.
    Nul,
    /// More than `max_size` octets.
    TooBig,
}

/// Result of one [`Reframer::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes consumed. Less than the input only when the end of data was found: the
    /// rest belongs to the command stream.
    pub consumed: usize,
    /// The end of data (CRLF.CRLF) was consumed.
    pub finished: bool,
}

#[derive(Debug)]
pub struct Reframer {
    _todo: (),
}

impl Reframer {
    /// `max_size`: the most body octets (as received, before the end-of-data line) accepted.
    pub fn new(mode: BareNewlines, max_size: u64) -> Self {
        let _ = (mode, max_size);
        todo!()
    }
    /// Consume client bytes, appending canonical output to `out`. On the end of data, appends
    /// the terminating `.` CRLF (preceded by a CRLF if the body did not end with one) unless a
    /// violation was found. After a violation nothing more is appended, but input is still
    /// scanned for the real end of data.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Fed {
        let _ = (input, out);
        todo!()
    }
    pub fn violation(&self) -> Option<Violation> {
        todo!()
    }
    /// Octets of body received so far (as the client sent them, end-of-data line excluded).
    pub fn received(&self) -> u64 {
        todo!()
    }
}
