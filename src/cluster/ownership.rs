//! The partitions this instance holds right now, each with a fencing epoch. A claim
//! gets a fresh epoch; every challenge taken from a partition remembers the epoch it came
//! under; losing the partition (connection or consumer gone, handed over) sets its epoch
//! to 0 at once, so whatever still holds the old epoch — a publish retrying, a challenge
//! in the table — can tell it must no longer act.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// A partition and the epoch of the claim a delivery came under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: u16,
    pub epoch: u64,
}

/// Claims held by this instance.
#[derive(Debug, Default)]
pub struct Ownership {
    epochs: Box<[AtomicU64]>,
    next: AtomicU64,
    changed: Notify,
}

impl Ownership {
    pub fn new(partitions: usize) -> Ownership {
        Ownership {
            epochs: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(1),
            changed: Notify::new(),
        }
    }

    pub fn partitions(&self) -> usize {
        self.epochs.len()
    }

    /// Records a new claim on `index` and returns its epoch.
    pub fn claim(&self, index: usize) -> Part {
        let epoch = self.next.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.epochs.get(index) {
            e.store(epoch, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
        Part {
            index: index as u16,
            epoch,
        }
    }

    /// The claim on `index` is gone. Returns whether it was held.
    pub fn release(&self, index: usize) -> bool {
        let was = self
            .epochs
            .get(index)
            .map(|e| e.swap(0, Ordering::SeqCst))
            .unwrap_or(0);
        self.changed.notify_waiters();
        was != 0
    }

    /// Drops every claim (the connection is gone).
    pub fn release_all(&self) -> Vec<usize> {
        (0..self.epochs.len())
            .filter(|&i| self.release(i))
            .collect()
    }

    /// True while `part`'s claim is the current one.
    pub fn holds(&self, part: Part) -> bool {
        part.epoch != 0
            && self
                .epochs
                .get(part.index as usize)
                .is_some_and(|e| e.load(Ordering::SeqCst) == part.epoch)
    }

    pub fn owns(&self, index: usize) -> bool {
        self.epochs
            .get(index)
            .is_some_and(|e| e.load(Ordering::SeqCst) != 0)
    }

    /// The partitions held now, in order.
    pub fn owned(&self) -> Vec<u16> {
        (0..self.epochs.len())
            .filter(|&i| self.owns(i))
            .map(|i| i as u16)
            .collect()
    }

    /// Resolves once no partition is held.
    pub async fn released_all(&self) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.owned().is_empty() {
                return;
            }
            n.await;
        }
    }

    /// Resolves once `part`'s claim is no longer the current one.
    pub async fn lost(&self, part: Part) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.holds(part) {
                return;
            }
            n.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_claim_fences_the_old_one() {
        let o = Ownership::new(4);
        let a = o.claim(2);
        assert!(o.holds(a) && o.owns(2));
        assert_eq!(o.owned(), vec![2]);
        assert!(o.release(2));
        assert!(!o.holds(a) && !o.owns(2));
        let b = o.claim(2);
        assert!(o.holds(b) && !o.holds(a), "the old epoch stays fenced");
        assert_eq!(o.release_all(), vec![2]);
        assert!(!o.holds(b));
        assert!(!o.holds(Part { index: 9, epoch: 1 }), "out of range");
    }

    #[tokio::test]
    async fn lost_resolves_on_release() {
        let o = std::sync::Arc::new(Ownership::new(1));
        let p = o.claim(0);
        let w = {
            let o = o.clone();
            tokio::spawn(async move { o.lost(p).await })
        };
        tokio::task::yield_now().await;
        assert!(!w.is_finished());
        o.release(0);
        w.await.unwrap();
    }
}
