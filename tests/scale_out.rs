//! Several instances on one RabbitMQ: a challenge lives in the memory of the instance
//! that consumed it, and operations reaching any other instance are forwarded to it.

mod common;

use common::*;
use sca_dispatch::Daemon;
use serde_json::json;
use std::time::Duration;

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TEST_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let st = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (st, serde_json::from_slice(&b).unwrap_or_default())
}

/// A second daemon on the harness's topology, connected and known to the first.
async fn second_instance(h: &Harness) -> Daemon {
    let second = Daemon::start(h.cfg.validate().unwrap(), h.providers())
        .await
        .unwrap();
    for _ in 0..100 {
        if second.status.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // hellos exchanged
    second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_answers_for_any_challenge() {
    let h = Harness::start().await;
    let second = second_instance(&h).await;
    let a = h.daemon.as_ref().unwrap().http_addr;
    let b = second.http_addr;
    let ids: Vec<String> = (0..6).map(|i| format!("so-{i}")).collect();
    for id in &ids {
        h.publish(&challenge(id)).await;
    }
    h.pushes(12, 10).await;
    let held_a = ids
        .iter()
        .filter(|id| h.daemon.as_ref().unwrap().engine.holds(id))
        .count();
    let held_b = ids.iter().filter(|id| second.engine.holds(id)).count();
    assert_eq!(
        held_a + held_b,
        ids.len(),
        "each challenge is held by exactly one instance"
    );
    assert!(
        held_a > 0 && held_b > 0,
        "both instances consume ({held_a}/{held_b})"
    );
    for (i, id) in ids.iter().enumerate() {
        // Alternate the instance asked, whoever holds the challenge.
        let (first, other) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let (st, v) = call(first, "GET", &format!("/v1/challenges/{id}"), None).await;
        assert_eq!((st, v["state"].as_str()), (200, Some("pending")), "{id}");
        let (st, v) = call(
            first,
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
        let (st, _) = call(
            other,
            "POST",
            &format!("/v1/challenges/{id}/decision"),
            Some(json!({"device_id": "d-iphone", "decision": "deny"})),
        )
        .await;
        assert_eq!(st, 409, "{id}");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..ids.len() {
        let (_, o) = h.outcome(5).await;
        assert!(seen.insert(o["challenge_id"].as_str().unwrap().to_string()));
    }
    h.no_outcome(300).await;
    let (st, _) = call(b, "GET", "/v1/challenges/nobody-has-it", None).await;
    assert_eq!(st, 404);
    second.shutdown();
    second.wait().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_device_decisions_need_no_token_on_any_instance() {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;
    let h = Harness::start_with(|c| c.http.api_tokens = "backend-token".into()).await;
    let second = second_instance(&h).await;
    let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let pk = base64::engine::general_purpose::STANDARD
        .encode(sk.verifying_key().to_public_key_der().unwrap().as_bytes());
    let ids: Vec<String> = (0..4).map(|i| format!("sso-{i}")).collect();
    for id in &ids {
        let mut c = challenge(id);
        c["devices"][0]["public_key"] = json!(pk);
        h.publish(&c).await;
    }
    h.pushes(8, 10).await;
    let first = h.daemon.as_ref().unwrap();
    for id in &ids {
        // Ask the instance that does NOT hold the challenge.
        let other = if first.engine.holds(id) {
            second.http_addr
        } else {
            first.http_addr
        };
        let (st, _) = call(
            other,
            "POST",
            &format!("/v1/challenges/{id}/decision"),
            Some(json!({"device_id": "d-pixel", "decision": "approve"})),
        )
        .await;
        assert_eq!(st, 401, "{id}: an unsigned device needs the token");
        let sig: p256::ecdsa::Signature = sk.sign(format!("sca-v1|{id}|approve|").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        let (st, v) = call(
            other,
            "POST",
            &format!("/v1/challenges/{id}/decision"),
            Some(json!({"device_id": "d-iphone", "decision": "approve", "signature": sig})),
        )
        .await;
        assert_eq!(
            (st, v["outcome"].as_str()),
            (200, Some("approved")),
            "{id}: {v}"
        );
    }
    second.shutdown();
    second.wait().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_limits_hold_across_instances() {
    let h = Harness::start().await;
    let second = second_instance(&h).await;
    let ids: Vec<String> = (0..4).map(|i| format!("lim-{i}")).collect();
    for id in &ids {
        let mut c = challenge(id);
        c["user_id"] = json!("one-user");
        c["sms"]["fallback_after_seconds"] = json!(600);
        h.publish(&c).await;
    }
    h.pushes(8, 10).await;
    let first = h.daemon.as_ref().unwrap();
    let held_here = ids.iter().filter(|id| first.engine.holds(id)).count();
    assert!(
        held_here > 0 && held_here < ids.len(),
        "spread over both instances ({held_here}/4 here)"
    );
    let mut statuses = Vec::new();
    for id in &ids {
        let (st, _) = call(
            first.http_addr,
            "POST",
            &format!("/v1/challenges/{id}/sms"),
            None,
        )
        .await;
        statuses.push(st);
        tokio::time::sleep(Duration::from_millis(500)).await; // the note reaches the peer
    }
    assert_eq!(
        statuses,
        vec![202, 202, 202, 429],
        "3 SMS per user per window, whichever instance sends"
    );
    second.shutdown();
    second.wait().await;
    h.cleanup().await;
}

/// An operation on `sca.responses` whose owner never answers goes back to the queue a
/// bounded number of times, then is answered 503 on `reply_to` and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_owner_is_retried_then_answered_503() {
    use futures_util::StreamExt;
    use lapin::options::*;
    use lapin::types::FieldTable;
    use lapin::BasicProperties;
    let h = Harness::start().await;
    // A peer that says hello and then never answers anything.
    let hello = json!({"t": "hello", "from": "silent-peer"}).to_string();
    h.ch.basic_publish(
        h.cfg.amqp.control_exchange.as_str().into(),
        "".into(),
        BasicPublishOptions::default(),
        hello.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let replies =
        h.ch.queue_declare(
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
    let mut consumer =
        h.ch.basic_consume(
            replies.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let op = json!({"op": "cancel", "challenge_id": "held-by-nobody-here"}).to_string();
    h.ch.basic_publish(
        "".into(),
        h.cfg.amqp.responses_queue.as_str().into(),
        BasicPublishOptions::default(),
        op.as_bytes(),
        BasicProperties::default()
            .with_reply_to(replies.name().clone())
            .with_correlation_id("corr-1".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Four attempts of up to 2 s each.
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(reply["status"], 503, "{reply}");
    assert_eq!(reply["error"], "owner_unreachable");
    assert!(h
        .metrics()
        .await
        .contains("sca_responses_unreachable_total 1"));
    h.cleanup().await;
}
