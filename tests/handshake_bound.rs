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
use smtp_sidecar::snapshot::{Slot, PRESSURE_HOLD, PRESS_BURST, PRESS_WINDOW, STALLED_AFTER};
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

/// A real client's first flight: its ClientHello, as one TLS record.
fn client_hello() -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
    let mut conn = rustls::ClientConnection::new(client_tls_config(), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// A STARTTLS session that stops after `220 Ready to start TLS` and its ClientHello, reading
/// nothing more: its handshake holds the listener's slot until it is dropped.
async fn stalled_starttls(running: &Running) -> Client {
    let mut c = silent_starttls(running).await;
    c.send(&client_hello()).await;
    // The session's task takes the slot once the ClientHello is in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c
}

/// A STARTTLS session that says nothing after `220 Ready to start TLS`.
async fn silent_starttls(running: &Running) -> Client {
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    c
}

/// A listener (`tls`, backend `backend`) with `max_handshakes: 4` under a handshake flood: 3
/// of its slots taken, held until the returned permits drop.
async fn flooded(backend: std::net::SocketAddr, tls: &str) -> (Running, Vec<Slot>) {
    let running = start(&config_yaml(backend, tls, "      max_handshakes: 4\n")).await;
    let l = &running.snapshot.listeners[0].1;
    let slots = l.handshakes.as_ref().unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(slots.take(|| None, true).await.unwrap());
    }
    assert!(l.handshakes_pressed());
    (running, taken)
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
    // A client that sends its ClientHello and waits: its handshake holds the slot.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&client_hello()).await.unwrap();
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

/// A handshake that has waited for its client for `STALLED_AFTER`, holding the one slot,
/// gives it to a new client once that one's ClientHello is in: the new client is served, the
/// stalled one cut (closed after our flight; a handshake timeout in the metrics). Before,
/// such clients kept a listener refusing every connection for `tls_handshake` (30 s).
#[tokio::test]
async fn a_handshake_stalled_on_its_client_gives_its_slot_to_a_new_one() {
    for (tls, trickle) in [("implicit", false), ("starttls", false), ("implicit", true)] {
        let running = listener(tls).await;
        let addr = running.addr("inbound").unwrap();
        let timeouts = || {
            running
                .metrics
                .tls_handshake_errors_total
                .with_label_values(&["inbound", "server", "timeout"])
                .get()
        };
        // Each sends its ClientHello and reads nothing after.
        let (mut implicit, mut starttls) = (None, None);
        match tls {
            "implicit" => {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(&client_hello()).await.unwrap();
                implicit = Some(tcp);
            }
            _ => starttls = Some(stalled_starttls(&running).await),
        }
        if let (true, Some(tcp)) = (trickle, implicit.as_mut()) {
            // The head of a 16 KiB handshake record, then an octet of it every 200 ms: the
            // client's turn does not start again with each.
            tcp.set_nodelay(true).unwrap();
            tcp.write_all(&[22, 3, 3, 0x40, 0]).await.unwrap();
            for _ in 0..7 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                tcp.write_all(&[0]).await.unwrap();
            }
        } else {
            tokio::time::sleep(STALLED_AFTER + Duration::from_millis(300)).await;
        }
        let before = refused(&running);
        served(tls, addr).await;
        assert_eq!(refused(&running), before, "{tls} {trickle}");
        // The stalled connection is closed: our flight, then the end.
        if let Some(tcp) = implicit {
            until_closed(tcp).await;
        }
        if let Some(mut c) = starttls {
            let mut reads = 0;
            while !c.closed().await {
                reads += 1;
                assert!(reads < 100, "{tls}: still open");
            }
        }
        assert_eq!(timeouts(), 1, "{tls}");
        running.shutdown().await;
    }
}

/// A connection let in past a full set of slots on a stalled handshake, which quits before
/// its STARTTLS, gives that handshake up as it goes: the next connection is let in on it at
/// once (it was refused for the rest of the second before), and served.
#[tokio::test]
async fn a_connection_that_quits_gives_up_the_stalled_handshake_it_was_let_in_on() {
    let running = listener("starttls").await;
    let addr = running.addr("inbound").unwrap();
    let _stalled = stalled_starttls(&running).await;
    tokio::time::sleep(STALLED_AFTER + Duration::from_millis(300)).await;
    let before = refused(&running);
    let let_in = std::time::Instant::now();
    let mut quitter = Client::connect(addr).await;
    assert_eq!(quitter.reply().await, "220 mx.test ESMTP\r\n");
    assert_eq!(quitter.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(quitter.closed().await);
    // The session's end reaches the listener's bookkeeping: the stalled one is left.
    let active = || {
        running
            .metrics
            .connections_active
            .with_label_values(&["inbound"])
            .get()
    };
    let deadline = std::time::Instant::now() + T;
    while active() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the quitter still counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served("starttls", addr).await;
    assert_eq!(refused(&running), before);
    // Within the second the quitter's reservation would have lasted: the guard let it go.
    assert!(let_in.elapsed() < STALLED_AFTER, "{:?}", let_in.elapsed());
    running.shutdown().await;
}

/// A whole session of a client on a listener (`tls`): TLS, the greeting, QUIT.
async fn served(tls: &str, addr: std::net::SocketAddr) {
    let mut c = match tls {
        "implicit" => Client::connect_implicit(addr).await,
        _ => Client::starttls_session(addr).await,
    };
    if tls == "implicit" {
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    }
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n", "{tls}");
}

/// Silence is no handshake: connections that say nothing after connecting (implicit TLS) or
/// after `STARTTLS`, or stop inside their ClientHello (a first record of one octet of it
/// included), hold no slot, and the one slot goes to a client that sends its ClientHello.
#[tokio::test]
async fn a_silent_client_holds_no_slot() {
    for tls in ["implicit", "starttls"] {
        let running = listener(tls).await;
        let addr = running.addr("inbound").unwrap();
        let hello = client_hello();
        let (mut sessions, mut connections) = (Vec::new(), Vec::new());
        // Cut anywhere, or a first record of one octet of it (a record is not the message).
        let mut partial: Vec<&[u8]> = [0, 2, 5, hello.len() - 1].map(|cut| &hello[..cut]).into();
        partial.push(&[22, 3, 1, 0, 1, 1]);
        for sent in partial {
            if tls == "starttls" {
                let mut c = silent_starttls(&running).await;
                c.send(sent).await;
                sessions.push(c);
            } else {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(sent).await.unwrap();
                connections.push(tcp);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = refused(&running);
        served(tls, addr).await;
        assert_eq!(refused(&running), before, "{tls}");
        drop((sessions, connections));
        running.shutdown().await;
    }
}

/// A client that ends its side inside its ClientHello (a FIN after two octets of it) is
/// closed at once: the wait for the rest of the ClientHello ends with the FIN (the socket stays
/// readable: a wait that looked again would spin on it), and the handshake fails.
#[tokio::test]
async fn a_client_hello_cut_by_a_fin_ends_the_wait() {
    for tls in ["implicit", "starttls"] {
        let running = listener(tls).await;
        let addr = running.addr("inbound").unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut greeted = String::new();
        if tls == "starttls" {
            tcp.write_all(b"EHLO client.test\r\nSTARTTLS\r\n")
                .await
                .unwrap();
            let mut buf = vec![0; 4096];
            while !greeted.contains("220 2.0.0 Ready to start TLS\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "{greeted}");
                greeted.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            }
        }
        tcp.write_all(&[0x16, 0x03]).await.unwrap();
        tcp.shutdown().await.unwrap();
        assert_eq!(until_closed(tcp).await, "", "{tls}");
        // And the listener still serves.
        served(tls, addr).await;
        running.shutdown().await;
    }
}

/// A ClientHello trickled an octet a segment is refused after 64 pieces, before it takes a
/// slot: each piece had the server look at all that came so far again.
#[tokio::test]
async fn a_client_hello_in_too_many_pieces_is_refused() {
    let running = listener("implicit").await;
    let addr = running.addr("inbound").unwrap();
    let errors = || {
        running
            .metrics
            .tls_handshakes_total
            .with_label_values(&["inbound", "server", "error", ""])
            .get()
    };
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let hello = client_hello();
    let mut sent = 0;
    for octet in &hello {
        if tcp.write_all(std::slice::from_ref(octet)).await.is_err() {
            break;
        }
        sent += 1;
        if errors() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        sent < hello.len(),
        "the whole ClientHello went ({sent} octets)"
    );
    assert_eq!(until_closed(tcp).await, "");
    assert_eq!(errors(), 1);
    // And a ClientHello in one piece is served.
    served("implicit", addr).await;
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

/// With more than half of `max_handshakes` taken, the listener is under a handshake flood:
/// handshakes run on the admission threads (`io::admission`, below the sessions' priority),
/// and a session's handshake still completes there and the session relays here. The
/// pressure outlasts the slots by `PRESSURE_HOLD`; with fewer taken, there is none.
#[tokio::test]
async fn more_than_half_the_slots_taken_sends_handshakes_to_the_admission_threads() {
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
        taken.push(slots.take(|| None, true).await.unwrap());
    }
    assert!(l.handshakes_pressed(), "3 of 4 taken");
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    c.cmd("DATA").await;
    c.send(b"through the admission threads\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
    assert_eq!(rec.messages(), [b"through the admission threads\r\n.\r\n"]);
    taken.clear();
    assert!(l.handshakes_pressed(), "the pressure is held");
    tokio::time::sleep(PRESSURE_HOLD + Duration::from_millis(100)).await;
    assert!(!l.handshakes_pressed(), "and then over");
    running.shutdown().await;
}

/// A burst of handshakes is pressure (their CPU goes below the established sessions'), not a
/// flood: with the default 128 slots, more than `PRESS_BURST` (8) begun within
/// `PRESS_WINDOW` put the listener under pressure for `PRESSURE_HOLD`, and handshakes that
/// then wait for their clients do not keep it there; only more than half the slots taken is
/// a flood, which the log warns of.
#[tokio::test]
async fn a_burst_of_handshakes_is_pressure_not_a_flood() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&config_yaml(backend, "starttls", "")).await;
    let l = &running.snapshot.listeners[0].1;
    let slots = l.handshakes.as_ref().unwrap();
    let mut taken = Vec::new();
    for n in 0..=PRESS_BURST {
        assert!(!l.handshakes_pressed(), "{n} begun");
        taken.push(slots.take(|| None, true).await.unwrap());
    }
    assert!(l.handshakes_pressed(), "9 begun at once");
    assert!(!l.handshakes_flooded());
    tokio::time::sleep(PRESSURE_HOLD + Duration::from_millis(100)).await;
    assert!(!l.handshakes_pressed(), "9 held, but not begun lately");
    // One at a time, further apart than the window: never a burst (18 held now).
    for _ in 0..PRESS_BURST + 1 {
        tokio::time::sleep(PRESS_WINDOW + Duration::from_millis(20)).await;
        taken.push(slots.take(|| None, true).await.unwrap());
        assert!(!l.handshakes_pressed());
    }
    while taken.len() < 64 {
        taken.push(slots.take(|| None, true).await.unwrap());
    }
    assert!(!l.handshakes_flooded(), "64 of 128 taken");
    taken.push(slots.take(|| None, true).await.unwrap());
    assert!(
        l.handshakes_flooded() && l.handshakes_pressed(),
        "65 of 128 taken"
    );
    taken.clear();
    assert!(l.handshakes_pressed() && l.handshakes_flooded(), "held");
    tokio::time::sleep(PRESSURE_HOLD + Duration::from_millis(100)).await;
    assert!(
        !l.handshakes_pressed() && !l.handshakes_flooded(),
        "and then over"
    );
    running.shutdown().await;
}

/// `n` connections made while this test's thread, the sessions' only one, is blocked: they
/// wait in the accept queue together until it runs again. Each then gets its greeting.
async fn queued_at_once(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let queued = std::thread::spawn(move || {
        let queued = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect::<Vec<_>>();
        // The last handshake's final ACK reaches the listener's queue, should the kernel
        // have deferred it.
        std::thread::sleep(Duration::from_millis(50));
        queued
    })
    .join()
    .unwrap();
    let mut greeted = Vec::new();
    for tcp in queued {
        tcp.set_nonblocking(true).unwrap();
        let mut tcp = TcpStream::from_std(tcp).unwrap();
        let mut greeting = [0; 19];
        tokio::time::timeout(T, tcp.read_exact(&mut greeting))
            .await
            .expect("greeted in time")
            .unwrap();
        assert_eq!(&greeting, b"220 mx.test ESMTP\r\n");
        greeted.push(tcp);
    }
    greeted
}

/// A STARTTLS flood takes no handshake slot before its `STARTTLS`, but its connections pile
/// up in the accept queue: more than half `max_handshakes` of them found there at once (and
/// more than 32, so that a few senders connecting together on a listener with few slots are
/// not a flood) put the listener under pressure before any handshake has begun. 32 do not,
/// twice in a row (the count starts again each time the queue is found empty).
#[tokio::test]
async fn a_full_accept_queue_is_pressure_before_any_handshake() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&config_yaml(
        backend,
        "starttls",
        "      max_handshakes: 4\n      max_connections_per_ip: 200\n",
    ))
    .await;
    let addr = running.addr("inbound").unwrap();
    let l = &running.snapshot.listeners[0].1;
    let first = queued_at_once(addr, 32).await;
    assert!(!l.handshakes_pressed(), "32 waiting at once, of 4 slots");
    let second = queued_at_once(addr, 32).await;
    assert!(!l.handshakes_pressed(), "32 more waiting at once");
    let third = queued_at_once(addr, 33).await;
    assert!(l.handshakes_pressed(), "33 waiting at once");
    drop((first, second, third));
    running.shutdown().await;
}

/// Under a handshake flood the accept loop runs on the admission threads: with every thread
/// of the sessions busy (this test's runtime is the sidecar's, and it blocks it), a new
/// connection is still accepted and refused. Before the flood, the same connection would
/// wait in the accept queue until the sessions' thread was free.
#[tokio::test]
async fn under_a_flood_connections_are_refused_while_the_sessions_threads_are_busy() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&config_yaml(
        backend,
        "starttls",
        "      max_handshakes: 2\n",
    ))
    .await;
    let addr = running.addr("inbound").unwrap();
    let stalled = [
        stalled_starttls(&running).await,
        stalled_starttls(&running).await,
    ];
    // Refused by the sessions' threads; the accept loop then moves (the same turn of it).
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(until_closed(tcp).await, REFUSED);
    let before = refused(&running);
    // This thread (the only one of the sessions) blocks while a client connects.
    let blocked = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(T)).unwrap();
        let mut all = Vec::new();
        let read = tcp.read_to_end(&mut all);
        (
            read.map_err(|e| e.kind()),
            String::from_utf8_lossy(&all).into_owned(),
        )
    })
    .join()
    .unwrap();
    assert_eq!(blocked, (Ok(REFUSED.len()), REFUSED.to_owned()));
    assert_eq!(refused(&running), before + 1);
    // The flood over (the slots free, the pressure's hold passed), sessions are served.
    drop(stalled);
    tokio::time::sleep(PRESSURE_HOLD + Duration::from_millis(200)).await;
    let mut c = Client::starttls_session(addr).await;
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    running.shutdown().await;
}

/// Under a flood an implicit-TLS connection's handshake is done on the admission threads:
/// with this test's runtime (the sessions' only thread) blocked, a client still completes its
/// handshake, and has the greeting that came with it. (Handed to the sessions' threads first,
/// the connection would wait there for its handshake to start.)
#[tokio::test]
async fn under_a_flood_an_implicit_handshake_is_done_while_the_sessions_threads_are_busy() {
    let (backend, _rec) = recording_backend().await;
    let (running, taken) = flooded(backend, "implicit").await;
    let addr = running.addr("inbound").unwrap();
    // Accepted under pressure: the accept loop moves to the admission threads.
    let mut first = Client::connect_implicit(addr).await;
    assert_eq!(first.reply().await, "220 mx.test ESMTP\r\n");
    // The greeting came with the handshake: a reply to a command says the handshake is over
    // on the sidecar's side too, and its slot free.
    assert_eq!(first.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    // This thread (the only one of the sessions) blocks while a client does its handshake.
    let handshaken = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(T)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
        let mut conn = rustls::ClientConnection::new(client_tls_config(), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.kind())?;
        }
        Ok::<_, std::io::ErrorKind>(rustls::StreamOwned::new(conn, tcp))
    })
    .join()
    .unwrap();
    let mut tls = handshaken.expect("the handshake, with the sessions' thread blocked");
    let greeting = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n") && tls.read(&mut byte).unwrap() == 1 {
            got.push(byte[0]);
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    assert_eq!(greeting.await.unwrap(), "220 mx.test ESMTP\r\n");
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    drop(taken);
    running.shutdown().await;
}

/// The real binary: its admission threads run at nice 19 from the start, and a flood's
/// beginning and end are logged once each.
#[tokio::test]
async fn the_binary_logs_a_flood_and_its_end_and_admits_at_nice_19() {
    binary_flood(None, "implicit").await;
}

/// The same on one core, where the admission threads are a current-thread runtime on a thread
/// of its own: the refusal, the end of the flood (a timer there) and the handshake after it
/// need that thread to drive its sockets and timers.
#[tokio::test]
async fn on_one_core_the_admission_thread_drives_its_own_runtime() {
    binary_flood(Some("0"), "implicit").await;
}

/// A flood of a STARTTLS listener: the sessions whose handshake after `STARTTLS` failed
/// while the flood was announced end without a line each, as their handshakes do; the
/// flood's last line counts them.
#[tokio::test]
async fn a_starttls_floods_failed_sessions_are_counted_not_logged() {
    binary_flood(None, "starttls").await;
}

/// The real binary (on `cpus`) with a listener (`tls`) of 2 handshake slots, both taken by
/// handshakes whose client sent its ClientHello and reads nothing (after `STARTTLS` on a
/// STARTTLS listener),
/// a third connection refused, and the flood announced in the log. The stalled clients hold
/// the slots until dropped; the backend lives as long as the returned value.
struct Flooded {
    bin: binary::Binary,
    addr: std::net::SocketAddr,
    stalled: Vec<Client>,
    _backend: Recorder,
}

async fn binary_flooded(tls: &str, cpus: Option<&str>) -> Flooded {
    let (backend, rec) = recording_backend().await;
    let yaml = config_yaml(backend, tls, "      max_handshakes: 2\n");
    let bin = binary::start_binary_on(&yaml, cpus);
    let addr = bin.addr("inbound").unwrap();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(addr).await;
        if tls == "starttls" {
            assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
            assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
            assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
        }
        c.send(&client_hello()).await;
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refusal = if tls == "starttls" { REFUSED } else { "" };
    assert_eq!(
        until_closed(TcpStream::connect(addr).await.unwrap()).await,
        refusal
    );
    bin.wait_log(
        "handshake flood: accepting and handshaking below the established sessions' priority",
        1,
    )
    .await;
    Flooded {
        bin,
        addr,
        stalled,
        _backend: rec,
    }
}

async fn binary_flood(cpus: Option<&str>, tls: &str) {
    let Flooded {
        bin,
        addr,
        stalled,
        _backend,
    } = binary_flooded(tls, cpus).await;
    let tasks = format!("/proc/{}/task", bin.pid());
    let mut admission = Vec::new();
    for task in std::fs::read_dir(&tasks).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() == "admission" {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // Fields after the command's closing parenthesis start at the third (state);
            // the nice value is the nineteenth.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            admission.push(fields[19 - 3].to_owned());
        }
    }
    assert!(!admission.is_empty(), "no admission thread in {tasks}");
    assert!(admission.iter().all(|nice| nice == "19"), "{admission:?}");
    drop(stalled);
    bin.wait_log("handshake flood over", 1).await;
    let mut c = if tls == "starttls" {
        Client::starttls_session(addr).await
    } else {
        let mut c = Client::connect_implicit(addr).await;
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
        c
    };
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    drop(c);
    bin.wait_log("session ended", 1).await;
    let log = bin.log();
    assert_eq!(log.matches("handshake flood:").count(), 1, "{log}");
    assert_eq!(log.matches("handshake flood over").count(), 1, "{log}");
    // The two stalled handshakes failed under the flood: counted in its last line, not
    // logged one by one, and neither are their sessions' ends; the session after the flood's
    // end is.
    assert!(!log.contains("TLS handshake failed"), "{log}");
    assert_eq!(log.matches("session ended").count(), 1, "{log}");
    let over = log.lines().find(|l| l.contains("handshake flood over"));
    assert!(
        over.is_some_and(|l| l.contains("failed_handshakes=2")),
        "{log}"
    );
}

/// A reload during a flood: the new configuration's slots are free, so for the log the flood
/// is over; the configuration it replaced stops keeping quiet, so the handshakes it still has
/// in progress are logged one by one when they fail, not lost between the flood's last line
/// and the old configuration.
#[tokio::test]
async fn a_reload_during_a_flood_leaves_no_failed_handshake_unlogged() {
    let Flooded {
        bin,
        addr,
        stalled,
        _backend,
    } = binary_flooded("implicit", None).await;
    let config = bin.config();
    assert!(config.contains("max_handshakes: 2"), "{config}");
    let reloaded = config.replace("max_handshakes: 2", "max_handshakes: 3");
    std::fs::write(bin.config_path(), reloaded).unwrap();
    bin.signal("HUP");
    bin.wait_log("configuration reloaded", 1).await;
    bin.wait_log("handshake flood over", 1).await;
    let log = bin.log();
    let over = log.lines().find(|l| l.contains("handshake flood over"));
    assert!(
        over.is_some_and(|l| l.contains("failed_handshakes=0")),
        "{log}"
    );
    drop(stalled);
    bin.wait_log("TLS handshake failed", 2).await;
    // The listener serves on the new configuration.
    let mut c = Client::connect_implicit(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
}

/// Shutdown during a flood: the accept loop stops, and with it the flood, for the log: its
/// last line is written, and the draining sessions' failed handshakes are logged again.
#[tokio::test]
async fn a_flood_under_way_at_shutdown_is_ended_in_the_log() {
    let Flooded {
        bin,
        stalled,
        _backend,
        ..
    } = binary_flooded("starttls", None).await;
    bin.signal("TERM");
    bin.wait_log("handshake flood over", 1).await;
    drop(stalled);
    bin.wait_log("TLS handshake failed", 2).await;
}

/// Shutdown during a ClientHello flood on an implicit-TLS listener closes the handshakes
/// still in progress, which are no sessions yet, without a line each (a flood's are
/// thousands), although shutdown ends the flood's announcement too.
#[tokio::test]
async fn a_floods_handshakes_closed_at_shutdown_are_not_logged_one_by_one() {
    let Flooded {
        bin, mut stalled, ..
    } = binary_flooded("implicit", None).await;
    bin.signal("TERM");
    bin.wait_log("handshake flood over", 1).await;
    // Past the server's flight, which each stalled client has not read.
    let deadline = std::time::Instant::now() + T;
    for c in &mut stalled {
        while !c.closed().await {
            assert!(std::time::Instant::now() < deadline, "closed at shutdown");
        }
    }
    let log = bin.log();
    assert!(
        !log.contains("shutting down before its session began"),
        "{log}"
    );
}

/// A client on std's blocking sockets, for the moments the test's runtime (the sessions' only
/// thread) is blocked: plain until [`SyncClient::upgrade`], then TLS; every read within
/// `timeout`.
struct SyncClient(Box<dyn SyncIo>);

trait SyncIo: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> SyncIo for T {}

impl SyncClient {
    fn connect(addr: std::net::SocketAddr, timeout: Duration) -> SyncClient {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(timeout)).unwrap();
        SyncClient(Box::new(tcp))
    }

    /// One whole reply, read a byte at a time so nothing is buffered past it; an error (the
    /// read timed out) as its kind.
    fn reply(&mut self) -> Result<String, std::io::ErrorKind> {
        let mut all = Vec::new();
        let mut line_start = 0;
        let mut byte = [0u8; 1];
        loop {
            match self.0.read(&mut byte) {
                Ok(1) => all.push(byte[0]),
                Ok(_) => return Err(std::io::ErrorKind::UnexpectedEof),
                Err(e) => return Err(e.kind()),
            }
            if all.ends_with(b"\r\n") {
                if all.get(line_start + 3) != Some(&b'-') {
                    return Ok(String::from_utf8_lossy(&all).into_owned());
                }
                line_start = all.len();
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), std::io::ErrorKind> {
        self.0.write_all(bytes).map_err(|e| e.kind())?;
        self.0.flush().map_err(|e| e.kind())
    }

    fn cmd(&mut self, line: &str) -> Result<String, std::io::ErrorKind> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// Greeting, EHLO, STARTTLS, the handshake and EHLO again, checked.
    fn starttls(addr: std::net::SocketAddr, timeout: Duration) -> SyncClient {
        let mut c = SyncClient::connect(addr, timeout);
        assert_eq!(c.reply().unwrap(), "220 mx.test ESMTP\r\n");
        assert!(c
            .cmd("EHLO client.test")
            .unwrap()
            .contains("250 STARTTLS\r\n"));
        assert_eq!(
            c.cmd("STARTTLS").unwrap(),
            "220 2.0.0 Ready to start TLS\r\n"
        );
        let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
        let conn = rustls::ClientConnection::new(client_tls_config(), name).unwrap();
        let mut c = SyncClient(Box::new(rustls::StreamOwned::new(conn, c.0)));
        assert!(c
            .cmd("EHLO client.test")
            .unwrap()
            .starts_with("250-mx.test\r\n"));
        c
    }

    /// A message from MAIL to its `250`; the replies, or the first error.
    fn message(&mut self, body: &[u8]) -> Result<Vec<String>, std::io::ErrorKind> {
        let mut replies = vec![
            self.cmd("MAIL FROM:<a@x.test>")?,
            self.cmd("RCPT TO:<b@y.test>")?,
            self.cmd("DATA")?,
        ];
        self.send(body)?;
        replies.push(self.reply()?);
        Ok(replies)
    }
}

/// The admission threads with every one of them held: work spawned there waits until the
/// returned guard is dropped.
/// Every admission thread held, until dropped. One hold at a time in this binary: two at once
/// could each take some of the threads and wait for the rest forever.
struct AdmissionHeld(
    std::sync::Arc<std::sync::Barrier>,
    #[allow(dead_code)] tokio::sync::MutexGuard<'static, ()>,
);

impl AdmissionHeld {
    async fn hold() -> AdmissionHeld {
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let one = ONE_AT_A_TIME.lock().await;
        let handle = smtp_sidecar::io::admission::handle().unwrap();
        let threads = handle.metrics().num_workers();
        let started = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
        let release = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
        for _ in 0..threads {
            let (started, release) = (started.clone(), release.clone());
            handle.spawn(async move {
                started.wait();
                release.wait();
            });
        }
        tokio::task::spawn_blocking(move || started.wait())
            .await
            .unwrap();
        AdmissionHeld(release, one)
    }
}

impl Drop for AdmissionHeld {
    fn drop(&mut self) {
        self.0.wait();
    }
}

/// Under a flood a STARTTLS session greets and answers its EHLO before STARTTLS without a
/// backend connection (the EHLO from the backend's reply to its last health check), and
/// connects once TLS is up: a flood attempt that gets no further costs the backend nothing.
/// A session that goes on relays its message byte for byte, over one backend connection
/// that never saw the EHLO before TLS. (Without the deferral the first session leaves a
/// backend connection behind, and the second one's begins `EHLO client.test` twice.)
#[tokio::test]
async fn under_a_flood_a_starttls_session_connects_the_backend_once_tls_is_up() {
    let (backend, rec) = recording_backend().await;
    let yaml = config_yaml(backend, "starttls", "      max_handshakes: 4\n").replace(
        "connect_timeout: 2s\n",
        "connect_timeout: 2s\n      health_check_interval: 100ms\n",
    );
    let running = start(&yaml).await;
    let addr = running.addr("inbound").unwrap();
    let l = &running.snapshot.listeners[0].1;
    eventually(|| l.pool.known_ehlo().is_some(), "a health check passed").await;
    let slots = l.handshakes.as_ref().unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(slots.take(|| None, true).await.unwrap());
    }
    assert!(l.handshakes_pressed());

    let mut attempt = Client::connect(addr).await;
    assert_eq!(attempt.reply().await, "220 mx.test ESMTP\r\n");
    assert_eq!(
        attempt.cmd("EHLO client.test").await,
        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n\
         250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
    );
    assert_eq!(attempt.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(attempt.closed().await);

    let mut c = Client::starttls_session(addr).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"deferred\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert_eq!(rec.messages(), [b"deferred\r\n.\r\n"]);
    let transcripts = rec.closed(1).await;
    assert_eq!(
        String::from_utf8_lossy(&transcripts[0]),
        "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
         deferred\r\n.\r\nQUIT\r\n",
        "one backend connection, for the session that got past STARTTLS"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rec.transcripts.lock().unwrap().len(), 1);
    drop(taken);
    running.shutdown().await;
}

/// The flood over (its handshake slots given back), a session served on the admission threads
/// moves at its next wait: after the reply to a NOOP sent once the pressure has passed.
async fn end_the_flood(taken: Vec<Slot>, pressed: impl Fn() -> bool, c: SyncClient) -> SyncClient {
    drop(taken);
    tokio::time::sleep(PRESSURE_HOLD + Duration::from_millis(100)).await;
    assert!(!pressed());
    let (c, noop) = tokio::task::spawn_blocking(move || {
        let mut c = c;
        let noop = c.cmd("NOOP");
        (c, noop)
    })
    .await
    .unwrap();
    assert!(noop.unwrap().starts_with("250 "));
    c
}

/// A recording backend on a runtime of its own (one worker, made on a thread of its own), so
/// that blocking the test's runtime or the admission threads does not stop it.
fn backend_on_its_own_runtime() -> (tokio::runtime::Runtime, std::net::SocketAddr, Recorder) {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (backend, rec) = rt.block_on(recording_backend());
        (rt, backend, rec)
    })
    .join()
    .unwrap()
}

/// Under a flood a STARTTLS connection is served whole on the admission threads, its
/// greeting, STARTTLS handshake and messages, and moves to the sessions' threads the next time
/// it waits for its peers once the flood is over. First, with this test's runtime (the
/// sessions' only thread) blocked, a session relays a message byte for byte; then, the flood
/// over, with every admission thread held, it relays another. (A session handed to the
/// sessions' threads at once would hang in the first part; one that never moved, in the
/// second.) The backend runs on a runtime of its own, so that neither block stops it.
#[tokio::test]
async fn under_a_flood_a_starttls_session_runs_on_the_admission_threads_then_moves() {
    let (backend_rt, backend, rec) = backend_on_its_own_runtime();
    let (running, taken) = flooded(backend, "starttls").await;
    let addr = running.addr("inbound").unwrap();
    let l = &running.snapshot.listeners[0].1;
    // Accepted under pressure: the accept loop moves to the admission threads.
    let mut first = Client::connect(addr).await;
    assert_eq!(first.reply().await, "220 mx.test ESMTP\r\n");
    // This thread (the only one of the sessions) blocks while a client is served.
    let (c, replies) = std::thread::spawn(move || {
        let mut c = SyncClient::starttls(addr, Duration::from_secs(5));
        let replies = c.message(b"on the admission threads\r\n.\r\n").unwrap();
        (c, replies)
    })
    .join()
    .unwrap();
    assert_eq!(
        replies[..3],
        [
            "250 2.1.0 Ok\r\n",
            "250 2.1.5 Ok\r\n",
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        ]
    );
    assert!(replies[3].starts_with("250 2.0.0 Ok"), "{replies:?}");
    assert_eq!(rec.messages(), [b"on the admission threads\r\n.\r\n"]);
    let pressed = || l.handshakes_pressed();
    let mut c = end_the_flood(taken, pressed, c).await;
    let held = AdmissionHeld::hold().await;
    let (replies, quit) = tokio::task::spawn_blocking(move || {
        let replies = c.message(b"on the sessions' threads\r\n.\r\n");
        (replies, c.cmd("QUIT"))
    })
    .await
    .unwrap();
    drop(held);
    let replies = replies.expect("served with the admission threads held");
    assert!(replies[3].starts_with("250 2.0.0 Ok"), "{replies:?}");
    assert_eq!(quit.unwrap(), "221 2.0.0 Bye\r\n");
    assert_eq!(
        rec.messages(),
        [
            &b"on the admission threads\r\n.\r\n"[..],
            b"on the sessions' threads\r\n.\r\n"
        ]
    );
    // Each session leaves the listener's count once, the moved one as the other.
    let active = running
        .metrics
        .connections_active
        .with_label_values(&["inbound"]);
    eventually(|| active.get() == 1, "the moved session counted out").await;
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    eventually(|| active.get() == 0, "both sessions counted out").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(active.get(), 0);
    running.shutdown().await;
    backend_rt.shutdown_background();
}

/// A session that moved to the sessions' threads takes the shutdown with it: idle there, it is
/// told `421 4.3.2` as soon as the drain begins, with every admission thread held (so it is
/// told on the sessions' threads, by the watch it moved with), and the shutdown then waits
/// for no one. (It hangs if the moved session's watch is not the process's.)
#[tokio::test]
async fn a_session_that_moved_is_told_of_the_shutdown() {
    let (backend_rt, backend, _rec) = backend_on_its_own_runtime();
    let (running, taken) = flooded(backend, "starttls").await;
    let addr = running.addr("inbound").unwrap();
    let pressed = {
        let l = std::sync::Arc::clone(&running.snapshot.listeners[0].1);
        move || l.handshakes_pressed()
    };
    // Accepted under pressure: the accept loop moves to the admission threads, and the next
    // connection is served there.
    let mut first = Client::connect(addr).await;
    assert_eq!(first.reply().await, "220 mx.test ESMTP\r\n");
    let c = tokio::task::spawn_blocking(move || {
        let mut c = SyncClient::starttls(addr, Duration::from_secs(5));
        let replies = c.message(b"on the admission threads\r\n.\r\n").unwrap();
        assert!(replies[3].starts_with("250 2.0.0 Ok"), "{replies:?}");
        c
    })
    .await
    .unwrap();
    let mut c = end_the_flood(taken, pressed, c).await;
    let held = AdmissionHeld::hold().await;
    let stopping = tokio::spawn(running.shutdown());
    let told = tokio::task::spawn_blocking(move || c.reply())
        .await
        .unwrap();
    drop(held);
    assert_eq!(told.unwrap(), "421 4.3.2 Service shutting down\r\n");
    assert_eq!(first.reply().await, "421 4.3.2 Service shutting down\r\n");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the shutdown waits for no session")
        .unwrap();
    backend_rt.shutdown_background();
}
