//! Pending challenges for a device and the request context, through the daemon and the
//! real RabbitMQ: `GET /v1/devices/{device_id}/challenges` with the bearer token and
//! with the device's signature (`X-SCA-Timestamp`, `X-SCA-Signature`), and the account
//! label and context in the pushes' texts and data.

mod common;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use serde_json::{json, Value};

fn device_key(seed: u8) -> (SigningKey, String) {
    let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
    let spki = sk.verifying_key().to_public_key_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_bytes());
    (sk, b64)
}

fn sign(sk: &SigningKey, msg: &str) -> String {
    let sig: Signature = sk.sign(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// `GET` with the given headers and no bearer token.
async fn get(h: &Harness, path: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::get(format!("{}{path}", h.base()));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn signed(sk: &SigningKey, device: &str, ts: i64) -> Vec<(&'static str, String)> {
    vec![
        ("x-sca-timestamp", ts.to_string()),
        (
            "x-sca-signature",
            sign(sk, &format!("sca-v1|pending|{device}|{ts}")),
        ),
    ]
}

fn ids(v: &Value) -> Vec<String> {
    v["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["challenge_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lists_its_pending_challenges_with_a_token_or_its_signature() {
    let h = Harness::start().await;
    let (sk, pk) = device_key(21);
    let device = unique("d-phone");
    let mut a = challenge("pd-1");
    a["devices"][0]["device_id"] = json!(device);
    a["devices"][0]["public_key"] = json!(pk);
    a["number_match"] = json!(true);
    a["user_label"] = json!("Conto business");
    a["context"] = json!({"client": "Chrome su macOS", "location": "Milano", "ip": "203.0.113.7",
        "details": [{"label": "Browser", "value": "Chrome 131"}]});
    h.publish(&a).await;
    // pd-1 is taken (its two pushes sent) before pd-2 arrives: "oldest first" is by
    // arrival, and two consumer channels could otherwise take them in either order.
    h.pushes(2, 10).await;
    let mut b = challenge("pd-2");
    b["devices"][0]["device_id"] = json!(device);
    h.publish(&b).await;
    let pushes = h.pushes(4, 10).await;

    // The push shows the account label and where the request came from, and carries
    // both as data.
    let p = pushes
        .iter()
        .find(|m| &*m.challenge_id == "pd-1" && *m.device_id == *device)
        .unwrap();
    let sca_dispatch::push::PushContent::Challenge {
        title, body, extra, ..
    } = &p.content
    else {
        panic!("a challenge push");
    };
    assert!(title.starts_with("Conto business: "), "{title}");
    assert!(
        body.contains("Richiesta da Chrome su macOS vicino a Milano"),
        "{body}"
    );
    let extra = extra.as_deref().unwrap();
    assert_eq!(extra.user_label.as_deref(), Some("Conto business"));
    assert_eq!(
        extra.context.as_ref().unwrap().ip.as_deref(),
        Some("203.0.113.7")
    );

    let path = format!("/v1/devices/{device}/challenges");
    // Bearer: both, oldest first, with texts and number choices.
    let (st, v) = h.http("GET", &path, None, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), ["pd-1", "pd-2"]);
    let first = &v["challenges"][0];
    assert_eq!(first["number_choices"].as_array().unwrap().len(), 3);
    assert_eq!(first["title"], title.as_ref());
    assert_eq!(first["context"]["details"][0]["value"], "Chrome 131");
    // No token, no signature: 401.
    let (st, _) = get(&h, &path, &[]).await;
    assert_eq!(st, 401);
    // The device's signature: only the challenge binding its key.
    let now = sca_dispatch::engine::now_ms() / 1000;
    let (st, v) = get(&h, &path, &signed(&sk, &device, now)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), ["pd-1"]);
    // Another key sees nothing; a stale timestamp is refused.
    let (other, _) = device_key(22);
    let (st, v) = get(&h, &path, &signed(&other, &device, now)).await;
    assert_eq!((st, ids(&v).len()), (200, 0));
    let (st, _) = get(&h, &path, &signed(&sk, &device, now - 120)).await;
    assert_eq!(st, 401);
    let (st, _) = get(&h, &path, &signed(&sk, &device, now + 120)).await;
    assert_eq!(st, 401);
    // Decided challenges leave the list.
    let (st, _) = h.decide("pd-2", "d-pixel", "deny").await;
    assert_eq!(st, 200);
    let (_, v) = h.http("GET", &path, None, None).await;
    assert_eq!(ids(&v), ["pd-1"]);
    let (st, _) = h.http("POST", &path, None, None).await;
    assert_eq!(st, 405);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_over_its_bounds_is_rejected_naming_the_field() {
    let h = Harness::start().await;
    let mut c = challenge("ctx-1");
    c["context"] = json!({"location": "x".repeat(65)});
    h.publish(&c).await;
    let (_, reason) = h.dead_letter(10).await;
    assert!(reason.unwrap().contains("context.location"));
    let mut c = challenge("ctx-2");
    c["user_label"] = json!("y".repeat(41));
    h.publish(&c).await;
    let (_, reason) = h.dead_letter(10).await;
    assert!(reason.unwrap().contains("user_label"));
    h.cleanup().await;
}
