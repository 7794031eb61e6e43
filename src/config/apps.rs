//! The `[apps.<name>]` sections: the named apps a challenge may ask for with `app`
//! (CONTRACT §10), each with its own push identity — APNs topic (and optionally its own
//! key and team), FCM service account, Huawei Push Kit app — on the endpoints, trust
//! roots and limits of the top-level `[apns]`, `[fcm]` and `[hms]` sections, which stay
//! the default app. Validation loads every credential, so `check-config` and start-up
//! name the bad key (`apps.business.apns_key_file`); the environment reaches an app
//! declared in the file as `SCA_APPS_<NAME>_<KEY>`.

use super::{check_file_opt, invalid, ApnsSettings, Config, ConfigError, FcmSettings};
use crate::challenge::model::AppName;
use crate::push::hms::config::HmsConfig;
use serde::{Deserialize, Serialize};

/// At most this many named apps (each adds label values to the push metrics).
pub const MAX_APPS: usize = 64;

/// One `[apps.<name>]` table. A key left empty turns that platform off for the app (its
/// devices then count as unreachable, as with an unconfigured provider); nothing is
/// borrowed from the default app except the APNs key, which an Apple team shares
/// across its apps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// The app's bundle id (`apns-topic`). Setting it turns APNs on for the app.
    pub apns_topic: String,
    /// The app's own `.p8` key; empty = the `[apns]` key (same team).
    pub apns_key_file: String,
    /// Required with `apns_key_file`.
    pub apns_key_id: String,
    /// Required with `apns_key_file`.
    pub apns_team_id: String,
    /// The app's Firebase project's service-account key. Apps naming the same service
    /// account share one access-token cache.
    pub fcm_service_account_file: String,
    /// The app's AppGallery Connect app id (with `hms_app_secret_file`).
    pub hms_app_id: String,
    /// A file holding the app secret alone.
    pub hms_app_secret_file: String,
}

impl AppConfig {
    /// Every key of the table, as `SCA_APPS_<NAME>_<KEY>` ends.
    pub const KEYS: [&'static str; 7] = [
        "apns_topic",
        "apns_key_file",
        "apns_key_id",
        "apns_team_id",
        "fcm_service_account_file",
        "hms_app_id",
        "hms_app_secret_file",
    ];
}

/// A named app's validated push settings: each `None` when the platform is off for it.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub name: AppName,
    /// `[apns]` with this app's topic and key.
    pub apns: Option<ApnsSettings>,
    /// `[fcm]` with this app's service account.
    pub fcm: Option<FcmSettings>,
    /// `[hms]` with this app's app id and secret.
    pub hms: Option<HmsConfig>,
}

impl AppSettings {
    /// `apns,fcm` — the platforms configured, for logs.
    pub fn platforms(&self) -> String {
        let mut v = Vec::new();
        if self.apns.is_some() {
            v.push("apns");
        }
        if self.fcm.is_some() {
            v.push("fcm");
        }
        if self.hms.is_some() {
            v.push("hms");
        }
        v.join(",")
    }
}

/// Validates every `[apps.<name>]` against the default sections (already validated) and
/// loads its credentials. `default_apns` is `[apns]`'s settings when it has a key.
pub(crate) fn validate(
    cfg: &Config,
    default_apns: Option<&ApnsSettings>,
) -> Result<Vec<AppSettings>, ConfigError> {
    if cfg.apps.len() > MAX_APPS {
        return Err(invalid("apps", format!("at most {MAX_APPS} apps")));
    }
    let mut out: Vec<AppSettings> = Vec::with_capacity(cfg.apps.len());
    for (name, app) in &cfg.apps {
        let section = format!("apps.{}", name.escape_debug());
        if name == AppName::DEFAULT {
            return Err(invalid(
                &section,
                "the default app is the top-level [apns], [fcm] and [hms] sections: name this app differently",
            ));
        }
        let Some(app_name) = AppName::parse(name) else {
            return Err(invalid(
                &section,
                "an app's name must be 1-32 characters of [a-z0-9_-]",
            ));
        };
        let key = |k: &str| format!("{section}.{k}");
        let apns = apns_settings(cfg, app, default_apns, &key)?;
        let fcm = fcm_settings(cfg, app, &key)?;
        let hms = hms_settings(cfg, app, &key)?;
        if let Some(h) = &hms {
            // One app id is one Push Kit app: one token cache, so one secret.
            let default = cfg.hms.is_configured().then_some(&cfg.hms);
            let others = std::iter::once((AppName::default(), default))
                .chain(out.iter().map(|o| (o.name.clone(), o.hms.as_ref())));
            for (other, o) in others {
                if let Some(o) = o {
                    if o.app_id == h.app_id && o.app_secret_file != h.app_secret_file {
                        return Err(invalid(
                            &key("hms_app_secret_file"),
                            format!(
                                "app id {} is also configured for app `{other}` with another secret file",
                                h.app_id
                            ),
                        ));
                    }
                }
            }
        }
        if apns.is_none() && fcm.is_none() && hms.is_none() {
            return Err(invalid(
                &section,
                "configures no push platform: set apns_topic, fcm_service_account_file or hms_app_id",
            ));
        }
        out.push(AppSettings {
            name: app_name,
            apns,
            fcm,
            hms,
        });
    }
    Ok(out)
}

fn apns_settings(
    cfg: &Config,
    app: &AppConfig,
    default_apns: Option<&ApnsSettings>,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<ApnsSettings>, ConfigError> {
    let own_key = !app.apns_key_file.is_empty();
    if !own_key {
        for k in ["apns_key_id", "apns_team_id"] {
            let v = if k == "apns_key_id" {
                &app.apns_key_id
            } else {
                &app.apns_team_id
            };
            if !v.is_empty() {
                return Err(invalid(
                    &key("apns_key_file"),
                    format!("required when {} is set", key(k)),
                ));
            }
        }
    }
    if app.apns_topic.is_empty() {
        if own_key {
            return Err(invalid(
                &key("apns_topic"),
                format!("required when {} is set", key("apns_key_file")),
            ));
        }
        return Ok(None);
    }
    let topic = http::HeaderValue::from_str(&app.apns_topic)
        .map_err(|_| invalid(&key("apns_topic"), "not a valid header value"))?;
    if !own_key {
        let Some(base) = default_apns else {
            return Err(invalid(
                &key("apns_key_file"),
                "required: [apns] has no key_file for this app to share",
            ));
        };
        return Ok(Some(ApnsSettings {
            topic,
            ..base.clone()
        }));
    }
    check_file_opt(&key("apns_key_file"), &app.apns_key_file)?;
    crate::push::apns::jwt::load_key(&app.apns_key_file)
        .map_err(|e| invalid(&key("apns_key_file"), e.to_string()))?;
    for (k, v) in [
        ("apns_key_id", &app.apns_key_id),
        ("apns_team_id", &app.apns_team_id),
    ] {
        if v.is_empty() {
            return Err(invalid(
                &key(k),
                format!("required when {} is set", key("apns_key_file")),
            ));
        }
    }
    // The shared keys (endpoint, trust roots, pool size, timeouts) are `[apns]`'s, which
    // validated already; only the identity is this app's.
    let mut shared = cfg.apns.clone();
    shared.key_file = app.apns_key_file.clone();
    shared.key_id = app.apns_key_id.clone();
    shared.team_id = app.apns_team_id.clone();
    shared.topic = app.apns_topic.clone();
    Ok(shared.settings()?.map(|s| ApnsSettings { topic, ..s }))
}

fn fcm_settings(
    cfg: &Config,
    app: &AppConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<FcmSettings>, ConfigError> {
    use crate::push::fcm::auth::{AuthError, ServiceAccount};
    let file = &app.fcm_service_account_file;
    if file.is_empty() {
        return Ok(None);
    }
    let k = key("fcm_service_account_file");
    check_file_opt(&k, file)?;
    let describe = |e: AuthError| match e {
        AuthError::KeyFile { path, message } => invalid(&k, format!("{path}: {message}")),
        AuthError::MissingField { path, field } => invalid(
            &k,
            format!("{path}: the field `{field}` is missing or empty"),
        ),
        AuthError::Token(m) => invalid(&k, m),
    };
    let acct = ServiceAccount::from_file(file).map_err(describe)?;
    acct.encoding_key(file).map_err(describe)?;
    let mut shared = cfg.fcm.clone();
    shared.service_account_file = file.clone();
    shared.settings()
}

fn hms_settings(
    cfg: &Config,
    app: &AppConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<HmsConfig>, ConfigError> {
    use crate::push::hms::auth::{AppSecret, AuthError};
    match (
        app.hms_app_id.is_empty(),
        app.hms_app_secret_file.is_empty(),
    ) {
        (true, true) => return Ok(None),
        (false, true) => {
            return Err(invalid(
                &key("hms_app_secret_file"),
                format!("required when {} is set", key("hms_app_id")),
            ))
        }
        (true, false) => {
            return Err(invalid(
                &key("hms_app_id"),
                format!("required when {} is set", key("hms_app_secret_file")),
            ))
        }
        (false, false) => {}
    }
    if !crate::push::hms::config::valid_app_id(&app.hms_app_id) {
        return Err(invalid(
            &key("hms_app_id"),
            "must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let k = key("hms_app_secret_file");
    check_file_opt(&k, &app.hms_app_secret_file)?;
    AppSecret::from_file(&app.hms_app_secret_file).map_err(|e| match e {
        AuthError::SecretFile { path, message } => invalid(&k, format!("{path}: {message}")),
        AuthError::Token(m) => invalid(&k, m),
    })?;
    Ok(Some(HmsConfig {
        app_id: app.hms_app_id.clone(),
        app_secret_file: app.hms_app_secret_file.clone(),
        ..cfg.hms.clone()
    }))
}

/// `business_apns_topic` (what follows `SCA_APPS_`, lower-cased) as app `business`, key
/// `apns_topic`: the key is the longest of [`AppConfig::KEYS`] the name ends with, so app
/// names may hold `_` (a name with `-` cannot be spelled in a variable's name).
pub(crate) fn split_env_key(rest: &str) -> Option<(&str, &'static str)> {
    AppConfig::KEYS
        .iter()
        .filter_map(|k| {
            let app = rest.strip_suffix(k)?.strip_suffix('_')?;
            (!app.is_empty()).then_some((app, *k))
        })
        .max_by_key(|(_, k)| k.len())
}

// The service-account fixture needs an RSA key: `rsa` comes with the `tools` feature.
#[cfg(all(test, feature = "tools"))]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    const TOKEN: (&str, &str) = ("SCA_HTTP_API_TOKENS", "t0ken");

    /// Credential files a simulator would hand out: an APNs key, an FCM service
    /// account, a Push Kit secret.
    struct Files {
        _dir: tempfile::TempDir,
        p8: String,
        sa: String,
        sa2: String,
        secret: String,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        use p256::pkcs8::EncodePrivateKey;
        let pem = key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string();
        std::fs::write(p("k.p8"), pem).unwrap();
        let rsa = {
            use rsa::pkcs8::EncodePrivateKey;
            rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024)
                .unwrap()
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .to_string()
        };
        for (file, project) in [("sa.json", "retail-proj"), ("sa2.json", "business-proj")] {
            let sa = serde_json::json!({
                "type": "service_account", "project_id": project,
                "private_key_id": "k1", "private_key": &rsa,
                "client_email": format!("push@{project}.iam.gserviceaccount.com"),
                "token_uri": "https://oauth2.googleapis.com/token",
            });
            std::fs::write(p(file), sa.to_string()).unwrap();
        }
        std::fs::write(p("secret"), "s3cret\n").unwrap();
        Files {
            p8: p("k.p8"),
            sa: p("sa.json"),
            sa2: p("sa2.json"),
            secret: p("secret"),
            _dir: dir,
        }
    }

    fn default_sections(f: &Files) -> String {
        format!(
            "[apns]\nkey_file = \"{}\"\nkey_id = \"K1\"\nteam_id = \"T1\"\ntopic = \"com.bank.retail\"\n[fcm]\nservice_account_file = \"{}\"\n",
            f.p8, f.sa
        )
    }

    #[test]
    fn named_apps_are_read_with_their_own_identities() {
        let f = files();
        let toml = format!(
            "{}[apps.business]\napns_topic = \"com.bank.business\"\nfcm_service_account_file = \"{}\"\nhms_app_id = \"102\"\nhms_app_secret_file = \"{}\"\n[apps.own_key]\napns_topic = \"com.bank.other\"\napns_key_file = \"{}\"\napns_key_id = \"K2\"\napns_team_id = \"T2\"\n",
            default_sections(&f),
            f.sa2,
            f.secret,
            f.p8
        );
        let s = Config::from_toml_with_env(&toml, "t", &env(&[TOKEN])).unwrap();
        assert_eq!(s.apps.len(), 2);
        let b = &s.apps[0];
        assert_eq!(b.name.as_str(), "business");
        let apns = b.apns.as_ref().unwrap();
        assert_eq!(apns.topic, "com.bank.business");
        // The default app's key, shared.
        assert_eq!(
            (apns.key_id.as_str(), apns.key_file.as_str()),
            ("K1", f.p8.as_str())
        );
        assert_eq!(b.fcm.as_ref().unwrap().service_account_file, f.sa2);
        assert_eq!(b.hms.as_ref().unwrap().app_id, "102");
        assert_eq!(b.platforms(), "apns,fcm,hms");
        let o = &s.apps[1];
        let apns = o.apns.as_ref().unwrap();
        assert_eq!((apns.key_id.as_str(), apns.team_id.as_str()), ("K2", "T2"));
        assert!(o.fcm.is_none() && o.hms.is_none());
        assert!(s
            .config
            .provider_summary()
            .contains("apps=business[apns,fcm,hms],own_key[apns]"));
    }

    #[test]
    fn bad_apps_name_the_key() {
        let f = files();
        let d = default_sections(&f);
        let cases = [
            ("[apps.default]\napns_topic = \"x\"\n".to_string(), "apps.default"),
            ("[apps.Business]\napns_topic = \"x\"\n".to_string(), "apps.Business"),
            (format!("[apps.{}]\napns_topic = \"x\"\n", "a".repeat(33)), "apps.aaaa"),
            ("[apps.b]\n".to_string(), "apps.b"),
            ("[apps.b]\nbogus = 1\n".to_string(), "bogus"),
            ("[apps.b]\napns_topic = \"a\\nb\"\n".to_string(), "apps.b.apns_topic"),
            ("[apps.b]\napns_key_id = \"K\"\napns_topic = \"x\"\n".to_string(), "apps.b.apns_key_file"),
            ("[apps.b]\napns_key_file = \"/nonexistent.p8\"\napns_topic = \"x\"\napns_key_id = \"K\"\napns_team_id = \"T\"\n".to_string(), "apps.b.apns_key_file"),
            (format!("[apps.b]\napns_key_file = \"{}\"\napns_topic = \"x\"\napns_team_id = \"T\"\n", f.sa), "apps.b.apns_key_file"),
            (format!("[apps.b]\napns_key_file = \"{}\"\napns_topic = \"x\"\napns_team_id = \"T\"\n", f.p8), "apps.b.apns_key_id"),
            (format!("[apps.b]\napns_key_file = \"{}\"\napns_key_id = \"K\"\napns_team_id = \"T\"\n", f.p8), "apps.b.apns_topic"),
            ("[apps.b]\nfcm_service_account_file = \"/nonexistent.json\"\n".to_string(), "apps.b.fcm_service_account_file"),
            (format!("[apps.b]\nfcm_service_account_file = \"{}\"\n", f.secret), "apps.b.fcm_service_account_file"),
            ("[apps.b]\nhms_app_id = \"1\"\n".to_string(), "apps.b.hms_app_secret_file"),
            (format!("[apps.b]\nhms_app_secret_file = \"{}\"\n", f.secret), "apps.b.hms_app_id"),
            (format!("[apps.b]\nhms_app_id = \"1/2\"\nhms_app_secret_file = \"{}\"\n", f.secret), "apps.b.hms_app_id"),
            (format!("[apps.b]\nhms_app_id = \"1\"\nhms_app_secret_file = \"{}\"\n[apps.c]\nhms_app_id = \"1\"\nhms_app_secret_file = \"{}\"\n", f.secret, f.p8), "apps.c.hms_app_secret_file"),
        ];
        for (apps, key) in cases {
            let toml = format!("{d}{apps}");
            let e = Config::from_toml_with_env(&toml, "t", &env(&[TOKEN]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{apps}: {e}");
        }
        // Sharing the default key needs a default key.
        let e = Config::from_toml_with_env("[apps.b]\napns_topic = \"x\"\n", "t", &env(&[TOKEN]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("apps.b.apns_key_file"), "{e}");
        // The secret file's content is never shown.
        let e = Config::from_toml_with_env(
            &format!("{d}[apps.b]\nfcm_service_account_file = \"{}\"\n", f.secret),
            "t",
            &env(&[TOKEN]),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_environment_reaches_apps_declared_in_the_file() {
        let f = files();
        let toml = format!(
            "{}[apps.b2b_eu]\napns_topic = \"com.bank.b2b\"\n",
            default_sections(&f)
        );
        let s = Config::from_toml_with_env(
            &toml,
            "t",
            &env(&[
                TOKEN,
                ("SCA_APPS_B2B_EU_APNS_TOPIC", "com.bank.b2b.eu"),
                ("SCA_APPS_B2B_EU_FCM_SERVICE_ACCOUNT_FILE", &f.sa2),
            ]),
        )
        .unwrap();
        let a = &s.apps[0];
        assert_eq!(a.apns.as_ref().unwrap().topic, "com.bank.b2b.eu");
        assert_eq!(a.fcm.as_ref().unwrap().service_account_file, f.sa2);
        for (var, want) in [
            ("SCA_APPS_OTHER_APNS_TOPIC", "app `other` is not declared"),
            ("SCA_APPS_B2B_EU_COLOUR", "apps.<name>.<key>"),
            ("SCA_APPS_APNS_TOPIC", "apps.<name>.<key>"),
        ] {
            let e = Config::from_toml_with_env(&toml, "t", &env(&[TOKEN, (var, "x")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(var) && e.contains(want), "{var}: {e}");
        }
    }

    #[test]
    fn env_keys_split_on_the_longest_known_key() {
        assert_eq!(
            split_env_key("business_apns_topic"),
            Some(("business", "apns_topic"))
        );
        assert_eq!(split_env_key("a_b_hms_app_id"), Some(("a_b", "hms_app_id")));
        assert_eq!(
            split_env_key("x_hms_app_secret_file"),
            Some(("x", "hms_app_secret_file"))
        );
        assert_eq!(split_env_key("apns_topic"), None);
        assert_eq!(split_env_key("business_colour"), None);
        // KEYS is exactly the table's keys.
        let t = toml::Value::try_from(AppConfig::default()).unwrap();
        let mut keys: Vec<&str> = t.as_table().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        let mut want = AppConfig::KEYS.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want);
    }
}
