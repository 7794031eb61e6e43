//! Classification of an APNs answer (HTTP status plus the `reason` of its JSON body) into
//! what the provider does next. Pure: no I/O, no clock; tested from a table that covers
//! every reason in Apple's list ("Handling notification responses from APNs").

use crate::push::Classification;

/// The `reason` Apple sends when a provider token is older than an hour. The transport
/// handles it before classification: it answers `AuthExpired`, and the delivery loop
/// renews the token at once and retries the push once; on its own the answer is permanent.
pub const EXPIRED_PROVIDER_TOKEN: &str = "ExpiredProviderToken";

#[derive(serde::Deserialize)]
struct ErrorBody {
    reason: String,
}

/// The `reason` of an APNs error body (`{"reason": "BadDeviceToken"}`), if it is one.
pub fn reason(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.reason)
}

/// Maps an APNs answer to a [`Classification`].
///
/// - 200 → delivered.
/// - 410 (`Unregistered`, `ExpiredToken`), 400 `BadDeviceToken` and
///   `DeviceTokenNotForTopic` → the token is gone; never retried.
/// - 429 (`TooManyRequests`, and `TooManyProviderTokenUpdates`: the push itself is fine,
///   only the rate is refused, and scheduled token renewals never exceed Apple's limit, so
///   a later attempt with the same token succeeds), every 5xx (`InternalServerError`,
///   `ServiceUnavailable`, `Shutdown`), and 400 `IdleTimeout` (a connection-level answer,
///   the push was never processed) → retry with backoff while the challenge lives.
/// - Any other 4xx (bad headers, topic, payload, provider token …) → permanent.
/// - Anything else (1xx/3xx, unexpected statuses) → permanent: it will not change by
///   sending the same request again.
pub fn classify(status: u16, reason: Option<&str>) -> Classification {
    match (status, reason) {
        (200, _) => Classification::Delivered,
        (410, _) => Classification::TokenGone,
        (_, Some("BadDeviceToken" | "DeviceTokenNotForTopic" | "Unregistered")) => {
            Classification::TokenGone
        }
        (_, Some("IdleTimeout")) => Classification::Retry { after: None },
        (429, _) => Classification::Retry { after: None },
        (500..=599, _) => Classification::Retry { after: None },
        _ => Classification::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;

    const RETRY: Classification = Retry { after: None };

    /// Every reason in Apple's list, with the status Apple documents for it.
    const TABLE: &[(u16, &str, Classification)] = &[
        (400, "BadCollapseId", Permanent),
        (400, "BadDeviceToken", TokenGone),
        (400, "BadExpirationDate", Permanent),
        (400, "BadMessageId", Permanent),
        (400, "BadPriority", Permanent),
        (400, "BadTopic", Permanent),
        (400, "DeviceTokenNotForTopic", TokenGone),
        (400, "DuplicateHeaders", Permanent),
        (400, "IdleTimeout", RETRY),
        (400, "InvalidPushType", Permanent),
        (400, "MissingDeviceToken", Permanent),
        (400, "MissingTopic", Permanent),
        (400, "PayloadEmpty", Permanent),
        (400, "TopicDisallowed", Permanent),
        (403, "BadCertificate", Permanent),
        (403, "BadCertificateEnvironment", Permanent),
        (403, "ExpiredProviderToken", Permanent),
        (403, "Forbidden", Permanent),
        (403, "InvalidProviderToken", Permanent),
        (403, "MissingProviderToken", Permanent),
        (403, "UnrelatedKeyIdInToken", Permanent),
        (404, "BadPath", Permanent),
        (405, "MethodNotAllowed", Permanent),
        (410, "ExpiredToken", TokenGone),
        (410, "Unregistered", TokenGone),
        (413, "PayloadTooLarge", Permanent),
        (429, "TooManyProviderTokenUpdates", RETRY),
        (429, "TooManyRequests", RETRY),
        (500, "InternalServerError", RETRY),
        (503, "ServiceUnavailable", RETRY),
        (503, "Shutdown", RETRY),
    ];

    #[test]
    fn every_apple_reason_is_classified() {
        assert_eq!(TABLE.len(), 31, "Apple lists 31 reasons");
        for &(status, reason, want) in TABLE {
            assert_eq!(
                classify(status, Some(reason)),
                want,
                "{status} {reason} should be {want:?}"
            );
        }
    }

    /// The reason strings are spelled as Apple spells them: cross-checked against the
    /// independent list in the `a2` crate (which lacks the three newest reasons).
    #[test]
    fn reasons_are_spelled_as_apple_does() {
        let newer = ["InvalidPushType", "UnrelatedKeyIdInToken", "ExpiredToken"];
        for &(_, reason, _) in TABLE {
            if newer.contains(&reason) {
                continue;
            }
            let parsed: Result<a2::ErrorReason, _> =
                serde_json::from_value(serde_json::Value::String(reason.into()));
            assert!(parsed.is_ok(), "{reason} is not one of Apple's reasons");
        }
        assert_eq!(EXPIRED_PROVIDER_TOKEN, "ExpiredProviderToken");
    }

    #[test]
    fn statuses_without_a_reason() {
        assert_eq!(classify(200, None), Delivered);
        assert_eq!(classify(200, Some("ignored")), Delivered);
        assert_eq!(classify(410, None), TokenGone);
        assert_eq!(classify(429, None), RETRY);
        assert_eq!(classify(500, None), RETRY);
        assert_eq!(classify(502, None), RETRY);
        assert_eq!(classify(503, None), RETRY);
        assert_eq!(classify(504, Some("whatever")), RETRY);
        assert_eq!(classify(400, None), Permanent);
        assert_eq!(classify(400, Some("SomethingNew")), Permanent);
        assert_eq!(classify(403, None), Permanent);
        assert_eq!(classify(404, None), Permanent);
        assert_eq!(classify(301, None), Permanent);
    }
}
