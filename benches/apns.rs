//! APNs throughput: pushes/s from `ApnsProvider` to the APNs simulator over 1, 2 and 4
//! HTTP/2 connections, and — in the same run, against the same simulator — a bare hyper
//! HTTP/2 client sending the same requests (same headers, same payload, pre-signed
//! token) over TLS with the same number of connections and requests in flight. Prints
//! both and the ratio (target: the provider at ≥ 0.8× the bare client).
//!
//! Both clients and the simulator share the machine, so absolute figures are bounded by
//! the simulator's own TLS and HTTP/2 work; the ratio is what this measures.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::Kind;
use sca_dispatch::push::apns::{jwt, payload, ApnsProvider};
use sca_dispatch::push::{PushContent, PushMessage, PushProvider};
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight at once, for both clients.
const IN_FLIGHT: usize = 256;
/// Measured time per run.
const RUN: Duration = Duration::from_millis(2000);
const WARM_UP: Duration = Duration::from_millis(300);
const ROUNDS: usize = 2;

fn message(n: u64) -> PushMessage {
    PushMessage {
        challenge_id: format!("01JD3F6Y8W0QZ5N4B7K{n:07}").into(),
        kind: Kind::Payment,
        device_id: "d-iphone".into(),
        token: format!("{:064x}", n + 1).into(),
        content: PushContent::Challenge {
            title: Arc::from("Conferma pagamento"),
            body: Arc::from("125,40 € a Mario Rossi"),
            number_choices: None,
            extra: None,
        },
        expires_at_ms: chrono::Utc::now().timestamp_millis() + 600_000,
        app: Default::default(),
    }
}

/// Runs `IN_FLIGHT` workers calling `one(n)` for `dur`; returns completed requests/s.
async fn drive<F, Fut>(dur: Duration, one: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (done, failed, counter, one) =
            (done.clone(), failed.clone(), counter.clone(), one.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if one(n).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  ({failed} requests failed)");
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

async fn bare_connections(sim: &ApnsSim, n: usize) -> Vec<SendRequest<Full<Bytes>>> {
    let tls = Arc::new(
        sca_dispatch::tls::client_config(&sim.ca_pem_path().display().to_string(), &[b"h2"])
            .expect("TLS config"),
    );
    let mut out = Vec::new();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(sim.addr())
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = rustls::pki_types::ServerName::from(sim.addr().ip());
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS");
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        out.push(send);
    }
    out
}

async fn bare(sim: &ApnsSim, conns: usize, dur: Duration) -> f64 {
    let senders = Arc::new(bare_connections(sim, conns).await);
    let key = jwt::load_key(&sim.key_path().display().to_string()).expect("key");
    let now = chrono::Utc::now().timestamp() as u64;
    let bearer: Arc<str> = format!(
        "bearer {}",
        jwt::sign(&key, sim.key_id(), sim.team_id(), now)
    )
    .into();
    let topic: Arc<str> = sim.topic().into();
    let base: Arc<str> = sim.endpoint().into();
    drive(dur, move |n| {
        let senders = senders.clone();
        let (bearer, topic, base) = (bearer.clone(), topic.clone(), base.clone());
        async move {
            // The same request the provider sends, built the same way.
            let Ok(req) = payload::build(&message(n)) else {
                return false;
            };
            let mut r = http::Request::post(format!("{base}{}", req.path))
                .header("apns-push-type", req.push_type)
                .header("apns-priority", req.priority)
                .header("apns-expiration", req.expiration.as_str())
                .header("apns-topic", &*topic)
                .header("authorization", &*bearer)
                .header("content-type", "application/json");
            if let Some(id) = &req.collapse_id {
                r = r.header("apns-collapse-id", id.as_str());
            }
            let Ok(r) = r.body(Full::new(req.body)) else {
                return false;
            };
            let mut s = senders[n as usize % senders.len()].clone();
            match s.send_request(r).await {
                Ok(resp) => {
                    let ok = resp.status() == 200;
                    let _ = resp.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            }
        }
    })
    .await
}

async fn provider(sim: &ApnsSim, conns: usize, dur: Duration) -> f64 {
    let mut cfg = sim.config();
    cfg.connections = conns as u32;
    let p = Arc::new(ApnsProvider::new(&cfg).expect("provider"));
    // Let the pool connect before measuring.
    let t = Instant::now();
    while p.connections_live() < conns && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drive(dur, move |n| {
        let p = p.clone();
        async move { p.send(message(n)).await == PushResult::Delivered }
    })
    .await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = ApnsSim::start(ApnsSimOptions {
            max_recorded: 0,
            ..Default::default()
        })
        .await
        .expect("simulator");
        println!(
            "APNs push throughput to the simulator over TLS/HTTP2 ({IN_FLIGHT} in flight, best of {ROUNDS} × {:.1} s)",
            RUN.as_secs_f64()
        );
        println!("{:>11} {:>16} {:>16} {:>7}", "connections", "provider push/s", "bare hyper req/s", "ratio");
        for conns in [1usize, 2, 4] {
            let (mut best_p, mut best_b) = (0f64, 0f64);
            bare(&sim, conns, WARM_UP).await;
            provider(&sim, conns, WARM_UP).await;
            for _ in 0..ROUNDS {
                best_b = best_b.max(bare(&sim, conns, RUN).await);
                best_p = best_p.max(provider(&sim, conns, RUN).await);
            }
            println!(
                "{conns:>11} {best_p:>16.0} {best_b:>16.0} {:>7.2}",
                best_p / best_b.max(1.0)
            );
        }
        println!("simulator: {} pushes answered 200 over {} connections", sim.delivered_count(), sim.connections());
    });
}
