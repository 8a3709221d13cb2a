//! The status page of the admin endpoint (`GET /` and `GET /status.json`): what the sidecar
//! is doing, for an operator who runs no Prometheus, in the manner of HAProxy's stats page.
//!
//! [`Status::gather`] reads one snapshot of the metric registry (`Registry::gather`, which
//! copies the values out under the registry's own short locks: nothing is held afterwards, so
//! building the page never slows a session) into a typed [`Status`]; [`Status::html`] and
//! [`Status::json`] render it. Everything after the snapshot is a pure function of it and
//! of the clock reading passed in, so it is tested with a [`Metrics`] populated by hand.
//!
//! What the registry cannot tell (which listeners are in force, their mode and address)
//! comes from the [`ListenerInfo`] list the runtime hands the admin endpoint, and updates on
//! every reload: a listener a reload removed is not shown, though its counters stay in the
//! registry.

use std::collections::BTreeMap;

use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;

use crate::metrics::Metrics;

mod html;
#[cfg(test)]
mod tests;

/// A certificate expiring within this many days is highlighted.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the runtime knows of a listener that the metrics do not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    pub name: String,
    /// `terminate` or `originate`.
    pub mode: String,
    /// The bound address.
    pub listen: String,
}

/// Everything the status page shows, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// `build_info{version}`.
    pub version: String,
    /// When this was gathered, Unix seconds.
    pub generated_at: i64,
    /// `config_generation`: configurations loaded since start (1: the first).
    pub config_generation: i64,
    /// `config_last_reload_timestamp_seconds`: when the configuration in use was loaded.
    pub config_loaded_at: i64,
    pub listeners: Vec<ListenerStatus>,
    /// Domain-secure partner domains, by name (`other`: unlisted domains sent to at the
    /// domain-secure level).
    pub domains: Vec<DomainStatus>,
    /// Loaded certificates, soonest expiry first.
    pub certificates: Vec<CertificateStatus>,
    pub backends: Vec<BackendStatus>,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    /// `terminate` or `originate`.
    pub mode: String,
    /// The bound address.
    pub listen: String,
    /// `connections_active`: sessions open now.
    pub sessions_active: i64,
    /// `connections_total`: sessions since start.
    pub sessions_total: u64,
    /// `connections_refused_total`: connections over `max_connections(_per_ip)`.
    pub sessions_refused: u64,
    /// `messages_total{result}`, over both values of `tls`.
    pub messages_accepted: u64,
    pub messages_rejected: u64,
    pub messages_failed: u64,
    /// `messages_total{tls="yes"}`, every result.
    pub messages_tls: u64,
    /// `messages_tls` as a share of every message, in percent; `None` before the first.
    pub tls_share_percent: Option<f64>,
    /// `message_bytes_total`: body bytes of accepted messages relayed.
    pub message_bytes: u64,
}

/// One domain-secure partner domain, over every listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainStatus {
    pub domain: String,
    /// `domain_secure_messages_received_total`.
    pub received: u64,
    /// `domain_secure_messages_sent_total`.
    pub sent: u64,
    /// `domain_secure_outbound_session_failures_total`, every reason.
    pub outbound_failures: u64,
    /// The reason with the newest `domain_secure_outbound_last_failure_timestamp_seconds`.
    pub last_failure: Option<LastFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastFailure {
    pub listener: String,
    pub reason: String,
    /// Unix seconds.
    pub at: i64,
}

/// One loaded certificate (`certificate_expiry_timestamp_seconds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateStatus {
    pub name: String,
    pub thumbprint: String,
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Whole days left (rounded down; negative once expired).
    pub days_to_expiry: i64,
    pub state: CertificateState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateState {
    Valid,
    /// Fewer than [`EXPIRY_WARNING_DAYS`] days left.
    Expiring,
    Expired,
}

/// One backend server of a listener (`backend_up{listener,server}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    pub listener: String,
    pub server: String,
    pub state: BackendState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// The server answered the last connection to it.
    Up,
    /// Its last connection failed.
    Down,
    /// No connection to it since start (`backend_last_check_timestamp_seconds` is 0).
    Unknown,
}

/// `series[i]`: one sample's labels and value.
type Series<'a> = Vec<(BTreeMap<&'a str, &'a str>, f64)>;

fn samples(families: &[MetricFamily]) -> BTreeMap<&str, Series<'_>> {
    let mut out: BTreeMap<&str, Series<'_>> = BTreeMap::new();
    for family in families {
        // Counters and gauges; the histograms are not shown.
        let counter = match family.get_field_type() {
            MetricType::COUNTER => true,
            MetricType::GAUGE => false,
            _ => continue,
        };
        let series = out.entry(family.name()).or_default();
        for m in family.get_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let value = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            series.push((labels, value));
        }
    }
    out
}

/// A counter's value as the integer it is (the `Int*` types count in whole units).
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

fn whole(v: f64) -> i64 {
    if v.is_finite() {
        v as i64
    } else {
        0
    }
}

impl Status {
    /// One snapshot of `metrics`, `listeners` as the runtime has them, at `now`.
    pub fn gather(metrics: &Metrics, listeners: &[ListenerInfo], now: i64) -> Status {
        Status::from_families(&metrics.registry.gather(), listeners, now)
    }

    /// The status of gathered metric families.
    pub fn from_families(families: &[MetricFamily], infos: &[ListenerInfo], now: i64) -> Status {
        let all = samples(families);
        let none = Series::new();
        let family = |name: &str| {
            all.get(format!("smtp_sidecar_{name}").as_str())
                .unwrap_or(&none)
        };
        let scalar = |name: &str| family(name).first().map_or(0, |(_, v)| whole(*v));

        let version = family("build_info")
            .iter()
            .find_map(|(l, _)| l.get("version").map(|v| (*v).to_owned()))
            .unwrap_or_default();

        // Listeners: the runtime's, in configuration order. Series of any other (one a reload
        // removed, whose counters stay in the registry) are not shown.
        let mut listeners: Vec<ListenerStatus> = infos.iter().map(ListenerStatus::new).collect();
        let listener = |name: &str| listeners.iter().position(|l| l.name == name);
        let per_listener = |name: &str| {
            family(name)
                .iter()
                .filter_map(|(l, v)| l.get("listener").map(|n| (*n, l, *v)))
                .collect::<Vec<_>>()
        };
        let mut rows: Vec<(usize, &str, &BTreeMap<&str, &str>, f64)> = Vec::new();
        for name in [
            "connections_active",
            "connections_total",
            "connections_refused_total",
            "messages_total",
            "message_bytes_total",
        ] {
            for (l, labels, v) in per_listener(name) {
                if let Some(i) = listener(l) {
                    rows.push((i, name, labels, v));
                }
            }
        }
        for (i, name, labels, v) in rows {
            let l = &mut listeners[i];
            match name {
                "connections_active" => l.sessions_active = whole(v),
                "connections_total" => l.sessions_total = count(v),
                "connections_refused_total" => l.sessions_refused = count(v),
                "message_bytes_total" => l.message_bytes = count(v),
                _ => {
                    let n = count(v);
                    match labels.get("result").copied() {
                        Some("accepted") => l.messages_accepted += n,
                        Some("rejected") => l.messages_rejected += n,
                        Some("failed") => l.messages_failed += n,
                        _ => {}
                    }
                    if labels.get("tls") == Some(&"yes") {
                        l.messages_tls += n;
                    }
                }
            }
        }
        for l in &mut listeners {
            let total = l.messages_accepted + l.messages_rejected + l.messages_failed;
            l.tls_share_percent =
                (total > 0).then(|| (l.messages_tls as f64) * 100.0 / (total as f64));
        }

        // Domains, over every listener.
        let mut domains: BTreeMap<&str, DomainStatus> = BTreeMap::new();
        for (name, field) in [
            ("domain_secure_messages_received_total", 0),
            ("domain_secure_messages_sent_total", 1),
            ("domain_secure_outbound_session_failures_total", 2),
        ] {
            for (labels, v) in family(name) {
                let Some(domain) = labels.get("domain").copied() else {
                    continue;
                };
                let d = domains
                    .entry(domain)
                    .or_insert_with(|| DomainStatus::new(domain));
                match field {
                    0 => d.received += count(*v),
                    1 => d.sent += count(*v),
                    _ => d.outbound_failures += count(*v),
                }
            }
        }
        for (labels, v) in family("domain_secure_outbound_last_failure_timestamp_seconds") {
            let (Some(domain), Some(listener), Some(reason)) = (
                labels.get("domain").copied(),
                labels.get("listener").copied(),
                labels.get("reason").copied(),
            ) else {
                continue;
            };
            let at = whole(*v);
            let d = domains
                .entry(domain)
                .or_insert_with(|| DomainStatus::new(domain));
            let newer = d.last_failure.as_ref().is_none_or(|f| {
                (at, reason, listener) > (f.at, f.reason.as_str(), f.listener.as_str())
            });
            if newer {
                d.last_failure = Some(LastFailure {
                    listener: listener.to_owned(),
                    reason: reason.to_owned(),
                    at,
                });
            }
        }

        let mut certificates: Vec<CertificateStatus> =
            family("certificate_expiry_timestamp_seconds")
                .iter()
                .map(|(labels, v)| {
                    let label = |k: &str| labels.get(k).copied().unwrap_or_default().to_owned();
                    CertificateStatus::new(
                        label("name"),
                        label("thumbprint"),
                        label("subject"),
                        whole(*v),
                        now,
                    )
                })
                .collect();
        certificates.sort_by(|a, b| (a.not_after, &a.name).cmp(&(b.not_after, &b.name)));

        // Backends of the listeners in force, in listener order (then as the registry sorts
        // them).
        let checks = family("backend_last_check_timestamp_seconds");
        let checked = |l: &str, s: &str| {
            checks.iter().any(|(labels, v)| {
                labels.get("listener") == Some(&l) && labels.get("server") == Some(&s) && *v > 0.0
            })
        };
        let mut backends: Vec<(usize, BackendStatus)> = family("backend_up")
            .iter()
            .filter_map(|(labels, v)| {
                let (l, s) = (labels.get("listener")?, labels.get("server")?);
                let state = match (whole(*v), checked(l, s)) {
                    (1, _) => BackendState::Up,
                    (_, true) => BackendState::Down,
                    (_, false) => BackendState::Unknown,
                };
                Some((
                    listeners.iter().position(|x| x.name == *l)?,
                    BackendStatus {
                        listener: (*l).to_owned(),
                        server: (*s).to_owned(),
                        state,
                    },
                ))
            })
            .collect();
        backends.sort_by_key(|(i, _)| *i);

        Status {
            version,
            generated_at: now,
            config_generation: scalar("config_generation"),
            config_loaded_at: scalar("config_last_reload_timestamp_seconds"),
            listeners,
            domains: domains.into_values().collect(),
            certificates,
            backends: backends.into_iter().map(|(_, b)| b).collect(),
        }
    }

    /// `/readyz`: `Err` with the reason when a terminate listener has backend servers and
    /// every one of them is known to be down. Listeners are bound before the admin endpoint
    /// starts, so that part always holds here. A server not tried since start is not down.
    pub fn readiness(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for l in &self.listeners {
            if l.mode != "terminate" {
                continue;
            }
            let servers: Vec<&BackendStatus> = self
                .backends
                .iter()
                .filter(|b| b.listener == l.name)
                .collect();
            if !servers.is_empty() && servers.iter().all(|b| b.state.known_down()) {
                let names: Vec<&str> = servers.iter().map(|b| b.server.as_str()).collect();
                problems.push(format!(
                    "listener {}: every backend server is down ({})",
                    l.name,
                    names.join(", ")
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The page of `GET /`: self-contained HTML (inline CSS, no script).
    pub fn html(&self) -> String {
        html::render(self)
    }

    /// The body of `GET /status.json`.
    pub fn json(&self) -> String {
        match serde_json::to_string_pretty(self) {
            Ok(mut s) => {
                s.push('\n');
                s
            }
            // Plain data with string keys: serializing cannot fail.
            Err(e) => format!("{{\"error\": {:?}}}\n", e.to_string()),
        }
    }
}

impl BackendState {
    /// Known to have failed its last connection.
    fn known_down(self) -> bool {
        self == BackendState::Down
    }
}

impl ListenerStatus {
    fn new(info: &ListenerInfo) -> ListenerStatus {
        ListenerStatus {
            name: info.name.clone(),
            mode: info.mode.clone(),
            listen: info.listen.clone(),
            sessions_active: 0,
            sessions_total: 0,
            sessions_refused: 0,
            messages_accepted: 0,
            messages_rejected: 0,
            messages_failed: 0,
            messages_tls: 0,
            tls_share_percent: None,
            message_bytes: 0,
        }
    }
}

impl DomainStatus {
    fn new(domain: &str) -> DomainStatus {
        DomainStatus {
            domain: domain.to_owned(),
            received: 0,
            sent: 0,
            outbound_failures: 0,
            last_failure: None,
        }
    }
}

impl CertificateStatus {
    fn new(
        name: String,
        thumbprint: String,
        subject: String,
        not_after: i64,
        now: i64,
    ) -> CertificateStatus {
        let left = not_after.saturating_sub(now);
        let state = if left < 0 {
            CertificateState::Expired
        } else if left < EXPIRY_WARNING_DAYS * 86_400 {
            CertificateState::Expiring
        } else {
            CertificateState::Valid
        };
        CertificateStatus {
            name,
            thumbprint,
            subject,
            not_after,
            days_to_expiry: left.div_euclid(86_400),
            state,
        }
    }
}
