//! OAuth 2.0 client credentials for Push Kit: the app secret (read from
//! `hms.app_secret_file`), the token request `grant_type=client_credentials&client_id=…
//! &client_secret=…` to the token endpoint (`…/oauth2/v3/token`), and the cached access
//! token with single-flight renewal.
//!
//! Policy, as for FCM: a fresh token is handed out at once; in its renewal margin (the
//! last five minutes, or the last tenth of a short lifetime) it is still handed out while
//! one background task renews it; missing or expired, every caller waits for the one
//! renewal in flight. A token refused by `messages:send` is renewed once by
//! [`TokenSource::renew_after_rejection`], which collapses every refusal of the same token
//! into one request. A failed request is remembered for a second, so a token endpoint
//! that is down sees one request per second, not one per push.
//!
//! The secret is never logged or printed: [`AppSecret`] has no `Display` and a redacted
//! `Debug`, the form body is built only to be sent, and the `Authorization` header is
//! marked sensitive.

use crate::telemetry;
use crate::tls::JsonClient;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant};

/// Renew when less than this is left (or less than a tenth of the lifetime, if shorter).
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// After a failed request, callers get the same error for this long.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// Token endpoint answers are small; anything bigger is refused.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// App secrets are a few dozen characters; a bigger file is the wrong file.
const MAX_SECRET_FILE: u64 = 4096;

/// Problems with the app credentials or obtaining an access token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("hms.app_secret_file {path}: {message}")]
    SecretFile { path: String, message: String },
    #[error("hms token endpoint: {0}")]
    Token(String),
}

/// The app secret. Never printed.
#[derive(Clone)]
pub struct AppSecret(String);

impl std::fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppSecret(<redacted>)")
    }
}

impl AppSecret {
    /// Reads the secret: the file's text without surrounding whitespace, one line.
    pub fn from_file(path: &str) -> Result<AppSecret, AuthError> {
        let err = |message: String| AuthError::SecretFile {
            path: path.into(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > MAX_SECRET_FILE {
            return Err(err(format!(
                "is {} bytes; an app secret file holds only the secret",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// Checks a secret's text (error messages never repeat it).
    pub fn parse(text: &str) -> Result<AppSecret, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must hold the secret alone, on one line".into());
        }
        Ok(AppSecret(s.to_string()))
    }
}

/// A minted access token with its ready-made `Authorization` header.
#[derive(Debug)]
pub struct AccessToken {
    pub header: HeaderValue,
    expires: Instant,
    renew_at: Instant,
}

impl AccessToken {
    fn new(value: &str, lifetime: Duration, now: Instant) -> Result<AccessToken, AuthError> {
        let mut header = HeaderValue::from_str(&format!("Bearer {value}")).map_err(|_| {
            AuthError::Token("access_token has characters a header cannot carry".into())
        })?;
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

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<f64>,
    token_type: Option<String>,
}

/// Huawei's OAuth error: `{"error":1101,"sub_error":20404,"error_description":"…"}`
/// (`error` is a number there, a string in plain OAuth 2.0).
#[derive(Deserialize)]
struct TokenErrorResponse {
    error: Option<serde_json::Value>,
    sub_error: Option<serde_json::Value>,
    error_description: Option<String>,
}

/// Hands out access tokens: a cached one while fresh; otherwise one renewal for all.
pub struct TokenSource {
    app_id: String,
    secret: AppSecret,
    client: JsonClient,
    token_uri: Uri,
    timeout: Duration,
    cache: RwLock<Option<Arc<AccessToken>>>,
    /// Held for the whole of a request: whoever holds it is the one renewal in flight.
    renewal: Arc<tokio::sync::Mutex<()>>,
    last_failure: StdMutex<Option<(Instant, AuthError)>>,
}

impl TokenSource {
    pub fn new(
        app_id: String,
        secret: AppSecret,
        client: JsonClient,
        token_uri: Uri,
        timeout: Duration,
    ) -> TokenSource {
        TokenSource {
            app_id,
            secret,
            client,
            token_uri,
            timeout,
            cache: RwLock::new(None),
            renewal: Arc::new(tokio::sync::Mutex::new(())),
            last_failure: StdMutex::new(None),
        }
    }

    fn cached(&self) -> Option<Arc<AccessToken>> {
        // A poisoned lock only means a panic elsewhere while writing an Arc: the value is
        // still whole, so keep using it.
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, t: Arc<AccessToken>) {
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    /// An access token to send with (see the module doc for the policy).
    pub async fn token(self: &Arc<Self>) -> Result<Arc<AccessToken>, AuthError> {
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
                            tracing::debug!(error = %e, "hms: ahead-of-expiry token renewal failed");
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

    /// Called after `messages:send` refused `rejected`: renews unless someone already
    /// replaced that token, so a burst of refusals of one token requests once.
    pub async fn renew_after_rejection(
        self: &Arc<Self>,
        rejected: &Arc<AccessToken>,
    ) -> Result<Arc<AccessToken>, AuthError> {
        let _guard = self.renewal.lock().await;
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            match &*cache {
                Some(t) if !Arc::ptr_eq(t, rejected) && t.usable(Instant::now()) => {
                    return Ok(t.clone());
                }
                // Never hand the refused token out again, even if this request fails.
                _ => *cache = None,
            }
        }
        self.mint().await
    }

    /// One request; the caller holds the renewal lock.
    async fn mint(&self) -> Result<Arc<AccessToken>, AuthError> {
        if let Some((at, err)) = &*self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < FAILURE_HOLD {
                return Err(err.clone());
            }
        }
        let result = self.mint_now().await;
        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                *last = None;
                metrics::counter!(telemetry::PROVIDER_TOKEN_RENEWALS, "provider" => "hms")
                    .increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "hms: no access token from the token endpoint");
                *last = Some((Instant::now(), e.clone()));
            }
        }
        result
    }

    async fn mint_now(&self) -> Result<Arc<AccessToken>, AuthError> {
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            urlencoding::encode(&self.app_id),
            urlencoding::encode(&self.secret.0),
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.token_uri.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| AuthError::Token(e.to_string()))?;
        let started = Instant::now();
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AuthError::Token(format!("request failed: {e}")))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| AuthError::Token(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, AuthError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| AuthError::Token(format!("no answer within {:?}", self.timeout)))??;
        if !status.is_success() {
            let detail = serde_json::from_slice::<TokenErrorResponse>(&body)
                .ok()
                .map(|e| {
                    let show = |v: Option<serde_json::Value>| match v {
                        Some(serde_json::Value::String(s)) => s,
                        Some(v) => v.to_string(),
                        None => String::new(),
                    };
                    format!(
                        "error {} (sub_error {}): {}",
                        show(e.error),
                        show(e.sub_error),
                        e.error_description.unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "no OAuth error body".into());
            return Err(AuthError::Token(format!("HTTP {status}: {detail}")));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| AuthError::Token(format!("answer is not the expected JSON: {e}")))?;
        if let Some(tt) = parsed.token_type.as_deref() {
            if !tt.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::Token(format!("token_type {tt:?} is not Bearer")));
            }
        }
        let value = parsed
            .access_token
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Token("answer has no access_token".into()))?;
        let lifetime = parsed
            .expires_in
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
            .ok_or_else(|| AuthError::Token("answer has no positive expires_in".into()))?;
        // Count the lifetime from when we asked: never later than the issuer's clock.
        let token = Arc::new(AccessToken::new(&value, lifetime, started)?);
        self.store(token.clone());
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "hms: access token obtained"
        );
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_and_never_shown() {
        let s = AppSecret::parse("  s3cr3t-value\n").unwrap();
        assert_eq!(s.0, "s3cr3t-value");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(AppSecret::parse(" \n").is_err());
        let e = AppSecret::parse("two words").unwrap_err();
        assert!(!e.contains("two"), "{e}");
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "abc123\n").unwrap();
        assert_eq!(
            AppSecret::from_file(p.to_str().unwrap()).unwrap().0,
            "abc123"
        );
        std::fs::write(&p, "x".repeat(5000)).unwrap();
        let e = AppSecret::from_file(p.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("hms.app_secret_file"), "{e}");
        let e = AppSecret::from_file("/nonexistent/secret").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/secret"), "{e}");
    }

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
}
