//! The per-user challenge rate limit: governor's keyed GCRA limiter on dashmap, with
//! idle keys pruned periodically so memory follows active users only.

use crate::config::LimitsConfig;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

pub struct UserLimiter {
    limiter: DefaultKeyedRateLimiter<Box<str>>,
}

impl UserLimiter {
    pub fn new(cfg: &LimitsConfig) -> Self {
        let per_minute = NonZeroU32::new(cfg.challenges_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cfg.challenge_burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Self {
            limiter: RateLimiter::dashmap(quota),
        }
    }

    /// True when the user may open another challenge now.
    pub fn check(&self, user: &str) -> bool {
        // Avoid allocating a key for the common case through a borrowed lookup is not
        // offered by governor's keyed API; the allocation is small and short-lived.
        self.limiter.check_key(&Box::from(user)).is_ok()
    }

    /// Drops keys whose state equals a fresh one, then returns the keys left.
    pub fn prune(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_user() {
        let l = UserLimiter::new(&LimitsConfig {
            challenges_per_minute: 1,
            challenge_burst: 3,
            prune_interval_seconds: 60,
            ..LimitsConfig::default()
        });
        assert!((0..3).all(|_| l.check("u")));
        assert!(!l.check("u"));
        assert!(l.check("v"));
        assert_eq!(l.prune(), 2);
    }
}
