//! The JSON body of a Push Kit v1 `messages:send` request: a data message (Push Kit's
//! "transparent" message, which the app turns into its own notification) to one token,
//! with `android.urgency: HIGH`, `android.ttl` = the challenge's remaining life, and the
//! challenge fields as a JSON object in `message.data` (Push Kit carries data as one
//! string). The same fields as the FCM data message: `type`, `challenge_id`, `kind`,
//! localized `title` and `body`, `expires_at` (and `number_choices`).
//!
//! Push Kit's `collapse_key` is a small integer group (−1, 0–100), not a string, so it
//! cannot be the challenge id; `android.bi_tag` carries the challenge id instead (Push Kit
//! returns it in delivery receipts), and the app keys its notification by the
//! `challenge_id` in the data, so a withdrawal replaces exactly that challenge's
//! notification. `collapse_key` is left at its default (every offline message kept), so a
//! withdrawal queued behind its challenge for an offline device is not dropped.

use crate::push::fcm::message::rfc3339_ms;
use crate::push::{PushContent, PushMessage};
use serde::Serialize;
use std::time::Duration;

/// A withdrawal is worth delivering for a little while even when the challenge has
/// already expired (expiry is one reason to withdraw).
pub const WITHDRAW_MIN_TTL: Duration = Duration::from_secs(60);
/// Push Kit refuses a TTL above 15 days.
const MAX_TTL: Duration = Duration::from_secs(15 * 24 * 3600);

#[derive(Serialize)]
struct Envelope<'a> {
    validate_only: bool,
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    data: String,
    android: Android<'a>,
    token: [&'a str; 1],
}

#[derive(Serialize)]
struct Android<'a> {
    urgency: &'static str,
    ttl: String,
    bi_tag: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Challenge {
        #[serde(rename = "type")]
        kind_of_message: &'static str,
        challenge_id: &'a str,
        kind: &'static str,
        title: &'a str,
        body: &'a str,
        expires_at: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        number_choices: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_label: Option<&'a str>,
        /// The request context as compact JSON (data values are strings).
        #[serde(skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
    Withdraw {
        #[serde(rename = "type")]
        kind_of_message: &'static str,
        challenge_id: &'a str,
    },
}

/// Push Kit's TTL form: whole seconds with an `s` suffix, rounded down so the message
/// never outlives the challenge, at least one second, at most Push Kit's maximum.
fn ttl_string(ttl: Duration) -> String {
    format!("{}s", ttl.min(MAX_TTL).as_secs().max(1))
}

/// Serializes the `messages:send` body for `msg` at `now_ms` (the TTL is what is left of
/// the challenge's life at that moment, so each retry sends a shorter one).
pub fn build_body(msg: &PushMessage, now_ms: i64) -> Vec<u8> {
    let remaining = msg.remaining(now_ms);
    let (ttl, data) = match &msg.content {
        PushContent::Challenge {
            title,
            body,
            number_choices,
            extra,
        } => (
            remaining,
            Data::Challenge {
                kind_of_message: "challenge",
                challenge_id: &msg.challenge_id,
                kind: msg.kind.as_str(),
                title,
                body,
                expires_at: rfc3339_ms(msg.expires_at_ms),
                number_choices: number_choices.map(|n| {
                    n.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }),
                user_label: extra.as_deref().and_then(|e| e.user_label.as_deref()),
                context: extra.as_deref().and_then(|e| e.context_json()),
            },
        ),
        PushContent::Withdraw => (
            remaining.max(WITHDRAW_MIN_TTL),
            Data::Withdraw {
                kind_of_message: "withdraw",
                challenge_id: &msg.challenge_id,
            },
        ),
    };
    let env = Envelope {
        validate_only: false,
        message: Message {
            // Serializing plain strings cannot fail.
            data: serde_json::to_string(&data).unwrap_or_default(),
            android: Android {
                urgency: "HIGH",
                ttl: ttl_string(ttl),
                bi_tag: &msg.challenge_id,
            },
            token: [&msg.token],
        },
    };
    let mut out = Vec::with_capacity(2 * crate::push::BODY_CAPACITY);
    let _ = serde_json::to_writer(&mut out, &env);
    out
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
            device_id: "d-mate".into(),
            token: "IQAAAACy0kYkAAB".into(),
            content,
            expires_at_ms: 1_795_462_920_000, // 2026-11-23T19:42:00Z
            app: Default::default(),
        }
    }

    fn parse(body: &[u8]) -> (Value, Value) {
        let v: Value = serde_json::from_slice(body).unwrap();
        let data: Value = serde_json::from_str(v["message"]["data"].as_str().unwrap()).unwrap();
        (v, data)
    }

    #[test]
    fn challenge_message_is_a_high_urgency_data_message() {
        let m = msg(PushContent::Challenge {
            title: Arc::from("Approve payment"),
            body: Arc::from("Payment of €125.40 to Mario Rossi"),
            number_choices: Some([12, 47, 83]),
            extra: None,
        });
        let (v, data) = parse(&build_body(&m, 1_795_462_920_000 - 119_600));
        assert_eq!(v["validate_only"], false);
        assert_eq!(
            v["message"]["android"],
            json!({"urgency": "HIGH", "ttl": "119s", "bi_tag": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"})
        );
        assert_eq!(v["message"]["token"], json!(["IQAAAACy0kYkAAB"]));
        assert!(v["message"].get("notification").is_none());
        assert_eq!(
            data,
            json!({
                "type": "challenge",
                "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C",
                "kind": "payment",
                "title": "Approve payment",
                "body": "Payment of €125.40 to Mario Rossi",
                "expires_at": "2026-11-23T19:42:00Z",
                "number_choices": "12,47,83"
            })
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
        let (_, data) = parse(&build_body(&m, m.expires_at_ms - 30_000));
        assert!(data.get("number_choices").is_none());
    }

    #[test]
    fn withdrawal_is_a_data_message_with_a_floor_on_ttl() {
        let m = msg(PushContent::Withdraw);
        let (v, data) = parse(&build_body(&m, m.expires_at_ms + 5_000));
        assert_eq!(v["message"]["android"]["ttl"], "60s");
        assert_eq!(v["message"]["android"]["urgency"], "HIGH");
        assert_eq!(
            data,
            json!({"type": "withdraw", "challenge_id": "01JD3F6Y8W0QZ5N4B7K2M9XH1C"})
        );
        let (v, _) = parse(&build_body(&m, m.expires_at_ms - 300_000));
        assert_eq!(v["message"]["android"]["ttl"], "300s");
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(ttl_string(Duration::from_millis(999)), "1s");
        assert_eq!(ttl_string(Duration::from_secs(120)), "120s");
        assert_eq!(ttl_string(Duration::from_secs(100 * 24 * 3600)), "1296000s");
    }
}
