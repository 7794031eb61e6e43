//! Broker loss and shutdown: the daemon reconnects by itself and resumes; a graceful stop
//! publishes what is decided and leaves undecided challenges to be redelivered.

mod common;

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::process::Command;
use std::time::Duration;

/// Closes the daemon's broker connection(s) from the broker side.
fn close_connections(name_part: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--no-table-headers",
            "--silent",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for line in text.lines().filter(|l| l.contains(name_part)) {
        let pid = line.split_whitespace().next().unwrap();
        let st = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: broker went away"])
            .status()
            .unwrap();
        assert!(st.success());
        n += 1;
    }
    n
}

/// Ready messages in the challenges queue once it has settled on `expected` (returned
/// deliveries reach a quorum queue asynchronously), or whatever it shows after 5 s.
async fn ready_count(h: &Harness, expected: u32) -> u32 {
    let ch = h.conn.create_channel().await.unwrap();
    let mut n = 0;
    for _ in 0..50 {
        let q = ch
            .queue_declare(
                h.cfg.amqp.challenges_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        n = q.message_count();
        if n == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resumes_after_the_broker_drops_the_connection() {
    let mut h = Harness::start_with(|c| {
        c.amqp.reconnect_initial_ms = 100;
        c.amqp.reconnect_max_ms = 500;
    })
    .await;
    h.publish(&challenge("rc-1")).await;
    h.pushes(2, 10).await;
    let queue = h.cfg.amqp.challenges_queue.clone();
    assert!(
        tokio::task::spawn_blocking(move || close_connections(&queue))
            .await
            .unwrap()
            >= 1
    );
    // Back by itself.
    let status = h.daemon.as_ref().unwrap().status.clone();
    let mut saw_ready = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if status.connected() {
            let (st, _) = h.http("GET", "/readyz", None, None).await;
            saw_ready = st == 200;
            if saw_ready {
                break;
            }
        }
    }
    assert!(saw_ready, "reconnected and ready again");
    // The challenge held in memory is still decidable; its redelivery is not dispatched again.
    let (st, _) = h.decide("rc-1", "d-pixel", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(10).await;
    assert_eq!(o["challenge_id"], "rc-1");
    h.no_outcome(300).await;
    assert_eq!(
        h.push
            .pushes
            .lock()
            .unwrap()
            .iter()
            .filter(|p| !p.is_withdraw())
            .count(),
        2
    );
    h.publish(&challenge("rc-2")).await;
    let p = h.pushes(5, 10).await;
    assert!(p.iter().any(|p| &*p.challenge_id == "rc-2"));
    assert!(h.metrics().await.contains("sca_amqp_reconnects_total"));
    // After a graceful stop nothing decided is left in the queue; rc-2 (undecided) is.
    h.stop_daemon().await;
    assert_eq!(ready_count(&h, 1).await, 1);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_leaves_undecided_for_redelivery() {
    let mut h = Harness::start().await;
    h.publish(&challenge("gs-decided")).await;
    h.publish(&challenge("gs-open")).await;
    h.pushes(4, 10).await;
    let (st, _) = h.decide("gs-decided", "d-pixel", "deny").await;
    assert_eq!(st, 200);
    h.stop_daemon().await;
    let (_, o) = h.outcome(5).await;
    assert_eq!(o["challenge_id"], "gs-decided");
    assert_eq!(
        ready_count(&h, 1).await,
        1,
        "only the undecided challenge goes back"
    );
    // A new instance picks it up and dispatches it again.
    h.start_daemon().await;
    let p = h.pushes(7, 10).await;
    assert!(
        p.iter()
            .filter(|p| &*p.challenge_id == "gs-open" && !p.is_withdraw())
            .count()
            >= 4
    );
    let (st, _) = h.decide("gs-open", "d-iphone", "approve").await;
    assert_eq!(st, 200);
    let (_, o) = h.outcome(5).await;
    assert_eq!(o["challenge_id"], "gs-open");
    h.no_outcome(300).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lost_connection_is_retried_after_the_first_delay() {
    // The backoff doubles while the broker refuses; a connection that came up starts it
    // over. Before, it kept doubling across the daemon's life: the fifth loss in a row
    // waited 16 × the first delay (6.4 s here) before even trying.
    let h = Harness::start_with(|c| {
        c.amqp.reconnect_initial_ms = 400;
        c.amqp.reconnect_max_ms = 60_000;
    })
    .await;
    let status = h.daemon.as_ref().unwrap().status.clone();
    for round in 1..=5 {
        let queue = h.cfg.amqp.challenges_queue.clone();
        let closed = tokio::task::spawn_blocking(move || close_connections(&queue))
            .await
            .unwrap();
        assert!(
            closed >= 1,
            "round {round}: the daemon's connection was found"
        );
        let lost = std::time::Instant::now();
        // The loss is seen first, then the connection comes back.
        while status.connected() && lost.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while !status.connected() && lost.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = lost.elapsed();
        assert!(status.connected(), "round {round}: connected again");
        assert!(
            took < Duration::from_secs(3),
            "round {round}: back after {took:?}, the backoff was not started over"
        );
    }
    h.cleanup().await;
}
