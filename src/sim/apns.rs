//! APNs simulator: HTTP/2 over TLS (ALPN `h2`) with a CA and a server certificate
//! generated at start (rcgen), and an ES256 key pair whose private half it writes as a
//! `.p8` file for the provider to sign with.
//!
//! Like Apple it verifies the provider token (ES256 signature against the public key,
//! `kid`, `iss`, age ≤ 1 h), checks `POST /3/device/{64 hex}`, the `apns-*` headers and
//! the payload size, and answers with Apple's status codes, `{"reason": …}` bodies and an
//! `apns-id` header. Every request is recorded (bounded), and answers can be scripted per
//! device token: unregistered, bad token, 429/500/503 N times, expired provider token N
//! times, added latency, stalls. Tests drive it through the [`ApnsSim`] handle;
//! `sca-dispatch simulate apns` runs it alone ([`run_standalone`]).

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand::Rng as _;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Apple's payload limit for regular pushes.
const MAX_PAYLOAD: usize = 4096;
/// Bodies are read up to this size (larger ones are refused with 413 all the same).
const MAX_BODY_READ: usize = 64 * 1024;
/// Verified provider tokens remembered (Apple also validates a token once per connection).
const MAX_VERIFIED_TOKENS: usize = 256;
/// How far in the future `iat` may be before the token is refused (clock skew).
const MAX_CLOCK_SKEW_SECS: u64 = 60;
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 1024;

/// How to start the simulator.
#[derive(Debug, Clone)]
pub struct ApnsSimOptions {
    /// Listen address; `127.0.0.1:0` picks a free port.
    pub addr: SocketAddr,
    /// Where to write `ca.pem` and `AuthKey_<key_id>.p8`; `None`: a fresh temporary
    /// directory, removed when the simulator is dropped.
    pub dir: Option<PathBuf>,
    pub key_id: String,
    pub team_id: String,
    /// The `apns-topic` accepted, with `extra_topics` (others: 400 `TopicDisallowed`).
    pub topic: String,
    /// More bundle ids the key may push to (several apps of one team).
    pub extra_topics: Vec<String>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised per connection (Apple: up to 1000).
    pub max_concurrent_streams: u32,
    /// Provider tokens older than this are refused with 403 `ExpiredProviderToken`.
    pub token_max_age: Duration,
    /// Recorded requests kept (oldest dropped first); counters keep counting.
    pub max_recorded: usize,
    /// Where to serve the plain-HTTP control API (see [`control`]); `None`: no control
    /// API (tests use the [`ApnsSim`] handle).
    pub control_addr: Option<SocketAddr>,
}

impl Default for ApnsSimOptions {
    fn default() -> Self {
        ApnsSimOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir: None,
            key_id: "SIMKEY0001".into(),
            team_id: "SIMTEAM001".into(),
            topic: "com.example.sca".into(),
            extra_topics: Vec::new(),
            max_concurrent_streams: 1000,
            token_max_age: Duration::from_secs(3600),
            max_recorded: 10_000,
            control_addr: None,
        }
    }
}

/// A scripted answer for one device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 410 `Unregistered` with a `timestamp`, for every push from now on.
    Unregistered,
    /// 400 `BadDeviceToken`, for every push from now on.
    BadDeviceToken,
    /// 429 `TooManyRequests` for the next `times` pushes, then normal answers.
    TooManyRequests { times: u32 },
    /// 500 `InternalServerError` for the next `times` pushes.
    InternalServerError { times: u32 },
    /// 503 `ServiceUnavailable` for the next `times` pushes.
    ServiceUnavailable { times: u32 },
    /// 403 `ExpiredProviderToken` for the next `times` pushes, whatever the token's age.
    ExpiredProviderToken { times: u32 },
    /// Answers normally after this delay, for every push from now on.
    Latency(Duration),
    /// Never answers the next `times` pushes (the stream stays open until the client
    /// gives up).
    Stall { times: u32 },
}

/// One request the simulator received and what it answered (`status` 0: stalled).
#[derive(Debug, Clone)]
pub struct RecordedPush {
    /// The device token from the path (empty if the path was not `/3/device/…`).
    pub token: String,
    pub headers: HeaderMap,
    /// The JSON payload; `Null` if the body was not JSON.
    pub payload: serde_json::Value,
    pub status: u16,
    pub reason: Option<String>,
    /// Which TLS connection carried it (1, 2, … in accept order).
    pub connection: u64,
    /// When the simulator had read and checked it (what latency is measured to).
    pub received_at: Instant,
}

impl RecordedPush {
    /// A header as text (empty when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct State {
    opts: ApnsSimOptions,
    verifying_key: VerifyingKey,
    scripts: Mutex<HashMap<String, Behaviour>>,
    recorded: Mutex<VecDeque<RecordedPush>>,
    /// Requests answered (or stalled) so far; watched by `wait_for_pushes`.
    total: watch::Sender<u64>,
    ok: AtomicU64,
    connections: AtomicU64,
    verified: Mutex<HashMap<String, u64>>,
    /// Bumped to send GOAWAY on every open connection.
    goaway: watch::Sender<u64>,
    /// Every request as it is answered (for load generators and demos).
    feed: tokio::sync::broadcast::Sender<RecordedPush>,
    /// Fails every request while on (the chaos runner).
    fault: Arc<super::fault::FaultSwitch>,
}

/// A running simulator; dropping it stops it.
pub struct ApnsSim {
    state: Arc<State>,
    addr: SocketAddr,
    dir: PathBuf,
    remove_dir: bool,
    ca_pem: String,
    ca_path: PathBuf,
    key_path: PathBuf,
    accept: JoinHandle<()>,
    control: Option<(SocketAddr, JoinHandle<()>)>,
}

impl ApnsSim {
    /// Generates the CA, server certificate and signing key, writes `ca.pem` and the
    /// `.p8`, binds and starts serving.
    pub async fn start(opts: ApnsSimOptions) -> anyhow::Result<ApnsSim> {
        let (dir, remove_dir) = match &opts.dir {
            Some(d) => (d.clone(), false),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "sca-apns-sim-{}-{:016x}",
                    std::process::id(),
                    rand::thread_rng().gen::<u64>()
                ));
                (d, true)
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        // Provider key pair: the private half goes to the daemon as its `.p8`.
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let p8 = {
            use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
            p256::SecretKey::from(&signing)
                .to_pkcs8_pem(LineEnding::LF)
                .context("encoding the .p8 key")?
        };
        let key_path = dir.join(format!("AuthKey_{}.p8", opts.key_id));
        std::fs::write(&key_path, p8.as_bytes())
            .with_context(|| format!("writing {}", key_path.display()))?;
        #[cfg(unix)]
        {
            // A private key, even a simulator's: readable by its owner only.
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600));
        }

        let listener = TcpListener::bind(opts.addr)
            .await
            .with_context(|| format!("binding {}", opts.addr))?;
        let addr = listener.local_addr()?;
        let (ca_pem, server_config) = tls_material(addr.ip())?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca_pem.as_bytes())
            .with_context(|| format!("writing {}", ca_path.display()))?;

        let state = Arc::new(State {
            verifying_key: VerifyingKey::from(&signing),
            opts,
            scripts: Mutex::new(HashMap::new()),
            recorded: Mutex::new(VecDeque::new()),
            total: watch::channel(0).0,
            ok: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            goaway: watch::channel(0).0,
            feed: tokio::sync::broadcast::channel(1 << 16).0,
            fault: Arc::default(),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let accept = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
        let control = match state.opts.control_addr {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the control API on {a}"))?;
                let bound = l.local_addr()?;
                Some((bound, tokio::spawn(control::serve(l, state.clone()))))
            }
            None => None,
        };
        Ok(ApnsSim {
            state,
            addr,
            dir,
            remove_dir,
            ca_pem,
            ca_path,
            key_path,
            accept,
            control,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The control API's address, when one was asked for.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(|(a, _)| *a)
    }
    /// `https://127.0.0.1:PORT`, for `apns.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }
    /// The CA certificate (PEM) to trust, for `apns.ca_file`.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// The `.p8` signing key the simulator accepts, for `apns.key_file`.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn key_id(&self) -> &str {
        &self.state.opts.key_id
    }
    pub fn team_id(&self) -> &str {
        &self.state.opts.team_id
    }
    pub fn topic(&self) -> &str {
        &self.state.opts.topic
    }

    /// An `[apns]` configuration pointing at this simulator (other keys at defaults).
    pub fn config(&self) -> crate::config::ApnsConfig {
        crate::config::ApnsConfig {
            endpoint: self.endpoint(),
            ca_file: self.ca_path.display().to_string(),
            key_file: self.key_path.display().to_string(),
            key_id: self.key_id().into(),
            team_id: self.team_id().into(),
            topic: self.topic().into(),
            ..Default::default()
        }
    }

    /// The `[apns]` section for a configuration file.
    pub fn config_toml(&self) -> String {
        // TOML string literals, quoted and escaped by the toml crate.
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        format!(
            "[apns]\nendpoint = {}\nca_file = {}\nkey_file = {}\nkey_id = {}\nteam_id = {}\ntopic = {}\n",
            q(&self.endpoint()),
            q(&self.ca_path.display().to_string()),
            q(&self.key_path.display().to_string()),
            q(self.key_id()),
            q(self.team_id()),
            q(self.topic())
        )
    }

    /// Sets the scripted behaviour for a device token (replacing any previous one).
    pub fn script(&self, token: &str, behaviour: Behaviour) {
        self.state.script(token, behaviour);
    }

    /// Back to normal answers for a device token.
    pub fn clear_script(&self, token: &str) {
        lock(&self.state.scripts).remove(token);
    }

    /// The recorded requests (the most recent `max_recorded`), oldest first.
    pub fn pushes(&self) -> Vec<RecordedPush> {
        self.state.pushes()
    }

    /// The recorded requests answered 200.
    pub fn delivered(&self) -> Vec<RecordedPush> {
        lock(&self.state.recorded)
            .iter()
            .filter(|p| p.status == 200)
            .cloned()
            .collect()
    }

    /// Every request from now on, as it is answered (a lagging receiver loses the
    /// oldest). Costs nothing while nobody subscribes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RecordedPush> {
        self.state.feed.subscribe()
    }

    /// Requests received so far (every answer, stalls included).
    pub fn total(&self) -> u64 {
        *self.state.total.borrow()
    }

    /// Requests answered 200 so far.
    pub fn delivered_count(&self) -> u64 {
        self.state.ok.load(Ordering::Relaxed)
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Forgets the recorded requests (counters keep counting).
    pub fn clear_recorded(&self) {
        lock(&self.state.recorded).clear();
    }

    /// Waits until `n` requests in total have been received, then returns the recorded
    /// ones; on timeout returns what was recorded as the error.
    pub async fn wait_for_pushes(
        &self,
        n: u64,
        timeout: Duration,
    ) -> Result<Vec<RecordedPush>, Vec<RecordedPush>> {
        let mut rx = self.state.total.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|t| *t >= n)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.pushes()),
            _ => Err(self.pushes()),
        }
    }

    /// The switch that fails every push while on: 503 `ServiceUnavailable`, or no answer.
    pub fn fault(&self) -> &super::fault::FaultSwitch {
        &self.state.fault
    }

    /// Sends GOAWAY on every open connection (they finish their streams and close).
    pub fn goaway(&self) {
        self.state.goaway();
    }

    /// Stops serving, closes every connection, and removes a temporary directory.
    pub async fn shutdown(self) {
        // Dropping `self` aborts the tasks and removes the directory.
    }
}

impl State {
    fn script(&self, token: &str, behaviour: Behaviour) {
        lock(&self.scripts).insert(token.to_string(), behaviour);
    }
    fn pushes(&self) -> Vec<RecordedPush> {
        lock(&self.recorded).iter().cloned().collect()
    }
    fn goaway(&self) {
        self.goaway.send_modify(|g| *g += 1);
    }
}

impl Drop for ApnsSim {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some((_, task)) = &self.control {
            task.abort();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A CA, and a server certificate for `localhost`, 127.0.0.1 and the bound address.
fn tls_material(ip: IpAddr) -> anyhow::Result<(String, rustls::ServerConfig)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "sca-dispatch APNs simulator CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(vec!["localhost".to_string()])?;
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    sp.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    if !ip.is_unspecified() && ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        sp.subject_alt_names.push(SanType::IpAddress(ip));
    }
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &ca_cert, &ca_key)?;

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((ca_cert.pem(), cfg))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    // Connection tasks live in this set: aborting the accept task drops it and so closes
    // every connection.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "apns sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!("apns sim: {MAX_CONNECTIONS} connections open; refusing one");
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                conns.spawn(serve_connection(tcp, acceptor.clone(), state.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "apns sim: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        tracing::debug!("apns sim: client did not negotiate h2");
        return;
    }
    let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let mut goaway = state.goaway.subscribe();
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req| handle(svc_state.clone(), id, req));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(state.opts.max_concurrent_streams);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "apns sim: connection ended");
            }
        }
        _ = goaway.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn json_reason(reason: &str, timestamp_ms: Option<u64>) -> Bytes {
    let v = match timestamp_ms {
        Some(t) => serde_json::json!({ "reason": reason, "timestamp": t }),
        None => serde_json::json!({ "reason": reason }),
    };
    Bytes::from(v.to_string())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_apns_id() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

type Rejection = (u16, &'static str);

/// The path's device token, or Apple's answer for a bad path.
fn path_token(method: &Method, path: &str) -> Result<String, Rejection> {
    let token = path.strip_prefix("/3/device/").ok_or((404, "BadPath"))?;
    if method != Method::POST {
        return Err((405, "MethodNotAllowed"));
    }
    if token.is_empty() {
        return Err((400, "MissingDeviceToken"));
    }
    if token.contains('/') {
        return Err((404, "BadPath"));
    }
    Ok(token.to_string())
}

/// Checks the request as Apple does; `Ok` means it would be accepted.
fn check(state: &State, headers: &HeaderMap, token: &str, body: &[u8]) -> Result<(), Rejection> {
    for name in [
        "authorization",
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-collapse-id",
        "apns-id",
    ] {
        if headers.get_all(name).iter().count() > 1 {
            return Err((400, "DuplicateHeaders"));
        }
    }
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));

    let auth = text("authorization").ok_or((403, "MissingProviderToken"))?;
    let jwt = auth
        .strip_prefix("bearer ")
        .or_else(|| auth.strip_prefix("Bearer "))
        .ok_or((403, "InvalidProviderToken"))?;
    verify_provider_token(state, jwt)?;

    let topic = text("apns-topic").ok_or((400, "MissingTopic"))?;
    if topic != state.opts.topic && !state.opts.extra_topics.iter().any(|t| t == topic) {
        return Err((400, "TopicDisallowed"));
    }
    let push_type = text("apns-push-type").ok_or((400, "InvalidPushType"))?;
    const PUSH_TYPES: [&str; 9] = [
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "location",
        "liveactivity",
        "pushtotalk",
    ];
    if !PUSH_TYPES.contains(&push_type) {
        return Err((400, "InvalidPushType"));
    }
    if let Some(p) = text("apns-priority") {
        if !["1", "5", "10"].contains(&p) || (push_type == "background" && p == "10") {
            return Err((400, "BadPriority"));
        }
    }
    if let Some(e) = text("apns-expiration") {
        if e.parse::<u64>().is_err() {
            return Err((400, "BadExpirationDate"));
        }
    }
    if let Some(c) = headers.get("apns-collapse-id") {
        if c.len() > 64 {
            return Err((400, "BadCollapseId"));
        }
    }
    if let Some(id) = text("apns-id") {
        if !is_uuid(id) {
            return Err((400, "BadMessageId"));
        }
    }
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken"));
    }
    if body.is_empty() {
        return Err((400, "PayloadEmpty"));
    }
    if body.len() > MAX_PAYLOAD {
        return Err((413, "PayloadTooLarge"));
    }
    // Apple has no reason dedicated to malformed JSON; a payload without an `aps`
    // dictionary carries nothing to deliver, so it is refused as empty.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.get("aps").is_some_and(|a| a.is_object()) => Ok(()),
        _ => Err((400, "PayloadEmpty")),
    }
}

fn verify_provider_token(state: &State, jwt: &str) -> Result<(), Rejection> {
    let now = unix_ms() / 1000;
    let cached = lock(&state.verified).get(jwt).copied();
    let iat = match cached {
        Some(iat) => iat,
        None => {
            let iat = verify_signature(state, jwt)?;
            let mut v = lock(&state.verified);
            if v.len() >= MAX_VERIFIED_TOKENS {
                v.clear();
            }
            v.insert(jwt.to_string(), iat);
            iat
        }
    };
    if iat > now + MAX_CLOCK_SKEW_SECS {
        return Err((403, "InvalidProviderToken"));
    }
    if now.saturating_sub(iat) > state.opts.token_max_age.as_secs() {
        return Err((403, "ExpiredProviderToken"));
    }
    Ok(())
}

/// Checks the JWT's structure, header, issuer and ES256 signature; returns its `iat`.
fn verify_signature(state: &State, jwt: &str) -> Result<u64, Rejection> {
    const INVALID: Rejection = (403, "InvalidProviderToken");
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    let decode = |p: &str| -> Result<serde_json::Value, Rejection> {
        let raw = URL_SAFE_NO_PAD.decode(p).map_err(|_| INVALID)?;
        serde_json::from_slice(&raw).map_err(|_| INVALID)
    };
    let header = decode(h)?;
    let claims = decode(c)?;
    if header.get("alg").and_then(|v| v.as_str()) != Some("ES256") {
        return Err(INVALID);
    }
    if header.get("kid").and_then(|v| v.as_str()) != Some(state.opts.key_id.as_str()) {
        return Err(INVALID);
    }
    if claims.get("iss").and_then(|v| v.as_str()) != Some(state.opts.team_id.as_str()) {
        return Err(INVALID);
    }
    let iat = claims.get("iat").and_then(|v| v.as_u64()).ok_or(INVALID)?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| INVALID)?;
    let sig = Signature::from_slice(&sig).map_err(|_| INVALID)?;
    let signed = &jwt[..h.len() + 1 + c.len()];
    state
        .verifying_key
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| INVALID)?;
    Ok(iat)
}

/// What a script says for this push (consuming one of its `times`).
enum Scripted {
    Answer(u16, &'static str, bool),
    Latency(Duration),
    Stall,
}

fn take_script(state: &State, token: &str) -> Option<Scripted> {
    let mut scripts = lock(&state.scripts);
    let b = scripts.get_mut(token)?;
    let counted = |times: &mut u32, s: Scripted| -> (Option<Scripted>, bool) {
        if *times == 0 {
            return (None, true);
        }
        *times -= 1;
        (Some(s), *times == 0)
    };
    let (out, done) = match b {
        Behaviour::Unregistered => (Some(Scripted::Answer(410, "Unregistered", true)), false),
        Behaviour::BadDeviceToken => (Some(Scripted::Answer(400, "BadDeviceToken", false)), false),
        Behaviour::Latency(d) => (Some(Scripted::Latency(*d)), false),
        Behaviour::TooManyRequests { times } => {
            counted(times, Scripted::Answer(429, "TooManyRequests", false))
        }
        Behaviour::InternalServerError { times } => {
            counted(times, Scripted::Answer(500, "InternalServerError", false))
        }
        Behaviour::ServiceUnavailable { times } => {
            counted(times, Scripted::Answer(503, "ServiceUnavailable", false))
        }
        Behaviour::ExpiredProviderToken { times } => {
            counted(times, Scripted::Answer(403, "ExpiredProviderToken", false))
        }
        Behaviour::Stall { times } => counted(times, Scripted::Stall),
    };
    if done {
        scripts.remove(token);
    }
    out
}

fn record(state: &State, push: RecordedPush) {
    if push.status == 200 {
        state.ok.fetch_add(1, Ordering::Relaxed);
    }
    if state.feed.receiver_count() > 0 {
        let _ = state.feed.send(push.clone());
    }
    if state.opts.max_recorded > 0 {
        let mut r = lock(&state.recorded);
        if r.len() >= state.opts.max_recorded {
            r.pop_front();
        }
        r.push_back(push);
    }
    state.total.send_modify(|t| *t += 1);
}

async fn handle(
    state: Arc<State>,
    connection: u64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let apns_id = parts
        .headers
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_uuid(v))
        .map(str::to_string)
        .unwrap_or_else(new_apns_id);
    let token_res = path_token(&parts.method, parts.uri.path());
    let body = match Limited::new(body, MAX_BODY_READ).collect().await {
        Ok(b) => Some(b.to_bytes()),
        Err(_) => None,
    };
    let token = token_res.as_ref().cloned().unwrap_or_default();
    let mut verdict: Result<(), Rejection> = match (&token_res, &body) {
        (Err(r), _) => Err(*r),
        (Ok(_), None) => Err((413, "PayloadTooLarge")),
        (Ok(t), Some(b)) => check(&state, &parts.headers, t, b),
    };
    let mut timestamp = None;
    if verdict.is_ok() {
        let scripted = match state.fault.take() {
            super::fault::Fault::Off => take_script(&state, &token),
            super::fault::Fault::Unavailable => {
                Some(Scripted::Answer(503, "ServiceUnavailable", false))
            }
            super::fault::Fault::Stall => Some(Scripted::Stall),
        };
        match scripted {
            Some(Scripted::Answer(status, reason, with_ts)) => {
                verdict = Err((status, reason));
                if with_ts {
                    timestamp = Some(unix_ms());
                }
            }
            Some(Scripted::Latency(d)) => tokio::time::sleep(d).await,
            Some(Scripted::Stall) => {
                record(
                    &state,
                    recorded(token, parts.headers, body.as_deref(), 0, None, connection),
                );
                // Never answer; the client resets the stream when it gives up, which
                // drops this future.
                let never: Infallible = std::future::pending().await;
                match never {}
            }
            None => {}
        }
    }
    let (status, reason) = match verdict {
        Ok(()) => (200, None),
        Err((s, r)) => (s, Some(r)),
    };
    record(
        &state,
        recorded(
            token,
            parts.headers,
            body.as_deref(),
            status,
            reason.map(str::to_string),
            connection,
        ),
    );
    let mut resp = Response::new(match reason {
        Some(r) => Full::new(json_reason(r, timestamp)),
        None => Full::new(Bytes::new()),
    });
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    if let Ok(v) = HeaderValue::from_str(&apns_id) {
        resp.headers_mut().insert("apns-id", v);
    }
    if reason.is_some() {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(resp)
}

fn recorded(
    token: String,
    headers: HeaderMap,
    body: Option<&[u8]>,
    status: u16,
    reason: Option<String>,
    connection: u64,
) -> RecordedPush {
    RecordedPush {
        token,
        headers,
        payload: body
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(serde_json::Value::Null),
        status,
        reason,
        connection,
        received_at: Instant::now(),
    }
}

/// Runs the simulator alone until Ctrl-C: writes `ca.pem` and the `.p8` into `dir` and
/// prints the address, the files, the key id and team id, and the `[apns]` lines to use.
pub async fn run_standalone(addr: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    // The control API listens on the next port (or any free port when `addr` has none).
    let control_port = if addr.port() == 0 {
        0
    } else {
        addr.port().wrapping_add(1)
    };
    let sim = ApnsSim::start(ApnsSimOptions {
        addr,
        dir: Some(dir),
        control_addr: Some(SocketAddr::new(addr.ip(), control_port)),
        ..Default::default()
    })
    .await?;
    println!("APNs simulator listening on {}", sim.endpoint());
    if let Some(c) = sim.control_addr() {
        println!("control API (plain HTTP):  http://{c}  (GET /pushes, GET /stats, PUT|DELETE /scripts/{{token}}, POST /goaway, DELETE /pushes)");
    }
    println!("CA certificate to trust: {}", sim.ca_pem_path().display());
    println!("provider key (.p8):      {}", sim.key_path().display());
    println!(
        "key id: {}   team id: {}   topic: {}",
        sim.key_id(),
        sim.team_id(),
        sim.topic()
    );
    println!();
    println!("Configuration for sca-dispatch:");
    println!();
    print!("{}", sim.config_toml());
    println!();
    println!("Device tokens must be 64 hex digits. Ctrl-C stops.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sim.shutdown().await;
    Ok(())
}

/// The control API: plain HTTP/1.1 JSON, for driving a standalone simulator.
///
/// - `GET /pushes` → recorded requests `[{token, status, reason, connection, headers,
///   payload}]`; `DELETE /pushes` forgets them.
/// - `GET /stats` → `{total, delivered, connections}`.
/// - `PUT /scripts/{token}` with `{"behaviour": "unregistered" | "bad_device_token" |
///   "too_many_requests" | "internal_server_error" | "service_unavailable" |
///   "expired_provider_token" | "stall" | "latency", "times"?: N, "ms"?: N}`;
///   `DELETE /scripts/{token}` back to normal.
/// - `POST /goaway` sends GOAWAY on every connection.
pub mod control {
    use super::{lock, Behaviour, State};
    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt as _, Full, Limited};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::TcpListener;

    const MAX_BODY: usize = 4096;

    #[derive(serde::Deserialize)]
    struct ScriptBody {
        behaviour: String,
        times: Option<u32>,
        ms: Option<u64>,
    }

    /// Parses a control-API script into a [`Behaviour`].
    pub fn parse_behaviour(json: &[u8]) -> Result<Behaviour, String> {
        let b: ScriptBody = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let times = b.times.unwrap_or(1);
        Ok(match b.behaviour.as_str() {
            "unregistered" => Behaviour::Unregistered,
            "bad_device_token" => Behaviour::BadDeviceToken,
            "too_many_requests" => Behaviour::TooManyRequests { times },
            "internal_server_error" => Behaviour::InternalServerError { times },
            "service_unavailable" => Behaviour::ServiceUnavailable { times },
            "expired_provider_token" => Behaviour::ExpiredProviderToken { times },
            "stall" => Behaviour::Stall { times },
            "latency" => {
                Behaviour::Latency(Duration::from_millis(b.ms.ok_or("latency needs \"ms\"")?))
            }
            other => return Err(format!("unknown behaviour {other:?}")),
        })
    }

    pub(super) async fn serve(listener: TcpListener, state: Arc<State>) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if conns.len() >= 64 {
                        continue;
                    }
                    let state = state.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }

    fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    async fn handle(
        state: Arc<State>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
            return Ok(json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": "body over 4096 bytes"}),
            ));
        };
        let body = body.to_bytes();
        let path = parts.uri.path();
        let ok = || json(StatusCode::OK, serde_json::json!({"ok": true}));
        let resp = match (&parts.method, path) {
            (&Method::GET, "/pushes") => {
                let list: Vec<serde_json::Value> = state
                    .pushes()
                    .iter()
                    .map(|p| {
                        let headers: serde_json::Map<String, serde_json::Value> = p
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or("").to_string().into())
                            })
                            .collect();
                        serde_json::json!({
                            "token": p.token, "status": p.status, "reason": p.reason,
                            "connection": p.connection, "headers": headers, "payload": p.payload,
                        })
                    })
                    .collect();
                json(StatusCode::OK, serde_json::Value::Array(list))
            }
            (&Method::DELETE, "/pushes") => {
                lock(&state.recorded).clear();
                ok()
            }
            (&Method::GET, "/stats") => json(
                StatusCode::OK,
                serde_json::json!({
                    "total": *state.total.borrow(),
                    "delivered": state.ok.load(Ordering::Relaxed),
                    "connections": state.connections.load(Ordering::Relaxed),
                }),
            ),
            (&Method::POST, "/goaway") => {
                state.goaway();
                ok()
            }
            (m, p) if p.starts_with("/scripts/") => {
                let token = &p["/scripts/".len()..];
                if token.is_empty() {
                    json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": "no token"}),
                    )
                } else if m == Method::DELETE {
                    lock(&state.scripts).remove(token);
                    ok()
                } else if m == Method::PUT || m == Method::POST {
                    match parse_behaviour(&body) {
                        Ok(b) => {
                            state.script(token, b);
                            ok()
                        }
                        Err(e) => json(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            serde_json::json!({"error": e}),
                        ),
                    }
                } else {
                    json(
                        StatusCode::METHOD_NOT_ALLOWED,
                        serde_json::json!({"error": "PUT or DELETE"}),
                    )
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "unknown route"}),
            ),
        };
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_scripts_parse() {
        use control::parse_behaviour as p;
        assert_eq!(
            p(br#"{"behaviour":"unregistered"}"#),
            Ok(Behaviour::Unregistered)
        );
        assert_eq!(
            p(br#"{"behaviour":"service_unavailable","times":2}"#),
            Ok(Behaviour::ServiceUnavailable { times: 2 })
        );
        assert_eq!(
            p(br#"{"behaviour":"stall"}"#),
            Ok(Behaviour::Stall { times: 1 })
        );
        assert_eq!(
            p(br#"{"behaviour":"latency","ms":250}"#),
            Ok(Behaviour::Latency(Duration::from_millis(250)))
        );
        assert!(p(br#"{"behaviour":"latency"}"#).is_err());
        assert!(p(br#"{"behaviour":"explode"}"#).is_err());
        assert!(p(b"nope").is_err());
    }

    #[test]
    fn uuids_and_paths() {
        assert!(is_uuid(&new_apns_id()));
        assert!(!is_uuid("not-a-uuid"));
        assert_eq!(
            path_token(&Method::POST, "/3/device/abc"),
            Ok("abc".to_string())
        );
        assert_eq!(
            path_token(&Method::GET, "/3/device/abc"),
            Err((405, "MethodNotAllowed"))
        );
        assert_eq!(
            path_token(&Method::POST, "/3/device/"),
            Err((400, "MissingDeviceToken"))
        );
        assert_eq!(
            path_token(&Method::POST, "/2/device/abc"),
            Err((404, "BadPath"))
        );
    }
}
