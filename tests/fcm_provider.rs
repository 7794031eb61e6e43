//! FcmProvider against the FCM simulator over real sockets: delivery and the exact body,
//! token-gone and permanent answers, Retry-After, 5xx retries, the OAuth2 flow (one mint
//! for many sends, one renewal when a token expires or is refused under 1,000 concurrent
//! sends), withdrawals, and the bound on how long a send may take.

use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::{Kind, Platform};
use sca_dispatch::push::fcm::FcmProvider;
use sca_dispatch::push::{PushContent, PushMessage, PushProvider};
use sca_dispatch::sim::fcm::{Behaviour, FcmSim, FcmSimOptions};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Setup {
    sim: FcmSim,
    provider: Arc<FcmProvider>,
    _dir: tempfile::TempDir,
}

async fn setup_with(opts: FcmSimOptions, request_timeout_ms: u64) -> Setup {
    let sim = FcmSim::start(opts).await.expect("simulator starts");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    sim.write_service_account(&key).unwrap();
    let mut cfg = sim.fcm_config(&key);
    cfg.request_timeout_ms = request_timeout_ms;
    let provider = Arc::new(FcmProvider::new(&cfg).expect("provider builds"));
    Setup {
        sim,
        provider,
        _dir: dir,
    }
}

async fn setup() -> Setup {
    setup_with(FcmSimOptions::default(), 5_000).await
}

fn challenge(id: &str, token: &str, ttl_ms: i64) -> PushMessage {
    PushMessage {
        challenge_id: Arc::from(id),
        kind: Kind::Payment,
        device_id: "d-pixel".into(),
        token: token.into(),
        content: PushContent::Challenge {
            title: Arc::from("Approve payment"),
            body: Arc::from("Payment of €125.40 to Mario Rossi"),
            number_choices: Some([12, 47, 83]),
            extra: None,
        },
        expires_at_ms: now_ms() + ttl_ms,
        app: Default::default(),
    }
}

fn withdraw(id: &str, token: &str, expires_at_ms: i64) -> PushMessage {
    PushMessage {
        content: PushContent::Withdraw,
        expires_at_ms,
        app: Default::default(),
        ..challenge(id, token, 0)
    }
}

#[tokio::test]
async fn delivered_with_the_contract_body() {
    let s = setup().await;
    assert_eq!(s.provider.platform(), Platform::Fcm);
    assert_eq!(s.provider.project_id(), "sca-sim");
    let msg = challenge("01JD3F6Y8W0QZ5N4B7K2M9XH1C", "tok:pixel-1", 120_000);
    let expires = msg.expires_at_ms;
    assert_eq!(s.provider.send(msg).await, PushResult::Delivered);

    let got = s.sim.delivered();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.project_id, "sca-sim");
    assert_eq!(m.token, "tok:pixel-1");
    let android = &m.body["message"]["android"];
    assert_eq!(android["priority"], "HIGH");
    assert_eq!(android["collapse_key"], "01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    let ttl: u64 = android["ttl"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((110..=120).contains(&ttl), "ttl {ttl}");
    let data = m.data();
    assert_eq!(data["type"], "challenge");
    assert_eq!(data["challenge_id"], "01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    assert_eq!(data["kind"], "payment");
    assert_eq!(data["title"], "Approve payment");
    assert_eq!(data["body"], "Payment of €125.40 to Mario Rossi");
    assert_eq!(data["number_choices"], "12,47,83");
    let exp = chrono::DateTime::parse_from_rfc3339(data["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(exp.timestamp_millis(), expires);
    assert_eq!(data.as_object().unwrap().len(), 7);

    // The access token is cached: a second push mints nothing.
    assert_eq!(
        s.provider
            .send(challenge("c2", "tok:pixel-1", 60_000))
            .await,
        PushResult::Delivered
    );
    assert_eq!(s.sim.token_mints(), 1);
    assert_eq!(s.sim.delivered_count(), 2);
}

#[tokio::test]
async fn gone_tokens_and_permanent_refusals() {
    let s = setup().await;
    s.sim.script("tok:gone", Behaviour::Unregistered);
    s.sim.script("tok:invalid", Behaviour::InvalidToken);
    s.sim
        .script("tok:other-sender", Behaviour::SenderIdMismatch);
    assert_eq!(
        s.provider.send(challenge("c1", "tok:gone", 60_000)).await,
        PushResult::TokenGone
    );
    assert_eq!(
        s.provider
            .send(challenge("c2", "tok:invalid", 60_000))
            .await,
        PushResult::TokenGone
    );
    assert_eq!(
        s.provider
            .send(challenge("c3", "tok:other-sender", 60_000))
            .await,
        PushResult::Failed
    );
    // A token FCM's own syntax check refuses is gone too (the simulator checks it).
    assert_eq!(
        s.provider
            .send(challenge("c4", "not a token!", 60_000))
            .await,
        PushResult::TokenGone
    );
    // None of them was retried.
    assert_eq!(s.sim.send_requests(), 4);
    assert_eq!(s.sim.delivered_count(), 0);
}

#[tokio::test]
async fn quota_exceeded_honours_retry_after() {
    let s = setup().await;
    s.sim.script(
        "tok:busy",
        Behaviour::QuotaExceeded {
            retry_after_s: Some(1),
            times: 1,
        },
    );
    let started = Instant::now();
    assert_eq!(
        s.provider.send(challenge("c1", "tok:busy", 60_000)).await,
        PushResult::Delivered
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let all = s.sim.messages();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].status, 429);
    assert_eq!(all[1].status, 200);
    assert!(all[1].received_at - all[0].received_at >= Duration::from_millis(990));
}

#[tokio::test]
async fn unavailable_and_internal_are_retried() {
    let s = setup().await;
    s.sim
        .script("tok:flaky", Behaviour::Unavailable { times: 2 });
    s.sim.script("tok:oops", Behaviour::Internal { times: 1 });
    assert_eq!(
        s.provider.send(challenge("c1", "tok:flaky", 60_000)).await,
        PushResult::Delivered
    );
    assert_eq!(
        s.provider.send(challenge("c2", "tok:oops", 60_000)).await,
        PushResult::Delivered
    );
    let statuses: Vec<u16> = s.sim.messages().iter().map(|m| m.status).collect();
    assert_eq!(statuses, vec![503, 503, 200, 500, 200]);
}

#[tokio::test]
async fn retries_stop_when_the_challenge_expires() {
    let s = setup().await;
    s.sim
        .script("tok:down", Behaviour::Unavailable { times: u32::MAX });
    let started = Instant::now();
    assert_eq!(
        s.provider.send(challenge("c1", "tok:down", 1_500)).await,
        PushResult::Failed
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500) + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(s.sim.send_requests() >= 2);
    // An already expired challenge is not sent at all.
    let before = s.sim.send_requests();
    assert_eq!(
        s.provider.send(challenge("c2", "tok:x", -1)).await,
        PushResult::Failed
    );
    assert_eq!(s.sim.send_requests(), before);
}

#[tokio::test]
async fn a_stalled_fcm_is_given_up_after_expiry_plus_one_timeout() {
    let s = setup_with(FcmSimOptions::default(), 300).await;
    s.sim.script("tok:stall", Behaviour::Stall);
    let started = Instant::now();
    assert_eq!(
        s.provider.send(challenge("c1", "tok:stall", 1_000)).await,
        PushResult::Failed
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // expiry (1 s) + one request timeout (0.3 s) + scheduling slack
    assert!(took <= Duration::from_millis(2_300), "{took:?}");
}

#[tokio::test]
async fn withdrawals_are_data_messages() {
    let s = setup().await;
    let exp = now_ms() + 90_000;
    assert_eq!(
        s.provider.send(withdraw("c9", "tok:w", exp)).await,
        PushResult::Delivered
    );
    // Expiry is itself a reason to withdraw: a late withdrawal still goes out once.
    assert_eq!(
        s.provider
            .send(withdraw("c10", "tok:w", now_ms() - 5_000))
            .await,
        PushResult::Delivered
    );
    let got = s.sim.delivered();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].body,
        serde_json::json!({"message": {
            "token": "tok:w",
            "android": {"priority": "HIGH", "ttl": got[0].body["message"]["android"]["ttl"], "collapse_key": "c9"},
            "data": {"type": "withdraw", "challenge_id": "c9"}
        }})
    );
    assert_eq!(got[1].body["message"]["android"]["ttl"], "60s");
    assert_eq!(got[1].data()["type"], "withdraw");
    assert_eq!(got[1].data()["challenge_id"], "c10");
}

async fn burst(provider: &Arc<FcmProvider>, n: usize, tag: &str) -> Vec<PushResult> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let p = provider.clone();
        let msg = challenge(&format!("{tag}-{i}"), &format!("tok:{tag}-{i}"), 60_000);
        tasks.push(tokio::spawn(async move { p.send(msg).await }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_renewed_once_under_1000_concurrent_sends() {
    let s = setup_with(
        FcmSimOptions {
            // Long enough that the burst below ends well inside the new token's life
            // even on a loaded machine.
            token_lifetime: Duration::from_secs(20),
            ..FcmSimOptions::default()
        },
        10_000,
    )
    .await;
    assert_eq!(
        s.provider.send(challenge("warm", "tok:warm", 60_000)).await,
        PushResult::Delivered
    );
    assert_eq!(s.sim.token_mints(), 1);
    tokio::time::sleep(Duration::from_millis(20_100)).await;
    let results = burst(&s.provider, 1000, "exp").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    assert_eq!(s.sim.token_mints(), 2, "exactly one renewal");
    assert_eq!(s.sim.delivered_count(), 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_access_token_is_renewed_once_under_1000_concurrent_sends() {
    let s = setup().await;
    assert_eq!(
        s.provider.send(challenge("warm", "tok:warm", 60_000)).await,
        PushResult::Delivered
    );
    // The provider still thinks its token is good for an hour; FCM says 401 to all.
    s.sim.revoke_access_tokens();
    let results = burst(&s.provider, 1000, "rev").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    assert_eq!(s.sim.token_mints(), 2, "exactly one renewal");
    assert_eq!(s.sim.delivered_count(), 1001);
}

#[tokio::test]
async fn a_401_renews_once_and_retries() {
    let s = setup().await;
    s.sim
        .script("tok:once", Behaviour::Unauthenticated { times: 1 });
    assert_eq!(
        s.provider.send(challenge("c1", "tok:once", 60_000)).await,
        PushResult::Delivered
    );
    assert_eq!(s.sim.token_mints(), 2);
    let statuses: Vec<u16> = s.sim.messages().iter().map(|m| m.status).collect();
    assert_eq!(statuses, vec![401, 200]);
    assert_eq!(s.sim.send_requests(), 2);

    // A fresh token refused again is not renewed a second time for the same push.
    s.sim
        .script("tok:never", Behaviour::Unauthenticated { times: 100 });
    assert_eq!(
        s.provider.send(challenge("c2", "tok:never", 60_000)).await,
        PushResult::Failed
    );
    assert_eq!(s.sim.token_mints(), 3);
    assert_eq!(s.sim.send_requests(), 4);
}

#[tokio::test]
async fn a_key_the_token_endpoint_refuses_fails_the_push_without_hammering_it() {
    // The key file of one simulator, its token_uri pointed at another: the signature
    // does not verify there.
    let a = FcmSim::start(FcmSimOptions::default()).await.unwrap();
    let b = FcmSim::start(FcmSimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    let mut v: serde_json::Value = serde_json::from_str(&a.service_account_json()).unwrap();
    v["token_uri"] = b.token_uri().into();
    std::fs::write(&key, v.to_string()).unwrap();
    let provider = FcmProvider::new(&b.fcm_config(&key)).unwrap();
    assert_eq!(
        provider.send(challenge("c1", "tok:x", 1_500)).await,
        PushResult::Failed
    );
    assert_eq!(b.token_mints(), 0);
    assert_eq!(b.send_requests(), 0);
}

#[tokio::test]
async fn setup_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    let mut cfg = sca_dispatch::config::FcmConfig {
        service_account_file: key.display().to_string(),
        ..Default::default()
    };
    let err = FcmProvider::new(&cfg).err().unwrap().to_string();
    assert!(err.contains("sa.json"), "{err}");

    std::fs::write(
        &key,
        r#"{"type":"service_account","project_id":"p","private_key":"k","private_key_id":"1","token_uri":"https://oauth2.googleapis.com/token"}"#,
    )
    .unwrap();
    let err = FcmProvider::new(&cfg).err().unwrap().to_string();
    assert!(err.contains("`client_email`"), "{err}");

    cfg.service_account_file.clear();
    let err = FcmProvider::new(&cfg).err().unwrap().to_string();
    assert!(err.contains("fcm.service_account_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_with_the_extra_ca_it_speaks_http2() {
    let sim = FcmSim::start(FcmSimOptions {
        tls: true,
        ..FcmSimOptions::default()
    })
    .await
    .unwrap();
    assert!(sim.endpoint().starts_with("https://127.0.0.1:"));
    assert!(sim.token_uri().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = sim.write_config_files(dir.path()).unwrap();
    assert!(!cfg.ca_file.is_empty());
    let provider = Arc::new(FcmProvider::new(&cfg).unwrap());
    let results = burst(&provider, 200, "h2").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    let got = sim.delivered();
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|m| m.version == http::Version::HTTP_2));
    assert_eq!(sim.token_mints(), 1);

    // Without the simulator's CA the certificate is not trusted: nothing gets through.
    let mut untrusting = cfg.clone();
    untrusting.ca_file.clear();
    let p = FcmProvider::new(&untrusting).unwrap();
    assert_eq!(
        p.send(challenge("c1", "tok:x", 1_000)).await,
        PushResult::Failed
    );
    assert_eq!(sim.delivered_count(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_expiry_is_renewed_once_while_sends_go_on() {
    // Lifetime 20 s: renewal starts when less than 2 s is left; the bursts below end
    // well inside the renewed token's life even on a loaded machine.
    let s = setup_with(
        FcmSimOptions {
            token_lifetime: Duration::from_secs(20),
            ..FcmSimOptions::default()
        },
        10_000,
    )
    .await;
    assert_eq!(
        s.provider.send(challenge("warm", "tok:warm", 60_000)).await,
        PushResult::Delivered
    );
    tokio::time::sleep(Duration::from_millis(18_500)).await;
    let results = burst(&s.provider, 300, "margin").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    // Whether the burst found the token in its margin (background renewal) or already
    // expired (renewal awaited), it was renewed exactly once, and sends after it mint
    // nothing more.
    for _ in 0..100 {
        if s.sim.token_mints() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.sim.token_mints(), 2);
    let results = burst(&s.provider, 300, "after").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    assert_eq!(s.sim.token_mints(), 2);
}
