//! APNs through the whole daemon: RabbitMQ in, the real HTTP/2 token-auth transport over
//! TLS against the APNs simulator, outcomes and events out.

mod common;

use common::*;
use sca_dispatch::push::apns::ApnsProvider;
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions, Behaviour};
use sca_dispatch::Providers;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn start() -> (Harness, ApnsSim) {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let cfg = sim.config();
    let apns = ApnsProvider::new(&cfg).unwrap();
    let providers = Providers {
        apns: Some(Arc::new(apns)),
        ..Default::default()
    };
    let h = Harness::start_custom(|c| c.apns = cfg.clone(), Some(providers)).await;
    (h, sim)
}

fn ios_challenge(id: &str, tokens: &[String]) -> serde_json::Value {
    let mut c = challenge(id);
    c["kind"] = json!("payment");
    c["locale"] = json!("en");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["devices"] = json!(tokens
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"device_id": format!("ios-{i}"), "platform": "apns", "token": t}))
        .collect::<Vec<_>>());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_with_contract_headers_then_withdrawn() {
    let (h, sim) = start().await;
    let (a, b) = (apns_token(0xa1), apns_token(0xb2));
    h.publish(&ios_challenge("apns-d-1", &[a.clone(), b.clone()]))
        .await;
    sim.wait_for_pushes(2, Duration::from_secs(10))
        .await
        .unwrap();
    let p = sim.delivered();
    let first = &p[0];
    assert_eq!(first.header("apns-push-type"), "alert");
    assert_eq!(first.header("apns-priority"), "10");
    assert_eq!(first.header("apns-collapse-id"), "apns-d-1");
    assert_eq!(first.header("apns-topic"), sim.topic());
    assert!(first.header("apns-expiration").parse::<i64>().unwrap() > 0);
    assert_eq!(first.payload["aps"]["category"], "SCA_CHALLENGE");
    assert_eq!(first.payload["aps"]["interruption-level"], "time-sensitive");
    let body = first.payload["aps"]["alert"]["body"].as_str().unwrap();
    assert!(
        body.contains("€125.40") && body.contains("Mario Rossi"),
        "{body}"
    );
    assert_eq!(first.payload["challenge_id"], "apns-d-1");
    assert_eq!(first.payload["kind"], "payment");
    assert!(first.payload["expires_at"].is_string());

    let (st, _) = h.decide("apns-d-1", "ios-0", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(o["device_id"], "ios-0");
    sim.wait_for_pushes(3, Duration::from_secs(10))
        .await
        .unwrap();
    let w: Vec<_> = sim
        .pushes()
        .into_iter()
        .filter(|p| p.payload["type"] == "withdraw")
        .collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].token, b);
    assert_eq!(w[0].header("apns-push-type"), "background");
    assert_eq!(w[0].header("apns-priority"), "5");
    assert_eq!(w[0].payload["aps"]["content-available"], 1);
    assert!(h.metrics().await.contains(
        "sca_push_requests_total{provider=\"apns\",app=\"default\",result=\"delivered\"}"
    ));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_token_event_and_transient_errors_retried() {
    let (h, sim) = start().await;
    let (gone, flaky) = (apns_token(0x10), apns_token(0x20));
    sim.script(&gone, Behaviour::Unregistered);
    sim.script(&flaky, Behaviour::ServiceUnavailable { times: 2 });
    h.publish(&ios_challenge("apns-gone", &[gone.clone(), flaky.clone()]))
        .await;
    let ev = h.event("device.token_invalid", 10).await;
    assert_eq!(ev["device_id"], "ios-0");
    assert_eq!(ev["platform"], "apns");
    for _ in 0..100 {
        let (_, v) = h.http("GET", "/v1/challenges/apns-gone", None, None).await;
        if v["devices"][1]["push"] == "delivered" {
            assert_eq!(v["devices"][0]["push"], "token_invalid");
            h.cleanup().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("503 twice then delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_times_out_and_is_retried() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let mut cfg = sim.config();
    cfg.request_timeout_ms = 500;
    let apns = ApnsProvider::new(&cfg).unwrap();
    let providers = Providers {
        apns: Some(Arc::new(apns)),
        ..Default::default()
    };
    let h = Harness::start_custom(|c| c.apns = cfg.clone(), Some(providers)).await;
    let token = apns_token(0x5a);
    sim.script(&token, Behaviour::Stall { times: 1 });
    h.publish(&ios_challenge("apns-stall", std::slice::from_ref(&token)))
        .await;
    for _ in 0..100 {
        let (_, v) = h.http("GET", "/v1/challenges/apns-stall", None, None).await;
        if v["devices"][0]["push"] == "delivered" {
            let tries = sim
                .pushes()
                .into_iter()
                .filter(|p| p.token == token)
                .count();
            assert!(tries >= 2, "stalled once, then retried ({tries} requests)");
            h.cleanup().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the stalled push was not retried to delivery");
}
