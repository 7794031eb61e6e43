//! The Twilio gateway: `POST {endpoint}/2010-04-01/Accounts/{account_sid}/Messages.json`
//! as a form (`To`, `From`, `Body`) with HTTP basic auth (`account_sid:auth_token`).
//! 201/200 is accepted; Twilio's error JSON (`code`, `message`, `more_info`) is read to tell
//! a transient refusal (429, 5xx, rate-limit codes) from a permanent one (invalid or
//! unreachable destination, bad credentials, misconfigured sender).

use super::{retryable, scrub, Answer, GatewayError, Transport, USER_AGENT};
use crate::config::{SmsConfig, SmsGatewayKind, SmsSettings};
use crate::sms::{mask_phone, SmsError, SmsGateway, SmsMessage};
use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use std::time::{Duration, Instant};

/// Twilio error codes meaning the destination number cannot get this SMS: invalid,
/// not a mobile, not reachable, region not enabled, or the recipient opted out.
pub const DESTINATION_CODES: &[u32] = &[
    21211, // invalid 'To' phone number
    21214, // 'To' number cannot be reached
    21217, // phone number does not appear to be valid
    21401, // invalid phone number
    21407, // this phone number type does not support SMS
    21408, // permission to send to this region not enabled
    21421, // phone number is invalid
    21610, // recipient unsubscribed (replied STOP)
    21612, // 'To' number not currently reachable via SMS
    21614, // 'To' number is not a valid mobile number
    21635, // 'To' number cannot be a landline
];

/// Codes that mean our own configuration is wrong (sender, body), not the destination.
const SENDER_CODES: &[u32] = &[
    21602, // message body is required
    21603, // 'From' is required
    21604, // 'To' is required
    21606, // 'From' is not a valid, SMS-capable number of this account
    21617, // body exceeds the maximum length
    21659, // 'From' is not a Twilio number
    21660, // 'From' does not belong to the account
];

/// Codes Twilio uses for transient trouble, whatever the status says.
const TRANSIENT_CODES: &[u32] = &[
    14107, // message rate limit exceeded
    20429, // too many requests
    20500, // internal server error
    20503, // service unavailable
];

/// Twilio's error document.
#[derive(Debug, Default, serde::Deserialize)]
struct TwilioError {
    code: Option<u32>,
    message: Option<String>,
    more_info: Option<String>,
}

/// The part of Twilio's message resource we look at.
#[derive(Debug, serde::Deserialize)]
struct TwilioMessage {
    sid: Option<String>,
    status: Option<String>,
    error_code: Option<u32>,
}

/// Classifies one Twilio answer (pure): `Ok` when the message was taken.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<(), SmsError> {
    if (200..300).contains(&status) {
        // Creation normally answers `queued`/`accepted`; a resource already `failed` at
        // creation will never be delivered.
        if let Ok(m) = serde_json::from_slice::<TwilioMessage>(body) {
            if matches!(
                m.status.as_deref(),
                Some("failed" | "undelivered" | "canceled")
            ) {
                return Err(SmsError::Permanent(format!(
                    "Twilio created the message as `{}` (error code {})",
                    m.status.unwrap_or_default(),
                    m.error_code.map_or("none".into(), |c| c.to_string())
                )));
            }
        }
        return Ok(());
    }
    let err: TwilioError = serde_json::from_slice(body).unwrap_or_default();
    let detail = describe(&err);
    let code = err.code.unwrap_or(0);
    if status == 429 || status == 408 || status >= 500 || TRANSIENT_CODES.contains(&code) {
        return Err(retryable("Twilio", status, &detail, retry_after));
    }
    let what = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}, {detail}")
    };
    let reason = if status == 401 || status == 403 || code == 20003 {
        format!(
            "Twilio rejected the credentials ({what}); check sms.account_sid and sms.auth_token"
        )
    } else if DESTINATION_CODES.contains(&code) {
        format!("Twilio refused the destination number ({what})")
    } else if SENDER_CODES.contains(&code) {
        format!("Twilio refused the message ({what}); check sms.from and the text")
    } else if status == 404 || code == 20404 {
        format!("Twilio found no such resource ({what}); check sms.endpoint and sms.account_sid")
    } else {
        format!("Twilio refused the message ({what})")
    };
    Err(SmsError::Permanent(reason))
}

/// `code 21211: <scrubbed message> (<more_info>)`, or what of it is there.
fn describe(e: &TwilioError) -> String {
    let mut s = String::new();
    if let Some(c) = e.code {
        s.push_str(&format!("code {c}"));
    }
    if let Some(m) = e.message.as_deref().filter(|m| !m.is_empty()) {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&scrub(m));
    }
    if let Some(u) = e.more_info.as_deref().filter(|u| u.starts_with("http")) {
        s.push_str(&format!(" ({})", scrub(u)));
    }
    s
}

/// Sends through Twilio's Messages API.
pub struct TwilioGateway {
    transport: Transport,
    uri: Uri,
    authorization: HeaderValue,
    from: String,
}

impl TwilioGateway {
    /// Validates the section ([`SmsConfig::settings`]) and [`start`](Self::start)s.
    pub fn new(cfg: &SmsConfig) -> Result<TwilioGateway, GatewayError> {
        match cfg.settings()? {
            Some(s) => Self::start(&s),
            None => Err(GatewayError::Setup("sms.gateway is not set".into())),
        }
    }

    pub fn start(s: &SmsSettings) -> Result<TwilioGateway, GatewayError> {
        let SmsGatewayKind::Twilio {
            account_sid,
            auth_token,
            from,
        } = &s.gateway
        else {
            return Err(GatewayError::Setup("sms.gateway is not `twilio`".into()));
        };
        Ok(TwilioGateway {
            transport: Transport::new(s)?,
            uri: messages_uri(s.endpoint.as_str(), account_sid)?,
            authorization: basic_auth(account_sid, auth_token.expose())?,
            from: from.clone(),
        })
    }

    /// The request for one message (no I/O; also used by tests).
    pub fn request(&self, msg: &SmsMessage) -> Result<Request<Full<Bytes>>, SmsError> {
        let body = form_body(&msg.to, &self.from, &msg.text);
        Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SmsError::Permanent(format!("cannot build the Twilio request: {e}")))
    }

    async fn send_one(&self, msg: &SmsMessage) -> Result<(), SmsError> {
        if !crate::challenge::model::valid_e164(&msg.to) {
            return Err(SmsError::Permanent(format!(
                "destination {} is not an E.164 number",
                mask_phone(&msg.to)
            )));
        }
        let started = Instant::now();
        let answer: Answer = self.transport.post(self.request(msg)?).await?;
        let result = classify(answer.status.as_u16(), answer.retry_after, &answer.body);
        let sid = serde_json::from_slice::<TwilioMessage>(&answer.body)
            .ok()
            .and_then(|m| m.sid)
            .map(|s| scrub(&s))
            .unwrap_or_default();
        tracing::debug!(
            gateway = "twilio",
            to = %mask_phone(&msg.to),
            reference = %msg.reference,
            status = answer.status.as_u16(),
            sid = %sid,
            took_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "SMS gateway answered"
        );
        result
    }
}

impl SmsGateway for TwilioGateway {
    fn name(&self) -> &'static str {
        "twilio"
    }
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> BoxFuture<'a, Result<(), SmsError>> {
        Box::pin(self.send_one(msg))
    }
}

/// `{endpoint}/2010-04-01/Accounts/{sid}/Messages.json`, the sid percent-encoded.
pub fn messages_uri(endpoint: &str, account_sid: &str) -> Result<Uri, GatewayError> {
    let base = url::Url::parse(endpoint)
        .map_err(|e| GatewayError::Setup(format!("sms.endpoint `{endpoint}`: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(GatewayError::Setup(format!(
            "sms.endpoint `{endpoint}`: use http or https"
        )));
    }
    let uri = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        endpoint.trim_end_matches('/'),
        urlencoding::encode(account_sid)
    );
    uri.parse::<Uri>()
        .map_err(|e| GatewayError::Setup(format!("sms.endpoint `{endpoint}`: {e}")))
}

/// `Basic base64(sid:token)`, marked sensitive so it is never printed by `http`.
fn basic_auth(sid: &str, token: &str) -> Result<HeaderValue, GatewayError> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"));
    let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
        .map_err(|_| GatewayError::Setup("sms.account_sid: not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `To=…&From=…&Body=…`, form-urlencoded.
pub fn form_body(to: &str, from: &str, text: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("To", to)
        .append_pair("From", from)
        .append_pair("Body", text)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: u32, message: &str) -> Vec<u8> {
        serde_json::json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": 400
        })
        .to_string()
        .into_bytes()
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        Retry(Option<Duration>),
        Permanent(&'static str),
    }

    #[test]
    fn classification_table() {
        let ra = Some(Duration::from_secs(2));
        let created = br#"{"sid":"SM1","status":"queued"}"#.to_vec();
        let failed = br#"{"sid":"SM1","status":"failed","error_code":30007}"#.to_vec();
        let cases: Vec<(u16, Option<Duration>, Vec<u8>, Want)> = vec![
            (201, None, created.clone(), Want::Ok),
            (200, None, created, Want::Ok),
            (201, None, b"not json".to_vec(), Want::Ok),
            (201, None, failed, Want::Permanent("30007")),
            (429, ra, err(20429, "Too Many Requests"), Want::Retry(ra)),
            (429, None, Vec::new(), Want::Retry(None)),
            (500, None, err(20500, "Internal"), Want::Retry(None)),
            (
                502,
                None,
                b"<html>bad gateway</html>".to_vec(),
                Want::Retry(None),
            ),
            (503, ra, err(20503, "Unavailable"), Want::Retry(ra)),
            (408, None, Vec::new(), Want::Retry(None)),
            (400, None, err(14107, "Rate limit"), Want::Retry(None)),
            (
                400,
                ra,
                err(
                    21211,
                    "The 'To' number +393401234567 is not a valid phone number.",
                ),
                Want::Permanent("destination"),
            ),
            (
                400,
                None,
                err(21614, "not a mobile"),
                Want::Permanent("21614"),
            ),
            (
                400,
                None,
                err(21408, "region"),
                Want::Permanent("destination"),
            ),
            (
                400,
                None,
                err(21610, "unsubscribed"),
                Want::Permanent("destination"),
            ),
            (
                400,
                None,
                err(21606, "bad From"),
                Want::Permanent("sms.from"),
            ),
            (
                401,
                None,
                err(20003, "Authenticate"),
                Want::Permanent("sms.auth_token"),
            ),
            (403, None, Vec::new(), Want::Permanent("credentials")),
            (
                404,
                None,
                err(20404, "not found"),
                Want::Permanent("sms.account_sid"),
            ),
            (
                400,
                None,
                err(21999, "something new"),
                Want::Permanent("21999"),
            ),
            (413, None, Vec::new(), Want::Permanent("HTTP 413")),
            (302, None, Vec::new(), Want::Permanent("HTTP 302")),
        ];
        for (status, retry_after, body, want) in cases {
            let got = classify(status, retry_after, &body);
            match (&got, &want) {
                (Ok(()), Want::Ok) => {}
                (Err(SmsError::Retryable { retry_after: r, .. }), Want::Retry(w)) => {
                    assert_eq!(r, w, "{status}")
                }
                (Err(SmsError::Permanent(reason)), Want::Permanent(needle)) => {
                    assert!(reason.contains(needle), "{status}: {reason}")
                }
                _ => panic!(
                    "{status} {}: got {got:?}, want {want:?}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }

    #[test]
    fn reasons_never_carry_the_number() {
        let body = err(
            21211,
            "The 'To' number +393401234567 is not a valid phone number.",
        );
        let Err(SmsError::Permanent(r)) = classify(400, None, &body) else {
            panic!("not permanent")
        };
        assert!(!r.contains("1234567") && r.contains("+39340****567"), "{r}");
        assert!(
            r.contains("21211") && r.contains("twilio.com/docs/errors/21211"),
            "{r}"
        );
    }

    #[test]
    fn builds_the_form_request() {
        let cfg = SmsConfig {
            gateway: "twilio".into(),
            endpoint: "http://127.0.0.1:9/".into(),
            account_sid: "AC123".into(),
            auth_token: "tok".into(),
            from: "+15005550006".into(),
            ..SmsConfig::default()
        };
        let g = TwilioGateway::new(&cfg).unwrap();
        let msg = SmsMessage {
            to: "+393401234567".into(),
            text: "Codice 123456: 125,40 € a Mario & figli".into(),
            reference: "c1".into(),
        };
        let req = g.request(&msg).unwrap();
        assert_eq!(
            req.uri().to_string(),
            "http://127.0.0.1:9/2010-04-01/Accounts/AC123/Messages.json"
        );
        let auth = req.headers().get(header::AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), "Basic QUMxMjM6dG9r");
        let body = form_body(&msg.to, "+15005550006", &msg.text);
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("To".into(), msg.to.clone()),
                ("From".into(), "+15005550006".into()),
                ("Body".into(), msg.text.clone()),
            ]
        );
        assert!(format!("{:?}", req.headers()).contains("Sensitive"));
    }

    #[test]
    fn sid_is_encoded_into_the_path() {
        let u = messages_uri("https://api.twilio.com", "AC/../x").unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.twilio.com/2010-04-01/Accounts/AC%2F..%2Fx/Messages.json"
        );
        assert!(messages_uri("ftp://x", "AC1").is_err());
    }

    #[test]
    fn missing_credentials_are_setup_errors() {
        let cfg = SmsConfig {
            gateway: "twilio".into(),
            endpoint: "https://api.twilio.com".into(),
            account_sid: "AC1".into(),
            ..SmsConfig::default()
        };
        let e = TwilioGateway::new(&cfg).err().unwrap().to_string();
        assert!(e.contains("sms.auth_token"), "{e}");
    }

    #[tokio::test]
    async fn refuses_a_non_e164_destination_without_sending() {
        let cfg = SmsConfig {
            gateway: "twilio".into(),
            // Nothing listens here: a request would be a retryable connect error.
            endpoint: "http://127.0.0.1:9".into(),
            account_sid: "AC1".into(),
            auth_token: "t".into(),
            from: "+15005550006".into(),
            ..SmsConfig::default()
        };
        let g = TwilioGateway::new(&cfg).unwrap();
        let msg = SmsMessage {
            to: "3401234567".into(),
            text: "x".into(),
            reference: "c".into(),
        };
        let e = g.send(&msg).await.unwrap_err();
        assert!(
            matches!(e, SmsError::Permanent(ref r) if r.contains("E.164")),
            "{e:?}"
        );
    }
}
