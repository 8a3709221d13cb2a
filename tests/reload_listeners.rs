//! Reloads that change what a listener is built from without changing the policy its sessions
//! see (SPEC §2, issue 15 "Reload"): the backend pool kept or rebuilt, with what its health
//! checks know. Sidecars run in this process from a configuration file, reloaded as SIGHUP
//! does (`Running::reload`), so a test can look at the snapshot in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{free_port, TempDir};
use common::*;
use smtp_sidecar::runtime::Running;

/// A sidecar in this process started from the configuration file at `path`, which a reload
/// reads again.
async fn start_file(path: &Path) -> Running {
    let config = smtp_sidecar::config::load(path).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let store = smtp_sidecar::runtime::load_certificates(&config).unwrap();
    let mut running = smtp_sidecar::runtime::start(&config, &store).await.unwrap();
    running.set_config_path(path.to_owned());
    running
}

/// `yaml` written as `config.yaml` in `dir`, with a `state_dir` there.
fn write_config(dir: &TempDir, yaml: &str) -> PathBuf {
    let path = dir.0.join("config.yaml");
    let state = dir.0.join("state");
    std::fs::write(&path, format!("state_dir: {}\n{yaml}", state.display())).unwrap();
    path
}

/// Reload the file at `path` after writing `yaml` to it; the reload must be accepted.
async fn reload_with(running: &mut Running, dir: &TempDir, yaml: &str) {
    write_config(dir, yaml);
    assert!(running.reload().await, "the reload was refused");
}

/// Wait (10 s at most) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pool of listener `name` in the snapshot in force.
fn pool(running: &Running, name: &str) -> Arc<smtp_sidecar::backend::Pool> {
    Arc::clone(&running.snapshot.listener(name).unwrap().pool)
}

/// One terminate listener `inbound` on 127.0.0.1:`port` in front of `servers`, checked every
/// second, with `connect_timeout` and `max_message_size` as given.
fn pool_yaml(port: u16, servers: &[String], connect_timeout: &str, size: u64) -> String {
    format!(
        "hostname: mx.test\nshutdown_grace: 2s\nlisteners:\n  - name: inbound\n    \
         listen: 127.0.0.1:{port}\n    backend:\n      servers: {servers:?}\n      \
         connect_timeout: {connect_timeout}\n      health_check_interval: 1s\n    \
         policy:\n      max_message_size: {size}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_backend_keeps_its_pool_and_what_the_checks_know() {
    let dir = TempDir::new("reload-pool");
    let (backend, _rec) = recording_backend().await;
    // Nothing listens there yet: the health checks mark it down.
    let late = format!("127.0.0.1:{}", free_port());
    let servers = [late.clone(), backend.to_string()];
    let port = free_port();
    let path = write_config(&dir, &pool_yaml(port, &servers, "2s", 1000));
    let mut running = start_file(&path).await;
    let first = pool(&running, "inbound");
    until("the first server checked down", || !first.is_up(&late)).await;

    // The policy changes, the backend does not: same pool, the server still down.
    reload_with(&mut running, &dir, &pool_yaml(port, &servers, "2s", 2000)).await;
    let kept = pool(&running, "inbound");
    assert!(Arc::ptr_eq(&first, &kept), "the pool was rebuilt");
    assert!(!kept.is_up(&late), "a reload reset what the checks knew");
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c
        .cmd("EHLO client.test")
        .await
        .contains("250-SIZE 2000\r\n"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");

    // The backend changes: a new pool that knows nothing yet, whose own checks run.
    reload_with(&mut running, &dir, &pool_yaml(port, &servers, "3s", 2000)).await;
    let rebuilt = pool(&running, "inbound");
    assert!(!Arc::ptr_eq(&kept, &rebuilt), "the pool was kept");
    assert!(
        rebuilt.is_up(&late),
        "a new pool starts with every server up"
    );
    until("the new pool's checks mark it down", || {
        !rebuilt.is_up(&late)
    })
    .await;

    // The server comes up: the checks of the pool in force see it.
    let listener = tokio::net::TcpListener::bind(&late).await.unwrap();
    tokio::spawn(smtp_sidecar::sink::serve(
        listener,
        true,
        Arc::new(|_: smtp_sidecar::sink::SinkEvent| {}),
    ));
    until("the server checked up again", || rebuilt.is_up(&late)).await;
    running.shutdown().await;
}
