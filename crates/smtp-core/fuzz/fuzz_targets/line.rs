//! Fuzz the bounded line splitter: whatever the bytes and however they are split into
//! pushes, memory stays within the cap plus one push, no line carries an LF or exceeds the
//! cap, and the events do not depend on where the pushes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_core::line::{LineEvent, LineReader, MAX_COMMAND_LINE};

/// Push `chunks` one by one, draining after each, checking the bounds; returns all events.
fn run<'a>(cap: usize, chunks: impl Iterator<Item = &'a [u8]>) -> Vec<LineEvent> {
    let mut reader = LineReader::new(cap);
    let mut events = Vec::new();
    for chunk in chunks {
        reader.push(chunk);
        assert!(reader.buffered() <= cap + chunk.len());
        while let Some(event) = reader.next_line() {
            if let LineEvent::Line { line, crlf } = &event {
                assert!(!line.contains(&b'\n'));
                assert!(line.len() + if *crlf { 2 } else { 1 } <= cap);
            }
            events.push(event);
        }
        assert!(reader.buffered() <= cap);
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    // Small caps reach the over-long paths quickly; 255 tries the real one.
    let cap = if selector == 255 {
        MAX_COMMAND_LINE
    } else {
        1 + usize::from(selector % 64)
    };

    // Split points come from the data: each chunk's first byte says how long it is.
    let mut chunks = Vec::new();
    let mut rest = stream;
    while let Some(&first) = rest.first() {
        let (chunk, tail) = rest.split_at(rest.len().min(usize::from(first % 31) + 1));
        chunks.push(chunk);
        rest = tail;
    }

    let split = run(cap, chunks.into_iter());
    let whole = run(cap, std::iter::once(stream));
    assert_eq!(split, whole);
});
