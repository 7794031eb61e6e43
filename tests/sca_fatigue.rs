//! Fraud reports and push-fatigue defences through the daemon and the real RabbitMQ:
//! a deny with `report_fraud` (outcome, event, the mute sending the next challenge to
//! SMS or ending it `rate_limited`), the backoff after an unanswered push, and
//! `limits.one_pending_per_user`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn of_user(id: &str, user: &str) -> Value {
    let mut c = challenge(id);
    c["user_id"] = json!(user);
    c
}

fn without_sms(mut c: Value) -> Value {
    c.as_object_mut().unwrap().remove("sms");
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

async fn push_states(h: &Harness, id: &str) -> Vec<String> {
    let (_, v) = h
        .http("GET", &format!("/v1/challenges/{id}"), None, None)
        .await;
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["push"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraud_report_mutes_the_users_pushes_and_the_next_challenge_goes_to_sms() {
    let h = Harness::start().await;
    let user = unique("victim");
    h.publish(&of_user("fr-1", &user)).await;
    h.pushes(2, 10).await;
    // report_fraud is for denials only.
    let path = "/v1/challenges/fr-1/decision";
    let bad = json!({"device_id": "d-pixel", "decision": "approve", "report_fraud": true});
    let (st, b) = h.http("POST", path, Some(bad), None).await;
    assert_eq!(st, 422, "{b}");
    let body = json!({"device_id": "d-pixel", "decision": "deny", "report_fraud": true});
    let (st, b) = h.http("POST", path, Some(body), None).await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("denied")), "{b}");
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["reason"].as_str(), o["device_id"].as_str()),
        (Some("fraud_reported"), Some("d-pixel"))
    );
    let ev = h.event("user.fraud_reported", 5).await;
    assert_eq!(ev["user_id"], user.as_str());
    assert_eq!(
        (ev["challenge_id"].as_str(), ev["device_id"].as_str()),
        (Some("fr-1"), Some("d-pixel"))
    );
    assert!(ev["at"].as_str().is_some());

    // Muted: the next challenge goes straight to SMS, nothing is pushed.
    let before = h.push.pushes.lock().unwrap().len();
    h.publish(&of_user("fr-2", &user)).await;
    wait_sms(&h, 1).await;
    assert_eq!(push_states(&h, "fr-2").await, ["suppressed", "suppressed"]);
    let code = h.sms.last_code().unwrap();
    let (st, _) = h.otp("fr-2", &code).await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["challenge_id"].as_str(), o["channel"].as_str()),
        (Some("fr-2"), Some("sms"))
    );
    // Without a phone it ends rate_limited, reason push_muted.
    h.publish(&without_sms(of_user("fr-3", &user))).await;
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.rate_limited");
    assert_eq!(o["reason"], "push_muted");
    // Withdrawals of fr-1 aside, nothing new was pushed to the muted user.
    let after: Vec<_> = h.push.pushes.lock().unwrap()[before..]
        .iter()
        .filter(|p| !p.is_withdraw())
        .map(|p| p.challenge_id.to_string())
        .collect();
    assert!(after.is_empty(), "{after:?}");
    // Other users are not muted.
    h.publish(&of_user("fr-4", &unique("other"))).await;
    let p = h.pushes(before + 2, 10).await;
    assert!(p.iter().any(|m| &*m.challenge_id == "fr-4"));
    assert!(h.metrics().await.contains("sca_fraud_reports_total"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_push_holds_the_next_one_back() {
    let h = Harness::start_with(|c| c.limits.unanswered_backoff_seconds = 600).await;
    let user = unique("ignorer");
    let mut c = without_sms(of_user("bo-1", &user));
    c["ttl_seconds"] = json!(10);
    h.publish(&c).await;
    h.pushes(2, 10).await;
    let (rk, _) = h.outcome(15).await;
    assert_eq!(rk, "outcome.login.expired");
    // Inside the gap: SMS instead of a push, or rate_limited without a phone.
    h.publish(&of_user("bo-2", &user)).await;
    wait_sms(&h, 1).await;
    assert_eq!(push_states(&h, "bo-2").await, ["suppressed", "suppressed"]);
    h.publish(&without_sms(of_user("bo-3", &user))).await;
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["outcome"].as_str(), o["reason"].as_str()),
        (Some("rate_limited"), Some("push_backoff"))
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_challenge_supersedes_the_pending_one_when_configured() {
    let h = Harness::start_with(|c| c.limits.one_pending_per_user = true).await;
    let user = unique("busy");
    h.publish(&of_user("sp-1", &user)).await;
    h.pushes(2, 10).await;
    h.publish(&of_user("sp-2", &user)).await;
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.cancelled");
    assert_eq!(
        (o["challenge_id"].as_str(), o["reason"].as_str()),
        (Some("sp-1"), Some("superseded"))
    );
    let p = h.pushes(6, 10).await;
    let withdrawn = p
        .iter()
        .filter(|m| m.is_withdraw() && &*m.challenge_id == "sp-1")
        .count();
    assert_eq!(withdrawn, 2, "the older one's pushes are withdrawn");
    let (st, b) = h.decide("sp-2", "d-pixel", "approve").await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("approved")));
    h.cleanup().await;
}
