//! End to end, for what a security review of the terminate path found: the real listener on
//! 127.0.0.1, real TLS, a recording or scripted backend; what reaches the backend is asserted
//! byte for byte, what the client sees by exact reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::binary::start_binary;
use common::scripted::{scripted_backend, Script, PLAIN_IR};
use common::*;

const BARE_LF: &str = "550 5.6.11 Bare line feed or carriage return not allowed\r\n";
const BACKEND_421: &str = "421 4.4.2 Backend unavailable, try again later\r\n";

async fn envelope(c: &mut Client) {
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert!(c.cmd("DATA").await.starts_with("354 "));
}

#[tokio::test]
async fn parameters_of_extensions_never_offered_are_refused() {
    let (backend, rec) = recording_backend().await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    assert!(c.cmd("HELO client.test").await.starts_with("250 "));
    let unsupported = "555 5.5.4 Unsupported parameter\r\n";
    let mail = "MAIL FROM:<x@evil.test> AUTH=ceo@corp.test SIZE=5 BODY=8BITMIME RET=HDRS";
    assert_eq!(c.cmd(mail).await, unsupported);
    assert_eq!(c.cmd("MAIL FROM:<x@evil.test>").await, "250 2.1.0 Ok\r\n");
    let rcpt = "RCPT TO:<v@corp.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;v@corp.test";
    assert_eq!(c.cmd(rcpt).await, unsupported);
    assert_eq!(
        c.cmd("RCPT TO:<zoë@corp.test>").await,
        "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok\r\n");
    // After EHLO: SIZE is offered, once.
    assert_eq!(
        c.cmd("EHLO client.test").await,
        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n\
         250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=10 SIZE=99999999999").await,
        "501 5.5.4 Invalid parameter\r\n"
    );
    // A malformed parameter list after a good path is an invalid parameter too.
    for malformed in ["SIZE=", "SIZE=1  BODY=8BITMIME", "-X=1"] {
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<a@x.test> {malformed}")).await,
            "501 5.5.4 Invalid parameter\r\n",
            "{malformed}"
        );
    }
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let t = rec.closed(1).await;
    assert_eq!(
        String::from_utf8_lossy(&t[0]),
        "HELO client.test\r\nMAIL FROM:<x@evil.test>\r\nRSET\r\nEHLO client.test\r\nQUIT\r\n"
    );
}

#[tokio::test]
async fn an_unauthenticated_auth_parameter_reaches_the_backend_as_empty() {
    let (backend, t) = scripted_backend(Script::default()).await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    let mail = "MAIL FROM:<x@evil.test> AUTH=ceo@corp.test";
    assert_eq!(c.cmd(mail).await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let t = t.wait_for(0, "QUIT\r\n").await;
    assert_eq!(
        t[0],
        "EHLO client.test\r\nMAIL FROM:<x@evil.test> AUTH=<>\r\nQUIT\r\n"
    );
}

#[tokio::test]
async fn a_pipelined_transaction_over_max_recipients_is_delivered() {
    let (backend, rec) = recording_backend().await;
    let running = start_binary(&config_yaml(
        backend,
        "starttls",
        "      max_recipients: 5\n",
    ));
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    assert!(c.cmd("EHLO client.test").await.contains("PIPELINING"));
    let mut input = String::from("MAIL FROM:<a@x.test>\r\n");
    for i in 0..30 {
        input.push_str(&format!("RCPT TO:<r{i}@y.test>\r\n"));
    }
    input.push_str("DATA\r\n");
    c.send(input.as_bytes()).await;
    let mut replies = String::new();
    for _ in 0..32 {
        replies.push_str(&c.reply().await);
    }
    let expected = format!(
        "250 2.1.0 Ok\r\n{}{}354 End data with <CR><LF>.<CR><LF>\r\n",
        "250 2.1.5 Ok\r\n".repeat(5),
        "452 4.5.3 Too many recipients\r\n".repeat(25)
    );
    assert_eq!(replies, expected);
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
    assert_eq!(rec.messages().len(), 1);
}

#[tokio::test]
async fn authentication_survives_a_backend_replacement() {
    let script = Script {
        require_auth: true,
        ..Script::default()
    };
    let (backend, t) = scripted_backend(script).await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    let auth = format!("AUTH PLAIN {PLAIN_IR}");
    assert_eq!(
        c.cmd(&auth).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    envelope(&mut c).await;
    c.send(b"bare\nline feed\r\n.\r\n").await;
    assert_eq!(c.reply().await, BARE_LF);
    envelope(&mut c).await;
    assert_eq!(c.cmd("ok\r\n.").await, "250 2.0.0 queued\r\n");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let t = t.wait_for(1, "QUIT\r\n").await;
    assert_eq!(
        t[1],
        format!(
            "EHLO client.test\r\n{auth}\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
             ok\r\n.\r\nQUIT\r\n"
        )
    );
}

#[tokio::test]
async fn a_reply_that_does_not_answer_the_command_ends_the_session() {
    let script = Script {
        data_reply: "250 2.0.0 Ok\r\n",
        ..Script::default()
    };
    let (backend, _t) = scripted_backend(script).await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(c.cmd("DATA").await, BACKEND_421);
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_backend_reply_nobody_asked_for_is_never_passed_on() {
    // A whole extra reply after the one to the end of data, and the start of one: neither may
    // become the reply to the MAIL the client pipelined behind its message.
    for eod_reply in [
        "250 2.0.0 queued\r\n250 2.1.0 Ok\r\n",
        "250 2.0.0 queued\r\n250 2.1.",
    ] {
        let script = Script {
            eod_reply,
            ..Script::default()
        };
        let (backend, t) = scripted_backend(script).await;
        let running = start_binary(&config_yaml(backend, "starttls", ""));
        let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
        envelope(&mut c).await;
        c.send(b"one\r\n.\r\nMAIL FROM:<c@x.test>\r\n").await;
        assert_eq!(c.reply().await, "250 2.0.0 queued\r\n");
        assert_eq!(c.reply().await, BACKEND_421, "{eod_reply:?}");
        assert!(c.closed().await);
        let t = t.get();
        assert!(!t[0].contains("<c@x.test>"), "{:?}", t[0]);
    }
}

/// A reply the backend sent with its 354, before it had the body, does not accept the
/// message: the client gets `421`, and the body's end of data never reaches that backend
/// (its connection is reset), so it cannot deliver what the client will send again.
#[tokio::test]
async fn a_reply_sent_before_the_body_does_not_accept_it() {
    let script = Script {
        data_reply: "354 go ahead\r\n250 2.0.0 queued\r\n",
        ..Script::default()
    };
    let (backend, t) = scripted_backend(script).await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::starttls_session(running.addr("inbound").unwrap()).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    c.send(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(c.reply().await, "354 go ahead\r\n");
    assert_eq!(c.reply().await, BACKEND_421);
    assert!(c.closed().await);
    let t = t.get();
    assert!(
        t[0].ends_with("RCPT TO:<b@y.test>\r\nDATA\r\n"),
        "{:?}",
        t[0]
    );
}

#[tokio::test]
async fn backend_replacements_per_session_are_bounded() {
    let (backend, rec) = recording_backend().await;
    // An earlier test's connections may linger in TIME_WAIT toward a port this backend now
    // reuses: only new ones count.
    let before = closing_toward(backend.port());
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    for _ in 0..5 {
        envelope(&mut c).await;
        c.send(b"bare\nline feed\r\n.\r\n").await;
        assert_eq!(c.reply().await, BARE_LF);
    }
    envelope(&mut c).await;
    c.send(b"bare\nline feed\r\n.\r\n").await;
    assert_eq!(
        c.read_to_close().await,
        format!("{BARE_LF}421 4.7.0 Too many refused messages, closing connection\r\n")
    );
    assert_eq!(
        rec.closed(6).await.len(),
        6,
        "the first connection and 5 replacements"
    );
    // Each was reset, not closed: nothing in FIN_WAIT1, FIN_WAIT2 or TIME_WAIT toward the
    // backend's port is left behind.
    let after = closing_toward(backend.port());
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "closed in order: {new:?}");
}

/// The local ends of sockets in FIN_WAIT1, FIN_WAIT2 or TIME_WAIT (/proc/net/tcp states 04,
/// 05, 06) whose remote port is `port`: what an orderly close by us leaves, and a reset does
/// not.
fn closing_toward(port: u16) -> std::collections::HashSet<String> {
    let table = common::process::tcp_table().unwrap();
    let remote = format!(":{port:04X}");
    table
        .into_iter()
        .filter_map(|mut f| {
            let closing = matches!(f.get(3).map(String::as_str), Some("04" | "05" | "06"));
            let toward = f.get(2).is_some_and(|r| r.ends_with(&remote));
            (closing && toward).then(|| f.swap_remove(1))
        })
        .collect()
}

#[tokio::test]
async fn a_whole_dialogue_before_a_half_close_is_answered_and_delivered() {
    let (backend, rec) = recording_backend().await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
          Subject: half\r\n\r\nclose\r\n.\r\nQUIT\r\n",
    )
    .await;
    c.shutdown_write().await;
    let replies = c.read_to_close().await;
    let (ehlo, rest) = replies.split_at(replies.find("250 2.1.0").expect("MAIL answered"));
    assert!(ehlo.starts_with("250-mx.test\r\n"), "{replies}");
    assert!(
        rest.starts_with(
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
             250 2.0.0 Ok: queued as "
        ),
        "{replies}"
    );
    assert!(rest.ends_with("\r\n221 2.0.0 Bye\r\n"), "{replies}");
    assert_eq!(rest.lines().count(), 5, "{replies}");
    assert_eq!(
        rec.messages(),
        vec![b"Subject: half\r\n\r\nclose\r\n.\r\n".to_vec()]
    );
}

#[tokio::test]
async fn a_backend_that_refuses_a_second_ehlo_serves_starttls_clients() {
    let script = Script {
        refuse_second_helo: true,
        ..Script::default()
    };
    let (backend, t) = scripted_backend(script).await;
    let running = start_binary(&config_yaml(backend, "starttls", ""));
    let addr = running.addr("inbound").unwrap();
    // The same name after STARTTLS: answered from the backend's first reply, never sent.
    let mut c = Client::starttls_session(addr).await;
    envelope(&mut c).await;
    assert_eq!(c.cmd("..dot\r\n.").await, "250 2.0.0 queued\r\n");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let got = t.wait_for(0, "QUIT\r\n").await;
    assert_eq!(
        got[0],
        "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n..dot\r\n.\r\nQUIT\r\n"
    );
    // Another name: the backend's 503 sends it to a fresh connection.
    let mut c = Client::starttls_session_as(addr, "other.test").await;
    envelope(&mut c).await;
    assert_eq!(c.cmd("..dot\r\n.").await, "250 2.0.0 queued\r\n");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let got = t.wait_for(2, "QUIT\r\n").await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[1], "EHLO client.test\r\nEHLO other.test\r\n");
    assert_eq!(
        got[2],
        "EHLO other.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n..dot\r\n.\r\nQUIT\r\n"
    );
}

/// A client cut off after too many errors gets the `421` and then a clean close, not a reset,
/// though it sent far more than was read: the sidecar shuts down its side after the `421` and
/// reads (and throws away) what still comes until the client closes too. A close with that
/// input unread would answer with a reset, which destroys the `421` for a client that has not
/// read it yet (Windows discards what it received) or is still writing (its write fails
/// first, and the reply is never read). Both fail with a reset without the lingering close.
#[tokio::test]
async fn the_421_after_too_many_errors_ends_in_a_fin_not_a_reset() {
    let (backend, _rec) = recording_backend().await;
    let running = start_binary(&config_yaml(backend, "starttls", "      max_errors: 3\n"));
    let addr = running.addr("inbound").unwrap();
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    cut_off_after_errors(c).await;
    cut_off_after_errors(Client::starttls_session(addr).await).await;
}

async fn cut_off_after_errors(mut c: Client) {
    // More than the sidecar reads at once (128 KiB), less than the socket buffers take: more
    // than half is still unread at the close.
    c.send(&b"HELLO\r\n".repeat(40_000)).await;
    // The sidecar has answered and closed its side by now; the client still writes (a
    // reset would fail this write).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    c.send(&b"NOOP\r\n".repeat(10_000)).await;
    assert_eq!(
        c.read_to_close().await,
        "500 5.5.1 Command unrecognized\r\n500 5.5.1 Command unrecognized\r\n\
         500 5.5.1 Command unrecognized\r\n421 4.7.0 Too many errors, closing connection\r\n"
    );
}

/// A lingering close is no longer a session: its places among `max_connections` and
/// `max_connections_per_ip` are free at once (a client reconnecting right after a `421` is
/// not refused for its own closed session). Lingering closes are bounded apart, by
/// `max_connections`: past it a connection is closed at once, and its unread input resets it.
#[tokio::test]
async fn a_lingering_close_holds_no_session_place_and_is_bounded() {
    second_lingering_close_is_a_reset(
        "      max_connections: 1\n      max_connections_per_ip: 1\n",
    )
    .await;
}

/// Lingering closes are bounded per address too, by `max_connections_per_ip`: one address
/// cannot take all of a listener's lingering places, though three are free here.
#[tokio::test]
async fn lingering_closes_are_bounded_per_address() {
    second_lingering_close_is_a_reset(
        "      max_connections: 4\n      max_connections_per_ip: 1\n",
    )
    .await;
}

/// Client A is cut off after too many errors and lingers; B, from the same address, is
/// greeted (A's session place is free), cut off too, and finds no lingering place left under
/// `limits`: its close is a reset. A still gets its replies and a clean close.
async fn second_lingering_close_is_a_reset(limits: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, _rec) = recording_backend().await;
    let limits = format!("      max_errors: 3\n{limits}");
    let running = start_binary(&config_yaml(backend, "starttls", &limits));
    let addr = running.addr("inbound").unwrap();
    let mut a = Client::connect(addr).await;
    assert_eq!(a.reply().await, "220 mx.test ESMTP\r\n");
    a.send(&b"HELLO\r\n".repeat(20_000)).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // A's connection lingers (it has not closed) and B, from the same address, is served.
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 19];
    b.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 mx.test ESMTP\r\n");
    // (The write may already meet the reset this expects.)
    let _ = b.write_all(&b"HELLO\r\n".repeat(20_000)).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A holds the one lingering place B could have had: B's connection closed at once, and
    // was reset.
    let mut got = Vec::new();
    let err = b.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(String::from_utf8_lossy(&got)
        .ends_with("421 4.7.0 Too many errors, closing connection\r\n"));

    // A still lingers: it writes on, and gets its replies and a clean close.
    a.send(&b"NOOP\r\n".repeat(10_000)).await;
    assert!(a
        .read_to_close()
        .await
        .ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
}

/// Shutdown with only a lingering close left: the grace ends with no session to close, and
/// the log says so rather than warning of sessions left.
#[tokio::test]
async fn shutdown_with_only_a_lingering_close_left_says_so() {
    use tokio::io::AsyncWriteExt;
    let (backend, _rec) = recording_backend().await;
    let yaml = config_yaml(backend, "starttls", "      max_errors: 3\n")
        .replace("shutdown_grace: 2s", "shutdown_grace: 300ms");
    let running = start_binary(&yaml);
    let mut s = tokio::net::TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    s.write_all(&b"HELLO\r\n".repeat(20_000)).await.unwrap();
    running.wait_log("session ended", 1).await;
    // The client has not closed: its connection lingers through the grace.
    running.signal("TERM");
    running.wait_log("shutdown grace over", 1).await;
    let log = running.log();
    assert!(
        log.contains("shutdown grace over: no session left, only lingering closes"),
        "{log}"
    );
    assert!(!log.contains("closing the sessions left"), "{log}");
    drop(s);
}

/// A lingering close ends after 2 s even if the client never closes: its connection is then
/// gone, and what the client writes after that meets a reset.
#[tokio::test]
async fn a_lingering_close_ends_after_two_seconds() {
    use tokio::io::AsyncWriteExt;
    let (backend, _rec) = recording_backend().await;
    let running = start_binary(&config_yaml(backend, "starttls", "      max_errors: 3\n"));
    let mut s = tokio::net::TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    s.write_all(&b"HELLO\r\n".repeat(20_000)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    s.write_all(b"NOOP\r\n")
        .await
        .expect("still lingering at 1.5 s");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // At 3 s the connection is closed: the first write draws the reset, a later one fails.
    let mut reset = false;
    for _ in 0..20 {
        if s.write_all(b"NOOP\r\n").await.is_err() {
            reset = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reset, "the connection outlived the linger");
}

/// A client of a dual-stack listener (`[::]`) refused by a connection limit is logged by its
/// IPv4 address, as the sessions it is let into are known, not as `::ffff:127.0.0.1`.
#[tokio::test]
async fn a_dual_stack_listeners_refusal_names_the_ipv4_client() {
    let (backend, _rec) = recording_backend().await;
    let port = common::process::free_port();
    let yaml = config_yaml(backend, "starttls", "      max_connections_per_ip: 1\n")
        .replace("listen: 127.0.0.1:0", &format!("listen: \"[::]:{port}\""));
    let running = start_binary(&yaml);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _clients = one_place_per_address(addr).await;
    running.wait_log("too many connections", 1).await;
    let log = running.log();
    let line = log
        .lines()
        .find(|l| l.contains("too many connections"))
        .unwrap_or_default();
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}
