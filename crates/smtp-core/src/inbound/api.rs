//! The policy a terminate listener hands each session ([`Config`]). The actions and events a
//! session gives back are the shared ones of [`crate::session`].

use crate::data::{BareNewlines, LongLines};
use crate::session::Timeouts;

/// What a listener's policy allows, fixed for the life of a session.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our name: greeting, EHLO reply, Received header.
    pub hostname: String,
    /// STARTTLS can be offered (a STARTTLS listener with a certificate).
    pub starttls: bool,
    pub require_tls: bool,
    pub auth_requires_tls: bool,
    pub bare_newlines: BareNewlines,
    /// Body lines over 998 octets: folded or refused (RFC 5322 §2.1.1).
    pub long_lines: LongLines,
    pub received_header: bool,
    pub max_message_size: u64,
    pub max_recipients: u32,
    /// Consecutive protocol errors before `421 4.7.0` (SPEC §4; reset by a delivered message).
    pub max_errors: u32,
    /// `domain_secure`: sender domains that need a verified client certificate naming them,
    /// as configured (compared ASCII case-insensitively).
    pub domain_secure: Vec<String>,
    /// What a Domain Security refusal answers: `450 4.7.1` or `550 5.7.1`.
    pub on_failure: OnFailure,
    /// `false`: audit mode; policy refusals are reported (`Event::PolicyRejection` with
    /// `enforced: false`) and the command goes through.
    pub enforce: bool,
    pub timeouts: Timeouts,
    /// How each backend connection is set up before it carries the client's dialogue.
    pub hop: Hop,
    /// Emit [`crate::session::Event::Protocol`] for every command and reply line
    /// (`log.protocol_log`).
    pub protocol_log: bool,
}

impl Config {
    /// The greeting a session opens with: `220 <hostname> ESMTP`, CRLF-terminated. An
    /// implicit-TLS listener may send it with its handshake ([`super::Session::new_greeted`]).
    pub fn greeting(&self) -> String {
        format!("220 {} ESMTP\r\n", self.hostname)
    }
}

/// `on_failure` of a terminate listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `450 4.7.1`: the sender keeps the message and retries.
    Defer,
    /// `550 5.7.1`: the sender bounces it.
    Reject,
}

/// The backend hop: what is done on each new backend connection after its greeting, before
/// the client's dialogue goes over it (the first connection and every replacement alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hop {
    /// `backend.tls: starttls`: EHLO, STARTTLS and a handshake ([`crate::session::TlsStart::Backend`]);
    /// a backend that does not offer STARTTLS, or refuses it, is a failed backend. The
    /// backend's STARTTLS is ours: the client never sees it.
    pub starttls: bool,
    /// `backend.xclient: true`: EHLO, then, when the backend offers XCLIENT, the client's
    /// address (and HELO name and protocol, once known) with the attributes it offers, and
    /// its new greeting (Postfix's XCLIENT_README). A backend without it is reported once
    /// per connection ([`crate::session::Event::XclientNotOffered`]) and used as it is.
    pub xclient: bool,
}
