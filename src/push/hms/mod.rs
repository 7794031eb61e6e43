//! Huawei Push Kit transport: [`HmsProvider`] sends challenge and withdrawal data
//! messages to `POST {endpoint}/v1/{app_id}/messages:send` with an OAuth 2.0
//! client-credentials access token ([`auth`]), over the shared pooled rustls client
//! (HTTP/2 when the server offers it).
//!
//! It is a [`Transport`]: one attempt takes a token, sends, and classifies the answer with
//! the pure [`classify::classify`]; a refused access token answers
//! [`Attempt::AuthExpired`] and [`Transport::renew`] replaces it through the shared
//! [`TokenSource`] (one request however many pushes saw it refused). The shared
//! [`crate::push::delivery`] loop does the rest: retries after `Retry-After` or with
//! jittered backoff while the challenge lives, at most one renewal per push, the deadline
//! and the metrics.
//!
//! Submodules: [`auth`] (app secret, token cache), [`classify`] (answer classification),
//! [`config`] (the `[hms]` section), [`message`] (the request body).

pub mod auth;
pub mod classify;
pub mod config;
pub mod message;

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::clock::now_ms;
use crate::push::bearer::BearerPush;
use crate::push::delivery::{self, Attempt, Bounds, Transport, Unsendable};
use crate::push::{BoxFuture, PushMessage, PushProvider};
use crate::tls::JsonClient;
use auth::{AccessToken, AppSecret, AuthError, TokenSource};
use bytes::Bytes;
use classify::Class;
use config::HmsConfig;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

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
    client: JsonClient,
    send_uri: Uri,
    app_id: String,
    auth: Arc<TokenSource>,
    permits: Semaphore,
    timeout: Duration,
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
            client,
            send_uri,
            app_id: cfg.app_id.clone(),
            auth,
            permits: Semaphore::new(cfg.max_concurrent as usize),
            timeout,
        })
    }

    /// The app the pushes are sent for (the `{app_id}` in the send URL).
    pub fn app_id(&self) -> &str {
        &self.app_id
    }
}

/// One push's state across attempts: the access token to send next (after a renewal)
/// and the one the last attempt sent.
pub type HmsPush = BearerPush<AccessToken>;

/// A classified answer as the delivery loop takes it. `detail` (the body, for the log)
/// is kept for refusals only.
fn to_attempt(class: Class, status: u16, body: Bytes) -> Attempt {
    match class {
        Class::RenewAuth => Attempt::AuthExpired,
        Class::Delivered => Attempt::Answered {
            class: class.classification(),
            status,
            detail: Bytes::new(),
        },
        Class::TokenGone | Class::Retry { .. } | Class::Permanent => Attempt::Answered {
            class: class.classification(),
            status,
            detail: body,
        },
    }
}

impl HmsProvider {
    /// One `messages:send` exchange with `token`, request and answer ended by `by` (the
    /// attempt's [`Bounds::request`]).
    async fn request(&self, msg: &PushMessage, token: &AccessToken, by: Instant) -> Attempt {
        let work = async {
            let req = crate::push::post(
                self.send_uri.clone(),
                Full::new(Bytes::from(message::build_body(msg, now_ms()))),
                [
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/json;charset=UTF-8"),
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
            // The status and headers still classify an answer whose body we could not read.
            let body = match Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            to_attempt(classify::classify(status, &body, retry_after), status, body)
        };
        tokio::time::timeout_at(by, work)
            .await
            .unwrap_or(Attempt::TimedOut)
    }
}

impl Transport for HmsProvider {
    type Push = HmsPush;

    fn name(&self) -> &'static str {
        "hms"
    }

    fn request_timeout(&self) -> Duration {
        self.timeout
    }

    fn prepare(&self, _msg: &PushMessage) -> Result<HmsPush, Unsendable> {
        Ok(HmsPush::default())
    }

    /// Taking a token has its own timeout (a token that cannot be had is
    /// [`Attempt::Unreachable`]: nothing was sent, and the token source logs the failed
    /// request once per hold period, not once per push); it and the wait for a
    /// concurrency permit are bounded by the delivery's horizon, not by the request timeout.
    async fn attempt(&self, msg: &PushMessage, push: &mut HmsPush, bounds: Bounds) -> Attempt {
        let admitted = push.admit(|| self.auth.token(), &self.permits, bounds.horizon);
        let (token, _permit) = match admitted.await {
            Ok(a) => a,
            Err(a) => return a,
        };
        self.request(msg, &token, bounds.request).await
    }

    /// Renews the refused token unless another push already replaced it.
    async fn renew(&self, push: &mut HmsPush) -> Result<(), String> {
        let auth = &self.auth;
        push.renew(|refused| async move { auth.renew_after_rejection(&refused).await })
            .await
    }
}

impl PushProvider for HmsProvider {
    fn platform(&self) -> Platform {
        Platform::Hms
    }

    /// Sends one push through the shared [`delivery`] loop.
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(delivery::deliver(self, msg))
    }
}
