//! Throughput of the DATA reframer (`smtp_core::data`) on a 1 MiB message shaped like the load
//! generator's: six header lines, 76-character body lines (every 40th starting with a `.`, sent
//! dot-stuffed), then the end of data; fed in 16 KiB chunks as reads from a socket would be.
//! A second message has bare LF line ends, which `Normalize` rewrites to CRLF; a third has
//! 2,500-octet lines, which `LongLines::Fold` folds twice each (RFC 5322 §2.1.1).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtp_core::data::{BareNewlines, LongLines, Reframer};
use std::hint::black_box;

const SIZE: usize = 1 << 20;
const CHUNK: usize = 16 * 1024;

/// The message as sent after `354`, with `eol` ending every header and body line.
fn message(eol: &[u8]) -> Vec<u8> {
    let headers = [
        "From: <bench@example.com>",
        "To: <sink@example.net>",
        "Subject: reframer throughput",
        "Message-ID: <bench.1@example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
    ];
    let mut msg = Vec::with_capacity(SIZE + 4096);
    for h in headers {
        msg.extend_from_slice(h.as_bytes());
        msg.extend_from_slice(eol);
    }
    let letters = b"The quick brown fox jumps over the lazy dog 0123456789 ";
    let mut n = 0usize;
    while msg.len() < SIZE {
        if n % 40 == 39 {
            // A line that starts with "." goes out with one more (RFC 5321 §4.5.2).
            msg.extend_from_slice(b"..");
        }
        let skip = usize::from(n % 40 == 39);
        for k in skip..76 {
            msg.push(letters[(n * 5 + k) % letters.len()]);
        }
        msg.extend_from_slice(eol);
        n += 1;
    }
    // The end of data needs a real CRLF before it, whatever the line ends were.
    if !msg.ends_with(b"\r\n") {
        msg.extend_from_slice(b"\r\n");
    }
    msg.extend_from_slice(b".\r\n");
    msg
}

/// 1 MiB of 2,500-octet lines, then the end of data.
fn long_lines() -> Vec<u8> {
    let line = [vec![b'x'; 2500].as_slice(), b"\r\n"].concat();
    let mut msg: Vec<u8> = line.iter().copied().cycle().take(SIZE).collect();
    msg.truncate(msg.len() - msg.len() % line.len());
    msg.extend_from_slice(b".\r\n");
    msg
}

fn reframe(msg: &[u8], mode: BareNewlines, out: &mut BytesMut) -> bool {
    let mut reframer = Reframer::new(mode, LongLines::Fold, u64::MAX);
    for chunk in msg.chunks(CHUNK) {
        if reframer.feed(black_box(chunk), out).finished {
            return reframer.violation().is_none();
        }
    }
    false
}

fn bench(c: &mut Criterion) {
    let crlf = message(b"\r\n");
    let bare_lf = message(b"\n");
    let mut out = BytesMut::with_capacity(2 * SIZE);
    assert!(reframe(&crlf, BareNewlines::Normalize, &mut out));
    assert_eq!(&out[..], &crlf[..], "a canonical message passes unchanged");

    let mut group = c.benchmark_group("reframer");
    group.throughput(Throughput::Bytes(crlf.len() as u64));
    for (name, mode) in [
        ("crlf/reject", BareNewlines::Reject),
        ("crlf/normalize", BareNewlines::Normalize),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(reframe(&crlf, mode, &mut out))
            })
        });
    }
    group.throughput(Throughput::Bytes(bare_lf.len() as u64));
    group.bench_function("bare-lf/normalize", |b| {
        b.iter(|| {
            out.clear();
            black_box(reframe(&bare_lf, BareNewlines::Normalize, &mut out))
        })
    });
    let long = long_lines();
    out.clear();
    assert!(reframe(&long, BareNewlines::Reject, &mut out));
    let lines = (long.len() - 3) / 2502;
    assert_eq!(
        out.len(),
        long.len() + 2 * 3 * lines,
        "each line folded twice"
    );
    group.throughput(Throughput::Bytes(long.len() as u64));
    group.bench_function("long-lines/fold", |b| {
        b.iter(|| {
            out.clear();
            black_box(reframe(&long, BareNewlines::Reject, &mut out))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
