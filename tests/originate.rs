//! Originate mode end to end (issue 13, SPEC §3 outbound levels, §4, §5): a legacy MTA (the
//! test client) relays to the sidecar, which delivers to a test next hop over real TLS on
//! 127.0.0.1 as the recipient domain's level demands. Every level against every kind of next
//! hop, defer/bounce/audit, the next hop's replies passed through (end-to-end
//! acknowledgement), a next hop lost mid-message, counters scraped from /metrics after each,
//! and the certificates in the protocol log. The MX path is in `originate_mx.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/originate.rs"]
mod support;

use std::time::Duration;

use common::binary::start_binary;
use common::next_hop::{
    Cert, ClientAuth, End, Message, NextHop, NextHopPki, RunningNextHop, Session,
};
use common::pki::Leaf;
use common::Client;
use support::{
    assert_series, legacy, m, our_leaf, quit, rcpt_refused, send, silent_for, start_with, Conf,
    HeldHop, BODY, BODY_AT_HOP,
};

/// Levels, weakest first, as configured.
const LEVELS: [&str; 5] = ["none", "may", "encrypt", "verify", "domain-secure"];

/// What a next hop does about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// STARTTLS not offered.
    NoStartTls,
    /// STARTTLS offered and answered 220, then no TLS at all.
    FailHandshake,
    /// A real handshake presenting this certificate.
    Tls(Cert),
}

const KINDS: [Kind; 7] = [
    Kind::NoStartTls,
    Kind::FailHandshake,
    Kind::Tls(Cert::Untrusted),
    Kind::Tls(Cert::WrongName),
    Kind::Tls(Cert::Expired),
    Kind::Tls(Cert::Revoked),
    Kind::Tls(Cert::Valid),
];

/// What the legacy MTA and the next hop should see.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Delivered in plaintext, STARTTLS never sent.
    Plain,
    /// STARTTLS, a failed handshake, then a new plaintext connection that delivers.
    PlainAfterFailedTls,
    /// Delivered inside TLS.
    Tls,
    /// The RCPT refused with this text after `TLS policy LEVEL for y.test not met: `, the
    /// metrics reason label, and how far the next hop connection got.
    Refused {
        text: String,
        reason: &'static str,
        after: Stage,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Only EHLO (no STARTTLS offered).
    Ehlo,
    /// STARTTLS sent, the handshake failed.
    FailedHandshake,
    /// TLS established, the certificate judged, the connection dropped.
    Judged,
}

/// The expected outcome of one cell of the matrix, from SPEC §3's table. The relay is given
/// as 127.0.0.1: the names a verifying level checks are `127.0.0.1` and the recipient domain
/// `y.test`, which the next hops' certificates are issued for.
fn expected(level: &str, kind: Kind) -> Outcome {
    let refused = |text: &str, reason, after| Outcome::Refused {
        text: text.to_owned(),
        reason,
        after,
    };
    let no_starttls = || {
        refused(
            "127.0.0.1 did not offer STARTTLS",
            "no_starttls",
            Stage::Ehlo,
        )
    };
    let handshake = || {
        refused(
            "TLS handshake with 127.0.0.1 failed",
            "handshake_failed",
            Stage::FailedHandshake,
        )
    };
    match (level, kind) {
        ("none", _) => Outcome::Plain,
        ("may", Kind::NoStartTls) => Outcome::Plain,
        ("may", Kind::FailHandshake) => Outcome::PlainAfterFailedTls,
        ("may" | "encrypt", Kind::Tls(_)) => Outcome::Tls,
        (_, Kind::NoStartTls) => no_starttls(),
        (_, Kind::FailHandshake) => handshake(),
        (_, Kind::Tls(Cert::Valid)) => Outcome::Tls,
        (_, Kind::Tls(Cert::Untrusted)) => refused(
            "certificate of 127.0.0.1 did not verify (untrusted issuer)",
            "certificate_untrusted",
            Stage::Judged,
        ),
        (_, Kind::Tls(Cert::WrongName)) => refused(
            "certificate of 127.0.0.1 is not valid for 127.0.0.1 or y.test",
            "name_mismatch",
            Stage::Judged,
        ),
        (_, Kind::Tls(Cert::Expired)) => refused(
            "certificate of 127.0.0.1 did not verify (expired)",
            "certificate_expired",
            Stage::Judged,
        ),
        (_, Kind::Tls(Cert::Revoked)) => refused(
            "certificate of 127.0.0.1 did not verify (revoked)",
            "certificate_revoked",
            Stage::Judged,
        ),
    }
}

/// A next hop for `y.test` of `kind`; a client certificate is asked for (optional) at every
/// level but `domain-secure`, where it is required.
async fn next_hop(pki: &NextHopPki, kind: Kind, require_client_cert: bool) -> RunningNextHop {
    let builder = NextHop::builder().host("y.test");
    let builder = match kind {
        Kind::NoStartTls => builder,
        Kind::FailHandshake => builder.fail_handshake(),
        Kind::Tls(cert) => builder.starttls(pki, cert),
    };
    let auth = if require_client_cert {
        ClientAuth::Require(pki.root_file.clone())
    } else {
        ClientAuth::Request(pki.root_file.clone())
    };
    builder.client_auth(auth).start().await
}

fn plain(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The whole plaintext dialogue of a delivery of [`BODY`] from a@x.test to `rcpts`.
fn delivery(rcpts: &[&str]) -> String {
    let rcpts: String = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();
    format!(
        "EHLO mx.test\r\nMAIL FROM:<a@x.test>\r\n{rcpts}DATA\r\n{}QUIT\r\n",
        plain(BODY)
    )
}

fn delivered(rcpts: &[&str]) -> Vec<Message> {
    vec![Message {
        mail_from: "a@x.test".into(),
        rcpt_to: rcpts.iter().map(|r| (*r).to_owned()).collect(),
        data: BODY_AT_HOP.to_vec(),
    }]
}

/// The plaintext delivery session, byte-exact, STARTTLS never sent.
fn assert_plain_delivery(s: &Session, cell: &str) {
    assert_eq!(plain(&s.plaintext), delivery(&["b@y.test"]), "{cell}");
    assert!(s.tls.is_none(), "{cell}");
    assert!(s.encrypted.is_empty(), "{cell}");
    assert_eq!(s.messages, delivered(&["b@y.test"]), "{cell}");
    assert_eq!(s.end, End::Quit, "{cell}");
}

/// One cell: a relay to a next hop of `kind` for recipient domain y.test listed at `level`.
async fn cell(pki: &NextHopPki, ours: &Leaf, level: &str, kind: Kind) {
    let cell = format!("level {level}, next hop {kind:?}");
    let domain_secure = level == "domain-secure";
    let hop = next_hop(pki, kind, domain_secure).await;
    let policy = format!("      default: may\n      domains:\n        y.test: {level}\n");
    let sidecar = start_with(&Conf::new(pki, hop.addr.to_string(), &policy), ours).await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    let outcome = expected(level, kind);
    let mut metrics = Vec::new();
    match &outcome {
        Outcome::Refused { text, .. } => {
            let want = format!("450 4.7.5 TLS policy {level} for y.test not met: {text}\r\n");
            assert_eq!(rcpt, want, "{cell}");
            assert_eq!(eod, None, "{cell}");
            // The transaction goes on: with no recipient, DATA is refused.
            assert_eq!(
                client.cmd("DATA").await,
                "554 5.5.1 No valid recipients\r\n",
                "{cell}"
            );
        }
        _ => {
            assert_eq!(rcpt, "250 2.1.5 Ok\r\n", "{cell}");
            assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"), "{cell}");
            let over_tls = matches!(outcome, Outcome::Tls);
            metrics.push(m::messages("accepted", over_tls, 1));
        }
    }
    quit(client).await;

    let first = hop.next_session().await;
    let mut sessions = 1;
    match &outcome {
        Outcome::Plain => assert_plain_delivery(&first, &cell),
        Outcome::PlainAfterFailedTls => {
            assert_eq!(
                plain(&first.plaintext),
                "EHLO mx.test\r\nSTARTTLS\r\n",
                "{cell}"
            );
            assert_eq!(first.end, End::ServerClosed, "{cell}");
            assert!(first.messages.is_empty(), "{cell}");
            // RFC 3207 fallback for `may`: a new connection, in plaintext.
            let second = hop.next_session().await;
            sessions = 2;
            assert_plain_delivery(&second, &cell);
            metrics.push(m::handshake_error(1));
        }
        Outcome::Tls => {
            assert_eq!(
                plain(&first.plaintext),
                "EHLO mx.test\r\nSTARTTLS\r\n",
                "{cell}"
            );
            assert_eq!(plain(&first.encrypted), delivery(&["b@y.test"]), "{cell}");
            assert_eq!(first.messages, delivered(&["b@y.test"]), "{cell}");
            assert_eq!(first.end, End::Quit, "{cell}");
            let tls = first.tls.as_ref().expect("TLS");
            assert_eq!(tls.version, rustls::ProtocolVersion::TLSv1_3, "{cell}");
            // A relay given by address: no SNI (RFC 6066 §3).
            assert_eq!(tls.sni, None, "{cell}");
            if domain_secure {
                assert_eq!(
                    tls.client_chain.first().map(|c| c.to_vec()),
                    Some(ours.der.clone()),
                    "{cell}: our certificate presented"
                );
                metrics.push(m::ds_sent("y.test", 1));
            } else {
                assert!(tls.client_chain.is_empty(), "{cell}: no client certificate");
            }
            metrics.push(m::handshake_ok(1));
        }
        Outcome::Refused { reason, after, .. } => {
            assert!(first.messages.is_empty(), "{cell}");
            match after {
                Stage::Ehlo => {
                    assert_eq!(plain(&first.plaintext), "EHLO mx.test\r\n", "{cell}");
                    assert!(first.tls.is_none(), "{cell}");
                }
                Stage::FailedHandshake => {
                    assert_eq!(
                        plain(&first.plaintext),
                        "EHLO mx.test\r\nSTARTTLS\r\n",
                        "{cell}"
                    );
                    assert_eq!(first.end, End::ServerClosed, "{cell}");
                    metrics.push(m::handshake_error(1));
                }
                Stage::Judged => {
                    assert_eq!(
                        plain(&first.plaintext),
                        "EHLO mx.test\r\nSTARTTLS\r\n",
                        "{cell}"
                    );
                    let tls = first.tls.as_ref().expect("the handshake completed");
                    assert_eq!(tls.client_chain.is_empty(), !domain_secure, "{cell}");
                    // RFC 3207 §4.1: QUIT, and nothing else, inside a TLS session whose
                    // certificate was judged unacceptable.
                    // (Its 221 is not waited for: the next hop may see the close as it answers.)
                    assert_eq!(plain(&first.encrypted), "QUIT\r\n", "{cell}");
                    metrics.push(m::handshake_ok(1));
                }
            }
            metrics.push(m::rejection(reason, true, 1));
            metrics.push(m::next_hop_failures("policy", 1));
            if domain_secure {
                metrics.push(m::ds_failure("y.test", reason, 1));
            }
        }
    }
    assert_eq!(hop.accepted(), sessions, "{cell}: next hop connections");
    assert_series(&sidecar, &metrics, &cell).await;
}

async fn level_row(level: &str) {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for kind in KINDS {
        cell(&pki, &ours, level, kind).await;
    }
}

#[tokio::test]
async fn level_none_is_plaintext_against_every_next_hop() {
    level_row(LEVELS[0]).await;
}

#[tokio::test]
async fn level_may_uses_tls_when_it_can_and_retries_in_plaintext() {
    level_row(LEVELS[1]).await;
}

#[tokio::test]
async fn level_encrypt_needs_tls_with_any_certificate() {
    level_row(LEVELS[2]).await;
}

#[tokio::test]
async fn level_verify_needs_a_verified_certificate() {
    level_row(LEVELS[3]).await;
}

#[tokio::test]
async fn level_domain_secure_is_verify_with_our_certificate_and_counted() {
    level_row(LEVELS[4]).await;
}

#[tokio::test]
async fn verify_delivers_over_tls_byte_exact() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder()
        .host("y.test")
        .starttls(&pki, Cert::Valid)
        .start()
        .await;
    let conf = Conf::new(&pki, hop.addr.to_string(), "      default: verify\n");
    let sidecar = start_with(&conf, &ours).await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    quit(client).await;
    let s = hop.next_session().await;
    assert!(s.tls.is_some(), "delivered over TLS");
    assert_eq!(s.messages[0].data, BODY_AT_HOP);
    assert_eq!(plain(&s.plaintext), "EHLO mx.test\r\nSTARTTLS\r\n");
    assert_eq!(
        plain(&s.encrypted),
        "EHLO mx.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
         Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n"
    );
}

// ---- on_failure and enforce ----------------------------------------------------------------

#[tokio::test]
async fn bounce_refuses_with_550_5_7_5() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for (kind, text, reason) in [
        (
            Kind::NoStartTls,
            "127.0.0.1 did not offer STARTTLS",
            "no_starttls",
        ),
        (
            Kind::Tls(Cert::Untrusted),
            "certificate of 127.0.0.1 did not verify (untrusted issuer)",
            "certificate_untrusted",
        ),
    ] {
        let hop = next_hop(&pki, kind, false).await;
        let policy = "      default: verify\n      on_failure: bounce\n";
        let sidecar = start_with(&Conf::new(&pki, hop.addr.to_string(), policy), &ours).await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, eod) = send(&mut client, "b@y.test").await;
        assert_eq!(
            rcpt,
            format!("550 5.7.5 TLS policy verify for y.test not met: {text}\r\n")
        );
        assert_eq!(eod, None);
        // A second recipient of the domain in the transaction gets the same answer without a
        // second attempt.
        assert_eq!(
            client.cmd("RCPT TO:<c@y.test>").await,
            format!("550 5.7.5 TLS policy verify for y.test not met: {text}\r\n")
        );
        quit(client).await;
        assert!(hop.next_session().await.messages.is_empty());
        assert_eq!(hop.accepted(), 1, "{kind:?}: one attempt");
        let mut want = vec![
            m::rejection(reason, true, 1),
            m::next_hop_failures("policy", 1),
        ];
        if matches!(kind, Kind::Tls(_)) {
            want.push(m::handshake_ok(1));
        }
        assert_series(&sidecar, &want, &format!("bounce, {kind:?}")).await;
    }
}

/// `enforce: false`: every failure is reported (enforced="false") and the mail delivered as
/// `may` would; not counted as domain-secure (the default level here, so domain="other").
#[tokio::test]
async fn audit_mode_delivers_as_may_and_counts_enforced_false() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for kind in KINDS {
        let cell = format!("audit, {kind:?}");
        let hop = next_hop(&pki, kind, true).await;
        let policy = "      default: domain-secure\n      enforce: false\n";
        let sidecar = start_with(&Conf::new(&pki, hop.addr.to_string(), policy), &ours).await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, eod) = send(&mut client, "b@y.test").await;
        assert_eq!(rcpt, "250 2.1.5 Ok\r\n", "{cell}");
        assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"), "{cell}");
        quit(client).await;
        // Audit: delivered as `may` would, over TLS when the next hop has it.
        let over_tls = !matches!(kind, Kind::NoStartTls | Kind::FailHandshake);
        let mut want = vec![m::messages("accepted", over_tls, 1)];
        let first = hop.next_session().await;
        let reason = match expected("domain-secure", kind) {
            Outcome::Refused { reason, .. } => Some(reason),
            _ => None,
        };
        match kind {
            Kind::NoStartTls => assert_plain_delivery(&first, &cell),
            Kind::FailHandshake => {
                assert_eq!(first.end, End::ServerClosed, "{cell}");
                assert_plain_delivery(&hop.next_session().await, &cell);
                want.push(m::handshake_error(1));
            }
            Kind::Tls(cert) => {
                assert_eq!(plain(&first.encrypted), delivery(&["b@y.test"]), "{cell}");
                assert_eq!(first.messages, delivered(&["b@y.test"]), "{cell}");
                want.push(m::handshake_ok(1));
                if cert == Cert::Valid {
                    // Met: a domain-secure delivery like any other.
                    want.push(m::ds_sent("other", 1));
                }
            }
        }
        if let Some(reason) = reason {
            want.push(m::rejection(reason, false, 1));
            want.push(m::ds_failure("other", reason, 1));
        }
        let sessions = if kind == Kind::FailHandshake { 2 } else { 1 };
        assert_eq!(hop.accepted(), sessions, "{cell}");
        assert_series(&sidecar, &want, &cell).await;
    }
}

// ---- domain-secure is mutual TLS -----------------------------------------------------------

/// The outbound metrics of one domain-secure attempt that ended as a failed handshake (sorted).
fn ds_handshake_failed() -> Vec<String> {
    let mut want = vec![
        m::handshake_ok(1),
        m::rejection("handshake_failed", true, 1),
        m::next_hop_failures("policy", 1),
        m::ds_failure("y.test", "handshake_failed", 1),
    ];
    want.sort();
    want
}

/// What a domain-secure relay to `hop` (y.test listed `domain-secure`) answers to the RCPT, the
/// next hop's one session, and the outbound metrics.
async fn domain_secure_attempt(
    pki: &NextHopPki,
    ours: &Leaf,
    hop: &RunningNextHop,
) -> (String, Session, Vec<String>) {
    let policy = "      default: may\n      domains:\n        y.test: domain-secure\n";
    let sidecar = start_with(&Conf::new(pki, hop.addr.to_string(), policy), ours).await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    assert_eq!(eod, None, "{rcpt}");
    assert_eq!(
        client.cmd("DATA").await,
        "554 5.5.1 No valid recipients\r\n"
    );
    quit(client).await;
    let session = hop.next_session().await;
    assert_eq!(hop.accepted(), 1, "one attempt");
    let metrics = support::series(&support::scrape(&sidecar).await);
    (rcpt, session, metrics)
}

/// SPEC §3: `domain-secure` is `verify` with our certificate presented. A next hop with a
/// valid certificate that does not ask for a client certificate gets none (a TLS client
/// sends one only when asked): the level is not met, the RCPT is refused saying why, QUIT is
/// all that crosses the session, and it is a domain-secure session failure, never a message
/// sent.
#[tokio::test]
async fn domain_secure_is_unmet_when_the_next_hop_does_not_ask_for_our_certificate() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder()
        .host("y.test")
        .starttls(&pki, Cert::Valid)
        .client_auth(ClientAuth::None)
        .start()
        .await;
    let (rcpt, s, metrics) = domain_secure_attempt(&pki, &ours, &hop).await;
    assert_eq!(
        rcpt,
        "450 4.7.5 TLS policy domain-secure for y.test not met: 127.0.0.1 did not ask for our \
         client certificate\r\n"
    );
    assert_eq!(plain(&s.plaintext), "EHLO mx.test\r\nSTARTTLS\r\n");
    let tls = s.tls.as_ref().expect("the handshake completed");
    assert!(tls.client_chain.is_empty(), "no certificate of ours went");
    assert_eq!(plain(&s.encrypted), "QUIT\r\n", "RFC 3207 §4.1");
    assert!(s.messages.is_empty());
    assert_eq!(metrics, ds_handshake_failed());
}

/// TLS 1.3: a next hop that requires a client certificate and refuses ours (it trusts another
/// CA) completes the handshake on our side first and sends its alert after: a failed TLS
/// handshake for the policy (`450 4.7.5`, reason handshake_failed, a domain-secure session
/// failure), not an unreachable next hop (`451 4.4.1`, kind closed).
#[tokio::test]
async fn domain_secure_certificate_refused_after_a_tls13_handshake_is_a_tls_failure() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder()
        .host("y.test")
        .starttls(&pki, Cert::Valid)
        .client_auth(ClientAuth::Require(pki.revoking_ca_file.clone()))
        .tls_versions(&[&rustls::version::TLS13])
        .start()
        .await;
    let (rcpt, s, metrics) = domain_secure_attempt(&pki, &ours, &hop).await;
    assert_eq!(
        rcpt,
        "450 4.7.5 TLS policy domain-secure for y.test not met: TLS handshake with 127.0.0.1 \
         failed: alert unknown_ca\r\n"
    );
    assert_eq!(plain(&s.plaintext), "EHLO mx.test\r\nSTARTTLS\r\n");
    assert!(
        matches!(&s.end, End::HandshakeFailed(_)),
        "the next hop refused our certificate: {:?}",
        s.end
    );
    assert!(s.messages.is_empty());
    assert_eq!(metrics, ds_handshake_failed());
}

// ---- end-to-end acknowledgement ------------------------------------------------------------

/// The client's end-of-data reply is the next hop's, whatever it is; only a 2xx counts as
/// accepted.
#[tokio::test]
async fn end_of_data_reply_is_the_next_hops() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for (eod, result) in [
        ("451 4.3.0 Next hop says try again later", "rejected"),
        ("554 5.7.1 Next hop refuses this message", "rejected"),
        (
            "550-5.7.1 Next hop refuses\r\n550 5.7.1 on two lines",
            "rejected",
        ),
        ("250 2.0.0 Ok: queued as NEXT1234", "accepted"),
    ] {
        let hop = NextHop::builder()
            .host("y.test")
            .starttls(&pki, Cert::Valid)
            .eod_reply(eod)
            .start()
            .await;
        let conf = Conf::new(&pki, hop.addr.to_string(), "      default: verify\n");
        let sidecar = start_with(&conf, &ours).await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, got) = send(&mut client, "b@y.test").await;
        assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
        assert_eq!(got, Some(format!("{eod}\r\n")));
        // The session goes on.
        assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
        quit(client).await;
        let s = hop.next_session().await;
        assert_eq!(plain(&s.encrypted), delivery(&["b@y.test"]), "{eod}");
        assert_series(
            &sidecar,
            &[m::messages(result, true, 1), m::handshake_ok(1)],
            eod,
        )
        .await;
    }
}

/// Nothing reaches the legacy MTA before the next hop has answered the end of data.
#[tokio::test]
async fn no_reply_to_the_end_of_data_before_the_next_hops() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = HeldHop::start().await;
    let conf = Conf::new(&pki, hop.addr.to_string(), "      default: may\n");
    let sidecar = start_with(&conf, &ours).await;
    let mut client = legacy(&sidecar).await;
    assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, "250 2.0.0 Ok\r\n");
    assert_eq!(client.cmd("DATA").await, "354 go ahead\r\n");
    client.send(BODY).await;
    tokio::time::timeout(common::T, hop.at_end_of_data.notified())
        .await
        .expect("the end of data reached the next hop");
    assert!(
        silent_for(&mut client, Duration::from_millis(500)).await,
        "a reply to the end of data before the next hop's"
    );
    hop.release();
    assert_eq!(client.reply().await, "250 2.0.0 Ok: held\r\n");
    quit(client).await;
    assert_eq!(
        hop.received(),
        format!(
            "EHLO mx.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n{}QUIT\r\n",
            plain(BODY)
        )
    );
    assert_series(&sidecar, &[m::messages("accepted", false, 1)], "held").await;
}

/// The next hop closes in the middle of the body: `451 4.4.2`, never 250, counted as failed;
/// the session goes on. Once with the body all sent before the loss is seen, once with a body
/// still streaming (2 MB) when the next hop goes away.
#[tokio::test]
async fn next_hop_lost_mid_message_is_451_4_4_2() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let big: Vec<u8> = {
        let mut b = b"Subject: big\r\n\r\n".to_vec();
        for i in 0..40_000 {
            b.extend_from_slice(format!("line {i:06} {}\r\n", "x".repeat(40)).as_bytes());
        }
        b.extend_from_slice(b".\r\n");
        b
    };
    for (what, body) in [("small body", BODY.to_vec()), ("2 MB body", big)] {
        let hop = NextHop::builder()
            .host("y.test")
            .starttls(&pki, Cert::Valid)
            .drop_after(5)
            .start()
            .await;
        let conf = Conf::new(&pki, hop.addr.to_string(), "      default: encrypt\n");
        let sidecar = start_with(&conf, &ours).await;
        let mut client = legacy(&sidecar).await;
        assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
        assert_eq!(
            client.cmd("DATA").await,
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        client.send(&body).await;
        assert_eq!(
            client.reply().await,
            "451 4.4.2 Next hop lost mid-message, try again later\r\n",
            "{what}"
        );
        assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n", "{what}");
        // A new transaction can start.
        assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
        assert_eq!(client.cmd("RSET").await, "250 2.0.0 OK\r\n");
        quit(client).await;
        let s = hop.next_session().await;
        assert_eq!(s.end, End::Dropped, "{what}");
        assert!(s.messages.is_empty(), "{what}");
        assert_series(
            &sidecar,
            &[
                m::messages("failed", true, 1),
                m::handshake_ok(1),
                m::next_hop_failures("closed", 1),
            ],
            what,
        )
        .await;
    }
}

/// A next hop that stops reading in the middle of a message: the body's write to it gives
/// up at the write deadline (the command timeout), the legacy MTA gets 451 at the end of its
/// data, and its QUIT closes the session at once. The stalled connection was reset when its
/// write failed: a close_notify on it would wait out a second deadline behind the same full
/// buffers, and a graceful close would still deliver the cut body's queued bytes.
#[tokio::test]
async fn a_stalled_next_hop_is_reset_at_its_write_deadline() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder()
        .host("y.test")
        .starttls(&pki, Cert::Valid)
        .stall_after(5)
        .start()
        .await;
    let policy = "      default: encrypt\n      timeouts: {command: 2s}\n";
    let conf = Conf::new(&pki, hop.addr.to_string(), policy);
    let sidecar = start_with(&conf, &ours).await;
    let mut client = legacy(&sidecar).await;
    assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        client.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    // More than the buffers between the sidecar and the stalled next hop hold.
    let line = format!("{}\r\n", "x".repeat(78));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < 24 << 20 {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b".\r\n");
    client.send(&body).await;
    assert_eq!(
        client.reply().await,
        "451 4.4.2 Next hop lost mid-message, try again later\r\n"
    );
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    let quit = std::time::Instant::now();
    assert!(client.closed().await, "the sidecar closes after QUIT");
    let waited = quit.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "closed {waited:?} after QUIT"
    );
}

/// Each RCPT gets the next hop's own reply (multi-line too), and DATA goes to the accepted
/// recipients only.
#[tokio::test]
async fn per_recipient_replies_are_passed_through() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder()
        .host("y.test")
        .starttls(&pki, Cert::Valid)
        .rcpt_reply("bad@y.test", "550 5.1.1 <bad@y.test>: no such user")
        .rcpt_reply(
            "full@y.test",
            "452-4.2.2 Mailbox full\r\n452 4.2.2 try later",
        )
        .start()
        .await;
    let conf = Conf::new(&pki, hop.addr.to_string(), "      default: verify\n");
    let sidecar = start_with(&conf, &ours).await;
    let mut client = legacy(&sidecar).await;
    // The refused one opens the next hop session.
    assert_eq!(
        client.cmd("RCPT TO:<bad@y.test>").await,
        "550 5.1.1 <bad@y.test>: no such user\r\n"
    );
    assert_eq!(
        client.cmd("RCPT TO:<good@y.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(
        client.cmd("RCPT TO:<full@y.test>").await,
        "452-4.2.2 Mailbox full\r\n452 4.2.2 try later\r\n"
    );
    assert_eq!(
        client.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    client.send(BODY).await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    quit(client).await;
    let s = hop.next_session().await;
    assert_eq!(
        plain(&s.encrypted),
        delivery(&["bad@y.test", "good@y.test", "full@y.test"])
    );
    assert_eq!(s.messages, delivered(&["good@y.test"]));
    assert_eq!(hop.accepted(), 1);
}

/// `backend_reply_seconds` times the next hop's replies, and nothing else: two transactions
/// of one legacy session, each a next hop session of its own (EHLO, MAIL, RCPT, DATA and the
/// end of data answered; the 221 to QUIT is not waited for), are ten replies. The second
/// session's greeting is not the reply to the first one's QUIT.
#[tokio::test]
async fn reply_latency_counts_the_next_hops_replies_only() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder().host("y.test").start().await;
    let conf = Conf::new(&pki, hop.addr.to_string(), "      default: none\n");
    let sidecar = start_with(&conf, &ours).await;
    let mut client = legacy(&sidecar).await;
    let delivered = (
        "250 2.1.5 Ok\r\n".to_owned(),
        Some("250 2.0.0 Ok: queued\r\n".to_owned()),
    );
    assert_eq!(send(&mut client, "b@y.test").await, delivered);
    assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(send(&mut client, "c@y.test").await, delivered);
    quit(client).await;
    for _ in 0..2 {
        assert_eq!(hop.next_session().await.messages.len(), 1);
    }
    let timed = sidecar
        .metrics
        .backend_reply_seconds
        .with_label_values(&["outbound"])
        .get_sample_count();
    assert_eq!(timed, 10);
}

// ---- the protocol log ----------------------------------------------------------------------

/// A domain-secure delivery logs the next hop's certificate (side=remote) and ours
/// (side=local), by the real binary.
#[tokio::test]
async fn protocol_log_shows_both_certificates() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = next_hop(&pki, Kind::Tls(Cert::Valid), true).await;
    let mut conf = Conf::new(
        &pki,
        hop.addr.to_string(),
        "      default: may\n      domains:\n        y.test: domain-secure\n",
    );
    conf.metrics = None;
    conf.top = format!(
        "log:\n  level: warn,smtp_sidecar::runtime=info\n  protocol_log: true\ncertificates:\n{}",
        ours.yaml_entry()
    );
    let sidecar = start_binary(&conf.yaml());
    let mut client = Client::connect(sidecar.addr("outbound").unwrap()).await;
    assert_eq!(client.reply().await, "220 mx.test ESMTP\r\n");
    assert!(client
        .cmd("EHLO legacy.test")
        .await
        .starts_with("250-mx.test\r\n"));
    assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    quit(client).await;
    let s = hop.next_session().await;
    assert_eq!(
        s.tls.unwrap().client_chain.first().map(|c| c.to_vec()),
        Some(ours.der.clone())
    );
    let log = sidecar.log();
    let certs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("smtp_sidecar::protocol") && l.contains("certificate"))
        .collect();
    let with = |side: &str| {
        certs
            .iter()
            .filter(|l| {
                l.contains(&format!("side=\"{side}\"")) || l.contains(&format!("side={side} "))
            })
            .copied()
            .collect::<Vec<&str>>()
    };
    let (local, remote) = (with("local"), with("remote"));
    assert_eq!(local.len(), 1, "ours, once:\n{log}");
    assert_eq!(remote.len(), 1, "the next hop's, once:\n{log}");
    assert!(local[0].contains("subject=\"CN=mx.test\""), "{}", local[0]);
    assert!(local[0].contains("sans=mx.test"), "{}", local[0]);
    let sha1 = format!("sha1={}", ours.info().sha1);
    assert!(local[0].contains(&sha1), "{sha1}: {}", local[0]);
    assert!(remote[0].contains("subject=\"CN=y.test\""), "{}", remote[0]);
    assert!(remote[0].contains("sans=y.test"), "{}", remote[0]);
    assert!(
        remote[0].contains("issuer=\"CN=Sidecar Test Root CA\""),
        "{}",
        remote[0]
    );
    assert!(log.contains("TLS established with the next hop"), "{log}");
}

// ---- parameters toward next hops with and without the extensions ----------------------------

/// DSN parameters (we offer DSN) reach a next hop that offers DSN unchanged; to one that does
/// not, they are left out (RFC 3461 §4.1: a relay to a non-DSN server drops them) and the
/// message is delivered all the same: on MAIL, on RCPT, and on both.
#[tokio::test]
async fn dsn_parameters_follow_the_next_hops_offer() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let (ret, notify) = (
        " RET=HDRS ENVID=abc",
        " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.test",
    );
    for (dsn, mail, rcpt) in [
        (true, ret, notify),
        (false, ret, ""),
        (false, "", notify),
        (false, ret, notify),
    ] {
        let case = format!("next hop DSN {dsn}, MAIL{mail}, RCPT{rcpt}");
        let mut extensions = vec!["PIPELINING", "SIZE 10240000", "8BITMIME"];
        if dsn {
            extensions.push("DSN");
        }
        let hop = NextHop::builder()
            .host("y.test")
            .extensions(&extensions)
            .start()
            .await;
        let conf = Conf::new(&pki, hop.addr.to_string(), "      default: may\n");
        let sidecar = start_with(&conf, &ours).await;
        let mut client = Client::connect(sidecar.addr("outbound").unwrap()).await;
        assert_eq!(client.reply().await, "220 mx.test ESMTP\r\n");
        assert!(client.cmd("EHLO legacy.test").await.contains("250-DSN\r\n"));
        let mail_line = format!("MAIL FROM:<a@x.test>{mail}");
        let rcpt_line = format!("RCPT TO:<b@y.test>{rcpt}");
        assert_eq!(client.cmd(&mail_line).await, "250 2.1.0 Ok\r\n", "{case}");
        assert_eq!(client.cmd(&rcpt_line).await, "250 2.1.5 Ok\r\n", "{case}");
        assert!(client.cmd("DATA").await.starts_with("354 "), "{case}");
        client.send(BODY).await;
        assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n", "{case}");
        quit(client).await;
        let s = hop.next_session().await;
        let (mail, rcpt) = if dsn {
            (mail_line, rcpt_line)
        } else {
            ("MAIL FROM:<a@x.test>".into(), "RCPT TO:<b@y.test>".into())
        };
        assert_eq!(
            plain(&s.plaintext),
            format!(
                "EHLO mx.test\r\n{mail}\r\n{rcpt}\r\nDATA\r\n{}QUIT\r\n",
                plain(BODY)
            ),
            "{case}"
        );
    }
}

/// RFC 3207 §4.2 on our side (SPEC §4): bytes a next hop sends after its `220` to STARTTLS
/// and before the handshake are never taken for anything; that connection is given up and
/// nothing is delivered through it.
#[tokio::test]
async fn bytes_after_the_next_hops_220_to_starttls_end_the_attempt() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hop = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut io = BufReader::new(tcp);
        let mut seen = String::new();
        io.get_mut()
            .write_all(b"220 evil.test ESMTP\r\n")
            .await
            .unwrap();
        loop {
            let mut line = String::new();
            if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return seen;
            }
            seen.push_str(&line);
            let reply: &[u8] = match line.get(..4).unwrap_or_default() {
                "EHLO" => b"250-evil.test\r\n250 STARTTLS\r\n",
                // One write: the 220 and a reply to a command not yet sent.
                "STAR" => b"220 2.0.0 Ready to start TLS\r\n250 2.1.0 injected\r\n",
                _ => b"250 2.0.0 Ok\r\n",
            };
            if io.get_mut().write_all(reply).await.is_err() {
                return seen;
            }
        }
    });
    let conf = Conf::new(&pki, addr.to_string(), "      default: encrypt\n");
    let sidecar = start_with(&conf, &ours).await;
    let want = "451 4.4.1 No next hop for y.test could be reached\r\n";
    rcpt_refused(&sidecar, "b@y.test", want).await;
    let seen = tokio::time::timeout(common::T, hop).await.unwrap().unwrap();
    assert_eq!(seen, "EHLO mx.test\r\nSTARTTLS\r\n");
    assert_series(
        &sidecar,
        &[m::next_hop_failures("protocol", 1)],
        "injection",
    )
    .await;
}
