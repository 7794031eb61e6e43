//! The challenge message of CONTRACT §3, its validation into a [`ChallengeSpec`], and the
//! small domain types (kind, platform, outcome) shared by the rest of the daemon.

use super::raw::{Keys, Listed, Loose, Shaped};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Largest accepted challenge body (CONTRACT §3).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const MAX_DEVICES: usize = 10;
pub const MIN_TTL_SECONDS: u64 = 10;
pub const MAX_TTL_SECONDS: u64 = 900;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Login,
    Payment,
    DeviceBinding,
    CredentialRecovery,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Login,
        Kind::Payment,
        Kind::DeviceBinding,
        Kind::CredentialRecovery,
        Kind::Other,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Payment => "payment",
            Kind::DeviceBinding => "device_binding",
            Kind::CredentialRecovery => "credential_recovery",
            Kind::Other => "other",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Apns,
    Fcm,
    /// Huawei Push Kit.
    Hms,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::Hms => "hms",
        }
    }
}

/// The app a challenge is for (CONTRACT §10 `app`): 1–32 of `[a-z0-9_-]`, `default` when
/// the challenge names none. Each app has its own push credentials (`[apps.<name>]`; the
/// default app is the top-level `[apns]`, `[fcm]` and `[hms]`). Cheap to clone: the
/// default app holds no allocation, a named one an `Arc` the engine shares with the
/// configured name.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct AppName(Option<Arc<str>>);

impl AppName {
    /// The name of the app a challenge without `app` is for.
    pub const DEFAULT: &'static str = "default";
    pub const MAX_LEN: usize = 32;

    /// A name that follows the rule, `None` otherwise. `"default"` is the default app.
    pub fn parse(s: &str) -> Option<AppName> {
        if !valid_app_name(s) {
            return None;
        }
        Some(if s == Self::DEFAULT {
            AppName(None)
        } else {
            AppName(Some(Arc::from(s)))
        })
    }
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or(Self::DEFAULT)
    }
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }
    /// The shared name of a named app (`None` for the default app), e.g. as a metric
    /// label without copying it.
    pub fn shared(&self) -> Option<&Arc<str>> {
        self.0.as_ref()
    }
}

impl fmt::Debug for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppName({})", self.as_str())
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for AppName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AppName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// True for 1–32 characters of `[a-z0-9_-]` (an app's name, CONTRACT §10).
pub fn valid_app_name(s: &str) -> bool {
    (1..=AppName::MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The final result of a challenge (CONTRACT §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Approved,
    Denied,
    Expired,
    Cancelled,
    Rejected,
    RateLimited,
    Undeliverable,
    OtpLocked,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 8] = [
        OutcomeKind::Approved,
        OutcomeKind::Denied,
        OutcomeKind::Expired,
        OutcomeKind::Cancelled,
        OutcomeKind::Rejected,
        OutcomeKind::RateLimited,
        OutcomeKind::Undeliverable,
        OutcomeKind::OtpLocked,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Approved => "approved",
            OutcomeKind::Denied => "denied",
            OutcomeKind::Expired => "expired",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Rejected => "rejected",
            OutcomeKind::RateLimited => "rate_limited",
            OutcomeKind::Undeliverable => "undeliverable",
            OutcomeKind::OtpLocked => "otp_locked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Push,
    Sms,
    /// An offline code computed by the app (CONTRACT §10).
    Offline,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::Sms => "sms",
            Channel::Offline => "offline",
        }
    }
}

/// The transaction a payment challenge is bound to (dynamic linking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub amount: String,
    pub currency: String,
    pub payee: String,
}

impl Transaction {
    /// Lowercase hex SHA-256 of `{amount}|{currency}|{payee}` (CONTRACT §5).
    pub fn digest_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.amount.as_bytes());
        h.update(b"|");
        h.update(self.currency.as_bytes());
        h.update(b"|");
        h.update(self.payee.as_bytes());
        hex::encode(h.finalize())
    }
}

/// A validated, bound device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Shared with the pushes built for the device (no copy per push).
    pub device_id: Arc<str>,
    pub platform: Platform,
    pub token: Arc<str>,
    pub name: Option<Box<str>>,
    /// Boxed: most devices have none, and the key is 72 bytes.
    pub public_key: Option<Box<p256::ecdsa::VerifyingKey>>,
    /// The key offline codes are computed with; dropped (and zeroized) when the
    /// challenge ends.
    pub offline_key: Option<super::offline::OfflineKey>,
}

#[derive(Debug, Clone)]
pub struct SmsSpec {
    pub phone: Box<str>,
    /// `None`: the configured `challenge.default_fallback_after_seconds`.
    pub fallback_after_seconds: Option<u64>,
}

/// A challenge that passed every rule of CONTRACT §3.
#[derive(Debug, Clone)]
pub struct ChallengeSpec {
    pub challenge_id: Box<str>,
    pub user_id: Box<str>,
    pub kind: Kind,
    pub created_at_ms: i64,
    pub ttl_seconds: u64,
    pub locale: Box<str>,
    pub transaction: Option<Transaction>,
    pub devices: Vec<Device>,
    pub sms: Option<SmsSpec>,
    pub number_match: bool,
    /// The app whose credentials push it (`app`, CONTRACT §10). Whether it is configured
    /// is the engine's to check (`unknown_app`).
    pub app: AppName,
    /// The account's name on a device shared by several accounts.
    pub user_label: Option<Box<str>>,
    /// Where and from what the operation was asked.
    pub context: Option<Box<super::context::RequestContext>>,
    /// An operation id and QR payload for offline confirmation.
    pub offline: bool,
}

impl ChallengeSpec {
    pub fn expires_at_ms(&self) -> i64 {
        self.created_at_ms + (self.ttl_seconds as i64) * 1000
    }
    pub fn tx_digest(&self) -> String {
        self.transaction
            .as_ref()
            .map(Transaction::digest_hex)
            .unwrap_or_default()
    }
}

/// Why a message was refused. `code` is stable and machine-readable; the whole string
/// goes into the `x-sca-reason` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
    /// What could be read of the message, for the `rejected` outcome.
    pub challenge_id: Option<String>,
    pub user_id: Option<String>,
    pub kind: Option<Kind>,
    /// `ttl_seconds`, if it was in range: how long a retained rejection must outlive.
    pub ttl_seconds: Option<u64>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The envelope, read in one pass; each field is judged on its own afterwards so that a
/// refusal names the field. A repeated top-level key is `invalid_json`.
#[derive(Deserialize)]
struct RawChallenge<'a> {
    #[serde(borrow)]
    v: Option<Loose<'a>>,
    #[serde(borrow)]
    challenge_id: Option<Loose<'a>>,
    #[serde(borrow)]
    user_id: Option<Loose<'a>>,
    #[serde(borrow)]
    kind: Option<Loose<'a>>,
    #[serde(borrow)]
    created_at: Option<Loose<'a>>,
    #[serde(borrow)]
    ttl_seconds: Option<Loose<'a>>,
    #[serde(borrow)]
    locale: Option<Loose<'a>>,
    #[serde(borrow)]
    transaction: Option<Shaped<'a, TransactionKeys>>,
    #[serde(borrow, default)]
    devices: Option<Listed<'a, Shaped<'a, DeviceKeys>>>,
    #[serde(borrow)]
    sms: Option<Shaped<'a, SmsKeys>>,
    #[serde(borrow)]
    number_match: Option<Loose<'a>>,
    #[serde(borrow)]
    app: Option<Loose<'a>>,
    #[serde(borrow)]
    user_label: Option<Loose<'a>>,
    context: Option<serde_json::Value>,
    #[serde(borrow)]
    offline: Option<Loose<'a>>,
}

struct TransactionKeys;
impl Keys for TransactionKeys {
    const KEYS: &'static [&'static str] = &["amount", "currency", "payee"];
}

struct DeviceKeys;
impl Keys for DeviceKeys {
    const KEYS: &'static [&'static str] = &[
        "device_id",
        "platform",
        "token",
        "name",
        "public_key",
        "offline_key",
    ];
}

struct SmsKeys;
impl Keys for SmsKeys {
    const KEYS: &'static [&'static str] = &["phone", "fallback_after_seconds"];
}

impl RawChallenge<'_> {
    /// A refusal carrying what could be read of the challenge.
    fn refuse(&self, code: &'static str, detail: String) -> Rejection {
        let text = |f: &Option<Loose>| f.as_ref().and_then(Loose::as_str).map(str::to_owned);
        Rejection {
            code,
            detail,
            challenge_id: text(&self.challenge_id).filter(|id| valid_challenge_id(id)),
            user_id: text(&self.user_id).filter(|u| !u.is_empty() && u.len() <= 128),
            kind: self
                .kind
                .as_ref()
                .and_then(Loose::as_str)
                .and_then(Kind::parse),
            ttl_seconds: self
                .ttl_seconds
                .as_ref()
                .and_then(Loose::as_u64)
                .filter(|t| (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(t)),
        }
    }
}

/// True for 1–64 characters of `[A-Za-z0-9_-]`.
pub fn valid_challenge_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for an E.164 number: `+`, a non-zero digit, 7–15 digits in all.
pub fn valid_e164(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

fn valid_amount(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.len() <= 12
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| (1..=3).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses and validates a challenge body. `now_ms` is only used to reject a `created_at`
/// implausibly far in the future.
pub fn parse_challenge(
    body: &[u8],
    now_ms: i64,
    max_skew_ms: i64,
) -> Result<ChallengeSpec, Rejection> {
    let unread = |code: &'static str, detail: String| Rejection {
        code,
        detail,
        challenge_id: None,
        user_id: None,
        kind: None,
        ttl_seconds: None,
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(unread(
            "body_too_large",
            format!(
                "body is {} bytes, the limit is {}",
                body.len(),
                MAX_BODY_BYTES
            ),
        ));
    }
    // UTF-8 checked once for the whole body (a fast pass), so that the parser need not
    // check each string again.
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => return Err(unread("invalid_json", format!("body is not UTF-8: {e}"))),
    };
    let raw: RawChallenge = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) if e.is_data() => {
            return Err(unread(
                "invalid_json",
                format!("body is not a JSON object: {e}"),
            ))
        }
        Err(e) => return Err(unread("invalid_json", format!("{e}"))),
    };
    // A refusal from here on carries what identifies the challenge.
    macro_rules! fail {
        ($code:expr, $($arg:tt)*) => {
            return Err(raw.refuse($code, format!($($arg)*)))
        };
    }

    match &raw.v {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => fail!("unsupported_version", "v must be 1, got {v}"),
        None => fail!("missing_field", "v is required"),
    }
    let challenge_id: Box<str> = match &raw.challenge_id {
        Some(Loose::Str(s)) if valid_challenge_id(s) => s.as_ref().into(),
        Some(_) => fail!(
            "invalid_field",
            "challenge_id must be 1-64 characters of [A-Za-z0-9_-]"
        ),
        None => fail!("missing_field", "challenge_id is required"),
    };
    let user_id: Box<str> = match &raw.user_id {
        Some(Loose::Str(s))
            if !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) =>
        {
            s.as_ref().into()
        }
        Some(_) => fail!(
            "invalid_field",
            "user_id must be a string of 1-128 printable characters"
        ),
        None => fail!("missing_field", "user_id is required"),
    };
    let kind = match &raw.kind {
        Some(Loose::Str(s)) => match Kind::parse(s) {
            Some(k) => k,
            None => fail!(
                "invalid_field",
                "kind must be login, payment, device_binding, credential_recovery or other"
            ),
        },
        Some(_) => fail!("invalid_field", "kind must be a string"),
        None => fail!("missing_field", "kind is required"),
    };
    let created_at_ms = match &raw.created_at {
        Some(Loose::Str(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.timestamp_millis(),
            Err(_) => fail!("invalid_field", "created_at must be an RFC 3339 timestamp"),
        },
        Some(_) => fail!("invalid_field", "created_at must be an RFC 3339 timestamp"),
        None => now_ms,
    };
    if created_at_ms > now_ms + max_skew_ms {
        fail!("invalid_field", "created_at is in the future");
    }
    let ttl_seconds = match &raw.ttl_seconds {
        Some(v) => match v.as_u64() {
            Some(t) if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&t) => t,
            _ => fail!(
                "invalid_field",
                "ttl_seconds must be an integer {MIN_TTL_SECONDS}..={MAX_TTL_SECONDS}, got {v}"
            ),
        },
        None => fail!("missing_field", "ttl_seconds is required"),
    };
    let locale: Box<str> = match &raw.locale {
        None | Some(Loose::Null) => "en".into(),
        Some(Loose::Str(s))
            if !s.is_empty()
                && s.len() <= 35
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            s.as_ref().into()
        }
        Some(_) => fail!(
            "invalid_field",
            "locale must be a language tag like it or en-GB"
        ),
    };
    let transaction = match &raw.transaction {
        None | Some(Shaped::Other(Loose::Null)) => None,
        Some(t) => match parse_transaction(t) {
            Ok(t) => Some(t),
            Err(msg) => fail!("invalid_field", "{msg}"),
        },
    };
    if kind == Kind::Payment && transaction.is_none() {
        fail!("missing_field", "transaction is required for kind payment");
    }
    let devices = match &raw.devices {
        None | Some(Listed::Other(Loose::Null)) => Vec::new(),
        Some(Listed::List(list)) => {
            if list.len() > MAX_DEVICES {
                fail!(
                    "too_many_devices",
                    "{} devices, at most {MAX_DEVICES}",
                    list.len()
                );
            }
            let mut out: Vec<Device> = Vec::with_capacity(list.len());
            for (i, d) in list.iter().enumerate() {
                match parse_device(d) {
                    Ok(dev) => {
                        if out.iter().any(|o| o.device_id == dev.device_id) {
                            fail!("invalid_field", "devices[{i}].device_id is a duplicate");
                        }
                        out.push(dev)
                    }
                    Err(msg) => fail!("invalid_field", "devices[{i}]: {msg}"),
                }
            }
            out
        }
        Some(_) => fail!("invalid_field", "devices must be an array"),
    };
    let sms = match &raw.sms {
        None | Some(Shaped::Other(Loose::Null)) => None,
        Some(Shaped::Object(o)) => {
            let phone: Box<str> = match o.get("phone") {
                Some(Loose::Str(p)) if valid_e164(p) => p.as_ref().into(),
                _ => fail!(
                    "invalid_phone",
                    "sms.phone must be an E.164 number like +393401234567"
                ),
            };
            let fallback_after_seconds = match o.get("fallback_after_seconds") {
                None | Some(Loose::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(s) if s <= MAX_TTL_SECONDS => Some(s),
                    _ => fail!(
                        "invalid_field",
                        "sms.fallback_after_seconds must be an integer 0..=900"
                    ),
                },
            };
            Some(SmsSpec {
                phone,
                fallback_after_seconds,
            })
        }
        Some(_) => fail!("invalid_field", "sms must be an object"),
    };
    let number_match = match &raw.number_match {
        None | Some(Loose::Null) => false,
        Some(Loose::Bool(b)) => *b,
        Some(_) => fail!("invalid_field", "number_match must be a boolean"),
    };
    let app = match &raw.app {
        None | Some(Loose::Null) => AppName::default(),
        Some(Loose::Str(s)) => match AppName::parse(s) {
            Some(a) => a,
            None => fail!("invalid_field", "app must be 1-32 characters of [a-z0-9_-]"),
        },
        Some(_) => fail!("invalid_field", "app must be a string"),
    };
    let user_label =
        match super::context::parse_user_label(raw.user_label.as_ref().unwrap_or(&Loose::Null)) {
            Ok(l) => l,
            Err(e) => fail!("invalid_field", "{e}"),
        };
    let context = match &raw.context {
        None => None,
        Some(c) => match super::context::parse_context(c) {
            Ok(c) => c,
            Err(e) => fail!("invalid_field", "{e}"),
        },
    };
    let offline = match &raw.offline {
        None | Some(Loose::Null) => false,
        Some(Loose::Bool(b)) => *b,
        Some(_) => fail!("invalid_field", "offline must be a boolean"),
    };
    // Fail closed: an operation id no device could ever confirm is refused up front.
    if offline && !devices.iter().any(|d| d.offline_key.is_some()) {
        fail!(
            "invalid_field",
            "offline needs at least one device with an offline_key"
        );
    }
    Ok(ChallengeSpec {
        challenge_id,
        user_id,
        kind,
        created_at_ms,
        ttl_seconds,
        locale,
        transaction,
        devices,
        sms,
        number_match,
        app,
        user_label,
        context,
        offline,
    })
}

/// The transaction's three strings, each checked; the error names the field.
fn parse_transaction(t: &Shaped<TransactionKeys>) -> Result<Transaction, &'static str> {
    const SHAPE: &str = "transaction must be an object with string amount, currency and payee";
    let Shaped::Object(o) = t else {
        return Err(SHAPE);
    };
    let text = |k: &str| o.get(k).and_then(Loose::as_str).ok_or(SHAPE);
    let (amount, currency, payee) = (text("amount")?, text("currency")?, text("payee")?);
    if !valid_amount(amount) {
        return Err("transaction.amount must be a decimal string like 125.40");
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("transaction.currency must be an ISO 4217 code like EUR");
    }
    let payee_len = payee.chars().count();
    if payee_len == 0 || payee_len > 140 || payee.chars().any(char::is_control) {
        return Err("transaction.payee must be 1-140 printable characters");
    }
    Ok(Transaction {
        amount: amount.to_owned(),
        currency: currency.to_owned(),
        payee: payee.to_owned(),
    })
}

fn parse_device(v: &Shaped<DeviceKeys>) -> Result<Device, String> {
    let Shaped::Object(o) = v else {
        return Err("must be an object".into());
    };
    let s = |k: &str| o.get(k).and_then(Loose::as_str);
    let device_id = s("device_id").ok_or("device_id is required")?;
    if device_id.is_empty() || device_id.len() > 64 || device_id.chars().any(char::is_control) {
        return Err("device_id must be 1-64 printable characters".into());
    }
    let platform = match s("platform") {
        Some("apns") => Platform::Apns,
        Some("fcm") => Platform::Fcm,
        Some("hms") => Platform::Hms,
        _ => return Err("platform must be apns, fcm or hms".into()),
    };
    let token = s("token").ok_or("token is required")?;
    match platform {
        Platform::Apns => {
            if token.len() < 64
                || token.len() > 200
                || token.len() % 2 != 0
                || !token.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err("APNs token must be hex, 64 characters or more".into());
            }
        }
        Platform::Fcm => {
            if token.is_empty()
                || token.len() > 4096
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
            {
                return Err("FCM token must be 1-4096 characters of [A-Za-z0-9-_:.]".into());
            }
        }
        Platform::Hms => {
            if token.is_empty()
                || token.len() > 1024
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
            {
                return Err("HMS token must be 1-1024 characters of [A-Za-z0-9-_:.]".into());
            }
        }
    }
    let name = match o.get("name") {
        None | Some(Loose::Null) => None,
        Some(Loose::Str(n)) if n.chars().count() <= 100 => Some(n.as_ref().into()),
        Some(_) => return Err("name must be a string of at most 100 characters".into()),
    };
    let public_key = match o.get("public_key") {
        None | Some(Loose::Null) => None,
        Some(Loose::Str(k)) => {
            let key =
                super::signature::parse_public_key(k).map_err(|e| format!("public_key: {e}"))?;
            Some(Box::new(key))
        }
        Some(_) => return Err("public_key must be a base64 string".into()),
    };
    let offline_key = match o.get("offline_key") {
        None | Some(Loose::Null) => None,
        Some(Loose::Str(k)) => Some(super::offline::OfflineKey::parse(k)?),
        Some(_) => return Err("offline_key must be a base64 string".into()),
    };
    Ok(Device {
        device_id: device_id.into(),
        platform,
        token: token.into(),
        name,
        public_key,
        offline_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> serde_json::Value {
        serde_json::json!({
            "v": 1, "challenge_id": "c-1", "user_id": "u1", "kind": "payment",
            "created_at": "2026-11-23T19:40:00Z", "ttl_seconds": 120, "locale": "it",
            "transaction": {"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"},
            "devices": [
                {"device_id": "d1", "platform": "apns", "token": "ab".repeat(32)},
                {"device_id": "d2", "platform": "fcm", "token": "fcm:token_1"}
            ],
            "sms": {"phone": "+393401234567", "fallback_after_seconds": 30}
        })
    }

    const NOW: i64 = 1_795_462_800_000; // 2026-11-23T19:40:00Z

    fn parse(v: &serde_json::Value) -> Result<ChallengeSpec, Rejection> {
        parse_challenge(v.to_string().as_bytes(), NOW, 60_000)
    }

    #[test]
    fn accepts_the_contract_example() {
        let s = parse(&sample()).unwrap();
        assert_eq!(&*s.challenge_id, "c-1");
        assert_eq!(s.devices.len(), 2);
        assert_eq!(s.expires_at_ms(), NOW + 120_000);
        assert_eq!(s.sms.unwrap().fallback_after_seconds, Some(30));
    }

    #[test]
    fn rejects_each_rule_with_a_reason() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("unsupported_version", Box::new(|v| v["v"] = 2.into())),
            ("invalid_field", Box::new(|v| v["ttl_seconds"] = 5.into())),
            ("invalid_field", Box::new(|v| v["ttl_seconds"] = 901.into())),
            (
                "invalid_field",
                Box::new(|v| v["challenge_id"] = "a b".into()),
            ),
            ("invalid_field", Box::new(|v| v["kind"] = "wire".into())),
            (
                "missing_field",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("transaction");
                }),
            ),
            (
                "invalid_phone",
                Box::new(|v| v["sms"]["phone"] = "3401234567".into()),
            ),
            (
                "invalid_field",
                Box::new(|v| v["devices"][0]["token"] = "xyz".into()),
            ),
            (
                "invalid_field",
                Box::new(|v| v["transaction"]["amount"] = "12,5".into()),
            ),
            (
                "too_many_devices",
                Box::new(|v| {
                    let d = v["devices"][1].clone();
                    v["devices"] = serde_json::Value::Array(
                        (0..11)
                            .map(|i| {
                                let mut d = d.clone();
                                d["device_id"] = format!("d{i}").into();
                                d
                            })
                            .collect(),
                    );
                }),
            ),
        ];
        for (code, mutate) in cases {
            let mut v = sample();
            mutate(&mut v);
            let r = parse(&v).unwrap_err();
            assert_eq!(r.code, code, "{r}");
            assert_eq!(
                r.challenge_id.as_deref(),
                Some("c-1").filter(|_| v["challenge_id"] == "c-1")
            );
        }
        let r = parse_challenge(b"not json", NOW, 0).unwrap_err();
        assert_eq!(r.code, "invalid_json");
        // Bytes that are not UTF-8, inside a string value or outside one.
        let mut body = sample().to_string().into_bytes();
        let at = body.windows(4).position(|w| w == b"\"d1\"").unwrap() + 1;
        body[at] = 0xff;
        for b in [body, b"{\xff}".to_vec()] {
            let r = parse_challenge(&b, NOW, 60_000).unwrap_err();
            assert_eq!(r.code, "invalid_json", "{r}");
            assert!(r.detail.starts_with("body is not UTF-8"), "{r}");
        }
        let r = parse_challenge(&vec![b' '; MAX_BODY_BYTES + 1], NOW, 0).unwrap_err();
        assert_eq!(r.code, "body_too_large");
    }

    #[test]
    fn objects_are_read_as_json_objects() {
        // A transaction written as a positional array is not an object.
        let mut v = sample();
        v["transaction"] = serde_json::json!(["125.40", "EUR", "Mario Rossi"]);
        let r = parse(&v).unwrap_err();
        assert_eq!(
            (r.code, r.detail.as_str()),
            (
                "invalid_field",
                "transaction must be an object with string amount, currency and payee"
            )
        );
        // Inside a device, a repeated key keeps its last value (as a map keeps it), an
        // unknown key is skipped and escapes are read.
        let body = sample().to_string().replacen(
            r#""device_id":"d1""#,
            r#""device_id":"d0","extra":{"k":[1]},"device_id":"d\u0031""#,
            1,
        );
        assert!(body.contains("extra"), "{body}");
        let s = parse_challenge(body.as_bytes(), NOW, 60_000).unwrap();
        assert_eq!(&*s.devices[0].device_id, "d1");
        // A repeated top-level key is refused.
        let body = sample()
            .to_string()
            .replacen(r#""v":1"#, r#""v":1,"v":1"#, 1);
        assert!(body.contains(r#""v":1,"v":1"#), "{body}");
        let r = parse_challenge(body.as_bytes(), NOW, 60_000).unwrap_err();
        assert_eq!(r.code, "invalid_json", "{r}");
    }

    #[test]
    fn app_is_optional_validated_and_defaults_to_default() {
        assert!(parse(&sample()).unwrap().app.is_default());
        let mut v = sample();
        v["app"] = "business".into();
        let s = parse(&v).unwrap();
        assert_eq!(s.app.as_str(), "business");
        assert!(!s.app.is_default());
        v["app"] = "default".into();
        assert!(parse(&v).unwrap().app.is_default());
        v["app"] = serde_json::Value::Null;
        assert!(parse(&v).unwrap().app.is_default());
        for bad in [
            serde_json::json!(""),
            serde_json::json!("Business"),
            serde_json::json!("a b"),
            serde_json::json!("x".repeat(33)),
            serde_json::json!("caf\u{e9}"),
            serde_json::json!(7),
        ] {
            v["app"] = bad.clone();
            let r = parse(&v).unwrap_err();
            assert_eq!(r.code, "invalid_field", "{bad}: {r}");
            assert!(r.detail.contains("app"), "{r}");
            assert_eq!(r.challenge_id.as_deref(), Some("c-1"));
        }
        assert!(valid_app_name(&"a".repeat(32)) && valid_app_name("retail_2-x"));
        assert_eq!(
            AppName::parse("b2b").unwrap(),
            AppName::parse("b2b").unwrap()
        );
        assert!(AppName::parse("a").unwrap() < AppName::parse("b").unwrap());
    }

    #[test]
    fn e164() {
        assert!(valid_e164("+393401234567"));
        assert!(!valid_e164("+0393401234567"));
        assert!(!valid_e164("393401234567"));
        assert!(!valid_e164("+39340123456789012"));
    }
}
