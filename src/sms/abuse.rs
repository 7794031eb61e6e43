//! SMS abuse limits: at most N SMS per user per window, a block after too many
//! unconfirmed codes, at most M SMS per phone number per window whichever users ask (many
//! user ids behind one number is SMS pumping), a global per-instance rate cap, and a
//! destination-prefix allowlist. Protects against cost and SMS pumping. State is pruned
//! periodically; the phone table holds at most the numbers texted within one window,
//! which the global cap bounds (`max_per_minute_global` × window minutes).

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
    /// Too many SMS to this phone number in the window (whichever users asked).
    PhoneWindow,
    /// The instance's global SMS rate cap is reached.
    GlobalRate,
}

impl SmsRefusal {
    pub fn label(self) -> &'static str {
        match self {
            SmsRefusal::Window => "sms_window",
            SmsRefusal::Blocked => "sms_unconfirmed_block",
            SmsRefusal::Country => "sms_country",
            SmsRefusal::PhoneWindow => "sms_phone_window",
            SmsRefusal::GlobalRate => "sms_global_rate",
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
    max_per_phone: usize,
    phones: DashMap<Box<str>, VecDeque<i64>>,
    max_per_minute_global: usize,
    /// Send times within the last minute, at most `max_per_minute_global` of them.
    global: std::sync::Mutex<VecDeque<i64>>,
}

const MINUTE_MS: i64 = 60_000;

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
            max_per_phone: cfg.max_per_phone_per_window as usize,
            phones: DashMap::new(),
            max_per_minute_global: cfg.max_per_minute_global as usize,
            global: std::sync::Mutex::new(VecDeque::new()),
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
        // Lock order: user entry, then phone entry, then the global window.
        let mut p = self.phones.entry(phone.into()).or_default();
        while p.front().is_some_and(|t| now - t >= self.window_ms) {
            p.pop_front();
        }
        if p.len() >= self.max_per_phone {
            return Err(SmsRefusal::PhoneWindow);
        }
        {
            let mut g = self.global.lock().unwrap_or_else(|e| e.into_inner());
            while g.front().is_some_and(|t| now - t >= MINUTE_MS) {
                g.pop_front();
            }
            if g.len() >= self.max_per_minute_global {
                return Err(SmsRefusal::GlobalRate);
            }
            g.push_back(now);
        }
        p.push_back(now);
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

    /// Drops users and phone numbers with nothing left to remember.
    pub fn prune(&self, now: i64) {
        let horizon = self.window_ms.max(self.unconfirmed_window_ms);
        self.users.retain(|_, u| {
            now < u.blocked_until
                || u.sent.back().is_some_and(|t| now - t < horizon)
                || u.unconfirmed.back().is_some_and(|t| now - t < horizon)
        });
        self.phones
            .retain(|_, p| p.back().is_some_and(|t| now - t < self.window_ms));
    }

    pub fn tracked_users(&self) -> usize {
        self.users.len()
    }

    pub fn tracked_phones(&self) -> usize {
        self.phones.len()
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
        // Another user is not held by u's count (on a number of their own: the same
        // number is held by the per-number limit, see below).
        assert!(l.try_send("other", "+393409999999", 1000).is_ok());
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
    fn one_number_behind_many_users_is_limited() {
        let l = limits();
        for u in ["a", "b", "c"] {
            l.try_send(u, "+393401234567", 0).unwrap();
        }
        assert_eq!(
            l.try_send("d", "+393401234567", 1000),
            Err(SmsRefusal::PhoneWindow)
        );
        // A refusal by the phone limit does not count against the user.
        assert!(l.try_send("d", "+393409999999", 1000).is_ok());
        assert!(l.try_send("e", "+393401234567", 15 * 60_000).is_ok());
        assert_eq!(SmsRefusal::PhoneWindow.label(), "sms_phone_window");
    }

    #[test]
    fn global_cap_per_minute() {
        let cfg = SmsConfig {
            max_per_minute_global: 5,
            ..Default::default()
        };
        let l = SmsLimits::new(&cfg);
        for i in 0..5 {
            l.try_send(&format!("u{i}"), &format!("+3934000000{i}"), i)
                .unwrap();
        }
        assert_eq!(
            l.try_send("u9", "+393400000009", 59_999),
            Err(SmsRefusal::GlobalRate)
        );
        // A minute after the first, one slot is free again.
        assert!(l.try_send("u9", "+393400000009", 60_000).is_ok());
        assert_eq!(
            l.try_send("u8", "+393400000008", 60_000),
            Err(SmsRefusal::GlobalRate)
        );
        assert_eq!(SmsRefusal::GlobalRate.label(), "sms_global_rate");
    }

    #[test]
    fn a_refused_sms_counts_nowhere() {
        let cfg = SmsConfig {
            max_per_minute_global: 1,
            ..Default::default()
        };
        let l = SmsLimits::new(&cfg);
        l.try_send("u", "+393400000001", 0).unwrap();
        for _ in 0..10 {
            assert_eq!(
                l.try_send("v", "+393400000002", 1),
                Err(SmsRefusal::GlobalRate)
            );
        }
        // Neither v nor its number used up a slot of their own windows.
        assert!(l.try_send("v", "+393400000002", 60_000).is_ok());
        assert!(l.try_send("v", "+393400000002", 120_000).is_ok());
        assert!(l.try_send("v", "+393400000002", 180_000).is_ok());
        assert_eq!(
            l.try_send("v", "+393400000002", 240_000),
            Err(SmsRefusal::Window)
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
        assert_eq!(l.tracked_phones(), 0);
    }
}
