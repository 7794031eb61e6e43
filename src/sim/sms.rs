//! SMS gateway simulator: both gateway shapes of CONTRACT §9 on one plain-HTTP server
//! (HTTP/1.1 and h2c), for tests, benchmarks, the demo, and by hand
//! (`sca-dispatch simulate sms`).
//!
//! # Endpoints
//!
//! - `POST /2010-04-01/Accounts/{sid}/Messages.json`: Twilio's Messages API. Checks HTTP
//!   basic auth against the simulator's account sid and auth token (401, Twilio code 20003,
//!   otherwise), the path's sid (404, 20404), and the form fields `To` (E.164, else 400
//!   21211), `From` (21603) and `Body` (21602; longer than 1600 characters: 21617). A taken
//!   message is answered `201` with a Twilio-like message resource (`sid` `SM…`, `status`
//!   `queued`). Error answers carry Twilio's error document (`code`, `message`, `more_info`,
//!   `status`) and, like Twilio, name the full number, so a client's scrubbing is exercised.
//! - `POST /webhook`: the generic webhook. Checks `Authorization: Bearer <token>` (unless the
//!   simulator's webhook token is empty) and the JSON body `{"to","text","reference"}`;
//!   answers `200 {"id":"wh-…","status":"accepted"}`, or `{"error": "…"}` with 400, 401 or
//!   415.
//! - `GET /messages`: the recorded messages as JSON, for looking at a running simulator.
//!
//! # Scripting
//!
//! [`SmsSim::script`] sets how requests for one destination number are answered
//! ([`Behaviour`]): fail N times with a status (503), answer 429 N times with a
//! `Retry-After`, refuse permanently (400; Twilio code 21211), answer after a delay, or
//! stall N requests without answering (the client's timeout fires). Numbers without a
//! script follow [`SmsSim::script_default`] (initially [`Behaviour::Accept`]). Credentials
//! are checked before any script applies.
//!
//! # Recording
//!
//! Every request that passed authentication and validation is recorded as an
//! [`SmsRequest`] (destination, arrival time, the status it was given, or `None` when it
//! stalled); every message taken is recorded as a [`SentSms`] with its text, sender or
//! reference, and the id the simulator gave it. Both lists keep the latest
//! [`SmsSimOptions::max_recorded`] entries. [`SmsSim::wait_for_messages`] waits for a count,
//! [`SmsSim::subscribe`] streams messages as they arrive.
//!
//! # Credentials and configuration
//!
//! [`SmsSimOptions::default`] listens on `127.0.0.1:0` with fixed credentials: account sid
//! `AC0123456789abcdef0123456789abcdef`, auth token `sim-twilio-auth-token`, webhook
//! token `sim-webhook-token`, sender `+15005550006`. [`SmsSim::config`] hands out a ready
//! [`SmsConfig`] for either shape and [`SmsSim::config_toml`] the same as an `[sms]`
//! section; [`run_standalone`] prints both and writes them to `sms-twilio.toml` and
//! `sms-webhook.toml` in its directory.
//!
//! # Bounds
//!
//! Request bodies up to 64 KiB, read within 10 s (413 / 408 otherwise); at most 1024
//! connections served at once; the recorded lists are capped; a stalled request is held
//! for at most an hour, or until the simulator stops.
//!
//! A [`Behaviour::Latency`] longer than the client's timeout behaves like a real gateway
//! that is slow: the message is still taken after the delay (if the connection is still
//! being served), so a retrying client may cause a duplicate. A stalled request is never
//! taken.
//!
//! # Example
//!
//! ```
//! use sca_dispatch::sim::sms::{Behaviour, Shape, SmsSim, SmsSimOptions};
//! use sca_dispatch::sms::{deliver, gateway, SmsMessage};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let sim = SmsSim::start(SmsSimOptions::default()).await?;
//! sim.script("+393401234567", Behaviour::unavailable(1)); // one 503, then accepted
//! let gw = gateway::from_config(&sim.config(Shape::Webhook))?.expect("configured");
//! let msg = SmsMessage {
//!     to: "+393401234567".into(),
//!     text: "Code 123456 to sign in".into(),
//!     reference: "chal-1".into(),
//! };
//! deliver(gw.as_ref(), &msg, Duration::from_secs(10)).await?;
//! let got = sim.wait_for_messages(1, Duration::from_secs(5)).await?;
//! assert_eq!(got[0].reference.as_deref(), Some("chal-1"));
//! assert_eq!(sim.attempts("+393401234567"), 2);
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The simulator holds message texts, which carry one-time codes, in memory, serves them
//! on `GET /messages`, and [`run_standalone`] prints them in full: it is a test tool and
//! must never front real traffic. Phone numbers are masked in what it prints.

use crate::config::SmsConfig;
use crate::sms::mask_phone;
use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request body the simulator reads.
const MAX_BODY: usize = 64 * 1024;
/// Time allowed to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connections served; further ones wait to be accepted.
const MAX_CONNECTIONS: usize = 1024;
/// How long a stalled request is held (the client gives up long before).
const STALL: Duration = Duration::from_secs(3600);
/// Twilio's limit on a message body, in characters.
const TWILIO_MAX_BODY_CHARS: usize = 1600;

/// Which gateway shape a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Twilio,
    Webhook,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Twilio => "twilio",
            Shape::Webhook => "webhook",
        }
    }
}

/// How the simulator answers requests for one destination number. Behaviours with a
/// count apply to that many requests, after which the number is accepted again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Take the message (Twilio 201, webhook 200).
    Accept,
    /// Answer `status` (e.g. 503) to the next `times` requests.
    Fail { times: u32, status: u16 },
    /// Answer 429 with `Retry-After: <whole seconds>` to the next `times` requests.
    RateLimit { times: u32, retry_after: Duration },
    /// Refuse every request permanently: 400, Twilio code 21211 ("invalid 'To' number");
    /// the webhook answers 400 `{"error":"invalid destination …"}`.
    Reject,
    /// Take every message, answering after the delay.
    Latency(Duration),
    /// Hold the next `times` requests without answering (until the client gives up).
    Stall { times: u32 },
}

impl Behaviour {
    /// `Fail { times, status: 503 }`.
    pub fn unavailable(times: u32) -> Behaviour {
        Behaviour::Fail { times, status: 503 }
    }
}

/// One message the simulator took.
#[derive(Debug, Clone)]
pub struct SentSms {
    pub shape: Shape,
    /// The id the simulator answered with (`SM…` for Twilio, `wh-…` for the webhook).
    pub id: String,
    pub to: String,
    /// The full text, code included.
    pub text: String,
    /// Twilio's `From`; `None` for the webhook.
    pub from: Option<String>,
    /// The webhook's `reference` (the challenge id); `None` for Twilio.
    pub reference: Option<String>,
    pub received_at: Instant,
    pub received_at_utc: chrono::DateTime<chrono::Utc>,
}

/// One authenticated, well-formed request and how it was answered.
#[derive(Debug, Clone)]
pub struct SmsRequest {
    pub shape: Shape,
    pub to: String,
    pub at: Instant,
    /// The status answered; `None` when the request was stalled.
    pub status: Option<u16>,
}

/// Simulator settings; [`Default`] gives a loopback port and fixed, documented credentials.
#[derive(Debug, Clone)]
pub struct SmsSimOptions {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Twilio account sid expected in the path and as the basic-auth user.
    pub account_sid: String,
    /// Twilio auth token expected as the basic-auth password.
    pub auth_token: String,
    /// Bearer token the webhook expects; empty = no `Authorization` required.
    pub webhook_token: String,
    /// The `From` put in the configurations the simulator hands out.
    pub from: String,
    /// Messages and requests kept for inspection (the oldest are dropped first).
    pub max_recorded: usize,
}

impl Default for SmsSimOptions {
    fn default() -> Self {
        SmsSimOptions {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: "sim-twilio-auth-token".into(),
            webhook_token: "sim-webhook-token".into(),
            from: "+15005550006".into(),
            max_recorded: 10_000,
        }
    }
}

/// What to do with one request, decided when it arrives.
enum Plan {
    Accept(Option<Duration>),
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    Reject,
    Stall,
}

struct State {
    scripts: HashMap<String, Behaviour>,
    default: Behaviour,
    messages: VecDeque<SentSms>,
    requests: VecDeque<SmsRequest>,
    next_id: u64,
    unauthorized: u64,
}

struct Shared {
    opts: SmsSimOptions,
    state: Mutex<State>,
    /// Messages taken so far (never decreases; recorded lists are bounded).
    total: watch::Sender<u64>,
    feed: broadcast::Sender<SentSms>,
    /// Fails every request while on (the chaos runner).
    fault: Arc<super::fault::FaultSwitch>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (plain pushes): go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Consumes one step of the number's script and records the request.
    fn plan(&self, shape: Shape, to: &str) -> Plan {
        let mut st = self.lock();
        let fault = self.fault.take();
        let behaviour = match fault {
            super::fault::Fault::Off => st
                .scripts
                .get(to)
                .cloned()
                .unwrap_or_else(|| st.default.clone()),
            // The switch leaves the number's script as it is.
            super::fault::Fault::Unavailable => Behaviour::unavailable(2),
            super::fault::Fault::Stall => Behaviour::Stall { times: 2 },
        };
        let from_fault = fault != super::fault::Fault::Off;
        let (plan, next) = match behaviour {
            Behaviour::Accept => (Plan::Accept(None), None),
            Behaviour::Latency(d) => (Plan::Accept(Some(d)), None),
            Behaviour::Reject => (Plan::Reject, None),
            Behaviour::Fail { times: 0, .. }
            | Behaviour::RateLimit { times: 0, .. }
            | Behaviour::Stall { times: 0 } => (Plan::Accept(None), None),
            Behaviour::Fail { times, status } => (
                Plan::Status {
                    status,
                    retry_after: None,
                },
                Some(Behaviour::Fail {
                    times: times - 1,
                    status,
                }),
            ),
            Behaviour::RateLimit { times, retry_after } => (
                Plan::Status {
                    status: 429,
                    retry_after: Some(retry_after.as_secs()),
                },
                Some(Behaviour::RateLimit {
                    times: times - 1,
                    retry_after,
                }),
            ),
            Behaviour::Stall { times } => {
                (Plan::Stall, Some(Behaviour::Stall { times: times - 1 }))
            }
        };
        if let Some(next) = next.filter(|_| !from_fault) {
            // The remaining count belongs to this number, also when it came from the
            // default: each number gets its own count.
            st.scripts.insert(to.to_string(), next);
        }
        let status = match &plan {
            Plan::Accept(_) => Some(match shape {
                Shape::Twilio => 201,
                Shape::Webhook => 200,
            }),
            Plan::Status { status, .. } => Some(*status),
            Plan::Reject => Some(400),
            Plan::Stall => None,
        };
        let max = self.opts.max_recorded.max(1);
        if st.requests.len() >= max {
            st.requests.pop_front();
        }
        st.requests.push_back(SmsRequest {
            shape,
            to: to.to_string(),
            at: Instant::now(),
            status,
        });
        plan
    }

    fn record(
        &self,
        shape: Shape,
        to: &str,
        text: &str,
        from: Option<&str>,
        reference: Option<&str>,
    ) -> SentSms {
        let sms = {
            let mut st = self.lock();
            st.next_id += 1;
            let id = match shape {
                Shape::Twilio => format!("SM{}", hex::encode(rand::random::<[u8; 16]>())),
                Shape::Webhook => format!("wh-{}", st.next_id),
            };
            let sms = SentSms {
                shape,
                id,
                to: to.to_string(),
                text: text.to_string(),
                from: from.map(str::to_string),
                reference: reference.map(str::to_string),
                received_at: Instant::now(),
                received_at_utc: chrono::Utc::now(),
            };
            if st.messages.len() >= self.opts.max_recorded.max(1) {
                st.messages.pop_front();
            }
            st.messages.push_back(sms.clone());
            sms
        };
        self.total.send_modify(|t| *t += 1);
        // No subscriber is fine.
        let _ = self.feed.send(sms.clone());
        sms
    }
}

/// A running SMS gateway simulator. Dropping it stops the server.
pub struct SmsSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; `None` once shut down.
    task: Option<JoinHandle<()>>,
}

impl Drop for SmsSim {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl SmsSim {
    /// Binds and starts serving.
    pub async fn start(opts: SmsSimOptions) -> anyhow::Result<SmsSim> {
        let listener = TcpListener::bind(opts.addr)
            .await
            .with_context(|| format!("SMS simulator: cannot listen on {}", opts.addr))?;
        let addr = listener.local_addr()?;
        let (total, _) = watch::channel(0);
        let (feed, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                scripts: HashMap::new(),
                default: Behaviour::Accept,
                messages: VecDeque::new(),
                requests: VecDeque::new(),
                next_id: 0,
                unauthorized: 0,
            }),
            opts,
            total,
            feed,
            fault: Arc::default(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(SmsSim {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, the Twilio shape's `sms.endpoint` (an unspecified listen
    /// address is given as loopback).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// `http://host:port/webhook`, the webhook shape's `sms.endpoint`.
    pub fn webhook_url(&self) -> String {
        format!("{}/webhook", self.base_url())
    }

    pub fn account_sid(&self) -> &str {
        &self.shared.opts.account_sid
    }
    pub fn auth_token(&self) -> &str {
        &self.shared.opts.auth_token
    }
    pub fn webhook_token(&self) -> &str {
        &self.shared.opts.webhook_token
    }

    /// A ready `[sms]` configuration for one shape, pointing at this simulator (abuse
    /// limits and the OTP key at their defaults).
    pub fn config(&self, shape: Shape) -> SmsConfig {
        let o = &self.shared.opts;
        match shape {
            Shape::Twilio => SmsConfig {
                gateway: "twilio".into(),
                endpoint: self.base_url(),
                account_sid: o.account_sid.clone(),
                auth_token: o.auth_token.clone(),
                from: o.from.clone(),
                ..SmsConfig::default()
            },
            Shape::Webhook => SmsConfig {
                gateway: "webhook".into(),
                endpoint: self.webhook_url(),
                auth_token: o.webhook_token.clone(),
                ..SmsConfig::default()
            },
        }
    }

    /// The `[sms]` TOML section for one shape.
    pub fn config_toml(&self, shape: Shape) -> String {
        let c = self.config(shape);
        let mut s = format!(
            "[sms]\ngateway = {:?}\nendpoint = {:?}\n",
            c.gateway, c.endpoint
        );
        if shape == Shape::Twilio {
            s.push_str(&format!(
                "account_sid = {:?}\nfrom = {:?}\n",
                c.account_sid, c.from
            ));
        }
        s.push_str(&format!("auth_token = {:?}\n", c.auth_token));
        s
    }

    /// Sets how requests for `phone` are answered (replacing its previous script).
    pub fn script(&self, phone: &str, behaviour: Behaviour) {
        self.shared
            .lock()
            .scripts
            .insert(phone.to_string(), behaviour);
    }

    /// Sets how numbers without a script are answered. A counting behaviour here applies
    /// its count to each number separately.
    pub fn script_default(&self, behaviour: Behaviour) {
        self.shared.lock().default = behaviour;
    }

    /// Forgets every per-number script.
    pub fn clear_scripts(&self) {
        self.shared.lock().scripts.clear();
    }

    /// The messages taken, oldest first.
    pub fn messages(&self) -> Vec<SentSms> {
        self.shared.lock().messages.iter().cloned().collect()
    }

    /// The authenticated, well-formed requests, oldest first.
    pub fn requests(&self) -> Vec<SmsRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Requests seen for one number.
    pub fn attempts(&self, phone: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.to == phone)
            .count()
    }

    /// Requests refused for missing or wrong credentials (not in [`SmsSim::requests`]).
    pub fn unauthorized_requests(&self) -> u64 {
        self.shared.lock().unauthorized
    }

    /// Messages taken since start (not bounded by `max_recorded`).
    pub fn total_messages(&self) -> u64 {
        *self.shared.total.borrow()
    }

    /// The switch that fails every request while on (503, or no answer); scripts per
    /// number are left as they are.
    pub fn fault(&self) -> &super::fault::FaultSwitch {
        &self.shared.fault
    }

    /// Every message taken from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SentSms> {
        self.shared.feed.subscribe()
    }

    /// Waits until at least `n` messages were taken since start, then returns the
    /// recorded ones; fails after `timeout` naming how many arrived.
    pub async fn wait_for_messages(
        &self,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SentSms>> {
        let mut rx = self.shared.total.subscribe();
        let arrived = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|t| *t >= n)).await,
            Ok(Ok(_))
        );
        if !arrived {
            anyhow::bail!(
                "SMS simulator: {} of {n} messages arrived within {timeout:?}",
                self.total_messages()
            );
        }
        Ok(self.messages())
    }

    /// Stops the server and closes every connection.
    pub async fn shutdown(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            // Resolves once the loop and its connection set are dropped: the port is free.
            let _ = t.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut conns = JoinSet::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("SMS simulator: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn twilio_error(status: u16, code: u32, message: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        serde_json::json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/webhook" {
        if method != Method::POST {
            return Ok(json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "use POST"}),
            ));
        }
        return Ok(webhook(&shared, req).await);
    }
    if let Some(sid) = path
        .strip_prefix("/2010-04-01/Accounts/")
        .and_then(|p| p.strip_suffix("/Messages.json"))
    {
        if method != Method::POST {
            return Ok(twilio_error(405, 20004, "Method not allowed"));
        }
        let sid = urlencoding::decode(sid)
            .map(|s| s.into_owned())
            .unwrap_or_default();
        return Ok(twilio(&shared, &sid, req).await);
    }
    if path == "/messages" && method == Method::GET {
        let list: Vec<serde_json::Value> = shared
            .lock()
            .messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "gateway": m.shape.as_str(),
                    "id": m.id,
                    "to": m.to,
                    "text": m.text,
                    "from": m.from,
                    "reference": m.reference,
                    "received_at": m.received_at_utc.to_rfc3339(),
                })
            })
            .collect();
        return Ok(json(StatusCode::OK, serde_json::Value::Array(list)));
    }
    Ok(json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"error": format!("no route for {method} {path}")}),
    ))
}

/// Reads at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<(HeaderMap, Bytes), StatusCode> {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok((parts.headers, b.to_bytes())),
        Ok(Err(_)) => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (user, pass) = s.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

async fn twilio(shared: &Shared, path_sid: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (headers, body) = match read_body(req).await {
        Ok(x) => x,
        Err(status) => return twilio_error(status.as_u16(), 20001, "Request body not read"),
    };
    let o = &shared.opts;
    match basic_credentials(&headers) {
        Some((user, pass)) if user == o.account_sid && pass == o.auth_token => {}
        _ => {
            shared.lock().unauthorized += 1;
            let mut r = twilio_error(401, 20003, "Authenticate");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
            return r;
        }
    }
    if path_sid != o.account_sid {
        return twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{path_sid}/Messages.json was not found"),
        );
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        fields.insert(k.into_owned(), v.into_owned());
    }
    let field = |k: &str| fields.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(to) = field("To") else {
        return twilio_error(400, 21604, "A 'To' phone number is required.");
    };
    let Some(from) = field("From") else {
        return twilio_error(400, 21603, "A 'From' phone number is required.");
    };
    let Some(text) = field("Body") else {
        return twilio_error(400, 21602, "Message body is required.");
    };
    if !crate::challenge::model::valid_e164(to) {
        return twilio_error(400, 21211, &format!("Invalid 'To' Phone Number: {to}"));
    }
    if text.chars().count() > TWILIO_MAX_BODY_CHARS {
        return twilio_error(
            400,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    match shared.plan(Shape::Twilio, to) {
        Plan::Accept(delay) => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let sms = shared.record(Shape::Twilio, to, text, Some(from), None);
            let now = sms.received_at_utc.to_rfc2822();
            json(
                StatusCode::CREATED,
                serde_json::json!({
                    "sid": sms.id,
                    "account_sid": o.account_sid,
                    "to": to,
                    "from": from,
                    "body": text,
                    "status": "queued",
                    "direction": "outbound-api",
                    "num_segments": "1",
                    "api_version": "2010-04-01",
                    "date_created": now,
                    "date_updated": now,
                    "error_code": null,
                    "error_message": null,
                    "uri": format!("/2010-04-01/Accounts/{}/Messages/{}.json", o.account_sid, sms.id),
                }),
            )
        }
        Plan::Status {
            status,
            retry_after,
        } => {
            let (code, message) = match status {
                429 => (20429, "Too Many Requests"),
                500 => (20500, "Internal Server Error"),
                _ => (20503, "Service Unavailable"),
            };
            let mut r = twilio_error(status, code, message);
            if let Some(secs) = retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            r
        }
        Plan::Reject => twilio_error(
            400,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        ),
        Plan::Stall => {
            tokio::time::sleep(STALL).await;
            twilio_error(504, 20504, "Stalled by script")
        }
    }
}

async fn webhook(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let err = |status: StatusCode, msg: String| json(status, serde_json::json!({ "error": msg }));
    let (headers, body) = match read_body(req).await {
        Ok(x) => x,
        Err(status) => return err(status, "request body not read".into()),
    };
    let token = &shared.opts.webhook_token;
    if !token.is_empty() {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == token);
        if !ok {
            shared.lock().unauthorized += 1;
            return err(StatusCode::UNAUTHORIZED, "unauthorized".into());
        }
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/json".into(),
        );
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let mut fields = [("to", ""), ("text", ""), ("reference", "")];
    for (k, slot) in fields.iter_mut() {
        match v.get(*k).and_then(|x| x.as_str()).filter(|s| !s.is_empty()) {
            Some(s) => *slot = s,
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!("field `{k}` is required (a non-empty string)"),
                )
            }
        }
    }
    let [(_, to), (_, text), (_, reference)] = fields;
    if !crate::challenge::model::valid_e164(to) {
        return err(StatusCode::BAD_REQUEST, format!("invalid destination {to}"));
    }
    match shared.plan(Shape::Webhook, to) {
        Plan::Accept(delay) => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let sms = shared.record(Shape::Webhook, to, text, None, Some(reference));
            json(
                StatusCode::OK,
                serde_json::json!({"id": sms.id, "status": "accepted"}),
            )
        }
        Plan::Status {
            status,
            retry_after,
        } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut r = err(code, format!("scripted {status}"));
            if let Some(secs) = retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            r
        }
        Plan::Reject => err(StatusCode::BAD_REQUEST, format!("invalid destination {to}")),
        Plan::Stall => {
            tokio::time::sleep(STALL).await;
            err(StatusCode::GATEWAY_TIMEOUT, "stalled by script".into())
        }
    }
}

/// Runs the simulator until Ctrl-C: prints its address and the `[sms]` configuration for
/// both gateway shapes (also written to `dir/sms-twilio.toml` and `dir/sms-webhook.toml`),
/// then one line per message taken, number masked and text in full.
pub async fn run_standalone(addr: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    let stop = async {
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")
    };
    run_until(addr, dir, stop, std::io::stdout()).await?;
    Ok(())
}

/// [`run_standalone`] with the stop signal and the output chosen by the caller; returns
/// the number of messages taken. The configuration files are complete when they appear
/// (written aside, then renamed).
pub async fn run_until<F, W>(
    addr: SocketAddr,
    dir: PathBuf,
    stop: F,
    mut out: W,
) -> anyhow::Result<u64>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
    W: std::io::Write,
{
    let sim = SmsSim::start(SmsSimOptions {
        addr,
        ..SmsSimOptions::default()
    })
    .await?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut feed = sim.subscribe();
    let base = sim.base_url();
    writeln!(
        out,
        "SMS gateway simulator on {base} (plain HTTP; HTTP/1.1 and h2c)\n  \
         twilio:  POST {base}/2010-04-01/Accounts/{}/Messages.json  (basic auth)\n  \
         webhook: POST {}  (bearer token)\n  \
         list:    GET  {base}/messages",
        sim.account_sid(),
        sim.webhook_url()
    )?;
    for shape in [Shape::Twilio, Shape::Webhook] {
        let path = dir.join(format!("sms-{}.toml", shape.as_str()));
        let tmp = dir.join(format!(".sms-{}.toml.tmp", shape.as_str()));
        let toml = sim.config_toml(shape);
        std::fs::write(&tmp, &toml)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(
            out,
            "\n# {} shape (written to {})\n{toml}",
            shape.as_str(),
            path.display()
        )?;
    }
    writeln!(
        out,
        "Messages are printed below with the number masked and the text in full: this is a\n\
         test tool and the text carries the one-time code. Never point real traffic here.\n\
         Ctrl-C stops."
    )?;
    out.flush()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => {
                r?;
                // Print what was taken before the stop (it is in the feed already:
                // a message is published before its HTTP answer goes out).
                while let Ok(m) = feed.try_recv() {
                    print_message(&mut out, &m)?;
                }
                break;
            }
            m = feed.recv() => match m {
                Ok(m) => print_message(&mut out, &m)?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    writeln!(out, "({n} messages not printed: output too slow)")?
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        out.flush()?;
    }
    let total = sim.total_messages();
    writeln!(out, "SMS simulator stopped after {total} messages")?;
    sim.shutdown().await;
    Ok(total)
}

/// One line per message: time, shape, masked number, reference or sid, full text.
fn print_message<W: std::io::Write>(out: &mut W, m: &SentSms) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {:<7} {} {} {:?}",
        m.received_at_utc.format("%H:%M:%S%.3f"),
        m.shape.as_str(),
        mask_phone(&m.to),
        m.reference
            .as_deref()
            .map(|r| format!("ref={r}"))
            .unwrap_or_else(|| format!("sid={}", m.id)),
        m.text
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_recorded: usize) -> Shared {
        let (total, _) = watch::channel(0);
        let (feed, _) = broadcast::channel(16);
        Shared {
            opts: SmsSimOptions {
                max_recorded,
                ..SmsSimOptions::default()
            },
            state: Mutex::new(State {
                scripts: HashMap::new(),
                default: Behaviour::Accept,
                messages: VecDeque::new(),
                requests: VecDeque::new(),
                next_id: 0,
                unauthorized: 0,
            }),
            total,
            feed,
            fault: Arc::default(),
        }
    }

    /// The statuses the next `n` requests for `to` get.
    fn run(s: &Shared, shape: Shape, to: &str, n: usize) -> Vec<Option<u16>> {
        (0..n)
            .map(|_| match s.plan(shape, to) {
                Plan::Accept(_) => Some(if shape == Shape::Twilio { 201 } else { 200 }),
                Plan::Status { status, .. } => Some(status),
                Plan::Reject => Some(400),
                Plan::Stall => None,
            })
            .collect()
    }

    #[test]
    fn scripts_count_down_per_number() {
        let s = shared(100);
        s.lock()
            .scripts
            .insert("+1".into(), Behaviour::unavailable(2));
        assert_eq!(
            run(&s, Shape::Twilio, "+1", 4),
            [Some(503), Some(503), Some(201), Some(201)]
        );
        s.lock().scripts.insert(
            "+1".into(),
            Behaviour::RateLimit {
                times: 1,
                retry_after: Duration::from_secs(7),
            },
        );
        assert!(matches!(
            s.plan(Shape::Webhook, "+1"),
            Plan::Status {
                status: 429,
                retry_after: Some(7)
            }
        ));
        s.lock()
            .scripts
            .insert("+1".into(), Behaviour::Stall { times: 1 });
        assert_eq!(run(&s, Shape::Webhook, "+1", 2), [None, Some(200)]);
        s.lock().scripts.insert("+1".into(), Behaviour::Reject);
        assert_eq!(run(&s, Shape::Twilio, "+1", 3), [Some(400); 3]);
        // Other numbers were never affected.
        assert_eq!(run(&s, Shape::Twilio, "+2", 1), [Some(201)]);
    }

    #[test]
    fn a_counting_default_counts_for_each_number() {
        let s = shared(100);
        s.lock().default = Behaviour::unavailable(1);
        assert_eq!(run(&s, Shape::Twilio, "+1", 2), [Some(503), Some(201)]);
        assert_eq!(run(&s, Shape::Twilio, "+2", 2), [Some(503), Some(201)]);
    }

    #[test]
    fn recordings_are_bounded_but_the_total_is_not() {
        let s = shared(3);
        for i in 0..5 {
            let to = format!("+3934000000{i}");
            let _ = s.plan(Shape::Webhook, &to);
            s.record(Shape::Webhook, &to, "t", None, Some("r"));
        }
        let st = s.lock();
        assert_eq!(st.messages.len(), 3);
        assert_eq!(st.requests.len(), 3);
        assert_eq!(st.messages[0].to, "+39340000002");
        drop(st);
        assert_eq!(*s.total.borrow(), 5);
    }

    #[tokio::test]
    async fn urls_never_name_an_unspecified_address() {
        let sim = SmsSim::start(SmsSimOptions {
            addr: "0.0.0.0:0".parse().unwrap(),
            ..SmsSimOptions::default()
        })
        .await
        .unwrap();
        let port = sim.addr().port();
        assert_eq!(sim.base_url(), format!("http://127.0.0.1:{port}"));
        assert_eq!(
            sim.webhook_url(),
            format!("http://127.0.0.1:{port}/webhook")
        );
        let toml = sim.config_toml(Shape::Webhook);
        assert!(toml.contains("gateway = \"webhook\""), "{toml}");
        assert!(!toml.contains("account_sid"), "{toml}");
        sim.shutdown().await;
    }
}
