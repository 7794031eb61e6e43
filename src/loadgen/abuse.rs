//! `sca-dispatch load --abuse N`: the HTTP API under abuse while real traffic flows. The
//! load runs once alone (the baseline), then again while N requests of each kind of abuse
//! go to the same daemon(s): malformed JSON, oversized bodies, wrong methods, unknown
//! paths, very long paths, very long query strings, bad bearer tokens and forged device
//! signatures. Forged signatures and bad tokens are aimed at live challenges of devices
//! that sign (published here, ttl 900 s), which must still be pending at the end. The
//! report counts answers by kind and status class, keeps the first 5xx answers, and
//! compares real traffic's latencies with and without the abuse.

use super::cli::LoadArgs;
use super::report::Report;
use super::sims::Sims;
use super::LoadOptions;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Live challenges with a signing device that the forgeries and bad tokens aim at.
const SIGNED_CHALLENGES: usize = 20;
/// Abuse requests in flight at once.
const CONCURRENCY: usize = 32;
/// One abuse request may take this long before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// 5xx answers kept in the report as examples.
const MAX_SAMPLES: usize = 20;

/// A kind of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbuseKind {
    MalformedJson,
    OversizedBody,
    WrongMethod,
    UnknownPath,
    LongPath,
    LongQuery,
    BadToken,
    ForgedSignature,
}

impl AbuseKind {
    pub const ALL: [AbuseKind; 8] = [
        AbuseKind::MalformedJson,
        AbuseKind::OversizedBody,
        AbuseKind::WrongMethod,
        AbuseKind::UnknownPath,
        AbuseKind::LongPath,
        AbuseKind::LongQuery,
        AbuseKind::BadToken,
        AbuseKind::ForgedSignature,
    ];
    pub fn name(self) -> &'static str {
        match self {
            AbuseKind::MalformedJson => "malformed_json",
            AbuseKind::OversizedBody => "oversized_body",
            AbuseKind::WrongMethod => "wrong_method",
            AbuseKind::UnknownPath => "unknown_path",
            AbuseKind::LongPath => "long_path",
            AbuseKind::LongQuery => "long_query",
            AbuseKind::BadToken => "bad_token",
            AbuseKind::ForgedSignature => "forged_signature",
        }
    }
}

/// One abuse request.
#[derive(Debug, Clone)]
pub struct Abuse {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(&'static str, hyper::header::HeaderValue)>,
    pub body: Bytes,
}

/// What the requests are built from.
pub struct Targets {
    /// Challenges held by the daemon, each with device `d0` signing with `key`.
    pub signed: Vec<String>,
    pub key: p256::ecdsa::SigningKey,
    /// The bearer token of the API (none: the daemon runs unauthenticated).
    pub token: Option<String>,
}

fn hv(s: &str) -> hyper::header::HeaderValue {
    hyper::header::HeaderValue::from_str(s)
        .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("x"))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sign(key: &p256::ecdsa::SigningKey, msg: &str) -> String {
    use p256::ecdsa::signature::Signer;
    let sig: p256::ecdsa::Signature = key.sign(msg.as_bytes());
    b64(sig.to_der().as_bytes())
}

/// The base64 SPKI of a signing key's public half.
pub fn public_key_b64(key: &p256::ecdsa::SigningKey) -> String {
    use p256::pkcs8::EncodePublicKey;
    key.verifying_key()
        .to_public_key_der()
        .map(|d| b64(d.as_bytes()))
        .unwrap_or_default()
}

impl Targets {
    fn auth(&self) -> Vec<(&'static str, hyper::header::HeaderValue)> {
        self.token
            .iter()
            .map(|t| ("authorization", hv(&format!("Bearer {t}"))))
            .collect()
    }

    fn signed_id(&self, rng: &mut StdRng) -> String {
        match self.signed.len() {
            0 => "abuse-none".into(),
            n => self.signed[rng.gen_range(0..n)].clone(),
        }
    }

    /// Request number `i` of `kind` (deterministic in both).
    pub fn build(&self, kind: AbuseKind, i: u64) -> Abuse {
        let mut rng = StdRng::seed_from_u64((kind as u64) << 40 ^ i);
        let unknown = format!("abuse-{i}");
        let json_ct = ("content-type", hv("application/json"));
        let post = |target: String, body: Vec<u8>, headers| Abuse {
            method: Method::POST,
            target,
            headers,
            body: Bytes::from(body),
        };
        match kind {
            AbuseKind::MalformedJson => {
                let valid = br#"{"device_id":"d0","decision":"approve","signature":"AAAA"}"#;
                let body: Vec<u8> = match rng.gen_range(0..9) {
                    // A strict prefix of an object is never valid JSON.
                    0 => valid[..rng.gen_range(0..valid.len() - 1)].to_vec(),
                    1 => (0..rng.gen_range(1..512)).map(|_| rng.gen()).collect(),
                    2 => br#"{"device_id":1,"decision":true}"#.to_vec(),
                    3 => br#"{"device_id":"d0","decision":"maybe"}"#.to_vec(),
                    4 => "[".repeat(rng.gen_range(200..8000)).into_bytes(),
                    5 => b"{\"device_id\":\"\xff\xfe\",\"decision\":\"approve\"}".to_vec(),
                    6 => br#"{"device_id":"d0","decision":"approve","number":1e400}"#.to_vec(),
                    7 => br#"{"code":123456}"#.to_vec(),
                    _ => br#"{"code":"12345a","extra":{"nested":[1,2,{"x":null}]}}"#.to_vec(),
                };
                let id = if rng.gen_bool(0.5) {
                    self.signed_id(&mut rng)
                } else {
                    unknown
                };
                let op = if rng.gen_bool(0.7) { "decision" } else { "otp" };
                let mut h = self.auth();
                h.push(json_ct);
                post(format!("/v1/challenges/{id}/{op}"), body, h)
            }
            AbuseKind::OversizedBody => {
                let size = [8193, 12_000, 16_384, 32_768, 65_536][rng.gen_range(0..5)];
                let mut body = br#"{"device_id":"d0","decision":"approve","pad":""#.to_vec();
                body.resize(size - 2, b'x');
                body.extend_from_slice(b"\"}");
                let op = ["decision", "otp"][rng.gen_range(0..2)];
                let mut h = self.auth();
                h.push(json_ct);
                post(format!("/v1/challenges/{unknown}/{op}"), body, h)
            }
            AbuseKind::WrongMethod => {
                let id = self.signed_id(&mut rng);
                let (method, target) = match rng.gen_range(0..4) {
                    0 => {
                        let m = [Method::GET, Method::PUT, Method::PATCH, Method::OPTIONS];
                        let op = ["decision", "otp", "sms"][rng.gen_range(0..3)];
                        (
                            m[rng.gen_range(0..m.len())].clone(),
                            format!("/v1/challenges/{id}/{op}"),
                        )
                    }
                    1 => {
                        let m = [Method::POST, Method::PUT, Method::PATCH];
                        (
                            m[rng.gen_range(0..m.len())].clone(),
                            format!("/v1/challenges/{id}"),
                        )
                    }
                    2 => {
                        let m = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
                        let p = ["/healthz", "/readyz", "/openapi.json"][rng.gen_range(0..3)];
                        (m[rng.gen_range(0..m.len())].clone(), p.to_string())
                    }
                    _ => (
                        Method::from_bytes(b"FROB").unwrap_or(Method::TRACE),
                        format!("/v1/challenges/{id}/decision"),
                    ),
                };
                Abuse {
                    method,
                    target,
                    headers: self.auth(),
                    body: Bytes::new(),
                }
            }
            AbuseKind::UnknownPath => {
                let paths = [
                    "/".to_string(),
                    "/v1".into(),
                    "/v1/challenges".into(),
                    "/v2/challenges/x".into(),
                    format!("/v1/challenges/{unknown}/decision/extra"),
                    format!("/v1/challenges/{unknown}/bogus"),
                    "/admin".into(),
                    "/.env".into(),
                    "/metrics".into(),
                    "/v1/challenges/%2e%2e/decision".into(),
                    "/v1//challenges//x".into(),
                    "/v1/challenges/%00/otp".into(),
                    format!("/v1/challenges/{}/decision", "ü".repeat(10)).replace('ü', "%C3%BC"),
                    format!("/{}", rng.gen::<u64>()),
                ];
                let m = [Method::GET, Method::POST, Method::DELETE];
                Abuse {
                    method: m[rng.gen_range(0..m.len())].clone(),
                    target: paths[rng.gen_range(0..paths.len())].clone(),
                    headers: self.auth(),
                    body: Bytes::new(),
                }
            }
            AbuseKind::LongPath => {
                let len = [1024, 4096, 8192, 16_384, 32_768][rng.gen_range(0..5)];
                let seg = "a".repeat(len);
                let target = match rng.gen_range(0..3) {
                    0 => format!("/v1/challenges/{seg}/decision"),
                    1 => format!("/v1/challenges/x/{seg}"),
                    _ => format!("/{}", "x/".repeat(len / 2)),
                };
                let method = if target.ends_with("/decision") {
                    Method::POST
                } else {
                    Method::GET
                };
                Abuse {
                    method,
                    target,
                    headers: self.auth(),
                    body: Bytes::new(),
                }
            }
            AbuseKind::LongQuery => {
                let len = [1024, 4096, 8192, 16_384, 32_768][rng.gen_range(0..5)];
                let query = match rng.gen_range(0..7) {
                    0 => format!("wait={}", "9".repeat(len)),
                    1 => "a=b&".repeat(len / 4),
                    2 => format!("wait=0.{}", "0".repeat(len)),
                    3 => "wait=1e309".into(),
                    4 => ["wait=NaN", "wait=-1", "wait=inf", "wait=0x10", "wait=31"]
                        [rng.gen_range(0..5)]
                    .into(),
                    5 => format!("wait={}", "%FF".repeat(len / 3)),
                    _ => format!("{}=1", "w".repeat(len)),
                };
                Abuse {
                    method: Method::GET,
                    target: format!("/v1/challenges/{unknown}?{query}"),
                    headers: self.auth(),
                    body: Bytes::new(),
                }
            }
            AbuseKind::BadToken => {
                let id = self.signed_id(&mut rng);
                let t = self.token.clone().unwrap_or_else(|| "token".into());
                let bad: Option<hyper::header::HeaderValue> = match rng.gen_range(0..9) {
                    0 => None,
                    1 => Some(hv("Bearer wrong")),
                    2 => Some(hv(&format!("Bearer {}", &t[..t.len().saturating_sub(1)]))),
                    3 => Some(hv(&format!("Bearer {t}x"))),
                    4 => Some(hv("Basic dXNlcjpwYXNz")),
                    5 => Some(hv("Bearer")),
                    6 => Some(hv(&format!("Bearer {}", "A".repeat(8000)))),
                    7 => hyper::header::HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").ok(),
                    _ => Some(hv(&format!("Token {t}"))),
                };
                let headers: Vec<_> = bad.into_iter().map(|v| ("authorization", v)).collect();
                let (method, target, body) = match rng.gen_range(0..4) {
                    0 => (Method::GET, format!("/v1/challenges/{id}"), Bytes::new()),
                    1 => (
                        Method::POST,
                        format!("/v1/challenges/{id}/otp"),
                        Bytes::from_static(br#"{"code":"123456"}"#),
                    ),
                    2 => (
                        Method::POST,
                        format!("/v1/challenges/{id}/sms"),
                        Bytes::new(),
                    ),
                    _ => (Method::DELETE, format!("/v1/challenges/{id}"), Bytes::new()),
                };
                Abuse {
                    method,
                    target,
                    headers,
                    body,
                }
            }
            AbuseKind::ForgedSignature => {
                let id = self.signed_id(&mut rng);
                let approve = rng.gen_bool(0.5);
                let decision = if approve { "approve" } else { "deny" };
                let other = if approve { "deny" } else { "approve" };
                let signature = match rng.gen_range(0..7) {
                    0 => b64(&(0..rng.gen_range(64..73))
                        .map(|_| rng.gen())
                        .collect::<Vec<u8>>()),
                    // The right message, another key.
                    1 => {
                        let k = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
                        sign(&k, &format!("sca-v1|{id}|{decision}|"))
                    }
                    // The right key, the other decision or another challenge.
                    2 => sign(&self.key, &format!("sca-v1|{id}|{other}|")),
                    3 => sign(&self.key, &format!("sca-v1|{unknown}|{decision}|")),
                    4 => "not base64 !!".into(),
                    5 => String::new(),
                    _ => "A".repeat(6000),
                };
                let body = json!({"device_id": "d0", "decision": decision, "signature": signature});
                let mut headers = vec![json_ct];
                if rng.gen_bool(0.3) {
                    headers.extend(self.auth());
                }
                post(
                    format!("/v1/challenges/{id}/decision"),
                    body.to_string().into_bytes(),
                    headers,
                )
            }
        }
    }
}

/// Answers by kind and status (0: no answer: refused, reset or timed out), and examples
/// of 5xx answers.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<(AbuseKind, u16), u64>>,
    samples: Mutex<Vec<Value>>,
    sent: AtomicU64,
}

impl Tally {
    fn record(&self, kind: AbuseKind, a: &Abuse, status: u16, body: &[u8]) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((kind, status)).or_default() += 1;
        }
        if status >= 500 {
            if let Ok(mut s) = self.samples.lock() {
                if s.len() < MAX_SAMPLES {
                    let target: String = a.target.chars().take(120).collect();
                    s.push(json!({
                        "kind": kind.name(), "method": a.method.as_str(), "target": target,
                        "status": status,
                        "body": String::from_utf8_lossy(&body[..body.len().min(300)]),
                    }));
                }
            }
        }
    }

    fn class(status: u16) -> &'static str {
        match status {
            0 => "no_answer",
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        }
    }

    /// Per kind: by status and by class; and the totals by class.
    pub fn to_json(&self) -> Value {
        let counts = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        let mut kinds = serde_json::Map::new();
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for k in AbuseKind::ALL {
            let mut by_status = serde_json::Map::new();
            let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
            let mut sent = 0;
            for (&(kind, status), &n) in &counts {
                if kind != k {
                    continue;
                }
                sent += n;
                let key = if status == 0 {
                    "no_answer".to_string()
                } else {
                    status.to_string()
                };
                by_status.insert(key, json!(n));
                *by_class.entry(Self::class(status)).or_default() += n;
                *totals.entry(Self::class(status)).or_default() += n;
            }
            kinds.insert(
                k.name().into(),
                json!({"sent": sent, "by_status": by_status, "by_class": by_class}),
            );
        }
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        json!({"kinds": kinds, "totals": totals, "five_xx_samples": samples})
    }

    pub fn count_class(&self, class: &str) -> u64 {
        let counts = self.counts.lock().map(|c| c.clone()).unwrap_or_default();
        counts
            .iter()
            .filter(|((_, s), _)| Self::class(*s) == class)
            .map(|(_, n)| n)
            .sum()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http()
}

/// Sends one request; the status (0 when no answer came) and the body.
async fn send(client: &HttpClient, base: &str, a: &Abuse) -> (u16, Bytes) {
    let mut b = Request::builder()
        .method(a.method.clone())
        .uri(format!("{base}{}", a.target));
    for (k, v) in &a.headers {
        b = b.header(*k, v.clone());
    }
    let Ok(req) = b.body(Full::new(a.body.clone())) else {
        return (0, Bytes::new());
    };
    let fut = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map(|c| c.to_bytes());
        Some((status, body.unwrap_or_default()))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Some(r)) => r,
        _ => (0, Bytes::new()),
    }
}

/// Sends `per_kind` requests of every kind, interleaved, `CONCURRENCY` at a time, spread
/// over the APIs and evenly over `spread` (as fast as they are answered when `None`).
pub async fn run_abuse(
    api: &[String],
    targets: Arc<Targets>,
    per_kind: u64,
    spread: Option<Duration>,
) -> Arc<Tally> {
    use futures_util::stream::{self, StreamExt};
    let tally = Arc::new(Tally::default());
    let client = client();
    let n = AbuseKind::ALL.len() as u64;
    let total = per_kind * n;
    let api: Vec<String> = api.to_vec();
    let start = tokio::time::Instant::now();
    let gap = spread.map(|s| s.div_f64(total.max(1) as f64));
    stream::iter(0..total)
        .for_each_concurrent(CONCURRENCY, |j| {
            let kind = AbuseKind::ALL[(j % n) as usize];
            let i = j / n;
            let a = targets.build(kind, i);
            let base = api[(j as usize) % api.len()].clone();
            let client = client.clone();
            let tally = tally.clone();
            async move {
                if let Some(gap) = gap {
                    tokio::time::sleep_until(start + gap.mul_f64(j as f64)).await;
                }
                let (status, body) = send(&client, &base, &a).await;
                tally.record(kind, &a, status, &body);
            }
        })
        .await;
    tally
}

/// Publishes the challenges the forgeries aim at and waits until the daemon holds them.
async fn publish_signed(opts: &LoadOptions, targets: &mut Targets) -> anyhow::Result<()> {
    let conn = crate::amqp::client::connect(&opts.amqp_url, "sca-dispatch abuse")
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let prefix = format!("abuse-{:08x}-", rand::random::<u32>());
    let key = public_key_b64(&targets.key);
    for i in 0..SIGNED_CHALLENGES {
        let id = format!("{prefix}s{i}");
        let body = json!({
            "v": 1, "challenge_id": id, "user_id": format!("{prefix}user-{i}"),
            "kind": "login", "created_at": crate::wire::rfc3339_ms(crate::engine::now_ms()),
            "ttl_seconds": crate::challenge::model::MAX_TTL_SECONDS,
            "devices": [{"device_id": "d0", "platform": "fcm", "token": format!("abuse-tok-{i}"),
                         "public_key": key}],
        });
        ch.basic_publish(
            "".into(),
            opts.challenges_queue.as_str().into(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await?
        .await?;
        targets.signed.push(id);
    }
    let _ = conn.close(200, "abuse challenges published".into()).await;
    let client = client();
    let end = Instant::now() + Duration::from_secs(30);
    for id in &targets.signed {
        loop {
            let a = Abuse {
                method: Method::GET,
                target: format!("/v1/challenges/{id}"),
                headers: targets.auth(),
                body: Bytes::new(),
            };
            if send(&client, &opts.api[0], &a).await.0 == 200 {
                break;
            }
            if Instant::now() >= end {
                anyhow::bail!("the daemon does not hold challenge {id} after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The signed challenges still pending (none must have been decided by the abuse), then
/// cancels them.
async fn check_and_cancel_signed(api: &str, targets: &Targets) -> (usize, usize) {
    let client = client();
    let (mut pending, mut decided) = (0, 0);
    for id in &targets.signed {
        let get = Abuse {
            method: Method::GET,
            target: format!("/v1/challenges/{id}"),
            headers: targets.auth(),
            body: Bytes::new(),
        };
        let (status, body) = send(&client, api, &get).await;
        let state = serde_json::from_slice::<Value>(&body).unwrap_or_default()["state"].clone();
        if status == 200 && state == "pending" {
            pending += 1;
        } else {
            decided += 1;
        }
        let cancel = Abuse {
            method: Method::DELETE,
            ..get
        };
        let _ = send(&client, api, &cancel).await;
    }
    (pending, decided)
}

/// Real traffic's figures of one run.
fn traffic(r: &Report) -> Value {
    let j = &r.json;
    json!({
        "published": j["published"], "outcomes": j["outcomes"], "lost": j["lost"],
        "errors": j["errors"],
        "publish_to_outcome": j["latency"]["publish_to_outcome"],
        "decision_to_outcome": j["latency"]["decision_to_outcome"],
        "rates": j["rates"],
        "daemon": j["daemon"],
        "machine": j["machine"],
    })
}

fn ratio(under: &Report, base: &Report, stage: &str) -> Option<f64> {
    let p = |r: &Report| r.json["latency"][stage]["p99_ms"].as_f64();
    match (p(under), p(base)) {
        (Some(u), Some(b)) if b > 0.0 => Some((u / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// Runs the baseline, then the load again under abuse; writes the report to
/// `--report PATH.json`. The exit code is 0 when no 5xx came, nothing was lost, every
/// signed challenge stayed pending and the p99 stayed within twice the baseline's.
pub async fn main(
    args: &LoadArgs,
    opts: LoadOptions,
    sims: &Sims,
    per_kind: u64,
) -> anyhow::Result<i32> {
    let mut targets = Targets {
        signed: Vec::new(),
        key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
        token: opts.api_token.clone(),
    };
    publish_signed(&opts, &mut targets).await?;
    let targets = Arc::new(targets);
    println!("Baseline: real traffic alone.");
    let base = super::run(opts.clone(), sims.feeds()).await?;
    print!("{}", base.summary());
    println!(
        "\nUnder abuse: real traffic again with {per_kind} requests of each of {} kinds of abuse.",
        AbuseKind::ALL.len()
    );
    let started = Instant::now();
    // Spread over 90 % of the traffic's publishing time, so that it meets all of it.
    let spread = opts.duration.map(|d| d.mul_f64(0.9));
    let api = opts.api.clone();
    let targets2 = targets.clone();
    let abuse = tokio::spawn(async move { run_abuse(&api, targets2, per_kind, spread).await });
    let under = super::run(opts.clone(), sims.feeds()).await?;
    let traffic_s = started.elapsed().as_secs_f64();
    let tally = abuse.await.context("the abuse task failed")?;
    let abuse_s = started.elapsed().as_secs_f64();
    print!("{}", under.summary());
    let (pending, decided) = check_and_cancel_signed(&opts.api[0], &targets).await;
    let five = tally.count_class("5xx");
    let sent = tally.sent.load(Ordering::Relaxed);
    let r_out = ratio(&under, &base, "publish_to_outcome");
    let r_dec = ratio(&under, &base, "decision_to_outcome");
    let within = [r_out, r_dec].iter().all(|r| r.is_some_and(|r| r <= 2.0));
    let lost = base.lost() + under.lost();
    let json = json!({
        "v": 1,
        "per_kind": per_kind,
        "abuse_requests": sent,
        "abuse_seconds": (abuse_s * 10.0).round() / 10.0,
        "abuse_per_s": (sent as f64 / abuse_s.max(1e-3)).round(),
        "abuse_outlasted_traffic_s": ((abuse_s - traffic_s).max(0.0) * 10.0).round() / 10.0,
        "abuse": tally.to_json(),
        "signed_challenges": {"count": targets.signed.len(), "still_pending": pending, "decided": decided},
        "real_traffic": {
            "baseline": traffic(&base),
            "under_abuse": traffic(&under),
            "p99_ratio": {"publish_to_outcome": r_out, "decision_to_outcome": r_dec},
        },
        "targets": {
            "five_xx": five, "lost": lost, "p99_within_2x": within,
            "met": five == 0 && lost == 0 && decided == 0 && within,
        },
    });
    let path = args.report.with_extension("json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "\nAbuse: {sent} requests in {abuse_s:.1} s; by class {}",
        json["abuse"]["totals"]
    );
    println!(
        "  5xx: {five}; signed challenges decided by the abuse: {decided} of {}",
        targets.signed.len()
    );
    println!(
        "  real traffic p99 under abuse / alone: publish→outcome {}, decision→outcome {}",
        r_out.map_or("n/a".into(), |r| format!("{r}×")),
        r_dec.map_or("n/a".into(), |r| format!("{r}×"))
    );
    println!("report: {}", path.display());
    Ok(if json["targets"]["met"] == true { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets {
            signed: vec!["c1".into()],
            key: p256::ecdsa::SigningKey::from_bytes(&[3u8; 32].into()).unwrap(),
            token: Some("tok".into()),
        }
    }

    #[test]
    fn every_kind_builds_requests_that_never_act_on_a_challenge() {
        let t = targets();
        for kind in AbuseKind::ALL {
            for i in 0..200 {
                let a = t.build(kind, i);
                assert!(a.target.starts_with('/'), "{kind:?} {}", a.target);
                let authed = a
                    .headers
                    .iter()
                    .any(|(k, v)| *k == "authorization" && v == "Bearer tok");
                // Nothing that could be a valid operation on the live challenge.
                if a.target.starts_with("/v1/challenges/c1") {
                    let ok_json =
                        serde_json::from_slice::<crate::wire::ops::DecisionBody>(&a.body).is_ok();
                    match kind {
                        AbuseKind::MalformedJson => assert!(!ok_json, "{:?}", a.body),
                        AbuseKind::BadToken => assert!(!authed),
                        AbuseKind::WrongMethod => {
                            assert!(a.method != Method::DELETE || a.target != "/v1/challenges/c1")
                        }
                        _ => {}
                    }
                }
                if kind == AbuseKind::OversizedBody {
                    assert!(a.body.len() > 8192);
                }
            }
        }
    }

    #[test]
    fn forged_signatures_never_verify() {
        let t = targets();
        let vk = t.key.verifying_key();
        for i in 0..100 {
            let a = t.build(AbuseKind::ForgedSignature, i);
            let v: Value = serde_json::from_slice(&a.body).unwrap();
            let d = v["decision"].as_str().unwrap();
            let msg = crate::challenge::signature::signed_message("c1", d, "");
            let sig = v["signature"].as_str().unwrap();
            assert!(!crate::challenge::signature::verify(vk, &msg, sig), "{i}");
        }
    }

    #[test]
    fn the_tally_counts_by_kind_and_class() {
        let t = Tally::default();
        let a = targets().build(AbuseKind::UnknownPath, 0);
        t.record(AbuseKind::UnknownPath, &a, 404, b"");
        t.record(AbuseKind::UnknownPath, &a, 503, b"busy");
        t.record(AbuseKind::LongPath, &a, 0, b"");
        let j = t.to_json();
        assert_eq!(j["kinds"]["unknown_path"]["by_class"]["4xx"], 1);
        assert_eq!(j["totals"]["5xx"], 1);
        assert_eq!(j["totals"]["no_answer"], 1);
        assert_eq!(j["five_xx_samples"][0]["body"], "busy");
        assert_eq!(t.count_class("5xx"), 1);
    }
}
