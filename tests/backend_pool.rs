//! The backend pool with health checks (issue 15 "Pool with health checks"), on the sidecar
//! started in-process in front of two sink backends that the tests stop and restart: servers
//! in order; a failed server skipped by the very next session; all down answered `421 4.4.2`
//! at once, without a connect wait; a recovered server found again by the health check; and
//! `backend_up` / `backend_last_check_timestamp_seconds` set by the checks with no session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{black_hole, is_health_check, start, Client, Recorder};
use smtp_sidecar::backend::CHECK_INTERVAL;
use smtp_sidecar::runtime::Running;
use smtp_sidecar::sink::SinkEvent;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const ALL_DOWN: &str = "421 4.4.2 Backend unavailable, try again later\r\n";

/// A sink backend on a fixed address that can be stopped (its port then refuses
/// connections) and started again on the same address.
struct Backend {
    addr: SocketAddr,
    rec: Recorder,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    async fn new() -> Backend {
        let mut b = Backend {
            addr: "127.0.0.1:0".parse().unwrap(),
            rec: Recorder::default(),
            task: None,
        };
        b.start().await;
        b
    }

    async fn start(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let r = self.rec.clone();
        let handler = Arc::new(move |e: SinkEvent| match e {
            SinkEvent::Closed { transcript } if is_health_check(&transcript) => {}
            SinkEvent::Closed { transcript } => r.transcripts.lock().unwrap().push(transcript),
            SinkEvent::Message { data, .. } => r.messages.lock().unwrap().push(data),
        });
        self.task = Some(tokio::spawn(smtp_sidecar::sink::serve(
            listener, true, handler,
        )));
    }

    /// Close the listening socket: new connections are refused.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn messages(&self) -> usize {
        self.rec.messages().len()
    }
}

/// A terminate listener over `servers`, in that order.
fn yaml(servers: &[SocketAddr], connect_timeout: &str, admin: bool) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let metrics = if admin {
        "metrics: {listen: 127.0.0.250:0}\n"
    } else {
        ""
    };
    format!(
        "hostname: mx.test\n\
         shutdown_grace: 2s\n\
         {metrics}\
         listeners:\n\
         \x20 - name: inbound\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   tls: starttls\n\
         \x20   backend:\n\
         \x20     servers: [{}]\n\
         \x20     connect_timeout: {connect_timeout}\n\
         \x20   policy:\n\
         \x20     received_header: false\n",
        list.join(", ")
    )
}

/// One session; the time to its first reply, and that reply.
async fn greeting(running: &Running) -> (Duration, Client, String) {
    let started = Instant::now();
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    let reply = c.reply().await;
    (started.elapsed(), c, reply)
}

/// One session that delivers one message; the time to its greeting.
async fn deliver(running: &Running) -> Duration {
    let (took, mut c, reply) = greeting(running).await;
    assert_eq!(reply, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(c
        .cmd("Subject: t\r\n\r\nbody\r\n.")
        .await
        .starts_with("250"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    took
}

fn gauge(running: &Running, family: &str, server: SocketAddr) -> i64 {
    let m = &running.metrics;
    let vec = match family {
        "up" => &m.backend_up,
        _ => &m.backend_last_check_timestamp_seconds,
    };
    vec.with_label_values(&["inbound", &server.to_string()])
        .get()
}

/// Wait until `server`'s `backend_up` is `up` with a check after `since` (Unix seconds);
/// how long that took. Panics after three intervals.
async fn until_checked(running: &Running, server: SocketAddr, up: bool, since: i64) -> Duration {
    let started = Instant::now();
    while started.elapsed() < 3 * CHECK_INTERVAL {
        if gauge(running, "up", server) == i64::from(up) && gauge(running, "check", server) >= since
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{server} not checked {} within 3 intervals",
        if up { "up" } else { "down" }
    );
}

fn unix_now() -> i64 {
    smtp_sidecar::clock::unix_now()
}

/// (a) both up: the first gets the mail; (b) the first stops answering (it black-holes
/// connections, the worst case): the session that sees the failure waits out its connect
/// timeout and goes on to the second; every session after it skips the first, greeted within
/// 1 s; (d) the first back: the health check finds it within about two intervals and it is
/// used again.
#[tokio::test]
async fn in_order_failover_at_once_and_back_after_a_health_check() {
    let (mut a, b) = (Backend::new().await, Backend::new().await);
    let running = start(&yaml(&[a.addr, b.addr], "2s", false)).await;

    deliver(&running).await;
    deliver(&running).await;
    assert_eq!((a.messages(), b.messages()), (2, 0), "both up: the first");

    a.stop().await;
    let hole = black_hole(a.addr).await;
    let seen = deliver(&running).await;
    assert!(
        seen >= Duration::from_secs(2),
        "{seen:?}: no connect wait on the first"
    );
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(deliver(&running).await);
    }
    assert_eq!(
        (a.messages(), b.messages()),
        (2, 4),
        "first down: the second"
    );
    eprintln!("failover: the session that saw the failure {seen:?}, the next ones {after:?}");
    for took in after {
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    // Back on the same address: within about two intervals the check marks it up.
    drop(hole);
    let since = unix_now();
    a.start().await;
    let took = until_checked(&running, a.addr, true, since).await;
    eprintln!("recovered server marked up after {took:?}");
    assert!(
        took <= 2 * CHECK_INTERVAL + Duration::from_millis(500),
        "{took:?}"
    );
    deliver(&running).await;
    assert_eq!((a.messages(), b.messages()), (3, 4), "the first used again");
    running.shutdown().await;
}

/// (c) Every server marked down: `421 4.4.2` at once. The server here black-holes
/// connections, so any connect attempt would take the whole 3 s connect timeout.
#[tokio::test]
async fn all_down_answers_421_at_once_without_a_connect_wait() {
    let (hole, _held, _listener) = black_hole("127.0.0.1:0".parse().unwrap()).await;
    let running = start(&yaml(&[hole], "3s", false)).await;

    // The first session finds it out the slow way: its connect times out.
    let (took, mut c, reply) = greeting(&running).await;
    assert_eq!(reply, ALL_DOWN);
    assert!(
        took >= Duration::from_secs(3),
        "{took:?}: the connect did not wait"
    );
    assert!(c.closed().await);

    // From then on, no connect is tried: 421 at once.
    for _ in 0..3 {
        let (took, mut c, reply) = greeting(&running).await;
        assert_eq!(reply, ALL_DOWN);
        eprintln!("all down: 421 after {took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(c.closed().await);
    }
    running.shutdown().await;
}

/// (e) With no session at all, the health checks set `backend_up` and the last-check gauge
/// on /metrics: up for a server that answers, down for one that refuses, and down once the
/// answering one stops.
#[tokio::test]
async fn health_checks_set_backend_up_without_any_session() {
    let mut live = Backend::new().await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let started = unix_now();
    let running = start(&yaml(&[live.addr, dead], "2s", true)).await;
    let admin = running.metrics_addr.unwrap();
    until_checked(&running, live.addr, true, started).await;
    until_checked(&running, dead, false, started).await;

    let text = admin_http::get(admin, "/metrics").await.text();
    let value = |name: &str, server: SocketAddr| -> i64 {
        let key = format!("smtp_sidecar_{name}{{listener=\"inbound\",server=\"{server}\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"));
        line[key.len()..].parse().unwrap()
    };
    assert_eq!(value("backend_up", live.addr), 1);
    assert_eq!(value("backend_up", dead), 0);
    for server in [live.addr, dead] {
        let checked = value("backend_last_check_timestamp_seconds", server);
        assert!(checked >= started && checked <= unix_now(), "{checked}");
    }

    let since = unix_now();
    live.stop().await;
    until_checked(&running, live.addr, false, since).await;
    let text = admin_http::get(admin, "/metrics").await.text();
    let key = format!(
        "smtp_sidecar_backend_up{{listener=\"inbound\",server=\"{}\"}} 0",
        live.addr
    );
    assert!(text.lines().any(|l| l == key), "{key} not in\n{text}");
    // Not a single session reached the backend: the checks are not sessions.
    assert!(live.rec.transcripts.lock().unwrap().is_empty());
    running.shutdown().await;
}

/// Once shutdown begins, `/readyz` answers `503 not ready: shutting down` for as long as the
/// sessions left drain: the listeners accept no new session, and a balancer that asks must
/// send none there.
#[tokio::test]
async fn readyz_says_not_ready_while_shutting_down() {
    let live = Backend::new().await;
    let running = start(&yaml(&[live.addr], "2s", true)).await;
    let admin = running.metrics_addr.unwrap();
    let r = admin_http::get(admin, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    // A transaction in progress keeps the drain going until it ends.
    let (_, mut c, _) = greeting(&running).await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    let shutdown = tokio::spawn(running.shutdown());
    let deadline = Instant::now() + Duration::from_secs(1);
    let r = loop {
        let r = admin_http::get(admin, "/readyz").await;
        if r.status != 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "not ready: shutting down\n")
    );
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    drop(c);
    shutdown.await.unwrap();
}
