//! The EHLO rewrite (`smtp_core::ehlo::rewrite_ehlo`): an Exchange 2003 reply with the lines
//! legacy servers add (X-EXPS, XEXCH50, TURN, AUTH with an unknown mechanism, a duplicate),
//! rewritten for a client before STARTTLS and after it, and the extensions read back from the
//! result (`Offered::from_reply`), as every EHLO of a session does.

use criterion::{criterion_group, criterion_main, Criterion};
use smtp_core::ehlo::{rewrite_ehlo, EhloPolicy, Offered};
use smtp_core::reply::Reply;
use std::hint::black_box;

fn exchange_2003() -> Reply {
    let lines = [
        "mail.contoso.local Hello [192.0.2.10]",
        "TURN",
        "ATRN",
        "SIZE 10485760",
        "ETRN",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "8bitmime",
        "BINARYMIME",
        "CHUNKING",
        "VRFY",
        "X-EXPS GSSAPI NTLM LOGIN",
        "X-EXPS=LOGIN",
        "AUTH GSSAPI NTLM LOGIN X-UNKNOWN!",
        "AUTH=LOGIN",
        "X-LINK2STATE",
        "XEXCH50",
        "PIPELINING",
        "OK",
    ];
    Reply {
        code: 250,
        lines: lines.iter().map(|l| (*l).to_owned()).collect(),
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
