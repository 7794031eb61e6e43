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
//! 401 that collapses with every other 401 for the same token (that policy lives in
//! [`crate::push::oauth`], shared with Push Kit; this module is Google's [`Issuer`]).

use crate::push::oauth::{self, Issuer};
use crate::tls::JsonClient;
use http::Uri;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::push::oauth::AccessToken;

/// The OAuth2 scope that allows `messages:send`.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Lifetime asked for in the assertion; Google accepts at most one hour.
const ASSERTION_LIFETIME_S: u64 = 3600;

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

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// Google's token endpoint, asked with a signed JWT assertion.
pub struct GoogleIssuer {
    acct: ServiceAccount,
    key: EncodingKey,
    client: JsonClient,
    token_uri: Uri,
    timeout: Duration,
}

/// FCM's access tokens (the policy is [`oauth::TokenSource`]'s).
pub type TokenSource = oauth::TokenSource<GoogleIssuer>;

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
        Ok(TokenSource::with_issuer(GoogleIssuer {
            acct,
            key,
            client,
            token_uri,
            timeout,
        }))
    }

    pub fn account(&self) -> &ServiceAccount {
        &self.issuer().acct
    }
}

impl Issuer for GoogleIssuer {
    type Error = AuthError;
    const PROVIDER: &'static str = "fcm";

    async fn request(&self) -> Result<AccessToken, AuthError> {
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
        let answer = oauth::post_form(&self.client, &self.token_uri, form, self.timeout)
            .await
            .map_err(AuthError::Token)?;
        if !answer.status.is_success() {
            let detail = serde_json::from_slice::<TokenErrorResponse>(&answer.body)
                .ok()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.error.unwrap_or_default(),
                        e.error_description.unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "no OAuth2 error body".into());
            return Err(AuthError::Token(format!(
                "HTTP {}: {detail}",
                answer.status
            )));
        }
        answer.grant().map_err(AuthError::Token)
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
}
