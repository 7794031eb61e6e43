//! Crash safety with the real binary: SIGKILL the daemon with challenges in flight, start
//! it again, and every challenge still ends with exactly one outcome. The SMS simulator
//! (webhook shape) keeps the challenges pending until their codes are entered.

mod common;

use common::*;
use sca_dispatch::sim::sms::{Shape, SmsSim, SmsSimOptions};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

fn latest_codes(sim: &SmsSim) -> HashMap<String, String> {
    let mut codes = HashMap::new();
    for m in sim.messages() {
        let code = m
            .text
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 6)
            .unwrap()
            .to_string();
        codes.insert(m.reference.clone().unwrap(), code);
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_challenges_in_flight_loses_nothing() {
    let sim = SmsSim::start(SmsSimOptions::default()).await.unwrap();
    let ns = unique("crash");
    let cfg = test_config(&ns);
    let (http_port, metrics_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sca.toml");
    let mut file_cfg = cfg.clone();
    file_cfg.http.addr = format!("127.0.0.1:{http_port}");
    file_cfg.metrics.addr = format!("127.0.0.1:{metrics_port}");
    file_cfg.sms = sim.config(Shape::Webhook);
    // Twenty users share the test number: above the default per-number SMS limit.
    file_cfg.sms.max_per_phone_per_window = 100;
    std::fs::write(&path, toml::to_string(&file_cfg).unwrap()).unwrap();
    let a = &cfg.amqp;

    // The harness only publishes and reads outcomes here: no in-process daemon.
    let (conn, ch) = amqp().await;
    let mut outcomes = tap(&conn, &a.outcomes_exchange).await;
    let mut child = spawn_daemon(&path);
    wait_ready(http_port).await;

    let ids: Vec<String> = (0..20).map(|i| format!("crash-{i}")).collect();
    for id in &ids {
        let mut c = challenge(id);
        c["devices"] = json!([]); // SMS at once; pending until the code comes back
        publish_confirmed(&ch, &a.challenges_queue, &c).await;
    }
    sim.wait_for_messages(20, Duration::from_secs(20))
        .await
        .unwrap();

    // Decide five before the crash; give their acks time to flush.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let otp = |id: &str, code: &str| {
        hyper::Request::post(format!(
            "http://127.0.0.1:{http_port}/v1/challenges/{id}/otp"
        ))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TEST_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"code": code}).to_string(),
        )))
        .unwrap()
    };
    let codes = latest_codes(&sim);
    for id in &ids[..5] {
        let r = client.request(otp(id, &codes[id])).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = sim.total_messages();

    let mut child = spawn_daemon(&path);
    wait_ready(http_port).await;
    // The 15 undecided challenges are redelivered and dispatched again (a new SMS each).
    sim.wait_for_messages(before + 15, Duration::from_secs(20))
        .await
        .unwrap();
    let codes = latest_codes(&sim);
    for id in &ids[5..] {
        let r = client.request(otp(id, &codes[id])).await.unwrap();
        assert_eq!(r.status(), 200, "{id}");
    }

    let mut seen = HashSet::new();
    use futures_util::StreamExt;
    while seen.len() < ids.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), outcomes.next())
            .await
            .expect("all outcomes")
            .unwrap()
            .unwrap();
        let o: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(o["outcome"], "approved");
        assert!(
            seen.insert(o["challenge_id"].as_str().unwrap().to_string()),
            "second outcome for {}",
            o["challenge_id"]
        );
    }
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), outcomes.next()).await
    {
        panic!("extra outcome: {}", String::from_utf8_lossy(&d.data));
    }
    assert_eq!(
        sim.total_messages(),
        before + 15,
        "decided challenges were not dispatched again"
    );

    // Graceful stop (SIGTERM) leaves nothing behind.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    for q in [&a.challenges_queue, &a.responses_queue, &a.dead_queue] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    sim.shutdown().await;
}
