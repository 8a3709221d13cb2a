//! From a validated originate listener to the core's per-session [`smtp_core::outbound::Config`]
//! (the terminate equivalent is built in `runtime.rs`, where whether STARTTLS can be offered is
//! known).

use smtp_core::outbound::{Config, DomainPolicy, NextHop};
use smtp_core::session::Timeouts;

use super::{NextHopConfig, OriginateListener};

impl OriginateListener {
    /// What every session of this listener is given: `hostname` is the top-level `hostname`,
    /// `protocol_log` is `log.protocol_log`.
    pub fn session_config(&self, hostname: &str, protocol_log: bool) -> Config {
        let p = &self.policy;
        let t = p.timeouts;
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
            timeouts: Timeouts {
                greeting: t.greeting,
                command: t.command,
                data_block: t.data_block,
                tls_handshake: t.tls_handshake,
                backend_reply: t.backend_reply,
            },
            protocol_log,
        }
    }
}
