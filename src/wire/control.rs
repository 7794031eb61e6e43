//! Messages between instances on the control exchange: one enum, tagged by `t`.
//! An instance says `hello`, broadcasts a `req` for a challenge it does not hold, the
//! owner (or every peer that does not hold it) answers `rep`, and `note`s share what the
//! SMS limits count.

use super::messages::View;
use super::ops::{Authority, ChallengeId, OpOutcome, Operation};
use serde::{Deserialize, Serialize};

/// The longest wait a peer may ask the owner to hold a view request.
pub const MAX_PEER_WAIT_MS: u64 = 300_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ControlMessage {
    Hello {
        from: String,
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
            ControlMessage::Hello { from }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ops::OtpCode;

    #[test]
    fn every_message_round_trips() {
        let id = ChallengeId::parse("c1").unwrap();
        let msgs = [
            ControlMessage::Hello { from: "a".into() },
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
    fn an_unknown_authority_is_refused() {
        let ok = r#"{"t":"req","from":"a","corr":"1","req":{"challenge_id":"c1","ask":{"ask":"operate","op":{"op":"cancel"},"authority":"queue"}}}"#;
        assert!(serde_json::from_str::<ControlMessage>(ok).is_ok());
        let s = r#"{"t":"req","from":"a","corr":"1","req":{"challenge_id":"c1","ask":{"ask":"operate","op":{"op":"cancel"},"authority":"root"}}}"#;
        assert!(serde_json::from_str::<ControlMessage>(s).is_err());
    }
}
