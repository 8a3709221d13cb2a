//! Observability end to end (issue 14, SPEC §5): one sidecar in process with six listeners
//! and its admin endpoint, traffic through every path that moves a metric, then
//!
//! - `promtool check metrics` on a real scrape (no lint finding) and `promtool check rules`
//!   on `grafana/alerts.yaml`;
//! - a real Prometheus (Debian's `prometheus`, a child process with its own configuration and
//!   TSDB in a scratch directory) scraping the sidecar every second with the alert rules
//!   loaded: every PromQL expression of `grafana/dashboard.json` must evaluate and return at
//!   least one series, every alert expression must evaluate, and what each alert condition
//!   compares must return data; the alerts the traffic should raise do, the others do not;
//! - exact counter values of SPEC §5 metrics after the known traffic.
//!
//! So a renamed metric or label breaks the build, not the operator's dashboard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;
#[path = "common/prometheus.rs"]
mod prom;
#[path = "common/originate.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::next_hop::{Cert, ClientAuth, NextHop, NextHopPki};
use common::pki::{Pki, Spec};
use common::process::free_port;
use common::{recording_backend, Client};
use partner_pki::{client_config, Identity, PartnerPki};
use prom::{sample_value, Prometheus};
use smtp_sidecar::runtime::Running;
use support::{our_leaf, scrape, OURS};

const BANK: &str = "woodgrovebank.com";
const FROM_BANK: &str = "MAIL FROM:<alice@woodgrovebank.com>";

/// The sidecar's configuration: `inbound` (STARTTLS, client certificates requested, the
/// partner's domain domain_secure, enforced), `audit` (the same, enforce: false), `down`
/// (its backend's port closed), `outbound` (originate to a next hop requiring our client
/// certificate, y.test domain-secure) and `outbound_untrusted` (the same to a next hop whose
/// certificate nobody trusts); and `unchecked`, whose backend no session and no health check
/// (every hour) reaches during the test.
fn yaml(
    partner: &PartnerPki,
    hops: &NextHopPki,
    backend: SocketAddr,
    closed: SocketAddr,
    good_hop: SocketAddr,
    bad_hop: SocketAddr,
) -> String {
    // Port 0 of a loopback address each: `check` refuses two listeners on one address.
    let terminate = |name: &str, ip: u8, server: SocketAddr, policy: &str| {
        format!(
            "  - name: {name}\n    mode: terminate\n    listen: 127.0.0.{ip}:0\n    backend:\n      \
             servers: [\"{server}\"]\n      connect_timeout: 2s\n    policy:\n      \
             received_header: false\n{policy}"
        )
    };
    let originate = |name: &str, ip: u8, hop: SocketAddr| {
        format!(
            "  - name: {name}\n    mode: originate\n    listen: 127.0.0.{ip}:0\n    next_hop: \
             \"{hop}\"\n    client_certificate: {{name: {OURS}}}\n    policy:\n      \
             received_header: false\n      default: may\n      domains:\n        y.test: \
             domain-secure\n"
        )
    };
    let ds = format!("      client_certificates: request\n      domain_secure: [{BANK}]\n");
    format!(
        "hostname: mx.test\nshutdown_grace: 2s\nmetrics:\n  listen: 127.0.0.250:0\n\
         trust:\n  system_roots: false\n  ca_files: [\"{}\", \"{}\", \"{}\"]\n  crl_files: \
         [\"{}\", \"{}\"]\nlisteners:\n{}{}{}{}{}{}",
        partner.root_file.display(),
        hops.root_file.display(),
        hops.revoking_ca_file.display(),
        partner.crl_pem.display(),
        hops.crl_file.display(),
        terminate("inbound", 1, backend, &ds),
        terminate("audit", 2, backend, &format!("{ds}      enforce: false\n")),
        terminate("down", 3, closed, ""),
        terminate("unchecked", 6, closed, "").replace(
            "connect_timeout: 2s\n",
            "connect_timeout: 2s\n      health_check_interval: 1h\n",
        ),
        originate("outbound", 4, good_hop),
        originate("outbound_untrusted", 5, bad_hop),
    )
}

// ---- traffic -------------------------------------------------------------------------------

/// Greeting and EHLO on a plain connection.
async fn plain(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.starts_with("250-mx.test"));
    c
}

/// Greeting, EHLO, STARTTLS, a handshake presenting `identity` (or no certificate), EHLO.
async fn starttls(addr: SocketAddr, identity: Option<&Identity>) -> Client {
    let mut c = plain(addr).await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let (config, _) = client_config(identity);
    let mut c = c.try_upgrade(config).await.expect("handshake");
    assert!(c.cmd("EHLO client.test").await.starts_with("250-mx.test"));
    c
}

/// MAIL FROM `from` (expecting `mail_reply`), then if accepted a whole message: the reply
/// to the end of data.
async fn message(c: &mut Client, from: &str, mail_reply: &str) -> Option<String> {
    assert_eq!(c.cmd(from).await, mail_reply, "{from}");
    if !mail_reply.starts_with("250") {
        return None;
    }
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    Some(c.cmd("Subject: hi\r\n\r\nhello\r\n.").await)
}

/// QUIT, and the sidecar's close (every event of the session recorded).
async fn quit(mut c: Client) {
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(c.closed().await, "closed after QUIT");
}

async fn deliver(c: &mut Client, from: &str) {
    let eod = message(c, from, "250 2.1.0 Ok\r\n").await.unwrap();
    assert!(eod.starts_with("250 2.0.0 Ok"), "{eod}");
}

/// The legacy MTA relays one message for b@y.test through an originate listener: the RCPT
/// reply (and the end-of-data one when it was accepted).
async fn relay(addr: SocketAddr) -> (String, Option<String>) {
    let mut c = plain(addr).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    let (rcpt, eod) = support::send(&mut c, "b@y.test").await;
    quit(c).await;
    (rcpt, eod)
}

/// Every kind of session the metrics distinguish, each waited for until closed.
async fn traffic(running: &Running, pki: &PartnerPki) {
    let inbound = running.addr("inbound").unwrap();
    let audit = running.addr("audit").unwrap();

    // Plaintext, delivered.
    let mut c = plain(inbound).await;
    deliver(&mut c, "MAIL FROM:<a@example.test>").await;
    quit(c).await;
    // STARTTLS without a client certificate, delivered.
    let mut c = starttls(inbound, None).await;
    deliver(&mut c, "MAIL FROM:<a@example.test>").await;
    quit(c).await;
    // The partner over mutual TLS: domain-secure, delivered twice in one session.
    let mut c = starttls(inbound, Some(&pki.partner)).await;
    deliver(&mut c, FROM_BANK).await;
    deliver(&mut c, FROM_BANK).await;
    quit(c).await;
    // The partner's domain without TLS, and with a certificate nobody trusts: refused.
    let refused = |what: &str| {
        format!("450 4.7.1 Domain Security: mail from {BANK} requires mutual TLS; {what}\r\n")
    };
    let mut c = plain(inbound).await;
    assert_eq!(message(&mut c, FROM_BANK, &refused("no TLS")).await, None);
    quit(c).await;
    let mut c = starttls(inbound, Some(&pki.untrusted)).await;
    let untrusted = refused("client certificate did not verify (untrusted issuer)");
    assert_eq!(message(&mut c, FROM_BANK, &untrusted).await, None);
    quit(c).await;
    // STARTTLS, then bytes that are not TLS: a server-side handshake error.
    let mut c = plain(inbound).await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    c.send(b"this is not a TLS ClientHello\r\n").await;
    // (Perhaps an alert first, then the close.)
    c.read_to_close().await;

    // Audit mode: the refusal counted, enforced="false", the message delivered.
    let mut c = plain(audit).await;
    deliver(&mut c, FROM_BANK).await;
    quit(c).await;

    // The backend is down: 421 at once.
    let mut c = Client::connect(running.addr("down").unwrap()).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2 "), "{reply}");
    assert!(c.closed().await);

    // Outbound, domain-secure: sent over mutual TLS; refused for an untrusted certificate.
    let (rcpt, eod) = relay(running.addr("outbound").unwrap()).await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    let (rcpt, eod) = relay(running.addr("outbound_untrusted").unwrap()).await;
    assert_eq!(
        rcpt,
        "450 4.7.5 TLS policy domain-secure for y.test not met: certificate of 127.0.0.1 did \
         not verify (untrusted issuer)\r\n"
    );
    assert_eq!(eod, None);

    // Every session has ended and been counted.
    let metrics = &running.metrics;
    common::eventually(
        || {
            ["inbound", "audit", "down", "outbound", "outbound_untrusted"]
                .iter()
                .all(|l| metrics.connections_active.with_label_values(&[l]).get() == 0)
        },
        "sessions closed",
    )
    .await;
}

// ---- the exposition ----------------------------------------------------------------------

/// `name{labels}` → value of every sample in a text exposition.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Exact values after [`traffic`]: SPEC §5's Domain Security counters, messages by TLS and
/// result, policy rejections enforced and audited, handshakes, backends.
fn assert_counters(exposition: &str) {
    let got = samples(exposition);
    let want: &[(&str, f64)] = &[
        // Domain Security (Exchange's three performance counters).
        (
            "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",listener=\"inbound\"}",
            2.0,
        ),
        (
            "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",listener=\"audit\"}",
            0.0,
        ),
        (
            "smtp_sidecar_domain_secure_messages_sent_total{domain=\"y.test\",listener=\"outbound\"}",
            1.0,
        ),
        (
            "smtp_sidecar_domain_secure_messages_sent_total{domain=\"y.test\",listener=\"outbound_untrusted\"}",
            0.0,
        ),
        (
            "smtp_sidecar_domain_secure_outbound_session_failures_total{domain=\"y.test\",listener=\"outbound_untrusted\",reason=\"certificate_untrusted\"}",
            1.0,
        ),
        // Messages: inbound 1 plaintext + 1 STARTTLS + 2 of the partner.
        ("smtp_sidecar_messages_total{listener=\"inbound\",result=\"accepted\",tls=\"no\"}", 1.0),
        ("smtp_sidecar_messages_total{listener=\"inbound\",result=\"accepted\",tls=\"yes\"}", 3.0),
        ("smtp_sidecar_messages_total{listener=\"inbound\",result=\"rejected\",tls=\"no\"}", 0.0),
        ("smtp_sidecar_messages_total{listener=\"audit\",result=\"accepted\",tls=\"no\"}", 1.0),
        ("smtp_sidecar_messages_total{listener=\"outbound\",result=\"accepted\",tls=\"yes\"}", 1.0),
        (
            "smtp_sidecar_messages_total{listener=\"outbound_untrusted\",result=\"accepted\",tls=\"no\"}",
            0.0,
        ),
        // Policy: enforced on inbound, audited on audit, and the outbound refusal.
        (
            "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"inbound\",reason=\"domain_secure_no_tls\"}",
            1.0,
        ),
        (
            "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"inbound\",reason=\"domain_secure_certificate_unverified\"}",
            1.0,
        ),
        (
            "smtp_sidecar_policy_rejections_total{enforced=\"false\",listener=\"audit\",reason=\"domain_secure_no_tls\"}",
            1.0,
        ),
        (
            "smtp_sidecar_policy_rejections_total{enforced=\"false\",listener=\"inbound\",reason=\"domain_secure_no_tls\"}",
            0.0,
        ),
        (
            "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"outbound_untrusted\",reason=\"certificate_untrusted\"}",
            1.0,
        ),
        // Sessions and TLS.
        ("smtp_sidecar_connections_total{listener=\"inbound\"}", 6.0),
        ("smtp_sidecar_connections_total{listener=\"audit\"}", 1.0),
        ("smtp_sidecar_connections_total{listener=\"down\"}", 1.0),
        (
            "smtp_sidecar_tls_handshakes_total{listener=\"inbound\",result=\"ok\",side=\"server\",version=\"TLSv1.3\"}",
            3.0,
        ),
        (
            "smtp_sidecar_tls_handshakes_total{listener=\"inbound\",result=\"error\",side=\"server\",version=\"\"}",
            1.0,
        ),
        (
            "smtp_sidecar_tls_handshakes_total{listener=\"outbound\",result=\"ok\",side=\"client\",version=\"TLSv1.3\"}",
            1.0,
        ),
        (
            "smtp_sidecar_tls_handshakes_total{listener=\"outbound_untrusted\",result=\"ok\",side=\"client\",version=\"TLSv1.3\"}",
            1.0,
        ),
        ("smtp_sidecar_session_duration_seconds_count{listener=\"inbound\"}", 6.0),
        ("smtp_sidecar_config_reloads_total{result=\"failure\"}", 0.0),
        ("smtp_sidecar_config_generation", 1.0),
    ];
    let mut wrong = Vec::new();
    for (series, value) in want {
        match got.get(*series) {
            Some(v) if v == value => {}
            other => wrong.push(format!("{series}: want {value}, got {other:?}")),
        }
    }
    // The backend's (and next hop's) replies are timed: one per command at least.
    for listener in ["inbound", "audit", "outbound"] {
        let series = format!("smtp_sidecar_backend_reply_seconds_count{{listener=\"{listener}\"}}");
        if got.get(&series).is_none_or(|n| *n < 5.0) {
            wrong.push(format!("{series}: want >= 5, got {:?}", got.get(&series)));
        }
    }
    // Backends: the live one answered, the closed port did not.
    let up = |listener: &str| -> Vec<f64> {
        got.iter()
            .filter(|(k, _)| {
                k.starts_with("smtp_sidecar_backend_up{")
                    && k.contains(&format!("listener=\"{listener}\""))
            })
            .map(|(_, v)| *v)
            .collect()
    };
    if up("inbound") != [1.0] {
        wrong.push(format!("backend_up inbound: {:?}", up("inbound")));
    }
    if up("down") != [0.0] {
        wrong.push(format!("backend_up down: {:?}", up("down")));
    }
    let down_failures: f64 = got
        .iter()
        .filter(|(k, _)| {
            k.starts_with("smtp_sidecar_backend_failures_total{") && k.contains("listener=\"down\"")
        })
        .map(|(_, v)| v)
        .sum();
    if down_failures != 1.0 {
        wrong.push(format!("backend_failures_total of down: {down_failures}"));
    }
    assert!(
        wrong.is_empty(),
        "counters after the known traffic:\n{}\n\nexposition:\n{exposition}",
        wrong.join("\n")
    );
}

// ---- the test ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_work_against_a_real_prometheus() {
    prom::require_binaries();
    let grafana = prom::grafana_dir();
    let alerts_file = grafana.join("alerts.yaml");

    // promtool on the rule file first: nothing else is worth running if it fails.
    let checked = prom::check_rules(&alerts_file).unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(checked.contains("SUCCESS"), "{checked}");

    // The partner's PKI (inbound), the next hops' (outbound), our certificates: our client
    // certificate (also served inbound, for mx.test) and one expiring in 7 days.
    let partner = PartnerPki::new();
    let hops = NextHopPki::new();
    let ours = our_leaf(&hops);
    let soon = hops
        .root
        .leaf("expiring", Spec::ca(&["expiring.test"]).days_left(7));
    let (backend, recorder) = recording_backend().await;
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let good_hop = NextHop::builder()
        .host("y.test")
        .starttls(&hops, Cert::Valid)
        .client_auth(ClientAuth::Require(hops.root_file.clone()))
        .start()
        .await;
    let bad_hop = NextHop::builder()
        .host("y.test")
        .starttls(&hops, Cert::Untrusted)
        .start()
        .await;
    let yaml = yaml(
        &partner,
        &hops,
        backend,
        closed,
        good_hop.addr,
        bad_hop.addr,
    );
    let config =
        smtp_sidecar::config::parse(&yaml).unwrap_or_else(|e| panic!("{:?}\n{yaml}", e.problems));
    let running = smtp_sidecar::runtime::start(&config, &Pki::store(&[&ours, &soon]))
        .await
        .unwrap();
    let admin = running.metrics_addr.expect("metrics.listen");

    // Prometheus scrapes from before the traffic, so that rates see the counters move.
    let prometheus = Prometheus::start(&[admin], std::slice::from_ref(&alerts_file)).await;
    prometheus
        .wait_for(
            "up{job=\"smtp-sidecar\"} == 1",
            Duration::from_secs(15),
            |r| r.len() == 1,
        )
        .await;

    traffic(&running, &partner).await;
    assert_eq!(recorder.messages().len(), 5, "messages at the backend");
    let exposition = scrape(&running).await;
    assert_counters(&exposition);
    if let Err(findings) = prom::check_metrics(&exposition) {
        panic!("promtool check metrics: {findings}\n\nexposition:\n{exposition}");
    }

    // Prometheus has scraped the counters as they are now, twice (rates of series born
    // during the traffic need two samples).
    prometheus
        .wait_for(
            "count_over_time(smtp_sidecar_domain_secure_outbound_session_failures_total\
             {listener=\"outbound_untrusted\",reason=\"certificate_untrusted\"}[1m])",
            Duration::from_secs(15),
            |r| r.len() == 1 && sample_value(&r[0]) >= 2.0,
        )
        .await;
    prometheus
        .wait_for(
            "sum(smtp_sidecar_messages_total)",
            Duration::from_secs(15),
            |r| r.len() == 1 && sample_value(&r[0]) == 6.0,
        )
        .await;

    // Every dashboard query: evaluates, and returns data.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grafana.join("dashboard.json")).unwrap())
            .expect("grafana/dashboard.json is JSON");
    let queries = prom::dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut failures = Vec::new();
    for q in &queries {
        let expr = prom::substitute(&q.expr);
        match prometheus.query(&expr).await {
            // A quantile of a histogram that never moved is NaN, whatever its series.
            Ok(result) if result.iter().any(|s| sample_value(s).is_finite()) => {}
            Ok(result) if !result.is_empty() => failures.push(format!(
                "{} {}: no finite value: {expr}: {result:?}",
                q.panel, q.ref_id
            )),
            Ok(_) => failures.push(format!("{} {}: no data: {expr}", q.panel, q.ref_id)),
            Err(e) => failures.push(format!("{} {}: {e}: {expr}", q.panel, q.ref_id)),
        }
    }
    // Backend up: UP and DOWN for the servers reached, NOT CHECKED (2) for the one nothing
    // has reached yet (it is still tried by new sessions).
    let backend_up = queries.iter().find(|q| q.panel == "Backend up").unwrap();
    let result = prometheus
        .query(&prom::substitute(&backend_up.expr))
        .await
        .unwrap();
    let states: BTreeMap<String, f64> = result
        .iter()
        .map(|s| {
            (
                s["metric"]["listener"].as_str().unwrap().to_owned(),
                sample_value(s),
            )
        })
        .collect();
    let want: BTreeMap<String, f64> = [
        ("audit", 1.0),
        ("down", 0.0),
        ("inbound", 1.0),
        ("outbound", 1.0),
        ("outbound_untrusted", 1.0),
        ("unchecked", 2.0),
    ]
    .map(|(l, v)| (l.to_owned(), v))
    .into();
    if states != want {
        failures.push(format!("Backend up: {states:?}"));
    }
    // The template variables' label_values(METRIC, LABEL) queries find every listener.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(def) = var["definition"].as_str() else {
            continue;
        };
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: {def}", var["name"]));
        let (metric, label) = inner.split_once(',').unwrap();
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            prom::urlencode(metric.trim())
        );
        let values = prometheus.api(&path).await.unwrap();
        let values: Vec<&str> = values["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let listeners = [
            "audit",
            "down",
            "inbound",
            "outbound",
            "outbound_untrusted",
            "unchecked",
        ];
        if values != listeners {
            failures.push(format!("variable {def}: {values:?}"));
        }
    }

    // Every alert: its condition evaluates; what it compares returns data; the ones this
    // traffic should raise are raised, for exactly what caused them (the certificate expiring
    // in 7 days, the closed backend port, the untrusted next hop), the others are not.
    let rules = prom::rule_file(&alerts_file);
    let firing_expected: BTreeMap<&str, (&str, &str)> = [
        ("SmtpSidecarCertificateExpiresSoon", ("name", "expiring")),
        ("SmtpSidecarBackendDown", ("listener", "down")),
        (
            "SmtpSidecarDomainSecureOutboundFailures",
            ("listener", "outbound_untrusted"),
        ),
    ]
    .into();
    let mut alerts = Vec::new();
    for rule in rules.groups.iter().flat_map(|g| &g.rules) {
        let name = rule.alert.clone().expect("alerting rules only");
        for key in ["summary", "description"] {
            if rule
                .annotations
                .get(key)
                .is_none_or(|a| a.trim().is_empty())
            {
                failures.push(format!("{name}: no {key} annotation"));
            }
        }
        match prometheus.query(&rule.expr).await {
            Ok(result) => {
                let fired: Vec<String> = result.iter().map(|s| s["metric"].to_string()).collect();
                let ok = match firing_expected.get(name.as_str()) {
                    None => result.is_empty(),
                    Some((label, value)) => {
                        !result.is_empty() && result.iter().all(|s| s["metric"][label] == *value)
                    }
                };
                if !ok {
                    failures.push(format!("{name}: fires for {fired:?}"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}: {}", rule.expr)),
        }
        for side in prom::condition_sides(&rule.expr) {
            assert_ne!(side, rule.expr.trim(), "{name}: no comparison found");
            match prometheus.query(&side).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => failures.push(format!("{name}: no data: {side}")),
                Err(e) => failures.push(format!("{name}: {e}: {side}")),
            }
        }
        alerts.push(name);
    }
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    for name in firing_expected.keys() {
        assert!(alerts.iter().any(|a| a == name), "no alert {name}");
    }
    // Prometheus itself evaluates the rules without error.
    let loaded = prometheus.api("/api/v1/rules").await.unwrap();
    for group in loaded["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if rule["health"] == "err" {
                failures.push(format!("rule {}: {}", rule["name"], rule["lastError"]));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n\nprometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.log()
    );

    drop(prometheus);
    running.shutdown().await;
}
