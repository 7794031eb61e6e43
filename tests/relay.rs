//! The bare relay (`sca-dispatch simulate relay`, the e2e benchmark's baseline) against
//! the real RabbitMQ and the load tool's simulators (FCM over TLS/HTTP/2, as in the
//! benchmark): every challenge gets its outcome in the shape the load tool reads, both
//! devices are pushed, the other device's push is withdrawn, and every delivery is acked.

mod common;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use sca_dispatch::loadgen::sims::{SimOptions, Sims};
use sca_dispatch::loadgen::{self, LoadOptions};
use std::time::Duration;

const N: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_settles_every_challenge_the_load_tool_sends() {
    let dir = tempfile::tempdir().unwrap();
    let sims = Sims::start(&SimOptions {
        apns_addr: "127.0.0.1:0".parse().unwrap(),
        fcm_addr: "127.0.0.1:0".parse().unwrap(),
        hms_addr: "127.0.0.1:0".parse().unwrap(),
        sms_addr: "127.0.0.1:0".parse().unwrap(),
        dir: dir.path().join("sim"),
        fcm_tls: true,
    })
    .await
    .unwrap();
    let mut cfg = common::test_config(&common::unique("relay"));
    sims.apply(&mut cfg);
    let settings = cfg.validate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(sca_dispatch::sim::relay::serve(settings, listener, async {
        let _ = stop_rx.await;
    }));
    loadgen::cli::wait_ready(std::slice::from_ref(&api), Duration::from_secs(20))
        .await
        .unwrap();

    let mut o = LoadOptions::new(&cfg.amqp.url, &api);
    o.challenges_queue = cfg.amqp.challenges_queue.clone();
    o.outcomes_exchange = cfg.amqp.outcomes_exchange.clone();
    o.rate = Some(400.0);
    o.count = Some(N);
    o.duration = Some(Duration::from_secs(30));
    o.devices_per_challenge = 2;
    o.decide_after = Duration::from_millis(10);
    o.drain = Duration::from_secs(30);
    o.print_seconds = false;
    let report = loadgen::run(o, sims.feeds()).await.unwrap();
    let j = &report.json;
    assert_eq!(report.lost(), 0, "{j:#}");
    assert_eq!(j["outcomes"], N, "{j:#}");
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
    assert_eq!(j["latency"]["publish_to_push"]["count"], N, "{j:#}");
    let mut approved = 0;
    for (_, m) in j["outcomes_by_kind"].as_object().unwrap() {
        approved += m["approved"].as_u64().unwrap_or(0);
    }
    assert_eq!(approved, N, "{j:#}");

    // Stopping drains: every delivery was acked (none comes back to the queue) and every
    // withdrawal sent.
    stop_tx.send(()).unwrap();
    relay.await.unwrap().unwrap();
    let (_conn, ch) = common::amqp().await;
    let q = ch
        .queue_declare(
            cfg.amqp.challenges_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "deliveries left unacked");
    // Two challenge pushes and one withdrawal (of the device that did not answer) per
    // challenge, over both providers, every one accepted.
    let apns = sims.apns.pushes();
    let fcm = sims.fcm.messages();
    assert!(
        apns.iter().all(|p| p.status == 200),
        "an APNs push was refused"
    );
    assert!(
        fcm.iter().all(|m| m.status == 200),
        "an FCM message was refused"
    );
    let count = |ty: &str| {
        apns.iter().filter(|p| p.payload["type"] == ty).count()
            + fcm.iter().filter(|m| m.data()["type"] == ty).count()
    };
    assert_eq!(count("challenge"), 2 * N as usize);
    assert_eq!(count("withdraw"), N as usize);
    assert!(!apns.is_empty() && !fcm.is_empty());
    let a = &cfg.amqp;
    for q in [&a.challenges_queue, &a.responses_queue, &a.dead_queue] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    sims.shutdown().await;
}
