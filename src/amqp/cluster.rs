//! Cluster mode on the broker (CONTRACT §10): claiming partitions, consuming them,
//! re-routing the plain challenges queue, handing partitions over.
//!
//! **Ownership.** Partition `i` is owned by the connection that holds the classic
//! exclusive queue `{challenges_queue}.p{i}.owner` (a lock: RabbitMQ refuses a second
//! connection with `RESOURCE_LOCKED` and deletes it when its connection closes). Only the
//! lock holder consumes the quorum queue `…p{i}` (declared single-active-consumer as a
//! second guard). Every `tick` each instance computes the balanced assignment over the
//! live instances ([`crate::cluster::assign`], live = hellos heard within 3 ticks) and
//! claims the partitions assigned to it, and any partition nobody has announced for 3
//! ticks; it hands over a partition assigned to another instance once that instance has
//! been seen for 2 ticks.
//!
//! **Fencing.** A partition whose consumer or connection is lost is fenced at once
//! ([`Engine::fence`]): its challenges leave the table, a publish of their outcome is
//! abandoned, and RabbitMQ gives their deliveries to the next owner.
//!
//! **Hand-over** (a rebalance, or SIGTERM): the consumer is cancelled, each undecided
//! challenge's body is published again to its partition queue with its progress in the
//! sealed header `x-sca-handover` (confirmed), then its delivery is acked; decided ones
//! are settled; then the lock is deleted. The next owner resumes those challenges
//! without pushing again.
//!
//! **Re-routing.** Each instance consumes the plain challenges queue and publishes every
//! message once to the consistent-hash exchange with routing key `user_id` (one hop),
//! acking it on the confirm; a message whose `user_id` cannot be read is refused here
//! like any invalid challenge.

use super::acks::{self, run_batcher, AckHandle, AckOp};
use super::consumer::reply_to;
use super::control::{seal_headers, Control, CONTROL_HEADER, MAC_HEADER, TS_HEADER};
use crate::cluster::{assign::assign, Names, Seal};
use crate::engine::{DeliveryMeta, Engine};
use crate::telemetry as t;
use crate::wire::control::Handover;
use crate::wire::ops::ChallengeId;
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The header carrying a handed-over challenge's progress.
pub(crate) const HANDOVER_HEADER: &str = "x-sca-handover";
/// The longest a hand-over waits for the partition's decided challenges to settle.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Cluster mode's broker side, shared by every connection's session.
pub struct Cluster {
    pub names: Names,
    seal: Seal,
    control: Arc<Control>,
    prefetch: u16,
    tick: Duration,
}

struct Held {
    channel: Channel,
    tag: String,
    acks: mpsc::UnboundedSender<AckOp>,
    task: tokio::task::JoinHandle<String>,
    since: Instant,
}

impl Cluster {
    pub fn new(
        names: Names,
        seal: Seal,
        control: Arc<Control>,
        prefetch: u16,
        tick: Duration,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            names,
            seal,
            control,
            prefetch,
            tick,
        })
    }

    /// How often claims are looked at (and hellos sent): a tenth of
    /// `cluster.takeover_seconds`, so a dead owner's partitions are claimed within
    /// 3 ticks of its last hello plus one tick.
    pub fn tick_for(takeover_seconds: u64) -> Duration {
        Duration::from_millis((takeover_seconds * 100).clamp(200, 5_000))
    }

    /// Claims, serves and hands over partitions on `conn` until a consumer fails (the
    /// caller then fences everything and reconnects). After `stop` every partition is
    /// handed over and the task waits to be dropped with the connection.
    pub(crate) async fn run(
        self: Arc<Self>,
        conn: Arc<Connection>,
        engine: Arc<Engine>,
        mut stop: watch::Receiver<bool>,
    ) -> String {
        let n = self.names.partitions.len();
        let mut held: Vec<Option<Held>> = (0..n).map(|_| None).collect();
        let mut unowned_since: Vec<Option<Instant>> = vec![None; n];
        let mut tick = tokio::time::interval(self.tick);
        // The first tick is immediate: hear the others' hellos before claiming.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = super::until_true(&mut stop) => {}
            }
            if *stop.borrow() {
                for (i, h) in held.iter_mut().enumerate() {
                    if let Some(h) = h.take() {
                        self.hand_over(&conn, &engine, i, h).await;
                    }
                }
                tracing::info!("every partition handed over");
                std::future::pending::<()>().await;
            }
            for (i, slot) in held.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|h| h.task.is_finished()) {
                    if let Some(h) = slot.take() {
                        let why = h.task.await.unwrap_or_else(|e| e.to_string());
                        tracing::warn!(partition = i, "partition consumer lost: {why}");
                        engine.fence(i);
                        self.unlock(&conn, i).await;
                    }
                }
            }
            let live = self.control.instances();
            let ids: Vec<String> = live.iter().map(|(id, _)| id.clone()).collect();
            let Some(me) = ids.iter().position(|id| id == self.control.id()) else {
                continue;
            };
            let map = assign(&ids, n);
            for i in 0..n {
                let mine = map[i] == me;
                if let Some(h) = &held[i] {
                    let stable = live[map[i]].1 >= self.tick * 2;
                    if !mine && stable && h.since.elapsed() >= self.tick * 2 {
                        if let Some(h) = held[i].take() {
                            tracing::info!(partition = i, to = %ids[map[i]], "handing a partition over to its assigned owner");
                            self.hand_over(&conn, &engine, i, h).await;
                        }
                    }
                    continue;
                }
                if self.control.owner_of(i as u16).is_some() {
                    unowned_since[i] = None;
                    continue;
                }
                let since = *unowned_since[i].get_or_insert_with(Instant::now);
                if mine || since.elapsed() >= self.tick * 3 {
                    match self.claim(&conn, &engine, i).await {
                        Ok(Some(h)) => {
                            unowned_since[i] = None;
                            held[i] = Some(h);
                        }
                        Ok(None) => {}
                        Err(e) => return format!("claiming partition {i}: {e}"),
                    }
                }
            }
        }
    }

    /// Takes the lock of partition `i` and starts consuming it; `None` when another
    /// connection holds the lock.
    async fn claim(
        &self,
        conn: &Connection,
        engine: &Arc<Engine>,
        i: usize,
    ) -> lapin::Result<Option<Held>> {
        let ch = conn.create_channel().await?;
        let lock = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        if ch
            .queue_declare(self.names.lock(i).into(), lock, FieldTable::default())
            .await
            .is_err()
        {
            // RESOURCE_LOCKED: someone else owns it (the broker closed this channel).
            return Ok(None);
        }
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let part = engine.claimed(i);
        let tag = format!("sca-dispatch-{}-p{i}", self.control.id());
        let consumer = match ch
            .basic_consume(
                self.names.partitions[i].as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                engine.fence(i);
                let _ = ch
                    .queue_delete(self.names.lock(i).into(), QueueDeleteOptions::default())
                    .await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_batcher(ch.clone(), rx));
        let task = tokio::spawn(run_partition(
            consumer,
            tx.clone(),
            engine.clone(),
            part,
            self.control.clone(),
            self.seal.clone(),
        ));
        metrics::counter!(t::CLUSTER_TAKEOVERS).increment(1);
        tracing::info!(partition = i, epoch = part.epoch, "partition claimed");
        Ok(Some(Held {
            channel: ch,
            tag,
            acks: tx,
            task,
            since: Instant::now(),
        }))
    }

    /// Deletes partition `i`'s lock so that the next owner can claim it at once.
    async fn unlock(&self, conn: &Connection, i: usize) {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(self.names.lock(i).into(), QueueDeleteOptions::default())
                .await;
            let _ = ch.close(200, "unlocked".into()).await;
        }
    }

    /// Hands partition `i` over (see the module doc).
    async fn hand_over(&self, conn: &Connection, engine: &Arc<Engine>, i: usize, h: Held) {
        let _ = h
            .channel
            .basic_cancel(h.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let items = engine.hand_over(i);
        let mut passed = 0usize;
        if !items.is_empty() {
            match confirm_channel(conn).await {
                Ok(ch) => {
                    for item in items {
                        let Some(id) = ChallengeId::parse(&item.id) else {
                            continue;
                        };
                        let state = serde_json::to_vec(&Handover::of(id, &item.progress))
                            .unwrap_or_default();
                        let props = self.handover_props(&state, &item.raw, item.reply_to);
                        let ok =
                            publish_confirmed(&ch, "", &self.names.partitions[i], &item.raw, props)
                                .await;
                        // Unacked on failure: back to the queue with the channel, and the
                        // next owner starts it afresh.
                        if ok {
                            passed += 1;
                            item.acks.into_iter().for_each(|a| a.ack());
                        }
                    }
                    let _ = ch.close(200, "handed over".into()).await;
                }
                Err(e) => tracing::warn!(partition = i, "no channel to hand over on: {e}"),
            }
        }
        acks::flush(&h.acks).await;
        let until = Instant::now() + SETTLE_WAIT;
        while engine.unsettled_in(i) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acks::flush(&h.acks).await;
        engine.fence(i);
        let _ = h.channel.close(200, "partition handed over".into()).await;
        h.task.abort();
        self.unlock(conn, i).await;
        metrics::counter!(t::CLUSTER_HANDOVERS).increment(1);
        metrics::counter!(t::CLUSTER_HANDED_OVER).increment(passed as u64);
        tracing::info!(partition = i, challenges = passed, "partition handed over");
    }

    fn handover_props(
        &self,
        state: &[u8],
        raw: &[u8],
        reply: Option<crate::engine::sink::ReplyTo>,
    ) -> BasicProperties {
        let ts = crate::clock::now_ms();
        let mut h = FieldTable::default();
        h.insert(
            HANDOVER_HEADER.into(),
            AMQPValue::LongString(String::from_utf8_lossy(state).into_owned().into()),
        );
        h.insert(TS_HEADER.into(), AMQPValue::LongLongInt(ts));
        h.insert(
            MAC_HEADER.into(),
            AMQPValue::LongString(self.seal.sign(ts, &handover_signed(state, raw)).into()),
        );
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(h);
        if let Some(r) = reply {
            props = props.with_reply_to(r.queue.into());
            if let Some(c) = r.correlation_id {
                props = props.with_correlation_id(c.into());
            }
        }
        props
    }
}

/// What a hand-over's MAC covers: the progress and the challenge body it belongs to.
fn handover_signed(state: &[u8], raw: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(state.len() + raw.len() + 1);
    v.extend_from_slice(state);
    v.push(b'\n');
    v.extend_from_slice(raw);
    v
}

fn header_str(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The verified progress a delivery carries from the partition's previous owner.
fn resume_of(
    d: &lapin::message::Delivery,
    seal: &Seal,
) -> Option<crate::challenge::machine::Progress> {
    let state = header_str(d, HANDOVER_HEADER)?;
    let (ts, mac) = seal_headers(d);
    if let Err(why) = seal.verify_mac(
        ts,
        mac.as_deref(),
        &handover_signed(state.as_bytes(), &d.data),
    ) {
        super::control::rejected(why);
        return None;
    }
    let h: Handover = serde_json::from_str(&state).ok()?;
    let p = h.into_progress()?;
    metrics::counter!(t::CLUSTER_RESUMED).increment(1);
    Some(p)
}

/// Feeds one partition's deliveries to the engine: challenges (resumed when handed
/// over), and operations other instances sent to this partition's owner.
async fn run_partition(
    mut consumer: Consumer,
    acks: mpsc::UnboundedSender<AckOp>,
    engine: Arc<Engine>,
    part: crate::cluster::Part,
    control: Arc<Control>,
    seal: Seal,
) -> String {
    while let Some(d) = consumer.next().await {
        let d = match d {
            Ok(d) => d,
            Err(e) => return format!("partition consumer failed: {e}"),
        };
        let ack = AckHandle::new(acks.clone(), d.delivery_tag);
        if header_str(&d, CONTROL_HEADER).is_some() {
            ack.ack();
            if control.verify(&d) {
                let reply = d.properties.reply_to().as_ref().map(|r| r.to_string());
                control.on_message(&d.data, reply, &engine).await;
            }
            continue;
        }
        let meta = DeliveryMeta {
            reply_to: reply_to(&d),
            redelivered: d.redelivered,
            part: Some(part),
            resume: resume_of(&d, &seal),
        };
        // Operations queued behind a challenge waiting for room wait with it.
        engine.room().await;
        engine.accept(&d.data, meta, Box::new(ack));
    }
    "partition consumer cancelled".into()
}

/// The `user_id` of a challenge body, if it is a usable routing key.
fn user_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct U {
        user_id: String,
    }
    let u = serde_json::from_slice::<U>(body).ok()?.user_id;
    (!u.is_empty() && u.len() <= 255).then_some(u)
}

pub(crate) async fn confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    rk: &str,
    body: &[u8],
    props: BasicProperties,
) -> bool {
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    match ch
        .basic_publish(exchange.into(), rk.into(), opts, body, props)
        .await
    {
        Ok(c) => matches!(c.await, Ok(Confirmation::Ack(None))),
        Err(_) => false,
    }
}

/// Re-routes the plain challenges queue to the consistent-hash exchange (one hop).
pub(crate) async fn run_reroute(
    mut consumer: Consumer,
    acks: mpsc::UnboundedSender<AckOp>,
    engine: Arc<Engine>,
    ch: Channel,
    exchange: String,
) -> String {
    let exchange: Arc<str> = exchange.into();
    while let Some(d) = consumer.next().await {
        let d = match d {
            Ok(d) => d,
            Err(e) => return format!("challenge consumer failed: {e}"),
        };
        let ack = AckHandle::new(acks.clone(), d.delivery_tag);
        let Some(user) = user_of(&d.data) else {
            // Refused with its reason, like any invalid challenge.
            let meta = DeliveryMeta {
                reply_to: reply_to(&d),
                redelivered: d.redelivered,
                ..Default::default()
            };
            engine.room().await;
            engine.accept(&d.data, meta, Box::new(ack));
            continue;
        };
        let (ch, exchange) = (ch.clone(), exchange.clone());
        tokio::spawn(async move {
            if publish_confirmed(&ch, &exchange, &user, &d.data, d.properties.clone()).await {
                metrics::counter!(t::CLUSTER_REROUTED).increment(1);
                ack.ack();
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ack.requeue();
            }
        });
    }
    "challenge consumer cancelled".into()
}
