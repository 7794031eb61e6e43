//! Push-fatigue defences, per user: the mute after a fraud report (`fraud.mute_seconds`)
//! and the backoff after unanswered pushes (`limits.unanswered_backoff_seconds`, doubling
//! per unanswered challenge up to 1 h, reset by an answer or 24 h after the last
//! unanswered one). Sans-io like the rest of the core: every call takes `now` (Unix ms).
//!
//! Memory: an entry exists only for a user with a live mute or a backoff count; the
//! pruner drops it once both are over. The map holds at most [`MAX_TRACKED`] users:
//! beyond that a new backoff count is not recorded (the push goes out as it would
//! without the defence), while a mute is always recorded (fraud reports are bounded by
//! decisions, and a mute must never be lost).

use crate::config::Config;
use dashmap::DashMap;

/// Largest gap between pushes the backoff imposes.
pub const MAX_GAP_MS: i64 = 3_600_000;
/// After this long without another unanswered push, the backoff starts over.
pub const RESET_AFTER_MS: i64 = 24 * 3_600_000;
/// Users tracked at most (a few tens of MB at the worst).
pub const MAX_TRACKED: usize = 1_000_000;

/// Whether a new challenge of a user may be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// A fraud report muted the user's pushes.
    Muted,
    /// Inside the gap the unanswered pushes imposed.
    Backoff,
}

impl Gate {
    /// The outcome reason (and `sca_rate_limited_total` label) of a held-back challenge.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Gate::Open => None,
            Gate::Muted => Some("push_muted"),
            Gate::Backoff => Some("push_backoff"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct UserState {
    muted_until: i64,
    /// Consecutive challenges whose push reached the user and went unanswered.
    unanswered: u32,
    last_unanswered_at: i64,
}

impl UserState {
    fn gap_ms(&self, base_ms: i64) -> i64 {
        if self.unanswered == 0 || base_ms == 0 {
            return 0;
        }
        let doublings = (self.unanswered - 1).min(31);
        base_ms.saturating_mul(1i64 << doublings).min(MAX_GAP_MS)
    }

    fn idle(&self, now: i64) -> bool {
        self.muted_until <= now
            && (self.unanswered == 0 || now - self.last_unanswered_at >= RESET_AFTER_MS)
    }
}

/// The per-user fatigue state.
pub struct Fatigue {
    mute_ms: i64,
    base_ms: i64,
    users: DashMap<Box<str>, UserState>,
}

impl Fatigue {
    pub fn new(cfg: &Config) -> Fatigue {
        Fatigue::with(
            cfg.fraud.mute_seconds as i64 * 1000,
            cfg.limits.unanswered_backoff_seconds as i64 * 1000,
        )
    }

    pub fn with(mute_ms: i64, base_ms: i64) -> Fatigue {
        Fatigue {
            mute_ms,
            base_ms,
            users: DashMap::new(),
        }
    }

    /// May a challenge of `user` arriving at `now` be pushed?
    pub fn gate(&self, user: &str, now: i64) -> Gate {
        let Some(s) = self.users.get(user).map(|s| *s) else {
            return Gate::Open;
        };
        if s.muted_until > now {
            return Gate::Muted;
        }
        if s.unanswered > 0
            && now - s.last_unanswered_at < RESET_AFTER_MS
            && now < s.last_unanswered_at + s.gap_ms(self.base_ms)
        {
            return Gate::Backoff;
        }
        Gate::Open
    }

    /// The user reported fraud: mute their pushes until `now + fraud.mute_seconds`.
    pub fn fraud_reported(&self, user: &str, now: i64) {
        let until = now.saturating_add(self.mute_ms);
        let mut s = self.users.entry(user.into()).or_default();
        s.muted_until = s.muted_until.max(until);
    }

    /// A challenge whose push reached the user ended unanswered at `now`.
    pub fn unanswered(&self, user: &str, now: i64) {
        if self.base_ms == 0 {
            return;
        }
        if !self.users.contains_key(user) && self.users.len() >= MAX_TRACKED {
            return;
        }
        let mut s = self.users.entry(user.into()).or_default();
        if s.unanswered > 0 && now - s.last_unanswered_at >= RESET_AFTER_MS {
            s.unanswered = 0;
        }
        s.unanswered = s.unanswered.saturating_add(1);
        s.last_unanswered_at = s.last_unanswered_at.max(now);
    }

    /// The user answered a challenge: the backoff starts over (a mute stays).
    pub fn answered(&self, user: &str) {
        if let Some(mut s) = self.users.get_mut(user) {
            s.unanswered = 0;
        }
    }

    /// Drops users with neither a live mute nor a live backoff; returns those left.
    pub fn prune(&self, now: i64) -> usize {
        self.users.retain(|_, s| !s.idle(now));
        self.users.len()
    }

    /// Users tracked.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_795_462_800_000;

    #[test]
    fn the_gap_doubles_per_unanswered_push_up_to_an_hour() {
        let f = Fatigue::with(1_200_000, 10_000);
        assert_eq!(f.gate("u", T), Gate::Open);
        f.unanswered("u", T);
        assert_eq!(f.gate("u", T + 9_999), Gate::Backoff);
        assert_eq!(f.gate("u", T + 10_000), Gate::Open);
        f.unanswered("u", T + 10_000);
        assert_eq!(f.gate("u", T + 29_999), Gate::Backoff);
        assert_eq!(f.gate("u", T + 30_000), Gate::Open);
        for i in 0..20 {
            f.unanswered("u", T + 40_000 + i);
        }
        let last = T + 40_019;
        assert_eq!(f.gate("u", last + MAX_GAP_MS - 1), Gate::Backoff);
        assert_eq!(f.gate("u", last + MAX_GAP_MS), Gate::Open);
        assert_eq!(f.gate("other", T + 1), Gate::Open, "per user");
    }

    #[test]
    fn an_answer_or_a_day_resets_the_backoff() {
        let f = Fatigue::with(1_200_000, 10_000);
        f.unanswered("u", T);
        f.unanswered("u", T + 1);
        f.answered("u");
        assert_eq!(f.gate("u", T + 2), Gate::Open);
        f.unanswered("u", T + 3);
        assert_eq!(f.gate("u", T + 4), Gate::Backoff);
        // A day later the count starts over: one unanswered push is a 10 s gap again.
        let later = T + 3 + RESET_AFTER_MS;
        f.unanswered("u", later);
        assert_eq!(f.gate("u", later + 10_000), Gate::Open);
        assert_eq!(f.prune(later + RESET_AFTER_MS), 0);
    }

    #[test]
    fn a_fraud_report_mutes_until_the_window_ends_and_survives_an_answer() {
        let f = Fatigue::with(1_200_000, 10_000);
        f.fraud_reported("u", T);
        f.answered("u");
        assert_eq!(f.gate("u", T + 1_199_999), Gate::Muted);
        assert_eq!(f.prune(T + 1_199_999), 1, "a live mute is kept");
        assert_eq!(f.gate("u", T + 1_200_000), Gate::Open);
        assert_eq!(f.prune(T + 1_200_000), 0);
        assert_eq!(Gate::Muted.reason(), Some("push_muted"));
        assert_eq!(Gate::Backoff.reason(), Some("push_backoff"));
    }

    #[test]
    fn a_zero_base_turns_the_backoff_off() {
        let f = Fatigue::with(1_000, 0);
        f.unanswered("u", T);
        assert_eq!(f.gate("u", T), Gate::Open);
        assert_eq!(f.tracked(), 0);
    }
}
