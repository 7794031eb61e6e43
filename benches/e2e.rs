//! End-to-end load benchmark (not a test). Runs the release daemon as a child process
//! against the real RabbitMQ on 127.0.0.1:5672, with the APNs and FCM simulators in this
//! process, and measures in one run:
//!
//! 1. the ceiling: a bare lapin consumer that consumes and acks (multiple-acks, prefetch
//!    250) the same challenge messages while a publisher publishes them flat out;
//!    then the bare relay (`sca-dispatch simulate relay`, `src/sim/relay.rs`: the same
//!    binary and configuration doing a challenge's I/O and nothing else) under the same
//!    load-tool runs as the daemon: flat out, then at half its rate; the daemon is
//!    measured at that rate too, and the ratios daemon / relay (throughput, CPU per
//!    challenge) are the figures the daemon's own cost is judged by;
//! 2. the daemon flat out: N challenges (two devices each, APNs and FCM mixed), devices
//!    approving over HTTP 20 ms after their push: sustained challenges/s, publish → push
//!    and decision → outcome latency;
//! 3. the daemon at half the ceiling: publish → push latency;
//! 4. memory: resident bytes per in-flight challenge with 100,000 in flight, read once
//!    the idle daemon's resident size has stopped falling;
//! 5. the HTTP decision endpoint against a bare hyper handler under the same load tool
//!    that does a decision's broker work (one message published with a confirm), and
//!    against the empty handler; then decisions on one-device challenges, which send no
//!    withdrawal (what the withdrawal push costs a decision);
//! 6. bytes the engine keeps per challenge — pending, retained after its outcome,
//!    retained after a rejection — with a counting allocator, before anything else runs
//!    (`sca_dispatch::engine::footprint`, the measurement the `retained_memory` test
//!    asserts on).
//!
//! Publishing, the devices, the outcome reader and the latency histograms are the
//! project's load tool (`sca_dispatch::loadgen`, also behind `sca-dispatch load`).
//!
//! It prints the figures and ratios and writes `bench/results/latest.json` (its own keys;
//! the others, such as the cluster bench's `cluster`, are kept) and
//! `bench/results/latest.md`. `E2E_N` sets the challenge count (default 30,000),
//! `E2E_INFLIGHT` the in-flight count for the memory figure (default 100,000),
//! `E2E_RUNTIME_FLAVOR` the daemon's `runtime.flavor` (default `multi-thread`),
//! `E2E_DAEMON_BIN` a daemon binary from another build to run against this build's relay
//! (so that a change's effect on the ratios is measured in one run, on one machine),
//! `E2E_ONLY=memory` phase 4 alone, printed and not written.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use sca_dispatch::loadgen::hist::Stage;
use sca_dispatch::loadgen::mix::Shares;
use sca_dispatch::loadgen::pace::Pacer;
use sca_dispatch::loadgen::player::Shared;
use sca_dispatch::loadgen::sims::{SimOptions, Sims};
use sca_dispatch::loadgen::{self, LoadOptions};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[global_allocator]
static ALLOC: sca_dispatch::engine::footprint::CountingAlloc =
    sca_dispatch::engine::footprint::CountingAlloc;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The bench daemon's API bearer token.
const TOKEN: &str = "e2e-bench-token";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect() -> anyhow::Result<Connection> {
    Ok(sca_dispatch::amqp::client::connect(URL, "sca-dispatch e2e bench").await?)
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

/// The device mix: iOS and Android devices, and Huawei phones without Google services
/// on Push Kit.
const PLATFORMS: &str = "apns=2,fcm=2,hms=1";
/// The relay has no Push Kit client: its devices are iOS and Android only (a Push Kit
/// push is one HTTP/2 POST with a bearer token, as an FCM push is).
const RELAY_PLATFORMS: &str = "apns=1,fcm=1";

/// The ceiling: publisher flat out and a bare consumer acking with multiple-acks.
/// The load tool's publisher alone, for `n` challenges (flat out or at `rate`) with
/// `ttl` seconds to queue `queue`; nobody answers.
fn publisher(queue: &str, n: u64, rate: Option<f64>, ttl: u64) -> Arc<Shared> {
    publisher_of(queue, n, rate, ttl, 2)
}

/// [`publisher`] with `devices` devices per challenge.
fn publisher_of(queue: &str, n: u64, rate: Option<f64>, ttl: u64, devices: usize) -> Arc<Shared> {
    let mut o = LoadOptions::new(URL, "http://127.0.0.1:1");
    o.challenges_queue = queue.into();
    o.count = Some(n);
    o.duration = None;
    o.rate = rate;
    o.ttl_seconds = ttl;
    o.devices_per_challenge = devices;
    o.platforms = Shares::parse(PLATFORMS).expect("a valid device mix");
    o.max_in_flight = n as usize + 1;
    Shared::new(o, Vec::new())
}

async fn publish(shared: &Arc<Shared>, ch: &lapin::Channel) -> anyhow::Result<()> {
    let (_stop_tx, stop_rx) = watch::channel(false);
    let pacer = Pacer::new(shared.started, shared.opts.rate);
    loadgen::publish(shared, ch, pacer, stop_rx).await
}

async fn ceiling(conn: &Connection, ns: &str, n: u64) -> anyhow::Result<(f64, CpuSplit)> {
    let queue = format!("{ns}-ceiling");
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum(),
    )
    .await?;
    let cch = conn.create_channel().await?;
    cch.basic_qos(250, BasicQosOptions::default()).await?;
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let pch = conn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let cpu = CpuMark::new(None);
    let shared = publisher(&queue, n, None, 120);
    let publisher = tokio::spawn(async move { publish(&shared, &pch).await });
    let mut got = 0u64;
    let mut last_tag = 0;
    let mut unacked = 0;
    while got < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        got += 1;
        last_tag = d.delivery_tag;
        unacked += 1;
        if unacked >= 100 {
            cch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await?;
            unacked = 0;
        }
    }
    if unacked > 0 {
        cch.basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let split = cpu.per(n);
    publisher.await??;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok((rate, split))
}

struct Daemon {
    child: Child,
    http: String,
    metrics: String,
    /// The device mix its load runs use.
    platforms: &'static str,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_daemon(
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    prefetch: u32,
    consumers: u32,
) -> anyhow::Result<Daemon> {
    spawn_as(&["run"], dir, ns, sims, prefetch, consumers)
}

/// The binary run as `cmd` (the daemon's `run`, or the relay) with the bench daemon's
/// configuration.
fn spawn_as(
    cmd_args: &[&str],
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    prefetch: u32,
    consumers: u32,
) -> anyhow::Result<Daemon> {
    let (hp, mp) = (free_port(), free_port());
    let mut cfg = sca_dispatch::Config::default();
    cfg.amqp = cfg.amqp.namespaced(ns);
    cfg.amqp.url = URL.into();
    cfg.amqp.prefetch = prefetch;
    cfg.amqp.consumers = consumers;
    // One broker publish less per challenge; the outcome is what the bench waits for.
    cfg.amqp.dispatched_events = false;
    cfg.http.addr = format!("127.0.0.1:{hp}");
    cfg.metrics.addr = format!("127.0.0.1:{mp}");
    cfg.log.level = "warn".into();
    // Every load user is distinct; the per-user limit never applies.
    cfg.limits.challenges_per_minute = 1_000_000;
    cfg.limits.challenge_burst = 1_000_000;
    cfg.http.api_tokens = TOKEN.into();
    sims.apply(&mut cfg);
    cfg.fcm.max_concurrent = 512;
    // The daemon's runtime flavor (the relay reads the same file but builds its own
    // multi-threaded runtime).
    if let Ok(f) = std::env::var("E2E_RUNTIME_FLAVOR") {
        cfg.runtime.flavor = f;
    }
    let path = dir.join(format!("{ns}.toml"));
    std::fs::write(&path, toml::to_string(&cfg)?)?;
    let relay = cmd_args.contains(&"relay");
    // `E2E_DAEMON_BIN`: the daemon from another build (e.g. one from before a change),
    // against this build's relay, simulators and load tool.
    let bin = match std::env::var_os("E2E_DAEMON_BIN") {
        Some(other) if !relay => std::path::PathBuf::from(other),
        _ => std::path::PathBuf::from(env!("CARGO_BIN_EXE_sca-dispatch")),
    };
    let mut cmd = Command::new(bin);
    if let Ok(w) = std::env::var("E2E_DAEMON_WORKERS") {
        cmd.env("TOKIO_WORKER_THREADS", w);
    }
    let child = cmd
        .args(cmd_args)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Daemon {
        child,
        http: format!("http://127.0.0.1:{hp}"),
        metrics: format!("http://127.0.0.1:{mp}/metrics"),
        platforms: if relay { RELAY_PLATFORMS } else { PLATFORMS },
    })
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn client(conns: usize) -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build_http()
}

async fn get(c: &Client, url: &str) -> Option<String> {
    let r = c.get(url.parse().ok()?).await.ok()?;
    let ok = r.status().is_success();
    let b = http_body_util::BodyExt::collect(r.into_body())
        .await
        .ok()?
        .to_bytes();
    ok.then(|| String::from_utf8_lossy(&b).into_owned())
}

async fn wait_ready(c: &Client, d: &Daemon) -> anyhow::Result<()> {
    for _ in 0..600 {
        if get(c, &format!("{}/readyz", d.http)).await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("daemon not ready")
}

async fn gauge(c: &Client, d: &Daemon, name: &str) -> f64 {
    let text = get(c, &d.metrics).await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: &str) -> f64 {
    let pid = if pid == "self" {
        std::process::id()
    } else {
        match pid.parse() {
            Ok(p) => p,
            Err(_) => return 0.0,
        }
    };
    loadgen::procstat::cpu_secs(pid).unwrap_or(0.0)
}

fn broker_pid() -> String {
    let out = Command::new("pgrep").args(["-f", "beam.smp"]).output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

/// CPU used per challenge by the daemon, the broker, and this process (simulators and
/// load tool), in microseconds.
#[derive(Default, Clone, Copy)]
struct CpuSplit {
    daemon: f64,
    broker: f64,
    bench: f64,
}

struct CpuMark {
    pids: [String; 3],
    at: [f64; 3],
}

impl CpuMark {
    fn new(daemon: Option<u32>) -> CpuMark {
        let pids = [
            daemon.map(|p| p.to_string()).unwrap_or_default(),
            broker_pid(),
            "self".to_string(),
        ];
        let at = [cpu_secs(&pids[0]), cpu_secs(&pids[1]), cpu_secs(&pids[2])];
        CpuMark { pids, at }
    }
    fn per(&self, n: u64) -> CpuSplit {
        let d = |i: usize| (cpu_secs(&self.pids[i]) - self.at[i]) * 1e6 / n as f64;
        CpuSplit {
            daemon: d(0),
            broker: d(1),
            bench: d(2),
        }
    }
}

fn rss_bytes(pid: u32) -> u64 {
    loadgen::procstat::rss_bytes(pid).unwrap_or(0)
}

/// Latency figures of one daemon run (milliseconds).
struct Lat {
    p2p: [f64; 3],
    d2o: [f64; 2],
}

impl Lat {
    fn of(r: &loadgen::report::Report) -> Lat {
        let f = |st: Stage, k: &str| r.latency(st)[k].as_f64().unwrap_or(f64::NAN);
        Lat {
            p2p: [
                f(Stage::PublishToPush, "p50_ms"),
                f(Stage::PublishToPush, "p99_ms"),
                f(Stage::PublishToPush, "p999_ms"),
            ],
            d2o: [
                f(Stage::DecisionToOutcome, "p50_ms"),
                f(Stage::DecisionToOutcome, "p99_ms"),
            ],
        }
    }
}

/// One daemon run with the load tool: `n` challenges (two devices each, APNs and FCM
/// mixed; flat out or at `rate`), devices approve 20 ms after their push.
async fn daemon_run(
    d: &Daemon,
    ns: &str,
    sims: &Sims,
    n: u64,
    rate: Option<f64>,
) -> anyhow::Result<(f64, Lat, CpuSplit)> {
    let mut o = LoadOptions::new(URL, &d.http);
    o.challenges_queue = format!("{ns}.challenges");
    o.outcomes_exchange = format!("{ns}.outcomes");
    o.api_token = Some(TOKEN.into());
    o.rate = rate;
    o.count = Some(n);
    o.duration = None;
    o.kinds = Shares::parse("login=2,payment=1")?;
    o.devices_per_challenge = 2;
    o.platforms = Shares::parse(d.platforms)?;
    o.decide_after = Duration::from_millis(20);
    o.ttl_seconds = 120;
    o.max_in_flight = n as usize + 1;
    // Past every challenge's expiry: a device whose decision failed under load still
    // gets its `expired` outcome inside the drain.
    o.drain = Duration::from_secs(150);
    o.pids = vec![d.child.id()];
    o.print_seconds = false;
    let cpu = CpuMark::new(Some(d.child.id()));
    let report = loadgen::run(o, sims.feeds()).await?;
    let split = cpu.per(n);
    let missing = report.lost() + report.unfinished();
    if missing > 0 {
        eprint!("{}", report.summary());
        // What the daemon says of the challenges still waiting.
        let c = client(4);
        for e in report.json["waiting_examples"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = e["challenge_id"].as_str().unwrap_or("");
            let req = hyper::Request::get(format!("{}/v1/challenges/{id}", d.http))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))?;
            let view = match c.request(req).await {
                Ok(r) => {
                    let status = r.status();
                    let b = http_body_util::BodyExt::collect(r.into_body())
                        .await?
                        .to_bytes();
                    format!("{status} {}", String::from_utf8_lossy(&b))
                }
                Err(e) => format!("request failed: {e}"),
            };
            eprintln!("daemon on {id}: {view}");
        }
        anyhow::bail!("{missing} challenges without an outcome");
    }
    // Up to the last outcome (the run's end waits a moment for stragglers).
    let rate = report.json["outcomes"].as_f64().unwrap_or(0.0)
        / report.json["last_outcome_seconds"]
            .as_f64()
            .unwrap_or(1.0)
            .max(1e-3);
    Ok((rate, Lat::of(&report), split))
}

// The bare relay (`sca-dispatch simulate relay`, `src/sim/relay.rs`): the same binary
// with the daemon's configuration doing a challenge's I/O and nothing else, under the
// same load-tool runs as the daemon. What the daemon costs beyond that I/O is the ratio.

/// The relay's figures in this run.
struct RelayRun {
    per_s: f64,
    cpu: CpuSplit,
    /// Half its flat-out rate, and publish → push there.
    half_rate: f64,
    half: Lat,
}

async fn relay_baseline(
    conn: &Connection,
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    c: &Client,
    n: u64,
) -> anyhow::Result<RelayRun> {
    let ns = format!("{ns}-relay");
    let r = spawn_as(&["simulate", "relay"], dir, &ns, sims, 5000, 4)?;
    wait_ready(c, &r).await?;
    // Warm-up: connections.
    daemon_run(&r, &ns, sims, 2000, None).await?;
    let (per_s, _, cpu) = daemon_run(&r, &ns, sims, n, None).await?;
    let half_rate = per_s / 2.0;
    let (_, half, _) =
        daemon_run(&r, &ns, sims, (half_rate * 10.0) as u64, Some(half_rate)).await?;
    drop(r);
    let ch = conn.create_channel().await?;
    for q in ["challenges", "responses", "dead"] {
        let _ = ch
            .queue_delete(format!("{ns}.{q}").into(), QueueDeleteOptions::default())
            .await;
    }
    Ok(RelayRun {
        per_s,
        cpu,
        half_rate,
        half,
    })
}

/// `total` POSTs over `conns` keep-alive connections; requests/s.
async fn http_load(
    c: &Client,
    total: u64,
    conns: usize,
    url: impl Fn(u64) -> String + Send + Sync + 'static,
) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let url = Arc::new(url);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, next, url) = (c.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let req = hyper::Request::post(url(i))
                    .header("content-type", "application/json")
                    .header("authorization", concat!("Bearer ", "e2e-bench-token"))
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        br#"{"device_id":"d0","decision":"approve"}"#,
                    )))
                    .unwrap();
                if let Ok(r) = c.request(req).await {
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cores} cores, {} GiB, {cpu}", mem / 1024 / 1024)
}

/// The resident bytes of an idle process after it has had time to hand a burst's
/// garbage back (`heap` in `main.rs`: each thread collects its heap at most every 5 s):
/// the lowest of one reading a second for 12 s.
async fn settled_rss(pid: u32) -> u64 {
    let mut low = rss_bytes(pid);
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        low = low.min(rss_bytes(pid));
    }
    low
}

/// Phase 4's daemon: `inflight` challenges published and held undecided (nobody
/// answers), and the resident bytes it gained per challenge held.
struct Held {
    d: Daemon,
    held: f64,
    /// Once settled (see [`settled_rss`]).
    bytes_per: f64,
    /// Read 2 s after the last push, before the idle daemon handed memory back.
    after_burst: f64,
    run: Arc<Shared>,
}

async fn hold(
    c: &Client,
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    pch: &lapin::Channel,
    inflight: u64,
) -> anyhow::Result<Held> {
    let consumers = inflight.div_ceil(25_000).max(1) as u32;
    let prefetch = inflight.div_ceil(consumers as u64) as u32;
    let d = spawn_daemon(dir, ns, sims, prefetch, consumers)?;
    wait_ready(c, &d).await?;
    daemon_run(&d, ns, sims, 1000, None).await?;
    let rss0 = settled_rss(d.child.id()).await;
    let run = publisher(&format!("{ns}.challenges"), inflight, None, 900);
    publish(&run, pch).await?;
    let mut held = 0.0;
    for _ in 0..600 {
        held = gauge(c, &d, "sca_challenges_in_flight").await;
        if held >= inflight as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // pushes settle
    let burst = rss_bytes(d.child.id());
    let rss1 = settled_rss(d.child.id()).await;
    let per = |rss: u64| (rss.saturating_sub(rss0)) as f64 / held.max(1.0);
    let (bytes_per, after_burst) = (per(rss1), per(burst));
    println!("memory: {held:.0} in flight, RSS {:.1} → {:.1} MiB: {bytes_per:.0} bytes per in-flight challenge ({after_burst:.0} right after the burst)", rss0 as f64 / 1048576.0, rss1 as f64 / 1048576.0);
    Ok(Held {
        d,
        held,
        bytes_per,
        after_burst,
        run,
    })
}

async fn bench(footprint: sca_dispatch::engine::footprint::Footprint) -> anyhow::Result<()> {
    let n = env_u64("E2E_N", 30_000);
    let inflight = env_u64("E2E_INFLIGHT", 100_000);
    let conn = connect().await?;
    let dir = std::env::temp_dir().join(format!("sca-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let sims = Sims::start(&SimOptions {
        apns_addr: any,
        fcm_addr: any,
        hms_addr: any,
        sms_addr: any,
        dir: dir.join("sim"),
        // HTTPS with HTTP/2, as Google serves it.
        fcm_tls: true,
    })
    .await?;
    let c = client(256);
    println!(
        "end-to-end benchmark: {n} challenges, {inflight} in flight for memory; {}",
        machine()
    );

    let ns = format!("bench-{:06x}", rand::random::<u32>() & 0xff_ffff);
    // `E2E_ONLY=memory`: phase 4 alone (a quick look at one change's effect on memory);
    // nothing is written to bench/results.
    if std::env::var("E2E_ONLY").as_deref() == Ok("memory") {
        let pch = conn.create_channel().await?;
        pch.confirm_select(ConfirmSelectOptions::default()).await?;
        let ns = format!("{ns}-mem");
        let h = hold(&c, &dir, &ns, &sims, &pch, inflight).await?;
        drop(h.d);
        for q in ["challenges", "responses", "dead"] {
            let q = format!("{ns}.{q}");
            let _ = pch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        return Ok(());
    }

    // 1. Ceiling.
    let (ceiling_per_s, ccpu) = ceiling(&conn, &ns, n).await?;
    println!(
        "ceiling (bare lapin consume + multiple-ack, publisher flat out): {ceiling_per_s:.0} msg/s; CPU per message: broker {:.0} µs, publisher+consumer {:.0} µs",
        ccpu.broker, ccpu.bench
    );

    // The bare relay, flat out and at half its rate.
    let relay = relay_baseline(&conn, &dir, &ns, &sims, &c, n).await?;
    println!(
        "relay (bare I/O: consume, 2 pushes, HTTP decision, withdrawal, confirmed outcome, multiple-ack): {:.0} challenges/s; CPU per challenge: relay {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs",
        relay.per_s, relay.cpu.daemon, relay.cpu.broker, relay.cpu.bench
    );
    println!(
        "relay at half its rate ({:.0}/s): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
        relay.half_rate, relay.half.p2p[0], relay.half.p2p[1], relay.half.p2p[2]
    );

    // 2. + 3. The daemon flat out, then at half the ceiling.
    let d = spawn_daemon(&dir, &ns, &sims, 5000, 4)?;
    wait_ready(&c, &d).await?;
    // Warm-up: connections, provider tokens.
    daemon_run(&d, &ns, &sims, 2000, None).await?;
    let (e2e_per_s, flat, cpu) = daemon_run(&d, &ns, &sims, n, None).await?;
    println!(
        "daemon flat out: {e2e_per_s:.0} challenges/s ({:.2}× ceiling); publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms; decision→outcome p50 {:.1} p99 {:.1} ms",
        e2e_per_s / ceiling_per_s,
        flat.p2p[0], flat.p2p[1], flat.p2p[2], flat.d2o[0], flat.d2o[1]
    );
    println!(
        "  CPU per challenge: daemon {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs (total {:.0} µs = {:.2} cores at this rate)",
        cpu.daemon, cpu.broker, cpu.bench, cpu.daemon + cpu.broker + cpu.bench,
        (cpu.daemon + cpu.broker + cpu.bench) * e2e_per_s / 1e6
    );
    let half = ceiling_per_s / 2.0;
    let half_n = (half * 10.0) as u64;
    let (half_rate, hl, _) = daemon_run(&d, &ns, &sims, half_n, Some(half)).await?;
    println!(
        "daemon at half the ceiling ({half:.0}/s offered, {half_rate:.0}/s done): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms; decision→outcome p99 {:.1} ms",
        hl.p2p[0], hl.p2p[1], hl.p2p[2], hl.d2o[1]
    );
    // The ceiling's half can be beyond what the whole pipeline sustains on this machine;
    // latency is then queueing. Also measure at half of the daemon's own flat-out rate.
    let sustain = e2e_per_s / 2.0;
    let (_, sl, _) = daemon_run(&d, &ns, &sims, (sustain * 10.0) as u64, Some(sustain)).await?;
    println!(
        "daemon at half its flat-out rate ({sustain:.0}/s): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
        sl.p2p[0], sl.p2p[1], sl.p2p[2]
    );
    // At half the relay's rate: the latency figure compared with the relay's.
    let (_, rl, _) = daemon_run(
        &d,
        &ns,
        &sims,
        (relay.half_rate * 10.0) as u64,
        Some(relay.half_rate),
    )
    .await?;
    let (relay_ratio, cpu_ratio) = (e2e_per_s / relay.per_s, cpu.daemon / relay.cpu.daemon);
    println!(
        "daemon vs relay: {relay_ratio:.2}× the relay's challenges/s (target ≥ 0.9×), {cpu_ratio:.2}× its CPU per challenge ({:.0} vs {:.0} µs; target ≤ 1.1×); at half the relay's rate ({:.0}/s) publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms (target p99 ≤ 10 ms)",
        cpu.daemon, relay.cpu.daemon, relay.half_rate, rl.p2p[0], rl.p2p[1], rl.p2p[2]
    );
    drop(d);

    // 4. Memory with `inflight` challenges in flight (nobody answers), then
    // 5. the decision endpoint on them, against the bare handler.
    let ns2 = format!("{ns}-mem");
    let pch = conn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let Held {
        d,
        held,
        bytes_per,
        after_burst,
        run: held_run,
    } = hold(&c, &dir, &ns2, &sims, &pch, inflight).await?;

    let http_n = inflight.min(50_000);
    // A backend reading the outcomes meanwhile, as in production: the decisions' outcomes
    // and the baseline's publishes go to the same exchange and this queue.
    let mut outcomes = sca_dispatch::amqp::client::tap(&conn, &format!("{ns2}.outcomes")).await?;
    let read = tokio::spawn(async move { while let Some(Ok(_)) = outcomes.next().await {} });
    // The bare handlers first, while the daemon sits idle holding its challenges: the
    // decisions leave withdrawals and outcome publishes behind that would otherwise
    // still be running during the baselines. Empty, then publishing one message with a
    // confirm per request (the broker work of a decision).
    let mut baselines = [0.0f64; 2];
    for (i, publish) in [false, true].into_iter().enumerate() {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"));
        cmd.args(["simulate", "http-baseline", "--addr", "127.0.0.1:0"]);
        if publish {
            cmd.args(["--amqp-url", URL, "--exchange"])
                .arg(format!("{ns2}.outcomes"));
        }
        let mut baseline = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut line = String::new();
        BufReader::new(baseline.stdout.take().unwrap()).read_line(&mut line)?;
        let addr = line.trim().to_string();
        baselines[i] = http_load(&c, http_n, 64, move |i| {
            format!("http://{addr}/v1/challenges/x{i}/decision")
        })
        .await;
        // Its publishes confirmed before it goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = baseline.kill();
        let _ = baseline.wait();
    }
    let [http_empty_per_s, http_baseline_per_s] = baselines;
    let base = d.http.clone();
    let prefix = held_run.prefix.clone();
    let http_decision_per_s = http_load(&c, http_n, 64, move |i| {
        format!("{base}/v1/challenges/{prefix}{i}/decision")
    })
    .await;
    // The same requests again: every one is now a 409, so this is the API layer and the
    // table lookup without the decision's own work (withdrawal push, outcome publish).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = d.http.clone();
    let prefix = held_run.prefix.clone();
    let http_repeat_per_s = http_load(&c, http_n, 64, move |i| {
        format!("{base}/v1/challenges/{prefix}{i}/decision")
    })
    .await;
    // The same decisions on challenges of one device each: no withdrawal to send, so
    // the difference is what a decision's withdrawal push costs (daemon, TLS, simulator).
    let single = publisher_of(&format!("{ns2}.challenges"), http_n, None, 900, 1);
    publish(&single, &pch).await?;
    for _ in 0..600 {
        if gauge(&c, &d, "sca_challenges_in_flight").await >= held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // pushes settle
    let base = d.http.clone();
    let prefix = single.prefix.clone();
    let http_single_per_s = http_load(&c, http_n, 64, move |i| {
        format!("{base}/v1/challenges/{prefix}{i}/decision")
    })
    .await;
    read.abort();
    println!(
        "HTTP decisions on one-device challenges (no withdrawal): {http_single_per_s:.0}/s ({:.2}× the bare handler)",
        http_single_per_s / http_baseline_per_s
    );
    println!(
        "HTTP decisions: {http_decision_per_s:.0}/s vs bare hyper handler publishing with a confirm {http_baseline_per_s:.0}/s ({:.2}×; target ≥ 0.8×), 64 keep-alive connections; empty handler {http_empty_per_s:.0}/s",
        http_decision_per_s / http_baseline_per_s
    );
    println!(
        "HTTP repeated decisions (409, no side effects): {http_repeat_per_s:.0}/s ({:.2}× the bare handler)",
        http_repeat_per_s / http_baseline_per_s
    );
    drop(d);
    for q in [
        format!("{ns}.challenges"),
        format!("{ns}.responses"),
        format!("{ns}.dead"),
        format!("{ns2}.challenges"),
        format!("{ns2}.responses"),
        format!("{ns2}.dead"),
    ] {
        let _ = pch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }

    let mut report = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine(),
        "challenges": n,
        "ceiling_per_s": ceiling_per_s.round(),
        "e2e_challenges_per_s": e2e_per_s.round(),
        "e2e_ratio": (e2e_per_s / ceiling_per_s * 100.0).round() / 100.0,
        "p50_publish_to_push_ms": flat.p2p[0],
        "p99_publish_to_push_ms_flat_out": flat.p2p[1],
        "half_ceiling_rate_per_s": half.round(),
        "p50_publish_to_push_ms_half_ceiling": hl.p2p[0],
        "p99_publish_to_push_ms": hl.p2p[1],
        "p999_publish_to_push_ms": hl.p2p[2],
        "half_flat_out_rate_per_s": sustain.round(),
        "p50_publish_to_push_ms_half_flat_out": sl.p2p[0],
        "p99_publish_to_push_ms_half_flat_out": sl.p2p[1],
        "p999_publish_to_push_ms_half_flat_out": sl.p2p[2],
        "p50_decision_to_outcome_ms": flat.d2o[0],
        "p99_decision_to_outcome_ms": flat.d2o[1],
        "inflight_challenges": held,
        "bytes_per_inflight_challenge": bytes_per.round(),
        "bytes_per_inflight_challenge_after_burst": after_burst.round(),
        "engine_bytes_per_pending_challenge": footprint.pending,
        "engine_bytes_per_retained_challenge": footprint.retained,
        "engine_bytes_per_retained_rejection": footprint.rejected,
        "http_decision_per_s": http_decision_per_s.round(),
        "http_baseline_per_s": http_baseline_per_s.round(),
        "http_empty_baseline_per_s": http_empty_per_s.round(),
        "http_repeat_decision_per_s": http_repeat_per_s.round(),
        "http_repeat_decision_ratio": (http_repeat_per_s / http_baseline_per_s * 100.0).round() / 100.0,
        "http_decision_ratio": (http_decision_per_s / http_baseline_per_s * 100.0).round() / 100.0,
        "http_decision_single_device_per_s": http_single_per_s.round(),
        "http_decision_single_device_ratio": (http_single_per_s / http_baseline_per_s * 100.0).round() / 100.0,
        "cpu_us_per_challenge": {"daemon": cpu.daemon.round(), "broker": cpu.broker.round(), "simulators_and_load_tool": cpu.bench.round()},
        "cpu_us_per_message_ceiling": {"broker": ccpu.broker.round(), "publisher_and_consumer": ccpu.bench.round()},
        "config": "daemon and relay: release build, prefetch 5000 x 4 consumers, dispatched_events = false, log level warn; devices approve 20 ms after their push; HTTP baseline publishes one confirmed message per request to the outcomes exchange, read by a tap as the decisions' outcomes are; broker, daemon, simulators and load tool share the machine",
    });
    // The relay baseline and the ratios to it.
    let relay_keys = json!({
        "relay_per_s": relay.per_s.round(),
        "relay_ratio": (relay_ratio * 100.0).round() / 100.0,
        "relay_cpu_us": relay.cpu.daemon.round(),
        "daemon_cpu_us": cpu.daemon.round(),
        "cpu_ratio": (cpu_ratio * 100.0).round() / 100.0,
        "half_relay_rate_per_s": relay.half_rate.round(),
        "relay_publish_to_push_ms_half_relay": {"p50": relay.half.p2p[0], "p99": relay.half.p2p[1], "p999": relay.half.p2p[2]},
        "daemon_publish_to_push_ms_half_relay": {"p50": rl.p2p[0], "p99": rl.p2p[1], "p999": rl.p2p[2]},
        "cpu_us_per_challenge_relay": {"relay": relay.cpu.daemon.round(), "broker": relay.cpu.broker.round(), "simulators_and_load_tool": relay.cpu.bench.round()},
    });
    if let (Some(r), Some(k)) = (report.as_object_mut(), relay_keys.as_object()) {
        r.extend(k.clone());
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&out)?;
    // Read-modify-write: the keys other benchmarks merged in (`cluster`) are kept.
    let path = out.join("latest.json");
    let mut all = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v.is_object())
        .unwrap_or_else(|| json!({}));
    if let (Some(a), Some(r)) = (all.as_object_mut(), report.as_object()) {
        a.extend(r.clone());
    }
    std::fs::write(&path, serde_json::to_string_pretty(&all)? + "\n")?;
    let md = format!(
        "# End-to-end benchmark\n\n{} on {}.\n\n| measure | figure | target |\n|---|---|---|\n\
         | ceiling: bare lapin consume + ack, publisher flat out | {:.0} msg/s | |\n\
         | bare relay flat out (same I/O per challenge, nothing else) | {:.0} challenges/s | |\n\
         | daemon / relay: challenges/s | {:.2}× | ≥ 0.9× |\n\
         | daemon / relay: CPU per challenge | {:.0} / {:.0} µs ({:.2}×) | ≤ 1.1× |\n\
         | publish → push p50 / p99 / p99.9 at half the relay's rate ({:.0}/s): daemon · relay | {:.1} / {:.1} / {:.1} · {:.1} / {:.1} / {:.1} ms | daemon p99 ≤ 10 ms |\n\
         | daemon flat out | {:.0} challenges/s ({:.2}× ceiling) | ≥ 0.8× |\n\
         | publish → push p50 / p99 / p99.9 at half the ceiling ({:.0}/s) | {:.1} / {:.1} / {:.1} ms | p99 ≤ 5 ms |\n\
         | publish → push p50 / p99 / p99.9 at half the daemon's flat-out rate ({:.0}/s) | {:.1} / {:.1} / {:.1} ms | |\n\
         | publish → push p99 flat out | {:.1} ms | |\n\
         | decision → outcome p50 / p99 (flat out) | {:.1} / {:.1} ms | |\n\
         | resident memory per in-flight challenge ({:.0} in flight; idle daemon settled, {:.0} right after the burst) | {:.0} bytes | ≤ 2048 |\n\
         | engine bytes per challenge: pending / retained after its outcome / retained rejection | {} / {} / {} bytes | |\n\
         | HTTP decision endpoint vs bare hyper handler publishing with a confirm | {:.0} vs {:.0} req/s ({:.2}×) | ≥ 0.8× |\n\
         | bare hyper handler, empty | {:.0} req/s | |\n\
         | same requests again (409: API layer without the decision's work) | {:.0} req/s ({:.2}×) | |\n\
         | decisions on one-device challenges (no withdrawal push) | {:.0} req/s ({:.2}×) | |\n\n\
         CPU per challenge, flat out: daemon {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs.\n\
         CPU per challenge, relay flat out: relay {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs.\n\
         CPU per message for the ceiling: broker {:.0} µs, bare publisher + consumer {:.0} µs.\n\n\
         Reproduce: `cargo bench --bench e2e` (RabbitMQ on 127.0.0.1:5672).\n",
        report["date"].as_str().unwrap_or(""), report["machine"].as_str().unwrap_or(""),
        ceiling_per_s,
        relay.per_s, relay_ratio, cpu.daemon, relay.cpu.daemon, cpu_ratio, relay.half_rate,
        rl.p2p[0], rl.p2p[1], rl.p2p[2], relay.half.p2p[0], relay.half.p2p[1], relay.half.p2p[2],
        e2e_per_s, e2e_per_s / ceiling_per_s, half,
        hl.p2p[0], hl.p2p[1], hl.p2p[2],
        sustain, sl.p2p[0], sl.p2p[1], sl.p2p[2],
        flat.p2p[1],
        flat.d2o[0], flat.d2o[1], held, after_burst, bytes_per,
        footprint.pending, footprint.retained, footprint.rejected,
        http_decision_per_s, http_baseline_per_s, http_decision_per_s / http_baseline_per_s,
        http_empty_per_s,
        http_repeat_per_s, http_repeat_per_s / http_baseline_per_s,
        http_single_per_s, http_single_per_s / http_baseline_per_s,
        cpu.daemon, cpu.broker, cpu.bench, relay.cpu.daemon, relay.cpu.broker, relay.cpu.bench,
        ccpu.broker, ccpu.bench
    );
    std::fs::write(out.join("latest.md"), md)?;
    println!("wrote bench/results/latest.json and latest.md");
    sims.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    // Measured first, while nothing else in the process allocates.
    let footprint = sca_dispatch::engine::footprint::measure(20_000);
    println!(
        "engine memory per challenge (counting allocator, {} challenges): pending {} B, retained after its outcome {} B, retained rejection {} B",
        footprint.challenges, footprint.pending, footprint.retained, footprint.rejected
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(footprint))
}
