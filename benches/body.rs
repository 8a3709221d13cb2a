//! A 1 MiB message body relayed in memory (`common/bulk.rs`: 16 KiB records, four to a read,
//! as the driver hands them over in workload Bfast). What it measures is the session's own
//! part of a bulk transfer: the reframer's scan and copy, and the backend buffer's
//! allocations. `cargo bench --bench body`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

#[path = "common/bulk.rs"]
mod bulk;
use bulk::{body, in_data, relay};

fn bench(c: &mut Criterion) {
    let body = body();
    let mut g = c.benchmark_group("body");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("relay_1mib", |b| {
        b.iter_batched(
            in_data,
            |h| relay(h, black_box(&body)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
