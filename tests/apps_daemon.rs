//! Several apps in one daemon: a challenge for the default app and one for a named app
//! (`[apps.business]`) go through the real APNs and FCM transports, each to its own APNs
//! topic over the one connection pool of the shared key, and each to its own Firebase
//! project with its own service account; a challenge for an app that is not configured
//! is dead-lettered `unknown_app`.

mod common;

use common::*;
use sca_dispatch::config::AppConfig;
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions};
use sca_dispatch::sim::fcm::{FcmSim, FcmSimOptions};
use sca_dispatch::Config;
use serde_json::json;
use std::time::Duration;

const BUSINESS_TOPIC: &str = "com.example.business";
const BUSINESS_PROJECT: &str = "business-proj";

struct Sims {
    apns: ApnsSim,
    fcm: FcmSim,
    _dir: tempfile::TempDir,
    /// The daemon's push configuration for both apps.
    cfg: Config,
}

async fn sims() -> Sims {
    let apns = ApnsSim::start(ApnsSimOptions {
        extra_topics: vec![BUSINESS_TOPIC.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let fcm = FcmSim::start(FcmSimOptions {
        extra_projects: vec![BUSINESS_PROJECT.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        apns: apns.config(),
        fcm: fcm.write_config_files(dir.path()).unwrap(),
        ..Default::default()
    };
    let business_sa = dir.path().join("business-sa.json");
    fcm.write_service_account_for(BUSINESS_PROJECT, &business_sa)
        .unwrap();
    cfg.apps.insert(
        "business".into(),
        AppConfig {
            apns_topic: BUSINESS_TOPIC.into(),
            fcm_service_account_file: business_sa.display().to_string(),
            ..Default::default()
        },
    );
    Sims {
        apns,
        fcm,
        _dir: dir,
        cfg,
    }
}

/// A daemon whose providers are built from the configuration, as `run` builds them.
async fn start(s: &Sims) -> Harness {
    let apply = |c: &mut Config| {
        c.apns = s.cfg.apns.clone();
        c.fcm = s.cfg.fcm.clone();
        c.apps = s.cfg.apps.clone();
    };
    let mut cfg = test_config("unused");
    apply(&mut cfg);
    let settings = cfg.validate().expect("valid apps configuration");
    let providers = sca_dispatch::daemon::providers_from_config(&settings).unwrap();
    Harness::start_custom(apply, Some(providers)).await
}

fn two_devices(id: &str, app: Option<&str>, n: u8) -> serde_json::Value {
    let mut c = challenge(id);
    c["devices"] = json!([
        {"device_id": "iphone", "platform": "apns", "token": apns_token(n)},
        {"device_id": "pixel", "platform": "fcm", "token": format!("fcm-{id}")}
    ]);
    if let Some(a) = app {
        c["app"] = json!(a);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_reaches_its_own_topic_and_project() {
    let s = sims().await;
    let h = start(&s).await;
    let (st, ready) = h.http("GET", "/readyz", None, None).await;
    assert_eq!(st, 200, "{ready}");
    let apps = &ready["providers"]["apps"];
    assert_eq!(apps["default"]["apns"], "configured");
    assert_eq!(apps["business"]["apns"], "configured");
    assert_eq!(apps["business"]["fcm"], "configured");
    assert_eq!(apps["business"]["hms"], "not_configured");

    h.publish(&two_devices("apps-retail", None, 1)).await;
    h.publish(&two_devices("apps-business", Some("business"), 2))
        .await;
    let pushed = s
        .apns
        .wait_for_pushes(2, Duration::from_secs(10))
        .await
        .expect("two APNs pushes");
    assert!(s.fcm.wait_for_delivered(2, Duration::from_secs(10)).await);

    let topic_of = |token: String| {
        let p = pushed
            .iter()
            .find(|p| p.token == token)
            .unwrap_or_else(|| panic!("no push to {token}: {pushed:?}"));
        assert_eq!(p.status, 200, "{p:?}");
        p.header("apns-topic").to_string()
    };
    assert_eq!(topic_of(apns_token(1)), s.apns.topic());
    assert_eq!(topic_of(apns_token(2)), BUSINESS_TOPIC);
    // One key: one pool of connections for both topics (the default size is 2).
    assert!(
        s.apns.connections() <= 2,
        "{} connections",
        s.apns.connections()
    );

    let delivered = s.fcm.delivered();
    let project_of = |token: &str| {
        delivered
            .iter()
            .find(|m| m.token == token)
            .unwrap_or_else(|| panic!("no FCM message to {token}"))
            .project_id
            .clone()
    };
    assert_eq!(project_of("fcm-apps-retail"), s.fcm.project_id());
    assert_eq!(project_of("fcm-apps-business"), BUSINESS_PROJECT);
    // Each project's messages went with its own service account's token.
    assert_eq!(s.fcm.token_mints(), 2);

    let (st, _) = h.decide("apps-business", "pixel", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(
        (o["challenge_id"].as_str(), o["outcome"].as_str()),
        (Some("apps-business"), Some("approved"))
    );
    // The withdrawal from the business iPhone carries the business topic too.
    let all = s
        .apns
        .wait_for_pushes(3, Duration::from_secs(10))
        .await
        .expect("the withdrawal");
    let w = all
        .iter()
        .find(|p| p.token == apns_token(2) && p.payload["type"] == "withdraw")
        .expect("a withdrawal to the business iPhone");
    assert_eq!(w.header("apns-topic"), BUSINESS_TOPIC);

    let m = h.metrics().await;
    for line in [
        "sca_push_requests_total{provider=\"apns\",app=\"default\",result=\"delivered\"}",
        "sca_push_requests_total{provider=\"apns\",app=\"business\",result=\"delivered\"}",
        "sca_push_requests_total{provider=\"fcm\",app=\"business\",result=\"delivered\"}",
    ] {
        assert!(m.contains(line), "{line} missing");
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_app_is_dead_lettered() {
    let s = sims().await;
    let h = start(&s).await;
    let body = two_devices("apps-unknown", Some("wholesale"), 3);
    h.publish(&body).await;
    let (dead, reason) = h.dead_letter(10).await;
    let reason = reason.expect("x-sca-reason");
    assert!(reason.starts_with("unknown_app"), "{reason}");
    assert!(reason.contains("wholesale"), "{reason}");
    assert_eq!(dead, body.to_string().into_bytes());
    let (rk, o) = h.outcome(5).await;
    assert_eq!(rk, "outcome.login.rejected");
    assert_eq!(o["challenge_id"], "apps-unknown");
    assert!(o["reason"].as_str().unwrap().starts_with("unknown_app"));
    // Nothing was pushed for it.
    assert_eq!(s.apns.pushes().len(), 0);
    assert_eq!(s.fcm.messages().len(), 0);
    assert!(h
        .metrics()
        .await
        .contains("sca_challenges_rejected_total{reason=\"unknown_app\"}"));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_naming_one_service_account_share_its_transport() {
    let mut s = sims().await;
    let business = s.cfg.apps["business"].clone();
    s.cfg.apps.insert(
        "business_eu".into(),
        AppConfig {
            apns_topic: String::new(),
            ..business
        },
    );
    let mut cfg = test_config("unused");
    cfg.apns = s.cfg.apns.clone();
    cfg.fcm = s.cfg.fcm.clone();
    cfg.apps = s.cfg.apps.clone();
    let settings = cfg.validate().unwrap();
    let p = sca_dispatch::daemon::providers_from_config(&settings).unwrap();
    let fcm = |app: &str| {
        let name = sca_dispatch::challenge::model::AppName::parse(app).unwrap();
        p.apps[&name].fcm.clone().unwrap()
    };
    // One service account: one token cache, whichever app sends.
    assert!(std::sync::Arc::ptr_eq(
        &fcm("business"),
        &fcm("business_eu")
    ));
    assert!(!std::sync::Arc::ptr_eq(
        &fcm("business"),
        p.fcm.as_ref().unwrap()
    ));
    let name = sca_dispatch::challenge::model::AppName::parse("business_eu").unwrap();
    assert!(p.apps[&name].apns.is_none(), "no apns_topic: no APNs");
}
