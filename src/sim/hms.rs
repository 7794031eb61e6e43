//! Huawei Push Kit simulator: the OAuth 2.0 token endpoint (`POST /oauth2/v3/token`,
//! client credentials) and the v1 send API (`POST /v1/{app_id}/messages:send`), over
//! plain HTTP (HTTP/1.1 and h2c) or, with [`HmsSimOptions::tls`], HTTPS with a CA it
//! generates (ALPN `h2` and `http/1.1`).
//!
//! It has one app (an id and a random secret, written to a file for
//! `hms.app_secret_file`); the token endpoint checks the client id and secret and issues
//! access tokens with a configurable (short, for tests) lifetime. `messages:send` checks
//! the bearer token (401 `80200003` for an expired or unknown one, `80200001` without
//! one) and the body the way Push Kit does — known fields only, `message.data` a string of
//! at most 4096 bytes, 1–1000 tokens (`80300010`), `android.urgency`, `android.ttl` syntax
//! and range, the integer `collapse_key` — and answers with Push Kit's JSON
//! `{"code","msg","requestId"}`: `80000000`, `80100000` with the illegal tokens,
//! `80300007`, and the scripted failures. Behaviour is scriptable per push token (invalid,
//! no permission, system error / flow control / 429 N times with `Retry-After`, refused
//! access token N times, added latency, stall), and every request is recorded.
//!
//! Run alone with [`run_standalone`]; tokens starting with `sim-invalid`, `sim-stall` or
//! `sim-slow` then behave accordingly without scripting.

use crate::push::hms::config::HmsConfig;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::RngCore;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Requests bigger than this are refused.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Push Kit's limit on the message body without the tokens.
const MAX_DATA_BYTES: usize = 4096;
/// Push Kit's limit on tokens per request.
const MAX_TOKENS: usize = 1000;
/// Push Kit's longest TTL: 15 days.
const MAX_TTL_S: u64 = 15 * 24 * 3600;

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct HmsSimOptions {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub addr: SocketAddr,
    /// The app id (AppGallery's are digits).
    pub app_id: String,
    /// Lifetime of the access tokens it issues (Huawei's is one hour).
    pub token_lifetime: Duration,
    /// Added to every `messages:send` answer.
    pub latency: Duration,
    /// Requests kept for [`HmsSim::messages`]; later ones are counted, not kept.
    pub max_recorded: usize,
    /// Serve HTTPS with a certificate from a CA generated at start ([`HmsSim::ca_pem`]).
    pub tls: bool,
}

impl Default for HmsSimOptions {
    fn default() -> Self {
        HmsSimOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            app_id: "100000001".into(),
            token_lifetime: Duration::from_secs(3600),
            latency: Duration::ZERO,
            max_recorded: 100_000,
            tls: false,
        }
    }
}

/// What the simulator does with messages for one push token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept (the default).
    Ok,
    /// The token is invalid (uninstalled app, another app's token), every time:
    /// `80300007` when every token of the request is, else `80100000` listing it.
    Invalid,
    /// 403 `80300002` (the app may not send), every time.
    NoPermission,
    /// 500 `81000001` (system error) `times` times, then accept.
    SystemError { times: u32 },
    /// 503 (flow control), with `Retry-After` when given, `times` times, then accept.
    FlowControl {
        retry_after_s: Option<u64>,
        times: u32,
    },
    /// 429, with `Retry-After` when given, `times` times, then accept.
    TooManyRequests {
        retry_after_s: Option<u64>,
        times: u32,
    },
    /// 401 `80200003` (as if the access token had expired) `times` times, then accept.
    AuthExpired { times: u32 },
    /// Accept after this delay.
    Latency(Duration),
    /// Never answer (until shutdown).
    Stall,
}

/// One `messages:send` request the simulator read.
#[derive(Debug, Clone)]
pub struct RecordedMessage {
    pub app_id: String,
    /// `message.token`.
    pub tokens: Vec<String>,
    /// The whole request body.
    pub body: Value,
    /// `message.data` parsed as JSON (`Value::String` when it is not JSON).
    pub data: Value,
    /// The HTTP status it answered with.
    pub status: u16,
    /// The Push Kit result code it answered with.
    pub code: String,
    /// HTTP/1.1 or HTTP/2.
    pub version: http::Version,
    pub received_at: Instant,
}

impl RecordedMessage {
    /// The first (here: the only) token.
    pub fn token(&self) -> &str {
        self.tokens.first().map(String::as_str).unwrap_or("")
    }
    /// `message.android`.
    pub fn android(&self) -> &Value {
        &self.body["message"]["android"]
    }
    /// Answered `80000000` or `80100000`.
    pub fn accepted(&self) -> bool {
        self.code == "80000000" || self.code == "80100000"
    }
}

struct State {
    app_id: String,
    app_secret: String,
    opts: HmsSimOptions,
    /// Access token → its expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    scripts: Mutex<HashMap<String, Behaviour>>,
    recorded: Mutex<Vec<RecordedMessage>>,
    mints: AtomicU64,
    token_requests: AtomicU64,
    send_requests: AtomicU64,
    next_id: AtomicU64,
    delivered: watch::Sender<usize>,
    feed: tokio::sync::broadcast::Sender<RecordedMessage>,
    shutdown: watch::Receiver<bool>,
}

/// A running Push Kit simulator; dropping it stops it.
pub struct HmsSim {
    state: Arc<State>,
    addr: SocketAddr,
    endpoint: String,
    ca_pem: Option<String>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HmsSim {
    /// Binds and starts serving.
    pub async fn start(opts: HmsSimOptions) -> anyhow::Result<HmsSim> {
        let listener = TcpListener::bind(opts.addr).await?;
        let addr = listener.local_addr()?;
        // Bound to every interface: advertise loopback, which the certificate names.
        let host: IpAddr = if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let advertised = SocketAddr::new(host, addr.port());
        let (ca_pem, tls) = if opts.tls {
            let (ca, acceptor) = make_tls(host)?;
            (Some(ca), Some(acceptor))
        } else {
            (None, None)
        };
        let scheme = if opts.tls { "https" } else { "http" };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State {
            app_id: opts.app_id.clone(),
            app_secret: random_hex(32),
            opts,
            tokens: Mutex::new(HashMap::new()),
            scripts: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Vec::new()),
            mints: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            send_requests: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            delivered: watch::channel(0usize).0,
            feed: tokio::sync::broadcast::channel(1 << 16).0,
            shutdown: shutdown_rx.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone(), tls, shutdown_rx));
        Ok(HmsSim {
            state,
            addr,
            endpoint: format!("{scheme}://{advertised}"),
            ca_pem,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `hms.endpoint`: `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The value for `hms.token_endpoint`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/v3/token", self.endpoint)
    }

    pub fn app_id(&self) -> &str {
        &self.state.app_id
    }

    /// The app secret the token endpoint expects.
    pub fn app_secret(&self) -> &str {
        &self.state.app_secret
    }

    /// With TLS: the PEM of the CA that signed the simulator's certificate (`hms.ca_file`).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Writes the app secret (mode 0600) and, with TLS, the CA into `dir`, and returns an
    /// `[hms]` configuration using them.
    pub fn write_config_files(&self, dir: &Path) -> std::io::Result<HmsConfig> {
        let secret = dir.join("hms-app-secret");
        std::fs::write(&secret, format!("{}\n", self.state.app_secret))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        }
        let mut cfg = self.hms_config(&secret);
        if let Some(ca) = &self.ca_pem {
            let ca_file = dir.join("hms-sim-ca.pem");
            std::fs::write(&ca_file, ca)?;
            cfg.ca_file = ca_file.display().to_string();
        }
        Ok(cfg)
    }

    /// An `[hms]` configuration pointing at this simulator.
    pub fn hms_config(&self, app_secret_file: &Path) -> HmsConfig {
        HmsConfig {
            endpoint: self.endpoint(),
            token_endpoint: self.token_endpoint(),
            app_id: self.state.app_id.clone(),
            app_secret_file: app_secret_file.display().to_string(),
            ..HmsConfig::default()
        }
    }

    /// Sets what happens to messages for `push_token` from now on.
    pub fn script(&self, push_token: &str, behaviour: Behaviour) {
        lock(&self.state.scripts).insert(push_token.to_string(), behaviour);
    }

    /// Every `messages:send` request read so far (accepted or not), oldest first.
    pub fn messages(&self) -> Vec<RecordedMessage> {
        lock(&self.state.recorded).clone()
    }

    /// The accepted ones (`80000000` or `80100000`).
    pub fn delivered(&self) -> Vec<RecordedMessage> {
        lock(&self.state.recorded)
            .iter()
            .filter(|m| m.accepted())
            .cloned()
            .collect()
    }

    /// Every request from now on, as it is answered (a lagging receiver loses the oldest).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RecordedMessage> {
        self.state.feed.subscribe()
    }

    /// Requests accepted so far (counted even past `max_recorded`).
    pub fn delivered_count(&self) -> usize {
        *self.state.delivered.borrow()
    }

    /// Access tokens issued through the token endpoint.
    pub fn token_mints(&self) -> u64 {
        self.state.mints.load(Ordering::SeqCst)
    }

    /// Requests to the token endpoint, whatever the answer.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// `messages:send` requests received, whatever the answer.
    pub fn send_requests(&self) -> u64 {
        self.state.send_requests.load(Ordering::SeqCst)
    }

    /// Forgets every access token issued so far: the next sends get 401 `80200003`.
    pub fn revoke_access_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Issues an access token directly, without the OAuth exchange (not counted as a
    /// mint). For benchmarks that drive the API with a bare client.
    pub fn issue_access_token(&self) -> String {
        issue_token(&self.state)
    }

    /// Waits until at least `n` requests were accepted; `false` on timeout.
    pub async fn wait_for_delivered(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.state.delivered.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops serving and waits for the listener to close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HmsSim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn issue_token(state: &State) -> String {
    // Huawei's access tokens are base64-ish text; this one has the same alphabet.
    let token = format!("DQEBA{}", random_hex(32));
    let mut tokens = lock(&state.tokens);
    let now = Instant::now();
    // Keep the table bounded: expired tokens are dropped whenever a new one is issued.
    tokens.retain(|_, exp| *exp > now);
    tokens.insert(token.clone(), now + state.opts.token_lifetime);
    token
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "hms sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let conn_shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(stream, state, conn_shutdown).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve(stream, state, conn_shutdown).await;
                    }
                }
            }
        });
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (by ALPN over TLS, by preface in clear).
async fn serve<I>(io: I, state: Arc<State>, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = shutdown.changed() => {}
    }
}

/// A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it; returns
/// the CA in PEM (for `hms.ca_file`) and the server's TLS configuration offering h2.
fn make_tls(host: IpAddr) -> anyhow::Result<(String, tokio_rustls::TlsAcceptor)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sca-dispatch Push Kit simulator CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !host.is_loopback() {
        names.push(host.to_string());
    }
    let mut leaf_params = CertificateParams::new(names)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "push kit simulator");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
}

fn json_response(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    resp
}

/// Push Kit's answer: `{"code","msg","requestId"}`.
fn push_answer(state: &State, status: StatusCode, code: &str, msg: &str) -> Response<Full<Bytes>> {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    json_response(
        status,
        json!({"code": code, "msg": msg, "requestId": format!("{:013}{id:06}", 1_700_000_000_000u64)}),
    )
}

/// Huawei's OAuth error body.
fn oauth_error(
    status: StatusCode,
    error: u32,
    sub_error: u32,
    description: &str,
) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({"error": error, "sub_error": sub_error, "error_description": description}),
    )
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/oauth2/v3/token" {
        if req.method() != Method::POST {
            return oauth_error(StatusCode::METHOD_NOT_ALLOWED, 1102, 20001, "use POST");
        }
        return token_endpoint(&state, req).await;
    }
    if let Some(app) = path
        .strip_prefix("/v1/")
        .and_then(|p| p.strip_suffix("/messages:send"))
    {
        if req.method() != Method::POST {
            return push_answer(
                &state,
                StatusCode::METHOD_NOT_ALLOWED,
                "80100001",
                "method not allowed",
            );
        }
        let app = app.to_string();
        return send_endpoint(&state, app, req).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(
        b"<html><body><h1>404 Not Found</h1></body></html>",
    )));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ()> {
    Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| ())
}

async fn token_endpoint(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(body) = read_body(req).await else {
        return oauth_error(StatusCode::PAYLOAD_TOO_LARGE, 1102, 20001, "body too large");
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            1102,
            20001,
            "unsupported grant_type: expected client_credentials",
        );
    }
    let (Some(id), Some(secret)) = (form.get("client_id"), form.get("client_secret")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            1102,
            20001,
            "missing required parameter: client_id or client_secret",
        );
    };
    if id != &state.app_id {
        return oauth_error(StatusCode::BAD_REQUEST, 1101, 20404, "client_id not found");
    }
    if secret != &state.app_secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            1101,
            20002,
            "client_secret is invalid",
        );
    }
    let token = issue_token(state);
    state.mints.fetch_add(1, Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        json!({
            "access_token": token,
            "expires_in": state.opts.token_lifetime.as_secs().max(1),
            "token_type": "Bearer"
        }),
    )
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string())
}

/// A Push Kit refusal of the request body: HTTP status, code, message.
type Refusal = (StatusCode, &'static str, String);

/// `ttl` as Push Kit takes it: seconds, optionally fractional, optionally `s`/`S`.
fn parse_ttl(s: &str) -> Option<f64> {
    let num = s.strip_suffix(['s', 'S']).unwrap_or(s);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let ok = !int.is_empty()
        && int.len() <= 12
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !num.ends_with('.');
    if ok {
        num.parse().ok()
    } else {
        None
    }
}

/// Checks a `messages:send` body; on success returns the tokens and the parsed data.
fn check_message(body: &[u8]) -> Result<(Vec<String>, Value, Value), Refusal> {
    let bad = |code: &'static str, msg: &str| (StatusCode::BAD_REQUEST, code, msg.to_string());
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad("80100003", &format!("Incorrect message structure: {e}")))?;
    let top = v
        .as_object()
        .ok_or_else(|| bad("80100003", "Incorrect message structure"))?;
    for k in top.keys() {
        if !["validate_only", "message", "review"].contains(&k.as_str()) {
            return Err(bad(
                "80100003",
                &format!("Incorrect message structure: unknown field {k}"),
            ));
        }
    }
    if top.get("validate_only").is_some_and(|b| !b.is_boolean()) {
        return Err(bad("80100001", "validate_only must be a boolean"));
    }
    let msg: &Map<String, Value> =
        top.get("message")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(
                    "80100003",
                    "Incorrect message structure: message is required",
                )
            })?;
    const FIELDS: &[&str] = &[
        "data",
        "notification",
        "android",
        "apns",
        "webpush",
        "token",
        "topic",
        "condition",
    ];
    for k in msg.keys() {
        if !FIELDS.contains(&k.as_str()) {
            return Err(bad(
                "80100003",
                &format!("Incorrect message structure: unknown field message.{k}"),
            ));
        }
    }
    let tokens: Vec<String> = match msg.get("token") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_TOKENS => a
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                bad(
                    "80100003",
                    "Incorrect message structure: tokens must be strings",
                )
            })?,
        _ => {
            return Err(bad(
                "80300010",
                "The number of tokens in the message body exceeds the default value",
            ))
        }
    };
    let data = match msg.get("data") {
        None => Value::Null,
        Some(Value::String(s)) => {
            if s.len() > MAX_DATA_BYTES {
                return Err(bad(
                    "80300008",
                    "The message body size exceeds the default value",
                ));
            }
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(_) => {
            return Err(bad(
                "80100003",
                "Incorrect message structure: data must be a string",
            ))
        }
    };
    if data.is_null() && msg.get("notification").is_none() {
        return Err(bad("80100003", "Incorrect message structure: no payload"));
    }
    if let Some(android) = msg.get("android") {
        let a = android
            .as_object()
            .ok_or_else(|| bad("80100003", "Incorrect message structure: android"))?;
        const ANDROID: &[&str] = &[
            "collapse_key",
            "urgency",
            "category",
            "ttl",
            "bi_tag",
            "receipt_id",
            "fast_app_target",
            "data",
            "notification",
            "target_user_type",
        ];
        for k in a.keys() {
            if !ANDROID.contains(&k.as_str()) {
                return Err(bad(
                    "80100003",
                    &format!("Incorrect message structure: unknown field android.{k}"),
                ));
            }
        }
        if let Some(u) = a.get("urgency") {
            if !matches!(u.as_str(), Some("HIGH") | Some("NORMAL")) {
                return Err(bad("80100001", "android.urgency must be HIGH or NORMAL"));
            }
        }
        if let Some(ttl) = a.get("ttl") {
            match ttl.as_str().and_then(parse_ttl) {
                Some(s) if s <= MAX_TTL_S as f64 => {}
                _ => return Err(bad("80100001", "android.ttl is invalid")),
            }
        }
        if let Some(ck) = a.get("collapse_key") {
            if !ck.as_i64().is_some_and(|n| (-1..=100).contains(&n)) {
                return Err(bad("80100013", "collapse_key is illegal"));
            }
        }
        if a.get("bi_tag").is_some_and(|t| !t.is_string()) {
            return Err(bad(
                "80100003",
                "Incorrect message structure: android.bi_tag",
            ));
        }
    }
    Ok((tokens, v, data))
}

/// The scripted behaviour for a token, counting down transient ones.
fn take_behaviour(state: &State, token: &str) -> Behaviour {
    let mut scripts = lock(&state.scripts);
    let Some(b) = scripts.get_mut(token) else {
        return if token.starts_with("sim-invalid") {
            Behaviour::Invalid
        } else if token.starts_with("sim-stall") {
            Behaviour::Stall
        } else if token.starts_with("sim-slow") {
            Behaviour::Latency(Duration::from_secs(2))
        } else {
            Behaviour::Ok
        };
    };
    if let Behaviour::SystemError { times }
    | Behaviour::FlowControl { times, .. }
    | Behaviour::TooManyRequests { times, .. }
    | Behaviour::AuthExpired { times } = b
    {
        if *times == 0 {
            return Behaviour::Ok;
        }
        *times -= 1;
    }
    b.clone()
}

async fn send_endpoint(
    state: &State,
    app: String,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    state.send_requests.fetch_add(1, Ordering::SeqCst);
    let version = req.version();
    let Some(access) = bearer(&req) else {
        return push_answer(
            state,
            StatusCode::UNAUTHORIZED,
            "80200001",
            "Oauth authentication error",
        );
    };
    let known = lock(&state.tokens).get(&access).copied();
    match known {
        Some(exp) if exp > Instant::now() => {}
        _ => {
            return push_answer(
                state,
                StatusCode::UNAUTHORIZED,
                "80200003",
                "Oauth token expired",
            )
        }
    }
    if app != state.app_id {
        // The access token was issued for another app.
        return push_answer(
            state,
            StatusCode::UNAUTHORIZED,
            "80200001",
            "Oauth authentication error",
        );
    }
    let Ok(body) = read_body(req).await else {
        return push_answer(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "80300008",
            "The message body size exceeds the default value",
        );
    };
    let (tokens, parsed, data) = match check_message(&body) {
        Ok(t) => t,
        Err((status, code, msg)) => return push_answer(state, status, code, &msg),
    };
    let behaviours: Vec<Behaviour> = tokens.iter().map(|t| take_behaviour(state, t)).collect();
    let mut delay = state.opts.latency;
    // A failure of the whole request (anything but "this token is invalid") wins.
    let whole = behaviours.iter().find(|b| {
        !matches!(
            b,
            Behaviour::Ok | Behaviour::Invalid | Behaviour::Latency(_)
        )
    });
    let with_retry_after = |mut r: Response<Full<Bytes>>, s: &Option<u64>| {
        if let Some(s) = s {
            r.headers_mut()
                .insert(RETRY_AFTER, http::HeaderValue::from(*s));
        }
        r
    };
    let answer =
        |status, code: &'static str, msg: &str| (push_answer(state, status, code, msg), code);
    let (resp, code) = match whole {
        Some(Behaviour::Stall) => {
            let mut shutdown = state.shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
            return push_answer(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                "81000001",
                "shutting down",
            );
        }
        Some(Behaviour::NoPermission) => answer(
            StatusCode::FORBIDDEN,
            "80300002",
            "The current app does not have the permission to send messages",
        ),
        Some(Behaviour::SystemError { .. }) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "81000001",
            "System inner error",
        ),
        // Flow control comes from the front end, without Push Kit's JSON.
        Some(Behaviour::FlowControl { retry_after_s, .. }) => (
            with_retry_after(
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"message": "flow control"}),
                ),
                retry_after_s,
            ),
            "",
        ),
        Some(Behaviour::TooManyRequests { retry_after_s, .. }) => (
            with_retry_after(
                Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default(),
                retry_after_s,
            ),
            "",
        ),
        Some(Behaviour::AuthExpired { .. }) => {
            answer(StatusCode::UNAUTHORIZED, "80200003", "Oauth token expired")
        }
        _ => {
            for b in &behaviours {
                if let Behaviour::Latency(d) = b {
                    delay += *d;
                }
            }
            let illegal: Vec<&String> = tokens
                .iter()
                .zip(&behaviours)
                .filter(|(_, b)| **b == Behaviour::Invalid)
                .map(|(t, _)| t)
                .collect();
            if illegal.is_empty() {
                answer(StatusCode::OK, "80000000", "Success")
            } else if illegal.len() == tokens.len() {
                answer(
                    StatusCode::BAD_REQUEST,
                    "80300007",
                    "All the tokens are invalid",
                )
            } else {
                let msg = json!({"success": tokens.len() - illegal.len(), "failure": illegal.len(), "illegal_tokens": illegal});
                answer(StatusCode::OK, "80100000", &msg.to_string())
            }
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = resp.status().as_u16();
    let record = RecordedMessage {
        app_id: app,
        tokens,
        body: parsed,
        data,
        status,
        code: code.to_string(),
        version,
        received_at: Instant::now(),
    };
    let accepted = record.accepted();
    if state.feed.receiver_count() > 0 {
        let _ = state.feed.send(record.clone());
    }
    {
        let mut rec = lock(&state.recorded);
        if rec.len() < state.opts.max_recorded {
            rec.push(record);
        }
    }
    if accepted {
        state.delivered.send_modify(|n| *n += 1);
    }
    resp
}

/// Runs a simulator on `addr` until Ctrl-C: writes the app secret into `dir` and prints
/// the address and the `[hms]` lines to configure the daemon with.
pub async fn run_standalone(addr: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let sim = HmsSim::start(HmsSimOptions {
        addr,
        ..HmsSimOptions::default()
    })
    .await?;
    let cfg = sim.write_config_files(&dir)?;
    println!("Push Kit simulator listening on {}", sim.endpoint());
    println!("app secret: {}", cfg.app_secret_file);
    println!();
    println!("[hms]");
    println!("endpoint = \"{}\"", cfg.endpoint);
    println!("token_endpoint = \"{}\"", cfg.token_endpoint);
    println!("app_id = \"{}\"", cfg.app_id);
    println!("app_secret_file = \"{}\"", cfg.app_secret_file);
    println!();
    println!("Tokens starting with sim-invalid, sim-stall or sim-slow misbehave on purpose.");
    tokio::signal::ctrl_c().await?;
    let accepted = sim.delivered_count();
    sim.shutdown().await;
    println!("Push Kit simulator stopped after accepting {accepted} requests");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        for (s, want) in [
            ("0s", 0.0),
            ("120s", 120.0),
            ("20", 20.0),
            ("20S", 20.0),
            ("3.5s", 3.5),
        ] {
            assert_eq!(parse_ttl(s), Some(want), "{s}");
        }
        for bad in ["", "s", "-1s", "1.s", "1m", " 1s", "1.0000000001s"] {
            assert_eq!(parse_ttl(bad), None, "{bad}");
        }
    }

    #[test]
    fn message_checks() {
        let good = json!({"validate_only": false, "message": {"data": "{\"type\":\"challenge\"}", "android": {"urgency": "HIGH", "ttl": "10s", "bi_tag": "c"}, "token": ["t1"]}});
        let (tokens, _, data) = check_message(good.to_string().as_bytes()).unwrap();
        assert_eq!(tokens, vec!["t1"]);
        assert_eq!(data["type"], "challenge");
        let many: Vec<String> = (0..1001).map(|i| format!("t{i}")).collect();
        let cases = [
            (json!({}), "80100003"),
            (json!({"message": {"data": "x", "token": []}}), "80300010"),
            (json!({"message": {"data": "x", "token": many}}), "80300010"),
            (json!({"message": {"data": "x", "token": "t1"}}), "80300010"),
            (
                json!({"message": {"data": {"a": 1}, "token": ["t"]}}),
                "80100003",
            ),
            (json!({"message": {"token": ["t"]}}), "80100003"),
            (
                json!({"message": {"data": "x", "token": ["t"], "extra": 1}}),
                "80100003",
            ),
            (
                json!({"message": {"data": "x".repeat(5000), "token": ["t"]}}),
                "80300008",
            ),
            (
                json!({"message": {"data": "x", "token": ["t"], "android": {"urgency": "high"}}}),
                "80100001",
            ),
            (
                json!({"message": {"data": "x", "token": ["t"], "android": {"ttl": "2000000s"}}}),
                "80100001",
            ),
            (
                json!({"message": {"data": "x", "token": ["t"], "android": {"collapse_key": "c1"}}}),
                "80100013",
            ),
            (
                json!({"message": {"data": "x", "token": ["t"], "android": {"priority": "HIGH"}}}),
                "80100003",
            ),
        ];
        for (c, code) in cases {
            let got = check_message(c.to_string().as_bytes())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(got.1, code, "{c}");
        }
        assert_eq!(check_message(b"{").unwrap_err().1, "80100003");
    }
}
