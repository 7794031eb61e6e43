//! Cluster mode, intake: with one owner per user's partition, a duplicated challenge is
//! dispatched once with one outcome whichever instance consumed each copy, and the
//! user's challenge and SMS limits are exact across instances with no SMS notes sent.

mod common;
mod common_cluster;

use common::*;
use common_cluster::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_challenge_is_dispatched_once_with_one_outcome() {
    let h = cluster_harness(|_| {}).await;
    let b = another(&h).await;
    let c = another(&h).await;
    let a = h.daemon.as_ref().unwrap();
    spread(&[a, &b, &c], 20).await;
    let nodes = [a, &b, &c];
    let ch = challenge("dup-1");
    // A backend retrying: the plain queue (re-routed by whoever consumes it) and the
    // exchange, three copies in all.
    h.publish(&ch).await;
    publish_by_user(&h, &ch).await;
    h.publish(&ch).await;
    let owner = holder(&nodes, "dup-1", 10).await;
    h.pushes(2, 10).await;
    // Decide through an instance that does not hold it, with the user as a hint.
    let other = nodes[(owner + 1) % 3];
    let (st, v) = call(
        other.http_addr,
        "POST",
        "/v1/challenges/dup-1/decision",
        Some(json!({"device_id": "d-pixel", "decision": "approve", "user_id": "user-dup-1"})),
    )
    .await;
    assert_eq!((st, v["outcome"].as_str()), (200, Some("approved")), "{v}");
    // And through the third, without a hint (a lookup).
    let third = nodes[(owner + 2) % 3];
    let (st, _) = call(
        third.http_addr,
        "POST",
        "/v1/challenges/dup-1/decision",
        Some(json!({"device_id": "d-iphone", "decision": "deny"})),
    )
    .await;
    assert_eq!(st, 409);
    let (_, o) = h.outcome(10).await;
    assert_eq!(o["challenge_id"], "dup-1");
    assert_eq!(o["outcome"], "approved");
    h.no_outcome(1500).await;
    let pushes: Vec<_> = h
        .push
        .pushes
        .lock()
        .unwrap()
        .iter()
        .filter(|p| matches!(p.content, sca_dispatch::push::PushContent::Challenge { .. }))
        .map(|p| p.device_id.to_string())
        .collect();
    assert_eq!(pushes.len(), 2, "one push per device: {pushes:?}");
    b.shutdown();
    c.shutdown();
    b.wait().await;
    c.wait().await;
    cleanup_cluster(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_challenge_limit_holds_across_three_instances() {
    let h = cluster_harness(|_| {}).await;
    let b = another(&h).await;
    let c = another(&h).await;
    let a = h.daemon.as_ref().unwrap();
    spread(&[a, &b, &c], 20).await;
    for i in 0..40 {
        let mut ch = challenge(&format!("lim-{i}"));
        ch["user_id"] = json!("one-busy-user");
        h.publish(&ch).await;
    }
    let mut limited = 0;
    for _ in 0..40 {
        let (_, o) = h.outcome(20).await;
        if o["outcome"] == "rate_limited" {
            limited += 1;
        }
        if limited == 40 - h.cfg.limits.challenge_burst as usize {
            break;
        }
    }
    let allowed = 40 - limited;
    assert!(
        allowed <= h.cfg.limits.challenge_burst as usize,
        "{allowed} allowed, the burst of one instance is {}",
        h.cfg.limits.challenge_burst
    );
    b.shutdown();
    c.shutdown();
    b.wait().await;
    c.wait().await;
    cleanup_cluster(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_limits_are_exact_across_instances_without_notes() {
    let h = cluster_harness(|_| {}).await;
    let b = another(&h).await;
    let a = h.daemon.as_ref().unwrap();
    spread(&[a, &b], 20).await;
    // Whatever crosses the control exchange is seen here: no SMS note may.
    let mut control = tap_fanout(&h.conn, &h.cfg.amqp.control_exchange).await;
    let ids: Vec<String> = (0..4).map(|i| format!("smsl-{i}")).collect();
    for id in &ids {
        let mut c = challenge(id);
        c["user_id"] = json!("one-sms-user");
        c["sms"]["fallback_after_seconds"] = json!(600);
        publish_by_user(&h, &c).await;
    }
    for id in &ids {
        holder(&[a, &b], id, 10).await;
    }
    let mut statuses = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // Alternate the instance asked, with no pause between the requests.
        let via = if i % 2 == 0 { a.http_addr } else { b.http_addr };
        let (st, _) = call(via, "POST", &format!("/v1/challenges/{id}/sms"), None).await;
        statuses.push(st);
    }
    assert_eq!(statuses, vec![202, 202, 202, 429]);
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut control)).await
    {
        let body = String::from_utf8_lossy(&d.data).to_string();
        assert!(
            !body.contains("\"note\""),
            "an SMS note was broadcast: {body}"
        );
    }
    b.shutdown();
    b.wait().await;
    cleanup_cluster(h).await;
}

/// An exclusive queue bound to the fanout `exchange`, consumed with auto-ack.
async fn tap_fanout(conn: &lapin::Connection, exchange: &str) -> lapin::Consumer {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        q.name().clone(),
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
