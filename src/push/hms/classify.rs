//! Classification of Huawei Push Kit answers: a pure function from the HTTP status, the
//! body and the `Retry-After` delay (read by [`crate::retry::retry_after`]) of a
//! `messages:send` answer to a [`Class`].
//!
//! Push Kit answers `{"code":"80000000","msg":"Success","requestId":"…"}`; the business
//! `code` says more than the HTTP status (most errors come with 200 or 400), so it is read
//! first and the status only decides when there is no code (a proxy's page, an empty
//! body). A partial success (`80100000`) carries in `msg` a JSON string
//! `{"success":N,"failure":M,"illegal_tokens":[…]}`; every request here names one token,
//! so "no success and an illegal token" means that token is gone.

use crate::push::Classification;
use serde::Deserialize;
use std::time::Duration;

/// What to do with one Push Kit answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Delivered,
    /// The token will never work again (→ `device.token_invalid`).
    TokenGone,
    /// Transient: try again, after the given delay if Push Kit said so.
    Retry {
        after: Option<Duration>,
    },
    /// Our access token was refused or has expired: renew it and try again at once, once
    /// (the delivery loop's [`Attempt::AuthExpired`](crate::push::delivery::Attempt)).
    RenewAuth,
    /// This push cannot succeed; do not retry.
    Permanent,
}

impl Class {
    /// The provider-independent classification; a refused access token that could not
    /// be fixed by one renewal is permanent.
    pub fn classification(self) -> Classification {
        match self {
            Class::Delivered => Classification::Delivered,
            Class::TokenGone => Classification::TokenGone,
            Class::Retry { after } => Classification::Retry { after },
            Class::RenewAuth | Class::Permanent => Classification::Permanent,
        }
    }
}

/// Push Kit's business result codes that this module acts on.
pub mod code {
    pub const SUCCESS: &str = "80000000";
    pub const PARTIAL: &str = "80100000";
    pub const BAD_PARAMETERS: &str = "80100001";
    pub const BAD_MESSAGE: &str = "80100003";
    pub const TTL_IN_THE_PAST: &str = "80100004";
    pub const BAD_COLLAPSE_KEY: &str = "80100013";
    pub const SENSITIVE_CONTENT: &str = "80100016";
    pub const TOO_MANY_TOPIC_TASKS: &str = "80100017";
    pub const OAUTH_ERROR: &str = "80200001";
    pub const OAUTH_TOKEN_EXPIRED: &str = "80200003";
    pub const NO_PERMISSION: &str = "80300002";
    pub const ALL_TOKENS_INVALID: &str = "80300007";
    pub const MESSAGE_TOO_BIG: &str = "80300008";
    pub const TOO_MANY_TOKENS: &str = "80300010";
    pub const NO_HIGH_LEVEL_PERMISSION: &str = "80300011";
    pub const OAUTH_SERVICE_FAILED: &str = "80600003";
    pub const SYSTEM_ERROR: &str = "81000001";
}

/// `code` is documented as a string; some gateways send a number. Both are read.
#[derive(Deserialize)]
#[serde(untagged)]
enum CodeValue {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
struct Answer {
    code: Option<CodeValue>,
    #[serde(default)]
    msg: Option<String>,
}

#[derive(Deserialize, Default)]
struct PartialResult {
    #[serde(default)]
    success: u64,
    #[serde(default)]
    illegal_tokens: Vec<String>,
}

/// The business code and message of an answer, if it is Push Kit's JSON.
fn parse(body: &[u8]) -> Option<(String, String)> {
    let a: Answer = serde_json::from_slice(body).ok()?;
    let code = match a.code? {
        CodeValue::Text(s) => s.trim().to_string(),
        CodeValue::Number(n) => n.to_string(),
    };
    Some((code, a.msg.unwrap_or_default()))
}

/// Maps one `messages:send` answer to what the sender should do.
///
/// - `80000000` → delivered; `80100000` → delivered when the one token succeeded, token
///   gone when it is listed as illegal, else permanent.
/// - `80300007` (all tokens invalid) → token gone.
/// - `80200001` / `80200003` (access token refused or expired), or 401 without a code →
///   renew the access token once and retry.
/// - `81000001` (system error), `80100017`, HTTP 429, 500, 502, 503 (flow control) and
///   other 5xx without a code → retry, after `Retry-After` when given.
/// - Every other code (`80100001`, `80100003` bad message, `80100004`, `80300002` no
///   permission, `80300008`, `80300010` too many tokens, `80600003`, …) and every other
///   status → permanent. A 404 without a code is a wrong endpoint, not a dead token:
///   marking tokens invalid because of a wrong URL would unbind users' devices.
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Class {
    let retry = || Class::Retry { after: retry_after };
    if let Some((code, msg)) = parse(body) {
        return match code.as_str() {
            code::SUCCESS => Class::Delivered,
            code::PARTIAL => {
                let p: PartialResult = serde_json::from_str(&msg).unwrap_or_default();
                if p.success > 0 {
                    Class::Delivered
                } else if !p.illegal_tokens.is_empty() {
                    Class::TokenGone
                } else {
                    Class::Permanent
                }
            }
            code::ALL_TOKENS_INVALID => Class::TokenGone,
            code::OAUTH_ERROR | code::OAUTH_TOKEN_EXPIRED => Class::RenewAuth,
            code::SYSTEM_ERROR | code::TOO_MANY_TOPIC_TASKS => retry(),
            // A code we do not know on a throttling or server-error status: the status
            // is the better guide.
            _ if matches!(status, 429 | 500..=599) && !is_known(&code) => retry(),
            _ => Class::Permanent,
        };
    }
    match status {
        200..=299 => Class::Permanent, // success without Push Kit's code is not proof
        401 => Class::RenewAuth,
        429 | 500..=599 => retry(),
        _ => Class::Permanent,
    }
}

fn is_known(c: &str) -> bool {
    use code::*;
    [
        SUCCESS,
        PARTIAL,
        BAD_PARAMETERS,
        BAD_MESSAGE,
        TTL_IN_THE_PAST,
        BAD_COLLAPSE_KEY,
        SENSITIVE_CONTENT,
        TOO_MANY_TOPIC_TASKS,
        OAUTH_ERROR,
        OAUTH_TOKEN_EXPIRED,
        NO_PERMISSION,
        ALL_TOKENS_INVALID,
        MESSAGE_TOO_BIG,
        TOO_MANY_TOKENS,
        NO_HIGH_LEVEL_PERMISSION,
        OAUTH_SERVICE_FAILED,
        SYSTEM_ERROR,
    ]
    .contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::*;

    fn answer(code: &str, msg: &str) -> String {
        serde_json::json!({"code": code, "msg": msg, "requestId": "1570000000000000001"})
            .to_string()
    }

    fn partial(success: u64, illegal: &[&str]) -> String {
        let msg = serde_json::json!({"success": success, "failure": illegal.len(), "illegal_tokens": illegal})
            .to_string();
        answer(code::PARTIAL, &msg)
    }

    #[test]
    fn table() {
        let s = |x: u64| Some(Duration::from_secs(x));
        #[rustfmt::skip]
        let cases: Vec<(u16, String, Option<Duration>, Class)> = vec![
            (200, answer("80000000", "Success"), None, Delivered),
            (200, r#"{"code":80000000,"msg":"Success"}"#.into(), None, Delivered),
            (200, partial(1, &[]), None, Delivered),
            (200, partial(0, &["tok-gone"]), None, TokenGone),
            (200, answer("80100000", "not json"), None, Permanent),
            (200, answer("80300007", "All the tokens are invalid"), None, TokenGone),
            (400, answer("80300007", "All the tokens are invalid"), None, TokenGone),
            (401, answer("80200001", "Oauth authentication error"), None, RenewAuth),
            (401, answer("80200003", "Oauth token expired"), None, RenewAuth),
            (401, String::new(), None, RenewAuth),
            (401, "<html>Unauthorized</html>".into(), None, RenewAuth),
            (400, answer("80100003", "Incorrect message structure"), None, Permanent),
            (400, answer("80100001", "Some request parameters are incorrect"), None, Permanent),
            (400, answer("80100004", "The message expiration time is earlier than the current time"), None, Permanent),
            (400, answer("80300010", "The number of tokens in the message body exceeds the default value"), None, Permanent),
            (400, answer("80300008", "The message body size exceeds the default value"), None, Permanent),
            (403, answer("80300002", "The current app does not have the permission to send messages"), None, Permanent),
            (400, answer("80600003", "Request OAuth service failed"), None, Permanent),
            (500, answer("81000001", "System inner error"), None, Retry { after: None }),
            (200, answer("81000001", "System inner error"), s(3), Retry { after: s(3) }),
            (503, answer("81000001", "System inner error"), s(5), Retry { after: s(5) }),
            (503, String::new(), s(30), Retry { after: s(30) }),
            (503, "flow control".into(), None, Retry { after: None }),
            (429, String::new(), s(1), Retry { after: s(1) }),
            (429, String::new(), Some(Duration::ZERO), Retry { after: Some(Duration::ZERO) }),
            (502, String::new(), None, Retry { after: None }),
            (504, "<html>Gateway Timeout</html>".into(), None, Retry { after: None }),
            (503, answer("89999999", "something new"), None, Retry { after: None }),
            (503, answer("80100003", "Incorrect message structure"), None, Permanent),
            (400, answer("89999999", "something new"), None, Permanent),
            (404, "<html>Not Found</html>".into(), None, Permanent),
            (404, String::new(), None, Permanent),
            (200, String::new(), None, Permanent),
            (200, r#"{"name":"x"}"#.into(), None, Permanent),
            (302, String::new(), None, Permanent),
            (413, String::new(), None, Permanent),
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
    fn every_known_code_is_listed() {
        for c in [code::SUCCESS, code::SYSTEM_ERROR, code::ALL_TOKENS_INVALID] {
            assert!(is_known(c));
        }
        assert!(!is_known("80000001"));
    }

    #[test]
    fn classes_map_to_the_shared_classification() {
        assert_eq!(Delivered.classification(), Classification::Delivered);
        assert_eq!(TokenGone.classification(), Classification::TokenGone);
        assert_eq!(RenewAuth.classification(), Classification::Permanent);
        assert_eq!(
            Retry { after: None }.classification(),
            Classification::Retry { after: None }
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        for body in [
            &b"\xff\xfe"[..],
            b"{",
            b"{\"code\":null}",
            b"{\"code\":[1]}",
            b"{\"code\":\"80100000\",\"msg\":7}",
            b"{\"code\":\"80100000\",\"msg\":\"{\\\"illegal_tokens\\\":5}\"}",
            b"[]",
        ] {
            for status in [0u16, 100, 200, 400, 401, 404, 429, 500, 999] {
                let _ = classify(status, body, Some(Duration::ZERO));
            }
        }
    }
}
