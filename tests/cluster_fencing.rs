//! Fencing: an instance whose broker connection is closed under it stops acting on its
//! partitions at once; their unacked challenges reach the next owner, which dispatches
//! them; decisions sent through either instance meanwhile end every challenge with
//! exactly one outcome, never two different ones.

mod common;
mod common_cluster;

use common::*;
use common_cluster::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fences_and_every_challenge_gets_one_outcome() {
    let h = cluster_harness(|_| {}).await;
    let b = another(&h).await;
    let a = h.daemon.as_ref().unwrap();
    spread(&[a, &b], 20).await;
    let ids: Vec<String> = (0..12).map(|i| format!("fence-{i}")).collect();
    for id in &ids {
        publish_by_user(&h, &challenge(id)).await;
    }
    h.pushes(24, 10).await;
    let nodes = [a, &b];
    let mut on_b = Vec::new();
    for id in &ids {
        if holder(&nodes, id, 10).await == 1 {
            on_b.push(id.clone());
        }
    }
    assert!(!on_b.is_empty(), "the second instance holds some");
    close_connection(&b.instance);
    // Every challenge b held is held again by exactly one instance (b's copy was
    // dropped at once, its delivery went back to the partition queue).
    for id in &on_b {
        holder(&nodes, id, 15).await;
    }
    // …and dispatched again by their next owner.
    h.pushes(24 + 2 * on_b.len(), 15).await;
    assert!(
        h.metrics().await.contains("sca_partition_fences_total"),
        "the fence is counted"
    );
    // Decisions through both instances: approve through b, deny through a; retried while
    // the partition is changing owner (503 with Retry-After).
    for id in &ids {
        for (via, decision) in [(b.http_addr, "approve"), (a.http_addr, "deny")] {
            let until = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let (st, v) = call(
                    via,
                    "POST",
                    &format!("/v1/challenges/{id}/decision"),
                    Some(json!({"device_id": "d-pixel", "decision": decision, "user_id": format!("user-{id}")})),
                )
                .await;
                if st == 200 || st == 409 {
                    break;
                }
                assert_eq!(st, 503, "{id}: {v}");
                assert!(tokio::time::Instant::now() < until, "{id}: still 503");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..ids.len() {
        let (_, o) = h.outcome(15).await;
        outcomes
            .entry(o["challenge_id"].as_str().unwrap().to_string())
            .or_default()
            .push(o["outcome"].as_str().unwrap().to_string());
    }
    h.no_outcome(1500).await;
    for id in &ids {
        assert_eq!(
            outcomes.get(id).map(|o| o.as_slice()),
            Some(&["approved".to_string()][..]),
            "{id}: {outcomes:?}"
        );
    }
    b.shutdown();
    b.wait().await;
    cleanup_cluster(h).await;
}
