//! Originate sessions against a scripted next hop, byte for byte, on a virtual clock.

use std::time::Duration;

use super::*;
use crate::session::{ClientCert, OurCert, PeerCert, Target, TlsInfo};
use crate::testing::{test_originate_config, test_tls, Harness};

const OUR_EHLO: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n\
                        250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SMTPUTF8\r\n";
const HOP_CAPS_TLS: &str =
    "250-next.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n";
const HOP_CAPS: &str = "250-next.test\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n";

fn cfg(level: Level) -> Config {
    let mut cfg = test_originate_config();
    cfg.policy.default = level;
    cfg
}

fn verified() -> TlsInfo {
    TlsInfo {
        client_cert: ClientCert::Verified(Box::default()),
        ..test_tls()
    }
}

/// A verified next hop that asked for our certificate, which went: mutual TLS.
fn mutual() -> TlsInfo {
    TlsInfo {
        our_cert: OurCert::Sent,
        ..verified()
    }
}

fn failed(reason: &str) -> TlsInfo {
    TlsInfo {
        client_cert: ClientCert::Failed {
            cert: Box::<PeerCert>::default(),
            reason: reason.into(),
        },
        ..test_tls()
    }
}

/// EHLO and MAIL, answered by us; then the first RCPT, which opens the next hop.
fn start(h: &mut Harness<Session>, rcpt: &str) {
    h.client_says(b"EHLO legacy.test\r\n");
    assert_eq!(h.take_client(), OUR_EHLO);
    h.client_says(b"MAIL FROM:<a@x.test> SIZE=100\r\n");
    assert_eq!(h.take_client(), "250 2.1.0 Ok\r\n");
    assert_eq!(h.connects, 0, "no next hop before RCPT");
    h.client_says(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
    assert_eq!(h.take_client(), "", "the RCPT waits for the next hop");
}

/// The next hop greets and answers EHLO with `caps`.
fn greet(h: &mut Harness<Session>, caps: &str) {
    h.backend_says(b"220 next.test ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
    h.backend_says(caps.as_bytes());
}

/// After TLS: EHLO again, then MAIL and the waiting RCPT.
fn after_tls_to_rcpt(h: &mut Harness<Session>, rcpt: &str) {
    assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
    h.backend_says(HOP_CAPS.as_bytes());
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.backend_says(b"250 2.1.0 Sender ok\r\n");
    assert_eq!(h.take_backend(), format!("RCPT TO:<{rcpt}>\r\n"));
    h.backend_says(b"250 2.1.5 Recipient ok\r\n");
    assert_eq!(h.take_client(), "250 2.1.5 Recipient ok\r\n");
}

/// DATA, a body, and the next hop's verdict on it.
fn message(h: &mut Harness<Session>, verdict: &str) -> String {
    h.client_says(b"DATA\r\n");
    assert_eq!(h.take_backend(), "DATA\r\n");
    h.backend_says(b"354 go ahead\r\n");
    assert_eq!(h.take_client(), "354 go ahead\r\n");
    h.client_says(b"Subject: t\r\n\r\n.dot\r\nbare\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "",
        "no reply to the end of data before the next hop's"
    );
    assert_eq!(h.take_backend(), "Subject: t\r\n\r\n.dot\r\nbare\r\n.\r\n");
    h.backend_says(verdict.as_bytes());
    h.take_client()
}

#[test]
fn relay_may_with_starttls_end_to_end() {
    let mut c = cfg(Level::May);
    c.bare_newlines = crate::data::BareNewlines::Normalize;
    let mut h = Harness::originate(c);
    h.hop_tls = Some(test_tls());
    start(&mut h, "b@y.test");
    assert_eq!(h.connects, 1);
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "STARTTLS\r\n");
    h.backend_says(b"220 2.0.0 Ready\r\n");
    assert_eq!(h.tls_clients.len(), 1);
    assert_eq!(h.tls_clients[0].server_name, "relay.test");
    assert!(!h.tls_clients[0].verify && !h.tls_clients[0].present_certificate);
    after_tls_to_rcpt(&mut h, "b@y.test");
    assert_eq!(
        message(&mut h, "250 2.0.0 Ok: queued as X\r\n"),
        "250 2.0.0 Ok: queued as X\r\n"
    );
    assert_eq!(h.take_backend(), "QUIT\r\n");
    assert_eq!(h.disconnects, 1, "one next hop session per transaction");
    assert!(h.events.contains(&Event::MessageAccepted { bytes: 26 }));
    // The next transaction opens a new next hop session.
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\n");
    assert_eq!(h.take_client(), "250 2.1.0 Ok\r\n");
    assert_eq!(h.connects, 2);
}

/// A message is counted with the TLS of the next hop session that carried it
/// (`messages_total{tls}`) whatever its outcome: a message refused by us for a bare line feed
/// (`bare_newlines: reject`) over a TLS next hop counts as TLS, and a message over a plaintext
/// next hop whose client is lost while the verdict is awaited counts as plaintext, not as the
/// TLS of the transaction before it.
/// The same when the legacy MTA pipelines its next transaction behind the end of data: the
/// new next hop session it opens in that same read is not the one that carried the message
/// (the driver reads `message_tls` once the read's handling is over).
#[test]
fn a_message_is_counted_with_its_next_hops_tls_when_the_next_transaction_follows_it() {
    for (body, verdict, event) in [
        (
            "hi\r\n",
            "250 2.0.0 queued\r\n",
            Event::MessageAccepted { bytes: 18 },
        ),
        ("bare\nlf\r\n", "", Event::MessageRejected),
    ] {
        let mut h = Harness::originate(cfg(Level::May));
        h.hop_tls = Some(test_tls());
        start(&mut h, "b@y.test");
        greet(&mut h, HOP_CAPS_TLS);
        h.take_backend();
        h.backend_says(b"220 2.0.0 Ready\r\n");
        after_tls_to_rcpt(&mut h, "b@y.test");
        h.client_says(b"DATA\r\n");
        h.backend_says(b"354 go ahead\r\n");
        h.take_client();
        let next = "MAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\n";
        h.client_says(format!("Subject: t\r\n\r\n{body}.\r\n{next}").as_bytes());
        if !verdict.is_empty() {
            h.backend_says(verdict.as_bytes());
        }
        assert!(h.events.contains(&event), "{:?}", h.events);
        assert_eq!(h.connects, 2, "the next transaction's next hop is opened");
        assert!(h.session.message_tls(), "{event:?} over the TLS next hop");
    }
}

#[test]
fn a_message_is_counted_with_its_next_hops_tls_whatever_its_outcome() {
    let mut h = Harness::originate(cfg(Level::May));
    h.hop_tls = Some(test_tls());
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    h.backend_says(b"220 2.0.0 Ready\r\n");
    after_tls_to_rcpt(&mut h, "b@y.test");
    h.client_says(b"DATA\r\n");
    h.backend_says(b"354 go ahead\r\n");
    h.take_client();
    h.client_says(b"Subject: t\r\n\r\nbare\nlf\r\n.\r\n");
    assert!(h.take_client().starts_with("550 5.6.11 "));
    assert_eq!(h.events.last(), Some(&Event::MessageRejected));
    assert!(h.session.message_tls(), "over the TLS next hop");

    // The next transaction, over a plaintext next hop: the client is lost while the next
    // hop's verdict is awaited.
    h.hop_tls = None;
    h.take_backend();
    h.client_says(b"MAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<c@y.test>\r\n");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<c@y.test>\r\n");
    h.backend_says(b"250 ok\r\n");
    h.client_says(b"DATA\r\n");
    h.backend_says(b"354 go ahead\r\n");
    h.client_says(b"Subject: t\r\n\r\nhi\r\n.\r\n");
    assert_eq!(h.take_backend(), "DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n");
    h.session.handle_lost(Leg::Client, h.now);
    h.run();
    assert_eq!(h.events.last(), Some(&Event::MessageFailed));
    assert!(!h.session.message_tls(), "over the plaintext next hop");
}

#[test]
fn may_goes_on_in_plaintext_without_starttls() {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    assert!(h.events.is_empty(), "{:?}", h.events);
}

#[test]
fn none_never_asks_for_tls() {
    let mut h = Harness::originate(cfg(Level::None));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    assert_eq!(h.tls_started, 0);
}

#[test]
fn may_retries_in_plaintext_on_a_new_connection_after_a_failed_handshake() {
    let mut h = Harness::originate(cfg(Level::May));
    h.hop_tls = None;
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "STARTTLS\r\n");
    h.backend_says(b"220 2.0.0 Ready\r\n");
    assert_eq!((h.backend_closes, h.connects), (1, 2), "a new connection");
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(
        h.take_backend(),
        "MAIL FROM:<a@x.test> SIZE=100\r\n",
        "no STARTTLS the second time"
    );
}

#[test]
fn encrypt_without_starttls_defers_or_bounces_on_the_rcpt() {
    for (on_failure, code) in [
        (OnFailure::Defer, "450 4.7.5"),
        (OnFailure::Bounce, "550 5.7.5"),
    ] {
        let mut c = cfg(Level::Encrypt);
        c.on_failure = on_failure;
        let mut h = Harness::originate(c);
        start(&mut h, "b@y.test");
        greet(&mut h, HOP_CAPS);
        assert_eq!(
            h.take_client(),
            format!(
                "{code} TLS policy encrypt for y.test not met: relay.test did not offer \
                 STARTTLS\r\n"
            )
        );
        assert_eq!(h.take_backend(), "", "no MAIL in plaintext");
        assert_eq!(h.backend_closes, 1);
        assert!(h.events.iter().any(|e| matches!(e,
            Event::OutboundTlsFailure(r) if r.failure == TlsFailure::NoStartTls && r.enforced
                && r.domain == "y.test" && r.level == Level::Encrypt)));
        // Another recipient of that domain gets the same answer without a new attempt.
        h.client_says(b"RCPT TO:<c@y.test>\r\n");
        assert!(h.take_client().starts_with(code));
        assert_eq!(h.connects, 1);
        h.client_says(b"DATA\r\n");
        assert_eq!(h.take_client(), "554 5.5.1 No valid recipients\r\n");
    }
}

#[test]
fn audit_mode_reports_and_delivers_as_may_would() {
    let mut c = cfg(Level::Encrypt);
    c.enforce = false;
    let mut h = Harness::originate(c);
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    assert!(h.events.iter().any(|e| matches!(e,
        Event::OutboundTlsFailure(r) if r.failure == TlsFailure::NoStartTls && !r.enforced)));
}

#[test]
fn starttls_refused_under_encrypt() {
    let mut h = Harness::originate(cfg(Level::Encrypt));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    h.backend_says(b"454 4.7.0 TLS not available\r\n");
    assert_eq!(
        h.take_client(),
        "450 4.7.5 TLS policy encrypt for y.test not met: relay.test refused STARTTLS\r\n"
    );
}

#[test]
fn verify_checks_the_certificate_after_the_handshake() {
    for (info, reply) in [
        (
            failed("name mismatch"),
            Some("certificate of relay.test is not valid for relay.test or y.test"),
        ),
        (
            failed("expired"),
            Some("certificate of relay.test did not verify (expired)"),
        ),
        (
            failed("untrusted issuer"),
            Some("did not verify (untrusted issuer)"),
        ),
        (failed("revoked"), Some("did not verify (revoked)")),
        (verified(), None),
    ] {
        let mut h = Harness::originate(cfg(Level::Verify));
        h.hop_tls = Some(info);
        start(&mut h, "b@y.test");
        greet(&mut h, HOP_CAPS_TLS);
        h.take_backend();
        h.backend_says(b"220 go\r\n");
        let ask = &h.tls_clients[0];
        assert!(ask.verify && !ask.present_certificate);
        assert_eq!(ask.names, ["relay.test", "y.test"]);
        match reply {
            Some(text) => {
                let got = h.take_client();
                assert!(got.starts_with("450 4.7.5 TLS policy verify for y.test not met: "));
                assert!(got.contains(text), "{got}");
                assert_eq!(
                    h.take_backend(),
                    "QUIT\r\n",
                    "RFC 3207 §4.1: QUIT and nothing else over an unacceptable session"
                );
                assert_eq!((h.disconnects, h.backend_closes), (1, 0));
            }
            None => after_tls_to_rcpt(&mut h, "b@y.test"),
        }
    }
}

#[test]
fn domain_secure_presents_our_certificate_and_counts_the_message() {
    let mut c = cfg(Level::May);
    c.policy.domains = vec![("woodgrovebank.com".into(), Level::DomainSecure)];
    let mut h = Harness::originate(c);
    h.hop_tls = Some(mutual());
    start(&mut h, "b@WoodgroveBank.com");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    h.backend_says(b"220 go\r\n");
    assert!(h.tls_clients[0].present_certificate && h.tls_clients[0].verify);
    after_tls_to_rcpt(&mut h, "b@WoodgroveBank.com");
    message(&mut h, "250 ok\r\n");
    assert!(h.events.contains(&Event::DomainSecureSent {
        domain: "woodgrovebank.com".into()
    }));
}

#[test]
fn a_refused_message_is_not_counted_as_domain_secure() {
    let mut c = cfg(Level::DomainSecure);
    c.policy.domains = vec![("y.test".into(), Level::DomainSecure)];
    let mut h = Harness::originate(c);
    h.hop_tls = Some(mutual());
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    h.backend_says(b"220 go\r\n");
    after_tls_to_rcpt(&mut h, "b@y.test");
    assert_eq!(message(&mut h, "554 5.7.1 no\r\n"), "554 5.7.1 no\r\n");
    assert!(h.events.contains(&Event::MessageRejected));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::DomainSecureSent { .. })));
}

/// SPEC §3: `domain-secure` is mutual TLS. A TLS client sends its certificate only when the
/// server asks: a verified next hop that did not ask for ours, or asked when we had none to
/// give, does not meet the level; it is refused as any other unmet level, counted as a
/// domain-secure failure, and nothing is counted as sent.
#[test]
fn domain_secure_is_unmet_unless_our_certificate_went() {
    let not_requested = "relay.test did not ask for our client certificate";
    let none = "no client certificate to present to relay.test";
    for (our_cert, text) in [
        (OurCert::NotRequested, not_requested),
        (OurCert::NoneToPresent, none),
        (OurCert::NotOffered, none),
    ] {
        for (on_failure, code) in [
            (OnFailure::Defer, "450 4.7.5"),
            (OnFailure::Bounce, "550 5.7.5"),
        ] {
            let mut c = cfg(Level::May);
            c.policy.domains = vec![("y.test".into(), Level::DomainSecure)];
            c.on_failure = on_failure;
            let mut h = Harness::originate(c);
            h.hop_tls = Some(TlsInfo {
                our_cert,
                ..verified()
            });
            start(&mut h, "b@y.test");
            greet(&mut h, HOP_CAPS_TLS);
            assert_eq!(h.take_backend(), "STARTTLS\r\n");
            h.backend_says(b"220 go\r\n");
            assert!(h.tls_clients[0].present_certificate);
            assert_eq!(
                h.take_client(),
                format!("{code} TLS policy domain-secure for y.test not met: {text}\r\n"),
                "{our_cert:?}"
            );
            assert_eq!(
                h.take_backend(),
                "QUIT\r\n",
                "RFC 3207 §4.1: QUIT and nothing else over an unacceptable session"
            );
            let failures: Vec<&TlsFailureReport> = h
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::OutboundTlsFailure(r) => Some(&**r),
                    _ => None,
                })
                .collect();
            assert_eq!(failures.len(), 1, "{:?}", h.events);
            assert_eq!(failures[0].level, Level::DomainSecure);
            assert_eq!(failures[0].listed.as_deref(), Some("y.test"));
            assert!(failures[0].enforced);
            assert_eq!(failures[0].failure.reason().as_str(), "handshake_failed");
            assert!(h.events.contains(&Event::NextHopFailed {
                host: "relay.test".into(),
                kind: LegFailure::Policy,
                reason: "TLS policy not met: handshake_failed".into(),
            }));
            // The transaction goes on without the recipient; nothing is counted as sent.
            h.client_says(b"DATA\r\n");
            assert_eq!(h.take_client(), "554 5.5.1 No valid recipients\r\n");
            assert!(!h
                .events
                .iter()
                .any(|e| matches!(e, Event::DomainSecureSent { .. })));
        }
    }
}

/// `verify` asks for no certificate of ours: one that did not go is no failure there.
#[test]
fn verify_does_not_need_our_certificate() {
    let mut h = Harness::originate(cfg(Level::Verify));
    h.hop_tls = Some(TlsInfo {
        our_cert: OurCert::NotOffered,
        ..verified()
    });
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    h.backend_says(b"220 go\r\n");
    assert!(!h.tls_clients[0].present_certificate);
    after_tls_to_rcpt(&mut h, "b@y.test");
}

/// Audit mode: reported (enforced false), delivered over that TLS session as `may` would,
/// and not counted as a domain-secure message.
#[test]
fn audit_mode_delivers_without_mutual_tls_but_does_not_count_it() {
    let mut c = cfg(Level::DomainSecure);
    c.policy.domains = vec![("y.test".into(), Level::DomainSecure)];
    c.enforce = false;
    let mut h = Harness::originate(c);
    h.hop_tls = Some(TlsInfo {
        our_cert: OurCert::NotRequested,
        ..verified()
    });
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    h.backend_says(b"220 go\r\n");
    after_tls_to_rcpt(&mut h, "b@y.test");
    assert_eq!(message(&mut h, "250 ok\r\n"), "250 ok\r\n");
    assert!(h.events.iter().any(|e| matches!(e,
        Event::OutboundTlsFailure(r)
            if r.failure == TlsFailure::ClientCertNotRequested && !r.enforced)));
    assert!(h.events.contains(&Event::MessageAccepted { bytes: 26 }));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::DomainSecureSent { .. })));
}

/// In audit mode a connection that fell short and then failed is given up: the next address's
/// session, which does get mutual TLS, counts its message as domain-secure.
#[test]
fn audit_mode_counts_a_later_address_that_meets_domain_security() {
    let mut c = mx_cfg();
    c.policy.domains = vec![("y.test".into(), Level::DomainSecure)];
    c.enforce = false;
    let mut h = Harness::originate(c);
    h.dns = Some(Ok(vec![
        route("mx1.y.test", &["192.0.2.10:25"]),
        route("mx2.y.test", &["192.0.2.20:25"]),
    ]));
    h.hop_tls = Some(mutual());
    start(&mut h, "b@y.test");
    // The first offers no STARTTLS: reported, and delivered to as `may` would, until it fails.
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.session.handle_lost(Leg::Backend, h.now);
    h.run();
    // The second: mutual TLS, the message delivered.
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "STARTTLS\r\n");
    h.backend_says(b"220 go\r\n");
    after_tls_to_rcpt(&mut h, "b@y.test");
    assert_eq!(message(&mut h, "250 ok\r\n"), "250 ok\r\n");
    assert!(h.events.contains(&Event::DomainSecureSent {
        domain: "y.test".into()
    }));
}

/// A domain-secure session up to our EHLO inside TLS: the handshake completed on our side
/// (TLS 1.3: the next hop has yet to judge our certificate).
fn after_our_handshake(level: Level, on_failure: OnFailure) -> Harness<Session> {
    let mut c = cfg(level);
    c.policy.domains = vec![("y.test".into(), level)];
    c.on_failure = on_failure;
    let mut h = Harness::originate(c);
    h.hop_tls = Some(mutual());
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "STARTTLS\r\n");
    h.backend_says(b"220 go\r\n");
    assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
    h
}

/// TLS 1.3: a next hop that refuses our certificate says so with an alert after our side of
/// the handshake has completed, before its first reply. That is a failed handshake for the
/// policy (`450 4.7.5` / `550 5.7.5`, `handshake_failed`), not an unreachable next hop.
#[test]
fn an_alert_before_the_first_reply_after_tls_is_a_failed_handshake() {
    for (on_failure, code) in [
        (OnFailure::Defer, "450 4.7.5"),
        (OnFailure::Bounce, "550 5.7.5"),
    ] {
        let mut h = after_our_handshake(Level::DomainSecure, on_failure);
        h.session
            .handle_tls_alert(Leg::Backend, "certificate_required", h.now);
        h.run();
        assert_eq!(
            h.take_client(),
            format!(
                "{code} TLS policy domain-secure for y.test not met: TLS handshake with \
                 relay.test failed: alert certificate_required\r\n"
            )
        );
        assert_eq!(h.take_backend(), "", "nothing more over a dead session");
        assert_eq!((h.backend_closes, h.connects), (1, 1), "no other attempt");
        assert!(h.events.iter().any(|e| matches!(e,
            Event::OutboundTlsFailure(r)
                if r.failure == TlsFailure::Alert("certificate_required".into())
                    && r.failure.reason().as_str() == "handshake_failed"
                    && r.level == Level::DomainSecure && r.enforced)));
        assert!(h.events.contains(&Event::NextHopFailed {
            host: "relay.test".into(),
            kind: LegFailure::Policy,
            reason: "TLS policy not met: handshake_failed".into(),
        }));
        assert!(!h.events.iter().any(|e| matches!(
            e,
            Event::NextHopFailed {
                kind: LegFailure::Closed,
                ..
            }
        )));
        // Another recipient of the domain: the same answer, no new attempt.
        h.client_says(b"RCPT TO:<c@y.test>\r\n");
        assert!(h.take_client().starts_with(code));
        assert_eq!(h.connects, 1);
    }
}

/// Under `may`, such an alert is a failed handshake like any other: a new connection, in
/// plaintext.
#[test]
fn an_alert_after_our_handshake_under_may_retries_in_plaintext() {
    let mut h = after_our_handshake(Level::May, OnFailure::Defer);
    h.session
        .handle_tls_alert(Leg::Backend, "unknown_ca", h.now);
    h.run();
    assert_eq!(h.take_client(), "");
    assert_eq!((h.backend_closes, h.connects), (1, 2), "a new connection");
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
}

/// Narrow: a close without an alert at that point stays a lost connection, and an alert
/// once the next hop has answered inside TLS is a connection lost like any other.
#[test]
fn a_close_without_an_alert_or_a_later_alert_is_a_lost_connection() {
    let mut h = after_our_handshake(Level::DomainSecure, OnFailure::Defer);
    h.session.handle_eof(Leg::Backend, h.now);
    h.run();
    assert_eq!(
        h.take_client(),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::OutboundTlsFailure(_))));

    let mut h = after_our_handshake(Level::DomainSecure, OnFailure::Defer);
    h.backend_says(HOP_CAPS.as_bytes());
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.session
        .handle_tls_alert(Leg::Backend, "internal_error", h.now);
    h.run();
    assert_eq!(
        h.take_client(),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    assert!(h.events.contains(&Event::NextHopFailed {
        host: "relay.test".into(),
        kind: LegFailure::Closed,
        reason: "TLS alert internal_error".into(),
    }));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::OutboundTlsFailure(_))));
}

fn mx_cfg() -> Config {
    let mut c = cfg(Level::May);
    c.next_hop = NextHop::Mx;
    c
}

fn route(host: &str, addrs: &[&str]) -> Route {
    Route {
        host: host.into(),
        addrs: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
    }
}

#[test]
fn mx_tries_hosts_in_order_and_the_next_one_on_failure() {
    let mut h = Harness::originate(mx_cfg());
    h.dns = Some(Ok(vec![
        route("mx1.y.test", &["192.0.2.10:25", "192.0.2.11:25"]),
        route("mx2.y.test", &["192.0.2.20:25"]),
    ]));
    h.unreachable = vec!["192.0.2.10:25".parse().expect("addr")];
    start(&mut h, "b@y.test");
    assert_eq!(h.resolves, ["y.test"]);
    // The second address answers with a temporary refusal: the next MX.
    h.backend_says(b"421 4.3.2 busy\r\n");
    h.backend_says(b"220 mx2 ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
    let hosts: Vec<String> = h
        .connected
        .iter()
        .map(|t: &Target| t.addr.to_string())
        .collect();
    assert_eq!(hosts, ["192.0.2.10:25", "192.0.2.11:25", "192.0.2.20:25"]);
    assert_eq!(h.connected[2].host, "mx2.y.test");
    h.backend_says(HOP_CAPS.as_bytes());
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
}

/// Addresses that are the sidecar's own listeners are not tried; when every failed address
/// was one, the RCPT is refused for good as a mail loop (`550 5.4.6`), otherwise as any
/// unreachable next hop (`451 4.4.1`), and an address beside them delivers.
#[test]
fn a_next_hop_that_loops_back_is_refused_for_good_when_no_other_failed() {
    // One MX with `addrs`, of which 192.0.2.10 and .11 are our own listeners.
    let harness = |cfg, addrs: &[&str]| {
        let mut h = Harness::originate(cfg);
        h.dns = Some(Ok(vec![route("mx1.y.test", addrs)]));
        h.ours = ["192.0.2.10:25", "192.0.2.11:25"]
            .map(|a| a.parse().expect("addr"))
            .to_vec();
        h
    };
    let rcpt = |h: &mut Harness<Session>| {
        h.client_says(b"EHLO legacy.test\r\n");
        assert_eq!(h.take_client(), OUR_EHLO);
        h.client_says(b"MAIL FROM:<a@x.test> SIZE=100\r\n");
        assert_eq!(h.take_client(), "250 2.1.0 Ok\r\n");
        h.client_says(b"RCPT TO:<b@y.test>\r\n");
        h.take_client()
    };
    let mut h = harness(mx_cfg(), &["192.0.2.10:25", "192.0.2.11:25"]);
    assert_eq!(
        rcpt(&mut h),
        "550 5.4.6 Mail for y.test loops back to this relay\r\n"
    );
    assert!(h.events.contains(&Event::NextHopFailed {
        host: "mx1.y.test".into(),
        kind: LegFailure::Loop,
        reason: "connect failed: our own listener".into(),
    }));
    // Both ours, but one found so only once connected (a NAT rule may have sent it
    // elsewhere): a loop by its label, not a sure one.
    let mut h = harness(mx_cfg(), &["192.0.2.10:25", "192.0.2.13:25"]);
    h.ours_once_connected = vec!["192.0.2.13:25".parse().expect("addr")];
    assert_eq!(
        rcpt(&mut h),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    assert!(h.events.contains(&Event::NextHopFailed {
        host: "mx1.y.test".into(),
        kind: LegFailure::Loop,
        reason: "connect failed: this host".into(),
    }));
    // One of ours, one that refuses: not only a loop.
    let mut h = harness(mx_cfg(), &["192.0.2.10:25", "192.0.2.12:25"]);
    h.unreachable = vec!["192.0.2.12:25".parse().expect("addr")];
    assert_eq!(
        rcpt(&mut h),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    // One of ours, then one that answers.
    let mut h = harness(mx_cfg(), &["192.0.2.10:25", "192.0.2.20:25"]);
    start(&mut h, "b@y.test");
    h.backend_says(b"220 mx ESMTP\r\n");
    assert_eq!(h.take_backend(), "EHLO mx.test\r\n");
    assert_eq!(h.connected.len(), 2);
    // One of ours, then one that stalls until the set-up's budget ends, a third untried:
    // the budget's reply, not a loop's.
    let mut cfg = mx_cfg();
    cfg.timeouts.backend_reply = Duration::from_secs(100);
    cfg.timeouts.command = Duration::from_secs(100);
    let addrs = ["192.0.2.10:25", "192.0.2.30:25", "192.0.2.31:25"];
    let mut h = harness(cfg, &addrs);
    assert_eq!(rcpt(&mut h), "");
    h.advance(Duration::from_secs(91));
    assert_eq!(
        h.take_client(),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    assert_eq!(h.connected.len(), 2, "the third never tried");
}

/// The set-up of a next hop, every address and step together, takes at most 9/10 of the
/// command timeout (the legacy MTA waits about as long for its RCPT's reply): next hops that
/// each stall just under their own deadline are not all tried, one after another, long after
/// the client has given up. The step in progress ends with the budget; the RCPT gets the
/// reply of an exhausted set-up, and the session goes on.
#[test]
fn the_whole_set_up_ends_within_the_command_timeout() {
    let mut cfg = mx_cfg();
    cfg.timeouts.backend_reply = Duration::from_secs(100);
    cfg.timeouts.command = Duration::from_secs(250);
    let mut h = Harness::originate(cfg);
    let t0 = h.now;
    let addrs = [
        "192.0.2.10:25",
        "192.0.2.11:25",
        "192.0.2.12:25",
        "192.0.2.13:25",
    ];
    h.dns = Some(Ok(vec![route("mx1.y.test", &addrs)]));
    start(&mut h, "b@y.test");
    // Each next hop accepts the connection and says nothing: 100 s each, the third one
    // until the budget's end at 225 s.
    h.advance(Duration::from_secs(101));
    h.advance(Duration::from_secs(101));
    assert_eq!(h.connected.len(), 3);
    assert_eq!(
        h.session.poll_timeout(),
        Some(t0 + Duration::from_secs(225))
    );
    h.advance(Duration::from_secs(22));
    assert_eq!(h.take_client(), "");
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.take_client(),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    assert_eq!(h.connected.len(), 3, "no address after the budget");
    assert!(h.events.contains(&Event::NextHopFailed {
        host: "mx1.y.test".into(),
        kind: LegFailure::Timeout,
        reason: "set-up not done in time".into(),
    }));
    // The session goes on, its command timeout running again.
    assert!(!h.closed);
    h.client_says(b"NOOP\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 OK\r\n");
    h.advance(Duration::from_secs(251));
    assert_eq!(h.take_client(), "421 4.4.2 Timeout, closing connection\r\n");
}

/// A handshake the set-up's budget cuts short (the driver's handshake waits until the
/// session's deadline, the budget's end at most) is not the next hop's failure to meet the
/// TLS policy: no policy failure is counted or replied (under `bounce` that would be a
/// 550), `may` does not try again in plaintext, and no other address is tried.
#[test]
fn a_handshake_cut_by_the_set_up_budget_is_no_policy_failure() {
    for level in [Level::Encrypt, Level::May] {
        let mut cfg = mx_cfg();
        cfg.policy.default = level;
        cfg.on_failure = crate::outbound::OnFailure::Bounce;
        cfg.timeouts.command = Duration::from_secs(100);
        let mut h = Harness::originate(cfg);
        h.auto_tls = false;
        h.dns = Some(Ok(vec![route(
            "mx1.y.test",
            &["192.0.2.10:25", "192.0.2.11:25"],
        )]));
        let t0 = h.now;
        start(&mut h, "b@y.test");
        greet(&mut h, HOP_CAPS_TLS);
        assert_eq!(h.take_backend(), "STARTTLS\r\n", "{level:?}");
        h.now = t0 + Duration::from_secs(80);
        h.backend_says(b"220 2.0.0 Ready\r\n");
        assert_eq!(h.tls_started, 1, "{level:?}");
        // The handshake's deadline: the budget's end (90 s), not tls_handshake's 30 s.
        let until = t0 + Duration::from_secs(90);
        assert_eq!(h.session.poll_timeout(), Some(until), "{level:?}");
        h.now = until;
        h.session.handle_tls_failed(Leg::Backend, h.now);
        h.run();
        assert_eq!(
            h.take_client(),
            "451 4.4.1 No next hop for y.test could be reached\r\n",
            "{level:?}"
        );
        assert!(
            !h.events
                .iter()
                .any(|e| matches!(e, Event::OutboundTlsFailure(_))),
            "{level:?}"
        );
        assert_eq!(h.connected.len(), 1, "{level:?}: no other address");
    }
}

/// The RCPT that opened the set-up is answered within the budget too: forwarded just
/// before its end, its reply is not waited for past it.
#[test]
fn the_first_rcpt_is_answered_within_the_set_up_budget() {
    let mut cfg = cfg(Level::May);
    cfg.timeouts.command = Duration::from_secs(100);
    let mut h = Harness::originate(cfg);
    let t0 = h.now;
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.now = t0 + Duration::from_secs(85);
    h.backend_says(b"250 2.1.0 Ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    assert_eq!(h.session.poll_timeout(), Some(t0 + Duration::from_secs(90)));
    h.advance(Duration::from_secs(5));
    assert_eq!(
        h.take_client(),
        "451 4.4.2 Next hop connection lost, try again later\r\n"
    );
    // Given up for the budget, not for the next hop's silence.
    assert!(h.events.contains(&Event::NextHopFailed {
        host: "relay.test".into(),
        kind: LegFailure::Timeout,
        reason: "set-up not done in time".into(),
    }));
    // MAIL accepted once the budget is spent: the RCPT is not sent at all.
    let mut late = self::cfg(Level::May);
    late.timeouts.command = Duration::from_secs(100);
    let mut h = Harness::originate(late);
    let t0 = h.now;
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.now = t0 + Duration::from_secs(90);
    h.backend_says(b"250 2.1.0 Ok\r\n");
    assert_eq!(h.take_backend(), "");
    assert_eq!(
        h.take_client(),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
}

#[test]
fn mx_failures_have_their_replies() {
    for (dns, reply) in [
        (
            Err(DnsFailure::NullMx),
            "550 5.1.10 Recipient domain does not accept mail (null MX)\r\n",
        ),
        (
            Err(DnsFailure::Temporary),
            "451 4.4.3 Temporary DNS failure for the recipient domain\r\n",
        ),
        (
            Err(DnsFailure::NoSuchDomain),
            "550 5.1.2 Recipient domain does not exist\r\n",
        ),
        (
            Ok(vec![route("mx1.y.test", &["192.0.2.10:25"])]),
            "451 4.4.1 No next hop for y.test could be reached\r\n",
        ),
    ] {
        let mut h = Harness::originate(mx_cfg());
        h.dns = Some(dns);
        h.unreachable = vec!["192.0.2.10:25".parse().expect("addr")];
        h.client_says(b"EHLO legacy.test\r\nMAIL FROM:<a@x.test>\r\n");
        h.take_client();
        h.client_says(b"RCPT TO:<b@y.test>\r\n");
        assert_eq!(h.take_client(), reply);
        assert!(!h.closed, "the session goes on");
    }
}

#[test]
fn mx_a_second_domain_waits_for_another_transaction() {
    let mut h = Harness::originate(mx_cfg());
    h.dns = Some(Ok(vec![route("mx1.y.test", &["192.0.2.10:25"])]));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"250 ok\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n");
    h.client_says(b"RCPT TO:<c@other.test>\r\n");
    assert_eq!(h.take_client(), "452 4.5.3 Too many recipients\r\n");
    assert_eq!(h.resolves, ["y.test"]);
}

/// A fixed relay's session carries another domain's recipients when their level asks no
/// more than the first's and checks no certificate: under `verify` the relay's certificate
/// may name only the first domain, so another verified domain goes in another transaction.
#[test]
fn relay_shares_a_session_across_domains_only_without_a_certificate_check() {
    for (level, second) in [
        (Level::May, "250 2.1.5 Recipient ok\r\n"),
        (Level::Verify, "452 4.5.3 Too many recipients\r\n"),
    ] {
        let mut h = Harness::originate(cfg(level));
        h.hop_tls = Some(verified());
        start(&mut h, "b@y.test");
        greet(&mut h, HOP_CAPS_TLS);
        assert_eq!(h.take_backend(), "STARTTLS\r\n");
        h.backend_says(b"220 go\r\n");
        after_tls_to_rcpt(&mut h, "b@y.test");
        h.client_says(b"RCPT TO:<c@other.test>\r\n");
        if second.starts_with("250") {
            assert_eq!(h.take_backend(), "RCPT TO:<c@other.test>\r\n", "{level:?}");
            h.backend_says(second.as_bytes());
        }
        assert_eq!(h.take_client(), second, "{level:?}");
        assert_eq!(h.tls_clients.len(), 1, "{level:?}");
    }
}

#[test]
fn a_sender_refused_by_the_next_hop_answers_the_rcpt() {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"550-5.7.1 sender\r\n550 5.7.1 refused\r\n");
    assert_eq!(h.take_client(), "550-5.7.1 sender\r\n550 5.7.1 refused\r\n");
    assert_eq!(h.take_backend(), "QUIT\r\n");
}

/// A 3xx to MAIL (`354`) is no refusal of the sender: it is not passed on as the RCPT's
/// reply (a legacy MTA would take it for a go-ahead), the next hop failed the attempt.
#[test]
fn an_intermediate_reply_to_mail_is_a_broken_next_hop() {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"354 go ahead\r\n");
    assert_eq!(
        h.take_client(),
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::NextHopFailed { kind: LegFailure::Protocol, reason, .. }
            if reason == "reply to MAIL: 354 go ahead"
    )));
    assert!(!h.closed, "the session goes on");
}

/// A hostile next hop's reply reaches the legacy MTA within RFC 5321's limits: lines of 512
/// octets at most (CRLF included), 16 lines (the first and the last), printable ASCII.
#[test]
fn a_next_hop_reply_is_bounded_and_ascii_for_the_legacy_mta() {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    let long = "x".repeat(1500);
    let mut reply = format!("550-5.1.1 caf\u{e9} {long}\r\n");
    for i in 0..20 {
        reply.push_str(&format!("550-line {i}\r\n"));
    }
    reply.push_str("550 5.1.1 end\r\n");
    h.backend_says(reply.as_bytes());
    let got = h.take_client();
    let lines: Vec<&str> = got.split_inclusive("\r\n").collect();
    assert_eq!(lines.len(), 16);
    assert_eq!(
        lines[0],
        format!("550-5.1.1 caf? {}\r\n", &long[..506 - 11])
    );
    assert_eq!(lines[0].len(), 512);
    assert_eq!(lines[1], "550-line 0\r\n");
    assert_eq!(lines[14], "550-line 13\r\n");
    assert_eq!(lines[15], "550 5.1.1 end\r\n", "the last line kept");
    assert!(got.is_ascii());
}

/// The replies to commands the legacy MTA pipelined leave together once the next hop has
/// answered the last of them (as inbound).
#[test]
fn replies_to_a_pipelined_batch_leave_in_one_write() {
    let mut h = envelope_accepted();
    let writes = h.client_writes;
    h.client_says(b"RCPT TO:<c@y.test>\r\nDATA\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<c@y.test>\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "", "the RCPT's reply waits for the DATA's");
    assert_eq!(h.take_backend(), "DATA\r\n");
    h.backend_says(b"354 go\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n354 go\r\n");
    assert_eq!(h.client_writes, writes + 1, "one write for the batch");
}

/// A plaintext session to the relay, MAIL and RCPT accepted (what went to the next hop and
/// to the legacy MTA taken).
fn envelope_accepted() -> Harness<Session> {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"250 ok\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    h
}

/// A plaintext session to the relay, MAIL and RCPT accepted, DATA answered 354.
fn in_data() -> Harness<Session> {
    let mut h = envelope_accepted();
    h.client_says(b"DATA\r\n");
    h.backend_says(b"354 go\r\n");
    h.take_client();
    h
}

#[test]
fn next_hop_lost_mid_message_gives_451_after_the_end_of_data() {
    let mut h = in_data();
    h.client_says(b"Subject: x\r\n\r\npart one\r\n");
    h.session.handle_eof(Leg::Backend, h.now);
    h.run();
    assert_eq!(h.take_client(), "", "the client is still sending");
    h.client_says(b"part two\r\n.\r\n");
    assert_eq!(
        h.take_client(),
        "451 4.4.2 Next hop lost mid-message, try again later\r\n"
    );
    assert!(h.events.contains(&Event::MessageFailed));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::MessageAccepted { .. })));
    // The session goes on.
    h.client_says(b"NOOP\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 OK\r\n");
}

#[test]
fn next_hop_silent_at_the_end_of_data_gives_451() {
    let mut h = in_data();
    h.client_says(b"x\r\n.\r\n");
    h.take_client();
    h.advance(Duration::from_secs(301));
    assert_eq!(
        h.take_client(),
        "451 4.4.2 Next hop lost mid-message, try again later\r\n"
    );
    assert!(h.events.contains(&Event::MessageFailed));
}

#[test]
fn next_hop_bytes_with_nothing_outstanding_are_a_failure() {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"250 ok\r\n");
    // RCPT's reply with a smuggled extra one (to answer the next command ahead of time).
    h.backend_says(b"250 ok\r\n250 extra\r\n");
    assert_eq!(
        h.take_client(),
        "451 4.4.2 Next hop connection lost, try again later\r\n"
    );
    assert_eq!(h.backend_closes, 1);
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::NextHopFailed { reason, .. } if reason.contains("no command outstanding"))));
    h.client_says(b"DATA\r\n");
    assert_eq!(
        h.take_client(),
        "451 4.4.2 Next hop connection lost, try again later\r\n"
    );
}

#[test]
fn nothing_before_the_handshake_survives_it() {
    let mut h = Harness::originate(cfg(Level::Encrypt));
    h.hop_tls = Some(test_tls());
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    h.take_backend();
    // A 220 with a pipelined fake reply behind it (CVE-2011-1575 style).
    h.backend_says(b"220 go\r\n250 fake\r\n");
    assert_eq!(
        h.tls_started, 0,
        "no handshake on a stream with injected bytes"
    );
    assert!(h.take_client().starts_with("451 4.4.1"));
}

#[test]
fn dsn_parameters_and_body_7bit_are_dropped_for_a_next_hop_without_them_others_refused() {
    // RFC 3461 §4.1: relayed to a server without DSN, a message goes on without them.
    let mut h = Harness::originate(cfg(Level::None));
    h.client_says(b"EHLO legacy.test\r\n");
    h.take_client();
    h.client_says(b"MAIL FROM:<a@x.test> RET=HDRS SIZE=5 ENVID=x\r\n");
    assert_eq!(h.take_client(), "250 2.1.0 Ok\r\n");
    h.client_says(b"RCPT TO:<b@y.test> NOTIFY=NEVER ORCPT=rfc822;b@y.test\r\n");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=5\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    // BODY=8BITMIME cannot be carried to a next hop without 8BITMIME: refused, not dropped.
    let mut h = Harness::originate(cfg(Level::None));
    h.client_says(b"EHLO legacy.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\n");
    h.take_client();
    h.client_says(b"RCPT TO:<b@y.test>\r\n");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_client(), "555 5.5.4 Unsupported parameter\r\n");
    assert_eq!(h.take_backend(), "QUIT\r\n");
    // BODY=7BIT is what a message without BODY is (RFC 6152): left out, in any case.
    let mut h = Harness::originate(cfg(Level::None));
    h.client_says(b"EHLO legacy.test\r\nMAIL FROM:<a@x.test> body=7bit SIZE=5\r\n");
    h.take_client();
    h.client_says(b"RCPT TO:<b@y.test>\r\n");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=5\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
}

#[test]
fn our_greeting_and_commands_we_answer() {
    let mut h = Harness::originate(cfg(Level::May));
    for (cmd, reply) in [
        ("HELO legacy.test\r\n", "250 mx.test\r\n"),
        ("STARTTLS\r\n", "502 5.5.1 STARTTLS not offered\r\n"),
        ("AUTH PLAIN AGEAYg==\r\n", "502 5.5.1 AUTH not offered\r\n"),
        ("RCPT TO:<b@y.test>\r\n", "503 5.5.1 Need MAIL command\r\n"),
        ("DATA\r\n", "503 5.5.1 Need MAIL command\r\n"),
        (
            "MAIL FROM:<a@x.test> BODY=8BITMIME\r\n",
            "555 5.5.4 Unsupported parameter\r\n",
        ),
        ("NOOP\r\n", "250 2.0.0 OK\r\n"),
        ("QUIT\r\n", "221 2.0.0 Bye\r\n"),
    ] {
        h.client_says(cmd.as_bytes());
        assert_eq!(h.take_client(), reply, "{cmd}");
    }
    assert!(h.closed);
}

/// As in terminate mode: after QUIT or the client's half-close the close does not linger;
/// after too many errors it does.
#[test]
fn a_close_the_legacy_mta_did_not_ask_for_lingers() {
    let mut h = Harness::originate(cfg(Level::May));
    h.client_says(b"QUIT\r\n");
    assert!(h.closed && !h.lingered);

    let mut h = Harness::originate(cfg(Level::May));
    h.session.handle_eof(Leg::Client, h.now);
    h.run();
    assert!(h.closed && !h.lingered);

    let mut h = Harness::originate(cfg(Level::May));
    h.client_says(&b"HELLO\r\n".repeat(20));
    assert!(h
        .take_client()
        .ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert!(h.closed && h.lingered);
}

#[test]
fn a_next_hop_closing_with_421_is_a_451_to_the_legacy_mta() {
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    h.take_backend();
    h.backend_says(b"250 ok\r\n");
    h.backend_says(b"421 4.3.2 Shutting down\r\n");
    assert_eq!(h.take_client(), "451 4.3.2 Shutting down\r\n");
    h.session.handle_eof(Leg::Backend, h.now);
    h.run();
    assert!(!h.closed, "our session goes on");
    h.client_says(b"RSET\r\n");
    assert_eq!(h.take_client(), "250 2.0.0 OK\r\n");
}

#[test]
fn commands_pipelined_behind_a_refused_rcpt_are_answered_at_once() {
    // Postfix pipelines MAIL, RCPT and DATA; found with it as the legacy MTA.
    let mut h = Harness::originate(mx_cfg());
    h.client_says(b"EHLO legacy.test\r\n");
    h.take_client();
    h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert_eq!(h.take_client(), "250 2.1.0 Ok\r\n");
    h.session.handle_resolved(Err(DnsFailure::Temporary), h.now);
    h.run();
    assert_eq!(
        h.take_client(),
        "451 4.4.3 Temporary DNS failure for the recipient domain\r\n\
         554 5.5.1 No valid recipients\r\n"
    );
    // The same behind a connection refused, a failed handshake and a certificate refused.
    for case in 0..3 {
        let mut h = Harness::originate(cfg(Level::Verify));
        h.hop_tls = (case == 2).then(|| failed("expired"));
        h.backend_reachable = case != 0;
        h.client_says(b"EHLO legacy.test\r\n");
        h.take_client();
        h.client_says(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
        if case != 0 {
            greet(&mut h, HOP_CAPS_TLS);
            h.backend_says(b"220 go\r\n");
        }
        let got = h.take_client();
        assert!(
            got.ends_with("\r\n554 5.5.1 No valid recipients\r\n"),
            "case {case}: {got}"
        );
    }
}

/// As inbound: the driver reads no more of the legacy MTA's input at once than fits under
/// the 8 KiB a session buffers while the next hop is awaited; in DATA, as much as it reads.
#[test]
fn the_client_read_budget_keeps_pipelined_input_within_its_bound() {
    let mut h = Harness::originate(cfg(Level::May));
    assert_eq!(h.session.read_budget(Leg::Client), 8 * 1024);
    start(&mut h, "b@y.test");
    // The RCPT waits for the next hop; what is pipelined after it is held.
    h.client_says(b"NOOP\r\n");
    assert_eq!(h.session.read_budget(Leg::Client), 8 * 1024 - 6);
    assert_eq!(h.session.read_budget(Leg::Backend), usize::MAX);

    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.backend_says(b"250 2.1.0 Sender ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    h.backend_says(b"250 2.1.5 Recipient ok\r\n");
    h.take_client();
    h.client_says(b"DATA\r\n");
    h.backend_says(b"354 go ahead\r\n");
    assert_eq!(h.take_client(), "354 go ahead\r\n");
    assert_eq!(h.session.read_budget(Leg::Client), usize::MAX, "in DATA");
}

#[test]
fn an_internationalised_recipient_domain_gets_its_listed_level() {
    let policy = DomainPolicy {
        default: Level::May,
        domains: vec![
            ("xn--caf-dma.test".to_owned(), Level::Verify),
            ("xn--bcher-kva.test".to_owned(), Level::DomainSecure),
            ("fass.de".to_owned(), Level::Encrypt),
            ("xn--fa-hia.de".to_owned(), Level::Verify),
        ],
    };
    assert_eq!(policy.level("BÜCHER.test."), (Level::DomainSecure, Some(1)));
    assert_eq!(
        policy.level("xn--BCHER-kva.test"),
        (Level::DomainSecure, Some(1))
    );
    assert_eq!(policy.level("café.test"), (Level::Verify, Some(0)));
    // Its two mappings name two entries: the stricter one.
    assert_eq!(policy.level("faß.de"), (Level::Verify, Some(3)));
    assert_eq!(policy.level("mañana.test"), (Level::May, None));
    assert_eq!(policy.level("bücher.test.evil"), (Level::May, None));
}

#[test]
fn a_unicode_recipient_domain_is_held_to_its_a_label_policy() {
    let mut c = cfg(Level::May);
    c.policy.domains = vec![("xn--bcher-kva.test".to_owned(), Level::Encrypt)];
    let mut h = Harness::originate(c);
    h.client_says(b"EHLO legacy.test\r\n");
    assert_eq!(h.take_client(), OUR_EHLO);
    h.client_says(b"MAIL FROM:<a@x.test> SMTPUTF8\r\n");
    assert_eq!(h.take_client(), "250 2.1.0 Ok\r\n");
    h.client_says("RCPT TO:<b@BÜCHER.test>\r\n".as_bytes());
    greet(&mut h, HOP_CAPS);
    assert_eq!(
        h.take_client(),
        "450 4.7.5 TLS policy encrypt for b?cher.test not met: relay.test did not offer \
         STARTTLS\r\n"
    );
    assert_eq!(h.take_backend(), "", "no MAIL in plaintext");
}

/// A recipient domain that is no domain name is refused before any next hop, with a fixed
/// relay as with MX: the level is looked up by that name, and a lenient relay may read
/// `b@example.net(x)` as mail for the listed `example.net`, which would otherwise get the
/// default level and go in plaintext.
#[test]
fn a_recipient_domain_that_is_no_domain_name_is_refused_before_a_next_hop() {
    for next_hop in [None, Some(NextHop::Mx)] {
        for rcpt in [
            "b@example.net(x)",
            "b@example.net..",
            "b@example.net,",
            "b@\"example.net\"",
        ] {
            let mut c = cfg(Level::May);
            c.policy.domains = vec![("example.net".into(), Level::Verify)];
            if let Some(next_hop) = next_hop.clone() {
                c.next_hop = next_hop;
            }
            let mut h = Harness::originate(c);
            h.client_says(b"EHLO legacy.test\r\n");
            h.client_says(b"MAIL FROM:<a@x.test>\r\n");
            assert_eq!(h.take_client(), format!("{OUR_EHLO}250 2.1.0 Ok\r\n"));
            h.client_says(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
            assert_eq!(
                h.take_client(),
                "501 5.1.3 Recipient domain is not a valid domain name\r\n",
                "{rcpt}"
            );
            assert_eq!((h.connects, h.resolves.len()), (0, 0), "{rcpt}");
            // The transaction goes on: a valid recipient opens the next hop.
            h.client_says(b"RCPT TO:<b@example.net>\r\n");
            assert_eq!(h.connects + h.resolves.len() as u32, 1, "{rcpt}");
        }
    }
}

/// A policy failure bounces (`550 5.7.5`) only when it is final: if another address of the
/// domain failed for a reason that may pass (unreachable here), the RCPT is deferred with
/// the same text (`450 4.7.5`), and the legacy MTA tries again.
#[test]
fn a_policy_failure_beside_an_unreachable_mx_defers_instead_of_bouncing() {
    // Two MX hosts under `encrypt`, `bounce`; the first unreachable or not.
    let two_mx = |unreachable: &[&str]| {
        let mut c = mx_cfg();
        c.policy.default = Level::Encrypt;
        c.on_failure = OnFailure::Bounce;
        let mut h = Harness::originate(c);
        h.dns = Some(Ok(vec![
            route("mx1.y.test", &["192.0.2.10:25"]),
            route("mx2.y.test", &["192.0.2.20:25"]),
        ]));
        h.unreachable = unreachable
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        start(&mut h, "b@y.test");
        h
    };
    let mut h = two_mx(&["192.0.2.10:25"]);
    greet(&mut h, HOP_CAPS);
    assert_eq!(
        h.take_client(),
        "450 4.7.5 TLS policy encrypt for y.test not met: mx2.y.test did not offer STARTTLS\r\n"
    );
    // Every address judged and failing the policy: the bounce it is configured to be.
    let mut h = two_mx(&[]);
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "", "no MAIL in plaintext");
    greet(&mut h, HOP_CAPS);
    assert_eq!(
        h.take_client(),
        "550 5.7.5 TLS policy encrypt for y.test not met: mx2.y.test did not offer STARTTLS\r\n"
    );
}

/// The next hop connection of the last transaction is let go (QUIT) as the next one's is
/// set up; that its QUIT could not be written (the driver reports the old leg lost) or that
/// it closed is no failure of the new set-up, nor of a transaction that has none yet.
#[test]
fn the_old_next_hops_loss_does_not_fail_the_next_transaction() {
    for (pipelined, looking_up) in [
        (
            "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\n",
            true,
        ),
        ("RSET\r\nMAIL FROM:<a@x.test>\r\n", false),
    ] {
        let mut h = Harness::originate(mx_cfg());
        h.dns = Some(Ok(vec![route("mx1.y.test", &["192.0.2.10:25"])]));
        start(&mut h, "b@y.test");
        greet(&mut h, HOP_CAPS);
        h.backend_says(b"250 2.1.0 ok\r\n");
        h.backend_says(b"550 5.1.1 no such user\r\n");
        h.take_client();
        h.take_backend();
        h.dns = None; // the next look-up has not answered yet
        h.client_says(pipelined.as_bytes());
        assert_eq!(h.take_backend(), "QUIT\r\n");
        h.session.handle_lost(Leg::Backend, h.now);
        h.session.handle_eof(Leg::Backend, h.now);
        h.run();
        assert_eq!(
            h.take_client(),
            "250 2.0.0 OK\r\n250 2.1.0 Ok\r\n",
            "{pipelined:?}"
        );
        if !looking_up {
            h.client_says(b"RCPT TO:<c@y.test>\r\n");
        }
        assert_eq!(h.resolves, ["y.test", "y.test"], "{pipelined:?}");
        h.dns = Some(Ok(vec![route("mx1.y.test", &["192.0.2.10:25"])]));
        h.session
            .handle_resolved(h.dns.clone().expect("dns"), h.now);
        h.run();
        greet(&mut h, HOP_CAPS);
        assert_eq!(
            h.take_backend(),
            "MAIL FROM:<a@x.test>\r\n",
            "{pipelined:?}"
        );
    }
}

/// A next hop's `2xx` that is not the command's success (`221`, closing) accepts nothing:
/// not the message (the legacy MTA would take it for delivered), nor the sender, nor the
/// capabilities of an EHLO. The legacy MTA is told to try again, never `2xx`.
#[test]
fn a_next_hops_2xx_that_is_not_the_commands_success_accepts_nothing() {
    // The end of data.
    let mut h = Harness::originate(cfg(Level::May));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS);
    assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_backend(), "RCPT TO:<b@y.test>\r\n");
    h.backend_says(b"250 ok\r\n");
    assert_eq!(h.take_client(), "250 ok\r\n");
    let verdict = message(&mut h, "221 2.0.0 Bye\r\n");
    assert!(verdict.starts_with("451 4.4.2 "), "{verdict:?}");
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::MessageAccepted { .. })));
    // MAIL, and EHLO: the set-up fails, the RCPT is deferred.
    for (ehlo, mail) in [(HOP_CAPS, "221 2.0.0 Bye\r\n"), ("221 2.0.0 Bye\r\n", "")] {
        let mut h = Harness::originate(cfg(Level::May));
        start(&mut h, "b@y.test");
        greet(&mut h, ehlo);
        if !mail.is_empty() {
            assert_eq!(h.take_backend(), "MAIL FROM:<a@x.test> SIZE=100\r\n");
            h.backend_says(mail.as_bytes());
        }
        let reply = h.take_client();
        assert!(
            reply.starts_with("451 4.4.1 "),
            "{ehlo:?} {mail:?}: {reply:?}"
        );
    }
}

/// Our own policy reply stays one line of at most 512 octets with its CRLF (RFC 5321
/// §4.5.3.1.5), as a next hop's do: an MX host named by the domain's DNS may be 251 octets
/// long, and a name mismatch names it twice.
#[test]
fn a_policy_reply_with_long_names_is_cut_to_the_line_limit() {
    let mut c = mx_cfg();
    c.policy.default = Level::Verify;
    let mut h = Harness::originate(c);
    let label = "m".repeat(60);
    let mx = format!("{label}.{label}.{label}.{label}.mx.test");
    assert_eq!(mx.len(), 251);
    h.dns = Some(Ok(vec![route(&mx, &["192.0.2.10:25"])]));
    h.hop_tls = Some(failed("name mismatch"));
    start(&mut h, "b@y.test");
    greet(&mut h, HOP_CAPS_TLS);
    assert_eq!(h.take_backend(), "STARTTLS\r\n");
    h.backend_says(b"220 2.0.0 Ready\r\n");
    let reply = h.take_client();
    let want = format!(
        "450 4.7.5 TLS policy verify for y.test not met: certificate of {mx} is not valid for {mx}"
    );
    assert_eq!(reply, format!("{}\r\n", &want[..510]));
}
