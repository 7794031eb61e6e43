//! The process allocator's upkeep while the daemon is idle. mimalloc returns memory
//! lazily: a block freed by another thread than the one that allocated it (the rule
//! on a work-stealing runtime) goes back into its page only when the owning thread
//! collects, and pages left empty are returned to the OS only when the allocator is
//! next called after their purge delay. After a burst, an idle daemon would keep its
//! peak resident. [`collect_when_idle`], run by every runtime thread when it parks
//! (and by each runtime every `runtime::UPKEEP_EVERY`, for a daemon left idle),
//! collects the calling thread's heap at most once per [`COLLECT_EVERY`]: often enough
//! to hand a burst's garbage back within seconds, seldom enough that under load the
//! collections and the page faults after them cost nothing measurable.
//!
//! Only for a binary whose `#[global_allocator]` is mimalloc (`main.rs`).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections on one thread.
pub const COLLECT_EVERY: Duration = Duration::from_secs(5);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Collects this thread's heap unless it did so less than [`COLLECT_EVERY`] ago
/// (a clock read otherwise).
pub fn collect_when_idle() {
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < COLLECT_EVERY)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: `mi_collect` takes no pointer; it works on the calling thread's own
        // heap and on the shared arenas under their own synchronisation.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
}
