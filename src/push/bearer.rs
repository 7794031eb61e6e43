//! The per-push state of a transport that sends a cached OAuth 2.0 bearer access token
//! (FCM, Huawei Push Kit): which token the next attempt sends — the replacement after a
//! refusal, else whatever the provider's token cache hands out — and which one the last
//! attempt sent, so that a renewal replaces exactly the refused token (the caches collapse
//! every refusal of one token into one request).

use crate::push::delivery::Attempt;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// One push's access tokens across attempts (the transports' [`Transport::Push`]).
///
/// [`Transport::Push`]: crate::push::delivery::Transport::Push
#[derive(Debug)]
pub struct BearerPush<T> {
    next: Option<Arc<T>>,
    used: Option<Arc<T>>,
}

impl<T> Default for BearerPush<T> {
    fn default() -> Self {
        BearerPush {
            next: None,
            used: None,
        }
    }
}

impl<T> BearerPush<T> {
    /// The token for this attempt: the replacement of a refused one if there is one, else
    /// `cached()`'s. Remembered as the one sent.
    pub async fn token<F, Fut, E>(&mut self, cached: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, E>>,
    {
        let t = match self.next.take() {
            Some(t) => t,
            None => cached().await?,
        };
        self.used = Some(t.clone());
        Ok(t)
    }

    /// What an attempt needs before its request: the token (as [`token`](Self::token))
    /// and one of the provider's concurrency `permits`, neither waited for past the
    /// delivery's `horizon` ([`Attempt::TimedOut`]). A token that cannot be had is
    /// [`Attempt::Unreachable`]: nothing was sent.
    pub async fn admit<'p, F, Fut, E>(
        &mut self,
        cached: F,
        permits: &'p Semaphore,
        horizon: Instant,
    ) -> Result<(Arc<T>, SemaphorePermit<'p>), Attempt>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, E>>,
        E: Display,
    {
        let token = match tokio::time::timeout_at(horizon, self.token(cached)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(Attempt::Unreachable(e.to_string())),
            Err(_) => return Err(Attempt::TimedOut),
        };
        match tokio::time::timeout_at(horizon, permits.acquire()).await {
            Ok(Ok(permit)) => Ok((token, permit)),
            Ok(Err(_)) => Err(Attempt::Unreachable("provider is shutting down".into())),
            Err(_) => Err(Attempt::TimedOut),
        }
    }

    /// After the provider refused the token last sent: `renew(refused)` gives its
    /// replacement, which the next attempt sends. With no token sent yet there is nothing
    /// to replace.
    pub async fn renew<F, Fut, E>(&mut self, renew: F) -> Result<(), String>
    where
        F: FnOnce(Arc<T>) -> Fut,
        Fut: Future<Output = Result<Arc<T>, E>>,
        E: Display,
    {
        let Some(used) = self.used.take() else {
            return Ok(());
        };
        self.next = Some(renew(used).await.map_err(|e| e.to_string())?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cached(v: &'static str) -> Result<Arc<&'static str>, String> {
        Ok(Arc::new(v))
    }

    #[tokio::test]
    async fn a_renewal_replaces_the_token_sent_for_the_next_attempt_only() {
        let mut p = BearerPush::default();
        // Nothing sent yet: nothing to renew, and the renewal is not asked for.
        p.renew(|_| async { Err::<Arc<&str>, _>("asked") })
            .await
            .unwrap();
        assert_eq!(*p.token(|| cached("old")).await.unwrap(), "old");
        p.renew(|refused| async move {
            assert_eq!(*refused, "old");
            Ok::<_, String>(Arc::new("new"))
        })
        .await
        .unwrap();
        assert_eq!(*p.token(|| cached("old")).await.unwrap(), "new");
        // Later attempts go back to the cache, which now holds the replacement anyway.
        assert_eq!(*p.token(|| cached("cache")).await.unwrap(), "cache");
    }

    #[tokio::test]
    async fn failures_are_passed_on() {
        let mut p: BearerPush<&str> = BearerPush::default();
        let e = p
            .token(|| async { Err::<Arc<&str>, _>("endpoint down") })
            .await;
        assert_eq!(e.unwrap_err(), "endpoint down");
        assert_eq!(*p.token(|| cached("t")).await.unwrap(), "t");
        let e = p
            .renew(|_| async { Err::<Arc<&str>, _>("still down") })
            .await;
        assert_eq!(e.unwrap_err(), "still down");
        // The failed renewal left nothing behind: the next attempt asks the cache.
        assert_eq!(*p.token(|| cached("again")).await.unwrap(), "again");
    }

    #[tokio::test(start_paused = true)]
    async fn admission_waits_no_longer_than_the_horizon() {
        let mut p: BearerPush<&str> = BearerPush::default();
        let permits = Semaphore::new(1);
        let horizon = Instant::now() + std::time::Duration::from_secs(2);
        let (t, held) = p.admit(|| cached("t"), &permits, horizon).await.unwrap();
        assert_eq!(*t, "t");
        // The only permit is taken: the next attempt waits until the horizon, no longer.
        let a = p.admit(|| cached("t"), &permits, horizon).await;
        assert!(matches!(a, Err(Attempt::TimedOut)), "{a:?}");
        assert_eq!(Instant::now(), horizon);
        drop(held);
        // A token that never comes is cut at the horizon too.
        let horizon = Instant::now() + std::time::Duration::from_secs(1);
        let a = p
            .admit(
                std::future::pending::<Result<Arc<&str>, String>>,
                &permits,
                horizon,
            )
            .await;
        assert!(matches!(a, Err(Attempt::TimedOut)), "{a:?}");
        let a = p
            .admit(|| async { Err::<Arc<&str>, _>("down") }, &permits, horizon)
            .await;
        assert!(
            matches!(a, Err(Attempt::Unreachable(ref e)) if e == "down"),
            "{a:?}"
        );
        permits.close();
        let a = p.admit(|| cached("t"), &permits, horizon).await;
        assert!(matches!(a, Err(Attempt::Unreachable(_))), "{a:?}");
    }
}
