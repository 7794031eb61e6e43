//! Consumers: N channels on the challenges queue (manual acks, `basic.qos` prefetch each)
//! and one on the responses queue. Deliveries are handed to the engine in the consumer
//! task itself — parsing and dispatch are synchronous and short.

use super::acks::{run_batcher, AckHandle};
use crate::engine::sink::ReplyTo;
use crate::engine::{AckToken, DeliveryMeta, Engine};
use crate::wire::ops::{Answer, Authority, ResponseMessage};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::sync::Arc;
use tokio::sync::mpsc;

/// An open consumer: its channel, for cancelling, and its consumer tag.
pub struct Running {
    pub channel: Channel,
    pub tag: String,
    /// The channel's ack batcher, to flush before closing.
    pub(crate) acks: mpsc::UnboundedSender<super::acks::AckOp>,
}

pub(crate) async fn open(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tag: String,
) -> lapin::Result<(Running, Consumer, mpsc::UnboundedSender<super::acks::AckOp>)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue,
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_batcher(channel.clone(), rx));
    let running = Running {
        channel,
        tag,
        acks: tx.clone(),
    };
    Ok((running, consumer, tx))
}

impl AckToken for AckHandle {
    fn ack(self: Box<Self>) {
        AckHandle::ack(*self)
    }
    fn reject(self: Box<Self>) {
        AckHandle::reject(*self)
    }
}

fn reply_to(d: &Delivery) -> Option<ReplyTo> {
    d.properties.reply_to().as_ref().map(|q| ReplyTo {
        queue: q.to_string(),
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string()),
    })
}

/// Feeds challenge deliveries to the engine until the consumer ends.
pub(crate) async fn run_challenges(
    mut consumer: Consumer,
    acks: mpsc::UnboundedSender<super::acks::AckOp>,
    engine: Arc<Engine>,
) -> String {
    while let Some(d) = consumer.next().await {
        match d {
            Ok(d) => {
                let meta = DeliveryMeta {
                    reply_to: reply_to(&d),
                    redelivered: d.redelivered,
                };
                let ack = AckHandle::new(acks.clone(), d.delivery_tag);
                engine.accept(&d.data, meta, Box::new(ack));
            }
            Err(e) => return format!("challenge consumer failed: {e}"),
        }
    }
    "challenge consumer cancelled".into()
}

/// Applies operations from the responses queue; answers `reply_to` when given.
pub(crate) async fn run_responses(
    mut consumer: Consumer,
    acks: mpsc::UnboundedSender<super::acks::AckOp>,
    engine: Arc<Engine>,
    queue: std::sync::Arc<str>,
) -> String {
    while let Some(d) = consumer.next().await {
        let d = match d {
            Ok(d) => d,
            Err(e) => return format!("responses consumer failed: {e}"),
        };
        let ack = AckHandle::new(acks.clone(), d.delivery_tag);
        let reply = reply_to(&d);
        let answer = match ResponseMessage::parse(&d.data) {
            Ok(msg) => {
                engine
                    .operate_anywhere(&msg.challenge_id, msg.op, Authority::Queue)
                    .await
            }
            Err(reason) => {
                tracing::warn!(%reason, "response message refused");
                let engine = engine.clone();
                let body = d.data.clone();
                let sink_reply = reply.clone();
                let queue = queue.clone();
                tokio::spawn(async move {
                    let dead = engine.sink().dead_letter(queue, body, reason.clone()).await;
                    if let Some(r) = sink_reply {
                        let b = Answer::error(422, "invalid_message", &reason).into_reply();
                        engine
                            .sink()
                            .reply(r, serde_json::to_vec(&b).unwrap_or_default())
                            .await;
                    }
                    if dead {
                        ack.ack()
                    } else {
                        ack.reject()
                    }
                });
                continue;
            }
        };
        if let Some(r) = reply {
            let body = answer.answer().into_reply();
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .sink()
                    .reply(r, serde_json::to_vec(&body).unwrap_or_default())
                    .await;
            });
        }
        ack.ack();
    }
    "responses consumer cancelled".into()
}
