//! Huawei Push Kit transport: [`HmsProvider`] sends challenge and withdrawal data
//! messages to `POST {endpoint}/v1/{app_id}/messages:send` with an OAuth 2.0
//! client-credentials access token ([`auth`]), over the shared pooled rustls client
//! (HTTP/2 when the server offers it).
//!
//! The transport is one attempt, [`HmsProvider::attempt`]: take a token, send, classify the
//! answer with the pure [`classify::classify`], and — when the access token was refused —
//! renew it before answering [`Class::RenewAuth`]. The retry policy around it (retry
//! after `Retry-After` or with jittered backoff while the challenge lives, at most one
//! renewal per push) is the small [`deliver`] loop, kept apart so that a delivery loop
//! shared by every transport can take its place.
//!
//! Submodules: [`auth`] (app secret, token cache), [`classify`] (answer classification),
//! [`config`] (the `[hms]` section), [`message`] (the request body).

pub mod auth;
pub mod classify;
pub mod config;
pub mod message;

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::push::{BoxFuture, MaskedToken, PushMessage, PushProvider};
use crate::tls::JsonClient;
use auth::{AppSecret, AuthError, TokenSource};
use bytes::Bytes;
use classify::Class;
use config::HmsConfig;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Push Kit's answers are small JSON documents; more than this is not read.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Errors setting up the HMS provider.
#[derive(Debug, thiserror::Error)]
pub enum HmsError {
    #[error("hms: {0}")]
    Setup(String),
    #[error("hms: {0}")]
    Auth(#[from] AuthError),
    #[error("hms.ca_file: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The Push Kit provider. Cheap to share behind an `Arc`; all sends share one connection
/// pool, one access-token cache and one concurrency limit.
pub struct HmsProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: JsonClient,
    send_uri: Uri,
    app_id: String,
    auth: Arc<TokenSource>,
    permits: Semaphore,
    timeout: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_url(key: &str, v: &str) -> Result<Uri, HmsError> {
    let uri: Uri = v
        .parse()
        .map_err(|e| HmsError::Setup(format!("{key} {v:?} is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Err(HmsError::Setup(format!(
            "{key} {v:?} must start with https:// (or http:// for a simulator)"
        )));
    }
    Ok(uri)
}

impl HmsProvider {
    /// Reads the app secret and builds the client. Must be called inside a tokio runtime.
    /// The first access token is requested on the first send.
    pub fn new(cfg: &HmsConfig) -> Result<HmsProvider, HmsError> {
        if cfg.app_secret_file.is_empty() {
            return Err(HmsError::Setup("hms.app_secret_file is not set".into()));
        }
        if !config::valid_app_id(&cfg.app_id) {
            return Err(HmsError::Setup(
                "hms.app_id must be 1-64 characters of [A-Za-z0-9._-]".into(),
            ));
        }
        if cfg.max_concurrent == 0 {
            return Err(HmsError::Setup(
                "hms.max_concurrent must be at least 1".into(),
            ));
        }
        let secret = AppSecret::from_file(&cfg.app_secret_file)?;
        let endpoint = cfg.endpoint.trim_end_matches('/');
        let send_uri = parse_url(
            "hms.endpoint",
            &format!("{endpoint}/v1/{}/messages:send", cfg.app_id),
        )?;
        let token_uri = parse_url("hms.token_endpoint", &cfg.token_endpoint)?;
        let timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
        let client = crate::tls::json_client(&cfg.ca_file)?;
        let auth = Arc::new(TokenSource::new(
            cfg.app_id.clone(),
            secret,
            client.clone(),
            token_uri,
            timeout,
        ));
        Ok(HmsProvider {
            inner: Arc::new(Inner {
                client,
                send_uri,
                app_id: cfg.app_id.clone(),
                auth,
                permits: Semaphore::new(cfg.max_concurrent as usize),
                timeout,
            }),
        })
    }

    /// The app the pushes are sent for (the `{app_id}` in the send URL).
    pub fn app_id(&self) -> &str {
        &self.inner.app_id
    }

    /// One `messages:send` attempt for `msg`, classified. [`Class::RenewAuth`] means the
    /// access token was refused and has already been renewed: try again at once. A token
    /// that cannot be had, a timeout or a connection failure is [`Class::Retry`].
    pub async fn attempt(&self, msg: &PushMessage) -> Class {
        self.inner.attempt(msg).await
    }
}

impl Inner {
    async fn attempt(&self, msg: &PushMessage) -> Class {
        let masked = MaskedToken(&msg.token);
        let token = match self.auth.token().await {
            Ok(t) => t,
            Err(e) => {
                // Nothing was sent. The failed request itself is logged once per hold
                // period by the token source, not once per push.
                tracing::debug!(challenge_id = %msg.challenge_id, error = %e, "hms: no access token");
                return Class::Retry { after: None };
            }
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Class::Permanent; // the semaphore is never closed; be safe anyway
        };
        let started = Instant::now();
        let work = async {
            let req = Request::builder()
                .method(Method::POST)
                .uri(self.send_uri.clone())
                .header(CONTENT_TYPE, "application/json;charset=UTF-8")
                .header(AUTHORIZATION, token.header.clone())
                .body(Full::new(Bytes::from(message::build_body(msg, now_ms()))))
                .map_err(|e| e.to_string())?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            // The status and headers still classify an answer whose body we could not read.
            let body = match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok::<_, String>((status, parts.headers, body))
        };
        let (class, label) = match tokio::time::timeout(self.timeout, work).await {
            Err(_) => (Class::Retry { after: None }, "timeout"),
            Ok(Err(e)) => {
                tracing::debug!(challenge_id = %msg.challenge_id, error = %e, "hms: attempt failed");
                (Class::Retry { after: None }, "error")
            }
            Ok(Ok((status, headers, body))) => {
                let class = classify::classify(status, &headers, &body);
                let shown = || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                match class {
                    Class::Delivered => {
                        tracing::debug!(challenge_id = %msg.challenge_id, token = %masked, "hms: delivered")
                    }
                    Class::TokenGone => {
                        tracing::info!(challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, status, "hms: push token gone")
                    }
                    Class::Permanent => {
                        tracing::warn!(challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, status, body = %shown(), "hms: push refused")
                    }
                    Class::Retry { .. } => {
                        tracing::debug!(challenge_id = %msg.challenge_id, status, body = %shown(), "hms: transient refusal")
                    }
                    Class::RenewAuth => {
                        tracing::info!(status, body = %shown(), "hms: access token refused; renewing it")
                    }
                }
                (class, class.metric_label())
            }
        };
        crate::telemetry::record_push("hms", label, started.elapsed());
        if class == Class::RenewAuth {
            if let Err(e) = self.auth.renew_after_rejection(&token).await {
                // Not renewed: an ordinary retry, which asks for a token again.
                tracing::warn!(error = %e, "hms: access token renewal failed");
                return Class::Retry { after: None };
            }
        }
        class
    }
}

/// The retry policy of one push around single attempts: deliver, token gone and
/// permanent end it; a refused access token is retried at once, once; transient answers
/// are retried after `Retry-After` or with backoff while the challenge lives. The caller
/// bounds it by the challenge's life plus one request timeout.
async fn deliver(provider: &HmsProvider, msg: &PushMessage) -> PushResult {
    let mut attempt: u32 = 0;
    let mut renewed = false;
    loop {
        let hint = match provider.attempt(msg).await {
            Class::Delivered => return PushResult::Delivered,
            Class::TokenGone => return PushResult::TokenGone,
            Class::Permanent => return PushResult::Failed,
            Class::RenewAuth if !renewed => {
                renewed = true;
                continue;
            }
            Class::RenewAuth => {
                tracing::warn!(challenge_id = %msg.challenge_id, "hms: a renewed access token was refused too; check hms.app_id and the app secret");
                return PushResult::Failed;
            }
            Class::Retry { after } => after,
        };
        match crate::retry::next_delay(attempt, hint, msg.remaining(now_ms())) {
            Some(d) => {
                tokio::time::sleep(d).await;
                attempt = attempt.saturating_add(1);
            }
            None => {
                tracing::warn!(challenge_id = %msg.challenge_id, device_id = %msg.device_id, attempts = attempt + 1, "hms: giving up, the challenge's life ran out");
                return PushResult::Failed;
            }
        }
    }
}

impl PushProvider for HmsProvider {
    fn platform(&self) -> Platform {
        Platform::Hms
    }

    /// Sends one push. A challenge push is never sent once its challenge has expired; a
    /// withdrawal always gets one attempt, because expiry is itself a reason to withdraw.
    /// Either way the future resolves no later than `expires_at_ms` plus one request
    /// timeout, or one request timeout from now for a late withdrawal.
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(async move {
            let remaining = msg.remaining(now_ms());
            if remaining.is_zero() && !msg.is_withdraw() {
                return PushResult::Failed;
            }
            let horizon = remaining + self.inner.timeout;
            tokio::time::timeout(horizon, deliver(self, &msg))
                .await
                .unwrap_or(PushResult::Failed)
        })
    }
}
