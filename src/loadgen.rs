//! Load generation shared by `sca-dispatch demo --load` and the end-to-end benchmark:
//! a publisher (flat out or at a fixed rate, with publisher confirms), simulated devices
//! that decide over HTTP a moment after their push reaches the FCM simulator, an outcome
//! reader, and latency recorders.

use crate::engine::json::rfc3339_ms;
use crate::engine::now_ms;
use crate::sim::fcm::{FcmSim, RecordedMessage};
use dashmap::DashMap;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, Semaphore};

/// The bearer token the demo and the benchmarks configure and send.
pub const API_TOKEN: &str = "sca-load-token";
const BEARER: &str = "Bearer sca-load-token";

/// Latency samples in microseconds.
#[derive(Default)]
pub struct Latencies(Mutex<Vec<u32>>);

impl Latencies {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }
    /// Takes the samples out (for per-second figures).
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
    pub fn snapshot(&self) -> Vec<u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The `p`-quantile (0..=1) of samples in milliseconds; `None` without samples.
pub fn quantile_ms(samples: &mut [u32], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * p).round() as usize;
    Some(samples[i] as f64 / 1000.0)
}

/// One load run's counters and timings.
pub struct Run {
    pub prefix: String,
    pub published: AtomicU64,
    pub pushed: AtomicU64,
    pub decided: AtomicU64,
    pub outcomes: AtomicU64,
    pub publish_to_push: Latencies,
    pub decision_to_outcome: Latencies,
    pub publish_to_outcome: Latencies,
    published_at: DashMap<u64, Instant>,
    decided_at: DashMap<u64, Instant>,
    first_push: DashMap<u64, ()>,
}

impl Run {
    pub fn new() -> Arc<Run> {
        Arc::new(Run {
            prefix: format!("ld{:06x}-", rand::random::<u32>() & 0xff_ffff),
            published: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            decided: AtomicU64::new(0),
            outcomes: AtomicU64::new(0),
            publish_to_push: Latencies::default(),
            decision_to_outcome: Latencies::default(),
            publish_to_outcome: Latencies::default(),
            published_at: DashMap::new(),
            decided_at: DashMap::new(),
            first_push: DashMap::new(),
        })
    }

    pub fn id(&self, seq: u64) -> String {
        format!("{}{seq}", self.prefix)
    }

    fn seq(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&self.prefix)?.parse().ok()
    }

    /// A challenge with two devices, APNs and FCM in alternating order, for user `seq`.
    pub fn challenge(&self, seq: u64, ttl_seconds: u64) -> Vec<u8> {
        let apns =
            json!({"device_id": "ios", "platform": "apns", "token": format!("{:064x}", seq + 1)});
        let fcm =
            json!({"device_id": "android", "platform": "fcm", "token": format!("load-{seq}")});
        let devices = if seq % 2 == 0 {
            vec![apns, fcm]
        } else {
            vec![fcm, apns]
        };
        let locale = ["it", "en", "sq"][(seq % 3) as usize];
        json!({
            "v": 1,
            "challenge_id": self.id(seq),
            "user_id": format!("load-user-{seq}"),
            "kind": if seq % 3 == 0 { "payment" } else { "login" },
            "created_at": rfc3339_ms(now_ms()),
            "ttl_seconds": ttl_seconds,
            "locale": locale,
            "transaction": {"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"},
            "devices": devices,
        })
        .to_string()
        .into_bytes()
    }

    /// Publishes `total` challenges (flat out when `rate` is `None`, else at `rate`/s),
    /// keeping at most 1,000 publishes awaiting their confirm.
    pub async fn publish(
        self: &Arc<Self>,
        ch: &Channel,
        queue: &str,
        rate: Option<f64>,
        total: u64,
        ttl_seconds: u64,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut inflight = FuturesUnordered::new();
        let started = Instant::now();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        for seq in 0..total {
            if *stop.borrow() {
                break;
            }
            if let Some(r) = rate {
                let due = started + Duration::from_secs_f64(seq as f64 / r);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            while inflight.len() >= 1000 {
                if let Some(r) = inflight.next().await {
                    r?;
                }
            }
            let body = self.challenge(seq, ttl_seconds);
            self.published_at.insert(seq, Instant::now());
            let confirm = ch
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await?;
            self.published.fetch_add(1, Ordering::Relaxed);
            inflight.push(confirm);
        }
        while let Some(r) = inflight.next().await {
            r?;
        }
        Ok(())
    }

    /// Simulated devices: when a challenge's push reaches the FCM simulator, the device
    /// approves it over HTTP after `decide_after` (`None`: nobody answers).
    pub async fn devices(
        self: &Arc<Self>,
        mut feed: broadcast::Receiver<RecordedMessage>,
        base: String,
        decide_after: Option<Duration>,
        concurrency: usize,
    ) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(concurrency)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let slots = Arc::new(Semaphore::new(concurrency));
        loop {
            let m = match feed.recv().await {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("load generator lagged {n} pushes");
                    continue;
                }
                Err(_) => return,
            };
            let data = m.data();
            if data["type"] != "challenge" {
                continue;
            }
            let Some(seq) = data["challenge_id"].as_str().and_then(|id| self.seq(id)) else {
                continue;
            };
            if self.first_push.insert(seq, ()).is_some() {
                continue;
            }
            self.pushed.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.published_at.get(&seq) {
                self.publish_to_push
                    .record(m.received_at.saturating_duration_since(*t));
            }
            let Some(delay) = decide_after else { continue };
            let run = self.clone();
            let client = client.clone();
            let slots = slots.clone();
            let url = format!("{base}/v1/challenges/{}/decision", self.id(seq));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(_permit) = slots.acquire().await else {
                    return;
                };
                let req = hyper::Request::post(url)
                    .header("content-type", "application/json")
                    .header("authorization", BEARER)
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        br#"{"device_id":"android","decision":"approve"}"#,
                    )));
                let Ok(req) = req else { return };
                run.decided_at.insert(seq, Instant::now());
                if let Ok(resp) = client.request(req).await {
                    if resp.status().is_success() {
                        run.decided.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
            });
        }
    }

    /// Reads outcomes until `expected` arrived or the consumer ends.
    pub async fn outcomes(self: &Arc<Self>, mut consumer: lapin::Consumer, expected: u64) {
        while let Some(Ok(d)) = consumer.next().await {
            let now = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let Some(seq) = v["challenge_id"].as_str().and_then(|id| self.seq(id)) else {
                continue;
            };
            if let Some(t) = self.decided_at.get(&seq) {
                self.decision_to_outcome
                    .record(now.saturating_duration_since(*t));
            }
            if let Some((_, t)) = self.published_at.remove(&seq) {
                self.publish_to_outcome
                    .record(now.saturating_duration_since(t));
            }
            self.decided_at.remove(&seq);
            self.first_push.remove(&seq);
            if self.outcomes.fetch_add(1, Ordering::Relaxed) + 1 >= expected {
                return;
            }
        }
    }
}

/// The `--load RATE` phase of the demo: runs until Ctrl-C or `duration`, printing one
/// line per second.
pub async fn demo_load(
    conn: &lapin::Connection,
    cfg: &crate::config::Config,
    base: &str,
    fcm: Arc<FcmSim>,
    rate: u32,
    duration: Option<Duration>,
    daemon: &crate::daemon::Daemon,
) -> anyhow::Result<()> {
    println!("\nLoad: {rate} challenges/s from simulated users; devices approve 200 ms after their push. Ctrl-C stops.");
    println!(
        "{:>6} {:>10} {:>9} {:>9} {:>10} {:>16} {:>16}",
        "t (s)",
        "published",
        "pushed",
        "outcomes",
        "in flight",
        "pub→push p50/p99",
        "decide→out p50/p99"
    );
    let run = Run::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ch = conn.create_channel().await?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let consumer = crate::amqp::client::tap(conn, &cfg.amqp.outcomes_exchange).await?;
    let r = run.clone();
    let outcomes = tokio::spawn(async move { r.outcomes(consumer, u64::MAX).await });
    let r = run.clone();
    let (feed, base) = (fcm.subscribe(), base.to_string());
    let devices = tokio::spawn(async move {
        r.devices(feed, base, Some(Duration::from_millis(200)), 256)
            .await
    });
    let r = run.clone();
    let pch = ch.clone();
    let queue = cfg.amqp.challenges_queue.clone();
    let publisher = tokio::spawn(async move {
        r.publish(&pch, &queue, Some(rate as f64), u64::MAX, 120, stop_rx)
            .await
    });
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_p, mut last_push, mut last_o) = (0, 0, 0);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        let (p, pu, o) = (
            run.published.load(Ordering::Relaxed),
            run.pushed.load(Ordering::Relaxed),
            run.outcomes.load(Ordering::Relaxed),
        );
        let mut a = run.publish_to_push.take();
        let mut b = run.decision_to_outcome.take();
        let fmt = |s: &mut [u32]| match (quantile_ms(s, 0.5), quantile_ms(s, 0.99)) {
            (Some(x), Some(y)) => format!("{x:.1}/{y:.1} ms"),
            _ => "-".into(),
        };
        println!(
            "{:>6} {:>10} {:>9} {:>9} {:>10} {:>16} {:>16}",
            started.elapsed().as_secs(),
            p - last_p,
            pu - last_push,
            o - last_o,
            daemon.engine.pending(),
            fmt(&mut a),
            fmt(&mut b)
        );
        (last_p, last_push, last_o) = (p, pu, o);
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let _ = publisher.await;
    devices.abort();
    outcomes.abort();
    Ok(())
}
