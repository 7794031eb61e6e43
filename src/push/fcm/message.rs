//! The JSON body of an FCM HTTP v1 `messages:send` request, exactly as CONTRACT §6 says
//! devices receive it: a data message (every value a string, as FCM requires) with
//! `android.priority: HIGH`, `android.ttl` = the challenge's remaining life and
//! `android.collapse_key` = the challenge id, so a newer push for the same challenge
//! replaces an older one still queued for an offline device.

use crate::push::{PushContent, PushMessage};
use crate::wire::json::{Json, Millis};
use chrono::{SecondsFormat, TimeZone, Utc};
use std::time::Duration;

/// A withdrawal is worth delivering for a little while even when the challenge has
/// already expired (expiry is one reason to withdraw): an app that comes back online
/// within this window still clears the notification it shows.
pub const WITHDRAW_MIN_TTL: Duration = Duration::from_secs(60);

/// RFC 3339 in UTC, with fractional seconds only when there are some.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    match Utc.timestamp_millis_opt(unix_ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        // Out of chrono's range: cannot come from a validated challenge; say "the epoch"
        // rather than fail the push.
        None => "1970-01-01T00:00:00Z".into(),
    }
}

/// The whole seconds of FCM's `google.protobuf.Duration` JSON form (written with an `s`
/// suffix). Rounded down so the message never outlives the challenge.
fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

/// Serializes the `messages:send` body for `msg` at `now_ms` (the TTL is what is left of
/// the challenge's life at that moment, so each retry sends a shorter one). Written by
/// hand (`wire::json`): the same bytes as serde would give for
/// `{"message":{"token","android":{"priority","ttl","collapse_key"},"data":{..}}}`.
pub fn build_body(msg: &PushMessage, now_ms: i64) -> Vec<u8> {
    let remaining = msg.remaining(now_ms);
    let ttl = match msg.content {
        PushContent::Challenge { .. } => remaining,
        PushContent::Withdraw => remaining.max(WITHDRAW_MIN_TTL),
    };
    let mut j = Json::with_capacity(crate::push::BODY_CAPACITY);
    j.raw("{\"message\":{\"token\":")
        .str(&msg.token)
        .raw(",\"android\":{\"priority\":\"HIGH\",\"ttl\":\"")
        .int(ttl_seconds(ttl))
        .raw("s\",\"collapse_key\":")
        .str(&msg.challenge_id)
        .raw("},\"data\":");
    match &msg.content {
        PushContent::Challenge {
            title,
            body,
            number_choices,
            extra,
        } => {
            j.raw("{\"type\":\"challenge\",\"challenge_id\":")
                .str(&msg.challenge_id)
                .raw(",\"kind\":")
                .str(msg.kind.as_str())
                .raw(",\"title\":")
                .str(title)
                .raw(",\"body\":")
                .str(body)
                .raw(",\"expires_at\":")
                .time(msg.expires_at_ms, Millis::IfAny, rfc3339_ms);
            if let Some([a, b, c]) = number_choices {
                j.raw(",\"number_choices\":").str(&format!("{a},{b},{c}"));
            }
            let extra = extra.as_deref();
            if let Some(label) = extra.and_then(|e| e.user_label.as_deref()) {
                j.raw(",\"user_label\":").str(label);
            }
            // The request context as compact JSON (data values are strings).
            if let Some(context) = extra.and_then(|e| e.context_json()) {
                j.raw(",\"context\":").str(&context);
            }
            j.raw("}");
        }
        PushContent::Withdraw => {
            j.raw("{\"type\":\"withdraw\",\"challenge_id\":")
                .str(&msg.challenge_id)
                .raw("}");
        }
    }
    j.raw("}}");
    j.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::model::Kind;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn msg(content: PushContent) -> PushMessage {
        PushMessage {
            challenge_id: Arc::from("01JD3F6Y8W0QZ5N4B7K2M9XH1C"),
            kind: Kind::Payment,
            device_id: "d-pixel".into(),
            token: "fcm-token:abc".into(),
            content,
            expires_at_ms: 1_795_462_920_000, // 2026-11-23T19:42:00Z
            app: Default::default(),
        }
    }

    #[test]
    fn challenge_message_is_exactly_the_contract() {
        let m = msg(PushContent::Challenge {
            title: Arc::from("Approve payment"),
            body: Arc::from("Payment of €125.40 to Mario Rossi"),
            number_choices: Some([12, 47, 83]),
            extra: None,
        });
        let v: Value =
            serde_json::from_slice(&build_body(&m, 1_795_462_920_000 - 119_600)).unwrap();
        assert_eq!(
            v,
            json!({"message": {
                "token": "fcm-token:abc",
                "android": {"priority": "HIGH", "ttl": "119s", "collapse_key": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"},
                "data": {
                    "type": "challenge",
                    "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C",
                    "kind": "payment",
                    "title": "Approve payment",
                    "body": "Payment of €125.40 to Mario Rossi",
                    "expires_at": "2026-11-23T19:42:00Z",
                    "number_choices": "12,47,83"
                }
            }})
        );
    }

    use crate::push::sample_extra as extra;

    #[test]
    fn the_label_and_the_context_travel_as_string_data() {
        let m = msg(PushContent::Challenge {
            title: Arc::from("t"),
            body: Arc::from("b"),
            number_choices: None,
            extra: extra(1, 3),
        });
        let v: Value = serde_json::from_slice(&build_body(&m, 0)).unwrap();
        crate::push::assert_sample_extra_as_string_data(&v["message"]["data"]);
    }

    #[test]
    fn no_number_choices_key_without_number_match() {
        let m = msg(PushContent::Challenge {
            title: Arc::from("t"),
            body: Arc::from("b"),
            number_choices: None,
            extra: None,
        });
        let v: Value = serde_json::from_slice(&build_body(&m, 0)).unwrap();
        assert!(v["message"]["data"].get("number_choices").is_none());
        // Every data value is a string, as FCM demands.
        for (_, val) in v["message"]["data"].as_object().unwrap() {
            assert!(val.is_string());
        }
    }

    #[test]
    fn withdrawal_is_a_data_message_with_a_floor_on_ttl() {
        let m = msg(PushContent::Withdraw);
        // Already expired: still a usable ttl.
        let v: Value = serde_json::from_slice(&build_body(&m, m.expires_at_ms + 5_000)).unwrap();
        assert_eq!(
            v,
            json!({"message": {
                "token": "fcm-token:abc",
                "android": {"priority": "HIGH", "ttl": "60s", "collapse_key": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"},
                "data": {"type": "withdraw", "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"}
            }})
        );
        let v: Value = serde_json::from_slice(&build_body(&m, m.expires_at_ms - 300_000)).unwrap();
        assert_eq!(v["message"]["android"]["ttl"], "300s");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_ms(1_795_462_920_000), "2026-11-23T19:42:00Z");
        assert_eq!(rfc3339_ms(1_795_462_920_250), "2026-11-23T19:42:00.250Z");
        assert_eq!(ttl_seconds(Duration::from_millis(999)), 0);
    }
}
