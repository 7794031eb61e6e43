//! Per-user SMS abuse limits: at most N SMS per user per window, a block after too many
//! unconfirmed codes, and a destination-country allowlist. Protects against cost and
//! SMS pumping. State is pruned periodically.

use crate::config::SmsConfig;
use dashmap::DashMap;
use std::collections::VecDeque;

/// Which limit refused an SMS (the `limit` label of `sca_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsRefusal {
    /// Too many SMS in the window.
    Window,
    /// Blocked after too many unconfirmed codes.
    Blocked,
    /// Destination country not allowed.
    Country,
}

impl SmsRefusal {
    pub fn label(self) -> &'static str {
        match self {
            SmsRefusal::Window => "sms_window",
            SmsRefusal::Blocked => "sms_unconfirmed_block",
            SmsRefusal::Country => "sms_country",
        }
    }
}

#[derive(Default)]
struct UserSms {
    sent: VecDeque<i64>,
    unconfirmed: VecDeque<i64>,
    blocked_until: i64,
}

/// The limits, keyed by user id. Times are Unix ms passed in by the caller.
pub struct SmsLimits {
    max_per_window: usize,
    window_ms: i64,
    max_unconfirmed: usize,
    unconfirmed_window_ms: i64,
    block_ms: i64,
    allowed_prefixes: Vec<String>,
    users: DashMap<Box<str>, UserSms>,
}

impl SmsLimits {
    pub fn new(cfg: &SmsConfig) -> Self {
        Self {
            max_per_window: cfg.max_per_window as usize,
            window_ms: cfg.window_seconds as i64 * 1000,
            max_unconfirmed: cfg.max_unconfirmed as usize,
            unconfirmed_window_ms: cfg.unconfirmed_window_seconds as i64 * 1000,
            block_ms: cfg.block_seconds as i64 * 1000,
            allowed_prefixes: cfg.allowed_prefixes(),
            users: DashMap::new(),
        }
    }

    /// Checks every limit and, when all pass, records the SMS as sent and unconfirmed.
    pub fn try_send(&self, user: &str, phone: &str, now: i64) -> Result<(), SmsRefusal> {
        if !self.allowed_prefixes.is_empty()
            && !self
                .allowed_prefixes
                .iter()
                .any(|p| phone.starts_with(p.as_str()))
        {
            return Err(SmsRefusal::Country);
        }
        let mut u = self.users.entry(user.into()).or_default();
        if now < u.blocked_until {
            return Err(SmsRefusal::Blocked);
        }
        self.expire(&mut u, now);
        if u.sent.len() >= self.max_per_window {
            return Err(SmsRefusal::Window);
        }
        self.count(&mut u, now);
        Ok(())
    }

    /// Records an SMS another instance sent, so the limits hold across instances.
    pub fn record_remote(&self, user: &str, at: i64) {
        let mut u = self.users.entry(user.into()).or_default();
        self.expire(&mut u, at);
        self.count(&mut u, at);
    }

    fn expire(&self, u: &mut UserSms, now: i64) {
        let (w, uw) = (self.window_ms, self.unconfirmed_window_ms);
        while u.sent.front().is_some_and(|t| now - t >= w) {
            u.sent.pop_front();
        }
        while u.unconfirmed.front().is_some_and(|t| now - t >= uw) {
            u.unconfirmed.pop_front();
        }
    }

    fn count(&self, u: &mut UserSms, now: i64) {
        u.sent.push_back(now);
        u.unconfirmed.push_back(now);
        if u.unconfirmed.len() >= self.max_unconfirmed {
            // This is the last code allowed; later ones wait out the block.
            u.blocked_until = now + self.block_ms;
            u.unconfirmed.clear();
        }
    }

    /// A code was confirmed: the user is genuine, forget their unconfirmed codes.
    pub fn confirmed(&self, user: &str) {
        if let Some(mut u) = self.users.get_mut(user) {
            u.unconfirmed.clear();
        }
    }

    /// Drops users with nothing left to remember.
    pub fn prune(&self, now: i64) {
        let horizon = self.window_ms.max(self.unconfirmed_window_ms);
        self.users.retain(|_, u| {
            now < u.blocked_until
                || u.sent.back().is_some_and(|t| now - t < horizon)
                || u.unconfirmed.back().is_some_and(|t| now - t < horizon)
        });
    }

    pub fn tracked_users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SmsLimits {
        SmsLimits::new(&SmsConfig::default())
    }

    #[test]
    fn three_per_fifteen_minutes() {
        let l = limits();
        for _ in 0..3 {
            l.try_send("u", "+393401234567", 0).unwrap();
        }
        assert_eq!(
            l.try_send("u", "+393401234567", 1000),
            Err(SmsRefusal::Window)
        );
        assert!(l.try_send("other", "+393401234567", 1000).is_ok());
        assert!(l.try_send("u", "+393401234567", 15 * 60_000).is_ok());
    }

    #[test]
    fn seven_unconfirmed_block_for_a_day() {
        let l = limits();
        let mut t = 0;
        for _ in 0..7 {
            l.try_send("u", "+393401234567", t).unwrap();
            t += 15 * 60_000;
        }
        assert_eq!(
            l.try_send("u", "+393401234567", t),
            Err(SmsRefusal::Blocked)
        );
        assert_eq!(
            l.try_send("u", "+393401234567", 6 * 15 * 60_000 + 24 * 3_600_000 - 1),
            Err(SmsRefusal::Blocked)
        );
        assert!(l
            .try_send("u", "+393401234567", 6 * 15 * 60_000 + 24 * 3_600_000)
            .is_ok());
    }

    #[test]
    fn confirmation_resets_the_unconfirmed_count() {
        let l = limits();
        let mut t = 0;
        for _ in 0..20 {
            l.try_send("u", "+393401234567", t).unwrap();
            l.confirmed("u");
            t += 15 * 60_000;
        }
    }

    #[test]
    fn sms_sent_elsewhere_count_here() {
        let l = limits();
        l.record_remote("u", 0);
        l.record_remote("u", 1);
        l.try_send("u", "+393401234567", 2).unwrap();
        assert_eq!(l.try_send("u", "+393401234567", 3), Err(SmsRefusal::Window));
    }

    #[test]
    fn country_allowlist() {
        let cfg = SmsConfig {
            allowed_country_prefixes: "+39, +355".into(),
            ..Default::default()
        };
        let l = SmsLimits::new(&cfg);
        assert!(l.try_send("u", "+393401234567", 0).is_ok());
        assert!(l.try_send("v", "+355691234567", 0).is_ok());
        assert_eq!(
            l.try_send("w", "+447911123456", 0),
            Err(SmsRefusal::Country)
        );
    }

    #[test]
    fn prune_forgets_idle_users() {
        let l = limits();
        l.try_send("u", "+393401234567", 0).unwrap();
        l.prune(1000);
        assert_eq!(l.tracked_users(), 1);
        l.prune(24 * 3_600_000 + 1);
        assert_eq!(l.tracked_users(), 0);
    }
}
