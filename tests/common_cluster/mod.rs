//! Several daemons in cluster mode on one broker, sharing the harness's topology,
//! provider doubles and outcome tap; publishing through the consistent-hash exchange;
//! waiting for the partitions to be spread; closing an instance's broker connection.
#![allow(dead_code)]

use crate::common::*;
use lapin::options::*;
use lapin::BasicProperties;
use sca_dispatch::Daemon;
use serde_json::Value;
use std::time::Duration;

pub const SECRET: &str = "cluster-test-secret-0123456789abcdef";
pub const PARTITIONS: u32 = 8;

/// A harness whose daemon runs in cluster mode (3 s takeover: claims every 300 ms).
pub async fn cluster_harness(tweak: impl FnOnce(&mut sca_dispatch::Config)) -> Harness {
    Harness::start_with(|c| {
        c.cluster.enabled = true;
        c.cluster.secret = SECRET.into();
        c.cluster.partitions = PARTITIONS;
        c.cluster.takeover_seconds = 3;
        tweak(c);
    })
    .await
}

/// Another instance on the harness's topology and doubles.
pub async fn another(h: &Harness) -> Daemon {
    let d = Daemon::start(h.cfg.validate().unwrap(), h.providers())
        .await
        .unwrap();
    for _ in 0..1200 {
        if d.status.connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(d.status.connected());
    d
}

/// Waits until every partition is owned by exactly one of `nodes` and each owns at
/// least ⌊N/n⌋ (the assignment has converged).
pub async fn spread(nodes: &[&Daemon], secs: u64) -> Vec<Vec<u16>> {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let owned: Vec<Vec<u16>> = nodes.iter().map(|d| d.engine.ownership().owned()).collect();
        let total: usize = owned.iter().map(|o| o.len()).sum();
        let mut all: Vec<u16> = owned.iter().flatten().copied().collect();
        all.sort();
        all.dedup();
        let floor = PARTITIONS as usize / nodes.len();
        if total == PARTITIONS as usize
            && all.len() == PARTITIONS as usize
            && owned.iter().all(|o| o.len() >= floor)
        {
            return owned;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "partitions not spread in time: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn exchange(h: &Harness) -> String {
    format!("{}.by-user", h.cfg.amqp.challenges_queue)
}

/// Publishes a challenge to the consistent-hash exchange, routed by its `user_id`.
pub async fn publish_by_user(h: &Harness, v: &Value) {
    let user = v["user_id"].as_str().unwrap().to_string();
    h.ch.basic_publish(
        exchange(h).as_str().into(),
        user.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        v.to_string().as_bytes(),
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Which of `nodes` holds challenge `id` (waiting up to `secs`).
pub async fn holder(nodes: &[&Daemon], id: &str, secs: u64) -> usize {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let held: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].engine.holds(id))
            .collect();
        if held.len() == 1 {
            return held[0];
        }
        assert!(held.len() <= 1, "{id} held by {held:?}");
        assert!(
            tokio::time::Instant::now() < until,
            "{id} held by nobody in time"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An HTTP call to any instance, with the test token.
pub async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
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

/// Closes the broker connection of the instance `id` with `rabbitmqctl`, as an
/// operator (or a network fault) would.
pub fn close_connection(instance: &str) {
    let ctl = |args: &[&str]| {
        std::process::Command::new("rabbitmqctl")
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/bin:/usr/local/bin")
            .output()
            .expect("rabbitmqctl runs")
    };
    let out = ctl(&["-q", "list_connections", "pid", "client_properties"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("instance {instance}")))
        .unwrap_or_else(|| panic!("no connection named after instance {instance}: {text}"));
    let pid = line.split_whitespace().next().unwrap();
    let out = ctl(&["close_connection", pid, "closed by a test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the cluster topology besides the harness's own.
pub async fn cleanup_cluster(h: Harness) {
    let ch = h.ch.clone();
    let q = h.cfg.amqp.challenges_queue.clone();
    let ex = exchange(&h);
    h.cleanup().await;
    for i in 0..PARTITIONS {
        let _ = ch
            .queue_delete(format!("{q}.p{i}").into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}
