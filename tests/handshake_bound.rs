//! The handshake bound (issue 16, "Handshake floods"; `policy.max_handshakes`): TLS handshakes
//! in progress at once per listener. With every slot taken, a new connection is refused at
//! accept, before it costs a handshake (`421 4.7.0` on a STARTTLS listener, a close without a
//! byte on an implicit-TLS one); a handshake of a session admitted earlier waits for a slot
//! within its deadline. The listener runs in-process on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use smtp_sidecar::runtime::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REFUSED: &str = "421 4.7.0 Too many connections, try again later\r\n";

async fn listener(tls: &str) -> Running {
    let (backend, _rec) = recording_backend().await;
    start(&config_yaml(backend, tls, "      max_handshakes: 1\n")).await
}

fn refused(running: &Running) -> u64 {
    running
        .metrics
        .connections_refused_total
        .with_label_values(&["inbound"])
        .get()
}

/// Everything the server sends until it closes.
async fn until_closed(mut tcp: TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// A STARTTLS session that stops right after `220 Ready to start TLS`: its handshake holds the
/// listener's slot until it is dropped.
async fn stalled_starttls(running: &Running) -> Client {
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    // The session's task takes the slot when it starts the handshake.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c
}

#[tokio::test]
async fn starttls_listener_refuses_at_accept_while_the_slots_are_taken() {
    let running = listener("starttls").await;
    let addr = running.addr("inbound").unwrap();
    let stalled = stalled_starttls(&running).await;
    let before = refused(&running);
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(until_closed(tcp).await, REFUSED);
    assert_eq!(refused(&running), before + 1);
    // The slot is free again once the stalled handshake is gone.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Client::starttls_session(addr).await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    running.shutdown().await;
}

#[tokio::test]
async fn implicit_listener_closes_without_a_byte_while_the_slots_are_taken() {
    let running = listener("implicit").await;
    let addr = running.addr("inbound").unwrap();
    // A client that sends half a TLS record header and waits: its handshake holds the slot.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = refused(&running);
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(until_closed(tcp).await, "");
    assert_eq!(refused(&running), before + 1);
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Client::connect_implicit(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    running.shutdown().await;
}

/// A session admitted before the slots were taken is not refused: its STARTTLS handshake
/// waits for the slot and completes once it is free.
#[tokio::test]
async fn a_handshake_waits_for_a_slot() {
    let running = listener("starttls").await;
    let addr = running.addr("inbound").unwrap();
    let mut waiting = Client::connect(addr).await;
    assert_eq!(waiting.reply().await, "220 mx.test ESMTP\r\n");
    assert!(waiting.cmd("EHLO client.test").await.contains("STARTTLS"));
    let stalled = stalled_starttls(&running).await;
    assert_eq!(
        waiting.cmd("STARTTLS").await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let upgrade = tokio::spawn(waiting.upgrade());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!upgrade.is_finished(), "handshake done without a slot");
    drop(stalled);
    let mut c = tokio::time::timeout(T, upgrade).await.unwrap().unwrap();
    assert!(c
        .cmd("EHLO client.test")
        .await
        .starts_with("250-mx.test\r\n"));
    running.shutdown().await;
}

/// With more than half of `max_handshakes` taken, handshakes queue for the CPU: their work
/// goes through the lane (`io::lane`: established sessions first), and a session's handshake
/// still completes through it and the session relays. With fewer taken, it does not.
#[tokio::test]
async fn more_than_half_the_slots_taken_sends_handshakes_through_the_lane() {
    let (backend, rec) = recording_backend().await;
    let running = start(&config_yaml(
        backend,
        "starttls",
        "      max_handshakes: 4\n",
    ))
    .await;
    let l = &running.snapshot.listeners[0].1;
    let slots = l.handshakes.as_ref().unwrap();
    let mut taken = Vec::new();
    for n in 0..3 {
        assert!(!l.handshakes_pressed(), "{n} of 4 taken");
        taken.push(slots.take().await.unwrap());
    }
    assert!(l.handshakes_pressed(), "3 of 4 taken");
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    c.cmd("DATA").await;
    c.send(b"through the lane\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
    assert_eq!(rec.messages().len(), 1);
    taken.clear();
    assert!(!l.handshakes_pressed());
}
