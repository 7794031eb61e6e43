//! The broker cannot lose or stall an outcome: an outcome nobody is bound to receive is
//! retried until a queue is bound; a full or missing `reply_to` queue never holds the
//! outcome or other challenges back; a publishing channel closed by a channel error (the
//! events exchange deleted under the daemon) is replaced and publishing goes on.
//!
//! These tests bind their own named tap queues (the harness's taps are bound before the
//! daemon starts and could not be unbound by name).

mod common;

use common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use sca_dispatch::challenge::model::Platform;
use sca_dispatch::{Config, Daemon, Providers};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "edge-amqp-token";
const PATIENCE: Duration = Duration::from_secs(20);

struct Rig {
    cfg: Config,
    daemon: Daemon,
    push: Arc<Recorder>,
    _conn: lapin::Connection,
    ch: Channel,
}

async fn rig(tweak: impl FnOnce(&mut Config)) -> Rig {
    let mut cfg = test_config(&unique("edge"));
    cfg.http.api_tokens = TOKEN.into();
    tweak(&mut cfg);
    let push = Arc::new(Recorder::default());
    let providers = Providers {
        apns: Some(Arc::new(FakePush {
            platform: Platform::Apns,
            rec: push.clone(),
        })),
        fcm: Some(Arc::new(FakePush {
            platform: Platform::Fcm,
            rec: push.clone(),
        })),
        sms: Some(Arc::new(FakeSms::default())),
        ..Default::default()
    };
    let (conn, ch) = amqp().await;
    let daemon = Daemon::start(cfg.validate().unwrap(), providers)
        .await
        .unwrap();
    for _ in 0..400 {
        if daemon.status.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(daemon.status.connected());
    Rig {
        cfg,
        daemon,
        push,
        _conn: conn,
        ch,
    }
}

impl Rig {
    async fn publish(&self, v: &Value, props: BasicProperties) {
        let c = self
            .ch
            .basic_publish(
                "".into(),
                self.cfg.amqp.challenges_queue.as_str().into(),
                BasicPublishOptions::default(),
                v.to_string().as_bytes(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }

    /// Waits until both devices of challenge `id` have been pushed to.
    async fn pushed(&self, id: &str) {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let n = self
                .push
                .pushes
                .lock()
                .unwrap()
                .iter()
                .filter(|p| &*p.challenge_id == id && !p.is_withdraw())
                .count();
            if n >= 2 {
                return;
            }
            assert!(tokio::time::Instant::now() < until, "{id} pushed in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn approve(&self, id: &str) {
        let body = json!({"device_id": "d-pixel", "decision": "approve"}).to_string();
        let (st, _) = http(
            self.daemon.http_addr,
            &format!(
                "POST /v1/challenges/{id}/decision HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                 Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert_eq!(st, 200, "{id} approved");
    }

    async fn metrics(&self) -> String {
        http(
            self.daemon.metrics_addr,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .1
    }

    /// Waits until the sum of `name` over series with all `labels` reaches `at_least`.
    async fn metric_reaches(&self, name: &str, labels: &[(&str, &str)], at_least: f64) {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.metrics().await;
            let v: f64 = text
                .lines()
                .filter(|l| l.starts_with(name))
                .filter(|l| {
                    labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if v >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{name}{labels:?} reaches {at_least} (is {v})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A named, exclusive queue, not bound to anything yet.
    async fn queue(&self, suffix: &str, args: FieldTable) -> String {
        let name = format!("{}.{suffix}", self.cfg.amqp.challenges_queue);
        self.ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
        name
    }

    async fn bind(&self, queue: &str, exchange: &str) {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    async fn consume(&self, queue: &str) -> lapin::Consumer {
        self.ch
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.daemon.shutdown();
        self.daemon.wait().await;
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

/// One HTTP/1.1 exchange on a fresh connection: the status and the body.
async fn http(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Outcome bodies from `c` until one for each of `ids` has arrived.
async fn outcomes_for(c: &mut lapin::Consumer, ids: &[&str]) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    while !ids
        .iter()
        .all(|id| got.iter().any(|o| o["challenge_id"] == *id))
    {
        let d = tokio::time::timeout(PATIENCE, c.next())
            .await
            .expect("outcomes in time")
            .unwrap()
            .unwrap();
        got.push(serde_json::from_slice(&d.data).unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_outcome_is_retried_until_a_queue_is_bound() {
    let r = rig(|_| {}).await;
    let outcomes = r.cfg.amqp.outcomes_exchange.clone();
    let tap = r.queue("late-tap", FieldTable::default()).await;
    r.publish(&challenge("unroutable-1"), BasicProperties::default())
        .await;
    r.pushed("unroutable-1").await;
    r.approve("unroutable-1").await;
    // Nobody is bound to the outcomes exchange: returned, counted, retried.
    r.metric_reaches(
        "sca_amqp_unroutable_total",
        &[("exchange", outcomes.as_str())],
        2.0,
    )
    .await;
    r.bind(&tap, &outcomes).await;
    let mut c = r.consume(&tap).await;
    let got = outcomes_for(&mut c, &["unroutable-1"]).await;
    let o = got
        .iter()
        .find(|o| o["challenge_id"] == "unroutable-1")
        .unwrap();
    assert_eq!(o["outcome"], "approved");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_missing_reply_queue_never_holds_outcomes_back() {
    // One publish awaiting a confirm at a time: a reply holding that slot while it is
    // refused would hold every other outcome back.
    let r = rig(|c| c.amqp.publish_window = 1).await;
    let outcomes = r.cfg.amqp.outcomes_exchange.clone();
    let tap = r.queue("tap", FieldTable::default()).await;
    r.bind(&tap, &outcomes).await;
    let mut c = r.consume(&tap).await;

    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let full = r.queue("full-reply", args).await;
    let filled =
        r.ch.basic_publish(
            "".into(),
            full.as_str().into(),
            BasicPublishOptions::default(),
            b"already here",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(filled.is_ack());
    let missing = format!("{}.no-such-reply-queue", r.cfg.amqp.challenges_queue);

    let reply_to = |q: &str| {
        BasicProperties::default()
            .with_reply_to(q.into())
            .with_correlation_id("corr-1".into())
    };
    r.publish(&challenge("reply-full"), reply_to(&full)).await;
    r.publish(&challenge("reply-missing"), reply_to(&missing))
        .await;
    r.publish(&challenge("reply-none"), BasicProperties::default())
        .await;
    for id in ["reply-full", "reply-missing", "reply-none"] {
        r.pushed(id).await;
        r.approve(id).await;
    }
    let got = outcomes_for(&mut c, &["reply-full", "reply-missing", "reply-none"]).await;
    assert!(got.iter().all(|o| o["outcome"] == "approved"));
    // The replies were tried, refused (full) or returned (missing), and dropped.
    r.metric_reaches(
        "sca_amqp_replies_dropped_total",
        &[("reason", "refused")],
        1.0,
    )
    .await;
    r.metric_reaches(
        "sca_amqp_replies_dropped_total",
        &[("reason", "unroutable")],
        1.0,
    )
    .await;
    let q =
        r.ch.queue_declare(
            full.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 1, "the full queue took nothing more");
    // Later challenges are not stalled either.
    r.publish(&challenge("after-replies"), BasicProperties::default())
        .await;
    r.pushed("after-replies").await;
    r.approve("after-replies").await;
    outcomes_for(&mut c, &["after-replies"]).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_closed_by_a_channel_error_is_replaced() {
    let r = rig(|_| {}).await;
    let a = r.cfg.amqp.clone();
    let tap = r.queue("tap", FieldTable::default()).await;
    r.bind(&tap, &a.outcomes_exchange).await;
    let mut c = r.consume(&tap).await;

    // An operator deletes the events exchange: the next event (challenge.dispatched)
    // closes the daemon's publishing channel with 404 NOT_FOUND.
    r.ch.exchange_delete(
        a.events_exchange.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await
    .unwrap();
    r.publish(&challenge("chan-err-1"), BasicProperties::default())
        .await;
    r.pushed("chan-err-1").await;
    r.metric_reaches("sca_amqp_channels_replaced_total", &[], 1.0)
        .await;
    assert!(r.daemon.status.connected(), "the connection stayed up");
    // Publishing goes on: the outcome arrives.
    r.approve("chan-err-1").await;
    outcomes_for(&mut c, &["chan-err-1"]).await;
    // The topology was declared again: events flow to a new tap.
    let events_tap = r.queue("events-tap", FieldTable::default()).await;
    r.bind(&events_tap, &a.events_exchange).await;
    let mut e = r.consume(&events_tap).await;
    r.publish(&challenge("chan-err-2"), BasicProperties::default())
        .await;
    // The first challenge's last events (its decision) may still reach the new tap.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let d = tokio::time::timeout_at(deadline, e.next())
            .await
            .expect("an event of chan-err-2 in time")
            .unwrap()
            .unwrap();
        let ev: Value = serde_json::from_slice(&d.data).unwrap();
        if ev["challenge_id"] == "chan-err-2" {
            break;
        }
        assert_eq!(ev["challenge_id"], "chan-err-1", "{ev}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_never_make_an_outcome_look_unroutable() {
    // Nobody is bound to the events exchange, so every event comes back unroutable while
    // outcomes are routed. A return must never be taken for an outcome's: that outcome
    // would be published again, a second outcome for its challenge.
    const N: usize = 400;
    let r = rig(|_| {}).await;
    let tap = r.queue("every-outcome", FieldTable::default()).await;
    r.bind(&tap, &r.cfg.amqp.outcomes_exchange).await;
    let mut c = r.consume(&tap).await;
    let ids: Vec<String> = (0..N).map(|i| format!("ev-return-{i}")).collect();
    for id in &ids {
        let token = format!("fcm-{id}");
        r.push
            .scripts
            .lock()
            .unwrap()
            .insert(token.clone(), Script::Gone);
        let mut v = challenge(id);
        // One device whose token is gone (a `device.token_invalid` event besides
        // `challenge.dispatched`) and no SMS: `undeliverable` at once.
        v["devices"] = json!([{"device_id": "d-pixel", "platform": "fcm", "token": token}]);
        v.as_object_mut().unwrap().remove("sms");
        r.ch.basic_publish(
            "".into(),
            r.cfg.amqp.challenges_queue.as_str().into(),
            BasicPublishOptions::default(),
            v.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut got = outcomes_for(&mut c, &refs).await;
    // Anything more that comes in the next seconds is a second outcome.
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(3), c.next()).await {
        got.push(serde_json::from_slice(&d.data).unwrap());
    }
    let mut seen = std::collections::HashMap::new();
    for o in &got {
        *seen
            .entry(o["challenge_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "second outcomes: {twice:?}");
    assert_eq!(got.len(), N);
    r.stop().await;
}
