//! FCM through the whole daemon: RabbitMQ in, the real FCM HTTP v1 transport against the
//! FCM simulator, outcomes and events out.

mod common;

use common::*;
use sca_dispatch::push::fcm::FcmProvider;
use sca_dispatch::sim::fcm::{Behaviour, FcmSim, FcmSimOptions};
use sca_dispatch::Providers;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn start() -> (Harness, FcmSim, tempfile::TempDir) {
    start_with(|_| {}).await
}

async fn start_with(
    tweak: impl FnOnce(&mut sca_dispatch::Config),
) -> (Harness, FcmSim, tempfile::TempDir) {
    let sim = FcmSim::start(FcmSimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = sim.write_config_files(dir.path()).unwrap();
    let fcm = FcmProvider::new(&cfg).unwrap();
    let providers = Providers {
        fcm: Some(Arc::new(fcm)),
        ..Default::default()
    };
    let h = Harness::start_custom(
        |c| {
            c.fcm = cfg.clone();
            tweak(c);
        },
        Some(providers),
    )
    .await;
    (h, sim, dir)
}

fn fcm_challenge(id: &str, tokens: &[&str]) -> serde_json::Value {
    let mut c = challenge(id);
    c["kind"] = json!("payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["devices"] = json!(tokens
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"device_id": format!("android-{i}"), "platform": "fcm", "token": t}))
        .collect::<Vec<_>>());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_then_withdrawn_from_the_other_device() {
    let (h, sim, _dir) = start().await;
    h.publish(&fcm_challenge("fcm-d-1", &["tok-a", "tok-b"]))
        .await;
    assert!(sim.wait_for_delivered(2, Duration::from_secs(10)).await);
    let m = sim.delivered();
    let d = m[0].data();
    assert_eq!(d["type"], "challenge");
    assert_eq!(d["challenge_id"], "fcm-d-1");
    assert_eq!(d["kind"], "payment");
    assert!(
        d["body"].as_str().unwrap().contains("125,40 €")
            && d["body"].as_str().unwrap().contains("Mario Rossi")
    );
    assert_eq!(m[0].body["message"]["android"]["priority"], "HIGH");
    assert_eq!(m[0].body["message"]["android"]["collapse_key"], "fcm-d-1");
    let (st, _) = h.decide("fcm-d-1", "android-1", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["outcome"].as_str(), o["device_id"].as_str()),
        (Some("approved"), Some("android-1"))
    );
    assert!(sim.wait_for_delivered(3, Duration::from_secs(10)).await);
    let w: Vec<_> = sim
        .delivered()
        .into_iter()
        .filter(|m| m.data()["type"] == "withdraw")
        .collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].token, "tok-a");
    assert_eq!(w[0].data()["challenge_id"], "fcm-d-1");
    let v = h
        .view_when("fcm-d-1", 10, |v| v["devices"][0]["push"] == "delivered")
        .await;
    assert_eq!(v["devices"][0]["push"], "delivered");
    assert!(h.metrics().await.contains(
        "sca_push_requests_total{provider=\"fcm\",app=\"default\",result=\"delivered\"}"
    ));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_token_publishes_token_invalid_and_falls_back() {
    let (h, sim, _dir) = start().await;
    sim.script("tok-gone", Behaviour::Unregistered);
    let mut c = fcm_challenge("fcm-gone", &["tok-gone"]);
    c.as_object_mut().unwrap().remove("sms");
    h.publish(&c).await;
    let ev = h.event("device.token_invalid", 10).await;
    assert_eq!(ev["device_id"], "android-0");
    assert_eq!(ev["platform"], "fcm");
    // No device left and no SMS: undeliverable.
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.payment.undeliverable");
    assert_eq!(o["reason"], "no_reachable_device");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_with_retry_after_is_honoured() {
    let (h, sim, _dir) = start().await;
    sim.script(
        "tok-quota",
        Behaviour::QuotaExceeded {
            retry_after_s: Some(1),
            times: 1,
        },
    );
    h.publish(&fcm_challenge("fcm-429", &["tok-quota"])).await;
    assert!(sim.wait_for_delivered(1, Duration::from_secs(10)).await);
    let m = sim.messages();
    let tries: Vec<_> = m.iter().filter(|m| m.token == "tok-quota").collect();
    assert_eq!(tries.len(), 2, "one 429, then the retry");
    assert_eq!((tries[0].status, tries[1].status), (429, 200));
    let waited = tries[1].received_at.duration_since(tries[0].received_at);
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After honoured: waited {waited:?}"
    );
    // The simulator records the 200 before the engine hears the provider's answer.
    let mut v = serde_json::Value::Null;
    for _ in 0..100 {
        v = h.http("GET", "/v1/challenges/fcm-429", None, None).await.1;
        if v["devices"][0]["push"] != "sending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v["devices"][0]["push"], "delivered");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_access_token_under_a_thousand_sends_is_renewed_once() {
    // Room for all 500 undecided challenges in flight at once.
    let (h, sim, _dir) = start_with(|c| c.amqp.prefetch = 1000).await;
    // Warm up: the first token is minted.
    h.publish(&fcm_challenge("fcm-warm", &["tok-warm"])).await;
    assert!(sim.wait_for_delivered(1, Duration::from_secs(10)).await);
    assert_eq!(sim.token_mints(), 1);
    sim.revoke_access_tokens();
    // 500 challenges × 2 devices: 1,000 sends meet the refused token at once.
    for i in 0..500 {
        let c = fcm_challenge(
            &format!("fcm-burst-{i}"),
            &[&format!("tok-a{i}"), &format!("tok-b{i}")],
        );
        h.publish(&c).await;
    }
    assert!(
        sim.wait_for_delivered(1001, Duration::from_secs(30)).await,
        "every send delivered"
    );
    assert_eq!(sim.token_mints(), 2, "exactly one renewal");
    h.cleanup().await;
}
