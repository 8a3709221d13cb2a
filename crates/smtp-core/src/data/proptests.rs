//! Property tests of the reframer over arbitrary bytes biased toward CR, LF, `.` and NUL, with
//! runs long enough to make lines of about 998 octets, fed in arbitrary chunks: what the backend
//! may receive, and that chunking never changes it.

use super::*;
use proptest::prelude::*;

/// One byte, mostly the ones that make decisions.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(b'\r'),
        4 => Just(b'\n'),
        4 => Just(b'.'),
        1 => Just(0u8),
        4 => b'a'..=b'c',
        1 => prop_oneof![Just(b' '), Just(b'\t')],
        1 => any::<u8>(),
    ]
}

/// A biased byte, or a CRLF or a word, so that ordinary lines (the reframer's fast path) occur,
/// or a run of letters that takes a line near, to or past the 998-octet limit (RFC 5322 §2.1.1).
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        40 => byte().prop_map(|b| vec![b]),
        10 => Just(b"\r\n".to_vec()),
        10 => Just(b"xyz".to_vec()),
        1 => prop_oneof![990usize..1000, 1usize..2500].prop_map(|n| vec![b'x'; n]),
    ]
}

/// Biased bytes, half the time with a real end of data and some command bytes after it.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(token(), 0..120), any::<bool>()).prop_map(|(tokens, eod)| {
        let mut v = tokens.concat();
        if eod {
            v.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        }
        v
    })
}

fn mode() -> impl Strategy<Value = Modes> {
    let bare = prop_oneof![Just(BareNewlines::Reject), Just(BareNewlines::Normalize)];
    (bare, long_lines())
}

/// Chunk sizes: small ones, and ones that put boundaries near the 998th octet of a line.
fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![3 => 1usize..24, 1 => 990usize..1010], 1..8)
}

fn long_lines() -> impl Strategy<Value = LongLines> {
    prop_oneof![Just(LongLines::Fold), Just(LongLines::Reject)]
}

fn max_size() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(u64::MAX), 1 => 0u64..200, 1 => 900u64..3000]
}

/// Both policies of the reframer.
type Modes = (BareNewlines, LongLines);

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    out: Vec<u8>,
    consumed: usize,
    finished: bool,
    violation: Option<Violation>,
    received: u64,
}

/// Feeds `input` in chunks of the given sizes (cycled; the last chunk takes the rest), the way a
/// session does: stop at the end of data.
fn feed(mode: Modes, max: u64, input: &[u8], sizes: &[usize]) -> Outcome {
    let mut r = Reframer::new(mode.0, mode.1, max);
    let mut out = BytesMut::new();
    let (mut at, mut finished) = (0, false);
    let mut sizes = sizes.iter().copied().cycle();
    while at < input.len() && !finished {
        let n = sizes.next().unwrap_or(input.len()).max(1);
        let chunk = &input[at..input.len().min(at + n)];
        let fed = r.feed(chunk, &mut out);
        assert!(fed.finished || fed.consumed == chunk.len());
        at += fed.consumed;
        finished = fed.finished;
    }
    Outcome {
        out: out.to_vec(),
        consumed: at,
        finished,
        violation: r.violation(),
        received: r.received(),
    }
}

/// Property (a): no bare CR, no bare LF, no NUL.
fn assert_canonical(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        assert_ne!(b, 0, "NUL at {i}");
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
    }
}

/// Property (b): the end-of-data marker appears once, last, and only for an accepted message.
fn assert_one_eod(o: &Outcome) {
    let inner = o.out.windows(5).filter(|w| w == b"\r\n.\r\n").count();
    let leading = usize::from(o.out.starts_with(b".\r\n"));
    if o.finished && o.violation.is_none() {
        assert_eq!(inner + leading, 1, "{:?}", String::from_utf8_lossy(&o.out));
        assert!(o.out.ends_with(b"\r\n.\r\n") || o.out == b".\r\n");
    } else {
        assert_eq!(inner + leading, 0, "{:?}", String::from_utf8_lossy(&o.out));
    }
}

/// Property (g): the body's first line, as the backend reads it (a stuffed `.` removed, RFC
/// 5321 §4.5.2), never starts with white space, which would continue the header above it
/// (RFC 5322 §2.2.3).
fn assert_first_line_not_folded(out: &[u8]) {
    let first = match out {
        [b'.', rest @ ..] if !rest.starts_with(b"\r\n") => rest,
        _ => out,
    };
    assert!(
        !matches!(first.first(), Some(b' ' | b'\t')),
        "{:?}",
        String::from_utf8_lossy(out)
    );
}

/// Whether `input` begins with a line that starts with white space once a stuffed `.` is
/// removed (NULs aside, which are dropped or refused): the reframer puts an empty line first.
fn opens_with_white_space(input: &[u8]) -> bool {
    let mut rest = input.iter().copied().filter(|&b| b != 0).peekable();
    if rest.peek() == Some(&b'.') {
        rest.next();
    }
    matches!(rest.next(), Some(b' ' | b'\t'))
}

/// Property (f): no line the backend receives is longer than 998 octets + CRLF, under either
/// policy (a refused message stops before the 999th octet).
fn assert_short_lines(out: &[u8]) {
    for line in out.split(|&b| b == b'\n') {
        let len = line.strip_suffix(b"\r").unwrap_or(line).len();
        assert!(len <= MAX_LINE, "a line of {len} octets");
    }
}

/// Lines of exactly 998 octets followed by one that starts with a space: at least every fold.
fn folds(out: &[u8]) -> usize {
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
    lines
        .windows(2)
        .filter(|w| w[0].len() == MAX_LINE + 1 && w[1].first() == Some(&b' '))
        .count()
}

fn bare_newlines(input: &[u8]) -> usize {
    (0..input.len())
        .filter(|&i| match input[i] {
            b'\n' => i == 0 || input[i - 1] != b'\r',
            b'\r' => input.get(i + 1) != Some(&b'\n'),
            _ => false,
        })
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn data_output_is_canonical_with_one_eod(
        mode in mode(), max in max_size(), input in message(),
        sizes in sizes(),
    ) {
        let o = feed(mode, max, &input, &sizes);
        assert_canonical(&o.out);
        assert_one_eod(&o);
        assert_short_lines(&o.out);
        assert_first_line_not_folded(&o.out);
        // Property (e): a bare newline grows by one byte into CRLF, and may leave a lone `.` line
        // on either side of it that is stuffed; any other stuffed line had a NUL dropped. A fold
        // adds CRLF + space, a first line that starts with white space an empty line before it.
        let grown = 3 * (bare_newlines(&input[..o.consumed]) + folds(&o.out))
            + 2 * usize::from(opens_with_white_space(&input));
        prop_assert!(o.out.len() <= o.consumed + grown);
        prop_assert!(o.received <= u64::try_from(o.consumed).unwrap_or(u64::MAX));
        if mode.0 == BareNewlines::Normalize && o.finished && o.violation.is_none() {
            // Nothing but line ends, dots, NULs and the spaces of folds is changed.
            let text = |b: &[u8]| -> Vec<u8> {
                b.iter().copied().filter(|c| !matches!(c, b'\r' | b'\n' | b'.' | b' ' | 0)).collect()
            };
            prop_assert_eq!(text(&o.out), text(&input[..o.consumed]));
        }
    }

    #[test]
    fn data_chunking_does_not_change_anything(
        mode in mode(), max in max_size(), input in message(),
        sizes in sizes(),
    ) {
        let one = feed(mode, max, &input, &[input.len()]);
        prop_assert_eq!(&feed(mode, max, &input, &sizes), &one);
        prop_assert_eq!(&feed(mode, max, &input, &[1]), &one);
    }

    #[test]
    fn data_long_line_policies_agree_up_to_the_first_long_line(
        bare in mode(), max in max_size(), input in message(), sizes in sizes(),
    ) {
        let fold = feed((bare.0, LongLines::Fold), max, &input, &sizes);
        let reject = feed((bare.0, LongLines::Reject), max, &input, &sizes);
        // Refusing stops where folding inserts its first CRLF + space; before that, and for a
        // message without a long line, the two are the same.
        prop_assert!(fold.out.starts_with(&reject.out));
        if reject.violation != Some(Violation::LongLine) {
            prop_assert_eq!(&fold, &reject);
        } else {
            prop_assert!(fold.out[reject.out.len()..].starts_with(b"\r\n "));
        }
    }

    #[test]
    fn data_clean_input_is_identity(
        mode in mode(),
        lines in prop::collection::vec(
            prop::collection::vec(prop_oneof![1 => Just(b'.'), 3 => b' '..=b'~'], 0..12),
            0..12,
        ),
        sizes in prop::collection::vec(1usize..24, 1..8),
    ) {
        let mut input = Vec::new();
        for line in &lines {
            input.extend_from_slice(line);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let o = feed(mode, u64::MAX, &input, &sizes);
        prop_assert!(o.finished);
        prop_assert_eq!(o.violation, None);
        // A generated line that is exactly "." is an earlier end of data: identity up to it,
        // after the empty line that keeps a first line starting with white space out of the
        // header above.
        let out = match o.out.strip_prefix(b"\r\n") {
            Some(rest) if opens_with_white_space(&input) => rest,
            _ => &o.out[..],
        };
        prop_assert_eq!(out, &input[..o.consumed]);
        let eod_line = 3;
        prop_assert_eq!(o.received, u64::try_from(o.consumed - eod_line).unwrap_or(u64::MAX));
    }

    /// Whole blocks of ordinary lines are checked together (`clean_blocks`); fed one octet at a
    /// time, no block is ever whole. Both must give the same, on mostly ordinary lines of every
    /// length (around the block size and the 998-octet limit too) with the odd octet that needs
    /// a decision anywhere in them.
    #[test]
    fn data_blocks_agree_with_one_octet_at_a_time(
        mode in mode(),
        max in max_size(),
        lines in prop::collection::vec(
            (
                prop_oneof![8 => 0usize..140, 1 => 900usize..1100],
                prop::collection::vec((any::<prop::sample::Index>(), byte()), 0..2),
                prop_oneof![20 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b"\r"[..])],
            ),
            0..60,
        ),
        eod in any::<bool>(),
    ) {
        let mut input = Vec::new();
        for (len, odd, end) in &lines {
            let mut line: Vec<u8> = (0..*len).map(|i| b'a' + (i % 26) as u8).collect();
            for (at, b) in odd {
                if !line.is_empty() {
                    let k = at.index(line.len());
                    line[k] = *b;
                }
            }
            input.extend_from_slice(&line);
            input.extend_from_slice(end);
        }
        if eod {
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        }
        let whole = feed(mode, max, &input, &[usize::MAX]);
        let octets = feed(mode, max, &input, &[1]);
        prop_assert_eq!(whole, octets);
    }
}
