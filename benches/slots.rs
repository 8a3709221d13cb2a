//! What a handshake flood's refusal costs at the accept loop (issue 16: "the excess is refused
//! cheaply"): `smtp_sidecar::snapshot::HandshakeSlots::room`, which every connection accepted
//! while all of a listener's `max_handshakes` slots are taken asks before it is refused.
//!
//! - `room/full/N`: N slots, every one taken by a handshake on its own turn (none stalled, so
//!   every call answers "no room"), the default 128 and a large 4,096.
//!
//! `cargo bench --bench slots` (`-- --save-baseline before` / `--baseline before` for a change).

use criterion::{criterion_group, criterion_main, Criterion};
use smtp_sidecar::snapshot::HandshakeSlots;
use std::hint::black_box;

fn room(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("room/full");
    for n in [128, 4096] {
        let slots = HandshakeSlots::new(n);
        let held: Vec<_> = (0..n)
            .map(|_| {
                runtime
                    .block_on(slots.take(|| None, true))
                    .expect("a free slot")
            })
            .collect();
        assert!(!slots.room(), "every slot is taken");
        group.bench_function(n.to_string(), |b| b.iter(|| black_box(slots.room())));
        drop(held);
    }
    group.finish();
}

criterion_group!(benches, room);
criterion_main!(benches);
