//! What the daemon publishes and shows: the outcome (CONTRACT §4), the events on
//! `sca.events` and the challenge view of `GET /v1/challenges/{id}`.

use super::json::{Json, Millis};
use crate::challenge::context::RequestContext;
use crate::challenge::machine::Challenge;
use crate::challenge::model::{ChallengeSpec, Channel, Kind, OutcomeKind, Platform};
use crate::challenge::offline;
use crate::challenge::otp::MAX_OTP_ATTEMPTS;
use crate::sms::mask_phone;
use serde::{Deserialize, Serialize};

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T19:40:07.113Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Serializes a message the daemon built itself (cannot fail for these types).
pub fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The routing key of an outcome on `sca.outcomes`.
pub fn routing_key(kind: Option<Kind>, outcome: OutcomeKind) -> String {
    let kind = kind.map(Kind::as_str).unwrap_or("unknown");
    let outcome = outcome.as_str();
    // Pieces pushed, not `format!`: one of these per challenge.
    let mut key = String::with_capacity("outcome..".len() + kind.len() + outcome.len());
    key.push_str("outcome.");
    key.push_str(kind);
    key.push('.');
    key.push_str(outcome);
    key
}

/// The outcome event (CONTRACT §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeMessage {
    pub v: u8,
    pub challenge_id: String,
    pub user_id: Option<String>,
    pub kind: Option<Kind>,
    pub outcome: OutcomeKind,
    pub channel: Option<Channel>,
    pub device_id: Option<String>,
    pub reason: Option<String>,
    pub decided_at: String,
    pub elapsed_ms: i64,
}

impl OutcomeMessage {
    /// The outcome of a settled challenge; `None` while it is pending.
    pub fn of(c: &Challenge) -> Option<OutcomeMessage> {
        let o = c.outcome.as_ref()?;
        let s = &c.spec;
        Some(OutcomeMessage {
            v: 1,
            challenge_id: s.challenge_id.to_string(),
            user_id: Some(s.user_id.to_string()),
            kind: Some(s.kind),
            outcome: o.kind,
            channel: o.channel,
            device_id: c.decided_device_id().map(str::to_string),
            reason: o.reason.map(str::to_string),
            decided_at: rfc3339_ms(o.decided_at_ms),
            elapsed_ms: (o.decided_at_ms - s.created_at_ms).max(0),
        })
    }

    /// The published body of [`OutcomeMessage::of`], serialized from the challenge's
    /// own fields without copying them (the same JSON, byte for byte).
    pub fn body_of(c: &Challenge) -> Option<Vec<u8>> {
        let o = c.outcome.as_ref()?;
        let s = &c.spec;
        let mut j = Json::with_capacity(256);
        j.raw("{\"v\":1,\"challenge_id\":")
            .str(&s.challenge_id)
            .raw(",\"user_id\":")
            .str(&s.user_id)
            .raw(",\"kind\":")
            .str(s.kind.as_str())
            .raw(",\"outcome\":")
            .str(o.kind.as_str())
            .raw(",\"channel\":")
            .opt_str(o.channel.map(Channel::as_str))
            .raw(",\"device_id\":")
            .opt_str(c.decided_device_id())
            .raw(",\"reason\":")
            .opt_str(o.reason)
            .raw(",\"decided_at\":")
            .time(o.decided_at_ms, Millis::Always, rfc3339_ms)
            .raw(",\"elapsed_ms\":")
            .int((o.decided_at_ms - s.created_at_ms).max(0))
            .raw("}");
        Some(j.into_vec())
    }

    /// The `rejected` outcome of a message that could not be accepted.
    pub fn rejected(
        challenge_id: &str,
        user_id: Option<&str>,
        kind: Option<Kind>,
        reason: String,
        now: i64,
    ) -> OutcomeMessage {
        OutcomeMessage {
            v: 1,
            challenge_id: challenge_id.to_string(),
            user_id: user_id.map(str::to_string),
            kind,
            outcome: OutcomeKind::Rejected,
            channel: None,
            device_id: None,
            reason: Some(reason),
            decided_at: rfc3339_ms(now),
            elapsed_ms: 0,
        }
    }
}

/// One device of `challenge.dispatched`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchedDevice {
    pub device_id: String,
    pub platform: Platform,
    pub push: String,
}

/// The events on `sca.events` (the routing key is the `event` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum EventMessage {
    #[serde(rename = "challenge.dispatched")]
    Dispatched {
        v: u8,
        challenge_id: String,
        user_id: String,
        kind: Kind,
        devices: Vec<DispatchedDevice>,
        /// Masked.
        sms: Option<String>,
        expires_at: String,
        at: String,
    },
    #[serde(rename = "device.token_invalid")]
    TokenInvalid {
        v: u8,
        challenge_id: String,
        user_id: String,
        device_id: String,
        platform: Platform,
        /// Masked.
        token: String,
        at: String,
    },
    #[serde(rename = "sms.sent")]
    SmsSent(SmsEvent),
    #[serde(rename = "sms.failed")]
    SmsFailed(SmsEvent),
    /// A device denied a challenge and reported fraud (CONTRACT §10).
    #[serde(rename = "user.fraud_reported")]
    FraudReported {
        v: u8,
        user_id: String,
        challenge_id: String,
        device_id: String,
        at: String,
    },
}

/// `sms.sent` / `sms.failed`, the number masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsEvent {
    pub v: u8,
    pub challenge_id: String,
    pub user_id: String,
    pub phone: Option<String>,
    pub reason: Option<String>,
    pub at: String,
}

impl EventMessage {
    pub fn routing_key(&self) -> &'static str {
        match self {
            EventMessage::Dispatched { .. } => "challenge.dispatched",
            EventMessage::TokenInvalid { .. } => "device.token_invalid",
            EventMessage::SmsSent(_) => "sms.sent",
            EventMessage::SmsFailed(_) => "sms.failed",
            EventMessage::FraudReported { .. } => "user.fraud_reported",
        }
    }

    /// `user.fraud_reported` of a challenge denied with a fraud report.
    pub fn fraud_reported(c: &Challenge, now: i64) -> Option<EventMessage> {
        Some(EventMessage::FraudReported {
            v: 1,
            user_id: c.spec.user_id.to_string(),
            challenge_id: c.spec.challenge_id.to_string(),
            device_id: c.decided_device_id()?.to_string(),
            at: rfc3339_ms(now),
        })
    }

    pub fn dispatched(c: &Challenge, now: i64) -> EventMessage {
        let s = &c.spec;
        EventMessage::Dispatched {
            v: 1,
            challenge_id: s.challenge_id.to_string(),
            user_id: s.user_id.to_string(),
            kind: s.kind,
            devices: s
                .devices
                .iter()
                .zip(&c.devices)
                .map(|(d, slot)| DispatchedDevice {
                    device_id: d.device_id.to_string(),
                    platform: d.platform,
                    push: slot.push.as_str().to_string(),
                })
                .collect(),
            sms: s.sms.as_ref().map(|m| mask_phone(&m.phone)),
            expires_at: rfc3339_ms(s.expires_at_ms()),
            at: rfc3339_ms(now),
        }
    }

    pub fn token_invalid(spec: &ChallengeSpec, device: usize, now: i64) -> Option<EventMessage> {
        let d = spec.devices.get(device)?;
        Some(EventMessage::TokenInvalid {
            v: 1,
            challenge_id: spec.challenge_id.to_string(),
            user_id: spec.user_id.to_string(),
            device_id: d.device_id.to_string(),
            platform: d.platform,
            token: crate::push::mask_token(&d.token),
            at: rfc3339_ms(now),
        })
    }

    pub fn sms(spec: &ChallengeSpec, sent: bool, reason: Option<&str>, now: i64) -> EventMessage {
        let e = SmsEvent {
            v: 1,
            challenge_id: spec.challenge_id.to_string(),
            user_id: spec.user_id.to_string(),
            phone: spec.sms.as_ref().map(|m| mask_phone(&m.phone)),
            reason: reason.map(str::to_string),
            at: rfc3339_ms(now),
        };
        if sent {
            EventMessage::SmsSent(e)
        } else {
            EventMessage::SmsFailed(e)
        }
    }
}

/// One device of the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub device_id: String,
    pub platform: Platform,
    pub push: String,
    pub withdrawn: bool,
}

/// The outcome part of the view (present once decided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedView {
    pub outcome: OutcomeKind,
    pub channel: Option<Channel>,
    pub device_id: Option<String>,
    pub reason: Option<String>,
    pub decided_at: String,
}

/// The SMS part of the view (present when the challenge has a phone number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsView {
    pub state: String,
    /// Masked.
    pub phone: String,
    pub sent: u8,
    pub attempts_left: u8,
}

/// Whether the challenge still waits for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewState {
    Pending,
    Completed,
}

/// The view of `GET /v1/challenges/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub challenge_id: String,
    pub user_id: String,
    pub kind: Kind,
    pub state: ViewState,
    pub expires_at: String,
    pub devices: Vec<DeviceView>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<DecidedView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u8>,
    /// The 8-digit operation id of an offline challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The QR payload for the app (offline challenges, while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
}

impl View {
    pub fn of(c: &Challenge) -> View {
        let s = &c.spec;
        View {
            challenge_id: s.challenge_id.to_string(),
            user_id: s.user_id.to_string(),
            kind: s.kind,
            state: if c.is_done() {
                ViewState::Completed
            } else {
                ViewState::Pending
            },
            expires_at: rfc3339_ms(s.expires_at_ms()),
            devices: s
                .devices
                .iter()
                .zip(&c.devices)
                .map(|(d, slot)| DeviceView {
                    device_id: d.device_id.to_string(),
                    platform: d.platform,
                    push: slot.push.as_str().to_string(),
                    withdrawn: slot.withdrawn,
                })
                .collect(),
            decided: c.outcome.as_ref().map(|o| DecidedView {
                outcome: o.kind,
                channel: o.channel,
                device_id: c.decided_device_id().map(str::to_string),
                reason: o.reason.map(str::to_string),
                decided_at: rfc3339_ms(o.decided_at_ms),
            }),
            sms: s.sms.as_ref().map(|m| SmsView {
                state: c.sms.as_str().to_string(),
                phone: mask_phone(&m.phone),
                sent: c.sms_sent,
                attempts_left: MAX_OTP_ATTEMPTS.saturating_sub(c.otp_failures),
            }),
            number: c.number.map(|n| n.number),
            operation_id: c.operation_id.map(offline::format_code),
            qr: c.operation_id.filter(|_| !c.is_done()).map(|op| {
                offline::QrPayload::new(
                    &offline::format_code(op),
                    s.kind,
                    s.expires_at_ms(),
                    s.transaction.as_ref(),
                )
                .encode()
            }),
        }
    }

    pub fn is_completed(&self) -> bool {
        self.state == ViewState::Completed
    }
}

/// One undecided challenge of `GET /v1/devices/{device_id}/challenges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChallenge {
    pub challenge_id: String,
    pub kind: Kind,
    pub title: String,
    pub body: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_choices: Option<[u8; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
}

impl PendingChallenge {
    pub fn of(c: &Challenge) -> PendingChallenge {
        let s = &c.spec;
        let (title, body) = crate::texts::challenge_texts(s);
        PendingChallenge {
            challenge_id: s.challenge_id.to_string(),
            kind: s.kind,
            title,
            body,
            expires_at: rfc3339_ms(s.expires_at_ms()),
            number_choices: c.number.map(|n| n.choices),
            user_label: s.user_label.as_deref().map(str::to_string),
            context: s.context.as_deref().cloned(),
        }
    }
}

/// The body of `GET /v1/devices/{device_id}/challenges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingList {
    pub challenges: Vec<PendingChallenge>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_routing_keys() {
        assert_eq!(
            routing_key(Some(Kind::Login), OutcomeKind::Approved),
            "outcome.login.approved"
        );
        assert_eq!(
            routing_key(Some(Kind::CredentialRecovery), OutcomeKind::OtpLocked),
            format!(
                "outcome.{}.{}",
                Kind::CredentialRecovery.as_str(),
                OutcomeKind::OtpLocked.as_str()
            )
        );
        assert_eq!(
            routing_key(None, OutcomeKind::Rejected),
            "outcome.unknown.rejected"
        );
    }
}
