//! Memory kept per challenge, measured with a counting allocator through the engine
//! core's public API (no broker): a pending challenge, the compact record retained
//! after its outcome is confirmed, and the record of a rejected challenge. The figures
//! printed here are the ones in ARCHITECTURE.md (`cargo test --test retained_memory -- --nocapture`).

use sca_dispatch::engine::core::{Core, DeliveryMeta, OsEntropy, Reach, Settings};
use sca_dispatch::wire::ops::{Authority, Operation};
use sca_dispatch::Config;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter of
// live bytes is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 20_000;

/// The allocation counter is global: the measurements take turns.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn body(i: usize, now: i64) -> Vec<u8> {
    let created = sca_dispatch::wire::rfc3339_ms(now);
    serde_json::json!({
        "v": 1, "challenge_id": format!("mem-{i:08}"), "user_id": "user-0001", "kind": "payment",
        "created_at": created, "ttl_seconds": 120, "locale": "it-IT",
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

#[test]
fn a_retained_challenge_is_a_compact_record() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = Config::default();
    cfg.limits.challenges_per_minute = 1_000_000;
    cfg.limits.challenge_burst = 1_000_000;
    let settings = Settings::from_config(
        &cfg,
        Reach {
            apns: true,
            fcm: true,
            hms: true,
            sms_gateway: true,
        },
    );
    let core: Core<u32> = Core::new(&cfg, settings, Box::new(OsEntropy));
    let now = sca_dispatch::engine::now_ms();
    let bodies: Vec<Vec<u8>> = (0..N).map(|i| body(i, now)).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("mem-{i:08}")).collect();

    let before = LIVE.load(Ordering::SeqCst);
    for (i, b) in bodies.iter().enumerate() {
        drop(core.intake(now, b, DeliveryMeta::default(), i as u32));
    }
    let pending = LIVE.load(Ordering::SeqCst) - before;
    for id in &ids {
        drop(core.operate(now + 1, id, &Operation::Cancel, Authority::Bearer));
        for d in 0..2 {
            drop(core.push_result(
                now + 2,
                id,
                d,
                sca_dispatch::challenge::machine::PushResult::Delivered,
            ));
        }
        drop(core.confirmed(now + 3, id));
    }
    let retained = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(core.held(), N);
    let (p, r) = (pending / N as isize, retained / N as isize);
    println!("bytes per pending challenge: {p}; per retained challenge: {r}");
    assert!(r < p, "retained {r} B is not smaller than pending {p} B");
    assert!(r < 1024, "retained {r} B per challenge");
    // Retention over: the memory goes back.
    for id in &ids {
        drop(core.tick(now + 10_000_000, id));
    }
    assert_eq!(core.held(), 0);
}

#[test]
fn a_retained_rejection_is_a_compact_record() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config::default();
    let settings = Settings::from_config(
        &cfg,
        Reach {
            apns: true,
            fcm: true,
            hms: true,
            sms_gateway: true,
        },
    );
    let core: Core<u32> = Core::new(&cfg, settings, Box::new(OsEntropy));
    let now = sca_dispatch::engine::now_ms();
    // Invalid (an out-of-range ttl) but with a readable id, user and kind.
    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let mut v: serde_json::Value = serde_json::from_slice(&body(i, now)).unwrap();
            v["ttl_seconds"] = serde_json::json!(5);
            v.to_string().into_bytes()
        })
        .collect();
    let ids: Vec<String> = (0..N).map(|i| format!("mem-{i:08}")).collect();
    let before = LIVE.load(Ordering::SeqCst);
    for (i, b) in bodies.iter().enumerate() {
        drop(core.intake(now, b, DeliveryMeta::default(), i as u32));
    }
    for id in &ids {
        drop(core.confirmed(now + 1, id));
    }
    let retained = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(core.held(), N);
    let r = retained / N as isize;
    println!("bytes per retained rejection: {r}");
    assert!(r < 1024, "retained {r} B per rejection");
    for id in &ids {
        drop(core.tick(now + 10_000_000, id));
    }
    assert_eq!(core.held(), 0);
}
