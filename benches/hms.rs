//! Huawei Push Kit throughput: messages/s from `HmsProvider` to the Push Kit simulator,
//! and in the same run a bare hyper client sending the same requests (same bodies, same
//! bearer token, same concurrency, the same pooled hyper-util/rustls client) as the
//! ceiling to compare against. The bare client does nothing but POST prebuilt bodies;
//! the provider also builds each body, goes through its token cache, concurrency limit,
//! timeout and classification. Two transports: plain HTTP/1.1 (a connection per
//! concurrent request) and HTTPS with HTTP/2 (requests multiplexed on one connection).
//!
//! Run: `cargo bench --bench hms`. Prints both rates and their ratio.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::Kind;
use sca_dispatch::push::hms::message::build_body;
use sca_dispatch::push::hms::HmsProvider;
use sca_dispatch::push::{PushContent, PushMessage, PushProvider};
use sca_dispatch::sim::hms::{HmsSim, HmsSimOptions};
use sca_dispatch::tls::{json_client, JsonClient};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const CONCURRENCY: usize = 64;
const MESSAGES: usize = 30_000;
const ROUNDS: usize = 3;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn message(i: usize) -> PushMessage {
    PushMessage {
        challenge_id: Arc::from(format!("bench-{i:08}")),
        kind: Kind::Payment,
        device_id: "d-mate".into(),
        token: format!("bench-token-{i:08}").into(),
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

async fn run_provider(provider: &Arc<HmsProvider>, n: usize) -> f64 {
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
                let r = provider.send(message(i)).await;
                assert_eq!(r, PushResult::Delivered);
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn run_bare(
    client: &JsonClient,
    uri: &http::Uri,
    bearer: &http::HeaderValue,
    bodies: &Arc<Vec<Bytes>>,
) -> f64 {
    let n = bodies.len();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let uri = uri.clone();
        let bearer = bearer.clone();
        let bodies = bodies.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json;charset=UTF-8")
                    .header(http::header::AUTHORIZATION, bearer.clone())
                    .body(Full::new(bodies[i].clone()))
                    .expect("request");
                let resp = client.request(req).await.expect("bare request");
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                // The same check of Push Kit's answer the provider makes, at its cheapest.
                assert!(body.windows(8).any(|w| w == b"80000000"));
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn scenario(name: &str, tls: bool) {
    let sim = HmsSim::start(HmsSimOptions {
        max_recorded: 0,
        tls,
        ..HmsSimOptions::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = sim.write_config_files(dir.path()).expect("config files");
    cfg.max_concurrent = CONCURRENCY as u32;
    let provider = Arc::new(HmsProvider::new(&cfg).expect("provider"));
    let bare = json_client(&cfg.ca_file).expect("client");
    let uri: http::Uri = format!("{}/v1/{}/messages:send", sim.endpoint(), sim.app_id())
        .parse()
        .expect("uri");
    let bearer = http::HeaderValue::from_str(&format!("Bearer {}", sim.issue_access_token()))
        .expect("header");
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..MESSAGES)
            .map(|i| Bytes::from(build_body(&message(i), now_ms())))
            .collect(),
    );

    // Warm both pools and the token cache.
    run_provider(&provider, 2_000).await;
    run_bare(&bare, &uri, &bearer, &Arc::new(bodies[..2_000].to_vec())).await;

    let mut best_provider: f64 = 0.0;
    let mut best_bare: f64 = 0.0;
    for round in 1..=ROUNDS {
        let p = run_provider(&provider, MESSAGES).await;
        let b = run_bare(&bare, &uri, &bearer, &bodies).await;
        println!(
            "hms {name} round {round}: HmsProvider {p:>7.0} msg/s   bare hyper {b:>7.0} msg/s   ratio {:.2}",
            p / b
        );
        best_provider = best_provider.max(p);
        best_bare = best_bare.max(b);
    }
    println!(
        "hms {name}: best HmsProvider {best_provider:.0} msg/s, best bare hyper client {best_bare:.0} msg/s, ratio {:.2} (target >= 0.80); tokens minted {}",
        best_provider / best_bare,
        sim.token_mints()
    );
    sim.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "hms: {MESSAGES} messages x {ROUNDS} rounds per transport, concurrency {CONCURRENCY}, simulator on loopback in the same process"
    );
    rt.block_on(scenario("http/1.1", false));
    rt.block_on(scenario("https h2", true));
}
