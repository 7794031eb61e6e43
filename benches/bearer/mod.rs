//! What the FCM and Push Kit throughput benches share: the message, the provider's loop,
//! the bare client's loop over prebuilt bodies, and the rounds that compare the two.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::Kind;
use sca_dispatch::push::{PushContent, PushMessage, PushProvider};
use sca_dispatch::tls::JsonClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const CONCURRENCY: usize = 64;
pub const MESSAGES: usize = 30_000;
pub const ROUNDS: usize = 3;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The device every message goes to: its id and how its tokens start.
#[derive(Clone, Copy)]
pub struct Device {
    pub id: &'static str,
    pub token_prefix: &'static str,
}

pub fn message(device: Device, i: usize) -> PushMessage {
    PushMessage {
        challenge_id: Arc::from(format!("bench-{i:08}")),
        kind: Kind::Payment,
        device_id: device.id.into(),
        token: format!("{}{i:08}", device.token_prefix).into(),
        content: PushContent::Challenge {
            title: Arc::from("Approve payment"),
            body: Arc::from("Payment of €125.40 to Mario Rossi"),
            number_choices: None,
            extra: None,
        },
        expires_at_ms: now_ms() + 300_000,
        app: Default::default(),
    }
}

/// Messages/s of `provider` sending `n` messages, `CONCURRENCY` at a time.
pub async fn run_provider<P: PushProvider + 'static>(
    provider: &Arc<P>,
    device: Device,
    n: usize,
) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let provider = provider.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = provider.send(message(device, i)).await;
                assert_eq!(r, PushResult::Delivered);
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The bare client: POSTs prebuilt bodies with a fixed bearer token and checks each
/// answer at its cheapest.
pub struct Bare {
    pub client: JsonClient,
    pub uri: http::Uri,
    pub bearer: http::HeaderValue,
    pub content_type: &'static str,
    pub accepted: fn(&Bytes) -> bool,
}

/// Messages/s of the bare client sending every one of `bodies`.
pub async fn run_bare(bare: &Arc<Bare>, bodies: &Arc<Vec<Bytes>>) -> f64 {
    let n = bodies.len();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let bare = bare.clone();
        let bodies = bodies.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let req = http::Request::post(bare.uri.clone())
                    .header(http::header::CONTENT_TYPE, bare.content_type)
                    .header(http::header::AUTHORIZATION, bare.bearer.clone())
                    .body(Full::new(bodies[i].clone()))
                    .expect("request");
                let resp = bare.client.request(req).await.expect("bare request");
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert!((bare.accepted)(&body), "the bare request was not accepted");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Warms both, then `ROUNDS` rounds of the provider and the bare client side by side;
/// prints each round and returns the best rate of each.
pub async fn compare<P: PushProvider + 'static>(
    label: &str,
    provider: &Arc<P>,
    device: Device,
    bare: Bare,
    build_body: fn(&PushMessage, i64) -> Vec<u8>,
) -> (f64, f64) {
    let bare = Arc::new(bare);
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..MESSAGES)
            .map(|i| Bytes::from(build_body(&message(device, i), now_ms())))
            .collect(),
    );
    // Warm both pools and the token cache.
    run_provider(provider, device, 2_000).await;
    run_bare(&bare, &Arc::new(bodies[..2_000].to_vec())).await;
    let (mut best_provider, mut best_bare) = (0f64, 0f64);
    for round in 1..=ROUNDS {
        let p = run_provider(provider, device, MESSAGES).await;
        let b = run_bare(&bare, &bodies).await;
        println!(
            "{label} round {round}: provider {p:>7.0} msg/s   bare hyper {b:>7.0} msg/s   ratio {:.2}",
            p / b
        );
        best_provider = best_provider.max(p);
        best_bare = best_bare.max(b);
    }
    (best_provider, best_bare)
}
