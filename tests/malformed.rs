//! Every malformed challenge is dead-lettered with its reason (and answered with a
//! `rejected` outcome when its id can be read); the daemon keeps serving.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_body_is_dead_lettered_with_its_reason() {
    let h = Harness::start().await;
    let mut cases: Vec<(&str, Vec<u8>, &str)> =
        vec![("not-json", b"this is not json".to_vec(), "invalid_json")];
    let mut v2 = challenge("bad-v2");
    v2["v"] = json!(2);
    cases.push(("bad-v2", v2.to_string().into_bytes(), "unsupported_version"));
    let mut big = challenge("bad-big");
    big["padding"] = json!("x".repeat(17 * 1024));
    cases.push(("bad-big", big.to_string().into_bytes(), "body_too_large"));
    let mut phone = challenge("bad-phone");
    phone["sms"]["phone"] = json!("0039 340 123");
    cases.push(("bad-phone", phone.to_string().into_bytes(), "invalid_phone"));
    let mut many = challenge("bad-devices");
    many["devices"] = json!((0..11)
        .map(|i| json!({"device_id": format!("d{i}"), "platform": "fcm", "token": format!("t{i}")}))
        .collect::<Vec<_>>());
    cases.push((
        "bad-devices",
        many.to_string().into_bytes(),
        "too_many_devices",
    ));
    let mut ttl = challenge("bad-ttl");
    ttl["ttl_seconds"] = json!(5);
    cases.push(("bad-ttl", ttl.to_string().into_bytes(), "ttl_seconds"));
    let mut pay = challenge("bad-pay");
    pay["kind"] = json!("payment");
    cases.push((
        "bad-pay",
        pay.to_string().into_bytes(),
        "transaction is required",
    ));

    for (id, body, reason) in &cases {
        h.publish_raw(body, Default::default()).await;
        let (dead_body, got) = h.dead_letter(10).await;
        let got = got.expect("x-sca-reason header");
        assert!(
            got.contains(reason),
            "{id}: reason {got:?} should mention {reason}"
        );
        assert_eq!(&dead_body, body, "{id}: the original body is kept");
        if *id != "not-json" && *id != "bad-big" {
            let (rk, o) = h.outcome(5).await;
            assert_eq!(o["outcome"], "rejected", "{id}");
            assert_eq!(o["challenge_id"], *id);
            assert!(rk.ends_with(".rejected"));
            assert!(o["reason"].as_str().unwrap().contains(reason));
        }
    }
    // Still serving.
    h.publish(&challenge("good-after-bad")).await;
    h.pushes(2, 10).await;
    let (st, _) = h.decide("good-after-bad", "d-pixel", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(o["challenge_id"], "good-after-bad");
    h.cleanup().await;
}
