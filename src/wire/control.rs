//! Messages between instances on the control exchange: one enum, tagged by `t`.
//! An instance says `hello`, broadcasts a `req` for a challenge it does not hold, the
//! owner (or every peer that does not hold it) answers `rep`, and `note`s share what the
//! SMS limits count.

use super::messages::View;
use super::ops::{Authority, ChallengeId, OpOutcome, Operation};
use crate::challenge::machine::{DeviceSlot, NumberMatch, Progress, PushState, SmsState};
use crate::challenge::otp::OtpHash;
use serde::{Deserialize, Serialize};

/// The longest wait a peer may ask the owner to hold a view request.
pub const MAX_PEER_WAIT_MS: u64 = 300_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ControlMessage {
    /// An instance is alive; in cluster mode it lists the partitions it owns.
    Hello {
        from: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        owns: Vec<u16>,
    },
    Req {
        from: String,
        corr: String,
        req: PeerRequest,
    },
    /// `answer` is `None` when the sender does not hold the challenge.
    Rep {
        from: String,
        corr: String,
        answer: Option<PeerAnswer>,
    },
    Note {
        from: String,
        note: PeerNote,
    },
}

impl ControlMessage {
    pub fn from(&self) -> &str {
        match self {
            ControlMessage::Hello { from, .. }
            | ControlMessage::Req { from, .. }
            | ControlMessage::Rep { from, .. }
            | ControlMessage::Note { from, .. } => from,
        }
    }
}

/// What an instance asks the owner of a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRequest {
    pub challenge_id: ChallengeId,
    pub ask: PeerAsk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum PeerAsk {
    /// The view, once decided or after `wait_ms` (long poll).
    View { wait_ms: u64 },
    /// Run an operation on the authority its first receiver was shown.
    Operate { op: Operation, authority: Authority },
}

impl PeerRequest {
    /// How long the owner may hold the answer.
    pub fn wait(&self) -> std::time::Duration {
        match &self.ask {
            PeerAsk::View { wait_ms } => {
                std::time::Duration::from_millis((*wait_ms).min(MAX_PEER_WAIT_MS))
            }
            PeerAsk::Operate { .. } => std::time::Duration::ZERO,
        }
    }
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "a", content = "v", rename_all = "snake_case")]
pub enum PeerAnswer {
    View(Box<View>),
    Op(OpOutcome),
}

/// Counts the SMS limits share across instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerNote {
    /// An SMS went to `user` at `at` (Unix ms).
    SmsSent { user: String, at: i64 },
    /// `user` confirmed a code.
    SmsConfirmed { user: String },
}

impl PeerNote {
    /// The user it is about, if it is a plausible user id.
    pub fn user(&self) -> Option<&str> {
        let u = match self {
            PeerNote::SmsSent { user, .. } | PeerNote::SmsConfirmed { user } => user.as_str(),
        };
        (!u.is_empty() && u.len() <= 128).then_some(u)
    }
}

/// The progress of an undecided challenge handed to the next owner of its partition: the
/// header `x-sca-handover` of the challenge's body published again to the partition
/// queue (sealed with the body, see `amqp::cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub challenge_id: ChallengeId,
    pub devices: Vec<HandoverDevice>,
    pub sms: String,
    pub sms_sent: u8,
    /// Hex of the code's keyed hash (never the code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_until_ms: Option<i64>,
    pub otp_failures: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_at_ms: Option<i64>,
    pub dispatched_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_choices: Option<[u8; 3]>,
    /// The 8-digit operation id of an offline challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverDevice {
    pub push: String,
    pub withdrawn: bool,
}

impl Handover {
    pub fn of(id: ChallengeId, p: &Progress) -> Handover {
        Handover {
            challenge_id: id,
            devices: p
                .devices
                .iter()
                .map(|d| HandoverDevice {
                    push: d.push.as_str().into(),
                    withdrawn: d.withdrawn,
                })
                .collect(),
            sms: sms_name(p.sms).into(),
            sms_sent: p.sms_sent,
            otp_hash: p.otp.map(|(h, _)| hex::encode(h.0)),
            otp_until_ms: p.otp.map(|(_, u)| u),
            otp_failures: p.otp_failures,
            fallback_at_ms: p.fallback_at_ms,
            dispatched_at_ms: p.dispatched_at_ms,
            number: p.number.map(|n| n.number),
            number_choices: p.number.map(|n| n.choices),
            operation_id: p.operation_id,
        }
    }

    /// The progress it describes; `None` when a field does not parse.
    pub fn into_progress(self) -> Option<Progress> {
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let push = match d.push.as_str() {
                    "sending" => PushState::Sending,
                    "delivered" => PushState::Delivered,
                    "token_invalid" => PushState::TokenInvalid,
                    "failed" => PushState::Failed,
                    "unavailable" => PushState::Unavailable,
                    "not_sent" => PushState::NotSent,
                    "suppressed" => PushState::Suppressed,
                    _ => return None,
                };
                Some(DeviceSlot {
                    push,
                    withdrawn: d.withdrawn,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let sms = match self.sms.as_str() {
            "idle" => SmsState::Idle,
            "requested" => SmsState::Requested,
            "sending" => SmsState::Sending,
            "sent" => SmsState::Sent,
            "failed" => SmsState::Failed,
            "refused" => SmsState::Refused,
            _ => return None,
        };
        let otp = match (self.otp_hash, self.otp_until_ms) {
            (Some(h), Some(u)) => {
                let bytes: [u8; 32] = hex::decode(h).ok()?.try_into().ok()?;
                Some((OtpHash(bytes), u))
            }
            (None, None) => None,
            _ => return None,
        };
        let number = match (self.number, self.number_choices) {
            (Some(number), Some(choices)) => Some(NumberMatch { number, choices }),
            (None, None) => None,
            _ => return None,
        };
        Some(Progress {
            devices,
            sms,
            sms_sent: self.sms_sent,
            otp,
            otp_failures: self.otp_failures,
            fallback_at_ms: self.fallback_at_ms,
            dispatched_at_ms: self.dispatched_at_ms,
            number,
            operation_id: self.operation_id.filter(|&op| op < 100_000_000),
        })
    }
}

fn sms_name(s: SmsState) -> &'static str {
    match s {
        SmsState::Idle => "idle",
        SmsState::Requested => "requested",
        SmsState::Sending => "sending",
        SmsState::Sent => "sent",
        SmsState::Failed => "failed",
        SmsState::Refused => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ops::OtpCode;

    #[test]
    fn every_message_round_trips() {
        let id = ChallengeId::parse("c1").unwrap();
        let msgs = [
            ControlMessage::Hello {
                from: "a".into(),
                owns: vec![],
            },
            ControlMessage::Hello {
                from: "a".into(),
                owns: vec![0, 3],
            },
            ControlMessage::Req {
                from: "a".into(),
                corr: "1".into(),
                req: PeerRequest {
                    challenge_id: id.clone(),
                    ask: PeerAsk::Operate {
                        op: Operation::Otp {
                            code: OtpCode::parse("123456").unwrap(),
                        },
                        authority: Authority::DeviceSignature,
                    },
                },
            },
            ControlMessage::Req {
                from: "a".into(),
                corr: "2".into(),
                req: PeerRequest {
                    challenge_id: id,
                    ask: PeerAsk::View { wait_ms: 10 },
                },
            },
            ControlMessage::Rep {
                from: "b".into(),
                corr: "1".into(),
                answer: Some(PeerAnswer::Op(OpOutcome::NotFound)),
            },
            ControlMessage::Rep {
                from: "b".into(),
                corr: "1".into(),
                answer: None,
            },
            ControlMessage::Note {
                from: "b".into(),
                note: PeerNote::SmsSent {
                    user: "u".into(),
                    at: 5,
                },
            },
        ];
        for m in msgs {
            let s = serde_json::to_string(&m).unwrap();
            assert_eq!(
                serde_json::from_str::<ControlMessage>(&s).unwrap(),
                m,
                "{s}"
            );
        }
    }

    #[test]
    fn a_handover_round_trips_its_progress() {
        let p = Progress {
            devices: vec![
                DeviceSlot {
                    push: PushState::Delivered,
                    withdrawn: false,
                },
                DeviceSlot {
                    push: PushState::TokenInvalid,
                    withdrawn: true,
                },
                DeviceSlot {
                    push: PushState::Suppressed,
                    withdrawn: false,
                },
            ],
            sms: SmsState::Sent,
            sms_sent: 2,
            otp: Some((OtpHash([7; 32]), 123)),
            otp_failures: 1,
            fallback_at_ms: Some(5),
            dispatched_at_ms: 4,
            number: Some(NumberMatch {
                number: 42,
                choices: [17, 42, 88],
            }),
            operation_id: Some(1_234_567),
        };
        let h = Handover::of(ChallengeId::parse("c1").unwrap(), &p);
        let s = serde_json::to_string(&h).unwrap();
        let back: Handover = serde_json::from_str(&s).unwrap();
        assert_eq!(back.into_progress(), Some(p));
        let mut bad = h.clone();
        bad.sms = "lost".into();
        assert_eq!(bad.into_progress(), None);
        let mut bad = h;
        bad.otp_until_ms = None;
        assert_eq!(bad.into_progress(), None);
    }

    #[test]
    fn an_unknown_authority_is_refused() {
        let ok = r#"{"t":"req","from":"a","corr":"1","req":{"challenge_id":"c1","ask":{"ask":"operate","op":{"op":"cancel"},"authority":"queue"}}}"#;
        assert!(serde_json::from_str::<ControlMessage>(ok).is_ok());
        let s = r#"{"t":"req","from":"a","corr":"1","req":{"challenge_id":"c1","ask":{"ask":"operate","op":{"op":"cancel"},"authority":"root"}}}"#;
        assert!(serde_json::from_str::<ControlMessage>(s).is_err());
    }
}
