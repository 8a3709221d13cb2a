//! Serialiser tables, parser tables for every error, the hostile 20,000-line reply, and the
//! write-then-parse round trip.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn wire(r: &Reply) -> Vec<u8> {
    let mut out = BytesMut::new();
    r.write_to(&mut out);
    out.to_vec()
}

fn reply(code: u16, lines: &[&str]) -> Reply {
    Reply {
        code,
        lines: lines.iter().map(|s| s.to_string()).collect(),
    }
}

/// Push `input` in chunks of `chunk` bytes, collecting replies until `Ok(None)` after the
/// last push or the first error.
fn parse_all(input: &[u8], chunk: usize) -> Result<Vec<Reply>, ReplyError> {
    let mut p = ReplyParser::new();
    let mut out = Vec::new();
    for part in input.chunks(chunk.max(1)) {
        p.push(part);
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        assert!(p.buffered() <= (MAX_REPLY_LINES + 1) * MAX_REPLY_LINE + chunk);
    }
    Ok(out)
}

#[test]
fn write_table() {
    let cases: Vec<(Reply, &[u8])> = vec![
        (Reply::new(250, "OK"), b"250 OK\r\n"),
        (Reply::new(354, ""), b"354\r\n"),
        (reply(221, &[]), b"221\r\n"),
        (
            reply(250, &["mx.example", "SIZE 100", "8BITMIME"]),
            b"250-mx.example\r\n250-SIZE 100\r\n250 8BITMIME\r\n",
        ),
        (reply(250, &["first", ""]), b"250-first\r\n250\r\n"),
        (reply(250, &["", "last"]), b"250-\r\n250 last\r\n"),
        (
            Reply::new(550, "a\r\n250 injected"),
            b"550 a  250 injected\r\n",
        ),
        (
            Reply::new(550, "nul\0tab\tdel\x7f"),
            b"550 nul tab del \r\n",
        ),
        (
            Reply::new(250, "UTF-8 ok: bücher"),
            "250 UTF-8 ok: bücher\r\n".as_bytes(),
        ),
    ];
    for (r, want) in cases {
        assert_eq!(wire(&r), want, "{r:?}");
    }
}

#[test]
fn kinds() {
    assert!(Reply::new(250, "").is_positive());
    assert!(!Reply::new(354, "").is_positive());
    assert!(Reply::new(354, "").is_intermediate());
    assert!(!Reply::new(421, "").is_intermediate());
}

#[test]
fn parse_table() {
    let cases: Vec<(&[u8], Vec<Reply>)> = vec![
        (
            b"220 mx.example ESMTP\r\n",
            vec![Reply::new(220, "mx.example ESMTP")],
        ),
        (b"250 OK\n", vec![Reply::new(250, "OK")]),
        (b"354\r\n", vec![Reply::new(354, "")]),
        (b"250 \r\n", vec![Reply::new(250, "")]),
        (b"250 a\tb\r\n", vec![Reply::new(250, "a\tb")]),
        (b"250  two spaces\r\n", vec![Reply::new(250, " two spaces")]),
        (
            b"550 bad \xff byte\r\n",
            vec![Reply::new(550, "bad ? byte")],
        ),
        (
            b"550 \xe2\x82 cut \xc3\r\n",
            vec![Reply::new(550, "? cut ?")],
        ),
        (
            b"250-mx.example Hello\r\n250-SIZE 1000\r\n250-\r\n250 HELP\r\n",
            vec![reply(250, &["mx.example Hello", "SIZE 1000", "", "HELP"])],
        ),
        (
            b"250 OK\r\n354 go ahead\r\n250-a\n250 b\r\n",
            vec![
                Reply::new(250, "OK"),
                Reply::new(354, "go ahead"),
                reply(250, &["a", "b"]),
            ],
        ),
        (b"250-incomplete\r\n250-still", vec![]),
    ];
    for (input, want) in cases {
        for chunk in [input.len(), 1, 3, 7] {
            assert_eq!(
                parse_all(input, chunk),
                Ok(want.clone()),
                "{:?} by {chunk}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn error_table() {
    use ReplyError::*;
    let long = [b"250 ".as_slice(), &vec![b'x'; MAX_REPLY_LINE - 5], b"\r\n"].concat();
    let just_fits = [b"250 ".as_slice(), &vec![b'x'; MAX_REPLY_LINE - 6], b"\r\n"].concat();
    let no_lf = [b"250 ".as_slice(), &vec![b'x'; MAX_REPLY_LINE]].concat();
    let max_lines = [
        b"250-x\r\n".repeat(MAX_REPLY_LINES - 1),
        b"250 x\r\n".to_vec(),
    ]
    .concat();
    let too_many = [b"250-x\r\n".repeat(MAX_REPLY_LINES), b"250 x\r\n".to_vec()].concat();
    let cases: Vec<(&[u8], Result<usize, ReplyError>)> = vec![
        (&long, Err(LineTooLong)),
        (&just_fits, Ok(1)),
        (&no_lf, Err(LineTooLong)),
        (&max_lines, Ok(1)),
        (&too_many, Err(TooManyLines)),
        (b"250-a\r\n251 b\r\n", Err(InconsistentCode)),
        (b"\r\n", Err(Syntax)),
        (b"25 OK\r\n", Err(Syntax)),
        (b"2500 OK\r\n", Err(Syntax)),
        (b"150 OK\r\n", Err(Syntax)),
        (b"650 OK\r\n", Err(Syntax)),
        (b"260 OK\r\n", Err(Syntax)),
        (b"559 no\r\n", Ok(1)),
        (b"250-a\r\n290 b\r\n", Err(Syntax)),
        (b"abc OK\r\n", Err(Syntax)),
        (b"250_OK\r\n", Err(Syntax)),
        (b" 250 OK\r\n", Err(Syntax)),
        (b"250 bare\rCR\r\n", Err(Syntax)),
        (b"250 two CRs\r\r\n", Err(Syntax)),
        (b"250 nul\0\r\n", Err(Syntax)),
        (b"250 del\x7f\r\n", Err(Syntax)),
    ];
    for (input, want) in cases {
        for chunk in [input.len(), 1, 100] {
            let got = parse_all(input, chunk).map(|rs| rs.len());
            assert_eq!(
                got,
                want,
                "{:?} by {chunk}",
                String::from_utf8_lossy(&input[..input.len().min(40)])
            );
        }
    }
}

#[test]
fn invalid_utf8_never_grows_a_line() {
    let input = [b"250 ".as_slice(), &vec![0xff; MAX_REPLY_LINE - 6], b"\r\n"].concat();
    let replies = parse_all(&input, input.len()).expect("within the caps");
    let expected = [b"250 ".as_slice(), &vec![b'?'; MAX_REPLY_LINE - 6], b"\r\n"].concat();
    assert_eq!(replies.len(), 1);
    assert_eq!(wire(&replies[0]), expected);
}

#[test]
fn error_is_sticky_and_frees_memory() {
    let mut p = ReplyParser::new();
    p.push(b"250-a\r\n251 b\r\n250 more\r\n");
    assert_eq!(p.next_reply(), Err(ReplyError::InconsistentCode));
    assert_eq!(p.buffered(), 0);
    p.push(b"250 OK\r\n");
    assert_eq!(p.buffered(), 0);
    assert_eq!(p.next_reply(), Err(ReplyError::InconsistentCode));
    p.clear();
    p.push(b"250 OK\r\n");
    assert_eq!(p.next_reply(), Ok(Some(Reply::new(250, "OK"))));
}

#[test]
fn hostile_20000_line_ehlo_fails_fast_and_bounded() {
    let line = b"250-XEXTENSION-PADDING-PADDING\r\n";
    let hostile = line.repeat(20_000);
    // All at once: stops at the cap without parsing the rest.
    let mut p = ReplyParser::new();
    p.push(&hostile);
    assert_eq!(p.next_reply(), Err(ReplyError::TooManyLines));
    assert_eq!(p.buffered(), 0);
    // Streamed in 4 KiB pushes, draining after each: memory never exceeds the caps.
    let mut p = ReplyParser::new();
    let mut result = Ok(None);
    let mut pushes = 0;
    for part in hostile.chunks(4096) {
        p.push(part);
        pushes += 1;
        result = p.next_reply();
        assert!(p.buffered() <= MAX_REPLY_LINES * line.len() + 4096);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(ReplyError::TooManyLines));
    assert!(pushes <= 2, "failed after {pushes} pushes");
    assert_eq!(p.buffered(), 0);
}

#[test]
fn buffered_counts_a_reply_in_progress() {
    let mut p = ReplyParser::new();
    p.push(b"220 ready\r\n250-injected\r\n");
    assert_eq!(p.next_reply(), Ok(Some(Reply::new(220, "ready"))));
    assert_eq!(p.buffered(), 14);
    assert_eq!(p.next_reply(), Ok(None));
    assert_eq!(
        p.buffered(),
        14,
        "a parsed line of an unfinished reply is still held"
    );
    p.push(b"250 x\r\n");
    assert_eq!(p.next_reply(), Ok(Some(reply(250, &["injected", "x"]))));
    assert_eq!(p.buffered(), 0);
}

fn text() -> impl Strategy<Value = String> {
    // Printable, spaces anywhere (leading ones are kept as text), empty included.
    "[ -~äé€]{0,60}"
}

proptest! {
    #[test]
    fn write_then_parse_round_trips(
        code in (2u16..=5, 0u16..=5, 0u16..=9).prop_map(|(a, b, c)| a * 100 + b * 10 + c),
        lines in proptest::collection::vec(text(), 1..10),
        chunk in 1usize..64,
    ) {
        let r = Reply { code, lines };
        let bytes = wire(&r);
        prop_assert_eq!(parse_all(&bytes, chunk), Ok(vec![r]));
    }
}

#[test]
fn extension_finds_a_keyword_after_the_first_line() {
    let reply = Reply {
        code: 250,
        lines: vec![
            "mx.test STARTTLS".into(),
            "starttls".into(),
            "XCLIENT\tNAME ADDR".into(),
            "SIZE 1000 ".into(),
        ],
    };
    assert_eq!(reply.extension("STARTTLS"), Some(""));
    assert_eq!(reply.extension("xclient"), Some("NAME ADDR"));
    assert_eq!(reply.extension("SIZE"), Some("1000"));
    assert_eq!(
        reply.extension("mx.test"),
        None,
        "the first line names the server"
    );
    assert_eq!(reply.extension("SIZ"), None);
}
