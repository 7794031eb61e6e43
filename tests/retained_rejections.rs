//! A rejected challenge id is remembered: a later copy, valid or not, gets no second
//! outcome and is never dispatched. Oversized `sca.responses` bodies are refused before
//! any parsing. The table's bound, `challenge.max_held`, pauses intake instead of dropping
//! a retained record early.

mod common;

use common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_then_a_valid_copy_give_one_rejected_outcome_and_no_push() {
    let h = Harness::start().await;
    let mut bad = challenge("rej-1");
    bad["ttl_seconds"] = json!(5);
    h.publish(&bad).await;
    let (rk, out) = h.outcome(10).await;
    assert_eq!(rk, "outcome.login.rejected");
    assert_eq!(out["challenge_id"], "rej-1");
    assert_eq!(out["outcome"], "rejected");
    let (_, reason) = h.dead_letter(10).await;
    assert!(reason.unwrap_or_default().starts_with("invalid_field"));

    // The valid copy is a duplicate of a finished challenge.
    h.publish(&challenge("rej-1")).await;
    // A marker challenge behind it: once it is pushed, the copy was taken in.
    h.publish(&challenge("marker-1")).await;
    let pushes = h.pushes(1, 10).await;
    assert!(
        pushes.iter().all(|p| &*p.challenge_id == "marker-1"),
        "the rejected id was dispatched: {pushes:?}"
    );
    let (status, view) = h.http("GET", "/v1/challenges/rej-1", None, None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "completed");
    assert_eq!(view["outcome"], "rejected");
    // An invalid copy once more: dead-lettered, no outcome.
    h.publish(&bad).await;
    let (_, reason) = h.dead_letter(10).await;
    assert!(reason.is_some());
    h.no_outcome(1_000).await;
    assert!(h
        .push
        .pushes
        .lock()
        .unwrap()
        .iter()
        .all(|p| &*p.challenge_id == "marker-1"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_body_is_dead_lettered_and_answered_413() {
    let h = Harness::start().await;
    let reply_q = format!("{}.reply", h.cfg.amqp.responses_queue);
    h.ch.queue_declare(
        reply_q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut replies =
        h.ch.basic_consume(
            reply_q.as_str().into(),
            "retained-rejections-reply".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Not even JSON: the size alone refuses it.
    let body = vec![b'{'; h.cfg.http.max_body_bytes + 1];
    h.ch.basic_publish(
        "".into(),
        h.cfg.amqp.responses_queue.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default()
            .with_reply_to(reply_q.as_str().into())
            .with_correlation_id("big-1".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (dead, reason) = h.dead_letter(10).await;
    assert_eq!(dead.len(), body.len());
    let reason = reason.expect("a reason");
    assert!(reason.starts_with("body_too_large: "), "{reason}");
    let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    let answer: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(answer["status"], 413, "{answer}");
    assert_eq!(answer["error"], "body_too_large", "{answer}");
    // At the bound it is parsed (and refused for what it says, not its size).
    let mut at = json!({"op": "cancel", "challenge_id": "nope"}).to_string();
    at.push_str(&" ".repeat(h.cfg.http.max_body_bytes - at.len()));
    h.ch.basic_publish(
        "".into(),
        h.cfg.amqp.responses_queue.as_str().into(),
        BasicPublishOptions::default(),
        at.as_bytes(),
        BasicProperties::default().with_reply_to(reply_q.as_str().into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    let answer: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(answer["status"], 404, "{answer}");
    h.cleanup().await;
}

/// The gauge `name`'s value in a scrape.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_held_intake_waits_for_retention_and_nothing_is_dropped() {
    let h = Harness::start_with(|c| {
        c.challenge.max_held = 2;
        c.challenge.retain_completed_seconds = 5;
    })
    .await;
    // Two rejected records fill the table (retained 5 s after their outcome's confirm).
    for id in ["full-1", "full-2"] {
        let mut bad = challenge(id);
        bad["ttl_seconds"] = json!(5);
        h.publish(&bad).await;
        let (rk, out) = h.outcome(10).await;
        assert_eq!(
            (rk.as_str(), &out["challenge_id"]),
            ("outcome.login.rejected", &json!(id))
        );
    }
    let started = std::time::Instant::now();
    h.publish(&challenge("full-3")).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let m = h.metrics().await;
    if started.elapsed() < Duration::from_secs(4) {
        // Still within the records' retention: the third waits in the queue.
        assert!(
            h.push.pushes.lock().unwrap().is_empty(),
            "pushed while full"
        );
        assert_eq!(gauge(&m, "sca_intake_paused"), Some(1.0), "{m}");
        assert_eq!(gauge(&m, "sca_challenges_held"), Some(2.0), "{m}");
    }
    // Retention over: room again, and the waiting challenge is dispatched.
    let pushes = h.pushes(2, 20).await;
    assert!(
        pushes.iter().all(|p| &*p.challenge_id == "full-3"),
        "{pushes:?}"
    );
    let m = h.metrics().await;
    assert_eq!(gauge(&m, "sca_intake_paused"), Some(0.0), "{m}");
    // Once the second record's retention is over too, only the pending one is held.
    let mut held = None;
    for _ in 0..100 {
        held = gauge(&h.metrics().await, "sca_challenges_held");
        if held == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, Some(1.0));
    // The first two were forgotten, not the pending one.
    let (status, _) = h.http("GET", "/v1/challenges/full-1", None, None).await;
    assert_eq!(status, 404);
    let (status, view) = h.http("GET", "/v1/challenges/full-3", None, None).await;
    assert_eq!((status, &view["state"]), (200, &json!("pending")), "{view}");
    h.cleanup().await;
}
