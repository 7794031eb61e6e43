//! The bare HTTP handler the e2e benchmark compares decisions with
//! (`sca-dispatch simulate http-baseline`), acking held deliveries: against the real
//! RabbitMQ, each request acks exactly one held delivery, in delivery order after the
//! first `--skip` (with `--fill`, of the messages it published itself, in publish
//! order); once interrupted, the handler leaves every delivery it did not ack back in
//! the queue; holding none is refused.

mod common;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUEUED: u64 = 400;
const HELD: u64 = 300;
const SKIP: u64 = 100;
const REQUESTS: u64 = 150;

async fn ready_count(ch: &lapin::Channel, queue: &str) -> u64 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count() as u64
}

async fn post(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/challenges/x/decision HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_acks_one_held_delivery_and_the_rest_go_back() {
    acks_one_per_request(false).await;
}

/// `--fill`: the handler publishes the held messages itself, after its consumers are
/// registered, and acks them in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_its_own_queue_it_acks_in_publish_order() {
    acks_one_per_request(true).await;
}

/// Holds `HELD` of the queue's messages (published by the test, `QUEUED` of them, or by
/// the handler with `fill`, `HELD`), answers `REQUESTS`, is interrupted; checks which
/// messages are back.
async fn acks_one_per_request(fill: bool) {
    let (_conn, ch) = common::amqp().await;
    let queue = common::unique("http-baseline-held");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, args)
        .await
        .unwrap();
    let queued = if fill { HELD } else { QUEUED };
    if !fill {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..QUEUED {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"));
    cmd.args(["simulate", "http-baseline", "--addr", "127.0.0.1:0"])
        .args(["--amqp-url", common::AMQP_URL, "--exchange", "amq.topic"])
        .args(["--ack-queue", &queue, "--held", &HELD.to_string()])
        .args(["--skip", &SKIP.to_string()]);
    if fill {
        cmd.arg("--fill");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut addr)
        .unwrap();
    let addr = addr.trim().to_string();
    assert!(!addr.is_empty(), "the handler did not start");
    // Listening means it holds HELD deliveries: only the rest are ready.
    assert_eq!(ready_count(&ch, &queue).await, queued - HELD);
    for _ in 0..REQUESTS {
        let answer = post(&addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut exited = None;
    for _ in 0..200 {
        exited = child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if exited.is_none() {
        let _ = child.kill();
        panic!("the handler did not exit within 10 s of its interrupt");
    }
    // Exactly one delivery acked per request; the skipped and the unused ones are back.
    let mut back = 0;
    for _ in 0..100 {
        back = ready_count(&ch, &queue).await;
        if back == queued - REQUESTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, queued - REQUESTS);
    // The acked ones are those right after the skipped, in delivery (or publish) order.
    let mut left = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        left.push(
            String::from_utf8_lossy(&m.delivery.data)
                .parse::<u64>()
                .unwrap(),
        );
    }
    left.sort_unstable();
    let expected: Vec<u64> = (0..SKIP).chain(SKIP + REQUESTS..queued).collect();
    assert_eq!(left, expected);
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[test]
fn holding_nothing_is_refused_naming_the_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
        .args(["simulate", "http-baseline", "--amqp-url", common::AMQP_URL])
        .args(["--ack-queue", "q", "--held", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--held"), "{err}");
}

#[test]
fn a_channel_holding_nothing_is_refused_naming_the_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
        .args(["simulate", "http-baseline", "--amqp-url", common::AMQP_URL])
        .args(["--ack-queue", "q", "--held", "10", "--per-channel", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--per-channel"), "{err}");
}
