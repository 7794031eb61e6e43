//! Configuration: a TOML file plus `SCA_<SECTION>_<KEY>` environment overrides, read into
//! the raw serde [`Config`] (every key, with its default) and validated into typed
//! [`Settings`] before any port is bound. Every error names the offending key; none shows
//! the value of a key holding a secret.

pub use crate::push::hms::config::HmsConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

mod apps;
mod settings;
pub use apps::{AppConfig, AppSettings};
pub use settings::*;

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The whole daemon configuration. Field names carry their units.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub challenge: ChallengeConfig,
    pub apns: ApnsConfig,
    pub fcm: FcmConfig,
    pub hms: HmsConfig,
    pub sms: SmsConfig,
    pub shutdown: ShutdownConfig,
    pub runtime: RuntimeConfig,
    /// Named apps (`[apps.<name>]`, challenge field `app`); the sections above are the
    /// default app.
    pub apps: std::collections::BTreeMap<String, AppConfig>,
    pub fraud: FraudConfig,
    pub cluster: ClusterConfig,
}

/// Cluster mode (CONTRACT §10): partitioned intake with one owner per partition.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Route challenges by `user_id` to `partitions` queues, each owned by one instance.
    pub enabled: bool,
    /// Partition queues `{challenges_queue}.p0` … `.p{N-1}`; fixed for the life of a cluster.
    pub partitions: u32,
    /// HMAC-SHA256 key of every instance-to-instance message; at least 32 bytes,
    /// required in cluster mode. Outside it, control traffic is signed and checked
    /// whenever it is set.
    pub secret: String,
    /// The longest a dead owner's partitions stay unowned.
    pub takeover_seconds: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            partitions: 16,
            secret: String::new(),
            takeover_seconds: 10,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("enabled", &self.enabled)
            .field("partitions", &self.partitions)
            .field("secret", &if self.secret.is_empty() { "" } else { "****" })
            .field("takeover_seconds", &self.takeover_seconds)
            .finish()
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=256).contains(&self.partitions) {
            return Err(invalid("cluster.partitions", "must be 1..=256"));
        }
        if !(2..=300).contains(&self.takeover_seconds) {
            return Err(invalid("cluster.takeover_seconds", "must be 2..=300"));
        }
        if self.enabled && self.secret.is_empty() {
            return Err(invalid(
                "cluster.secret",
                "is required when cluster.enabled = true (at least 32 bytes, the same on every instance)",
            ));
        }
        if !self.secret.is_empty() && self.secret.len() < 32 {
            return Err(invalid("cluster.secret", "must be at least 32 bytes"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads; 0 = one per core. One thread spends less CPU per challenge
    /// (no cross-thread wake-ups) at the price of tail latency under load.
    pub worker_threads: usize,
    /// `multi-thread` (one work-stealing runtime) or `thread-per-core` (one
    /// current-thread runtime per worker thread, the challenge consumers spread over them).
    pub flavor: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            flavor: "multi-thread".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: String,
    /// Unacked deliveries per consumer channel (AMQP `basic.qos`), 1–65535. Kept small: an
    /// ack behind older undecided deliveries on its channel costs the broker work that
    /// grows with that channel's unacked deliveries.
    pub prefetch: u32,
    /// Consumer channels on `challenges_queue`, 1–256. In-flight challenges ≤ prefetch ×
    /// consumers.
    pub consumers: u32,
    pub challenges_queue: String,
    pub responses_queue: String,
    pub outcomes_exchange: String,
    pub events_exchange: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    /// Exchange the instances use to find the owner of a challenge they do not hold.
    pub control_exchange: String,
    /// Publish a `challenge.dispatched` event per challenge (one extra broker publish each).
    pub dispatched_events: bool,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// Publisher-confirm window: outcomes/events awaiting a confirm at once.
    pub publish_window: u32,
}

impl AmqpConfig {
    /// Every queue and exchange name as `{ns}.challenges`, `{ns}.outcomes`, … (the
    /// defaults are the `sca` namespace): a separate topology on a shared broker.
    pub fn namespaced(mut self, ns: &str) -> Self {
        self.challenges_queue = format!("{ns}.challenges");
        self.responses_queue = format!("{ns}.responses");
        self.outcomes_exchange = format!("{ns}.outcomes");
        self.events_exchange = format!("{ns}.events");
        self.dead_exchange = format!("{ns}.dead");
        self.dead_queue = format!("{ns}.dead");
        self.control_exchange = format!("{ns}.control");
        self
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 1000,
            consumers: 20,
            challenges_queue: "sca.challenges".into(),
            responses_queue: "sca.responses".into(),
            outcomes_exchange: "sca.outcomes".into(),
            events_exchange: "sca.events".into(),
            dead_exchange: "sca.dead".into(),
            dead_queue: "sca.dead".into(),
            control_exchange: "sca.control".into(),
            dispatched_events: true,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 10_000,
            publish_window: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// Comma-separated bearer tokens for the backend-facing API. Empty refuses to start
    /// unless `allow_unauthenticated` is set.
    pub api_tokens: String,
    /// Run with no bearer token at all (every backend call is then accepted).
    pub allow_unauthenticated: bool,
    pub max_body_bytes: usize,
    pub max_wait_seconds: u64,
    pub max_connections: usize,
    /// A connection whose request headers are not complete this long after the
    /// connection opened, or after it started sending them, is closed.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in progress for this long is closed.
    pub idle_timeout_seconds: u64,
    /// A request that carries a body is answered 408 unless its body is read and the
    /// request answered within this (slow bodies).
    pub body_timeout_ms: u64,
    /// Concurrent HTTP/2 streams allowed per connection.
    pub max_streams_per_connection: u32,
    /// Requests in progress at once on the listener, all connections together; over it
    /// a request is answered 503 at once.
    pub max_requests_in_flight: usize,
    /// TCP keep-alive idle time on accepted sockets (probes find dead peers); 0 = off.
    pub tcp_keepalive_seconds: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8080".into(),
            api_tokens: String::new(),
            allow_unauthenticated: false,
            max_body_bytes: 8192,
            max_wait_seconds: 30,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_seconds: 60,
            body_timeout_ms: 10_000,
            max_streams_per_connection: 100,
            max_requests_in_flight: 10_000,
            tcp_keepalive_seconds: 60,
        }
    }
}

impl HttpConfig {
    pub fn tokens(&self) -> Vec<String> {
        split_list(&self.api_tokens)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub addr: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:9090".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `sca_dispatch=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained challenges per user per minute.
    pub challenges_per_minute: u32,
    /// Challenges a user may send in a burst above the sustained rate.
    pub challenge_burst: u32,
    /// How often idle limiter state is pruned.
    pub prune_interval_seconds: u64,
    /// The first gap before the next push after an unanswered one; doubles per
    /// unanswered challenge, capped at 1 h; 0 turns the backoff off.
    pub unanswered_backoff_seconds: u64,
    /// A new challenge cancels the user's pending one (`superseded`).
    pub one_pending_per_user: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            challenges_per_minute: 10,
            challenge_burst: 5,
            prune_interval_seconds: 60,
            unanswered_backoff_seconds: 10,
            one_pending_per_user: false,
        }
    }
}

/// What a fraud report does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FraudConfig {
    /// Pushes to a user are muted this long after a fraud report.
    pub mute_seconds: u64,
}

impl Default for FraudConfig {
    fn default() -> Self {
        Self { mute_seconds: 1200 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChallengeConfig {
    /// SMS fallback delay when a challenge has `sms` without `fallback_after_seconds`.
    pub default_fallback_after_seconds: u64,
    /// How long a finished challenge is remembered (for 409/410 answers and dedup).
    pub retain_completed_seconds: u64,
    /// Reject challenges whose `created_at` is further than this in the future.
    pub max_clock_skew_seconds: u64,
    /// The most challenges held in memory at once, pending and retained after their
    /// outcome. At the bound intake pauses: deliveries wait in the queue until retention
    /// frees room (a retained record is never dropped early: a copy published again
    /// would then get a second outcome).
    pub max_held: u64,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        Self {
            default_fallback_after_seconds: 30,
            retain_completed_seconds: 600,
            max_clock_skew_seconds: 60,
            max_held: 2_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    pub endpoint: String,
    pub ca_file: String,
    pub key_file: String,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    pub connections: u32,
    pub request_timeout_ms: u64,
    pub ping_interval_seconds: u64,
    /// Provider-token age at which it is renewed (Apple: 20–60 minutes).
    pub token_refresh_seconds: u64,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://api.push.apple.com".into(),
            ca_file: String::new(),
            key_file: String::new(),
            key_id: String::new(),
            team_id: String::new(),
            topic: String::new(),
            connections: 2,
            request_timeout_ms: 10_000,
            ping_interval_seconds: 60,
            token_refresh_seconds: 50 * 60,
        }
    }
}

impl ApnsConfig {
    /// APNs counts as configured once a key file is given.
    pub fn is_configured(&self) -> bool {
        !self.key_file.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    pub endpoint: String,
    pub service_account_file: String,
    pub ca_file: String,
    pub request_timeout_ms: u64,
    pub max_concurrent: u32,
    /// Allow an `http://` endpoint on a host that is not loopback.
    pub allow_insecure_http: bool,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://fcm.googleapis.com".into(),
            service_account_file: String::new(),
            ca_file: String::new(),
            request_timeout_ms: 10_000,
            max_concurrent: 500,
            allow_insecure_http: false,
        }
    }
}

impl FcmConfig {
    pub fn is_configured(&self) -> bool {
        !self.service_account_file.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// `twilio`, `webhook`, or empty (SMS disabled).
    pub gateway: String,
    pub endpoint: String,
    pub account_sid: String,
    pub auth_token: String,
    pub from: String,
    pub ca_file: String,
    pub request_timeout_ms: u64,
    /// Key for the OTP hash (hex or text); empty = a random key per process.
    pub otp_key: String,
    /// Abuse limit: SMS per user per window.
    pub max_per_window: u32,
    pub window_seconds: u64,
    /// After this many unconfirmed codes within `unconfirmed_window_seconds`, SMS is blocked.
    pub max_unconfirmed: u32,
    pub unconfirmed_window_seconds: u64,
    pub block_seconds: u64,
    /// Comma-separated E.164 country prefixes (`+39,+355`); empty = every country.
    pub allowed_country_prefixes: String,
    /// Abuse limit: SMS per phone number per `window_seconds`, whichever users ask
    /// (the same number behind many user ids is SMS pumping).
    pub max_per_phone_per_window: u32,
    /// SMS per minute per instance, all users together.
    pub max_per_minute_global: u32,
    /// Allow an `http://` endpoint on a host that is not loopback.
    pub allow_insecure_http: bool,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            gateway: String::new(),
            endpoint: String::new(),
            account_sid: String::new(),
            auth_token: String::new(),
            from: String::new(),
            ca_file: String::new(),
            request_timeout_ms: 10_000,
            otp_key: String::new(),
            max_per_window: 3,
            window_seconds: 15 * 60,
            max_unconfirmed: 7,
            unconfirmed_window_seconds: 24 * 3600,
            block_seconds: 24 * 3600,
            allowed_country_prefixes: String::new(),
            max_per_phone_per_window: 3,
            max_per_minute_global: 600,
            allow_insecure_http: false,
        }
    }
}

impl SmsConfig {
    pub fn is_configured(&self) -> bool {
        !self.gateway.is_empty()
    }
    pub fn allowed_prefixes(&self) -> Vec<String> {
        split_list(&self.allowed_country_prefixes)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub grace_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_seconds: 10 }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Consumer channels per instance at most (`amqp.consumers`): well inside the broker's
/// default `channel_max` of 2,047 beside the daemon's other channels.
const MAX_CONSUMERS: u32 = 256;

/// Keys whose values are secrets: never shown in an error message.
const SECRET_KEYS: &[&str] = &["url", "auth_token", "api_tokens", "otp_key", "secret"];

impl Config {
    /// Loads the file (if any), applies the environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// Same as [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<none>".into());
        Self::from_toml_with_env(&text, &name, env)
    }

    /// Parses TOML text, applies overrides from `env` and validates.
    pub fn from_toml_with_env(
        text: &str,
        name: &str,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let (cfg, warnings) = Self::parse_with_env(text, name, env)?;
        let mut settings = cfg.validate()?;
        settings.warnings.extend(warnings);
        Ok(settings)
    }

    /// Parses TOML text and applies overrides from `env`, without validating; also
    /// returns the warnings about ignored variables.
    pub fn parse_with_env(
        text: &str,
        name: &str,
        env: &[(String, String)],
    ) -> Result<(Config, Vec<String>), ConfigError> {
        // Parse the file once strictly so unknown keys and wrong types are reported
        // against the file, then merge it over the defaults as a value tree.
        let file: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        let mut tree = toml::Value::try_from(&file).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        let warnings = apply_env(&mut tree, env)?;
        let cfg: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Env {
                var: "SCA_*".into(),
                message: e.message().to_string(),
            })?;
        Ok((cfg, warnings))
    }

    /// Checks every value a type cannot express and returns the typed settings; errors
    /// name the key.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let a = &self.amqp;
        if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
            return Err(invalid("amqp.url", "must start with amqp:// or amqps://"));
        }
        if a.prefetch == 0 || a.prefetch > 65_535 {
            return Err(invalid("amqp.prefetch", "must be 1..=65535"));
        }
        if a.consumers == 0 || a.consumers > MAX_CONSUMERS {
            return Err(invalid(
                "amqp.consumers",
                format!("must be 1..={MAX_CONSUMERS}"),
            ));
        }
        if a.publish_window == 0 {
            return Err(invalid("amqp.publish_window", "must be at least 1"));
        }
        for (key, v) in [
            ("amqp.challenges_queue", &a.challenges_queue),
            ("amqp.responses_queue", &a.responses_queue),
            ("amqp.outcomes_exchange", &a.outcomes_exchange),
            ("amqp.events_exchange", &a.events_exchange),
            ("amqp.dead_exchange", &a.dead_exchange),
            ("amqp.dead_queue", &a.dead_queue),
            ("amqp.control_exchange", &a.control_exchange),
        ] {
            if v.is_empty() || v.len() > 255 {
                return Err(invalid(key, "must be 1..=255 characters"));
            }
        }
        if a.reconnect_initial_ms == 0 || a.reconnect_max_ms < a.reconnect_initial_ms {
            return Err(invalid(
                "amqp.reconnect_max_ms",
                "must be >= amqp.reconnect_initial_ms > 0",
            ));
        }
        let http_addr = parse_addr("http.addr", &self.http.addr)?;
        let metrics_addr = parse_addr("metrics.addr", &self.metrics.addr)?;
        if self.http.max_body_bytes < 256 || self.http.max_body_bytes > 1 << 20 {
            return Err(invalid("http.max_body_bytes", "must be 256..=1048576"));
        }
        if self.http.max_wait_seconds == 0 || self.http.max_wait_seconds > 300 {
            return Err(invalid("http.max_wait_seconds", "must be 1..=300"));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        self.validate_http_timeouts()?;
        let format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid("log.format", "must be `text` or `json`")),
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid("log.level", "not a valid tracing filter"));
        }
        if self.limits.challenges_per_minute == 0 {
            return Err(invalid(
                "limits.challenges_per_minute",
                "must be at least 1",
            ));
        }
        if self.limits.challenge_burst == 0 {
            return Err(invalid("limits.challenge_burst", "must be at least 1"));
        }
        if self.limits.prune_interval_seconds == 0 {
            return Err(invalid(
                "limits.prune_interval_seconds",
                "must be at least 1",
            ));
        }
        if self.limits.unanswered_backoff_seconds > 3600 {
            return Err(invalid(
                "limits.unanswered_backoff_seconds",
                "must be 0..=3600 (0 turns the backoff off)",
            ));
        }
        if !(1..=604_800).contains(&self.fraud.mute_seconds) {
            return Err(invalid("fraud.mute_seconds", "must be 1..=604800"));
        }
        if self.challenge.retain_completed_seconds == 0 {
            return Err(invalid(
                "challenge.retain_completed_seconds",
                "must be at least 1",
            ));
        }
        if !(1..=100_000_000).contains(&self.challenge.max_held) {
            return Err(invalid("challenge.max_held", "must be 1..=100000000"));
        }
        let apns = self.apns.settings()?;
        let fcm = self.fcm.settings()?;
        self.hms.validate()?;
        let sms = self.sms.settings()?;
        let apps = apps::validate(self, apns.as_ref())?;
        self.cluster.validate()?;
        if self.cluster.enabled {
            // AMQP names are short strings, at most 255 bytes; the longest name cluster
            // mode derives is the last partition's lock queue.
            let longest = self.amqp.challenges_queue.len()
                + format!(".p{}.owner", self.cluster.partitions.saturating_sub(1)).len();
            if longest > 255 {
                return Err(invalid(
                    "amqp.challenges_queue",
                    "must leave room for the partition queues' names (`{queue}.p{N}.owner` at most 255 bytes)",
                ));
            }
        }
        if self.runtime.worker_threads > 256 {
            return Err(invalid("runtime.worker_threads", "must be 0..=256"));
        }
        let runtime_flavor =
            crate::runtime::Flavor::parse(&self.runtime.flavor).ok_or_else(|| {
                invalid(
                    "runtime.flavor",
                    "must be `multi-thread` or `thread-per-core`",
                )
            })?;
        if self.shutdown.grace_seconds > 600 {
            return Err(invalid("shutdown.grace_seconds", "must be at most 600"));
        }
        let tokens = self.http.tokens();
        let auth = if !tokens.is_empty() {
            ApiAuth::Tokens(tokens)
        } else if self.http.allow_unauthenticated {
            ApiAuth::Unauthenticated
        } else {
            return Err(invalid(
                "http.api_tokens",
                "is empty: set the backend's bearer tokens, or http.allow_unauthenticated = true to run with no authentication",
            ));
        };
        Ok(Settings {
            config: self.clone(),
            http: HttpSettings {
                addr: http_addr,
                auth,
                max_body_bytes: self.http.max_body_bytes,
                max_wait: Duration::from_secs(self.http.max_wait_seconds),
                max_connections: self.http.max_connections,
            },
            metrics_addr,
            log: LogSettings {
                format,
                level: self.log.level.clone(),
            },
            apns,
            fcm,
            sms,
            apps,
            prune_interval: Duration::from_secs(self.limits.prune_interval_seconds),
            shutdown_grace: Duration::from_secs(self.shutdown.grace_seconds),
            worker_threads: self.runtime.worker_threads,
            runtime_flavor,
            consumer_spread: crate::runtime::Spread::default(),
            warnings: Vec::new(),
        })
    }

    fn validate_http_timeouts(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        if !(100..=300_000).contains(&h.header_read_timeout_ms) {
            return Err(invalid(
                "http.header_read_timeout_ms",
                "must be 100..=300000",
            ));
        }
        if !(1..=3600).contains(&h.idle_timeout_seconds) {
            return Err(invalid("http.idle_timeout_seconds", "must be 1..=3600"));
        }
        if !(100..=300_000).contains(&h.body_timeout_ms) {
            return Err(invalid("http.body_timeout_ms", "must be 100..=300000"));
        }
        if !(1..=1000).contains(&h.max_streams_per_connection) {
            return Err(invalid(
                "http.max_streams_per_connection",
                "must be 1..=1000",
            ));
        }
        if h.max_requests_in_flight == 0 {
            return Err(invalid("http.max_requests_in_flight", "must be at least 1"));
        }
        if h.tcp_keepalive_seconds > 7200 {
            return Err(invalid("http.tcp_keepalive_seconds", "must be 0..=7200"));
        }
        Ok(())
    }

    /// One line per provider saying whether it is configured (for start-up logs).
    pub fn provider_summary(&self) -> String {
        format!(
            "apns={} fcm={} hms={} sms={}",
            if self.apns.is_configured() {
                "configured"
            } else {
                "not configured"
            },
            if self.fcm.is_configured() {
                "configured"
            } else {
                "not configured"
            },
            if self.hms.is_configured() {
                "configured"
            } else {
                "not configured"
            },
            if self.sms.is_configured() {
                self.sms.gateway.as_str()
            } else {
                "not configured"
            },
        ) + &self.apps_summary()
    }

    /// ` apps=business[apns,fcm],…` (empty without named apps): which platforms each
    /// names.
    fn apps_summary(&self) -> String {
        if self.apps.is_empty() {
            return String::new();
        }
        let apps: Vec<String> = self
            .apps
            .iter()
            .map(|(name, a)| {
                let mut p = Vec::new();
                if !a.apns_topic.is_empty() {
                    p.push("apns");
                }
                if !a.fcm_service_account_file.is_empty() {
                    p.push("fcm");
                }
                if !a.hms_app_id.is_empty() {
                    p.push("hms");
                }
                format!("{}[{}]", name.escape_debug(), p.join(","))
            })
            .collect();
        format!(" apps={}", apps.join(","))
    }
}

impl ApnsConfig {
    /// The section's typed settings, `None` when APNs is not configured (no key file).
    pub fn settings(&self) -> Result<Option<ApnsSettings>, ConfigError> {
        let c = self;
        check_url("apns.endpoint", &c.endpoint, Scheme::HttpsOnly)?;
        let endpoint = crate::push::apns::pool::Endpoint::parse(&c.endpoint)
            .map_err(|e| invalid("apns.endpoint", e))?;
        check_file_opt("apns.ca_file", &c.ca_file)?;
        if c.connections == 0 || c.connections > 64 {
            return Err(invalid("apns.connections", "must be 1..=64"));
        }
        if c.request_timeout_ms == 0 {
            return Err(invalid("apns.request_timeout_ms", "must be at least 1"));
        }
        if !(20 * 60..=55 * 60).contains(&c.token_refresh_seconds) {
            return Err(invalid(
                "apns.token_refresh_seconds",
                "must be 1200..=3300 (Apple refuses tokens renewed more often than every 20 minutes or older than 60)",
            ));
        }
        if !c.is_configured() {
            return Ok(None);
        }
        check_file_opt("apns.key_file", &c.key_file)?;
        for (key, v) in [
            ("apns.key_id", &c.key_id),
            ("apns.team_id", &c.team_id),
            ("apns.topic", &c.topic),
        ] {
            if v.is_empty() {
                return Err(invalid(key, "required when apns.key_file is set"));
            }
        }
        let topic = http::HeaderValue::from_str(&c.topic)
            .map_err(|_| invalid("apns.topic", "not a valid header value"))?;
        Ok(Some(ApnsSettings {
            endpoint,
            ca_file: c.ca_file.clone(),
            key_file: c.key_file.clone(),
            key_id: c.key_id.clone(),
            team_id: c.team_id.clone(),
            topic,
            connections: c.connections as usize,
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            // 0 turns keep-alive PINGs off.
            ping_interval: (c.ping_interval_seconds > 0)
                .then(|| Duration::from_secs(c.ping_interval_seconds)),
            token_refresh: Duration::from_secs(c.token_refresh_seconds),
        }))
    }
}

impl FcmConfig {
    /// The section's typed settings, `None` when FCM is not configured.
    pub fn settings(&self) -> Result<Option<FcmSettings>, ConfigError> {
        let c = self;
        check_url(
            "fcm.endpoint",
            &c.endpoint,
            Scheme::Https {
                insecure_key: "fcm.allow_insecure_http",
                allow_insecure: c.allow_insecure_http,
            },
        )?;
        check_file_opt("fcm.ca_file", &c.ca_file)?;
        check_file_opt("fcm.service_account_file", &c.service_account_file)?;
        if c.request_timeout_ms == 0 {
            return Err(invalid("fcm.request_timeout_ms", "must be at least 1"));
        }
        if c.max_concurrent == 0 {
            return Err(invalid("fcm.max_concurrent", "must be at least 1"));
        }
        if !c.is_configured() {
            return Ok(None);
        }
        Ok(Some(FcmSettings {
            endpoint: c.endpoint.trim_end_matches('/').to_string(),
            service_account_file: c.service_account_file.clone(),
            ca_file: c.ca_file.clone(),
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            max_concurrent: c.max_concurrent as usize,
        }))
    }
}

impl SmsConfig {
    /// The gateway's typed settings, `None` when no gateway is configured. (The abuse
    /// limits are plain numbers, read from the section itself.)
    pub fn settings(&self) -> Result<Option<SmsSettings>, ConfigError> {
        let c = self;
        let gateway = match c.gateway.as_str() {
            "" => None,
            "twilio" => {
                for (key, v) in [
                    ("sms.account_sid", &c.account_sid),
                    ("sms.auth_token", &c.auth_token),
                    ("sms.from", &c.from),
                ] {
                    if v.is_empty() {
                        return Err(invalid(key, "required for sms.gateway = \"twilio\""));
                    }
                }
                Some(SmsGatewayKind::Twilio {
                    account_sid: c.account_sid.clone(),
                    auth_token: Secret::new(c.auth_token.clone()),
                    from: c.from.clone(),
                })
            }
            "webhook" => Some(SmsGatewayKind::Webhook {
                auth_token: (!c.auth_token.is_empty()).then(|| Secret::new(c.auth_token.clone())),
            }),
            other => {
                return Err(invalid(
                    "sms.gateway",
                    format!("`{other}` is not supported: must be `twilio`, `webhook` or empty"),
                ))
            }
        };
        let Some(gateway) = gateway else {
            return Ok(None);
        };
        if c.endpoint.is_empty() {
            return Err(invalid("sms.endpoint", "required when sms.gateway is set"));
        }
        let endpoint = check_url(
            "sms.endpoint",
            &c.endpoint,
            Scheme::Https {
                insecure_key: "sms.allow_insecure_http",
                allow_insecure: c.allow_insecure_http,
            },
        )?;
        check_file_opt("sms.ca_file", &c.ca_file)?;
        if c.request_timeout_ms == 0 {
            return Err(invalid("sms.request_timeout_ms", "must be at least 1"));
        }
        if c.max_per_window == 0 || c.window_seconds == 0 {
            return Err(invalid(
                "sms.max_per_window",
                "sms.max_per_window and sms.window_seconds must be at least 1",
            ));
        }
        if c.max_unconfirmed == 0 || c.unconfirmed_window_seconds == 0 || c.block_seconds == 0 {
            return Err(invalid(
                "sms.max_unconfirmed",
                "sms.max_unconfirmed, sms.unconfirmed_window_seconds and sms.block_seconds must be at least 1",
            ));
        }
        if c.max_per_phone_per_window == 0 {
            return Err(invalid(
                "sms.max_per_phone_per_window",
                "must be at least 1",
            ));
        }
        if c.max_per_minute_global == 0 || c.max_per_minute_global > 1_000_000 {
            return Err(invalid("sms.max_per_minute_global", "must be 1..=1000000"));
        }
        for p in c.allowed_prefixes() {
            if !p.starts_with('+')
                || p.len() < 2
                || p.len() > 5
                || !p[1..].bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid(
                    "sms.allowed_country_prefixes",
                    format!("`{p}` is not a country prefix like +39"),
                ));
            }
        }
        Ok(Some(SmsSettings {
            gateway,
            endpoint,
            ca_file: c.ca_file.clone(),
            request_timeout: Duration::from_millis(c.request_timeout_ms),
        }))
    }
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| invalid(key, format!("`{v}` is not an address like 0.0.0.0:8080")))
}

/// Which URL schemes an endpoint may use.
pub(crate) enum Scheme {
    /// TLS only (APNs is HTTP/2 over TLS).
    HttpsOnly,
    /// `https`, or `http` on a loopback host (a simulator) or when `insecure_key` is set.
    Https {
        insecure_key: &'static str,
        allow_insecure: bool,
    },
}

pub(crate) fn check_url(key: &str, v: &str, scheme: Scheme) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(v).map_err(|e| invalid(key, format!("`{v}` is not a URL: {e}")))?;
    if u.host().is_none() {
        return Err(invalid(key, format!("`{v}` has no host")));
    }
    match (u.scheme(), scheme) {
        ("https", _) => Ok(u),
        ("http", Scheme::HttpsOnly) => Err(invalid(key, "scheme `http` not supported (use https)")),
        (
            "http",
            Scheme::Https {
                insecure_key,
                allow_insecure,
            },
        ) => {
            if allow_insecure || is_loopback(&u) {
                Ok(u)
            } else {
                Err(invalid(
                    key,
                    format!("plain http:// to a host that is not loopback is refused: use https://, or set {insecure_key} = true"),
                ))
            }
        }
        (s, Scheme::HttpsOnly) => Err(invalid(
            key,
            format!("scheme `{s}` not supported (use https)"),
        )),
        (s, Scheme::Https { .. }) => Err(invalid(
            key,
            format!("scheme `{s}` not supported (use https, or http on loopback)"),
        )),
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

pub(crate) fn check_file_opt(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || Path::new(v).is_file() {
        Ok(())
    } else {
        Err(invalid(key, format!("file `{v}` does not exist")))
    }
}

/// A TOML error as `line L, column C, key `section.key`: message`, with no excerpt of
/// the file. A file that fails to parse may hold a secret anywhere (a token pasted on a
/// line of its own, in a broken table header): so the key path is shown only as far as it
/// names a known section and key; in the message, quoted values only when they are known
/// names, and a word in backticks (an unknown key, say) only when it is a bare key; for a
/// key holding a secret the message is replaced too.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let known = KnownNames::get();
    let Some(span) = e.span() else {
        return known.scrub(e.message());
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    let lines: Vec<&str> = text.lines().collect();
    let idx = (line_no - 1).min(lines.len().saturating_sub(1));
    let mut section = None;
    let mut key = None;
    for (i, line) in lines.iter().enumerate().take(idx + 1).rev() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            section = Some(name);
            break;
        }
        if key.is_none() && i <= idx {
            if let Some((k, _)) = t.split_once('=') {
                key = Some(k.trim().trim_matches('"'));
            }
        }
    }
    let path = known.path(section, key);
    let secret = path
        .rsplit('.')
        .next()
        .is_some_and(|last| SECRET_KEYS.contains(&last));
    let message = if secret {
        "invalid value (not shown: this key holds a secret)".to_string()
    } else {
        known.scrub(e.message().trim()).replace('\n', " ")
    };
    if path.is_empty() {
        format!("line {line_no}, column {column}: {message}")
    } else {
        format!("line {line_no}, column {column}, key `{path}`: {message}")
    }
}

/// The sections and keys a configuration file may have: what error messages may name.
struct KnownNames {
    sections: std::collections::BTreeMap<String, Vec<String>>,
}

impl KnownNames {
    fn get() -> &'static KnownNames {
        static NAMES: std::sync::OnceLock<KnownNames> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| {
            let mut sections = std::collections::BTreeMap::new();
            if let Ok(toml::Value::Table(root)) = toml::Value::try_from(Config::default()) {
                for (name, v) in root {
                    let keys = v
                        .as_table()
                        .map(|t| t.keys().cloned().collect())
                        .unwrap_or_default();
                    sections.insert(name, keys);
                }
            }
            sections.insert(
                "apps".into(),
                AppConfig::KEYS.iter().map(|k| k.to_string()).collect(),
            );
            KnownNames { sections }
        })
    }

    fn is_known(&self, word: &str) -> bool {
        self.sections
            .iter()
            .any(|(s, keys)| s == word || keys.iter().any(|k| k == word))
    }

    /// `section.key` as far as both are known; an app's own name is never repeated
    /// (`apps.<name>.key` shows as `apps.key`: the line number points at it).
    fn path(&self, section: Option<&str>, key: Option<&str>) -> String {
        let top = section.map(|s| s.split('.').next().unwrap_or("").trim());
        match top.and_then(|t| self.sections.get_key_value(t)) {
            Some((name, keys)) => match key.filter(|k| keys.iter().any(|x| x == k)) {
                Some(k) => format!("{name}.{k}"),
                None => name.clone(),
            },
            None if section.is_none() => key
                .filter(|k| self.sections.contains_key(*k))
                .map(str::to_string)
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// The message with every double-quoted value that is not a known name, and every
    /// backticked word that is not a bare key (`[A-Za-z0-9_-]`, at most 64), replaced by
    /// `…`; punctuation stays.
    fn scrub(&self, message: &str) -> String {
        let mut out = String::with_capacity(message.len());
        let mut rest = message;
        while let Some(open) = rest.find(['`', '"']) {
            let quote = rest.as_bytes()[open] as char;
            let Some(len) = rest[open + 1..].find(quote) else {
                break;
            };
            let word = &rest[open + 1..open + 1 + len];
            out.push_str(&rest[..=open]);
            let bare_key = quote == '`'
                && (1..=64).contains(&word.len())
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare_key || self.is_known(word) || !word.chars().any(char::is_alphanumeric) {
                out.push_str(word);
            } else {
                out.push('…');
            }
            out.push(quote);
            rest = &rest[open + len + 2..];
        }
        if rest.contains(['`', '"']) {
            // An unclosed quote: what follows it is not shown.
            let cut = rest.find(['`', '"']).unwrap_or(rest.len());
            out.push_str(&rest[..cut]);
            out.push('…');
        } else {
            out.push_str(rest);
        }
        out
    }
}

/// Applies `SCA_<SECTION>_<KEY>` variables onto the value tree, parsing each value as the
/// type the key already has there (every key has a default, so every key is present).
/// Variables naming no known section (Kubernetes service links such as
/// `SCA_DISPATCH_SERVICE_HOST`) are ignored, each with a warning returned; a known section
/// with an unknown key is an error naming it.
fn apply_env(tree: &mut toml::Value, env: &[(String, String)]) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let Some(root) = tree.as_table_mut() else {
        return Ok(warnings);
    };
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("SCA_") else {
            continue;
        };
        if rest == "CONFIG" {
            continue;
        }
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let lower = rest.to_ascii_lowercase();
        let (section, key) = lower.split_once('_').unwrap_or((lower.as_str(), ""));
        if section == "apps" {
            apply_app_env(root, var, key, raw)?;
            continue;
        }
        let Some(table) = root.get_mut(section).and_then(|v| v.as_table_mut()) else {
            warnings.push(format!(
                "environment variable {var} ignored: `{section}` is not a configuration section"
            ));
            continue;
        };
        if key.is_empty() {
            return Err(env_err(format!(
                "expected SCA_{}_<KEY>",
                section.to_ascii_uppercase()
            )));
        }
        let Some(slot) = table.get_mut(key) else {
            return Err(env_err(format!("unknown key `{section}.{key}`")));
        };
        let full = format!("{section}.{key}");
        set_typed(slot, raw, &full, env_err)?;
    }
    Ok(warnings)
}

/// `SCA_APPS_<NAME>_<KEY>` onto `[apps.<name>]`, which the file must declare (the
/// environment fills in or overrides an app's keys; it does not make up apps).
fn apply_app_env(
    root: &mut toml::map::Map<String, toml::Value>,
    var: &str,
    rest: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let Some((app, key)) = apps::split_env_key(rest) else {
        return Err(env_err(format!(
            "expected SCA_APPS_<NAME>_<KEY> for apps.<name>.<key>, <KEY> one of {}",
            AppConfig::KEYS.join(", ")
        )));
    };
    let Some(slot) = root
        .get_mut("apps")
        .and_then(|v| v.as_table_mut())
        .and_then(|t| t.get_mut(app))
        .and_then(|v| v.as_table_mut())
        .and_then(|t| t.get_mut(key))
    else {
        return Err(env_err(format!(
            "app `{app}` is not declared in the configuration file (an [apps.{app}] table)"
        )));
    };
    set_typed(slot, raw, &format!("apps.{app}.{key}"), env_err)
}

/// Replaces `slot` by `raw` parsed as the type the slot has.
fn set_typed(
    slot: &mut toml::Value,
    raw: &str,
    full: &str,
    env_err: impl Fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    {
        *slot = match slot {
            toml::Value::String(_) => toml::Value::String(raw.to_string()),
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| env_err(format!("`{full}` must be an integer")))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(env_err(format!("`{full}` must be true or false"))),
            }),
            toml::Value::Float(_) => toml::Value::Float(
                raw.trim()
                    .parse()
                    .map_err(|_| env_err(format!("`{full}` must be a number")))?,
            ),
            _ => {
                return Err(env_err(format!(
                    "`{full}` cannot be set from the environment"
                )))
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    const TOKEN: (&str, &str) = ("SCA_HTTP_API_TOKENS", "t0ken");

    #[test]
    fn defaults_with_a_token_are_valid() {
        let c = Config::from_toml_with_env("", "t", &env(&[TOKEN])).unwrap();
        assert_eq!(c.config.amqp.challenges_queue, "sca.challenges");
        assert_eq!(c.http.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.metrics_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(c.http.auth, ApiAuth::Tokens(vec!["t0ken".into()]));
        assert_eq!(c.http.max_wait, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.apns.is_none() && c.fcm.is_none() && c.sms.is_none());
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../config/sca-dispatch.example.toml");
        let c = Config::from_toml_with_env(text, "example", &env(&[TOKEN])).unwrap();
        let (raw, _) = Config::parse_with_env(text, "example", &[]).unwrap();
        let d = Config::default();
        assert_eq!(toml::to_string(&raw).unwrap(), toml::to_string(&d).unwrap());
        assert_eq!(c.config.http.api_tokens, "t0ken");
    }

    #[test]
    fn the_sca_namespace_is_the_default_topology() {
        let d = AmqpConfig::default();
        let n = AmqpConfig::default().namespaced("sca");
        assert_eq!(toml::to_string(&d).unwrap(), toml::to_string(&n).unwrap());
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_toml_with_env(
            "[amqp]\nprefetch = 10\n",
            "t",
            &env(&[("SCA_AMQP_PREFETCH", "20"), ("SCA_HTTP_API_TOKENS", "a, b")]),
        )
        .unwrap();
        assert_eq!(c.config.amqp.prefetch, 20);
        assert_eq!(c.http.auth.tokens(), ["a", "b"]);
    }

    #[test]
    fn consumer_channels_are_bounded_and_the_default_layout_holds_20000() {
        let t = env(&[TOKEN]);
        let d = AmqpConfig::default();
        assert_eq!(d.prefetch * d.consumers, 20_000);
        for bad in [0, MAX_CONSUMERS + 1] {
            let toml = format!("[amqp]\nconsumers = {bad}\n");
            let e = Config::from_toml_with_env(&toml, "t", &t).unwrap_err();
            assert!(e.to_string().contains("amqp.consumers"), "{bad}: {e}");
        }
        let toml = format!("[amqp]\nconsumers = {MAX_CONSUMERS}\n");
        let c = Config::from_toml_with_env(&toml, "t", &t).unwrap();
        assert_eq!(c.config.amqp.consumers, MAX_CONSUMERS);
    }

    #[test]
    fn bad_values_name_the_key() {
        let t = env(&[TOKEN]);
        let e = Config::from_toml_with_env("[amqp]\nprefetch = 0\n", "t", &t).unwrap_err();
        assert!(e.to_string().contains("amqp.prefetch"), "{e}");
        let e =
            Config::from_toml_with_env("", "t", &env(&[("SCA_AMQP_PREFETCH", "x")])).unwrap_err();
        assert!(e.to_string().contains("SCA_AMQP_PREFETCH"), "{e}");
        let e = Config::from_toml_with_env("[amqp]\nbogus = 1\n", "t", &t).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_toml_with_env("", "t", &env(&[("SCA_HTTP_NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("http.nope"), "{e}");
        let e = Config::from_toml_with_env("[http]\naddr = \"nope\"\n", "t", &t).unwrap_err();
        assert!(e.to_string().contains("http.addr"), "{e}");
        let e = Config::from_toml_with_env("[sms]\ngateway = \"carrier-pigeon\"\n", "t", &t)
            .unwrap_err();
        assert!(e.to_string().contains("sms.gateway"), "{e}");
        let e = Config::from_toml_with_env("[apns]\nkey_file = \"/nonexistent.p8\"\n", "t", &t)
            .unwrap_err();
        assert!(e.to_string().contains("apns.key_file"), "{e}");
    }

    #[test]
    fn no_tokens_refuses_to_start_unless_explicitly_unauthenticated() {
        let e = Config::from_toml_with_env("", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("http.api_tokens"), "{e}");
        let e = Config::from_toml_with_env("[http]\napi_tokens = \" , \"\n", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("http.api_tokens"), "{e}");
        let c =
            Config::from_toml_with_env("[http]\nallow_unauthenticated = true\n", "t", &[]).unwrap();
        assert_eq!(c.http.auth, ApiAuth::Unauthenticated);
        assert_eq!(c.http.auth.label(), "unauthenticated");
        assert!(c.http.auth.tokens().is_empty());
        // Tokens win over the switch.
        let c = Config::from_toml_with_env(
            "[http]\nallow_unauthenticated = true\napi_tokens = \"x\"\n",
            "t",
            &[],
        )
        .unwrap();
        assert_eq!(c.http.auth.label(), "bearer_token");
    }

    #[test]
    fn syntax_errors_name_line_and_key_but_never_a_secret() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "[amqp]\nprefetch = 10\nurl = \"amqp://u:hunter2@h/%2f\n",
                "line 3",
                "amqp.url",
                "hunter2",
            ),
            (
                "[sms]\ngateway = \"twilio\"\nauth_token = 98765432\n",
                "line 3",
                "sms.auth_token",
                "98765432",
            ),
            (
                "[http]\napi_tokens = [\"tok-s3cret\"]\n",
                "line 2",
                "http.api_tokens",
                "tok-s3cret",
            ),
            (
                "[sms]\notp_key = { k = \"0tp-key\" }\n",
                "line 2",
                "sms.otp_key",
                "0tp-key",
            ),
            (
                "[cluster]\nsecret = \"cl-secret\n",
                "line 2",
                "cluster.secret",
                "cl-secret",
            ),
        ];
        for (text, line, key, secret) in cases {
            let e = Config::from_toml_with_env(text, "f.toml", &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(line) && e.contains(key), "{text:?}: {e}");
            assert!(!e.contains(secret), "{text:?} leaks its secret: {e}");
        }
        // Other keys keep the parser's explanation.
        let e = Config::from_toml_with_env("[amqp]\n\nprefetch = \"many\"\n", "f.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("amqp.prefetch") && e.contains("invalid type"),
            "{e}"
        );
        assert!(!e.contains("many"), "values are not repeated: {e}");
        // A broken table header is not repeated either (it may hold anything), nor a
        // line that is a pasted token; an unknown key or section is named (the file wrote
        // it as a name).
        for text in [
            "[smsKENS=Tou3nX9abc\"\nendpoint = 1\n",
            "[sms]\nTou3nX9abc\n",
        ] {
            let e = Config::from_toml_with_env(text, "f.toml", &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("line "), "{text:?}: {e}");
            assert!(!e.contains("Tou3nX9abc"), "{text:?} repeats the file: {e}");
        }
    }

    #[test]
    fn plain_http_endpoints_only_on_loopback_or_when_allowed() {
        let t = env(&[TOKEN]);
        let bad = [
            (
                "[fcm]\nendpoint = \"http://fcm.example.com\"\n",
                "fcm.endpoint",
                "fcm.allow_insecure_http",
            ),
            (
                "[sms]\ngateway = \"webhook\"\nendpoint = \"http://10.0.0.5/sms\"\n",
                "sms.endpoint",
                "sms.allow_insecure_http",
            ),
            (
                "[apns]\nendpoint = \"http://127.0.0.1:1\"\n",
                "apns.endpoint",
                "https",
            ),
        ];
        for (text, key, hint) in bad {
            let e = Config::from_toml_with_env(text, "t", &t)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(hint), "{text}: {e}");
        }
        let good = [
            "[fcm]\nendpoint = \"http://127.0.0.1:4000\"\n",
            "[fcm]\nendpoint = \"http://localhost:4000\"\n",
            "[fcm]\nendpoint = \"http://[::1]:4000\"\n",
            "[fcm]\nendpoint = \"http://fcm.example.com\"\nallow_insecure_http = true\n",
            "[sms]\ngateway = \"webhook\"\nendpoint = \"http://127.0.0.1:9/sms\"\n",
            "[sms]\ngateway = \"webhook\"\nendpoint = \"http://10.0.0.5/sms\"\nallow_insecure_http = true\n",
            "[sms]\ngateway = \"webhook\"\nendpoint = \"https://sms.example.com/send\"\n",
        ];
        for text in good {
            Config::from_toml_with_env(text, "t", &t).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn env_without_a_known_section_is_ignored_with_a_warning() {
        let c = Config::from_toml_with_env(
            "",
            "t",
            &env(&[
                TOKEN,
                ("SCA_DISPATCH_SERVICE_HOST", "10.0.0.1"),
                ("SCA_DISPATCH_PORT", "tcp://10.0.0.1:8080"),
                ("SCA_NOSECTION", "x"),
                ("SCA_CONFIG", "/etc/sca.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("SCA_DISPATCH_SERVICE_HOST"));
        assert!(c.warnings.iter().all(|w| !w.contains("10.0.0.1")));
        // A known section with an unknown key still stops start-up, naming it.
        let e = Config::from_toml_with_env("", "t", &env(&[TOKEN, ("SCA_SMS_GATEWAYY", "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("sms.gatewayy"), "{e}");
        let e = Config::from_toml_with_env("", "t", &env(&[TOKEN, ("SCA_HTTP", "x")])).unwrap_err();
        assert!(e.to_string().contains("SCA_HTTP"), "{e}");
    }

    #[test]
    fn the_runtime_flavor_is_parsed_and_a_bad_one_named() {
        let tok = env(&[TOKEN]);
        let c = Config::from_toml_with_env("", "t", &tok).unwrap();
        assert_eq!(c.runtime_flavor, crate::runtime::Flavor::MultiThread);
        let c = Config::from_toml_with_env("[runtime]\nflavor = \"thread-per-core\"\n", "t", &tok)
            .unwrap();
        assert_eq!(c.runtime_flavor, crate::runtime::Flavor::ThreadPerCore);
        let e =
            Config::from_toml_with_env("[runtime]\nflavor = \"fibers\"\n", "t", &tok).unwrap_err();
        assert!(e.to_string().contains("runtime.flavor"), "{e}");
    }

    #[test]
    fn typed_settings() {
        let c = Config::from_toml_with_env(
            "[log]\nformat = \"json\"\n[apns]\nping_interval_seconds = 0\n[sms]\ngateway = \"webhook\"\nendpoint = \"https://sms.example.com/send\"\nauth_token = \"wh-s3cret\"\n",
            "t",
            &env(&[TOKEN]),
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let sms = c.sms.as_ref().unwrap();
        assert_eq!(sms.gateway.name(), "webhook");
        assert_eq!(sms.request_timeout, Duration::from_secs(10));
        assert!(
            !format!("{c:?}").contains("wh-s3cret"),
            "Debug shows a secret"
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        let c =
            Config::from_toml_with_env("", "t", &env(&[("SCA_HTTP_API_TOKENS", "tok-x")])).unwrap();
        assert!(!format!("{c:?}").contains("tok-x"), "Debug shows a token");
    }

    #[test]
    fn cluster_keys_are_validated_by_name_and_the_secret_never_shown() {
        let t = env(&[TOKEN]);
        for (toml, key) in [
            ("[cluster]\nenabled = true\n", "cluster.secret"),
            ("[cluster]\nsecret = \"short-s3cret\"\n", "cluster.secret"),
            ("[cluster]\npartitions = 0\n", "cluster.partitions"),
            (
                "[cluster]\ntakeover_seconds = 1\n",
                "cluster.takeover_seconds",
            ),
        ] {
            let e = Config::from_toml_with_env(toml, "t", &t)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.contains("short-s3cret"), "{e}");
        }
        // The partition queues' names must fit in an AMQP short string too.
        let secret = "s".repeat(32);
        let long = |q: usize| {
            format!(
                "[amqp]\nchallenges_queue = \"{}\"\n[cluster]\nenabled = true\nsecret = \"{secret}\"\n",
                "q".repeat(q)
            )
        };
        let e = Config::from_toml_with_env(&long(246), "t", &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("amqp.challenges_queue"), "{e}");
        assert!(Config::from_toml_with_env(&long(245), "t", &t).is_ok());
        let secret = "0123456789abcdef0123456789abcdef-cl";
        let c = Config::from_toml_with_env(
            &format!("[cluster]\nenabled = true\nsecret = \"{secret}\"\n"),
            "t",
            &t,
        )
        .unwrap();
        assert!(c.config.cluster.enabled);
        assert!(!format!("{c:?}").contains(secret), "Debug shows the secret");
        let c = Config::from_toml_with_env(
            "",
            "t",
            &env(&[
                TOKEN,
                ("SCA_CLUSTER_ENABLED", "true"),
                ("SCA_CLUSTER_SECRET", secret),
            ]),
        )
        .unwrap();
        assert!(c.config.cluster.enabled);
    }

    #[test]
    fn hardening_keys_are_validated_by_name() {
        for (toml, key) in [
            ("[http]\nheader_read_timeout_ms = 0\n", "http.header_read_timeout_ms"),
            ("[http]\nidle_timeout_seconds = 0\n", "http.idle_timeout_seconds"),
            ("[http]\nbody_timeout_ms = 5\n", "http.body_timeout_ms"),
            ("[http]\nmax_streams_per_connection = 0\n", "http.max_streams_per_connection"),
            ("[http]\nmax_requests_in_flight = 0\n", "http.max_requests_in_flight"),
            ("[http]\ntcp_keepalive_seconds = 99999\n", "http.tcp_keepalive_seconds"),
            (
                "[sms]\ngateway = \"webhook\"\nendpoint = \"http://127.0.0.1:1/\"\nmax_per_phone_per_window = 0\n",
                "sms.max_per_phone_per_window",
            ),
            (
                "[sms]\ngateway = \"webhook\"\nendpoint = \"http://127.0.0.1:1/\"\nmax_per_minute_global = 0\n",
                "sms.max_per_minute_global",
            ),
            ("[challenge]\nmax_held = 0\n", "challenge.max_held"),
            ("[challenge]\nmax_held = 100000001\n", "challenge.max_held"),
        ] {
            let e = Config::from_toml_with_env(toml, "t", &[]).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        let c = Config::default();
        assert!(!c.cluster.enabled);
        assert_eq!((c.cluster.partitions, c.cluster.takeover_seconds), (16, 10));
        assert_eq!(c.http.header_read_timeout_ms, 10_000);
        assert_eq!(c.http.idle_timeout_seconds, 60);
        assert_eq!(c.sms.max_per_phone_per_window, 3);
        assert_eq!(c.sms.max_per_minute_global, 600);
        assert_eq!(c.challenge.max_held, 2_000_000);
    }
}
