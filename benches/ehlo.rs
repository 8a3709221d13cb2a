//! The EHLO rewrite (`smtp_core::ehlo::rewrite_ehlo`): an Exchange 2003 reply with the lines
//! legacy servers add (`smtp_core::testing::EXCHANGE_2003`, as the rewrite's tests use it),
//! rewritten for a client before STARTTLS and after it, and the extensions read back from the
//! result (`Offered::from_reply`), as every EHLO of a session does; and the rewritten reply
//! written out (`Reply::write_to`), into a new buffer (the first reply after STARTTLS) and into
//! one a reply was written to before.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use smtp_core::ehlo::{rewrite_ehlo, EhloPolicy, Offered};
use smtp_core::reply::Reply;
use smtp_core::testing::EXCHANGE_2003;
use std::hint::black_box;

fn exchange_2003() -> Reply {
    Reply {
        code: 250,
        lines: EXCHANGE_2003.iter().map(|l| (*l).to_owned()).collect(),
    }
}

fn bench(c: &mut Criterion) {
    let reply = exchange_2003();
    let mut g = c.benchmark_group("ehlo_rewrite");
    for (name, in_tls) in [("before_starttls", false), ("after_starttls", true)] {
        let policy = EhloPolicy {
            hostname: "mx.example.com".to_owned(),
            offer_starttls: !in_tls,
            offer_auth: in_tls,
            max_size: 36_700_160,
            chunking: false,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let rewritten = rewrite_ehlo(black_box(&reply), &policy);
                black_box(Offered::from_reply(&rewritten))
            })
        });
    }
    g.finish();

    let policy = EhloPolicy {
        hostname: "mx.example.com".to_owned(),
        offer_starttls: false,
        offer_auth: true,
        max_size: 36_700_160,
        chunking: false,
    };
    let rewritten = rewrite_ehlo(&reply, &policy);
    let mut g = c.benchmark_group("ehlo_reply_write");
    g.bench_function("new_buffer", |b| {
        b.iter(|| {
            let mut out = BytesMut::new();
            black_box(&rewritten).write_to(&mut out);
            black_box(out)
        })
    });
    let mut out = BytesMut::new();
    g.bench_function("reused_buffer", |b| {
        b.iter(|| {
            black_box(&rewritten).write_to(&mut out);
            black_box(out.split());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
