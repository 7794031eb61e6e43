//! Push delivery: the [`PushProvider`] trait the engine talks to, the message it hands
//! over, the outcome classes every provider answer maps to, the [`delivery`] loop every
//! provider shares, and the APNs, FCM and Huawei Push Kit transports. Only this module
//! knows provider protocols.

pub mod apns;
pub mod bearer;
pub mod delivery;
pub mod fcm;
pub mod hms;
pub mod oauth;

use crate::challenge::context::RequestContext;
use crate::challenge::machine::PushResult;
use crate::challenge::model::{AppName, Kind, Platform};
use std::sync::Arc;

/// The buffer a push body is serialized into starts this large: a challenge's alert
/// with its title, body and number choices fits (about 400 bytes for APNs and FCM), so
/// serializing it never grows the buffer; larger bodies (a request context) grow it.
pub const BODY_CAPACITY: usize = 512;
use std::time::Duration;

/// Kept for callers that name it here; it is `futures_util`'s.
pub use futures_util::future::BoxFuture;

/// A POST of `body` to `uri` with `headers`, names and values already typed. Built in
/// place: `http::request::Builder` moves the whole request through a `Result` at each
/// `header` call, and a push request has up to seven.
pub(crate) fn post<B, const N: usize>(
    uri: http::Uri,
    body: B,
    headers: [(http::HeaderName, http::HeaderValue); N],
) -> http::Request<B> {
    let mut req = http::Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    let map = req.headers_mut();
    for (name, value) in headers {
        map.insert(name, value);
    }
    req
}

/// What goes to one device.
#[derive(Debug, Clone)]
pub enum PushContent {
    /// The challenge itself, with localized texts.
    Challenge {
        title: Arc<str>,
        body: Arc<str>,
        number_choices: Option<[u8; 3]>,
        /// The account label and the request context, carried as data.
        extra: Option<Arc<PushExtra>>,
    },
    /// Take the challenge off the screen: decided elsewhere, cancelled or expired.
    Withdraw,
}

/// What a challenge push carries beyond its texts (CONTRACT §10): the account's label
/// and the request context, as the payload's data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushExtra {
    pub user_label: Option<Box<str>>,
    pub context: Option<RequestContext>,
}

/// The extra data the payload tests of every provider push: an account label and a
/// context with `details` details of `value_len` characters each.
#[cfg(test)]
pub(crate) fn sample_extra(details: usize, value_len: usize) -> Option<Arc<PushExtra>> {
    use crate::challenge::context::Detail;
    Some(Arc::new(PushExtra {
        user_label: Some("Conto business".into()),
        context: Some(RequestContext {
            ip: Some("203.0.113.7".into()),
            location: Some("Milano".into()),
            client: None,
            details: (0..details)
                .map(|i| Detail {
                    label: format!("l{i}"),
                    value: "v".repeat(value_len),
                })
                .collect(),
        }),
    }))
}

/// Checks that `data` (string-valued FCM or Push Kit data, given as an object or as the
/// JSON text of one) carries what [`sample_extra`]`(1, 3)` put in.
#[cfg(test)]
pub(crate) fn assert_sample_extra_as_string_data(data: &serde_json::Value) {
    let data: serde_json::Value = match data.as_str() {
        Some(text) => serde_json::from_str(text).expect("data is JSON text"),
        None => data.clone(),
    };
    assert_eq!(data["user_label"], "Conto business");
    let ctx: serde_json::Value =
        serde_json::from_str(data["context"].as_str().expect("context is a string")).unwrap();
    assert_eq!(
        ctx,
        serde_json::json!({"ip": "203.0.113.7", "location": "Milano",
        "details": [{"label": "l0", "value": "vvv"}]})
    );
}

impl PushExtra {
    /// The context as compact JSON, for the string-valued data of FCM and Push Kit.
    pub fn context_json(&self) -> Option<String> {
        self.context
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok())
    }
}

/// One push to one device.
#[derive(Debug, Clone)]
pub struct PushMessage {
    pub challenge_id: Arc<str>,
    pub kind: Kind,
    pub device_id: Arc<str>,
    pub token: Arc<str>,
    pub content: PushContent,
    /// The challenge's expiry (Unix ms): APNs expiration, FCM ttl, and the retry horizon.
    pub expires_at_ms: i64,
    /// The challenge's app: whose credentials the engine picked for it (the `app` label
    /// of the push metrics).
    pub app: AppName,
}

impl PushMessage {
    pub fn is_withdraw(&self) -> bool {
        matches!(self.content, PushContent::Withdraw)
    }
    /// Lifetime left at `now_ms`, never negative.
    pub fn remaining(&self, now_ms: i64) -> Duration {
        Duration::from_millis((self.expires_at_ms - now_ms).max(0) as u64)
    }
}

/// A push provider as the engine sees it. `send` resolves once the push is delivered,
/// known to be impossible, or the challenge's life ran out while retrying; a challenge
/// push never outlives `expires_at_ms` by more than one request timeout. A withdrawal
/// always gets one attempt, even after expiry (expiry is itself a reason to withdraw).
/// The providers here implement it with [`delivery::deliver`] over a
/// [`delivery::Transport`].
pub trait PushProvider: Send + Sync + 'static {
    fn platform(&self) -> Platform;
    fn send(&self, msg: PushMessage) -> BoxFuture<'_, PushResult>;
}

/// How one provider answer is to be treated; classification functions are pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    Delivered,
    /// Transient: try again, after the given delay if the provider said so.
    Retry {
        after: Option<Duration>,
    },
    /// The token will never work again.
    TokenGone,
    /// This push cannot succeed; do not retry.
    Permanent,
}

/// Masks a device token for logs and events: first 6 and last 4 characters.
pub fn mask_token(token: &str) -> String {
    MaskedToken(token).to_string()
}

/// A token shown masked, formatted only when displayed (a disabled log line costs
/// nothing).
#[derive(Clone, Copy)]
pub struct MaskedToken<'a>(pub &'a str);

impl std::fmt::Display for MaskedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        match (t.get(..6), t.len().checked_sub(4).and_then(|i| t.get(i..))) {
            (Some(head), Some(tail)) if t.len() > 12 => write!(f, "{head}…{tail}"),
            _ => f.write_str(&"*".repeat(t.len().min(8))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_masked() {
        let t = "ab".repeat(32);
        let m = mask_token(&t);
        assert!(m.starts_with("ababab") && m.len() < 16);
        assert_eq!(mask_token("short"), "*****");
    }
}
