//! Offline confirmation through the daemon and the real RabbitMQ: the operation id and
//! the QR payload in the view, the app's code from `sca-dispatch offline-code`, wrong
//! codes and the lock, and `not_offline`.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

fn key_b64(seed: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

fn offline_payment(id: &str) -> Value {
    let mut c = challenge(id);
    c["kind"] = json!("payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["offline"] = json!(true);
    c["devices"][1]["offline_key"] = json!(key_b64(11));
    c
}

/// What the app shows for the QR payload: the reference generator, run as a process
/// (the key through the environment, never the command line).
fn app_code(seed: u8, qr: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
        .args(["offline-code", "--qr", qr])
        .env("SCA_OFFLINE_KEY", key_b64(seed))
        .output()
        .expect("offline-code runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    code
}

/// The challenge's view, once the daemon holds it (a freshly published challenge may
/// still be on its way).
async fn view(h: &Harness, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (st, v) = h
            .http("GET", &format!("/v1/challenges/{id}"), None, None)
            .await;
        if st == 200 {
            return v;
        }
        last = v;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{id} is not held: {last}");
}

async fn offline(h: &Harness, id: &str, code: &str) -> (u16, Value) {
    let path = format!("/v1/challenges/{id}/offline");
    h.http("POST", &path, Some(json!({"code": code})), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_the_app_computes_from_the_qr_approves_the_payment() {
    let h = Harness::start().await;
    h.publish(&offline_payment("off-1")).await;
    h.pushes(2, 10).await;
    let v = view(&h, "off-1").await;
    let op = v["operation_id"].as_str().unwrap().to_string();
    assert_eq!(op.len(), 8);
    let qr = v["qr"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(qr).unwrap();
    assert_eq!(parsed["op"], op.as_str());
    assert_eq!(parsed["tx"]["payee"], "Mario Rossi");
    assert_eq!(parsed["kind"], "payment");
    let code = app_code(11, qr);
    // Another key's code is wrong, and so is one for the bare operation id (a payment's
    // code is bound to its transaction).
    let (st, b) = offline(&h, "off-1", &app_code(12, qr)).await;
    assert_eq!((st, b["attempts_left"].as_u64()), (401, Some(4)), "{b}");
    let bare = app_code(11, &op);
    let (st, _) = offline(&h, "off-1", &bare).await;
    assert_eq!(st, 401);
    let (st, b) = offline(&h, "off-1", "1234").await;
    assert_eq!(st, 422, "{b}");
    assert!(
        !b.to_string().contains("1234"),
        "the code is never echoed: {b}"
    );
    let (st, b) = offline(&h, "off-1", &code).await;
    assert_eq!((st, b["outcome"].as_str()), (200, Some("approved")), "{b}");
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.payment.approved");
    assert_eq!(
        (o["channel"].as_str(), o["device_id"].as_str()),
        (Some("offline"), Some("d-pixel"))
    );
    let (st, _) = offline(&h, "off-1", &code).await;
    assert_eq!(st, 409, "single use");
    let v = view(&h, "off-1").await;
    assert!(v.get("qr").is_none(), "no QR once decided");
    assert!(h
        .metrics()
        .await
        .contains("sca_offline_verifications_total"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_offline_codes_lock_and_a_plain_challenge_is_not_offline() {
    let h = Harness::start().await;
    h.publish(&offline_payment("off-2")).await;
    h.pushes(2, 10).await;
    let v = view(&h, "off-2").await;
    let good = app_code(11, v["qr"].as_str().unwrap());
    let wrong = if good == "00000000" {
        "00000001"
    } else {
        "00000000"
    };
    for left in [4, 3, 2, 1] {
        let (st, b) = offline(&h, "off-2", wrong).await;
        assert_eq!((st, b["attempts_left"].as_u64()), (401, Some(left)));
    }
    let (st, b) = offline(&h, "off-2", wrong).await;
    assert_eq!((st, b["outcome"].as_str()), (423, Some("otp_locked")));
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["outcome"].as_str(), o["channel"].as_str()),
        (Some("otp_locked"), Some("offline"))
    );
    let (st, _) = offline(&h, "off-2", &good).await;
    assert_eq!(st, 423);

    h.publish(&challenge("off-3")).await;
    view(&h, "off-3").await;
    let (st, b) = offline(&h, "off-3", "12345678").await;
    assert_eq!((st, b["error"].as_str()), (409, Some("not_offline")));
    // Without a device key the operation id could never be confirmed: refused.
    let mut c = challenge("off-4");
    c["offline"] = json!(true);
    h.publish(&c).await;
    let (_, reason) = h.dead_letter(10).await;
    assert!(reason.unwrap().contains("offline_key"));
    // Over sca.responses too.
    h.publish(&offline_payment("off-5")).await;
    let v = view(&h, "off-5").await;
    let code = app_code(11, v["qr"].as_str().unwrap());
    h.respond(&json!({"op": "offline", "challenge_id": "off-5", "code": code}))
        .await;
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["challenge_id"].as_str(), o["outcome"].as_str()),
        (Some("off-4"), Some("rejected"))
    );
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["challenge_id"].as_str(), o["channel"].as_str()),
        (Some("off-5"), Some("offline"))
    );
    h.cleanup().await;
}

#[test]
fn the_generator_refuses_a_bad_key_or_payload() {
    let run = |key: &str, qr: &str| {
        Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
            .args(["offline-code", "--qr", qr])
            .env("SCA_OFFLINE_KEY", key)
            .output()
            .unwrap()
    };
    let out = run("c2hvcnQ=", "12345678");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));
    let out = run(&key_b64(1), "{\"v\":2}");
    assert!(!out.status.success());
    let out = run(&key_b64(1), "12345678");
    assert!(out.status.success());
}
