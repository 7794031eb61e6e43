//! Operations on a challenge — one representation from parse to answer. HTTP bodies and
//! `sca.responses` messages parse into [`Operation`] (with the challenge id as a
//! [`ChallengeId`] and the caller's [`Authority`] beside it); the engine answers an
//! [`OpOutcome`]; [`OpOutcome::answer`] is the one mapping to HTTP status + JSON, used by
//! the HTTP API, the replies on `sca.responses` and (through the requesting instance)
//! forwarded operations.

use crate::challenge::model::{valid_challenge_id, OutcomeKind};
use crate::challenge::{offline, otp};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use std::fmt;

/// A challenge id that keeps the contract's rule: 1–64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ChallengeId(String);

impl ChallengeId {
    pub fn parse(s: &str) -> Option<ChallengeId> {
        valid_challenge_id(s).then(|| ChallengeId(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChallengeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChallengeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChallengeId::parse(&s)
            .ok_or_else(|| de::Error::custom("challenge_id must be 1-64 of [A-Za-z0-9_-]"))
    }
}

/// A device id: 1–64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.len() > 64 {
            return Err(de::Error::custom("device_id must be 1-64 characters"));
        }
        Ok(DeviceId(s))
    }
}

/// What the code field held, before it is checked. Only a JSON string is taken, and
/// whatever else was sent is never repeated in the error (it may be a code).
#[derive(Clone, PartialEq, Eq)]
pub struct CodeText(String);

impl fmt::Debug for CodeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeText(***)")
    }
}

/// The error for a `code` that is not a string; it names no value.
const CODE_NOT_STRING: &str = "code must be a string of 6 digits";

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = CodeText;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(CODE_NOT_STRING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<CodeText, E> {
        Ok(CodeText(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<CodeText, E> {
        Ok(CodeText(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_unit<E: de::Error>(self) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_none<E: de::Error>(self) -> Result<CodeText, E> {
        Err(E::custom(CODE_NOT_STRING))
    }
    fn visit_some<D: Deserializer<'de>>(self, _: D) -> Result<CodeText, D::Error> {
        Err(de::Error::custom(CODE_NOT_STRING))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<CodeText, A::Error> {
        Err(de::Error::custom(CODE_NOT_STRING))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<CodeText, A::Error> {
        Err(de::Error::custom(CODE_NOT_STRING))
    }
}

impl<'de> Deserialize<'de> for CodeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CodeVisitor)
    }
}

impl CodeText {
    /// The code, if it is one (6 ASCII digits).
    pub fn into_code(self) -> Result<OtpCode, &'static str> {
        if otp::well_formed(&self.0) {
            Ok(OtpCode(self.0))
        } else {
            Err("code must be 6 digits")
        }
    }

    /// The offline code, if it is one (8 ASCII digits).
    pub fn into_offline_code(self) -> Result<OfflineCode, &'static str> {
        OfflineCode::parse(&self.0).ok_or("code must be 8 digits")
    }
}

/// A one-time code as the user typed it: 6 ASCII digits. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

impl OtpCode {
    pub fn parse(s: &str) -> Option<OtpCode> {
        otp::well_formed(s).then(|| OtpCode(s.to_string()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(***)")
    }
}

impl Serialize for OtpCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// An offline code as the user typed it: 8 ASCII digits. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct OfflineCode(u32);

impl OfflineCode {
    pub fn parse(s: &str) -> Option<OfflineCode> {
        offline::parse_code(s).map(OfflineCode)
    }
    pub fn value(&self) -> u32 {
        self.0
    }
}

impl fmt::Debug for OfflineCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OfflineCode(***)")
    }
}

impl Serialize for OfflineCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&offline::format_code(self.0))
    }
}

impl<'de> Deserialize<'de> for OfflineCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CodeText::deserialize(d)?
            .into_offline_code()
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for OtpCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CodeText::deserialize(d)?
            .into_code()
            .map_err(de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub fn approves(self) -> bool {
        self == Decision::Approve
    }
}

/// A device's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionOp {
    pub device_id: DeviceId,
    pub decision: Decision,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub number: Option<u32>,
    /// A deny that reports fraud (CONTRACT §10); never set on an approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_fraud: bool,
}

/// The error of `report_fraud` on an approval.
const FRAUD_ON_APPROVE: &str = "report_fraud may only be set on a deny";

/// An operation on a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    Decision(DecisionOp),
    Otp {
        code: OtpCode,
    },
    Sms,
    Cancel,
    /// An offline code computed by the app (CONTRACT §10).
    Offline {
        code: OfflineCode,
    },
}

impl Operation {
    /// The route label of metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Decision(_) => "decision",
            Operation::Otp { .. } => "otp",
            Operation::Offline { .. } => "offline",
            Operation::Sms => "sms",
            Operation::Cancel => "cancel",
        }
    }
}

/// On whose authority an operation is asked. Forwarded to the instance holding the
/// challenge unchanged, so the owner checks what the first instance was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// A valid bearer token on the HTTP API.
    Bearer,
    /// A message on `sca.responses` (the broker's permissions stand for the token).
    Queue,
    /// No token: only a decision from a device that signs its decisions is taken (the
    /// signature is the authority).
    DeviceSignature,
}

/// The body of `POST …/decision`. `challenge_id` and `op` are tolerated so that a
/// `sca.responses` body may be posted as is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    pub device_id: DeviceId,
    pub decision: Decision,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub number: Option<u32>,
    #[serde(default)]
    pub report_fraud: bool,
    /// The challenge's user, a routing hint in cluster mode (CONTRACT §10).
    #[serde(default)]
    pub user_id: Option<UserHint>,
    #[serde(default, rename = "challenge_id")]
    _challenge_id: Option<de::IgnoredAny>,
    #[serde(default, rename = "op")]
    _op: Option<de::IgnoredAny>,
}

impl DecisionBody {
    /// The operation; `report_fraud` on an approval is refused.
    pub fn into_op(self) -> Result<Operation, &'static str> {
        if self.report_fraud && self.decision.approves() {
            return Err(FRAUD_ON_APPROVE);
        }
        Ok(Operation::Decision(DecisionOp {
            device_id: self.device_id,
            decision: self.decision,
            signature: self.signature,
            number: self.number,
            report_fraud: self.report_fraud,
        }))
    }
}

/// The body of `POST …/offline`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineBody {
    pub code: CodeText,
    /// The challenge's user, a routing hint in cluster mode (CONTRACT §10).
    #[serde(default)]
    pub user_id: Option<UserHint>,
    #[serde(default, rename = "challenge_id")]
    _challenge_id: Option<de::IgnoredAny>,
    #[serde(default, rename = "op")]
    _op: Option<de::IgnoredAny>,
}

/// The body of `POST …/otp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpBody {
    pub code: CodeText,
    /// The challenge's user, a routing hint in cluster mode (CONTRACT §10).
    #[serde(default)]
    pub user_id: Option<UserHint>,
    #[serde(default, rename = "challenge_id")]
    _challenge_id: Option<de::IgnoredAny>,
    #[serde(default, rename = "op")]
    _op: Option<de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseDecision {
    challenge_id: ChallengeId,
    device_id: DeviceId,
    decision: Decision,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    number: Option<u32>,
    #[serde(default)]
    report_fraud: bool,
    #[serde(default)]
    user_id: Option<UserHint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseOtp {
    challenge_id: ChallengeId,
    code: CodeText,
    #[serde(default)]
    user_id: Option<UserHint>,
}

#[derive(Deserialize)]
struct ResponseBare {
    challenge_id: ChallengeId,
    #[serde(default)]
    user_id: Option<UserHint>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ResponseWire {
    Decision(ResponseDecision),
    Otp(ResponseOtp),
    Sms(ResponseBare),
    Cancel(ResponseBare),
    Offline(ResponseOtp),
}

/// The `op` of a body whose `op` names no operation.
fn unknown_op(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct OpOnly {
        op: Option<String>,
    }
    let op = serde_json::from_slice::<OpOnly>(body).ok()?.op?;
    let known = ["decision", "otp", "sms", "cancel", "offline"];
    (!known.contains(&op.as_str())).then(|| op.chars().take(32).collect())
}

/// A message of `sca.responses`: `{"op": "decision"|"otp"|"sms"|"cancel"|"offline",
/// "challenge_id", …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMessage {
    pub challenge_id: ChallengeId,
    pub op: Operation,
    /// The challenge's user, if the message named it (a routing hint).
    pub user_id: Option<UserHint>,
}

/// A `user_id` given with an operation as a routing hint: 1–128 characters. It only
/// picks the partition to ask; it authorizes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UserHint(String);

impl UserHint {
    pub fn parse(s: &str) -> Option<UserHint> {
        (!s.is_empty() && s.len() <= 128).then(|| UserHint(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for UserHint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserHint::parse(&s).ok_or_else(|| de::Error::custom("user_id must be 1-128 characters"))
    }
}

impl ResponseMessage {
    /// Refuses a body over `max` bytes before any parsing; the error is the
    /// `x-sca-reason` of its dead letter (`body_too_large: …`).
    pub fn check_size(body: &[u8], max: usize) -> Result<(), String> {
        if body.len() > max {
            return Err(format!(
                "body_too_large: body is {} bytes, the limit is {max}",
                body.len()
            ));
        }
        Ok(())
    }

    /// Parses a body; the error is the `x-sca-reason` of its dead letter
    /// (`invalid_json: …`, `missing_field: …` or `invalid_field: …`).
    pub fn parse(body: &[u8]) -> Result<ResponseMessage, String> {
        let wire: ResponseWire = serde_json::from_slice(body).map_err(|e| {
            use serde_json::error::Category;
            let msg = e.to_string();
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => format!("invalid_json: {msg}"),
                Category::Data if msg.starts_with("missing field") => {
                    format!("missing_field: {msg}")
                }
                Category::Data => match unknown_op(body) {
                    Some(op) => format!("invalid_field: unknown op {op:?}"),
                    None => format!("invalid_field: {msg}"),
                },
            }
        })?;
        let bad_code = |e: &str| format!("invalid_field: {e}");
        Ok(match wire {
            ResponseWire::Decision(d) => {
                if d.report_fraud && d.decision.approves() {
                    return Err(format!("invalid_field: {FRAUD_ON_APPROVE}"));
                }
                ResponseMessage {
                    challenge_id: d.challenge_id,
                    user_id: d.user_id,
                    op: Operation::Decision(DecisionOp {
                        device_id: d.device_id,
                        decision: d.decision,
                        signature: d.signature,
                        number: d.number,
                        report_fraud: d.report_fraud,
                    }),
                }
            }
            ResponseWire::Offline(o) => ResponseMessage {
                challenge_id: o.challenge_id,
                user_id: o.user_id,
                op: Operation::Offline {
                    code: o.code.into_offline_code().map_err(bad_code)?,
                },
            },
            ResponseWire::Otp(o) => ResponseMessage {
                challenge_id: o.challenge_id,
                user_id: o.user_id,
                op: Operation::Otp {
                    code: o.code.into_code().map_err(bad_code)?,
                },
            },
            ResponseWire::Sms(b) => ResponseMessage {
                challenge_id: b.challenge_id,
                user_id: b.user_id,
                op: Operation::Sms,
            },
            ResponseWire::Cancel(b) => ResponseMessage {
                challenge_id: b.challenge_id,
                user_id: b.user_id,
                op: Operation::Cancel,
            },
        })
    }
}

/// What became of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpOutcome {
    /// This operation settled the challenge.
    Decided {
        outcome: OutcomeKind,
    },
    /// Settled earlier (`expired` answers 410, the rest 409).
    AlreadyDecided {
        outcome: OutcomeKind,
    },
    DeviceNotBound,
    BadSignature,
    /// Wrong number picked: the challenge is denied.
    NumberMismatch,
    WrongCode {
        attempts_left: u8,
    },
    Locked,
    NoCode,
    CodeExpired,
    NoSms,
    SmsSent,
    /// An SMS limit refused the SMS (`limit` is the label of `sca_rate_limited_total`).
    SmsLimit {
        limit: String,
    },
    SmsUnavailable,
    /// An offline code for a challenge without an operation id.
    NotOffline,
    /// Taken, nothing to report.
    Accepted,
    NotFound,
    Unauthorized,
    /// The operation could not reach the instance holding the challenge.
    Unreachable,
    /// Cluster mode: the challenge's partition is changing owner; ask again shortly.
    Moving,
}

/// An answer: HTTP status and JSON body (a reply on `sca.responses` carries the same,
/// the status as a field).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn error(status: u16, error: &str, message: &str) -> Answer {
        Answer {
            status,
            body: json!({"error": error, "message": message}),
        }
    }

    /// The body with the status as a field, as replies on `sca.responses` carry it.
    pub fn into_reply(self) -> Value {
        let mut body = self.body;
        if let Some(o) = body.as_object_mut() {
            o.insert("status".into(), self.status.into());
        }
        body
    }
}

impl OpOutcome {
    /// The one mapping of an operation's outcome to HTTP status and JSON (CONTRACT §5).
    pub fn answer(&self) -> Answer {
        let a = |status, body| Answer { status, body };
        match self {
            OpOutcome::Decided { outcome } => a(200, json!({"outcome": outcome.as_str()})),
            OpOutcome::AlreadyDecided {
                outcome: OutcomeKind::Expired,
            } => a(
                410,
                json!({"error": "expired", "outcome": "expired", "message": "the challenge has expired"}),
            ),
            OpOutcome::AlreadyDecided { outcome } => a(
                409,
                json!({"error": "already_decided", "outcome": outcome.as_str(), "message": "the challenge is already decided"}),
            ),
            OpOutcome::DeviceNotBound => Answer::error(
                403,
                "device_not_bound",
                "this device is not part of the challenge",
            ),
            OpOutcome::BadSignature => {
                Answer::error(403, "bad_signature", "missing or invalid device signature")
            }
            OpOutcome::NumberMismatch => a(
                403,
                json!({"error": "number_mismatch", "outcome": "denied", "message": "wrong number picked; the challenge is denied"}),
            ),
            OpOutcome::WrongCode { attempts_left } => a(
                401,
                json!({"error": "wrong_code", "attempts_left": attempts_left, "message": "wrong code"}),
            ),
            OpOutcome::Locked => a(
                423,
                json!({"error": "otp_locked", "outcome": "otp_locked", "attempts_left": 0, "message": "too many wrong codes"}),
            ),
            OpOutcome::NoCode => Answer::error(
                409,
                "no_code_sent",
                "no SMS code is active for this challenge",
            ),
            OpOutcome::CodeExpired => Answer::error(
                410,
                "code_expired",
                "the code has expired; ask for a new SMS",
            ),
            OpOutcome::NoSms => {
                Answer::error(409, "no_sms", "this challenge has no phone number for SMS")
            }
            OpOutcome::SmsSent => a(202, json!({"sms": "sent"})),
            OpOutcome::SmsLimit { limit } => a(
                429,
                json!({"error": "sms_limit", "limit": limit, "message": "SMS limit reached for this user"}),
            ),
            OpOutcome::SmsUnavailable => {
                Answer::error(503, "sms_unavailable", "no SMS gateway is configured")
            }
            OpOutcome::NotOffline => Answer::error(
                409,
                "not_offline",
                "this challenge has no operation id for offline confirmation",
            ),
            OpOutcome::Accepted => a(200, json!({})),
            OpOutcome::NotFound => Answer::error(404, "not_found", "no such challenge"),
            OpOutcome::Unauthorized => Answer::error(
                401,
                "unauthorized",
                "missing or invalid bearer token (or device signature)",
            ),
            OpOutcome::Unreachable => Answer::error(
                503,
                "owner_unreachable",
                "the instance holding this challenge could not be reached",
            ),
            OpOutcome::Moving => a(
                503,
                json!({"error": "partition_moving", "retry_after_seconds": 1, "message": "the challenge's partition is changing owner; try again"}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_body_over_the_bound_is_refused_by_its_size() {
        assert_eq!(ResponseMessage::check_size(&[b'x'; 256], 256), Ok(()));
        let e = ResponseMessage::check_size(&[b'x'; 257], 256).unwrap_err();
        assert_eq!(e, "body_too_large: body is 257 bytes, the limit is 256");
    }

    fn parse(s: &str) -> Result<ResponseMessage, String> {
        ResponseMessage::parse(s.as_bytes())
    }

    #[test]
    fn parses_every_op() {
        let m = parse(r#"{"op":"decision","challenge_id":"c1","device_id":"d","decision":"deny"}"#)
            .unwrap();
        assert!(
            matches!(&m.op, Operation::Decision(d) if d.decision == Decision::Deny && d.device_id.as_str() == "d")
        );
        let m = parse(r#"{"op":"otp","challenge_id":"c1","code":"123456"}"#).unwrap();
        assert!(matches!(&m.op, Operation::Otp { code } if code.expose() == "123456"));
        assert_eq!(
            parse(r#"{"op":"sms","challenge_id":"c1"}"#).unwrap().op,
            Operation::Sms
        );
        let m = parse(r#"{"op":"offline","challenge_id":"c1","code":"00000042"}"#).unwrap();
        assert!(matches!(&m.op, Operation::Offline { code } if code.value() == 42));
        let m = parse(r#"{"op":"offline","challenge_id":"c1","code":"00000042","user_id":"u1"}"#)
            .unwrap();
        assert_eq!(m.user_id.as_ref().map(UserHint::as_str), Some("u1"));
        let m = parse(
            r#"{"op":"decision","challenge_id":"c1","device_id":"d","decision":"deny","report_fraud":true}"#,
        )
        .unwrap();
        assert!(matches!(&m.op, Operation::Decision(d) if d.report_fraud));
        let m = parse(r#"{"op":"cancel","challenge_id":"c1"}"#).unwrap();
        assert_eq!((m.challenge_id.as_str(), m.op), ("c1", Operation::Cancel));
    }

    #[test]
    fn operations_round_trip_for_peers() {
        let ops = [
            Operation::Decision(DecisionOp {
                device_id: DeviceId("d".into()),
                decision: Decision::Approve,
                signature: Some("s".into()),
                number: Some(42),
                report_fraud: false,
            }),
            Operation::Decision(DecisionOp {
                device_id: DeviceId("d".into()),
                decision: Decision::Deny,
                signature: None,
                number: None,
                report_fraud: true,
            }),
            Operation::Offline {
                code: OfflineCode::parse("01234567").unwrap(),
            },
            Operation::Otp {
                code: OtpCode::parse("123456").unwrap(),
            },
            Operation::Sms,
            Operation::Cancel,
        ];
        for op in ops {
            let s = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<Operation>(&s).unwrap(), op);
        }
    }

    #[test]
    fn refuses_malformed_at_parse_time() {
        for (bad, reason) in [
            ("nope", "invalid_json"),
            (r#"{"challenge_id":"c1"}"#, "missing_field"),
            (
                r#"{"op":"decision","challenge_id":"c1","device_id":"d","decision":"maybe"}"#,
                "invalid_field",
            ),
            (
                r#"{"op":"fly","challenge_id":"c1"}"#,
                "invalid_field: unknown op \"fly\"",
            ),
            (r#"{"op":"sms","challenge_id":"c 1"}"#, "invalid_field"),
            (
                r#"{"op":"decision","challenge_id":"c1","device_id":"","decision":"deny"}"#,
                "invalid_field",
            ),
            (
                r#"{"op":"otp","challenge_id":"c1","code":"12345"}"#,
                "invalid_field",
            ),
            (
                r#"{"op":"otp","challenge_id":"c1","code":"123456","x":1}"#,
                "invalid_field",
            ),
            (
                r#"{"op":"offline","challenge_id":"c1","code":"123456"}"#,
                "invalid_field",
            ),
            (
                r#"{"op":"decision","challenge_id":"c1","device_id":"d","decision":"approve","report_fraud":true}"#,
                "invalid_field: report_fraud",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(reason), "{bad}: {e}");
        }
    }

    #[test]
    fn a_code_that_is_not_a_string_is_never_echoed() {
        for body in [
            r#"{"op":"otp","challenge_id":"c1","code":987123}"#,
            r#"{"op":"otp","challenge_id":"c1","code":987123.5}"#,
            r#"{"op":"otp","challenge_id":"c1","code":["987123"]}"#,
            r#"{"op":"otp","challenge_id":"c1","code":{"a":"987123"}}"#,
        ] {
            let e = parse(body).unwrap_err();
            assert!(!e.contains("987123"), "{e}");
            assert!(e.contains("code must be a string"), "{e}");
        }
        let e = serde_json::from_str::<OtpBody>(r#"{"code": 987123}"#).unwrap_err();
        assert!(!e.to_string().contains("987123"), "{e}");
        let e = parse(r#"{"op":"otp","challenge_id":"c1","code":"98712x"}"#).unwrap_err();
        assert!(!e.contains("98712x"), "{e}");
        let code = OtpCode::parse("987123").unwrap();
        assert!(!format!("{code:?}").contains("987123"));
    }

    #[test]
    fn every_outcome_maps_to_one_status() {
        let cases = [
            (
                OpOutcome::Decided {
                    outcome: OutcomeKind::Approved,
                },
                200,
            ),
            (
                OpOutcome::AlreadyDecided {
                    outcome: OutcomeKind::Expired,
                },
                410,
            ),
            (
                OpOutcome::AlreadyDecided {
                    outcome: OutcomeKind::Denied,
                },
                409,
            ),
            (OpOutcome::WrongCode { attempts_left: 2 }, 401),
            (OpOutcome::Locked, 423),
            (OpOutcome::SmsSent, 202),
            (
                OpOutcome::SmsLimit {
                    limit: "sms_window".into(),
                },
                429,
            ),
            (OpOutcome::NotFound, 404),
            (OpOutcome::NotOffline, 409),
            (OpOutcome::Unauthorized, 401),
            (OpOutcome::Unreachable, 503),
            (OpOutcome::Moving, 503),
        ];
        for (o, status) in cases {
            assert_eq!(o.answer().status, status, "{o:?}");
            let back: OpOutcome =
                serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
            assert_eq!(back, o);
        }
        let reply = OpOutcome::SmsSent.answer().into_reply();
        assert_eq!(reply, json!({"sms": "sent", "status": 202}));
    }
}
