//! The two line parsers every command and every backend reply go through (issue 16: "a
//! criterion bench per hot piece": the line reader and the reply parser).
//!
//! - `command_lines`: a workload-A client's commands (`smtp_core::line::LineReader` and
//!   `smtp_core::command::parse_command`), one command per read as a lock-step client sends
//!   them, and the same commands pipelined in one read.
//! - `reply_parser`: a backend's replies to those commands (`smtp_core::reply::ReplyParser`), one
//!   per read, and an Exchange 2003 EHLO reply of many lines arriving in one read and in pieces
//!   of 7 octets (a backend that trickles: each piece must not rescan the line).
//!
//! `cargo bench --bench lines` (`-- --save-baseline before` / `--baseline before` for a change).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtp_core::command::parse_command;
use smtp_core::line::{LineEvent, LineReader, MAX_EXTENDED_LINE};
use smtp_core::reply::ReplyParser;
use smtp_core::testing::EXCHANGE_2003;
use std::hint::black_box;

/// What a workload-A client sends outside the body, in order.
const COMMANDS: &[&[u8]] = &[
    b"EHLO client.bench.test\r\n",
    b"MAIL FROM:<sender@bench.test> SIZE=2048\r\n",
    b"RCPT TO:<rcpt@bench.test>\r\n",
    b"DATA\r\n",
    b"QUIT\r\n",
];

/// What a Postfix backend answers to those (the EHLO reply aside).
const REPLIES: &[&[u8]] = &[
    b"220 sink.bench.test ESMTP Postfix\r\n",
    b"250 2.1.0 Ok\r\n",
    b"250 2.1.5 Ok\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"250 2.0.0 Ok: queued as 4Fq2Xk0Zl9z9tY\r\n",
    b"221 2.0.0 Bye\r\n",
];

/// Every line of `reader`, parsed as a command; how many there were.
fn drain_commands(reader: &mut LineReader) -> usize {
    let mut n = 0;
    while let Some(event) = reader.next_line() {
        if let LineEvent::Line { line, .. } = event {
            black_box(parse_command(&line).is_ok());
            n += 1;
        }
    }
    n
}

/// Every complete reply of `parser`; how many there were.
fn drain_replies(parser: &mut ReplyParser) -> usize {
    let mut n = 0;
    while let Ok(Some(reply)) = parser.next_reply() {
        black_box(&reply);
        n += 1;
    }
    n
}

fn exchange_2003_wire() -> Vec<u8> {
    let last = EXCHANGE_2003.len() - 1;
    let mut wire = Vec::new();
    for (i, line) in EXCHANGE_2003.iter().enumerate() {
        let sep = if i < last { '-' } else { ' ' };
        wire.extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
    }
    wire
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_lines");
    g.throughput(Throughput::Elements(COMMANDS.len() as u64));
    g.bench_function("one_per_read", |b| {
        b.iter(|| {
            let mut reader = LineReader::new(MAX_EXTENDED_LINE);
            for command in COMMANDS {
                reader.push(black_box(command));
                drain_commands(&mut reader);
            }
        })
    });
    let pipelined = COMMANDS.concat();
    g.bench_function("pipelined", |b| {
        b.iter(|| {
            let mut reader = LineReader::new(MAX_EXTENDED_LINE);
            reader.push(black_box(&pipelined));
            drain_commands(&mut reader)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("reply_parser");
    g.throughput(Throughput::Elements(REPLIES.len() as u64));
    g.bench_function("one_per_read", |b| {
        b.iter(|| {
            let mut parser = ReplyParser::new();
            for reply in REPLIES {
                parser.push(black_box(reply));
                drain_replies(&mut parser);
            }
        })
    });
    g.finish();

    let ehlo = exchange_2003_wire();
    let mut g = c.benchmark_group("reply_parser_ehlo");
    g.throughput(Throughput::Bytes(ehlo.len() as u64));
    g.bench_function("one_read", |b| {
        b.iter(|| {
            let mut parser = ReplyParser::new();
            parser.push(black_box(&ehlo));
            drain_replies(&mut parser)
        })
    });
    g.bench_function("pieces_of_7", |b| {
        b.iter(|| {
            let mut parser = ReplyParser::new();
            let mut n = 0;
            for piece in ehlo.chunks(7) {
                parser.push(black_box(piece));
                n += drain_replies(&mut parser);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
