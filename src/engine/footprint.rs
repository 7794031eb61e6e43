//! Bytes the engine core keeps per challenge — while pending, as the compact record
//! retained after its outcome, and as the record of a rejected challenge — measured by
//! driving a [`Core`] through its public calls under a counting allocator. The
//! `retained_memory` test asserts on these figures and the e2e benchmark reports them.
//! [`count_allocations`] counts the allocation calls of any piece of work (the `allocs`
//! benchmark: allocations per challenge through the whole engine).
//!
//! A program that measures installs [`CountingAlloc`] as its `#[global_allocator]`; it
//! forwards every call to the system allocator and counts only while a measurement runs
//! (a relaxed load of a flag otherwise), so it costs nothing measurable outside
//! [`measure`] and [`count_allocations`]. Allocations made by other threads during a
//! measurement are counted too: measure while the program is otherwise idle.

use super::core::{Core, DeliveryMeta, OsEntropy, Reach, Settings};
use crate::challenge::machine::PushResult;
use crate::config::Config;
use crate::wire::ops::{Authority, Operation};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A global allocator that counts live bytes while [`measure`] runs.
pub struct CountingAlloc;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Allocation calls (`alloc` and `realloc`) and the bytes they asked for, while counting.
static CALLS: AtomicUsize = AtomicUsize::new(0);
static ASKED: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
/// The counter is global: measurements take turns.
static TURN: Mutex<()> = Mutex::new(());

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter of
// live bytes is kept beside it.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
            CALLS.fetch_add(1, Ordering::Relaxed);
            ASKED.fetch_add(l.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
            CALLS.fetch_add(1, Ordering::Relaxed);
            ASKED.fetch_add(new, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

/// Allocation calls counted over one piece of work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocations {
    /// `alloc` and `realloc` calls.
    pub calls: usize,
    /// Bytes those calls asked for.
    pub bytes: usize,
}

/// Runs `f` and counts the allocation calls made meanwhile, by every thread (run it on a
/// current-thread runtime, or while the program is otherwise idle). Meaningful only in
/// a program whose global allocator is [`CountingAlloc`] (otherwise it counts 0).
pub fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, Allocations) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (calls, asked) = (CALLS.load(Ordering::SeqCst), ASKED.load(Ordering::SeqCst));
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    let counted = Allocations {
        calls: CALLS.load(Ordering::SeqCst) - calls,
        bytes: ASKED.load(Ordering::SeqCst) - asked,
    };
    (r, counted)
}

/// What one measurement found, in bytes per challenge (table slot included).
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// Challenges measured for each figure.
    pub challenges: usize,
    /// A dispatched, undecided challenge: two devices, an SMS fallback, a payment.
    pub pending: isize,
    /// The same challenge after its outcome was confirmed.
    pub retained: isize,
    /// A rejected challenge (readable id, user and kind) after its outcome was confirmed.
    pub rejected: isize,
    /// Entries still held once every retention had run out (0 when nothing leaks).
    pub held_after_retention: usize,
    /// Live bytes left by the whole measurement once its core was dropped.
    pub leaked: isize,
}

/// The challenge body used for the measurement: two devices, SMS, a payment.
fn body(i: usize, now: i64, ttl_seconds: u32) -> Vec<u8> {
    let created = crate::wire::rfc3339_ms(now);
    serde_json::json!({
        "v": 1, "challenge_id": format!("mem-{i:08}"), "user_id": "user-0001", "kind": "payment",
        "created_at": created, "ttl_seconds": ttl_seconds, "locale": "it-IT",
        "transaction": {"amount": "1249.90", "currency": "EUR", "payee": "ACME Elettronica S.p.A."},
        "devices": [
            {"device_id": "iphone-15", "platform": "apns", "token": "ab".repeat(32), "name": "iPhone di Mario"},
            {"device_id": "pixel-8", "platform": "fcm", "token": format!("fcm-{}", "x".repeat(150)), "name": "Pixel"}
        ],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 30}
    })
    .to_string()
    .into_bytes()
}

fn core() -> Core<u32> {
    let mut cfg = Config::default();
    cfg.limits.challenges_per_minute = 1_000_000;
    cfg.limits.challenge_burst = 1_000_000;
    let reach = Reach {
        apns: true,
        fcm: true,
        hms: true,
        sms_gateway: true,
    };
    let settings = Settings::from_config(&cfg, reach);
    Core::new(&cfg, settings, Box::new(OsEntropy))
}

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// Measures with `n` challenges per figure. Meaningful only in a program whose global
/// allocator is [`CountingAlloc`] (otherwise every figure is 0).
pub fn measure(n: usize) -> Footprint {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let n = n.max(1);
    let now = crate::clock::now_ms();
    let ids: Vec<String> = (0..n).map(|i| format!("mem-{i:08}")).collect();
    let accepted: Vec<Vec<u8>> = (0..n).map(|i| body(i, now, 120)).collect();
    // Invalid (an out-of-range ttl) but with a readable id, user and kind.
    let refused: Vec<Vec<u8>> = (0..n).map(|i| body(i, now, 5)).collect();
    let start = live();
    COUNTING.store(true, Ordering::SeqCst);

    let core_a = core();
    let before = live();
    for (i, b) in accepted.iter().enumerate() {
        drop(core_a.intake(now, b, DeliveryMeta::default(), i as u32));
    }
    let pending = live() - before;
    for id in &ids {
        drop(core_a.operate(now + 1, id, &Operation::Cancel, Authority::Bearer));
        for d in 0..2 {
            drop(core_a.push_result(now + 2, id, d, PushResult::Delivered));
        }
        drop(core_a.confirmed(now + 3, id));
    }
    let retained = live() - before;

    let core_b = core();
    let before_b = live();
    for (i, b) in refused.iter().enumerate() {
        drop(core_b.intake(now, b, DeliveryMeta::default(), i as u32));
    }
    for id in &ids {
        drop(core_b.confirmed(now + 1, id));
    }
    let rejected = live() - before_b;

    for id in &ids {
        drop(core_a.tick(now + 10_000_000, id));
        drop(core_b.tick(now + 10_000_000, id));
    }
    let held_after_retention = core_a.held() + core_b.held();
    drop(core_a);
    drop(core_b);
    let leaked = live() - start;
    COUNTING.store(false, Ordering::SeqCst);
    let per = |b: isize| b / n as isize;
    Footprint {
        challenges: n,
        pending: per(pending),
        retained: per(retained),
        rejected: per(rejected),
        held_after_retention,
        leaked,
    }
}
