//! The backend hop (issue 15): STARTTLS with the backend before the client is greeted, and
//! XCLIENT at the first HELO/EHLO of each backend connection. Byte-exact, in memory.

use crate::inbound::{Config, Event, Hop, TlsInfo};
use crate::session::LegFailure;
use crate::testing::{test_config, Harness};

fn hop(starttls: bool, xclient: bool) -> Config {
    let mut cfg = test_config();
    cfg.hop = Hop { starttls, xclient };
    cfg
}

fn hop_tls() -> Option<TlsInfo> {
    Some(TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        client_cert: crate::session::ClientCert::None,
        our_cert: crate::session::OurCert::NotOffered,
    })
}

fn backend_failure(h: &Harness) -> Option<LegFailure> {
    h.events.iter().find_map(|e| match e {
        Event::BackendFailed { kind, .. } => Some(*kind),
        _ => None,
    })
}

#[test]
fn starttls_with_the_backend_comes_before_our_greeting() {
    let mut h = Harness::new(hop(true, false));
    h.hop_tls = hop_tls();
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
    assert_eq!(
        h.take_client(),
        "",
        "no greeting before the hop is encrypted"
    );
    h.backend_says(b"250-legacy.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
    assert_eq!(h.take_backend(), "STARTTLS\r\n");
    h.backend_says(b"220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(h.tls_started, 1);
    assert_eq!(h.take_client(), "220 mx.test ESMTP\r\n");
    // The backend's STARTTLS is ours: the client's EHLO reply has only the sidecar's.
    let reply = h.exchange(
        "EHLO client.test\r\n",
        "EHLO client.test\r\n",
        "250-legacy.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
    );
    assert_eq!(
        reply,
        "250-mx.test\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n"
    );
    assert_eq!(backend_failure(&h), None);
}

#[test]
fn a_backend_that_cannot_encrypt_the_hop_gets_no_mail() {
    // STARTTLS not offered, refused, or a failed handshake: 421 4.4.2, never plaintext.
    for (ehlo, starttls, handshake) in [
        ("250-legacy.test\r\n250 8BITMIME\r\n", None, false),
        (
            "250-legacy.test\r\n250 STARTTLS\r\n",
            Some("454 4.7.0 TLS not available\r\n"),
            false,
        ),
        (
            "250-legacy.test\r\n250 STARTTLS\r\n",
            Some("220 go ahead\r\n"),
            true,
        ),
    ] {
        let mut h = Harness::new(hop(true, false));
        h.hop_tls = None; // the handshake fails
        h.backend_says(b"220 legacy.test ESMTP\r\n");
        h.take_backend();
        h.backend_says(ehlo.as_bytes());
        if let Some(reply) = starttls {
            assert_eq!(h.take_backend(), "STARTTLS\r\n");
            h.backend_says(reply.as_bytes());
        }
        assert_eq!(h.tls_started, u32::from(handshake));
        assert_eq!(
            h.take_client(),
            "421 4.4.2 Backend unavailable, try again later\r\n",
            "{ehlo:?} {starttls:?}"
        );
        assert_eq!(backend_failure(&h), Some(LegFailure::Tls));
        assert!(h.closed);
    }
}

#[test]
fn xclient_passes_the_client_then_the_ehlo_goes_again() {
    let mut h = Harness::greeted(hop(false, true));
    h.client_says(b"EHLO client.test\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250-XCLIENT NAME ADDR PROTO HELO PORT\r\n250 8BITMIME\r\n");
    assert_eq!(
        h.take_backend(),
        "XCLIENT ADDR=192.0.2.1 PORT=49152 NAME=[UNAVAILABLE] HELO=client.test PROTO=ESMTP\r\n"
    );
    assert_eq!(h.take_client(), "");
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250-XCLIENT NAME ADDR\r\n250 8BITMIME\r\n");
    // XCLIENT is never offered to the client.
    assert_eq!(
        h.take_client(),
        "250-mx.test\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n"
    );
    // A second EHLO on the same connection (after STARTTLS, with another name, so that it is
    // not answered from the first) sends no second XCLIENT.
    h.client_says(b"STARTTLS\r\n");
    h.take_client();
    h.client_says(b"EHLO other.test\r\n");
    assert_eq!(h.take_backend(), "EHLO other.test\r\n");
    assert!(!h.events.contains(&Event::XclientNotOffered));
}

#[test]
fn xclient_sends_only_the_attributes_offered_in_xtext() {
    let mut h = Harness::greeted(hop(false, true));
    h.client_says(b"HELO we+ird=\r\n");
    assert_eq!(h.take_backend(), "EHLO we+ird=\r\n", "EHLO to see XCLIENT");
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT addr helo proto\r\n");
    assert_eq!(
        h.take_backend(),
        "XCLIENT ADDR=192.0.2.1 HELO=we+2Bird+3D PROTO=SMTP\r\n"
    );
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "HELO we+ird=\r\n");
    h.backend_says(b"250 legacy.test\r\n");
    assert_eq!(h.take_client(), "250 legacy.test\r\n");
}

#[test]
fn a_backend_without_xclient_is_reported_and_used_as_it_is() {
    let mut h = Harness::greeted(hop(false, true));
    let reply = h.ehlo();
    assert_eq!(
        reply,
        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 36700160\r\n250 STARTTLS\r\n"
    );
    assert!(h.events.contains(&Event::XclientNotOffered));
    // A HELO client is answered with one line, though an EHLO went to look for XCLIENT.
    let mut h = Harness::greeted(hop(false, true));
    let reply = h.exchange(
        "HELO client.test\r\n",
        "EHLO client.test\r\n",
        "250-legacy.test hello\r\n250 8BITMIME\r\n",
    );
    assert_eq!(reply, "250 legacy.test hello\r\n");
    assert_eq!(
        h.exchange("MAIL FROM:<a@x.test> BODY=8BITMIME\r\n", "", ""),
        "555 5.5.4 Unsupported parameter\r\n",
        "nothing offered after HELO"
    );
}

#[test]
fn a_refused_xclient_fails_the_backend() {
    let mut h = Harness::greeted(hop(false, true));
    h.client_says(b"EHLO client.test\r\n");
    h.take_backend();
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT ADDR\r\n");
    assert_eq!(h.take_backend(), "XCLIENT ADDR=192.0.2.1\r\n");
    h.backend_says(b"550 5.7.0 insufficient authorization\r\n");
    assert_eq!(
        h.take_client(),
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert_eq!(backend_failure(&h), Some(LegFailure::Refused));
}

/// A refused message replaces the backend connection: the new one is encrypted, gets
/// XCLIENT with the client's HELO name, then the EHLO again.
#[test]
fn a_replacement_connection_gets_tls_and_xclient_again() {
    let mut h = Harness::new(hop(true, true));
    h.hop_tls = hop_tls();
    let secure = |h: &mut Harness| {
        h.backend_says(b"220 legacy.test ESMTP\r\n");
        assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
        h.backend_says(b"250-legacy.test\r\n250 STARTTLS\r\n");
        assert_eq!(h.take_backend(), "STARTTLS\r\n");
        h.backend_says(b"220 ready\r\n");
    };
    secure(&mut h);
    assert_eq!(h.take_client(), "220 mx.test ESMTP\r\n");
    h.client_says(b"EHLO client.test\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT ADDR HELO\r\n");
    let xclient = "XCLIENT ADDR=192.0.2.1 HELO=client.test\r\n";
    assert_eq!(h.take_backend(), xclient);
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT ADDR HELO\r\n");
    h.take_client();
    h.transaction();
    h.client_says(b"bare\nlf\r\n.\r\n");
    assert_eq!(h.connects, 2);
    assert_eq!(h.take_backend(), "");
    secure(&mut h);
    assert_eq!(h.tls_started, 2);
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT ADDR HELO\r\n");
    assert_eq!(h.take_backend(), xclient);
    h.backend_says(b"220 legacy.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO client.test\r\n");
    h.backend_says(b"250-legacy.test\r\n250 XCLIENT ADDR HELO\r\n");
    assert_eq!(
        h.take_client(),
        "550 5.6.11 Bare line feed or carriage return not allowed\r\n"
    );
    h.exchange(
        "MAIL FROM:<a@x.test>\r\n",
        "MAIL FROM:<a@x.test>\r\n",
        "250 ok\r\n",
    );
    assert_eq!(backend_failure(&h), None);
}
