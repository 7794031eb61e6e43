//! Rolling restart: an instance stopped with SIGTERM hands its partitions over, and the
//! next owner resumes each undecided challenge — no second push, the SMS code already
//! sent still approves it.

mod common;
mod common_cluster;

use common::*;
use common_cluster::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_sent_before_a_rolling_restart_approves_on_the_new_owner() {
    let h = cluster_harness(|_| {}).await;
    let mut b = Some(another(&h).await);
    let a = h.daemon.as_ref().unwrap();
    spread(&[a, b.as_ref().unwrap()], 20).await;
    let ids: Vec<String> = (0..6).map(|i| format!("roll-{i}")).collect();
    for id in &ids {
        let mut c = challenge(id);
        c["sms"]["fallback_after_seconds"] = json!(600);
        publish_by_user(&h, &c).await;
    }
    h.pushes(12, 10).await;
    // One challenge on the instance about to restart, with its SMS code sent.
    let (on_b, id) = {
        let nodes = [a, b.as_ref().unwrap()];
        let mut pick = None;
        for id in &ids {
            if holder(&nodes, id, 10).await == 1 {
                pick = Some(id.clone());
                break;
            }
        }
        (true, pick.expect("the second instance holds some of them"))
    };
    assert!(on_b);
    let b_addr = b.as_ref().unwrap().http_addr;
    let (st, _) = call(b_addr, "POST", &format!("/v1/challenges/{id}/sms"), None).await;
    assert_eq!(st, 202);
    for _ in 0..100 {
        if h.sms.last_code().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let code = h.sms.last_code().expect("the code was sent");
    let d = b.take().unwrap();
    d.shutdown();
    d.wait().await;
    // Every challenge is now held by the first instance, none pushed again.
    for id in &ids {
        holder(&[a], id, 15).await;
    }
    spread(&[a], 20).await;
    let (st, ready) = h.http("GET", "/readyz", None, None).await;
    assert_eq!(st, 200, "{ready}");
    assert_eq!(
        ready["cluster"]["owned"].as_array().map(|o| o.len()),
        Some(PARTITIONS as usize),
        "{ready}"
    );
    assert_eq!(
        ready["cluster"]["instance"].as_str(),
        Some(a.instance.as_str())
    );
    let challenge_pushes = h
        .push
        .pushes
        .lock()
        .unwrap()
        .iter()
        .filter(|p| matches!(p.content, sca_dispatch::push::PushContent::Challenge { .. }))
        .count();
    assert_eq!(challenge_pushes, 12, "nothing pushed twice");
    assert_eq!(h.sms.sent.lock().unwrap().len(), 1, "no second SMS");
    let (st, v) = h.otp(&id, &code).await;
    assert_eq!((st, v["outcome"].as_str()), (200, Some("approved")), "{v}");
    let (_, o) = h.outcome(10).await;
    assert_eq!(
        (o["challenge_id"].as_str(), o["channel"].as_str()),
        (Some(id.as_str()), Some("sms"))
    );
    // A new instance joining takes its share back, handed over the same way.
    let c = another(&h).await;
    spread(&[a, &c], 20).await;
    for id in ids.iter().filter(|i| **i != id) {
        let nodes = [a, &c];
        holder(&nodes, id, 10).await;
    }
    let challenge_pushes = h
        .push
        .pushes
        .lock()
        .unwrap()
        .iter()
        .filter(|p| matches!(p.content, sca_dispatch::push::PushContent::Challenge { .. }))
        .count();
    assert_eq!(
        challenge_pushes, 12,
        "nothing pushed again after the rebalance"
    );
    h.no_outcome(500).await;
    c.shutdown();
    c.wait().await;
    cleanup_cluster(h).await;
}
