//! Rate pacing: when the n-th challenge of a run is due. Due times are computed from the
//! run's start (not from the previous send), so a late send does not shift every later
//! one and the offered rate holds over the whole run.

use std::time::{Duration, Instant};

/// Paces a run at `rate` per second, or flat out.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    /// `rate`: challenges per second; `None` (or a rate that is not a positive number):
    /// flat out.
    pub fn new(start: Instant, rate: Option<f64>) -> Pacer {
        Pacer {
            start,
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
        }
    }

    /// The offered rate; `None` when flat out.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// When challenge `seq` (0-based) is due; `None` when flat out.
    pub fn due(&self, seq: u64) -> Option<Instant> {
        let r = self.rate?;
        let secs = seq as f64 / r;
        // Far beyond any run: saturate rather than overflow.
        let offset =
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(u32::MAX as u64));
        self.start.checked_add(offset)
    }

    /// How many challenges are due by `now` (flat out: unbounded, `u64::MAX`).
    pub fn due_by(&self, now: Instant) -> u64 {
        match self.rate {
            None => u64::MAX,
            Some(r) => {
                let n = now.saturating_duration_since(self.start).as_secs_f64() * r;
                n.floor() as u64 + 1
            }
        }
    }

    /// Waits until challenge `seq` is due (returns at once when flat out or late).
    pub async fn wait(&self, seq: u64) {
        if let Some(due) = self.due(seq) {
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate_from_the_start() {
        let t0 = Instant::now();
        let p = Pacer::new(t0, Some(300.0));
        assert_eq!(p.due(0), Some(t0));
        assert_eq!(p.due(300), Some(t0 + Duration::from_secs(1)));
        assert_eq!(p.due(150), Some(t0 + Duration::from_millis(500)));
        // 1,000 s in, the n-th send is due exactly n/rate after the start: no drift.
        assert_eq!(p.due(300_000), Some(t0 + Duration::from_secs(1000)));
    }

    #[test]
    fn due_by_counts_the_sends_owed_so_far() {
        let t0 = Instant::now();
        let p = Pacer::new(t0, Some(10.0));
        assert_eq!(p.due_by(t0), 1);
        assert_eq!(p.due_by(t0 + Duration::from_millis(999)), 10);
        assert_eq!(p.due_by(t0 + Duration::from_secs(1)), 11);
        assert_eq!(p.due_by(t0 + Duration::from_secs(60)), 601);
    }

    #[test]
    fn no_rate_or_a_bad_rate_is_flat_out() {
        let t0 = Instant::now();
        for r in [
            None,
            Some(0.0),
            Some(-5.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ] {
            let p = Pacer::new(t0, r);
            assert_eq!(p.rate(), None, "{r:?}");
            assert_eq!(p.due(1_000_000), None);
            assert_eq!(p.due_by(t0), u64::MAX);
        }
    }

    #[test]
    fn a_tiny_rate_far_out_does_not_overflow() {
        let p = Pacer::new(Instant::now(), Some(1e-12));
        let _ = p.due(u64::MAX);
    }

    #[tokio::test]
    async fn wait_does_not_return_before_the_due_time() {
        let t0 = Instant::now();
        let p = Pacer::new(t0, Some(20.0));
        p.wait(2).await;
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // A send already late does not wait.
        let p = Pacer::new(t0 - Duration::from_secs(10), Some(1.0));
        let before = Instant::now();
        p.wait(1).await;
        assert!(p.due(1).unwrap() < before);
    }
}
