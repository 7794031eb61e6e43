//! The webhook gateway: `POST {endpoint}` with the JSON body
//! `{"to": "+39…", "text": "…", "reference": "<challenge id>"}` and
//! `Authorization: Bearer <auth_token>` (no header when the token is empty). Any 2xx is
//! accepted; 408, 429 and 5xx are transient (with `Retry-After`); every other answer is a
//! permanent refusal whose reason quotes the gateway's error text, scrubbed.

use super::{retryable, scrub, Answer, GatewayError, Transport, USER_AGENT};
use crate::config::{SmsConfig, SmsGatewayKind, SmsSettings};
use crate::sms::{mask_phone, SmsError, SmsGateway, SmsMessage};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use std::time::{Duration, Instant};

/// The JSON document posted for each message.
#[derive(Debug, serde::Serialize)]
struct Payload<'a> {
    to: &'a str,
    text: &'a str,
    reference: &'a str,
}

/// Classifies one webhook answer (pure): `Ok` when the message was taken.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<(), SmsError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let detail = error_text(body);
    if status == 408 || status == 429 || status >= 500 {
        return Err(retryable("webhook", status, &detail, retry_after));
    }
    let sep = if detail.is_empty() { "" } else { ": " };
    Err(SmsError::Permanent(match status {
        401 | 403 => format!(
            "webhook rejected the credentials (HTTP {status}{sep}{detail}); check sms.auth_token"
        ),
        404 | 405 => format!(
            "webhook endpoint refused the request (HTTP {status}{sep}{detail}); check sms.endpoint"
        ),
        _ => format!("webhook refused the message (HTTP {status}{sep}{detail})"),
    }))
}

/// The gateway's own words, scrubbed: `error`/`message`/`detail` of a JSON body, or the
/// start of a text body.
fn error_text(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["error", "message", "detail", "reason"] {
            match v.get(key) {
                Some(serde_json::Value::String(s)) => return scrub(s),
                Some(serde_json::Value::Object(o)) => {
                    if let Some(serde_json::Value::String(s)) = o.get("message") {
                        return scrub(s);
                    }
                }
                _ => {}
            }
        }
    }
    scrub(&String::from_utf8_lossy(&body[..body.len().min(512)]))
}

/// Sends through a bank's own SMS webhook.
pub struct WebhookGateway {
    transport: Transport,
    uri: Uri,
    authorization: Option<HeaderValue>,
}

impl WebhookGateway {
    /// Validates the section ([`SmsConfig::settings`]) and [`start`](Self::start)s.
    pub fn new(cfg: &SmsConfig) -> Result<WebhookGateway, GatewayError> {
        match cfg.settings()? {
            Some(s) => Self::start(&s),
            None => Err(GatewayError::Setup("sms.gateway is not set".into())),
        }
    }

    pub fn start(s: &SmsSettings) -> Result<WebhookGateway, GatewayError> {
        let SmsGatewayKind::Webhook { auth_token } = &s.gateway else {
            return Err(GatewayError::Setup("sms.gateway is not `webhook`".into()));
        };
        let uri = s
            .endpoint
            .as_str()
            .parse::<Uri>()
            .map_err(|e| GatewayError::Setup(format!("sms.endpoint `{}`: {e}", s.endpoint)))?;
        let authorization = match auth_token {
            None => None,
            Some(t) => {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                        GatewayError::Setup("sms.auth_token: not a valid header value".into())
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(WebhookGateway {
            transport: Transport::new(s)?,
            uri,
            authorization,
        })
    }

    /// The request for one message (no I/O; also used by tests).
    pub fn request(&self, msg: &SmsMessage) -> Result<Request<Full<Bytes>>, SmsError> {
        let body = serde_json::to_vec(&Payload {
            to: &msg.to,
            text: &msg.text,
            reference: &msg.reference,
        })
        .map_err(|e| SmsError::Permanent(format!("cannot encode the webhook body: {e}")))?;
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(auth) = &self.authorization {
            b = b.header(header::AUTHORIZATION, auth.clone());
        }
        b.body(Full::new(Bytes::from(body)))
            .map_err(|e| SmsError::Permanent(format!("cannot build the webhook request: {e}")))
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
        tracing::debug!(
            gateway = "webhook",
            to = %mask_phone(&msg.to),
            reference = %msg.reference,
            status = answer.status.as_u16(),
            took_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "SMS gateway answered"
        );
        result
    }
}

impl SmsGateway for WebhookGateway {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> BoxFuture<'a, Result<(), SmsError>> {
        Box::pin(self.send_one(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[derive(Debug)]
    enum Want {
        Ok,
        Retry(Option<Duration>),
        Permanent(&'static str),
    }

    #[test]
    fn classification_table() {
        let ra = Some(Duration::from_secs(5));
        let cases: Vec<(u16, Option<Duration>, &[u8], Want)> = vec![
            (200, None, b"", Want::Ok),
            (202, None, br#"{"id":"m1"}"#, Want::Ok),
            (204, ra, b"", Want::Ok),
            (429, ra, br#"{"error":"slow down"}"#, Want::Retry(ra)),
            (503, ra, b"", Want::Retry(ra)),
            (500, None, b"oops", Want::Retry(None)),
            (504, None, b"", Want::Retry(None)),
            (408, None, b"", Want::Retry(None)),
            (
                401,
                None,
                br#"{"error":"unauthorized"}"#,
                Want::Permanent("sms.auth_token"),
            ),
            (403, None, b"", Want::Permanent("credentials")),
            (404, None, b"", Want::Permanent("sms.endpoint")),
            (
                400,
                None,
                br#"{"error":"invalid destination +393401234567"}"#,
                Want::Permanent("+39340****567"),
            ),
            (
                422,
                None,
                br#"{"error":{"message":"text rejected: Code 654321 to sign in"}}"#,
                Want::Permanent("Code ****** to sign in"),
            ),
            (400, None, b"plain words", Want::Permanent("plain words")),
            (301, None, b"", Want::Permanent("HTTP 301")),
        ];
        for (status, retry_after, body, want) in cases {
            let got = classify(status, retry_after, body);
            match (&got, &want) {
                (Ok(()), Want::Ok) => {}
                (Err(SmsError::Retryable { retry_after: r, .. }), Want::Retry(w)) => {
                    assert_eq!(r, w, "{status}")
                }
                (Err(SmsError::Permanent(reason)), Want::Permanent(needle)) => {
                    assert!(reason.contains(needle), "{status}: {reason}");
                    assert!(!reason.contains("1234567") && !reason.contains("654321"));
                }
                _ => panic!("{status}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn cfg(token: &str) -> SmsConfig {
        SmsConfig {
            gateway: "webhook".into(),
            endpoint: "http://127.0.0.1:9/sms/send".into(),
            auth_token: token.into(),
            ..SmsConfig::default()
        }
    }

    fn msg() -> SmsMessage {
        SmsMessage {
            to: "+393401234567".into(),
            text: "Codice 123456 \"quoted\" €".into(),
            reference: "chal-1".into(),
        }
    }

    #[tokio::test]
    async fn builds_the_json_request() {
        let g = WebhookGateway::new(&cfg("s3cret")).unwrap();
        let req = g.request(&msg()).unwrap();
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:9/sms/send");
        let auth = req.headers().get(header::AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), "Bearer s3cret");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"to": "+393401234567", "text": "Codice 123456 \"quoted\" €", "reference": "chal-1"})
        );
    }

    #[test]
    fn no_token_no_header() {
        let g = WebhookGateway::new(&cfg("")).unwrap();
        let req = g.request(&msg()).unwrap();
        assert!(req.headers().get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn bad_endpoints_are_setup_errors() {
        let mut c = cfg("");
        c.endpoint = "mailto:x@y".into();
        let e = WebhookGateway::new(&c).err().unwrap().to_string();
        assert!(e.contains("sms.endpoint"), "{e}");
    }
}
