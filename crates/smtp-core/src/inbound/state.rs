//! The session's private state: where the dialogue stands ([`Phase`]), what the session is
//! doing right now ([`Mode`]), the command waiting for the backend's reply ([`Pending`]) and
//! the backend connection's state ([`Backend`], [`Replay`]).

use crate::data::Reframer;
use crate::params::MailParams;
use crate::reply::{self, success};

/// Where the SMTP dialogue stands (RFC 5321 §4.1.4 ordering). Named for what the session
/// expects next, as rustls names its handshake states.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    ExpectEhlo,
    ExpectMail,
    ExpectRcpt(Transaction),
}

/// What a transaction keeps between MAIL and the end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Transaction {
    pub(super) mail: MailParams,
    /// Recipients the backend accepted.
    pub(super) rcpts: u32,
    /// Recipients refused by us for being over `max_recipients`.
    pub(super) over_limit: u32,
    /// The sender's domain is `cfg.domain_secure[i]` and the session met Domain Security
    /// for it (never set when a refusal was let through in audit mode).
    pub(super) secure: Option<usize>,
}

/// A command forwarded to the backend whose reply we wait for.
#[derive(Debug)]
pub(super) enum Pending {
    Ehlo {
        name: String,
        esmtp: bool,
    },
    Mail {
        mail: MailParams,
        secure: Option<usize>,
    },
    Rcpt,
    Data,
    EndOfData {
        bytes: u64,
    },
    Rset,
    Auth,
    /// XCLIENT, sent after the first HELO/EHLO reply of a backend connection that offers
    /// it; on its new greeting the client's HELO/EHLO is sent again.
    Xclient {
        name: String,
        esmtp: bool,
    },
    Other,
}

impl Pending {
    /// Whether `code` can answer this command ([`reply::answers`]): anything else is a
    /// backend protocol violation, never passed to the client.
    pub(super) fn expects(&self, code: u16) -> bool {
        let ok = match self {
            Pending::Data => success::DATA,
            Pending::Auth => success::AUTH,
            Pending::Ehlo { .. }
            | Pending::Mail { .. }
            | Pending::EndOfData { .. }
            | Pending::Rset => success::OK,
            Pending::Rcpt => success::RCPT,
            // XCLIENT's is a new greeting (`220`); VRFY, EXPN, HELP, NOOP and the rest each
            // have their own.
            Pending::Xclient { .. } | Pending::Other => return matches!(code / 100, 2 | 4 | 5),
        };
        reply::answers(ok, code)
    }
}

#[derive(Debug)]
pub(super) enum Mode {
    /// Waiting for the backend's greeting before ours.
    Starting,
    Commands,
    Await(Pending),
    Data(Box<Reframer>),
    /// Discarding the chunk of a BDAT we do not carry, then answering `reply`.
    SkipBdat {
        remaining: u64,
        reply: &'static str,
    },
    /// AUTH: the next client line is a SASL response, not a command (RFC 4954 §4).
    AuthLine,
    AwaitTls,
}

/// The backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    /// Not connected yet, and not to be before it is needed: a session started under a
    /// handshake flood ([`super::Session::new_deferred`]). Its greeting is ours at once, and
    /// its EHLO before STARTTLS is answered from the backend's EHLO reply the caller knows;
    /// the connection is opened once TLS is up, or for the first command that needs it.
    Deferred,
    Connecting,
    Greeting,
    /// Greeted: setting up TLS to the backend (`hop.starttls`).
    Securing(Secure),
    /// Reconnected: bringing the new connection back to where the client is.
    Replaying(Replay),
    Ready,
    Gone,
}

/// A step of bringing a new backend connection back to where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Our HELO/EHLO replay is in flight.
    Helo,
    /// XCLIENT after the replayed HELO/EHLO; the HELO/EHLO is sent again after its greeting.
    Xclient,
    /// The AUTH exchange is being replayed; `next` is the next recorded client line.
    Auth { next: usize },
}

/// A step of setting up TLS on a new backend connection (`hop.starttls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Secure {
    /// Our EHLO, to see STARTTLS offered.
    Ehlo,
    /// STARTTLS is in flight.
    StartTls,
    /// The driver is doing the handshake; the backend may send nothing meanwhile.
    Handshake,
}
