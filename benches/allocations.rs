//! Heap allocations per unit of work (issue 16: "allocations per session, a counting allocator
//! in a bench"), counted by dhat's global allocator: the SMTP work of one workload-A session in
//! memory (`common/a_session.rs`, as `benches/session.rs` times it), with and without the
//! Received header, and a 1 MiB body relayed as workload Bfast hands it over (`common/bulk.rs`).
//! Prints allocations and bytes per session, averaged over 1,000 sessions after
//! one that warms up (thread-locals and lazies out of the count), and what of it the set-up
//! alone costs (the test configuration, built per session here, is shared in the sidecar). Not a criterion bench: the
//! counting allocator would distort any timing. `cargo bench --bench allocations`; `tests/allocations.rs` holds the same counts to a budget.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[path = "common/a_session.rs"]
mod a_session;
#[path = "common/bulk.rs"]
mod bulk;
#[path = "common/counting.rs"]
mod counting;

use counting::{per_call, per_call_of};

/// Sessions (or bodies) averaged over.
const N: u64 = 1_000;

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
        let (blocks, bytes) = per_call(N, || {
            std::hint::black_box(a_session::session(received_header, second_ehlo, &body));
        });
        println!("session_a/{name}: {blocks} allocations, {bytes} bytes per session");
    }
    // A 1 MiB body relayed in 16 KiB records, four to a read (set-up excluded).
    let body = bulk::body();
    let (blocks, bytes) = per_call_of(N, bulk::in_data, |h| {
        std::hint::black_box(bulk::relay(h, &body));
    });
    println!("body/relay_1mib: {blocks} allocations, {bytes} bytes per MiB");
    // What of that is the harness's and the test configuration's, not a session's.
    let (blocks, bytes) = per_call(N, || {
        let h = smtp_core::testing::Harness::greeted(smtp_core::testing::test_config());
        std::hint::black_box(h);
    });
    println!(
        "of which the set-up (test_config, Harness::greeted): {blocks} allocations, {bytes} bytes"
    );
}
