//! Property tests of the whole session: whatever a client sends, in whatever pieces, the
//! backend receives only canonical SMTP, and the client only well-formed replies.

use proptest::prelude::*;

use crate::data::{BareNewlines, LongLines};
use crate::testing::{check_backend_stream, test_config, AutoBackend, Harness};

/// Client input: pieces of plausible SMTP mixed with the bytes attackers use.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EHLO client.test\r\n".to_vec()),
        Just(b"HELO client.test\r\n".to_vec()),
        Just(b"MAIL FROM:<a@x.test>\r\n".to_vec()),
        Just(b"MAIL FROM:<a@x.test> SIZE=100 BODY=8BITMIME\r\n".to_vec()),
        Just(b"MAIL FROM:<a@x.test> AUTH=ceo@x.test RET=HDRS\r\n".to_vec()),
        Just(b"MAIL FROM:<a@x.test> SIZE=1 SIZE=2\r\n".to_vec()),
        Just(b"RCPT TO:<b@y.test> NOTIFY=NEVER ORCPT=rfc822;b@y.test\r\n".to_vec()),
        Just(b"AUTH PLAIN AGEAYg==\r\n".to_vec()),
        Just(b"dXNlcg==\r\n".to_vec()),
        Just(b"RCPT TO:<b@y.test>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 5 LAST\r\n".to_vec()),
        Just(b"RSET\r\nNOOP\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"AUTH LOGIN\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"\r.\r\n".to_vec()),
        Just(b"..dot\r\n".to_vec()),
        Just(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        Just(vec![b'x'; 3000]),
        Just(vec![b'x'; 998]),
        prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), any::<u8>()],
            0..40
        ),
    ]
}

fn drive(pieces: &[Vec<u8>], split: usize, cfg: crate::inbound::Config) -> (AutoBackend, Vec<u8>) {
    let mut h = Harness::new(cfg);
    let mut backend = AutoBackend::default();
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

fn check_replies(client: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(client);
    let mut lines = text.split("\r\n").collect::<Vec<_>>();
    if lines.last() == Some(&"") {
        lines.pop();
    } else if !lines.is_empty() {
        return Err(format!("reply not CRLF-terminated: {text:?}"));
    }
    for l in lines {
        let ok = l.len() >= 3
            && l.as_bytes()[..3].iter().all(u8::is_ascii_digit)
            && matches!(l.as_bytes().get(3), None | Some(b' ' | b'-'))
            && !l.contains(['\r', '\n', '\0']);
        if !ok {
            return Err(format!("malformed reply line {l:?}"));
        }
    }
    Ok(())
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
    ) {
        let mut cfg = test_config();
        cfg.max_message_size = 2000;
        cfg.auth_requires_tls = !auth_in_plaintext;
        cfg.bare_newlines = if normalize { BareNewlines::Normalize } else { BareNewlines::Reject };
        cfg.long_lines = if reject_long { LongLines::Reject } else { LongLines::Fold };
        let (backend, client) = drive(&pieces, split, cfg);
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
    let bad: [&[u8]; 10] = [
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
    let longest = [b"DATA\r\n".as_slice(), &[b'x'; 998], b"\r\n.\r\n"].concat();
    assert_eq!(check_backend_stream(&longest), Ok(()));
}
