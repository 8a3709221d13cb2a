//! Client commands: a nom parser over one complete line (phase two of the two-phase parse)
//! and the serialiser that produces what the backend receives. The backend never sees the
//! client's raw bytes, only what [`Command::write_to`] writes.
//!
//! The grammar is RFC 5321 §4.1.1/§4.1.2 with pragmatic leniency where real clients deviate
//! harmlessly (case-insensitive verbs, `FROM: <path>`, trailing spaces, UTF-8 per RFC 6531),
//! and strict where a lenient reading could differ from the legacy backend's: control
//! characters anywhere, missing angle brackets, over-long paths, too many parameters. The
//! argument grammars live in the private submodule `command/grammar.rs`.

use bytes::BytesMut;

use crate::line::{MAX_COMMAND_LINE, MAX_EXTENDED_LINE};

mod grammar;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

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

impl Verb {
    /// Every verb, for look-ups and tests.
    pub const ALL: [Verb; 15] = [
        Verb::Ehlo,
        Verb::Helo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Quit,
        Verb::StartTls,
        Verb::Auth,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Help,
        Verb::Etrn,
    ];

    /// The canonical (upper-case) spelling on the wire; also a bounded label for logs and
    /// metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ehlo => "EHLO",
            Verb::Helo => "HELO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Help => "HELP",
            Verb::Etrn => "ETRN",
        }
    }
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
    Mail {
        from: String,
        params: Vec<Param>,
    },
    Rcpt {
        to: String,
        params: Vec<Param>,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    StartTls,
    /// `initial` is the SASL initial response (RFC 4954), `=` included if sent.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
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
    /// MAIL or RCPT with a good path and a malformed parameter list: `501 5.5.4 Invalid
    /// parameter` (SPEC §4).
    #[error("invalid parameter")]
    Parameter(Verb),
}

/// Parse one command line (without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let (rest, verb) = grammar::verb(line).ok_or(CommandError::Unknown)?;
    // Checked before anything else looks at the arguments: a NUL or a stray CR is where a
    // legacy parser and ours would disagree (RFC 5321 §4.1.1: commands are printable text).
    if line.iter().any(|&b| is_control(b)) {
        return Err(CommandError::Syntax(verb));
    }
    // The verb ends at SP or at the end of the line (RFC 5321 §4.1.1); `DATA2` is no DATA.
    let args = match rest {
        [] => &[][..],
        [b' ', args @ ..] => args,
        _ => return Err(CommandError::Unknown),
    };
    let args = std::str::from_utf8(args).map_err(|_| CommandError::Syntax(verb))?;
    // Leniency: extra spaces around the arguments change nothing once re-serialised.
    grammar::arguments(verb, args.trim_matches(' '))
}

/// ASCII control characters: C0 and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Helo(_) => Verb::Helo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
            Command::Vrfy(_) => Verb::Vrfy,
            Command::Expn(_) => Verb::Expn,
            Command::Help(_) => Verb::Help,
            Command::Etrn(_) => Verb::Etrn,
        }
    }

    /// Append the canonical form, CRLF included.
    ///
    /// Strings are written with any control character replaced by a space, so that even a
    /// `Command` built by hand (not parsed) can never put a CR, LF or NUL on the backend's wire.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.extend_from_slice(self.verb().as_str().as_bytes());
        match self {
            Command::Ehlo(arg)
            | Command::Helo(arg)
            | Command::Vrfy(arg)
            | Command::Expn(arg)
            | Command::Etrn(arg)
            | Command::Help(Some(arg)) => {
                out.extend_from_slice(b" ");
                put_text(out, arg);
            }
            Command::Mail { from: path, params } | Command::Rcpt { to: path, params } => {
                let prefix: &[u8] = if matches!(self, Command::Mail { .. }) {
                    b" FROM:<"
                } else {
                    b" TO:<"
                };
                out.extend_from_slice(prefix);
                put_text(out, path);
                out.extend_from_slice(b">");
                for p in params {
                    out.extend_from_slice(b" ");
                    put_text(out, &p.keyword);
                    if let Some(v) = &p.value {
                        out.extend_from_slice(b"=");
                        put_text(out, v);
                    }
                }
            }
            Command::Bdat { size, last } => {
                out.extend_from_slice(b" ");
                out.extend_from_slice(size.to_string().as_bytes());
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Command::Auth { mechanism, initial } => {
                out.extend_from_slice(b" ");
                put_text(out, mechanism);
                if let Some(ir) = initial {
                    out.extend_from_slice(b" ");
                    put_text(out, ir);
                }
            }
            Command::Data
            | Command::Rset
            | Command::Noop
            | Command::Quit
            | Command::StartTls
            | Command::Help(None) => {}
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The longest line this verb may have (CRLF included): [`crate::line::MAX_EXTENDED_LINE`]
    /// for MAIL/RCPT with parameters and AUTH, else [`crate::line::MAX_COMMAND_LINE`].
    pub fn max_line_len(&self) -> usize {
        match self {
            // RFC 5321 §4.5.3.1.4 lets each extension raise the 512 limit; SASL initial
            // responses (RFC 4954 §4) routinely exceed it.
            Command::Mail { params, .. } | Command::Rcpt { params, .. } if !params.is_empty() => {
                MAX_EXTENDED_LINE
            }
            Command::Auth { .. } => MAX_EXTENDED_LINE,
            _ => MAX_COMMAND_LINE,
        }
    }
}

/// Append `s`, each ASCII control byte written as a space (ASCII bytes never occur inside a
/// UTF-8 multi-byte sequence, so the output stays valid UTF-8).
fn put_text(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| is_control(b)) {
        out.extend_from_slice(bytes);
        return;
    }
    out.extend(bytes.iter().map(|&b| if is_control(b) { b' ' } else { b }));
}
