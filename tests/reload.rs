//! End to end with the real binary: reloading the configuration (SPEC §2) by SIGHUP and when
//! the file changes on disk; sessions in flight keep their settings, an invalid file is
//! refused and the old configuration stays, listeners come and go, counters continue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::binary::{start_binary, Binary};
use common::process::free_port;
use common::*;

/// One listener `inbound` with `max_message_size: {size}` and the admin endpoint.
async fn sidecar(size: u64) -> (Binary, SocketAddr, SocketAddr) {
    let (backend, _rec) = recording_backend().await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "metrics:\n  listen: {metrics}\n{}",
        config_yaml(
            backend,
            "starttls",
            &format!("      max_message_size: {size}\n")
        )
    );
    let b = start_binary(&yaml);
    let addr = b.addr("inbound").unwrap();
    (b, addr, metrics)
}

/// Wait (10 s at most) until the log holds `needle` `n` times.
async fn wait_log(b: &Binary, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if b.log().matches(needle).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {needle:?} ({n}) in the log:\n{}", b.log());
}

/// A session past its greeting; its EHLO reply.
async fn session(addr: SocketAddr) -> (Client, String) {
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.cmd("EHLO client.test").await;
    (c, ehlo)
}

fn size_of(ehlo: &str) -> u64 {
    ehlo.lines()
        .find_map(|l| l.get(4..).and_then(|l| l.strip_prefix("SIZE ")))
        .unwrap_or_else(|| panic!("no SIZE in {ehlo:?}"))
        .trim()
        .parse()
        .unwrap()
}

async fn metric(metrics: SocketAddr, series: &str) -> f64 {
    let text = admin_http::request(metrics, "GET", "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn rewrite(b: &Binary, from: &str, to: &str) {
    let old = b.config();
    assert!(old.contains(from), "{from:?} not in\n{old}");
    std::fs::write(b.config_path(), old.replace(from, to)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_in_flight_keeps_its_policy_a_new_one_gets_the_new() {
    let (b, addr, metrics) = sidecar(1000).await;
    let (mut old, ehlo) = session(addr).await;
    assert_eq!(size_of(&ehlo), 1000);

    rewrite(&b, "max_message_size: 1000", "max_message_size: 2000");
    b.signal("HUP");
    wait_log(&b, "configuration reloaded", 1).await;

    // The session open across the reload still has the policy it started with.
    assert_eq!(size_of(&old.cmd("EHLO client.test").await), 1000);
    assert_eq!(old.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let (mut new, ehlo) = session(addr).await;
    assert_eq!(size_of(&ehlo), 2000);
    assert_eq!(new.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert_eq!(
        metric(
            metrics,
            "smtp_sidecar_config_reloads_total{result=\"success\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_file_is_refused_and_the_old_configuration_stays() {
    let (b, addr, metrics) = sidecar(1000).await;
    rewrite(
        &b,
        "max_message_size: 1000",
        "max_message_size: 2000\n      no_such_key: 1",
    );
    b.signal("HUP");
    wait_log(&b, "reload refused", 1).await;
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("no_such_key")),
        "the problem named at error:\n{log}"
    );

    let (mut c, ehlo) = session(addr).await;
    assert_eq!(size_of(&ehlo), 1000, "the old configuration in force");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert_eq!(
        metric(
            metrics,
            "smtp_sidecar_config_reloads_total{result=\"failure\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            metrics,
            "smtp_sidecar_config_reloads_total{result=\"success\"}"
        )
        .await,
        0.0
    );
    assert_eq!(metric(metrics, "smtp_sidecar_config_generation").await, 1.0);
}

fn listener(name: &str, port: u16, backend: SocketAddr) -> String {
    format!(
        "  - name: {name}\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:{port}\n\
         \x20   tls: starttls\n\
         \x20   backend:\n\
         \x20     servers: [\"{backend}\"]\n\
         \x20     connect_timeout: 2s\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_added_accepts_one_removed_stops() {
    let (backend, _rec) = recording_backend().await;
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let head = format!(
        "hostname: mx.test\nshutdown_grace: 2s\nmetrics:\n  listen: {metrics}\nlisteners:\n"
    );
    let yaml = format!(
        "{head}{}{}",
        listener("a", pa, backend),
        listener("b", pb, backend)
    );
    let b = start_binary(&yaml);
    wait_log(&b, " listening", 2).await;
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let b_up = "smtp_sidecar_backend_up{listener=\"b\"";
    let text = admin_http::request(metrics, "GET", "/metrics").await.text();
    assert!(text.contains(b_up), "{text}");
    // A session on `b` open across the reload that removes `b`.
    let (mut on_b, _) = session(at(pb)).await;

    let state = b.config().lines().next().unwrap().to_owned();
    let new = format!(
        "{state}\n{head}{}{}",
        listener("a", pa, backend),
        listener("c", pc, backend)
    );
    std::fs::write(b.config_path(), new).unwrap();
    b.signal("HUP");
    wait_log(&b, "configuration reloaded", 1).await;

    let (mut c, _) = session(at(pc)).await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let (mut a, _) = session(at(pa)).await;
    assert_eq!(a.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(
        tokio::net::TcpStream::connect(at(pb)).await.is_err(),
        "the removed listener's port is closed"
    );
    // Its session in flight goes on.
    assert!(on_b.cmd("NOOP").await.starts_with("250"));
    assert_eq!(on_b.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let text = admin_http::request(metrics, "GET", "/metrics").await.text();
    assert!(
        !text.contains(b_up),
        "the removed listener's backend series are gone:\n{text}"
    );
    let log = b.log();
    assert!(
        log.contains("stopped listening"),
        "the removal logged:\n{log}"
    );
}

/// Until a new session sees `SIZE {size}` (5 s at most); how long it took.
async fn until_size(addr: SocketAddr, size: u64) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let (mut c, ehlo) = session(addr).await;
        c.cmd("QUIT").await;
        if size_of(&ehlo) == size {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("SIZE {size} not in force within 5 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_on_disk_is_picked_up_without_a_signal() {
    let (b, addr, metrics) = sidecar(1000).await;
    // Written in place.
    rewrite(&b, "max_message_size: 1000", "max_message_size: 2000");
    until_size(addr, 2000).await;
    // Replaced by rename, as editors do.
    let tmp = b.config_path().with_extension("yaml.tmp");
    std::fs::write(
        &tmp,
        b.config()
            .replace("max_message_size: 2000", "max_message_size: 3000"),
    )
    .unwrap();
    std::fs::rename(&tmp, b.config_path()).unwrap();
    until_size(addr, 3000).await;
    assert_eq!(metric(metrics, "smtp_sidecar_config_generation").await, 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_of_a_listener_that_stays_continue() {
    let (b, addr, metrics) = sidecar(1000).await;
    for _ in 0..2 {
        let (mut c, _) = session(addr).await;
        c.cmd("QUIT").await;
    }
    let series = "smtp_sidecar_connections_total{listener=\"inbound\"}";
    assert_eq!(metric(metrics, series).await, 2.0);
    rewrite(&b, "max_message_size: 1000", "max_message_size: 2000");
    b.signal("HUP");
    wait_log(&b, "configuration reloaded", 1).await;
    let (mut c, _) = session(addr).await;
    c.cmd("QUIT").await;
    assert_eq!(
        metric(metrics, series).await,
        3.0,
        "not reset by the reload"
    );
    assert_eq!(metric(metrics, "smtp_sidecar_config_generation").await, 2.0);
    assert!(metric(metrics, "smtp_sidecar_config_last_reload_timestamp_seconds").await > 0.0);
}
