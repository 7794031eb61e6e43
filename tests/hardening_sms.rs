//! SMS pumping through the daemon: one phone number behind many user ids, and a burst
//! over the per-instance global cap. Each refusal answers 429 with its own limit, is
//! published as `sms.failed` with that reason and counted in `sca_rate_limited_total`.

mod common;

use common::*;
use serde_json::json;

const TOKEN: &str = "edge-sms-token";

fn user_challenge(id: &str, user: &str, phone: &str) -> serde_json::Value {
    let mut c = challenge(id);
    c["user_id"] = json!(user);
    c["sms"] = json!({"phone": phone, "fallback_after_seconds": 600});
    c
}

/// Asks for an SMS on each challenge in turn; the statuses and 429 limits.
async fn ask_sms(h: &Harness, ids: &[&str]) -> Vec<(u16, Option<String>)> {
    let mut out = Vec::new();
    for id in ids {
        let (st, b) = h
            .http(
                "POST",
                &format!("/v1/challenges/{id}/sms"),
                None,
                Some(TOKEN),
            )
            .await;
        out.push((st, b["limit"].as_str().map(String::from)));
    }
    out
}

async fn refused_event(h: &Harness) -> serde_json::Value {
    loop {
        let ev = h.event("sms.failed", 10).await;
        if ev["reason"] != "sms_not_configured" {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_number_behind_many_users_is_refused_as_sms_pumping() {
    let h = Harness::start_with(|c| {
        c.http.api_tokens = TOKEN.into();
        c.sms.max_per_phone_per_window = 2;
    })
    .await;
    let ids = ["pump-a", "pump-b", "pump-c"];
    for (i, id) in ids.iter().enumerate() {
        h.publish(&user_challenge(
            id,
            &format!("pump-user-{i}"),
            "+393471112223",
        ))
        .await;
    }
    h.pushes(6, 10).await;
    let got = ask_sms(&h, &ids).await;
    assert_eq!(
        got,
        vec![
            (202, None),
            (202, None),
            (429, Some("sms_phone_window".to_string()))
        ],
        "each user is under their own limit; the number is not"
    );
    let ev = refused_event(&h).await;
    assert_eq!(ev["challenge_id"], "pump-c");
    assert_eq!(ev["reason"], "sms_phone_window");
    assert_eq!(ev["phone"], "+39347****223", "the number stays masked");
    assert!(h
        .metrics()
        .await
        .contains("sca_rate_limited_total{limit=\"sms_phone_window\"}"));
    assert_eq!(
        h.sms.sent.lock().unwrap().len(),
        2,
        "the third was never sent"
    );
    // Another number is not held by this one's count.
    h.publish(&user_challenge("pump-d", "pump-user-9", "+355691112223"))
        .await;
    h.pushes(8, 10).await;
    assert_eq!(ask_sms(&h, &["pump-d"]).await, vec![(202, None)]);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_global_cap_is_refused() {
    let h = Harness::start_with(|c| {
        c.http.api_tokens = TOKEN.into();
        c.sms.max_per_minute_global = 2;
    })
    .await;
    let ids = ["burst-a", "burst-b", "burst-c"];
    for (i, id) in ids.iter().enumerate() {
        h.publish(&user_challenge(
            id,
            &format!("burst-user-{i}"),
            &format!("+39347000000{i}"),
        ))
        .await;
    }
    h.pushes(6, 10).await;
    let got = ask_sms(&h, &ids).await;
    assert_eq!(
        got,
        vec![
            (202, None),
            (202, None),
            (429, Some("sms_global_rate".to_string()))
        ]
    );
    let ev = refused_event(&h).await;
    assert_eq!(ev["challenge_id"], "burst-c");
    assert_eq!(ev["reason"], "sms_global_rate");
    assert!(h
        .metrics()
        .await
        .contains("sca_rate_limited_total{limit=\"sms_global_rate\"}"));
    let (_, v) = h
        .http("GET", "/v1/challenges/burst-c", None, Some(TOKEN))
        .await;
    assert_eq!(v["state"], "pending", "a refusal never drops the challenge");
    h.cleanup().await;
}
