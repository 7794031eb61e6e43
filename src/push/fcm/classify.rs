//! Classification of FCM HTTP v1 answers: a pure function from status, body and the
//! `Retry-After` delay (read by [`crate::retry::retry_after`]) to a [`Classification`], plus the separate check that tells the caller
//! its OAuth2 access token was refused (then it renews the token once and retries).
//!
//! Google's error body is `{"error":{"code","message","status","details":[…]}}`, where a
//! detail of type `type.googleapis.com/google.firebase.fcm.v1.FcmError` carries FCM's own
//! `errorCode` and a `google.rpc.BadRequest` detail names the offending field.

use crate::push::Classification;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
struct ErrorEnvelope {
    error: Option<GoogleError>,
}

#[derive(Debug, Default, Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(rename = "@type", default)]
    type_url: String,
    #[serde(rename = "errorCode", default)]
    error_code: String,
    #[serde(rename = "fieldViolations", default)]
    field_violations: Vec<FieldViolation>,
}

#[derive(Debug, Default, Deserialize)]
struct FieldViolation {
    #[serde(default)]
    field: String,
    #[serde(default)]
    description: String,
}

/// What could be read from an error body. Bodies that are not Google's JSON (a proxy's
/// HTML page, an empty body) give `None`.
struct Parsed {
    status: String,
    fcm_code: Option<String>,
    about_token: bool,
}

fn parse(body: &[u8]) -> Option<Parsed> {
    let env: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    let err = env.error?;
    let fcm_code = err
        .details
        .iter()
        .find(|d| {
            d.type_url.ends_with("google.firebase.fcm.v1.FcmError") && !d.error_code.is_empty()
        })
        .map(|d| d.error_code.clone());
    let mentions_token = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.contains("registration token") || s.contains("registration_token")
    };
    let about_token = mentions_token(&err.message)
        || err.details.iter().any(|d| {
            d.field_violations
                .iter()
                .any(|v| v.field == "message.token" || mentions_token(&v.description))
        });
    Some(Parsed {
        status: err.status,
        fcm_code,
        about_token,
    })
}

/// Maps one `messages:send` answer to what the sender should do.
///
/// - 2xx → delivered.
/// - `UNREGISTERED`, or a 404 carrying Google's `NOT_FOUND` error → the token is gone. A
///   404 without Google's error JSON is a misconfigured endpoint, not a dead token, so it
///   is permanent instead: marking every device's token invalid because of a wrong URL
///   would unbind users' devices.
/// - `INVALID_ARGUMENT` about the registration token → token gone; other
///   `INVALID_ARGUMENT` (our message is wrong) → permanent.
/// - 429 / `QUOTA_EXCEEDED` / `RESOURCE_EXHAUSTED`, 500 / `INTERNAL`, 503 /
///   `UNAVAILABLE`, any other 5xx → retry, after `Retry-After` when given.
/// - `SENDER_ID_MISMATCH`, `THIRD_PARTY_AUTH_ERROR`, 401 and every other status →
///   permanent. A 401 for a stale access token is caught before this by
///   [`is_stale_access_token`]; reaching here with 401 means a fresh token was refused too.
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Classification {
    if (200..300).contains(&status) {
        return Classification::Delivered;
    }
    let parsed = parse(body);
    let fcm_code = parsed.as_ref().and_then(|p| p.fcm_code.as_deref());
    let google_status = parsed.as_ref().map(|p| p.status.as_str()).unwrap_or("");
    let retry = || Classification::Retry { after: retry_after };
    match fcm_code {
        Some("UNREGISTERED") => return Classification::TokenGone,
        Some("SENDER_ID_MISMATCH") | Some("THIRD_PARTY_AUTH_ERROR") => {
            return Classification::Permanent
        }
        Some("QUOTA_EXCEEDED") | Some("UNAVAILABLE") | Some("INTERNAL") => return retry(),
        Some("INVALID_ARGUMENT") => {
            return if parsed.as_ref().is_some_and(|p| p.about_token) {
                Classification::TokenGone
            } else {
                Classification::Permanent
            };
        }
        _ => {}
    }
    match (status, google_status) {
        (404, "NOT_FOUND") => Classification::TokenGone,
        (400, "INVALID_ARGUMENT") if parsed.as_ref().is_some_and(|p| p.about_token) => {
            Classification::TokenGone
        }
        (429, _) | (_, "RESOURCE_EXHAUSTED") | (_, "UNAVAILABLE") | (_, "INTERNAL") => retry(),
        (500..=599, _) => retry(),
        _ => Classification::Permanent,
    }
}

/// True when the answer says our OAuth2 access token was refused (401 `UNAUTHENTICATED`),
/// so the caller should renew it once and retry. `THIRD_PARTY_AUTH_ERROR` also comes with
/// 401 but is about the APNs/web-push credentials stored in Firebase: renewing our token
/// cannot fix it.
pub fn is_stale_access_token(status: u16, body: &[u8]) -> bool {
    if status != 401 {
        return false;
    }
    !matches!(
        parse(body).and_then(|p| p.fcm_code).as_deref(),
        Some("THIRD_PARTY_AUTH_ERROR")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;

    fn google(code: u16, status: &str, message: &str, fcm: Option<&str>) -> String {
        let mut details = Vec::new();
        if let Some(c) = fcm {
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": c
            }));
        }
        serde_json::json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
    }

    fn bad_token_field() -> String {
        serde_json::json!({"error": {
            "code": 400,
            "message": "Invalid value at 'message' (type.googleapis.com/google.firebase.fcm.v1.Message)",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}
            ]
        }})
        .to_string()
    }

    #[test]
    fn table() {
        let s = |x: u64| Some(Duration::from_secs(x));
        #[rustfmt::skip]
        let cases: Vec<(u16, String, Option<Duration>, Classification)> = vec![
            (200, r#"{"name":"projects/p/messages/1"}"#.into(), None, Delivered),
            (204, String::new(), None, Delivered),
            (404, google(404, "NOT_FOUND", "Requested entity was not found.", Some("UNREGISTERED")), None, TokenGone),
            (404, google(404, "NOT_FOUND", "Requested entity was not found.", None), None, TokenGone),
            (404, "<html>Not Found</html>".into(), None, Permanent),
            (404, String::new(), None, Permanent),
            (400, google(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", Some("INVALID_ARGUMENT")), None, TokenGone),
            (400, bad_token_field(), None, TokenGone),
            (400, google(400, "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'", Some("INVALID_ARGUMENT")), None, Permanent),
            (400, google(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", None), None, Permanent),
            (429, google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", Some("QUOTA_EXCEEDED")), s(1), Retry { after: s(1) }),
            (429, google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", Some("QUOTA_EXCEEDED")), None, Retry { after: None }),
            (429, String::new(), s(30), Retry { after: s(30) }),
            (429, String::new(), s(3600), Retry { after: s(3600) }),
            (503, google(503, "UNAVAILABLE", "The service is currently unavailable.", Some("UNAVAILABLE")), s(5), Retry { after: s(5) }),
            (503, "upstream connect error".into(), None, Retry { after: None }),
            (500, google(500, "INTERNAL", "Internal error encountered.", Some("INTERNAL")), None, Retry { after: None }),
            (502, String::new(), None, Retry { after: None }),
            (504, String::new(), None, Retry { after: None }),
            (403, google(403, "PERMISSION_DENIED", "SenderId mismatch", Some("SENDER_ID_MISMATCH")), None, Permanent),
            (401, google(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", Some("THIRD_PARTY_AUTH_ERROR")), None, Permanent),
            (401, google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None), None, Permanent),
            (403, google(403, "PERMISSION_DENIED", "Permission denied", None), None, Permanent),
            (413, String::new(), None, Permanent),
            (302, String::new(), None, Permanent),
            (400, "not json at all".into(), None, Permanent),
        ];
        for (i, (status, body, ra, want)) in cases.iter().enumerate() {
            assert_eq!(
                classify(*status, body.as_bytes(), *ra),
                *want,
                "case {i}: {status} {body}"
            );
        }
    }

    #[test]
    fn stale_access_token_check() {
        let unauth = google(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        );
        assert!(is_stale_access_token(401, unauth.as_bytes()));
        assert!(is_stale_access_token(401, b""));
        let third = google(
            401,
            "UNAUTHENTICATED",
            "Auth error",
            Some("THIRD_PARTY_AUTH_ERROR"),
        );
        assert!(!is_stale_access_token(401, third.as_bytes()));
        assert!(!is_stale_access_token(403, unauth.as_bytes()));
        assert!(!is_stale_access_token(200, b""));
    }

    #[test]
    fn never_panics_on_garbage() {
        for body in [
            &b"\xff\xfe"[..],
            b"{",
            b"{\"error\":null}",
            b"{\"error\":{\"details\":7}}",
            b"[]",
        ] {
            for status in [0u16, 100, 400, 401, 404, 429, 500, 999] {
                let _ = classify(status, body, Some(Duration::ZERO));
                let _ = is_stale_access_token(status, body);
            }
        }
    }
}
