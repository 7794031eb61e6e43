//! The one wall clock the daemon reads: Unix milliseconds. Challenge expiries and
//! `created_at` are wall-clock instants, so the engine and every push transport compare
//! against this same function (simulators keep their own).

/// Wall-clock Unix milliseconds; 0 if the system clock is set before 1970.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_unix_milliseconds() {
        let chrono_now = chrono::Utc::now().timestamp_millis();
        let ours = super::now_ms();
        // Both read the same system clock: within a minute of each other, in ms.
        assert!((ours - chrono_now).abs() < 60_000, "{ours} vs {chrono_now}");
    }
}
