//! Session tests of Domain Security (every outcome under defer, reject and audit) and of
//! audit mode for `require_tls` and `auth_requires_tls`: in memory, byte-exact.

use crate::inbound::{
    ClientCert, Config, DomainSecureRefusal, Event, Missing, OnFailure, PeerCert,
};
use crate::session::Refusal;
use crate::testing::{test_config, test_tls, Harness};

const FROM_BANK: &str = "MAIL FROM:<alice@WoodgroveBank.com>\r\n";

fn partner_cert(names: &[&str]) -> PeerCert {
    PeerCert {
        subject: "CN=mail.woodgrovebank.com".into(),
        issuer: "CN=Woodgrove Issuing CA".into(),
        dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..PeerCert::default()
    }
}

fn config(on_failure: OnFailure, enforce: bool) -> Config {
    Config {
        domain_secure: vec!["woodgrovebank.com".into(), "fabrikam.test".into()],
        on_failure,
        enforce,
        ..test_config()
    }
}

/// A session after EHLO; with `tls`, after STARTTLS and the second EHLO.
fn session(cfg: Config, tls: Option<ClientCert>) -> Harness {
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    if let Some(client_cert) = tls {
        h.tls_info = crate::inbound::TlsInfo {
            client_cert,
            ..test_tls()
        };
        h.client_says(b"STARTTLS\r\n");
        assert_eq!(h.take_client(), "220 2.0.0 Ready to start TLS\r\n");
        h.ehlo_after_tls();
    }
    h
}

/// Every way a listed sender can fall short, the reply text's tail and the metric reason.
fn outcomes() -> Vec<(Option<ClientCert>, &'static str, Refusal)> {
    vec![
        (None, "no TLS", Refusal::DomainSecureNoTls),
        (
            Some(ClientCert::None),
            "no client certificate",
            Refusal::DomainSecureNoClientCertificate,
        ),
        (
            Some(ClientCert::Failed {
                cert: partner_cert(&["mail.woodgrovebank.com"]).into(),
                reason: "expired".into(),
            }),
            "client certificate did not verify (expired)",
            Refusal::DomainSecureCertificateUnverified,
        ),
        (
            Some(ClientCert::Verified(
                partner_cert(&["mail.fabrikam.test"]).into(),
            )),
            "client certificate not valid for woodgrovebank.com",
            Refusal::DomainSecureNameMismatch,
        ),
    ]
}

#[test]
fn refusals_defer_and_reject_name_the_domain_and_what_was_missing() {
    for (on_failure, code) in [
        (OnFailure::Defer, "450 4.7.1"),
        (OnFailure::Reject, "550 5.7.1"),
    ] {
        for (tls, missing, reason) in outcomes() {
            let mut h = session(config(on_failure, true), tls);
            h.client_says(FROM_BANK.as_bytes());
            assert_eq!(
                h.take_client(),
                format!(
                    "{code} Domain Security: mail from woodgrovebank.com requires mutual TLS; \
                     {missing}\r\n"
                )
            );
            assert_eq!(h.take_backend(), "", "not forwarded ({missing})");
            assert!(h.events.contains(&Event::PolicyRejection {
                reason,
                enforced: true
            }));
            // The session goes on; a sender from an unlisted domain is judged on its own,
            // and its delivered message is not domain-secure.
            h.transaction();
            h.exchange("x\r\n.\r\n", "x\r\n.\r\n", "250 2.0.0 queued\r\n");
            assert!(!h.closed);
            assert!(h.events.contains(&Event::MessageAccepted { bytes: 3 }));
            assert!(!h
                .events
                .iter()
                .any(|e| matches!(e, Event::DomainSecureAccepted { .. })));
        }
    }
}

#[test]
fn audit_mode_lets_every_refusal_through_and_counts_it_unenforced() {
    for (tls, _, reason) in outcomes() {
        let mut h = session(config(OnFailure::Reject, false), tls);
        let reply = h.exchange(FROM_BANK, FROM_BANK, "250 2.1.0 Ok\r\n");
        assert_eq!(reply, "250 2.1.0 Ok\r\n");
        assert!(h.events.contains(&Event::PolicyRejection {
            reason,
            enforced: false
        }));
        h.exchange(
            "RCPT TO:<b@y.test>\r\n",
            "RCPT TO:<b@y.test>\r\n",
            "250 ok\r\n",
        );
        h.exchange("DATA\r\n", "DATA\r\n", "354 go\r\n");
        h.client_says(b"hi\r\n.\r\n");
        h.backend_says(b"250 2.0.0 queued\r\n");
        assert_eq!(h.take_client(), "250 2.0.0 queued\r\n");
        assert!(h.events.contains(&Event::MessageAccepted { bytes: 4 }));
        assert!(
            !h.events
                .iter()
                .any(|e| matches!(e, Event::DomainSecureAccepted { .. })),
            "audit-passed mail is never domain-secure ({reason})"
        );
    }
}

#[test]
fn verified_certificate_for_the_domain_is_domain_secure() {
    for names in [
        &["mail.woodgrovebank.com", "woodgrovebank.com"][..],
        &["woodgrovebank.com"],
        &["*.woodgrovebank.com"],
    ] {
        let cert = ClientCert::Verified(partner_cert(names).into());
        let mut h = session(config(OnFailure::Reject, true), Some(cert));
        assert_eq!(
            h.exchange(FROM_BANK, FROM_BANK, "250 2.1.0 Ok\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        h.exchange(
            "RCPT TO:<b@y.test>\r\n",
            "RCPT TO:<b@y.test>\r\n",
            "250 ok\r\n",
        );
        h.exchange("DATA\r\n", "DATA\r\n", "354 go\r\n");
        h.client_says(b"hi\r\n.\r\n");
        // Counted only once the backend accepted the message.
        assert!(!h
            .events
            .iter()
            .any(|e| matches!(e, Event::DomainSecureAccepted { .. })));
        assert_eq!(h.take_backend(), "hi\r\n.\r\n");
        h.backend_says(b"250 2.0.0 queued\r\n");
        assert_eq!(h.take_client(), "250 2.0.0 queued\r\n");
        assert!(h.events.contains(&Event::DomainSecureAccepted {
            domain: "woodgrovebank.com".into()
        }));
        assert!(!h
            .events
            .iter()
            .any(|e| matches!(e, Event::PolicyRejection { .. })));
        // The next transaction, from an unlisted sender, is not domain-secure.
        let before = h.events.len();
        h.transaction();
        h.client_says(b"x\r\n.\r\n");
        assert_eq!(h.take_backend(), "x\r\n.\r\n");
        h.backend_says(b"250 ok\r\n");
        assert!(!h.events[before..]
            .iter()
            .any(|e| matches!(e, Event::DomainSecureAccepted { .. })));
    }
}

#[test]
fn a_backend_refusal_is_not_counted_domain_secure() {
    let cert = ClientCert::Verified(partner_cert(&["woodgrovebank.com"]).into());
    let mut h = session(config(OnFailure::Defer, true), Some(cert));
    h.exchange(FROM_BANK, FROM_BANK, "250 ok\r\n");
    h.exchange(
        "RCPT TO:<b@y.test>\r\n",
        "RCPT TO:<b@y.test>\r\n",
        "250 ok\r\n",
    );
    h.exchange("DATA\r\n", "DATA\r\n", "354 go\r\n");
    h.client_says(b"hi\r\n.\r\n");
    h.backend_says(b"554 5.7.1 no\r\n");
    assert!(h.events.contains(&Event::MessageRejected));
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::DomainSecureAccepted { .. })));
}

#[test]
fn a_subdomain_is_not_the_listed_domain() {
    let mut h = session(config(OnFailure::Reject, true), None);
    let mail = "MAIL FROM:<a@mail.woodgrovebank.com>\r\n";
    assert_eq!(h.exchange(mail, mail, "250 ok\r\n"), "250 ok\r\n");
    assert!(h.events.is_empty(), "{:?}", h.events);
}

#[test]
fn refusal_event_carries_what_the_log_needs() {
    let cert = ClientCert::Failed {
        cert: partner_cert(&[]).into(),
        reason: "revoked".into(),
    };
    let mut h = session(config(OnFailure::Defer, true), Some(cert));
    h.client_says(b"MAIL FROM:<bob@fabrikam.test>\r\n");
    assert!(h
        .events
        .contains(&Event::DomainSecureRefused(DomainSecureRefusal {
            domain: "fabrikam.test".into(),
            missing: Missing::NotVerified("revoked".into()),
            subject: Some("CN=mail.woodgrovebank.com".into()),
        })));
}

#[test]
fn audit_mode_require_tls_lets_commands_through() {
    let cfg = Config {
        require_tls: true,
        enforce: false,
        ..test_config()
    };
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.envelope();
    let rejections: Vec<_> = h
        .events
        .iter()
        .filter(|e| {
            **e == Event::PolicyRejection {
                reason: Refusal::TlsRequired,
                enforced: false,
            }
        })
        .collect();
    assert_eq!(rejections.len(), 2, "MAIL and RCPT: {:?}", h.events);
}

#[test]
fn audit_mode_auth_requires_tls_offers_and_passes_auth() {
    let cfg = Config {
        enforce: false,
        ..test_config()
    };
    let mut h = Harness::greeted(cfg);
    let reply = h.exchange(
        "EHLO c\r\n",
        "EHLO c\r\n",
        "250-legacy.test\r\n250 AUTH PLAIN\r\n",
    );
    assert!(reply.contains("250-AUTH PLAIN\r\n"), "{reply}");
    let auth = "AUTH PLAIN AGEAYg==\r\n";
    assert_eq!(
        h.exchange(auth, auth, "235 2.7.0 ok\r\n"),
        "235 2.7.0 ok\r\n"
    );
    assert!(h.events.contains(&Event::PolicyRejection {
        reason: Refusal::AuthRequiresTls,
        enforced: false
    }));
}

#[test]
fn enforced_auth_requires_tls_still_refuses() {
    let mut h = Harness::greeted(test_config());
    let reply = h.exchange(
        "EHLO c\r\n",
        "EHLO c\r\n",
        "250-legacy.test\r\n250 AUTH PLAIN\r\n",
    );
    assert!(!reply.contains("AUTH"), "{reply}");
    h.client_says(b"AUTH PLAIN AGEAYg==\r\n");
    assert_eq!(
        h.take_client(),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert!(h.events.contains(&Event::PolicyRejection {
        reason: Refusal::AuthRequiresTls,
        enforced: true
    }));
}

#[test]
fn paths_a_backend_could_read_as_a_listed_domain_count_as_listed() {
    use super::domain_secure::listed_domain;
    let list = vec![
        "woodgrovebank.com".to_owned(),
        "xn--bcher-kva.test".to_owned(),
    ];
    for path in [
        "a@WoodgroveBank.com",
        "a@woodgrovebank.com.",
        "a@woodgrovebank.com@evil.test",
        "\"a@woodgrovebank.com\"@evil.test",
        "@relay.test:a@woodgrovebank.com",
        // RFC 822 comments and quoted pairs, which Postfix (strict_rfc821_envelopes = no, its
        // default) and sendmail take in an envelope address and read past.
        "a@(x)woodgrovebank.com",
        "a@woodgrovebank(x).com",
        "a@woodgrovebank.com(x (nested))",
        "a@woodgrovebank\\.com",
        "a@\"woodgrovebank.com\"",
    ] {
        assert_eq!(
            listed_domain(&list, path),
            Some("woodgrovebank.com"),
            "{path}"
        );
    }
    // A non-ASCII domain is the listed domain it maps to (UTS #46), and no other.
    let list = vec![
        "woodgrovebank.com".to_owned(),
        "xn--caf-dma.test".to_owned(),
        "xn--bcher-kva.test".to_owned(),
        "fass.de".to_owned(),
    ];
    for (path, listed) in [
        ("a@bücher.test", "xn--bcher-kva.test"),
        ("a@BÜCHER.TEST", "xn--bcher-kva.test"),
        ("a@café.test.", "xn--caf-dma.test"),
        (
            "a@\u{ff57}\u{ff4f}\u{ff4f}\u{ff44}grovebank.com",
            "woodgrovebank.com",
        ),
        ("a@woodgroveban\u{212a}.com", "woodgrovebank.com"),
        ("a@faß.de", "fass.de"),
    ] {
        assert_eq!(listed_domain(&list, path), Some(listed), "{path}");
    }
    for path in [
        "a@mañana.test",
        "a@xn--.test",
        "a@bücher.test.evil",
        "a@(woodgrovebank.com)evil.test",
    ] {
        assert_eq!(listed_domain(&list, path), None, "{path}");
    }
    let list = vec!["xn--fa-hia.de".to_owned()];
    assert_eq!(listed_domain(&list, "a@faß.de"), Some("xn--fa-hia.de"));
    let list = vec![
        "woodgrovebank.com".to_owned(),
        "xn--bcher-kva.test".to_owned(),
    ];
    for path in [
        "a@mail.woodgrovebank.com",
        "a@woodgrovebank.com.evil.test",
        "a@woodgrovebank.community",
        "a@evil.test",
        "",
    ] {
        assert_eq!(listed_domain(&list, path), None, "{path}");
    }
    // An internationalised domain that maps to no listed one is not listed.
    assert_eq!(listed_domain(&list[..1], "a@bücher.test"), None);
}

#[test]
fn refusals_count_toward_the_error_limit() {
    let mut h = session(config(OnFailure::Defer, true), None);
    for _ in 0..19 {
        h.client_says(FROM_BANK.as_bytes());
    }
    assert!(!h.closed);
    h.client_says(FROM_BANK.as_bytes());
    assert!(h
        .take_client()
        .ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert!(h.closed);
}
