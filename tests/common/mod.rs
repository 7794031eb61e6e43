//! Test harness: a daemon in-process on 127.0.0.1:0 against the real RabbitMQ, with its
//! own uniquely named queues and exchanges, recording test doubles for the providers, an
//! AMQP client to publish challenges and read outcomes/events, and a small HTTP client.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Connection};
use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::Platform;
use sca_dispatch::push::{BoxFuture, PushMessage, PushProvider};
use sca_dispatch::sms::{SmsError, SmsGateway, SmsMessage};
use sca_dispatch::{Config, Daemon, Providers};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// The bearer token [`test_config`] configures; [`Harness::http`] sends it when a test
/// gives none and kept this token.
pub const TEST_TOKEN: &str = "sca-test-token";

/// A config with every queue/exchange name unique to this test and [`TEST_TOKEN`].
pub fn test_config(ns: &str) -> Config {
    let mut c = Config::default();
    c.http.api_tokens = TEST_TOKEN.into();
    c.amqp = c.amqp.namespaced(ns);
    c.amqp.url = AMQP_URL.into();
    c.amqp.prefetch = 200;
    c.amqp.consumers = 2;
    c.http.addr = "127.0.0.1:0".into();
    c.metrics.addr = "127.0.0.1:0".into();
    c.shutdown.grace_seconds = 2;
    c
}

/// How the recording push double answers a token.
#[derive(Clone, Copy)]
pub enum Script {
    Deliver,
    Gone,
    Fail,
    /// Never answers (until the challenge expires, then Failed).
    Hang,
}

#[derive(Default)]
pub struct Recorder {
    pub pushes: Mutex<Vec<PushMessage>>,
    pub scripts: Mutex<HashMap<String, Script>>,
    pub notify: tokio::sync::Notify,
}

pub struct FakePush {
    pub platform: Platform,
    pub rec: Arc<Recorder>,
}

impl PushProvider for FakePush {
    fn platform(&self) -> Platform {
        self.platform
    }
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(async move {
            let script = self
                .rec
                .scripts
                .lock()
                .unwrap()
                .get(&*msg.token)
                .copied()
                .unwrap_or(Script::Deliver);
            let left = msg.remaining(sca_dispatch::engine::now_ms());
            self.rec.pushes.lock().unwrap().push(msg);
            self.rec.notify.notify_waiters();
            match script {
                Script::Deliver => PushResult::Delivered,
                Script::Gone => PushResult::TokenGone,
                Script::Fail => PushResult::Failed,
                Script::Hang => {
                    tokio::time::sleep(left).await;
                    PushResult::Failed
                }
            }
        })
    }
}

#[derive(Default)]
pub struct FakeSms {
    pub sent: Mutex<Vec<SmsMessage>>,
    pub fail: std::sync::atomic::AtomicBool,
}

impl SmsGateway for FakeSms {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> BoxFuture<'a, Result<(), SmsError>> {
        Box::pin(async move {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SmsError::Permanent("scripted failure".into()));
            }
            self.sent.lock().unwrap().push(msg.clone());
            Ok(())
        })
    }
}

impl FakeSms {
    /// The code in the last SMS to `phone`.
    pub fn last_code(&self) -> Option<String> {
        let sent = self.sent.lock().unwrap();
        let text = &sent.last()?.text;
        text.split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 6)
            .map(String::from)
    }
}

pub struct Harness {
    pub ns: String,
    pub cfg: Config,
    pub daemon: Option<Daemon>,
    pub push: Arc<Recorder>,
    pub sms: Arc<FakeSms>,
    pub conn: Connection,
    pub ch: Channel,
    outcomes: tokio::sync::Mutex<lapin::Consumer>,
    events: tokio::sync::Mutex<lapin::Consumer>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    custom: Option<Providers>,
}

pub async fn amqp() -> (Connection, Channel) {
    // A broker restarting (another suite's fault injection on a shared machine) is
    // waited for, up to 30 s.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let conn = loop {
        match sca_dispatch::amqp::client::connect(AMQP_URL, "sca-dispatch tests").await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= until => {
                panic!("RabbitMQ must run on 127.0.0.1:5672 (guest/guest): {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

/// An exclusive queue bound to `exchange` with `#`, consumed with auto-ack.
pub async fn tap(conn: &Connection, exchange: &str) -> lapin::Consumer {
    sca_dispatch::amqp::client::tap(conn, exchange)
        .await
        .unwrap()
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_custom(tweak, None).await
    }

    /// With real providers (e.g. built against the simulators) instead of the doubles.
    pub async fn start_custom(
        tweak: impl FnOnce(&mut Config),
        providers: Option<Providers>,
    ) -> Harness {
        let ns = unique("t");
        let mut cfg = test_config(&ns);
        tweak(&mut cfg);
        let push = Arc::new(Recorder::default());
        let sms = Arc::new(FakeSms::default());
        let (conn, ch) = amqp().await;
        let outcomes = tap(&conn, &cfg.amqp.outcomes_exchange).await;
        let events = tap(&conn, &cfg.amqp.events_exchange).await;
        let mut h = Harness {
            ns,
            cfg,
            daemon: None,
            push,
            sms,
            conn,
            ch,
            outcomes: tokio::sync::Mutex::new(outcomes),
            events: tokio::sync::Mutex::new(events),
            http: Client::builder(TokioExecutor::new()).build_http(),
            custom: providers,
        };
        h.start_daemon().await;
        h
    }

    pub fn providers(&self) -> Providers {
        if let Some(p) = &self.custom {
            return p.clone();
        }
        Providers {
            apns: Some(Arc::new(FakePush {
                platform: Platform::Apns,
                rec: self.push.clone(),
            })),
            fcm: Some(Arc::new(FakePush {
                platform: Platform::Fcm,
                rec: self.push.clone(),
            })),
            hms: Some(Arc::new(FakePush {
                platform: Platform::Hms,
                rec: self.push.clone(),
            })),
            sms: Some(self.sms.clone()),
            apps: Default::default(),
        }
    }

    pub async fn start_daemon(&mut self) {
        let settings = self.cfg.validate().expect("a valid test configuration");
        let d = Daemon::start(settings, self.providers())
            .await
            .expect("daemon starts");
        // Wait until connected and consuming (generously: a loaded machine, a broker
        // restarting).
        for _ in 0..1200 {
            if d.status.connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(d.status.connected(), "daemon connected to RabbitMQ");
        self.daemon = Some(d);
    }

    pub async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown();
            d.wait().await;
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.daemon.as_ref().unwrap().http_addr)
    }

    pub async fn publish_raw(&self, body: &[u8], props: BasicProperties) {
        self.ch
            .basic_publish(
                "".into(),
                self.cfg.amqp.challenges_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn publish(&self, v: &Value) {
        self.publish_raw(
            v.to_string().as_bytes(),
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }

    pub async fn respond(&self, v: &Value) {
        self.ch
            .basic_publish(
                "".into(),
                self.cfg.amqp.responses_queue.as_str().into(),
                BasicPublishOptions::default(),
                v.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next outcome event (routing key, body), waiting up to `secs`.
    pub async fn outcome(&self, secs: u64) -> (String, Value) {
        let mut c = self.outcomes.lock().await;
        let d = tokio::time::timeout(Duration::from_secs(secs), c.next())
            .await
            .expect("an outcome in time")
            .unwrap()
            .unwrap();
        (
            d.routing_key.to_string(),
            serde_json::from_slice(&d.data).unwrap(),
        )
    }

    /// No outcome within `ms`.
    pub async fn no_outcome(&self, ms: u64) {
        let mut c = self.outcomes.lock().await;
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(ms), c.next()).await {
            panic!("unexpected outcome: {}", String::from_utf8_lossy(&d.data));
        }
    }

    /// The next event whose body has `"event": name`.
    pub async fn event(&self, name: &str, secs: u64) -> Value {
        let mut c = self.events.lock().await;
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let d = tokio::time::timeout_at(until, c.next())
                .await
                .unwrap_or_else(|_| panic!("event {name} in time"))
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_slice(&d.data).unwrap();
            if v["event"] == name {
                assert_eq!(d.routing_key.as_str(), name);
                return v;
            }
        }
    }

    /// Waits until the push double has recorded at least `n` pushes.
    pub async fn pushes(&self, n: usize, secs: u64) -> Vec<PushMessage> {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let notified = self.push.notify.notified();
            {
                let p = self.push.pushes.lock().unwrap();
                if p.len() >= n {
                    return p.clone();
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                let p = self.push.pushes.lock().unwrap();
                panic!("expected {n} pushes, got {}", p.len());
            }
        }
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let raw = body.map(|b| b.to_string().into_bytes());
        self.http_raw(method, path, raw, token).await
    }

    /// The challenge's GET view once `done` holds for it (a push's result may reach the
    /// daemon after the simulator recorded the push), polled for at most `secs`.
    pub async fn view_when(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, v) = self
                .http("GET", &format!("/v1/challenges/{id}"), None, None)
                .await;
            if done(&v) || tokio::time::Instant::now() >= until {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /v1/challenges/{id}/decision` with no token.
    pub async fn decide(
        &self,
        id: &str,
        device_id: impl serde::Serialize,
        decision: impl serde::Serialize,
    ) -> (u16, Value) {
        let body = json!({"device_id": device_id, "decision": decision});
        let path = format!("/v1/challenges/{id}/decision");
        self.http("POST", &path, Some(body), None).await
    }

    /// `POST /v1/challenges/{id}/otp` with no token.
    pub async fn otp(&self, id: &str, code: impl serde::Serialize) -> (u16, Value) {
        let path = format!("/v1/challenges/{id}/otp");
        self.http("POST", &path, Some(json!({"code": code})), None)
            .await
    }

    pub async fn http_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base()));
        let token = token.or((self.cfg.http.api_tokens == TEST_TOKEN).then_some(TEST_TOKEN));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = self.http.request(req).await.expect("HTTP request");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    pub async fn metrics(&self) -> String {
        let addr = self.daemon.as_ref().unwrap().metrics_addr;
        let req = hyper::Request::get(format!("http://{addr}/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.http.request(req).await.unwrap();
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    /// Reads one message from the dead-letter queue (waiting up to `secs`).
    pub async fn dead_letter(&self, secs: u64) -> (Vec<u8>, Option<String>) {
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(d) = self
                .ch
                .basic_get(
                    self.cfg.amqp.dead_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                let reason = d.delivery.properties.headers().as_ref().and_then(|h| {
                    h.inner().get("x-sca-reason").and_then(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                        _ => None,
                    })
                });
                return (d.delivery.data.clone(), reason);
            }
            assert!(tokio::time::Instant::now() < until, "a dead letter in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes this test's queues and exchanges.
    pub async fn cleanup(mut self) {
        self.stop_daemon().await;
        let a = &self.cfg.amqp;
        for q in [&a.challenges_queue, &a.responses_queue, &a.dead_queue] {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [
            &a.outcomes_exchange,
            &a.events_exchange,
            &a.dead_exchange,
            &a.control_exchange,
        ] {
            let _ = self
                .ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

pub fn apns_token(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

/// A valid challenge with two devices (APNs + FCM) and an SMS number.
pub fn challenge(id: &str) -> Value {
    json!({
        "v": 1,
        "challenge_id": id,
        "user_id": format!("user-{id}"),
        "kind": "login",
        "created_at": sca_dispatch::engine::json::rfc3339_ms(sca_dispatch::engine::now_ms()),
        "ttl_seconds": 120,
        "locale": "it",
        "devices": [
            {"device_id": "d-iphone", "platform": "apns", "token": apns_token(1), "name": "iPhone"},
            {"device_id": "d-pixel", "platform": "fcm", "token": format!("fcm-{id}"), "name": "Pixel"}
        ],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 60}
    })
}

// ---- the daemon binary as a child process ----------------------------------------

/// Publishes `v` to `queue` through the default exchange and waits for the broker's
/// confirm (a daemon in another process reads it).
pub async fn publish_confirmed(ch: &Channel, queue: &str, v: &Value) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        v.to_string().as_bytes(),
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon binary (`run --config PATH`, log level warn), as a child process.
pub fn spawn_daemon(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
        .args(["run", "--config"])
        .arg(config)
        .env("SCA_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("daemon binary runs")
}

/// Waits until the daemon on `port` answers `/readyz` with 200 (at most 20 s).
pub async fn wait_ready(port: u16) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for _ in 0..400 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz").parse().unwrap())
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon not ready");
}
