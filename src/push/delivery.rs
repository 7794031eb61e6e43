//! The one push delivery loop every provider shares. A provider implements
//! [`Transport`] — one attempt in, one classified answer out — and [`deliver`] owns
//! everything around the attempts:
//!
//! - the deadline: a challenge push is never attempted once the challenge has expired and
//!   the whole delivery ends by the expiry plus one request timeout; a withdrawal gets one
//!   attempt even after the expiry (expiry is itself a reason to withdraw), never a retry
//!   past it;
//! - retries of transient answers after the provider's `Retry-After` (parsed once, by
//!   [`crate::retry::retry_after`]) or with [`crate::retry::backoff`];
//! - renewing an auth credential the provider refused as expired, once per push, then
//!   retrying at once;
//! - the metrics: one `sca_push_requests_total{provider,app,result}` per attempt with the
//!   same `result` words for every provider ([`label`]) and the attempt's duration.

use super::{Classification, MaskedToken, PushMessage};
use crate::challenge::machine::PushResult;
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// The provider answered and the transport classified the answer. `detail` is what is
    /// worth logging about a refusal (Apple's `reason`, Google's error body); empty for a
    /// delivered push.
    Answered {
        class: Classification,
        status: u16,
        detail: Bytes,
    },
    /// The provider refused the auth credential as expired or stale: [`Transport::renew`]
    /// it and try again at once (once per push; a second refusal fails the push).
    AuthExpired,
    /// No answer within the request timeout.
    TimedOut,
    /// No answer at all (connection, protocol, or no credential could be had); retried.
    Unreachable(String),
}

/// A push that cannot be sent as built (never retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsendable {
    /// The device token itself is malformed: the provider would call it gone.
    pub token_gone: bool,
    pub reason: String,
}

/// What bounds one attempt, as instants of tokio's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The request's own end: one request timeout after the attempt began, never past
    /// the horizon.
    pub request: Instant,
    /// The delivery's end: the challenge's expiry plus one request timeout (one request
    /// timeout from the start for a late withdrawal). It bounds the waits that are not
    /// the request's: a concurrency permit, a token being taken.
    pub horizon: Instant,
}

impl Bounds {
    /// The bounds of an attempt that begins now.
    pub fn starting_now(request_timeout: Duration, horizon: Instant) -> Bounds {
        Bounds {
            request: (Instant::now() + request_timeout).min(horizon),
            horizon,
        }
    }
}

/// One provider's wire protocol. Implementations make exactly one request per
/// [`attempt`](Transport::attempt), bounded by its [`Bounds`] (a timer is only armed by
/// a wait that does not end at once), and never retry, sleep or record metrics:
/// [`deliver`] does that.
pub trait Transport: Send + Sync + 'static {
    /// Per-push state kept across attempts: the prepared request, the credential last
    /// sent (so that [`renew`](Transport::renew) replaces exactly that one).
    type Push: Send;

    /// The provider's metric label and log prefix: `apns`, `fcm`, `hms`.
    fn name(&self) -> &'static str;

    /// The per-request timeout: the delivery may end this long after the expiry.
    fn request_timeout(&self) -> Duration;

    /// Builds what every attempt sends, or says why the push can never be sent.
    fn prepare(&self, msg: &PushMessage) -> Result<Self::Push, Unsendable>;

    /// One request and its classified answer: [`Attempt::TimedOut`] once `bounds.request`
    /// passes, and nothing it waits for outlives `bounds.horizon`.
    fn attempt(
        &self,
        msg: &PushMessage,
        push: &mut Self::Push,
        bounds: Bounds,
    ) -> impl Future<Output = Attempt> + Send;

    /// Replaces the credential the last attempt used, after the provider refused it as
    /// expired. `Err` (no new credential could be had) is retried with backoff and does not
    /// use up the push's one renewal.
    fn renew(&self, push: &mut Self::Push) -> impl Future<Output = Result<(), String>> + Send;
}

/// The `result` label of `sca_push_requests_total`, the same words for every provider:
/// `delivered`, `token_gone`, `retry` (transient answer), `failed` (permanent refusal),
/// `auth_expired` (credential refused as expired, renewed), `timeout`, `error` (no
/// answer), `invalid` (not sent: the push could not be built).
pub fn label(a: &Attempt) -> &'static str {
    match a {
        Attempt::Answered { class, .. } => match class {
            Classification::Delivered => "delivered",
            Classification::TokenGone => "token_gone",
            Classification::Retry { .. } => "retry",
            Classification::Permanent => "failed",
        },
        Attempt::AuthExpired => "auth_expired",
        Attempt::TimedOut => "timeout",
        Attempt::Unreachable(_) => "error",
    }
}

/// Every value [`label`] can return, plus `invalid` (for docs and tests).
pub const LABELS: [&str; 8] = [
    "delivered",
    "token_gone",
    "retry",
    "failed",
    "auth_expired",
    "timeout",
    "error",
    "invalid",
];

/// The wall clock challenge expiries are read against: [`crate::clock::now_ms`].
pub use crate::clock::now_ms;

/// Delivers one push: resolves once it is delivered, known to be impossible, or the
/// challenge's life ran out while retrying — never later than `expires_at_ms` plus one
/// request timeout (one request timeout from now for a late withdrawal). Every wait in
/// it ends by that horizon: an attempt by its [`Bounds`], a renewal by the horizon
/// itself, a retry's pause by the expiry and the horizon. One timer per attempt, armed
/// only while the request is outstanding: the horizon is not a timer of its own around
/// the whole.
pub async fn deliver<T: Transport>(t: &T, msg: PushMessage) -> PushResult {
    let remaining = msg.remaining(now_ms());
    if remaining.is_zero() && !msg.is_withdraw() {
        tracing::info!(provider = t.name(), challenge_id = %msg.challenge_id, "push not sent: challenge expired");
        return PushResult::Failed;
    }
    let horizon = Instant::now() + remaining + t.request_timeout();
    attempts(t, &msg, horizon).await
}

async fn attempts<T: Transport>(t: &T, msg: &PushMessage, horizon: Instant) -> PushResult {
    let name = t.name();
    let masked = MaskedToken(&msg.token);
    let mut push = match t.prepare(msg) {
        Ok(p) => p,
        Err(u) => {
            crate::telemetry::record_push(name, &msg.app, "invalid", Duration::ZERO);
            tracing::warn!(
                provider = name, challenge_id = %msg.challenge_id, device_id = %msg.device_id,
                token = %masked, error = %u.reason, "push not sent"
            );
            return if u.token_gone {
                PushResult::TokenGone
            } else {
                PushResult::Failed
            };
        }
    };
    let mut attempt: u32 = 0;
    let mut renewed = false;
    loop {
        // A challenge push is only sent while the challenge lives; a withdrawal is tried
        // once even after the expiry, never retried past it.
        if (attempt > 0 || !msg.is_withdraw()) && msg.remaining(now_ms()).is_zero() {
            tracing::info!(provider = name, challenge_id = %msg.challenge_id, token = %masked, attempt, "push gave up: challenge expired");
            return PushResult::Failed;
        }
        let started = Instant::now();
        if started >= horizon {
            return gave_up(name, msg);
        }
        let bounds = Bounds::starting_now(t.request_timeout(), horizon);
        let answer = t.attempt(msg, &mut push, bounds).await;
        crate::telemetry::record_push(name, &msg.app, label(&answer), started.elapsed());
        let hint = match answer {
            Attempt::Answered {
                class,
                status,
                detail,
            } => {
                let detail = || String::from_utf8_lossy(&detail[..detail.len().min(512)]);
                match class {
                    Classification::Delivered => {
                        tracing::debug!(provider = name, challenge_id = %msg.challenge_id, token = %masked, "push delivered");
                        return PushResult::Delivered;
                    }
                    Classification::TokenGone => {
                        tracing::info!(provider = name, challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, status, detail = %detail(), "push token gone");
                        return PushResult::TokenGone;
                    }
                    Classification::Permanent => {
                        tracing::warn!(provider = name, challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, status, detail = %detail(), "push refused");
                        return PushResult::Failed;
                    }
                    Classification::Retry { after } => {
                        tracing::debug!(provider = name, challenge_id = %msg.challenge_id, token = %masked, attempt, status, detail = %detail(), "push answer is transient");
                        after
                    }
                }
            }
            Attempt::AuthExpired if renewed => {
                tracing::warn!(provider = name, challenge_id = %msg.challenge_id, "push refused: a renewed credential was refused as expired too");
                return PushResult::Failed;
            }
            Attempt::AuthExpired => match tokio::time::timeout_at(horizon, t.renew(&mut push))
                .await
                .unwrap_or_else(|_| Err(HORIZON_PASSED.into()))
            {
                Ok(()) => {
                    tracing::warn!(provider = name, challenge_id = %msg.challenge_id, "auth credential refused as expired; renewed, retrying");
                    renewed = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(provider = name, challenge_id = %msg.challenge_id, error = %e, "auth credential renewal failed");
                    None
                }
            },
            Attempt::TimedOut => None,
            Attempt::Unreachable(e) => {
                tracing::debug!(provider = name, challenge_id = %msg.challenge_id, token = %masked, attempt, error = %e, "push attempt failed");
                None
            }
        };
        // A pause ends before the expiry and before the horizon.
        let left = msg
            .remaining(now_ms())
            .min(horizon.saturating_duration_since(Instant::now()));
        match crate::retry::next_delay(attempt, hint, left) {
            Some(delay) => {
                tracing::debug!(provider = name, challenge_id = %msg.challenge_id, token = %masked, attempt, ?delay, "push retrying");
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
            None => {
                tracing::warn!(provider = name, challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, attempts = attempt + 1, "push failed: no time left to retry");
                return PushResult::Failed;
            }
        }
    }
}

/// Why a renewal cut off at the horizon failed.
const HORIZON_PASSED: &str = "the challenge's life ran out while renewing";

/// The end of a delivery whose horizon has passed.
fn gave_up(provider: &'static str, msg: &PushMessage) -> PushResult {
    tracing::warn!(provider, challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %MaskedToken(&msg.token), "push gave up: the challenge's life ran out");
    PushResult::Failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::model::Kind;
    use crate::push::PushContent;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A transport answering from a script, counting attempts and renewals.
    struct Scripted {
        answers: Mutex<VecDeque<Attempt>>,
        attempts: Mutex<u32>,
        renewals: Mutex<u32>,
        renew_fails: bool,
        renew_hangs: bool,
    }

    impl Scripted {
        fn new(answers: Vec<Attempt>) -> Scripted {
            Scripted {
                answers: Mutex::new(answers.into()),
                attempts: Mutex::new(0),
                renewals: Mutex::new(0),
                renew_fails: false,
                renew_hangs: false,
            }
        }
        fn attempts(&self) -> u32 {
            *self.attempts.lock().unwrap()
        }
        fn renewals(&self) -> u32 {
            *self.renewals.lock().unwrap()
        }
    }

    impl Transport for Scripted {
        type Push = ();
        fn name(&self) -> &'static str {
            "test"
        }
        fn request_timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn prepare(&self, msg: &PushMessage) -> Result<(), Unsendable> {
            if msg.token.is_empty() {
                return Err(Unsendable {
                    token_gone: true,
                    reason: "empty token".into(),
                });
            }
            Ok(())
        }
        async fn attempt(&self, _: &PushMessage, _: &mut (), bounds: Bounds) -> Attempt {
            *self.attempts.lock().unwrap() += 1;
            let next = self.answers.lock().unwrap().pop_front();
            match next {
                Some(a) => a,
                // A provider that never answers: the attempt ends at its bound.
                None => {
                    tokio::time::sleep_until(bounds.request).await;
                    Attempt::TimedOut
                }
            }
        }
        async fn renew(&self, _: &mut ()) -> Result<(), String> {
            *self.renewals.lock().unwrap() += 1;
            if self.renew_hangs {
                std::future::pending::<()>().await;
            }
            if self.renew_fails {
                Err("token endpoint down".into())
            } else {
                Ok(())
            }
        }
    }

    fn answered(class: Classification) -> Attempt {
        Attempt::Answered {
            class,
            status: 0,
            detail: Bytes::new(),
        }
    }

    const RETRY: Classification = Classification::Retry { after: None };

    fn msg(ttl_ms: i64, withdraw: bool) -> PushMessage {
        PushMessage {
            challenge_id: "c1".into(),
            kind: Kind::Login,
            device_id: "d1".into(),
            token: "tok".into(),
            content: if withdraw {
                PushContent::Withdraw
            } else {
                PushContent::Challenge {
                    title: "t".into(),
                    body: "b".into(),
                    number_choices: None,
                    extra: None,
                }
            },
            expires_at_ms: now_ms() + ttl_ms,
            app: Default::default(),
        }
    }

    #[tokio::test]
    async fn delivered_token_gone_and_refused_end_at_once() {
        for (class, want) in [
            (Classification::Delivered, PushResult::Delivered),
            (Classification::TokenGone, PushResult::TokenGone),
            (Classification::Permanent, PushResult::Failed),
        ] {
            let t = Scripted::new(vec![answered(class)]);
            assert_eq!(deliver(&t, msg(60_000, false)).await, want);
            assert_eq!(t.attempts(), 1);
        }
    }

    #[tokio::test]
    async fn transient_answers_are_retried_after_the_hint() {
        let t = Scripted::new(vec![
            answered(Classification::Retry {
                after: Some(Duration::from_millis(5)),
            }),
            Attempt::Unreachable("reset".into()),
            answered(Classification::Delivered),
        ]);
        assert_eq!(deliver(&t, msg(60_000, false)).await, PushResult::Delivered);
        assert_eq!(t.attempts(), 3);
    }

    #[tokio::test]
    async fn an_expired_credential_is_renewed_once() {
        let t = Scripted::new(vec![
            Attempt::AuthExpired,
            answered(Classification::Delivered),
        ]);
        assert_eq!(deliver(&t, msg(60_000, false)).await, PushResult::Delivered);
        assert_eq!((t.attempts(), t.renewals()), (2, 1));
        let t = Scripted::new(vec![Attempt::AuthExpired, Attempt::AuthExpired]);
        assert_eq!(deliver(&t, msg(60_000, false)).await, PushResult::Failed);
        assert_eq!((t.attempts(), t.renewals()), (2, 1));
    }

    #[tokio::test]
    async fn a_failed_renewal_backs_off_and_keeps_the_renewal() {
        let mut t = Scripted::new(vec![
            Attempt::AuthExpired,
            Attempt::AuthExpired,
            answered(Classification::Delivered),
        ]);
        t.renew_fails = true;
        assert_eq!(deliver(&t, msg(60_000, false)).await, PushResult::Delivered);
        assert_eq!((t.attempts(), t.renewals()), (3, 2));
    }

    #[tokio::test]
    async fn an_expired_challenge_is_not_pushed_but_withdrawn_once() {
        let t = Scripted::new(vec![answered(Classification::Delivered)]);
        assert_eq!(deliver(&t, msg(-1_000, false)).await, PushResult::Failed);
        assert_eq!(t.attempts(), 0);
        let t = Scripted::new(vec![answered(RETRY), answered(Classification::Delivered)]);
        assert_eq!(deliver(&t, msg(-1_000, true)).await, PushResult::Failed);
        assert_eq!(
            t.attempts(),
            1,
            "a late withdrawal gets one attempt, no retry"
        );
        let t = Scripted::new(vec![answered(Classification::Delivered)]);
        assert_eq!(deliver(&t, msg(-1_000, true)).await, PushResult::Delivered);
    }

    #[tokio::test]
    async fn retries_stop_at_the_expiry() {
        let t = Scripted::new((0..1000).map(|_| answered(RETRY)).collect());
        assert_eq!(deliver(&t, msg(400, false)).await, PushResult::Failed);
        let n = t.attempts();
        assert!(n > 1 && n < 1000, "{n} attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_provider_ends_by_the_expiry_plus_one_request_timeout() {
        // Attempts that never answer end at their bound (1 s); retries pause by backoff;
        // the whole delivery ends by the 2.5 s expiry plus one request timeout.
        let t = Scripted::new(vec![]);
        let started = Instant::now();
        assert_eq!(deliver(&t, msg(2_500, false)).await, PushResult::Failed);
        let took = started.elapsed();
        assert!(t.attempts() >= 2, "{} attempts", t.attempts());
        assert!(took <= Duration::from_millis(3_600), "took {took:?}");
        // A late withdrawal gets one attempt, bounded by one request timeout.
        let t = Scripted::new(vec![]);
        let started = Instant::now();
        assert_eq!(deliver(&t, msg(-1_000, true)).await, PushResult::Failed);
        assert_eq!(t.attempts(), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_is_cut_at_the_horizon() {
        let mut t = Scripted::new(vec![Attempt::AuthExpired]);
        t.renew_hangs = true;
        let started = Instant::now();
        assert_eq!(deliver(&t, msg(2_000, false)).await, PushResult::Failed);
        assert_eq!((t.attempts(), t.renewals()), (1, 1));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(2_900) && took <= Duration::from_millis(3_100),
            "took {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_never_outlives_the_horizon() {
        let horizon = Instant::now() + Duration::from_millis(300);
        let b = Bounds::starting_now(Duration::from_secs(1), horizon);
        assert_eq!((b.request, b.horizon), (horizon, horizon));
        let b = Bounds::starting_now(Duration::from_millis(100), horizon);
        assert_eq!(b.request, Instant::now() + Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_unsendable_push_is_never_attempted() {
        let t = Scripted::new(vec![]);
        let mut m = msg(60_000, false);
        m.token = "".into();
        assert_eq!(deliver(&t, m).await, PushResult::TokenGone);
        assert_eq!(t.attempts(), 0);
    }

    #[test]
    fn labels_are_one_set() {
        let all = [
            answered(Classification::Delivered),
            answered(Classification::TokenGone),
            answered(RETRY),
            answered(Classification::Permanent),
            Attempt::AuthExpired,
            Attempt::TimedOut,
            Attempt::Unreachable(String::new()),
        ];
        for a in &all {
            assert!(LABELS.contains(&label(a)), "{a:?}");
        }
        let mut seen: Vec<_> = all.iter().map(label).collect();
        seen.push("invalid");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), LABELS.len());
    }
}
