//! Property tests of the whole session: whatever a client sends, in whatever pieces, the
//! backend receives only canonical SMTP, and the client only well-formed replies.

use proptest::prelude::*;

use crate::data::{BareNewlines, LongLines};
use crate::proptest_support::{check_replies, piece};
use crate::testing::{check_backend_stream, test_config, AutoBackend, Harness};

/// The EHLO reply a deferred session knows ([`Harness::deferred`]): what [`AutoBackend`]
/// offers, so that what the client is offered before TLS is what it would have been.
const AUTO_EHLO: &str = "250-legacy.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n\
                         250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n";

fn drive(
    pieces: &[Vec<u8>],
    split: usize,
    cfg: crate::inbound::Config,
    deferred: bool,
) -> (AutoBackend, Vec<u8>) {
    let hop = cfg.hop.starttls;
    let mut h = match deferred {
        true => Harness::deferred(cfg, AUTO_EHLO),
        false => Harness::new(cfg),
    };
    if hop {
        h.hop_tls = Some(h.tls_info.clone());
    }
    let mut backend = AutoBackend::default();
    backend.hop = hop;
    backend.serve(&mut h);
    let input: Vec<u8> = pieces.concat();
    for chunk in input.chunks(split.max(1)) {
        if h.closed {
            break;
        }
        h.client_says(chunk);
        backend.serve(&mut h);
    }
    let client = h.client.to_vec();
    (backend, client)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn backend_sees_only_canonical_smtp(
        pieces in prop::collection::vec(piece(), 0..24),
        split in 1usize..64,
        normalize in any::<bool>(),
        auth_in_plaintext in any::<bool>(),
        reject_long in any::<bool>(),
        hop in any::<bool>(),
        deferred in any::<bool>(),
    ) {
        let mut cfg = test_config();
        // The encrypted hop and XCLIENT: setting up each backend connection changes nothing
        // of what it carries, and XCLIENT carries client HELO names as xtext only.
        cfg.hop = crate::inbound::Hop { starttls: hop, xclient: hop };
        cfg.max_message_size = 2000;
        cfg.auth_requires_tls = !auth_in_plaintext;
        cfg.bare_newlines = if normalize { BareNewlines::Normalize } else { BareNewlines::Reject };
        cfg.long_lines = if reject_long { LongLines::Reject } else { LongLines::Fold };
        let (backend, client) = drive(&pieces, split, cfg, deferred);
        for (i, conn) in backend.connections.iter().enumerate() {
            if let Err(e) = check_backend_stream(conn) {
                return Err(TestCaseError::fail(format!("connection {i}: {e}\n{:?}", String::from_utf8_lossy(conn))));
            }
        }
        if let Err(e) = check_replies(&client) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn the_checker_catches_what_it_must() {
    let long = [b"DATA\r\n".as_slice(), &[b'x'; 999], b"\r\n.\r\n"].concat();
    let aborted = [b"DATA\r\n".as_slice(), &[b'x'; 999]].concat();
    let bad: [&[u8]; 13] = [
        b"EHLO a\r\nXCLIENT HELO=a b\r\n",
        b"EHLO a\r\nXCLIENT ADDR=1 ADDR=2\r\n",
        b"EHLO a\r\nXCLIENT LOGIN=x\r\n",
        &long,
        &aborted,
        b"EHLO a\nMAIL FROM:<a@b>\r\n",
        b"EHLO a\r\nMAIL FROM: <a@b>\r\n",
        b"DATA\r\nbody\n.\r\n",
        b"DATA\r\nbo\0dy\r\n.\r\n",
        b"DATA\r\nbody\r\n.\r\nMAIL  FROM:<x@y>\r\n",
        b"EHLO a\r\nGARBAGE here\r\n",
        b"EHLO a\r\nMAIL FROM:<a@b> AUTH=ceo@b\r\n",
        b"EHLO a\r\nMAIL FROM:<a@b> SIZE=1 size=2\r\n",
    ];
    for stream in bad {
        assert!(
            check_backend_stream(stream).is_err(),
            "{:?}",
            String::from_utf8_lossy(stream)
        );
    }
    let good: &[u8] =
        b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n..x\r\n.\r\nDATA\r\n.\r\nQUIT\r\n";
    assert_eq!(check_backend_stream(good), Ok(()));
    let good: &[u8] = b"EHLO a\r\nAUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@b> AUTH=a@b\r\n";
    assert_eq!(check_backend_stream(good), Ok(()));
    // A SASL response that spells a verb is SASL data to the backend (found by the fuzzer).
    let good: &[u8] = b"EHLO a\r\nAUTH LOGIN\r\nsTARTTLS\r\n*\r\nQUIT\r\n";
    assert_eq!(check_backend_stream(good), Ok(()));
    let good: &[u8] = b"EHLO a\r\nXCLIENT ADDR=IPV6:::1 HELO=a+20b PROTO=ESMTP\r\nEHLO a\r\n";
    assert_eq!(check_backend_stream(good), Ok(()));
    let longest = [b"DATA\r\n".as_slice(), &[b'x'; 998], b"\r\n.\r\n"].concat();
    assert_eq!(check_backend_stream(&longest), Ok(()));
}

/// The property above meets the hop: with `hop` on, what the scripted backend receives has
/// our STARTTLS and an XCLIENT before the client's EHLO.
#[test]
fn the_hop_is_exercised() {
    let mut cfg = test_config();
    cfg.hop = crate::inbound::Hop {
        starttls: true,
        xclient: true,
    };
    let pieces = [b"EHLO client.test\r\nMAIL FROM:<a@b.c>\r\n".to_vec()];
    let (backend, client) = drive(&pieces, 7, cfg, false);
    assert_eq!(
        String::from_utf8_lossy(&backend.connections[0]),
        "EHLO mx.test\r\nSTARTTLS\r\nEHLO client.test\r\n\
         XCLIENT ADDR=192.0.2.1 PORT=49152 NAME=[UNAVAILABLE] HELO=client.test PROTO=ESMTP\r\n\
         EHLO client.test\r\nMAIL FROM:<a@b.c>\r\n"
    );
    assert!(String::from_utf8_lossy(&client).ends_with("250 ok\r\n"));
}
