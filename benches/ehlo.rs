//! The EHLO rewrite (`smtp_core::ehlo::rewrite_ehlo`): an Exchange 2003 reply with the lines
//! legacy servers add (`smtp_core::testing::EXCHANGE_2003`, as the rewrite's tests use it),
//! rewritten for a client before STARTTLS and after it, and the extensions read back from the
//! result (`Offered::from_reply`), as every EHLO of a session does.

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
