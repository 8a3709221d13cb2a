//! The protocol log (SPEC §3 `log.protocol_log`): every command line the client sent and every
//! reply line it was sent, as [`Event::Protocol`]s for the driver to write, like Exchange's
//! verbose protocol log. Nothing is recorded unless the listener asks for it.
//!
//! Secrets never reach it: an AUTH command keeps its mechanism and loses its initial response,
//! and every SASL response line is written as `****` (RFC 4954 §4: they carry credentials).
//! Lines are logged as text with control characters replaced and a bounded length, so what a
//! client sends cannot forge or flood log lines.

use super::{Conn, Event};

/// The most characters of one line written to the log.
const MAX_LOGGED: usize = 512;

/// Which way a logged line went, from the sidecar's point of view: `<` received from the
/// client, `>` sent to it (Exchange's notation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Received,
    Sent,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Received => "<",
            Direction::Sent => ">",
        }
    }
}

impl Conn {
    /// A command line from the client, its AUTH credentials masked.
    pub(crate) fn log_command(&mut self, line: &[u8]) {
        if self.protocol_log {
            let text = loggable(&redact_auth(line));
            self.log_line(Direction::Received, text);
        }
    }

    /// A SASL response line: only that there was one.
    pub(crate) fn log_sasl_response(&mut self) {
        if self.protocol_log {
            self.log_line(Direction::Received, "****".to_owned());
        }
    }

    /// The reply lines in `bytes` (CRLF-terminated), as sent to the client.
    pub(crate) fn log_replies(&mut self, bytes: &[u8]) {
        if self.protocol_log {
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                self.log_line(Direction::Sent, loggable(line));
            }
        }
    }

    fn log_line(&mut self, direction: Direction, line: String) {
        self.event(Event::Protocol { direction, line });
    }
}

/// `AUTH <mechanism> <initial response>` becomes `AUTH <mechanism> ****`, whatever separates
/// the words; a line that is no command and could be SASL data (base64, e.g. pipelined behind
/// an AUTH that was refused) becomes `****`.
fn redact_auth(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let verb = next_word(line, 0);
    if verb.is_some_and(|(start, end)| line[start..end].eq_ignore_ascii_case(b"AUTH")) {
        let mechanism = verb.and_then(|(_, end)| next_word(line, end));
        let response = mechanism.and_then(|(_, end)| next_word(line, end));
        return match (mechanism, response) {
            (Some((_, end)), Some(_)) => [&line[..end], b" ****".as_slice()].concat().into(),
            _ => line.into(),
        };
    }
    let sasl_like = !line.is_empty()
        && line
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if sasl_like && crate::command::parse_command(line).is_err() {
        return b"****".as_slice().into();
    }
    line.into()
}

/// The next word of `line` at or after `from` (words are separated by white space and control
/// characters), as a start..end range.
fn next_word(line: &[u8], from: usize) -> Option<(usize, usize)> {
    let separator = |b: &u8| b.is_ascii_whitespace() || b.is_ascii_control();
    let start = from + line.get(from..)?.iter().position(|b| !separator(b))?;
    let len = line[start..]
        .iter()
        .position(separator)
        .unwrap_or(line.len() - start);
    Some((start, start + len))
}

/// Whether `c` must not reach a log line as it is, wherever the text came from (a command
/// line, a certificate's subject): a control character (a forged line break, a terminal
/// escape), a Unicode line or paragraph separator (a line break to many viewers and JSON
/// tools), or a bidirectional mark, override or isolate (a line that reads other than it
/// is). Such characters are written as `?`.
pub fn unsafe_in_log(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Text for the log: invalid UTF-8 and the characters of [`unsafe_in_log`] shown as `?`, at
/// most [`MAX_LOGGED`] characters (then `...`).
fn loggable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out: String = text
        .chars()
        .take(MAX_LOGGED)
        .map(|c| {
            if unsafe_in_log(c) || c == '\u{FFFD}' {
                '?'
            } else {
                c
            }
        })
        .collect();
    if text.chars().nth(MAX_LOGGED).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_secrets_are_masked() {
        assert_eq!(&*redact_auth(b"AUTH PLAIN AGEAYg=="), b"AUTH PLAIN ****");
        assert_eq!(&*redact_auth(b"auth login dXNlcg=="), b"auth login ****");
        assert_eq!(&*redact_auth(b"AUTH LOGIN"), b"AUTH LOGIN");
        assert_eq!(&*redact_auth(b"AUTH\tPLAIN\tAGEAYg=="), b"AUTH\tPLAIN ****");
        assert_eq!(&*redact_auth(b"AUTH  PLAIN  AGEAYg=="), b"AUTH  PLAIN ****");
        assert_eq!(&*redact_auth(b"dXNlcg=="), b"****");
        assert_eq!(&*redact_auth(b"QUIT"), b"QUIT");
        assert_eq!(&*redact_auth(b"MAIL FROM:<a@b>"), b"MAIL FROM:<a@b>");
    }

    #[test]
    fn a_session_is_logged_line_by_line_without_credentials() {
        use crate::inbound::Event;
        use crate::testing::{test_config, Harness};
        let mut cfg = test_config();
        cfg.auth_requires_tls = false;
        cfg.protocol_log = true;
        let mut h = Harness::greeted(cfg);
        h.exchange(
            "EHLO client.test\r\n",
            "EHLO client.test\r\n",
            "250-legacy.test\r\n250 AUTH PLAIN LOGIN\r\n",
        );
        h.exchange("AUTH LOGIN\r\n", "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
        h.exchange("dXNlcg==\r\n", "dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n");
        h.exchange("cGFzcw==\r\n", "cGFzcw==\r\n", "235 2.7.0 ok\r\n");
        h.client_says(b"AUTH PLAIN AGEAYg==\r\n");
        let log: Vec<String> = h
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Protocol { direction, line } => {
                    Some(format!("{} {line}", direction.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            log,
            [
                "> 220 mx.test ESMTP",
                "< EHLO client.test",
                "> 250-mx.test",
                "> 250-AUTH PLAIN LOGIN",
                "> 250-SIZE 36700160",
                "> 250 STARTTLS",
                "< AUTH LOGIN",
                "> 334 VXNlcm5hbWU6",
                "< ****",
                "> 334 UGFzc3dvcmQ6",
                "< ****",
                "> 235 2.7.0 ok",
                "< AUTH PLAIN ****",
                "> 503 5.5.1 Already authenticated",
            ]
        );
        // Off by default: nothing is recorded.
        let mut h = Harness::greeted(test_config());
        h.ehlo();
        assert!(!h.events.iter().any(|e| matches!(e, Event::Protocol { .. })));
    }

    #[test]
    fn lines_are_logged_as_bounded_text() {
        assert_eq!(loggable(b"EHLO a\x1b[31m\0\xff"), "EHLO a?[31m??");
        // Line separators and bidirectional controls: a line break, or text that reads
        // backwards, to a viewer.
        let tricky = "MAIL FROM:<a@b>\u{2028}x\u{2029}y\u{202E}z\u{2066}w\u{200F}v\u{85}u é";
        assert_eq!(loggable(tricky.as_bytes()), "MAIL FROM:<a@b>?x?y?z?w?v?u é");
        let long = loggable(&[b'x'; 600]);
        assert_eq!(long.len(), MAX_LOGGED + 3);
        assert!(long.ends_with("x..."));
    }
}
