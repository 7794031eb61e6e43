//! The request context a challenge may carry (CONTRACT §10) — where and from what the
//! operation was asked (`ip`, `location`, `client`, up to 5 label/value `details`) — and
//! the `user_label` naming the account on a device shared by several accounts. Both are
//! validated with bounded lengths, shown in the push and carried in its data; neither is
//! part of the transaction digest (CONTRACT §5 covers amount, currency and payee only).

use super::raw::Loose;
use serde::{Deserialize, Serialize};

pub const MAX_USER_LABEL: usize = 40;
pub const MAX_IP: usize = 45;
pub const MAX_LOCATION: usize = 64;
pub const MAX_CLIENT: usize = 64;
pub const MAX_DETAILS: usize = 5;
pub const MAX_DETAIL_LABEL: usize = 36;
pub const MAX_DETAIL_VALUE: usize = 128;

/// One label/value line of the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detail {
    pub label: String,
    pub value: String,
}

/// The validated request context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
}

/// 1..=`max` characters, none of them control characters.
fn printable(s: &str, max: usize) -> bool {
    let n = s.chars().count();
    n > 0 && n <= max && !s.chars().any(char::is_control)
}

/// Validates `user_label`; the error names the field.
pub fn parse_user_label(v: &Loose) -> Result<Option<Box<str>>, String> {
    match v {
        Loose::Null => Ok(None),
        Loose::Str(s) if printable(s, MAX_USER_LABEL) => Ok(Some(s.as_ref().into())),
        _ => Err(format!(
            "user_label must be 1-{MAX_USER_LABEL} printable characters"
        )),
    }
}

/// Validates `context`; the error names the field.
pub fn parse_context(v: &serde_json::Value) -> Result<Option<Box<RequestContext>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let c = RequestContext::deserialize(v).map_err(|_| {
        "context must be an object with optional string ip, location, client and details [{label, value}]"
            .to_string()
    })?;
    let check = |field: &str, s: &Option<String>, max: usize| match s {
        Some(s) if !printable(s, max) => Err(format!(
            "context.{field} must be 1-{max} printable characters"
        )),
        _ => Ok(()),
    };
    check("ip", &c.ip, MAX_IP)?;
    check("location", &c.location, MAX_LOCATION)?;
    check("client", &c.client, MAX_CLIENT)?;
    if c.details.len() > MAX_DETAILS {
        return Err(format!("context.details: at most {MAX_DETAILS} entries"));
    }
    for (i, d) in c.details.iter().enumerate() {
        if !printable(&d.label, MAX_DETAIL_LABEL) {
            return Err(format!(
                "context.details[{i}].label must be 1-{MAX_DETAIL_LABEL} printable characters"
            ));
        }
        if !printable(&d.value, MAX_DETAIL_VALUE) {
            return Err(format!(
                "context.details[{i}].value must be 1-{MAX_DETAIL_VALUE} printable characters"
            ));
        }
    }
    if c == RequestContext::default() {
        return Ok(None);
    }
    Ok(Some(Box::new(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_are_enforced_by_field() {
        assert!(
            parse_context(&json!({"ip": "203.0.113.7", "location": "Milano, IT",
            "client": "Chrome on macOS", "details": [{"label": "IBAN", "value": "IT60X"}]}))
            .unwrap()
            .is_some()
        );
        assert_eq!(parse_context(&json!({})).unwrap(), None);
        for (bad, field) in [
            (json!({"ip": "x".repeat(46)}), "context.ip"),
            (json!({"location": ""}), "context.location"),
            (json!({"client": "a\u{7}b"}), "context.client"),
            (
                json!({"details": vec![json!({"label": "a", "value": "b"}); 6]}),
                "context.details",
            ),
            (
                json!({"details": [{"label": "a".repeat(37), "value": "b"}]}),
                "context.details[0].label",
            ),
            (
                json!({"details": [{"label": "a", "value": "b".repeat(129)}]}),
                "context.details[0].value",
            ),
            (json!({"where": "x"}), "context must be"),
            (json!("x"), "context must be"),
        ] {
            let e = parse_context(&bad).unwrap_err();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        let label = |v: serde_json::Value| {
            let text = v.to_string();
            parse_user_label(&serde_json::from_str(&text).unwrap())
        };
        assert!(label(json!("Conto business")).unwrap().is_some());
        assert_eq!(label(json!(null)).unwrap(), None);
        assert!(label(json!("x".repeat(41))).is_err());
        assert!(label(json!(3)).is_err());
    }
}
