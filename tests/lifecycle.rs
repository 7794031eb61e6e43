//! The core lifecycle against the real RabbitMQ: challenge in, pushes out, first decision
//! wins, withdrawals, one outcome; expiry, cancel, rate limit, signatures, the responses
//! queue, long-poll, auth and body limits.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_every_device_then_first_decision_wins() {
    let h = Harness::start().await;
    h.publish(&challenge("life-1")).await;
    let pushes = h.pushes(2, 10).await;
    let devices: Vec<&str> = pushes.iter().map(|p| &*p.device_id).collect();
    assert!(devices.contains(&"d-iphone") && devices.contains(&"d-pixel"));
    assert!(pushes.iter().all(|p| !p.is_withdraw()));
    let ev = h.event("challenge.dispatched", 5).await;
    assert_eq!(ev["challenge_id"], "life-1");

    let (st, body) = h.decide("life-1", "d-pixel", "approve").await;
    assert_eq!((st, body["outcome"].as_str()), (200, Some("approved")));
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.approved");
    assert_eq!(o["v"], 1);
    assert_eq!(o["challenge_id"], "life-1");
    assert_eq!(o["user_id"], "user-life-1");
    assert_eq!(o["kind"], "login");
    assert_eq!(o["outcome"], "approved");
    assert_eq!(o["channel"], "push");
    assert_eq!(o["device_id"], "d-pixel");
    assert!(o["reason"].is_null());
    assert!(o["decided_at"].as_str().unwrap().ends_with('Z'));
    assert!(o["elapsed_ms"].as_i64().unwrap() >= 0);

    // The other device gets its push withdrawn.
    let pushes = h.pushes(3, 5).await;
    let w: Vec<_> = pushes.iter().filter(|p| p.is_withdraw()).collect();
    assert_eq!(w.len(), 1);
    assert_eq!(&*w[0].device_id, "d-iphone");

    let (st, body) = h.decide("life-1", "d-iphone", "deny").await;
    assert_eq!((st, body["outcome"].as_str()), (409, Some("approved")));
    let (st, v) = h.http("GET", "/v1/challenges/life-1", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "completed");
    assert_eq!(v["outcome"], "approved");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    h.no_outcome(300).await;

    let m = h.metrics().await;
    for name in [
        "sca_challenges_received_total",
        "sca_outcomes_total",
        "sca_challenges_in_flight",
        "sca_amqp_connected",
        "sca_decision_latency_seconds",
    ] {
        assert!(m.contains(name), "metric {name} missing");
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_errors_and_unknown_challenge() {
    let h = Harness::start().await;
    h.publish(&challenge("life-2")).await;
    h.pushes(2, 10).await;
    let (st, b) = h.decide("life-2", "stranger", "approve").await;
    assert_eq!((st, b["error"].as_str()), (403, Some("device_not_bound")));
    let (st, _) = h.decide("nope", "d", "approve").await;
    assert_eq!(st, 404);
    let (st, b) = h.decide("life-2", "d-pixel", "maybe").await;
    assert_eq!(st, 422, "{b}");
    let (st, b) = h
        .http_raw(
            "POST",
            "/v1/challenges/life-2/decision",
            Some(b"{not json".to_vec()),
            None,
        )
        .await;
    assert_eq!(st, 422, "{b}");
    assert!(b["error"].is_string());
    let (st, b) = h
        .http_raw(
            "POST",
            "/v1/challenges/life-2/decision",
            Some(vec![b' '; 9 * 1024]),
            None,
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (413, Some("body_too_large")));
    let (st, _) = h.http("GET", "/v1/nothing", None, None).await;
    assert_eq!(st, 404);
    let (st, _) = h.http("GET", "/healthz", None, None).await;
    assert_eq!(st, 200);
    let (st, r) = h.http("GET", "/readyz", None, None).await;
    assert_eq!(st, 200, "{r}");
    // Still pending: nothing was decided by the refused requests.
    let (_, v) = h.http("GET", "/v1/challenges/life-2", None, None).await;
    assert_eq!(v["state"], "pending");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_publishes_expired_and_withdraws() {
    let h = Harness::start().await;
    let mut c = challenge("life-exp");
    // Created 9 s ago with the minimum ttl of 10 s: expires in about a second.
    c["created_at"] = json!(sca_dispatch::engine::json::rfc3339_ms(
        sca_dispatch::engine::now_ms() - 9_000
    ));
    c["ttl_seconds"] = json!(10);
    c.as_object_mut().unwrap().remove("sms");
    h.publish(&c).await;
    h.pushes(2, 10).await;
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.login.expired");
    assert_eq!(o["outcome"], "expired");
    assert!(o["channel"].is_null());
    let pushes = h.pushes(4, 5).await;
    assert_eq!(pushes.iter().filter(|p| p.is_withdraw()).count(), 2);
    let (st, b) = h.decide("life-exp", "d-pixel", "approve").await;
    assert_eq!((st, b["outcome"].as_str()), (410, Some("expired")));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_withdraws_and_publishes_cancelled() {
    let h = Harness::start_with(|c| c.http.api_tokens = "s3cret, other".into()).await;
    h.publish(&challenge("life-cancel")).await;
    h.pushes(2, 10).await;
    let (st, _) = h
        .http("DELETE", "/v1/challenges/life-cancel", None, None)
        .await;
    assert_eq!(st, 401, "backend endpoints need the bearer token");
    let (st, _) = h
        .http("DELETE", "/v1/challenges/life-cancel", None, Some("wrong"))
        .await;
    assert_eq!(st, 401);
    let (st, b) = h
        .http("DELETE", "/v1/challenges/life-cancel", None, Some("other"))
        .await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("cancelled")));
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.cancelled");
    assert_eq!(o["outcome"], "cancelled");
    let pushes = h.pushes(4, 5).await;
    assert_eq!(pushes.iter().filter(|p| p.is_withdraw()).count(), 2);
    let (st, _) = h
        .http("DELETE", "/v1/challenges/life-cancel", None, Some("s3cret"))
        .await;
    assert_eq!(st, 409);
    // Without a token a device without a key cannot decide either.
    h.publish(&challenge("life-cancel-2")).await;
    h.pushes(6, 10).await;
    let (st, _) = h.decide("life-cancel-2", "d-pixel", "approve").await;
    assert_eq!(st, 401);
    let (st, _) = h
        .http(
            "POST",
            "/v1/challenges/life-cancel-2/decision",
            Some(json!({"device_id": "d-pixel", "decision": "approve"})),
            Some("s3cret"),
        )
        .await;
    assert_eq!(st, 200);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_rate_limit() {
    let h = Harness::start_with(|c| {
        c.limits.challenges_per_minute = 1;
        c.limits.challenge_burst = 2;
    })
    .await;
    for i in 0..3 {
        let mut c = challenge(&format!("rl-{i}"));
        c["user_id"] = json!("same-user");
        h.publish(&c).await;
    }
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.login.rate_limited");
    assert_eq!(o["challenge_id"], "rl-2");
    assert_eq!(o["reason"], "user_rate_limit");
    // The two allowed ones were pushed; the limited one was not.
    let pushes = h.pushes(4, 5).await;
    assert!(pushes.iter().all(|p| &*p.challenge_id != "rl-2"));
    assert!(h
        .metrics()
        .await
        .contains("sca_rate_limited_total{limit=\"user_challenges\"}"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_signature_accepted_and_forged_refused() {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;
    let h = Harness::start().await;
    let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let pk = base64::engine::general_purpose::STANDARD
        .encode(sk.verifying_key().to_public_key_der().unwrap().as_bytes());
    let sign = |msg: &str| {
        let s: p256::ecdsa::Signature = sk.sign(msg.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(s.to_der().as_bytes())
    };
    let mut c = challenge("sig-1");
    c["kind"] = json!("payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["devices"][0]["public_key"] = json!(pk);
    h.publish(&c).await;
    h.pushes(2, 10).await;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"125.40|EUR|Mario Rossi"))
    };
    let forged = sign(&format!("sca-v1|sig-1|approve|{}", "0".repeat(64)));
    let (st, b) = h
        .http(
            "POST",
            "/v1/challenges/sig-1/decision",
            Some(json!({"device_id": "d-iphone", "decision": "approve", "signature": forged})),
            None,
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (403, Some("bad_signature")));
    let (st, _) = h.decide("sig-1", "d-iphone", "approve").await;
    assert_eq!(st, 403);
    let good = sign(&format!("sca-v1|sig-1|approve|{digest}"));
    let (st, b) = h
        .http(
            "POST",
            "/v1/challenges/sig-1/decision",
            Some(json!({"device_id": "d-iphone", "decision": "approve", "signature": good})),
            None,
        )
        .await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("approved")), "{b}");
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.payment.approved");
    assert_eq!(o["device_id"], "d-iphone");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_queue_operations_and_duplicates() {
    let h = Harness::start().await;
    h.publish(&challenge("resp-1")).await;
    h.publish(&challenge("resp-1")).await; // duplicate: never a second challenge
    h.pushes(2, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.push.pushes.lock().unwrap().len(),
        2,
        "a duplicate is not dispatched again"
    );
    h.respond(&json!({"op": "decision", "challenge_id": "resp-1", "device_id": "d-iphone", "decision": "deny"})).await;
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.denied");
    assert_eq!(o["device_id"], "d-iphone");
    h.no_outcome(500).await;
    // Once settled, another duplicate is acked without a second outcome.
    h.publish(&challenge("resp-1")).await;
    h.no_outcome(500).await;
    // A malformed response is dead-lettered with its reason.
    h.respond(&json!({"op": "teleport", "challenge_id": "resp-1"}))
        .await;
    let (_, reason) = h.dead_letter(5).await;
    assert!(reason.unwrap().contains("unknown op"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_when_decided() {
    let h = Harness::start().await;
    h.publish(&challenge("poll-1")).await;
    h.pushes(2, 10).await;
    let base = h.base();
    let poll = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let started = std::time::Instant::now();
        let req = hyper::Request::get(format!("{base}/v1/challenges/poll-1?wait=20"))
            .header("authorization", format!("Bearer {TEST_TOKEN}"))
            .body(Default::default())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            started.elapsed(),
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.http(
        "POST",
        "/v1/challenges/poll-1/decision",
        Some(json!({"device_id": "d-pixel", "decision": "approve"})),
        None,
    )
    .await;
    let (took, v) = poll.await.unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["outcome"], "approved");
    assert!(
        took < Duration::from_secs(10),
        "long-poll returned at the decision"
    );
    let (st, _) = h
        .http("GET", "/v1/challenges/poll-1?wait=abc", None, None)
        .await;
    assert_eq!(st, 422);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_waits_are_refused_before_any_lookup() {
    let h = Harness::start().await;
    h.publish(&challenge("ids-1")).await;
    h.pushes(2, 10).await;
    let long = "x".repeat(65);
    for path in [
        "/v1/challenges/bad%20id".to_string(),
        "/v1/challenges/a.b".to_string(),
        format!("/v1/challenges/{long}"),
    ] {
        let (st, b) = h.http("GET", &path, None, None).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
        let (st, _) = h
            .http(
                "POST",
                &format!("{path}/decision"),
                Some(json!({"device_id": "d-pixel", "decision": "approve"})),
                None,
            )
            .await;
        assert_eq!(st, 404, "{path}");
    }
    // `wait` must be a finite number of seconds in 0..=http.max_wait_seconds (30).
    for wait in ["1e20", "-1", "NaN", "inf", "31", "30.5", ""] {
        let (st, b) = h
            .http(
                "GET",
                &format!("/v1/challenges/ids-1?wait={wait}"),
                None,
                None,
            )
            .await;
        assert_eq!(
            (st, b["error"].as_str()),
            (422, Some("invalid_query")),
            "wait={wait}"
        );
    }
    // The daemon is still there, and a wait in range is taken.
    let (st, b) = h
        .http("GET", "/v1/challenges/ids-1?wait=0", None, None)
        .await;
    assert_eq!((st, b["state"].as_str()), (200, Some("pending")));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_code_is_never_echoed() {
    let h = Harness::start().await;
    h.publish(&challenge("echo-1")).await;
    h.pushes(2, 10).await;
    for body in [
        r#"{"code": 987123}"#,
        r#"{"code": 987123.0}"#,
        r#"{"code": ["987123"]}"#,
        r#"{"code": "98712x"}"#,
    ] {
        let (st, b) = h
            .http_raw(
                "POST",
                "/v1/challenges/echo-1/otp",
                Some(body.as_bytes().to_vec()),
                None,
            )
            .await;
        assert_eq!(st, 422, "{body}: {b}");
        assert!(!b.to_string().contains("98712"), "{body} echoed: {b}");
    }
    // On sca.responses: dead-lettered, the reason does not hold it either.
    h.respond(&json!({"op": "otp", "challenge_id": "echo-1", "code": 987123}))
        .await;
    let (_, reason) = h.dead_letter(5).await;
    let reason = reason.unwrap();
    assert!(reason.starts_with("invalid_field"), "{reason}");
    assert!(!reason.contains("987123"), "{reason}");
    h.cleanup().await;
}
