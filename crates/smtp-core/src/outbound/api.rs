//! The policy an originate listener hands each session ([`Config`]): where the next hop is,
//! and the TLS level each recipient domain demands (SPEC §3, "Outbound policy levels").

use crate::data::{BareNewlines, LongLines};
use crate::session::Timeouts;

/// What an originate listener's policy allows, fixed for the life of a session.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our name: greeting, EHLO reply, our EHLO to the next hop, Received header.
    pub hostname: String,
    pub next_hop: NextHop,
    pub policy: DomainPolicy,
    /// What a policy that cannot be met answers on the RCPT: `450 4.7.5` or `550 5.7.5`.
    pub on_failure: OnFailure,
    /// `false`: audit mode; a policy that cannot be met is reported and the recipient is
    /// delivered as `may` would.
    pub enforce: bool,
    pub bare_newlines: BareNewlines,
    pub long_lines: LongLines,
    pub received_header: bool,
    pub max_message_size: u64,
    pub max_recipients: u32,
    /// Consecutive protocol errors before `421 4.7.0` (reset by a delivered message).
    pub max_errors: u32,
    /// `backend_reply` bounds each reply of the next hop.
    pub timeouts: Timeouts,
    pub protocol_log: bool,
}

/// `next_hop` of an originate listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// Resolve each recipient domain's MX (`mx`).
    Mx,
    /// A fixed relay (`"host:port"`): the driver connects to it as it connects to a backend;
    /// `host` is the name its certificate is checked against.
    Relay { host: String },
}

/// The TLS level of each recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPolicy {
    pub default: Level,
    /// Listed domains (ASCII, lower case, no trailing dot) and their level; an exact match
    /// only: a subdomain is not the domain unless listed itself.
    pub domains: Vec<(String, Level)>,
}

impl DomainPolicy {
    /// The level for a recipient domain (compared ASCII case-insensitively), and the index of
    /// the listed entry, if it is listed. A non-ASCII domain is the listed domain it maps to
    /// ([`crate::idn::ascii_forms`]), the strictest if its forms name two: the next hop (or the
    /// resolver) delivers `bücher.test` where `xn--bcher-kva.test` goes.
    pub fn level(&self, domain: &str) -> (Level, Option<usize>) {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        let listed = |name: &str| {
            self.domains
                .iter()
                .position(|(d, _)| d.eq_ignore_ascii_case(name))
        };
        let index = listed(domain).or_else(|| {
            crate::idn::ascii_forms(domain)
                .iter()
                .filter_map(|form| listed(form))
                .max_by_key(|&i| self.domains[i].1)
        });
        match index {
            Some(i) => (self.domains[i].1, Some(i)),
            None => (self.default, None),
        }
    }
}

/// Outbound TLS levels (SPEC §3), weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered; plaintext if not offered or the handshake fails.
    May,
    /// TLS required, certificate not checked.
    Encrypt,
    /// TLS required; the chain must verify against `trust` and a name must match the next
    /// hop host or the recipient domain.
    Verify,
    /// `Verify` and our client certificate presented (mutual TLS); counted as domain-secure.
    DomainSecure,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::May => "may",
            Level::Encrypt => "encrypt",
            Level::Verify => "verify",
            Level::DomainSecure => "domain-secure",
        }
    }
}

/// `on_failure` of an originate listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `450 4.7.5`: the legacy MTA keeps the message and retries.
    Defer,
    /// `550 5.7.5`: the legacy MTA bounces it now.
    Bounce,
}
