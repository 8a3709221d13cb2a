//! End to end: body lines over 998 octets (RFC 5322 §2.1.1) through the real listener, with the
//! smuggling attack that motivated `policy.long_lines`. A legacy backend that reads lines into a
//! 1000-octet buffer splits a longer line, and a `.` CRLF at the split looks like the end of data
//! to it; everything after it runs as commands. So no line the backend receives may be longer
//! than 998 octets + CRLF: it is folded (`fold`) or the message refused (`reject`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::binary::start_binary;
use common::*;

/// What the backend receives in the DATA phase for the attack under `fold`.
fn attack_body() -> Vec<u8> {
    [
        b"A".repeat(999).as_slice(),
        b".\r\nMAIL FROM:<smuggled@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n",
        b"smuggled\r\n.\r\n",
    ]
    .concat()
}

async fn sidecar(policy: &str) -> (std::net::SocketAddr, Recorder, common::binary::Binary) {
    let (backend, rec) = recording_backend().await;
    let running = start_binary(&config_yaml(backend, "starttls", policy));
    (running.addr("inbound").unwrap(), rec, running)
}

async fn envelope(c: &mut Client) {
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
}

/// Every line of `stream` ends in CRLF and holds at most 998 octets before it.
fn assert_short_lines(stream: &[u8]) {
    for line in stream.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.ends_with(b"\r\n"),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        assert!(line.len() <= 1000, "a line of {} octets", line.len());
    }
}

#[tokio::test]
async fn smuggling_through_a_long_line_is_folded_into_the_body() {
    let (addr, rec, _r) = sidecar("").await;
    let mut c = Client::starttls_session(addr).await;
    envelope(&mut c).await;
    c.send(&attack_body()).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");

    let t = rec.closed(1).await;
    // The 999th octet starts a continuation line with a space (as Postfix folds), so the `.`
    // after it is body text, and the smuggled commands stay inside the one message.
    let folded = [
        b"A".repeat(998).as_slice(),
        b"\r\n A.\r\nMAIL FROM:<smuggled@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n",
        b"smuggled\r\n.\r\n",
    ]
    .concat();
    let want = [
        b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
          DATA\r\n"
            .as_slice(),
        &folded,
        b"QUIT\r\n",
    ]
    .concat();
    assert_eq!(
        String::from_utf8_lossy(&t[0]),
        String::from_utf8_lossy(&want)
    );
    assert_short_lines(&t[0]);
    assert_eq!(rec.messages(), vec![folded]);
}

#[tokio::test]
async fn long_line_is_refused_after_the_real_end_of_data_under_reject() {
    let (addr, rec, _r) = sidecar("      long_lines: reject\n").await;
    let mut c = Client::starttls_session(addr).await;
    envelope(&mut c).await;
    // In three writes, one boundary right after the 998th octet.
    let body = attack_body();
    for piece in [&body[..998], &body[998..1003], &body[1003..]] {
        c.send(piece).await;
    }
    assert_eq!(
        c.reply().await,
        "550 5.6.0 Message has lines longer than 998 octets\r\n"
    );
    // The session goes on over a fresh backend connection.
    envelope(&mut c).await;
    c.send(b"clean\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");

    let t = rec.closed(2).await;
    assert_eq!(rec.messages(), vec![b"clean\r\n.\r\n".to_vec()]);
    let first = String::from_utf8_lossy(&t[0]);
    let (_, body) = first
        .split_once("DATA\r\n")
        .expect("DATA reached the backend");
    // At most the part of the line that fits was sent before the connection was dropped.
    assert!(
        body.len() <= 998 && body.bytes().all(|b| b == b'A'),
        "backend saw {first:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&t[1]),
        "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nclean\r\n\
         .\r\nQUIT\r\n"
    );
}
