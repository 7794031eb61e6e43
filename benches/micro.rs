//! Criterion micro benchmarks of the hot paths: challenge validation, state-machine
//! transitions, the challenge table under contention, the per-user rate limiter, and
//! one-time-code hashing and checking. Each group also runs a baseline (the bare
//! operation underneath) in the same process, so the figures read as ratios.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use sca_dispatch::challenge::machine::{Challenge, Event, PushResult};
use sca_dispatch::challenge::model::parse_challenge;
use sca_dispatch::challenge::otp::{generate_code, OtpHasher};
use sca_dispatch::config::LimitsConfig;
use sca_dispatch::limits::UserLimiter;
use std::sync::Arc;

const NOW: i64 = 1_795_462_800_000;

fn body(id: &str) -> Vec<u8> {
    serde_json::json!({
        "v": 1, "challenge_id": id, "user_id": "12345678", "kind": "payment",
        "created_at": "2026-11-23T19:40:00Z", "ttl_seconds": 120, "locale": "it",
        "transaction": {"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"},
        "devices": [
            {"device_id": "d-iphone", "platform": "apns", "token": "ab".repeat(32), "name": "iPhone di Mario"},
            {"device_id": "d-pixel", "platform": "fcm", "token": "f".repeat(152), "name": "Pixel"}
        ],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 30}
    })
    .to_string()
    .into_bytes()
}

fn validation(c: &mut Criterion) {
    let b = body("01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    let mut g = c.benchmark_group("validation");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline: serde_json::Value parse", |x| {
        x.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&b)).unwrap()))
    });
    g.bench_function("parse_challenge", |x| {
        x.iter(|| black_box(parse_challenge(black_box(&b), NOW, 60_000).unwrap()))
    });
    g.finish();
}

fn machine(c: &mut Criterion) {
    let spec = parse_challenge(&body("c1"), NOW, 60_000).unwrap();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("start + 2 push results + approve", |x| {
        x.iter(|| {
            let (mut m, cmds) = Challenge::start(spec.clone(), NOW, &[true, true], 30, None);
            black_box(cmds);
            black_box(m.handle(
                NOW + 5,
                Event::PushResult {
                    device: 0,
                    result: PushResult::Delivered,
                },
            ));
            black_box(m.handle(
                NOW + 6,
                Event::PushResult {
                    device: 1,
                    result: PushResult::Delivered,
                },
            ));
            black_box(m.handle(
                NOW + 7,
                Event::Decision {
                    device_id: "d-pixel",
                    approve: true,
                    signature: None,
                    number: None,
                },
            ));
            m
        })
    });
    g.bench_function("baseline: clone the spec", |x| {
        x.iter(|| black_box(spec.clone()))
    });
    g.finish();
}

fn table(c: &mut Criterion) {
    let spec = parse_challenge(&body("c1"), NOW, 60_000).unwrap();
    let mut g = c.benchmark_group("table_contention");
    for threads in [1usize, 2, 4] {
        let per = 20_000 / threads;
        g.throughput(Throughput::Elements((per * threads) as u64));
        g.bench_with_input(
            BenchmarkId::new("insert+lookup+remove", threads),
            &threads,
            |x, &threads| {
                x.iter(|| {
                    let t: Arc<DashMap<Arc<str>, Challenge>> = Arc::new(DashMap::new());
                    std::thread::scope(|s| {
                        for th in 0..threads {
                            let t = t.clone();
                            let spec = spec.clone();
                            s.spawn(move || {
                                for i in 0..per {
                                    let id: Arc<str> = format!("{th}-{i}").into();
                                    let (m, _) = Challenge::start(
                                        spec.clone(),
                                        NOW,
                                        &[true, true],
                                        30,
                                        None,
                                    );
                                    t.insert(id.clone(), m);
                                    black_box(t.get(&id).map(|e| e.is_done()));
                                    t.remove(&id);
                                }
                            });
                        }
                    });
                })
            },
        );
    }
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let l = UserLimiter::new(&LimitsConfig {
        challenges_per_minute: 1_000_000,
        challenge_burst: 1_000_000,
        prune_interval_seconds: 60,
        ..LimitsConfig::default()
    });
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let mut g = c.benchmark_group("rate_limiter");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("keyed check, 10k users", |x| {
        x.iter(|| {
            i = (i + 1) % users.len();
            black_box(l.check(&users[i]))
        })
    });
    let map: DashMap<String, u64> = DashMap::new();
    g.bench_function("baseline: dashmap entry increment", |x| {
        x.iter(|| {
            i = (i + 1) % users.len();
            *map.entry(users[i].clone()).or_default() += 1;
        })
    });
    g.finish();
}

fn payloads(c: &mut Criterion) {
    use sca_dispatch::challenge::model::Kind;
    use sca_dispatch::push::{PushContent, PushMessage};
    let (title, body) = sca_dispatch::texts::push_texts(
        "it",
        Kind::Payment,
        Some(&sca_dispatch::challenge::model::Transaction {
            amount: "125.40".into(),
            currency: "EUR".into(),
            payee: "Mario Rossi".into(),
        }),
    );
    let msg = |token: &str| PushMessage {
        challenge_id: "01JD3F6Y8W0QZ5N4B7K2M9XH1C".into(),
        kind: Kind::Payment,
        device_id: "d-iphone".into(),
        token: token.into(),
        content: PushContent::Challenge {
            title: title.clone().into(),
            body: body.clone().into(),
            number_choices: None,
            extra: None,
        },
        expires_at_ms: NOW + 120_000,
        app: Default::default(),
    };
    let apns = msg(&"ab".repeat(32));
    let fcm = msg(&"f".repeat(152));
    let mut g = c.benchmark_group("push_payload");
    g.throughput(Throughput::Elements(1));
    g.bench_function("apns request", |x| {
        x.iter(|| black_box(sca_dispatch::push::apns::payload::build(black_box(&apns)).unwrap()))
    });
    g.bench_function("fcm body", |x| {
        x.iter(|| {
            black_box(sca_dispatch::push::fcm::message::build_body(
                black_box(&fcm),
                NOW,
            ))
        })
    });
    g.bench_function("localized texts", |x| {
        x.iter(|| black_box(sca_dispatch::texts::push_texts("it", Kind::Login, None)))
    });
    g.bench_function("baseline: serde_json::to_vec of a small map", |x| {
        x.iter(|| black_box(serde_json::to_vec(&serde_json::json!({"type": "challenge", "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"})).unwrap()))
    });
    g.finish();
}

fn otp(c: &mut Criterion) {
    let h = OtpHasher::new([7; 32]);
    let stored = h.hash("123456", "01JD3F6Y8W0QZ5N4B7K2M9XH1C", "abc");
    let mut g = c.benchmark_group("otp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("generate (OS CSPRNG)", |x| {
        x.iter(|| black_box(generate_code()))
    });
    g.bench_function("hash", |x| {
        x.iter(|| black_box(h.hash(black_box("123456"), "01JD3F6Y8W0QZ5N4B7K2M9XH1C", "abc")))
    });
    g.bench_function("hash + constant-time verify", |x| {
        x.iter(|| {
            black_box(stored.matches(&h.hash(
                black_box("654321"),
                "01JD3F6Y8W0QZ5N4B7K2M9XH1C",
                "abc",
            )))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = validation, machine, table, limiter, payloads, otp
}
criterion_main!(benches);
