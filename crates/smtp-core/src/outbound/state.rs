//! The originate session's private state: the client dialogue ([`Phase`], [`Mode`]), the
//! transaction ([`Tx`]) and the next hop connection ([`Hop`]).

use std::collections::VecDeque;
use std::time::Instant;

use super::policy::TlsFailure;
use super::Level;
use crate::command::Command;
use crate::data::Reframer;
use crate::ehlo::Offered;
use crate::params::MailParams;
use crate::session::{Target, TlsInfo};

/// Where the client's dialogue stands (RFC 5321 §4.1.4 ordering).
#[allow(clippy::enum_variant_names)]
#[derive(Debug)]
pub(super) enum Phase {
    ExpectEhlo,
    ExpectMail,
    ExpectRcpt(Box<Tx>),
}

/// What a transaction keeps between MAIL and the end of data. MAIL is answered by us and sent
/// to the next hop only when the first recipient names the domain it goes to.
#[derive(Debug)]
pub(super) struct Tx {
    pub(super) mail: Command,
    pub(super) params: MailParams,
    /// Recipients the next hop accepted.
    pub(super) rcpts: u32,
    /// Recipients refused by us for being over `max_recipients`.
    pub(super) over_limit: u32,
    /// The recipient domain this transaction delivers to, once known.
    pub(super) route: Option<RouteInfo>,
    /// Domains whose next hop could not be used, with the reply each further recipient of
    /// theirs gets without a new attempt.
    pub(super) refused: Vec<(String, String)>,
    /// The next hop was lost after accepting recipients: the message cannot be sent in this
    /// transaction (`451 4.4.2` until the client starts another).
    pub(super) broken: bool,
}

/// The recipient domain of a transaction and its policy.
#[derive(Debug, Clone)]
pub(super) struct RouteInfo {
    /// ASCII, lower case.
    pub(super) domain: String,
    pub(super) level: Level,
    /// Index in `policy.domains` when listed.
    pub(super) listed: Option<usize>,
}

/// What the session is doing for its client right now.
#[derive(Debug)]
pub(super) enum Mode {
    Commands,
    /// A client command waits for the next hop.
    Await(Pending),
    Data(Box<Reframer>),
    /// Discarding the chunk of a BDAT we do not carry, then `502`.
    SkipBdat {
        remaining: u64,
    },
}

/// A client command waiting for the next hop.
#[derive(Debug)]
pub(super) enum Pending {
    /// The RCPT that opens the next hop session, sent once MAIL is accepted; `until`: the
    /// end of the set-up's budget ([`super::hop::SETUP_SHARE`]).
    Setup {
        rcpt: Command,
        until: Instant,
    },
    Rcpt,
    Data,
    EndOfData {
        bytes: u64,
    },
}

/// The next hop connection of the current transaction.
#[derive(Debug, Default)]
pub(super) struct Hop {
    pub(super) state: HopState,
    /// Addresses not tried yet, in preference order.
    pub(super) targets: VecDeque<Target>,
    /// The host of the current connection (MX name, or the relay), and its address (MX).
    pub(super) host: String,
    pub(super) current: Option<std::net::SocketAddr>,
    /// `may` after a failed handshake: the new connection does not ask for TLS again.
    pub(super) plain_only: bool,
    pub(super) tls: Option<TlsInfo>,
    /// What the next hop offered in its last EHLO reply.
    pub(super) offered: Offered,
    pub(super) starttls: bool,
    /// The policy was not met by this connection but let through in audit mode: never
    /// counted as domain-secure (the next address's connection starts anew).
    pub(super) audited: bool,
    /// Why the last attempt failed, for the reply when no attempt is left.
    pub(super) last_failure: Option<String>,
    /// Attempts failed in this set-up, and how many of them were addresses of the sidecar's
    /// own listeners: all of them, and the RCPT is refused as a mail loop.
    pub(super) failed: u32,
    pub(super) loops: u32,
    /// The last TLS policy failure (the next hop's name, and why), for the reply if no
    /// attempt is left.
    pub(super) policy_unmet: Option<(String, TlsFailure)>,
    /// An attempt failed before the policy could judge its next hop (unreachable, refused,
    /// lost, timed out): a policy failure of another is then no reason to bounce.
    pub(super) unjudged: bool,
    /// The end of the set-up's budget while the RCPT that opened it waits for its reply.
    pub(super) first_rcpt_until: Option<Instant>,
}

/// The next hop connection's state; the variant names what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum HopState {
    #[default]
    None,
    Resolving,
    Connecting,
    Greeting,
    Ehlo {
        after_tls: bool,
    },
    Helo,
    StartTls,
    Handshaking,
    Mail,
    /// MAIL accepted: RCPT, DATA and the body go through as the client sends them.
    Ready,
}

impl HopState {
    /// Whether a next hop connection is open: not before it is connected, nor once it is let
    /// go (a QUIT, an abort), which is when the next one may be looked up or connected.
    pub(super) fn connected(self) -> bool {
        !matches!(
            self,
            HopState::None | HopState::Resolving | HopState::Connecting
        )
    }
}
