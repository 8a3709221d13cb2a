//! Lines over 998 octets (RFC 5322 §2.1.1), byte-exact: folded with CRLF + space or refused,
//! counted as the backend receives them (a dot-stuffing `.` included), and decided the same way
//! however the input is split. The attack they stop: a legacy backend reading lines into a
//! 1000-octet buffer sees a lone `.` line in the middle of a longer one.

use super::*;
use LongLines::{Fold, Reject as Refuse};

fn a(n: usize) -> Vec<u8> {
    vec![b'A'; n]
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const EOD: &[u8] = b"\r\n.\r\n";
const FOLD: &[u8] = b"\r\n ";
const LONG: Option<Violation> = Some(Violation::LongLine);

/// `input`, what the backend gets under `Fold`, under `Reject`, and the violation under `Reject`
/// (under `Fold` there is none).
struct Row {
    name: &'static str,
    input: Vec<u8>,
    folded: Vec<u8>,
    rejected: Vec<u8>,
    violation: Option<Violation>,
}

/// The smuggling attack of the issue: a lone `.` right after the 999th octet.
fn attack() -> Vec<u8> {
    cat(&[
        &a(999),
        b".\r\nMAIL FROM:<smuggled@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n",
    ])
}

fn rows() -> Vec<Row> {
    let smuggled = b"MAIL FROM:<smuggled@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled";
    vec![
        Row {
            name: "998 octets pass unchanged",
            input: cat(&[&a(998), EOD]),
            folded: cat(&[&a(998), EOD]),
            rejected: cat(&[&a(998), EOD]),
            violation: None,
        },
        Row {
            name: "999 octets: 998, fold, 1",
            input: cat(&[&a(999), EOD]),
            folded: cat(&[&a(998), FOLD, b"A", EOD]),
            rejected: a(998),
            violation: LONG,
        },
        Row {
            name: "2,500 octets: the continuation holds 997 after its space",
            input: cat(&[&a(2500), EOD]),
            folded: cat(&[&a(998), FOLD, &a(997), FOLD, &a(505), EOD]),
            rejected: a(998),
            violation: LONG,
        },
        Row {
            name: "the stuffing dot counts",
            input: cat(&[b"..", &a(997), EOD]),
            folded: cat(&[b"..", &a(996), FOLD, b"A", EOD]),
            rejected: cat(&[b"..", &a(996)]),
            violation: LONG,
        },
        Row {
            name: "a stuffed line of exactly 998",
            input: cat(&[b"..", &a(996), EOD]),
            folded: cat(&[b"..", &a(996), EOD]),
            rejected: cat(&[b"..", &a(996), EOD]),
            violation: None,
        },
        Row {
            name: "999 A then a lone dot: no lone dot line reaches the backend",
            input: attack(),
            folded: cat(&[&a(998), FOLD, b"A.\r\n", smuggled, EOD]),
            rejected: a(998),
            violation: LONG,
        },
        Row {
            name: "CRLF right after the 998th octet is a line end, not a fold",
            input: cat(&[&a(998), b"\r\n", &a(998), b"\r\nb", EOD]),
            folded: cat(&[&a(998), b"\r\n", &a(998), b"\r\nb", EOD]),
            rejected: cat(&[&a(998), b"\r\n", &a(998), b"\r\nb", EOD]),
            violation: None,
        },
        Row {
            name: "a long line between short ones (one fast-path run)",
            input: cat(&[b"x\r\n", &a(1000), b"\r\ny", EOD]),
            folded: cat(&[b"x\r\n", &a(998), FOLD, b"AA\r\ny", EOD]),
            rejected: cat(&[b"x\r\n", &a(998)]),
            violation: LONG,
        },
        Row {
            name: "a fold before a dot and before a space",
            input: cat(&[&a(998), b". x", EOD]),
            folded: cat(&[&a(998), FOLD, b". x", EOD]),
            rejected: a(998),
            violation: LONG,
        },
        Row {
            name: "the first violation wins: a bare LF before the long line",
            input: cat(&[b"x\n", &a(1000), EOD]),
            folded: vec![],
            rejected: b"x".to_vec(),
            violation: Some(Violation::BareNewline),
        },
    ]
}

/// The longest line in `out`, CRLF excluded (a last line without CRLF counts too).
fn longest_line(out: &[u8]) -> usize {
    out.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

/// Whole, byte by byte, in two pieces split at every position, and in a few odd sizes.
fn chunkings(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all = vec![vec![input], input.chunks(1).collect()];
    for i in 0..=input.len() {
        all.push(vec![&input[..i], &input[i..]]);
    }
    for n in [2, 3, 997, 998, 999, 1000, 1001] {
        all.push(input.chunks(n).collect());
    }
    all
}

#[test]
fn data_long_lines_table_in_every_chunking() {
    for row in rows() {
        let under_fold = if row.violation == Some(Violation::BareNewline) {
            (row.rejected.as_slice(), row.violation)
        } else {
            (row.folded.as_slice(), None)
        };
        let expect = [
            (Fold, under_fold),
            (Refuse, (&row.rejected[..], row.violation)),
        ];
        for chunks in chunkings(&row.input) {
            for (long, want) in expect {
                let got = run_with(Reject, long, u64::MAX, &chunks);
                assert_eq!(
                    (got.out.as_slice(), got.violation),
                    want,
                    "{} {long:?} in {} chunks: {:?}",
                    row.name,
                    chunks.len(),
                    String::from_utf8_lossy(&got.out)
                );
                assert!(longest_line(&got.out) <= MAX_LINE, "{}", row.name);
                assert!(got.finished, "{}", row.name);
                assert_eq!(got.consumed, row.input.len(), "{}", row.name);
                // As the client sent them: folding adds octets the size limit does not see.
                assert_eq!(got.received, row.input.len() as u64 - 3, "{}", row.name);
            }
        }
    }
}

/// What a legacy backend reading with `fgets(buf, 1000, f)` gets: pieces of at most 999
/// octets, each ending at the first LF.
fn fgets_1000(mut out: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    while !out.is_empty() {
        let max = out.len().min(999);
        let n = out[..max]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(max, |i| i + 1);
        pieces.push(&out[..n]);
        out = &out[n..];
    }
    pieces
}

#[test]
fn data_long_line_attack_leaves_one_end_of_data_for_a_legacy_reader() {
    let input = attack();
    for chunks in chunkings(&input) {
        let got = run_with(Reject, Fold, u64::MAX, &chunks);
        let pieces = fgets_1000(&got.out);
        let lone_dots: Vec<usize> = (0..pieces.len())
            .filter(|&i| pieces[i] == b".\r\n")
            .collect();
        assert_eq!(lone_dots, [pieces.len() - 1], "only the end of data, last");
    }
}

#[test]
fn data_long_line_bare_newlines_under_normalize() {
    let cases: [(&str, Vec<u8>, Vec<u8>); 4] = [
        (
            "a bare LF right after the 998th octet ends the line",
            cat(&[&a(998), b"\nb", EOD]),
            cat(&[&a(998), b"\r\nb", EOD]),
        ),
        (
            "a bare LF after the 999th",
            cat(&[&a(999), b"\n.", EOD]),
            cat(&[&a(998), FOLD, b"A\r\n..", EOD]),
        ),
        (
            "a bare CR right after the 998th octet ends the line",
            cat(&[&a(998), b"\rb", EOD]),
            cat(&[&a(998), b"\r\nb", EOD]),
        ),
        (
            "a dropped NUL is not an octet of the line",
            cat(&[&a(998), b"\0b", EOD]),
            cat(&[&a(998), FOLD, b"b", EOD]),
        ),
    ];
    for (name, input, want) in cases {
        for chunks in chunkings(&input) {
            for long in [Fold, Refuse] {
                let got = run_with(Normalize, long, u64::MAX, &chunks);
                let folds = want.windows(3).filter(|w| w == &FOLD).count();
                let expect = match long {
                    Fold => (want.as_slice(), None),
                    Refuse if folds > 0 => (&want[..998], LONG),
                    Refuse => (want.as_slice(), None),
                };
                assert_eq!(
                    (got.out.as_slice(), got.violation),
                    expect,
                    "{name} {long:?}"
                );
                assert!(got.finished, "{name}");
            }
        }
    }
}

#[test]
fn data_long_line_and_the_size_limit() {
    let input = cat(&[&a(1000), EOD]);
    for chunks in chunkings(&input) {
        // The limit passed first: too big, whatever the line length policy.
        for long in [Fold, Refuse] {
            let got = run_with(Reject, long, 500, &chunks);
            assert_eq!((got.out, got.violation), (a(500), Some(Violation::TooBig)));
        }
        // The fold comes before the 999th octet is counted; then that octet is too many.
        let got = run_with(Reject, Fold, 998, &chunks);
        let want = (cat(&[&a(998), FOLD]), Some(Violation::TooBig));
        assert_eq!((got.out, got.violation), want);
        let got = run_with(Reject, Refuse, 998, &chunks);
        assert_eq!((got.out, got.violation), (a(998), LONG));
    }
}

#[test]
fn data_long_line_refused_writes_nothing_after_it() {
    let input = cat(&[&a(1200), b"\r\n..x\r\nmore\r\n", &a(3000), EOD, b"QUIT\r\n"]);
    let got = run_with(Reject, Refuse, u64::MAX, &[&input]);
    assert_eq!((got.out, got.violation), (a(998), LONG));
    assert_eq!(
        (got.finished, got.rest.as_slice()),
        (true, &b"QUIT\r\n"[..])
    );
}
