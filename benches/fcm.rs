//! FCM throughput: messages/s from `FcmProvider` to the FCM simulator, and in the same run
//! a bare hyper client sending the same requests (same bodies, same bearer token, same
//! concurrency, same kind of pooled connections) as the ceiling to compare against. The
//! bare client does nothing but POST prebuilt bodies; the provider also builds each body,
//! goes through its token cache, concurrency limit, timeout and classification.
//!
//! Run: `cargo bench --bench fcm`. Prints both rates and their ratio.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::Kind;
use sca_dispatch::push::fcm::message::build_body;
use sca_dispatch::push::fcm::FcmProvider;
use sca_dispatch::push::{PushContent, PushMessage, PushProvider};
use sca_dispatch::sim::fcm::{FcmSim, FcmSimOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CONCURRENCY: usize = 64;
const MESSAGES: usize = 20_000;
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
        device_id: "d-pixel".into(),
        token: format!("bench-token:{i:08}").into(),
        content: PushContent::Challenge {
            title: Arc::from("Approve payment"),
            body: Arc::from("Payment of €125.40 to Mario Rossi"),
            number_choices: None,
        },
        expires_at_ms: now_ms() + 300_000,
    }
}

async fn run_provider(provider: &Arc<FcmProvider>, n: usize) -> f64 {
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
    client: &Client<HttpConnector, Full<Bytes>>,
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
                    .header(http::header::CONTENT_TYPE, "application/json; charset=UTF-8")
                    .header(http::header::AUTHORIZATION, bearer.clone())
                    .body(Full::new(bodies[i].clone()))
                    .expect("request");
                let resp = client.request(req).await.expect("bare request");
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await.expect("body");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = FcmSim::start(FcmSimOptions {
            max_recorded: 0,
            ..FcmSimOptions::default()
        })
        .await
        .expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("sa.json");
        sim.write_service_account(&key).expect("key file");
        let mut cfg = sim.fcm_config(&key);
        cfg.max_concurrent = CONCURRENCY as u32;
        let provider = Arc::new(FcmProvider::new(&cfg).expect("provider"));

        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let bare: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(http);
        let uri: http::Uri = format!(
            "{}/v1/projects/{}/messages:send",
            sim.endpoint(),
            sim.project_id()
        )
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
                "round {round}: FcmProvider {p:>8.0} msg/s   bare hyper {b:>8.0} msg/s   ratio {:.2}",
                p / b
            );
            best_provider = best_provider.max(p);
            best_bare = best_bare.max(b);
        }
        println!(
            "fcm: {MESSAGES} messages x {ROUNDS} rounds, concurrency {CONCURRENCY}, HTTP/1.1 to the simulator on loopback"
        );
        println!(
            "fcm: best FcmProvider {best_provider:.0} msg/s, best bare hyper client {best_bare:.0} msg/s, ratio {:.2} (target >= 0.80)",
            best_provider / best_bare
        );
        println!("fcm: access tokens minted: {}", sim.token_mints());
        sim.shutdown().await;
    });
}
