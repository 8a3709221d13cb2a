//! Authentication state of a session, and what is kept to stay authenticated at the backend
//! when its connection is replaced (after a refused message). The backend decides who may
//! relay, so a new connection must be authenticated again before the session goes on, or the
//! client would meet `530` for every MAIL while our Received header claimed ESMTPSA.
//!
//! For PLAIN and LOGIN (RFC 4616, draft-murchison-sasl-login) the client's lines do not depend
//! on anything the server sends, so the exchange is replayed as it was. Those lines hold a
//! password: they live only in the session's memory, are wiped when it ends, and never appear
//! in `Debug` output. A mechanism with a server challenge (CRAM-MD5, SCRAM) cannot be
//! replayed; such a session ends with `421 4.4.2` when its backend connection is replaced.

use zeroize::Zeroizing;

/// Lines kept of one exchange: more would be no PLAIN or LOGIN exchange.
const MAX_LINES: usize = 3;

/// One client line of an AUTH exchange, CRLF included; wiped on drop.
pub(super) struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Default)]
pub(super) enum AuthState {
    #[default]
    None,
    /// An exchange in progress: the client's lines so far, the AUTH command first.
    InProgress {
        lines: Vec<Secret>,
        replayable: bool,
    },
    /// Authenticated; `replay` is the exchange to repeat on a new backend connection, if the
    /// mechanism allows it.
    Done { replay: Option<Vec<Secret>> },
}

impl AuthState {
    /// The client sent `AUTH` (`line` as forwarded).
    pub(super) fn start(&mut self, mechanism: &str, line: &[u8]) {
        let replayable = matches!(mechanism, "PLAIN" | "LOGIN");
        *self = AuthState::InProgress {
            lines: vec![Secret(Zeroizing::new(line.to_vec()))],
            replayable,
        };
    }

    /// A SASL response line of the exchange in progress.
    pub(super) fn response(&mut self, line: &[u8]) {
        if let AuthState::InProgress { lines, replayable } = self {
            if lines.len() < MAX_LINES {
                lines.push(Secret(Zeroizing::new(line.to_vec())));
            } else {
                *replayable = false;
            }
        }
    }

    /// The backend gave its final answer to the exchange.
    pub(super) fn finish(&mut self, success: bool) {
        *self = match std::mem::take(self) {
            AuthState::InProgress { lines, replayable } if success => AuthState::Done {
                replay: replayable.then_some(lines),
            },
            _ => AuthState::None,
        };
    }

    pub(super) fn is_authenticated(&self) -> bool {
        matches!(self, AuthState::Done { .. })
    }

    /// What a new backend connection needs to be where the client is.
    pub(super) fn replay(&self) -> AuthReplay<'_> {
        match self {
            AuthState::Done {
                replay: Some(lines),
            } => AuthReplay::Lines(lines),
            AuthState::Done { replay: None } => AuthReplay::Impossible,
            _ => AuthReplay::Nothing,
        }
    }
}

/// See [`AuthState::replay`].
pub(super) enum AuthReplay<'a> {
    /// Not authenticated: nothing to replay.
    Nothing,
    Lines(&'a [Secret]),
    /// Authenticated with a mechanism that cannot be replayed.
    Impossible,
}
