//! The operations contract on a live daemon: every route of `http::routes::ROUTES` is
//! served (unknown paths are 404), `GET /openapi.json` serves the committed document
//! without auth, and the outcome/event/reply bodies the daemon actually publishes carry
//! what docs/schemas/ requires. The bodies are also written to
//! `$CARGO_TARGET_TMPDIR/captured-bodies/` for the full JSON Schema validation of
//! `scripts/test-ops.sh`.

mod common;

use common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use sca_dispatch::http::routes::ROUTES;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const TOKEN: &str = "ops-test-token";

fn with_token(c: &mut sca_dispatch::Config) {
    c.http.api_tokens = TOKEN.into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_served_and_unknown_paths_are_404() {
    let h = Harness::start_with(with_token).await;
    h.publish(&challenge("ops-routes")).await;
    h.pushes(2, 10).await;
    for r in ROUTES {
        let path = r.with_params("ops-routes");
        let body = match r.path.rsplit('/').next() {
            Some("decision") => Some(json!({"device_id": "d-unknown", "decision": "approve"})),
            Some("otp") => Some(json!({"code": "000000"})),
            _ => None,
        };
        let (st, v) = h.http(r.method, &path, body, Some(TOKEN)).await;
        assert!(
            st != 404 && st != 405,
            "{} {} is not served: {st} {v}",
            r.method,
            r.path
        );
    }
    for (m, p) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/openapi.yaml"),
        ("GET", "/v1/challenges"),
        ("GET", "/v1/challenges/ops-routes/nope"),
        ("POST", "/v1/nope/ops-routes"),
    ] {
        let (st, v) = h.http(m, p, None, Some(TOKEN)).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (404, Some("not_found")),
            "{m} {p}"
        );
    }
    let (st, doc) = h.http("GET", "/openapi.json", None, None).await;
    assert_eq!(st, 200, "served without a token");
    let committed: Value = serde_json::from_str(sca_dispatch::http::openapi::DOCUMENT).unwrap();
    assert_eq!(doc, committed);
    h.cleanup().await;
}

/// What a schema in docs/schemas/ says every document must have: its `required` keys and
/// its top-level `const`/`enum` values.
fn check_required(schema: &str, body: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas")
        .join(format!("{schema}.schema.json"));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for k in s["required"].as_array().unwrap() {
        let k = k.as_str().unwrap();
        assert!(body.get(k).is_some(), "{schema}: {k} missing in {body}");
    }
    for (k, p) in s["properties"].as_object().unwrap() {
        let Some(v) = body.get(k) else { continue };
        if let Some(c) = p.get("const") {
            assert_eq!(v, c, "{schema}: {k}");
        }
        if let Some(e) = p.get("enum").and_then(|e| e.as_array()) {
            assert!(e.contains(v), "{schema}: {k} = {v} not in {e:?}");
        }
    }
}

struct Capture {
    dir: PathBuf,
    n: HashMap<String, usize>,
}

impl Capture {
    fn new() -> Capture {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("captured-bodies");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Capture {
            dir,
            n: HashMap::new(),
        }
    }

    fn keep(&mut self, schema: &str, body: &Value) {
        check_required(schema, body);
        let n = self.n.entry(schema.to_string()).or_default();
        *n += 1;
        std::fs::write(
            self.dir.join(format!("{schema}.{n}.json")),
            serde_json::to_vec_pretty(body).unwrap(),
        )
        .unwrap();
    }
}

/// Events from the tap until one named `name` (others are kept for later calls).
async fn next_event(tap: &mut lapin::Consumer, seen: &mut Vec<Value>, name: &str) -> Value {
    if let Some(i) = seen.iter().position(|e| e["event"] == name) {
        return seen.remove(i);
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = tokio::time::timeout_at(until, tap.next())
            .await
            .unwrap_or_else(|_| panic!("event {name} in time"))
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(Some(d.routing_key.as_str()), v["event"].as_str());
        if v["event"] == name {
            return v;
        }
        seen.push(v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_bodies_match_the_schemas() {
    let h = Harness::start_with(with_token).await;
    let mut cap = Capture::new();
    let mut events = tap(&h.conn, &h.cfg.amqp.events_exchange).await;
    let mut seen = Vec::new();

    // Push to two devices, one token gone; SMS on request, approved by its code.
    let c = challenge("ops-cap-1");
    cap.keep("challenge", &c);
    h.push
        .scripts
        .lock()
        .unwrap()
        .insert("fcm-ops-cap-1".into(), Script::Gone);
    h.publish(&c).await;
    cap.keep(
        "event-challenge.dispatched",
        &next_event(&mut events, &mut seen, "challenge.dispatched").await,
    );
    cap.keep(
        "event-device.token_invalid",
        &next_event(&mut events, &mut seen, "device.token_invalid").await,
    );
    let (st, _) = h
        .http("POST", "/v1/challenges/ops-cap-1/sms", None, Some(TOKEN))
        .await;
    assert_eq!(st, 202);
    cap.keep(
        "event-sms.sent",
        &next_event(&mut events, &mut seen, "sms.sent").await,
    );
    let code = h.sms.last_code().expect("an SMS code");
    let (st, _) = h
        .http(
            "POST",
            "/v1/challenges/ops-cap-1/otp",
            Some(json!({"code": code})),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 200);
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.login.approved");
    assert_eq!(o["channel"], "sms");
    cap.keep("outcome", &o);

    // A failing SMS gateway, then a cancel.
    h.sms.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c = challenge("ops-cap-2");
    c["kind"] = json!("payment");
    c["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    c["user_id"] = json!("user-ops-cap-2");
    cap.keep("challenge", &c);
    h.publish(&c).await;
    h.pushes(4, 10).await;
    let (st, _) = h
        .http("POST", "/v1/challenges/ops-cap-2/sms", None, Some(TOKEN))
        .await;
    assert_eq!(st, 202);
    let failed = next_event(&mut events, &mut seen, "sms.failed").await;
    assert!(failed["reason"].is_string());
    cap.keep("event-sms.failed", &failed);
    let (st, _) = h
        .http("DELETE", "/v1/challenges/ops-cap-2", None, Some(TOKEN))
        .await;
    assert_eq!(st, 200);
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.payment.cancelled");
    cap.keep("outcome", &o);

    // A message that breaks a bound: rejected.
    let mut bad = challenge("ops-cap-3");
    bad["ttl_seconds"] = json!(5);
    h.publish(&bad).await;
    let (_, o) = h.outcome(10).await;
    assert_eq!(o["outcome"], "rejected");
    cap.keep("outcome", &o);

    // A decision over sca.responses with reply_to and correlation_id.
    let c = challenge("ops-cap-4");
    h.publish(&c).await;
    h.pushes(6, 10).await;
    let reply_q =
        h.ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies =
        h.ch.basic_consume(
            reply_q.name().clone(),
            "ops-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let op = json!({"op": "decision", "challenge_id": "ops-cap-4", "device_id": "d-iphone", "decision": "deny"});
    cap.keep("responses-decision", &op);
    h.ch.basic_publish(
        "".into(),
        h.cfg.amqp.responses_queue.as_str().into(),
        BasicPublishOptions::default(),
        op.to_string().as_bytes(),
        BasicProperties::default()
            .with_reply_to(reply_q.name().clone())
            .with_correlation_id("corr-ops-4".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-ops-4")
    );
    let reply: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(
        (reply["status"].as_u64(), reply["outcome"].as_str()),
        (Some(200), Some("denied"))
    );
    cap.keep("responses-reply", &reply);
    let (rk, o) = h.outcome(10).await;
    assert_eq!(rk, "outcome.login.denied");
    cap.keep("outcome", &o);
    h.cleanup().await;
}
