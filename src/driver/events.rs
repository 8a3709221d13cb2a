//! What a session's events become: metrics (through the listener's [`ListenerMetrics`],
//! labels resolved), log lines and protocol log lines. Both directions record here.
//!
//! [`ListenerMetrics`]: crate::metrics::ListenerMetrics

use std::net::SocketAddr;

use smtp_core::outbound::Level;
use smtp_core::session::{Event, LegFailure};

use super::PROTOCOL;
use crate::clock::unix_now;
use crate::metrics::Outcome;
use crate::snapshot::{ListenerRuntime, ModeRuntime};

/// What a session's events added up to, for its closing log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub accepted: u32,
    pub refused: u32,
    pub failed: u32,
}

/// Count or log an event.
pub(super) fn record(
    l: &ListenerRuntime,
    message_tls: bool,
    event: Event,
    peer: SocketAddr,
    id: u64,
    server: Option<usize>,
    tally: &mut Tally,
) {
    let m = &l.metrics;
    match event {
        Event::Reply { to, code } => m.reply(to, code),
        Event::MessageAccepted { bytes } => {
            m.message(message_tls, Outcome::Accepted);
            m.message_bytes.inc_by(bytes);
            tally.accepted += 1;
        }
        Event::MessageRejected => {
            m.message(message_tls, Outcome::Rejected);
            tally.refused += 1;
        }
        Event::MessageFailed => {
            m.message(message_tls, Outcome::Failed);
            tally.failed += 1;
        }
        Event::PolicyRejection { reason, enforced } => {
            tracing::info!(listener = %l.name, %peer, reason = reason.as_str(), enforced, "policy refusal");
            m.rejection(reason, enforced);
        }
        Event::DomainSecureRefused(refusal) => {
            let enforced = match &l.mode {
                ModeRuntime::Terminate(c) => c.enforce,
                ModeRuntime::Originate(o) => o.session.enforce,
            };
            tracing::info!(listener = %l.name, %peer, domain = %refusal.domain,
                missing = %refusal.text(), subject = refusal.subject.as_deref().unwrap_or("-"),
                enforced, "Domain Security not met");
        }
        // `domain` is the listed domain as configured: a bounded label.
        Event::DomainSecureAccepted { domain } => m.domain_secure_received(&domain),
        Event::DomainSecureSent { domain } => m.domain_secure_sent(&domain),
        Event::BackendFailed { kind, reason } => {
            let reason = log_safe(&reason);
            tracing::warn!(listener = %l.name, %peer, kind = kind.as_str(), %reason,
                "backend failed; client told 421 4.4.2");
            m.backend_failure(kind);
            // No encrypted hop to be had with it (STARTTLS not offered or refused, the
            // handshake failed): the server is unusable for any session, not this one only.
            // (A refusal, of its greeting or of XCLIENT, is left to the health checks, which
            // see the first and not the second.)
            if kind == LegFailure::Tls {
                let down = server.and_then(|i| l.pool.session_failed(&l.name, i, &reason));
                if let Some(addr) = down {
                    m.backend_up(addr, false, unix_now());
                }
            }
        }
        Event::XclientNotOffered => {
            if let Some(server) = server {
                l.pool.xclient_not_offered(&l.name, server);
            }
        }
        Event::NextHopFailed { host, kind, reason } => {
            let reason = log_safe(&reason);
            tracing::info!(listener = %l.name, %peer, next_hop = %host, kind = kind.as_str(),
                %reason, "next hop attempt failed");
            m.next_hop_failure(kind);
        }
        Event::OutboundTlsFailure(r) => {
            let reason = r.failure.reason();
            tracing::info!(listener = %l.name, %peer, domain = %r.domain, level = r.level.as_str(),
                next_hop = %r.host, reason = reason.as_str(), enforced = r.enforced,
                "outbound TLS policy not met");
            m.rejection(reason, r.enforced);
            if r.level == Level::DomainSecure {
                // A listed domain as configured, or `other` for the default: bounded labels.
                let domain = r.listed.as_deref().unwrap_or("other");
                m.domain_secure_failure(domain, reason, unix_now());
            }
        }
        Event::Protocol { direction, line } => {
            let listener = &l.name;
            let dir = direction.as_str();
            tracing::info!(target: PROTOCOL, session = id, %listener, %peer, "{dir} {line}");
        }
    }
}

/// Text a backend or a next hop chose (its reply's words in a failure's reason), fit for a
/// log line: the characters of [`smtp_core::session::unsafe_in_log`] as `?`. The reply
/// parser already refuses control characters; line separators and bidirectional controls
/// are valid UTF-8 it lets through.
fn log_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_in_log = smtp_core::session::unsafe_in_log;
    match text.chars().any(unsafe_in_log) {
        false => text.into(),
        true => text
            .chars()
            .map(|c| if unsafe_in_log(c) { '?' } else { c })
            .collect::<String>()
            .into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reply_text_in_a_reason_cannot_break_a_log_line() {
        assert_eq!(super::log_safe("greeting: 554 no"), "greeting: 554 no");
        assert_eq!(
            super::log_safe("greeting: 554 a\u{2028}b\u{202E}c é"),
            "greeting: 554 a?b?c é"
        );
    }
}
