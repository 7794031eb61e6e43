//! APNs transport: HTTP/2 over TLS with token (ES256 JWT) auth, behind [`PushProvider`].
//!
//! - [`pool`]: the long-lived HTTP/2 connections, stream limits, keep-alive, replacement.
//! - [`jwt`]: the shared provider token and its renewal rules.
//! - [`payload`]: the request (path, `apns-*` headers, JSON) for a challenge or withdrawal.
//! - [`mod@classify`]: the pure mapping of an answer to delivered / retry / token gone / failed.
//!
//! Retries, the deadline, token renewal after `ExpiredProviderToken` and metrics are the
//! shared [`crate::push::delivery`] loop's; this module makes one attempt at a time.
//!
//! `a2` hard-codes Apple's hosts and the webpki roots, so it cannot reach a simulator or a
//! private CA; the transport is ours, on hyper.

pub mod classify;
pub mod jwt;
pub mod payload;
pub mod pool;

pub use classify::classify;

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::config::{ApnsConfig, ApnsSettings};
use crate::push::delivery::{self, Attempt, Bounds, Transport, Unsendable};
use crate::push::{BoxFuture, PushMessage, PushProvider};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

const PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
use http_body_util::{BodyExt as _, Full, Limited};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// APNs error bodies are tiny JSON objects; never read more than this.
const MAX_ERROR_BODY: usize = 8 * 1024;

/// Errors setting up the APNs provider.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("apns: {0}")]
    Setup(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("apns.key_file: {0}")]
    Key(#[from] jwt::KeyError),
    #[error("apns.ca_file: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The APNs [`PushProvider`] for one topic (app). Cheap to share behind an `Arc`; the
/// connection pool and the provider token belong to the key and are shared by every
/// topic's provider made with [`for_topic`](Self::for_topic); dropping the last closes
/// the connections.
pub struct ApnsProvider {
    inner: Arc<Inner>,
    topic: HeaderValue,
}

struct Inner {
    pool: pool::Pool,
    base: String,
    token: jwt::TokenCache,
    minted: Arc<AtomicU64>,
    timeout: Duration,
}

impl ApnsProvider {
    /// Validates the section ([`ApnsConfig::settings`]) and [`start`](Self::start)s.
    pub fn new(cfg: &ApnsConfig) -> Result<ApnsProvider, ApnsError> {
        match cfg.settings()? {
            Some(s) => Self::start(&s),
            None => Err(ApnsError::Setup("apns.key_file is not set".into())),
        }
    }

    /// Loads the key, builds the TLS configuration and starts the connection pool.
    /// Must be called inside a tokio runtime (it spawns the connection supervisors).
    pub fn start(cfg: &ApnsSettings) -> Result<ApnsProvider, ApnsError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ApnsError::Setup(
                "must be started inside a tokio runtime".into(),
            ));
        }
        let key = jwt::load_key(&cfg.key_file)?;
        let tls = crate::tls::client_config(&cfg.ca_file, &[b"h2"])?;
        let minted = Arc::new(AtomicU64::new(0));
        let counter = minted.clone();
        let token = jwt::TokenCache::new(
            key,
            &cfg.key_id,
            &cfg.team_id,
            cfg.token_refresh,
            Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::telemetry::PROVIDER_TOKEN_RENEWALS, "provider" => "apns")
                    .increment(1);
            }),
        );
        let timeout = cfg.request_timeout;
        let base = cfg.endpoint.base.clone();
        let pool = pool::Pool::start(
            cfg.endpoint.clone(),
            Arc::new(tls),
            pool::PoolConfig {
                connections: cfg.connections,
                ping_interval: cfg.ping_interval,
                ping_timeout: timeout.max(Duration::from_secs(5)),
                connect_timeout: timeout.max(Duration::from_secs(5)),
            },
        );
        Ok(ApnsProvider {
            inner: Arc::new(Inner {
                pool,
                base,
                token,
                minted,
                timeout,
            }),
            topic: cfg.topic.clone(),
        })
    }

    /// A provider for another topic (app) of the same key and endpoint: the same
    /// connections and provider token, its own `apns-topic`.
    pub fn for_topic(&self, topic: HeaderValue) -> ApnsProvider {
        ApnsProvider {
            inner: self.inner.clone(),
            topic,
        }
    }

    /// The `apns-topic` this provider sends.
    pub fn topic(&self) -> &HeaderValue {
        &self.topic
    }

    /// Whether `other` shares this provider's connections and token (the same key).
    pub fn shares_pool_with(&self, other: &ApnsProvider) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Provider tokens minted so far (also counted in `sca_provider_token_renewals_total`).
    pub fn tokens_minted(&self) -> u64 {
        self.inner.minted.load(Ordering::Relaxed)
    }

    /// HTTP/2 connections opened so far, replacements included.
    pub fn connections_opened(&self) -> u64 {
        self.inner.pool.connects()
    }

    /// HTTP/2 connections usable right now.
    pub fn connections_live(&self) -> usize {
        self.inner.pool.live()
    }
}

impl Inner {
    /// One request; the attempt bounds it, waiting for a stream included.
    async fn request(
        &self,
        req: &payload::ApnsRequest,
        topic: &HeaderValue,
        bearer: HeaderValue,
    ) -> Result<(u16, Option<String>), String> {
        // Names and fixed values as static headers: nothing parsed or copied for them.
        let mut uri = String::with_capacity(self.base.len() + req.path.len());
        uri.push_str(&self.base);
        uri.push_str(&req.path);
        let building = |e: &dyn std::fmt::Display| format!("building the request: {e}");
        let uri = http::Uri::try_from(uri).map_err(|e| building(&e))?;
        let expiration = HeaderValue::from_str(&req.expiration).map_err(|e| building(&e))?;
        let mut request = crate::push::post(
            uri,
            Full::new(req.body.clone()),
            [
                (PUSH_TYPE, HeaderValue::from_static(req.push_type)),
                (PRIORITY, HeaderValue::from_static(req.priority)),
                (EXPIRATION, expiration),
                (TOPIC, topic.clone()),
                (AUTHORIZATION, bearer),
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            ],
        );
        if let Some(id) = &req.collapse_id {
            let id = HeaderValue::from_str(id).map_err(|e| building(&e))?;
            request.headers_mut().insert(COLLAPSE_ID, id);
        }
        let mut lease = self.pool.checkout().await;
        let resp = lease
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("{e}"))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok((status, None));
        }
        let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_else(|_| Bytes::new());
        Ok((status, classify::reason(&body)))
    }
}

/// One push's state across attempts: the request and the bearer it last carried.
pub struct ApnsPush {
    req: payload::ApnsRequest,
    bearer: Option<Arc<str>>,
}

impl Transport for ApnsProvider {
    type Push = ApnsPush;

    fn name(&self) -> &'static str {
        "apns"
    }

    fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    fn prepare(&self, msg: &PushMessage) -> Result<ApnsPush, Unsendable> {
        match payload::build(msg) {
            Ok(req) => Ok(ApnsPush { req, bearer: None }),
            Err(e) => Err(Unsendable {
                // Apple would answer 400 BadDeviceToken for it.
                token_gone: e == payload::PayloadError::BadToken,
                reason: e.to_string(),
            }),
        }
    }

    async fn attempt(&self, _msg: &PushMessage, push: &mut ApnsPush, bounds: Bounds) -> Attempt {
        let (bearer, header) = self.inner.token.bearer_and_header();
        push.bearer = Some(bearer);
        let request = self.inner.request(&push.req, &self.topic, header);
        match tokio::time::timeout_at(bounds.request, request).await {
            Ok(Ok((status, reason))) => {
                if status == 403 && reason.as_deref() == Some(classify::EXPIRED_PROVIDER_TOKEN) {
                    return Attempt::AuthExpired;
                }
                Attempt::Answered {
                    class: classify(status, reason.as_deref()),
                    status,
                    detail: reason.map(Bytes::from).unwrap_or_default(),
                }
            }
            Ok(Err(e)) => Attempt::Unreachable(e),
            Err(_) => Attempt::TimedOut,
        }
    }

    async fn renew(&self, push: &mut ApnsPush) -> Result<(), String> {
        // Renews at once unless another push already did; either way the next attempt
        // takes the current token.
        if let Some(rejected) = push.bearer.take() {
            let minted = self.inner.token.renew_rejected(&rejected);
            tracing::debug!(
                minted,
                "apns provider token renewal after ExpiredProviderToken"
            );
        }
        Ok(())
    }
}

impl PushProvider for ApnsProvider {
    fn platform(&self) -> Platform {
        Platform::Apns
    }
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(delivery::deliver(self, msg))
    }
}
