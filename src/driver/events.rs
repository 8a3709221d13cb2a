//! What a session's events become: metrics, log lines and protocol log lines.

use std::net::SocketAddr;

use smtp_core::outbound::Level;
use smtp_core::session::Event;

use super::PROTOCOL;
use crate::runtime::{ListenerRuntime, ModeRuntime};

/// Count or log an event; returns 1 for an accepted message.
pub(super) fn record(
    l: &ListenerRuntime,
    client_tls: bool,
    event: Event,
    peer: SocketAddr,
    id: u64,
) -> u32 {
    let tls = if client_tls { "yes" } else { "no" };
    let m = &l.metrics;
    match event {
        Event::MessageAccepted { bytes } => {
            m.messages_total
                .with_label_values(&[&l.name, tls, "accepted"])
                .inc();
            m.message_bytes_total
                .with_label_values(&[&l.name])
                .inc_by(bytes);
            return 1;
        }
        Event::MessageRejected => {
            m.messages_total
                .with_label_values(&[&l.name, tls, "rejected"])
                .inc();
        }
        Event::MessageFailed => {
            m.messages_total
                .with_label_values(&[&l.name, tls, "failed"])
                .inc();
        }
        Event::PolicyRejection { reason, enforced } => {
            tracing::info!(listener = %l.name, %peer, reason, enforced, "policy refusal");
            let enforced = if enforced { "true" } else { "false" };
            m.policy_rejections_total
                .with_label_values(&[&l.name, reason, enforced])
                .inc();
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
        Event::DomainSecureAccepted { domain } => {
            // `domain` is the listed domain as configured: a bounded label.
            m.domain_secure_messages_received_total
                .with_label_values(&[&l.name, &domain])
                .inc();
        }
        Event::BackendFailed { reason } => {
            tracing::warn!(listener = %l.name, %peer, %reason, "backend failed; client told 421 4.4.2");
            m.backend_failures_total.with_label_values(&[&l.name]).inc();
        }
        Event::NextHopFailed { host, reason } => {
            tracing::info!(listener = %l.name, %peer, next_hop = %host, %reason, "next hop attempt failed");
            m.next_hop_failures_total
                .with_label_values(&[&l.name])
                .inc();
        }
        Event::OutboundTlsFailure(r) => {
            tracing::info!(listener = %l.name, %peer, domain = %r.domain, level = r.level.as_str(),
                next_hop = %r.host, reason = r.failure.label(), enforced = r.enforced,
                "outbound TLS policy not met");
            let enforced = if r.enforced { "true" } else { "false" };
            m.policy_rejections_total
                .with_label_values(&[&l.name, r.failure.label(), enforced])
                .inc();
            if r.level == Level::DomainSecure {
                // A listed domain as configured, or `other` for the default: bounded labels.
                let domain = r.listed.as_deref().unwrap_or("other");
                m.domain_secure_outbound_session_failures_total
                    .with_label_values(&[&l.name, domain, r.failure.label()])
                    .inc();
            }
        }
        Event::DomainSecureSent { domain } => {
            m.domain_secure_messages_sent_total
                .with_label_values(&[&l.name, &domain])
                .inc();
        }
        Event::Protocol { direction, line } => {
            let listener = &l.name;
            let dir = direction.as_str();
            tracing::info!(target: PROTOCOL, session = id, %listener, %peer, "{dir} {line}");
        }
    }
    0
}
