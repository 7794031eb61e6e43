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
    // Six challenges at least, and more until one is on the instance about to restart:
    // which partitions it was given depends on timing, the users' partitions do not.
    let nodes = [a, b.as_ref().unwrap()];
    let mut ids: Vec<String> = Vec::new();
    let mut on_b = None;
    for i in 0..64 {
        if ids.len() >= 6 && on_b.is_some() {
            break;
        }
        let id = format!("roll-{i}");
        let mut c = challenge(&id);
        c["sms"]["fallback_after_seconds"] = json!(600);
        publish_by_user(&h, &c).await;
        if holder(&nodes, &id, 10).await == 1 && on_b.is_none() {
            on_b = Some(id.clone());
        }
        ids.push(id);
    }
    // One challenge on the instance about to restart, with its SMS code sent.
    let id = on_b.expect("the second instance holds some of 64 users' challenges");
    let pushed = 2 * ids.len();
    h.pushes(pushed, 10).await;
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
    assert_eq!(challenge_pushes, pushed, "nothing pushed twice");
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
        challenge_pushes, pushed,
        "nothing pushed again after the rebalance"
    );
    h.no_outcome(500).await;
    c.shutdown();
    c.wait().await;
    cleanup_cluster(h).await;
}

fn challenge_pushes(h: &Harness) -> usize {
    h.push
        .pushes
        .lock()
        .unwrap()
        .iter()
        .filter(|p| matches!(p.content, sca_dispatch::push::PushContent::Challenge { .. }))
        .count()
}

/// A challenge's view through `addr`, once an instance holds it.
async fn view_via(addr: std::net::SocketAddr, id: &str) -> serde_json::Value {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (st, v) = call(addr, "GET", &format!("/v1/challenges/{id}"), None).await;
        if st == 200 {
            return v;
        }
        assert!(tokio::time::Instant::now() < until, "{id}: {st} {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_payment_keeps_its_operation_id_over_a_rolling_restart() {
    use base64::Engine as _;
    let h = cluster_harness(|_| {}).await;
    let b = another(&h).await;
    let a = h.daemon.as_ref().unwrap();
    spread(&[a, &b], 20).await;
    // Offline payments until one lands on the instance about to restart.
    let key = [11u8; 32];
    let mut picked = None;
    let mut published = 0;
    for i in 0..32 {
        let id = format!("roll-off-{i}");
        let mut c = challenge(&id);
        c["kind"] = json!("payment");
        c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
        c["offline"] = json!(true);
        c["devices"][1]["offline_key"] =
            json!(base64::engine::general_purpose::STANDARD.encode(key));
        publish_by_user(&h, &c).await;
        published += 1;
        if holder(&[a, &b], &id, 10).await == 1 {
            picked = Some(id);
            break;
        }
    }
    let id = picked.expect("the second instance holds one of them");
    h.pushes(2 * published, 10).await;
    let before = view_via(b.http_addr, &id).await;
    let op = before["operation_id"]
        .as_str()
        .expect("an operation id")
        .to_string();
    let qr = before["qr"].as_str().expect("a QR payload").to_string();
    b.shutdown();
    b.wait().await;
    holder(&[a], &id, 15).await;
    let after = view_via(a.http_addr, &id).await;
    assert_eq!(after["operation_id"].as_str(), Some(op.as_str()), "{after}");
    assert_eq!(after["qr"].as_str(), Some(qr.as_str()));
    assert_eq!(challenge_pushes(&h), 2 * published, "nothing pushed again");
    // The code the app computed from the QR shown before the restart approves it.
    let code = sca_dispatch::challenge::offline::code_for_qr(
        &sca_dispatch::challenge::offline::OfflineKey::from_bytes(key),
        &qr,
    )
    .unwrap();
    let (st, v) = call(
        a.http_addr,
        "POST",
        &format!("/v1/challenges/{id}/offline"),
        Some(json!({"code": code, "user_id": format!("user-{id}")})),
    )
    .await;
    assert_eq!((st, v["outcome"].as_str()), (200, Some("approved")), "{v}");
    let (_, o) = h.outcome(10).await;
    assert_eq!(
        (o["challenge_id"].as_str(), o["channel"].as_str()),
        (Some(id.as_str()), Some("offline"))
    );
    cleanup_cluster(h).await;
}
