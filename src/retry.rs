//! Retry timing shared by the push and SMS transports: exponential backoff with full
//! jitter, capped, and never past a deadline.

use rand::Rng;
use std::time::Duration;

/// Delay before retry number `attempt` (0-based): uniform in [base·2^attempt / 2, base·2^attempt],
/// capped at `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = exp.as_millis() as u64;
    let lo = ms / 2;
    Duration::from_millis(rand::thread_rng().gen_range(lo..=ms.max(lo)))
}

/// The delay to wait before retrying, or `None` when the deadline would pass first.
pub fn next_delay(attempt: u32, hinted: Option<Duration>, remaining: Duration) -> Option<Duration> {
    let d = hinted
        .unwrap_or_else(|| backoff(attempt, Duration::from_millis(200), Duration::from_secs(10)));
    (d < remaining).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..30 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            assert!(d <= Duration::from_secs(5));
            let full = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(5));
            assert!(d >= full / 2);
        }
    }

    #[test]
    fn never_past_the_deadline() {
        assert_eq!(
            next_delay(0, Some(Duration::from_secs(2)), Duration::from_secs(1)),
            None
        );
        assert_eq!(
            next_delay(0, Some(Duration::from_secs(1)), Duration::from_secs(2)),
            Some(Duration::from_secs(1))
        );
    }
}
