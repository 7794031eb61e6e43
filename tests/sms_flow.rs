//! SMS fallback through the engine with the real RabbitMQ: triggers, one-time codes,
//! push-versus-code races, locking, and the abuse limits' 429s.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn with_fallback(id: &str, after: u64) -> serde_json::Value {
    let mut c = challenge(id);
    c["sms"]["fallback_after_seconds"] = json!(after);
    c
}

async fn wait_sms(h: &Harness, n: usize) {
    for _ in 0..200 {
        if h.sms.sent.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("expected {n} SMS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_push_falls_back_to_sms_and_the_code_approves() {
    let h = Harness::start().await;
    h.publish(&with_fallback("sms-1", 1)).await;
    h.pushes(2, 10).await;
    wait_sms(&h, 1).await;
    let ev = h.event("sms.sent", 5).await;
    assert_eq!(ev["phone"], "+39340****567", "number masked in events");
    let code = h.sms.last_code().unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, b) = h.otp("sms-1", &wrong).await;
    assert_eq!((st, b["attempts_left"].as_u64()), (401, Some(4)));
    let (st, b) = h.otp("sms-1", "12ab").await;
    assert_eq!(st, 422, "{b}");
    let (st, b) = h.otp("sms-1", &code).await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("approved")));
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.approved");
    assert_eq!(o["channel"], "sms");
    assert!(o["device_id"].is_null());
    // Single use, and push decisions are refused now.
    let (st, _) = h.otp("sms-1", &code).await;
    assert_eq!(st, 409);
    let (st, _) = h.decide("sms-1", "d-pixel", "approve").await;
    assert_eq!(st, 409);
    let m = h.metrics().await;
    assert!(m.contains("sca_otp_verifications_total"));
    assert!(m.contains("sca_sms_total"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_the_challenge() {
    let h = Harness::start().await;
    h.publish(&with_fallback("sms-lock", 600)).await;
    h.pushes(2, 10).await;
    let (st, _) = h
        .http("POST", "/v1/challenges/sms-lock/sms", None, None)
        .await;
    assert_eq!(st, 202);
    wait_sms(&h, 1).await;
    let code = h.sms.last_code().unwrap();
    let wrong = if code == "999999" { "888888" } else { "999999" };
    for left in (1..=4).rev() {
        let (st, b) = h.otp("sms-lock", &wrong).await;
        assert_eq!((st, b["attempts_left"].as_u64()), (401, Some(left)));
    }
    let (st, _) = h.otp("sms-lock", &wrong).await;
    assert_eq!(st, 423);
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.otp_locked");
    assert_eq!(o["outcome"], "otp_locked");
    let (st, _) = h.otp("sms-lock", &code).await;
    assert_eq!(st, 423, "even the right code is refused once locked");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_approval_after_the_sms_wins_and_the_code_is_refused() {
    let h = Harness::start().await;
    h.publish(&with_fallback("sms-race", 600)).await;
    h.pushes(2, 10).await;
    h.respond(&json!({"op": "sms", "challenge_id": "sms-race"}))
        .await;
    wait_sms(&h, 1).await;
    let code = h.sms.last_code().unwrap();
    let (st, _) = h.decide("sms-race", "d-iphone", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["outcome"].as_str(), o["channel"].as_str()),
        (Some("approved"), Some("push"))
    );
    let (st, _) = h.otp("sms-race", &code).await;
    assert_eq!(st, 409);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_limit_answers_429_and_counts() {
    let h = Harness::start().await;
    h.publish(&with_fallback("sms-limit", 600)).await;
    h.pushes(2, 10).await;
    for _ in 0..3 {
        let (st, _) = h
            .http("POST", "/v1/challenges/sms-limit/sms", None, None)
            .await;
        assert_eq!(st, 202);
    }
    let (st, b) = h
        .http("POST", "/v1/challenges/sms-limit/sms", None, None)
        .await;
    assert_eq!((st, b["limit"].as_str()), (429, Some("sms_window")));
    assert!(h
        .metrics()
        .await
        .contains("sca_rate_limited_total{limit=\"sms_window\"}"));
    let (_, v) = h.http("GET", "/v1/challenges/sms-limit", None, None).await;
    assert_eq!(v["state"], "pending", "a refusal never drops the challenge");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_sends_sms_at_once_and_payment_names_amount_and_payee() {
    let h = Harness::start().await;
    let mut c = challenge("sms-pay");
    c["kind"] = json!("payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["devices"] = json!([]);
    h.publish(&c).await;
    wait_sms(&h, 1).await;
    let text = h.sms.sent.lock().unwrap()[0].text.clone();
    assert!(
        text.contains("125,40 €") && text.contains("Mario Rossi"),
        "{text}"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_and_failed_sms_is_undeliverable() {
    let h = Harness::start().await;
    h.sms.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c = challenge("sms-undeliverable");
    c["devices"] = json!([]);
    h.publish(&c).await;
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.login.undeliverable");
    assert_eq!(o["reason"], "sms_failed");
    let ev = h.event("sms.failed", 5).await;
    assert_eq!(ev["challenge_id"], "sms-undeliverable");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_gone_publishes_device_token_invalid() {
    let h = Harness::start().await;
    h.push
        .scripts
        .lock()
        .unwrap()
        .insert(apns_token(1), Script::Gone);
    h.publish(&challenge("gone-1")).await;
    let ev = h.event("device.token_invalid", 10).await;
    assert_eq!(ev["device_id"], "d-iphone");
    assert_eq!(ev["user_id"], "user-gone-1");
    assert!(
        !ev["token"].as_str().unwrap().contains(&apns_token(1)),
        "token masked"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_twilio_gateway_against_the_simulator() {
    use sca_dispatch::sim::sms::{Shape, SmsSim, SmsSimOptions};
    let sim = SmsSim::start(SmsSimOptions::default()).await.unwrap();
    let sms_cfg = sim.config(Shape::Twilio);
    let gateway = sca_dispatch::sms::gateway::from_config(&sms_cfg)
        .unwrap()
        .unwrap();
    let recorder = std::sync::Arc::new(Recorder::default());
    let providers = sca_dispatch::Providers {
        apns: Some(std::sync::Arc::new(FakePush {
            platform: sca_dispatch::challenge::model::Platform::Apns,
            rec: recorder.clone(),
        })),
        fcm: Some(std::sync::Arc::new(FakePush {
            platform: sca_dispatch::challenge::model::Platform::Fcm,
            rec: recorder,
        })),
        sms: Some(gateway),
        ..Default::default()
    };
    let h = Harness::start_custom(|c| c.sms = sms_cfg.clone(), Some(providers)).await;
    let mut c = with_fallback("sms-twilio", 1);
    c["kind"] = json!("payment");
    c["locale"] = json!("en");
    c["transaction"] = json!({"amount": "99.90", "currency": "EUR", "payee": "ACME S.p.A."});
    h.publish(&c).await;
    let msgs = sim
        .wait_for_messages(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(msgs[0].to, "+393401234567");
    assert!(
        msgs[0].text.contains("€99.90") && msgs[0].text.contains("ACME S.p.A."),
        "{}",
        msgs[0].text
    );
    let code = msgs[0]
        .text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap()
        .to_string();
    let (st, _) = h.otp("sms-twilio", &code).await;
    assert_eq!(st, 200);
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.payment.approved");
    assert_eq!(o["channel"], "sms");
    h.cleanup().await;
    sim.shutdown().await;
}
