//! FCM simulator: Google's OAuth2 token endpoint and the FCM HTTP v1
//! `POST /v1/projects/{project}/messages:send`, over plain HTTP (HTTP/1.1 and h2c).
//!
//! It generates its own service account (a 2048-bit RSA key) and hands out a key file
//! whose `token_uri` points at itself, so [`crate::push::fcm::FcmProvider`] runs against
//! it unchanged. The token endpoint verifies the RS256 assertion with the account's public
//! key (`kid`, `iss`, `aud`, `scope`, `iat`/`exp`) and issues access tokens with a
//! configurable (short, for tests) lifetime; `messages:send` checks the bearer token and
//! the body the way FCM does (unknown fields, string-only data, ttl syntax, token syntax)
//! and answers with Google's JSON, success or error. Every message is recorded, and
//! behaviour can be scripted per registration token (UNREGISTERED, INVALID_ARGUMENT,
//! SENDER_ID_MISMATCH, 429 with Retry-After, 500/503 N times, 401, added latency, stall).
//!
//! Run alone with [`run_standalone`]; tokens starting with `sim-unregistered`,
//! `sim-invalid`, `sim-stall` or `sim-slow` then behave accordingly without scripting.

use crate::config::FcmConfig;
use crate::push::fcm::auth::{AssertionClaims, SCOPE};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Requests bigger than this are refused (FCM's own limit on a message is 4 KiB of data).
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// FCM's limit on the `data` payload.
const MAX_DATA_BYTES: usize = 4096;

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct FcmSimOptions {
    /// Where to listen; `127.0.0.1:0` picks a free port.
    pub addr: SocketAddr,
    pub project_id: String,
    /// Lifetime of the access tokens it issues (Google's is one hour).
    pub token_lifetime: Duration,
    /// Added to every `messages:send` answer.
    pub latency: Duration,
    /// Messages kept for [`FcmSim::messages`]; later ones are counted, not kept.
    pub max_recorded: usize,
    /// Serve HTTPS (ALPN `h2` and `http/1.1`) with a certificate from a CA generated at
    /// start (see [`FcmSim::ca_pem`]), as Google does, instead of plain HTTP.
    pub tls: bool,
    /// More Firebase projects served on the same endpoint, each with a service account of
    /// its own ([`FcmSim::write_service_account_for`]); an access token sends to its own
    /// project only (several apps, each with its own project).
    pub extra_projects: Vec<String>,
}

impl Default for FcmSimOptions {
    fn default() -> Self {
        FcmSimOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            project_id: "sca-sim".into(),
            token_lifetime: Duration::from_secs(3600),
            latency: Duration::ZERO,
            max_recorded: 100_000,
            tls: false,
            extra_projects: Vec::new(),
        }
    }
}

/// What the simulator does with messages for one registration token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept (the default).
    Ok,
    /// 404 `NOT_FOUND`, `UNREGISTERED`, every time.
    Unregistered,
    /// 400 `INVALID_ARGUMENT` about the registration token, every time.
    InvalidToken,
    /// 403 `SENDER_ID_MISMATCH`, every time.
    SenderIdMismatch,
    /// 429 `QUOTA_EXCEEDED` (with `Retry-After` when given) `times` times, then accept.
    QuotaExceeded {
        retry_after_s: Option<u64>,
        times: u32,
    },
    /// 503 `UNAVAILABLE` `times` times, then accept.
    Unavailable { times: u32 },
    /// 500 `INTERNAL` `times` times, then accept.
    Internal { times: u32 },
    /// 401 `UNAUTHENTICATED` `times` times (as if the access token were refused), then accept.
    Unauthenticated { times: u32 },
    /// Accept after this delay.
    Latency(Duration),
    /// Never answer (until shutdown).
    Stall,
}

/// One `messages:send` request the simulator read.
#[derive(Debug, Clone)]
pub struct RecordedMessage {
    pub project_id: String,
    /// `message.token`.
    pub token: String,
    /// The whole request body.
    pub body: Value,
    /// The status it answered with.
    pub status: u16,
    /// HTTP/1.1 or HTTP/2.
    pub version: http::Version,
    pub received_at: Instant,
}

impl RecordedMessage {
    /// `message.data`, the part the app reads.
    pub fn data(&self) -> &Value {
        &self.body["message"]["data"]
    }
}

#[derive(Clone)]
struct Account {
    project_id: String,
    client_email: String,
    private_key_id: String,
    private_key_pem: String,
    token_uri: String,
    decoding_key: DecodingKey,
}

struct State {
    account: Account,
    /// The accounts of `opts.extra_projects`.
    more: Vec<Account>,
    opts: FcmSimOptions,
    /// Access token → its expiry and the account it was issued to (0: `account`, i + 1:
    /// `more[i]`).
    tokens: Mutex<HashMap<String, (Instant, usize)>>,
    scripts: Mutex<HashMap<String, Behaviour>>,
    recorded: Mutex<Vec<RecordedMessage>>,
    mints: AtomicU64,
    send_requests: AtomicU64,
    next_id: AtomicU64,
    delivered: watch::Sender<usize>,
    /// Every message as it is answered (for load generators and demos).
    feed: tokio::sync::broadcast::Sender<RecordedMessage>,
    shutdown: watch::Receiver<bool>,
    /// Fails every token request while on (the chaos runner).
    token_fault: Arc<super::fault::FaultSwitch>,
}

/// A running FCM simulator; dropping it stops it.
pub struct FcmSim {
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FcmSim {
    /// Generates the account key, binds and starts serving.
    pub async fn start(opts: FcmSimOptions) -> anyhow::Result<FcmSim> {
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
        // RSA key generation is CPU-bound for a fraction of a second: off the reactor.
        let (private_key_pem, public_key_pem) = tokio::task::spawn_blocking(|| {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
            let private = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
            let public = key.to_public_key().to_public_key_pem(LineEnding::LF)?;
            Ok::<_, anyhow::Error>((private, public))
        })
        .await??;
        let decoding_key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes())?;
        let account = Account {
            client_email: format!("sca-dispatch@{}.iam.gserviceaccount.com", opts.project_id),
            project_id: opts.project_id.clone(),
            private_key_id: random_hex(20),
            private_key_pem,
            token_uri: format!("{scheme}://{advertised}/token"),
            decoding_key,
        };
        let more = opts
            .extra_projects
            .iter()
            .map(|p| Account {
                client_email: format!("sca-dispatch@{p}.iam.gserviceaccount.com"),
                project_id: p.clone(),
                private_key_id: random_hex(20),
                ..account.clone()
            })
            .collect();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (delivered, _) = watch::channel(0usize);
        let state = Arc::new(State {
            account,
            more,
            opts,
            tokens: Mutex::new(HashMap::new()),
            scripts: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Vec::new()),
            mints: AtomicU64::new(0),
            send_requests: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            delivered,
            feed: tokio::sync::broadcast::channel(1 << 16).0,
            shutdown: shutdown_rx.clone(),
            token_fault: Arc::default(),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone(), tls, shutdown_rx));
        Ok(FcmSim {
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

    /// The value for `fcm.endpoint`: `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// With TLS: the PEM of the CA that signed the simulator's certificate (`fcm.ca_file`).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Writes the service-account key (and, with TLS, the CA) into `dir` and returns an
    /// `[fcm]` configuration using them.
    pub fn write_config_files(&self, dir: &Path) -> std::io::Result<FcmConfig> {
        let key = dir.join("fcm-service-account.json");
        self.write_service_account(&key)?;
        let mut cfg = self.fcm_config(&key);
        if let Some(ca) = &self.ca_pem {
            let ca_file = dir.join("fcm-sim-ca.pem");
            std::fs::write(&ca_file, ca)?;
            cfg.ca_file = ca_file.display().to_string();
        }
        Ok(cfg)
    }

    pub fn token_uri(&self) -> &str {
        &self.state.account.token_uri
    }

    pub fn project_id(&self) -> &str {
        &self.state.account.project_id
    }

    /// A Google-style service-account key file for this simulator's account.
    pub fn service_account_json(&self) -> String {
        account_json(&self.state.account)
    }

    /// Writes the service account of `project`, one of the options' `extra_projects`.
    pub fn write_service_account_for(&self, project: &str, path: &Path) -> std::io::Result<()> {
        let Some(a) = self.state.more.iter().find(|a| a.project_id == project) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("project {project} is not one of the simulator's extra_projects"),
            ));
        };
        std::fs::write(path, account_json(a))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Writes [`Self::service_account_json`] to `path` (mode 0600 on Unix: it holds a key).
    pub fn write_service_account(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.service_account_json())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// An `[fcm]` configuration pointing at this simulator.
    pub fn fcm_config(&self, service_account_file: &Path) -> FcmConfig {
        FcmConfig {
            endpoint: self.endpoint(),
            service_account_file: service_account_file.display().to_string(),
            ..FcmConfig::default()
        }
    }

    /// Sets what happens to messages for `registration_token` from now on.
    pub fn script(&self, registration_token: &str, behaviour: Behaviour) {
        lock(&self.state.scripts).insert(registration_token.to_string(), behaviour);
    }

    /// Every `messages:send` request read so far (accepted or not), oldest first.
    pub fn messages(&self) -> Vec<RecordedMessage> {
        lock(&self.state.recorded).clone()
    }

    /// The accepted ones (answered 200).
    pub fn delivered(&self) -> Vec<RecordedMessage> {
        lock(&self.state.recorded)
            .iter()
            .filter(|m| m.status == 200)
            .cloned()
            .collect()
    }

    /// Every message from now on, as it is answered (a lagging receiver loses the oldest).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RecordedMessage> {
        self.state.feed.subscribe()
    }

    /// Number of messages accepted so far (counted even past `max_recorded`).
    pub fn delivered_count(&self) -> usize {
        *self.state.delivered.borrow()
    }

    /// Access tokens issued through the OAuth2 endpoint.
    pub fn token_mints(&self) -> u64 {
        self.state.mints.load(Ordering::SeqCst)
    }

    /// `messages:send` requests received, whatever the answer.
    pub fn send_requests(&self) -> u64 {
        self.state.send_requests.load(Ordering::SeqCst)
    }

    /// The switch that fails every OAuth2 token request while on (503
    /// `temporarily_unavailable`, or no answer); tokens already issued stay valid, so pair
    /// it with [`FcmSim::revoke_access_tokens`] to make the client renew.
    pub fn token_fault(&self) -> &super::fault::FaultSwitch {
        &self.state.token_fault
    }

    /// Forgets every access token issued so far: the next sends get 401.
    pub fn revoke_access_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Issues an access token directly, without the OAuth2 exchange (not counted as a
    /// mint). For benchmarks that drive the API with a bare client.
    pub fn issue_access_token(&self) -> String {
        issue_token(&self.state, 0)
    }

    /// Waits until at least `n` messages were accepted; `false` on timeout.
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

impl Drop for FcmSim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A Google service-account key file for `a`.
fn account_json(a: &Account) -> String {
    let v = json!({
        "type": "service_account",
        "project_id": a.project_id,
        "private_key_id": a.private_key_id,
        "private_key": a.private_key_pem,
        "client_email": a.client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": a.token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An access token for account `account` (0: the main one, i + 1: `more[i]`).
fn issue_token(state: &State, account: usize) -> String {
    let token = format!("ya29.sim-{}", random_hex(24));
    let mut tokens = lock(&state.tokens);
    let now = Instant::now();
    // Keep the table bounded: expired tokens are dropped whenever a new one is issued.
    tokens.retain(|_, (exp, _)| *exp > now);
    tokens.insert(token.clone(), (now + state.opts.token_lifetime, account));
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
                    tracing::warn!(error = %e, "fcm sim: accept failed");
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
/// the CA in PEM (for `fcm.ca_file`) and the server's TLS configuration offering h2.
fn make_tls(host: IpAddr) -> anyhow::Result<(String, tokio_rustls::TlsAcceptor)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sca-dispatch FCM simulator CA");
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
        .push(DnType::CommonName, "fcm simulator");
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
        http::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

/// Google's error body: `{"error":{"code","message","status","details"}}`.
fn google_error(
    status: StatusCode,
    google_status: &str,
    message: &str,
    fcm_code: Option<&str>,
    bad_field: Option<(&str, &str)>,
) -> Response<Full<Bytes>> {
    let mut details = Vec::new();
    if let Some(code) = fcm_code {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code
        }));
    }
    if let Some((field, description)) = bad_field {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": description}]
        }));
    }
    let mut err = json!({"code": status.as_u16(), "message": message, "status": google_status});
    if !details.is_empty() {
        err["details"] = Value::Array(details);
    }
    json_response(status, json!({ "error": err }))
}

fn invalid_argument(message: &str, field: &str, description: &str) -> Response<Full<Bytes>> {
    google_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        message,
        Some("INVALID_ARGUMENT"),
        Some((field, description)),
    )
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/token" {
        if req.method() != Method::POST {
            return oauth_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use POST",
            );
        }
        match state.token_fault.take() {
            super::fault::Fault::Off => {}
            super::fault::Fault::Unavailable => {
                return oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the token endpoint is down (simulated)",
                )
            }
            super::fault::Fault::Stall => {
                // Held until the client gives up (or the simulator stops).
                let mut stop = state.shutdown.clone();
                let _ = stop.wait_for(|s| *s).await;
                return oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "stopping",
                );
            }
        }
        return token_endpoint(&state, req).await;
    }
    if let Some(project) = path
        .strip_prefix("/v1/projects/")
        .and_then(|p| p.strip_suffix("/messages:send"))
    {
        if req.method() != Method::POST {
            return google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "INVALID_ARGUMENT",
                "Method not allowed",
                None,
                None,
            );
        }
        let project = project.to_string();
        return send_endpoint(&state, project, req).await;
    }
    // What Google's front end answers for unknown paths: an HTML page, not the JSON error.
    let mut resp = Response::new(Full::new(Bytes::from_static(
        b"<!DOCTYPE html><html><title>Error 404 (Not Found)</title></html>",
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

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

async fn token_endpoint(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Ok(body) = read_body(req).await else {
        return oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "body too large",
        );
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type: expected urn:ietf:params:oauth:grant-type:jwt-bearer",
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    // The account whose key signed it; the main account's refusal otherwise.
    let account = match verify_assertion(&state.account, assertion) {
        Ok(()) => 0,
        Err(why) => match state
            .more
            .iter()
            .position(|a| verify_assertion(a, assertion).is_ok())
        {
            Some(i) => i + 1,
            None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &why),
        },
    };
    let token = issue_token(state, account);
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

/// Checks an RS256 JWT-bearer assertion the way Google's token endpoint does.
fn verify_assertion(account: &Account, assertion: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| format!("Invalid JWT: {e}"))?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("Invalid JWT: alg {:?}, expected RS256", header.alg));
    }
    if let Some(kid) = &header.kid {
        if kid != &account.private_key_id {
            return Err("Invalid JWT Signature.".into());
        }
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[&account.token_uri]);
    v.set_issuer(&[&account.client_email]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    v.leeway = 30;
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &account.decoding_key, &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => "Invalid JWT Signature.".to_string(),
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.".to_string()
            }
            _ => format!("Invalid JWT: {e}"),
        })?;
    let c = data.claims;
    if !c.scope.split(' ').any(|s| s == SCOPE) {
        return Err(format!("Invalid OAuth scope: {SCOPE} not requested"));
    }
    let now = unix_now();
    if c.exp <= c.iat || c.exp - c.iat > 3600 || c.iat > now + 60 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
                .into(),
        );
    }
    Ok(())
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string())
}

fn unauthenticated() -> Response<Full<Bytes>> {
    google_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        None,
        None,
    )
}

/// Checks a `messages:send` body; on success returns the registration token.
fn check_message(body: &[u8]) -> Result<String, Box<Response<Full<Bytes>>>> {
    let bad = |message: &str, field: &str, description: &str| {
        Box::new(invalid_argument(message, field, description))
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &format!("Invalid JSON payload received. {e}"),
            None,
            None,
        ))
    })?;
    let Some(msg) = v.get("message").and_then(Value::as_object) else {
        return Err(bad(
            "Request contains an invalid argument.",
            "message",
            "message is required",
        ));
    };
    const MESSAGE_FIELDS: &[&str] = &[
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    ];
    for k in msg.keys() {
        if !MESSAGE_FIELDS.contains(&k.as_str()) {
            return Err(bad(
                &format!("Invalid JSON payload received. Unknown name \"{k}\" at 'message': Cannot find field."),
                "message",
                &format!("Invalid JSON payload received. Unknown name \"{k}\" at 'message': Cannot find field."),
            ));
        }
    }
    let Some(token) = msg.get("token").and_then(Value::as_str) else {
        return Err(bad(
            "Recipient of the message is not set.",
            "message.token",
            "Recipient of the message is not set.",
        ));
    };
    let token_ok = !token.is_empty()
        && token.len() <= 4096
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'));
    if !token_ok {
        return Err(bad(
            "The registration token is not a valid FCM registration token",
            "message.token",
            "Invalid registration token",
        ));
    }
    if let Some(data) = msg.get("data") {
        let Some(obj) = data.as_object() else {
            return Err(bad(
                "Invalid value at 'message.data'",
                "message.data",
                "data must be a map",
            ));
        };
        let mut size = 0;
        for (k, val) in obj {
            let Some(s) = val.as_str() else {
                return Err(bad(
                    &format!("Invalid value at 'message.data[{k}].value' (TYPE_STRING)"),
                    &format!("message.data[{k}].value"),
                    "data values must be strings",
                ));
            };
            size += k.len() + s.len();
        }
        if size > MAX_DATA_BYTES {
            return Err(bad(
                "Message is too big",
                "message.data",
                "Message is too big",
            ));
        }
    }
    if let Some(android) = msg.get("android") {
        let Some(a) = android.as_object() else {
            return Err(bad(
                "Invalid value at 'message.android'",
                "message.android",
                "must be an object",
            ));
        };
        const ANDROID_FIELDS: &[&str] = &[
            "collapse_key",
            "priority",
            "ttl",
            "restricted_package_name",
            "data",
            "notification",
            "fcm_options",
            "direct_boot_ok",
        ];
        for k in a.keys() {
            if !ANDROID_FIELDS.contains(&k.as_str()) {
                return Err(bad(
                    &format!("Invalid JSON payload received. Unknown name \"{k}\" at 'message.android': Cannot find field."),
                    "message.android",
                    "unknown field",
                ));
            }
        }
        if let Some(p) = a.get("priority") {
            if !matches!(p.as_str(), Some("HIGH") | Some("NORMAL")) {
                return Err(bad(
                    "Invalid value at 'message.android.priority'",
                    "message.android.priority",
                    "must be HIGH or NORMAL",
                ));
            }
        }
        if let Some(ttl) = a.get("ttl") {
            if !ttl.as_str().is_some_and(valid_duration) {
                return Err(bad(
                    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
                    "message.android.ttl",
                    "Invalid duration",
                ));
            }
        }
        if let Some(ck) = a.get("collapse_key") {
            if !ck.is_string() {
                return Err(bad(
                    "Invalid value at 'message.android.collapse_key' (TYPE_STRING)",
                    "message.android.collapse_key",
                    "must be a string",
                ));
            }
        }
    }
    Ok(token.to_string())
}

/// `google.protobuf.Duration` in JSON: seconds with up to 9 fractional digits and `s`.
fn valid_duration(s: &str) -> bool {
    let Some(num) = s.strip_suffix('s') else {
        return false;
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    !int.is_empty()
        && int.len() <= 12
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !num.ends_with('.')
}

/// The scripted behaviour for a token, counting down transient ones.
fn take_behaviour(state: &State, token: &str) -> Behaviour {
    let mut scripts = lock(&state.scripts);
    let Some(b) = scripts.get_mut(token) else {
        return if token.starts_with("sim-unregistered") {
            Behaviour::Unregistered
        } else if token.starts_with("sim-invalid") {
            Behaviour::InvalidToken
        } else if token.starts_with("sim-stall") {
            Behaviour::Stall
        } else if token.starts_with("sim-slow") {
            Behaviour::Latency(Duration::from_secs(2))
        } else {
            Behaviour::Ok
        };
    };
    if let Behaviour::QuotaExceeded { times, .. }
    | Behaviour::Unavailable { times }
    | Behaviour::Internal { times }
    | Behaviour::Unauthenticated { times } = b
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
    project: String,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    state.send_requests.fetch_add(1, Ordering::SeqCst);
    let version = req.version();
    let account = bearer(&req).and_then(|t| {
        lock(&state.tokens)
            .get(&t)
            .filter(|(exp, _)| *exp > Instant::now())
            .map(|(_, a)| *a)
    });
    let Some(account) = account else {
        return unauthenticated();
    };
    let own = match account {
        0 => &state.account,
        i => state.more.get(i - 1).unwrap_or(&state.account),
    };
    if project != own.project_id {
        return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!("Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."),
            None,
            None,
        );
    }
    let Ok(body) = read_body(req).await else {
        return google_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_ARGUMENT",
            "Request payload too large",
            None,
            None,
        );
    };
    let token = match check_message(&body) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let behaviour = take_behaviour(state, &token);
    let mut delay = state.opts.latency;
    let resp = match &behaviour {
        Behaviour::Ok => None,
        Behaviour::Latency(d) => {
            delay += *d;
            None
        }
        Behaviour::Stall => {
            let mut shutdown = state.shutdown.clone();
            let _ = shutdown.wait_for(|stop| *stop).await;
            return google_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "shutting down",
                None,
                None,
            );
        }
        Behaviour::Unregistered => Some(google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
            None,
        )),
        Behaviour::InvalidToken => Some(invalid_argument(
            "The registration token is not a valid FCM registration token",
            "message.token",
            "Invalid registration token",
        )),
        Behaviour::SenderIdMismatch => Some(google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some("SENDER_ID_MISMATCH"),
            None,
        )),
        Behaviour::QuotaExceeded { retry_after_s, .. } => {
            let mut r = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send requests'.",
                Some("QUOTA_EXCEEDED"),
                None,
            );
            if let Some(s) = retry_after_s {
                r.headers_mut()
                    .insert(RETRY_AFTER, http::HeaderValue::from(*s));
            }
            Some(r)
        }
        Behaviour::Unavailable { .. } => Some(google_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some("UNAVAILABLE"),
            None,
        )),
        Behaviour::Internal { .. } => Some(google_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            Some("INTERNAL"),
            None,
        )),
        Behaviour::Unauthenticated { .. } => Some(unauthenticated()),
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let resp = resp.unwrap_or_else(|| {
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        json_response(
            StatusCode::OK,
            json!({"name": format!("projects/{project}/messages/0:{id}%sim")}),
        )
    });
    let status = resp.status().as_u16();
    {
        let record = RecordedMessage {
            project_id: project,
            token,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status,
            version,
            received_at: Instant::now(),
        };
        if state.feed.receiver_count() > 0 {
            let _ = state.feed.send(record.clone());
        }
        let mut rec = lock(&state.recorded);
        if rec.len() < state.opts.max_recorded {
            rec.push(record);
        }
    }
    if status == 200 {
        state.delivered.send_modify(|n| *n += 1);
    }
    resp
}

/// Runs a simulator on `addr` until Ctrl-C: writes the service-account key into `dir`
/// and prints the address, the file and the `[fcm]` lines to configure the daemon with.
pub async fn run_standalone(addr: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let sim = FcmSim::start(FcmSimOptions {
        addr,
        ..FcmSimOptions::default()
    })
    .await?;
    let key_file = dir.join("fcm-service-account.json");
    sim.write_service_account(&key_file)?;
    println!("FCM simulator listening on {}", sim.endpoint());
    println!("service account: {}", key_file.display());
    println!();
    println!("[fcm]");
    println!("endpoint = \"{}\"", sim.endpoint());
    println!("service_account_file = \"{}\"", key_file.display());
    println!();
    println!("Tokens starting with sim-unregistered, sim-invalid, sim-stall or sim-slow misbehave on purpose.");
    tokio::signal::ctrl_c().await?;
    let accepted = sim.delivered_count();
    sim.shutdown().await;
    println!("FCM simulator stopped after accepting {accepted} messages");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_endpoint_checks_every_part_of_the_assertion() {
        use crate::push::fcm::auth::{sign_assertion, ServiceAccount};
        use jsonwebtoken::{EncodingKey, Header};
        let sim = FcmSim::start(FcmSimOptions::default()).await.unwrap();
        let acct = ServiceAccount::from_json(&sim.service_account_json(), "sim").unwrap();
        let key = acct.encoding_key("sim").unwrap();
        let account = &sim.state.account;
        let now = unix_now();
        let good = sign_assertion(&acct, &key, now).unwrap();
        assert_eq!(verify_assertion(account, &good), Ok(()));

        let sign = |claims: &AssertionClaims, kid: Option<&str>| {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&h, claims, &key).unwrap()
        };
        let base = AssertionClaims {
            iss: acct.client_email.clone(),
            scope: SCOPE.into(),
            aud: acct.token_uri.clone(),
            iat: now,
            exp: now + 3600,
        };
        assert_eq!(verify_assertion(account, &sign(&base, None)), Ok(()));
        let bad_claims = [
            AssertionClaims {
                iss: "someone@else".into(),
                ..base.clone()
            },
            AssertionClaims {
                scope: "https://www.googleapis.com/auth/cloud-platform.read-only".into(),
                ..base.clone()
            },
            AssertionClaims {
                aud: "https://oauth2.googleapis.com/token".into(),
                ..base.clone()
            },
            AssertionClaims {
                exp: now + 7200,
                ..base.clone()
            },
            AssertionClaims {
                iat: now - 7200,
                exp: now - 3600,
                ..base.clone()
            },
            AssertionClaims {
                iat: now + 600,
                exp: now + 1200,
                ..base.clone()
            },
        ];
        for c in &bad_claims {
            assert!(verify_assertion(account, &sign(c, None)).is_err(), "{c:?}");
        }
        assert!(verify_assertion(account, &sign(&base, Some("another-key-id"))).is_err());
        assert!(verify_assertion(account, "not.a.jwt").is_err());

        // Signed with a different RSA key: the signature does not verify.
        let other = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            other.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
        };
        let other_key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let forged = sign_assertion(&acct, &other_key, now).unwrap();
        assert_eq!(
            verify_assertion(account, &forged),
            Err("Invalid JWT Signature.".to_string())
        );
        // HS256 with the public key as secret (the classic confusion attack) is refused.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &base,
            &EncodingKey::from_secret(b"whatever"),
        )
        .unwrap();
        assert!(verify_assertion(account, &hs).is_err());
    }

    #[test]
    fn durations() {
        for ok in ["0s", "120s", "3.5s", "1.000000001s"] {
            assert!(valid_duration(ok), "{ok}");
        }
        for bad in ["", "s", "12", "-1s", "1.s", "1.0000000001s", "1m", " 1s"] {
            assert!(!valid_duration(bad), "{bad}");
        }
    }

    #[test]
    fn message_checks() {
        let good = json!({"message": {"token": "abc:DEF_1-2", "android": {"priority": "HIGH", "ttl": "10s", "collapse_key": "c"}, "data": {"type": "challenge"}}});
        assert_eq!(
            check_message(good.to_string().as_bytes()).unwrap(),
            "abc:DEF_1-2"
        );
        let cases = [
            json!({}),
            json!({"message": {"android": {}}}),
            json!({"message": {"token": "bad token"}}),
            json!({"message": {"token": "t", "data": {"n": 1}}}),
            json!({"message": {"token": "t", "android": {"ttl": "10"}}}),
            json!({"message": {"token": "t", "android": {"priority": "high"}}}),
            json!({"message": {"token": "t", "extra": 1}}),
            json!({"message": {"token": "t", "android": {"ttl": "1s", "bogus": 1}}}),
            json!({"message": {"token": "t", "data": {"x": "y".repeat(5000)}}}),
        ];
        for c in cases {
            assert!(check_message(c.to_string().as_bytes()).is_err(), "{c}");
        }
        assert!(check_message(b"{").is_err());
    }
}
