//! The pool's order and skip logic, and the health check, against local sockets.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A port nothing listens on: connections to it are refused at once.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

/// A server that greets with `greeting` and answers every line with `reply`.
async fn server(greeting: &'static [u8], reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(greeting).await;
                let mut buf = [0u8; 512];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = s.write_all(reply).await;
                }
            });
        }
    });
    addr
}

async fn smtp() -> String {
    server(b"220 ok ESMTP\r\n", b"250-ok\r\n250 PIPELINING\r\n").await
}

/// Connect through `pool`; return the servers attempted and the one connected to.
async fn attempt(pool: &Pool) -> (Vec<(String, bool)>, Option<String>) {
    let seen = Mutex::new(Vec::new());
    let r = pool
        .connect(
            "l",
            |s, up| seen.lock().unwrap().push((s.to_owned(), up)),
            |_| {},
        )
        .await;
    let peer = r
        .ok()
        .map(|(s, _)| s.tcp().unwrap().peer_addr().unwrap().to_string());
    (seen.into_inner().unwrap(), peer)
}

#[tokio::test]
async fn servers_in_order_the_first_that_answers() {
    let (a, b) = (smtp().await, smtp().await);
    let pool = Pool::new(&[a.clone(), b.clone()], Duration::from_secs(2));
    assert_eq!(attempt(&pool).await, (vec![(a.clone(), true)], Some(a)));
}

#[tokio::test]
async fn a_failed_connect_marks_the_server_down_and_the_next_session_skips_it() {
    let (dead, live) = (closed_port().await, smtp().await);
    let pool = Pool::new(&[dead.clone(), live.clone()], Duration::from_secs(2));
    assert!(pool.is_up(&dead));
    let first = attempt(&pool).await;
    assert_eq!(
        first,
        (
            vec![(dead.clone(), false), (live.clone(), true)],
            Some(live.clone())
        )
    );
    assert!(!pool.is_up(&dead));
    // Not tried again until a health check passes.
    assert_eq!(
        attempt(&pool).await,
        (vec![(live.clone(), true)], Some(live))
    );
}

#[tokio::test]
async fn all_marked_down_fails_at_once_without_a_connect() {
    let (a, b) = (smtp().await, smtp().await);
    let pool = Pool::new(&[a.clone(), b.clone()], Duration::from_secs(2));
    pool.mark("l", 0, false, "test");
    pool.mark("l", 1, false, "test");
    let seen = Mutex::new(Vec::new());
    let r = pool
        .connect(
            "l",
            |s, up| seen.lock().unwrap().push((s.to_owned(), up)),
            |_| {},
        )
        .await;
    assert_eq!(
        r.err().unwrap(),
        format!("{a}: marked down; {b}: marked down")
    );
    assert!(seen.lock().unwrap().is_empty());
    pool.mark("l", 1, true, "");
    assert_eq!(attempt(&pool).await.1, Some(b));
}

#[tokio::test]
async fn health_check_passes_on_220_and_2xx_ehlo() {
    let ehlo = check(&smtp().await, "mx.test", WAITS, None).await.unwrap();
    assert_eq!(
        (ehlo.code, ehlo.lines),
        (250, vec!["ok".into(), "PIPELINING".into()])
    );
}

/// The EHLO reply known for new sessions is the first server's not marked down, from its
/// last passed check; a server marked down forgets its own.
#[tokio::test]
async fn the_known_ehlo_is_the_first_live_servers() {
    let pool = Pool::new(&[smtp().await, smtp().await], Duration::from_secs(2));
    assert_eq!(pool.known_ehlo(), None, "no check passed yet");
    let (a, b) = (Reply::new(250, "a"), Reply::new(250, "b"));
    pool.servers[0].ehlo.store(Some(Arc::new(a.clone())));
    pool.servers[1].ehlo.store(Some(Arc::new(b.clone())));
    assert_eq!(pool.known_ehlo().as_deref(), Some(&a));
    pool.mark("l", 0, false, "test");
    assert_eq!(pool.known_ehlo().as_deref(), Some(&b));
    pool.mark("l", 0, true, "");
    assert_eq!(pool.known_ehlo(), None, "the first server's was forgotten");
}

/// A check's connect timeout and its wait for each reply.
const WAITS: (Duration, Duration) = (Duration::from_secs(2), CHECK_REPLY_TIMEOUT);

#[tokio::test]
async fn health_check_fails() {
    let t = WAITS;
    let refused = check(&closed_port().await, "mx.test", t, None)
        .await
        .unwrap_err();
    assert!(refused.starts_with("connect: "), "{refused}");
    let busy = server(b"554 go away\r\n", b"250 ok\r\n").await;
    // A server that refuses EHLO (a policy refusal, or one that knows only HELO) offers
    // sessions neither STARTTLS nor XCLIENT: the next server is better.
    for refusal in ["502 5.5.2 no", "554 5.7.1 not you", "421 4.3.2 bye"] {
        let refusing = server(b"220 ok\r\n", format!("{refusal}\r\n").leak().as_bytes()).await;
        assert_eq!(
            check(&refusing, "mx.test", t, None).await,
            Err(format!("EHLO: {refusal}"))
        );
    }
    assert_eq!(
        check(&busy, "mx.test", t, None).await.unwrap_err(),
        "greeting: 554 go away"
    );
    // A greeting longer than a reply may be: refused, not buffered.
    let long: &'static [u8] = "220-more\r\n".repeat(10_000).leak().as_bytes();
    let endless = server(long, b"250 ok\r\n").await;
    let err = check(&endless, "mx.test", t, None).await.unwrap_err();
    assert!(err.starts_with("greeting: "), "{err}");
}

#[tokio::test(start_paused = true)]
async fn health_check_waits_for_a_silent_server_no_longer_than_its_deadline() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let err = check(&addr, "mx.test", WAITS, None).await.unwrap_err();
    assert_eq!(
        err,
        format!("greeting: no reply within {CHECK_REPLY_TIMEOUT:?}")
    );
    assert!(started.elapsed() <= CHECK_REPLY_TIMEOUT + Duration::from_millis(100));
    drop(silent);
}

/// A pool's checks wait for each reply as long as its sessions do (`backend_reply`), up to
/// 30 s: a server that greets after 6 s, as one doing a slow reverse lookup may, passes.
#[tokio::test(start_paused = true)]
async fn health_check_waits_as_long_as_the_sessions_up_to_30s() {
    let pool = Pool::new(&[], Duration::from_secs(2)).with_reply_timeout(Duration::from_secs(300));
    assert_eq!(pool.reply_timeout, MAX_CHECK_REPLY_TIMEOUT);
    let pool = Pool::new(&[], Duration::from_secs(2)).with_reply_timeout(Duration::from_secs(8));
    assert_eq!(pool.reply_timeout, Duration::from_secs(8));
    let slow = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = slow.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut tcp, _) = slow.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        tcp.write_all(b"220 slow\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = tcp.read(&mut buf).await.unwrap();
        tcp.write_all(b"250 ok\r\n").await.unwrap();
        let _ = tcp.read(&mut buf).await;
    });
    let waits = (Duration::from_secs(2), pool.reply_timeout);
    let ehlo = check(&addr, "mx.test", waits, None).await.unwrap();
    assert_eq!(ehlo.code, 250);
}
