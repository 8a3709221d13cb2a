//! Originate mode with real software on both sides: Debian's Postfix as the legacy MTA relays
//! to the real `smtp-sidecar` binary as its smart host, in plaintext (`relayhost =
//! [127.0.0.1]:<sidecar>`, `smtp_tls_security_level = none`); the sidecar's originate listener
//! delivers to a fixed next hop that is a second Postfix, its `smtpd` offering STARTTLS
//! (`smtpd_tls_security_level = may`) with a certificate from the test PKI and delivering
//! `y.test` to a Maildir. Both Postfix instances run under scratch directories of their own
//! (tests/common/postfix_mta.rs); the sidecar trusts the test root CA only.
//!
//! - `verify` with a certificate for y.test issued by the trusted CA: the message arrives byte
//!   for byte, over TLS (the next hop's Received header says ESMTPS, its log the TLS session),
//!   and the legacy queue is empty.
//! - `verify` with a self-signed certificate (untrusted issuer) or one for another name: the
//!   sidecar answers the RCPT with `450 4.7.5`, the legacy Postfix defers the message with that
//!   reason in its queue (also after a forced retry), and nothing reaches the next hop. Postfix
//!   pipelines MAIL, RCPT and DATA, so the sidecar must also answer the DATA queued behind the
//!   refused RCPT at once: the message has to leave Postfix's active queue within 10 s, well
//!   before Postfix would give up waiting (`smtp_data_init_timeout`, 15 s here).
//! - `encrypt` with the self-signed certificate: delivered (the certificate is not checked),
//!   the control for the two above.
//!
//! Everything listens on 127.0.0.1 only; every wait has a deadline. A missing Postfix is a
//! failure naming its Debian package, never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/postfix_mta.rs"]
mod postfix_mta;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::binary::{start_binary, Binary};
use common::pki::{Pki, Spec};
use common::process::free_port;
use postfix_mta::{metric, scrape_until, text, PostfixMta, POSTQUEUE, WAIT};

/// The recipient domain, and the names the three Postfix-side hosts go by.
const DOMAIN: &str = "y.test";
const NEXT_HOP_NAME: &str = "mx.y.test";
const LEGACY_NAME: &str = "legacy.x.test";
const SENDER: &str = "alice@x.test";
const RECIPIENT: &str = "bob@y.test";

/// Which certificate the next hop's smtpd presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HopCert {
    /// For y.test and mx.y.test, issued by the trusted test root CA.
    Valid,
    /// For y.test and mx.y.test, self-signed: no trusted issuer.
    SelfSigned,
    /// For mx.other.test only, issued by the trusted test root CA.
    WrongName,
}

/// The three parties, dropped in reverse order of their start: the legacy Postfix first (so
/// that it does not retry into a stopped sidecar), then the sidecar, then the next hop.
struct Chain {
    legacy: PostfixMta,
    sidecar: Binary,
    metrics: u16,
    next_hop: PostfixMta,
    _pki: Pki,
}

impl Chain {
    /// The next hop with `cert`, the sidecar delivering to it with `level` for y.test (`may`
    /// for every other domain, failures deferred), the legacy Postfix relaying to the sidecar.
    fn start(cert: HopCert, level: &str) -> Chain {
        let pki = Pki::new("originate-postfix-pki");
        let ca_file = pki.dir.0.join("root.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let leaf = match cert {
            HopCert::Valid => pki.leaf("next-hop", Spec::ca(&[DOMAIN, NEXT_HOP_NAME])),
            HopCert::SelfSigned => {
                pki.leaf("next-hop", Spec::ca(&[DOMAIN, NEXT_HOP_NAME]).self_signed())
            }
            HopCert::WrongName => pki.leaf("next-hop", Spec::ca(&["mx.other.test"])),
        };
        let next_hop = PostfixMta::next_hop(NEXT_HOP_NAME, DOMAIN, &leaf.cert, &leaf.key);
        let hop_port = next_hop.port.unwrap();

        let metrics = free_port();
        let yaml = format!(
            "hostname: mx.test\n\
             shutdown_grace: 2s\n\
             metrics:\n  listen: 127.0.0.1:{metrics}\n\
             log:\n  protocol_log: true\n\
             trust:\n  system_roots: false\n  ca_files: [\"{ca}\"]\n\
             listeners:\n\
             \x20 - name: outbound\n\
             \x20   mode: originate\n\
             \x20   listen: 127.0.0.1:0\n\
             \x20   next_hop: \"127.0.0.1:{hop_port}\"\n\
             \x20   policy:\n\
             \x20     received_header: false\n\
             \x20     default: may\n\
             \x20     domains:\n\
             \x20       {DOMAIN}: {level}\n\
             \x20     on_failure: defer\n",
            ca = ca_file.display(),
        );
        let sidecar = start_binary(&yaml);
        let relay = sidecar.addr("outbound").unwrap();
        let legacy = PostfixMta::legacy(LEGACY_NAME, relay);
        Chain {
            legacy,
            sidecar,
            metrics,
            next_hop,
            _pki: pki,
        }
    }

    /// The sidecar's log once it contains `wanted` (10 s at most): it logs just after
    /// writing what the client has already read.
    fn sidecar_log_when(&self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.sidecar.log();
            if log.contains(wanted) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A message as its author wrote it (LF line ends), unique per call: header fields Postfix
/// keeps as they are, and a body with what SMTP must carry exactly through two hops: leading
/// dots, a line of a single dot, white space at both ends, an empty line, a line of 900
/// octets, UTF-8 (sent as 8BITMIME).
fn message(tag: &str) -> (String, String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "originate-postfix-{tag}-{}-{}@x.test",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let head = format!(
        "From: Alice <{SENDER}>\n\
         To: Bob <{RECIPIENT}>\n\
         Subject: originate through Postfix {id}\n\
         Date: Tue, 01 Dec 2026 12:00:00 +0000\n\
         Message-ID: <{id}>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n"
    );
    let body = format!(
        "first line of {id}\n.leading dot\n..two dots\n.\n\ttab and trailing space \n\n\
         Gr\u{fc}\u{df}e an y.test\n{}\nlast line\n",
        "x".repeat(900)
    );
    (id, head, body)
}

/// The one message the next hop delivered ([`WAIT`] at most, then a moment for any other).
fn delivered(hop: &PostfixMta) -> String {
    let deadline = Instant::now() + WAIT;
    while hop.delivered().is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing delivered by the next hop after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let messages = hop.delivered();
    assert_eq!(messages.len(), 1, "{messages:?}");
    String::from_utf8(messages[0].clone()).unwrap()
}

/// Send one message through the chain and check it arrived over TLS, byte for byte.
fn delivers(chain: &Chain, tag: &str) -> String {
    let (id, head, body) = message(tag);
    chain
        .legacy
        .sendmail(SENDER, RECIPIENT, format!("{head}\n{body}").as_bytes());

    let data = delivered(&chain.next_hop);
    // The body exactly as written (Maildir keeps LF line ends): no dot left doubled or lost
    // on either hop, nothing rewrapped.
    let (stored_head, stored_body) = data.split_once("\n\n").unwrap();
    assert_eq!(stored_body, body, "{data}");
    // The next hop's own fields, then its Received header: from the sidecar's EHLO name,
    // over TLS (ESMTPS, the cipher), for the recipient.
    let first = format!(
        "Return-Path: <{SENDER}>\nX-Original-To: {RECIPIENT}\nDelivered-To: {RECIPIENT}\n\
         Received: from mx.test (localhost [127.0.0.1])\n\t(using TLSv1.3 with cipher "
    );
    assert!(stored_head.starts_with(&first), "{data}");
    assert!(
        stored_head.contains(&format!("\tby {NEXT_HOP_NAME} (Postfix) with ESMTPS id ")),
        "{data}"
    );
    assert!(
        stored_head.contains(&format!("\n\tfor <{RECIPIENT}>; ")),
        "{data}"
    );
    // Then the legacy Postfix's Received header, then the author's fields unchanged; no
    // other Received header (the sidecar adds none here).
    assert!(
        stored_head.contains(&format!(
            "\nReceived: by {LEGACY_NAME} (Postfix, from userid 0)\n\tid "
        )),
        "{data}"
    );
    assert!(stored_head.ends_with(head.trim_end_matches('\n')), "{data}");
    assert_eq!(data.matches("\nReceived: ").count(), 2, "{data}");
    assert_eq!(data.matches(&format!("Message-ID: <{id}>")).count(), 1);

    // The next hop: a TLS session from the sidecar, the message delivered to the Maildir.
    let hop_log = chain
        .next_hop
        .maillog_when("the delivery", |l| l.contains("status=sent"));
    assert!(
        hop_log.contains("TLS connection established from localhost[127.0.0.1]: TLSv1.3"),
        "{hop_log}"
    );
    assert!(
        hop_log.contains(&format!("to=<{RECIPIENT}>, relay=virtual")),
        "{hop_log}"
    );
    // The legacy Postfix: sent through the sidecar in plaintext, the next hop's 250 passed
    // back, its queue empty.
    let legacy_log = chain
        .legacy
        .maillog_when("status=sent", |l| l.contains("status=sent"));
    let relay = chain.sidecar.addr("outbound").unwrap();
    assert!(
        legacy_log.contains(&format!(
            "to=<{RECIPIENT}>, relay=127.0.0.1[127.0.0.1]:{}",
            relay.port()
        )),
        "{legacy_log}"
    );
    assert!(
        legacy_log.contains("status=sent (250 2.0.0 Ok: queued as "),
        "{legacy_log}"
    );
    assert!(
        !legacy_log.contains("TLS connection established"),
        "{legacy_log}"
    );
    assert_eq!(chain.legacy.queue(), "", "{legacy_log}");
    legacy_log
}

#[test]
fn postfix_relays_through_the_sidecar_to_postfix_over_verified_tls() {
    let chain = Chain::start(HopCert::Valid, "verify");
    delivers(&chain, "verify");

    // The sidecar: one client handshake to the next hop, no policy refusal, no failed
    // attempt; its protocol log names the next hop's certificate and its issuer.
    let handshakes = "smtp_sidecar_tls_handshakes_total{listener=\"outbound\",result=\"ok\",side=\"client\",version=\"TLSv1.3\"}";
    let metrics = scrape_until(chain.metrics, handshakes, "1");
    assert_eq!(
        metric(&metrics, handshakes).as_deref(),
        Some("1"),
        "{metrics}"
    );
    for refused in [
        "smtp_sidecar_policy_rejections_total{",
        "smtp_sidecar_next_hop_failures_total{",
    ] {
        assert!(
            metrics
                .lines()
                .filter(|l| l.starts_with(refused))
                .all(|l| l.ends_with(" 0")),
            "{metrics}"
        );
    }
    let log = chain.sidecar_log_when(" sans=y.test,mx.y.test ");
    assert!(
        log.contains("side=\"remote\" subject=\"CN=y.test\" issuer=\"CN=Sidecar Test Root CA\" "),
        "{log}"
    );
    assert!(log.contains(" sans=y.test,mx.y.test "), "{log}");
}

/// The legacy Postfix defers the message with the sidecar's `450 4.7.5` naming `why`, also
/// after a forced retry, and the next hop delivers nothing.
fn deferred(chain: &Chain, why: &str) {
    let (_, head, body) = message("deferred");
    chain
        .legacy
        .sendmail(SENDER, RECIPIENT, format!("{head}\n{body}").as_bytes());

    let reply = format!("450 4.7.5 TLS policy verify for {DOMAIN} not met: {why}");
    let reason = format!("host 127.0.0.1[127.0.0.1] said: {reply} (in reply to RCPT TO command)");
    let status = format!("status=deferred ({reason})");
    let log = chain
        .legacy
        .maillog_when("the deferral", |l| l.contains(&status));
    assert!(!log.contains("status=sent"), "{log}");
    // Deferred, with the sidecar's reply as the reason, once the delivery agent is done with
    // the session. Postfix pipelines MAIL, RCPT and DATA: the sidecar must answer the DATA
    // waiting behind the refused RCPT (554, no valid recipients) at once; until it does,
    // Postfix waits (smtp_data_init_timeout: 15 s here, 120 s by default) and the message
    // stays in the active queue.
    let in_time = Duration::from_secs(10);
    let is_deferred = |q: &str| q.contains("\"queue_name\": \"deferred\"");
    let queue = chain.legacy.queue_when(
        "deferred within 10 s of the 450 (the sidecar left Postfix's pipelined DATA unanswered?)",
        in_time,
        is_deferred,
    );
    assert_eq!(queue.lines().count(), 1, "{queue}");
    assert!(queue.contains("\"queue_name\": \"deferred\""), "{queue}");
    assert!(
        queue.contains(&format!("\"sender\": \"{SENDER}\"")),
        "{queue}"
    );
    assert!(
        queue.contains(&format!(
            "\"address\": \"{RECIPIENT}\", \"delay_reason\": \"{reason}\""
        )),
        "{queue}"
    );

    // A forced retry (not Postfix's backoff): deferred again the same way, still queued.
    let id = queue
        .split("\"queue_id\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let out = chain.legacy.command(POSTQUEUE, &["-i", &id], None);
    assert!(out.status.success(), "postqueue -i: {}", text(&out));
    let log = chain
        .legacy
        .maillog_when("the second deferral", |l| l.matches(&status).count() == 2);
    assert!(!log.contains("status=sent"), "{log}");
    let queue = chain.legacy.queue_when(
        "deferred again within 10 s (the sidecar left Postfix's pipelined DATA unanswered?)",
        in_time,
        is_deferred,
    );
    assert!(
        queue.contains("\"queue_name\": \"deferred\"") && queue.contains(&id),
        "{queue}"
    );

    // The sidecar reached the next hop, completed the handshake and judged the certificate,
    // twice; nothing was delivered there.
    let hop_log = chain.next_hop.maillog_when("two STARTTLS sessions", |l| {
        l.matches("disconnect from localhost[127.0.0.1]").count() >= 2
    });
    let established = "TLS connection established from localhost[127.0.0.1]: TLSv1.3";
    assert_eq!(hop_log.matches(established).count(), 2, "{hop_log}");
    assert!(!hop_log.contains("status=sent"), "{hop_log}");
    assert!(chain.next_hop.delivered().is_empty());
    let log = chain.sidecar_log_when(&reply);
    assert!(log.contains(&reply), "{log}");
}

#[test]
fn verify_failure_untrusted_certificate_is_deferred_by_postfix() {
    let chain = Chain::start(HopCert::SelfSigned, "verify");
    deferred(
        &chain,
        "certificate of 127.0.0.1 did not verify (untrusted issuer)",
    );
    let series = "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"outbound\",reason=\"certificate_untrusted\"}";
    let metrics = scrape_until(chain.metrics, series, "2");
    assert_eq!(metric(&metrics, series).as_deref(), Some("2"), "{metrics}");
}

#[test]
fn verify_failure_wrong_name_is_deferred_by_postfix() {
    let chain = Chain::start(HopCert::WrongName, "verify");
    deferred(
        &chain,
        "certificate of 127.0.0.1 is not valid for 127.0.0.1 or y.test",
    );
    let series = "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"outbound\",reason=\"name_mismatch\"}";
    let metrics = scrape_until(chain.metrics, series, "2");
    assert_eq!(metric(&metrics, series).as_deref(), Some("2"), "{metrics}");
}

#[test]
fn encrypt_delivers_despite_an_untrusted_certificate() {
    let chain = Chain::start(HopCert::SelfSigned, "encrypt");
    delivers(&chain, "encrypt");
}
