#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtp_core::session::Refusal;

use super::*;
use crate::metrics::{Metrics, Outcome};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn info(name: &str, mode: &str) -> ListenerInfo {
    ListenerInfo {
        name: name.to_owned(),
        mode: mode.to_owned(),
        listen: "127.0.0.1:2525".to_owned(),
    }
}

/// Two listeners with known traffic, three certificates, two backends.
fn populated() -> (Metrics, Vec<ListenerInfo>) {
    let metrics = Metrics::new();
    metrics.config_generation.set(3);
    metrics.config_last_reload_timestamp_seconds.set(NOW - 60);
    let inbound = metrics.listener(
        "inbound",
        &["woodgrovebank.com".into()],
        &[],
        &["127.0.0.1:25".into(), "127.0.0.2:25".into()],
    );
    let outbound = metrics.listener(
        "outbound",
        &[],
        &["woodgrovebank.com".into(), "fabrikam.com".into()],
        &["127.0.0.1:10026".into()],
    );
    for _ in 0..5 {
        inbound.connections.inc();
    }
    inbound.active.set(2);
    inbound.refused.inc();
    for _ in 0..3 {
        inbound.message(true, Outcome::Accepted);
    }
    inbound.message(false, Outcome::Accepted);
    inbound.message(false, Outcome::Rejected);
    inbound.message(true, Outcome::Rejected);
    inbound.message(true, Outcome::Failed);
    inbound.message_bytes.inc_by(1234);
    inbound.domain_secure_received("woodgrovebank.com");
    inbound.domain_secure_received("woodgrovebank.com");
    inbound.backend_up("127.0.0.1:25", true, NOW - 5);
    outbound.connections.inc();
    outbound.domain_secure_sent("woodgrovebank.com");
    outbound.domain_secure_sent("unlisted.example");
    outbound.domain_secure_failure("woodgrovebank.com", Refusal::NoStartTls, NOW - 300);
    outbound.domain_secure_failure("woodgrovebank.com", Refusal::NameMismatch, NOW - 30);
    outbound.domain_secure_failure("woodgrovebank.com", Refusal::NoStartTls, NOW - 600);
    let certs = &metrics.certificate_expiry_timestamp_seconds;
    certs
        .with_label_values(&["internet", "AB12", "CN=mx.contoso.com"])
        .set(NOW + 200 * DAY);
    certs
        .with_label_values(&["partner", "CD34", "CN=<b>\"x\" & 'y'</b>"])
        .set(NOW + 13 * DAY + 5);
    certs
        .with_label_values(&["old", "EF56", "CN=old.contoso.com"])
        .set(NOW - 2 * DAY - 5);
    (
        metrics,
        vec![info("inbound", "terminate"), info("outbound", "originate")],
    )
}

#[test]
fn counts_per_listener() {
    let (metrics, infos) = populated();
    let s = Status::gather(&metrics, &infos, NOW);
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert_eq!((s.config_generation, s.config_loaded_at), (3, NOW - 60));
    assert_eq!(s.generated_at, NOW);
    let names: Vec<&str> = s.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["inbound", "outbound"]);
    assert_eq!(
        s.listeners[0],
        ListenerStatus {
            name: "inbound".into(),
            mode: "terminate".into(),
            listen: "127.0.0.1:2525".into(),
            sessions_active: 2,
            sessions_total: 5,
            sessions_refused: 1,
            messages_accepted: 4,
            messages_rejected: 2,
            messages_failed: 1,
            messages_tls: 5,
            tls_share_percent: Some(5.0 * 100.0 / 7.0),
            message_bytes: 1234,
        }
    );
    let out = &s.listeners[1];
    assert_eq!(out.mode, "originate");
    assert_eq!((out.sessions_total, out.messages_accepted), (1, 0));
    assert_eq!(out.tls_share_percent, None, "no message yet: no share");
}

/// A listener a reload removed keeps its series in the registry, but is no longer in force:
/// neither it nor its backends are shown, and its domain counts still add up.
#[test]
fn a_listener_only_the_metrics_know_is_not_shown() {
    let (metrics, _) = populated();
    let s = Status::gather(&metrics, &[info("outbound", "originate")], NOW);
    let names: Vec<&str> = s.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["outbound"]);
    assert!(
        s.backends.iter().all(|b| b.listener == "outbound"),
        "{:?}",
        s.backends
    );
    let bank = s.domains.iter().find(|d| d.domain == "woodgrovebank.com");
    assert_eq!(bank.map(|d| d.received), Some(2), "{:?}", s.domains);
    assert!(!s.html().contains("data-listener=\"inbound\""));
    assert!(!s.json().contains("\"inbound\""));
}

#[test]
fn domains_add_up_over_listeners_with_the_newest_failure() {
    let (metrics, infos) = populated();
    let s = Status::gather(&metrics, &infos, NOW);
    assert_eq!(
        s.domains,
        [
            DomainStatus {
                domain: "fabrikam.com".into(),
                received: 0,
                sent: 0,
                outbound_failures: 0,
                last_failure: None,
            },
            DomainStatus {
                domain: "other".into(),
                received: 0,
                sent: 1,
                outbound_failures: 0,
                last_failure: None,
            },
            DomainStatus {
                domain: "woodgrovebank.com".into(),
                received: 2,
                sent: 1,
                outbound_failures: 3,
                last_failure: Some(LastFailure {
                    listener: "outbound".into(),
                    reason: "name_mismatch".into(),
                    at: NOW - 30,
                }),
            },
        ]
    );
}

#[test]
fn certificates_soonest_first_with_days_and_state() {
    let (metrics, infos) = populated();
    let s = Status::gather(&metrics, &infos, NOW);
    let got: Vec<(&str, i64, CertificateState)> = s
        .certificates
        .iter()
        .map(|c| (c.name.as_str(), c.days_to_expiry, c.state))
        .collect();
    assert_eq!(
        got,
        [
            ("old", -3, CertificateState::Expired),
            ("partner", 13, CertificateState::Expiring),
            ("internet", 200, CertificateState::Valid),
        ]
    );
    assert_eq!(s.certificates[2].thumbprint, "AB12");
    assert_eq!(s.certificates[2].subject, "CN=mx.contoso.com");
    assert_eq!(s.certificates[2].not_after, NOW + 200 * DAY);
}

#[test]
fn expiry_thresholds() {
    let state = |left: i64| {
        CertificateStatus::new(String::new(), String::new(), String::new(), NOW + left, NOW)
    };
    assert_eq!(state(14 * DAY).state, CertificateState::Valid);
    assert_eq!(state(14 * DAY - 1).state, CertificateState::Expiring);
    assert_eq!(state(14 * DAY - 1).days_to_expiry, 13);
    assert_eq!(state(0).state, CertificateState::Expiring);
    assert_eq!(state(0).days_to_expiry, 0);
    assert_eq!(state(-1).state, CertificateState::Expired);
    assert_eq!(state(-1).days_to_expiry, -1);
}

#[test]
fn backends_in_listener_order_and_readiness() {
    let (metrics, infos) = populated();
    let s = Status::gather(&metrics, &infos, NOW);
    let got: Vec<(&str, &str, BackendState)> = s
        .backends
        .iter()
        .map(|b| (b.listener.as_str(), b.server.as_str(), b.state))
        .collect();
    assert_eq!(
        got,
        [
            ("inbound", "127.0.0.1:25", BackendState::Up),
            ("inbound", "127.0.0.2:25", BackendState::Unknown),
            ("outbound", "127.0.0.1:10026", BackendState::Unknown),
        ]
    );
    assert_eq!(s.readiness(), Ok(()));
    // One server down, the other never tried: still ready.
    let inbound = metrics.listener(
        "inbound",
        &[],
        &[],
        &["127.0.0.1:25".into(), "127.0.0.2:25".into()],
    );
    inbound.backend_up("127.0.0.1:25", false, NOW - 1);
    let s = Status::gather(&metrics, &infos, NOW);
    assert_eq!(s.backends[0].state, BackendState::Down);
    assert_eq!(s.readiness(), Ok(()));
    // Every server of the terminate listener down: not ready, naming them.
    inbound.backend_up("127.0.0.2:25", false, NOW - 1);
    let why = Status::gather(&metrics, &infos, NOW)
        .readiness()
        .unwrap_err();
    assert_eq!(
        why,
        "listener inbound: every backend server is down (127.0.0.1:25, 127.0.0.2:25)"
    );
}

#[test]
fn json_has_every_section() {
    let (metrics, infos) = populated();
    let s = Status::gather(&metrics, &infos, NOW);
    let v: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
    assert_eq!(v["config_generation"], 3);
    assert_eq!(v["listeners"][0]["name"], "inbound");
    assert_eq!(v["listeners"][0]["messages_accepted"], 4);
    assert_eq!(
        v["listeners"][1]["tls_share_percent"],
        serde_json::Value::Null
    );
    assert_eq!(v["domains"][2]["last_failure"]["reason"], "name_mismatch");
    assert_eq!(v["certificates"][0]["state"], "expired");
    assert_eq!(v["certificates"][1]["state"], "expiring");
    assert_eq!(v["backends"][0]["state"], "up");
    assert_eq!(v["backends"][1]["state"], "unknown");
}

#[test]
fn html_shows_counts_highlights_and_escapes() {
    let (metrics, mut infos) = populated();
    let metrics_listener = metrics.listener("<i>evil</i>", &[], &[], &[]);
    metrics_listener.connections.inc();
    infos.push(info("<i>evil</i>", "terminate"));
    let html = Status::gather(&metrics, &infos, NOW).html();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: no script, nothing loaded from elsewhere.
    for banned in ["<script", "src=", "http://", "https://", "<link"] {
        assert!(!html.contains(banned), "{banned} in the page");
    }
    assert!(html.contains(
        "<tr data-listener=\"inbound\"><td>inbound</td><td>terminate</td>\
         <td>127.0.0.1:2525</td><td class=\"n\">2</td><td class=\"n\">5</td>\
         <td class=\"n\">1</td><td class=\"n\">4</td><td class=\"n\">2</td>\
         <td class=\"n\">1</td><td class=\"n\">71.4%</td><td class=\"n\">1234</td></tr>"
    ));
    assert!(html.contains(
        "<tr data-domain=\"woodgrovebank.com\"><td>woodgrovebank.com</td><td class=\"n\">2</td>\
         <td class=\"n\">1</td><td class=\"n bad\">3</td><td class=\"bad\">name_mismatch</td>\
         <td>2027-01-15T07:59:30Z (30 s ago, listener outbound)</td></tr>"
    ), "{html}");
    assert!(html.contains("<tr class=\"expired\"><td>old</td>"));
    assert!(html.contains("<td class=\"n\">expired 2 days ago</td>"));
    assert!(html.contains("<tr class=\"expiring\"><td>partner</td>"));
    assert!(html.contains("<td class=\"n\">13 days (under 14)</td>"));
    assert!(html.contains("<tr class=\"valid\"><td>internet</td>"));
    // Label values are escaped, in text and in attributes.
    assert!(html.contains("CN=&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"));
    assert!(html.contains(
        "<tr data-listener=\"&lt;i&gt;evil&lt;/i&gt;\"><td>&lt;i&gt;evil&lt;/i&gt;</td><td>terminate</td>"
    ));
    assert!(!html.contains("<i>evil"));
    assert!(!html.contains("<b>\"x"));
    assert!(html.contains("<td>127.0.0.1:25</td><td class=\"up\">up</td>"));
    assert!(html.contains("configuration generation <span id=\"generation\">3</span>"));
}

#[test]
fn an_empty_registry_renders() {
    let metrics = Metrics::new();
    let s = Status::gather(&metrics, &[], NOW);
    assert!(s.listeners.is_empty() && s.domains.is_empty() && s.backends.is_empty());
    let html = s.html();
    assert!(html.contains("No listener."));
    assert!(html.contains("No domain-secure domain configured."));
    assert!(html.contains("No certificate loaded."));
    assert_eq!(s.readiness(), Ok(()));
}

#[test]
fn escaping_and_ages() {
    assert_eq!(html::escape("a<&>\"'"), "a&lt;&amp;&gt;&quot;&#39;");
    assert_eq!(html::ago(NOW, NOW - 119), "119 s ago");
    assert_eq!(html::ago(NOW, NOW - 120), "2 min ago");
    assert_eq!(html::ago(NOW, NOW - 7_200), "2 h ago");
    assert_eq!(html::ago(NOW, NOW - 3 * DAY), "3 d ago");
    assert_eq!(
        html::ago(NOW, NOW + 5),
        "0 s ago",
        "a clock step back is not negative"
    );
}
