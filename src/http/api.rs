//! Routes of the HTTP API: translates requests into engine operations and their answers
//! into statuses and JSON. Holds no rules of its own beyond HTTP: auth, body limits,
//! parsing into the typed [`wire`](crate::wire) values.

use super::{json_response, Body};
use crate::challenge::model::OutcomeKind;
use crate::engine::core::DeviceAuth;
use crate::engine::Engine;
use crate::telemetry as t;
use crate::wire::ops::{
    Answer, Authority, ChallengeId, DecisionBody, OfflineBody, OpOutcome, Operation, OtpBody,
    UserHint,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Readiness inputs.
pub trait Readiness: Send + Sync + 'static {
    fn broker_connected(&self) -> bool;
    fn providers(&self) -> serde_json::Value;
    fn any_provider(&self) -> bool;
    /// How backend calls are authenticated: `bearer_token` or `unauthenticated`.
    fn auth(&self) -> &'static str {
        "bearer_token"
    }
    /// Cluster mode: the partitions this instance owns and the instances it knows.
    fn cluster(&self) -> Option<serde_json::Value> {
        None
    }
}

pub struct Api {
    pub engine: Arc<Engine>,
    pub tokens: Vec<String>,
    pub max_body: usize,
    pub max_wait: Duration,
    pub ready: Arc<dyn Readiness>,
}

fn answer(a: Answer) -> Response<Body> {
    let mut r = json_response(a.status, &a.body);
    // A 503 that says when to come back says it in the header too.
    if let Some(secs) = a.body.get("retry_after_seconds").and_then(|v| v.as_u64()) {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
    }
    r
}

/// The `user_id` routing hint of a query string (`?user_id=…`), if any.
fn query_hint(req: &Request<Incoming>) -> Option<UserHint> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|p| p.strip_prefix("user_id="))
        .and_then(|v| urlencoding::decode(v).ok())
        .and_then(|v| UserHint::parse(&v))
}

fn outcome(o: OpOutcome) -> Response<Body> {
    match o {
        // The common answer, serialized once per outcome kind.
        OpOutcome::Decided { outcome } => super::json_bytes_response(200, decided_body(outcome)),
        o => answer(o.answer()),
    }
}

/// The 200 body of a decided operation, `{"outcome": …}` as [`OpOutcome::answer`]
/// writes it, made once per outcome kind.
fn decided_body(kind: OutcomeKind) -> Bytes {
    static BODIES: std::sync::OnceLock<Vec<(OutcomeKind, Bytes)>> = std::sync::OnceLock::new();
    let bodies = BODIES.get_or_init(|| {
        OutcomeKind::ALL
            .iter()
            .map(|&k| {
                let a = OpOutcome::Decided { outcome: k }.answer();
                (
                    k,
                    Bytes::from(serde_json::to_vec(&a.body).unwrap_or_default()),
                )
            })
            .collect()
    });
    bodies
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, b)| b.clone())
        .unwrap_or_default()
}

fn err(status: u16, error: &str, message: &str) -> Response<Body> {
    answer(Answer::error(status, error, message))
}

/// Constant-time comparison so a token cannot be guessed byte by byte from timings.
fn token_ok(tokens: &[String], req: &Request<Incoming>) -> bool {
    use subtle::ConstantTimeEq;
    if tokens.is_empty() {
        return true;
    }
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let mut ok = false;
    for t in tokens {
        ok |= bool::from(t.as_bytes().ct_eq(given.trim().as_bytes()));
    }
    ok
}

/// The `status` label of the statuses the API answers with, as static strings (their
/// metric handles are cached); `None` for any other.
fn status_label(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        413 => "413",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        504 => "504",
        _ => return None,
    })
}

impl Api {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let (route, resp) = self.route(req, &method, &path).await;
        let status = resp.status().as_u16();
        match status_label(status) {
            Some(code) => t::handles::count(t::HTTP_REQUESTS, &["route", "status"], &[route, code], 1),
            None => metrics::counter!(t::HTTP_REQUESTS, "route" => route, "status" => status.to_string())
                .increment(1),
        }
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        method: &Method,
        path: &str,
    ) -> (&'static str, Response<Body>) {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segs.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                ("healthz", json_response(200, &json!({"status": "ok"})))
            }
            (&Method::GET, ["readyz"]) => ("readyz", self.readyz()),
            (&Method::GET, ["openapi.json"]) => ("openapi", super::openapi::response()),
            (m, ["v1", "challenges", id, rest @ ..]) => {
                // An id that breaks the contract's rule names no challenge: 404 before
                // any lookup or forwarding.
                let Some(id) = ChallengeId::parse(id) else {
                    return ("other", outcome(OpOutcome::NotFound));
                };
                match (m, rest) {
                    (&Method::POST, ["decision"]) => ("decision", self.decision(req, &id).await),
                    (&Method::POST, ["otp"]) => {
                        ("otp", self.authed(req, |s, r| s.otp(r, id)).await)
                    }
                    (&Method::POST, ["offline"]) => {
                        ("offline", self.authed(req, |s, r| s.offline(r, id)).await)
                    }
                    (&Method::POST, ["sms"]) => (
                        "sms",
                        self.authed(req, |s, r| s.operate(id, Operation::Sms, query_hint(&r)))
                            .await,
                    ),
                    (&Method::DELETE, []) => (
                        "cancel",
                        self.authed(req, |s, r| s.operate(id, Operation::Cancel, query_hint(&r)))
                            .await,
                    ),
                    (&Method::GET, []) => ("get", self.authed(req, |s, r| s.get(r, id)).await),
                    (_, ["decision"] | ["otp"] | ["sms"] | ["offline"] | []) => (
                        "other",
                        err(405, "method_not_allowed", "method not allowed on this path"),
                    ),
                    _ => ("other", err(404, "not_found", "no such endpoint")),
                }
            }
            (&Method::GET, ["v1", "devices", device_id, "challenges"]) => {
                ("device_challenges", self.device_challenges(&req, device_id))
            }
            (_, ["v1", "devices", _, "challenges"]) => (
                "other",
                err(405, "method_not_allowed", "method not allowed on this path"),
            ),
            _ => ("other", err(404, "not_found", "no such endpoint")),
        }
    }

    async fn authed<'a, F, Fut>(&'a self, req: Request<Incoming>, f: F) -> Response<Body>
    where
        F: FnOnce(&'a Self, Request<Incoming>) -> Fut,
        Fut: std::future::Future<Output = Response<Body>> + 'a,
    {
        if !token_ok(&self.tokens, &req) {
            return err(401, "unauthorized", "missing or invalid bearer token");
        }
        f(self, req).await
    }

    async fn operate(
        &self,
        id: ChallengeId,
        op: Operation,
        user: Option<UserHint>,
    ) -> Response<Body> {
        outcome(
            self.engine
                .operate_hinted(&id, op, Authority::Bearer, user.as_ref())
                .await,
        )
    }

    fn readyz(&self) -> Response<Body> {
        let broker = self.ready.broker_connected();
        let ok = broker && self.ready.any_provider();
        let body = json!({
            "status": if ok { "ready" } else { "not_ready" },
            "amqp": if broker { "connected" } else { "disconnected" },
            "providers": self.ready.providers(),
            "auth": self.ready.auth(),
        });
        let mut body = body;
        if let (Some(c), Some(o)) = (self.ready.cluster(), body.as_object_mut()) {
            o.insert("cluster".into(), c);
        }
        json_response(if ok { 200 } else { 503 }, &body)
    }

    async fn body(&self, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
        let too_large = || {
            err(
                413,
                "body_too_large",
                &format!("request body over {} bytes", self.max_body),
            )
        };
        if let Some(len) = req.headers().get(hyper::header::CONTENT_LENGTH) {
            if len
                .to_str()
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| l > self.max_body)
            {
                return Err(too_large());
            }
        }
        match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(_) => Err(err(400, "bad_request", "could not read the request body")),
        }
    }

    async fn decision(&self, req: Request<Incoming>, id: &ChallengeId) -> Response<Body> {
        // Devices may call this endpoint directly: without a bearer token a decision is
        // only taken from a device that signs its decisions.
        let authority = if token_ok(&self.tokens, &req) {
            Authority::Bearer
        } else {
            Authority::DeviceSignature
        };
        let bytes = match self.body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (op, user) = match serde_json::from_slice::<DecisionBody>(&bytes) {
            Ok(p) => {
                let user = p.user_id.clone();
                match p.into_op() {
                    Ok(op) => (op, user),
                    Err(e) => return err(422, "invalid_body", e),
                }
            }
            Err(e) => {
                return err(
                    422,
                    "invalid_body",
                    &format!(
                    "expected {{\"device_id\", \"decision\", \"signature\"?, \"number\"?, \"report_fraud\"?}}: {e}"
                ),
                )
            }
        };
        outcome(
            self.engine
                .operate_hinted(id, op, authority, user.as_ref())
                .await,
        )
    }

    async fn otp(&self, req: Request<Incoming>, id: ChallengeId) -> Response<Body> {
        let bytes = match self.body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        // The error never repeats what was sent: it may be a code.
        let (code, user) = match serde_json::from_slice::<OtpBody>(&bytes) {
            Ok(p) => (p.code, p.user_id),
            Err(e) => {
                return err(
                    422,
                    "invalid_body",
                    &format!("expected {{\"code\": \"123456\"}}: {e}"),
                )
            }
        };
        let code = match code.into_code() {
            Ok(c) => c,
            Err(e) => return err(422, "invalid_code", e),
        };
        self.operate(id, Operation::Otp { code }, user).await
    }

    async fn offline(&self, req: Request<Incoming>, id: ChallengeId) -> Response<Body> {
        let bytes = match self.body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        // The error never repeats what was sent: it may be a code.
        let (code, user) = match serde_json::from_slice::<OfflineBody>(&bytes) {
            Ok(p) => (p.code, p.user_id),
            Err(e) => {
                return err(
                    422,
                    "invalid_body",
                    &format!("expected {{\"code\": \"12345678\"}}: {e}"),
                )
            }
        };
        let code = match code.into_offline_code() {
            Ok(c) => c,
            Err(e) => return err(422, "invalid_code", e),
        };
        self.operate(id, Operation::Offline { code }, user).await
    }

    /// `GET /v1/devices/{device_id}/challenges`: the bearer token, or the device's
    /// signature over `sca-v1|pending|{device_id}|{X-SCA-Timestamp}`.
    fn device_challenges(&self, req: &Request<Incoming>, device_id: &str) -> Response<Body> {
        let device_id = match urlencoding::decode(device_id) {
            Ok(d) if !d.is_empty() && d.len() <= 64 && !d.chars().any(char::is_control) => d,
            _ => return err(404, "not_found", "no such device"),
        };
        let auth = if !self.tokens.is_empty() && token_ok(&self.tokens, req) {
            DeviceAuth::Bearer
        } else {
            let h = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
            };
            let timestamp = h("x-sca-timestamp")
                .filter(|t| !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<i64>().ok());
            match (timestamp, h("x-sca-signature")) {
                (Some(timestamp), Some(sig)) if !sig.is_empty() && sig.len() <= 200 => {
                    DeviceAuth::Signed {
                        timestamp,
                        signature: sig.to_string(),
                    }
                }
                // No token configured and no signature: open only when the operator said so.
                _ if self.tokens.is_empty() => DeviceAuth::Bearer,
                _ => {
                    return err(
                        401,
                        "unauthorized",
                        "missing or invalid bearer token, or X-SCA-Timestamp and X-SCA-Signature",
                    )
                }
            }
        };
        match self.engine.pending_for_device(&device_id, &auth) {
            Some(list) => json_response(200, &serde_json::to_value(&list).unwrap_or_default()),
            None => err(
                401,
                "unauthorized",
                "X-SCA-Timestamp is more than 60 seconds from the server's clock",
            ),
        }
    }

    async fn get(&self, req: Request<Incoming>, id: ChallengeId) -> Response<Body> {
        let wait = match parse_wait(req.uri().query().unwrap_or(""), self.max_wait) {
            Ok(w) => w,
            Err(e) => return err(422, "invalid_query", &e),
        };
        match self.engine.view_anywhere(&id, wait).await {
            Some(v) => json_response(200, &serde_json::to_value(&v).unwrap_or_default()),
            None => outcome(OpOutcome::NotFound),
        }
    }
}

/// The `?wait=` of a query string: seconds, a finite number in `0..=max`; absent = 0.
pub fn parse_wait(query: &str, max: Duration) -> Result<Duration, String> {
    let mut wait = Duration::ZERO;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some(v) = pair.strip_prefix("wait=") {
            match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 && s <= max.as_secs_f64() => {
                    wait = Duration::from_secs_f64(s);
                }
                _ => {
                    let max = max.as_secs();
                    return Err(format!("wait must be a number of seconds from 0 to {max}"));
                }
            }
        }
    }
    Ok(wait)
}
