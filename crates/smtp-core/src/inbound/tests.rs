//! Session tests: byte-exact, in memory, with a virtual clock.

use crate::session::{Refusal, ReplyTo};
use std::time::Duration;

use crate::data::{BareNewlines, LongLines};
use crate::inbound::Event;
use crate::testing::{test_config, Harness};

const EHLO_REPLY_PLAIN: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n";

#[test]
fn greeting_is_ours_after_backend_greets() {
    let mut h = Harness::new(test_config());
    assert_eq!(h.connects, 1);
    assert_eq!(h.take_client(), "", "no greeting before the backend's");
    h.backend_says(b"220 legacy.internal Microsoft ESMTP MAIL Service\r\n");
    assert_eq!(h.take_client(), "220 mx.test ESMTP\r\n");
}

#[test]
fn ehlo_reply_is_rewritten() {
    let mut h = Harness::greeted(test_config());
    let reply = h.exchange(
        "ehlo client.test\r\n",
        "EHLO client.test\r\n",
        "250-legacy.internal Hello\r\n250-PIPELINING\r\n250-XEXCH50\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-AUTH LOGIN\r\n250 X-LINK2STATE\r\n",
    );
    assert_eq!(
        reply,
        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n"
    );
}

#[test]
fn full_message_is_acknowledged_only_after_backend() {
    let mut h = Harness::greeted(test_config());
    assert_eq!(h.ehlo(), EHLO_REPLY_PLAIN);
    h.transaction();
    h.client_says(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n");
    assert_eq!(
        h.take_backend(),
        "Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    );
    assert_eq!(h.take_client(), "", "no 250 before the backend's");
    h.backend_says(b"250 2.0.0 queued as 1\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 queued as 1\r\n");
    assert!(h.events.contains(&Event::MessageAccepted { bytes: 28 }));
}

/// An idle session (workload C) keeps no buffer its EHLO reply took: neither the backend
/// reply parser's once the reply is parsed, nor the client leg's once the reply is written;
/// a short reply's is kept, for the next one.
#[test]
fn an_idle_session_keeps_no_buffer_its_ehlo_reply_took() {
    use crate::session::Leg;
    let mut h = Harness::greeted(test_config());
    let long = "250-legacy.test Hello client.test [192.0.2.1], pleased to meet you\r\n\
                250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 10240000\r\n250-DSN\r\n\
                250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 HELP\r\n";
    assert!(long.len() > crate::reply::KEEP_READ);
    let shown = h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", long);
    assert!(shown.len() > crate::session::KEEP_WRITTEN, "{shown}");
    assert!(
        !h.session.conn.backend_in.holds_allocation(),
        "the parser's"
    );
    assert!(
        !h.session.conn.holds_buffer(Leg::Client),
        "the client leg's"
    );
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 2.1.0 Ok\r\n",
    );
    assert!(
        h.session.conn.holds_buffer(Leg::Client),
        "a short reply's is kept"
    );
}

/// A bulk body is reframed into one buffer kept from read to read, never grown past a read's
/// worth, and the session gives it up with the body's last bytes: between messages it holds
/// no body buffer (DESIGN.md §5).
#[test]
fn the_body_buffer_lasts_as_long_as_the_body() {
    use crate::session::{Leg, Machine, BODY_BATCH};
    let mut cfg = test_config();
    cfg.received_header = true;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.transaction();
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n";
    let mut body = Vec::new();
    while body.len() < 256 * 1024 {
        body.extend_from_slice(line);
    }
    // Reads as the driver hands them over: pieces fed one by one, the writes taken after
    // each read. One read starts with a small piece, as a read that begins with the end of
    // a record cut in two does.
    let reads: [&[usize]; 4] = [
        &[16_384; 8],
        &[6_000, 16_384, 16_384, 16_384],
        &[16_384; 4],
        &[16_384; 8],
    ];
    let mut relayed = Vec::new();
    let mut at = 0;
    for read in reads.into_iter().cycle() {
        if at == body.len() {
            break;
        }
        for &size in read {
            let end = (at + size).min(body.len());
            h.session.handle_bytes(Leg::Client, &body[at..end], h.now);
            at = end;
        }
        h.run();
        let written = h.backend.split();
        relayed.extend_from_slice(&written);
        // What is left of the buffer after this read's bytes: one allocation of about
        // BODY_BATCH (and the envelope's commands, which the first one began with) held them
        // all, and is kept for the next read. Grown by doubling, it would be twice that.
        let left = h.session.conn.buffer_capacity(Leg::Backend);
        assert!(
            left > 0 && left + written.len() <= BODY_BATCH + 1024,
            "kept while the body lasts, never grown past a read: {left} + {}",
            written.len()
        );
    }
    // The end of data, with the next command pipelined behind it.
    h.client_says(b".\r\nMAIL FROM:<c@x.test>\r\n");
    relayed.extend_from_slice(&h.backend.split());
    body.extend_from_slice(b".\r\n");
    // The Received header, then the body as it was sent, and nothing else.
    assert!(relayed.starts_with(b"Received: from client.test"));
    assert!(relayed.len() - body.len() < 512, "one header, not more");
    assert!(
        relayed.ends_with(&body),
        "the body reached the backend as it was sent"
    );
    assert_eq!(h.session.conn.buffer_capacity(Leg::Backend), 0, "given up");
    // The pipelined MAIL goes on once the message is answered; the two replies leave
    // together.
    h.backend_says(b"250 2.0.0 queued as 1\r\n");
    assert_eq!(h.take_backend(), "MAIL FROM:<c@x.test>\r\n");
    h.backend_says(b"250 2.1.0 Ok\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 queued as 1\r\n250 2.1.0 Ok\r\n");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert_eq!(
        h.take_backend(),
        "MAIL FROM:<a@x.test>\r\n",
        "one command at a time"
    );
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "DATA\r\n");
    h.backend_says(b"354 go\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n250 ok\r\n354 go\r\n");
}

/// RFC 2920: the replies to a pipelined batch leave together once the backend has answered
/// its last command; a command sent alone is answered as soon as the backend answers it.
#[test]
fn replies_to_a_pipelined_batch_leave_in_one_write() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    let writes = h.client_writes;
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "", "the MAIL's reply waits for the batch");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "");
    h.backend_says(b"354 go\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.client_writes, writes + 1, "one write for the batch");
    // Alone, each command is answered at once.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    let reply = h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    assert_eq!(reply, "250 ok\r\n");
}

/// A client that keeps pipelined commands coming gets its replies once 4 KiB of them wait:
/// what is held for it is bounded, and it must read them (the write deadline applies).
#[test]
fn held_replies_are_bounded() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(&b"RSET\r\n".repeat(100));
    let reply = format!("250 2.0.0 {}\r\n", "x".repeat(90));
    let mut answered = 0;
    while h.client.is_empty() {
        assert_eq!(h.take_backend(), "RSET\r\n");
        h.backend_says(reply.as_bytes());
        answered += 1;
        assert!(answered < 100, "replies held for the whole batch");
    }
    let got = h.take_client();
    assert!(
        got.len() >= 4096 && got.len() < 4096 + reply.len(),
        "{}",
        got.len()
    );
    assert_eq!(got, reply.repeat(answered));
}

/// Replies held for a pipelined batch still leave, in order, when the backend fails to
/// answer a later command of it.
#[test]
fn held_replies_go_out_before_a_backend_timeout() {
    let t = test_config().timeouts;
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"NOOP\r\nMAIL FROM:<a@x.test>\r\n");
    assert_eq!(h.take_client(), "");
    h.advance(t.backend_reply);
    assert_eq!(
        h.take_client(),
        "250 2.0.0 OK\r\n421 4.4.2 Backend unavailable, try again later\r\n"
    );
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"STARTTLS\r\nMAIL FROM:<x@evil.test>\r\n");
    assert_eq!(h.take_client(), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(h.tls_started, 1);
    assert_eq!(
        h.take_backend(),
        "",
        "the injected MAIL never reaches the backend"
    );
    // After TLS, the session starts again at EHLO (RFC 3207 §4.2).
    h.client_says(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(h.take_client(), "503 5.5.1 Send EHLO first\r\n");
    let reply = h.ehlo_after_tls();
    assert_eq!(
        reply,
        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 36700160\r\n"
    );
    h.client_says(b"STARTTLS\r\n");
    assert_eq!(h.take_client(), "503 5.5.1 TLS already active\r\n");
}

#[test]
fn starttls_with_argument_or_without_certificate() {
    let mut h = Harness::greeted(test_config());
    h.client_says(b"STARTTLS now\r\n");
    assert_eq!(
        h.take_client(),
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    let mut cfg = test_config();
    cfg.starttls = false;
    let mut h = Harness::greeted(cfg);
    h.client_says(b"STARTTLS\r\n");
    assert_eq!(
        h.take_client(),
        "454 4.7.0 TLS not available due to temporary reason\r\n"
    );
}

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let mut cfg = test_config();
    cfg.require_tls = true;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    for cmd in [
        "MAIL FROM:<a@x.test>\r\n",
        "RCPT TO:<b@y.test>\r\n",
        "DATA\r\n",
        "VRFY root\r\n",
        "AUTH PLAIN\r\n",
    ] {
        h.client_says(cmd.as_bytes());
        assert_eq!(
            h.take_client(),
            "530 5.7.0 Must issue a STARTTLS command first\r\n",
            "{cmd}"
        );
    }
    assert_eq!(h.take_backend(), "");
    assert!(h.events.contains(&Event::PolicyRejection {
        reason: Refusal::TlsRequired,
        enforced: true,
    }));
}

#[test]
fn auth_requires_tls() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"AUTH PLAIN AGEAYg==\r\n");
    assert_eq!(
        h.take_client(),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert_eq!(h.take_backend(), "");
}

#[test]
fn auth_exchange_inside_tls() {
    let mut h = Harness::greeted(test_config());
    h.ehlo_auth();
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    h.ehlo_after_tls();
    assert_eq!(
        h.exchange("AUTH LOGIN\r\n", "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n"),
        "334 VXNlcm5hbWU6\r\n"
    );
    assert_eq!(
        h.exchange("dXNlcg==\r\n", "dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n"),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        h.exchange("cGFzcw==\r\n", "cGFzcw==\r\n", "235 2.7.0 ok\r\n"),
        "235 2.7.0 ok\r\n"
    );
}

#[test]
fn size_limits() {
    let mut cfg = test_config();
    cfg.max_message_size = 100;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.client_says(b"MAIL FROM:<a@x.test> SIZE=101\r\n");
    assert_eq!(
        h.take_client(),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    h.transaction();
    h.client_says(&[b'a'; 60]);
    h.client_says(b"\r\n");
    h.client_says(&[b'b'; 60]);
    assert_eq!(
        h.backend_closes, 1,
        "the backend connection is dropped, never given the end"
    );
    assert_eq!(h.connects, 2, "and a new one opened");
    h.client_says(b"\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    let sent = h.take_backend();
    assert!(
        !sent.contains("\r\n.\r\n"),
        "no end of data reached the backend: {sent:?}"
    );
    // The new backend connection is brought back to the client's state.
    h.backend_says(b"220 legacy again\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250 legacy\r\n");
    assert_eq!(
        h.exchange(
            "MAIL FROM:<a@x.test>\r\n",
            "MAIL FROM:<a@x.test>\r\n",
            "250 ok\r\n"
        ),
        "250 ok\r\n"
    );
}

#[test]
fn bare_lf_rejected_after_real_end_of_data() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"a\r\n\n.\nMAIL FROM:<evil@x.test>\r\n");
    assert_eq!(h.take_client(), "", "no reply before the real end of data");
    h.client_says(b"more\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "550 5.6.11 Bare line feed or carriage return not allowed\r\n"
    );
    assert!(h.events.contains(&Event::MessageRejected));
    assert!(!h.take_backend().contains("evil"));
}

#[test]
fn bare_lf_normalized() {
    let mut cfg = test_config();
    cfg.bare_newlines = BareNewlines::Normalize;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.transaction();
    h.client_says(b"a\n.\nb\r\n.\r\n");
    assert_eq!(h.take_backend(), "a\r\n..\r\nb\r\n.\r\n");
}

#[test]
fn long_line_rejected_after_real_end_of_data_and_session_goes_on() {
    let mut cfg = test_config();
    cfg.long_lines = LongLines::Reject;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.transaction();
    // The smuggling attack: a lone `.` right after the 999th octet of a line.
    h.client_says(&[b'A'; 999]);
    h.client_says(b".\r\nMAIL FROM:<smuggled@x.test>\r\nDATA\r\n");
    assert_eq!(h.take_client(), "", "no reply before the real end of data");
    assert_eq!(
        (h.backend_closes, h.connects),
        (1, 2),
        "the backend connection is dropped mid-message and replaced"
    );
    h.client_says(b"smuggled\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "550 5.6.0 Message has lines longer than 998 octets\r\n"
    );
    assert!(h.events.contains(&Event::PolicyRejection {
        reason: Refusal::LongLine,
        enforced: true,
    }));
    assert!(h.events.contains(&Event::MessageRejected));
    let sent = h.take_backend();
    assert!(
        !sent.contains("smuggled") && !sent.contains('.'),
        "{sent:?}"
    );
    h.backend_says(b"220 legacy again\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250 legacy\r\n");
    h.transaction();
    h.client_says(b"clean\r\n.\r\n");
    assert_eq!(h.take_backend(), "clean\r\n.\r\n");
    h.backend_says(b"250 2.0.0 queued\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 queued\r\n");
}

#[test]
fn too_many_recipients() {
    let mut cfg = test_config();
    cfg.max_recipients = 1;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    h.exchange(
        "RCPT TO:<b@y.test>\r\n",
        "RCPT TO:<b@y.test>\r\n",
        "250 ok\r\n",
    );
    h.client_says(b"RCPT TO:<c@y.test>\r\n");
    assert_eq!(h.take_client(), "452 4.5.3 Too many recipients\r\n");
    assert_eq!(h.take_backend(), "");
}

#[test]
fn line_too_long_and_resync() {
    let mut h = Harness::greeted(test_config());
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 600));
    long.extend_from_slice(b"\r\nNOOP\r\n");
    h.client_says(&long);
    assert_eq!(
        h.take_client(),
        "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    );
    let mut huge = vec![b'A'; 5000];
    huge.extend_from_slice(b"\r\nNOOP\r\n");
    h.client_says(&huge);
    assert_eq!(
        h.take_client(),
        "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    );
}

#[test]
fn garbage_and_nul_are_refused_and_counted() {
    let mut h = Harness::greeted(test_config());
    h.client_says(b"MAIL\0FROM:<a@b>\r\nHELLO\r\nEHLO a\nb\r\n");
    assert_eq!(
        h.take_client(),
        "501 5.5.4 Syntax error in parameters or arguments\r\n500 5.5.1 Command unrecognized\r\n500 5.5.2 Bare line feed not allowed\r\n500 5.5.1 Command unrecognized\r\n"
    );
    assert_eq!(h.take_backend(), "");
    for _ in 0..20 {
        h.client_says(b"\x16\x03\x01\x02\x00\x01\r\n");
    }
    assert!(h
        .take_client()
        .ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert!(h.closed);
}

#[test]
fn quit_is_answered_and_passed_on() {
    let mut h = Harness::greeted(test_config());
    h.client_says(b"QUIT\r\n");
    assert_eq!(h.take_client(), "221 2.0.0 Bye\r\n");
    assert_eq!(h.take_backend(), "QUIT\r\n");
    assert!(h.closed);
}

/// Only a close the client did not ask for lingers (the driver then reads what it still
/// sends, so that its last reply is not lost to a reset): not after QUIT, nor after the client
/// shut down its side.
#[test]
fn a_close_the_client_did_not_ask_for_lingers() {
    let mut h = Harness::greeted(test_config());
    h.client_says(b"QUIT\r\n");
    assert!(h.closed && !h.lingered);

    let mut h = Harness::greeted(test_config());
    h.session.handle_client_eof(h.now);
    h.run();
    assert!(h.closed && !h.lingered);

    let mut h = Harness::greeted(test_config());
    h.client_says(&b"HELLO\r\n".repeat(20));
    assert!(h
        .take_client()
        .ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert!(h.closed && h.lingered);
}

#[test]
fn bdat_chunk_is_skipped_not_executed() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"BDAT 17 LAST\r\nRCPT TO:<x@y.z>\r\nNOOP\r\n");
    assert_eq!(
        h.take_client(),
        "502 5.5.1 BDAT not supported (CHUNKING not offered)\r\n250 2.0.0 OK\r\n"
    );
    assert_eq!(h.take_backend(), "");
}

#[test]
fn backend_unreachable() {
    let mut s = crate::inbound::Session::new(
        test_config(),
        "192.0.2.1:49152".parse().expect("address"),
        None,
        std::time::Instant::now(),
        std::time::SystemTime::now(),
    );
    assert_eq!(
        s.poll_action(),
        Some(crate::inbound::Action::ConnectBackend)
    );
    s.handle_backend_connect_failed("refused", std::time::Instant::now());
    let mut h = Harness::with_session(s, std::time::Instant::now());
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.closed);
    assert!(matches!(h.events[0], Event::BackendFailed { .. }));
}

#[test]
fn backend_lost_mid_message_gives_421_never_250() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"Subject: x\r\n\r\nbody\r\n");
    h.session.handle_backend_eof(h.now);
    h.run();
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.events.contains(&Event::MessageFailed));
    assert!(h.closed);
}

#[test]
fn hostile_backend_reply_is_bounded() {
    let mut h = Harness::greeted(test_config());
    h.client_says(b"EHLO client.test\r\n");
    h.take_backend();
    for i in 0..20_000 {
        if h.closed {
            break;
        }
        h.backend_says(format!("250-EXT{i}\r\n").as_bytes());
    }
    assert!(h.closed);
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
}

#[test]
fn timeouts() {
    let t = test_config().timeouts;
    // Greeting: the client never speaks.
    let mut h = Harness::greeted(test_config());
    h.advance(t.greeting - Duration::from_millis(1));
    assert!(!h.closed);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.take_client(), "421 4.4.2 Timeout, closing connection\r\n");
    assert!(h.closed);
    // Command: idle after EHLO. Trickling bytes does not extend it.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.advance(t.command / 2);
    h.client_says(b"NO");
    h.advance(t.command / 2);
    assert_eq!(h.take_client(), "421 4.4.2 Timeout, closing connection\r\n");
    // Data block.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"line\r\n");
    h.advance(t.data_block);
    assert_eq!(h.take_client(), "421 4.4.2 Timeout, closing connection\r\n");
    assert!(h.events.contains(&Event::MessageFailed));
    // TLS handshake: closed without a plaintext word.
    let mut h = Harness::greeted(test_config());
    h.auto_tls = false;
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    h.advance(t.tls_handshake);
    assert!(h.closed);
    assert_eq!(h.take_client(), "");
    // Backend silent after the end of data: 421, never 250.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"x\r\n.\r\n");
    h.advance(t.backend_reply);
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.events.contains(&Event::MessageFailed));
    // Backend greeting never comes.
    let mut h = Harness::new(test_config());
    h.advance(t.backend_reply);
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
}

#[test]
fn received_header_is_prepended() {
    let mut cfg = test_config();
    cfg.received_header = true;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.transaction();
    assert_eq!(h.take_backend(), "", "the header waits for the body");
    let writes = h.backend_writes;
    h.client_says(b"x\r\n.\r\n");
    assert_eq!(
        h.take_backend(),
        "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (smtp-sidecar) with ESMTP;\r\n\tTue, 24 Nov 2026 02:45:00 +0000\r\nx\r\n.\r\n"
    );
    assert_eq!(h.backend_writes, writes + 1, "header and body in one write");
}

/// A driver hands a TLS read over one record at a time: what the records of one read carry
/// leaves in one write per leg, when the actions are next polled, not one write per record.
#[test]
fn pieces_handed_over_between_two_polls_leave_in_one_write() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.take_backend();
    let writes = h.backend_writes;
    for piece in [&b"Subject: a\r\n"[..], b"\r\nline one\r\n", b"line two\r\n"] {
        h.session.handle_client_bytes(piece, h.now);
    }
    h.run();
    assert_eq!(
        h.take_backend(),
        "Subject: a\r\n\r\nline one\r\nline two\r\n"
    );
    assert_eq!(
        h.backend_writes,
        writes + 1,
        "one write for the three pieces"
    );
}

#[test]
fn shutdown_drains_at_command_boundary() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    h.session.handle_shutdown(h.now);
    h.run();
    assert!(!h.closed, "the transaction in flight goes on");
    h.exchange(
        "RCPT TO:<b@y.test>\r\n",
        "RCPT TO:<b@y.test>\r\n",
        "250 ok\r\n",
    );
    h.exchange("DATA\r\n", "DATA\r\n", "354 go\r\n");
    h.client_says(b"x\r\n.\r\n");
    h.take_backend();
    h.backend_says(b"250 queued\r\n");
    // The transaction is over: the boundary is now, not when the client next speaks.
    assert_eq!(
        h.take_client(),
        "250 queued\r\n421 4.3.2 Service shutting down\r\n"
    );
    assert!(h.closed);
}

#[test]
fn invalid_sasl_response_cancels_with_one_reply() {
    let mut h = Harness::greeted(test_config());
    h.ehlo_auth();
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    h.ehlo_after_tls();
    h.exchange("AUTH LOGIN\r\n", "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    // Not base64: the backend is told to cancel, and its answer is the only reply.
    let reply = h.exchange(
        "not base64!\r\n",
        "*\r\n",
        "501 5.7.0 Authentication cancelled\r\n",
    );
    assert_eq!(reply, "501 5.7.0 Authentication cancelled\r\n");
    assert_eq!(h.exchange("NOOP\r\n", "", ""), "250 2.0.0 OK\r\n");
}

#[test]
fn every_reply_is_reported_with_the_command_it_answers() {
    use crate::session::ReplyTo;
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"x\r\n.\r\n");
    h.backend_says(b"250 2.0.0 queued\r\n");
    h.client_says(b"BOGUS\r\nRCPT TO:<b@y.test>\r\n");
    assert_eq!(
        h.replies,
        [
            (ReplyTo::Greeting, 220),
            (ReplyTo::Ehlo, 250),
            (ReplyTo::Mail, 250),
            (ReplyTo::Rcpt, 250),
            (ReplyTo::Data, 354),
            (ReplyTo::DataEnd, 250),
            (ReplyTo::Invalid, 500),
            (ReplyTo::Rcpt, 503),
        ]
    );
}

#[test]
fn ehlo_after_starttls_is_answered_from_the_reply_before_it() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    // The same name, and nothing sent to the backend since its reply: the backend would be
    // asked to return to the state it is in.
    assert_eq!(
        h.ehlo_after_tls(),
        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 36700160\r\n"
    );
    assert!(h.replies.contains(&(ReplyTo::Ehlo, 250)));
    h.transaction();
    // Once only: a third EHLO is the backend's to answer.
    let reply = "250-legacy.test\r\n250 8BITMIME\r\n";
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", reply);

    // Anything forwarded in between (RSET, VRFY...) and the backend is asked again.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.exchange("RSET\r\n", "RSET\r\n", "250 ok\r\n");
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", reply);

    // HELO before TLS, or after it: asked again.
    for (before, after) in [("HELO", "EHLO"), ("EHLO", "HELO")] {
        let mut h = Harness::greeted(test_config());
        let first = format!("{before} client.test\r\n");
        h.exchange(&first, &first, "250 legacy.test\r\n");
        h.client_says(b"STARTTLS\r\n");
        h.take_client();
        let second = format!("{after} client.test\r\n");
        h.exchange(&second, &second, "250 legacy.test\r\n");
    }
}
