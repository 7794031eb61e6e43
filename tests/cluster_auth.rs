//! Authenticated control traffic: a forged approval, forged SMS-limit notes and a
//! forged hand-over, published where the instances listen, change nothing and are
//! counted in `sca_control_rejected_total`; outside cluster mode, a configured secret
//! seals the control traffic just the same.

mod common;
mod common_cluster;

use common::*;
use common_cluster::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::json;
use std::time::Duration;

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut h = FieldTable::default();
    for (k, v) in pairs {
        h.insert((*k).into(), v.clone());
    }
    h
}

async fn publish(h: &Harness, exchange: &str, rk: &str, body: &[u8], props: BasicProperties) {
    h.ch.basic_publish(
        exchange.into(),
        rk.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_approvals_notes_and_handovers_change_nothing() {
    let h = cluster_harness(|_| {}).await;
    let a = h.daemon.as_ref().unwrap();
    spread(&[a], 20).await;
    let mut c = challenge("forge-1");
    c["sms"]["fallback_after_seconds"] = json!(600);
    publish_by_user(&h, &c).await;
    holder(&[a], "forge-1", 10).await;
    h.pushes(2, 10).await;
    let approve = json!({"t": "req", "from": "mallory", "corr": "x",
        "req": {"challenge_id": "forge-1", "ask": {"ask": "operate",
        "op": {"op": "decision", "device_id": "d-pixel", "decision": "approve"},
        "authority": "queue"}}})
    .to_string();
    let note = |user: &str| {
        json!({"t": "note", "from": "mallory", "note": {"kind": "sms_sent", "user": user, "at": sca_dispatch::engine::now_ms()}})
            .to_string()
    };
    let now = sca_dispatch::engine::now_ms();
    // Unsigned, on the control exchange.
    publish(
        &h,
        &h.cfg.amqp.control_exchange,
        "",
        approve.as_bytes(),
        BasicProperties::default(),
    )
    .await;
    // A bad MAC, into the partition through the consistent-hash exchange.
    let forged = BasicProperties::default().with_headers(headers(&[
        ("x-sca-control", AMQPValue::LongString("req".into())),
        ("x-sca-ts", AMQPValue::LongLongInt(now)),
        ("x-sca-mac", AMQPValue::LongString("00".repeat(32).into())),
    ]));
    publish(
        &h,
        &exchange(&h),
        "user-forge-1",
        approve.as_bytes(),
        forged,
    )
    .await;
    // Signed with a wrong key, and a correct MAC but 31 s old.
    let wrong = sca_dispatch::cluster::Seal::new("not-the-cluster-secret-0123456789ab");
    let right = sca_dispatch::cluster::Seal::new(SECRET);
    for (seal, ts) in [(&wrong, now), (&right, now - 31_000)] {
        for body in [approve.clone(), note("user-forge-1"), note("user-forge-2")] {
            let props = BasicProperties::default().with_headers(headers(&[
                ("x-sca-ts", AMQPValue::LongLongInt(ts)),
                (
                    "x-sca-mac",
                    AMQPValue::LongString(seal.sign(ts, body.as_bytes()).into()),
                ),
            ]));
            publish(&h, &h.cfg.amqp.control_exchange, "", body.as_bytes(), props).await;
        }
    }
    // Seven forged notes for a user who has not had an SMS yet.
    for _ in 0..7 {
        publish(
            &h,
            &h.cfg.amqp.control_exchange,
            "",
            note("user-forge-2").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    // A challenge carrying a forged hand-over that claims every push was sent.
    let mut c2 = challenge("forge-2");
    c2["sms"]["fallback_after_seconds"] = json!(600);
    let handover = json!({"challenge_id": "forge-2", "devices": [
        {"push": "delivered", "withdrawn": false}, {"push": "delivered", "withdrawn": false}],
        "sms": "idle", "sms_sent": 0, "otp_failures": 0, "dispatched_at_ms": now})
    .to_string();
    let props = BasicProperties::default().with_headers(headers(&[
        ("x-sca-handover", AMQPValue::LongString(handover.into())),
        ("x-sca-ts", AMQPValue::LongLongInt(now)),
        (
            "x-sca-mac",
            AMQPValue::LongString(wrong.sign(now, b"x").into()),
        ),
    ]));
    publish(
        &h,
        &exchange(&h),
        "user-forge-2",
        c2.to_string().as_bytes(),
        props,
    )
    .await;
    holder(&[a], "forge-2", 10).await;
    // The forged hand-over was ignored: forge-2 was pushed like any new challenge.
    h.pushes(4, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.no_outcome(300).await;
    let (st, v) = h.http("GET", "/v1/challenges/forge-1", None, None).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("pending")), "{v}");
    // The forged notes blocked nobody's SMS.
    for id in ["forge-1", "forge-2"] {
        let (st, _) = h
            .http("POST", &format!("/v1/challenges/{id}/sms"), None, None)
            .await;
        assert_eq!(st, 202, "{id}");
    }
    let m = h.metrics().await;
    let rejected: f64 = m
        .lines()
        .filter(|l| l.starts_with("sca_control_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(rejected >= 16.0, "{rejected} counted:\n{m}");
    cleanup_cluster(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_cluster_mode_a_secret_seals_control_traffic() {
    let h = Harness::start_with(|c| c.cluster.secret = SECRET.into()).await;
    let b = another(&h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = h.daemon.as_ref().unwrap();
    let ids: Vec<String> = (0..4).map(|i| format!("seal-{i}")).collect();
    for id in &ids {
        h.publish(&challenge(id)).await;
    }
    h.pushes(8, 10).await;
    // Sealed forwarding still works between the two.
    for id in &ids {
        let other = if a.engine.holds(id) {
            b.http_addr
        } else {
            a.http_addr
        };
        let (st, v) = call(
            other,
            "POST",
            &format!("/v1/challenges/{id}/decision"),
            Some(json!({"device_id": "d-pixel", "decision": "approve"})),
        )
        .await;
        assert_eq!(
            (st, v["outcome"].as_str()),
            (200, Some("approved")),
            "{id}: {v}"
        );
    }
    // An unsigned request is refused.
    let mut c = challenge("seal-x");
    c["sms"]["fallback_after_seconds"] = json!(600);
    h.publish(&c).await;
    h.pushes(10, 10).await;
    let forged = json!({"t": "req", "from": "mallory", "corr": "x",
        "req": {"challenge_id": "seal-x", "ask": {"ask": "operate", "op": {"op": "cancel"}, "authority": "queue"}}})
    .to_string();
    publish(
        &h,
        &h.cfg.amqp.control_exchange,
        "",
        forged.as_bytes(),
        BasicProperties::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, v) = h.http("GET", "/v1/challenges/seal-x", None, None).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("pending")), "{v}");
    b.shutdown();
    b.wait().await;
    h.cleanup().await;
}
