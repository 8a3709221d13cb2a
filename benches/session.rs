//! The SMTP work of one workload-A session, in memory (`smtp_core::testing::Harness`, no
//! sockets, no TLS): the backend's greeting, EHLO, STARTTLS, EHLO again (answered from the
//! backend's first reply), MAIL, RCPT, DATA, a 2 KiB message with the Received header, QUIT.
//! With `received_header` off and on, and with the EHLO after STARTTLS given another name, so
//! that it goes to the backend (what every STARTTLS session cost before that reply was kept).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

#[path = "common/a_session.rs"]
mod a_session;
use a_session::{body, session};

fn bench(c: &mut Criterion) {
    let body = body();
    let mut g = c.benchmark_group("session_a");
    g.bench_function("received_header", |b| {
        b.iter(|| session(true, black_box(b"EHLO client.test\r\n"), &body))
    });
    g.bench_function("no_received_header", |b| {
        b.iter(|| session(false, black_box(b"EHLO client.test\r\n"), &body))
    });
    g.bench_function("ehlo_to_backend_after_starttls", |b| {
        b.iter(|| session(true, black_box(b"EHLO other.test\r\n"), &body))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
