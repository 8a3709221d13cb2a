//! Interoperability with Postfix's real `smtpd` as the legacy backend: the real `smtp-sidecar`
//! binary in front of a Postfix instance of its own (tests/common/postfix_mta.rs,
//! [`PostfixMta::backend`]) that delivers y.test to a Maildir. What Postfix stores is what the
//! client sent, LF line ends, under the trace header fields Postfix adds (Return-Path,
//! Delivered-To, Received), which are checked apart. The client is the tests' own, on STARTTLS
//! (tests/common/legacy_backend.rs). Postfix must be started as root; a missing Postfix is a
//! failure naming its Debian package, never a skip.
//!
//! - delivery: leading dots unstuffed exactly once; Postfix's STARTTLS and XCLIENT never shown
//!   to the client, the hop to it plaintext (`with ESMTP`, no TLS in its log);
//! - smuggling under `bare_newlines: reject` and `normalize`, as for aiosmtpd;
//! - the fixture's own STARTTLS, implicit TLS and XCLIENT, driven directly, for the tests of
//!   the sidecar's encrypted hop and XCLIENT;
//! - a Postfix sending MTA (the legacy role) relaying through the sidecar to this backend: two
//!   instances side by side, the message stored byte for byte;
//! - the sidecar's encrypted hop (STARTTLS and implicit, verified) with XCLIENT, the client's
//!   address from a PROXY header recorded by Postfix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/postfix_mta.rs"]
mod postfix_mta;

use std::net::SocketAddr;

use common::binary::{start_binary, Binary};
use common::legacy_backend::{
    assert_bytes, ehlo, lf, replies, smuggling_attempts, starttls_session, stuffed, transaction,
    FROM, MESSAGE, NORMALIZED, REFUSED, SMUGGLES, TO,
};
use common::pki::{implicit_presented, starttls_presented, Leaf, Pki, Spec};
use common::{config_yaml, Client};
use postfix_mta::{received_from, split_trace, PostfixMta, SmtpdOptions};

const HOSTNAME: &str = "legacy.test";
const DOMAIN: &str = "y.test";

/// Postfix's EHLO reply (but for its name, the first line), and what the client is shown of it
/// through the sidecar: no VRFY, ETRN, CHUNKING, XCLIENT or Postfix's STARTTLS.
const EHLO: &str = "250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
                    250-STARTTLS\r\n250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN \
                    DESTADDR DESTPORT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n\
                    250-SMTPUTF8\r\n250 CHUNKING\r\n";
const EHLO_PLAIN: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
                          250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n\
                          250 STARTTLS\r\n";
const EHLO_TLS: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
                        250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n";

/// Replies to a transaction Postfix accepts; its queue id, which follows the last, is cut off
/// by [`without_queue_ids`].
const ACCEPTED: [&str; 4] = [
    "250 2.1.0 Ok\r\n",
    "250 2.1.5 Ok\r\n",
    "354 End data with <CR><LF>.<CR><LF>\r\n",
    "250 2.0.0 Ok: queued as ",
];

fn without_queue_ids(replies: &[String]) -> Vec<&str> {
    let queued = ACCEPTED[3];
    replies
        .iter()
        .map(|r| match r.starts_with(queued) {
            true => queued,
            false => r.as_str(),
        })
        .collect()
}

/// The backend with everything on: STARTTLS and implicit TLS with a certificate for
/// legacy.test from a test CA, XCLIENT.
fn full_backend(pki: &Pki) -> (PostfixMta, Leaf) {
    let leaf = pki.leaf("legacy", Spec::ca(&[HOSTNAME]));
    let options = SmtpdOptions {
        tls: Some((&leaf.cert, &leaf.key)),
        implicit_tls: true,
        xclient: true,
    };
    (PostfixMta::backend(HOSTNAME, DOMAIN, &options), leaf)
}

fn local(port: Option<u16>) -> SocketAddr {
    ([127, 0, 0, 1], port.unwrap()).into()
}

/// [`full_backend`] and the sidecar with `policy` in front of it (dropped first).
struct Setup {
    sidecar: Binary,
    backend: PostfixMta,
    _pki: Pki,
}

impl Setup {
    fn start(policy: &str) -> Setup {
        let pki = Pki::new("postfix-backend-pki");
        let (backend, _) = full_backend(&pki);
        let sidecar = start_binary(&config_yaml(local(backend.port), "starttls", policy));
        Setup {
            sidecar,
            backend,
            _pki: pki,
        }
    }

    async fn session(&self, data: &[Vec<u8>]) -> common::legacy_backend::Session {
        starttls_session(self.sidecar.addr("inbound").unwrap(), data).await
    }
}

/// The trace fields Postfix put on a message from the shared client over a plaintext hop
/// (`with ESMTP`; the queue id and the date vary), the rest of `stored` being `message`.
fn assert_stored(stored: &[u8], message: &[u8]) {
    let (trace, rest) = split_trace(stored);
    assert_bytes(&rest, &lf(message));
    let lines: Vec<&str> = trace.lines().collect();
    let head = [
        "Return-Path: <a@x.test>",
        "X-Original-To: b@y.test",
        "Delivered-To: b@y.test",
        "Received: from client.test (unknown [127.0.0.1])",
    ];
    assert!(lines.len() == 6 && lines[..4] == head, "{trace}");
    let id = lines[4].strip_prefix("\tby legacy.test (Postfix) with ESMTP id ");
    let id = id.is_some_and(|id| id.bytes().all(|b| b.is_ascii_alphanumeric()));
    let date = lines[5].strip_prefix("\tfor <b@y.test>; ");
    assert!(
        id && date.is_some_and(|d| d.ends_with(" +0000 (UTC)")),
        "{trace}"
    );
}

#[tokio::test]
async fn postfix_backend_starttls_delivery() {
    let setup = Setup::start("");
    // The backend offers STARTTLS and XCLIENT itself: what the client must never be shown.
    let direct = ehlo(local(setup.backend.port)).await;
    assert_eq!(direct, format!("250-{HOSTNAME}\r\n{EHLO}"));

    let session = setup.session(&[stuffed(MESSAGE)]).await;
    assert_eq!(session.ehlo_plain, EHLO_PLAIN);
    assert_eq!(session.ehlo_tls, EHLO_TLS);
    let expected = replies(ACCEPTED, &[ACCEPTED[3]]);
    assert_eq!(without_queue_ids(&session.replies), expected);

    let stored = setup.backend.delivered_when(1);
    assert_stored(&stored[0], MESSAGE);
    let log = setup.backend.maillog();
    assert!(!log.contains("TLS connection established"), "{log}");
}

#[tokio::test]
async fn postfix_backend_smuggling_refused() {
    let setup = Setup::start("      bare_newlines: reject\n");
    let mut data = smuggling_attempts();
    data.push(stuffed(MESSAGE));
    let session = setup.session(&data).await;
    let ends = [REFUSED, REFUSED, REFUSED, ACCEPTED[3]];
    assert_eq!(
        without_queue_ids(&session.replies),
        replies(ACCEPTED, &ends)
    );
    // Only the clean message: nothing of the refused ones, smuggled or not.
    let stored = setup.backend.delivered_when(1);
    assert_stored(&stored[0], MESSAGE);
    let log = setup.backend.maillog();
    assert_eq!(log.matches(": message-id=").count(), 1, "{log}");
}

#[tokio::test]
async fn postfix_backend_smuggling_normalized_into_body() {
    let setup = Setup::start("      bare_newlines: normalize\n");
    let session = setup.session(&smuggling_attempts()).await;
    let ends = [ACCEPTED[3]; SMUGGLES.len()];
    assert_eq!(
        without_queue_ids(&session.replies),
        replies(ACCEPTED, &ends)
    );
    for stored in setup.backend.delivered_when(SMUGGLES.len()) {
        assert_stored(&stored, NORMALIZED);
    }
}

/// The fixture itself, for the tests of the sidecar's encrypted hop and XCLIENT: its
/// certificate on STARTTLS and on implicit TLS, XCLIENT on the latter, and what the Received
/// header then says.
#[tokio::test]
async fn postfix_backend_fixture_tls_and_xclient() {
    let pki = Pki::new("postfix-backend-pki");
    let (backend, leaf) = full_backend(&pki);
    let implicit = local(backend.implicit_port);
    assert_eq!(
        starttls_presented(local(backend.port), None).await,
        leaf.der
    );
    assert_eq!(implicit_presented(implicit, None).await, leaf.der);

    let greeting = "220 legacy.test ESMTP Postfix\r\n";
    let mut c = Client::connect_implicit(implicit).await;
    assert_eq!(c.reply().await, greeting);
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("250-XCLIENT ") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let xclient = "XCLIENT NAME=mail.example.net ADDR=192.0.2.7 HELO=helo.example.net";
    assert_eq!(c.cmd(xclient).await, greeting);
    assert!(c
        .cmd("EHLO client.test")
        .await
        .starts_with("250-legacy.test\r\n"));
    let replies = transaction(&mut c, &stuffed(MESSAGE)).await;
    assert_eq!(without_queue_ids(&replies), ACCEPTED);

    let stored = backend.delivered_when(1);
    let from = received_from(&stored[0]);
    assert_eq!(from, "client.test (mail.example.net [192.0.2.7])");
    let (trace, message) = split_trace(&stored[0]);
    assert_bytes(&message, &lf(MESSAGE));
    assert!(trace.contains("(Postfix) with ESMTPS id "), "{trace}");
    let log = backend.maillog();
    assert!(log.contains("TLS connection established"), "{log}");
}

/// A Postfix sending MTA (the legacy role, injecting with its sendmail) relays through the
/// sidecar to the Postfix backend: two instances side by side, the message stored as written.
#[test]
fn postfix_sending_mta_through_sidecar_to_postfix_backend() {
    let setup = Setup::start("");
    let legacy = PostfixMta::legacy("legacy.x.test", setup.sidecar.addr("inbound").unwrap());
    legacy.sendmail(FROM, TO, &lf(MESSAGE));
    let stored = setup.backend.delivered_when(1);
    let (trace, message) = split_trace(&stored[0]);
    assert_bytes(&message, &lf(MESSAGE));
    let from = received_from(&stored[0]);
    assert_eq!(from, "legacy.x.test (unknown [127.0.0.1])", "{trace}");
    let pickup = "\nReceived: by legacy.x.test (Postfix, from userid 0)\n\tid ";
    assert!(trace.contains(pickup), "{trace}");
}

/// The sidecar's encrypted hop and XCLIENT against Postfix (`smtpd_authorized_xclient_hosts`),
/// STARTTLS and implicit TLS, each verified against the test CA and the server's IP address,
/// also on the connection that replaces one after a refused message.
/// The client comes through a PROXY header as 192.0.2.7: Postfix records that address (from
/// XCLIENT) and the client's own HELO name, and the hop as TLS (`with ESMTPS`).
#[tokio::test]
async fn sidecar_encrypted_hop_and_xclient_to_postfix() {
    let pki = Pki::new("postfix-hop-pki");
    let ca = pki.dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let leaf = pki.leaf("legacy", Spec::ca(&[HOSTNAME, "127.0.0.1"]));
    let options = SmtpdOptions {
        tls: Some((&leaf.cert, &leaf.key)),
        implicit_tls: true,
        xclient: true,
    };
    let backend = PostfixMta::backend(HOSTNAME, DOMAIN, &options);
    for (n, (tls, port)) in [
        ("starttls", backend.port),
        ("implicit", backend.implicit_port),
    ]
    .into_iter()
    .enumerate()
    {
        let sidecar = start_binary(&format!(
            "hostname: mx.test\n\
             shutdown_grace: 2s\n\
             trust: {{system_roots: false, ca_files: [\"{ca}\"]}}\n\
             listeners:\n\
             \x20 - name: inbound\n\
             \x20   mode: terminate\n\
             \x20   listen: 127.0.0.1:0\n\
             \x20   proxy_protocol: true\n\
             \x20   backend:\n\
             \x20     servers: [\"{server}\"]\n\
             \x20     tls: {tls}\n\
             \x20     xclient: true\n\
             \x20     health_check_interval: 1h\n\
             \x20   policy:\n\
             \x20     received_header: false\n",
            ca = ca.display(),
            server = local(port),
        ));
        let mut c = Client::connect(sidecar.addr("inbound").unwrap()).await;
        c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n").await;
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(!ehlo.contains("XCLIENT"), "{tls}: {ehlo}");
        // A refused message first: the backend connection is replaced, and the new one is
        // encrypted and given XCLIENT again before the next message.
        let refused = transaction(&mut c, &smuggling_attempts()[0]).await;
        assert_eq!(refused[3], REFUSED, "{tls}");
        let replies = transaction(&mut c, &stuffed(MESSAGE)).await;
        assert_eq!(without_queue_ids(&replies), ACCEPTED, "{tls}");
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye\r\n");

        let stored = backend.delivered_when(n + 1);
        let stored = &stored[n];
        assert_eq!(
            received_from(stored),
            "client.test (unknown [192.0.2.7])",
            "{tls}"
        );
        let (trace, message) = split_trace(stored);
        assert_bytes(&message, &lf(MESSAGE));
        assert!(
            trace.contains("(Postfix) with ESMTPS id "),
            "{tls}: {trace}"
        );
        let log = backend.maillog();
        // Two connections per round: the one the refused message went over, and its
        // replacement.
        assert_eq!(
            log.matches("TLS connection established from unknown[127.0.0.1]")
                .count(),
            2 * (n + 1),
            "{tls}: {log}"
        );
    }
}
