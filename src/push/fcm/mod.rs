//! FCM HTTP v1 transport: [`FcmProvider`] sends challenge and withdrawal data messages to
//! `POST {endpoint}/v1/projects/{project_id}/messages:send`, authenticated with an OAuth2
//! access token minted from a service-account key ([`auth`]), over the shared pooled
//! rustls client (HTTP/2 when the server offers it). It owns the retry loop: answers are
//! classified by the pure [`classify::classify`], transient failures are retried after
//! `Retry-After` or with jittered exponential backoff while the challenge lives, and a
//! refused access token is renewed once and the push retried.
//!
//! Submodules: [`auth`] (key file, assertion signer, token cache), [`classify`] (answer
//! classification), [`message`] (the request body).

pub mod auth;
pub mod classify;
pub mod message;

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::config::FcmConfig;
use crate::push::{BoxFuture, Classification, MaskedToken, PushMessage, PushProvider};
use crate::tls::JsonClient;
use auth::{AccessToken, AuthError, ServiceAccount, TokenSource};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// FCM's answers are small JSON documents; more than this is not read.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Errors setting up the FCM provider.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("fcm: {0}")]
    Setup(String),
    #[error("fcm: {0}")]
    Auth(#[from] AuthError),
    #[error("fcm.ca_file: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The FCM HTTP v1 push provider. Cheap to share behind an `Arc`; all sends share one
/// connection pool, one access-token cache and one concurrency limit.
pub struct FcmProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: JsonClient,
    send_uri: Uri,
    auth: Arc<TokenSource>,
    permits: Semaphore,
    timeout: Duration,
}

/// What one HTTP attempt came to, before classification.
enum Attempt {
    Answer {
        status: u16,
        body: Bytes,
        retry_after: Option<String>,
        token: Arc<AccessToken>,
    },
    /// No answer within the request timeout.
    TimedOut,
    /// Connection or protocol failure, or no access token could be had.
    Failed(String),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl FcmProvider {
    /// Reads the service-account key, builds the client. Must be called inside a tokio
    /// runtime. The first access token is minted on the first send.
    pub fn new(cfg: &FcmConfig) -> Result<FcmProvider, FcmError> {
        if cfg.service_account_file.is_empty() {
            return Err(FcmError::Setup(
                "fcm.service_account_file is not set".into(),
            ));
        }
        let acct = ServiceAccount::from_file(&cfg.service_account_file)?;
        let key = acct.encoding_key(&cfg.service_account_file)?;
        let endpoint = cfg.endpoint.trim_end_matches('/');
        let send_uri: Uri = format!("{endpoint}/v1/projects/{}/messages:send", acct.project_id)
            .parse()
            .map_err(|e| FcmError::Setup(format!("fcm.endpoint {endpoint:?} is not a URL: {e}")))?;
        if !matches!(send_uri.scheme_str(), Some("http") | Some("https")) {
            return Err(FcmError::Setup(format!(
                "fcm.endpoint {endpoint:?} must start with https:// (or http:// for a simulator)"
            )));
        }
        if cfg.max_concurrent == 0 {
            return Err(FcmError::Setup(
                "fcm.max_concurrent must be at least 1".into(),
            ));
        }
        let timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
        let client = crate::tls::json_client(&cfg.ca_file)?;
        let auth = Arc::new(TokenSource::new(acct, key, client.clone(), timeout)?);
        Ok(FcmProvider {
            inner: Arc::new(Inner {
                client,
                send_uri,
                auth,
                permits: Semaphore::new(cfg.max_concurrent as usize),
                timeout,
            }),
        })
    }

    /// The project the key file names (the `{project_id}` in the send URL).
    pub fn project_id(&self) -> &str {
        &self.inner.auth.account().project_id
    }
}

impl Inner {
    /// One `messages:send` request. The request and reading its answer are bounded by the
    /// request timeout; waiting for a concurrency permit is not (a busy provider is not a
    /// slow FCM) but is bounded by the caller's horizon, and minting a token has its own
    /// timeout.
    async fn attempt(&self, msg: &PushMessage, token: Option<Arc<AccessToken>>) -> Attempt {
        let token = match token {
            Some(t) => t,
            None => match self.auth.token().await {
                Ok(t) => t,
                Err(e) => return Attempt::Failed(e.to_string()),
            },
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Attempt::Failed("provider is shutting down".into());
        };
        let started = Instant::now();
        let work = async {
            let body = message::build_body(msg, now_ms());
            let req = match Request::builder()
                .method(Method::POST)
                .uri(self.send_uri.clone())
                .header(CONTENT_TYPE, "application/json; charset=UTF-8")
                .header(AUTHORIZATION, token.header.clone())
                .body(Full::new(Bytes::from(body)))
            {
                Ok(r) => r,
                Err(e) => return Attempt::Failed(e.to_string()),
            };
            let resp = match self.client.request(req).await {
                Ok(r) => r,
                Err(e) => return Attempt::Failed(format!("request failed: {e}")),
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // The status is what matters; a body we could not read classifies as "not
            // Google's JSON".
            let body = match Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Attempt::Answer {
                status,
                body,
                retry_after,
                token: token.clone(),
            }
        };
        let outcome = tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Attempt::TimedOut);
        let label = match &outcome {
            Attempt::Answer {
                status,
                body,
                retry_after,
                ..
            } => {
                if classify::is_stale_access_token(*status, body) {
                    "unauthenticated"
                } else {
                    match classify::classify(*status, body, retry_after.as_deref()) {
                        Classification::Delivered => "delivered",
                        Classification::TokenGone => "token_gone",
                        Classification::Retry { .. } => "retry",
                        Classification::Permanent => "failed",
                    }
                }
            }
            Attempt::TimedOut => "timeout",
            Attempt::Failed(_) => "error",
        };
        crate::telemetry::record_push("fcm", label, started.elapsed());
        outcome
    }

    /// The retry loop of one push. The caller bounds it by the challenge's life plus one
    /// request timeout.
    async fn deliver(&self, msg: PushMessage) -> PushResult {
        let masked = MaskedToken(&msg.token);
        let mut attempt: u32 = 0;
        let mut renewed = false;
        let mut token: Option<Arc<AccessToken>> = None;
        loop {
            let hint = match self.attempt(&msg, token.take()).await {
                Attempt::Answer {
                    status,
                    body,
                    retry_after,
                    token: used,
                } => {
                    if !renewed && classify::is_stale_access_token(status, &body) {
                        // Renew once and retry at once: the token, not FCM, was the problem.
                        // A renewal that fails does not count: the next attempt mints.
                        tracing::info!("fcm: access token refused (401); renewing it");
                        match self.auth.renew_after_rejection(&used).await {
                            Ok(t) => {
                                renewed = true;
                                token = Some(t);
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "fcm: access token renewal failed");
                                None
                            }
                        }
                    } else {
                        match classify::classify(status, &body, retry_after.as_deref()) {
                            Classification::Delivered => {
                                tracing::debug!(challenge_id = %msg.challenge_id, token = %masked, "fcm: delivered");
                                return PushResult::Delivered;
                            }
                            Classification::TokenGone => {
                                tracing::info!(challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, status, "fcm: registration token gone");
                                return PushResult::TokenGone;
                            }
                            Classification::Permanent => {
                                tracing::warn!(challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, status, body = %String::from_utf8_lossy(&body[..body.len().min(512)]), "fcm: push refused");
                                return PushResult::Failed;
                            }
                            Classification::Retry { after } => after,
                        }
                    }
                }
                Attempt::TimedOut => None,
                Attempt::Failed(e) => {
                    tracing::debug!(challenge_id = %msg.challenge_id, error = %e, "fcm: attempt failed");
                    None
                }
            };
            let remaining = msg.remaining(now_ms());
            match crate::retry::next_delay(attempt, hint, remaining) {
                Some(d) => {
                    tracing::debug!(challenge_id = %msg.challenge_id, token = %masked, attempt, delay_ms = d.as_millis() as u64, "fcm: retrying");
                    tokio::time::sleep(d).await;
                    attempt = attempt.saturating_add(1);
                }
                None => {
                    tracing::warn!(challenge_id = %msg.challenge_id, device_id = %msg.device_id, token = %masked, attempts = attempt + 1, "fcm: giving up, the challenge's life ran out");
                    return PushResult::Failed;
                }
            }
        }
    }
}

impl PushProvider for FcmProvider {
    fn platform(&self) -> Platform {
        Platform::Fcm
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
            tokio::time::timeout(horizon, self.inner.deliver(msg))
                .await
                .unwrap_or(PushResult::Failed)
        })
    }
}
