//! Latency recording in HDR histograms (microseconds, 1 µs to 1 h, 3 significant
//! digits): a whole-run histogram and a per-second one per stage, in fixed memory
//! whatever the run's length.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

const MAX_US: u64 = 3_600_000_000;

/// The stages a challenge goes through, as measured by the load tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Challenge published (confirm awaited) → first push seen by a simulator.
    PublishToPush,
    /// Push seen → the device's decision (or SMS code) answered by the daemon; includes
    /// the configured decision delay.
    PushToDecision,
    /// Decision sent → outcome read from the broker.
    DecisionToOutcome,
    /// Challenge published → outcome read.
    PublishToOutcome,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::PublishToPush,
        Stage::PushToDecision,
        Stage::DecisionToOutcome,
        Stage::PublishToOutcome,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::PublishToPush => "publish_to_push",
            Stage::PushToDecision => "push_to_decision",
            Stage::DecisionToOutcome => "decision_to_outcome",
            Stage::PublishToOutcome => "publish_to_outcome",
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // Bounds are constants known to be valid.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stage: the whole run and the current second.
pub struct Recorder {
    total: Mutex<Histogram<u64>>,
    second: Mutex<Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            total: Mutex::new(new_hist()),
            second: Mutex::new(new_hist()),
        }
    }
}

impl Recorder {
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros().min(MAX_US as u128) as u64).max(1);
        lock(&self.total).saturating_record(us);
        lock(&self.second).saturating_record(us);
    }

    /// The current second's figures; starts a new second.
    pub fn take_second(&self) -> Summary {
        let mut h = lock(&self.second);
        let s = Summary::of(&h);
        h.reset();
        s
    }

    /// The whole run so far.
    pub fn total(&self) -> Summary {
        Summary::of(&lock(&self.total))
    }
}

/// The four stages of a run.
#[derive(Default)]
pub struct Latencies {
    pub publish_to_push: Recorder,
    pub push_to_decision: Recorder,
    pub decision_to_outcome: Recorder,
    pub publish_to_outcome: Recorder,
}

impl Latencies {
    pub fn get(&self, s: Stage) -> &Recorder {
        match s {
            Stage::PublishToPush => &self.publish_to_push,
            Stage::PushToDecision => &self.push_to_decision,
            Stage::DecisionToOutcome => &self.decision_to_outcome,
            Stage::PublishToOutcome => &self.publish_to_outcome,
        }
    }
}

/// Count and percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50/p99 ms`, or `-` without samples.
    pub fn short(&self) -> String {
        if self.count == 0 {
            "-".into()
        } else {
            format!("{:.1}/{:.1}", self.p50_ms, self.p99_ms)
        }
    }

    pub fn to_json(&self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "count": self.count,
            "p50_ms": r(self.p50_ms),
            "p90_ms": r(self.p90_ms),
            "p99_ms": r(self.p99_ms),
            "p999_ms": r(self.p999_ms),
            "max_ms": r(self.max_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let r = Recorder::default();
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.total();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn a_second_is_taken_and_restarts_while_the_total_keeps_everything() {
        let r = Recorder::default();
        r.record(Duration::from_millis(5));
        assert_eq!(r.take_second().count, 1);
        assert_eq!(r.take_second(), Summary::default());
        r.record(Duration::from_millis(7));
        assert_eq!(r.total().count, 2);
        assert_eq!(Summary::default().short(), "-");
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let r = Recorder::default();
        r.record(Duration::ZERO);
        r.record(Duration::from_secs(100_000));
        let s = r.total();
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 3_500_000.0, "{s:?}");
    }
}
