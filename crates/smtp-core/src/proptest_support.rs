//! What the session property tests of both directions share: the client input they are
//! made of, and the check that every reply the client got is well formed.

use proptest::prelude::*;

/// Client input: pieces of plausible SMTP mixed with the bytes attackers use.
pub(crate) fn piece() -> impl Strategy<Value = Vec<u8>> {
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

pub(crate) fn check_replies(client: &[u8]) -> Result<(), String> {
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
