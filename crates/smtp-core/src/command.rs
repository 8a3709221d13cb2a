//! Client commands: a nom parser over one complete line (phase two of the two-phase parse)
//! and the serialiser that produces what the backend receives. The backend never sees the
//! client's raw bytes, only what [`Command::write_to`] writes.

use bytes::BytesMut;

/// The command verbs the sidecar knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    StartTls,
    Auth,
    Vrfy,
    Expn,
    Help,
    Etrn,
}

/// An ESMTP parameter of MAIL or RCPT (RFC 5321 §4.1.2 esmtp-param).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// As the client sent it; compare case-insensitively.
    pub keyword: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO with the client's domain or address literal.
    Ehlo(String),
    Helo(String),
    /// `from` is the path between `<` and `>`; empty for the null reverse-path `<>`.
    Mail { from: String, params: Vec<Param> },
    Rcpt { to: String, params: Vec<Param> },
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    StartTls,
    /// `initial` is the SASL initial response (RFC 4954), `=` included if sent.
    Auth { mechanism: String, initial: Option<String> },
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    Etrn(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a verb we know: `500 5.5.1`.
    #[error("command unrecognized")]
    Unknown,
    /// A known verb with bad arguments: `501 5.5.4` (e.g. STARTTLS with an argument).
    #[error("syntax error in parameters or arguments")]
    Syntax(Verb),
}

/// Parse one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let _ = line;
    todo!()
}

impl Command {
    pub fn verb(&self) -> Verb {
        todo!()
    }
    /// Append the canonical form, CRLF included.
    pub fn write_to(&self, out: &mut BytesMut) {
        let _ = out;
        todo!()
    }
    /// The longest line this verb may have (CRLF included): [`crate::line::MAX_EXTENDED_LINE`]
    /// for MAIL/RCPT with parameters and AUTH, else [`crate::line::MAX_COMMAND_LINE`].
    pub fn max_line_len(&self) -> usize {
        todo!()
    }
}
