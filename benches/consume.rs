//! Consume cost (not a test): CPU time of this process per message consumed and acked
//! from a quorum queue, the daemon's way — manual acks, `basic.qos` prefetch of
//! `amqp.prefetch` (default 1,000), one `multiple` ack per 256 deliveries (the ack
//! batcher's `FLUSH_AT`, `src/amqp/acks.rs`) — on the daemon's own connection set-up
//! (`sca_dispatch::amqp::client::connect`), against the RabbitMQ on 127.0.0.1:5672.
//!
//! The queue is filled before each round with the load tool's challenge messages
//! (persistent, published with confirms) and the clock starts only once they are all
//! queued, so the figure is the consumer's alone: user + system CPU of the whole process
//! (every thread: the runtime's workers and lapin's I/O), from `/proc/self/stat`, for the
//! deliveries and the acks of one round; the wall time gives the rate. `N` messages are
//! consumed in rounds of `CHUNK`, which bounds what the broker holds at once and gives
//! one figure per round to judge the noise by.
//!
//! ```sh
//! CONSUME_N=200000 cargo bench --bench consume
//! ```
//!
//! Environment: `CONSUME_N` (messages, default 200,000), `CONSUME_CHUNK` (per round,
//! default 50,000), `CONSUME_PREFETCH` (default: the daemon's `amqp.prefetch`),
//! `CONSUME_MODE`:
//! - `all` (default): fill and consume in rounds, print the figures (and one JSON line);
//! - `fill`: only publish `CONSUME_N` messages to `CONSUME_QUEUE` (declared if missing);
//! - `drain`: only consume and ack `CONSUME_N` messages from `CONSUME_QUEUE` and leave.
//!
//! `fill` then `drain` lets an instruction counter see the consumer alone, e.g.
//! `valgrind --tool=callgrind` on the bench binary in `drain` mode, with two counts
//! (the difference divided by the difference of the counts cancels the set-up).

#[path = "stats/mod.rs"]
mod stats;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use sca_dispatch::loadgen::mix::Shares;
use sca_dispatch::loadgen::pace::Pacer;
use sca_dispatch::loadgen::player::Shared;
use sca_dispatch::loadgen::{self, LoadOptions};
use stats::median;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Deliveries settled per `multiple` ack: the daemon's ack batcher flushes at 256.
const ACK_EVERY: u64 = 256;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_secs() -> f64 {
    loadgen::procstat::cpu_secs(std::process::id()).unwrap_or(0.0)
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

async fn declare(conn: &Connection, queue: &str) -> anyhow::Result<u32> {
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum(),
        )
        .await?;
    let _ = ch.close(200, "declared".into()).await;
    Ok(q.message_count())
}

/// Publishes `n` challenge messages to `queue` flat out and waits for every confirm.
async fn fill(conn: &Connection, queue: &str, n: u64) -> anyhow::Result<()> {
    let mut o = LoadOptions::new(URL, "http://127.0.0.1:1");
    o.challenges_queue = queue.into();
    o.count = Some(n);
    o.duration = None;
    o.rate = None;
    o.ttl_seconds = 600;
    o.devices_per_challenge = 2;
    // The e2e bench's device mix, so the messages are the ones its ceiling consumes.
    o.platforms = Shares::parse("apns=2,fcm=2,hms=1").map_err(|e| anyhow::anyhow!("{e}"))?;
    o.max_in_flight = n as usize + 1;
    let shared = Shared::new(o, Vec::new());
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let (_stop_tx, stop_rx) = watch::channel(false);
    let pacer = Pacer::new(shared.started, None);
    loadgen::publish(&shared, &ch, pacer, stop_rx).await?;
    let _ = ch.close(200, "filled".into()).await;
    Ok(())
}

/// Consumes and acks `n` messages the daemon's way; the CPU seconds and wall time it took.
async fn drain(conn: &Connection, queue: &str, n: u64, prefetch: u16) -> anyhow::Result<Round> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let cpu = cpu_secs();
    let started = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "consume-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0u64;
    let mut last = 0;
    while got < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        got += 1;
        last = d.delivery_tag;
        if got.is_multiple_of(ACK_EVERY) {
            ch.basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    if !got.is_multiple_of(ACK_EVERY) {
        ch.basic_ack(last, BasicAckOptions { multiple: true })
            .await?;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    // Closing the channel returns what the prefetch holds beyond `n` (none when the
    // queue held exactly `n`); not counted.
    let _ = ch.close(200, "drained".into()).await;
    Ok(Round { n, cpu, wall })
}

struct Round {
    n: u64,
    cpu: f64,
    wall: f64,
}

impl Round {
    fn us_per_msg(&self) -> f64 {
        self.cpu * 1e6 / self.n as f64
    }
    fn per_s(&self) -> f64 {
        self.n as f64 / self.wall
    }
}

async fn bench() -> anyhow::Result<()> {
    let n = env_u64("CONSUME_N", 200_000);
    let chunk = env_u64("CONSUME_CHUNK", 50_000).clamp(1, n.max(1));
    let default_prefetch = sca_dispatch::Config::default().amqp.prefetch as u64;
    let prefetch = env_u64("CONSUME_PREFETCH", default_prefetch).clamp(1, 65_535) as u16;
    let mode = std::env::var("CONSUME_MODE").unwrap_or_else(|_| "all".into());
    let conn = sca_dispatch::amqp::client::connect(URL, "sca-dispatch consume bench").await?;
    match mode.as_str() {
        "fill" | "drain" => {
            let queue = std::env::var("CONSUME_QUEUE")
                .map_err(|_| anyhow::anyhow!("CONSUME_QUEUE names the queue to {mode}"))?;
            declare(&conn, &queue).await?;
            if mode == "fill" {
                fill(&conn, &queue, n).await?;
                println!("filled {queue} with {n} messages");
            } else {
                let r = drain(&conn, &queue, n, prefetch).await?;
                println!(
                    "drained {n} messages from {queue}: {:.2} µs CPU per message, {:.0} msg/s",
                    r.us_per_msg(),
                    r.per_s()
                );
            }
        }
        "all" => {
            let queue = format!("sca-consume-bench-{}", std::process::id());
            let mut rounds = Vec::new();
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk);
                declare(&conn, &queue).await?;
                fill(&conn, &queue, k).await?;
                // Confirmed means queued; the count says so before the clock starts.
                let queued = declare(&conn, &queue).await?;
                anyhow::ensure!(queued as u64 == k, "{queued} queued, {k} published");
                let r = drain(&conn, &queue, k, prefetch).await?;
                println!(
                    "round {}: {k} messages, {:.2} µs CPU per message, {:.0} msg/s",
                    rounds.len() + 1,
                    r.us_per_msg(),
                    r.per_s()
                );
                rounds.push(r);
                left -= k;
            }
            let ch = conn.create_channel().await?;
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
            let cpu: f64 = rounds.iter().map(|r| r.cpu).sum();
            let wall: f64 = rounds.iter().map(|r| r.wall).sum();
            let us = cpu * 1e6 / n as f64;
            let med = median(rounds.iter().map(Round::us_per_msg).collect());
            let per_s = n as f64 / wall;
            println!(
                "consume + ack, quorum queue, prefetch {prefetch}, multiple ack per {ACK_EVERY}: \
                 {n} messages, {us:.2} µs CPU per message (median of rounds {med:.2}), {per_s:.0} msg/s"
            );
            let rounds_json: Vec<serde_json::Value> = rounds
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "messages": r.n,
                        "cpu_us_per_message": (r.us_per_msg() * 100.0).round() / 100.0,
                        "messages_per_s": r.per_s().round(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "messages": n,
                    "prefetch": prefetch,
                    "ack_every": ACK_EVERY,
                    "cpu_us_per_message": (us * 100.0).round() / 100.0,
                    "cpu_us_per_message_median_round": (med * 100.0).round() / 100.0,
                    "messages_per_s": per_s.round(),
                    "rounds": rounds_json,
                })
            );
        }
        other => anyhow::bail!("CONSUME_MODE is all, fill or drain, not {other}"),
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench())
}
