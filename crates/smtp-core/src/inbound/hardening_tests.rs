//! Session tests for what a security review found (parameters, the error limit, AUTH across
//! backend replacements, backend protocol violations, bounds, half-close, a second EHLO):
//! byte-exact, in memory, with a virtual clock.

use crate::inbound::Event;
use crate::testing::{test_config, Harness};

const EHLO_FULL: &str = "250-legacy.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 SIZE 1000000\r\n";

/// A session inside TLS that was offered every extension we pass.
fn tls_session() -> Harness {
    let mut h = Harness::greeted(test_config());
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", EHLO_FULL);
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    h.ehlo_after_tls();
    h
}

/// Send a message whose body has a bare LF: refused, the backend connection replaced.
fn refused_message(h: &mut Harness) {
    h.transaction();
    h.client_says(b"bare\nlf\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "550 5.6.11 Bare line feed or carriage return not allowed\r\n"
    );
}

#[test]
fn no_parameters_after_helo() {
    let mut h = Harness::greeted(test_config());
    h.exchange(
        "HELO client.test\r\n",
        "HELO client.test\r\n",
        "250 legacy.test\r\n",
    );
    h.client_says(b"MAIL FROM:<x@evil.test> AUTH=ceo@corp.test SIZE=5 BODY=8BITMIME RET=HDRS\r\n");
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    h.exchange(
        "MAIL FROM:<x@evil.test>\r\n",
        "MAIL FROM:<x@evil.test>\r\n",
        "250 ok\r\n",
    );
    h.client_says(b"RCPT TO:<v@corp.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;v@corp.test\r\n");
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    h.client_says("RCPT TO:<zoë@corp.test>\r\n".as_bytes());
    assert_eq!(
        h.take_client(),
        "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
    );
    assert_eq!(h.take_backend(), "", "nothing of it reaches the backend");
}

/// VRFY and EXPN carry non-ASCII to the backend only where SMTPUTF8 was offered (after
/// HELO, or an EHLO reply without it, `553 5.6.7`), HELP never; the backend sees none of the
/// refused lines.
#[test]
fn non_ascii_arguments_follow_the_smtputf8_offer() {
    let mut h = Harness::greeted(test_config());
    h.exchange(
        "HELO client.test\r\n",
        "HELO client.test\r\n",
        "250 legacy.test\r\n",
    );
    for line in ["VRFY zoë\r\n", "EXPN listé@corp.test\r\n"] {
        h.client_says(line.as_bytes());
        assert_eq!(
            h.take_client(),
            "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n",
            "{line}"
        );
    }
    h.client_says("HELP zoë\r\n".as_bytes());
    assert_eq!(
        h.take_client(),
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    assert_eq!(h.take_backend(), "", "nothing of it reaches the backend");
    h.exchange("VRFY zoe\r\n", "VRFY zoe\r\n", "252 2.1.5 Maybe\r\n");
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", EHLO_FULL);
    for line in ["VRFY zoë SMTPUTF8\r\n", "EXPN listé@corp.test SMTPUTF8\r\n"] {
        h.exchange(line, line, "252 2.1.5 Maybe\r\n");
    }
    h.client_says("HELP zoë\r\n".as_bytes());
    assert_eq!(
        h.take_client(),
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    assert_eq!(h.take_backend(), "");
}

#[test]
fn parameters_follow_the_ehlo_reply() {
    let mut h = Harness::greeted(test_config());
    // The backend offers DSN, but AUTH is withheld before TLS (auth_requires_tls).
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", EHLO_FULL);
    h.client_says(b"MAIL FROM:<x@evil.test> AUTH=<>\r\n");
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    h.client_says(b"MAIL FROM:<a@x.test> SIZE=10 SIZE=99999999999\r\n");
    assert_eq!(h.take_client(), "501 5.5.4 Invalid parameter\r\n");
    h.client_says(b"MAIL FROM:<a@x.test> SIZE=10  BODY=8BITMIME\r\n");
    assert_eq!(h.take_client(), "501 5.5.4 Invalid parameter\r\n");
    h.client_says(b"MAIL FROM:<a@x.test>SIZE=10\r\n");
    assert_eq!(
        h.take_client(),
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    h.client_says(b"MAIL FROM:<a@x.test> BODY=BINARYMIME\r\n");
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    assert_eq!(h.take_backend(), "");
    let forwarded = "MAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=e1\r\n";
    h.exchange(forwarded, forwarded, "250 ok\r\n");
    let rcpt = "RCPT TO:<v@corp.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;v@corp.test\r\n";
    assert_eq!(h.exchange(rcpt, rcpt, "250 ok\r\n"), "250 ok\r\n");
}

#[test]
fn auth_parameter_of_an_unauthenticated_client_is_empty() {
    let mut h = tls_session();
    h.exchange(
        "MAIL FROM:<x@evil.test> AUTH=ceo@corp.test\r\n",
        "MAIL FROM:<x@evil.test> AUTH=<>\r\n",
        "250 ok\r\n",
    );
    let mut h = tls_session();
    h.exchange(
        "AUTH PLAIN AGEAYg==\r\n",
        "AUTH PLAIN AGEAYg==\r\n",
        "235 2.7.0 ok\r\n",
    );
    h.exchange(
        "MAIL FROM:<a@corp.test> AUTH=a@corp.test\r\n",
        "MAIL FROM:<a@corp.test> AUTH=a@corp.test\r\n",
        "250 ok\r\n",
    );
}

#[test]
fn recipients_over_the_limit_do_not_end_a_pipelined_transaction() {
    let mut cfg = test_config();
    cfg.max_recipients = 5;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    let mut input = b"MAIL FROM:<a@x.test>\r\n".to_vec();
    for i in 0..30 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\n");
    h.client_says(&input);
    for _ in 0..6 {
        h.take_backend();
        h.backend_says(b"250 ok\r\n");
    }
    assert_eq!(h.take_backend(), "DATA\r\n");
    h.backend_says(b"354 go\r\n");
    let expected = format!(
        "{}{}354 go\r\n",
        "250 ok\r\n".repeat(6),
        "452 4.5.3 Too many recipients\r\n".repeat(25)
    );
    assert_eq!(h.take_client(), expected);
    assert!(!h.closed);
}

#[test]
fn recipients_past_the_overshoot_count_as_errors() {
    let mut cfg = test_config();
    cfg.max_recipients = 1;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.envelope();
    for _ in 0..1000 + 19 {
        h.client_says(b"RCPT TO:<c@y.test>\r\n");
    }
    assert!(!h.closed, "1000 over the limit, then 19 errors");
    h.client_says(b"RCPT TO:<c@y.test>\r\n");
    assert!(h.take_client().ends_with(
        "452 4.5.3 Too many recipients\r\n421 4.7.0 Too many errors, closing connection\r\n"
    ));
    assert!(h.closed);
}

#[test]
fn a_delivered_message_resets_the_error_count() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    for _ in 0..19 {
        h.client_says(b"BOGUS\r\n");
    }
    h.take_client();
    h.transaction();
    h.exchange("x\r\n.\r\n", "x\r\n.\r\n", "250 queued\r\n");
    h.take_client();
    for _ in 0..19 {
        h.client_says(b"BOGUS\r\n");
    }
    assert!(!h.closed);
    h.client_says(b"BOGUS\r\n");
    assert!(h.closed);
}

#[test]
fn bdat_counts_and_checks() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    for _ in 0..40 {
        h.client_says(b"BDAT 0\r\n");
    }
    let replies = h.take_client();
    assert_eq!(replies.matches("502 5.5.1").count(), 19);
    assert!(replies.ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert!(h.closed);
}

#[test]
fn auth_is_replayed_on_a_new_backend_connection() {
    for (exchange, replies) in [
        (vec!["AUTH PLAIN AGEAYg==\r\n"], vec!["235 2.7.0 ok\r\n"]),
        (
            vec!["AUTH LOGIN\r\n", "dXNlcg==\r\n", "cGFzcw==\r\n"],
            vec![
                "334 VXNlcm5hbWU6\r\n",
                "334 UGFzc3dvcmQ6\r\n",
                "235 2.7.0 ok\r\n",
            ],
        ),
    ] {
        let mut h = tls_session();
        for (line, reply) in exchange.iter().zip(&replies) {
            h.exchange(line, line, reply);
        }
        refused_message(&mut h);
        assert_eq!((h.connects, h.backend_closes), (2, 1));
        h.client_says(b"MAIL FROM:<a@x.test>\r\n");
        h.backend_says(b"220 legacy.test ESMTP\r\n");
        assert_eq!(h.take_backend(), "EHLO client.test\r\n");
        h.backend_says(EHLO_FULL.as_bytes());
        for (line, reply) in exchange.iter().zip(&replies) {
            assert_eq!(h.take_backend(), *line);
            h.backend_says(reply.as_bytes());
        }
        assert_eq!(
            h.take_backend(),
            "MAIL FROM:<a@x.test>\r\n",
            "only once authenticated"
        );
        h.backend_says(b"250 ok\r\n");
        assert_eq!(h.take_client(), "250 ok\r\n");
    }
}

#[test]
fn auth_that_cannot_be_replayed_ends_the_session() {
    let mut h = tls_session();
    h.exchange("AUTH CRAM-MD5\r\n", "AUTH CRAM-MD5\r\n", "334 PDEyMz4=\r\n");
    h.exchange("dXNlciBhYmM=\r\n", "dXNlciBhYmM=\r\n", "235 2.7.0 ok\r\n");
    refused_message(&mut h);
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    h.backend_says(EHLO_FULL.as_bytes());
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.closed);
    // A replay the new connection refuses ends the session the same way.
    let mut h = tls_session();
    h.exchange(
        "AUTH PLAIN AGEAYg==\r\n",
        "AUTH PLAIN AGEAYg==\r\n",
        "235 2.7.0 ok\r\n",
    );
    refused_message(&mut h);
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    h.backend_says(EHLO_FULL.as_bytes());
    assert_eq!(
        h.take_backend(),
        "EHLO client.test\r\nAUTH PLAIN AGEAYg==\r\n"
    );
    h.backend_says(b"535 5.7.8 no\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.closed);
}

#[test]
fn a_reply_that_does_not_answer_the_command_is_a_backend_failure() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.envelope();
    let reply = h.exchange("DATA\r\n", "DATA\r\n", "250 ok\r\n");
    assert_eq!(reply, "421 4.4.2 Backend unavailable, try again later\r\n");
    assert!(h.closed);
    let mut h = Harness::greeted(test_config());
    let reply = h.exchange("MAIL FROM:<a@x.test>\r\n", "", "");
    assert_eq!(reply, "503 5.5.1 Send EHLO first\r\n");
    h.ehlo();
    let reply = h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "354 go\r\n",
    );
    assert_eq!(reply, "421 4.4.2 Backend unavailable, try again later\r\n");
}

#[test]
fn bytes_with_no_command_outstanding_are_a_backend_failure() {
    // After the reply to the end of data, in the same read, with the next command pipelined.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"x\r\n.\r\nMAIL FROM:<c@x.test>\r\n");
    assert_eq!(h.take_backend(), "x\r\n.\r\n");
    h.backend_says(b"250 queued\r\n250 2.1.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "250 queued\r\n421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert_eq!(h.take_backend(), "", "the pipelined MAIL is never sent");
    // A part of a line is enough.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"NOOP\r\nRSET\r\n");
    assert_eq!(
        h.take_client(),
        "",
        "the NOOP's reply leaves with the pipelined RSET's"
    );
    h.backend_says(b"250 ok\r\n25");
    assert_eq!(
        h.take_client(),
        "250 2.0.0 OK\r\n250 ok\r\n421 4.4.2 Backend unavailable, try again later\r\n"
    );
    // And while idle.
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.backend_says(b"250 surprise\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
}

/// The backend failed for sending what no command asked for, and nothing more reached it;
/// the client got `replies`, then `421`.
fn failed_for_unasked_bytes(h: &mut Harness, replies: &str) {
    assert_eq!(
        h.take_client(),
        format!("{replies}421 4.4.2 Backend unavailable, try again later\r\n")
    );
    assert_eq!(h.take_backend(), "", "the command is never sent");
    assert_eq!(h.backend_closes, 1, "the connection is reset");
    assert!(h.closed);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::BackendFailed { kind: crate::session::LegFailure::Protocol, reason }
            if reason == "bytes sent with no command outstanding"
    )));
}

// A reply that arrives with the one before it was sent before the command it would answer,
// even when handling the first one sends that command at once: it answers nothing.

/// 354, and the body pipelined behind DATA ends at once: the 250 that came with the 354 was
/// sent before the body, so it does not accept the message (which never reaches its end of
/// data at the backend).
#[test]
fn a_reply_sent_with_the_354_does_not_accept_the_message() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.envelope();
    h.client_says(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(h.take_backend(), "DATA\r\n");
    h.backend_says(b"354 go\r\n250 2.0.0 queued\r\n");
    // The 354 did answer DATA.
    failed_for_unasked_bytes(&mut h, "354 go\r\n");
    assert!(h.events.contains(&Event::MessageFailed));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::MessageAccepted { .. })));
}

/// A deferred connection replayed to where the client is, then the command that waited for
/// it.
#[test]
fn a_reply_sent_with_the_replay_does_not_answer_the_waiting_command() {
    let ehlo = "250-legacy.test\r\n250 PIPELINING\r\n";
    let mut h = Harness::deferred(test_config(), ehlo);
    h.client_says(b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\n");
    h.take_client();
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250 legacy.test\r\n250 2.1.0 Ok\r\n");
    failed_for_unasked_bytes(&mut h, "");
}

/// XCLIENT's new greeting, then the client's EHLO again.
#[test]
fn a_reply_sent_with_xclients_greeting_does_not_answer_the_ehlo() {
    let mut cfg = test_config();
    cfg.hop.xclient = true;
    let mut h = Harness::greeted(cfg);
    h.client_says(b"EHLO client.test\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT ADDR\r\n");
    assert_eq!(h.take_backend(), "XCLIENT ADDR=192.0.2.1\r\n");
    h.backend_says(b"220 legacy.test ESMTP\r\n250 legacy.test\r\n");
    failed_for_unasked_bytes(&mut h, "");
}

/// The backend's greeting, then our own EHLO to encrypt the hop.
#[test]
fn a_reply_sent_with_the_greeting_does_not_answer_our_ehlo() {
    let mut cfg = test_config();
    cfg.hop.starttls = true;
    let mut h = Harness::new(cfg);
    h.backend_says(b"220 legacy.test ESMTP\r\n250-legacy.test\r\n250 STARTTLS\r\n");
    failed_for_unasked_bytes(&mut h, "");
    assert_eq!(h.tls_started, 0);
}

#[test]
fn backend_replacements_are_bounded() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    for n in 1..=5 {
        refused_message(&mut h);
        assert_eq!(h.connects, n + 1);
        h.backend_says(b"220 legacy.test ESMTP\r\n");
        h.backend_says(b"250 legacy.test\r\n");
        h.take_backend();
    }
    h.transaction();
    h.client_says(b"bare\nlf\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "550 5.6.11 Bare line feed or carriage return not allowed\r\n\
         421 4.7.0 Too many refused messages, closing connection\r\n"
    );
    assert_eq!((h.connects, h.backend_closes), (6, 6));
    assert!(h.closed);
}

#[test]
fn input_sent_before_a_half_close_is_answered() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n");
    h.session.handle_client_eof(h.now);
    h.run();
    assert!(!h.closed);
    for reply in ["250 ok\r\n", "250 ok\r\n", "354 go\r\n"] {
        h.take_backend();
        h.backend_says(reply.as_bytes());
    }
    assert_eq!(h.take_backend(), "hi\r\n.\r\n");
    h.backend_says(b"250 queued\r\n");
    assert_eq!(h.take_backend(), "QUIT\r\n");
    assert_eq!(
        h.take_client(),
        "250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 2.0.0 Bye\r\n"
    );
    assert!(h.events.contains(&Event::MessageAccepted { bytes: 4 }));
    assert!(h.closed);
    // Without QUIT the session closes once everything is answered.
    let mut h = Harness::greeted(test_config());
    h.client_says(b"NOOP\r\n");
    h.session.handle_client_eof(h.now);
    h.run();
    assert_eq!(h.take_client(), "250 2.0.0 OK\r\n");
    assert!(h.closed);
}

/// A second EHLO after STARTTLS that the backend refuses as OpenSMTPD does: the session
/// goes to a new connection, which greets and gets that EHLO (no HELO replayed before it).
fn second_ehlo_on_a_new_connection() -> Harness {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    // Another name than before TLS: the backend must be asked again.
    h.client_says(b"EHLO other.test\r\n");
    assert_eq!(h.take_backend(), "EHLO other.test\r\n");
    h.backend_says(b"503 5.5.1 Invalid command: Already identified\r\n");
    assert_eq!((h.connects, h.backend_closes), (2, 1));
    assert_eq!(h.take_client(), "");
    h.backend_says(b"220 legacy.test ESMTP OpenSMTPD\r\n");
    assert_eq!(
        h.take_backend(),
        "EHLO other.test\r\n",
        "no HELO replayed before it"
    );
    h
}

#[test]
fn a_second_ehlo_refused_by_the_backend_goes_to_a_new_connection() {
    let mut h = second_ehlo_on_a_new_connection();
    h.backend_says(b"250-legacy.test Hello\r\n250-8BITMIME\r\n250 PIPELINING\r\n");
    assert_eq!(
        h.take_client(),
        "250-mx.test\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 36700160\r\n"
    );
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    // A backend that accepts a second EHLO keeps its connection.
    let h = tls_session();
    assert_eq!((h.connects, h.backend_closes), (1, 0));
    // A 503 on a fresh connection is the backend's answer, passed on.
    let mut h = Harness::greeted(test_config());
    let reply = h.exchange(
        "EHLO client.test\r\n",
        "EHLO client.test\r\n",
        "503 5.5.1 no\r\n",
    );
    assert_eq!(reply, "503 5.5.1 no\r\n");
    assert_eq!(h.connects, 1);
    h.take_client();
}

// ----- from the second review -----

/// A plaintext session (AUTH allowed before TLS) authenticated at the backend.
fn plaintext_authenticated() -> Harness {
    let mut cfg = test_config();
    cfg.auth_requires_tls = false;
    let mut h = Harness::greeted(cfg);
    h.ehlo_auth();
    h.exchange(
        "AUTH PLAIN AGEAYg==\r\n",
        "AUTH PLAIN AGEAYg==\r\n",
        "235 2.7.0 ok\r\n",
    );
    h
}

#[test]
fn authentication_does_not_survive_starttls_at_the_backend() {
    let mut h = plaintext_authenticated();
    h.client_says(b"STARTTLS\r\n");
    assert_eq!(h.take_client(), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!((h.connects, h.backend_closes), (2, 1), "a fresh connection");
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(
        h.take_backend(),
        "",
        "nothing replayed: the client starts over"
    );
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", EHLO_FULL);
    h.exchange(
        "MAIL FROM:<a@x.test> AUTH=a@x.test\r\n",
        "MAIL FROM:<a@x.test> AUTH=<>\r\n",
        "250 ok\r\n",
    );
}

#[test]
fn backend_bytes_in_a_later_read_with_nothing_outstanding_are_a_failure() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.backend_says(b"250-x\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"RSET\r\n");
    h.backend_says(b"250 ok\r\n");
    h.backend_says(b"25");
    assert_eq!(
        h.take_client(),
        "250 ok\r\n421 4.4.2 Backend unavailable, try again later\r\n"
    );
}

#[test]
fn size_is_not_forwarded_to_a_backend_without_it() {
    let mut h = Harness::greeted(test_config());
    h.ehlo(); // no SIZE from the backend; the client is offered ours
    h.exchange(
        "MAIL FROM:<a@x.test> SIZE=10\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    let mut h = tls_session(); // SIZE 1000000 from the backend
    h.exchange(
        "MAIL FROM:<a@x.test> SIZE=10\r\n",
        "MAIL FROM:<a@x.test> SIZE=10\r\n",
        "250 ok\r\n",
    );
    h.client_says(b"RSET\r\nMAIL FROM:<a@x.test> SIZE=+5\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n501 5.5.4 Invalid parameter\r\n");
}

#[test]
fn a_second_ehlo_without_tls_goes_to_one_new_connection_with_auth_replayed() {
    let mut h = plaintext_authenticated();
    h.client_says(b"EHLO other.test\r\n");
    assert_eq!(h.take_backend(), "EHLO other.test\r\n");
    h.backend_says(b"503 5.5.1 Invalid command: Already identified\r\n");
    assert_eq!((h.connects, h.backend_closes), (2, 1));
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO other.test\r\n", "the new name");
    h.backend_says(b"250-legacy.test\r\n250 AUTH PLAIN LOGIN\r\n");
    assert_eq!(h.take_backend(), "AUTH PLAIN AGEAYg==\r\n");
    assert_eq!(h.take_client(), "", "the EHLO reply waits for AUTH");
    h.backend_says(b"235 2.7.0 ok\r\n");
    assert_eq!(
        h.take_client(),
        "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n"
    );
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    assert_eq!(h.connects, 2, "one replacement, not five");
}

/// The client keeps what it was offered, but a replacement connection to a server without
/// DSN or SMTPUTF8 is sent neither: DSN's parameters are refused, and so is non-ASCII in
/// MAIL, VRFY and EXPN, which the client was told it could send.
#[test]
fn parameters_narrow_to_what_a_replacement_connection_offers() {
    let mut h = tls_session(); // DSN and SMTPUTF8 offered
    refused_message(&mut h);
    h.backend_says(b"220 other.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    // A failover server without DSN or SMTPUTF8.
    h.backend_says(b"250-other.test\r\n250 8BITMIME\r\n");
    h.client_says(b"MAIL FROM:<a@x.test> RET=HDRS\r\n");
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    h.client_says("MAIL FROM:<zoë@x.test> SMTPUTF8\r\n".as_bytes());
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    for line in ["VRFY zoë SMTPUTF8\r\n", "EXPN listé@corp.test\r\n"] {
        h.client_says(line.as_bytes());
        assert_eq!(
            h.take_client(),
            "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n",
            "{line}"
        );
    }
    assert_eq!(h.take_backend(), "", "nothing of it reaches the backend");
    h.exchange("VRFY zoe\r\n", "VRFY zoe\r\n", "252 2.1.5 Maybe\r\n");
}

#[test]
fn auth_that_was_not_offered_is_refused() {
    let mut cfg = test_config();
    cfg.auth_requires_tls = false;
    let mut h = Harness::greeted(cfg.clone());
    h.exchange(
        "HELO client.test\r\n",
        "HELO client.test\r\n",
        "250 legacy.test\r\n",
    );
    let mut h2 = Harness::greeted(cfg);
    h2.ehlo(); // no AUTH from the backend
    for h in [&mut h, &mut h2] {
        h.client_says(b"AUTH PLAIN AGEAYg==\r\n");
        assert_eq!(h.take_client(), "502 5.5.1 AUTH not offered\r\n");
        assert_eq!(h.take_backend(), "");
    }
}

#[test]
fn excess_recipients_are_one_policy_refusal_per_transaction() {
    let mut cfg = test_config();
    cfg.max_recipients = 1;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.envelope();
    for _ in 0..50 {
        h.client_says(b"RCPT TO:<c@y.test>\r\n");
    }
    let refusals = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::PolicyRejection { .. }))
        .count();
    assert_eq!(refusals, 1);
}

#[test]
fn a_half_close_inside_a_body_ends_the_session_and_resets_the_backend() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhalf a bo");
    h.session.handle_client_eof(h.now);
    h.run();
    for reply in ["250 ok\r\n", "250 ok\r\n"] {
        h.backend_says(reply.as_bytes());
    }
    assert!(!h.closed);
    h.backend_says(b"354 go\r\n");
    assert!(h.closed, "no wait for a body that cannot come");
    assert!(h.events.contains(&Event::MessageFailed));
    assert_eq!(
        h.backend_closes, 1,
        "the partial message is reset at the backend"
    );
}

#[test]
fn a_client_lost_mid_message_resets_the_backend() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"part of a message\r\n");
    h.session.handle_client_lost(h.now);
    h.run();
    assert_eq!(h.backend_closes, 1);
    assert!(h.closed);
}

#[test]
fn refused_auth_attempts_count_as_errors() {
    let mut h = tls_session();
    for _ in 0..19 {
        h.exchange(
            "AUTH PLAIN AGEAYw==\r\n",
            "AUTH PLAIN AGEAYw==\r\n",
            "535 5.7.8 Bad credentials\r\n",
        );
    }
    assert!(!h.closed);
    let reply = h.exchange(
        "AUTH PLAIN AGEAYw==\r\n",
        "AUTH PLAIN AGEAYw==\r\n",
        "535 5.7.8 Bad credentials\r\n",
    );
    assert_eq!(
        reply,
        "535 5.7.8 Bad credentials\r\n421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(h.closed);
}

/// The driver reads no more client input at once than the session will hold: outside DATA,
/// what still fits under the 8 KiB of pipelined input a session buffers while it waits for
/// the backend (a whole read of 128 KiB would be held past it); in DATA, as much as it reads.
#[test]
fn the_client_read_budget_keeps_pipelined_input_within_its_bound() {
    use crate::session::{Leg, Machine};
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    assert_eq!(h.session.read_budget(Leg::Client), 8 * 1024);
    // The MAIL goes to the backend; what is pipelined after it waits for its reply.
    let rcpt = "RCPT TO:<b@y.test>\r\n";
    h.client_says(format!("MAIL FROM:<a@x.test>\r\n{rcpt}").as_bytes());
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test>\r\n");
    assert_eq!(h.session.read_budget(Leg::Client), 8 * 1024 - rcpt.len());
    h.client_says(&b"NOOP\r\n".repeat(2_000));
    assert_eq!(h.session.read_budget(Leg::Client), 0);
    assert!(!h.session.wants_bytes(Leg::Client));
    assert_eq!(h.session.read_budget(Leg::Backend), usize::MAX);

    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    assert_eq!(h.session.read_budget(Leg::Client), usize::MAX, "in DATA");
}

/// An EHLO the backend refuses leaves the session as it was (RFC 5321 §4.1.4: the server
/// "MUST stay in the same state"), on our side as on the backend's: the transaction goes on,
/// and what the last accepted EHLO offered is still offered. An accepted one resets both.
#[test]
fn a_refused_ehlo_leaves_the_transaction_and_the_offer() {
    let mut h = Harness::greeted(test_config());
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", EHLO_FULL);
    let mail = "MAIL FROM:<a@x.test> SIZE=10\r\n";
    assert_eq!(h.exchange(mail, mail, "250 ok\r\n"), "250 ok\r\n");
    let rcpt = "RCPT TO:<b@y.test>\r\n";
    assert_eq!(h.exchange(rcpt, rcpt, "250 ok\r\n"), "250 ok\r\n");
    let refused = "550 5.7.1 Not you\r\n";
    assert_eq!(
        h.exchange("EHLO other.test\r\n", "EHLO other.test\r\n", refused),
        refused
    );
    // The transaction is the backend's still, and ours: DATA goes to it.
    assert_eq!(
        h.exchange("DATA\r\n", "DATA\r\n", "354 go\r\n"),
        "354 go\r\n"
    );
    h.client_says(b"hi\r\n.\r\n");
    assert_eq!(h.take_backend(), "hi\r\n.\r\n");
    h.backend_says(b"250 queued\r\n");
    assert_eq!(h.take_client(), "250 queued\r\n");
    // SIZE is still offered.
    assert_eq!(h.exchange(mail, mail, "250 ok\r\n"), "250 ok\r\n");
    // An accepted EHLO resets the transaction, on both sides.
    h.exchange("EHLO client.test\r\n", "EHLO client.test\r\n", EHLO_FULL);
    h.client_says(b"DATA\r\n");
    assert_eq!(h.take_backend(), "");
    assert_eq!(h.take_client(), "503 5.5.1 Need MAIL command\r\n");
}

/// A `2xx` that is not the command's success (`221`, the backend closing) answers nothing:
/// not the EHLO (whose reply would be rewritten as a `221-` capability list), nor the end of
/// data (the client would take the message for accepted), nor MAIL, RCPT or RSET.
#[test]
fn a_2xx_that_is_not_the_commands_success_is_a_backend_failure() {
    const UNAVAILABLE: &str = "421 4.4.2 Backend unavailable, try again later\r\n";
    let mut h = Harness::greeted(test_config());
    let reply = h.exchange(
        "EHLO client.test\r\n",
        "EHLO client.test\r\n",
        "221 2.0.0 Bye\r\n",
    );
    assert_eq!(reply, UNAVAILABLE);
    assert!(h.closed);

    let mut h = Harness::greeted(test_config());
    h.ehlo();
    h.transaction();
    h.client_says(b"hi\r\n.\r\n");
    assert_eq!(h.take_backend(), "hi\r\n.\r\n");
    h.backend_says(b"221 2.0.0 Bye\r\n");
    assert_eq!(h.take_client(), UNAVAILABLE);
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::MessageAccepted { .. })),
        "a 221 accepted the message"
    );

    for (cmd, forwarded) in [
        ("MAIL FROM:<a@x.test>\r\n", "MAIL FROM:<a@x.test>\r\n"),
        ("RSET\r\n", "RSET\r\n"),
    ] {
        let mut h = Harness::greeted(test_config());
        h.ehlo();
        assert_eq!(
            h.exchange(cmd, forwarded, "220 ready\r\n"),
            UNAVAILABLE,
            "{cmd}"
        );
    }
    // 251 is a recipient's success too (RFC 5321 §3.4).
    for (answer, relayed) in [
        ("221 bye\r\n", UNAVAILABLE),
        ("251 2.1.5 will forward\r\n", "251 2.1.5 will forward\r\n"),
    ] {
        let mut h = Harness::greeted(test_config());
        h.ehlo();
        let sender = "MAIL FROM:<a@x.test>\r\n";
        h.exchange(sender, sender, "250 ok\r\n");
        let rcpt = "RCPT TO:<b@y.test>\r\n";
        assert_eq!(h.exchange(rcpt, rcpt, answer), relayed);
    }
}

/// STARTTLS after plaintext authentication, with no backend replacement left: the session
/// ends once TLS is up, and says why inside it; nothing runs after its close (no timer, no
/// reply written behind the close).
#[test]
fn an_authenticated_connection_that_cannot_be_replaced_at_starttls_is_told_inside_tls() {
    let mut h = plaintext_authenticated();
    for _ in 0..5 {
        h.transaction();
        h.client_says(b"bare\nlf\r\n.\r\n");
        h.backend_says(b"220 legacy.test ESMTP\r\n");
        h.backend_says(b"250-legacy.test\r\n250 AUTH PLAIN LOGIN\r\n");
        h.backend_says(b"235 2.7.0 ok\r\n");
        h.take_client();
        h.take_backend();
    }
    let connects = h.connects;
    h.client_says(b"STARTTLS\r\n");
    assert_eq!(
        h.take_client(),
        "220 2.0.0 Ready to start TLS\r\n421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.session.poll_timeout(), None, "a timer after the close");
    h.advance(std::time::Duration::from_secs(301));
    assert_eq!(h.take_client(), "", "a reply after the close");
    assert_eq!(h.connects, connects, "no new backend connection");
}

/// The same on a replacement connection: its answer to the replayed HELO/EHLO must be `250`
/// (a `221` would become the session's EHLO reply), and only a refusal of the client's own
/// waiting EHLO is passed on to it.
#[test]
fn a_replacement_connection_that_answers_the_replayed_ehlo_with_221_is_a_failure() {
    let mut h = Harness::greeted(test_config());
    h.ehlo();
    refused_message(&mut h);
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"221 2.0.0 Bye\r\n");
    assert!(h.closed);
    // With the client's EHLO waiting for that reply (OpenSMTPD's second EHLO, above).
    let mut h = second_ehlo_on_a_new_connection();
    h.backend_says(b"221 2.0.0 Bye\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(h.closed);
}
