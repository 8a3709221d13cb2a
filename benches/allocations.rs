//! Heap allocations per unit of work (issue 16: "allocations per session, a counting allocator
//! in a bench"), counted by dhat's global allocator: the SMTP work of one workload-A session in
//! memory (`common/a_session.rs`, as `benches/session.rs` times it), with and without the
//! Received header. Prints allocations and bytes per session, averaged over 1,000 sessions after
//! one that warms up (thread-locals and lazies out of the count), and what of it the set-up
//! alone costs (the test configuration, built per session here, is shared in the sidecar). Not a criterion bench: the
//! counting allocator would distort any timing. `cargo bench --bench allocations`.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[path = "common/a_session.rs"]
mod a_session;

const N: u64 = 1_000;

/// Allocations and bytes allocated per call of `work`.
fn per_call(work: impl Fn()) -> (u64, u64) {
    work();
    let before = dhat::HeapStats::get();
    for _ in 0..N {
        work();
    }
    let after = dhat::HeapStats::get();
    (
        (after.total_blocks - before.total_blocks) / N,
        (after.total_bytes - before.total_bytes) / N,
    )
}

fn main() {
    let _counting = dhat::Profiler::builder().testing().build();
    let body = a_session::body();
    for (name, received_header, second_ehlo) in [
        ("received_header", true, &b"EHLO client.test\r\n"[..]),
        ("no_received_header", false, b"EHLO client.test\r\n"),
        (
            "ehlo_to_backend_after_starttls",
            true,
            b"EHLO other.test\r\n",
        ),
    ] {
        let (blocks, bytes) = per_call(|| {
            std::hint::black_box(a_session::session(received_header, second_ehlo, &body));
        });
        println!("session_a/{name}: {blocks} allocations, {bytes} bytes per session");
    }
    // What of that is the harness's and the test configuration's, not a session's.
    let (blocks, bytes) = per_call(|| {
        let h = smtp_core::testing::Harness::greeted(smtp_core::testing::test_config());
        std::hint::black_box(h);
    });
    println!(
        "of which the set-up (test_config, Harness::greeted): {blocks} allocations, {bytes} bytes"
    );
}
