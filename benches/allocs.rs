//! Allocations per challenge through the whole engine (not a test): a challenge
//! accepted, pushed to two devices (APNs and FCM payloads built as the real providers
//! build them, the HTTP request itself left out), approved by a decision parsed from an
//! HTTP body, withdrawn from the other device, its outcome published and confirmed and
//! its delivery acked — on a current-thread runtime with the daemon's Prometheus
//! recorder installed, under the counting allocator
//! (`sca_dispatch::engine::footprint::count_allocations`). Beside it, in the same
//! process, the baseline: what the bare relay allocates for the same challenge (the
//! challenge parsed into a `serde_json::Value`, the two payloads, the outcome body).
//!
//! Allocation counts do not depend on the machine's noise: the figure before and after a
//! change is comparable across runs. `ALLOCS_N` sets the challenge count (default 5,000).
//! Prints the figures and writes `bench/results/allocs.json`.
//!
//! `ALLOCS_ONLY=engine` or `ALLOCS_ONLY=relay` runs one side alone and writes nothing:
//! `scripts/callgrind.sh` counts each side's instructions that way, collecting only
//! inside `count_allocations`.

use futures_util::future::BoxFuture;
use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::Platform;
use sca_dispatch::config::Config;
use sca_dispatch::engine::footprint::{count_allocations, Allocations, CountingAlloc};
use sca_dispatch::engine::sink::{OutcomeSink, ReplyTo};
use sca_dispatch::engine::{AckToken, DeliveryMeta, Engine, Providers};
use sca_dispatch::push::{PushMessage, PushProvider};
use sca_dispatch::wire::ops::{Authority, ChallengeId, DecisionBody};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Pushes answered at once, after the payload is built as the real provider builds it.
struct Provider {
    platform: Platform,
    sent: AtomicUsize,
}

impl PushProvider for Provider {
    fn platform(&self) -> Platform {
        self.platform
    }
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult> {
        match self.platform {
            Platform::Apns => drop(std::hint::black_box(
                sca_dispatch::push::apns::payload::build(&msg),
            )),
            _ => drop(std::hint::black_box(
                sca_dispatch::push::fcm::message::build_body(&msg, sca_dispatch::clock::now_ms()),
            )),
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { PushResult::Delivered })
    }
}

/// Every publish confirmed at once.
#[derive(Default)]
struct Sink {
    outcomes: AtomicUsize,
}

impl OutcomeSink for Sink {
    fn publish_outcome(&self, _: String, body: Vec<u8>, _: Option<ReplyTo>) -> BoxFuture<'_, bool> {
        drop(std::hint::black_box(body));
        self.outcomes.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { true })
    }
    fn publish_event(&self, _: &'static str, _: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn dead_letter(&self, _: Arc<str>, _: Vec<u8>, _: String) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn reply(&self, _: ReplyTo, _: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

struct Ack(Arc<AtomicUsize>);

impl AckToken for Ack {
    fn ack(self: Box<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn reject(self: Box<Self>) {}
}

fn body(id: &str, now: i64) -> Vec<u8> {
    serde_json::json!({
        "v": 1, "challenge_id": id, "user_id": format!("user-{id}"), "kind": "payment",
        "created_at": sca_dispatch::engine::json::rfc3339_ms(now), "ttl_seconds": 120,
        "locale": "it-IT",
        "transaction": {"amount": "1249.90", "currency": "EUR", "payee": "ACME Elettronica S.p.A."},
        "devices": [
            {"device_id": "d0", "platform": "apns", "token": "ab".repeat(32), "name": "iPhone di Mario"},
            {"device_id": "d1", "platform": "fcm", "token": format!("fcm-{}", "x".repeat(150)), "name": "Pixel"}
        ]
    })
    .to_string()
    .into_bytes()
}

const DECISION: &[u8] = br#"{"device_id":"d0","decision":"approve"}"#;

/// Yields until `done` holds (the spawned effects of the current-thread runtime ran).
async fn until(done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the engine did not get there");
}

/// `n` challenges through the engine, one after the other; returns the allocations.
fn engine_run(rt: &tokio::runtime::Runtime, prefix: &str, n: usize) -> Allocations {
    let now = sca_dispatch::clock::now_ms();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:06}")).collect();
    let bodies: Vec<Vec<u8>> = ids.iter().map(|id| body(id, now)).collect();
    let parsed: Vec<ChallengeId> = ids.iter().map(|i| ChallengeId::parse(i).unwrap()).collect();
    let mut cfg = Config::default();
    cfg.limits.challenges_per_minute = 1_000_000;
    cfg.limits.challenge_burst = 1_000_000;
    // As in the e2e benchmark, whose daemon is compared with the relay: no
    // `challenge.dispatched` event per challenge.
    cfg.amqp.dispatched_events = false;
    let apns = Arc::new(Provider {
        platform: Platform::Apns,
        sent: AtomicUsize::new(0),
    });
    let fcm = Arc::new(Provider {
        platform: Platform::Fcm,
        sent: AtomicUsize::new(0),
    });
    let sink = Arc::new(Sink::default());
    let acked = Arc::new(AtomicUsize::new(0));
    let engine = rt.block_on(async {
        Engine::new(
            &cfg,
            Providers {
                apns: Some(apns.clone()),
                fcm: Some(fcm.clone()),
                ..Providers::default()
            },
            sink.clone(),
        )
    });
    let sent = || apns.sent.load(Ordering::Relaxed) + fcm.sent.load(Ordering::Relaxed);
    let ((), counted) = count_allocations(|| {
        rt.block_on(async {
            for (i, (b, id)) in bodies.iter().zip(&parsed).enumerate() {
                engine.accept(b, DeliveryMeta::default(), Box::new(Ack(acked.clone())));
                until(|| sent() >= 2 * i + 2).await;
                let op = serde_json::from_slice::<DecisionBody>(DECISION)
                    .expect("a valid decision")
                    .into_op()
                    .expect("an approval");
                let answer = engine.operate_anywhere(id, op, Authority::Bearer).await;
                std::hint::black_box(answer);
                // The withdrawal of the other device, then the outcome's confirm and ack.
                until(|| sent() >= 3 * (i + 1) && acked.load(Ordering::Relaxed) > i).await;
            }
        })
    });
    assert_eq!(sink.outcomes.load(Ordering::Relaxed), n, "one outcome each");
    drop(engine);
    counted
}

/// What the bare relay allocates for the same challenge: the body parsed, the two
/// payloads built, the outcome body serialized.
fn relay_run(n: usize) -> Allocations {
    let now = sca_dispatch::clock::now_ms();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| body(&format!("relay-{i:06}"), now))
        .collect();
    let msg = |token: &str, device: &str| PushMessage {
        challenge_id: "relay-000000".into(),
        kind: sca_dispatch::challenge::model::Kind::Payment,
        device_id: device.into(),
        token: token.into(),
        content: sca_dispatch::push::PushContent::Challenge {
            title: "Conferma il pagamento".into(),
            body: "1249,90 EUR a ACME Elettronica S.p.A.".into(),
            number_choices: None,
            extra: None,
        },
        expires_at_ms: now + 120_000,
        app: Default::default(),
    };
    let (apns, fcm) = (msg(&"ab".repeat(32), "d0"), msg(&"x".repeat(154), "d1"));
    count_allocations(|| {
        for b in &bodies {
            let v: serde_json::Value = serde_json::from_slice(b).expect("valid JSON");
            drop(std::hint::black_box(
                sca_dispatch::push::apns::payload::build(&apns),
            ));
            drop(std::hint::black_box(
                sca_dispatch::push::fcm::message::build_body(&fcm, now),
            ));
            let decision: serde_json::Value = serde_json::from_slice(DECISION).expect("valid");
            let out = serde_json::json!({
                "v": 1, "challenge_id": v["challenge_id"], "user_id": v["user_id"],
                "kind": v["kind"], "outcome": "approved", "device_id": decision["device_id"],
                "decided_at": sca_dispatch::engine::json::rfc3339_ms(now),
            });
            drop(std::hint::black_box(serde_json::to_vec(&out)));
        }
    })
    .1
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("ALLOCS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let _prom = sca_dispatch::telemetry::prometheus();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match std::env::var("ALLOCS_ONLY").as_deref() {
        Ok("engine") => {
            engine_run(&rt, "alloc", n);
            return Ok(());
        }
        Ok("relay") => {
            relay_run(n);
            return Ok(());
        }
        Ok(other) => anyhow::bail!("ALLOCS_ONLY must be engine or relay, not {other:?}"),
        Err(_) => {}
    }
    // Warm-up: the metric families registered, the runtime's buffers grown.
    engine_run(&rt, "warm", 200);
    let engine = engine_run(&rt, "alloc", n);
    let relay = relay_run(n);
    let per = |a: Allocations| (a.calls as f64 / n as f64, a.bytes as f64 / n as f64);
    let (ec, eb) = per(engine);
    let (rc, rb) = per(relay);
    println!("allocations per challenge, {n} challenges (accept, 2 pushes, decision, withdrawal, confirmed outcome, ack):");
    println!("  engine: {ec:.1} allocations, {eb:.0} bytes asked");
    println!("  relay's own work (parse, 2 payloads, outcome body): {rc:.1} allocations, {rb:.0} bytes asked");
    println!("  engine / relay: {:.2}× the allocations", ec / rc);
    let json = serde_json::json!({
        "v": 1,
        "challenges": n,
        "what": "one challenge through the engine on a current-thread runtime with the Prometheus recorder: accepted, APNs and FCM payloads built, approved by a decision parsed from its HTTP body, the other device's withdrawal, the outcome published and confirmed, the delivery acked; the HTTP and AMQP I/O left out. The relay's own work: the body parsed into a serde_json::Value, the two payloads, the outcome serialized",
        "engine_allocations_per_challenge": (ec * 10.0).round() / 10.0,
        "engine_bytes_per_challenge": eb.round(),
        "relay_allocations_per_challenge": (rc * 10.0).round() / 10.0,
        "relay_bytes_per_challenge": rb.round(),
        "ratio": ((ec / rc) * 100.0).round() / 100.0,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("allocs.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    Ok(())
}
