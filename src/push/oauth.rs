//! OAuth 2.0 access tokens of the providers that use them (FCM, Push Kit): the token
//! endpoint's form request and its answer, and [`TokenSource`], the cached token with
//! single-flight renewal. Each provider brings an [`Issuer`] (how to ask: its assertion or
//! client credentials, its error shape); the policy is here, once:
//!
//! - a fresh token is handed out at once;
//! - in its renewal margin (the last five minutes, or the last tenth of a short lifetime)
//!   it is still handed out while one background task renews it;
//! - missing or expired, every caller waits for the one renewal in flight;
//! - a token refused by the send API is renewed once by
//!   [`TokenSource::renew_after_rejection`], which collapses every refusal of the same
//!   token into one request and never hands the refused token out again;
//! - a failed request is remembered for a second, so a token endpoint that is down sees
//!   one request per second, not one per push.

use crate::telemetry;
use crate::tls::JsonClient;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant};

/// Renew when less than this is left (or less than a tenth of the lifetime, if shorter).
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// After a failed request, callers get the same error for this long.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// Token endpoint answers are small; anything bigger is refused.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// The longest lifetime believed, whatever the endpoint says.
const MAX_LIFETIME_S: f64 = 86_400.0;

/// A minted access token with its ready-made `Authorization` header.
#[derive(Debug)]
pub struct AccessToken {
    pub header: HeaderValue,
    expires: Instant,
    renew_at: Instant,
}

impl AccessToken {
    /// A token `value` valid for `lifetime` counted from `now`.
    pub fn new(value: &str, lifetime: Duration, now: Instant) -> Result<AccessToken, String> {
        let mut header = HeaderValue::from_str(&format!("Bearer {value}"))
            .map_err(|_| "access_token has characters a header cannot carry".to_string())?;
        header.set_sensitive(true);
        let margin = RENEW_MARGIN.min(lifetime / 10);
        Ok(AccessToken {
            header,
            expires: now + lifetime,
            renew_at: now + lifetime - margin,
        })
    }
    fn fresh(&self, now: Instant) -> bool {
        now < self.renew_at
    }
    fn usable(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// How one provider obtains a token.
pub trait Issuer: Send + Sync + 'static {
    /// The provider's error (it names its config keys and endpoint).
    type Error: Clone + std::fmt::Display + Send + Sync + 'static;
    /// The `provider` label of the metrics and the log prefix.
    const PROVIDER: &'static str;
    /// One request to the token endpoint.
    fn request(&self) -> impl Future<Output = Result<AccessToken, Self::Error>> + Send;
}

/// Hands out access tokens: a cached one while fresh; otherwise one renewal for all.
pub struct TokenSource<I: Issuer> {
    issuer: I,
    cache: RwLock<Option<Arc<AccessToken>>>,
    /// Held for the whole of a request: whoever holds it is the one renewal in flight.
    renewal: Arc<tokio::sync::Mutex<()>>,
    last_failure: StdMutex<Option<(Instant, I::Error)>>,
}

impl<I: Issuer> TokenSource<I> {
    pub fn with_issuer(issuer: I) -> TokenSource<I> {
        TokenSource {
            issuer,
            cache: RwLock::new(None),
            renewal: Arc::new(tokio::sync::Mutex::new(())),
            last_failure: StdMutex::new(None),
        }
    }

    pub fn issuer(&self) -> &I {
        &self.issuer
    }

    fn cached(&self) -> Option<Arc<AccessToken>> {
        // A poisoned lock only means a panic elsewhere while writing an Arc: the value is
        // still whole, so keep using it.
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An access token to send with (see the module doc for the policy).
    pub async fn token(self: &Arc<Self>) -> Result<Arc<AccessToken>, I::Error> {
        let now = Instant::now();
        if let Some(t) = self.cached() {
            if t.fresh(now) {
                return Ok(t);
            }
            if t.usable(now) {
                if let Ok(guard) = self.renewal.clone().try_lock_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        if this.cached().is_some_and(|t| t.fresh(Instant::now())) {
                            return;
                        }
                        if let Err(e) = this.mint().await {
                            tracing::debug!(error = %e, "{}: ahead-of-expiry token renewal failed", I::PROVIDER);
                        }
                    });
                }
                return Ok(t);
            }
        }
        let _guard = self.renewal.lock().await;
        if let Some(t) = self.cached() {
            if t.fresh(Instant::now()) {
                return Ok(t);
            }
        }
        self.mint().await
    }

    /// Called after the send API refused `rejected`: renews unless someone already
    /// replaced that token, so a burst of refusals of one token requests once.
    pub async fn renew_after_rejection(
        self: &Arc<Self>,
        rejected: &Arc<AccessToken>,
    ) -> Result<Arc<AccessToken>, I::Error> {
        let _guard = self.renewal.lock().await;
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            match &*cache {
                Some(t) if !Arc::ptr_eq(t, rejected) && t.usable(Instant::now()) => {
                    return Ok(t.clone());
                }
                // Never hand the refused token out again, even if this request fails: the
                // next caller then requests (or gets the held failure) instead.
                _ => *cache = None,
            }
        }
        self.mint().await
    }

    /// One request; the caller holds the renewal lock.
    async fn mint(&self) -> Result<Arc<AccessToken>, I::Error> {
        if let Some((at, err)) = &*self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < FAILURE_HOLD {
                return Err(err.clone());
            }
        }
        let result = self.issuer.request().await.map(Arc::new);
        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(token) => {
                *last = None;
                *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
                metrics::counter!(telemetry::PROVIDER_TOKEN_RENEWALS, "provider" => I::PROVIDER)
                    .increment(1);
                tracing::debug!("{}: access token obtained", I::PROVIDER);
            }
            Err(e) => {
                tracing::warn!(error = %e, "{}: no access token from the token endpoint", I::PROVIDER);
                *last = Some((Instant::now(), e.clone()));
            }
        }
        result
    }
}

/// The token endpoint's answer: its status, its body (bounded) and when it was asked.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub asked_at: Instant,
}

/// POSTs `form` (`application/x-www-form-urlencoded`) to `uri` within `timeout`.
pub async fn post_form(
    client: &JsonClient,
    uri: &Uri,
    form: String,
    timeout: Duration,
) -> Result<Answer, String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())?;
    let asked_at = Instant::now();
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>(Answer {
            status,
            body,
            asked_at,
        })
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

#[derive(Deserialize)]
struct Grant {
    access_token: Option<String>,
    expires_in: Option<f64>,
    token_type: Option<String>,
}

impl Answer {
    /// The token of a successful answer (RFC 6749 §5.1). Its lifetime counts from when
    /// it was asked for, not when the answer came: never later than the issuer's clock.
    pub fn grant(&self) -> Result<AccessToken, String> {
        let parsed: Grant = serde_json::from_slice(&self.body)
            .map_err(|e| format!("answer is not the expected JSON: {e}"))?;
        if let Some(tt) = parsed.token_type.as_deref() {
            if !tt.eq_ignore_ascii_case("bearer") {
                return Err(format!("token_type {tt:?} is not Bearer"));
            }
        }
        let value = parsed
            .access_token
            .filter(|s| !s.is_empty())
            .ok_or("answer has no access_token")?;
        let lifetime = parsed
            .expires_in
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(MAX_LIFETIME_S)))
            .ok_or("answer has no positive expires_in")?;
        AccessToken::new(&value, lifetime, self.asked_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_margin() {
        let now = Instant::now();
        let t = AccessToken::new("abc", Duration::from_secs(3600), now).unwrap();
        assert_eq!(t.renew_at, now + Duration::from_secs(3300));
        let t = AccessToken::new("abc", Duration::from_secs(2), now).unwrap();
        assert_eq!(t.renew_at, now + Duration::from_millis(1800));
        assert!(t.fresh(now) && !t.fresh(now + Duration::from_millis(1900)));
        assert!(t.usable(now + Duration::from_millis(1900)));
        assert!(AccessToken::new("bad\nvalue", Duration::from_secs(1), now).is_err());
    }

    fn answer(body: &str) -> Answer {
        Answer {
            status: StatusCode::OK,
            body: Bytes::from(body.to_string()),
            asked_at: Instant::now(),
        }
    }

    #[test]
    fn grants_are_checked() {
        let t = answer(r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#)
            .grant()
            .unwrap();
        assert_eq!(t.header, "Bearer ya29.x");
        assert!(t.header.is_sensitive());
        for (body, why) in [
            (
                r#"{"access_token":"a","expires_in":60,"token_type":"mac"}"#,
                "not Bearer",
            ),
            (r#"{"expires_in":60}"#, "no access_token"),
            (r#"{"access_token":"","expires_in":60}"#, "no access_token"),
            (
                r#"{"access_token":"a","expires_in":0}"#,
                "no positive expires_in",
            ),
            (r#"{"access_token":"a"}"#, "no positive expires_in"),
            ("<html>", "not the expected JSON"),
        ] {
            let e = answer(body).grant().unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    /// An issuer counting its requests, failing while `fail` is set.
    struct Counting {
        requests: std::sync::atomic::AtomicU32,
        fail: std::sync::atomic::AtomicBool,
        lifetime: Duration,
    }

    impl Issuer for Counting {
        type Error = String;
        const PROVIDER: &'static str = "test";
        async fn request(&self) -> Result<AccessToken, String> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.requests.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.fail.load(SeqCst) {
                return Err("down".into());
            }
            AccessToken::new(&format!("t{n}"), self.lifetime, Instant::now())
        }
    }

    fn source(lifetime: Duration) -> Arc<TokenSource<Counting>> {
        Arc::new(TokenSource::with_issuer(Counting {
            requests: 0.into(),
            fail: false.into(),
            lifetime,
        }))
    }

    fn requests(s: &TokenSource<Counting>) -> u32 {
        s.issuer()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn one_request_however_many_wait_and_refusals_of_one_token_collapse() {
        let s = source(Duration::from_secs(3600));
        let waiting: Vec<_> = (0..50)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.token().await })
            })
            .collect();
        let mut first = None;
        for w in waiting {
            let t = w.await.unwrap().unwrap();
            let f = first.get_or_insert_with(|| t.clone());
            assert!(Arc::ptr_eq(f, &t));
        }
        assert_eq!(requests(&s), 1);
        let refused = first.unwrap();
        let renewals: Vec<_> = (0..20)
            .map(|_| {
                let (s, r) = (s.clone(), refused.clone());
                tokio::spawn(async move { s.renew_after_rejection(&r).await })
            })
            .collect();
        for r in renewals {
            assert!(!Arc::ptr_eq(&r.await.unwrap().unwrap(), &refused));
        }
        assert_eq!(requests(&s), 2, "twenty refusals of one token: one renewal");
    }

    #[tokio::test]
    async fn a_failure_is_held_for_a_second_and_the_refused_token_never_returns() {
        use std::sync::atomic::Ordering::SeqCst;
        let s = source(Duration::from_secs(3600));
        let t = s.token().await.unwrap();
        s.issuer().fail.store(true, SeqCst);
        assert_eq!(s.renew_after_rejection(&t).await.unwrap_err(), "down");
        for _ in 0..10 {
            assert_eq!(s.token().await.unwrap_err(), "down");
        }
        assert_eq!(
            requests(&s),
            2,
            "the failure is held, not retried per caller"
        );
        s.issuer().fail.store(false, SeqCst);
        tokio::time::sleep(FAILURE_HOLD).await;
        assert!(!Arc::ptr_eq(&s.token().await.unwrap(), &t));
    }
}
