//! Request bodies shared by the HTTP API and the `sca.responses` queue, parsed into
//! engine operations with a clear message for anything malformed.

use super::Op;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    pub device_id: String,
    pub decision: String,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub number: Option<u32>,
    /// Present on `sca.responses` messages.
    #[serde(default)]
    pub challenge_id: Option<String>,
    #[serde(default)]
    pub op: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpBody {
    pub code: String,
    #[serde(default)]
    pub challenge_id: Option<String>,
    #[serde(default)]
    pub op: Option<String>,
}

impl DecisionBody {
    pub fn op(&self) -> Result<Op<'_>, String> {
        let approve = match self.decision.as_str() {
            "approve" => true,
            "deny" => false,
            other => {
                return Err(format!(
                    "decision must be \"approve\" or \"deny\", got {other:?}"
                ))
            }
        };
        if self.device_id.is_empty() || self.device_id.len() > 64 {
            return Err("device_id must be 1-64 characters".into());
        }
        Ok(Op::Decision {
            device_id: &self.device_id,
            approve,
            signature: self.signature.as_deref(),
            number: self.number,
        })
    }
}

/// A message of `sca.responses`: `{"op": "decision"|"otp"|"sms"|"cancel", "challenge_id", …}`.
#[derive(Debug)]
pub enum ResponseMessage {
    Decision(String, DecisionBody),
    Otp(String, OtpBody),
    Sms(String),
    Cancel(String),
}

impl ResponseMessage {
    pub fn parse(body: &[u8]) -> Result<ResponseMessage, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid_json: {e}"))?;
        let op = v
            .get("op")
            .and_then(|o| o.as_str())
            .ok_or("missing_field: op is required")?;
        let id = v
            .get("challenge_id")
            .and_then(|o| o.as_str())
            .filter(|id| crate::challenge::model::valid_challenge_id(id))
            .ok_or("invalid_field: challenge_id is required (1-64 of [A-Za-z0-9_-])")?
            .to_string();
        let bad = |e: serde_json::Error| format!("invalid_field: {e}");
        Ok(match op {
            "decision" => {
                let b: DecisionBody = serde_json::from_value(v).map_err(bad)?;
                b.op().map_err(|e| format!("invalid_field: {e}"))?;
                ResponseMessage::Decision(id, b)
            }
            "otp" => ResponseMessage::Otp(id, serde_json::from_value(v).map_err(bad)?),
            "sms" => ResponseMessage::Sms(id),
            "cancel" => ResponseMessage::Cancel(id),
            other => return Err(format!("invalid_field: unknown op {other:?}")),
        })
    }

    pub fn challenge_id(&self) -> &str {
        match self {
            ResponseMessage::Decision(id, _)
            | ResponseMessage::Otp(id, _)
            | ResponseMessage::Sms(id)
            | ResponseMessage::Cancel(id) => id,
        }
    }

    pub fn op(&self) -> Op<'_> {
        match self {
            ResponseMessage::Decision(_, b) => b.op().unwrap_or(Op::Cancel),
            ResponseMessage::Otp(_, b) => Op::Otp { code: &b.code },
            ResponseMessage::Sms(_) => Op::Sms,
            ResponseMessage::Cancel(_) => Op::Cancel,
        }
    }
}

/// The operation as the JSON body of `sca.responses` (for forwarding to a peer).
pub fn op_json(id: &str, op: Op<'_>) -> serde_json::Value {
    use serde_json::json;
    match op {
        Op::Decision {
            device_id,
            approve,
            signature,
            number,
        } => json!({
            "op": "decision", "challenge_id": id, "device_id": device_id,
            "decision": if approve { "approve" } else { "deny" },
            "signature": signature, "number": number,
        }),
        Op::Otp { code } => json!({"op": "otp", "challenge_id": id, "code": code}),
        Op::Sms => json!({"op": "sms", "challenge_id": id}),
        Op::Cancel => json!({"op": "cancel", "challenge_id": id}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op() {
        let m = ResponseMessage::parse(
            br#"{"op":"decision","challenge_id":"c1","device_id":"d","decision":"deny"}"#,
        )
        .unwrap();
        assert!(matches!(m.op(), Op::Decision { approve: false, .. }));
        let m =
            ResponseMessage::parse(br#"{"op":"otp","challenge_id":"c1","code":"123456"}"#).unwrap();
        assert!(matches!(m.op(), Op::Otp { code: "123456" }));
        assert!(matches!(
            ResponseMessage::parse(br#"{"op":"sms","challenge_id":"c1"}"#)
                .unwrap()
                .op(),
            Op::Sms
        ));
        assert!(matches!(
            ResponseMessage::parse(br#"{"op":"cancel","challenge_id":"c1"}"#)
                .unwrap()
                .op(),
            Op::Cancel
        ));
    }

    #[test]
    fn forwarded_ops_parse_back() {
        let ops = [
            Op::Decision {
                device_id: "d",
                approve: true,
                signature: Some("s"),
                number: Some(42),
            },
            Op::Otp { code: "123456" },
            Op::Sms,
            Op::Cancel,
        ];
        for op in ops {
            let v = op_json("c1", op);
            let m = ResponseMessage::parse(v.to_string().as_bytes()).unwrap();
            assert_eq!(format!("{:?}", m.op()), format!("{op:?}"));
        }
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            &b"nope"[..],
            br#"{"challenge_id":"c1"}"#,
            br#"{"op":"decision","challenge_id":"c1","device_id":"d","decision":"maybe"}"#,
            br#"{"op":"fly","challenge_id":"c1"}"#,
            br#"{"op":"sms","challenge_id":"c 1"}"#,
        ] {
            assert!(ResponseMessage::parse(bad).is_err());
        }
    }
}
