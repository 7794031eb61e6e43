//! The `[hms]` configuration section (Huawei Push Kit) and its validation. It lives with
//! the transport it configures; `crate::config` embeds it as `Config::hms` and calls
//! [`HmsConfig::validate`], so every error names its `hms.*` key like the others.

use crate::config::{check_file_opt, check_url, invalid, ConfigError, Scheme};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HmsConfig {
    /// Push Kit's API root: `https://push-api.cloud.huawei.com` or a simulator. The send
    /// URL is `{endpoint}/v1/{app_id}/messages:send`.
    pub endpoint: String,
    /// The OAuth 2.0 token endpoint (client credentials).
    pub token_endpoint: String,
    /// The app's id (OAuth 2.0 client id) from AppGallery Connect.
    pub app_id: String,
    /// A file holding the app secret (OAuth 2.0 client secret) alone. Setting it turns
    /// HMS on.
    pub app_secret_file: String,
    /// Extra PEM trust roots (for a simulator); empty = system roots only.
    pub ca_file: String,
    pub request_timeout_ms: u64,
    /// Sends in flight at once.
    pub max_concurrent: u32,
    /// Allow an `http://` endpoint on a host that is not loopback.
    pub allow_insecure_http: bool,
}

impl Default for HmsConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://push-api.cloud.huawei.com".into(),
            token_endpoint: "https://oauth-login.cloud.huawei.com/oauth2/v3/token".into(),
            app_id: String::new(),
            app_secret_file: String::new(),
            ca_file: String::new(),
            request_timeout_ms: 10_000,
            max_concurrent: 500,
            allow_insecure_http: false,
        }
    }
}

/// An app id goes into the send URL's path: 1–64 of `[A-Za-z0-9._-]` (AppGallery's are
/// digits).
pub fn valid_app_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl HmsConfig {
    /// HMS counts as configured once an app secret file is given.
    pub fn is_configured(&self) -> bool {
        !self.app_secret_file.is_empty()
    }

    /// Checks every value a type cannot express; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("hms.endpoint", &self.endpoint),
            ("hms.token_endpoint", &self.token_endpoint),
        ] {
            check_url(
                key,
                url,
                Scheme::Https {
                    insecure_key: "hms.allow_insecure_http",
                    allow_insecure: self.allow_insecure_http,
                },
            )?;
        }
        check_file_opt("hms.ca_file", &self.ca_file)?;
        check_file_opt("hms.app_secret_file", &self.app_secret_file)?;
        if self.request_timeout_ms == 0 {
            return Err(invalid("hms.request_timeout_ms", "must be at least 1"));
        }
        if self.max_concurrent == 0 {
            return Err(invalid("hms.max_concurrent", "must be at least 1"));
        }
        if self.is_configured() {
            if self.app_id.is_empty() {
                return Err(invalid(
                    "hms.app_id",
                    "required when hms.app_secret_file is set",
                ));
            }
            if !valid_app_id(&self.app_id) {
                return Err(invalid(
                    "hms.app_id",
                    "must be 1-64 characters of [A-Za-z0-9._-]",
                ));
            }
        } else if !self.app_id.is_empty() {
            return Err(invalid(
                "hms.app_secret_file",
                "required when hms.app_id is set",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unconfigured() {
        let c = HmsConfig::default();
        c.validate().unwrap();
        assert!(!c.is_configured());
    }

    #[test]
    fn the_section_is_read_from_toml_and_the_environment() {
        use crate::config::Config;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let toml = format!(
            "[hms]\napp_id = \"101234567\"\napp_secret_file = \"{}\"\n",
            secret.display()
        );
        let env = [
            ("SCA_HMS_ENDPOINT", "http://127.0.0.1:9999"),
            ("SCA_HTTP_API_TOKENS", "t"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::from_toml_with_env(&toml, "t", &env).unwrap().config;
        assert!(c.hms.is_configured());
        assert_eq!(c.hms.app_id, "101234567");
        assert_eq!(c.hms.endpoint, "http://127.0.0.1:9999");
        assert!(c.provider_summary().contains("hms=configured"));
        let e = Config::from_toml_with_env("[hms]\napp_id = \"1\"\n", "t", &env).unwrap_err();
        assert!(e.to_string().contains("hms.app_secret_file"), "{e}");
        let e = Config::from_toml_with_env("[hms]\nbogus = 1\n", "t", &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let secret = secret.display().to_string();
        let ok = HmsConfig {
            app_id: "101234567".into(),
            app_secret_file: secret.clone(),
            ..HmsConfig::default()
        };
        ok.validate().unwrap();
        assert!(ok.is_configured());
        let cases: Vec<(HmsConfig, &str)> = vec![
            (
                HmsConfig {
                    endpoint: "ftp://x".into(),
                    ..ok.clone()
                },
                "hms.endpoint",
            ),
            (
                HmsConfig {
                    endpoint: "nope".into(),
                    ..ok.clone()
                },
                "hms.endpoint",
            ),
            (
                HmsConfig {
                    token_endpoint: "".into(),
                    ..ok.clone()
                },
                "hms.token_endpoint",
            ),
            (
                HmsConfig {
                    ca_file: "/nonexistent.pem".into(),
                    ..ok.clone()
                },
                "hms.ca_file",
            ),
            (
                HmsConfig {
                    app_secret_file: "/nonexistent".into(),
                    ..ok.clone()
                },
                "hms.app_secret_file",
            ),
            (
                HmsConfig {
                    app_id: "".into(),
                    ..ok.clone()
                },
                "hms.app_id",
            ),
            (
                HmsConfig {
                    app_id: "10/../x".into(),
                    ..ok.clone()
                },
                "hms.app_id",
            ),
            (
                HmsConfig {
                    request_timeout_ms: 0,
                    ..ok.clone()
                },
                "hms.request_timeout_ms",
            ),
            (
                HmsConfig {
                    max_concurrent: 0,
                    ..ok.clone()
                },
                "hms.max_concurrent",
            ),
            (
                HmsConfig {
                    app_id: "1".into(),
                    ..HmsConfig::default()
                },
                "hms.app_secret_file",
            ),
        ];
        for (c, key) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
