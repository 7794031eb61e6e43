//! What one APNs request carries (CONTRACT §6): the path, the `apns-*` headers and the
//! JSON payload, for a challenge alert or a withdrawal, and the size checks Apple
//! enforces (payload ≤ 4096 bytes, collapse id ≤ 64 bytes), made before sending.
//!
//! The payload is written by hand (`wire::json`: the bytes serde would give for the
//! same fields) rather than with `a2`'s `Payload`/`APS`: `a2` 0.10's `APS` has no
//! `interruption-level` field (we must send `"time-sensitive"`), and its custom-data map
//! would not let the `aps` object carry it.

use crate::challenge::context::RequestContext;
use crate::push::delivery::now_ms;
use crate::push::{PushContent, PushMessage};
use crate::wire::json::{Json, Millis};
use bytes::Bytes;

/// Apple's limit for a regular (non-VoIP) push payload.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Apple's limit for `apns-collapse-id`.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// Device tokens are hex; Apple's are 64 digits today and may grow, so allow up to 200.
pub const MAX_TOKEN_LEN: usize = 200;

/// A push that cannot be sent as built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is {0} bytes, APNs accepts at most 4096")]
    TooLarge(usize),
    #[error("collapse id (challenge id) is {0} bytes, APNs accepts at most 64")]
    CollapseIdTooLong(usize),
    #[error("device token is not 1–200 hex digits")]
    BadToken,
}

/// A request ready to be sent (any number of times: everything is cheap to clone).
#[derive(Debug, Clone)]
pub struct ApnsRequest {
    /// `/3/device/{token}`.
    pub path: String,
    pub push_type: &'static str,
    pub priority: &'static str,
    /// Unix seconds, as text.
    pub expiration: String,
    pub collapse_id: Option<String>,
    pub body: Bytes,
}

/// Whether a device token can go in the request path as is.
pub fn token_is_valid(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The request path's prefix before the device token.
const DEVICE_PATH: &str = "/3/device/";

/// Builds the request for `msg`, checking Apple's limits first.
pub fn build(msg: &PushMessage) -> Result<ApnsRequest, PayloadError> {
    if !token_is_valid(&msg.token) {
        return Err(PayloadError::BadToken);
    }
    let mut path = String::with_capacity(DEVICE_PATH.len() + msg.token.len());
    path.push_str(DEVICE_PATH);
    path.push_str(&msg.token);
    let (push_type, priority, collapse_id, body) = match &msg.content {
        PushContent::Challenge {
            title,
            body,
            number_choices,
            extra,
        } => {
            if msg.challenge_id.len() > MAX_COLLAPSE_ID_BYTES {
                return Err(PayloadError::CollapseIdTooLong(msg.challenge_id.len()));
            }
            let extra = extra.as_deref();
            let alert = |context: Option<&RequestContext>| {
                let mut j = Json::with_capacity(crate::push::BODY_CAPACITY);
                j.raw("{\"aps\":{\"alert\":{\"title\":")
                    .str(title)
                    .raw(",\"body\":")
                    .str(body)
                    .raw("},\"category\":\"SCA_CHALLENGE\",\"interruption-level\":\"time-sensitive\"},\"type\":\"challenge\",\"challenge_id\":")
                    .str(&msg.challenge_id)
                    .raw(",\"kind\":")
                    .str(msg.kind.as_str())
                    .raw(",\"expires_at\":")
                    .time(msg.expires_at_ms, Millis::Always, crate::wire::rfc3339_ms);
                if let Some([a, b, c]) = number_choices {
                    j.raw(",\"number_choices\":[")
                        .int(i64::from(*a))
                        .raw(",")
                        .int(i64::from(*b))
                        .raw(",")
                        .int(i64::from(*c))
                        .raw("]");
                }
                if let Some(label) = extra.and_then(|e| e.user_label.as_deref()) {
                    j.raw(",\"user_label\":").str(label);
                }
                if let Some(context) = context {
                    j.raw(",\"context\":").serde(context);
                }
                j.raw("}");
                j.into_vec()
            };
            let context = extra.and_then(|e| e.context.as_ref());
            let mut json = alert(context);
            if json.len() > MAX_PAYLOAD_BYTES && context.is_some() {
                // The alert already shows client and location: rather than fail the
                // push, the context data is left out (the app can list it from the
                // pending-challenges endpoint).
                json = alert(None);
            }
            ("alert", "10", Some(msg.challenge_id.to_string()), json)
        }
        PushContent::Withdraw => {
            let mut j = Json::with_capacity(96);
            j.raw("{\"aps\":{\"content-available\":1},\"type\":\"withdraw\",\"challenge_id\":")
                .str(&msg.challenge_id)
                .raw("}");
            ("background", "5", None, j.into_vec())
        }
    };
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge(body.len()));
    }
    // apns-expiration: the challenge's expiry; a withdrawal sent after it gets 0
    // ("deliver now or never") rather than a date in the past.
    let expiration = if msg.is_withdraw() && msg.expires_at_ms <= now_ms() {
        "0".to_string()
    } else {
        (msg.expires_at_ms.max(0) / 1000).to_string()
    };
    Ok(ApnsRequest {
        path,
        push_type,
        priority,
        expiration,
        collapse_id,
        body: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::model::Kind;
    use std::sync::Arc;

    fn msg(content: PushContent) -> PushMessage {
        PushMessage {
            challenge_id: "01JD3F6Y8W0QZ5N4B7K2M9XH1C".into(),
            kind: Kind::Payment,
            device_id: "d-iphone".into(),
            token: "ab".repeat(32).into(),
            content,
            expires_at_ms: 4_102_444_800_000, // 2100-01-01T00:00:00Z
            app: Default::default(),
        }
    }

    fn challenge(number_choices: Option<[u8; 3]>) -> PushContent {
        PushContent::Challenge {
            title: Arc::from("Conferma pagamento"),
            body: Arc::from("125,40 € a Mario Rossi"),
            number_choices,
            extra: None,
        }
    }

    #[test]
    fn challenge_alert_is_built_as_the_contract_says() {
        let r = build(&msg(challenge(Some([12, 47, 83])))).unwrap();
        assert_eq!(r.path, format!("/3/device/{}", "ab".repeat(32)));
        assert_eq!(r.push_type, "alert");
        assert_eq!(r.priority, "10");
        assert_eq!(r.expiration, "4102444800");
        assert_eq!(r.collapse_id.as_deref(), Some("01JD3F6Y8W0QZ5N4B7K2M9XH1C"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "aps": {
                    "alert": {"title": "Conferma pagamento", "body": "125,40 € a Mario Rossi"},
                    "category": "SCA_CHALLENGE",
                    "interruption-level": "time-sensitive"
                },
                "type": "challenge",
                "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C",
                "kind": "payment",
                "expires_at": "2100-01-01T00:00:00.000Z",
                "number_choices": [12, 47, 83]
            })
        );
        let r = build(&msg(challenge(None))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v.get("number_choices").is_none());
    }

    use crate::push::sample_extra as extra;

    #[test]
    fn the_label_and_the_context_are_top_level_data_and_never_overflow() {
        let mut c = challenge(None);
        if let PushContent::Challenge { extra: e, .. } = &mut c {
            *e = extra(1, 3);
        }
        let v: serde_json::Value = serde_json::from_slice(&build(&msg(c)).unwrap().body).unwrap();
        assert_eq!(v["user_label"], "Conto business");
        assert_eq!(v["context"]["location"], "Milano");
        assert_eq!(v["context"]["details"][0]["value"], "vvv");
        // Too big with its context: sent without it rather than failed.
        let mut c = challenge(None);
        if let PushContent::Challenge { extra: e, .. } = &mut c {
            *e = extra(5, 1000);
        }
        let v: serde_json::Value = serde_json::from_slice(&build(&msg(c)).unwrap().body).unwrap();
        assert_eq!(v["user_label"], "Conto business");
        assert!(v.get("context").is_none());
    }

    #[test]
    fn withdrawal_is_a_background_push() {
        let r = build(&msg(PushContent::Withdraw)).unwrap();
        assert_eq!(r.push_type, "background");
        assert_eq!(r.priority, "5");
        assert_eq!(r.collapse_id, None);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "aps": {"content-available": 1},
                "type": "withdraw",
                "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"
            })
        );
        // Sent after the challenge expired: expiration 0, not a date in the past.
        let mut m = msg(PushContent::Withdraw);
        m.expires_at_ms = now_ms() - 1000;
        assert_eq!(build(&m).unwrap().expiration, "0");
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let big = PushContent::Challenge {
            title: Arc::from("t"),
            body: Arc::from("x".repeat(4000)),
            number_choices: None,
            extra: None,
        };
        assert!(matches!(
            build(&msg(big)),
            Err(PayloadError::TooLarge(n)) if n > 4096
        ));
        let mut m = msg(challenge(None));
        m.challenge_id = "c".repeat(65).into();
        assert_eq!(build(&m).unwrap_err(), PayloadError::CollapseIdTooLong(65));
        m.challenge_id = "c".repeat(64).into();
        assert!(build(&m).is_ok());
        for bad in ["", "zz", "ab/../x", &"a".repeat(201)] {
            let mut m = msg(challenge(None));
            m.token = bad.into();
            assert_eq!(build(&m).unwrap_err(), PayloadError::BadToken, "{bad:?}");
        }
        let e = PayloadError::TooLarge(5000).to_string();
        assert!(e.contains("5000") && e.contains("4096"));
    }
}
