//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) and of the corpus
//! replay test (`tests/fuzz_corpus.rs`). Each takes raw bytes, feeds them to one parser,
//! classifier or state machine of the daemon, and panics when an invariant breaks; an
//! input the target cannot use is simply ignored. Not part of the daemon's API.

use crate::challenge::machine::{Challenge, Command, Event, NumberMatch, PushResult, Reply};
use crate::challenge::model::{
    parse_challenge, valid_challenge_id, valid_e164, Kind, OutcomeKind, MAX_BODY_BYTES,
    MAX_DEVICES, MAX_TTL_SECONDS, MIN_TTL_SECONDS,
};
use crate::challenge::otp::{OtpHasher, MAX_OTP_ATTEMPTS};
use crate::config::Config;
use crate::engine::core::{Core, DeliveryMeta, Effect, Effects, Entropy, Reach, Settings};
use crate::push::Classification;
use crate::wire::control::{ControlMessage, PeerAsk, PeerNote, MAX_PEER_WAIT_MS};
use crate::wire::messages::{OutcomeMessage, View};
use crate::wire::ops::{
    Authority, ChallengeId, Decision, DecisionBody, DecisionOp, OpOutcome, Operation, OtpBody,
    OtpCode, ResponseMessage,
};
use arbitrary::{Result as ArbResult, Unstructured};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A target's function: raw bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`)
/// and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("challenge", challenge),
    ("responses", responses),
    ("http_ops", http_ops),
    ("control", control),
    ("config", config),
    ("answers", answers),
    ("machine", machine),
    ("core", core),
];

/// `created_at` of the generated challenges (2026-11-23T19:40:00Z), in Unix ms.
const T0: i64 = 1_795_462_800_000;
const CREATED_AT: &str = "2026-11-23T19:40:00Z";
/// The clock skew the daemon tolerates by default.
const SKEW_MS: i64 = 60_000;
/// The code every generated SMS carries.
const CODE: &str = "123456";
const WRONG_CODE: &str = "000000";
/// HTTP body bound (`http.max_body_bytes` default).
const MAX_OP_BODY: usize = 8 * 1024;

// ---- the challenge parser -----------------------------------------------------------

/// `sca.challenges` bodies: `parse_challenge`, then the texts an accepted one is shown
/// with.
pub fn challenge(data: &[u8]) {
    match parse_challenge(data, T0, SKEW_MS) {
        Ok(spec) => {
            assert!(data.len() <= MAX_BODY_BYTES);
            assert!(valid_challenge_id(&spec.challenge_id));
            assert!(!spec.user_id.is_empty() && spec.user_id.len() <= 128);
            assert!((MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&spec.ttl_seconds));
            assert!(spec.created_at_ms <= T0 + SKEW_MS);
            assert!(spec.expires_at_ms() > spec.created_at_ms);
            assert!(spec.devices.len() <= MAX_DEVICES);
            let ids: HashSet<&str> = spec.devices.iter().map(|d| &*d.device_id).collect();
            assert_eq!(ids.len(), spec.devices.len(), "duplicate device ids");
            if let Some(s) = &spec.sms {
                assert!(valid_e164(&s.phone));
            }
            if spec.kind == Kind::Payment {
                assert!(spec.transaction.is_some(), "a payment without transaction");
            }
            let tx = spec.transaction.as_ref();
            let (title, body) = crate::texts::push_texts(&spec.locale, spec.kind, tx);
            assert!(!title.is_empty() && !body.is_empty());
            let sms = crate::texts::sms_text(&spec.locale, spec.kind, tx, CODE);
            assert!(sms.contains(CODE));
            if let (Kind::Payment, Some(t)) = (spec.kind, tx) {
                assert!(body.contains(&t.payee) && sms.contains(&t.payee));
            }
            let _ = crate::texts::SmsEncoding::of(&sms);
        }
        Err(rej) => {
            assert!(!rej.code.is_empty(), "a rejection without code");
            if data.len() > MAX_BODY_BYTES {
                assert_eq!(rej.code, "body_too_large");
            }
            if let Some(id) = &rej.challenge_id {
                assert!(valid_challenge_id(id));
            }
            if let Some(t) = rej.ttl_seconds {
                assert!((MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&t));
            }
            let _ = rej.to_string();
        }
    }
}

// ---- operations: sca.responses and the HTTP bodies ------------------------------------

/// The code a body carries, if it names one (a JSON string `code` seen once in the body):
/// the error about the body must never repeat it.
fn code_in(data: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let code = v.get("code")?.as_str()?;
    let text = String::from_utf8_lossy(data);
    (code.len() >= 4 && text.matches(code).count() == 1).then(|| code.to_string())
}

/// Whether `reason` repeats `code` because the input held it, not because the code is a
/// piece of the reason's own fixed text (`"challe"`, say): with the code replaced by as
/// many `~`, the reason must then no longer show it.
fn repeats_code(
    data: &[u8],
    code: &str,
    reason: &str,
    reason_of: impl Fn(&[u8]) -> Option<String>,
) -> bool {
    if !reason.contains(code) {
        return false;
    }
    let masked = String::from_utf8_lossy(data).replacen(code, &"~".repeat(code.len()), 1);
    reason_of(masked.as_bytes()).is_none_or(|r| !r.contains(code))
}

/// `sca.responses` bodies: the size check, `ResponseMessage::parse`, and the round trip of
/// what it parsed.
pub fn responses(data: &[u8]) {
    if let Err(e) = ResponseMessage::check_size(data, MAX_OP_BODY) {
        assert!(data.len() > MAX_OP_BODY && e.starts_with("body_too_large: "));
        return;
    }
    match ResponseMessage::parse(data) {
        Ok(m) => {
            assert!(valid_challenge_id(m.challenge_id.as_str()));
            if let Operation::Otp { code } = &m.op {
                assert!(crate::challenge::otp::well_formed(code.expose()));
            }
            let mut v = serde_json::to_value(&m.op).expect("an operation serializes");
            v["challenge_id"] = json!(m.challenge_id.as_str());
            let again = ResponseMessage::parse(v.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{v} does not parse again: {e}"));
            assert_eq!(again, m);
        }
        Err(e) => {
            assert!(
                ["invalid_json: ", "missing_field: ", "invalid_field: "]
                    .iter()
                    .any(|p| e.starts_with(p)),
                "a reason without its code: {e}"
            );
            if let Some(code) = code_in(data) {
                let reason_of = |d: &[u8]| ResponseMessage::parse(d).err();
                assert!(
                    !repeats_code(data, &code, &e, reason_of),
                    "the reason repeats the code: {e}"
                );
            }
        }
    }
}

/// The HTTP API's parsers: the first byte picks the decision body, the OTP body, a path's
/// challenge id or the `?wait=` query; the rest is the input.
pub fn http_ops(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(b) = serde_json::from_slice::<DecisionBody>(rest) {
                let approves = b.decision.approves();
                let fraud = b.report_fraud;
                let op = match b.into_op() {
                    Ok(op) => op,
                    Err(_) => {
                        assert!(
                            approves && fraud,
                            "only a fraud report on an approval is refused"
                        );
                        return;
                    }
                };
                let Operation::Decision(d) = op else {
                    panic!("a decision body makes another operation");
                };
                assert!(!d.device_id.as_str().is_empty() && d.device_id.as_str().len() <= 64);
            }
        }
        1 => match serde_json::from_slice::<OtpBody>(rest) {
            Ok(b) => {
                // Whatever the code, its Debug is the one fixed text (a code may itself
                // be a piece of that text).
                assert_eq!(
                    format!("{:?}", b.code),
                    "CodeText(***)",
                    "Debug shows the code"
                );
                if let Ok(c) = b.code.into_code() {
                    assert!(crate::challenge::otp::well_formed(c.expose()));
                }
            }
            Err(e) => {
                if let Some(code) = code_in(rest) {
                    let reason_of = |d: &[u8]| {
                        serde_json::from_slice::<OtpBody>(d)
                            .err()
                            .map(|e| e.to_string())
                    };
                    assert!(
                        !repeats_code(rest, &code, &e.to_string(), reason_of),
                        "the error repeats the code: {e}"
                    );
                }
            }
        },
        2 => {
            let path = String::from_utf8_lossy(rest);
            for seg in path.trim_matches('/').split('/') {
                if let Some(id) = ChallengeId::parse(seg) {
                    assert_eq!(id.as_str(), seg);
                    assert!(valid_challenge_id(seg));
                }
            }
        }
        _ => {
            let query = String::from_utf8_lossy(rest);
            let max = Duration::from_secs(30);
            if let Ok(w) = crate::http::api::parse_wait(&query, max) {
                assert!(w <= max);
            }
        }
    }
}

// ---- the control exchange --------------------------------------------------------------

/// Messages between instances: parse, the accessors the control loop uses, round trip.
pub fn control(data: &[u8]) {
    let Ok(m) = serde_json::from_slice::<ControlMessage>(data) else {
        return;
    };
    let _ = m.from();
    match &m {
        ControlMessage::Req { req, .. } => {
            assert!(req.wait() <= Duration::from_millis(MAX_PEER_WAIT_MS));
            assert!(valid_challenge_id(req.challenge_id.as_str()));
            if let PeerAsk::Operate {
                op: Operation::Otp { code },
                ..
            } = &req.ask
            {
                assert!(crate::challenge::otp::well_formed(code.expose()));
            }
        }
        ControlMessage::Note { note, .. } => {
            if let Some(u) = note.user() {
                assert!(!u.is_empty() && u.len() <= 128);
            }
        }
        ControlMessage::Hello { .. } | ControlMessage::Rep { .. } => {}
    }
    let bytes = serde_json::to_vec(&m).expect("a control message serializes");
    let again: ControlMessage = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} does not parse again: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(again, m);
}

// ---- the configuration loader -----------------------------------------------------------

/// A value that would be recognisable in a message (long, with a capital and a digit, no
/// blank): a secret's value looking like this must never appear in an error or `Debug`.
fn recognisable(v: &str) -> bool {
    v.len() >= 8
        && v.bytes().any(|b| b.is_ascii_uppercase())
        && v.bytes().any(|b| b.is_ascii_digit())
        && !v.chars().any(char::is_whitespace)
}

const SECRET_KEYS: &[&str] = &["url", "auth_token", "api_tokens", "otp_key", "secret"];

fn secrets_of(v: &toml::Value, out: &mut Vec<String>) {
    if let Some(t) = v.as_table() {
        for (k, v) in t {
            match v {
                toml::Value::String(s) if SECRET_KEYS.contains(&k.as_str()) => {
                    if recognisable(s) {
                        out.push(s.clone());
                    }
                }
                _ => secrets_of(v, out),
            }
        }
    }
}

/// TOML text, then (after a NUL byte) `SCA_*=value` lines as the environment: the whole
/// loader (parse, overrides, validation). Errors and the settings' `Debug` show no secret.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml_text, env_text) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut secrets = Vec::new();
    if let Ok(v) = toml_text.parse::<toml::Value>() {
        secrets_of(&v, &mut secrets);
    }
    for (k, v) in &env {
        let k = k.to_ascii_lowercase();
        if SECRET_KEYS.iter().any(|s| k.ends_with(s)) && recognisable(v) {
            secrets.push(v.clone());
        }
    }
    let shown = match Config::from_toml_with_env(toml_text, "fuzz.toml", &env) {
        Ok(s) => {
            assert!((256..=1 << 20).contains(&s.http.max_body_bytes));
            assert!(s.http.max_connections >= 1);
            format!("{s:?}")
        }
        Err(e) => e.to_string(),
    };
    for s in secrets {
        // An unknown key is named in backticks by design: the file itself wrote that
        // word as a key, so naming it shows no value.
        let named_key = format!("`{s}`");
        let rest = shown.replace(&named_key, "");
        assert!(!rest.contains(&s), "a secret is shown: {shown}");
    }
}

// ---- the provider answer classifiers ----------------------------------------------------

/// How much of a value is left to see once masked: at least 4 characters of anything of
/// 8 or more are hidden.
fn check_phone_mask(p: &str) {
    let masked = crate::sms::mask_phone(p);
    let n = p.chars().count();
    if n >= 8 {
        let visible = masked.chars().filter(|&c| c != '*').count();
        assert!(visible + 4 <= n, "{p:?} masked as {masked:?}");
    } else {
        assert_eq!(masked, "****");
    }
}

/// APNs, FCM, Push Kit, Twilio and webhook answers (status, `Retry-After`, body), the
/// `Retry-After` parser and the scrubbing of gateway texts. The first byte picks.
pub fn answers(data: &[u8]) {
    let _ = run_answers(Unstructured::new(data));
}

fn run_answers(mut u: Unstructured) -> ArbResult<()> {
    use crate::push::hms::classify::Class;
    use crate::sms::SmsError;
    let which: u8 = u.int_in_range(0..=5)?;
    let status: u16 = if u.arbitrary()? {
        *u.choose(&[
            200, 201, 400, 401, 403, 404, 408, 410, 413, 429, 500, 502, 503,
        ])?
    } else {
        u.arbitrary()?
    };
    let ra: Option<Duration> = if u.arbitrary()? {
        Some(Duration::from_secs(u.int_in_range(0..=3600)?))
    } else {
        None
    };
    let body = u.take_rest();
    let retry_ok = |c: Classification| match c {
        Classification::Retry { after } => after == ra,
        _ => true,
    };
    match which {
        0 => {
            let reason = crate::push::apns::classify::reason(body);
            let c = crate::push::apns::classify(status, reason.as_deref());
            match status {
                200 => assert_eq!(c, Classification::Delivered),
                410 => assert_eq!(c, Classification::TokenGone),
                _ => assert_ne!(c, Classification::Delivered),
            }
            assert!(!matches!(c, Classification::Retry { after: Some(_) }));
        }
        1 => {
            let c = crate::push::fcm::classify::classify(status, body, ra);
            assert_eq!(
                c == Classification::Delivered,
                (200..300).contains(&status),
                "{status}"
            );
            assert!(retry_ok(c));
            if crate::push::fcm::classify::is_stale_access_token(status, body) {
                assert_eq!(status, 401);
            }
        }
        2 => {
            let c = crate::push::hms::classify::classify(status, body, ra);
            if let Class::Retry { after } = c {
                assert_eq!(after, ra);
            }
            assert!(retry_ok(c.classification()));
        }
        3 | 4 => {
            let r = if which == 3 {
                crate::sms::gateway::twilio::classify(status, ra, body)
            } else {
                crate::sms::gateway::webhook::classify(status, ra, body)
            };
            if !(200..300).contains(&status) {
                assert!(r.is_err(), "HTTP {status} taken as sent");
            }
            if which == 4 {
                assert_eq!(r.is_ok(), (200..300).contains(&status));
            }
            match r {
                Err(SmsError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    assert_eq!(retry_after, ra);
                    assert!(!reason.chars().any(char::is_control));
                }
                Err(SmsError::Permanent(reason)) => {
                    assert!(!reason.chars().any(char::is_control));
                }
                Ok(()) => {}
            }
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let now = chrono::DateTime::from_timestamp_millis(T0).unwrap_or_default();
            if let Some(d) = crate::retry::parse_retry_after(&text, now) {
                assert!(d <= crate::retry::MAX_RETRY_AFTER);
            }
            let s = crate::sms::gateway::scrub(&text);
            assert!(!s.chars().any(char::is_control));
            assert!(s.chars().count() <= 201);
            check_phone_mask(&text);
        }
    }
    Ok(())
}

// ---- the state machine -----------------------------------------------------------------

/// A fixed device key (P-256), its SPKI base64 and signatures made with it.
struct DeviceKey {
    sk: p256::ecdsa::SigningKey,
    spki_b64: String,
}

impl DeviceKey {
    fn new() -> DeviceKey {
        use base64::Engine as _;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid scalar");
        let der = sk
            .verifying_key()
            .to_public_key_der()
            .expect("a public key encodes");
        let spki_b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        DeviceKey { sk, spki_b64 }
    }
    /// The one key of every run (made once: key and signatures are costly next to the
    /// rest of an input).
    fn get() -> &'static DeviceKey {
        static KEY: std::sync::OnceLock<DeviceKey> = std::sync::OnceLock::new();
        KEY.get_or_init(DeviceKey::new)
    }
    /// A signature over `msg`, made once per message.
    fn sign(&self, msg: &str) -> String {
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer;
        static MADE: std::sync::Mutex<BTreeMap<String, String>> =
            std::sync::Mutex::new(BTreeMap::new());
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        made.entry(msg.to_string())
            .or_insert_with(|| {
                let sig: p256::ecdsa::Signature = self.sk.sign(msg.as_bytes());
                base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
            })
            .clone()
    }
}

const DEVICE_IDS: [&str; 5] = ["d0", "d1", "d2", "d3", "x"];

/// A challenge body from a few choices.
struct Shape {
    devices: usize,
    platforms: [u8; 4],
    sms: bool,
    fallback: Option<u64>,
    ttl: u64,
    number_match: bool,
    payment: bool,
    signed: bool,
}

impl Shape {
    fn arbitrary(u: &mut Unstructured) -> ArbResult<Shape> {
        Ok(Shape {
            devices: u.int_in_range(0..=4)?,
            platforms: [
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
            ],
            sms: u.arbitrary()?,
            fallback: if u.arbitrary()? {
                Some(u.int_in_range(0..=120)?)
            } else {
                None
            },
            ttl: u.int_in_range(MIN_TTL_SECONDS..=180)?,
            number_match: u.arbitrary()?,
            payment: u.arbitrary()?,
            signed: u.arbitrary()?,
        })
    }

    fn body(&self, id: &str, user: &str, key: &DeviceKey) -> Value {
        let devices: Vec<Value> = (0..self.devices)
            .map(|i| {
                let mut d = match self.platforms[i] % 3 {
                    0 => json!({"device_id": DEVICE_IDS[i], "platform": "apns", "token": "ab".repeat(32)}),
                    1 => json!({"device_id": DEVICE_IDS[i], "platform": "fcm", "token": format!("tok-{i}")}),
                    _ => json!({"device_id": DEVICE_IDS[i], "platform": "hms", "token": format!("hms-{i}")}),
                };
                if i == 0 && self.signed {
                    d["public_key"] = json!(key.spki_b64);
                }
                d
            })
            .collect();
        let mut v = json!({
            "v": 1, "challenge_id": id, "user_id": user,
            "kind": if self.payment { "payment" } else { "login" },
            "created_at": CREATED_AT, "ttl_seconds": self.ttl,
            "devices": devices, "number_match": self.number_match,
        });
        if self.payment {
            v["transaction"] =
                json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
        }
        if self.sms {
            v["sms"] = json!({"phone": "+393401234567"});
            if let Some(f) = self.fallback {
                v["sms"]["fallback_after_seconds"] = json!(f);
            }
        }
        v
    }
}

/// What the machine has said so far, and the checks on each step.
struct MachineLog {
    publishes: usize,
    withdrawn: HashSet<usize>,
    token_invalid: HashSet<usize>,
}

impl MachineLog {
    fn check_commands(&mut self, c: &Challenge, was_done: bool, cmds: &[Command], start: bool) {
        let n = c.devices.len();
        let deciding = c.outcome.as_ref().and_then(|o| o.device);
        for cmd in cmds {
            assert!(
                !was_done || matches!(cmd, Command::TokenInvalid { .. }),
                "{cmd:?} after the outcome"
            );
            match *cmd {
                Command::Push { device } => {
                    assert!(start, "a push after the start");
                    assert!(device < n);
                }
                Command::Withdraw { device } => {
                    assert!(device < n && Some(device) != deciding);
                    assert!(
                        self.withdrawn.insert(device),
                        "device {device} withdrawn twice"
                    );
                }
                Command::SendSms => assert!(c.spec.sms.is_some(), "an SMS without a phone"),
                Command::TokenInvalid { device } => {
                    assert!(device < n);
                    assert!(
                        self.token_invalid.insert(device),
                        "token {device} gone twice"
                    );
                }
                Command::PublishOutcome => self.publishes += 1,
            }
        }
        assert_eq!(
            self.publishes,
            usize::from(c.is_done()),
            "outcomes published: {}, decided: {}",
            self.publishes,
            c.is_done()
        );
        match c.next_deadline() {
            None => assert!(c.is_done()),
            Some(d) => assert!(!c.is_done() && d <= c.spec.expires_at_ms()),
        }
        let view = View::of(c);
        assert_eq!(view.is_completed(), c.is_done());
        assert_eq!(OutcomeMessage::of(c).is_some(), c.is_done());
        // The published body is the outcome message, byte for byte.
        assert_eq!(
            OutcomeMessage::body_of(c),
            OutcomeMessage::of(c).map(|m| serde_json::to_vec(&m).expect("serializable"))
        );
    }
}

/// One challenge's state machine under an arbitrary sequence of events and clock steps:
/// exactly one outcome, nothing after it, never expired before its ttl, a signing device
/// decides only with a valid signature, number matching holds.
pub fn machine(data: &[u8]) {
    let _ = run_machine(&mut Unstructured::new(data));
}

fn run_machine(u: &mut Unstructured) -> ArbResult<()> {
    let shape = Shape::arbitrary(u)?;
    let key = DeviceKey::get();
    let body = shape.body("c1", "u1", key).to_string();
    let spec = parse_challenge(body.as_bytes(), T0, SKEW_MS).expect("a generated body is valid");
    let expires = spec.expires_at_ms();
    let n = spec.devices.len();
    let reachable: Vec<bool> = (0..n).map(|_| u.arbitrary()).collect::<ArbResult<_>>()?;
    let default_fallback: u64 = u.int_in_range(0..=60)?;
    let number = NumberMatch {
        number: 42,
        choices: [17, 42, 88],
    };
    let mut now = T0 + u.int_in_range(-SKEW_MS..=(shape.ttl as i64) * 1000 + 1000)?;
    let (mut c, cmds) = Challenge::start(spec, now, &reachable, default_fallback, Some(number));
    let mut log = MachineLog {
        publishes: 0,
        withdrawn: HashSet::new(),
        token_invalid: HashSet::new(),
    };
    if now >= expires {
        assert_eq!(
            c.outcome.as_ref().map(|o| o.kind),
            Some(OutcomeKind::Expired)
        );
    }
    log.check_commands(&c, false, &cmds, true);
    for (i, cmd) in cmds.iter().enumerate() {
        if let Command::Push { device } = cmd {
            assert!(reachable[*device], "a push to an unreachable device");
            assert!(!cmds[..i].contains(cmd), "device {device} pushed twice");
        }
    }
    let hasher = OtpHasher::new([9; 32]);
    let tx = c.spec.tx_digest();
    let hash = |code: &str| hasher.hash(code, "c1", &tx);
    let tx_digest = c.spec.tx_digest();
    let sig_for = |approve: bool| {
        let d = if approve { "approve" } else { "deny" };
        key.sign(&crate::challenge::signature::signed_message(
            "c1", d, &tx_digest,
        ))
    };
    let (sig_approve, sig_deny) = if shape.signed && n > 0 {
        (sig_for(true), sig_for(false))
    } else {
        (String::new(), String::new())
    };
    let mut garbage: String;
    let mut steps = 0;
    while !u.is_empty() && steps < 200 {
        steps += 1;
        let dt: i64 = if u.arbitrary()? {
            u.int_in_range(0..=2_000)?
        } else {
            u.int_in_range(0..=60_000)?
        };
        now += dt;
        let was_done = c.is_done();
        let before = c.outcome.clone();
        let failures = c.otp_failures;
        let choice: u8 = u.int_in_range(0..=9)?;
        let mut decision = None;
        let event = match choice {
            0 => Event::PushResult {
                device: u.int_in_range(0..=n)?,
                result: *u.choose(&[
                    PushResult::Delivered,
                    PushResult::TokenGone,
                    PushResult::Failed,
                ])?,
            },
            1 => {
                let device = u.int_in_range(0..=4usize)?;
                let approve: bool = u.arbitrary()?;
                let sig_kind: u8 = u.int_in_range(0..=3)?;
                let signature = match sig_kind {
                    0 => None,
                    1 => {
                        garbage = u.arbitrary::<String>()?;
                        Some(garbage.as_str())
                    }
                    2 => Some(if approve { &sig_approve } else { &sig_deny }.as_str()),
                    _ => Some(if approve { &sig_deny } else { &sig_approve }.as_str()),
                };
                let number = match u.int_in_range(0..=2)? {
                    0 => None,
                    1 => Some(42),
                    _ => Some(u.arbitrary()?),
                };
                decision = Some((device, approve, sig_kind, number));
                Event::Decision {
                    device_id: DEVICE_IDS[device],
                    approve,
                    signature,
                    number,
                }
            }
            2 => Event::OtpAttempt {
                hash: hash(if u.arbitrary()? { CODE } else { WRONG_CODE }),
            },
            3 => Event::SmsRequested,
            4 => Event::SmsIssued {
                hash: hash(if u.arbitrary()? { CODE } else { "654321" }),
            },
            5 => Event::SmsUnavailable,
            6 => Event::SmsResult {
                seq: u.int_in_range(0..=c.sms_sent.saturating_add(1))?,
                delivered: u.arbitrary()?,
            },
            7 => Event::Cancel,
            8 => Event::Tick,
            _ => {
                c.compact();
                continue;
            }
        };
        let step = c.handle(now, event);
        log.check_commands(&c, was_done, &step.commands, false);
        let o = c.outcome.clone();
        if was_done {
            assert_eq!(o, before, "the outcome changed");
        } else if now >= expires {
            let o = o.as_ref().expect("pending past its ttl");
            assert_eq!((o.kind, o.decided_at_ms), (OutcomeKind::Expired, now));
        } else if let Some(o) = &o {
            assert_ne!(o.kind, OutcomeKind::Expired, "expired before its ttl");
            assert_eq!(o.decided_at_ms, now);
        }
        match step.reply {
            Reply::Decided(k) => {
                assert!(!was_done && o.as_ref().map(|o| o.kind) == Some(k));
            }
            Reply::AlreadyDone(k) => assert_eq!(o.as_ref().map(|o| o.kind), Some(k)),
            Reply::WrongCode { attempts_left } => {
                assert!(attempts_left >= 1);
                assert_eq!(attempts_left, MAX_OTP_ATTEMPTS - c.otp_failures);
                assert_eq!(c.otp_failures, failures + 1);
            }
            Reply::Locked => {
                assert_eq!(o.as_ref().map(|o| o.kind), Some(OutcomeKind::OtpLocked));
            }
            _ => {}
        }
        if let Some((device, approve, sig_kind, number)) = decision {
            let decided_here = !was_done && o.is_some() && now < expires;
            if decided_here {
                let o = o.as_ref().expect("decided");
                assert_eq!(o.device, Some(device), "decided by another device");
                if device == 0 && shape.signed {
                    assert_eq!(
                        sig_kind, 2,
                        "a signing device decided without its signature"
                    );
                }
                if o.kind == OutcomeKind::Approved {
                    assert!(approve);
                    if shape.number_match {
                        assert_eq!(number, Some(42), "approved with the wrong number");
                    }
                }
            }
            if step.reply == Reply::NumberMismatch {
                assert!(approve && shape.number_match && number != Some(42));
            }
        }
    }
    // Whatever happened, the ttl ends it.
    let now = now.max(expires);
    let was_done = c.is_done();
    let step = c.handle(now, Event::Tick);
    log.check_commands(&c, was_done, &step.commands, false);
    assert!(c.is_done(), "pending after its ttl");
    Ok(())
}

// ---- the sans-io core ------------------------------------------------------------------

/// Fixed randomness: number 42 among 17/42/88; every code is [`CODE`].
struct Fixed;

impl Entropy for Fixed {
    fn number_match(&self) -> NumberMatch {
        NumberMatch {
            number: 42,
            choices: [17, 42, 88],
        }
    }
    fn otp_code(&self) -> String {
        CODE.into()
    }
}

const CORE_IDS: [&str; 3] = ["p0", "p1", "p2"];

/// What the driver would hold, and what the invariants need to know.
#[derive(Default)]
struct World {
    now: i64,
    timers: BTreeMap<(i64, u64), Arc<str>>,
    timer_seq: u64,
    pushes: Vec<(Arc<str>, usize)>,
    sms: Vec<(Arc<str>, u8)>,
    publishes: Vec<Arc<str>>,
    /// Per id, for its current life in the table: outcomes published, confirmed, expiry.
    outcomes: HashMap<String, usize>,
    confirmed: HashSet<String>,
    expires: HashMap<String, i64>,
    /// Deliveries of accepted bodies (not yet settled) by id, and every settled tag.
    open_acks: HashMap<u32, String>,
    settled: HashSet<u32>,
    next_tag: u32,
}

impl World {
    fn absorb(&mut self, fx: Effects<u32>) {
        for e in fx {
            match e {
                Effect::Push { device, msg, .. } => {
                    let id = msg.challenge_id.to_string();
                    assert!(
                        !self.outcomes.contains_key(&id),
                        "push after the outcome of {id}"
                    );
                    assert!(msg.expires_at_ms > self.now, "a push past the ttl of {id}");
                    self.render(&msg);
                    self.pushes.push((msg.challenge_id, device));
                }
                Effect::Withdraw { msg, .. } => {
                    assert!(msg.is_withdraw());
                    self.render(&msg);
                }
                Effect::SendSms { id, seq, .. } => {
                    assert!(
                        !self.outcomes.contains_key(&*id),
                        "SMS after the outcome of {id}"
                    );
                    self.sms.push((id, seq));
                }
                Effect::PublishOutcome { id, body, .. } => {
                    self.outcome(&id, &body);
                }
                Effect::Settle(tags) => {
                    for t in tags {
                        let id = self
                            .open_acks
                            .remove(&t)
                            .expect("a tag settled twice or unknown");
                        assert!(
                            self.confirmed.contains(&id),
                            "{id} settled before its confirm"
                        );
                        self.settled.insert(t);
                    }
                }
                Effect::DeadLetter {
                    ack,
                    outcome,
                    retained,
                    ..
                } => {
                    assert!(
                        self.settled.insert(ack),
                        "a dead letter's tag settled twice"
                    );
                    assert_eq!(outcome.is_some(), retained.is_some());
                    if let (Some(id), Some((_, body))) = (retained, outcome) {
                        self.outcome(&id, &body);
                    }
                }
                Effect::ArmTimer { id, at } => {
                    self.timer_seq += 1;
                    self.timers.insert((at, self.timer_seq), id);
                }
                Effect::PublishEvent { .. }
                | Effect::WakeWaiters(_)
                | Effect::TellPeers(_)
                | Effect::Count(_) => {}
            }
        }
    }

    /// What each provider would be sent for a push.
    fn render(&self, msg: &crate::push::PushMessage) {
        let _ = crate::push::apns::payload::build(msg);
        let fcm = crate::push::fcm::message::build_body(msg, self.now);
        let hms = crate::push::hms::message::build_body(msg, self.now);
        for b in [fcm, hms] {
            serde_json::from_slice::<Value>(&b).expect("a push body is JSON");
        }
    }

    fn outcome(&mut self, id: &Arc<str>, body: &[u8]) {
        let n = self.outcomes.entry(id.to_string()).or_default();
        *n += 1;
        assert_eq!(*n, 1, "a second outcome for {id}");
        let m: OutcomeMessage = serde_json::from_slice(body).expect("an outcome parses");
        assert_eq!(m.challenge_id, &**id);
        if m.outcome == OutcomeKind::Expired {
            let exp = self
                .expires
                .get(&**id)
                .copied()
                .expect("expired but never accepted");
            assert!(
                self.now >= exp,
                "{id} expired at {} before its ttl {exp}",
                self.now
            );
        }
        self.publishes.push(id.clone());
    }

    fn fire_timers(&mut self, c: &Core<u32>) {
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > self.now {
                break;
            }
            let id = self.timers.remove(&(at, seq)).expect("present");
            let fx = c.tick(self.now, &id);
            self.absorb(fx);
            if !c.holds(&id) {
                // Retention over: a later copy starts a new life.
                self.outcomes.remove(&*id);
                self.confirmed.remove(&*id);
                self.expires.remove(&*id);
            }
        }
    }

    fn confirm(&mut self, c: &Core<u32>, n: usize) {
        if self.publishes.is_empty() {
            return;
        }
        let id = self.publishes.remove(n % self.publishes.len());
        self.confirmed.insert(id.to_string());
        let fx = c.confirmed(self.now, &id);
        self.absorb(fx);
    }
}

fn device_id(s: &str) -> crate::wire::ops::DeviceId {
    serde_json::from_value(json!(s)).expect("a valid device id")
}

/// The engine core under arbitrary interleavings of intake (valid, duplicate and refused
/// copies), operations, provider results, confirms and time: one outcome per accepted
/// challenge and life, nothing pushed or sent after it, no delivery settled before its
/// outcome's confirm, never expired before the ttl, everything settled and released at
/// drain.
pub fn core(data: &[u8]) {
    let _ = run_core(&mut Unstructured::new(data));
}

fn run_core(u: &mut Unstructured) -> ArbResult<()> {
    let mut cfg = Config::default();
    cfg.sms.otp_key = "fuzz-key".into();
    let reach = Reach {
        apns: u.arbitrary()?,
        fcm: u.arbitrary()?,
        hms: u.arbitrary()?,
        sms_gateway: u.arbitrary()?,
    };
    let mut settings = Settings::from_config(&cfg, reach);
    settings.retain_ms = i64::from(u.int_in_range(1u16..=900)?) * 1000;
    let retain_ms = settings.retain_ms;
    let c: Core<u32> = Core::new(&cfg, settings, Box::new(Fixed));
    let key = DeviceKey::get();
    let payment_digest = crate::challenge::model::Transaction {
        amount: "125.40".into(),
        currency: "EUR".into(),
        payee: "Mario Rossi".into(),
    }
    .digest_hex();
    let mut w = World {
        now: T0,
        ..World::default()
    };
    let mut stopped = false;
    let mut steps = 0;
    while !u.is_empty() && steps < 120 {
        steps += 1;
        let i: usize = u.int_in_range(0..=2)?;
        let id = CORE_IDS[i];
        match u.int_in_range(0..=11u8)? {
            0 | 1 => {
                if stopped {
                    continue;
                }
                let shape = Shape::arbitrary(u)?;
                let user = *u.choose(&["u0", "u1"])?;
                let mut v = shape.body(id, user, key);
                let ok = match u.int_in_range(0..=5u8)? {
                    0 => {
                        v["ttl_seconds"] = json!(1);
                        false
                    }
                    1 => {
                        v["devices"] = json!("nope");
                        false
                    }
                    _ => true,
                };
                w.next_tag += 1;
                let tag = w.next_tag;
                let held_before = c.holds(id);
                let fx = c.intake(
                    w.now,
                    v.to_string().as_bytes(),
                    DeliveryMeta::default(),
                    tag,
                );
                if ok {
                    w.open_acks.insert(tag, id.to_string());
                    if !held_before {
                        w.expires
                            .insert(id.to_string(), T0 + shape.ttl as i64 * 1000);
                    }
                } else {
                    let second = fx.iter().any(|e| {
                        matches!(
                            e,
                            Effect::DeadLetter {
                                outcome: Some(_),
                                ..
                            }
                        )
                    });
                    assert!(
                        !(held_before && second),
                        "a refused copy of a held challenge got an outcome"
                    );
                    if !held_before {
                        w.expires.entry(id.to_string()).or_insert(T0 + 1000);
                    }
                }
                w.absorb(fx);
            }
            2 | 3 => {
                let device = *u.choose(&DEVICE_IDS)?;
                let approve: bool = u.arbitrary()?;
                let signature = match u.int_in_range(0..=2u8)? {
                    0 => None,
                    1 => Some("bm9wZQ==".to_string()),
                    _ => {
                        let d = if approve { "approve" } else { "deny" };
                        let tx = if u.arbitrary()? { "" } else { &payment_digest };
                        Some(key.sign(&crate::challenge::signature::signed_message(id, d, tx)))
                    }
                };
                let op = Operation::Decision(DecisionOp {
                    device_id: device_id(device),
                    decision: if approve {
                        Decision::Approve
                    } else {
                        Decision::Deny
                    },
                    signature,
                    number: *u.choose(&[None, Some(42), Some(17)])?,
                    report_fraud: false,
                });
                let authority = *u.choose(&[
                    Authority::Bearer,
                    Authority::Queue,
                    Authority::DeviceSignature,
                ])?;
                let (o, fx) = c.operate(w.now, id, &op, authority);
                if !c.holds(id) {
                    assert_eq!(o, OpOutcome::NotFound);
                }
                w.absorb(fx);
            }
            4 => {
                let code = if u.arbitrary()? { CODE } else { WRONG_CODE };
                let op = Operation::Otp {
                    code: OtpCode::parse(code).expect("6 digits"),
                };
                let (_, fx) = c.operate(w.now, id, &op, Authority::Queue);
                w.absorb(fx);
            }
            5 => {
                let (_, fx) = c.operate(w.now, id, &Operation::Sms, Authority::Bearer);
                w.absorb(fx);
            }
            6 => {
                let (_, fx) = c.operate(w.now, id, &Operation::Cancel, Authority::Bearer);
                w.absorb(fx);
            }
            7 => {
                if w.pushes.is_empty() {
                    continue;
                }
                let n = u.int_in_range(0..=w.pushes.len() - 1)?;
                let (pid, device) = w.pushes.remove(n);
                let r = *u.choose(&[
                    PushResult::Delivered,
                    PushResult::TokenGone,
                    PushResult::Failed,
                ])?;
                let fx = c.push_result(w.now, &pid, device, r);
                w.absorb(fx);
            }
            8 => {
                if w.sms.is_empty() {
                    continue;
                }
                let n = u.int_in_range(0..=w.sms.len() - 1)?;
                let (sid, seq) = w.sms.remove(n);
                let r = if u.arbitrary()? {
                    Ok(())
                } else {
                    Err("failed".to_string())
                };
                let fx = c.sms_result(w.now, &sid, seq, r);
                w.absorb(fx);
            }
            9 => {
                let n: usize = u.arbitrary()?;
                w.confirm(&c, n);
            }
            10 => {
                w.now += i64::from(u.int_in_range(0u16..=40_000)?);
                w.fire_timers(&c);
                if u.arbitrary()? {
                    c.prune(w.now);
                }
            }
            _ => {
                if u.arbitrary()? {
                    stopped = true;
                } else {
                    let note = if u.arbitrary()? {
                        PeerNote::SmsSent {
                            user: "u0".into(),
                            at: w.now,
                        }
                    } else {
                        PeerNote::SmsConfirmed { user: "u1".into() }
                    };
                    c.peer_note(w.now, &note);
                }
            }
        }
    }
    // Drain: time runs past every ttl, every outcome in flight is confirmed.
    w.now += (MAX_TTL_SECONDS as i64 + 1) * 1000;
    w.fire_timers(&c);
    while !w.publishes.is_empty() {
        w.confirm(&c, 0);
    }
    assert_eq!(c.pending(), 0, "an accepted challenge without its outcome");
    for id in CORE_IDS {
        if c.holds(id) {
            assert_eq!(w.outcomes.get(id).copied(), Some(1), "{id} has one outcome");
        }
    }
    assert!(
        w.open_acks.is_empty(),
        "unsettled at drain: {:?}",
        w.open_acks
    );
    w.now += retain_ms + (MAX_TTL_SECONDS as i64 + 1) * 1000;
    w.fire_timers(&c);
    assert_eq!(c.held(), 0, "memory held after retention");
    Ok(())
}
