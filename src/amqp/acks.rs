//! Settling deliveries. Every delivery is settled exactly once, through the [`AckHandle`]
//! it came with; one batcher task per consumer channel turns those settlements into as
//! few AMQP frames as possible: contiguous tags are acked with one `multiple` ack a few
//! milliseconds after they are settled; a tag settled behind an older, undecided one
//! waits a little for the gap to close, then is acked singly (pipelined, never awaited
//! one by one per message). The daemon and the bare relay (`sim::relay`) share it.

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

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

/// How long after a settlement its ack goes out at the latest, when contiguous.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Flush early once this many settlements are pending.
const FLUSH_AT: usize = 256;
/// How long a settled delivery waits, behind an older one still undecided, for one
/// multiple-ack to cover both before it is acked on its own. Decisions come back out of
/// order by a few milliseconds: acking every such one singly would cost a frame (and a
/// quorum-queue command) each. Kept short: until its ack, a crash redelivers a decided
/// challenge (ARCHITECTURE.md, known limits).
const SINGLE_AFTER: Duration = Duration::from_millis(25);
/// Settled deliveries held back at most (each holds a prefetch slot); past it the oldest
/// are acked singly at once.
const HOLD_AT_MOST: usize = 2048;

/// Runs until every sender is gone or the channel fails. Sleeps while nothing is
/// pending: no timer runs on an idle channel.
pub(crate) async fn run_batcher(channel: Channel, mut rx: mpsc::UnboundedReceiver<AckOp>) {
    let mut state = AckState::default();
    // One timer, moved only when the next flush's time changes.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let wake = state.next_flush();
        if wake != armed {
            if let Some(at) = wake {
                timer.as_mut().reset(at);
            }
            armed = wake;
        }
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                if state.flush(&channel).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(op) = op else { break };
        if let Err(e) = state.take(&channel, op).await {
            tracing::debug!("ack channel closed: {e}");
            return;
        }
        while state.fresh() < FLUSH_AT {
            match rx.try_recv() {
                Ok(op) => {
                    if let Err(e) = state.take(&channel, op).await {
                        tracing::debug!("ack channel closed: {e}");
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if state.fresh() >= FLUSH_AT && state.flush(&channel).await.is_err() {
            return;
        }
    }
    let _ = state.flush_all(&channel).await;
}

/// The bookkeeping, separate from I/O so it can be tested.
#[derive(Default)]
pub(crate) struct AckState {
    /// Lowest tag not yet known to be settled (delivery tags start at 1).
    next: u64,
    /// Settled but not yet acked.
    settled: BTreeSet<u64>,
    /// Settled tags in the order they were settled, with when (some may be acked since).
    order: VecDeque<(Instant, u64)>,
    /// Settled since the last flush, from when: a flush is due [`FLUSH_EVERY`] after,
    /// or once [`FLUSH_AT`] are.
    fresh_since: Option<Instant>,
    fresh: usize,
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
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.settled.len()
    }

    /// Settled since the last flush.
    fn fresh(&self) -> usize {
        self.fresh
    }

    /// When the next flush is due: soon after a fresh settlement, or when the oldest
    /// one held back behind an undecided delivery has waited long enough. `None` when
    /// nothing is pending.
    fn next_flush(&self) -> Option<Instant> {
        let fresh = self.fresh_since.map(|at| at + FLUSH_EVERY);
        let held = self
            .order
            .iter()
            .find(|(_, t)| self.settled.contains(t))
            .map(|(at, _)| *at + SINGLE_AFTER);
        match (fresh, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn settle(&mut self, t: u64, now: Instant) {
        if self.settled.insert(t) {
            self.order.push_back((now, t));
            self.fresh_since.get_or_insert(now);
            self.fresh += 1;
        }
    }

    async fn take(&mut self, channel: &Channel, op: AckOp) -> lapin::Result<()> {
        match op {
            AckOp::Ack(t) => self.settle(t, Instant::now()),
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
                self.flush_all(channel).await?;
                let _ = done.send(());
            }
        }
        Ok(())
    }

    fn mark_done(&mut self, t: u64) {
        self.done.insert(t);
    }

    /// Computes the frames for the state at `now` and records them as sent: one
    /// multiple-ack for the tags contiguous with the last acked one; singly, those held
    /// back [`SINGLE_AFTER`] or more behind an undecided one, and the oldest past
    /// [`HOLD_AT_MOST`]; every settled tag when `all`.
    pub(crate) fn plan(&mut self, now: Instant, all: bool) -> Flush {
        if self.next == 0 {
            self.next = 1;
        }
        self.fresh_since = None;
        self.fresh = 0;
        let mut multiple = None;
        loop {
            if self.settled.remove(&self.next) {
                multiple = Some(self.next);
            } else if !self.done.remove(&self.next) {
                break;
            }
            self.next += 1;
        }
        // Out-of-order settlements are acked singly once they have waited long enough,
        // so they do not hold prefetch slots while an older challenge stays undecided.
        let mut singles = Vec::new();
        while let Some(&(at, t)) = self.order.front() {
            let due = all
                || now.saturating_duration_since(at) >= SINGLE_AFTER
                || self.settled.len() > HOLD_AT_MOST;
            if self.settled.contains(&t) && !due {
                break;
            }
            self.order.pop_front();
            if self.settled.remove(&t) {
                singles.push(t);
                self.done.insert(t);
            }
        }
        Flush { multiple, singles }
    }

    async fn flush(&mut self, channel: &Channel) -> lapin::Result<()> {
        let f = self.plan(Instant::now(), false);
        Self::send(channel, f).await
    }

    /// Everything settled goes out now (before the channel is closed).
    async fn flush_all(&mut self, channel: &Channel) -> lapin::Result<()> {
        let f = self.plan(Instant::now(), true);
        Self::send(channel, f).await
    }

    async fn send(channel: &Channel, f: Flush) -> lapin::Result<()> {
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

    fn flush(multiple: Option<u64>, singles: &[u64]) -> Flush {
        Flush {
            multiple,
            singles: singles.to_vec(),
        }
    }

    #[test]
    fn contiguous_tags_become_one_multiple_ack() {
        let t0 = Instant::now();
        let mut s = AckState::default();
        for t in [1, 2, 3] {
            s.settle(t, t0);
        }
        assert_eq!(s.plan(t0, false), flush(Some(3), &[]));
        s.settle(4, t0);
        s.settle(6, t0);
        // 6 waits behind the undecided 5 …
        assert_eq!(s.plan(t0, false), flush(Some(4), &[]));
        // … and 5 comes in time: one multiple-ack covers both.
        s.settle(5, t0 + Duration::from_millis(3));
        assert_eq!(
            s.plan(t0 + Duration::from_millis(8), false),
            flush(Some(6), &[])
        );
        assert_eq!(s.pending(), 0);
        assert_eq!(s.next_flush(), None, "nothing pending, no timer");
    }

    #[test]
    fn a_tag_held_behind_an_undecided_one_is_acked_singly_in_the_end() {
        let t0 = Instant::now();
        let mut s = AckState::default();
        s.settle(2, t0);
        assert_eq!(s.plan(t0, false), flush(None, &[]));
        assert_eq!(s.next_flush(), Some(t0 + SINGLE_AFTER));
        assert_eq!(s.plan(t0 + SINGLE_AFTER, false), flush(None, &[2]));
        // 2 was already acked singly and must not be acked again.
        s.settle(1, t0 + SINGLE_AFTER);
        s.settle(3, t0 + SINGLE_AFTER);
        assert_eq!(s.plan(t0 + SINGLE_AFTER, false), flush(Some(3), &[]));
    }

    #[test]
    fn held_back_tags_are_bounded() {
        let t0 = Instant::now();
        let mut s = AckState::default();
        for t in 2..=(HOLD_AT_MOST as u64 + 11) {
            s.settle(t, t0);
        }
        let f = s.plan(t0, false);
        assert_eq!(f.multiple, None);
        assert_eq!(f.singles, (2..=11).collect::<Vec<u64>>(), "the oldest ten");
        assert_eq!(s.pending(), HOLD_AT_MOST);
    }

    #[test]
    fn a_flush_before_closing_sends_everything_settled() {
        let t0 = Instant::now();
        let mut s = AckState::default();
        s.settle(1, t0);
        s.settle(3, t0);
        s.settle(4, t0);
        assert_eq!(s.plan(t0, true), flush(Some(1), &[3, 4]));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn rejected_tags_are_skipped_by_the_multiple_ack() {
        let t0 = Instant::now();
        let mut s = AckState::default();
        s.mark_done(1);
        s.settle(2, t0);
        assert_eq!(s.plan(t0, false), flush(Some(2), &[]));
        s.mark_done(3);
        assert_eq!(s.plan(t0, false), flush(None, &[]));
        s.settle(4, t0);
        assert_eq!(s.plan(t0, false), flush(Some(4), &[]));
    }
}
