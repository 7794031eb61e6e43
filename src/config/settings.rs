//! The typed settings [`Config::validate`](super::Config::validate) produces: parsed
//! addresses, durations, enums and token lists, one struct per provider, and secrets that
//! `Debug` never shows.

use super::Config;
use std::net::SocketAddr;
use std::time::Duration;

/// A value that is never printed (`Debug` shows its length only).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Secret {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Validated settings: what [`Config::validate`] makes of a [`Config`]. The daemon and the
/// providers take these and check nothing again. `Debug` shows no secret.
#[derive(Clone)]
pub struct Settings {
    /// The validated values as read, for the sections used as plain numbers and names
    /// (`amqp`, `limits`, `challenge`, the SMS abuse limits).
    pub config: Config,
    pub http: HttpSettings,
    pub metrics_addr: SocketAddr,
    pub log: LogSettings,
    /// `None`: APNs is not configured.
    pub apns: Option<ApnsSettings>,
    /// `None`: FCM is not configured.
    pub fcm: Option<FcmSettings>,
    /// `None`: no SMS gateway.
    pub sms: Option<SmsSettings>,
    /// The named apps (`[apps.<name>]`) in name order, credentials loaded and checked;
    /// `apns`, `fcm` and `config.hms` above are the default app's.
    pub apps: Vec<super::AppSettings>,
    pub prune_interval: Duration,
    pub shutdown_grace: Duration,
    /// Tokio worker threads; 0 = one per core.
    pub worker_threads: usize,
    pub runtime_flavor: crate::runtime::Flavor,
    /// Where the challenge consumers run; filled in once the runtimes are built.
    pub consumer_spread: crate::runtime::Spread,
    /// Things worth a warning at start-up (logged once logging is set up), such as
    /// ignored `SCA_*` variables.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `config` holds the raw secrets (AMQP password, tokens, keys): left out.
        f.debug_struct("Settings")
            .field("http", &self.http)
            .field("metrics_addr", &self.metrics_addr)
            .field("log", &self.log)
            .field("apns", &self.apns)
            .field("fcm", &self.fcm)
            .field("sms", &self.sms)
            .field("apps", &self.apps)
            .field("prune_interval", &self.prune_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("worker_threads", &self.worker_threads)
            .field("runtime_flavor", &self.runtime_flavor)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub auth: ApiAuth,
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    pub max_connections: usize,
}

/// How the backend-facing API authenticates its callers.
#[derive(Clone, PartialEq, Eq)]
pub enum ApiAuth {
    /// A bearer token from this (non-empty) list is required.
    Tokens(Vec<String>),
    /// `http.allow_unauthenticated = true` with no tokens: everyone is let in.
    Unauthenticated,
}

impl ApiAuth {
    /// The accepted tokens; empty when unauthenticated.
    pub fn tokens(&self) -> &[String] {
        match self {
            ApiAuth::Tokens(t) => t,
            ApiAuth::Unauthenticated => &[],
        }
    }
    /// The word `/readyz` reports: `bearer_token` or `unauthenticated`.
    pub fn label(&self) -> &'static str {
        match self {
            ApiAuth::Tokens(_) => "bearer_token",
            ApiAuth::Unauthenticated => "unauthenticated",
        }
    }
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAuth::Tokens(t) => write!(f, "Tokens({} configured)", t.len()),
            ApiAuth::Unauthenticated => f.write_str("Unauthenticated"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter known to parse.
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct ApnsSettings {
    pub endpoint: crate::push::apns::pool::Endpoint,
    /// Extra trust roots; empty = system roots only.
    pub ca_file: String,
    pub key_file: String,
    pub key_id: String,
    pub team_id: String,
    pub topic: http::HeaderValue,
    pub connections: usize,
    pub request_timeout: Duration,
    /// `None`: no keep-alive PINGs.
    pub ping_interval: Option<Duration>,
    pub token_refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct FcmSettings {
    /// `https://host[:port]` (or `http://` on loopback), no trailing slash.
    pub endpoint: String,
    pub service_account_file: String,
    pub ca_file: String,
    pub request_timeout: Duration,
    pub max_concurrent: usize,
}

#[derive(Debug, Clone)]
pub struct SmsSettings {
    pub gateway: SmsGatewayKind,
    pub endpoint: url::Url,
    pub ca_file: String,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum SmsGatewayKind {
    Twilio {
        account_sid: String,
        auth_token: Secret,
        from: String,
    },
    Webhook {
        /// Sent as `Authorization: Bearer …` when set.
        auth_token: Option<Secret>,
    },
}

impl SmsGatewayKind {
    pub fn name(&self) -> &'static str {
        match self {
            SmsGatewayKind::Twilio { .. } => "twilio",
            SmsGatewayKind::Webhook { .. } => "webhook",
        }
    }
}
