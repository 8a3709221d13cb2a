//! Fuzzes the DATA reframer with arbitrary bytes in arbitrary chunks and checks what the legacy
//! backend would receive (RFC 5321 §4.1.1.4, §4.5.2): no bare CR, no bare LF, no NUL, no line
//! over 998 octets + CRLF (RFC 5322 §2.1.1), and the end-of-data marker exactly once, last, and
//! only for an accepted message.
//!
//! The first byte chooses the set-up: bit 0 the bare-newline mode, bit 1 a small size limit (so
//! the cut at `max_size` is exercised), bit 2 the long-line policy, bits 3..8 the chunk size (1
//! to 32 bytes). The input is also fed whole, which checks runs of ordinary lines a block at a
//! time: the outcome must be the same. Run with `-max_len=4096` or more so that long lines
//! occur.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_core::data::{BareNewlines, LongLines, Reframer, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let Some((&setup, input)) = data.split_first() else {
        return;
    };
    let mode = if setup & 1 == 0 {
        BareNewlines::Reject
    } else {
        BareNewlines::Normalize
    };
    let max_size = if setup & 2 == 0 {
        u64::MAX
    } else {
        u64::try_from(input.len() / 2).unwrap_or(u64::MAX)
    };
    let long_lines = if setup & 4 == 0 {
        LongLines::Fold
    } else {
        LongLines::Reject
    };
    let chunk = usize::from(setup >> 3) + 1;

    let mut reframer = Reframer::new(mode, long_lines, max_size);
    let mut out = BytesMut::new();
    let mut finished = false;
    for piece in input.chunks(chunk) {
        let fed = reframer.feed(piece, &mut out);
        assert!(fed.consumed <= piece.len());
        if fed.finished {
            finished = true;
            break;
        }
        assert_eq!(
            fed.consumed,
            piece.len(),
            "input left over without an end of data"
        );
    }

    // Chunking never changes anything; fed whole, runs of lines are checked a block at a time.
    let mut whole = Reframer::new(mode, long_lines, max_size);
    let mut whole_out = BytesMut::new();
    let fed = whole.feed(input, &mut whole_out);
    assert_eq!(fed.finished, finished);
    assert_eq!(whole_out, out);
    assert_eq!(whole.violation(), reframer.violation());
    assert_eq!(whole.received(), reframer.received());

    // (a) Canonical line ends only, and no NUL.
    for (i, &b) in out.iter().enumerate() {
        assert_ne!(b, 0, "NUL in output at {i}");
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR in output at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF in output at {i}");
        }
    }
    // (c) No line longer than the backend's buffer, whichever policy (a refused message stops
    // before the 999th octet).
    for line in out[..].split(|&b| b == b'\n') {
        let len = line.strip_suffix(b"\r").unwrap_or(line).len();
        assert!(len <= MAX_LINE, "a line of {len} octets in output");
    }
    // (b) One end-of-data marker (the DATA command's CRLF precedes a leading ".\r\n"), at the
    // very end, only when the message was accepted.
    let markers = out.windows(5).filter(|w| w == b"\r\n.\r\n").count()
        + usize::from(out.starts_with(b".\r\n"));
    if finished && reframer.violation().is_none() {
        assert_eq!(markers, 1);
        assert!(out.ends_with(b"\r\n.\r\n") || &out[..] == b".\r\n");
    } else {
        assert_eq!(markers, 0);
    }
});
