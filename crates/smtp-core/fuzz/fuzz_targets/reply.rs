//! Fuzz the reply parser: pushed in data-derived chunks, it holds at most a bounded number
//! of bytes, and every reply it returns re-serialises to bytes that parse back to it.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_core::reply::{Reply, ReplyParser, MAX_REPLY_LINE, MAX_REPLY_LINES};

/// What the parser may hold after a push of `chunk` bytes: one incomplete line, the lines of
/// one multi-line reply in progress, and the push itself.
fn bound(chunk: usize) -> usize {
    (MAX_REPLY_LINES + 1) * MAX_REPLY_LINE + chunk
}

/// The written form of a parsed reply parses back to it, with the HTABs that parsing
/// tolerates written as spaces.
fn check_round_trip(reply: &Reply) {
    let mut wire = BytesMut::new();
    reply.write_to(&mut wire);
    let mut again = ReplyParser::new();
    again.push(&wire);
    let expected = Reply {
        code: reply.code,
        lines: reply.lines.iter().map(|l| l.replace('\t', " ")).collect(),
    };
    assert_eq!(again.next_reply(), Ok(Some(expected)));
    assert_eq!(again.buffered(), 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(selector) * 16 + 1;
    let mut parser = ReplyParser::new();
    for part in stream.chunks(chunk) {
        parser.push(part);
        assert!(parser.buffered() <= bound(part.len()));
        loop {
            match parser.next_reply() {
                Ok(Some(reply)) => check_round_trip(&reply),
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(parser.buffered(), 0);
                    return;
                }
            }
        }
        assert!(parser.buffered() <= bound(0));
    }
});
