//! OAuth 2.0 client credentials for Push Kit: the app secret (read from
//! `hms.app_secret_file`), the token request `grant_type=client_credentials&client_id=…
//! &client_secret=…` to the token endpoint (`…/oauth2/v3/token`), and the cached access
//! token, whose caching and renewal policy is FCM's: [`crate::push::oauth`].
//!
//! The secret is never logged or printed: [`AppSecret`] has no `Display` and a redacted
//! `Debug`, the form body is built only to be sent, and the `Authorization` header is
//! marked sensitive.

use crate::push::oauth::{self, Issuer};
use crate::tls::JsonClient;
use http::Uri;
use serde::Deserialize;
use std::time::Duration;

pub use crate::push::oauth::AccessToken;

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

/// Huawei's OAuth error: `{"error":1101,"sub_error":20404,"error_description":"…"}`
/// (`error` is a number there, a string in plain OAuth 2.0).
#[derive(Deserialize)]
struct TokenErrorResponse {
    error: Option<serde_json::Value>,
    sub_error: Option<serde_json::Value>,
    error_description: Option<String>,
}

/// Huawei's token endpoint, asked with the app's client credentials.
pub struct HuaweiIssuer {
    app_id: String,
    secret: AppSecret,
    client: JsonClient,
    token_uri: Uri,
    timeout: Duration,
}

/// Push Kit's access tokens (the policy is [`oauth::TokenSource`]'s).
pub type TokenSource = oauth::TokenSource<HuaweiIssuer>;

impl TokenSource {
    pub fn new(
        app_id: String,
        secret: AppSecret,
        client: JsonClient,
        token_uri: Uri,
        timeout: Duration,
    ) -> TokenSource {
        TokenSource::with_issuer(HuaweiIssuer {
            app_id,
            secret,
            client,
            token_uri,
            timeout,
        })
    }
}

impl Issuer for HuaweiIssuer {
    type Error = AuthError;
    const PROVIDER: &'static str = "hms";

    async fn request(&self) -> Result<AccessToken, AuthError> {
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            urlencoding::encode(&self.app_id),
            urlencoding::encode(&self.secret.0),
        );
        let answer = oauth::post_form(&self.client, &self.token_uri, form, self.timeout)
            .await
            .map_err(AuthError::Token)?;
        if !answer.status.is_success() {
            let detail = serde_json::from_slice::<TokenErrorResponse>(&answer.body)
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
}
