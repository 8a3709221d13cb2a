//! Prometheus metrics (SPEC §5), registered once in one [`Metrics`] struct. Label values come
//! from configuration (listener names) or small fixed sets, never from client input.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub connections_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_refused_total: IntCounterVec,
    pub tls_handshakes_total: IntCounterVec,
    pub messages_total: IntCounterVec,
    pub message_bytes_total: IntCounterVec,
    pub policy_rejections_total: IntCounterVec,
    pub domain_secure_messages_received_total: IntCounterVec,
    pub domain_secure_messages_sent_total: IntCounterVec,
    pub domain_secure_outbound_session_failures_total: IntCounterVec,
    pub backend_failures_total: IntCounterVec,
    pub next_hop_failures_total: IntCounterVec,
    pub session_duration_seconds: HistogramVec,
    /// notAfter of each loaded certificate, labelled by store name, SHA-1 thumbprint (as
    /// Exchange and Windows show it) and subject: all from the operator's own files.
    pub certificate_expiry_timestamp_seconds: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("smtp_sidecar"), labels)
        .expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    #[allow(clippy::expect_used)] // static definitions registered once: a failure is a bug
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let connections_active = IntGaugeVec::new(
            Opts::new("connections_active", "Sessions open now").namespace("smtp_sidecar"),
            &["listener"],
        )
        .expect("static metric definition");
        r.register(Box::new(connections_active.clone()))
            .expect("metric registered once");
        let session_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "session_duration_seconds",
                "Session length, connect to close",
            )
            .namespace("smtp_sidecar")
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
            ]),
            &["listener"],
        )
        .expect("static metric definition");
        r.register(Box::new(session_duration_seconds.clone()))
            .expect("metric registered once");
        let certificate_expiry_timestamp_seconds = IntGaugeVec::new(
            Opts::new(
                "certificate_expiry_timestamp_seconds",
                "notAfter of each loaded certificate, Unix seconds",
            )
            .namespace("smtp_sidecar"),
            &["name", "thumbprint", "subject"],
        )
        .expect("static metric definition");
        r.register(Box::new(certificate_expiry_timestamp_seconds.clone()))
            .expect("metric registered once");
        Metrics {
            connections_total: counter(r, "connections_total", "Sessions accepted", &["listener"]),
            connections_active,
            connections_refused_total: counter(
                r,
                "connections_refused_total",
                "Connections refused by max_connections or max_connections_per_ip",
                &["listener"],
            ),
            tls_handshakes_total: counter(
                r,
                "tls_handshakes_total",
                "TLS handshakes by side (server/client), result (ok/error) and version",
                &["listener", "side", "result", "version"],
            ),
            messages_total: counter(
                r,
                "messages_total",
                "Messages by TLS (yes/no) and result (accepted/rejected/failed)",
                &["listener", "tls", "result"],
            ),
            message_bytes_total: counter(
                r,
                "message_bytes_total",
                "Body bytes of accepted messages relayed",
                &["listener"],
            ),
            policy_rejections_total: counter(
                r,
                "policy_rejections_total",
                "Policy refusals by reason; enforced=false in audit mode",
                &["listener", "reason", "enforced"],
            ),
            domain_secure_messages_received_total: counter(
                r,
                "domain_secure_messages_received_total",
                "Messages the backend accepted from a domain_secure sender domain over a verified \
                 mutual-TLS session",
                &["listener", "domain"],
            ),
            domain_secure_messages_sent_total: counter(
                r,
                "domain_secure_messages_sent_total",
                "Messages the next hop accepted for a domain-secure domain over a verified \
                 mutual-TLS session",
                &["listener", "domain"],
            ),
            domain_secure_outbound_session_failures_total: counter(
                r,
                "domain_secure_outbound_session_failures_total",
                "Outbound sessions to a domain-secure domain that could not get mutual TLS, by \
                 reason",
                &["listener", "domain", "reason"],
            ),
            backend_failures_total: counter(
                r,
                "backend_failures_total",
                "Sessions ended because the backend was unreachable, silent or broken",
                &["listener"],
            ),
            next_hop_failures_total: counter(
                r,
                "next_hop_failures_total",
                "Next hop attempts that failed (DNS, connect, refused greeting, lost, silent)",
                &["listener"],
            ),
            session_duration_seconds,
            certificate_expiry_timestamp_seconds,
            registry,
        }
    }

    /// Create the series of a listener at zero, so dashboards see them before traffic.
    pub fn init_listener(&self, listener: &str, domain_secure: &[String]) {
        for domain in domain_secure {
            self.domain_secure_messages_received_total
                .with_label_values(&[listener, domain]);
        }
        self.connections_total.with_label_values(&[listener]);
        self.connections_active.with_label_values(&[listener]);
        for tls in ["yes", "no"] {
            for result in ["accepted", "rejected", "failed"] {
                self.messages_total
                    .with_label_values(&[listener, tls, result]);
            }
        }
        self.message_bytes_total.with_label_values(&[listener]);
    }

    /// The domain-secure series of an originate listener at zero, for its listed domains.
    pub fn init_originate(&self, listener: &str, domains: &[String]) {
        for domain in domains {
            self.domain_secure_messages_sent_total
                .with_label_values(&[listener, domain]);
        }
    }

    /// One expiry series per certificate of `store` (set at start; a reload replaces them).
    pub fn set_certificates(&self, store: &crate::tls::CertStore) {
        self.certificate_expiry_timestamp_seconds.reset();
        for cert in &store.certs {
            let i = &cert.info;
            self.certificate_expiry_timestamp_seconds
                .with_label_values(&[cert.name.as_str(), i.sha1.as_str(), i.subject.as_str()])
                .set(i.not_after);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
