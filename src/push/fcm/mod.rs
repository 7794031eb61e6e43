//! FCM HTTP v1 transport: [`FcmProvider`] sends challenge and withdrawal data messages to
//! `POST {endpoint}/v1/projects/{project_id}/messages:send`, authenticated with an OAuth2
//! access token minted from a service-account key ([`auth`]), over the shared pooled
//! rustls client (HTTP/2 when the server offers it). It makes one attempt at a time, its
//! answer classified by the pure [`classify::classify`]; the shared
//! [`crate::push::delivery`] loop retries transient failures after `Retry-After` or with
//! jittered backoff while the challenge lives, and renews a refused access token once.
//!
//! Submodules: [`auth`] (key file, assertion signer, token cache), [`classify`] (answer
//! classification), [`message`] (the request body).

pub mod auth;
pub mod classify;
pub mod message;

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::clock::now_ms;
use crate::config::{FcmConfig, FcmSettings};
use crate::push::bearer::BearerPush;
use crate::push::delivery::{self, Attempt, Bounds, Transport, Unsendable};
use crate::push::{BoxFuture, Classification, PushMessage, PushProvider};
use crate::tls::JsonClient;
use auth::{AccessToken, AuthError, ServiceAccount, TokenSource};
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// FCM's answers are small JSON documents; more than this is not read.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Errors setting up the FCM provider.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("fcm: {0}")]
    Setup(String),
    #[error("fcm: {0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
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

impl FcmProvider {
    /// Validates the section ([`FcmConfig::settings`]) and [`start`](Self::start)s.
    pub fn new(cfg: &FcmConfig) -> Result<FcmProvider, FcmError> {
        match cfg.settings()? {
            Some(s) => Self::start(&s),
            None => Err(FcmError::Setup(
                "fcm.service_account_file is not set".into(),
            )),
        }
    }

    /// Reads the service-account key, builds the client. Must be called inside a tokio
    /// runtime. The first access token is minted on the first send.
    pub fn start(cfg: &FcmSettings) -> Result<FcmProvider, FcmError> {
        let acct = ServiceAccount::from_file(&cfg.service_account_file)?;
        let key = acct.encoding_key(&cfg.service_account_file)?;
        let endpoint = &cfg.endpoint;
        let send_uri: Uri = format!("{endpoint}/v1/projects/{}/messages:send", acct.project_id)
            .parse()
            .map_err(|e| {
                FcmError::Setup(format!(
                    "fcm.endpoint {endpoint:?} with project_id {:?} is not a URL: {e}",
                    acct.project_id
                ))
            })?;
        let timeout = cfg.request_timeout;
        let client = crate::tls::json_client(&cfg.ca_file)?;
        let auth = Arc::new(TokenSource::new(acct, key, client.clone(), timeout)?);
        Ok(FcmProvider {
            inner: Arc::new(Inner {
                client,
                send_uri,
                auth,
                permits: Semaphore::new(cfg.max_concurrent),
                timeout,
            }),
        })
    }

    /// The project the key file names (the `{project_id}` in the send URL).
    pub fn project_id(&self) -> &str {
        &self.inner.auth.account().project_id
    }

    /// The service account's email: with the project, what identifies its token cache.
    pub fn client_email(&self) -> &str {
        &self.inner.auth.account().client_email
    }
}

/// One push's state across attempts: the access token to send next (after a renewal)
/// and the one the last attempt sent.
pub type FcmPush = BearerPush<AccessToken>;

impl Inner {
    /// One `messages:send` exchange with `token`, request and answer ended by `by` (the
    /// attempt's [`Bounds::request`]).
    async fn request(&self, msg: &PushMessage, token: &AccessToken, by: Instant) -> Attempt {
        let work = async {
            let body = message::build_body(msg, now_ms());
            let req = crate::push::post(
                self.send_uri.clone(),
                Full::new(Bytes::from(body)),
                [
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/json; charset=UTF-8"),
                    ),
                    (AUTHORIZATION, token.header.clone()),
                ],
            );
            let resp = match self.client.request(req).await {
                Ok(r) => r,
                Err(e) => return Attempt::Unreachable(format!("request failed: {e}")),
            };
            let status = resp.status().as_u16();
            let retry_after = crate::retry::retry_after(resp.headers());
            // The status is what matters; a body we could not read classifies as "not
            // Google's JSON".
            let body = match Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            if classify::is_stale_access_token(status, &body) {
                return Attempt::AuthExpired;
            }
            let class = classify::classify(status, &body, retry_after);
            let detail = if class == Classification::Delivered {
                Bytes::new()
            } else {
                body
            };
            Attempt::Answered {
                class,
                status,
                detail,
            }
        };
        tokio::time::timeout_at(by, work)
            .await
            .unwrap_or(Attempt::TimedOut)
    }
}

impl Transport for Inner {
    type Push = FcmPush;

    fn name(&self) -> &'static str {
        "fcm"
    }

    fn request_timeout(&self) -> Duration {
        self.timeout
    }

    fn prepare(&self, _msg: &PushMessage) -> Result<FcmPush, Unsendable> {
        Ok(FcmPush::default())
    }

    /// Minting a token has its own timeout; it and the wait for a concurrency permit are
    /// not bounded by the request timeout (a busy provider is not a slow FCM) but by the
    /// delivery's horizon.
    async fn attempt(&self, msg: &PushMessage, push: &mut FcmPush, bounds: Bounds) -> Attempt {
        let admitted = push.admit(|| self.auth.token(), &self.permits, bounds.horizon);
        let (token, _permit) = match admitted.await {
            Ok(a) => a,
            Err(a) => return a,
        };
        self.request(msg, &token, bounds.request).await
    }

    /// Renews the refused token unless another push already replaced it.
    async fn renew(&self, push: &mut FcmPush) -> Result<(), String> {
        let auth = &self.auth;
        push.renew(|refused| async move { auth.renew_after_rejection(&refused).await })
            .await
    }
}

impl PushProvider for FcmProvider {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    /// Sends one push through the shared [`delivery`] loop.
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(delivery::deliver(&*self.inner, msg))
    }
}
