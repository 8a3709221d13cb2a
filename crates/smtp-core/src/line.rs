//! Bounded line splitter for SMTP command lines (RFC 5321 §4.5.3.1.4).
//!
//! Phase one of the two-phase parse: find a complete line within the cap, before any parser
//! sees it. Lines end at LF; the reader reports whether a CR preceded it so the session can
//! decide what to do with bare LFs. The buffer never grows past `cap` + one push: an over-long
//! line is reported once and then discarded up to and including its LF, so the session
//! resynchronises. Lines come out as [`BytesMut`] taken or split off the read buffer, without
//! copying.

use bytes::BytesMut;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest command line when the command carries ESMTP parameters or SASL data.
pub const MAX_EXTENDED_LINE: usize = 2048;

/// What [`LineReader::next_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its terminator (CRLF, or a bare LF). `crlf` is false when the
    /// LF was not preceded by CR.
    Line { line: BytesMut, crlf: bool },
    /// A line longer than the cap (terminator included); its bytes were discarded up to and
    /// including the next LF (or are being discarded until it arrives).
    TooLong,
}

/// Splits a byte stream into lines of at most `cap` bytes (terminator included).
#[derive(Debug)]
pub struct LineReader {
    buf: BytesMut,
    cap: usize,
    /// Bytes at the front of `buf` already searched for LF without finding one: a peer that
    /// trickles a line byte by byte must not make each call rescan the whole line.
    scanned: usize,
    /// Dropping an over-long line's tail until its LF arrives.
    discarding: bool,
}

impl LineReader {
    /// `cap`: the longest accepted line, terminator included.
    pub fn new(cap: usize) -> Self {
        LineReader {
            buf: BytesMut::new(),
            cap,
            scanned: 0,
            discarding: false,
        }
    }

    /// Append bytes from the peer. Callers bound how much they push (see `buffered`).
    ///
    /// While an over-long line is being discarded, bytes up to its LF are dropped here and
    /// never stored.
    pub fn push(&mut self, data: &[u8]) {
        let mut data = data;
        if self.discarding {
            match memchr::memchr(b'\n', data) {
                None => return,
                Some(lf) => {
                    data = &data[lf + 1..];
                    self.discarding = false;
                }
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete line or over-long-line report, if any.
    pub fn next_line(&mut self) -> Option<LineEvent> {
        let Some(lf) = memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|i| i + self.scanned)
        else {
            if self.buf.is_empty() {
                // Give the allocation back: an idle session should hold no buffer.
                self.buf = BytesMut::new();
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.cap {
                // Without an LF this line can only get longer: report it now rather than
                // holding a peer's unbounded line (RFC 5321 §4.5.3.1.4), then drop the rest of
                // it as it arrives.
                self.buf.clear();
                self.scanned = 0;
                self.discarding = true;
                return Some(LineEvent::TooLong);
            }
            return None;
        };
        let len = lf + 1;
        self.scanned = 0;
        if len > self.cap {
            // A complete over-long line: its LF is here, so nothing more needs discarding.
            drop(self.buf.split_to(len));
            return Some(LineEvent::TooLong);
        }
        // A line that is all that is buffered (one command per read, the usual case) takes
        // the buffer along; splitting it off would make the buffer shared, an allocation.
        let mut line = if len == self.buf.len() {
            std::mem::take(&mut self.buf)
        } else {
            self.buf.split_to(len)
        };
        let crlf = lf > 0 && line[lf - 1] == b'\r';
        line.truncate(if crlf { lf - 1 } else { lf });
        Some(LineEvent::Line { line, crlf })
    }

    /// Bytes held and not yet returned as lines. After [`LineReader::next_line`] has returned
    /// `None` this is at most `cap`, so it is at most `cap` + one push at any time.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Hand over everything buffered (e.g. body bytes pipelined after DATA) and empty the reader.
    /// A discard in progress ends: the caller owns the stream from here.
    pub fn take_remaining(&mut self) -> BytesMut {
        self.scanned = 0;
        self.discarding = false;
        std::mem::take(&mut self.buf)
    }

    /// Drop everything buffered, including a discard in progress (STARTTLS, RFC 3207 §4.2).
    pub fn clear(&mut self) {
        // A fresh buffer rather than `BytesMut::clear`: an idle session gives its memory back.
        self.buf = BytesMut::new();
        self.scanned = 0;
        self.discarding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &[u8], crlf: bool) -> LineEvent {
        LineEvent::Line {
            line: BytesMut::from(s),
            crlf,
        }
    }

    /// Push each chunk, draining after every push; returns all events in order.
    fn run(cap: usize, pushes: &[&[u8]]) -> (Vec<LineEvent>, LineReader) {
        let mut r = LineReader::new(cap);
        let mut out = Vec::new();
        for p in pushes {
            r.push(p);
            while let Some(ev) = r.next_line() {
                out.push(ev);
            }
            assert!(r.buffered() <= cap, "buffered {} > cap {cap}", r.buffered());
        }
        (out, r)
    }

    #[test]
    fn table() {
        type Case<'a> = (&'a str, usize, &'a [&'a [u8]], Vec<LineEvent>, usize);
        let cases: Vec<Case<'_>> = vec![
            (
                "crlf",
                512,
                &[b"EHLO a\r\n"],
                vec![line(b"EHLO a", true)],
                0,
            ),
            (
                "bare lf",
                512,
                &[b"EHLO a\n"],
                vec![line(b"EHLO a", false)],
                0,
            ),
            ("empty crlf", 512, &[b"\r\n"], vec![line(b"", true)], 0),
            ("empty lf", 512, &[b"\n"], vec![line(b"", false)], 0),
            (
                "cr only mid-line",
                512,
                &[b"a\rb\n"],
                vec![line(b"a\rb", false)],
                0,
            ),
            (
                "several in one push",
                512,
                &[b"A\r\nB\nC\r\nD"],
                vec![line(b"A", true), line(b"B", false), line(b"C", true)],
                1,
            ),
            ("incomplete", 512, &[b"MAIL FROM:<a>\r"], vec![], 14),
            (
                "exactly cap",
                8,
                &[b"123456\r\n"],
                vec![line(b"123456", true)],
                0,
            ),
            (
                "cap plus one",
                8,
                &[b"1234567\r\n"],
                vec![LineEvent::TooLong],
                0,
            ),
            (
                "exactly cap bare lf",
                8,
                &[b"1234567\n"],
                vec![line(b"1234567", false)],
                0,
            ),
            (
                "too long then good (resync)",
                8,
                &[b"123456789\r\nOK\r\n"],
                vec![LineEvent::TooLong, line(b"OK", true)],
                0,
            ),
            (
                "too long without lf across pushes",
                8,
                &[b"12345", b"6789", b"abcdef", b"gh\r", b"\nQUIT\r\n"],
                vec![LineEvent::TooLong, line(b"QUIT", true)],
                0,
            ),
            (
                "cap bytes without lf is not yet too long",
                8,
                &[b"12345678"],
                vec![],
                8,
            ),
            (
                "discard ends mid-push, rest kept",
                4,
                &[b"aaaaaa", b"bb\nX\r\nY"],
                vec![LineEvent::TooLong, line(b"X", true)],
                1,
            ),
        ];
        for (name, cap, pushes, want, rest) in cases {
            let (got, r) = run(cap, pushes);
            assert_eq!(got, want, "{name}");
            assert_eq!(r.buffered(), rest, "{name}: buffered");
        }
    }

    #[test]
    fn byte_by_byte() {
        let input = b"EHLO client.example\r\nMAIL FROM:<a@b>\nQUIT\r\n";
        let pushes: Vec<&[u8]> = input.chunks(1).collect();
        let (got, r) = run(512, &pushes);
        assert_eq!(
            got,
            vec![
                line(b"EHLO client.example", true),
                line(b"MAIL FROM:<a@b>", false),
                line(b"QUIT", true)
            ]
        );
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn too_long_byte_by_byte_reported_once_and_not_stored() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut r = LineReader::new(10);
        let mut events = Vec::new();
        for b in input.chunks(1) {
            r.push(b);
            while let Some(ev) = r.next_line() {
                events.push(ev);
            }
            assert!(r.buffered() <= 10);
        }
        assert_eq!(events, vec![LineEvent::TooLong, line(b"NOOP", true)]);
    }

    #[test]
    fn take_remaining_hands_over_and_empties() {
        let mut r = LineReader::new(512);
        r.push(b"DATA\r\nSubject: x\r\n\r\nbody");
        assert_eq!(r.next_line(), Some(line(b"DATA", true)));
        let rest = r.take_remaining();
        assert_eq!(&rest[..], b"Subject: x\r\n\r\nbody");
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.next_line(), None);
        r.push(b"QUIT\r\n");
        assert_eq!(r.next_line(), Some(line(b"QUIT", true)));
    }

    #[test]
    fn take_remaining_ends_discard() {
        let mut r = LineReader::new(4);
        r.push(b"123456");
        assert_eq!(r.next_line(), Some(LineEvent::TooLong));
        assert!(r.take_remaining().is_empty());
        r.push(b"ab\r\n");
        assert_eq!(r.next_line(), Some(line(b"ab", true)));
    }

    #[test]
    fn clear_during_discard() {
        let mut r = LineReader::new(4);
        r.push(b"123456");
        assert_eq!(r.next_line(), Some(LineEvent::TooLong));
        r.push(b"789");
        assert_eq!(r.buffered(), 0, "discarded bytes are never stored");
        r.clear();
        // Not discarding any more: the next line is taken as it is.
        r.push(b"OK\r\n");
        assert_eq!(r.next_line(), Some(line(b"OK", true)));
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn clear_drops_buffered_lines() {
        let mut r = LineReader::new(512);
        r.push(b"STARTTLS\r\nMAIL FROM:<evil>\r\n");
        assert_eq!(r.next_line(), Some(line(b"STARTTLS", true)));
        r.clear();
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn lines_share_the_buffer() {
        // Zero-copy: two lines of one push point into one allocation.
        let mut r = LineReader::new(512);
        r.push(b"A\r\nB\r\n");
        let (Some(LineEvent::Line { line: a, .. }), Some(LineEvent::Line { line: b, .. })) =
            (r.next_line(), r.next_line())
        else {
            panic!("expected two lines");
        };
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 3);
    }
}
