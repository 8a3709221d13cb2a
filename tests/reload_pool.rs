//! A reload and the backend pool's knowledge of which servers are down (README: "A server
//! whose connection fails ... is marked down at once: the next session skips it without
//! trying ... only a check brings a server marked down back").
//!
//! A reload used to build a new pool whose servers all counted as up, with health checks that
//! began one `health_check_interval` later: after every reload the sessions that arrived before
//! a connect to the dead server had timed out each waited `connect_timeout` again. A listener
//! whose backend is unchanged now keeps its pool and its checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::binary::{start_binary, Binary};
use common::{black_hole, recording_backend, Client};

/// The time to a session's greeting, which must be a 220.
async fn greeted(b: &Binary) -> Duration {
    let started = Instant::now();
    let mut c = Client::connect(b.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    let took = started.elapsed();
    c.cmd("QUIT").await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_server_marked_down() {
    let (hole, _held, _listener) = black_hole("127.0.0.1:0".parse().unwrap()).await;
    let (live, _rec) = recording_backend().await;
    let b = start_binary(&format!(
        "hostname: mx.test\nshutdown_grace: 1s\nlisteners:\n  - name: inbound\n    mode: terminate\n\
         \x20   listen: 127.0.0.1:0\n    tls: starttls\n    backend:\n\
         \x20     servers: [\"{hole}\", \"{live}\"]\n      connect_timeout: 2s\n"
    ));
    let first = greeted(&b).await;
    assert!(
        first >= Duration::from_secs(2),
        "{first:?}: no connect wait"
    );
    let next = greeted(&b).await;
    assert!(
        next < Duration::from_secs(1),
        "{next:?}: the hole is skipped"
    );

    b.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Eight sessions at once right after a reload that changed nothing.
    let b = std::sync::Arc::new(b);
    let sessions: Vec<_> = (0..8)
        .map(|_| {
            let b = std::sync::Arc::clone(&b);
            tokio::spawn(async move { greeted(&b).await })
        })
        .collect();
    let mut waited = Vec::new();
    for s in sessions {
        waited.push(s.await.unwrap());
    }
    let slow = waited
        .iter()
        .filter(|&&t| t >= Duration::from_secs(1))
        .count();
    assert_eq!(
        slow, 0,
        "after a reload, {slow} of 8 sessions waited for the server marked down: {waited:?}"
    );
}
