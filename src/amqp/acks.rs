//! Settling deliveries. Every delivery is settled exactly once, through the [`AckHandle`]
//! it came with; one batcher task per consumer channel turns those settlements into as
//! few AMQP frames as possible: contiguous tags are acked with one `multiple` ack, the
//! rest singly (pipelined, never awaited one by one per message).

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug)]
pub(crate) enum AckOp {
    Ack(u64),
    Reject(u64),
    /// Return to the queue (the quorum queue counts the delivery).
    Requeue(u64),
    /// Send everything settled so far, then answer (before the channel is closed).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Asks a batcher to send what is settled and waits (bounded) for it: used right before
/// a connection is closed, so a decided challenge is not redelivered.
pub(crate) async fn flush(tx: &mpsc::UnboundedSender<AckOp>) {
    let (done, wait) = tokio::sync::oneshot::channel();
    if tx.send(AckOp::Flush(done)).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
    }
}

/// The right to settle one delivery. Dropping it without settling leaves the delivery
/// unacked: RabbitMQ redelivers it when the channel closes.
#[derive(Debug)]
pub struct AckHandle {
    tx: mpsc::UnboundedSender<AckOp>,
    tag: u64,
}

impl AckHandle {
    pub(crate) fn new(tx: mpsc::UnboundedSender<AckOp>, tag: u64) -> Self {
        Self { tx, tag }
    }

    /// Acknowledge: the broker forgets the message. A closed channel is fine: the
    /// message will be redelivered and deduplicated by challenge id.
    pub fn ack(self) {
        let _ = self.tx.send(AckOp::Ack(self.tag));
    }

    /// Reject without requeue (dead-letters through the queue's DLX).
    pub fn reject(self) {
        let _ = self.tx.send(AckOp::Reject(self.tag));
    }

    /// Put the message back on its queue, to be delivered again.
    pub fn requeue(self) {
        let _ = self.tx.send(AckOp::Requeue(self.tag));
    }
}

/// How often pending acks are flushed at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Flush early once this many settlements are pending.
const FLUSH_AT: usize = 256;

/// Runs until every sender is gone or the channel fails.
pub(crate) async fn run_batcher(channel: Channel, mut rx: mpsc::UnboundedReceiver<AckOp>) {
    let mut state = AckState::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { break };
                if let Err(e) = state.take(&channel, op).await {
                    tracing::debug!("ack channel closed: {e}");
                    return;
                }
                while state.pending() < FLUSH_AT {
                    match rx.try_recv() {
                        Ok(op) => if let Err(e) = state.take(&channel, op).await {
                            tracing::debug!("ack channel closed: {e}");
                            return;
                        },
                        Err(_) => break,
                    }
                }
                if state.pending() >= FLUSH_AT && state.flush(&channel).await.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                if state.pending() > 0 && state.flush(&channel).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = state.flush(&channel).await;
}

/// The bookkeeping, separate from I/O so it can be tested.
#[derive(Default)]
pub(crate) struct AckState {
    /// Lowest tag not yet known to be settled (delivery tags start at 1).
    next: u64,
    /// Settled but not yet acked.
    settled: BTreeSet<u64>,
    /// Already settled on the wire (single ack or reject), above `next`.
    done: BTreeSet<u64>,
}

/// What one flush sends.
#[derive(Debug, PartialEq, Eq, Default)]
pub(crate) struct Flush {
    pub multiple: Option<u64>,
    pub singles: Vec<u64>,
}

impl AckState {
    fn pending(&self) -> usize {
        self.settled.len()
    }

    async fn take(&mut self, channel: &Channel, op: AckOp) -> lapin::Result<()> {
        match op {
            AckOp::Ack(t) => {
                self.settled.insert(t);
            }
            AckOp::Reject(t) => {
                // Rejects go out at once so no later multiple-ack can cover them.
                channel
                    .basic_reject(t, BasicRejectOptions { requeue: false })
                    .await?;
                self.mark_done(t);
            }
            AckOp::Requeue(t) => {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                channel.basic_nack(t, requeue).await?;
                self.mark_done(t);
            }
            AckOp::Flush(done) => {
                self.flush(channel).await?;
                let _ = done.send(());
            }
        }
        Ok(())
    }

    fn mark_done(&mut self, t: u64) {
        self.done.insert(t);
    }

    /// Computes the frames for the current state and records them as sent.
    pub(crate) fn plan(&mut self) -> Flush {
        if self.next == 0 {
            self.next = 1;
        }
        let mut multiple = None;
        loop {
            if self.settled.remove(&self.next) {
                multiple = Some(self.next);
            } else if !self.done.remove(&self.next) {
                break;
            }
            self.next += 1;
        }
        // Out-of-order settlements are acked singly so they do not hold prefetch slots
        // while an older challenge is still undecided.
        let singles: Vec<u64> = std::mem::take(&mut self.settled).into_iter().collect();
        self.done.extend(singles.iter().copied());
        Flush { multiple, singles }
    }

    async fn flush(&mut self, channel: &Channel) -> lapin::Result<()> {
        let f = self.plan();
        if let Some(t) = f.multiple {
            channel
                .basic_ack(t, BasicAckOptions { multiple: true })
                .await?;
        }
        for t in f.singles {
            channel
                .basic_ack(t, BasicAckOptions { multiple: false })
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_tags_become_one_multiple_ack() {
        let mut s = AckState::default();
        s.settled.extend([1, 2, 3]);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: Some(3),
                singles: vec![]
            }
        );
        s.settled.extend([4, 6]);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: Some(4),
                singles: vec![6]
            }
        );
        // 5 closes the gap; 6 was already acked singly and must not be acked again.
        s.settled.insert(5);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: Some(5),
                singles: vec![]
            }
        );
        s.settled.insert(7);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: Some(7),
                singles: vec![]
            }
        );
    }

    #[test]
    fn rejected_tags_are_skipped_by_the_multiple_ack() {
        let mut s = AckState::default();
        s.mark_done(1);
        s.settled.insert(2);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: Some(2),
                singles: vec![]
            }
        );
        s.mark_done(3);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: None,
                singles: vec![]
            }
        );
        s.settled.insert(4);
        assert_eq!(
            s.plan(),
            Flush {
                multiple: Some(4),
                singles: vec![]
            }
        );
    }
}
