//! The per-push state of a transport that sends a cached OAuth 2.0 bearer access token
//! (FCM, Huawei Push Kit): which token the next attempt sends — the replacement after a
//! refusal, else whatever the provider's token cache hands out — and which one the last
//! attempt sent, so that a renewal replaces exactly the refused token (the caches collapse
//! every refusal of one token into one request).

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

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
}
