//! One timer service for every challenge: a min-heap of (deadline, challenge id) served
//! by one task, instead of a sleeping task per challenge. Stale entries are harmless: a
//! tick only acts on what is due at that moment.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Deadlines (Unix ms) with the challenge to tick, earliest first.
type Heap = BinaryHeap<Reverse<(i64, Arc<str>)>>;

#[derive(Default)]
pub struct Timers {
    heap: Mutex<Heap>,
    wake: Notify,
}

impl Timers {
    /// Asks for a tick of `id` at `at_ms` (Unix ms).
    pub fn arm(&self, id: &Arc<str>, at_ms: i64) {
        let mut heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = heap.peek().is_none_or(|Reverse((t, _))| at_ms < *t);
        heap.push(Reverse((at_ms, id.clone())));
        drop(heap);
        if earlier {
            self.wake.notify_one();
        }
    }

    /// Pops everything due at `now`; returns the next deadline, if any.
    pub fn due(&self, now: i64, out: &mut Vec<Arc<str>>) -> Option<i64> {
        let mut heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Reverse((t, _))) = heap.peek() {
            if *t > now || out.len() >= 4096 {
                break;
            }
            if let Some(Reverse((_, id))) = heap.pop() {
                out.push(id);
            }
        }
        heap.peek().map(|Reverse((t, _))| *t)
    }

    pub fn len(&self) -> usize {
        self.heap.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `deadline` (Unix ms) or an earlier timer is armed.
    pub async fn sleep(&self, next: Option<i64>, now: i64) {
        match next {
            Some(t) => {
                let d = std::time::Duration::from_millis((t - now).max(0) as u64);
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = self.wake.notified() => {}
                }
            }
            None => self.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order() {
        let t = Timers::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        t.arm(&a, 30);
        t.arm(&b, 10);
        let mut out = vec![];
        assert_eq!(t.due(5, &mut out), Some(10));
        assert!(out.is_empty());
        assert_eq!(t.due(20, &mut out), Some(30));
        assert_eq!(out, vec![b.clone()]);
        out.clear();
        assert_eq!(t.due(30, &mut out), None);
        assert_eq!(out, vec![a]);
    }
}
