//! The bare relay: the I/O one challenge needs and nothing else, the baseline the
//! end-to-end benchmark measures the daemon against (`sca-dispatch simulate relay
//! --config FILE`, hidden).
//!
//! Per challenge it does exactly the daemon's I/O: a delivery from a quorum queue (the
//! same prefetch and consumer channels), serde into a small struct, a push to every
//! device (APNs over TLS/HTTP/2 with a provider token made once; FCM over the same hyper
//! client stack with its OAuth2 access token fetched once), the device's
//! `POST /v1/challenges/{id}/decision` on a tiny hyper server, the withdrawal push to the
//! other devices, one outcome published (persistent, mandatory) with a publisher confirm,
//! and the delivery acked after the confirm by the daemon's own per-channel ack batcher
//! (`amqp::acks`: multiple-acks for contiguous tags). There is no state machine, no limit, no
//! timer, no metric, no retry and no authentication: a push or publish that fails is
//! dropped, a challenge nobody decides stays unacked.
//!
//! # Why a hidden subcommand of the daemon's binary
//! It runs as its own process, so `/proc` gives its CPU apart from the broker's and the
//! load tool's, as it does the daemon's. Being the same binary, it has the same compiler
//! profile, allocator (mimalloc) and tokio runtime set-up (`worker_threads`), and it
//! reads the daemon's own configuration file: queue names, prefetch, consumers, provider
//! endpoints, keys and the listen address are the daemon's by construction, so the two
//! differ only in what the daemon does beyond the I/O. It sits behind the `tools`
//! feature with the simulators and is never part of the daemon's code.

use crate::amqp::acks::{run_batcher, AckOp};
use crate::config::Settings;
use crate::push::apns::jwt;
use crate::push::fcm::auth::{sign_assertion, ServiceAccount};
use crate::wire::json::{Json, Millis};
use anyhow::Context;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// At stop, how long decisions taken may take to be confirmed and acked.
const DRAIN: Duration = Duration::from_secs(5);
/// Largest decision body read (the daemon's `http.max_body_bytes` default).
const MAX_BODY: usize = 8 * 1024;

/// The challenge fields the relay uses (CONTRACT §3); the rest is ignored.
#[derive(Deserialize)]
struct Challenge {
    challenge_id: String,
    user_id: String,
    kind: crate::challenge::model::Kind,
    ttl_seconds: u64,
    #[serde(default)]
    devices: Vec<Device>,
}

#[derive(Deserialize)]
struct Device {
    device_id: String,
    platform: Platform,
    token: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Platform {
    Apns,
    Fcm,
    /// A platform the relay has no client for: not pushed.
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Approve,
    Deny,
}

#[derive(Deserialize)]
struct Decision {
    device_id: String,
    decision: Verdict,
}

/// A challenge awaiting its decision.
struct Held {
    user_id: String,
    kind: crate::challenge::model::Kind,
    devices: Vec<Device>,
    /// Which consumer channel's batcher acks it, and its delivery tag there.
    consumer: usize,
    tag: u64,
    received: Instant,
}

/// Binds `http.addr`, prints the bound address on the first line of stdout, and
/// [`serve`]s until `stop` completes.
pub async fn run(s: Settings, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(s.http.addr)
        .await
        .with_context(|| format!("binding {}", s.http.addr))?;
    println!("{}", listener.local_addr()?);
    serve(s, listener, stop).await
}

/// Connects, consumes, and answers decisions on `listener` (from the moment consumers
/// run) until `stop` completes.
pub async fn serve(
    s: Settings,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let amqp = &s.config.amqp;
    let conn = crate::amqp::client::connect(&amqp.url, "sca-dispatch relay")
        .await
        .context("connecting to RabbitMQ")?;
    crate::amqp::topology::declare(&conn, amqp)
        .await
        .context("declaring the topology")?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let apns = match &s.apns {
        Some(_) => Some(Apns::connect(&s).await.context("connecting to APNs")?),
        None => None,
    };
    let fcm = match &s.fcm {
        Some(_) => Some(Fcm::connect(&s).await.context("FCM access token")?),
        None => None,
    };
    // Consumer channels and their ack batchers first, the consumers once the relay that
    // takes their deliveries exists.
    let prefetch = u16::try_from(amqp.prefetch).unwrap_or(u16::MAX);
    let mut channels = Vec::new();
    let mut acks = Vec::new();
    for _ in 0..amqp.consumers {
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_batcher(ch.clone(), rx));
        acks.push(tx);
        channels.push(ch);
    }
    let relay = Arc::new(Relay {
        held: DashMap::new(),
        apns,
        fcm,
        publisher,
        outcomes: amqp.outcomes_exchange.clone(),
        acks,
        finishing: AtomicUsize::new(0),
    });
    for (i, ch) in channels.into_iter().enumerate() {
        let consumer = ch
            .basic_consume(
                amqp.challenges_queue.as_str().into(),
                format!("relay-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(consume(relay.clone(), i, ch, consumer));
    }
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let relay = relay.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let relay = relay.clone();
                async move { Ok::<_, std::convert::Infallible>(relay.http(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
    // Drain: decisions taken get their outcome confirmed and their delivery acked before
    // the connection closes (bounded; what is left is redelivered).
    let until = tokio::time::Instant::now() + DRAIN;
    while relay.finishing.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for tx in &relay.acks {
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(AckOp::Flush(done)).is_ok() {
            let _ = tokio::time::timeout_at(until, wait).await;
        }
    }
    let _ = conn.close(200, "relay stopped".into()).await;
    Ok(())
}

struct Relay {
    held: DashMap<String, Held>,
    apns: Option<Apns>,
    fcm: Option<Fcm>,
    publisher: Channel,
    outcomes: String,
    /// One ack batcher per consumer channel.
    acks: Vec<mpsc::UnboundedSender<AckOp>>,
    /// Decisions whose outcome is not yet confirmed (for the drain at stop).
    finishing: AtomicUsize,
}

/// Takes one consumer channel's deliveries: parse, hold, push.
async fn consume(relay: Arc<Relay>, i: usize, ch: Channel, mut consumer: lapin::Consumer) {
    while let Some(Ok(d)) = consumer.next().await {
        let tag = d.delivery_tag;
        let Ok(c) = serde_json::from_slice::<Challenge>(&d.data) else {
            let _ = ch
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .await;
            continue;
        };
        let expires_at_ms = crate::clock::now_ms() + (c.ttl_seconds as i64) * 1000;
        let pushes: Vec<(Platform, String)> = c
            .devices
            .iter()
            .map(|d| (d.platform, d.token.clone()))
            .collect();
        let (id, kind) = (c.challenge_id, c.kind);
        match relay.held.entry(id.clone()) {
            dashmap::Entry::Occupied(_) => {
                let _ = ch
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await;
                continue;
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(Held {
                    user_id: c.user_id,
                    kind,
                    devices: c.devices,
                    consumer: i,
                    tag,
                    received: Instant::now(),
                });
            }
        }
        let r = relay.clone();
        tokio::spawn(async move {
            let all = pushes
                .iter()
                .map(|(p, token)| r.push(*p, token, &id, Content::Challenge(kind, expires_at_ms)));
            futures_util::future::join_all(all).await;
        });
    }
}

#[derive(Clone, Copy)]
enum Content {
    Challenge(crate::challenge::model::Kind, i64),
    Withdraw,
}

fn json(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Relay {
    async fn http(self: &Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if req.method() == Method::GET && (path == "/readyz" || path == "/healthz") {
            return json(StatusCode::OK, br#"{"status":"ok"}"#);
        }
        let id = match path
            .strip_prefix("/v1/challenges/")
            .and_then(|p| p.strip_suffix("/decision"))
        {
            Some(id) if req.method() == Method::POST && !id.contains('/') => id.to_string(),
            _ => return json(StatusCode::NOT_FOUND, br#"{"error":"not_found"}"#),
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    br#"{"error":"body_too_large"}"#,
                )
            }
        };
        let Ok(d) = serde_json::from_slice::<Decision>(&body) else {
            return json(StatusCode::UNPROCESSABLE_ENTITY, br#"{"error":"bad_body"}"#);
        };
        // First decision wins: whoever removes the entry.
        let Some((id, held)) = self.held.remove(&id) else {
            return json(StatusCode::NOT_FOUND, br#"{"error":"not_found"}"#);
        };
        let verdict = d.decision;
        let me = self.clone();
        self.finishing.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            me.finish(id, held, d).await;
            me.finishing.fetch_sub(1, Ordering::SeqCst);
        });
        match verdict {
            Verdict::Approve => json(StatusCode::OK, br#"{"outcome":"approved"}"#),
            Verdict::Deny => json(StatusCode::OK, br#"{"outcome":"denied"}"#),
        }
    }

    /// Withdraws the other devices' pushes and publishes the outcome; acks the delivery
    /// once the broker confirmed it.
    async fn finish(&self, id: String, held: Held, d: Decision) {
        let withdraw = held
            .devices
            .iter()
            .filter(|x| x.device_id != d.device_id)
            .map(|x| self.push(x.platform, &x.token, &id, Content::Withdraw));
        let outcome = match d.decision {
            Verdict::Approve => "approved",
            Verdict::Deny => "denied",
        };
        let publish = async {
            let mut j = Json::with_capacity(256);
            j.raw("{\"v\":1,\"challenge_id\":")
                .str(&id)
                .raw(",\"user_id\":")
                .str(&held.user_id)
                .raw(",\"kind\":")
                .str(held.kind.as_str())
                .raw(",\"outcome\":")
                .str(outcome)
                .raw(",\"channel\":\"push\",\"device_id\":")
                .str(&d.device_id)
                .raw(",\"reason\":null,\"decided_at\":")
                .time(
                    crate::clock::now_ms(),
                    Millis::Always,
                    crate::wire::rfc3339_ms,
                )
                .raw(",\"elapsed_ms\":")
                .int(held.received.elapsed().as_millis() as i64)
                .raw("}");
            let body = j.into_vec();
            let rk = format!("outcome.{}.{outcome}", held.kind.as_str());
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            let confirmed = match self
                .publisher
                .basic_publish(
                    self.outcomes.as_str().into(),
                    rk.as_str().into(),
                    opts,
                    &body,
                    props,
                )
                .await
            {
                Ok(c) => matches!(c.await, Ok(lapin::Confirmation::Ack(_))),
                Err(_) => false,
            };
            if confirmed {
                if let Some(tx) = self.acks.get(held.consumer) {
                    let _ = tx.send(AckOp::Ack(held.tag));
                }
            }
        };
        tokio::join!(futures_util::future::join_all(withdraw), publish);
    }

    async fn push(&self, p: Platform, token: &str, id: &str, c: Content) {
        match p {
            Platform::Apns => {
                if let Some(a) = &self.apns {
                    a.push(token, id, c).await;
                }
            }
            Platform::Fcm => {
                if let Some(f) = &self.fcm {
                    f.push(token, id, c).await;
                }
            }
            Platform::Other => {}
        }
    }
}

/// APNs: `apns.connections` HTTP/2 connections over TLS, used in turn.
struct Apns {
    conns: Vec<SendRequest<Full<Bytes>>>,
    next: AtomicUsize,
    base: String,
    bearer: HeaderValue,
    topic: HeaderValue,
}

const TITLE: &str = "Confirm it is you";
const BODY: &str = "Open the app to approve or deny this request.";

impl Apns {
    async fn connect(s: &Settings) -> anyhow::Result<Apns> {
        let c = &s.config.apns;
        let url = url::Url::parse(&c.endpoint).context("apns.endpoint")?;
        let host = url
            .host_str()
            .context("apns.endpoint: no host")?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).context("apns.endpoint: host")?;
        let mut tls = crate::tls::client_config(&c.ca_file, &[b"h2"])?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let mut conns = Vec::new();
        for _ in 0..c.connections.max(1) {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let io = tls.connect(name.clone(), tcp).await?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await?;
            tokio::spawn(conn);
            conns.push(send);
        }
        let key = jwt::load_key(&c.key_file)?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let token = jwt::sign(&key, &c.key_id, &c.team_id, iat);
        let base = match url.port() {
            Some(p) => format!("https://{host}:{p}"),
            None => format!("https://{host}"),
        };
        Ok(Apns {
            conns,
            next: AtomicUsize::new(0),
            base,
            bearer: HeaderValue::from_str(&format!("bearer {token}"))?,
            topic: HeaderValue::from_str(&c.topic)?,
        })
    }

    async fn push(&self, token: &str, id: &str, c: Content) {
        // Written as the daemon writes its payloads (`wire::json`).
        let mut j = Json::with_capacity(crate::push::BODY_CAPACITY);
        let (push_type, priority) = match c {
            Content::Challenge(kind, expires_at_ms) => {
                j.raw("{\"aps\":{\"alert\":{\"title\":")
                    .str(TITLE)
                    .raw(",\"body\":")
                    .str(BODY)
                    .raw("},\"category\":\"SCA_CHALLENGE\",\"interruption-level\":\"time-sensitive\"},\"type\":\"challenge\",\"challenge_id\":")
                    .str(id)
                    .raw(",\"kind\":")
                    .str(kind.as_str())
                    .raw(",\"expires_at\":")
                    .time(expires_at_ms, Millis::Always, crate::wire::rfc3339_ms)
                    .raw("}");
                ("alert", "10")
            }
            Content::Withdraw => {
                j.raw("{\"aps\":{\"content-available\":1},\"type\":\"withdraw\",\"challenge_id\":")
                    .str(id)
                    .raw("}");
                ("background", "5")
            }
        };
        let body = j.into_vec();
        let expiration = match c {
            Content::Challenge(_, at) => (at / 1000).to_string(),
            Content::Withdraw => "0".to_string(),
        };
        let req = Request::post(format!("{}/3/device/{token}", self.base))
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration)
            .header("apns-topic", self.topic.clone())
            .header("apns-collapse-id", id)
            .header(AUTHORIZATION, self.bearer.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else { return };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        let Some(mut conn) = self.conns.get(i).cloned() else {
            return;
        };
        if conn.ready().await.is_err() {
            return;
        }
        if let Ok(resp) = conn.send_request(req).await {
            let _ = resp.into_body().collect().await;
        }
    }
}

/// FCM: the pooled hyper client (HTTP/2 over TLS) with one access token.
struct Fcm {
    client: crate::tls::JsonClient,
    send_uri: http::Uri,
    bearer: HeaderValue,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

impl Fcm {
    async fn connect(s: &Settings) -> anyhow::Result<Fcm> {
        let c = &s.config.fcm;
        let path = &c.service_account_file;
        let acct = ServiceAccount::from_file(path)?;
        let key = acct.encoding_key(path)?;
        let client = crate::tls::json_client(&c.ca_file)?;
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let assertion = sign_assertion(&acct, &key, now_s)?;
        let form = format!(
            "grant_type={}&assertion={assertion}",
            urlencoding::encode("urn:ietf:params:oauth:grant-type:jwt-bearer")
        );
        let req = Request::post(acct.token_uri.as_str())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))?;
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the token answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            anyhow::bail!("token endpoint answered {status}");
        }
        let t: TokenAnswer = serde_json::from_slice(&body).context("token answer")?;
        let endpoint = c.endpoint.trim_end_matches('/');
        Ok(Fcm {
            client,
            send_uri: format!("{endpoint}/v1/projects/{}/messages:send", acct.project_id)
                .parse()
                .context("fcm.endpoint")?,
            bearer: HeaderValue::from_str(&format!("Bearer {}", t.access_token))?,
        })
    }

    async fn push(&self, token: &str, id: &str, c: Content) {
        let ttl = match c {
            Content::Challenge(_, expires_at_ms) => {
                ((expires_at_ms - crate::clock::now_ms()).max(0) / 1000) as u64
            }
            Content::Withdraw => 60,
        };
        // Written as the daemon writes its payloads (`wire::json`).
        let mut j = Json::with_capacity(crate::push::BODY_CAPACITY);
        j.raw("{\"message\":{\"token\":")
            .str(token)
            .raw(",\"android\":{\"priority\":\"HIGH\",\"ttl\":")
            .str(&format!("{ttl}s"))
            .raw(",\"collapse_key\":")
            .str(id)
            .raw("},\"data\":");
        match c {
            Content::Challenge(kind, expires_at_ms) => {
                j.raw("{\"type\":\"challenge\",\"challenge_id\":")
                    .str(id)
                    .raw(",\"kind\":")
                    .str(kind.as_str())
                    .raw(",\"title\":")
                    .str(TITLE)
                    .raw(",\"body\":")
                    .str(BODY)
                    .raw(",\"expires_at\":")
                    .time(expires_at_ms, Millis::Always, crate::wire::rfc3339_ms)
                    .raw("}");
            }
            Content::Withdraw => {
                j.raw("{\"type\":\"withdraw\",\"challenge_id\":")
                    .str(id)
                    .raw("}");
            }
        }
        j.raw("}}");
        let body = j.into_vec();
        let req = Request::post(self.send_uri.clone())
            .header(CONTENT_TYPE, "application/json; charset=UTF-8")
            .header(AUTHORIZATION, self.bearer.clone())
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else { return };
        if let Ok(resp) = self.client.request(req).await {
            let _ = resp.into_body().collect().await;
        }
    }
}
