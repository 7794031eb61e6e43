//! Memory kept per challenge, measured with a counting allocator through the engine
//! core's public API (no broker): a pending challenge, the compact record retained
//! after its outcome is confirmed, and the record of a rejected challenge. The figures
//! printed here are the ones in ARCHITECTURE.md (`cargo test --test retained_memory -- --nocapture`);
//! the e2e benchmark reports the same measurement.

use sca_dispatch::engine::footprint::{measure, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn retained_challenges_and_rejections_are_compact_records() {
    let f = measure(20_000);
    println!(
        "bytes per pending challenge: {}; per retained challenge: {}; per retained rejection: {}",
        f.pending, f.retained, f.rejected
    );
    assert!(f.pending > 0, "the counting allocator is in use");
    assert!(
        f.retained < f.pending,
        "retained {} B is not smaller than pending {} B",
        f.retained,
        f.pending
    );
    assert!(f.retained < 1024, "retained {} B per challenge", f.retained);
    assert!(f.rejected < 1024, "retained {} B per rejection", f.rejected);
    // Retention over: the entries and their memory go.
    assert_eq!(f.held_after_retention, 0);
    assert!(
        f.leaked < 64 * 1024,
        "{} bytes left after the cores were dropped",
        f.leaked
    );
}
