//! Server replies (RFC 5321 §4.2): a streaming parser for what the backend sends, bounded in
//! line length and line count because the backend may be hostile or broken, and the serialiser
//! for every reply the client receives.
//!
//! The parser is two-phase like the command path: find a complete line within
//! [`MAX_REPLY_LINE`] with `memchr`, then parse it with nom. Lines of a multi-line reply are
//! taken out of the byte buffer as they complete, so raw bytes held stay within one line cap
//! plus one push, and the parsed lines of a reply in progress within [`MAX_REPLY_LINES`].

use std::borrow::Cow;

use bytes::{Buf, BytesMut};
use nom::branch::alt;
use nom::bytes::complete::take_while_m_n;
use nom::character::complete::char;
use nom::combinator::{eof, rest, value, verify};
use nom::{IResult, Parser};

/// Longest reply line accepted from a backend, CRLF included.
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 128;
/// A reply longer than this leaves the parser's buffer freed ([`ReplyParser::next_reply`]).
pub(crate) const KEEP_READ: usize = 128;

/// The success codes of a command (RFC 5321 §4.3.2), for [`answers`].
pub mod success {
    /// HELO and EHLO, MAIL, RSET, the end of data.
    pub const OK: &[u16] = &[250];
    /// RCPT: `251`, the recipient is not local and will be forwarded (§3.4).
    pub const RCPT: &[u16] = &[250, 251];
    /// DATA: go ahead with the body.
    pub const DATA: &[u16] = &[354];
    /// AUTH: done, or the next challenge (RFC 4954 §4).
    pub const AUTH: &[u16] = &[235, 334];
}

/// Whether `code` can answer a command whose success codes are `success`: one of them, or a
/// refusal (`4xx`, `5xx`). Anything else is the server breaking the protocol, in either
/// direction: a `250` to DATA would have the client send its body as commands, and another
/// `2xx` (`221`, the server closing) accepts no message, sender or recipient, though a client
/// takes any `2xx` for acceptance.
pub fn answers(success: &[u16], code: u16) -> bool {
    success.contains(&code) || matches!(code / 100, 4 | 5)
}

/// One reply: a three-digit code and one text per line (text without the code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }
    /// 2xx
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// In an EHLO reply, what follows the extension `keyword` (ASCII case-insensitive) on its
    /// line, `""` when nothing does; `None` when no line after the first names it.
    pub fn extension(&self, keyword: &str) -> Option<&str> {
        self.lines.iter().skip(1).find_map(|line| {
            let line = line.trim_ascii();
            let word = line.split_ascii_whitespace().next()?;
            word.eq_ignore_ascii_case(keyword)
                .then(|| line[word.len()..].trim_ascii_start())
        })
    }
    /// Append the wire form: `code-text` CRLF for every line but the last, `code text` CRLF
    /// for the last (`code` CRLF when a text is empty). A reply without lines is written as
    /// `code` CRLF.
    ///
    /// Control characters in a text (CR, LF, NUL, HTAB...) are written as spaces: texts come
    /// from backends and from configuration, and a reply must never be able to end a line
    /// early and inject another one.
    pub fn write_to(&self, out: &mut BytesMut) {
        let mut digits = [0; 5];
        let code = decimal(self.code, &mut digits);
        let last = self.lines.len().saturating_sub(1);
        // Room for all of it at once: a multi-line reply (an EHLO reply) would otherwise grow
        // the buffer line by line, each time to twice its size, and an idle session keeps the
        // buffer its last reply took.
        let texts: usize = self.lines.iter().map(|t| code.len() + 3 + t.len()).sum();
        out.reserve(texts.max(code.len() + 2));
        if self.lines.is_empty() {
            out.extend_from_slice(code);
            out.extend_from_slice(b"\r\n");
        }
        for (n, text) in self.lines.iter().enumerate() {
            out.extend_from_slice(code);
            // RFC 5321 §4.2.1: "-" continues a multi-line reply, SP ends it.
            if n < last {
                out.extend_from_slice(b"-");
            } else if !text.is_empty() {
                out.extend_from_slice(b" ");
            }
            let control = |b: u8| b < 0x20 || b == 0x7f;
            if text.bytes().any(control) {
                out.extend(text.bytes().map(|b| if control(b) { b' ' } else { b }));
            } else {
                out.extend_from_slice(text.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line")]
    Syntax,
    #[error("reply code changed inside a multi-line reply")]
    InconsistentCode,
}

/// Incremental parser: push bytes as they arrive, take complete replies out.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// Raw bytes not yet split into lines.
    buf: BytesMut,
    /// Bytes at the front of `buf` already searched for LF (a slow backend must not cost a
    /// rescan per byte).
    scanned: usize,
    /// The lines of a multi-line reply seen so far.
    partial: Option<Reply>,
    /// Wire bytes of the lines in `partial`, for `buffered`.
    partial_bytes: usize,
    /// Set on the first error; the parser then holds nothing and reports it again.
    failed: Option<ReplyError>,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes from the backend. After an error they are dropped.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed. After an error the parser
    /// is unusable (the backend connection must be dropped).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        loop {
            let Some(lf) =
                memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|i| i + self.scanned)
            else {
                if self.buf.is_empty() {
                    // Give the allocation back between replies.
                    self.buf = BytesMut::new();
                }
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(self.fail(ReplyError::LineTooLong));
                }
                return Ok(None);
            };
            let len = lf + 1;
            if len > MAX_REPLY_LINE {
                return Err(self.fail(ReplyError::LineTooLong));
            }
            self.scanned = 0;
            // RFC 5321 §4.2 wants CRLF; a legacy backend's bare LF is accepted because the
            // client only ever sees our re-serialised form.
            let line = self.buf[..lf]
                .strip_suffix(b"\r")
                .unwrap_or(&self.buf[..lf]);
            let Ok((_, (code, more, text))) = reply_line(line) else {
                return Err(self.fail(ReplyError::Syntax));
            };
            // HTAB is tolerated in texts (some servers align with it); any other control
            // character, a bare CR above all, is not text.
            if text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(self.fail(ReplyError::Syntax));
            }
            let text = lossy_utf8(text);
            // The line is copied out: moving past it keeps one buffer (splitting it off would
            // make the buffer shared, an allocation per reply).
            self.buf.advance(len);
            let reply = match self.partial.take() {
                None => Reply {
                    code,
                    lines: vec![text],
                },
                Some(reply) if reply.code != code => {
                    return Err(self.fail(ReplyError::InconsistentCode));
                }
                // Checked before the line is stored: a 20,000-line EHLO reply stops here, at
                // the cap, whatever the backend has already sent.
                Some(reply) if reply.lines.len() >= MAX_REPLY_LINES => {
                    return Err(self.fail(ReplyError::TooManyLines));
                }
                Some(mut reply) => {
                    reply.lines.push(text);
                    reply
                }
            };
            if !more {
                // A long reply's buffer is given back now rather than at the next reply's
                // bytes: it is an EHLO reply, and the session may wait long for its client.
                if self.buf.is_empty() && self.partial_bytes + len > KEEP_READ {
                    self.buf = BytesMut::new();
                }
                self.partial_bytes = 0;
                return Ok(Some(reply));
            }
            self.partial_bytes += len;
            self.partial = Some(reply);
        }
    }

    /// Bytes held that do not yet form a complete reply: raw bytes not yet split into lines
    /// (at most [`MAX_REPLY_LINE`] + one push) plus the wire size of the lines of a multi-line
    /// reply in progress (at most [`MAX_REPLY_LINES`] lines). Zero after an error.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.partial_bytes
    }

    /// Whether its buffer holds an allocation. Not its capacity: a buffer read to its end
    /// has none left, and still holds the allocation it was read from. An empty `BytesMut`
    /// that holds none points where every empty one does.
    #[cfg(test)]
    pub(crate) fn holds_allocation(&self) -> bool {
        self.buf.as_ptr() != BytesMut::new().as_ptr()
    }

    /// Forget everything (a new backend connection).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Record `err`, drop everything held, and hand `err` back.
    fn fail(&mut self, err: ReplyError) -> ReplyError {
        *self = Self {
            failed: Some(err.clone()),
            ..Self::default()
        };
        err
    }
}

/// `text` fit for a reply line we write: printable ASCII and spaces (anything else `?`), at
/// most `max` characters. Certificate text in our own replies, a next hop's words passed to
/// the legacy MTA: whoever chose it, the peer reading it gets what SMTP allows. Borrowed when
/// it already is (the common case: no copy of every relayed line).
pub(crate) fn printable_text(text: &str, max: usize) -> Cow<'_, str> {
    let printable = |c: char| c == ' ' || c.is_ascii_graphic();
    if text.len() <= max && text.chars().all(printable) {
        return text.into();
    }
    let clean: String = text
        .chars()
        .take(max)
        .map(|c| if printable(c) { c } else { '?' })
        .collect();
    clean.into()
}

/// `n` in decimal, in the end of `digits`.
fn decimal(mut n: u16, digits: &mut [u8; 5]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[start..];
        }
    }
}

/// `text` as UTF-8, each invalid sequence replaced by `?`. Not U+FFFD: that is three bytes for
/// as little as one, so a line just within [`MAX_REPLY_LINE`] would be re-serialised past
/// it, and the client's own parser (with a cap like ours) could refuse it.
fn lossy_utf8(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for chunk in text.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push('?');
        }
    }
    out
}

/// `code ( "-" / SP / end ) text` (RFC 5321 §4.2): returns the code, whether more lines
/// follow, and the raw text.
fn reply_line(line: &[u8]) -> IResult<&[u8], (u16, bool, &[u8])> {
    // RFC 5321 §4.2: `%x32-35 %x30-35 %x30-39`: the first digit is 2 to 5 for every reply
    // a client may see, the second 0 to 5 (its categories); anything else is no reply.
    let code = verify(
        take_while_m_n(3, 3, |b: u8| b.is_ascii_digit()),
        |d: &[u8]| matches!(d, [b'2'..=b'5', b'0'..=b'5', _]),
    );
    let code = code.map(|d: &[u8]| {
        d.iter()
            .fold(0u16, |acc, &b| acc * 10 + u16::from(b - b'0'))
    });
    let separator = alt((
        value(true, char('-')),
        value(false, char(' ')),
        value(false, eof),
    ));
    (code, separator, rest).parse(line)
}

#[cfg(test)]
mod tests;
