//! Reloads that change what listeners are built from or where they are (SPEC §2, issue 15
//! "Reload"): the backend pool kept or rebuilt, a listener moved to another port, a port
//! that cannot be bound, the status page after listeners come and go, and files replaced
//! under an unchanged configuration (a certificate, a CRL). Most sidecars run in this process
//! from a configuration file, reloaded as SIGHUP does (`Running::reload`), so a test can
//! look at the snapshot in force; where the log or the signal itself matters, the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use common::binary::start_binary;
use common::pki::{presented, read_reply, starttls_presented, Pki, Spec};
use common::process::{free_port, TempDir};
use common::*;
use partner_pki::{client_config, Identity, PartnerPki};
use smtp_sidecar::runtime::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A sidecar in this process started from the configuration file at `path`, which a reload
/// reads again.
async fn start_file(path: &Path) -> Running {
    let config = smtp_sidecar::config::load(path).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let (store, unsaved) = smtp_sidecar::runtime::load_certificates(&config).unwrap();
    if let Some(unsaved) = unsaved {
        unsaved.save().unwrap();
    }
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

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A terminate listener called `name` on 127.0.0.1:`port` in front of `backend`.
fn listener(name: &str, port: u16, backend: SocketAddr) -> String {
    format!(
        "  - name: {name}\n    listen: 127.0.0.1:{port}\n    \
         backend: {{servers: [\"{backend}\"], connect_timeout: 2s}}\n"
    )
}

/// A session past its greeting; its EHLO reply.
async fn session(addr: SocketAddr) -> (Client, String) {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.starts_with("250-mx.test\r\n"), "{ehlo}");
    (c, ehlo)
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
    let (mut c, ehlo) = session(running.addr("inbound").unwrap()).await;
    assert!(ehlo.contains("250-SIZE 2000\r\n"), "{ehlo}");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_moved_to_another_port_closes_the_old_one_and_its_sessions_finish() {
    let dir = TempDir::new("reload-move");
    let (backend, rec) = recording_backend().await;
    let (old_port, new_port) = (free_port(), free_port());
    let head = "hostname: mx.test\nshutdown_grace: 2s\nlisteners:\n";
    let path = write_config(&dir, &format!("{head}{}", listener("a", old_port, backend)));
    let mut running = start_file(&path).await;
    let first = pool(&running, "a");
    let bound = Arc::clone(&running.snapshot.bound);
    // In the middle of a transaction when the listener moves.
    let (mut in_flight, _) = session(at(old_port)).await;
    assert_eq!(
        in_flight.cmd("MAIL FROM:<a@x.test>").await,
        "250 2.1.0 Ok\r\n"
    );

    let moved = format!("{head}{}", listener("a", new_port, backend));
    reload_with(&mut running, &dir, &moved).await;
    assert_eq!(running.addr("a"), Some(at(new_port)));
    // Where the listeners are, as sessions of the first configuration see it too (an MX
    // there is a mail loop): the new port, not the old.
    assert!(Arc::ptr_eq(&bound, &running.snapshot.bound));
    let ours = |port| bound.loops_back(at(port), None);
    assert_eq!((ours(new_port), ours(old_port)), (Some(at(new_port)), None));
    // The old accept loop sees its stop signal on its own task, just after the reload.
    until("the old port stops accepting", || {
        std::net::TcpStream::connect(at(old_port)).is_err()
    })
    .await;
    let (mut new, _) = session(at(new_port)).await;
    assert_eq!(new.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(
        Arc::ptr_eq(&first, &pool(&running, "a")),
        "same backend: the moved listener keeps its pool"
    );

    // The session accepted on the old port finishes its message.
    assert_eq!(
        in_flight.cmd("RCPT TO:<b@y.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert!(in_flight.cmd("DATA").await.starts_with("354 "));
    assert!(in_flight
        .cmd("Subject: moved\r\n\r\nhi\r\n.")
        .await
        .starts_with("250 2.0.0 Ok"));
    assert_eq!(in_flight.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    rec.closed(2).await;
    assert_eq!(rec.messages().len(), 1);
    running.shutdown().await;
}

/// The listeners `/status.json` shows, by name.
async fn status_listeners(admin: SocketAddr) -> Vec<String> {
    let text = admin_http::request(admin, "GET", "/status.json")
        .await
        .text();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_listeners_in_force() {
    let dir = TempDir::new("reload-status");
    let (backend, _rec) = recording_backend().await;
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let head =
        "hostname: mx.test\nshutdown_grace: 2s\nmetrics:\n  listen: 127.0.0.1:0\nlisteners:\n";
    let path = write_config(
        &dir,
        &format!(
            "{head}{}{}",
            listener("a", pa, backend),
            listener("b", pb, backend)
        ),
    );
    let mut running = start_file(&path).await;
    let admin = running.metrics_addr.unwrap();
    // `b` has counted a session: its series stay in the registry after the reload.
    let (mut c, _) = session(at(pb)).await;
    c.cmd("QUIT").await;
    assert_eq!(status_listeners(admin).await, ["a", "b"]);

    let new = format!(
        "{head}{}{}",
        listener("a", pa, backend),
        listener("c", pc, backend)
    );
    reload_with(&mut running, &dir, &new).await;
    assert_eq!(status_listeners(admin).await, ["a", "c"]);
    let page = admin_http::request(admin, "GET", "/").await.text();
    assert!(page.contains("data-listener=\"c\""), "{page}");
    assert!(!page.contains("data-listener=\"b\""), "{page}");
    let metrics = admin_http::request(admin, "GET", "/metrics").await.text();
    assert!(
        metrics.contains("smtp_sidecar_connections_total{listener=\"b\"} 1"),
        "the removed listener's counters stay:\n{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_that_cannot_be_bound_refuses_the_reload() {
    let (backend, _rec) = recording_backend().await;
    let admin = at(free_port());
    let port = free_port();
    // Held by someone else when the reload wants it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let head =
        format!("hostname: mx.test\nshutdown_grace: 2s\nmetrics:\n  listen: {admin}\nlisteners:\n");
    let b = start_binary(&format!("{head}{}", listener("a", port, backend)));
    b.wait_log(" listening", 1).await;
    let state = b.config().lines().next().unwrap().to_owned();
    let kept =
        std::path::Path::new(state.trim_start_matches("state_dir: ")).join("self-signed.crt");
    let kept_before = std::fs::read(&kept).unwrap();
    // A new hostname too: the self-signed certificate the refused reload generates for it
    // must not replace the kept one.
    let new = format!(
        "{state}\n{}{}{}",
        head.replace("hostname: mx.test", "hostname: mx2.test"),
        listener("a", port, backend).replace("connect_timeout: 2s", "connect_timeout: 3s"),
        listener("b", taken_port, backend)
    );
    std::fs::write(b.config_path(), new).unwrap();
    b.signal("HUP");
    b.wait_log("reload refused", 1).await;

    let log = b.log();
    let named = format!("listener b: cannot listen on 127.0.0.1:{taken_port}");
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&named) && l.contains("in use")),
        "the problem named at error:\n{log}"
    );
    assert!(!log.contains("configuration reloaded"), "{log}");
    let metric = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    let text = admin_http::request(admin, "GET", "/metrics").await.text();
    let reloads = "smtp_sidecar_config_reloads_total";
    assert_eq!(
        metric(&text, &format!("{reloads}{{result=\"failure\"}}")),
        1.0
    );
    assert_eq!(
        metric(&text, &format!("{reloads}{{result=\"success\"}}")),
        0.0
    );
    assert_eq!(metric(&text, "smtp_sidecar_config_generation"), 1.0);
    // The old configuration in force: `a` serves, `b` is not there.
    let (mut c, _) = session(at(port)).await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert_eq!(status_listeners(admin).await, ["a"]);
    assert!(
        std::fs::read(&kept).unwrap() == kept_before,
        "the kept self-signed certificate was replaced by a refused reload"
    );
    // Accepted, the new hostname's certificate is kept in its place.
    let accepted = format!(
        "{state}\n{}{}",
        head.replace("hostname: mx.test", "hostname: mx2.test"),
        listener("a", port, backend)
    );
    std::fs::write(b.config_path(), accepted).unwrap();
    b.signal("HUP");
    b.wait_log("configuration reloaded", 1).await;
    let pem = std::fs::read(&kept).unwrap();
    assert!(pem != kept_before, "the new certificate was not kept");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_replaced_on_disk_is_served_after_sighup() {
    let pki = Pki::new("reload-cert");
    let old = pki.leaf("mx", Spec::ca(&["mx.test"]));
    let renewed = pki.leaf("renewed", Spec::ca(&["mx.test"]));
    let (backend, _rec) = recording_backend().await;
    let b = start_binary(&format!(
        "certificates:\n{}{}",
        old.yaml_entry(),
        config_yaml(backend, "starttls", "")
    ));
    let addr = b.addr("inbound").unwrap();
    assert_eq!(starttls_presented(addr, Some("mx.test")).await, old.der);
    // Past its EHLO, before STARTTLS, when the certificate changes.
    let mut in_flight = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read_reply(&mut in_flight).await;
    in_flight
        .get_mut()
        .write_all(b"EHLO c.test\r\n")
        .await
        .unwrap();
    assert!(read_reply(&mut in_flight).await.contains("STARTTLS"));

    // The same file names, new contents; the configuration file untouched.
    std::fs::copy(&renewed.cert, &old.cert).unwrap();
    std::fs::copy(&renewed.key, &old.key).unwrap();
    b.signal("HUP");
    b.wait_log("configuration reloaded", 1).await;

    assert_eq!(starttls_presented(addr, Some("mx.test")).await, renewed.der);
    assert_eq!(starttls_presented(addr, None).await, renewed.der);
    // The session in flight keeps the certificate of the snapshot it started with.
    in_flight
        .get_mut()
        .write_all(b"STARTTLS\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut in_flight).await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    assert_eq!(
        presented(in_flight.into_inner(), Some("mx.test")).await,
        old.der
    );
}

/// STARTTLS presenting `identity`, then EHLO: the reply, or how the handshake ended.
async fn ehlo_presenting(addr: SocketAddr, identity: &Identity) -> Result<String, String> {
    let mut io = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read_reply(&mut io).await;
    io.get_mut().write_all(b"EHLO c.test\r\n").await.unwrap();
    read_reply(&mut io).await;
    io.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    assert!(read_reply(&mut io).await.starts_with("220 "));
    let (config, _) = client_config(Some(identity));
    let mut tls = tls_connect_with(config, io.into_inner())
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server judges the client's certificate after the client has finished.
    tls.write_all(b"EHLO c.test\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    match tokio::time::timeout(T, tls.read(&mut buf)).await.unwrap() {
        Ok(0) => Err("closed".to_owned()),
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_replaced_on_disk_revokes_after_sighup() {
    let pki = PartnerPki::new();
    let crl = pki.dir.0.join("current.crl.pem");
    std::fs::copy(&pki.crl_none_revoked, &crl).unwrap();
    let (backend, _rec) = recording_backend().await;
    let b = start_binary(&format!(
        "trust:\n  system_roots: false\n  ca_files: [\"{}\"]\n  crl_files: [\"{}\"]\n{}",
        pki.root_file.display(),
        crl.display(),
        config_yaml(backend, "starttls", "      client_certificates: require\n")
    ));
    let addr = b.addr("inbound").unwrap();
    let before = ehlo_presenting(addr, &pki.revoked).await;
    assert!(
        before
            .as_deref()
            .is_ok_and(|r| r.starts_with("250-mx.test")),
        "{before:?}"
    );

    // The CRL file now lists that certificate; the configuration file is untouched.
    std::fs::copy(&pki.crl_pem, &crl).unwrap();
    b.signal("HUP");
    b.wait_log("configuration reloaded", 1).await;

    let after = ehlo_presenting(addr, &pki.revoked).await;
    assert!(
        after
            .as_ref()
            .is_err_and(|e| e.contains("CertificateRevoked")),
        "{after:?}"
    );
    let partner = ehlo_presenting(addr, &pki.partner).await;
    assert!(partner.is_ok_and(|r| r.starts_with("250-mx.test")));
}

/// A reload whose files cannot be read in time (a CA file that is a FIFO nobody writes, as a
/// file on a stalled mount would be) is refused at its deadline, with the reason, instead of
/// holding up signals for ever; the configuration in force serves on. The read left behind,
/// once it ends, builds nothing (the listener it would add has no series), and a later
/// reload works.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_cannot_read_its_files_in_time_is_refused() {
    let dir = TempDir::new("reload-stalled");
    let (backend, _rec) = recording_backend().await;
    let port = free_port();
    let yaml = format!(
        "hostname: mx.test\nlisteners:\n{}",
        listener("a", port, backend)
    );
    let path = write_config(&dir, &yaml);
    let mut running = start_file(&path).await;
    running.set_reload_deadline(Duration::from_millis(500));
    let fifo = dir.0.join("stalled.pem");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo (coreutils)");
    let stalled = format!(
        "trust: {{ca_files: [\"{}\"]}}\n{yaml}{}",
        fifo.display(),
        listener("added", free_port(), backend)
    );
    write_config(&dir, &stalled);
    // Should the reload wait for the read, the read ends after 5 s (a writer that closes)
    // and the test fails instead of hanging.
    let unblock = fifo.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        let _ = std::fs::OpenOptions::new().write(true).open(unblock);
    });
    let started = Instant::now();
    assert!(
        !running.reload().await,
        "a reload that cannot read its files"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let (mut c, _) = session(at(port)).await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    // The read left behind ends with a CA it can use; nothing is built from it.
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut writer, ca.cert.pem().as_bytes()).unwrap();
    drop(writer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let series = running.metrics.render();
    assert!(!series.contains("listener=\"added\""), "{series}");
    running.set_reload_deadline(Duration::from_secs(30));
    reload_with(&mut running, &dir, &yaml).await;
    running.shutdown().await;
}

/// A listener's limits count its sessions across a reload that moves it, or removes it and
/// adds it back, while they run: its new accept loop does not start from zero, or the limits
/// would hold twice over until the old sessions end.
#[tokio::test]
async fn a_listener_moved_or_removed_and_added_back_keeps_counting_its_sessions() {
    const REFUSED: &str = "421 4.7.0 Too many connections, try again later\r\n";
    let dir = TempDir::new("reload-limits");
    let (backend, _rec) = recording_backend().await;
    let (port, other) = (free_port(), free_port());
    let head = "hostname: mx.test\nshutdown_grace: 2s\nlisteners:\n";
    let limited = |port| {
        format!(
            "{head}{}    policy: {{max_connections: 2}}\n",
            listener("a", port, backend)
        )
    };
    let path = write_config(&dir, &limited(port));
    let mut running = start_file(&path).await;
    let (one, _) = session(at(port)).await;
    let (two, _) = session(at(port)).await;
    let mut third = Client::connect(at(port)).await;
    assert_eq!(third.reply().await, REFUSED);

    // Moved: the two sessions of the old port still count on the new one.
    reload_with(&mut running, &dir, &limited(other)).await;
    let mut moved = Client::connect(at(other)).await;
    assert_eq!(moved.reply().await, REFUSED, "moved");

    // Removed, then added back: still counted.
    let (keep_backend, _keep) = recording_backend().await;
    let none = format!("{head}{}", listener("b", free_port(), keep_backend));
    reload_with(&mut running, &dir, &none).await;
    assert_eq!(running.addr("a"), None);
    reload_with(&mut running, &dir, &limited(port)).await;
    let mut back = Client::connect(at(port)).await;
    assert_eq!(back.reply().await, REFUSED, "added back");

    // Renamed where it is, with a new listener under its old name: each has its own counts
    // (the two sessions stay with the socket they came in on).
    let renamed = limited(port).replace("name: a", "name: b")
        + &listener("a", other, backend)
        + "    policy: {max_connections: 2}\n";
    reload_with(&mut running, &dir, &renamed).await;
    let mut fresh = Client::connect(at(other)).await;
    assert_eq!(fresh.reply().await, "220 mx.test ESMTP\r\n", "renamed");
    drop(fresh);
    let mut kept = Client::connect(at(port)).await;
    assert_eq!(kept.reply().await, REFUSED, "renamed, at its address");

    // Once the old sessions end, their places are free.
    drop((one, two));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect(at(port)).await;
        if c.reply().await == "220 mx.test ESMTP\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old sessions' places not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
}
