//! Prometheus metrics (SPEC §5). [`Metrics::register`] registers every family once per
//! process (the linkerd2-proxy way); [`Metrics::listener`] hands each listener a
//! [`ListenerMetrics`] with its labels resolved, so recording an event is an array index and
//! an atomic add, never a label lookup. Label values come from configuration (listener names,
//! listed domains, backend servers) or small closed enums ([`Refusal`], [`LegFailure`]),
//! never from client input: an unlisted domain is `other`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use smtp_core::session::{LegFailure, Refusal, ReplyTo};

use crate::proxy::HeaderError;

const NS: &str = "smtp_sidecar";

/// `session_duration_seconds` buckets: an SMTP session lasts from milliseconds (a probe) to
/// minutes (a slow client, a large message).
const SESSION_BUCKETS: [f64; 11] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// `backend_reply_seconds` buckets: a local backend answers in a millisecond, a next hop on
/// the internet in tens, a busy one after its end-of-data checks in seconds.
const REPLY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Reply classes (`replies_total{class}`).
pub const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Every metric family of the process.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub connections_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_refused_total: IntCounterVec,
    pub proxy_header_errors_total: IntCounterVec,
    pub tls_handshakes_total: IntCounterVec,
    pub tls_handshake_errors_total: IntCounterVec,
    pub messages_total: IntCounterVec,
    pub message_bytes_total: IntCounterVec,
    pub bytes_total: IntCounterVec,
    pub replies_total: IntCounterVec,
    pub transactions_total: IntCounterVec,
    pub policy_rejections_total: IntCounterVec,
    pub domain_secure_messages_received_total: IntCounterVec,
    pub domain_secure_messages_sent_total: IntCounterVec,
    pub domain_secure_outbound_session_failures_total: IntCounterVec,
    pub domain_secure_outbound_last_failure_timestamp_seconds: IntGaugeVec,
    pub backend_failures_total: IntCounterVec,
    pub next_hop_failures_total: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub backend_last_check_timestamp_seconds: IntGaugeVec,
    pub backend_reply_seconds: HistogramVec,
    pub session_duration_seconds: HistogramVec,
    /// notAfter of each loaded certificate, labelled by store name, SHA-1 thumbprint (as
    /// Exchange and Windows show it) and subject: all from the operator's own files.
    pub certificate_expiry_timestamp_seconds: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_last_reload_timestamp_seconds: IntGauge,
    /// Log lines dropped because standard error was not read fast enough ([`crate::log`]),
    /// brought up to date at each scrape.
    pub log_lines_dropped_total: IntCounter,
    /// What of [`crate::log::dropped_lines`] `log_lines_dropped_total` has counted.
    log_dropped_counted: Arc<AtomicU64>,
}

/// Registers one family; a failure is a bug in the static definitions below.
#[allow(clippy::expect_used)]
fn family<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

#[allow(clippy::expect_used)] // static definitions: a failure is a bug
fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
        .expect("static metric definition");
    family(r, c)
}

#[allow(clippy::expect_used)]
fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help).namespace(NS), labels)
        .expect("static metric definition");
    family(r, g)
}

#[allow(clippy::expect_used)]
fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help)
        .namespace(NS)
        .buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, &["listener"]).expect("static metric definition");
    family(r, h)
}

impl Metrics {
    /// Every family, registered once in `registry`. The registry outlives configuration
    /// reloads: a listener that stays keeps its series.
    #[allow(clippy::expect_used)] // static definitions registered once: a failure is a bug
    pub fn register(registry: &mut Registry) -> Self {
        let r = &*registry;
        let build_info = gauge(
            r,
            "build_info",
            "Always 1; the version of this build",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let config_generation = IntGauge::with_opts(
            Opts::new(
                "config_generation",
                "Configurations loaded since start (1: the first)",
            )
            .namespace(NS),
        )
        .expect("static metric definition");
        let config_last_reload_timestamp_seconds = IntGauge::with_opts(
            Opts::new(
                "config_last_reload_timestamp_seconds",
                "When the configuration in use was loaded, Unix seconds",
            )
            .namespace(NS),
        )
        .expect("static metric definition");
        let log_lines_dropped_total = IntCounter::with_opts(
            Opts::new(
                "log_lines_dropped_total",
                "Log lines dropped because standard error was not read fast enough",
            )
            .namespace(NS),
        )
        .expect("static metric definition");
        let reloads = counter(
            r,
            "config_reloads_total",
            "Configuration reloads by result (success/failure)",
            &["result"],
        );
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        Metrics {
            connections_total: counter(r, "connections_total", "Sessions accepted", &["listener"]),
            connections_active: gauge(r, "connections_active", "Sessions open now", &["listener"]),
            connections_refused_total: counter(
                r,
                "connections_refused_total",
                "Connections refused by max_connections, max_connections_per_ip or max_handshakes",
                &["listener"],
            ),
            proxy_header_errors_total: counter(
                r,
                "proxy_header_errors_total",
                "Connections of a proxy_protocol listener closed for their PROXY header, by \
                 reason (missing, invalid, closed, timeout)",
                &["listener", "reason"],
            ),
            tls_handshakes_total: counter(
                r,
                "tls_handshakes_total",
                "TLS handshakes by side (server/client), result (ok/error) and version",
                &["listener", "side", "result", "version"],
            ),
            tls_handshake_errors_total: counter(
                r,
                "tls_handshake_errors_total",
                "Failed TLS handshakes by side (server/client) and reason",
                &["listener", "side", "reason"],
            ),
            messages_total: counter(
                r,
                "messages_total",
                "Messages by TLS (yes/no) of the leg the listener protects (terminate: the client; \
                 originate: the next hop) and result (accepted/rejected/failed)",
                &["listener", "tls", "result"],
            ),
            message_bytes_total: counter(
                r,
                "message_bytes_total",
                "Body bytes of accepted messages relayed, as the client sent them (no Received \
                 header, folds or newline repairs)",
                &["listener"],
            ),
            bytes_total: counter(
                r,
                "bytes_total",
                "SMTP bytes by leg (client/backend) and direction (received/sent), as the \
                 session read and wrote them: decrypted on a TLS leg, without TLS handshakes or \
                 record overhead",
                &["listener", "leg", "direction"],
            ),
            replies_total: counter(
                r,
                "replies_total",
                "Replies sent to clients by the command they answer and class",
                &["listener", "command", "class"],
            ),
            transactions_total: counter(
                r,
                "transactions_total",
                "Transactions begun (MAIL accepted); those without a message accepted, rejected \
                 or failed were abandoned (RSET, QUIT, a lost client) or had their DATA refused",
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
                "Messages the backend accepted from a domain_secure sender domain over a \
                 verified mutual-TLS session",
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
            domain_secure_outbound_last_failure_timestamp_seconds: gauge(
                r,
                "domain_secure_outbound_last_failure_timestamp_seconds",
                "When an outbound session to a domain-secure domain last failed, by reason, \
                 Unix seconds",
                &["listener", "domain", "reason"],
            ),
            backend_failures_total: counter(
                r,
                "backend_failures_total",
                "Sessions ended because the backend was unreachable, silent or broken, by kind",
                &["listener", "kind"],
            ),
            next_hop_failures_total: counter(
                r,
                "next_hop_failures_total",
                "Next hop attempts that failed (DNS, connect, refused, lost, silent, TLS level), \
                 by kind",
                &["listener", "kind"],
            ),
            backend_up: gauge(
                r,
                "backend_up",
                "1 if the backend server answered the last connection to it, 0 if not",
                &["listener", "server"],
            ),
            backend_last_check_timestamp_seconds: gauge(
                r,
                "backend_last_check_timestamp_seconds",
                "When backend_up was last set from a connection to the server, Unix seconds \
                 (0: never since start)",
                &["listener", "server"],
            ),
            backend_reply_seconds: histogram(
                r,
                "backend_reply_seconds",
                "Time from a command sent to the backend or next hop to its reply",
                &REPLY_BUCKETS,
            ),
            session_duration_seconds: histogram(
                r,
                "session_duration_seconds",
                "Session length, from its start (after a PROXY header, where one is expected) to \
                 its close: one per session of connections_total",
                &SESSION_BUCKETS,
            ),
            certificate_expiry_timestamp_seconds: gauge(
                r,
                "certificate_expiry_timestamp_seconds",
                "notAfter of each loaded certificate, Unix seconds",
                &["name", "thumbprint", "subject"],
            ),
            config_reloads_total: reloads,
            config_generation: family(r, config_generation),
            config_last_reload_timestamp_seconds: family(r, config_last_reload_timestamp_seconds),
            log_lines_dropped_total: family(r, log_lines_dropped_total),
            log_dropped_counted: Arc::default(),
            registry: registry.clone(),
        }
    }

    /// A registry of its own with every family in it.
    pub fn new() -> Self {
        Self::register(&mut Registry::new())
    }

    /// Sessions open now, on every listener (those a reload removed included): what shutdown
    /// still waits for, apart from lingering closes.
    pub fn sessions_open(&self) -> i64 {
        use prometheus::core::Collector;
        self.connections_active
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }

    /// The handle of one listener, every series it can move created now at 0: `received`
    /// are its inbound `domain_secure` domains, `sent` its listed outbound domains, `servers`
    /// its backend servers.
    pub fn listener(
        &self,
        name: &str,
        received: &[String],
        sent: &[String],
        servers: &[String],
    ) -> ListenerMetrics {
        let l = name;
        let messages = ["yes", "no"].map(|tls| {
            ["accepted", "rejected", "failed"]
                .map(|result| self.messages_total.with_label_values(&[l, tls, result]))
        });
        let handshakes = ["server", "client"].map(|side| {
            [
                self.tls_handshakes_total
                    .with_label_values(&[l, side, "ok", "TLSv1.3"]),
                self.tls_handshakes_total
                    .with_label_values(&[l, side, "ok", "TLSv1.2"]),
                self.tls_handshakes_total
                    .with_label_values(&[l, side, "error", ""]),
            ]
        });
        let handshake_errors = ["server", "client"].map(|side| {
            HandshakeError::ALL.map(|reason| {
                self.tls_handshake_errors_total
                    .with_label_values(&[l, side, reason.as_str()])
            })
        });
        let rejections = Refusal::ALL.map(|reason| {
            ["true", "false"].map(|enforced| {
                self.policy_rejections_total
                    .with_label_values(&[l, reason.as_str(), enforced])
            })
        });
        let replies = ReplyTo::ALL.map(|to| {
            CLASSES.map(|class| {
                self.replies_total
                    .with_label_values(&[l, to.as_str(), class])
            })
        });
        let bytes = ["client", "backend"].map(|leg| {
            ["received", "sent"].map(|dir| self.bytes_total.with_label_values(&[l, leg, dir]))
        });
        let counted = |vec: &IntCounterVec, domains: &[String]| -> Vec<(String, IntCounter)> {
            domains
                .iter()
                .map(|d| (d.clone(), vec.with_label_values(&[l, d])))
                .collect()
        };
        // The outbound failure series of each listed domain-secure domain, at 0: `increase()`
        // then sees a first failure.
        for domain in sent {
            for reason in Refusal::OUTBOUND {
                self.domain_secure_outbound_session_failures_total
                    .with_label_values(&[l, domain, reason.as_str()]);
            }
        }
        ListenerMetrics {
            name: name.to_owned(),
            connections: self.connections_total.with_label_values(&[l]),
            transactions: self.transactions_total.with_label_values(&[l]),
            active: self.connections_active.with_label_values(&[l]),
            refused: self.connections_refused_total.with_label_values(&[l]),
            proxy_header_errors: HeaderError::REASONS.map(|reason| {
                self.proxy_header_errors_total
                    .with_label_values(&[l, reason])
            }),
            messages,
            message_bytes: self.message_bytes_total.with_label_values(&[l]),
            bytes,
            replies,
            handshakes,
            handshake_errors,
            rejections,
            received: counted(&self.domain_secure_messages_received_total, received),
            sent: counted(&self.domain_secure_messages_sent_total, sent),
            backend_failures: LegFailure::ALL.map(|k| {
                self.backend_failures_total
                    .with_label_values(&[l, k.as_str()])
            }),
            next_hop_failures: LegFailure::ALL.map(|k| {
                self.next_hop_failures_total
                    .with_label_values(&[l, k.as_str()])
            }),
            backend_up: servers
                .iter()
                .map(|s| {
                    let up = self.backend_up.with_label_values(&[l, s]);
                    let checked = self
                        .backend_last_check_timestamp_seconds
                        .with_label_values(&[l, s]);
                    (s.clone(), up, checked)
                })
                .collect(),
            reply_seconds: self.backend_reply_seconds.with_label_values(&[l]),
            duration: self.session_duration_seconds.with_label_values(&[l]),
            sent_other: self.domain_secure_messages_sent_total.clone(),
            ds_failures: self.domain_secure_outbound_session_failures_total.clone(),
            ds_last_failure: self
                .domain_secure_outbound_last_failure_timestamp_seconds
                .clone(),
        }
    }

    /// A reload took `server` from `listener`: its `backend_up` series go (a stale value
    /// would speak for a server no longer used, on the status page and in `/readyz`).
    pub fn forget_backend(&self, listener: &str, server: &str) {
        let _ = self.backend_up.remove_label_values(&[listener, server]);
        let _ = self
            .backend_last_check_timestamp_seconds
            .remove_label_values(&[listener, server]);
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
        // Two scrapes at once add the difference once: the one that raises the mark does.
        let dropped = crate::log::dropped_lines();
        let counted = self
            .log_dropped_counted
            .fetch_max(dropped, Ordering::Relaxed);
        if dropped > counted {
            self.log_lines_dropped_total.inc_by(dropped - counted);
        }
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

/// One listener's series, labels resolved once when the listener is built.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub name: String,
    pub connections: IntCounter,
    pub transactions: IntCounter,
    pub active: IntGauge,
    pub refused: IntCounter,
    /// `[HeaderError::REASONS]`
    proxy_header_errors: [IntCounter; 4],
    /// `[tls yes/no][accepted/rejected/failed]`
    messages: [[IntCounter; 3]; 2],
    pub message_bytes: IntCounter,
    /// `[client/backend][received/sent]`
    bytes: [[IntCounter; 2]; 2],
    /// `[ReplyTo][CLASSES]`
    replies: [[IntCounter; 4]; 16],
    /// `[server/client][ok TLS 1.3, ok TLS 1.2, error]`
    handshakes: [[IntCounter; 3]; 2],
    /// `[server/client][HandshakeError]`
    handshake_errors: [[IntCounter; 7]; 2],
    /// `[Refusal][enforced true/false]`
    rejections: [[IntCounter; 2]; 19],
    received: Vec<(String, IntCounter)>,
    sent: Vec<(String, IntCounter)>,
    backend_failures: [IntCounter; LegFailure::ALL.len()],
    next_hop_failures: [IntCounter; LegFailure::ALL.len()],
    /// Per server: `backend_up`, and when it was last set.
    backend_up: Vec<(String, IntGauge, IntGauge)>,
    pub reply_seconds: Histogram,
    pub duration: Histogram,
    /// Sent to a domain-secure domain that is not listed (the default level): `other`.
    sent_other: IntCounterVec,
    ds_failures: IntCounterVec,
    ds_last_failure: IntGaugeVec,
}

/// A message's outcome (`messages_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted = 0,
    Rejected = 1,
    Failed = 2,
}

/// A TLS handshake's outcome (`tls_handshakes_total{side,result,version}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok13 = 0,
    Ok12 = 1,
    Error = 2,
}

impl Handshake {
    /// From the version as `session_tls_info` names it (`TLSv1.3`, `TLSv1.2`).
    pub fn ok(version: &str) -> Self {
        if version == "TLSv1.2" {
            Handshake::Ok12
        } else {
            Handshake::Ok13
        }
    }
}

/// Why a TLS handshake failed (`tls_handshake_errors_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not done by its deadline.
    Timeout,
    /// `client_certificates: require` and the client sent none.
    NoCertificate,
    /// The client's certificate did not verify, by why.
    CertificateExpired,
    CertificateRevoked,
    CertificateUntrusted,
    CertificateInvalid,
    /// Anything else: an alert, not TLS at all, no common version or cipher, a bad signature.
    Protocol,
}

impl HandshakeError {
    const ALL: [HandshakeError; 7] = [
        HandshakeError::Timeout,
        HandshakeError::NoCertificate,
        HandshakeError::CertificateExpired,
        HandshakeError::CertificateRevoked,
        HandshakeError::CertificateUntrusted,
        HandshakeError::CertificateInvalid,
        HandshakeError::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::NoCertificate => "no_certificate",
            HandshakeError::CertificateExpired => "certificate_expired",
            HandshakeError::CertificateRevoked => "certificate_revoked",
            HandshakeError::CertificateUntrusted => "certificate_untrusted",
            HandshakeError::CertificateInvalid => "certificate_invalid",
            HandshakeError::Protocol => "protocol",
        }
    }

    /// Why a handshake that ended in an error failed: a certificate rustls refused, by why
    /// ([`HandshakeError::client_certificate`]), or anything else.
    pub fn of(e: &std::io::Error) -> Self {
        crate::tls::refused_certificate(e)
            .map_or(HandshakeError::Protocol, Self::client_certificate)
    }

    /// From what rustls said of a certificate it refused.
    pub fn client_certificate(reason: &str) -> Self {
        match reason {
            "no client certificate" => HandshakeError::NoCertificate,
            "expired" | "not yet valid" => HandshakeError::CertificateExpired,
            "revoked" => HandshakeError::CertificateRevoked,
            "untrusted issuer" => HandshakeError::CertificateUntrusted,
            _ => HandshakeError::CertificateInvalid,
        }
    }
}

impl ListenerMetrics {
    /// A connection closed for its PROXY header.
    pub fn proxy_header_error(&self, e: &HeaderError) {
        let reason = e.reason();
        if let Some(i) = HeaderError::REASONS.iter().position(|r| *r == reason) {
            self.proxy_header_errors[i].inc();
        }
    }

    /// Server handshakes of this listener that failed since the start (reloads keep the
    /// series).
    pub fn server_handshake_errors(&self) -> u64 {
        self.handshakes[0][Handshake::Error as usize].get()
    }

    /// A failed handshake: counted in `tls_handshakes_total{result="error"}` and by reason.
    pub fn handshake_error(&self, server: bool, reason: HandshakeError) {
        self.handshake(server, Handshake::Error);
        self.handshake_errors[usize::from(!server)][reason as usize].inc();
    }

    pub fn message(&self, tls: bool, outcome: Outcome) {
        self.messages[usize::from(!tls)][outcome as usize].inc();
    }

    /// `server`: the client leg's handshake; else the client side toward a next hop.
    pub fn handshake(&self, server: bool, result: Handshake) {
        self.handshakes[usize::from(!server)][result as usize].inc();
    }

    pub fn rejection(&self, reason: Refusal, enforced: bool) {
        self.rejections[reason.index()][usize::from(!enforced)].inc();
    }

    /// A reply to a client, by what it answered and its code; a 2xx to MAIL begins a
    /// transaction.
    pub fn reply(&self, to: ReplyTo, code: u16) {
        let class = usize::from(code / 100).saturating_sub(2).min(3);
        self.replies[to.index()][class].inc();
        if to == ReplyTo::Mail && class == 0 {
            self.transactions.inc();
        }
    }

    /// Bytes on a leg: `client` or the backend leg, `received` or sent.
    pub fn bytes(&self, client: bool, received: bool, n: usize) {
        self.bytes[usize::from(!client)][usize::from(!received)].inc_by(n as u64);
    }

    pub fn backend_failure(&self, kind: LegFailure) {
        self.backend_failures[kind.index()].inc();
    }

    pub fn next_hop_failure(&self, kind: LegFailure) {
        self.next_hop_failures[kind.index()].inc();
    }

    /// A message from a listed inbound domain (as configured).
    pub fn domain_secure_received(&self, domain: &str) {
        if let Some((_, c)) = self.received.iter().find(|(d, _)| d == domain) {
            c.inc();
        }
    }

    /// A message to a listed outbound domain (as configured; `other` for the default level).
    pub fn domain_secure_sent(&self, domain: &str) {
        match self.sent.iter().find(|(d, _)| d == domain) {
            Some((_, c)) => c.inc(),
            None => self
                .sent_other
                .with_label_values(&[&self.name, "other"])
                .inc(),
        }
    }

    /// An outbound session to a domain-secure domain (listed, or `other`) that failed.
    pub fn domain_secure_failure(&self, domain: &str, reason: Refusal, unix_now: i64) {
        let labels = [self.name.as_str(), domain, reason.as_str()];
        self.ds_failures.with_label_values(&labels).inc();
        self.ds_last_failure
            .with_label_values(&labels)
            .set(unix_now);
    }

    /// Whether a backend server answered the last connection to it (now).
    pub fn backend_up(&self, server: &str, up: bool, unix_now: i64) {
        if let Some((_, g, checked)) = self.backend_up.iter().find(|(s, _, _)| s == server) {
            g.set(i64::from(up));
            checked.set(unix_now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_to_mail_begins_a_transaction() {
        let m = Metrics::new();
        let l = m.listener("x", &[], &[], &[]);
        l.reply(ReplyTo::Mail, 250);
        l.reply(ReplyTo::Mail, 550);
        l.reply(ReplyTo::Rcpt, 250);
        assert_eq!(l.transactions.get(), 1);
        let text = m.render();
        assert!(text.contains("smtp_sidecar_transactions_total{listener=\"x\"} 1\n"));
        assert!(text.contains(
            "smtp_sidecar_replies_total{class=\"5xx\",command=\"mail\",listener=\"x\"} 1\n"
        ));
    }
}
