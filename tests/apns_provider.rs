//! The APNs provider against the APNs simulator over real TLS (ALPN h2): what is sent,
//! how each answer is handled, retries, timeouts, token renewal and connection loss.

use sca_dispatch::challenge::machine::PushResult;
use sca_dispatch::challenge::model::{Kind, Platform};
use sca_dispatch::config::ApnsConfig;
use sca_dispatch::push::apns::ApnsProvider;
use sca_dispatch::push::{PushContent, PushMessage, PushProvider};
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions, Behaviour};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn challenge(token: &str, ttl: Duration) -> PushMessage {
    PushMessage {
        challenge_id: "01JD3F6Y8W0QZ5N4B7K2M9XH1C".into(),
        kind: Kind::Payment,
        device_id: "d-iphone".into(),
        token: token.into(),
        content: PushContent::Challenge {
            title: Arc::from("Conferma pagamento"),
            body: Arc::from("125,40 € a Mario Rossi"),
            number_choices: Some([12, 47, 83]),
            extra: None,
        },
        expires_at_ms: now_ms() + ttl.as_millis() as i64,
        app: Default::default(),
    }
}

async fn setup_with(
    opts: ApnsSimOptions,
    tweak: impl FnOnce(&mut ApnsConfig),
) -> (ApnsSim, ApnsProvider) {
    let sim = ApnsSim::start(opts).await.expect("simulator starts");
    let mut cfg = sim.config();
    cfg.request_timeout_ms = 2_000;
    tweak(&mut cfg);
    let provider = ApnsProvider::new(&cfg).expect("provider starts");
    (sim, provider)
}

async fn setup() -> (ApnsSim, ApnsProvider) {
    setup_with(ApnsSimOptions::default(), |_| {}).await
}

#[tokio::test]
async fn delivered_with_the_contract_headers_and_payload() {
    let (sim, provider) = setup().await;
    assert_eq!(provider.platform(), Platform::Apns);
    let msg = challenge(&token(1), Duration::from_secs(120));
    let expires = msg.expires_at_ms;
    assert_eq!(provider.send(msg).await, PushResult::Delivered);

    let pushes = sim.pushes();
    assert_eq!(pushes.len(), 1);
    let p = &pushes[0];
    assert_eq!(p.status, 200);
    assert_eq!(p.token, token(1));
    assert_eq!(p.header("apns-push-type"), "alert");
    assert_eq!(p.header("apns-priority"), "10");
    assert_eq!(p.header("apns-expiration"), (expires / 1000).to_string());
    assert_eq!(p.header("apns-collapse-id"), "01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    assert_eq!(p.header("apns-topic"), sim.topic());
    assert!(p.header("authorization").starts_with("bearer "));
    let v = &p.payload;
    assert_eq!(v["aps"]["alert"]["title"], "Conferma pagamento");
    assert_eq!(v["aps"]["alert"]["body"], "125,40 € a Mario Rossi");
    assert_eq!(v["aps"]["category"], "SCA_CHALLENGE");
    assert_eq!(v["aps"]["interruption-level"], "time-sensitive");
    assert_eq!(v["challenge_id"], "01JD3F6Y8W0QZ5N4B7K2M9XH1C");
    assert_eq!(v["kind"], "payment");
    assert_eq!(v["type"], "challenge");
    assert_eq!(v["number_choices"], serde_json::json!([12, 47, 83]));
    let at = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(at.timestamp_millis(), expires);

    // One provider token serves every push.
    for n in 2..6 {
        let r = provider
            .send(challenge(&token(n), Duration::from_secs(60)))
            .await;
        assert_eq!(r, PushResult::Delivered);
    }
    assert_eq!(provider.tokens_minted(), 1);
    let auths: std::collections::HashSet<String> = sim
        .pushes()
        .iter()
        .map(|p| p.header("authorization").to_string())
        .collect();
    assert_eq!(auths.len(), 1);
}

#[tokio::test]
async fn withdrawal_is_a_background_push() {
    let (sim, provider) = setup().await;
    let mut msg = challenge(&token(7), Duration::from_secs(60));
    msg.content = PushContent::Withdraw;
    assert_eq!(provider.send(msg).await, PushResult::Delivered);
    let p = &sim.pushes()[0];
    assert_eq!(p.header("apns-push-type"), "background");
    assert_eq!(p.header("apns-priority"), "5");
    assert_eq!(p.header("apns-topic"), sim.topic());
    assert_eq!(
        p.payload,
        serde_json::json!({
            "aps": {"content-available": 1},
            "type": "withdraw",
            "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"
        })
    );
}

#[tokio::test]
async fn gone_tokens_are_reported_and_not_retried() {
    let (sim, provider) = setup().await;
    sim.script(&token(1), Behaviour::Unregistered);
    sim.script(&token(2), Behaviour::BadDeviceToken);
    for n in [1, 2] {
        let r = provider
            .send(challenge(&token(n), Duration::from_secs(60)))
            .await;
        assert_eq!(r, PushResult::TokenGone, "token {n}");
    }
    let pushes = sim.pushes();
    assert_eq!(pushes.len(), 2, "no retries");
    assert_eq!(pushes[0].status, 410);
    assert_eq!(pushes[0].reason.as_deref(), Some("Unregistered"));
    assert_eq!(pushes[1].status, 400);
    // A token that is not hex is refused before sending, as Apple would refuse it.
    let r = provider
        .send(challenge("not-a-token", Duration::from_secs(60)))
        .await;
    assert_eq!(r, PushResult::TokenGone);
    assert_eq!(sim.pushes().len(), 2);
}

#[tokio::test]
async fn unavailable_twice_then_delivered() {
    let (sim, provider) = setup().await;
    sim.script(&token(3), Behaviour::ServiceUnavailable { times: 2 });
    let r = provider
        .send(challenge(&token(3), Duration::from_secs(60)))
        .await;
    assert_eq!(r, PushResult::Delivered);
    let statuses: Vec<u16> = sim.pushes().iter().map(|p| p.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    // 429 and 500 are retried the same way.
    sim.script(&token(4), Behaviour::TooManyRequests { times: 1 });
    sim.script(&token(5), Behaviour::InternalServerError { times: 1 });
    for n in [4, 5] {
        let r = provider
            .send(challenge(&token(n), Duration::from_secs(60)))
            .await;
        assert_eq!(r, PushResult::Delivered);
    }
}

#[tokio::test]
async fn a_stalled_request_times_out_and_is_retried() {
    let (sim, provider) = setup_with(ApnsSimOptions::default(), |c| {
        c.request_timeout_ms = 300;
    })
    .await;
    sim.script(&token(9), Behaviour::Stall { times: 1 });
    let started = Instant::now();
    let r = provider
        .send(challenge(&token(9), Duration::from_secs(30)))
        .await;
    assert_eq!(r, PushResult::Delivered);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let statuses: Vec<u16> = sim.pushes().iter().map(|p| p.status).collect();
    assert_eq!(statuses, [0, 200], "stalled (0), then delivered");
}

#[tokio::test]
async fn retries_stop_when_the_challenge_expires() {
    let (sim, provider) = setup_with(ApnsSimOptions::default(), |c| {
        c.request_timeout_ms = 300;
    })
    .await;
    sim.script(&token(6), Behaviour::ServiceUnavailable { times: 10_000 });
    let ttl = Duration::from_millis(1500);
    let msg = challenge(&token(6), ttl);
    let deadline = msg.expires_at_ms;
    assert_eq!(provider.send(msg).await, PushResult::Failed);
    // Never past the expiry plus one request timeout.
    assert!(now_ms() <= deadline + 300 + 250, "gave up too late");
    assert!(sim.pushes().len() >= 2, "retried while the challenge lived");

    // Stalls all along: every attempt is cut by the timeout, none past the expiry.
    sim.script(&token(8), Behaviour::Stall { times: 10_000 });
    let msg = challenge(&token(8), Duration::from_millis(1000));
    let deadline = msg.expires_at_ms;
    assert_eq!(provider.send(msg).await, PushResult::Failed);
    assert!(now_ms() <= deadline + 300 + 250, "gave up too late");

    // Already expired: nothing is sent.
    let before = sim.total();
    let msg = challenge(&token(10), Duration::ZERO);
    assert_eq!(provider.send(msg).await, PushResult::Failed);
    assert_eq!(sim.total(), before);
}

#[tokio::test]
async fn expired_provider_token_is_renewed_once_and_the_push_retried() {
    let (sim, provider) = setup().await;
    assert_eq!(
        provider
            .send(challenge(&token(1), Duration::from_secs(60)))
            .await,
        PushResult::Delivered
    );
    assert_eq!(provider.tokens_minted(), 1);
    sim.script(&token(2), Behaviour::ExpiredProviderToken { times: 1 });
    assert_eq!(
        provider
            .send(challenge(&token(2), Duration::from_secs(60)))
            .await,
        PushResult::Delivered
    );
    assert_eq!(provider.tokens_minted(), 2);
    let pushes = sim.pushes();
    assert_eq!(pushes.len(), 3);
    assert_eq!(pushes[1].reason.as_deref(), Some("ExpiredProviderToken"));
    assert_ne!(
        pushes[1].header("authorization"),
        pushes[2].header("authorization"),
        "retried with a new token"
    );
    // The new token is then shared by later pushes.
    provider
        .send(challenge(&token(3), Duration::from_secs(60)))
        .await;
    assert_eq!(
        sim.pushes()[3].header("authorization"),
        pushes[2].header("authorization")
    );

    // Rejected again right after: retried only once, then failed — no mint loop.
    sim.script(&token(4), Behaviour::ExpiredProviderToken { times: 5 });
    assert_eq!(
        provider
            .send(challenge(&token(4), Duration::from_secs(60)))
            .await,
        PushResult::Failed
    );
    assert_eq!(sim.pushes().len(), 6);
    assert_eq!(
        provider.tokens_minted(),
        2,
        "at most one forced renewal a minute"
    );
}

#[tokio::test]
async fn permanent_errors_fail_without_retry() {
    // A topic the key may not push to.
    let (sim, provider) = setup_with(ApnsSimOptions::default(), |c| {
        c.topic = "com.example.other".into();
    })
    .await;
    assert_eq!(
        provider
            .send(challenge(&token(1), Duration::from_secs(60)))
            .await,
        PushResult::Failed
    );
    let pushes = sim.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].reason.as_deref(), Some("TopicDisallowed"));

    // A payload over 4096 bytes never leaves the process.
    let mut msg = challenge(&token(2), Duration::from_secs(60));
    msg.content = PushContent::Challenge {
        title: Arc::from("t"),
        body: Arc::from("x".repeat(5000)),
        number_choices: None,
        extra: None,
    };
    assert_eq!(provider.send(msg).await, PushResult::Failed);
    assert_eq!(sim.total(), 1);
}

#[tokio::test]
async fn the_simulator_refuses_a_key_it_does_not_know() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let other = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let mut cfg = sim.config();
    // Same key id and team, another key: the signature does not verify.
    cfg.key_file = other.key_path().display().to_string();
    let provider = ApnsProvider::new(&cfg).unwrap();
    assert_eq!(
        provider
            .send(challenge(&token(1), Duration::from_secs(60)))
            .await,
        PushResult::Failed
    );
    assert_eq!(
        sim.pushes()[0].reason.as_deref(),
        Some("InvalidProviderToken")
    );
}

#[tokio::test]
async fn a_connection_closed_by_goaway_is_replaced() {
    let (sim, provider) = setup_with(ApnsSimOptions::default(), |c| c.connections = 1).await;
    assert_eq!(
        provider
            .send(challenge(&token(1), Duration::from_secs(60)))
            .await,
        PushResult::Delivered
    );
    assert_eq!(sim.connections(), 1);
    sim.goaway();
    // The provider notices the GOAWAY and opens a replacement after a short backoff.
    let waited = Instant::now();
    while provider.connections_opened() < 2 {
        assert!(waited.elapsed() < Duration::from_secs(5), "not replaced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 2..5 {
        assert_eq!(
            provider
                .send(challenge(&token(n), Duration::from_secs(60)))
                .await,
            PushResult::Delivered
        );
    }
    assert_eq!(sim.connections(), 2, "one replacement, no reconnect loop");
    assert_eq!(provider.connections_opened(), 2);
    let conns: Vec<u64> = sim.pushes().iter().map(|p| p.connection).collect();
    assert_eq!(conns, [1, 2, 2, 2]);
}

#[tokio::test]
async fn stream_limits_are_respected_under_load() {
    let opts = ApnsSimOptions {
        max_concurrent_streams: 3,
        ..Default::default()
    };
    let (sim, provider) = setup_with(opts, |c| c.connections = 2).await;
    let waited = Instant::now();
    while provider.connections_live() < 2 {
        assert!(waited.elapsed() < Duration::from_secs(5), "not connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let provider = Arc::new(provider);
    let mut tasks = Vec::new();
    for n in 0..40u8 {
        sim.script(&token(n), Behaviour::Latency(Duration::from_millis(20)));
        let p = provider.clone();
        tasks.push(tokio::spawn(async move {
            p.send(challenge(&token(n), Duration::from_secs(30))).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), PushResult::Delivered);
    }
    assert_eq!(sim.delivered_count(), 40);
    assert_eq!(sim.total(), 40, "no refused streams, no retries");
    assert_eq!(provider.connections_live(), 2);
    let used: std::collections::HashSet<u64> = sim.pushes().iter().map(|p| p.connection).collect();
    assert_eq!(used.len(), 2, "both connections carry pushes");
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_the_push_by_its_expiry() {
    // Bind then drop, so nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let mut cfg = sim.config();
    cfg.endpoint = format!("https://{addr}");
    cfg.request_timeout_ms = 200;
    let provider = ApnsProvider::new(&cfg).unwrap();
    let msg = challenge(&token(1), Duration::from_millis(800));
    let deadline = msg.expires_at_ms;
    assert_eq!(provider.send(msg).await, PushResult::Failed);
    assert!(now_ms() <= deadline + 200 + 250);
    assert_eq!(provider.connections_live(), 0);
}

#[tokio::test]
async fn bad_configuration_is_refused_with_the_key_named() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let mut cfg = sim.config();
    cfg.key_file = "/nonexistent/AuthKey.p8".into();
    let e = ApnsProvider::new(&cfg).err().unwrap().to_string();
    assert!(
        e.contains("apns.key_file") && e.contains("/nonexistent/AuthKey.p8"),
        "{e}"
    );
    let mut cfg = sim.config();
    cfg.endpoint = "http://127.0.0.1:1".into();
    let e = ApnsProvider::new(&cfg).err().unwrap().to_string();
    assert!(e.contains("apns.endpoint"), "{e}");
    let mut cfg = sim.config();
    cfg.ca_file = sim.key_path().display().to_string();
    let e = ApnsProvider::new(&cfg).err().unwrap().to_string();
    assert!(e.contains("apns.ca_file"), "{e}");
}

#[tokio::test]
async fn pushes_in_flight_during_a_goaway_are_delivered() {
    let (sim, provider) = setup_with(ApnsSimOptions::default(), |c| c.connections = 2).await;
    let provider = Arc::new(provider);
    let mut tasks = Vec::new();
    for n in 0..60u8 {
        sim.script(&token(n), Behaviour::Latency(Duration::from_millis(100)));
        let p = provider.clone();
        tasks.push(tokio::spawn(async move {
            p.send(challenge(&token(n), Duration::from_secs(30))).await
        }));
        if n == 30 {
            // Both connections up, however slow the machine: the GOAWAY must reach them
            // (one accepted after it would never see it).
            let until = tokio::time::Instant::now() + Duration::from_secs(20);
            while sim.connections() < 2 {
                assert!(
                    tokio::time::Instant::now() < until,
                    "connections up in time"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            sim.goaway();
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), PushResult::Delivered);
    }
    assert_eq!(sim.delivered_count(), 60);
    assert!(provider.connections_opened() >= 3, "replacements opened");
    assert!(sim.connections() <= 4, "no reconnect loop");
}

#[tokio::test]
async fn queued_pushes_move_to_a_connection_that_comes_up_later() {
    // One stream per connection: pushes queue from the start, while the second
    // connection is still being set up.
    let opts = ApnsSimOptions {
        max_concurrent_streams: 1,
        ..Default::default()
    };
    let (sim, provider) = setup_with(opts, |c| c.connections = 2).await;
    let provider = Arc::new(provider);
    let mut tasks = Vec::new();
    for n in 0..20u8 {
        sim.script(&token(n), Behaviour::Latency(Duration::from_millis(30)));
        let p = provider.clone();
        tasks.push(tokio::spawn(async move {
            p.send(challenge(&token(n), Duration::from_secs(30))).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), PushResult::Delivered);
    }
    assert_eq!(sim.total(), 20, "never over the server's stream limit");
    let used: std::collections::HashSet<u64> = sim.pushes().iter().map(|p| p.connection).collect();
    assert_eq!(used.len(), 2, "both connections carry pushes");
}

#[tokio::test]
async fn failing_connections_are_retried_with_backoff_not_in_a_loop() {
    // A server that accepts TCP and hangs up at once: every TLS handshake fails.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(tcp);
        }
    });
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let mut cfg = sim.config();
    cfg.endpoint = format!("https://{addr}");
    cfg.connections = 1;
    let provider = ApnsProvider::new(&cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    // Backoff 125–250 ms, doubling: at most ~5 attempts in 1.5 s; a loop would make
    // thousands.
    assert!((2..=8).contains(&n), "{n} connection attempts in 1.5 s");
    assert_eq!(provider.connections_live(), 0);
    drop(provider);
    server.abort();
}
