//! The project's one load generator, behind `sca-dispatch load`, `demo --load` and the
//! end-to-end benchmark. It publishes challenges to a broker (at a rate or flat out, for a
//! duration or a count, with a mix of kinds, device platforms, SMS and payload size),
//! plays the devices over the daemon's HTTP API when the simulators see their pushes
//! (approve, deny or ignore, after a delay; an SMS code is entered when one arrives),
//! reads the outcomes, and measures each stage in HDR histograms. Every map is bounded
//! (in-flight challenges are capped and pruned), every loop ends (by count, time or stop),
//! and it only talks to the broker and API addresses it was given.
//!
//! - [`cli`]: `sca-dispatch load`; [`pace`]: due times at a constant rate; [`mix`]: shares and picks; [`hist`]:
//!   latencies; [`procstat`]: CPU and memory from /proc; [`svg`]: the picture;
//!   [`player`]: devices and outcome reader; [`report`]: the per-second lines, the
//!   summary and the JSON report; [`sims`]: the simulators a daemon under test points at;
//!   [`abuse`]: the HTTP API under abuse while the load runs (`--abuse N`).

pub mod abuse;
pub mod cli;
pub mod hist;
pub mod mix;
pub mod pace;
pub mod player;
pub mod procstat;
pub mod report;
pub mod sims;
pub mod svg;

use crate::engine::json::rfc3339_ms;
use crate::engine::now_ms;
use anyhow::Context;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use mix::{Answer, Kind, Platform, Shares};
use pace::Pacer;
use player::{Feeds, Flight, Shared};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a broken broker connection is tried again ([`LoadOptions::reconnect`]).
pub const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// Outcome deliveries unacked at once on the durable outcomes queue.
const OUTCOMES_PREFETCH: u16 = 2000;
/// Publishes awaiting their broker confirm at once.
const CONFIRM_WINDOW: usize = 1000;
/// The broker confirming nothing for this long ends the run with an error.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond the duration and the drain, the run ends after this much more in any case.
const HARD_STOP_GRACE: Duration = Duration::from_secs(60);
/// Largest payload asked for (the contract's body bound).
pub const MAX_PAYLOAD_BYTES: usize = crate::challenge::model::MAX_BODY_BYTES;
/// Devices per challenge at most (the contract's bound).
pub const MAX_DEVICES: usize = crate::challenge::model::MAX_DEVICES;
/// Salts for the independent picks of one challenge.
const SALT_KIND: u64 = 1;
const SALT_ANSWER: u64 = 2;
const SALT_SMS: u64 = 3;
const SALT_PLATFORM: u64 = 16;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub amqp_url: String,
    /// Queue the daemon consumes challenges from.
    pub challenges_queue: String,
    /// Publish to this exchange instead, with the user id as routing key (cluster mode's
    /// `{challenges_queue}.by-user`, CONTRACT §10).
    pub challenges_exchange: Option<String>,
    /// Exchange the daemon publishes outcomes to.
    pub outcomes_exchange: String,
    /// Base URLs of the daemons' HTTP APIs (`http://host:port`); decisions are spread
    /// over them.
    pub api: Vec<String>,
    /// Bearer token for the API.
    pub api_token: Option<String>,
    /// Challenges per second; `None`: flat out.
    pub rate: Option<f64>,
    /// Stop publishing after this long…
    pub duration: Option<Duration>,
    /// …or after this many challenges (whichever comes first).
    pub count: Option<u64>,
    pub kinds: Shares<Kind>,
    pub platforms: Shares<Platform>,
    /// Devices per challenge, 1..=10, each on a platform picked from `platforms`.
    pub devices_per_challenge: usize,
    /// Challenges go to this many users in turn (`None`: a new user for each one), so a
    /// long run keeps the daemon's per-user state (limits, push backoff) bounded.
    pub users: Option<u64>,
    /// Share (0..=1) of challenges with an `sms` fallback.
    pub sms_share: f64,
    /// Seconds before the SMS fallback of those challenges.
    pub sms_fallback_seconds: u64,
    /// Pad each challenge to about this many bytes (with an extra field the daemon
    /// ignores); `None`: no padding.
    pub payload_bytes: Option<usize>,
    pub answers: Shares<Answer>,
    /// A device answers this long after its push (an SMS code: after the SMS).
    pub decide_after: Duration,
    pub ttl_seconds: u64,
    /// Publishing pauses while this many challenges await their outcome.
    pub max_in_flight: usize,
    /// HTTP requests to the daemons at once.
    pub http_concurrency: usize,
    /// After publishing, wait at most this long for the outstanding outcomes.
    pub drain: Duration,
    /// Daemon processes whose CPU and memory are reported.
    pub pids: Vec<u32>,
    /// Print a line each second.
    pub print_seconds: bool,
    /// Keep publishing across broker outages: reconnect (every [`RECONNECT_EVERY`]) and go
    /// on where it stopped, instead of ending the run at the first error.
    pub reconnect: bool,
    /// Read the outcomes through this durable queue (declared and bound to the outcomes
    /// exchange before the first publish, read with acks, reconnecting), so that none is
    /// missed across broker restarts; `None`: an exclusive queue for the run's one
    /// connection. The queue is left for the caller to delete.
    pub outcomes_queue: Option<String>,
    /// Devices answer a push seen again (the challenge dispatched again after a crash),
    /// also after its first outcome, as they answered the first time.
    pub answer_repeats: bool,
    /// After the last outcome awaited, keep reading outcomes this long (late duplicates).
    pub linger: Duration,
}

impl LoadOptions {
    /// Defaults for the daemon at `api`: 100/s for 60 s, logins and payments, one device
    /// (APNs or FCM), every device approves after 200 ms.
    pub fn new(amqp_url: &str, api: &str) -> LoadOptions {
        LoadOptions {
            amqp_url: amqp_url.into(),
            challenges_queue: "sca.challenges".into(),
            challenges_exchange: None,
            outcomes_exchange: "sca.outcomes".into(),
            api: vec![api.trim_end_matches('/').to_string()],
            api_token: None,
            rate: Some(100.0),
            duration: Some(Duration::from_secs(60)),
            count: None,
            kinds: Shares::new(vec![(Kind::Login, 2), (Kind::Payment, 1)]).expect("valid"),
            platforms: Shares::new(vec![(Platform::Apns, 1), (Platform::Fcm, 1)]).expect("valid"),
            devices_per_challenge: 1,
            users: None,
            sms_share: 0.0,
            sms_fallback_seconds: 2,
            payload_bytes: None,
            answers: Shares::new(vec![(Answer::Approve, 1)]).expect("valid"),
            decide_after: Duration::from_millis(200),
            ttl_seconds: 60,
            max_in_flight: 100_000,
            http_concurrency: 256,
            drain: Duration::from_secs(75),
            pids: Vec::new(),
            print_seconds: true,
            reconnect: false,
            outcomes_queue: None,
            answer_repeats: false,
            linger: Duration::ZERO,
        }
    }

    /// Checks the bounds; the error names the option.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::challenge::model::{MAX_TTL_SECONDS, MIN_TTL_SECONDS};
        if self.api.is_empty() {
            anyhow::bail!("--api: at least one daemon API address is needed");
        }
        for a in &self.api {
            let u = url::Url::parse(a).with_context(|| format!("--api {a}"))?;
            if u.scheme() != "http" || u.host_str().is_none() {
                anyhow::bail!("--api {a}: an http://host:port address is needed");
            }
        }
        if self.duration.is_none() && self.count.is_none() {
            anyhow::bail!("--duration or --count is needed (a run must end)");
        }
        if self
            .rate
            .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1e6))
        {
            anyhow::bail!("--rate must be above 0 and at most 1,000,000 (or absent: flat out)");
        }
        if !(1..=MAX_DEVICES).contains(&self.devices_per_challenge) {
            anyhow::bail!("--devices must be 1..={MAX_DEVICES}");
        }
        if self.users.is_some_and(|u| u == 0) {
            anyhow::bail!("--users must be at least 1 (or absent: a new user per challenge)");
        }
        if !(0.0..=1.0).contains(&self.sms_share) {
            anyhow::bail!("--sms-share must be 0..=100 (percent)");
        }
        if self.sms_fallback_seconds > MAX_TTL_SECONDS {
            anyhow::bail!("--sms-fallback must be 0..={MAX_TTL_SECONDS} seconds");
        }
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&self.ttl_seconds) {
            anyhow::bail!("--ttl must be {MIN_TTL_SECONDS}..={MAX_TTL_SECONDS} seconds");
        }
        if self.payload_bytes.is_some_and(|b| b > MAX_PAYLOAD_BYTES) {
            anyhow::bail!("--payload-bytes must be at most {MAX_PAYLOAD_BYTES}");
        }
        if !(1..=10_000_000).contains(&self.max_in_flight) {
            anyhow::bail!("--max-in-flight must be 1..=10,000,000");
        }
        if !(1..=10_000).contains(&self.http_concurrency) {
            anyhow::bail!("--http-concurrency must be 1..=10,000");
        }
        if self.decide_after > Duration::from_secs(MAX_TTL_SECONDS) {
            anyhow::bail!("--decide-after-ms must be below the longest ttl");
        }
        if self.drain > Duration::from_secs(3600) {
            anyhow::bail!("--drain must be at most 3600 seconds");
        }
        if self.linger > Duration::from_secs(3600) {
            anyhow::bail!("the linger time must be at most 3600 seconds");
        }
        Ok(())
    }

    /// The API's process ids: the given ones, else the local listeners of loopback APIs.
    pub fn daemon_pids(&self) -> Vec<u32> {
        if !self.pids.is_empty() {
            return self.pids.clone();
        }
        let mut out = Vec::new();
        for a in &self.api {
            let Ok(u) = url::Url::parse(a) else { continue };
            let local = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if let (true, Some(port)) = (local, u.port_or_known_default()) {
                if let Some(pid) = procstat::listener_pid(port) {
                    if !out.contains(&pid) {
                        out.push(pid);
                    }
                }
            }
        }
        out
    }
}

/// The user of challenge `seq` of a run whose ids start with `prefix`.
pub fn user_id(opts: &LoadOptions, prefix: &str, seq: u64) -> String {
    let n = opts.users.map_or(seq, |users| seq % users);
    format!("{prefix}user-{n}")
}

/// The challenge body for `seq` of a run whose ids start with `prefix`.
pub fn challenge(opts: &LoadOptions, prefix: &str, seq: u64) -> (Vec<u8>, Flight) {
    let kind = opts.kinds.pick(seq, SALT_KIND);
    let answer = opts.answers.pick(seq, SALT_ANSWER);
    let sms =
        opts.sms_share > 0.0 && (mix_unit(seq, SALT_SMS) < opts.sms_share || opts.sms_share >= 1.0);
    let devices: Vec<serde_json::Value> = (0..opts.devices_per_challenge)
        .map(|i| {
            let p = opts.platforms.pick(seq, SALT_PLATFORM + i as u64);
            json!({"device_id": format!("d{i}"), "platform": p.as_str(), "token": p.token(seq, i)})
        })
        .collect();
    let locale = ["it", "en", "sq"][(seq % 3) as usize];
    let mut v = json!({
        "v": 1,
        "challenge_id": format!("{prefix}{seq}"),
        "user_id": user_id(opts, prefix, seq),
        "kind": kind.as_str(),
        "created_at": rfc3339_ms(now_ms()),
        "ttl_seconds": opts.ttl_seconds,
        "locale": locale,
        "devices": devices,
    });
    if kind == Kind::Payment {
        v["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    }
    if sms {
        v["sms"] = json!({
            "phone": format!("+3934{:08}", seq % 100_000_000),
            "fallback_after_seconds": opts.sms_fallback_seconds,
        });
    }
    let mut body = v.to_string();
    if let Some(target) = opts.payload_bytes {
        // `"x_load_padding":"…",` is 21 bytes plus the padding.
        let pad = target.saturating_sub(body.len() + 21);
        if pad > 0 {
            v["x_load_padding"] = json!("x".repeat(pad));
            body = v.to_string();
        }
    }
    let flight = Flight::new(kind, answer, sms);
    (body.into_bytes(), flight)
}

/// A number in 0..1 from `seq` (for shares that are not a [`Shares`] list).
fn mix_unit(seq: u64, salt: u64) -> f64 {
    let mut z = seq ^ salt.wrapping_mul(0xd1b5_4a32_d192_ed03);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Resolves once `stop` turns true (never, if its sender is gone without that).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The publisher's broker channel (with confirms): the run's first one, and — with
/// [`LoadOptions::reconnect`] — a new connection whenever it broke.
pub struct Link {
    url: String,
    reconnect: bool,
    conn: Option<lapin::Connection>,
    ch: Option<Channel>,
    /// Connections opened after the first.
    pub reconnects: u64,
}

impl Link {
    pub fn new(url: &str, reconnect: bool, conn: lapin::Connection, ch: Channel) -> Link {
        Link {
            url: url.to_string(),
            reconnect,
            conn: Some(conn),
            ch: Some(ch),
            reconnects: 0,
        }
    }

    /// A live channel; with `reconnect`, waits for the broker (`None` once `stop` came).
    async fn channel(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Channel>> {
        loop {
            if let Some(ch) = self.ch.as_ref().filter(|c| c.status().connected()) {
                return Ok(Some(ch.clone()));
            }
            if !self.reconnect {
                anyhow::bail!("the publishing channel to the broker closed");
            }
            self.broken().await;
            if *stop.borrow() {
                return Ok(None);
            }
            match open_publishing(&self.url).await {
                Ok((conn, ch)) => {
                    self.conn = Some(conn);
                    self.ch = Some(ch);
                    self.reconnects += 1;
                }
                Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_EVERY) => {}
                        _ = stopped(stop) => return Ok(None),
                    }
                }
            }
        }
    }

    /// Gives the connection up (its publishes awaiting confirms fail).
    async fn broken(&mut self) {
        self.ch = None;
        if let Some(c) = self.conn.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), c.close(200, "reconnecting".into()))
                    .await;
        }
    }

    /// A channel the caller owns, never re-opened.
    pub fn from_channel(ch: Channel) -> Link {
        Link {
            url: String::new(),
            reconnect: false,
            conn: None,
            ch: Some(ch),
            reconnects: 0,
        }
    }

    /// Closes the connection at the end of a run.
    pub async fn close(mut self) {
        self.broken().await;
    }
}

/// A new connection and a channel in confirm mode.
async fn open_publishing(url: &str) -> anyhow::Result<(lapin::Connection, Channel)> {
    let conn = crate::amqp::client::connect(url, "sca-dispatch load")
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", crate::amqp::redact_url(url)))?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

/// Publishes until the count, the duration or `stop`, paced by `pacer`, keeping at most
/// [`CONFIRM_WINDOW`] publishes awaiting their confirm and at most
/// `opts.max_in_flight` challenges awaiting their outcome.
pub async fn publish(
    shared: &Arc<Shared>,
    ch: &Channel,
    pacer: Pacer,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    publish_on(shared, &mut Link::from_channel(ch.clone()), pacer, stop).await
}

/// [`publish`] through `link`: with `opts.reconnect` a failed publish is tried again on
/// a new connection (a publish whose confirm was lost counts as not accepted).
pub async fn publish_on(
    shared: &Arc<Shared>,
    link: &mut Link,
    pacer: Pacer,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let opts = &shared.opts;
    let mut confirms = FuturesUnordered::new();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let end = opts.duration.map(|d| shared.started + d);
    let count = opts.count.unwrap_or(u64::MAX);
    let mut seq = 0u64;
    while seq < count {
        if *stop.borrow() || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        // Back-pressure on outcomes: bounded in-flight table.
        while shared.flights.len() >= opts.max_in_flight {
            shared.counters.throttled.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = stopped(&mut stop) => {}
            }
            if *stop.borrow() || end.is_some_and(|e| Instant::now() >= e) {
                break;
            }
        }
        if shared.flights.len() >= opts.max_in_flight {
            break;
        }
        tokio::select! {
            _ = pacer.wait(seq) => {}
            _ = stopped(&mut stop) => break,
        }
        while confirms.len() >= CONFIRM_WINDOW {
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirms.next()).await {
                Ok(Some((s, r))) => shared.confirmed(s, r),
                Ok(None) => break,
                // The connection is given up: its pending confirms fail.
                Err(_) if opts.reconnect => link.broken().await,
                Err(_) => anyhow::bail!(
                    "the broker confirmed no publish for {} s",
                    CONFIRM_TIMEOUT.as_secs()
                ),
            }
        }
        let Some(ch) = link.channel(&mut stop).await? else {
            break;
        };
        let (body, flight) = challenge(opts, &shared.prefix, seq);
        shared.flights.insert(seq, flight);
        let user;
        let (exchange, routing_key) = match &opts.challenges_exchange {
            Some(x) => {
                user = user_id(opts, &shared.prefix, seq);
                (x.as_str(), user.as_str())
            }
            None => ("", opts.challenges_queue.as_str()),
        };
        match ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
        {
            Ok(confirm) => {
                shared.counters.published.fetch_add(1, Ordering::Relaxed);
                if let Some(o) = &shared.observer {
                    o.published(seq);
                }
                confirms.push(async move { (seq, confirm.await) });
            }
            Err(e) => {
                shared.flights.remove(&seq);
                shared
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                if opts.reconnect {
                    // The same challenge again, on a new connection.
                    link.broken().await;
                    continue;
                }
                return Err(e).context("publishing a challenge");
            }
        }
        seq += 1;
    }
    loop {
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirms.next()).await {
            Ok(Some((s, r))) => shared.confirmed(s, r),
            Ok(None) => return Ok(()),
            Err(_) if opts.reconnect => link.broken().await,
            Err(_) => anyhow::bail!(
                "the broker confirmed no publish for {} s",
                CONFIRM_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Declares the durable outcomes queue `queue` (quorum) and binds it to every outcome of
/// `exchange` (declared if missing).
pub async fn declare_outcomes_queue(
    conn: &lapin::Connection,
    exchange: &str,
    queue: &str,
) -> lapin::Result<()> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), q, args).await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Reads the durable outcomes queue with acks until `stop`, reconnecting whenever the
/// connection breaks; an outcome is acked once recorded, so none is missed (one the
/// broker delivers again after a reconnect carries its `redelivered` flag).
async fn read_outcomes(shared: Arc<Shared>, queue: String, mut stop: watch::Receiver<bool>) {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::FieldTable;
    while !*stop.borrow() {
        let session = async {
            let conn =
                crate::amqp::client::connect(&shared.opts.amqp_url, "sca-dispatch load outcomes")
                    .await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(OUTCOMES_PREFETCH, BasicQosOptions::default())
                .await?;
            let mut consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let r: lapin::Result<()> = loop {
                tokio::select! {
                    d = consumer.next() => match d {
                        Some(Ok(d)) => {
                            shared.on_outcome_message(&d.data, d.redelivered, Instant::now());
                            if let Err(e) = d.ack(BasicAckOptions::default()).await {
                                break Err(e);
                            }
                        }
                        Some(Err(e)) => break Err(e),
                        None => break Ok(()),
                    },
                    _ = stopped(&mut stop) => break Ok(()),
                }
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "load done".into()))
                    .await;
            r
        };
        let _ = session.await;
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_EVERY) => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

/// Runs a load against the daemon(s) in `opts`, with the simulators' `feeds`; returns the
/// report once publishing ended and the outcomes came in (or the drain time passed).
pub async fn run(opts: LoadOptions, feeds: Feeds) -> anyhow::Result<report::Report> {
    run_until(opts, feeds, std::future::pending()).await
}

/// [`run`], also stopping the publisher when `stop` completes (e.g. on Ctrl-C).
pub async fn run_until(
    opts: LoadOptions,
    feeds: Feeds,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<report::Report> {
    opts.validate()?;
    let pids = opts.daemon_pids();
    run_shared(Shared::new(opts, pids), feeds, stop).await
}

/// [`run_until`] on state the caller made (and may watch while the run goes on, e.g.
/// with an [`player::Observer`]).
pub async fn run_shared(
    shared: Arc<Shared>,
    feeds: Feeds,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<report::Report> {
    let opts = &shared.opts;
    opts.validate()?;
    let conn = crate::amqp::client::connect(&opts.amqp_url, "sca-dispatch load")
        .await
        .with_context(|| {
            format!(
                "connecting to RabbitMQ at {}",
                crate::amqp::redact_url(&opts.amqp_url)
            )
        })?;
    let outcomes = match &opts.outcomes_queue {
        None => Some(
            crate::amqp::client::tap(&conn, &opts.outcomes_exchange)
                .await
                .context("subscribing to the outcomes")?,
        ),
        Some(q) => {
            declare_outcomes_queue(&conn, &opts.outcomes_exchange, q)
                .await
                .with_context(|| format!("declaring the outcomes queue {q}"))?;
            None
        }
    };
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let print = opts.print_seconds;
    let mut tasks = player::start(&shared, feeds, outcomes);
    let (reader_stop, reader_rx) = watch::channel(false);
    let reader = opts
        .outcomes_queue
        .clone()
        .map(|q| tokio::spawn(read_outcomes(shared.clone(), q, reader_rx)));
    let mut link = Link::new(&opts.amqp_url, opts.reconnect, conn, ch);

    let (stop_tx, stop_rx) = watch::channel(false);
    let pacer = Pacer::new(shared.started, shared.opts.rate);
    let s = shared.clone();
    let mut publisher = tokio::spawn(async move {
        let r = publish_on(&s, &mut link, pacer, stop_rx).await;
        (r, link)
    });
    let mut link: Option<Link> = None;
    let mut reporter = report::Seconds::new(&shared);
    if print {
        println!("{}", report::Seconds::header());
    }
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    // How soon the end of the drain is noticed.
    let mut check = tokio::time::interval(Duration::from_millis(20));
    tokio::pin!(stop);
    let mut published_done: Option<Instant> = None;
    // A run whose publisher hangs (a broker that stops confirming while the stop or the
    // duration came) still ends.
    let hard_stop = shared
        .opts
        .duration
        .map(|d| shared.started + d + shared.opts.drain + HARD_STOP_GRACE);
    let mut result: anyhow::Result<()> = Ok(());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let line = reporter.tick(&shared);
                if print {
                    println!("{line}");
                }
                shared.prune();
            }
            r = &mut publisher, if published_done.is_none() => {
                published_done = Some(Instant::now());
                let us = shared.started.elapsed().as_micros() as u64;
                shared.publish_end_us.store(us, Ordering::Relaxed);
                match r {
                    Ok((r, l)) => {
                        link = Some(l);
                        if let Err(e) = r {
                            result = Err(e);
                        }
                    }
                    Err(e) => result = Err(anyhow::anyhow!("publisher failed: {e}")),
                }
            }
            _ = check.tick(), if published_done.is_some() => {}
            _ = &mut stop, if !*stop_tx.borrow() => {
                let _ = stop_tx.send(true);
            }
        }
        if published_done.is_none() && hard_stop.is_some_and(|h| Instant::now() >= h) {
            publisher.abort();
            result = Err(anyhow::anyhow!("the publisher did not finish in time"));
            break;
        }
        if let Some(at) = published_done {
            if shared.flights.is_empty() || at.elapsed() >= shared.opts.drain || result.is_err() {
                break;
            }
        }
    }
    if result.is_ok() && !shared.opts.linger.is_zero() {
        tokio::time::sleep(shared.opts.linger).await;
    }
    let line = reporter.tick(&shared);
    if print {
        println!("{line}");
    }
    // Let decisions still running finish before counting (bounded by their timeouts).
    shared.http_idle(Duration::from_secs(2)).await;
    for t in tasks.drain(..) {
        t.abort();
    }
    let _ = reader_stop.send(true);
    if let Some(r) = reader {
        if tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .is_err()
        {
            tracing::warn!("the outcomes reader did not stop in time");
        }
    }
    if let Some(l) = link {
        l.close().await;
    }
    result?;
    Ok(reporter.finish(&shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LoadOptions {
        LoadOptions::new("amqp://127.0.0.1", "http://127.0.0.1:8080")
    }

    #[test]
    fn challenges_follow_the_options_and_are_accepted_by_the_parser() {
        let mut o = opts();
        o.kinds = Shares::parse("payment").unwrap();
        o.devices_per_challenge = 3;
        o.sms_share = 1.0;
        o.payload_bytes = Some(4000);
        let (body, f) = challenge(&o, "ldt-", 7);
        assert!((3980..=4000).contains(&body.len()), "{}", body.len());
        assert_eq!(f.kind, Kind::Payment);
        assert!(f.sms);
        let c = crate::challenge::model::parse_challenge(&body, now_ms(), 0).unwrap();
        assert_eq!(c.devices.len(), 3);
        assert!(c.sms.is_some());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["challenge_id"], "ldt-7");
        assert_eq!(v["transaction"]["payee"], "Mario Rossi");
    }

    #[test]
    fn the_sms_share_is_honoured() {
        let mut o = opts();
        o.sms_share = 0.25;
        let n = (0..4000).filter(|&s| challenge(&o, "p", s).1.sms).count();
        assert!((900..1100).contains(&n), "{n}");
        o.sms_share = 0.0;
        assert!((0..100).all(|s| !challenge(&o, "p", s).1.sms));
    }

    #[test]
    fn a_bounded_user_population_takes_the_challenges_in_turn() {
        let mut o = opts();
        let user = |o: &LoadOptions, seq| {
            let v: serde_json::Value = serde_json::from_slice(&challenge(o, "p-", seq).0).unwrap();
            v["user_id"].as_str().unwrap().to_string()
        };
        assert_eq!(user(&o, 12), "p-user-12");
        o.users = Some(5);
        assert_eq!(user(&o, 12), "p-user-2");
        let distinct: std::collections::HashSet<String> = (0..100).map(|s| user(&o, s)).collect();
        assert_eq!(distinct.len(), 5);
    }

    #[test]
    fn bad_options_name_the_option() {
        type Tweak = Box<dyn Fn(&mut LoadOptions)>;
        let cases: Vec<(Tweak, &str)> = vec![
            (Box::new(|o| o.api.clear()), "--api"),
            (Box::new(|o| o.api = vec!["ftp://x".into()]), "--api"),
            (
                Box::new(|o| {
                    o.duration = None;
                    o.count = None
                }),
                "--duration",
            ),
            (Box::new(|o| o.rate = Some(0.0)), "--rate"),
            (Box::new(|o| o.devices_per_challenge = 11), "--devices"),
            (Box::new(|o| o.sms_share = 1.5), "--sms-share"),
            (Box::new(|o| o.ttl_seconds = 5), "--ttl"),
            (
                Box::new(|o| o.payload_bytes = Some(20_000)),
                "--payload-bytes",
            ),
            (Box::new(|o| o.max_in_flight = 0), "--max-in-flight"),
            (Box::new(|o| o.users = Some(0)), "--users"),
        ];
        for (f, key) in cases {
            let mut o = opts();
            f(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        opts().validate().unwrap();
    }
}
