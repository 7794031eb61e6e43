//! Huawei Push Kit through the whole daemon: RabbitMQ in, the real HMS transport against
//! the Push Kit simulator, outcomes and events out — delivered, token gone
//! (`device.token_invalid`), retried after flow control, withdrawn from the other device.

mod common;

use common::*;
use sca_dispatch::push::hms::HmsProvider;
use sca_dispatch::sim::hms::{Behaviour, HmsSim, HmsSimOptions};
use sca_dispatch::Providers;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn start() -> (Harness, HmsSim, tempfile::TempDir) {
    let sim = HmsSim::start(HmsSimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = sim.write_config_files(dir.path()).unwrap();
    let hms = HmsProvider::new(&cfg).unwrap();
    let providers = Providers {
        hms: Some(Arc::new(hms)),
        ..Default::default()
    };
    let h = Harness::start_custom(|c| c.hms = cfg.clone(), Some(providers)).await;
    (h, sim, dir)
}

fn hms_challenge(id: &str, tokens: &[&str]) -> serde_json::Value {
    let mut c = challenge(id);
    c["kind"] = json!("payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["devices"] = json!(tokens
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"device_id": format!("huawei-{i}"), "platform": "hms", "token": t}))
        .collect::<Vec<_>>());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_then_withdrawn_from_the_other_device() {
    let (h, sim, _dir) = start().await;
    let (_, ready) = h.http("GET", "/readyz", None, None).await;
    assert_eq!(ready["providers"]["hms"], "configured");
    h.publish(&hms_challenge("hms-d-1", &["hms-tok-a", "hms-tok-b"]))
        .await;
    assert!(sim.wait_for_delivered(2, Duration::from_secs(10)).await);
    let m = sim.delivered();
    let d = &m[0].data;
    assert_eq!(d["type"], "challenge");
    assert_eq!(d["challenge_id"], "hms-d-1");
    assert_eq!(d["kind"], "payment");
    let body = d["body"].as_str().unwrap();
    assert!(
        body.contains("125,40 €") && body.contains("Mario Rossi"),
        "{body}"
    );
    assert_eq!(m[0].android()["urgency"], "HIGH");
    assert_eq!(m[0].android()["bi_tag"], "hms-d-1");
    let (st, _) = h
        .http(
            "POST",
            "/v1/challenges/hms-d-1/decision",
            Some(json!({"device_id": "huawei-1", "decision": "approve"})),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["outcome"].as_str(), o["device_id"].as_str()),
        (Some("approved"), Some("huawei-1"))
    );
    assert!(sim.wait_for_delivered(3, Duration::from_secs(10)).await);
    let w: Vec<_> = sim
        .delivered()
        .into_iter()
        .filter(|m| m.data["type"] == "withdraw")
        .collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].token(), "hms-tok-a");
    assert_eq!(w[0].data["challenge_id"], "hms-d-1");
    let v = h
        .view_when("hms-d-1", 10, |v| v["devices"][0]["push"] == "delivered")
        .await;
    assert_eq!(v["devices"][0]["push"], "delivered");
    assert!(h.metrics().await.contains(
        "sca_push_requests_total{provider=\"hms\",app=\"default\",result=\"delivered\"}"
    ));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_token_publishes_token_invalid_and_ends_undeliverable() {
    let (h, sim, _dir) = start().await;
    sim.script("hms-tok-gone", Behaviour::Invalid);
    let mut c = hms_challenge("hms-gone", &["hms-tok-gone"]);
    c.as_object_mut().unwrap().remove("sms");
    h.publish(&c).await;
    let ev = h.event("device.token_invalid", 10).await;
    assert_eq!(ev["device_id"], "huawei-0");
    assert_eq!(ev["platform"], "hms");
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.payment.undeliverable");
    assert_eq!(o["reason"], "no_reachable_device");
    assert!(h.metrics().await.contains(
        "sca_push_requests_total{provider=\"hms\",app=\"default\",result=\"token_gone\"}"
    ));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_is_retried_after_retry_after() {
    let (h, sim, _dir) = start().await;
    sim.script(
        "hms-tok-busy",
        Behaviour::FlowControl {
            retry_after_s: Some(1),
            times: 1,
        },
    );
    h.publish(&hms_challenge("hms-503", &["hms-tok-busy"]))
        .await;
    assert!(sim.wait_for_delivered(1, Duration::from_secs(10)).await);
    let tries: Vec<_> = sim
        .messages()
        .into_iter()
        .filter(|m| m.token() == "hms-tok-busy")
        .collect();
    assert_eq!(tries.len(), 2, "one 503, then the retry");
    assert_eq!((tries[0].status, tries[1].status), (503, 200));
    let waited = tries[1].received_at.duration_since(tries[0].received_at);
    assert!(
        waited >= Duration::from_millis(990),
        "Retry-After honoured: waited {waited:?}"
    );
    // The simulator records the 200 before the engine hears the provider's answer.
    let mut v = serde_json::Value::Null;
    for _ in 0..100 {
        v = h.http("GET", "/v1/challenges/hms-503", None, None).await.1;
        if v["devices"][0]["push"] != "sending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v["devices"][0]["push"], "delivered");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_challenge_is_withdrawn() {
    let (h, sim, _dir) = start().await;
    h.publish(&hms_challenge("hms-cancel", &["hms-tok-c"]))
        .await;
    assert!(sim.wait_for_delivered(1, Duration::from_secs(10)).await);
    let (st, _) = h
        .http("DELETE", "/v1/challenges/hms-cancel", None, None)
        .await;
    assert_eq!(st, 200);
    let (rk, _) = h.outcome(5).await;
    assert_eq!(rk, "outcome.payment.cancelled");
    assert!(sim.wait_for_delivered(2, Duration::from_secs(10)).await);
    let last = sim.delivered().pop().unwrap();
    assert_eq!(
        last.data,
        json!({"type": "withdraw", "challenge_id": "hms-cancel"})
    );
    assert_eq!(last.token(), "hms-tok-c");
    h.cleanup().await;
}
