//! Publishing outcomes, events, dead letters and replies: persistent, mandatory, with
//! publisher confirms, through a bounded window.
//!
//! What each kind of message is owed:
//! - **Outcomes and dead letters** are retried until the broker confirms them *and* a
//!   queue took them: one returned as unroutable (no queue bound to the exchange) is
//!   counted in `sca_amqp_unroutable_total` and retried with backoff, so the challenge's
//!   delivery stays unacked until someone can read its outcome. Failures (broker gone,
//!   nack, channel closed) are retried on the next channel or connection until the daemon
//!   is stopped.
//! - **Events** are retried the same way across reconnects, but a few failures in a row on
//!   a live connection (a channel error each time) give up: lost events are counted in
//!   `sca_amqp_events_lost_total`. One nobody is bound to is counted as unroutable and
//!   dropped.
//! - **Replies** (`reply_to`) are best effort: they take no slot of the window, run beside
//!   the outcome rather than before it, and a reply queue that nacks (full with
//!   `x-overflow = reject-publish`) or does not exist is retried a bounded number of times,
//!   then dropped and counted in `sca_amqp_replies_dropped_total`.
//!
//! Every publish in progress is counted so that shutdown can [`AmqpPublisher::drain`]
//! them.

use crate::config::AmqpConfig;
use crate::engine::sink::{OutcomeSink, ReplyTo};
use crate::push::BoxFuture;
use crate::telemetry as t;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore, TryAcquireError};

/// Attempts for one reply before it is dropped.
const REPLY_ATTEMPTS: u32 = 4;
/// Replies being published at once; beyond, a reply is dropped at once.
const REPLIES_IN_FLIGHT: usize = 512;
/// Failed attempts in a row, with the connection up, after which an event is given up.
const EVENT_ATTEMPTS: u32 = 5;

/// The two confirm-mode publishing channels of one connection: outcomes and dead
/// letters, which are owed a queue, on one; events and replies, which may be unroutable,
/// on the other. lapin hands a `basic.return` to whichever confirm of a multiple-ack it
/// resolves first, not to the returned message's own: on one shared channel the return of
/// an event nobody is bound to (every `challenge.dispatched` where nobody reads
/// `sca.events`) made a routed outcome look unroutable, and it was published twice.
#[derive(Clone)]
pub struct Channels {
    pub owed: Channel,
    pub best_effort: Channel,
}

impl Channels {
    fn for_kind(&self, kind: Kind) -> &Channel {
        if kind.needs_a_queue() {
            &self.owed
        } else {
            &self.best_effort
        }
    }
}

/// The confirm-mode publishing channels of the current connection, if any.
pub struct AmqpPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    outcomes: String,
    events: String,
    dead: String,
    channel: watch::Sender<Option<Channels>>,
    window: Semaphore,
    replies: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    /// Publishes in progress (all kinds), for the drain at shutdown.
    pending: AtomicUsize,
    drained: Notify,
}

enum Sent {
    Confirmed,
    Unroutable,
}

/// How a kind of message is retried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Outcome,
    DeadLetter,
    Event,
    Reply,
}

impl Kind {
    /// Unroutable is not good enough: retry until a queue takes it.
    fn needs_a_queue(self) -> bool {
        matches!(self, Kind::Outcome | Kind::DeadLetter)
    }
    /// Failed attempts after which it is given up (`None`: never, until stopped).
    fn max_failures(self) -> Option<u32> {
        match self {
            Kind::Outcome | Kind::DeadLetter => None,
            Kind::Event => Some(EVENT_ATTEMPTS),
            Kind::Reply => Some(REPLY_ATTEMPTS),
        }
    }
    fn uses_window(self) -> bool {
        self != Kind::Reply
    }
}

/// Counts a publish in progress until dropped.
struct Pending<'a>(&'a Inner);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl AmqpPublisher {
    /// `stop` turns true when publishes still failing should be given up.
    pub fn new(cfg: &AmqpConfig, stop: watch::Receiver<bool>) -> Self {
        Self {
            inner: Arc::new(Inner {
                outcomes: cfg.outcomes_exchange.clone(),
                events: cfg.events_exchange.clone(),
                dead: cfg.dead_exchange.clone(),
                channel: watch::channel(None).0,
                window: Semaphore::new(cfg.publish_window as usize),
                replies: Arc::new(Semaphore::new(REPLIES_IN_FLIGHT)),
                stop,
                pending: AtomicUsize::new(0),
                drained: Notify::new(),
            }),
        }
    }

    pub(crate) fn set_channel(&self, ch: Option<Channels>) {
        self.inner.channel.send_replace(ch);
    }

    /// Publishes in progress (outcomes, events, dead letters, replies).
    pub fn in_progress(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits until no publish is in progress, or `deadline` passes; returns how many are
    /// left. Shutdown awaits this after the engine's drain so that events published just
    /// before it (an `sms.sent`, a `device.token_invalid`) reach the broker as outcomes do.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.inner.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left = self.in_progress();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.in_progress();
            }
        }
    }

    /// Publishes `reply` beside the caller's work: never awaited by an outcome, never
    /// holding a window slot; dropped (and counted) when too many are in progress.
    fn reply_detached(&self, to: ReplyTo, body: Vec<u8>) {
        let Ok(slot) = self.inner.replies.clone().try_acquire_owned() else {
            metrics::counter!(t::AMQP_REPLIES_DROPPED, "reason" => "too_many").increment(1);
            return;
        };
        let inner = self.inner.clone();
        // Counted before the spawn so that a drain right after sees it.
        inner.pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _pending = Pending(&inner);
            inner.reply(to, body).await;
            drop(slot);
        });
    }
}

impl Inner {
    async fn once(
        &self,
        kind: Kind,
        exchange: &str,
        rk: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<Sent, String> {
        // The usual case first: the channel is up, so nothing is waited for (no
        // subscription, no select over two watches).
        let current = self
            .channel
            .borrow()
            .as_ref()
            .map(|c| c.for_kind(kind))
            .filter(|c| c.status().connected())
            .cloned();
        let ch = if let Some(ch) = current {
            ch
        } else {
            let mut rx = self.channel.subscribe();
            let mut stop = self.stop.clone();
            tokio::select! {
                r = rx.wait_for(|c| c.as_ref().is_some_and(|c| c.for_kind(kind).status().connected())) => {
                    r.map_err(|e| e.to_string())?
                        .as_ref()
                        .map(|c| c.for_kind(kind).clone())
                        .ok_or("no channel")?
                }
                _ = super::until_true(&mut stop) => return Err("stopping".into()),
            }
        };
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = ch
            .basic_publish(exchange.into(), rk.into(), opts, body, props)
            .await
            .map_err(|e| e.to_string())?;
        match confirm.await.map_err(|e| e.to_string())? {
            Confirmation::Ack(Some(_returned)) => Ok(Sent::Unroutable),
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Sent::Confirmed),
            Confirmation::Nack(_) => Err("nacked by the broker".into()),
        }
    }

    /// Publishes as `kind` is owed (see the module doc). `true` once confirmed (for
    /// outcomes and dead letters: and routed); `false` when stopped first or given up.
    async fn publish(
        &self,
        kind: Kind,
        exchange: &str,
        rk: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> bool {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let _pending = Pending(self);
        let mut attempt = 0;
        let mut failures = 0;
        let mut warned = false;
        loop {
            let sent = if kind.uses_window() {
                // The window bounds publishes awaiting a confirm, not retries waiting out
                // their backoff: the permit is held for one attempt only.
                // A free permit is taken without the wait's future (permits go to queued
                // waiters first, so this never jumps the queue).
                let _permit = match self.window.try_acquire() {
                    Ok(p) => p,
                    Err(TryAcquireError::Closed) => return false,
                    Err(TryAcquireError::NoPermits) => match self.window.acquire().await {
                        Ok(p) => p,
                        Err(_) => return false,
                    },
                };
                self.once(kind, exchange, rk, body, props.clone()).await
            } else {
                self.once(kind, exchange, rk, body, props.clone()).await
            };
            match sent {
                Ok(Sent::Confirmed) => return true,
                Ok(Sent::Unroutable) => {
                    metrics::counter!(t::AMQP_UNROUTABLE, "exchange" => exchange.to_string())
                        .increment(1);
                    if !kind.needs_a_queue() {
                        tracing::debug!(
                            exchange,
                            routing_key = rk,
                            "published message was unroutable; dropped"
                        );
                        if kind == Kind::Reply {
                            metrics::counter!(t::AMQP_REPLIES_DROPPED, "reason" => "unroutable")
                                .increment(1);
                        }
                        return kind == Kind::Event;
                    }
                    // Once per message: thousands of stuck outcomes must not flood the log
                    // (the counter and its alert carry the rest).
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            exchange,
                            routing_key = rk,
                            "no queue is bound to take this message; retrying until one is"
                        );
                    }
                }
                Err(e) => {
                    if *self.stop.borrow() {
                        tracing::warn!(
                            exchange,
                            routing_key = rk,
                            "giving up publish at shutdown: {e}"
                        );
                        if kind == Kind::Event {
                            metrics::counter!(t::AMQP_EVENTS_LOST).increment(1);
                        }
                        return false;
                    }
                    metrics::counter!(t::PUBLISH_FAILURES).increment(1);
                    failures += 1;
                    if kind.max_failures().is_some_and(|m| failures >= m) {
                        match kind {
                            Kind::Event => {
                                metrics::counter!(t::AMQP_EVENTS_LOST).increment(1);
                                tracing::warn!(routing_key = rk, "event given up: {e}");
                            }
                            _ => {
                                metrics::counter!(t::AMQP_REPLIES_DROPPED, "reason" => "refused")
                                    .increment(1);
                                tracing::debug!(queue = rk, "reply given up: {e}");
                            }
                        }
                        return false;
                    }
                    tracing::debug!(exchange, routing_key = rk, "publish failed, retrying: {e}");
                }
            }
            let d =
                crate::retry::backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            attempt += 1;
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = super::until_true(&mut stop) => {}
            }
        }
    }

    async fn reply(&self, to: ReplyTo, body: Vec<u8>) -> bool {
        let mut props = json_props();
        if let Some(c) = to.correlation_id {
            props = props.with_correlation_id(c.into());
        }
        self.publish(Kind::Reply, "", &to.queue, &body, props).await
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
                // A full or vanished reply queue must not hold the outcome back.
                self.reply_detached(r, body.clone());
            }
            let i = &self.inner;
            i.publish(
                Kind::Outcome,
                &i.outcomes,
                &routing_key,
                &body,
                json_props(),
            )
            .await
        })
    }

    fn publish_event(&self, routing_key: &'static str, body: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let i = &self.inner;
            i.publish(Kind::Event, &i.events, routing_key, &body, json_props())
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
            let i = &self.inner;
            i.publish(Kind::DeadLetter, &i.dead, &source_queue, &body, props)
                .await
        })
    }

    fn reply(&self, to: ReplyTo, body: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let Ok(_slot) = self.inner.replies.try_acquire() else {
                metrics::counter!(t::AMQP_REPLIES_DROPPED, "reason" => "too_many").increment(1);
                return false;
            };
            self.inner.reply(to, body).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_kind_is_owed() {
        assert!(Kind::Outcome.needs_a_queue() && Kind::DeadLetter.needs_a_queue());
        assert!(!Kind::Event.needs_a_queue() && !Kind::Reply.needs_a_queue());
        assert_eq!(Kind::Outcome.max_failures(), None);
        assert_eq!(Kind::Event.max_failures(), Some(EVENT_ATTEMPTS));
        assert_eq!(Kind::Reply.max_failures(), Some(REPLY_ATTEMPTS));
        assert!(!Kind::Reply.uses_window() && Kind::Outcome.uses_window());
    }

    #[tokio::test]
    async fn drain_with_nothing_in_progress_returns_at_once() {
        let (_tx, rx) = watch::channel(false);
        let p = AmqpPublisher::new(&AmqpConfig::default(), rx);
        assert_eq!(p.drain(Duration::from_secs(60)).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_a_publish_in_progress_and_reports_it_left() {
        // No channel ever comes: the event's publish stays in progress.
        let (_tx, rx) = watch::channel(false);
        let p = Arc::new(AmqpPublisher::new(&AmqpConfig::default(), rx));
        let q = p.clone();
        let task = tokio::spawn(async move { q.publish_event("sms.sent", b"{}".to_vec()).await });
        tokio::task::yield_now().await;
        assert_eq!(p.in_progress(), 1);
        assert_eq!(p.drain(Duration::from_secs(3)).await, 1);
        task.abort();
        let _ = task.await;
        assert_eq!(
            p.in_progress(),
            0,
            "a cancelled publish is no longer counted"
        );
        assert_eq!(p.drain(Duration::from_secs(3)).await, 0);
    }
}
