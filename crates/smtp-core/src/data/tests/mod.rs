//! Byte-exact, table-driven tests of the reframer: the smuggling sequences of DESIGN §4 under
//! both modes, chunk boundaries inside every decision, and the size limit. Long lines are in
//! `long_lines`.

use super::*;
use BareNewlines::{Normalize, Reject};

mod first_line;
mod long_lines;

/// Everything observable after feeding `chunks` one after another, as a session would: once the
/// end of data is found, what was not consumed goes to `rest`.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    out: Vec<u8>,
    consumed: usize,
    finished: bool,
    violation: Option<Violation>,
    received: u64,
    rest: Vec<u8>,
}

fn run(mode: BareNewlines, max_size: u64, chunks: &[&[u8]]) -> Outcome {
    run_with(mode, LongLines::Fold, max_size, chunks)
}

fn run_with(mode: BareNewlines, long: LongLines, max_size: u64, chunks: &[&[u8]]) -> Outcome {
    let mut r = Reframer::new(mode, long, max_size);
    let mut out = BytesMut::new();
    let (mut consumed, mut finished, mut rest) = (0, false, Vec::new());
    for chunk in chunks {
        if finished {
            rest.extend_from_slice(chunk);
            continue;
        }
        let fed = r.feed(chunk, &mut out);
        assert!(fed.consumed <= chunk.len());
        assert!(fed.finished || fed.consumed == chunk.len());
        consumed += fed.consumed;
        finished = fed.finished;
        rest.extend_from_slice(&chunk[fed.consumed..]);
    }
    Outcome {
        out: out.to_vec(),
        consumed,
        finished,
        violation: r.violation(),
        received: r.received(),
        rest,
    }
}

fn whole(mode: BareNewlines, input: &[u8]) -> Outcome {
    run(mode, u64::MAX, &[input])
}

/// `(name, input, output under Normalize, output under Reject, violation under Reject)`.
/// Every input here is consumed whole and finished unless noted in its own test.
type Row = (
    &'static str,
    &'static [u8],
    &'static [u8],
    &'static [u8],
    Option<Violation>,
);

const BN: Option<Violation> = Some(Violation::BareNewline);
const NUL_V: Option<Violation> = Some(Violation::Nul);
const OK: Option<Violation> = None;

const TABLE: &[Row] = &[
    (
        "clean",
        b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
        b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
        b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
        OK,
    ),
    ("empty", b".\r\n", b".\r\n", b".\r\n", OK),
    (
        "empty line then eod",
        b"\r\n.\r\n",
        b"\r\n.\r\n",
        b"\r\n.\r\n",
        OK,
    ),
    (
        "dot-stuffed lines carried exactly",
        b"..foo\r\n.bar\r\n...\r\nx.\r\n.\r\n",
        b"..foo\r\n.bar\r\n...\r\nx.\r\n.\r\n",
        b"..foo\r\n.bar\r\n...\r\nx.\r\n.\r\n",
        OK,
    ),
    (
        "double dot",
        b"..\r\n.\r\n",
        b"..\r\n.\r\n",
        b"..\r\n.\r\n",
        OK,
    ),
    (
        "LF . LF",
        b"a\n.\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a",
        BN,
    ),
    (
        "LF . CRLF",
        b"a\n.\r\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a",
        BN,
    ),
    (
        "CRLF . LF",
        b"a\r\n.\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a\r\n",
        BN,
    ),
    (
        "CR . CRLF",
        b"a\r.\r\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a",
        BN,
    ),
    (
        "CRLF . CR",
        b"a\r\n.\rb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a\r\n",
        BN,
    ),
    (
        "leading . LF",
        b".\nb\r\n.\r\n",
        b"..\r\nb\r\n.\r\n",
        b"",
        BN,
    ),
    (
        "leading . CR CRLF",
        b".\r\r\n.\r\n",
        b"..\r\n\r\n.\r\n",
        b"",
        BN,
    ),
    (
        "CR CRLF: the real CRLF makes the next line eligible",
        b"a\r\r\n.\r\n",
        b"a\r\n\r\n.\r\n",
        b"a",
        BN,
    ),
    (
        "LF LF . CRLF",
        b"a\n\n.\r\nb\r\n.\r\n",
        b"a\r\n\r\n..\r\nb\r\n.\r\n",
        b"a",
        BN,
    ),
    (
        "CRLF NUL . CRLF",
        b"a\r\n\0.\r\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a\r\n",
        NUL_V,
    ),
    (
        "CRLF . NUL CRLF",
        b"a\r\n.\0\r\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a\r\n",
        NUL_V,
    ),
    (
        "CRLF . CR NUL LF",
        b"a\r\n.\r\0\nb\r\n.\r\n",
        b"a\r\n..\r\n\r\nb\r\n.\r\n",
        b"a\r\n",
        BN,
    ),
    (
        "CRLF . NUL LF",
        b"a\r\n.\0\nb\r\n.\r\n",
        b"a\r\n..\r\nb\r\n.\r\n",
        b"a\r\n",
        NUL_V,
    ),
    (
        "NUL inside a line",
        b"a\0b\r\n.\r\n",
        b"ab\r\n.\r\n",
        b"a",
        NUL_V,
    ),
    (
        "NUL then dot text",
        b"\0.x\r\n.\r\n",
        b".x\r\n.\r\n",
        b"",
        NUL_V,
    ),
    (
        "first violation wins",
        b"a\n\0\r\n.\r\n",
        b"a\r\n\r\n.\r\n",
        b"a",
        BN,
    ),
];

#[test]
fn data_table_both_modes_whole_and_bytewise() {
    for &(name, input, normalized, rejected, violation) in TABLE {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        for (mode, want_out, want_v) in [(Normalize, normalized, OK), (Reject, rejected, violation)]
        {
            for got in [whole(mode, input), run(mode, u64::MAX, &bytes)] {
                assert_eq!(
                    (got.out.as_slice(), got.violation),
                    (want_out, want_v),
                    "{name} {mode:?}: output {:?}",
                    String::from_utf8_lossy(&got.out)
                );
                assert_eq!(got.consumed, input.len(), "{name} {mode:?}");
                assert!(got.finished, "{name} {mode:?}");
            }
        }
    }
}

#[test]
fn data_smuggled_eod_without_real_one_does_not_finish() {
    for (input, normalized) in [
        (&b"a\n.\r\n"[..], &b"a\r\n..\r\n"[..]),
        (b"a\n.\n", b"a\r\n..\r\n"),
        (b"a\r.\r\n", b"a\r\n..\r\n"),
        (b"a\r\n.\n", b"a\r\n..\r\n"),
        (b"a\r\n\0.\r\n", b"a\r\n..\r\n"),
    ] {
        let got = whole(Normalize, input);
        assert_eq!((got.out.as_slice(), got.finished), (normalized, false));
        assert_eq!(got.consumed, input.len());
        let got = whole(Reject, input);
        assert!(!got.finished && got.violation.is_some());
    }
}

#[test]
fn data_bytes_after_eod_are_not_consumed() {
    let got = whole(Reject, b"a\r\n.\r\nMAIL FROM:<>\r\n");
    assert_eq!(got.out, b"a\r\n.\r\n");
    assert_eq!((got.consumed, got.finished), (6, true));
    assert_eq!(got.rest, b"MAIL FROM:<>\r\n");

    let mut r = Reframer::new(Normalize, LongLines::Fold, 100);
    let mut out = BytesMut::new();
    let fed = r.feed(b".\r\nQUIT\r\n", &mut out);
    assert_eq!(
        fed,
        Fed {
            consumed: 3,
            finished: true
        }
    );
    let again = r.feed(b"QUIT\r\n", &mut out);
    assert_eq!(
        again,
        Fed {
            consumed: 0,
            finished: true
        }
    );
    assert_eq!(&out[..], b".\r\n");
}

#[test]
fn data_cr_at_chunk_end_waits_for_the_next_byte() {
    let mut r = Reframer::new(Normalize, LongLines::Fold, u64::MAX);
    let mut out = BytesMut::new();
    assert_eq!(r.feed(b"a\r", &mut out).consumed, 2);
    assert_eq!(&out[..], b"a", "a pending CR is not decided early");

    let lf = [&b"a\r"[..], b"\n.\r\n"];
    for mode in [Normalize, Reject] {
        let got = run(mode, u64::MAX, &lf);
        assert_eq!(
            (got.out.as_slice(), got.violation),
            (&b"a\r\n.\r\n"[..], OK)
        );
    }
    let x = [&b"a\r"[..], b"X\r\n.\r\n"];
    assert_eq!(run(Normalize, u64::MAX, &x).out, b"a\r\nX\r\n.\r\n");
    let got = run(Reject, u64::MAX, &x);
    assert_eq!((got.out.as_slice(), got.violation), (&b"a"[..], BN));

    // ".\r" held across chunks: the end of data or a stuffed line, depending on what follows.
    let eod = [&b"a\r\n.\r"[..], b"\nQUIT"];
    let got = run(Reject, u64::MAX, &eod);
    assert_eq!(
        (got.out.as_slice(), got.rest.as_slice()),
        (&b"a\r\n.\r\n"[..], &b"QUIT"[..])
    );
    let smuggle = [&b"a\r\n.\r"[..], b"X\r\n.\r\n"];
    assert_eq!(
        run(Normalize, u64::MAX, &smuggle).out,
        b"a\r\n..\r\nX\r\n.\r\n"
    );
}

#[test]
fn data_eod_split_at_every_position() {
    let input: &[u8] = b"hi\r\n..x\r\n.\r\nQUIT\r\n";
    let body_end = input.len() - b"QUIT\r\n".len();
    for mode in [Normalize, Reject] {
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = run(mode, u64::MAX, &[&input[..i], &input[i..j], &input[j..]]);
                let want = Outcome {
                    out: input[..body_end].to_vec(),
                    consumed: body_end,
                    finished: true,
                    violation: None,
                    received: 9,
                    rest: b"QUIT\r\n".to_vec(),
                };
                assert_eq!(got, want, "{mode:?} split at {i},{j}");
            }
        }
    }
}

#[test]
fn data_received_excludes_the_eod_line() {
    assert_eq!(whole(Reject, b".\r\n").received, 0);
    assert_eq!(whole(Reject, b"a\r\n.\r\n").received, 3);
    assert_eq!(whole(Reject, b"..\r\n.\r\n").received, 4);
    // As the client sent them: bare LF and NUL count once each, before normalising.
    assert_eq!(whole(Normalize, b"a\n\0\r\n.\r\n").received, 5);
}

#[test]
fn data_size_limit_exactly_at_and_one_over() {
    let input: &[u8] = b"abc\r\n.\r\nQUIT";
    for mode in [Normalize, Reject] {
        for chunking in [vec![input], input.chunks(1).collect()] {
            let at = run(mode, 5, &chunking);
            assert_eq!((at.out.as_slice(), at.violation), (&input[..8], OK));
            let over = run(mode, 4, &chunking);
            // The CR fits, its LF does not: a CRLF is written whole or not at all.
            assert_eq!(
                (over.out.as_slice(), over.violation),
                (&b"abc"[..], Some(Violation::TooBig))
            );
            for got in [at, over] {
                assert_eq!((got.consumed, got.finished, got.received), (8, true, 5));
            }
        }
    }
    // The same cut inside a run of whole lines (one copy for several lines).
    let got = run(Normalize, 4, &[b"abc\r\ndef\r\n.\r\n"]);
    assert_eq!(
        (got.out.as_slice(), got.violation),
        (&b"abc"[..], Some(Violation::TooBig))
    );
    let got = run(Reject, 0, &[b".\r\n"]);
    assert_eq!((got.out.as_slice(), got.violation), (&b".\r\n"[..], OK));
    let got = run(Reject, 2, &[b"abcdef\r\n.\r\n"]);
    assert_eq!(
        (got.out.as_slice(), got.violation),
        (&b"ab"[..], Some(Violation::TooBig))
    );
    // Bare newlines are counted as sent, then the limit still applies after normalising.
    let got = run(Normalize, 2, &[b"a\nb\r\n.\r\n"]);
    assert_eq!(
        (got.out.as_slice(), got.violation),
        (&b"a\r\n"[..], Some(Violation::TooBig))
    );
    // A violation that came first stays the reason.
    let got = run(Reject, 2, &[b"a\nbcdef\r\n.\r\n"]);
    assert_eq!((got.violation, got.finished), (BN, true));
}

/// Runs of ordinary lines are checked a block of octets at a time (`clean_blocks`). Empty lines,
/// a `.` line after one, a smuggled `\n.\n` and a NUL, each put after every line of a run of
/// 40 ordinary lines of varied lengths (so at every offset from a block's start, give or take):
/// fed whole (blocks) and one octet at a time (never a whole block), the outcome is the same,
/// and it is the one expected.
#[test]
fn data_decisions_inside_runs_of_ordinary_lines() {
    let lines: Vec<u8> = (0..40)
        .flat_map(|n| {
            let mut l: Vec<u8> = (0..(n * 7) % 90).map(|i| b'a' + (i % 26) as u8).collect();
            l.extend_from_slice(b"\r\n");
            l
        })
        .collect();
    // (inserted, output under Normalize, violation under Reject)
    let cases: [(&[u8], &[u8], Option<Violation>); 5] = [
        (b"\r\n\r\nx\r\n", b"\r\n\r\nx\r\n", None),
        (b"\r\n..\r\n", b"\r\n..\r\n", None),
        (b"\r\n\r\n..y\r\n", b"\r\n\r\n..y\r\n", None),
        (
            b"\n.\nz\r\n",
            b"\r\n..\r\nz\r\n",
            Some(Violation::BareNewline),
        ),
        (b"q\0q\r\n", b"qq\r\n", Some(Violation::Nul)),
    ];
    for (inserted, normalized, violation) in cases {
        let ends = lines.iter().enumerate().filter(|(_, &b)| b == b'\n');
        for cut in ends.map(|(i, _)| i + 1) {
            for (mode, expected_violation) in [(Normalize, None), (Reject, violation)] {
                let mut input = lines[..cut].to_vec();
                input.extend_from_slice(inserted);
                input.extend_from_slice(&lines[cut..]);
                input.extend_from_slice(b".\r\nQUIT\r\n");
                let got = whole(mode, &input);
                let octets: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(got, run(mode, u64::MAX, &octets), "{inserted:?} at {cut}");
                assert!(got.finished);
                assert_eq!(got.violation, expected_violation, "{inserted:?} at {cut}");
                assert_eq!(got.rest, b"QUIT\r\n");
                if mode == Normalize {
                    let mut expected = lines[..cut].to_vec();
                    expected.extend_from_slice(normalized);
                    expected.extend_from_slice(&lines[cut..]);
                    expected.extend_from_slice(b".\r\n");
                    assert_eq!(got.out, expected, "{inserted:?} at {cut}");
                }
            }
        }
    }
}
