//! HmsProvider against the Push Kit simulator over real sockets: delivery and the exact
//! body, token gone, permanent refusals, retries after `Retry-After` and on system
//! errors, the OAuth 2.0 client-credentials flow (one token for many sends, one renewal
//! when a token is refused, even under 1,000 concurrent sends), withdrawals, HTTPS with an
//! extra CA, and setup errors.

use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::{Kind, Platform};
use sca_dispatch::push::delivery::{Attempt, Bounds, Transport};
use sca_dispatch::push::hms::HmsProvider;
use sca_dispatch::push::{Classification, PushContent, PushMessage, PushProvider};
use sca_dispatch::sim::hms::{Behaviour, HmsSim, HmsSimOptions};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Setup {
    sim: HmsSim,
    provider: Arc<HmsProvider>,
    _dir: tempfile::TempDir,
}

async fn setup_with(opts: HmsSimOptions) -> Setup {
    let sim = HmsSim::start(opts).await.expect("simulator starts");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = sim.write_config_files(dir.path()).unwrap();
    cfg.request_timeout_ms = 5_000;
    let provider = Arc::new(HmsProvider::new(&cfg).expect("provider builds"));
    Setup {
        sim,
        provider,
        _dir: dir,
    }
}

async fn setup() -> Setup {
    setup_with(HmsSimOptions::default()).await
}

fn challenge(id: &str, token: &str, ttl_ms: i64) -> PushMessage {
    PushMessage {
        challenge_id: Arc::from(id),
        kind: Kind::Payment,
        device_id: "d-mate".into(),
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
    assert_eq!(s.provider.platform(), Platform::Hms);
    assert_eq!(s.provider.app_id(), "100000001");
    let msg = challenge("01JD3F6Y8W0QZ5N4B7K2M9XH1C", "hms-mate-1", 120_000);
    let expires = msg.expires_at_ms;
    assert_eq!(s.provider.send(msg).await, PushResult::Delivered);

    let got = s.sim.delivered();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(
        (m.app_id.as_str(), m.code.as_str()),
        ("100000001", "80000000")
    );
    assert_eq!(m.tokens, vec!["hms-mate-1"]);
    let android = m.android();
    assert_eq!(android["urgency"], "HIGH");
    assert_eq!(android["bi_tag"], "01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    let ttl: u64 = android["ttl"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((110..=120).contains(&ttl), "ttl {ttl}");
    assert!(m.body["message"].get("notification").is_none());
    let d = &m.data;
    assert_eq!(d["type"], "challenge");
    assert_eq!(d["challenge_id"], "01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    assert_eq!(d["kind"], "payment");
    assert_eq!(d["title"], "Approve payment");
    assert_eq!(d["body"], "Payment of €125.40 to Mario Rossi");
    assert_eq!(d["number_choices"], "12,47,83");
    let exp = chrono::DateTime::parse_from_rfc3339(d["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(exp.timestamp_millis(), expires);
    assert_eq!(d.as_object().unwrap().len(), 7);

    // The access token is cached: a second push asks for none.
    assert_eq!(
        s.provider.send(challenge("c2", "hms-mate-1", 60_000)).await,
        PushResult::Delivered
    );
    assert_eq!(s.sim.token_mints(), 1);
    assert_eq!(s.sim.delivered_count(), 2);
}

#[tokio::test]
async fn an_invalid_token_is_gone_and_not_retried() {
    let s = setup().await;
    s.sim.script("hms-gone", Behaviour::Invalid);
    assert_eq!(
        s.provider.send(challenge("c1", "hms-gone", 60_000)).await,
        PushResult::TokenGone
    );
    let m = s.sim.messages();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].status, m[0].code.as_str()), (400, "80300007"));
    assert_eq!(s.sim.delivered_count(), 0);
}

#[tokio::test]
async fn permanent_refusals_are_not_retried() {
    let s = setup().await;
    s.sim.script("hms-no-right", Behaviour::NoPermission);
    assert_eq!(
        s.provider
            .send(challenge("c1", "hms-no-right", 60_000))
            .await,
        PushResult::Failed
    );
    assert_eq!(s.sim.send_requests(), 1);
    assert_eq!(s.sim.messages()[0].code, "80300002");
}

#[tokio::test]
async fn flow_control_honours_retry_after() {
    let s = setup().await;
    s.sim.script(
        "hms-busy",
        Behaviour::FlowControl {
            retry_after_s: Some(1),
            times: 1,
        },
    );
    assert_eq!(
        s.provider.send(challenge("c1", "hms-busy", 60_000)).await,
        PushResult::Delivered
    );
    let all = s.sim.messages();
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].status, all[1].status), (503, 200));
    assert!(all[1].received_at - all[0].received_at >= Duration::from_millis(990));
}

#[tokio::test]
async fn system_errors_and_429_are_retried() {
    let s = setup().await;
    s.sim
        .script("hms-oops", Behaviour::SystemError { times: 2 });
    s.sim.script(
        "hms-429",
        Behaviour::TooManyRequests {
            retry_after_s: None,
            times: 1,
        },
    );
    assert_eq!(
        s.provider.send(challenge("c1", "hms-oops", 60_000)).await,
        PushResult::Delivered
    );
    assert_eq!(
        s.provider.send(challenge("c2", "hms-429", 60_000)).await,
        PushResult::Delivered
    );
    let codes: Vec<(u16, String)> = s
        .sim
        .messages()
        .iter()
        .map(|m| (m.status, m.code.clone()))
        .collect();
    let want: Vec<(u16, String)> = [
        (500, "81000001"),
        (500, "81000001"),
        (200, "80000000"),
        (429, ""),
        (200, "80000000"),
    ]
    .iter()
    .map(|(s, c)| (*s, c.to_string()))
    .collect();
    assert_eq!(codes, want);
}

#[tokio::test]
async fn retries_stop_when_the_challenge_expires() {
    let s = setup().await;
    s.sim
        .script("hms-down", Behaviour::SystemError { times: u32::MAX });
    assert_eq!(
        s.provider.send(challenge("c1", "hms-down", 1_500)).await,
        PushResult::Failed
    );
    assert!(s.sim.send_requests() >= 2);
    // An already expired challenge is not sent at all.
    let before = s.sim.send_requests();
    assert_eq!(
        s.provider.send(challenge("c2", "hms-x", -1)).await,
        PushResult::Failed
    );
    assert_eq!(s.sim.send_requests(), before);
}

#[tokio::test]
async fn withdrawals_are_data_messages() {
    let s = setup().await;
    assert_eq!(
        s.provider
            .send(withdraw("c9", "hms-w", now_ms() + 90_000))
            .await,
        PushResult::Delivered
    );
    // Expiry is itself a reason to withdraw: a late withdrawal still goes out once.
    assert_eq!(
        s.provider
            .send(withdraw("c10", "hms-w", now_ms() - 5_000))
            .await,
        PushResult::Delivered
    );
    let got = s.sim.delivered();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].data,
        serde_json::json!({"type": "withdraw", "challenge_id": "c9"})
    );
    assert_eq!(got[0].android()["urgency"], "HIGH");
    assert_eq!(got[0].android()["bi_tag"], "c9");
    assert_eq!(got[1].android()["ttl"], "60s");
    assert_eq!(got[1].data["challenge_id"], "c10");
}

/// One attempt's bounds, as the delivery loop gives them: 10 s, within a minute.
fn bounds() -> Bounds {
    let horizon = tokio::time::Instant::now() + Duration::from_secs(60);
    Bounds::starting_now(Duration::from_secs(10), horizon)
}

#[tokio::test]
async fn one_attempt_answers_a_class_and_renews_a_refused_token() {
    let s = setup().await;
    s.sim
        .script("hms-auth", Behaviour::AuthExpired { times: 1 });
    let m = challenge("c1", "hms-auth", 60_000);
    let mut push = s.provider.prepare(&m).unwrap();
    let a = s.provider.attempt(&m, &mut push, bounds()).await;
    assert!(matches!(a, Attempt::AuthExpired), "{a:?}");
    s.provider.renew(&mut push).await.unwrap();
    // The refused token was renewed, once.
    assert_eq!(s.sim.token_mints(), 2);
    let a = s.provider.attempt(&m, &mut push, bounds()).await;
    assert!(
        matches!(
            a,
            Attempt::Answered {
                class: Classification::Delivered,
                ..
            }
        ),
        "{a:?}"
    );
    s.sim.script("hms-gone", Behaviour::Invalid);
    let m = challenge("c2", "hms-gone", 60_000);
    let mut push = s.provider.prepare(&m).unwrap();
    let a = s.provider.attempt(&m, &mut push, bounds()).await;
    assert!(
        matches!(
            a,
            Attempt::Answered {
                class: Classification::TokenGone,
                ..
            }
        ),
        "{a:?}"
    );
    assert_eq!(s.sim.token_mints(), 2);
}

#[tokio::test]
async fn a_refused_access_token_is_renewed_once_per_push() {
    let s = setup().await;
    s.sim
        .script("hms-once", Behaviour::AuthExpired { times: 1 });
    assert_eq!(
        s.provider.send(challenge("c1", "hms-once", 60_000)).await,
        PushResult::Delivered
    );
    assert_eq!(s.sim.token_mints(), 2);
    let statuses: Vec<u16> = s.sim.messages().iter().map(|m| m.status).collect();
    assert_eq!(statuses, vec![401, 200]);

    // A fresh token refused again is not renewed a second time for the same push.
    s.sim
        .script("hms-never", Behaviour::AuthExpired { times: 100 });
    assert_eq!(
        s.provider.send(challenge("c2", "hms-never", 60_000)).await,
        PushResult::Failed
    );
    assert_eq!(s.sim.send_requests(), 4);
}

async fn burst(provider: &Arc<HmsProvider>, n: usize, tag: &str) -> Vec<PushResult> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let p = provider.clone();
        let msg = challenge(&format!("{tag}-{i}"), &format!("hms-{tag}-{i}"), 60_000);
        tasks.push(tokio::spawn(async move { p.send(msg).await }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_access_token_is_renewed_once_under_1000_concurrent_sends() {
    let s = setup().await;
    assert_eq!(
        s.provider.send(challenge("warm", "hms-warm", 60_000)).await,
        PushResult::Delivered
    );
    // The provider still thinks its token is good for an hour; Push Kit says 80200003.
    s.sim.revoke_access_tokens();
    let results = burst(&s.provider, 1000, "rev").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    assert_eq!(s.sim.token_mints(), 2, "exactly one renewal");
    assert_eq!(s.sim.delivered_count(), 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_renewed_once_under_concurrent_sends() {
    let s = setup_with(HmsSimOptions {
        // Long enough that the burst ends well inside the new token's life even on a
        // loaded machine.
        token_lifetime: Duration::from_secs(20),
        ..HmsSimOptions::default()
    })
    .await;
    assert_eq!(
        s.provider.send(challenge("warm", "hms-warm", 60_000)).await,
        PushResult::Delivered
    );
    tokio::time::sleep(Duration::from_millis(20_100)).await;
    let results = burst(&s.provider, 500, "exp").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    assert_eq!(s.sim.token_mints(), 2, "exactly one renewal");
}

#[tokio::test]
async fn a_wrong_secret_fails_the_push_without_hammering_the_token_endpoint() {
    let sim = HmsSim::start(HmsSimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "not-the-secret\n").unwrap();
    let provider = HmsProvider::new(&sim.hms_config(&secret)).unwrap();
    assert_eq!(
        provider.send(challenge("c1", "hms-x", 1_500)).await,
        PushResult::Failed
    );
    assert_eq!(sim.token_mints(), 0);
    assert_eq!(sim.send_requests(), 0);
    // Retries within the challenge's 1.5 s each wanted a token, but a refusal is held
    // for a second: the token endpoint was asked at most twice (once more for slack).
    let asked = sim.token_requests();
    assert!((1..=3).contains(&asked), "{asked} token requests");
}

#[tokio::test]
async fn setup_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let mut cfg = sca_dispatch::config::HmsConfig {
        app_id: "100000001".into(),
        app_secret_file: secret.display().to_string(),
        ..Default::default()
    };
    let err = HmsProvider::new(&cfg).err().unwrap().to_string();
    assert!(
        err.contains("hms.app_secret_file") && err.contains("secret"),
        "{err}"
    );
    std::fs::write(&secret, "\n").unwrap();
    let err = HmsProvider::new(&cfg).err().unwrap().to_string();
    assert!(err.contains("is empty"), "{err}");
    std::fs::write(&secret, "s3cr3t").unwrap();
    cfg.app_id = "a/b".into();
    let err = HmsProvider::new(&cfg).err().unwrap().to_string();
    assert!(err.contains("hms.app_id"), "{err}");
    cfg.app_id = "1".into();
    cfg.endpoint = "ftp://x".into();
    let err = HmsProvider::new(&cfg).err().unwrap().to_string();
    assert!(
        err.contains("hms.endpoint") && !err.contains("s3cr3t"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_with_the_extra_ca_it_speaks_http2() {
    let sim = HmsSim::start(HmsSimOptions {
        tls: true,
        ..HmsSimOptions::default()
    })
    .await
    .unwrap();
    assert!(sim.endpoint().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = sim.write_config_files(dir.path()).unwrap();
    assert!(!cfg.ca_file.is_empty());
    let provider = Arc::new(HmsProvider::new(&cfg).unwrap());
    let results = burst(&provider, 200, "h2").await;
    assert!(results.iter().all(|r| *r == PushResult::Delivered));
    let got = sim.delivered();
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|m| m.version == http::Version::HTTP_2));
    assert_eq!(sim.token_mints(), 1);

    // Without the simulator's CA the certificate is not trusted: nothing gets through.
    let mut untrusting = cfg.clone();
    untrusting.ca_file.clear();
    let p = HmsProvider::new(&untrusting).unwrap();
    assert_eq!(
        p.send(challenge("c1", "hms-x", 1_000)).await,
        PushResult::Failed
    );
    assert_eq!(sim.delivered_count(), 200);
}
