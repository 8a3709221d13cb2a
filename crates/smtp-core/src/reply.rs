//! Server replies (RFC 5321 §4.2): a streaming parser for what the backend sends, bounded in
//! line length and line count because the backend may be hostile or broken, and the serialiser
//! for every reply the client receives.

use bytes::BytesMut;

/// Longest reply line accepted from a backend, CRLF included.
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 128;

/// One reply: a three-digit code and one text per line (text without the code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply { code, lines: vec![text.into()] }
    }
    /// 2xx
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// Append the wire form: `code-text` CRLF for every line but the last, `code text` CRLF
    /// for the last (`code` CRLF when a text is empty).
    pub fn write_to(&self, out: &mut BytesMut) {
        let _ = out;
        todo!()
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
    _todo: (),
}

impl ReplyParser {
    pub fn new() -> Self {
        todo!()
    }
    pub fn push(&mut self, data: &[u8]) {
        let _ = data;
        todo!()
    }
    /// The next complete reply, `Ok(None)` if more bytes are needed. After an error the parser
    /// is unusable (the backend connection must be dropped).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        todo!()
    }
    /// Bytes held that do not yet form a complete reply.
    pub fn buffered(&self) -> usize {
        todo!()
    }
    /// Forget everything (a new backend connection).
    pub fn clear(&mut self) {
        todo!()
    }
}
