//! A bare hyper HTTP server, the baseline the decision endpoint's throughput is compared
//! against in the end-to-end benchmark (same HTTP server layer, same load tool, same
//! requests, same machine). It reads each request's body and answers the same small
//! JSON. With a broker ([`Publish`]) it also does the broker work a decision does: one
//! persistent, mandatory message published on a confirm-mode channel it holds, the
//! confirm awaited in a task of its own as the daemon's publisher does, at most
//! [`WINDOW`] awaiting their confirm (the daemon's default `amqp.publish_window`).
//! With [`HeldAcks`] it also holds a queue's deliveries unacked, as the daemon holds its
//! undecided challenges, and acks one of them alone (not `multiple`) after each
//! request's confirm, in delivery order after the first `skip` (left unacked), as the
//! benchmark's decisions on challenges behind older undecided ones are acked. The
//! broker finds a single ack's tag by walking the channel's unacked deliveries from the
//! oldest, so where the acked delivery lies behind undecided ones matters.
//! Without a broker it is the empty handler.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Publishes awaiting their confirm at once.
pub const WINDOW: usize = 2000;

/// What each request publishes, and where.
#[derive(Debug, Clone)]
pub struct Publish {
    pub amqp_url: String,
    /// An existing exchange (the daemon's outcomes exchange, in the benchmark).
    pub exchange: String,
    pub routing_key: String,
    /// Deliveries to hold and ack one per request, if any.
    pub held: Option<HeldAcks>,
}

/// A queue whose deliveries the handler holds unacked: `count` of them, all delivered
/// before it listens (it consumes with a prefetch covering them, over channels of at
/// most `per_channel` each as the benchmark's daemon does). The first `skip` stay
/// unacked; each request acks the oldest one of the rest still held, alone.
///
/// With `fill`, the handler publishes the `count` messages itself once all its
/// consumers are registered: the queue then hands them out over the channels in turn,
/// as it does to a running daemon's consumers, so each channel holds its share of the
/// skipped ones ahead of the rest and every single ack lies behind them on its channel.
/// Without it, the queue already holds them and the first consumer takes a whole
/// channel's worth before the next one is registered. Filled, "oldest" is publish order.
#[derive(Debug, Clone)]
pub struct HeldAcks {
    pub queue: String,
    pub count: u64,
    pub skip: u64,
    pub fill: bool,
    /// Unacked deliveries per consumer channel at most (default [`PER_CHANNEL`]).
    pub per_channel: u64,
}

/// Unacked deliveries per consumer channel, by default: the daemon's default `amqp.prefetch`.
pub const PER_CHANNEL: u64 = 1_000;

/// The held deliveries to ack: the channel each came on and its tag, oldest first.
type Held = Mutex<VecDeque<(Channel, u64)>>;

/// Consumes `h.count` deliveries from `h.queue` without acking them (over the channels
/// returned); fails after 120 s.
async fn hold(conn: &Connection, h: &HeldAcks) -> anyhow::Result<(Held, Vec<Channel>)> {
    let channels = h.count.div_ceil(h.per_channel.max(1)).max(1);
    let prefetch = h.count.div_ceil(channels);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opened = Vec::new();
    for i in 0..channels {
        let ch = conn.create_channel().await?;
        opened.push(ch.clone());
        ch.basic_qos(prefetch as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = ch
            .basic_consume(
                h.queue.as_str().into(),
                format!("http-baseline-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let seq = std::str::from_utf8(&d.data)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                if tx.send((seq, ch.clone(), d.delivery_tag)).is_err() {
                    return;
                }
            }
        });
    }
    if h.fill {
        fill(conn, &h.queue, h.count).await?;
    }
    let mut held = Vec::with_capacity(h.count as usize);
    let all = async {
        while (held.len() as u64) < h.count {
            match rx.recv().await {
                Some(d) => held.push(d),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} of {} deliveries from {} held after 120 s",
                held.len(),
                h.count,
                h.queue
            )
        })?;
    if h.fill {
        // Publish order: every message carries its sequence number.
        held.sort_by_key(|(seq, _, _)| *seq);
    }
    // The skipped ones stay unacked: their channels live on in the consumer tasks.
    let held: VecDeque<_> = held
        .into_iter()
        .skip(h.skip.min(h.count) as usize)
        .map(|(_, ch, tag)| (ch, tag))
        .collect();
    Ok((Mutex::new(held), opened))
}

/// Publishes `count` messages to `queue`, each its sequence number from 0, with
/// confirms (at most `FILL_WINDOW` unconfirmed).
async fn fill(conn: &Connection, queue: &str, count: u64) -> anyhow::Result<()> {
    const FILL_WINDOW: usize = 2_000;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending: VecDeque<lapin::PublisherConfirm> = VecDeque::with_capacity(FILL_WINDOW);
    for seq in 0..count {
        if pending.len() >= FILL_WINDOW {
            if let Some(c) = pending.pop_front() {
                anyhow::ensure!(c.await?.is_ack(), "{queue} refused a held message");
            }
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                seq.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
    }
    for c in pending {
        anyhow::ensure!(c.await?.is_ack(), "{queue} refused a held message");
    }
    let _ = ch.close(200, "filled".into()).await;
    Ok(())
}

/// An outcome's size and shape (CONTRACT §4), published by every request.
const BODY: &[u8] = br#"{"v":1,"challenge_id":"http-baseline-0000000","user_id":"http-baseline-user","kind":"login","outcome":"approved","channel":"push","device_id":"d0","reason":null,"decided_at":"2026-01-01T00:00:00.000Z","elapsed_ms":20}"#;

struct Publisher {
    /// Held for as long as the channel is used.
    conn: Connection,
    channel: Channel,
    exchange: String,
    routing_key: String,
    window: Arc<Semaphore>,
    held: Option<Held>,
    /// The channels the held deliveries came on.
    held_channels: Vec<Channel>,
}

impl Publisher {
    /// Waits for the publishes in flight, then for the broker to have handled every ack
    /// sent (a synchronous method on each channel is answered after the acks before it),
    /// then closes the connection: what was not acked goes back to its queue.
    async fn settle(&self) {
        let _ = self.window.acquire_many(WINDOW as u32).await;
        for ch in &self.held_channels {
            let _ = ch.basic_qos(1, BasicQosOptions::default()).await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }

    /// Takes a window slot (waiting when full), then publishes and awaits the confirm in
    /// a task holding it.
    async fn publish(self: &Arc<Self>) {
        let Ok(slot) = self.window.clone().acquire_owned().await else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            if let Ok(confirm) = me
                .channel
                .basic_publish(
                    me.exchange.as_str().into(),
                    me.routing_key.as_str().into(),
                    opts,
                    BODY,
                    props,
                )
                .await
            {
                let _ = confirm.await;
            }
            let next = me
                .held
                .as_ref()
                .and_then(|h| h.lock().ok().and_then(|mut h| h.pop_front()));
            if let Some((channel, tag)) = next {
                let _ = channel.basic_ack(tag, BasicAckOptions::default()).await;
            }
            drop(slot);
        });
    }
}

/// Serves until Ctrl-C (then settles its acks, see `Publisher::settle`); prints the
/// bound address on the first line.
pub async fn run_standalone(addr: SocketAddr, publish: Option<Publish>) -> anyhow::Result<()> {
    let publisher = match publish {
        Some(p) => {
            let conn =
                crate::amqp::client::connect(&p.amqp_url, "sca-dispatch http-baseline").await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let (held, held_channels) = match &p.held {
                Some(h) => {
                    let (held, channels) = hold(&conn, h).await?;
                    (Some(held), channels)
                }
                None => (None, Vec::new()),
            };
            Some(Arc::new(Publisher {
                conn,
                channel,
                exchange: p.exchange,
                routing_key: p.routing_key,
                window: Arc::new(Semaphore::new(WINDOW)),
                held,
                held_channels,
            }))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("{}", listener.local_addr()?);
    let served = publisher.clone();
    let serve = crate::http::serve(
        listener,
        10_000,
        move |req: hyper::Request<hyper::body::Incoming>, _| {
            let publisher = publisher.clone();
            async move {
                let _ = req.into_body().collect().await;
                if let Some(p) = &publisher {
                    p.publish().await;
                }
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(br#"{"outcome":"approved"}"#)))
                    .unwrap_or_default()
            }
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    );
    serve.await;
    if let Some(p) = served {
        p.settle().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_channel_holds_by_default_what_a_daemon_channel_does() {
        let daemon = crate::Config::default().amqp.prefetch as u64;
        assert_eq!(super::PER_CHANNEL, daemon);
    }
}
