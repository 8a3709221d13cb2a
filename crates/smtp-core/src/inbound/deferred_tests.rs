//! Sessions started with their backend deferred ([`super::Session::new_deferred`]): what a
//! connection that never gets past STARTTLS costs the backend (nothing), and that a session
//! which goes on is served exactly as one connected from the start. And implicit-TLS sessions
//! whose greeting went with the handshake ([`super::Session::new_greeted`]), which connect to
//! the backend as such a session does once TLS is up.

use crate::testing::{test_config, Harness};

/// The backend's EHLO reply as its health check last saw it.
const KNOWN_EHLO: &str = "250-legacy.test Hello mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                          250-XEXCH50\r\n250-SIZE 99999999999\r\n250-STARTTLS\r\n250 AUTH LOGIN\r\n";

/// [`KNOWN_EHLO`] rewritten for a client before TLS.
const EHLO_BEFORE_TLS: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n";

#[test]
fn greets_and_answers_ehlo_without_the_backend() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    assert_eq!(h.take_client(), "220 mx.test ESMTP\r\n", "greeted at once");
    h.client_says(b"EHLO client.test\r\n");
    assert_eq!(h.take_client(), EHLO_BEFORE_TLS);
    h.client_says(b"NOOP\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 OK\r\n");
    h.client_says(b"HELO client.test\r\n");
    assert_eq!(h.take_client(), "250 mx.test\r\n");
    h.client_says(b"QUIT\r\n");
    assert_eq!(h.take_client(), "221 2.0.0 Bye\r\n");
    assert!(h.closed);
    assert_eq!(h.connects, 0, "no backend connection");
    assert_eq!(h.take_backend(), "");
}

/// A VRFY or HELP the client's offer already rules out (non-ASCII without SMTPUTF8) is
/// refused without a backend connection made for it.
#[test]
fn a_non_ascii_argument_is_refused_before_the_backend_is_connected() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.client_says(b"EHLO client.test\r\n");
    h.take_client();
    for (line, reply) in [
        (
            "VRFY zo\u{eb}\r\n",
            "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n",
        ),
        (
            "HELP zo\u{eb}\r\n",
            "501 5.5.4 Syntax error in parameters or arguments\r\n",
        ),
    ] {
        h.client_says(line.as_bytes());
        assert_eq!(h.take_client(), reply, "{line}");
    }
    assert_eq!(h.connects, 0, "no backend connection");
    assert_eq!(h.take_backend(), "");
}

#[test]
fn a_flood_attempt_that_stops_at_starttls_never_reaches_the_backend() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.auto_tls = false;
    h.client_says(b"EHLO client.test\r\nSTARTTLS\r\n");
    assert_eq!(
        h.take_client(),
        format!("220 mx.test ESMTP\r\n{EHLO_BEFORE_TLS}220 2.0.0 Ready to start TLS\r\n")
    );
    assert_eq!(h.tls_started, 1);
    h.session.handle_tls_failed(h.now);
    h.run();
    assert!(h.closed);
    assert_eq!(h.connects, 0);
}

/// Once TLS is up the backend is connected, while the client sends its EHLO; the EHLO waits
/// for the connection's greeting and goes to it as sent, and the session is an ordinary one.
#[test]
fn the_backend_is_connected_once_tls_is_up() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.client_says(b"EHLO client.test\r\nSTARTTLS\r\n");
    h.take_client();
    assert_eq!(h.connects, 1, "connected as TLS came up");
    served_once_the_backend_greets(&mut h);
}

/// A session over TLS whose backend is connecting: the client's EHLO waits for the backend's
/// greeting and goes to it as sent, the backend's own reply is rewritten as any, and a
/// message and QUIT go through, on that one connection.
fn served_once_the_backend_greets(h: &mut Harness<super::Session>) {
    h.client_says(b"EHLO client.test\r\n");
    assert_eq!(
        h.take_backend(),
        "",
        "nothing before the backend's greeting"
    );
    assert_eq!(h.take_client(), "");
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH LOGIN\r\n");
    assert_eq!(
        h.take_client(),
        "250-mx.test\r\n250-PIPELINING\r\n250-AUTH LOGIN\r\n250 SIZE 36700160\r\n",
        "the backend's own reply, rewritten"
    );
    h.transaction();
    h.client_says(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_eq!(h.take_backend(), "Subject: hi\r\n\r\nbody\r\n.\r\n");
    h.backend_says(b"250 2.0.0 queued as 1\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 queued as 1\r\n");
    h.client_says(b"QUIT\r\n");
    assert_eq!(h.take_client(), "221 2.0.0 Bye\r\n");
    assert_eq!(h.take_backend(), "QUIT\r\n");
    assert_eq!(h.connects, 1);
}

/// A command before TLS that the backend must answer connects it; the connection is
/// greeted with the client's EHLO, and what it offers itself (here no 8BITMIME, which the
/// known reply had) decides what passes, as on any replaced connection.
#[test]
fn a_command_before_tls_connects_the_backend_and_waits_for_it() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.client_says(b"EHLO client.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRSET\r\n");
    assert_eq!(
        h.take_client(),
        format!("220 mx.test ESMTP\r\n{EHLO_BEFORE_TLS}")
    );
    assert_eq!(h.connects, 1);
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 PIPELINING\r\n");
    assert_eq!(
        h.take_backend(),
        "RSET\r\n",
        "the MAIL refused, not forwarded"
    );
    h.backend_says(b"250 2.0.0 Ok\r\n");
    assert_eq!(
        h.take_client(),
        "555 5.5.4 Unsupported parameter\r\n250 2.0.0 Ok\r\n"
    );
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 2.1.0 Ok\r\n",
    );
    assert_eq!(h.connects, 1);
}

#[test]
fn an_unreachable_backend_is_421_when_it_is_needed() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.backend_reachable = false;
    h.client_says(b"EHLO client.test\r\nSTARTTLS\r\n");
    assert_eq!(
        h.take_client(),
        format!(
            "220 mx.test ESMTP\r\n{EHLO_BEFORE_TLS}220 2.0.0 Ready to start TLS\r\n\
             421 4.4.2 Backend unavailable, try again later\r\n"
        )
    );
    assert!(h.closed);
}

/// Under `require_tls` nothing before TLS needs the backend: refusals are ours.
#[test]
fn require_tls_refusals_need_no_backend() {
    let mut cfg = test_config();
    cfg.require_tls = true;
    let mut h = Harness::deferred(cfg, KNOWN_EHLO);
    h.take_client();
    h.client_says(b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\n");
    assert_eq!(
        h.take_client(),
        format!("{EHLO_BEFORE_TLS}530 5.7.0 Must issue a STARTTLS command first\r\n")
    );
    assert_eq!(h.connects, 0);
}

/// A command the sidecar refuses itself, or RSET with nothing to reset, needs no backend: a
/// flood cannot make each attempt connect with a line before STARTTLS.
#[test]
fn our_own_refusals_and_rset_need_no_backend() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.take_client();
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nRSET\r\n");
    assert_eq!(
        h.take_client(),
        "503 5.5.1 Send EHLO first\r\n503 5.5.1 Need MAIL command\r\n\
         503 5.5.1 Need MAIL command\r\n250 2.0.0 OK\r\n"
    );
    h.client_says(b"EHLO client.test\r\nAUTH LOGIN\r\nRSET\r\nVRFY x\r\n");
    assert_eq!(
        h.take_client(),
        format!(
            "{EHLO_BEFORE_TLS}538 5.7.11 Encryption required for requested authentication \
             mechanism\r\n250 2.0.0 OK\r\n"
        )
    );
    assert_eq!(h.connects, 1, "VRFY is the backend's to answer");
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250 legacy.test\r\n");
    assert_eq!(h.take_backend(), "VRFY x\r\n");
}

/// The backend refuses the client's EHLO, which was answered from the known reply: the
/// command that waited gets the backend's refusal (not a 421, and no backend failure), and
/// the client may say EHLO again on the same connection.
#[test]
fn a_refused_replayed_ehlo_is_the_backends_answer() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.take_client();
    h.client_says(b"EHLO bad.client\r\nMAIL FROM:<a@x.test>\r\n");
    h.take_client();
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO bad.client\r\n");
    h.backend_says(b"550 5.7.1 Go away\r\n");
    assert_eq!(h.take_client(), "550 5.7.1 Go away\r\n");
    assert!(!h.closed);
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, crate::inbound::Event::BackendFailed { .. })));
    h.client_says(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(h.take_client(), "503 5.5.1 Send EHLO first\r\n");
    let reply = h.exchange(
        "EHLO good.client\r\n",
        "EHLO good.client\r\n",
        "250 legacy.test\r\n",
    );
    assert_eq!(
        reply,
        "250-mx.test\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n"
    );
    assert_eq!(h.connects, 1);
}

/// AUTH offered by the known reply but not by the connection: refused, not forwarded.
#[test]
fn auth_needs_the_connection_to_offer_it() {
    let mut cfg = test_config();
    cfg.auth_requires_tls = false;
    let mut h = Harness::deferred(cfg, KNOWN_EHLO);
    h.take_client();
    h.client_says(b"EHLO client.test\r\n");
    assert!(h.take_client().contains("250-AUTH LOGIN\r\n"));
    h.client_says(b"AUTH LOGIN\r\n");
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 PIPELINING\r\n");
    assert_eq!(h.take_client(), "502 5.5.1 AUTH not offered\r\n");
    assert_eq!(h.take_backend(), "");
}

/// Shutdown while a deferred connection is being opened for a command: that command is
/// answered `421 4.3.2`, and nothing pipelined behind it reaches the backend.
#[test]
fn shutdown_while_connecting_forwards_nothing() {
    let mut h = Harness::deferred(test_config(), KNOWN_EHLO);
    h.take_client();
    h.client_says(b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    h.take_client();
    h.session.handle_shutdown(h.now);
    h.run();
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    h.backend_says(b"250 legacy.test\r\n");
    assert_eq!(h.take_client(), "421 4.3.2 Service shutting down\r\n");
    assert!(h.closed);
    assert!(!h.take_backend().contains("MAIL"));
}

/// The greeting went with the handshake: it is not written again, but counted and logged as
/// sent; the backend is connected at once, and the client's EHLO, which may come before the
/// backend's greeting, goes to it as sent.
#[test]
fn a_session_greeted_in_the_handshake_connects_at_once() {
    use crate::inbound::Event;
    let mut cfg = test_config();
    cfg.protocol_log = true;
    let mut h = Harness::greeted_in_handshake(cfg);
    assert_eq!(h.take_client(), "", "greeted in the handshake, not again");
    assert_eq!(h.connects, 1, "connected at once");
    let greeting = h.events.iter().find_map(|e| match e {
        Event::Protocol { direction, line } => Some(format!("{} {line}", direction.as_str())),
        _ => None,
    });
    assert_eq!(greeting.as_deref(), Some("> 220 mx.test ESMTP"));
    assert_eq!(h.replies, [(crate::session::ReplyTo::Greeting, 220)]);
    served_once_the_backend_greets(&mut h);
}

/// A backend that refuses the session, after a greeting that went with the handshake: the
/// client is told `421 4.4.2` at once, before any command of its (and, when its EHLO was
/// waiting for the backend, nothing of it is forwarded).
#[test]
fn a_session_greeted_in_the_handshake_with_a_refusing_backend_gets_421() {
    let mut h = Harness::greeted_in_handshake(test_config());
    h.backend_says(b"554 5.3.2 not now\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n",
        "unasked, right after the greeting"
    );
    assert!(h.closed);

    let mut h = Harness::greeted_in_handshake(test_config());
    h.client_says(b"EHLO client.test\r\n");
    h.backend_says(b"554 5.3.2 not now\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert_eq!(h.take_backend(), "");
    assert!(h.closed);
}
