//! OAuth2 for FCM: the service-account key file, the RS256 JWT assertion, and the cached
//! access token with single-flight renewal.
//!
//! # Why a signer of our own
//! The flow is small (RFC 7523 §2.1: sign a JWT, form-POST it, read
//! `access_token`/`expires_in`) and `jsonwebtoken` and the pooled rustls client are
//! already in the tree, so doing it here adds no crate and no second HTTP/TLS stack
//! (yup-oauth2 and gcp_auth each bring their own client and, with it, their own trust
//! store and timeouts). It posts to the key's own `token_uri`, which keeps private or
//! regional token endpoints working and lets the FCM simulator in `crate::sim::fcm` stand
//! in for Google end to end: the tests exercise exactly the code that runs in production.
//! Finally it lets us control the caching policy: renew ahead of expiry in the
//! background, one renewal in flight however many sends wait, and a renewal forced by a
//! 401 that collapses with every other 401 for the same token.

use crate::telemetry;
use crate::tls::JsonClient;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OAuth2 scope that allows `messages:send`.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Lifetime asked for in the assertion; Google accepts at most one hour.
const ASSERTION_LIFETIME_S: u64 = 3600;
/// Renew when less than this is left (or less than a tenth of the lifetime, if shorter).
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// After a failed mint, callers get the same error for this long instead of each trying
/// again: a token endpoint that is down sees one request per second, not one per push.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// Token endpoint answers are small; anything bigger is refused.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Problems with the service account or obtaining an access token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("fcm.service_account_file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("fcm.service_account_file {path}: the field `{field}` is missing or empty")]
    MissingField { path: String, field: &'static str },
    #[error("fcm token endpoint: {0}")]
    Token(String),
}

/// The fields of a Google service-account key file that we use.
#[derive(Clone)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key_id: String,
    pub token_uri: String,
    private_key: String,
}

impl std::fmt::Debug for ServiceAccount {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawAccount {
    #[serde(rename = "type")]
    account_type: Option<String>,
    project_id: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads and checks a key file; errors name the file and the missing field.
    pub fn from_file(path: &str) -> Result<ServiceAccount, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::KeyFile {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::from_json(&text, path)
    }

    /// Parses a key file's text; `path` only names it in errors.
    pub fn from_json(text: &str, path: &str) -> Result<ServiceAccount, AuthError> {
        let raw: RawAccount = serde_json::from_str(text).map_err(|e| AuthError::KeyFile {
            path: path.into(),
            message: format!("not a service-account JSON key: {e}"),
        })?;
        if let Some(t) = raw.account_type.as_deref() {
            if t != "service_account" {
                return Err(AuthError::KeyFile {
                    path: path.into(),
                    message: format!("`type` is {t:?}, expected \"service_account\""),
                });
            }
        }
        let need = |v: Option<String>, field: &'static str| {
            v.filter(|s| !s.trim().is_empty())
                .ok_or(AuthError::MissingField {
                    path: path.into(),
                    field,
                })
        };
        let acct = ServiceAccount {
            project_id: need(raw.project_id, "project_id")?,
            client_email: need(raw.client_email, "client_email")?,
            private_key: need(raw.private_key, "private_key")?,
            private_key_id: need(raw.private_key_id, "private_key_id")?,
            token_uri: need(raw.token_uri, "token_uri")?,
        };
        if acct.token_uri.parse::<Uri>().is_err() {
            return Err(AuthError::KeyFile {
                path: path.into(),
                message: "`token_uri` is not a valid URI".into(),
            });
        }
        if !acct
            .project_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == ':')
        {
            return Err(AuthError::KeyFile {
                path: path.into(),
                message: "`project_id` has characters a project id cannot have".into(),
            });
        }
        Ok(acct)
    }

    /// The RSA signing key; errors when `private_key` is not an RSA PEM key.
    pub fn encoding_key(&self, path: &str) -> Result<EncodingKey, AuthError> {
        EncodingKey::from_rsa_pem(self.private_key.as_bytes()).map_err(|e| AuthError::KeyFile {
            path: path.into(),
            message: format!("`private_key` is not an RSA private key in PEM: {e}"),
        })
    }
}

/// The claims of the JWT-bearer assertion (RFC 7523), as Google documents them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signs the assertion for `acct` at Unix time `now_s`.
pub fn sign_assertion(
    acct: &ServiceAccount,
    key: &EncodingKey,
    now_s: u64,
) -> Result<String, AuthError> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(acct.private_key_id.clone());
    let claims = AssertionClaims {
        iss: acct.client_email.clone(),
        scope: SCOPE.into(),
        aud: acct.token_uri.clone(),
        iat: now_s,
        exp: now_s + ASSERTION_LIFETIME_S,
    };
    jsonwebtoken::encode(&header, &claims, key)
        .map_err(|e| AuthError::Token(format!("cannot sign the assertion: {e}")))
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

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// Hands out access tokens: a cached one while fresh; otherwise one renewal for all.
pub struct TokenSource {
    acct: ServiceAccount,
    key: EncodingKey,
    client: JsonClient,
    token_uri: Uri,
    timeout: Duration,
    cache: RwLock<Option<Arc<AccessToken>>>,
    /// Held for the whole of a mint: whoever holds it is the one renewal in flight.
    renewal: Arc<tokio::sync::Mutex<()>>,
    last_failure: StdMutex<Option<(Instant, AuthError)>>,
}

impl TokenSource {
    pub fn new(
        acct: ServiceAccount,
        key: EncodingKey,
        client: JsonClient,
        timeout: Duration,
    ) -> Result<TokenSource, AuthError> {
        let token_uri = acct
            .token_uri
            .parse::<Uri>()
            .map_err(|e| AuthError::Token(format!("token_uri: {e}")))?;
        Ok(TokenSource {
            acct,
            key,
            client,
            token_uri,
            timeout,
            cache: RwLock::new(None),
            renewal: Arc::new(tokio::sync::Mutex::new(())),
            last_failure: StdMutex::new(None),
        })
    }

    pub fn account(&self) -> &ServiceAccount {
        &self.acct
    }

    fn cached(&self) -> Option<Arc<AccessToken>> {
        // A poisoned lock only means a panic elsewhere while writing an Arc: the value is
        // still whole, so keep using it.
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn store(&self, t: Arc<AccessToken>) {
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    /// An access token to send with. Fresh: returned at once. In its renewal margin but
    /// still valid: returned at once while one background task renews it. Missing or
    /// expired: every caller waits for the single renewal.
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
                            tracing::warn!(error = %e, "fcm: ahead-of-expiry token renewal failed");
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

    /// Called after `messages:send` refused `rejected` with 401: renews unless someone
    /// already replaced that token, so a burst of 401s for one token mints once.
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
                // Never hand the refused token out again, even if this mint fails: the
                // next caller then mints (or gets the held failure) instead.
                _ => *cache = None,
            }
        }
        self.mint().await
    }

    /// One mint; the caller holds the renewal lock.
    async fn mint(&self) -> Result<Arc<AccessToken>, AuthError> {
        if let Some((at, err)) = &*self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < FAILURE_HOLD {
                return Err(err.clone());
            }
        }
        let result = self.mint_now().await;
        match &result {
            Ok(_) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                metrics::counter!(telemetry::PROVIDER_TOKEN_RENEWALS, "provider" => "fcm")
                    .increment(1);
            }
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), e.clone()));
            }
        }
        result
    }

    async fn mint_now(&self) -> Result<Arc<AccessToken>, AuthError> {
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let assertion = sign_assertion(&self.acct, &self.key, now_s)?;
        let form = format!(
            "grant_type={}&assertion={}",
            urlencoding::encode("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            assertion // base64url and dots: nothing to escape
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
                    format!(
                        "{}: {}",
                        e.error.unwrap_or_default(),
                        e.error_description.unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "no OAuth2 error body".into());
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
        // Count the lifetime from when we asked, not when the answer came: never later
        // than the issuer's own clock.
        let token = Arc::new(AccessToken::new(&value, lifetime, started)?);
        self.store(token.clone());
        tracing::debug!(lifetime_s = lifetime.as_secs(), "fcm: access token minted");
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYLESS: &str = r#"{"type":"service_account","project_id":"p","client_email":"a@p.iam.gserviceaccount.com","private_key_id":"k1","token_uri":"https://oauth2.googleapis.com/token"}"#;

    #[test]
    fn missing_fields_are_named() {
        let err = ServiceAccount::from_json(KEYLESS, "/etc/sa.json").unwrap_err();
        assert_eq!(
            err.to_string(),
            "fcm.service_account_file /etc/sa.json: the field `private_key` is missing or empty"
        );
        for field in ["project_id", "client_email", "private_key_id", "token_uri"] {
            let mut v: serde_json::Value = serde_json::from_str(KEYLESS).unwrap();
            v["private_key"] = "x".into();
            v[field] = "".into();
            let err = ServiceAccount::from_json(&v.to_string(), "f").unwrap_err();
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
        let err = ServiceAccount::from_json("{not json", "f").unwrap_err();
        assert!(err.to_string().contains("not a service-account JSON key"));
        let mut v: serde_json::Value = serde_json::from_str(KEYLESS).unwrap();
        v["private_key"] = "x".into();
        v["type"] = "authorized_user".into();
        assert!(ServiceAccount::from_json(&v.to_string(), "f").is_err());
    }

    #[test]
    fn a_non_rsa_key_is_refused_without_echoing_it() {
        let mut v: serde_json::Value = serde_json::from_str(KEYLESS).unwrap();
        v["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n".into();
        let acct = ServiceAccount::from_json(&v.to_string(), "f").unwrap();
        let err = acct.encoding_key("f").err().unwrap().to_string();
        assert!(
            err.contains("`private_key`") && !err.contains("secretstuff"),
            "{err}"
        );
        assert!(!format!("{acct:?}").contains("secretstuff"));
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
