//! The body's first line never continues the header above it (RFC 5322 §2.2.3): the sidecar's
//! Received header goes right before it, and a legacy backend prepends its own.

use super::*;

/// `(name, input, output)`, the same under both modes and for any chunking.
const FIRST_LINES: &[(&str, &[u8], &[u8])] = &[
    (
        "space",
        b" (client certificate verified)\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
        b"\r\n (client certificate verified)\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
    ),
    ("tab", b"\tby evil\r\n.\r\n", b"\r\n\tby evil\r\n.\r\n"),
    (
        "a stuffed dot the backend removes",
        b". x\r\n.\r\n",
        b"\r\n. x\r\n.\r\n",
    ),
    ("a dot and a tab", b".\tx\r\n.\r\n", b"\r\n.\tx\r\n.\r\n"),
    ("a lone space", b" \r\n.\r\n", b"\r\n \r\n.\r\n"),
    // Nothing else changes.
    ("empty", b".\r\n", b".\r\n"),
    (
        "an empty first line",
        b"\r\n x\r\n.\r\n",
        b"\r\n x\r\n.\r\n",
    ),
    (
        "white space later",
        b"Subject: a\r\n b\r\n.\r\n",
        b"Subject: a\r\n b\r\n.\r\n",
    ),
    ("a stuffed dot", b"..x\r\n.\r\n", b"..x\r\n.\r\n"),
    ("double dot then space", b".. x\r\n.\r\n", b".. x\r\n.\r\n"),
    (
        "a lone dot line",
        b"..\r\n x\r\n.\r\n",
        b"..\r\n x\r\n.\r\n",
    ),
];

#[test]
fn data_a_first_line_that_starts_with_white_space_follows_an_empty_line() {
    for &(name, input, want) in FIRST_LINES {
        let octets: Vec<&[u8]> = input.chunks(1).collect();
        for mode in [Normalize, Reject] {
            for got in [whole(mode, input), run(mode, u64::MAX, &octets)] {
                assert_eq!(
                    (got.out.as_slice(), got.violation),
                    (want, None),
                    "{name} {mode:?}: output {:?}",
                    String::from_utf8_lossy(&got.out)
                );
                assert!(got.finished, "{name}");
                // The empty line is ours: the client's octets are counted as sent.
                assert_eq!(got.received, input.len() as u64 - 3, "{name}");
            }
        }
    }
}

#[test]
fn data_white_space_after_what_normalising_removes_is_still_the_first_line() {
    for (input, want) in [
        (&b"\0 x\r\n.\r\n"[..], &b"\r\n x\r\n.\r\n"[..]),
        (b".\0 x\r\n.\r\n", b"\r\n. x\r\n.\r\n"),
        (b"\0. x\r\n.\r\n", b"\r\n. x\r\n.\r\n"),
        // A bare line end first is an empty line already.
        (b"\n x\r\n.\r\n", b"\r\n x\r\n.\r\n"),
        (b"\r x\r\n.\r\n", b"\r\n x\r\n.\r\n"),
    ] {
        assert_eq!(whole(Normalize, input).out, want, "{input:?}");
        let octets: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(Normalize, u64::MAX, &octets).out, want, "{input:?}");
        let refused = whole(Reject, input);
        assert!(
            refused.violation.is_some() && refused.out.is_empty(),
            "{input:?}"
        );
    }
}

#[test]
fn data_the_first_line_may_come_in_a_later_read() {
    let got = run(Reject, u64::MAX, &[b"", b".", b" x\r\n", b".\r\n"]);
    assert_eq!(got.out, b"\r\n. x\r\n.\r\n");
    // Folding a long first line keeps it the client's: only its continuations start with a
    // space, after its first 998 octets.
    let mut long = vec![b'a'; MAX_LINE + 10];
    long.extend_from_slice(b"\r\n.\r\n");
    let got = whole(Reject, &long);
    assert_eq!(got.violation, None);
    assert!(got.out.starts_with(b"aaa"));
}
