//! `sca-dispatch demo`: the APNs, FCM, Push Kit and SMS simulators and the daemon in one process
//! against the local RabbitMQ, with the real transports. It plays the scenarios a
//! newcomer wants to see and prints a timeline per challenge; `--load RATE` then keeps it
//! running with simulated users, printing throughput and latency each second.

use crate::config::Config;
use crate::daemon::{providers_from_config, Daemon};
use crate::engine::json::rfc3339_ms;
use crate::engine::now_ms;
use crate::sim::apns::{ApnsSim, ApnsSimOptions};
use crate::sim::fcm::{FcmSim, FcmSimOptions};
use crate::sim::hms::{HmsSim, HmsSimOptions};
use crate::sim::sms::{Shape, SmsSim, SmsSimOptions};
use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `sca-dispatch demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub amqp_url: String,
    /// Challenges per second for the load phase (none: scenarios only).
    pub load: Option<u32>,
    /// How long the load phase runs (none: until Ctrl-C).
    pub duration: Option<Duration>,
}

/// Everything that happened to each challenge, in order.
#[derive(Default)]
struct Timeline {
    lines: Mutex<BTreeMap<String, Vec<(Instant, String)>>>,
}

impl Timeline {
    fn note(&self, id: &str, what: impl Into<String>) {
        self.note_at(id, Instant::now(), what);
    }
    fn note_at(&self, id: &str, at: Instant, what: impl Into<String>) {
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(id.to_string()).or_default().push((at, what.into()));
    }
    /// Whether `id` has a line starting with `prefix`.
    fn has(&self, id: &str, prefix: &str) -> bool {
        let l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.get(id)
            .is_some_and(|e| e.iter().any(|(_, w)| w.starts_with(prefix)))
    }
    fn print(&self, id: &str) {
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let Some(events) = l.get_mut(id) else { return };
        events.sort_by_key(|(t, _)| *t);
        let t0 = events[0].0;
        for (t, what) in events.iter() {
            println!("    {:>8.3} s  {what}", t.duration_since(t0).as_secs_f64());
        }
    }
}

/// The demo's broker client: publishes challenges, reads outcomes, events, dead letters.
struct Broker {
    conn: Connection,
    ch: Channel,
    names: crate::config::AmqpConfig,
}

impl Broker {
    async fn connect(cfg: &Config) -> anyhow::Result<Broker> {
        let conn = crate::amqp::client::connect(&cfg.amqp.url, "sca-dispatch demo client")
            .await
            .with_context(|| {
                format!(
                    "connecting to RabbitMQ at {}",
                    crate::amqp::redact_url(&cfg.amqp.url)
                )
            })?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Broker {
            conn,
            ch,
            names: cfg.amqp.clone(),
        })
    }

    async fn publish(&self, body: &[u8]) -> anyhow::Result<()> {
        self.ch
            .basic_publish(
                "".into(),
                self.names.challenges_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        Ok(())
    }
}

const IPHONE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn challenge(id: &str, user: &str, kind: &str) -> Value {
    json!({
        "v": 1,
        "challenge_id": id,
        "user_id": user,
        "kind": kind,
        "created_at": rfc3339_ms(now_ms()),
        "ttl_seconds": 120,
        "locale": "it",
        "devices": [
            {"device_id": "d-iphone", "platform": "apns", "token": IPHONE, "name": "iPhone di Mario"},
            {"device_id": "d-pixel", "platform": "fcm", "token": format!("fcm-pixel-{user}"), "name": "Pixel"}
        ],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 60}
    })
}

/// A demo device's offline key as the challenge carries it (base64).
fn key_base64(key: &crate::challenge::offline::OfflineKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.bytes())
}

/// Watches the simulators and the broker, writing what they saw into the timeline.
fn observe(
    tl: Arc<Timeline>,
    apns: &ApnsSim,
    fcm: &FcmSim,
    sms: &SmsSim,
    mut outcomes: lapin::Consumer,
    mut events: lapin::Consumer,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // The simulators' feeds: each record is seen once, as it is answered (no copying of
    // what was recorded before).
    let t = tl.clone();
    let mut feed = apns.subscribe();
    tasks.push(tokio::spawn(async move {
        loop {
            let p = match feed.recv().await {
                Ok(p) => p,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let id = p.payload["challenge_id"].as_str().unwrap_or("?");
            let what = if p.payload["type"] == "withdraw" {
                "withdrawal"
            } else {
                "push"
            };
            t.note(
                id,
                format!(
                    "APNs {what} to iPhone ({}): {} {}",
                    p.header("apns-push-type"),
                    p.status,
                    p.reason.clone().unwrap_or_default()
                ),
            );
        }
    }));
    let t = tl.clone();
    let mut feed = fcm.subscribe();
    tasks.push(tokio::spawn(async move {
        loop {
            let m = match feed.recv().await {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let d = m.data();
            let id = d["challenge_id"].as_str().unwrap_or("?");
            let what = if d["type"] == "withdraw" {
                "withdrawal".to_string()
            } else {
                format!("push \"{}\"", d["body"].as_str().unwrap_or(""))
            };
            t.note_at(
                id,
                m.received_at,
                format!("FCM {what} to {}: {}", m.token, m.status),
            );
        }
    }));
    let t = tl.clone();
    let mut feed = sms.subscribe();
    tasks.push(tokio::spawn(async move {
        while let Ok(m) = feed.recv().await {
            let id = m.reference.clone().unwrap_or_default();
            t.note(
                &id,
                format!("SMS to {}: \"{}\"", crate::sms::mask_phone(&m.to), m.text),
            );
        }
    }));
    let t = tl.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(Ok(d)) = outcomes.next().await {
            let v: Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let id = v["challenge_id"].as_str().unwrap_or("?");
            t.note(
                id,
                format!(
                    "OUTCOME {} (channel {}, device {}, reason {}) on {}",
                    v["outcome"], v["channel"], v["device_id"], v["reason"], d.routing_key
                ),
            );
        }
    }));
    let t = tl;
    tasks.push(tokio::spawn(async move {
        while let Some(Ok(d)) = events.next().await {
            let v: Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let id = v["challenge_id"].as_str().unwrap_or("?");
            t.note(id, format!("event {}", d.routing_key));
        }
    }));
    tasks
}

/// Writes what the Push Kit simulator saw into the timeline.
fn observe_hms(tl: Arc<Timeline>, hms: Arc<HmsSim>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = 0usize;
        loop {
            let msgs = hms.messages();
            for m in msgs.iter().skip(seen) {
                let id = m.data["challenge_id"].as_str().unwrap_or("?");
                let what = if m.data["type"] == "withdraw" {
                    "withdrawal".to_string()
                } else {
                    format!("push \"{}\"", m.data["body"].as_str().unwrap_or(""))
                };
                tl.note_at(
                    id,
                    m.received_at,
                    format!("HMS {what} to {}: {} {}", m.token(), m.status, m.code),
                );
            }
            seen = msgs.len();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

struct Http {
    base: String,
    token: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Http {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        use http_body_util::BodyExt;
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let resp = self.client.request(req).await?;
        let st = resp.status().as_u16();
        let b = resp.into_body().collect().await?.to_bytes();
        Ok((st, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }
}

impl Http {
    /// A device's decision, noted on the challenge's timeline as `who`.
    async fn decide(
        &self,
        tl: &Timeline,
        id: &str,
        device: &str,
        decision: &str,
        who: &str,
    ) -> anyhow::Result<()> {
        let body = json!({"device_id": device, "decision": decision});
        let (st, b) = self
            .call("POST", &format!("/v1/challenges/{id}/decision"), Some(body))
            .await?;
        tl.note(id, format!("{who}: POST /decision → {st} {b}"));
        Ok(())
    }
}

/// Waits until `cond` holds, up to `secs`.
async fn until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The `--load RATE` phase: the project's load tool against the demo's daemon, until
/// Ctrl-C or `duration`, one line per second; the CPU column is this whole process.
async fn demo_load(
    cfg: &Config,
    http: &Http,
    apns: &ApnsSim,
    fcm: &FcmSim,
    sms: &SmsSim,
    rate: u32,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    use crate::loadgen::{mix::Shares, player::Feeds, LoadOptions};
    println!("\nLoad: {rate} challenges/s from simulated users (two devices each, APNs and FCM); devices approve 200 ms after their push. Ctrl-C stops.");
    println!("(cores: CPU of this process — daemon, simulators and load tool together)");
    let mut o = LoadOptions::new(&cfg.amqp.url, &http.base);
    o.challenges_queue = cfg.amqp.challenges_queue.clone();
    o.outcomes_exchange = cfg.amqp.outcomes_exchange.clone();
    o.api_token = Some(http.token.clone());
    o.rate = Some(rate.max(1) as f64);
    // Until Ctrl-C means at most a week.
    o.duration = Some(duration.unwrap_or(Duration::from_secs(7 * 24 * 3600)));
    o.devices_per_challenge = 2;
    o.kinds = Shares::parse("login=2,payment=1")?;
    o.ttl_seconds = 120;
    o.drain = Duration::from_secs(5);
    o.pids = vec![std::process::id()];
    let feeds = Feeds {
        apns: Some(apns.subscribe()),
        fcm: Some(fcm.subscribe()),
        hms: None,
        sms: Some(sms.subscribe()),
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = crate::loadgen::run_until(o, feeds, ctrl_c).await?;
    print!("{}", report.summary());
    Ok(())
}

/// The demo's own namespace, `sca-demo-<random>`, so it never touches a production
/// `sca.*` topology nor another demo running on the same broker (two demos sharing one
/// queue would take each other's challenges, and the first to finish would delete it).
pub fn demo_config(amqp_url: &str) -> Config {
    let mut c = Config::default();
    let ns = format!("sca-demo-{:06x}", rand::random::<u32>() & 0xff_ffff);
    c.amqp = c.amqp.namespaced(&ns);
    c.amqp.url = amqp_url.to_string();
    c.http.addr = "127.0.0.1:0".into();
    c.metrics.addr = "127.0.0.1:0".into();
    c.shutdown.grace_seconds = 3;
    // The API is never open: a fresh bearer token per run.
    c.http.api_tokens = format!("demo-{:032x}", rand::random::<u128>());
    c
}

/// Runs the demo; `Ok(true)` when every scenario ended as expected.
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("sca-dispatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "sca-dispatch demo — simulators and daemon in one process, RabbitMQ at {}",
        crate::amqp::redact_url(&opts.amqp_url)
    );
    let apns = Arc::new(
        ApnsSim::start(ApnsSimOptions {
            dir: Some(dir.join("apns")),
            max_recorded: 1000,
            ..Default::default()
        })
        .await?,
    );
    let fcm = Arc::new(
        FcmSim::start(FcmSimOptions {
            max_recorded: 1000,
            ..Default::default()
        })
        .await?,
    );
    let hms = Arc::new(HmsSim::start(HmsSimOptions::default()).await?);
    let sms = SmsSim::start(SmsSimOptions::default()).await?;
    println!(
        "  APNs simulator  {} (HTTP/2 over TLS, CA {})",
        apns.endpoint(),
        apns.ca_pem_path().display()
    );
    println!(
        "  FCM simulator   {} (OAuth2 token endpoint {})",
        fcm.endpoint(),
        fcm.token_uri()
    );
    println!(
        "  HMS simulator   {} (Push Kit, OAuth 2.0 token endpoint {})",
        hms.endpoint(),
        hms.token_endpoint()
    );
    println!("  SMS simulator   {} (webhook)", sms.webhook_url());

    let mut cfg = demo_config(&opts.amqp_url);
    cfg.apns = apns.config();
    std::fs::create_dir_all(dir.join("fcm"))?;
    cfg.fcm = fcm
        .write_config_files(&dir.join("fcm"))
        .context("writing the FCM service account")?;
    std::fs::create_dir_all(dir.join("hms"))?;
    cfg.hms = hms
        .write_config_files(&dir.join("hms"))
        .context("writing the Push Kit app secret")?;
    cfg.sms = sms.config(Shape::Webhook);
    cfg.limits.challenges_per_minute = 3;
    cfg.limits.challenge_burst = 3;
    let settings = cfg.validate()?;
    let broker = Broker::connect(&cfg).await?;
    let providers = providers_from_config(&settings)?;
    let daemon = Daemon::start(settings, providers).await?;
    if !until(10, || daemon.status.connected()).await {
        anyhow::bail!("the daemon could not connect to RabbitMQ");
    }
    // Leftovers of an interrupted earlier run would confuse the timelines.
    let _ = broker
        .ch
        .queue_purge(
            cfg.amqp.dead_queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await;
    println!(
        "  daemon          http://{} (metrics http://{}/metrics), queues {}.*\n",
        daemon.http_addr,
        daemon.metrics_addr,
        cfg.amqp.challenges_queue.trim_end_matches(".challenges")
    );

    let tl = Arc::new(Timeline::default());
    let mut observers = observe(
        tl.clone(),
        &apns,
        &fcm,
        &sms,
        crate::amqp::client::tap(&broker.conn, &cfg.amqp.outcomes_exchange).await?,
        crate::amqp::client::tap(&broker.conn, &cfg.amqp.events_exchange).await?,
    );
    observers.push(observe_hms(tl.clone(), hms.clone()));
    let http = Http {
        base: format!("http://{}", daemon.http_addr),
        token: cfg.http.api_tokens.clone(),
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    };
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut results: Vec<(&str, String, String, bool)> = Vec::new();
    let outcome_of = |id: &str| {
        let l = tl.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.get(id).and_then(|v| {
            v.iter().find_map(|(_, w)| {
                w.strip_prefix("OUTCOME ").map(|s| {
                    s.split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_string()
                })
            })
        })
    };
    let pushes_for = |id: &str| {
        let l = tl.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.get(id)
            .map(|v| v.iter().filter(|(_, w)| w.contains(" push")).count())
            .unwrap_or(0)
    };

    // 1. A login pushed to two devices, approved on one, withdrawn from the other.
    let id = format!("demo-{run_id}-login");
    println!(
        "1. Login pushed to iPhone (APNs), Pixel (FCM) and Huawei Mate (HMS), approved on the Pixel"
    );
    let mut c = challenge(&id, "mario", "login");
    if let Some(devices) = c["devices"].as_array_mut() {
        devices.push(json!({"device_id": "d-mate", "platform": "hms", "token": "hms-mate-mario", "name": "Huawei Mate"}));
    }
    broker.publish(c.to_string().as_bytes()).await?;
    tl.note(&id, format!("published to {}", cfg.amqp.challenges_queue));
    until(10, || pushes_for(&id) >= 3).await;
    http.decide(&tl, &id, "d-pixel", "approve", "Pixel approves")
        .await?;
    until(10, || outcome_of(&id).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    http.decide(&tl, &id, "d-iphone", "deny", "iPhone answers late")
        .await?;
    let hms_withdrawn = until(5, || {
        hms.delivered()
            .iter()
            .any(|m| m.data["type"] == "withdraw" && m.data["challenge_id"] == id.as_str())
    })
    .await;
    tl.print(&id);
    results.push((
        "login approved on one device",
        id.clone(),
        outcome_of(&id).unwrap_or_default(),
        outcome_of(&id).as_deref() == Some("approved") && hms_withdrawn,
    ));

    // 2. A payment whose push goes unanswered, then approved by SMS code.
    let id = format!("demo-{run_id}-payment");
    println!(
        "\n2. Payment of 125,40 € to Mario Rossi: push unanswered, SMS after 2 s, code entered"
    );
    let mut c = challenge(&id, "lucia", "payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["sms"]["fallback_after_seconds"] = json!(2);
    broker.publish(c.to_string().as_bytes()).await?;
    tl.note(&id, "published (fallback after 2 s)");
    let mut feed = sms.subscribe();
    let msg = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(m) = feed.recv().await {
                if m.reference.as_deref() == Some(id.as_str()) {
                    return Some(m);
                }
            }
        }
    })
    .await
    .ok()
    .flatten();
    let code = msg
        .as_ref()
        .and_then(|m| {
            m.text
                .split(|ch: char| !ch.is_ascii_digit())
                .find(|w| w.len() == 6)
                .map(String::from)
        })
        .unwrap_or_default();
    let sms_ok = msg
        .as_ref()
        .is_some_and(|m| m.text.contains("125,40 €") && m.text.contains("Mario Rossi"));
    let (st, b) = http
        .call(
            "POST",
            &format!("/v1/challenges/{id}/otp"),
            Some(json!({"code": code})),
        )
        .await?;
    tl.note(
        &id,
        format!("backend relays the code: POST /otp → {st} {b}"),
    );
    until(10, || outcome_of(&id).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.print(&id);
    results.push((
        "payment approved by SMS code",
        id.clone(),
        outcome_of(&id).unwrap_or_default(),
        outcome_of(&id).as_deref() == Some("approved") && sms_ok,
    ));

    // 3. A denial.
    let id = format!("demo-{run_id}-deny");
    println!("\n3. Device binding denied on the iPhone");
    broker
        .publish(
            challenge(&id, "anna", "device_binding")
                .to_string()
                .as_bytes(),
        )
        .await?;
    tl.note(&id, "published");
    until(10, || pushes_for(&id) >= 2).await;
    http.decide(&tl, &id, "d-iphone", "deny", "iPhone denies")
        .await?;
    until(10, || outcome_of(&id).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.print(&id);
    results.push((
        "denied",
        id.clone(),
        outcome_of(&id).unwrap_or_default(),
        outcome_of(&id).as_deref() == Some("denied"),
    ));

    // 4. An expiry.
    let id = format!("demo-{run_id}-expiry");
    println!("\n4. Login nobody answers: expires (created 8 s ago, ttl 10 s)");
    let mut c = challenge(&id, "piero", "login");
    c["created_at"] = json!(rfc3339_ms(now_ms() - 8_000));
    c["ttl_seconds"] = json!(10);
    c.as_object_mut().map(|o| o.remove("sms"));
    broker.publish(c.to_string().as_bytes()).await?;
    tl.note(&id, "published");
    until(15, || outcome_of(&id).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.print(&id);
    results.push((
        "expired",
        id.clone(),
        outcome_of(&id).unwrap_or_default(),
        outcome_of(&id).as_deref() == Some("expired"),
    ));

    // 5. A user hitting the rate limit (3 challenges in a burst are allowed).
    println!("\n5. One user sends 4 challenges in a row: the 4th is rate limited; the others are cancelled");
    let ids: Vec<String> = (1..=4).map(|i| format!("demo-{run_id}-busy-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i == 3 {
            // The daemon's consumers take deliveries in parallel: the 4th goes out once
            // the first three are dispatched, so that it is the one over the limit.
            until(10, || {
                ids[..3]
                    .iter()
                    .all(|id| tl.has(id, "event challenge.dispatched"))
            })
            .await;
        }
        broker
            .publish(
                challenge(id, &format!("busy-{run_id}"), "login")
                    .to_string()
                    .as_bytes(),
            )
            .await?;
        tl.note(id, "published");
    }
    until(10, || outcome_of(&ids[3]).is_some()).await;
    for id in &ids[..3] {
        let (st, b) = http
            .call("DELETE", &format!("/v1/challenges/{id}"), None)
            .await?;
        tl.note(id, format!("backend cancels: DELETE → {st} {b}"));
    }
    until(10, || ids.iter().all(|id| outcome_of(id).is_some())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        println!("  {id}");
        tl.print(id);
    }
    results.push((
        "rate limited",
        ids[3].clone(),
        outcome_of(&ids[3]).unwrap_or_default(),
        outcome_of(&ids[3]).as_deref() == Some("rate_limited"),
    ));

    // 6. A malformed message dead-lettered with its reason.
    let id = format!("demo-{run_id}-malformed");
    println!("\n6. A malformed challenge (ttl_seconds 5) is dead-lettered with its reason");
    let mut c = challenge(&id, "mario", "login");
    c["ttl_seconds"] = json!(5);
    broker.publish(c.to_string().as_bytes()).await?;
    tl.note(&id, "published");
    let mut reason = None;
    for _ in 0..100 {
        if let Some(d) = broker
            .ch
            .basic_get(
                cfg.amqp.dead_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await?
        {
            reason = d.delivery.properties.headers().as_ref().and_then(|h| {
                match h.inner().get("x-sca-reason") {
                    Some(lapin::types::AMQPValue::LongString(s)) => Some(s.to_string()),
                    _ => None,
                }
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tl.note(
        &id,
        format!(
            "in {}: x-sca-reason = {}",
            cfg.amqp.dead_queue,
            reason.clone().unwrap_or_else(|| "(none)".into())
        ),
    );
    until(5, || outcome_of(&id).is_some()).await;
    tl.print(&id);
    results.push((
        "dead-lettered",
        id.clone(),
        reason.clone().unwrap_or_default(),
        reason.is_some_and(|r| r.contains("ttl_seconds"))
            && outcome_of(&id).as_deref() == Some("rejected"),
    ));

    // 7. Offline confirmation: the app in airplane mode computes the code from the QR.
    let id = format!("demo-{run_id}-offline");
    println!(
        "\n7. Payment confirmed offline: the web page shows the QR, the Pixel's app (in airplane mode) shows the code"
    );
    let key = crate::challenge::offline::OfflineKey::from_bytes(rand::random());
    let mut c = challenge(&id, "sara", "payment");
    c["transaction"] = json!({"amount": "980.00", "currency": "EUR", "payee": "Arredo Casa Srl"});
    c["offline"] = json!(true);
    c["devices"][1]["offline_key"] = json!(key_base64(&key));
    c["user_label"] = json!("Conto famiglia");
    c["context"] = json!({"client": "Firefox su Windows", "location": "Bologna"});
    broker.publish(c.to_string().as_bytes()).await?;
    tl.note(&id, "published (offline: true)");
    until(10, || pushes_for(&id) >= 2).await;
    let (st, view) = http
        .call("GET", &format!("/v1/challenges/{id}"), None)
        .await?;
    let qr = view["qr"].as_str().unwrap_or_default().to_string();
    tl.note(
        &id,
        format!(
            "web page: GET → {st}, operation id {}, QR {qr}",
            view["operation_id"].as_str().unwrap_or("?")
        ),
    );
    let code = crate::challenge::offline::code_for_qr(&key, &qr).unwrap_or_default();
    tl.note(&id, format!("app scans the QR and shows {code}"));
    let (st, b) = http
        .call(
            "POST",
            &format!("/v1/challenges/{id}/offline"),
            Some(json!({"code": code})),
        )
        .await?;
    tl.note(&id, format!("backend relays it: POST /offline → {st} {b}"));
    until(10, || outcome_of(&id).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.print(&id);
    let offline_ok = {
        let l = tl.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.get(&id).is_some_and(|v| {
            v.iter()
                .any(|(_, w)| w.contains("OUTCOME \"approved\" (channel \"offline\""))
        })
    };
    results.push((
        "payment confirmed offline",
        id.clone(),
        outcome_of(&id).unwrap_or_default(),
        offline_ok,
    ));

    // 8. A fraud report, then the muted user's next challenge goes to SMS.
    let user = format!("giulia-{run_id}");
    let id = format!("demo-{run_id}-fraud");
    println!("\n8. A login the user did not start: denied as fraud; the next challenge is not pushed but sent by SMS");
    broker
        .publish(challenge(&id, &user, "login").to_string().as_bytes())
        .await?;
    tl.note(&id, "published");
    until(10, || pushes_for(&id) >= 2).await;
    let body = json!({"device_id": "d-iphone", "decision": "deny", "report_fraud": true});
    let (st, b) = http
        .call("POST", &format!("/v1/challenges/{id}/decision"), Some(body))
        .await?;
    tl.note(
        &id,
        format!("iPhone: \"not me\": POST /decision (report_fraud) → {st} {b}"),
    );
    until(10, || outcome_of(&id).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.print(&id);
    let fraud_ok = outcome_of(&id).as_deref() == Some("denied") && {
        let l = tl.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.get(&id)
            .is_some_and(|v| v.iter().any(|(_, w)| w.contains("user.fraud_reported")))
    };
    let muted = format!("demo-{run_id}-muted");
    println!("  {muted}");
    let mut feed = sms.subscribe();
    let mut c = challenge(&muted, &user, "login");
    c["sms"]["fallback_after_seconds"] = json!(60);
    broker.publish(c.to_string().as_bytes()).await?;
    tl.note(
        &muted,
        "published (the user is muted after the fraud report)",
    );
    let msg = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(m) = feed.recv().await {
                if m.reference.as_deref() == Some(muted.as_str()) {
                    return Some(m);
                }
            }
        }
    })
    .await
    .ok()
    .flatten();
    let code = msg
        .as_ref()
        .and_then(|m| {
            m.text
                .split(|ch: char| !ch.is_ascii_digit())
                .find(|w| w.len() == 6)
                .map(String::from)
        })
        .unwrap_or_default();
    let (st, b) = http
        .call(
            "POST",
            &format!("/v1/challenges/{muted}/otp"),
            Some(json!({"code": code})),
        )
        .await?;
    tl.note(
        &muted,
        format!("backend relays the code: POST /otp → {st} {b}"),
    );
    until(10, || outcome_of(&muted).is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.print(&muted);
    let sms_only = pushes_for(&muted) == 0 && outcome_of(&muted).as_deref() == Some("approved");
    results.push((
        "fraud report, then SMS only",
        muted.clone(),
        outcome_of(&muted).unwrap_or_default(),
        fraud_ok && sms_only,
    ));

    println!("\nSummary");
    let mut all = true;
    for (what, id, got, ok) in &results {
        all &= *ok;
        println!(
            "  {} {what:<30} {id:<32} {got}",
            if *ok { "✔" } else { "✘" }
        );
    }

    // The scenarios' observers stop here: during the load only the load tool runs
    // beside the daemon and the simulators.
    for t in observers {
        t.abort();
    }
    drop(tl);

    if let Some(rate) = opts.load {
        demo_load(&cfg, &http, &apns, &fcm, &sms, rate, opts.duration).await?;
    }

    daemon.shutdown();
    daemon.wait().await;
    for q in [
        &cfg.amqp.challenges_queue,
        &cfg.amqp.responses_queue,
        &cfg.amqp.dead_queue,
    ] {
        let _ = broker
            .ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [
        &cfg.amqp.outcomes_exchange,
        &cfg.amqp.events_exchange,
        &cfg.amqp.dead_exchange,
        &cfg.amqp.control_exchange,
    ] {
        let _ = broker
            .ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    sms.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\n{}",
        if all {
            "All scenarios ended as expected."
        } else {
            "Some scenarios did not end as expected."
        }
    );
    Ok(all)
}
