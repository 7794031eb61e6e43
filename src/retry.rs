//! Retry timing shared by the push and SMS transports: exponential backoff with equal
//! jitter, capped, never past a deadline, and the one `Retry-After` parser both use.

use rand::Rng;
use std::time::Duration;

/// The longest `Retry-After` believed; anything longer outlives every challenge anyway.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delay before retry number `attempt` (0-based), with "equal jitter": the exponential
/// step `base·2^attempt` capped at `max`, of which the first half is always waited and the
/// second half drawn uniformly — so the delay is uniform in [step/2, step]. (Full jitter
/// would draw from [0, step]; equal jitter keeps a floor so that retries of one push never
/// come back at once.)
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

/// A `Retry-After` value (RFC 9110 §10.2.3): delta-seconds or an HTTP date, relative to
/// `now`, capped at [`MAX_RETRY_AFTER`]. A date in the past means "now" (zero); anything
/// else unreadable is `None` (the caller backs off on its own).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// The `Retry-After` header of an answer, read with [`parse_retry_after`] at the wall
/// clock's now.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, chrono::Utc::now())
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

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let cases: &[(&str, Option<Duration>)] = &[
            ("3", Some(Duration::from_secs(3))),
            (" 0 ", Some(Duration::ZERO)),
            (" 30 ", Some(Duration::from_secs(30))),
            (
                "Tue, 24 Nov 2026 08:00:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Tue, 24 Nov 2026 07:59:00 GMT", Some(Duration::ZERO)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", Some(Duration::ZERO)),
            ("999999", Some(MAX_RETRY_AFTER)),
            ("soon", None),
            ("-1", None),
            ("\u{0}", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_retry_after(v, now), *want, "{v:?}");
        }
    }

    #[test]
    fn retry_after_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }
}
