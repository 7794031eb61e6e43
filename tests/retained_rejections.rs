//! A rejected challenge id is remembered: a later copy, valid or not, gets no second
//! outcome and is never dispatched. Oversized `sca.responses` bodies are refused before
//! any parsing.

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
