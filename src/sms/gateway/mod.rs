//! SMS gateways: [`twilio`] (form POST to the Messages resource, HTTP basic auth) and
//! [`webhook`] (JSON POST with a bearer token), as CONTRACT §9 defines them, and what they
//! share: one pooled hyper client over rustls ([`crate::tls::json_client`]), a timeout on
//! every request, a bound on every response body, `Retry-After` (read with [`crate::retry::retry_after`], capped
//! at an hour; `deliver` also stops at the code's expiry), and scrubbing of
//! gateway error texts so that neither a phone number nor a code ever ends up in a reason.
//!
//! Each gateway turns one HTTP answer into `Ok(())` or an [`SmsError`] through a pure
//! classification function (`twilio::classify`, `webhook::classify`); retrying is left to
//! [`crate::sms::deliver`]. The auth token and the message text (it carries the code) are
//! never logged; phone numbers only masked. Metrics are recorded by the caller.

pub mod twilio;
pub mod webhook;

use crate::config::{SmsConfig, SmsGatewayKind, SmsSettings};
use crate::sms::{SmsError, SmsGateway};
use crate::tls::JsonClient;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub use twilio::TwilioGateway;
pub use webhook::WebhookGateway;

/// Largest gateway answer read; anything longer is cut off (only error JSON is read).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Requests one gateway has in flight at once. When push delivery fails wholesale every
/// challenge may fall back to SMS together; this keeps the burst from opening thousands
/// of connections to the gateway (it would answer 429 anyway).
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest gateway error text carried into a reason.
const MAX_REASON_DETAIL: usize = 200;

pub(crate) const USER_AGENT: &str = concat!("sca-dispatch/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("sms: {0}")]
    Setup(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Validates the section ([`SmsConfig::settings`]) and builds the configured gateway, or
/// `None` when `sms.gateway` is empty.
pub fn from_config(cfg: &SmsConfig) -> Result<Option<Arc<dyn SmsGateway>>, GatewayError> {
    match cfg.settings()? {
        None => Ok(None),
        Some(s) => from_settings(&s).map(Some),
    }
}

/// Builds the gateway the settings name.
pub fn from_settings(s: &SmsSettings) -> Result<Arc<dyn SmsGateway>, GatewayError> {
    Ok(match s.gateway {
        SmsGatewayKind::Twilio { .. } => Arc::new(TwilioGateway::start(s)?),
        SmsGatewayKind::Webhook { .. } => Arc::new(WebhookGateway::start(s)?),
    })
}

/// A gateway's answer: status, the `Retry-After` hint, and at most
/// [`MAX_RESPONSE_BYTES`] of the body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// The HTTP side both gateways share: a pooled client, the per-request timeout and the
/// bound on requests in flight.
pub(crate) struct Transport {
    client: JsonClient,
    timeout: Duration,
    in_flight: Semaphore,
    limit: usize,
}

impl Transport {
    pub fn new(cfg: &SmsSettings) -> Result<Transport, GatewayError> {
        let client = crate::tls::json_client(&cfg.ca_file)
            .map_err(|e| GatewayError::Setup(format!("sms.ca_file: {e}")))?;
        Ok(Transport::with_limit(
            client,
            cfg.request_timeout,
            MAX_IN_FLIGHT,
        ))
    }

    fn with_limit(client: JsonClient, timeout: Duration, limit: usize) -> Transport {
        Transport {
            client,
            timeout,
            in_flight: Semaphore::new(limit),
            limit,
        }
    }

    /// Sends one request; the timeout covers the whole exchange, waiting for a free slot
    /// and reading the body included. No answer in time or a broken connection is
    /// retryable; a TLS verification failure is not (it will not heal by itself).
    pub async fn post(&self, req: Request<Full<Bytes>>) -> Result<Answer, SmsError> {
        let mut waiting = true;
        let exchange = async {
            let _slot = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| SmsError::Retryable {
                    reason: "gateway shutting down".into(),
                    retry_after: None,
                })?;
            waiting = false;
            let resp = self.client.request(req).await.map_err(transport_error)?;
            let (parts, body) = resp.into_parts();
            let retry_after = crate::retry::retry_after(&parts.headers);
            // A 2xx whose body cannot be read was still accepted: keep what arrived.
            let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok(Answer {
                status: parts.status,
                retry_after,
                body,
            })
        };
        let result = tokio::time::timeout(self.timeout, exchange).await;
        match result {
            Ok(r) => r,
            Err(_) if waiting => Err(SmsError::Retryable {
                reason: format!(
                    "gateway busy: {} requests in flight for {} ms",
                    self.limit,
                    self.timeout.as_millis()
                ),
                retry_after: None,
            }),
            Err(_) => Err(SmsError::Retryable {
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            }),
        }
    }
}

/// Maps a client error: TLS certificate problems are permanent, the rest retryable.
fn transport_error(e: hyper_util::client::legacy::Error) -> SmsError {
    let mut chain = String::new();
    let mut tls: Option<String> = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&err.to_string());
        // io::Error hides its inner error from `source()` (and the TLS connector nests
        // io::Errors); look inside them explicitly.
        let mut candidate: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(c) = candidate {
            if let Some(r) = c.downcast_ref::<rustls::Error>() {
                if matches!(
                    r,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                ) {
                    tls = Some(r.to_string());
                }
            }
            candidate = c
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn std::error::Error + 'static));
        }
        cur = err.source();
    }
    match tls {
        Some(t) => SmsError::Permanent(format!(
            "TLS with the gateway failed: {t} (check sms.endpoint and sms.ca_file)"
        )),
        None => SmsError::Retryable {
            reason: format!("cannot reach the gateway: {chain}"),
            retry_after: None,
        },
    }
}

/// Makes a gateway's error text safe to carry in a reason (logs, `sms.failed` events):
/// runs of 8+ digits (phone numbers) are masked like [`crate::sms::mask_phone`], runs of
/// 6–7 digits (codes) are starred, control characters dropped, and the text cut to
/// 200 characters.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_DETAIL + 8));
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let plus = chars[i] == '+' && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
        if plus || chars[i].is_ascii_digit() {
            let start = i;
            i += usize::from(plus);
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            let digits = i - start - usize::from(plus);
            if digits >= 8 {
                out.push_str(&crate::sms::mask_phone(&run));
            } else if digits >= 6 {
                out.push_str(if plus { "+" } else { "" });
                out.push_str(&"*".repeat(digits));
            } else {
                out.push_str(&run);
            }
        } else {
            if !chars[i].is_control() {
                out.push(chars[i]);
            }
            i += 1;
        }
    }
    if out.chars().count() > MAX_REASON_DETAIL {
        let cut: String = out.chars().take(MAX_REASON_DETAIL).collect();
        return format!("{cut}…");
    }
    out
}

/// `Retryable` for a transient HTTP answer.
pub(crate) fn retryable(
    gateway: &str,
    status: u16,
    detail: &str,
    retry_after: Option<Duration>,
) -> SmsError {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    SmsError::Retryable {
        reason: format!("{gateway} answered HTTP {status}{detail}"),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gateway: &str) -> SmsConfig {
        SmsConfig {
            gateway: gateway.into(),
            endpoint: "http://127.0.0.1:9".into(),
            account_sid: "AC0123".into(),
            auth_token: "secret".into(),
            from: "+15005550006".into(),
            ..SmsConfig::default()
        }
    }

    #[test]
    fn builds_the_configured_gateway() {
        assert!(from_config(&cfg("")).unwrap().is_none());
        assert_eq!(
            from_config(&cfg("twilio")).unwrap().unwrap().name(),
            "twilio"
        );
        assert_eq!(
            from_config(&cfg("webhook")).unwrap().unwrap().name(),
            "webhook"
        );
        let e = from_config(&cfg("pigeon")).err().unwrap().to_string();
        assert!(e.contains("pigeon"), "{e}");
    }

    #[test]
    fn setup_errors_name_the_key() {
        let mut c = cfg("webhook");
        c.endpoint = "not a url".into();
        let e = from_config(&c).err().unwrap().to_string();
        assert!(e.contains("sms.endpoint"), "{e}");
        let mut c = cfg("twilio");
        c.ca_file = "/nonexistent/ca.pem".into();
        let e = from_config(&c).err().unwrap().to_string();
        assert!(e.contains("sms.ca_file"), "{e}");
        let mut c = cfg("twilio");
        c.request_timeout_ms = 0;
        let e = from_config(&c).err().unwrap().to_string();
        assert!(e.contains("request_timeout_ms"), "{e}");
    }

    #[tokio::test]
    async fn in_flight_requests_are_bounded() {
        // A server that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        let t = Transport::with_limit(
            crate::tls::json_client("").unwrap(),
            Duration::from_millis(300),
            1,
        );
        let req = || {
            Request::post(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let reason = |r: Result<Answer, SmsError>| match r {
            Err(SmsError::Retryable { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        {
            // The only slot is taken: the request waits, then gives up without being sent.
            let _taken = t.in_flight.acquire().await.unwrap();
            let r = reason(t.post(req()).await);
            assert!(r.starts_with("gateway busy: 1 requests"), "{r}");
        }
        let r = reason(t.post(req()).await);
        assert!(r.starts_with("no answer within 300 ms"), "{r}");
        // The slot is given back after a timeout.
        assert_eq!(t.in_flight.available_permits(), 1);
        hold.abort();
    }

    #[test]
    fn scrub_masks_numbers_and_codes() {
        let cases = [
            (
                "The 'To' number +393401234567 is not a valid phone number.",
                "The 'To' number +39340****567 is not a valid phone number.",
            ),
            ("code 123456 rejected", "code ****** rejected"),
            ("error 21211 see 2010-04-01", "error 21211 see 2010-04-01"),
            ("393401234567", "39340****567"),
            ("line\nbreak", "linebreak"),
            ("a + b", "a + b"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), want, "{input}");
        }
        let long = scrub(&"x".repeat(1000));
        assert_eq!(long.chars().count(), MAX_REASON_DETAIL + 1);
    }
}
