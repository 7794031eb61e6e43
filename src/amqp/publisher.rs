//! Publishing outcomes, events, dead letters and replies: persistent, mandatory, with
//! publisher confirms, through a bounded window. A publish that fails (broker gone,
//! nack) is retried on the next connection until confirmed or the daemon is stopped.

use crate::config::AmqpConfig;
use crate::engine::sink::{OutcomeSink, ReplyTo};
use crate::push::BoxFuture;
use crate::telemetry as t;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// The confirm-mode publishing channel of the current connection, if any.
pub struct AmqpPublisher {
    outcomes: String,
    events: String,
    dead: String,
    channel: watch::Sender<Option<Channel>>,
    window: Semaphore,
    stop: watch::Receiver<bool>,
}

enum Sent {
    Confirmed,
    Unroutable,
}

impl AmqpPublisher {
    /// `stop` turns true when publishes still failing should be given up.
    pub fn new(cfg: &AmqpConfig, stop: watch::Receiver<bool>) -> Self {
        Self {
            outcomes: cfg.outcomes_exchange.clone(),
            events: cfg.events_exchange.clone(),
            dead: cfg.dead_exchange.clone(),
            channel: watch::channel(None).0,
            window: Semaphore::new(cfg.publish_window as usize),
            stop,
        }
    }

    pub(crate) fn set_channel(&self, ch: Option<Channel>) {
        self.channel.send_replace(ch);
    }

    async fn once(
        &self,
        exchange: &str,
        rk: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Sent, String> {
        let ch = {
            let mut rx = self.channel.subscribe();
            let mut stop = self.stop.clone();
            tokio::select! {
                r = rx.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected())) => {
                    r.map_err(|e| e.to_string())?.clone().ok_or("no channel")?
                }
                _ = super::until_true(&mut stop) => return Err("stopping".into()),
            }
        };
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = ch
            .basic_publish(exchange, rk, opts, body, props)
            .await
            .map_err(|e| e.to_string())?;
        match confirm.await.map_err(|e| e.to_string())? {
            Confirmation::Ack(Some(_returned)) => Ok(Sent::Unroutable),
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Sent::Confirmed),
            Confirmation::Nack(_) => Err("nacked by the broker".into()),
        }
    }

    /// Publishes until confirmed; `false` only when stopped first.
    async fn publish(&self, exchange: &str, rk: &str, body: &[u8], props: BasicProperties) -> bool {
        let Ok(_permit) = self.window.acquire().await else {
            return false;
        };
        let mut attempt = 0;
        loop {
            match self.once(exchange, rk, body, props.clone()).await {
                Ok(Sent::Confirmed) => return true,
                Ok(Sent::Unroutable) => {
                    // Confirmed by the broker but no queue is bound: nothing to retry.
                    metrics::counter!(t::AMQP_UNROUTABLE, "exchange" => exchange.to_string())
                        .increment(1);
                    tracing::warn!(
                        exchange,
                        routing_key = rk,
                        "published message was unroutable"
                    );
                    return true;
                }
                Err(e) => {
                    if *self.stop.borrow() {
                        tracing::warn!(
                            exchange,
                            routing_key = rk,
                            "giving up publish at shutdown: {e}"
                        );
                        return false;
                    }
                    metrics::counter!(t::PUBLISH_FAILURES).increment(1);
                    tracing::debug!(exchange, routing_key = rk, "publish failed, retrying: {e}");
                    let d = crate::retry::backoff(
                        attempt,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    );
                    attempt += 1;
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = super::until_true(&mut stop) => {}
                    }
                }
            }
        }
    }
}

fn json_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

impl OutcomeSink for AmqpPublisher {
    fn publish_outcome(
        &self,
        routing_key: String,
        body: Vec<u8>,
        reply: Option<ReplyTo>,
    ) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if let Some(r) = reply {
                let mut props = json_props();
                if let Some(c) = r.correlation_id {
                    props = props.with_correlation_id(c.into());
                }
                // A vanished reply queue must not hold the outcome back.
                self.publish("", &r.queue, &body, props).await;
            }
            self.publish(&self.outcomes, &routing_key, &body, json_props())
                .await
        })
    }

    fn publish_event(&self, routing_key: &'static str, body: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.publish(&self.events, routing_key, &body, json_props())
                .await
        })
    }

    fn dead_letter(
        &self,
        source_queue: std::sync::Arc<str>,
        body: Vec<u8>,
        reason: String,
    ) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let mut headers = FieldTable::default();
            headers.insert("x-sca-reason".into(), AMQPValue::LongString(reason.into()));
            headers.insert(
                "x-sca-source-queue".into(),
                AMQPValue::LongString(source_queue.as_ref().into()),
            );
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers);
            self.publish(&self.dead, &source_queue, &body, props).await
        })
    }

    fn reply(&self, to: ReplyTo, body: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let mut props = json_props();
            if let Some(c) = to.correlation_id {
                props = props.with_correlation_id(c.into());
            }
            self.publish("", &to.queue, &body, props).await
        })
    }
}
