//! The top of every message the backend receives: our Received header, whole. Nothing the
//! client sends, its HELO name or its body, can reopen or continue it (RFC 5322 §2.2.3,
//! §3.2.2): a backend trusts that header as the one hop it did not write itself. Byte-exact,
//! in memory.

use crate::testing::{test_config, Harness};

/// Our Received header for the harness's client, after `EHLO client.test` in plaintext.
const RECEIVED: &str = "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (smtp-sidecar) \
                        with ESMTP;\r\n\tTue, 24 Nov 2026 02:45:00 +0000\r\n";

fn with_received_header() -> Harness {
    let mut cfg = test_config();
    cfg.received_header = true;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h
}

#[test]
fn a_body_that_starts_with_white_space_cannot_continue_our_header() {
    // In the read after the 354, in pieces, pipelined behind DATA, with a stuffed dot the
    // backend removes: the client's first line follows an empty line, so it is body.
    let fake = " (client certificate verified: subject \"CN=mail.bank.test\")\r\n";
    let cases: [(&[&str], &str); 4] = [
        (&[fake, "Subject: x\r\n\r\nhi\r\n.\r\n"], fake),
        (
            &["", "\t", "by trusted.test\r\n.\r\n"],
            "\tby trusted.test\r\n",
        ),
        (&[".", " x\r\n", ".\r\n"], ". x\r\n"),
        (&[" ", "\r\n.\r\n"], " \r\n"),
    ];
    for (reads, first) in cases {
        let mut h = with_received_header();
        h.transaction();
        for read in reads {
            h.client_says(read.as_bytes());
        }
        let body: String = reads.concat();
        let rest = &body[first.len()..];
        assert_eq!(
            h.take_backend(),
            format!("{RECEIVED}\r\n{first}{rest}"),
            "{reads:?}"
        );
        h.backend_says(b"250 2.0.0 queued\r\n");
        assert_eq!(h.take_client(), "250 2.0.0 queued\r\n");
    }
    let mut h = with_received_header();
    h.envelope();
    h.client_says(b"DATA\r\n\tby trusted.test\r\n.\r\n");
    assert_eq!(h.take_backend(), "DATA\r\n");
    h.backend_says(b"354 go\r\n");
    assert_eq!(
        h.take_backend(),
        format!("{RECEIVED}\r\n\tby trusted.test\r\n.\r\n")
    );
}

#[test]
fn an_ordinary_or_empty_body_follows_our_header_directly() {
    for body in [
        "Subject: x\r\n\r\nhi\r\n.\r\n",
        ".\r\n",
        "\r\n body\r\n.\r\n",
    ] {
        let mut h = with_received_header();
        h.transaction();
        h.client_says(body.as_bytes());
        assert_eq!(h.take_backend(), format!("{RECEIVED}{body}"));
    }
}

#[test]
fn the_helo_name_cannot_reopen_the_from_clause() {
    // `(` would open a comment swallowing the address, `by`, `with` and the date; the others
    // would open a domain literal or a quoted string, escape, or end the clause.
    for (helo, written) in [
        ("a(", "a?"),
        ("a)b;c", "a?b?c"),
        ("\"a\\", "?a?"),
        ("[192.0.2.1", "?192.0.2.1"),
        ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    ] {
        let mut cfg = test_config();
        cfg.received_header = true;
        let mut h = Harness::greeted(cfg);
        let ehlo = format!("EHLO {helo}\r\n");
        h.exchange(&ehlo, &ehlo, "250 legacy.test\r\n");
        h.transaction();
        h.client_says(b"x\r\n.\r\n");
        let header = RECEIVED.replace("client.test", written);
        assert_eq!(h.take_backend(), format!("{header}x\r\n.\r\n"), "{helo:?}");
    }
}
