//! `runtime.flavor = "thread-per-core"` with the real binary: the daemon runs a runtime
//! thread per worker, the challenge consumers spread over them, and every challenge is
//! pushed, decided over HTTP and given exactly one outcome, as with the default flavor.

mod common;

use common::*;
use futures_util::StreamExt;
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions};
use serde_json::json;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// Kills the daemon should the test fail half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_per_core_decides_every_challenge_once() {
    const N: usize = 120;
    let apns = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let ns = unique("flavor");
    let mut cfg = test_config(&ns);
    let (http_port, metrics_port) = (free_port(), free_port());
    cfg.http.addr = format!("127.0.0.1:{http_port}");
    cfg.metrics.addr = format!("127.0.0.1:{metrics_port}");
    cfg.apns = apns.config();
    cfg.runtime.flavor = "thread-per-core".into();
    cfg.runtime.worker_threads = 3;
    cfg.amqp.consumers = 4;
    // Held unacked until decided: room for all of them.
    cfg.amqp.prefetch = 50;
    cfg.limits.challenges_per_minute = 10_000;
    cfg.limits.challenge_burst = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sca.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let a = &cfg.amqp;

    let (conn, ch) = amqp().await;
    let mut outcomes = tap(&conn, &a.outcomes_exchange).await;
    let mut guard = KillOnDrop(spawn_daemon(&path));
    wait_ready(http_port).await;
    let names = thread_names(guard.0.id());
    for core in ["sca-core-1", "sca-core-2"] {
        assert!(
            names.iter().any(|n| n == core),
            "no thread {core}: {names:?}"
        );
    }

    let ids: Vec<String> = (0..N).map(|i| format!("{ns}-{i}")).collect();
    for id in &ids {
        let mut c = challenge(id);
        c["devices"] =
            json!([{"device_id": "d-iphone", "platform": "apns", "token": apns_token(1)}]);
        c.as_object_mut().unwrap().remove("sms");
        publish_confirmed(&ch, &a.challenges_queue, &c).await;
    }
    apns.wait_for_pushes(N as u64, Duration::from_secs(30))
        .await
        .expect("every challenge pushed");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for id in &ids {
        let req = hyper::Request::post(format!(
            "http://127.0.0.1:{http_port}/v1/challenges/{id}/decision"
        ))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TEST_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"device_id": "d-iphone", "decision": "approve"}).to_string(),
        )))
        .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.status(), 200, "{id}");
    }

    let mut seen = HashSet::new();
    while seen.len() < N {
        let d = tokio::time::timeout(Duration::from_secs(20), outcomes.next())
            .await
            .expect("every outcome")
            .unwrap()
            .unwrap();
        let o: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(o["outcome"], "approved", "{o}");
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

    // SIGTERM: the consumers on every runtime stop and the process exits cleanly.
    Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    for q in [&a.challenges_queue, &a.responses_queue, &a.dead_queue] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
}
