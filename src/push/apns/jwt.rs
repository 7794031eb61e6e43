//! The APNs provider token: an ES256 JWT (header `alg`, `kid`; claims `iss` = team id,
//! `iat`) signed with the `.p8` key, minted once and shared by every connection.
//!
//! Renewal rules (Apple refuses tokens older than an hour and answers
//! `429 TooManyProviderTokenUpdates` when a token changes more often than every 20
//! minutes):
//! - a token is reused until it is `refresh` old (configured 20–55 minutes; clamped to
//!   that range here too, so an unvalidated configuration cannot break the rule);
//! - after a `403 ExpiredProviderToken` the rejected token is replaced at once — only if
//!   it is still the current one, so a burst of rejections mints one token, and at most
//!   once a minute, so a server that keeps rejecting cannot make us mint in a loop.
//!
//! Ages are measured with `tokio::time::Instant`, so the rules are tested with paused
//! time; `iat` comes from the wall clock, as Apple compares it with its own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Scheduled renewals never happen more often than this (Apple's limit).
pub const MIN_REFRESH: Duration = Duration::from_secs(20 * 60);
/// Tokens are renewed before this age even if configured later (Apple: 60 minutes).
pub const MAX_REFRESH: Duration = Duration::from_secs(55 * 60);
/// Forced renewals (after a rejection) are spaced by at least this much.
pub const MIN_FORCED_INTERVAL: Duration = Duration::from_secs(60);

/// Errors loading the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not a P-256 private key in PKCS#8 (.p8) or SEC1 PEM: {message}")]
    Parse { path: String, message: String },
}

/// Loads an ES256 signing key from a `.p8` file (PKCS#8 PEM, as Apple issues them), also
/// accepting a SEC1 `EC PRIVATE KEY` PEM.
pub fn load_key(path: &str) -> Result<SigningKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
        path: path.into(),
        message: e.to_string(),
    })?;
    parse_key(&pem).map_err(|message| KeyError::Parse {
        path: path.into(),
        message,
    })
}

/// Parses a PEM private key (PKCS#8, else SEC1).
pub fn parse_key(pem: &str) -> Result<SigningKey, String> {
    use p256::pkcs8::DecodePrivateKey as _;
    match SigningKey::from_pkcs8_pem(pem) {
        Ok(k) => Ok(k),
        Err(pkcs8) => p256::SecretKey::from_sec1_pem(pem)
            .map(SigningKey::from)
            .map_err(|_| pkcs8.to_string()),
    }
}

/// Signs a provider token for the given key id, team id and `iat` (Unix seconds).
pub fn sign(key: &SigningKey, key_id: &str, team_id: &str, iat: u64) -> String {
    let header = serde_json::json!({ "alg": "ES256", "kid": key_id });
    let claims = serde_json::json!({ "iss": team_id, "iat": iat });
    let mut token = String::with_capacity(256);
    token.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig: Signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    token
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Current {
    /// The `authorization` header value, `bearer <jwt>`.
    bearer: Arc<str>,
    /// The same as a header value, checked once rather than at every request.
    header: HeaderValue,
    minted: Instant,
}

/// The shared provider token: minted lazily, reused, renewed by the rules above.
pub struct TokenCache {
    key: SigningKey,
    key_id: String,
    team_id: String,
    refresh: Duration,
    current: RwLock<Option<Current>>,
    last_forced: RwLock<Option<Instant>>,
    last_iat: AtomicU64,
    on_mint: Box<dyn Fn() + Send + Sync>,
}

impl TokenCache {
    /// `on_mint` runs once per token minted (the renewal counter).
    pub fn new(
        key: SigningKey,
        key_id: &str,
        team_id: &str,
        refresh: Duration,
        on_mint: Box<dyn Fn() + Send + Sync>,
    ) -> TokenCache {
        TokenCache {
            key,
            key_id: key_id.into(),
            team_id: team_id.into(),
            refresh: refresh.clamp(MIN_REFRESH, MAX_REFRESH),
            current: RwLock::new(None),
            last_forced: RwLock::new(None),
            last_iat: AtomicU64::new(0),
            on_mint,
        }
    }

    /// The effective scheduled renewal age.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    fn mint(&self, now: Instant) -> Current {
        (self.on_mint)();
        // ES256 here is deterministic (RFC 6979): a token renewed within the same second
        // would come out identical, so `iat` always moves forward.
        let iat = unix_now().max(self.last_iat.load(Ordering::Relaxed) + 1);
        self.last_iat.store(iat, Ordering::Relaxed);
        let jwt = sign(&self.key, &self.key_id, &self.team_id, iat);
        let bearer = format!("bearer {jwt}");
        Current {
            // Base64url parts and dots: always a valid header value.
            header: HeaderValue::from_str(&bearer).unwrap_or(HeaderValue::from_static("")),
            bearer: bearer.into(),
            minted: now,
        }
    }

    /// The `authorization` header value to use now, renewing a token that reached its
    /// refresh age.
    pub fn bearer(&self) -> Arc<str> {
        self.bearer_and_header().0
    }

    /// [`TokenCache::bearer`] and the same token as a ready header value.
    pub fn bearer_and_header(&self) -> (Arc<str>, HeaderValue) {
        let now = Instant::now();
        let both = |c: &Current| (c.bearer.clone(), c.header.clone());
        if let Ok(guard) = self.current.read() {
            if let Some(c) = guard.as_ref() {
                if now.duration_since(c.minted) < self.refresh {
                    return both(c);
                }
            }
        }
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match guard.as_ref() {
            Some(c) if now.duration_since(c.minted) < self.refresh => both(c),
            _ => {
                let c = self.mint(now);
                let out = both(&c);
                *guard = Some(c);
                out
            }
        }
    }

    /// Called after APNs rejected `rejected` as expired: replaces it at once if it is
    /// still the current token and no forced renewal happened in the last minute.
    /// Returns whether a new token was minted.
    pub fn renew_rejected(&self, rejected: &str) -> bool {
        let now = Instant::now();
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let is_current = guard.as_ref().is_some_and(|c| &*c.bearer == rejected);
        if !is_current {
            return false;
        }
        let mut last = self
            .last_forced
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < MIN_FORCED_INTERVAL) {
            return false;
        }
        *last = Some(now);
        *guard = Some(self.mint(now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::VerifyingKey;
    use std::sync::atomic::AtomicUsize;

    fn key() -> SigningKey {
        SigningKey::random(&mut rand::rngs::OsRng)
    }

    fn cache(refresh: Duration) -> (TokenCache, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let c = TokenCache::new(
            key(),
            "KEY1234567",
            "TEAM123456",
            refresh,
            Box::new(move || {
                n2.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (c, n)
    }

    #[test]
    fn token_is_a_valid_es256_jwt() {
        let k = key();
        let t = sign(&k, "KID", "TEAM", 1_700_000_000);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "ES256", "kid": "KID"}));
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"iss": "TEAM", "iat": 1_700_000_000u64})
        );
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let vk = VerifyingKey::from(&k);
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(vk.verify(signed.as_bytes(), &sig).is_ok());
        assert!(vk.verify(b"something else", &sig).is_err());
    }

    #[test]
    fn keys_load_from_pkcs8_and_sec1_pem() {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(parse_key(&pkcs8).is_ok());
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        assert!(parse_key(&sec1).is_ok());
        assert!(parse_key("not a key").is_err());
        let e = load_key("/nonexistent/AuthKey.p8").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/AuthKey.p8"));
    }

    #[tokio::test(start_paused = true)]
    async fn reused_until_the_refresh_age_then_renewed() {
        let (c, minted) = cache(Duration::from_secs(50 * 60));
        let first = c.bearer();
        assert!(first.starts_with("bearer "));
        assert_eq!(minted.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(49 * 60)).await;
        assert_eq!(c.bearer(), first);
        assert_eq!(minted.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        let second = c.bearer();
        assert_eq!(minted.load(Ordering::SeqCst), 2);
        // A fresh token, not re-served: the next call within the age returns it again.
        assert_eq!(c.bearer(), second);
        assert_eq!(minted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn never_renewed_more_often_than_every_20_minutes() {
        // An unvalidated configuration asking for 1 minute is clamped to 20.
        let (c, minted) = cache(Duration::from_secs(60));
        assert_eq!(c.refresh(), MIN_REFRESH);
        c.bearer();
        for _ in 0..19 {
            tokio::time::advance(Duration::from_secs(60)).await;
            c.bearer();
        }
        assert_eq!(minted.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        c.bearer();
        assert_eq!(minted.load(Ordering::SeqCst), 2);
        // And one asking for two hours is clamped to 55 minutes (Apple: < 60).
        let (c, _) = cache(Duration::from_secs(7200));
        assert_eq!(c.refresh(), MAX_REFRESH);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_token_is_renewed_at_once_and_only_once() {
        let (c, minted) = cache(Duration::from_secs(50 * 60));
        let first = c.bearer();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(c.renew_rejected(&first));
        assert_eq!(minted.load(Ordering::SeqCst), 2);
        let second = c.bearer();
        assert_ne!(first, second);
        // Other pushes that were rejected with the same old token do not mint again.
        assert!(!c.renew_rejected(&first));
        assert!(!c.renew_rejected(&first));
        assert_eq!(minted.load(Ordering::SeqCst), 2);
        // A rejection of the new token within a minute is not renewed (no mint loop) …
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!c.renew_rejected(&second));
        assert_eq!(c.bearer(), second);
        // … after a minute it is.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(c.renew_rejected(&second));
        assert_eq!(minted.load(Ordering::SeqCst), 3);
        // A forced renewal restarts the scheduled age.
        let third = c.bearer();
        tokio::time::advance(Duration::from_secs(49 * 60)).await;
        assert_eq!(c.bearer(), third);
    }
}
