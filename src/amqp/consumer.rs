//! Consumers: N channels on the challenges queue (manual acks, `basic.qos` prefetch each)
//! and one on the responses queue. Deliveries are handed to the engine in the consumer
//! task itself — parsing and dispatch are synchronous and short.

use super::acks::{run_batcher, AckHandle};
use crate::engine::sink::ReplyTo;
use crate::engine::{AckToken, DeliveryMeta, Engine};
use crate::wire::ops::{Answer, Authority, OpOutcome, ResponseMessage};
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
            queue.into(),
            tag.as_str().into(),
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

pub(crate) fn reply_to(d: &Delivery) -> Option<ReplyTo> {
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
                // Held (unacked) until there is room for it.
                engine.room().await;
                let meta = DeliveryMeta {
                    reply_to: reply_to(&d),
                    redelivered: d.redelivered,
                    ..Default::default()
                };
                let ack = AckHandle::new(acks.clone(), d.delivery_tag);
                engine.accept(&d.data, meta, Box::new(ack));
            }
            Err(e) => return format!("challenge consumer failed: {e}"),
        }
    }
    "challenge consumer cancelled".into()
}

/// How many times an operation whose owner could not be reached goes back to the queue
/// before it is answered 503.
pub const MAX_RESPONSE_REQUEUES: i64 = 3;

/// How many times the quorum queue has delivered this message before (`x-delivery-count`).
pub(crate) fn delivery_count(d: &Delivery) -> i64 {
    use lapin::types::AMQPValue;
    let Some(headers) = d.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => *n as i64,
        Some(AMQPValue::ShortInt(n)) => *n as i64,
        Some(AMQPValue::LongUInt(n)) => *n as i64,
        Some(AMQPValue::ShortUInt(n)) => *n as i64,
        Some(AMQPValue::ShortShortInt(n)) => *n as i64,
        Some(AMQPValue::ShortShortUInt(n)) => *n as i64,
        _ => 0,
    }
}

/// Applies operations from the responses queue; answers `reply_to` when given. Each
/// delivery is handled in its own task, so one slow forward never holds the queue; the
/// channel's prefetch bounds how many are in progress.
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
        tokio::spawn(respond(d, ack, engine.clone(), queue.clone()));
    }
    "responses consumer cancelled".into()
}

async fn respond(d: Delivery, ack: AckHandle, engine: Arc<Engine>, queue: Arc<str>) {
    let reply = reply_to(&d);
    // The size first: an oversized body is never parsed.
    let parsed = ResponseMessage::check_size(&d.data, engine.max_response_bytes())
        .map_err(|r| (413, "body_too_large", r))
        .and_then(|()| ResponseMessage::parse(&d.data).map_err(|r| (422, "invalid_message", r)));
    let msg = match parsed {
        Ok(msg) => msg,
        Err((status, code, reason)) => {
            tracing::warn!(%reason, "response message refused");
            let dead = engine
                .sink()
                .dead_letter(queue, d.data, reason.clone())
                .await;
            if let Some(r) = reply {
                let b = Answer::error(status, code, &reason).into_reply();
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
            return;
        }
    };
    let outcome = engine
        .operate_routed(
            &msg.challenge_id,
            msg.op,
            Authority::Queue,
            msg.user_id.as_ref(),
        )
        .await;
    let later = matches!(outcome, OpOutcome::Unreachable | OpOutcome::Moving);
    if later && delivery_count(&d) < MAX_RESPONSE_REQUEUES {
        tracing::info!(challenge_id = %msg.challenge_id, "owner unreachable; operation requeued");
        ack.requeue();
        return;
    }
    if outcome == OpOutcome::Unreachable {
        metrics::counter!(crate::telemetry::RESPONSES_UNREACHABLE).increment(1);
        tracing::warn!(challenge_id = %msg.challenge_id, "owner unreachable; operation answered 503");
    }
    // Acked before the reply: a reply that cannot be delivered never holds the message.
    ack.ack();
    if let Some(r) = reply {
        let body = outcome.answer().into_reply();
        engine
            .sink()
            .reply(r, serde_json::to_vec(&body).unwrap_or_default())
            .await;
    }
}
