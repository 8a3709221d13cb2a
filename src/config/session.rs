//! From a validated originate listener to the core's per-session [`smtp_core::outbound::Config`]
//! (the terminate equivalent is built in `runtime/build.rs`, where whether STARTTLS can be
//! offered is known), and the deadlines of either direction's sessions.

use smtp_core::outbound::{Config, DomainPolicy, NextHop};
use smtp_core::session::Timeouts;

use super::{NextHopConfig, OriginateListener};

impl OriginateListener {
    /// What every session of this listener is given: `hostname` is the top-level `hostname`,
    /// `protocol_log` is `log.protocol_log`.
    pub fn session_config(&self, hostname: &str, protocol_log: bool) -> Config {
        let p = &self.policy;
        Config {
            hostname: hostname.to_owned(),
            next_hop: match &self.next_hop {
                NextHopConfig::Mx { .. } => NextHop::Mx,
                NextHopConfig::Relay { host, .. } => NextHop::Relay { host: host.clone() },
            },
            policy: DomainPolicy {
                default: p.default,
                domains: p.domains.clone(),
            },
            on_failure: p.on_failure,
            enforce: p.enforce,
            bare_newlines: p.bare_newlines,
            long_lines: p.long_lines,
            received_header: p.received_header,
            max_message_size: p.max_message_size,
            max_recipients: p.max_recipients,
            max_errors: p.max_errors,
            timeouts: p.timeouts.session(),
            protocol_log,
        }
    }
}

impl super::Timeouts {
    /// The deadlines a session keeps: all but `proxy_header`, which the accept loop applies
    /// before there is a session.
    pub fn session(&self) -> Timeouts {
        Timeouts {
            greeting: self.greeting,
            command: self.command,
            data_block: self.data_block,
            tls_handshake: self.tls_handshake,
            backend_reply: self.backend_reply,
        }
    }
}
