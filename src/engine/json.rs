//! The JSON the engine emits: outcome events (CONTRACT §4), other events, the challenge
//! view of `GET /v1/challenges/{id}`, and answers to operations (HTTP and AMQP alike).

use crate::challenge::machine::{Challenge, Reply};
use crate::challenge::model::{ChallengeSpec, OutcomeKind};
use crate::sms::{abuse::SmsRefusal, mask_phone};
use serde_json::{json, Value};

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T19:40:07.113Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The outcome event of a challenge that has one.
pub fn outcome(c: &Challenge) -> Value {
    let o = c.outcome.as_ref().expect("called on a settled challenge");
    let s = &c.spec;
    json!({
        "v": 1,
        "challenge_id": &*s.challenge_id,
        "user_id": &*s.user_id,
        "kind": s.kind.as_str(),
        "outcome": o.kind.as_str(),
        "channel": o.channel.map(|ch| ch.as_str()),
        "device_id": c.decided_device_id(),
        "reason": o.reason,
        "decided_at": rfc3339_ms(o.decided_at_ms),
        "elapsed_ms": (o.decided_at_ms - s.created_at_ms).max(0),
    })
}

/// The `rejected` outcome of a message that could not be accepted.
pub fn rejected_outcome(
    challenge_id: &str,
    user_id: Option<&str>,
    kind: Option<&str>,
    reason: &str,
    now: i64,
) -> Value {
    json!({
        "v": 1,
        "challenge_id": challenge_id,
        "user_id": user_id,
        "kind": kind,
        "outcome": "rejected",
        "channel": null,
        "device_id": null,
        "reason": reason,
        "decided_at": rfc3339_ms(now),
        "elapsed_ms": 0,
    })
}

pub fn routing_key(kind: &str, outcome: OutcomeKind) -> String {
    format!("outcome.{kind}.{}", outcome.as_str())
}

/// `challenge.dispatched`: who was asked, how; tokens and numbers masked.
pub fn dispatched(c: &Challenge, now: i64) -> Value {
    let s = &c.spec;
    let devices: Vec<Value> = s
        .devices
        .iter()
        .zip(&c.devices)
        .map(|(d, slot)| {
            json!({"device_id": &*d.device_id, "platform": d.platform.as_str(), "push": slot.push.as_str()})
        })
        .collect();
    json!({
        "v": 1,
        "event": "challenge.dispatched",
        "challenge_id": &*s.challenge_id,
        "user_id": &*s.user_id,
        "kind": s.kind.as_str(),
        "devices": devices,
        "sms": s.sms.as_ref().map(|m| mask_phone(&m.phone)),
        "expires_at": rfc3339_ms(s.expires_at_ms()),
        "at": rfc3339_ms(now),
    })
}

/// `device.token_invalid`.
pub fn token_invalid(spec: &ChallengeSpec, device: usize, now: i64) -> Value {
    let d = &spec.devices[device];
    json!({
        "v": 1,
        "event": "device.token_invalid",
        "challenge_id": &*spec.challenge_id,
        "user_id": &*spec.user_id,
        "device_id": &*d.device_id,
        "platform": d.platform.as_str(),
        "token": crate::push::mask_token(&d.token),
        "at": rfc3339_ms(now),
    })
}

/// `sms.sent` / `sms.failed` with the number masked.
pub fn sms_event(spec: &ChallengeSpec, sent: bool, reason: Option<&str>, now: i64) -> Value {
    json!({
        "v": 1,
        "event": if sent { "sms.sent" } else { "sms.failed" },
        "challenge_id": &*spec.challenge_id,
        "user_id": &*spec.user_id,
        "phone": spec.sms.as_ref().map(|m| mask_phone(&m.phone)),
        "reason": reason,
        "at": rfc3339_ms(now),
    })
}

/// The view of `GET /v1/challenges/{id}`.
pub fn view(c: &Challenge) -> Value {
    let s = &c.spec;
    let devices: Vec<Value> = s
        .devices
        .iter()
        .zip(&c.devices)
        .map(|(d, slot)| {
            json!({
                "device_id": &*d.device_id,
                "platform": d.platform.as_str(),
                "push": slot.push.as_str(),
                "withdrawn": slot.withdrawn,
            })
        })
        .collect();
    let mut v = json!({
        "challenge_id": &*s.challenge_id,
        "user_id": &*s.user_id,
        "kind": s.kind.as_str(),
        "state": if c.is_done() { "completed" } else { "pending" },
        "expires_at": rfc3339_ms(s.expires_at_ms()),
        "devices": devices,
    });
    if let Some(o) = &c.outcome {
        v["outcome"] = o.kind.as_str().into();
        v["channel"] = o.channel.map(|ch| ch.as_str()).into();
        v["device_id"] = c.decided_device_id().into();
        v["reason"] = o.reason.into();
        v["decided_at"] = rfc3339_ms(o.decided_at_ms).into();
    }
    if let Some(m) = &s.sms {
        v["sms"] = json!({
            "state": c.sms.as_str(),
            "phone": mask_phone(&m.phone),
            "sent": c.sms_sent,
            "attempts_left": crate::challenge::otp::MAX_OTP_ATTEMPTS.saturating_sub(c.otp_failures),
        });
    }
    if let Some(n) = c.number {
        v["number"] = n.number.into();
    }
    v
}

/// The answer to an operation: an HTTP status and a JSON body (the AMQP reply carries
/// the same, with the status as a field).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn new(status: u16, body: Value) -> Self {
        Self { status, body }
    }
    pub fn error(status: u16, error: &str, message: &str) -> Self {
        Self::new(status, json!({"error": error, "message": message}))
    }
    pub fn not_found() -> Self {
        Self::error(404, "not_found", "no such challenge")
    }
    pub fn sms_refused(r: SmsRefusal) -> Self {
        Self::new(
            429,
            json!({"error": "sms_limit", "limit": r.label(), "message": "SMS limit reached for this user"}),
        )
    }
}

/// Maps a state-machine reply to its HTTP answer (CONTRACT §5).
pub fn answer(reply: Reply) -> Answer {
    match reply {
        Reply::Decided(k) => Answer::new(200, json!({"outcome": k.as_str()})),
        Reply::AlreadyDone(OutcomeKind::Expired) => Answer::new(
            410,
            json!({"error": "expired", "outcome": "expired", "message": "the challenge has expired"}),
        ),
        Reply::AlreadyDone(k) => Answer::new(
            409,
            json!({"error": "already_decided", "outcome": k.as_str(), "message": "the challenge is already decided"}),
        ),
        Reply::DeviceNotBound => Answer::error(
            403,
            "device_not_bound",
            "this device is not part of the challenge",
        ),
        Reply::BadSignature => {
            Answer::error(403, "bad_signature", "missing or invalid device signature")
        }
        Reply::NumberMismatch => Answer::new(
            403,
            json!({"error": "number_mismatch", "outcome": "denied", "message": "wrong number picked; the challenge is denied"}),
        ),
        Reply::WrongCode { attempts_left } => Answer::new(
            401,
            json!({"error": "wrong_code", "attempts_left": attempts_left, "message": "wrong code"}),
        ),
        Reply::Locked => Answer::new(
            423,
            json!({"error": "otp_locked", "outcome": "otp_locked", "attempts_left": 0, "message": "too many wrong codes"}),
        ),
        Reply::NoCode => Answer::error(
            409,
            "no_code_sent",
            "no SMS code is active for this challenge",
        ),
        Reply::CodeExpired => Answer::error(
            410,
            "code_expired",
            "the code has expired; ask for a new SMS",
        ),
        Reply::NoSms => Answer::error(409, "no_sms", "this challenge has no phone number for SMS"),
        Reply::SmsQueued => Answer::new(202, json!({"sms": "sent"})),
        Reply::None => Answer::new(200, json!({})),
    }
}
