//! Heap allocations per call, counted by dhat's global allocator (which the including
//! binary installs, with a profiler in testing mode alive around the calls): shared by
//! `benches/allocations.rs`, which prints them, and `tests/allocations.rs`, which holds them to
//! a budget.

/// Allocations and bytes allocated per call of `work`, averaged over `n` calls.
pub fn per_call(n: u64, work: impl Fn()) -> (u64, u64) {
    per_call_of(n, || (), |()| work())
}

/// Allocations and bytes allocated per call of `work`, on what `setup` made (not counted),
/// averaged over `n` calls after one that warms up (thread-locals and lazies out of the
/// count).
pub fn per_call_of<T>(n: u64, setup: impl Fn() -> T, work: impl Fn(T)) -> (u64, u64) {
    work(setup());
    let (mut blocks, mut bytes) = (0, 0);
    for _ in 0..n {
        let input = setup();
        let before = dhat::HeapStats::get();
        work(input);
        let after = dhat::HeapStats::get();
        blocks += after.total_blocks - before.total_blocks;
        bytes += after.total_bytes - before.total_bytes;
    }
    (blocks / n, bytes / n)
}
