//! Typed configuration: a TOML file plus `SCA_<SECTION>_<KEY>` environment overrides,
//! parsed and validated before any port is bound. Every error names the offending key.

pub use crate::push::hms::config::HmsConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
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
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads; 0 = one per core. One thread spends less CPU per challenge
    /// (no cross-thread wake-ups) at the price of tail latency under load.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: String,
    /// Unacked deliveries per consumer channel (AMQP `basic.qos`), 1–65535.
    pub prefetch: u32,
    /// Consumer channels on `challenges_queue`. In-flight challenges ≤ prefetch × consumers.
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
            prefetch: 5000,
            consumers: 4,
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
    /// Comma-separated bearer tokens for the backend-facing API; empty = no auth.
    pub api_tokens: String,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            challenges_per_minute: 10,
            challenge_burst: 5,
            prune_interval_seconds: 60,
        }
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
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        Self {
            default_fallback_after_seconds: 30,
            retain_completed_seconds: 600,
            max_clock_skew_seconds: 60,
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
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://fcm.googleapis.com".into(),
            service_account_file: String::new(),
            ca_file: String::new(),
            request_timeout_ms: 10_000,
            max_concurrent: 500,
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

impl Config {
    /// Loads the file (if any), applies the environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// Same as [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
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
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        };
        // Parse the file once strictly so unknown keys and wrong types are reported
        // against the file, then merge it over the defaults as a value tree.
        let file: Config = toml::from_str(text).map_err(parse_err)?;
        let mut tree = toml::Value::try_from(&file).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        apply_env(&mut tree, env)?;
        let cfg: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Env {
                var: "SCA_*".into(),
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value a type cannot express; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.amqp;
        if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
            return Err(invalid("amqp.url", "must start with amqp:// or amqps://"));
        }
        if a.prefetch == 0 || a.prefetch > 65_535 {
            return Err(invalid("amqp.prefetch", "must be 1..=65535"));
        }
        if a.consumers == 0 || a.consumers > 64 {
            return Err(invalid("amqp.consumers", "must be 1..=64"));
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
        parse_addr("http.addr", &self.http.addr)?;
        parse_addr("metrics.addr", &self.metrics.addr)?;
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
        if self.log.format != "text" && self.log.format != "json" {
            return Err(invalid("log.format", "must be `text` or `json`"));
        }
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
        if self.challenge.retain_completed_seconds == 0 {
            return Err(invalid(
                "challenge.retain_completed_seconds",
                "must be at least 1",
            ));
        }
        self.validate_apns()?;
        self.validate_fcm()?;
        self.hms.validate()?;
        self.validate_sms()?;
        if self.runtime.worker_threads > 256 {
            return Err(invalid("runtime.worker_threads", "must be 0..=256"));
        }
        if self.shutdown.grace_seconds > 600 {
            return Err(invalid("shutdown.grace_seconds", "must be at most 600"));
        }
        Ok(())
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

    fn validate_apns(&self) -> Result<(), ConfigError> {
        let c = &self.apns;
        check_url("apns.endpoint", &c.endpoint, true)?;
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
        if c.is_configured() {
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
        }
        Ok(())
    }

    fn validate_fcm(&self) -> Result<(), ConfigError> {
        let c = &self.fcm;
        check_url("fcm.endpoint", &c.endpoint, false)?;
        check_file_opt("fcm.ca_file", &c.ca_file)?;
        check_file_opt("fcm.service_account_file", &c.service_account_file)?;
        if c.request_timeout_ms == 0 {
            return Err(invalid("fcm.request_timeout_ms", "must be at least 1"));
        }
        if c.max_concurrent == 0 {
            return Err(invalid("fcm.max_concurrent", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_sms(&self) -> Result<(), ConfigError> {
        let c = &self.sms;
        match c.gateway.as_str() {
            "" => return Ok(()),
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
            }
            "webhook" => {}
            _ => {
                return Err(invalid(
                    "sms.gateway",
                    "must be `twilio`, `webhook` or empty",
                ))
            }
        }
        if c.endpoint.is_empty() {
            return Err(invalid("sms.endpoint", "required when sms.gateway is set"));
        }
        check_url("sms.endpoint", &c.endpoint, false)?;
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
        )
    }

    pub fn http_addr(&self) -> SocketAddr {
        parse_addr("http.addr", &self.http.addr).expect("validated")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        parse_addr("metrics.addr", &self.metrics.addr).expect("validated")
    }
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| invalid(key, format!("`{v}` is not an address like 0.0.0.0:8080")))
}

fn check_url(key: &str, v: &str, https_only: bool) -> Result<(), ConfigError> {
    let u = url::Url::parse(v).map_err(|e| invalid(key, format!("`{v}` is not a URL: {e}")))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" if !https_only => Ok(()),
        s => Err(invalid(
            key,
            format!(
                "scheme `{s}` not supported (use {})",
                if https_only { "https" } else { "http or https" }
            ),
        )),
    }
}

fn check_file_opt(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || Path::new(v).is_file() {
        Ok(())
    } else {
        Err(invalid(key, format!("file `{v}` does not exist")))
    }
}

/// Applies `SCA_<SECTION>_<KEY>` variables onto the value tree, parsing each value as the
/// type the key already has there (every key has a default, so every key is present).
fn apply_env(tree: &mut toml::Value, env: &[(String, String)]) -> Result<(), ConfigError> {
    let root = tree.as_table_mut().expect("config serializes to a table");
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
        let Some((section, key)) = lower.split_once('_') else {
            return Err(env_err("expected SCA_<SECTION>_<KEY>".into()));
        };
        let Some(table) = root.get_mut(section).and_then(|v| v.as_table_mut()) else {
            return Err(env_err(format!("unknown section `{section}`")));
        };
        let Some(slot) = table.get_mut(key) else {
            return Err(env_err(format!("unknown key `{section}.{key}`")));
        };
        let full = format!("{section}.{key}");
        *slot = match slot {
            toml::Value::String(_) => toml::Value::String(raw.clone()),
            toml::Value::Integer(_) => toml::Value::Integer(
                raw.trim()
                    .parse()
                    .map_err(|_| env_err(format!("`{full}` must be an integer, got `{raw}`")))?,
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(env_err(format!(
                        "`{full}` must be true or false, got `{raw}`"
                    )))
                }
            }),
            toml::Value::Float(_) => toml::Value::Float(
                raw.trim()
                    .parse()
                    .map_err(|_| env_err(format!("`{full}` must be a number, got `{raw}`")))?,
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

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml_with_env("", "t", &[]).unwrap();
        assert_eq!(c.amqp.challenges_queue, "sca.challenges");
        assert_eq!(c.http.addr, "0.0.0.0:8080");
        assert_eq!(c.metrics.addr, "0.0.0.0:9090");
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../config/sca-dispatch.example.toml");
        let c = Config::from_toml_with_env(text, "example", &[]).unwrap();
        let d = Config::default();
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
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
        assert_eq!(c.amqp.prefetch, 20);
        assert_eq!(c.http.tokens(), vec!["a", "b"]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml_with_env("[amqp]\nprefetch = 0\n", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("amqp.prefetch"), "{e}");
        let e =
            Config::from_toml_with_env("", "t", &env(&[("SCA_AMQP_PREFETCH", "x")])).unwrap_err();
        assert!(e.to_string().contains("SCA_AMQP_PREFETCH"), "{e}");
        let e = Config::from_toml_with_env("[amqp]\nbogus = 1\n", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_toml_with_env("", "t", &env(&[("SCA_HTTP_NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("http.nope"), "{e}");
        let e = Config::from_toml_with_env("[http]\naddr = \"nope\"\n", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("http.addr"), "{e}");
        let e = Config::from_toml_with_env("[sms]\ngateway = \"carrier-pigeon\"\n", "t", &[])
            .unwrap_err();
        assert!(e.to_string().contains("sms.gateway"), "{e}");
        let e = Config::from_toml_with_env("[apns]\nkey_file = \"/nonexistent.p8\"\n", "t", &[])
            .unwrap_err();
        assert!(e.to_string().contains("apns.key_file"), "{e}");
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
        ] {
            let e = Config::from_toml_with_env(toml, "t", &[]).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        let c = Config::default();
        assert_eq!(c.http.header_read_timeout_ms, 10_000);
        assert_eq!(c.http.idle_timeout_seconds, 60);
        assert_eq!(c.sms.max_per_phone_per_window, 3);
        assert_eq!(c.sms.max_per_minute_global, 600);
    }
}
