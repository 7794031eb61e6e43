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
//!    challenge) are the figures the daemon's own cost is judged by; at that rate the
//!    broker alone too (publish → delivery to a bare consumer), its share of the latency;
//! 2. the daemon flat out: N challenges (two devices each, APNs, FCM and Huawei mixed),
//!    devices approving over HTTP 20 ms after their push: sustained challenges/s,
//!    publish → push and decision → outcome latency; then N of the relay's challenges
//!    (iOS and Android devices only, which the relay pushes to), the run the ratios to
//!    the relay are taken from (the own mix's ratios are reported beside them);
//! 3. the daemon at half the ceiling: publish → push latency;
//! 4. memory: resident bytes per in-flight challenge with 100,000 in flight, read once
//!    the idle daemon's resident size has stopped falling;
//! 5. the HTTP decision endpoint against a bare hyper handler under the same load tool
//!    that does a decision's broker work (one message published with a confirm), against
//!    that handler also acking, alone, one of as many held deliveries as the daemon holds,
//!    behind as many left unacked as the later decision runs lie behind, against
//!    the empty handler, and against the relay's decision endpoint on challenges it holds
//!    (a decision's whole I/O: the withdrawal push and the confirmed outcome); then
//!    decisions on one-device challenges, which send no withdrawal (what the withdrawal
//!    push costs a decision); with the CPU per request of the server, the broker and
//!    this process in each;
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
//! `E2E_ONLY=memory` phase 4 alone, `E2E_ONLY=http` phases 4 and 5 with 50,000 held
//! (`E2E_INFLIGHT`; 100,000 as in a full run leaves 50,000 undecided behind the
//! decisions), `E2E_ONLY=latency` the relay and then the daemon at half the relay's
//! rate, `E2E_ONLY=cpu` `E2E_ROUNDS` times a fresh relay flat out and then the daemon
//! flat out on the relay's challenges and on its own mix (`E2E_CPU_OWN_MIX=0`: not on its
//! own mix), printed and not written;
//! `E2E_RETAIN_SECONDS` the daemon's `challenge.retain_completed_seconds`, `E2E_PAIRS`
//! how many relay/daemon pairs flat out the ratios are the medians of (default 3: the
//! first from phases 1 and 2, the others run after phase 3, a fresh relay each);
//! `E2E_PER_CHANNEL` the deliveries held per consumer channel (default the daemon's
//! `amqp.prefetch`, 1,000: with 100,000 in flight, 100 consumers) by the daemon, the relay
//! and the acking bare handler;
//! `E2E_BROKER_PROFILE=1` prints, for each timed HTTP run, the broker's work split over
//! its processes (`scripts/broker-reductions.sh`); `E2E_ONLY=layouts` consumer layouts
//! (`E2E_LAYOUTS`, `E2E_PENDING`) side by side, printed and not written (see
//! `layouts/mod.rs`); `E2E_ONLY=binding` publish → push with the broker's schedulers
//! bound to cores and unbound, side by side (`binding/mod.rs`,
//! `bench/results/broker-binding.json`); `E2E_PROBE_RATE` (with `E2E_ONLY=latency`) the
//! broker alone at that rate beside the daemon at half the relay's; `E2E_PRINT_SECONDS=1`
//! the load tool's line each second of every run; `E2E_PACED_SECONDS` the length of
//! each run at a set rate (default 10 s).

#[path = "binding/mod.rs"]
mod binding;
#[path = "layouts/mod.rs"]
mod layouts;
#[path = "stats/mod.rs"]
mod stats;
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
use stats::median;
use std::future::Future;
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

/// Challenges in a run at `rate`: `E2E_PACED_SECONDS` of it (default 10). A p99 over
/// 10 s is set by the worst 100 ms; longer runs weigh single stalls less.
fn paced_n(rate: f64) -> u64 {
    (rate * env_u64("E2E_PACED_SECONDS", 10).max(1) as f64) as u64
}

async fn connect() -> anyhow::Result<Connection> {
    Ok(sca_dispatch::amqp::client::connect(URL, "sca-dispatch e2e bench").await?)
}

/// Declares the durable quorum queue `queue`.
async fn declare_quorum(ch: &lapin::Channel, queue: &str) -> anyhow::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, quorum()).await?;
    Ok(())
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
    publisher_of(queue, n, rate, ttl, 2, PLATFORMS)
}

/// [`publisher`] with `devices` devices per challenge from the mix `platforms`.
fn publisher_of(
    queue: &str,
    n: u64,
    rate: Option<f64>,
    ttl: u64,
    devices: usize,
    platforms: &str,
) -> Arc<Shared> {
    let mut o = LoadOptions::new(URL, "http://127.0.0.1:1");
    o.challenges_queue = queue.into();
    o.count = Some(n);
    o.duration = None;
    o.rate = rate;
    o.ttl_seconds = ttl;
    o.devices_per_challenge = devices;
    o.platforms = Shares::parse(platforms).expect("a valid device mix");
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
    declare_quorum(&ch, &queue).await?;
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
    // `E2E_RETAIN_SECONDS`: how long decided challenges are kept (default the daemon's
    // own, 600 s, which no run here outlasts: the retained table only grows). A short one
    // measures the steady state, where as many expire as are decided.
    if let Ok(v) = std::env::var("E2E_RETAIN_SECONDS") {
        cfg.challenge.retain_completed_seconds = v.parse()?;
    }
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

impl CpuSplit {
    fn json(&self) -> serde_json::Value {
        json!({
            "server": self.daemon.round(),
            "broker": self.broker.round(),
            "simulators_and_load_tool": self.bench.round(),
        })
    }
}

impl std::fmt::Display for CpuSplit {
    /// `server · broker · this process`, in µs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} · {:.0} · {:.0} µs",
            self.daemon, self.broker, self.bench
        )
    }
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
    // `E2E_PRINT_SECONDS=1`: the load tool's line each second (where a tail comes from).
    o.print_seconds = std::env::var_os("E2E_PRINT_SECONDS").is_some();
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

/// Deletes the queues of namespace `ns` (a run's daemon or relay topology).
async fn delete_queues(ch: &lapin::Channel, ns: &str) {
    for q in ["challenges", "responses", "dead"] {
        let _ = ch
            .queue_delete(format!("{ns}.{q}").into(), QueueDeleteOptions::default())
            .await;
    }
}

/// The relay's figures in this run.
struct RelayRun {
    per_s: f64,
    cpu: CpuSplit,
    /// Half its flat-out rate, and publish → push there.
    half_rate: f64,
    half: Lat,
}

/// What the relay and daemon runs of one bench share: the broker connection, the
/// working directory, the run's queue namespace, the simulators and the HTTP client.
struct Ctx<'a> {
    conn: &'a Connection,
    dir: &'a std::path::Path,
    ns: &'a str,
    sims: &'a Sims,
    c: &'a Client,
}

async fn relay_baseline(b: &Ctx<'_>, n: u64) -> anyhow::Result<RelayRun> {
    let (r, ns, per_s, cpu) = relay_flat_out(b.dir, b.ns, b.sims, b.c, n).await?;
    let half_rate = per_s / 2.0;
    let (_, half, _) = daemon_run(&r, &ns, b.sims, paced_n(half_rate), Some(half_rate)).await?;
    drop(r);
    delete_queues(&b.conn.create_channel().await?, &ns).await;
    Ok(RelayRun {
        per_s,
        cpu,
        half_rate,
        half,
    })
}

/// A fresh relay (on `ns`-relay), warmed up, flat out on `n` challenges: the process,
/// its namespace, challenges/s and CPU per challenge.
async fn relay_flat_out(
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    c: &Client,
    n: u64,
) -> anyhow::Result<(Daemon, String, f64, CpuSplit)> {
    let ns = format!("{ns}-relay");
    let (prefetch, consumers) = default_layout();
    let r = spawn_as(&["simulate", "relay"], dir, &ns, sims, prefetch, consumers)?;
    wait_ready(c, &r).await?;
    // Warm-up: connections.
    daemon_run(&r, &ns, sims, 2000, None).await?;
    let (per_s, _, cpu) = daemon_run(&r, &ns, sims, n, None).await?;
    Ok((r, ns, per_s, cpu))
}

/// The relay flat out and the daemon flat out on the relay's challenges right after it:
/// challenges/s and CPU µs per challenge of each.
#[derive(Clone, Copy)]
struct Pair {
    relay_per_s: f64,
    relay_cpu: f64,
    daemon_per_s: f64,
    daemon_cpu: f64,
}

impl Pair {
    fn throughput_ratio(&self) -> f64 {
        self.daemon_per_s / self.relay_per_s
    }
    fn cpu_ratio(&self) -> f64 {
        self.daemon_cpu / self.relay_cpu
    }
}

/// `rounds` more [`Pair`]s (a fresh relay each time, the same daemon `d`).
async fn more_pairs(b: &Ctx<'_>, d: &mut Daemon, n: u64, rounds: u64) -> anyhow::Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for _ in 0..rounds {
        let (r, rns, relay_per_s, relay_cpu) = relay_flat_out(b.dir, b.ns, b.sims, b.c, n).await?;
        drop(r);
        delete_queues(&b.conn.create_channel().await?, &rns).await;
        let (daemon_per_s, _, daemon_cpu) =
            flat_out_with(d, b.ns, b.sims, n, RELAY_PLATFORMS).await?;
        pairs.push(Pair {
            relay_per_s,
            relay_cpu: relay_cpu.daemon,
            daemon_per_s,
            daemon_cpu: daemon_cpu.daemon,
        });
    }
    Ok(pairs)
}

/// The relay's figures, then the daemon started and warmed up (the quick looks).
async fn relay_then_daemon(b: &Ctx<'_>, n: u64) -> anyhow::Result<(RelayRun, Daemon)> {
    let relay = relay_baseline(b, n).await?;
    Ok((relay, warm_daemon(b.dir, b.ns, b.sims, b.c).await?))
}

/// The daemon started and warmed up (connections, provider tokens).
async fn warm_daemon(
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    c: &Client,
) -> anyhow::Result<Daemon> {
    let (prefetch, consumers) = default_layout();
    let d = spawn_daemon(dir, ns, sims, prefetch, consumers)?;
    wait_ready(c, &d).await?;
    daemon_run(&d, ns, sims, 2000, None).await?;
    Ok(d)
}

/// The broker's own share of publish → push: the load tool's publisher at `rate` to a
/// fresh quorum queue and a bare consumer (the daemon's default layout, as the
/// daemon's and the relay's, multiple-acks every 100), publish → delivery p50 / p99 /
/// p99.9 in ms. No push, no parsing beyond the challenge id.
async fn broker_floor(conn: &Connection, ns: &str, rate: f64) -> anyhow::Result<[f64; 3]> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        challenge_id: &'a str,
    }
    let queue = format!("{ns}-floor");
    let ch = conn.create_channel().await?;
    declare_quorum(&ch, &queue).await?;
    let n = paced_n(rate);
    let shared = publisher(&queue, n, Some(rate), 120);
    let seen = Arc::new(AtomicU64::new(0));
    let rec = Arc::new(loadgen::hist::Recorder::default());
    let (mut consumers, mut channels) = (Vec::new(), Vec::new());
    let (prefetch, count) = default_layout();
    for i in 0..count {
        let cch = conn.create_channel().await?;
        channels.push(cch.clone());
        cch.basic_qos(prefetch as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = cch
            .basic_consume(
                queue.as_str().into(),
                format!("floor-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (shared, seen, rec) = (shared.clone(), seen.clone(), rec.clone());
        consumers.push(tokio::spawn(async move {
            let (mut unacked, mut last) = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    d = consumer.next() => {
                        let Some(Ok(d)) = d else { return };
                        let at = Instant::now();
                        let seq = serde_json::from_slice::<Id>(&d.data)
                            .ok()
                            .and_then(|id| shared.seq(id.challenge_id));
                        if let Some((_, f)) = seq.and_then(|s| shared.flights.remove(&s)) {
                            rec.record(at.saturating_duration_since(f.published));
                        }
                        seen.fetch_add(1, Ordering::Relaxed);
                        (unacked, last) = (unacked + 1, d.delivery_tag);
                        if unacked < 100 {
                            continue;
                        }
                    }
                    _ = tick.tick() => if unacked == 0 { continue },
                }
                let _ = cch
                    .basic_ack(last, BasicAckOptions { multiple: true })
                    .await;
                unacked = 0;
            }
        }));
    }
    let pch = conn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    publish(&shared, &pch).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The consumers' channels closed before the queue goes: a consumer cancelled by the
    // queue's deletion while lapin drops it makes a frame lapin does not expect.
    for c in &channels {
        let _ = c.close(200, "done".into()).await;
    }
    consumers.iter().for_each(|c| c.abort());
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let t = rec.total();
    Ok([t.p50_ms, t.p99_ms, t.p999_ms])
}

/// Publish → push at `rate` (half the relay's), with the daemon's device mix and then
/// with the relay's (iOS and Android only: the like-for-like figure).
async fn at_half_relay(
    d: &mut Daemon,
    ns: &str,
    sims: &Sims,
    rate: f64,
) -> anyhow::Result<(Lat, Lat)> {
    let n = paced_n(rate);
    let (_, own, _) = daemon_run(d, ns, sims, n, Some(rate)).await?;
    let mix = std::mem::replace(&mut d.platforms, RELAY_PLATFORMS);
    let same = daemon_run(d, ns, sims, n, Some(rate)).await;
    d.platforms = mix;
    Ok((own, same?.1))
}

/// `n` challenges flat out with the device mix `platforms` (the daemon's own restored after).
async fn flat_out_with(
    d: &mut Daemon,
    ns: &str,
    sims: &Sims,
    n: u64,
    platforms: &'static str,
) -> anyhow::Result<(f64, Lat, CpuSplit)> {
    let mix = std::mem::replace(&mut d.platforms, platforms);
    let r = daemon_run(d, ns, sims, n, None).await;
    d.platforms = mix;
    r
}

/// `total` POSTs over `conns` keep-alive connections; requests/s. Fails unless every
/// one was answered `expect` (a run of refusals would measure the wrong work).
async fn http_load(
    c: &Client,
    total: u64,
    conns: usize,
    expect: u16,
    url: impl Fn(u64) -> String + Send + Sync + 'static,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let url = Arc::new(url);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, next, url, answered) = (c.clone(), next.clone(), url.clone(), answered.clone());
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
                    if r.status().as_u16() == expect {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let per_s = total as f64 / started.elapsed().as_secs_f64();
    let ok = answered.load(Ordering::Relaxed);
    anyhow::ensure!(
        ok == total,
        "only {ok} of {total} requests were answered {expect}"
    );
    Ok(per_s)
}

/// One phase-5 run, requests/s: as answered, and as completed — up to the moment the
/// last of the work the requests set going was done (their outcomes read by the tap,
/// their withdrawals received by the simulators). A daemon answers a decision before its
/// withdrawal and outcome go out; only the second figure holds that work.
#[derive(Clone, Copy)]
struct Rate {
    answered: f64,
    completed: f64,
    /// CPU per request from its start until its work was done: the server (the
    /// handler, the relay or the daemon), the broker, and this process (load tool and
    /// simulators).
    cpu: CpuSplit,
}

/// The bare handlers' modes (see [`decisions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bare {
    Empty,
    Publish,
    PublishAck,
}

/// Phase 5's figures.
struct Decisions {
    /// The empty bare handler.
    empty: Rate,
    /// The bare handler publishing one message with a confirm per request.
    baseline: Rate,
    /// The same, then acking one held delivery alone per request.
    acking: Rate,
    /// The relay's decision endpoint on challenges it holds.
    relay: Rate,
    /// The daemon's decisions on the challenges it holds.
    decision: Rate,
    /// The same requests again (409 each).
    repeat: Rate,
    /// Decisions on one-device challenges.
    single: Rate,
    /// Decisions on challenges with the relay's devices (iOS and Android).
    same: Rate,
}

/// Pushes the simulators have received so far.
fn pushes(sims: &Sims) -> u64 {
    sims.apns.total() + sims.fcm.send_requests() + sims.hms.send_requests()
}

/// A tap on `exchange` that counts what it reads.
async fn counting_tap(
    conn: &Connection,
    exchange: &str,
) -> anyhow::Result<(Arc<AtomicU64>, tokio::task::JoinHandle<()>)> {
    let mut outcomes = sca_dispatch::amqp::client::tap(conn, exchange).await?;
    let read = Arc::new(AtomicU64::new(0));
    let count = read.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(_)) = outcomes.next().await {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok((read, task))
}

/// What one run of requests is to set going: `outcomes` more read by `read`, `pushes`
/// more received by the simulators.
struct Owed<'a> {
    read: &'a AtomicU64,
    outcomes: u64,
    pushes: u64,
}

/// The daemon's default consumer layout (`amqp.prefetch`, `amqp.consumers`), which the
/// flat-out and latency runs of the daemon and the relay use.
fn default_layout() -> (u32, u32) {
    let a = sca_dispatch::Config::default().amqp;
    (a.prefetch, a.consumers)
}

/// Deliveries held per consumer channel at most, by the daemon, the relay and the acking
/// bare handler alike (`E2E_PER_CHANNEL`, default the daemon's `amqp.prefetch`: more in
/// flight over more channels, as operators are told to; the consumer count follows).
fn per_channel() -> u64 {
    env_u64("E2E_PER_CHANNEL", default_layout().0 as u64).clamp(1, 65_535)
}

/// `E2E_BROKER_PROFILE=1`: each timed run is profiled on the broker's side.
fn broker_profiling() -> bool {
    std::env::var_os("E2E_BROKER_PROFILE").is_some()
}

/// `scripts/broker-reductions.sh` with `args` (a mark before a timed run, a report after
/// it and another once the broker's channels are idle again: which of its processes the
/// run loaded). Run outside the timed window and after its CPU was read; its output goes
/// to this process's stdout.
fn broker_reductions(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker-reductions.sh");
    if let Err(e) = Command::new("bash").arg(script).args(args).status() {
        eprintln!("broker-reductions.sh: {e}");
    }
}

/// `n` decision requests from [`http_load`] (run `label`) to the server process
/// `server`, each to be answered `expect`, then waits (at most 120 s) for the work they
/// owe.
async fn timed(
    label: &str,
    sims: &Sims,
    owed: Owed<'_>,
    n: u64,
    server: u32,
    load: impl Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<Rate> {
    if broker_profiling() {
        broker_reductions(&["mark"]);
    }
    let (outcomes0, pushes0) = (owed.read.load(Ordering::Relaxed), pushes(sims));
    let cpu = CpuMark::new(Some(server));
    let started = Instant::now();
    let answered = load.await?;
    let deadline = started + Duration::from_secs(120);
    while owed.read.load(Ordering::Relaxed) < outcomes0 + owed.outcomes
        || pushes(sims) < pushes0 + owed.pushes
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the work of {n} requests was not done within 120 s: {} of {} outcomes, {} of {} pushes",
            owed.read.load(Ordering::Relaxed) - outcomes0,
            owed.outcomes,
            pushes(sims) - pushes0,
            owed.pushes
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let completed = n as f64 / started.elapsed().as_secs_f64();
    let rate = Rate {
        answered,
        completed,
        cpu: cpu.per(n),
    };
    if broker_profiling() {
        broker_reductions(&["report", &n.to_string(), label]);
        // Work the broker still had to do (single acks are not waited for), once done.
        broker_reductions(&["settle"]);
        broker_reductions(&["report", &n.to_string(), &format!("{label}, once idle")]);
    }
    Ok(rate)
}

/// Phase 5: the decision endpoint on `held`'s challenges, against the bare handlers and
/// the relay's endpoint, under the same load tool (`http_n` requests over 64 keep-alive
/// connections each).
#[allow(clippy::too_many_arguments)]
async fn decisions(
    conn: &Connection,
    c: &Client,
    dir: &std::path::Path,
    ns2: &str,
    sims: &Sims,
    pch: &lapin::Channel,
    d: &Daemon,
    held_run: &Arc<Shared>,
    held: f64,
    http_n: u64,
) -> anyhow::Result<Decisions> {
    // A backend reading the outcomes meanwhile, as in production: the decisions' outcomes
    // and the baseline's publishes go to the same exchange and this queue.
    let (read, reader) = counting_tap(conn, &format!("{ns2}.outcomes")).await?;
    let owed = |outcomes: bool, pushes: bool| Owed {
        read: &read,
        outcomes: if outcomes { http_n } else { 0 },
        pushes: if pushes { http_n } else { 0 },
    };
    // The bare handlers first, while the daemon sits idle holding its challenges: the
    // decisions leave withdrawals and outcome publishes behind that would otherwise
    // still be running during the baselines. Empty; publishing one message with a
    // confirm per request (the broker work of a decision); and that plus, of as many
    // held deliveries as the daemon holds, one acked alone, in delivery order behind
    // `held_n - http_n` left unacked — as the one-device and relay-device decisions lie
    // behind the undecided half of the first held set (an ack behind older unacked
    // deliveries cannot be a multiple-ack, and the broker walks to its tag).
    let held_queue = format!("{ns2}-bare-held");
    let held_n = (held as u64).max(http_n);
    let mut baselines = Vec::new();
    for mode in [Bare::Empty, Bare::Publish, Bare::PublishAck] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"));
        cmd.args(["simulate", "http-baseline", "--addr", "127.0.0.1:0"]);
        if mode != Bare::Empty {
            cmd.args(["--amqp-url", URL, "--exchange"])
                .arg(format!("{ns2}.outcomes"));
        }
        if mode == Bare::PublishAck {
            // It fills the queue itself once its consumers are up, so the deliveries
            // lie over its channels in turn, as the daemon's challenges over its
            // consumers: every single ack lies behind its channel's share of the
            // skipped ones.
            declare_quorum(pch, &held_queue).await?;
            cmd.args(["--ack-queue", &held_queue, "--held", &held_n.to_string()])
                .args(["--skip", &(held_n - http_n).to_string(), "--fill"])
                .args(["--per-channel", &per_channel().to_string()]);
        }
        let mut baseline = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut line = String::new();
        BufReader::new(baseline.stdout.take().unwrap()).read_line(&mut line)?;
        let addr = line.trim().to_string();
        anyhow::ensure!(
            !addr.is_empty(),
            "the bare handler ({mode:?}) did not start"
        );
        let load = http_load(c, http_n, 64, 200, move |i| {
            format!("http://{addr}/v1/challenges/x{i}/decision")
        });
        let rate = timed(
            &format!("bare handler {mode:?}"),
            sims,
            owed(mode != Bare::Empty, false),
            http_n,
            baseline.id(),
            load,
        )
        .await;
        if mode == Bare::PublishAck {
            // Interrupted, it waits for the broker to have handled its acks, then
            // closes its connection.
            Command::new("kill")
                .args(["-INT", &baseline.id().to_string()])
                .status()?;
            for _ in 0..1200 {
                if baseline.try_wait()?.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = baseline.kill();
        let _ = baseline.wait();
        baselines.push(rate?);
        if mode == Bare::PublishAck {
            // Its acks were handled: the deliveries it did not ack are back in the queue.
            let left = held_n - http_n;
            let mut back = 0;
            for _ in 0..100 {
                back = pch
                    .queue_declare(
                        held_queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?
                    .message_count() as u64;
                if back == left {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::ensure!(
                back == left,
                "the acking bare handler left {back} deliveries in {held_queue}, not {left}"
            );
        }
    }
    let _ = pch
        .queue_delete(held_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let (empty, baseline, acking) = (baselines[0], baselines[1], baselines[2]);
    println!(
        "HTTP bare handlers: empty {:.0}/s, publishing with a confirm {:.0}/s ({:.0}/s completed), and acking one of {held_n} held deliveries alone behind {} unacked {:.0}/s ({:.0}/s completed)",
        empty.answered, baseline.answered, baseline.completed, held_n - http_n, acking.answered, acking.completed
    );
    let relay = relay_decisions(conn, dir, ns2, sims, c, http_n).await?;
    println!(
        "HTTP decisions on the relay (withdrawal push + confirmed outcome): {:.0}/s ({:.0}/s completed)",
        relay.answered, relay.completed
    );
    let decision = timed(
        "daemon, held mix",
        sims,
        owed(true, true),
        http_n,
        d.child.id(),
        held_decisions(c, d, held_run, http_n, 200),
    )
    .await?;
    // The same requests again: every one is now a 409, so this is the API layer and the
    // table lookup without the decision's own work (withdrawal push, outcome publish).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repeat = timed(
        "daemon, 409",
        sims,
        owed(false, false),
        http_n,
        d.child.id(),
        held_decisions(c, d, held_run, http_n, 409),
    )
    .await?;
    // The same decisions on challenges of one device each: no withdrawal to send, so
    // the difference is what a decision's withdrawal push costs (daemon, TLS, simulator).
    let single = held_more(c, d, pch, ns2, held, http_n, 1, PLATFORMS).await?;
    let single = timed(
        "daemon, one device",
        sims,
        owed(true, false),
        http_n,
        d.child.id(),
        held_decisions(c, d, &single, http_n, 200),
    )
    .await?;
    // Like for like with the relay: two devices each, iOS and Android (the held set's
    // mix has Huawei devices too).
    let same = held_more(c, d, pch, ns2, held, http_n, 2, RELAY_PLATFORMS).await?;
    let same = timed(
        "daemon, relay's devices",
        sims,
        owed(true, true),
        http_n,
        d.child.id(),
        held_decisions(c, d, &same, http_n, 200),
    )
    .await?;
    reader.abort();
    println!(
        "HTTP decisions on one-device challenges (no withdrawal): {:.0}/s, {:.0}/s completed ({:.2}× the bare handler's; {:.2}× the bare handler's acking a held delivery too: the same broker work)",
        single.answered,
        single.completed,
        single.completed / baseline.completed,
        single.completed / acking.completed
    );
    println!(
        "HTTP decisions: {:.0}/s answered, {:.0}/s completed; vs bare hyper handler publishing with a confirm {:.2}× completed (target ≥ 0.8×; {:.2}× answered); vs the relay's {:.2}× completed ({:.2}× answered); 64 keep-alive connections; empty handler {:.0}/s",
        decision.answered,
        decision.completed,
        decision.completed / baseline.completed,
        decision.answered / baseline.answered,
        decision.completed / relay.completed,
        decision.answered / relay.answered,
        empty.answered
    );
    println!(
        "HTTP repeated decisions (409, no side effects): {:.0}/s ({:.2}× the bare handler)",
        repeat.answered,
        repeat.answered / baseline.answered
    );
    println!(
        "HTTP decisions on the relay's device mix (iOS and Android, two each): {:.0}/s, {:.0}/s completed ({:.2}× the bare handler's, {:.2}× the relay's)",
        same.answered,
        same.completed,
        same.completed / baseline.completed,
        same.completed / relay.completed
    );
    println!(
        "HTTP CPU per request, server · broker · load tool and simulators: bare handler publishing {}; the same acking a held delivery {}; relay {}; daemon {}; daemon, relay's devices {}; daemon, one-device challenges {}; daemon, 409 {}",
        baseline.cpu, acking.cpu, relay.cpu, decision.cpu, same.cpu, single.cpu, repeat.cpu
    );
    Ok(Decisions {
        empty,
        baseline,
        acking,
        relay,
        decision,
        repeat,
        single,
        same,
    })
}

/// `n` more challenges of `devices` devices each from the mix `platforms` published to
/// the daemon `d`, returned once it holds `held` (its held set's size) again and their
/// pushes have settled.
#[allow(clippy::too_many_arguments)]
async fn held_more(
    c: &Client,
    d: &Daemon,
    pch: &lapin::Channel,
    ns: &str,
    held: f64,
    n: u64,
    devices: usize,
    platforms: &str,
) -> anyhow::Result<Arc<Shared>> {
    let run = publisher_of(
        &format!("{ns}.challenges"),
        n,
        None,
        900,
        devices,
        platforms,
    );
    publish(&run, pch).await?;
    for _ in 0..600 {
        if gauge(c, d, "sca_challenges_in_flight").await >= held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // pushes settle
    Ok(run)
}

/// `http_n` decisions from device `d0` on `run`'s challenges at `d`, each to be
/// answered `expect`; requests/s.
async fn held_decisions(
    c: &Client,
    d: &Daemon,
    run: &Arc<Shared>,
    http_n: u64,
    expect: u16,
) -> anyhow::Result<f64> {
    let base = d.http.clone();
    let prefix = run.prefix.clone();
    http_load(c, http_n, 64, expect, move |i| {
        format!("{base}/v1/challenges/{prefix}{i}/decision")
    })
    .await
}

/// The relay's decision endpoint on `n` challenges it holds (two devices each, iOS and
/// Android, nobody answered their pushes): per request the same I/O as a daemon
/// decision — the withdrawal push to the other device and the outcome published with a
/// confirm — and nothing else.
async fn relay_decisions(
    conn: &Connection,
    dir: &std::path::Path,
    ns: &str,
    sims: &Sims,
    c: &Client,
    n: u64,
) -> anyhow::Result<Rate> {
    let ns = format!("{ns}-relay");
    let consumers = n.div_ceil(per_channel()).max(1) as u32;
    let prefetch = n.div_ceil(consumers as u64) as u32;
    let r = spawn_as(&["simulate", "relay"], dir, &ns, sims, prefetch, consumers)?;
    wait_ready(c, &r).await?;
    let (read, reader) = counting_tap(conn, &format!("{ns}.outcomes")).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = format!("{ns}.challenges");
    let run = publisher_of(&queue, n, None, 900, 2, RELAY_PLATFORMS);
    publish(&run, &ch).await?;
    // All delivered (the prefetch covers every one) once none is ready.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for _ in 0..600 {
        let q = ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await?;
        if q.message_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // pushes settle
    let owed = Owed {
        read: &read,
        outcomes: n,
        pushes: n,
    };
    let rate = timed(
        "relay",
        sims,
        owed,
        n,
        r.child.id(),
        held_decisions(c, &r, &run, n, 200),
    )
    .await;
    reader.abort();
    drop(r);
    delete_queues(&ch, &ns).await;
    rate
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
    let consumers = inflight.div_ceil(per_channel()).max(1) as u32;
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
    let ctx = Ctx {
        conn: &conn,
        dir: &dir,
        ns: &ns,
        sims: &sims,
        c: &c,
    };
    // `E2E_ONLY=memory`: phase 4 alone (a quick look at one change's effect on memory);
    // nothing is written to bench/results.
    // `E2E_ONLY=http`: phases 4 and 5 with `E2E_INFLIGHT` (default here 50,000) held.
    let only = std::env::var("E2E_ONLY").ok();
    if let Some(only @ ("memory" | "http")) = only.as_deref() {
        let pch = conn.create_channel().await?;
        pch.confirm_select(ConfirmSelectOptions::default()).await?;
        let ns = format!("{ns}-mem");
        let inflight = match only {
            "http" => env_u64("E2E_INFLIGHT", 50_000),
            _ => inflight,
        };
        let h = hold(&c, &dir, &ns, &sims, &pch, inflight).await?;
        if only == "http" {
            let n = inflight.min(50_000);
            decisions(&conn, &c, &dir, &ns, &sims, &pch, &h.d, &h.run, h.held, n).await?;
        }
        drop(h.d);
        delete_queues(&pch, &ns).await;
        return Ok(());
    }

    // `E2E_ONLY=latency`: the relay flat out and at half its rate, then the daemon at
    // that rate (publish → push), printed and not written.
    if only.as_deref() == Some("latency") {
        let (relay, mut d) = relay_then_daemon(&ctx, n).await?;
        let (own, same) = at_half_relay(&mut d, &ns, &sims, relay.half_rate).await?;
        let floor = broker_floor(&conn, &ns, relay.half_rate).await?;
        // `E2E_PROBE_RATE`: the broker alone again, at that rate, while the daemon runs
        // at half the relay's rate beside it — the broker's share under the same load.
        if let Some(probe) = std::env::var("E2E_PROBE_RATE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            let rn = paced_n(relay.half_rate);
            let pns = format!("{ns}-probe");
            let (run, under) = tokio::join!(
                daemon_run(&d, &ns, &sims, rn, Some(relay.half_rate)),
                broker_floor(&conn, &pns, probe)
            );
            let (run, under) = (run?.1, under?);
            println!(
                "under load: daemon publish→push {:.1} / {:.1} / {:.1} ms; the broker alone at {probe:.0}/s beside it {:.1} / {:.1} / {:.1} ms",
                run.p2p[0], run.p2p[1], run.p2p[2], under[0], under[1], under[2]
            );
        }
        println!(
            "publish→push p50 / p99 / p99.9 at {:.0}/s: relay {:.1} / {:.1} / {:.1} ms; daemon {:.1} / {:.1} / {:.1} ms; daemon with the relay's devices {:.1} / {:.1} / {:.1} ms; the broker alone (publish → delivery) {:.1} / {:.1} / {:.1} ms",
            relay.half_rate,
            relay.half.p2p[0], relay.half.p2p[1], relay.half.p2p[2],
            own.p2p[0], own.p2p[1], own.p2p[2],
            same.p2p[0], same.p2p[1], same.p2p[2],
            floor[0], floor[1], floor[2]
        );
        drop(d);
        delete_queues(&conn.create_channel().await?, &ns).await;
        return Ok(());
    }

    // `E2E_ONLY=binding`: the broker's schedulers bound and unbound, side by side.
    if only.as_deref() == Some("binding") {
        binding::run(&ctx, n).await?;
        return Ok(());
    }

    // `E2E_ONLY=layouts`: consumer layouts side by side, printed and not written.
    if only.as_deref() == Some("layouts") {
        layouts::run(&ctx, n).await?;
        return Ok(());
    }

    // `E2E_ONLY=cpu`: `E2E_ROUNDS` (default 2) times a fresh relay flat out, then the
    // daemon flat out with the relay's devices and with its own mix; printed, not written.
    if only.as_deref() == Some("cpu") {
        let mut d = warm_daemon(&dir, &ns, &sims, &c).await?;
        for round in 1..=env_u64("E2E_ROUNDS", 2) {
            // A fresh relay each round, right before the daemon's runs: a pair.
            let (r, rns, relay_per_s, relay) = relay_flat_out(&dir, &ns, &sims, &c, n).await?;
            drop(r);
            delete_queues(&conn.create_channel().await?, &rns).await;
            let (same_per_s, _, same) =
                flat_out_with(&mut d, &ns, &sims, n, RELAY_PLATFORMS).await?;
            println!(
                "round {round}: relay {relay_per_s:.0}/s {:.0} µs; daemon with the relay's devices {same_per_s:.0}/s {:.0} µs ({:.2}× the relay's CPU)",
                relay.daemon,
                same.daemon,
                same.daemon / relay.daemon,
            );
            if env_u64("E2E_CPU_OWN_MIX", 1) != 0 {
                let (own_per_s, _, own) = daemon_run(&d, &ns, &sims, n, None).await?;
                println!(
                    "round {round}: daemon with its own mix {own_per_s:.0}/s {:.0} µs ({:.2}×)",
                    own.daemon,
                    own.daemon / relay.daemon
                );
            }
        }
        drop(d);
        delete_queues(&conn.create_channel().await?, &ns).await;
        return Ok(());
    }

    // 1. Ceiling.
    let (ceiling_per_s, ccpu) = ceiling(&conn, &ns, n).await?;
    println!(
        "ceiling (bare lapin consume + multiple-ack, publisher flat out): {ceiling_per_s:.0} msg/s; CPU per message: broker {:.0} µs, publisher+consumer {:.0} µs",
        ccpu.broker, ccpu.bench
    );

    // The bare relay, flat out and at half its rate.
    let relay = relay_baseline(&ctx, n).await?;
    println!(
        "relay (bare I/O: consume, 2 pushes, HTTP decision, withdrawal, confirmed outcome, multiple-ack): {:.0} challenges/s; CPU per challenge: relay {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs",
        relay.per_s, relay.cpu.daemon, relay.cpu.broker, relay.cpu.bench
    );
    println!(
        "relay at half its rate ({:.0}/s): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
        relay.half_rate, relay.half.p2p[0], relay.half.p2p[1], relay.half.p2p[2]
    );

    // 2. + 3. The daemon flat out, then at half the ceiling.
    let mut d = warm_daemon(&dir, &ns, &sims, &c).await?;
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
    // The same challenges as the relay's (iOS and Android devices only): the figures the
    // ratios to the relay are taken from.
    let (same_per_s, _, same_cpu) = flat_out_with(&mut d, &ns, &sims, n, RELAY_PLATFORMS).await?;
    println!(
        "daemon flat out with the relay's devices: {same_per_s:.0} challenges/s; CPU per challenge {:.0} µs",
        same_cpu.daemon
    );
    let half = ceiling_per_s / 2.0;
    let half_n = paced_n(half);
    let (half_rate, hl, _) = daemon_run(&d, &ns, &sims, half_n, Some(half)).await?;
    println!(
        "daemon at half the ceiling ({half:.0}/s offered, {half_rate:.0}/s done): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms; decision→outcome p99 {:.1} ms",
        hl.p2p[0], hl.p2p[1], hl.p2p[2], hl.d2o[1]
    );
    // The ceiling's half can be beyond what the whole pipeline sustains on this machine;
    // latency is then queueing. Also measure at half of the daemon's own flat-out rate.
    let sustain = e2e_per_s / 2.0;
    let (_, sl, _) = daemon_run(&d, &ns, &sims, paced_n(sustain), Some(sustain)).await?;
    println!(
        "daemon at half its flat-out rate ({sustain:.0}/s): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
        sl.p2p[0], sl.p2p[1], sl.p2p[2]
    );
    // At half the relay's rate: the latency figure compared with the relay's.
    let (rl, rl_same) = at_half_relay(&mut d, &ns, &sims, relay.half_rate).await?;
    // What the broker alone takes of that: publish → delivery to a bare consumer.
    let floor = broker_floor(&conn, &ns, relay.half_rate).await?;
    println!(
        "the broker alone at {:.0}/s (publish → delivery to a bare consumer): p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
        relay.half_rate, floor[0], floor[1], floor[2]
    );
    // Like for like: the daemon on the relay's challenges, in pairs run side by side
    // (phases 1 and 2 the first, `E2E_PAIRS` − 1 more after): one pair's ratio moves by
    // up to ±0.2 on a shared machine, so the ratios reported are the pairs' medians.
    let mut pairs = vec![Pair {
        relay_per_s: relay.per_s,
        relay_cpu: relay.cpu.daemon,
        daemon_per_s: same_per_s,
        daemon_cpu: same_cpu.daemon,
    }];
    let extra = env_u64("E2E_PAIRS", 3).saturating_sub(1);
    pairs.extend(more_pairs(&ctx, &mut d, n, extra).await?);
    for (i, p) in pairs.iter().enumerate() {
        println!(
            "pair {}: relay {:.0}/s {:.0} µs, daemon {:.0}/s {:.0} µs: {:.2}× the challenges/s, {:.2}× the CPU",
            i + 1,
            p.relay_per_s,
            p.relay_cpu,
            p.daemon_per_s,
            p.daemon_cpu,
            p.throughput_ratio(),
            p.cpu_ratio()
        );
    }
    let of = |f: fn(&Pair) -> f64| median(pairs.iter().map(f).collect());
    let (relay_ratio, cpu_ratio) = (of(Pair::throughput_ratio), of(Pair::cpu_ratio));
    let (relay_per_s, relay_cpu) = (of(|p| p.relay_per_s), of(|p| p.relay_cpu));
    let daemon_cpu = of(|p| p.daemon_cpu);
    let (relay_ratio_own, cpu_ratio_own) = (e2e_per_s / relay_per_s, cpu.daemon / relay_cpu);
    println!(
        "daemon vs relay, medians of {} pairs: {relay_ratio:.2}× the relay's challenges/s (target ≥ 0.9×), {cpu_ratio:.2}× its CPU per challenge ({daemon_cpu:.0} vs {relay_cpu:.0} µs; target ≤ 1.1×); at half the relay's rate ({:.0}/s) publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms (target p99 ≤ 10 ms)",
        pairs.len(), relay.half_rate, rl.p2p[0], rl.p2p[1], rl.p2p[2]
    );
    println!(
        "  with its own device mix (Huawei devices too): {relay_ratio_own:.2}× the relay's challenges/s, {cpu_ratio_own:.2}× its CPU per challenge"
    );
    println!(
        "  with the relay's devices (iOS and Android only): publish→push p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
        rl_same.p2p[0], rl_same.p2p[1], rl_same.p2p[2]
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
    let Decisions {
        empty: http_empty,
        baseline: http_baseline,
        acking: http_acking,
        relay: http_relay,
        decision: http_decision,
        repeat: http_repeat,
        single: http_single,
        same: http_same,
    } = decisions(
        &conn, &c, &dir, &ns2, &sims, &pch, &d, &held_run, held, http_n,
    )
    .await?;
    let (http_empty_per_s, http_baseline_per_s, http_relay_per_s) = (
        http_empty.answered,
        http_baseline.answered,
        http_relay.answered,
    );
    let (http_decision_per_s, http_repeat_per_s, http_single_per_s) = (
        http_decision.answered,
        http_repeat.answered,
        http_single.answered,
    );
    drop(d);
    delete_queues(&pch, &ns).await;
    delete_queues(&pch, &ns2).await;

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
        "http_relay_decision_per_s": http_relay_per_s.round(),
        "http_decision_relay_ratio": (http_decision_per_s / http_relay_per_s * 100.0).round() / 100.0,
        "http_decision_single_device_per_s": http_single_per_s.round(),
        "http_decision_single_device_ratio": (http_single_per_s / http_baseline_per_s * 100.0).round() / 100.0,
        "cpu_us_per_challenge": {"daemon": cpu.daemon.round(), "broker": cpu.broker.round(), "simulators_and_load_tool": cpu.bench.round()},
        "cpu_us_per_message_ceiling": {"broker": ccpu.broker.round(), "publisher_and_consumer": ccpu.bench.round()},
        "config": format!("daemon and relay: release build, prefetch {} x {} consumers (the defaults), dispatched_events = false, log level warn; devices approve 20 ms after their push; HTTP baseline publishes one confirmed message per request to the outcomes exchange, read by a tap as the decisions' outcomes are; broker, daemon, simulators and load tool share the machine", default_layout().0, default_layout().1),
    });
    // The relay baseline and the ratios to it.
    let pair_list: Vec<_> = pairs
        .iter()
        .map(|p| {
            json!({
                "relay_per_s": p.relay_per_s.round(),
                "relay_cpu_us": p.relay_cpu.round(),
                "daemon_per_s": p.daemon_per_s.round(),
                "daemon_cpu_us": p.daemon_cpu.round(),
            })
        })
        .collect();
    let relay_keys = json!({
        "relay_per_s": relay_per_s.round(),
        "relay_ratio": (relay_ratio * 100.0).round() / 100.0,
        "relay_cpu_us": relay_cpu.round(),
        "daemon_cpu_us": daemon_cpu.round(),
        "cpu_ratio": (cpu_ratio * 100.0).round() / 100.0,
        "relay_pairs": pair_list,
        "daemon_per_s_relay_devices": of(|p| p.daemon_per_s).round(),
        "relay_ratio_own_mix": (relay_ratio_own * 100.0).round() / 100.0,
        "daemon_cpu_us_own_mix": cpu.daemon.round(),
        "cpu_ratio_own_mix": (cpu_ratio_own * 100.0).round() / 100.0,
        "half_relay_rate_per_s": relay.half_rate.round(),
        "relay_publish_to_push_ms_half_relay": {"p50": relay.half.p2p[0], "p99": relay.half.p2p[1], "p999": relay.half.p2p[2]},
        "daemon_publish_to_push_ms_half_relay": {"p50": rl.p2p[0], "p99": rl.p2p[1], "p999": rl.p2p[2]},
        "daemon_publish_to_push_ms_half_relay_relay_devices": {"p50": rl_same.p2p[0], "p99": rl_same.p2p[1], "p999": rl_same.p2p[2]},
        "broker_publish_to_delivery_ms_half_relay": {"p50": floor[0], "p99": floor[1], "p999": floor[2]},
        "cpu_us_per_challenge_relay": {"relay": relay.cpu.daemon.round(), "broker": relay.cpu.broker.round(), "simulators_and_load_tool": relay.cpu.bench.round()},
    });
    // Phase 5 as completed: the work the requests set going done.
    let http_keys = json!({
        "http_completed_per_s": {
            "baseline": http_baseline.completed.round(),
            "baseline_acking": http_acking.completed.round(),
            "relay": http_relay.completed.round(),
            "decision": http_decision.completed.round(),
            "single_device": http_single.completed.round(),
            "relay_devices": http_same.completed.round(),
        },
        "http_decision_completed_ratio": (http_decision.completed / http_baseline.completed * 100.0).round() / 100.0,
        "http_decision_relay_completed_ratio": (http_decision.completed / http_relay.completed * 100.0).round() / 100.0,
        // The relay's own decisions against the bare handler: what the same I/O (a
        // withdrawal push beside the confirmed outcome) leaves of the handler's rate.
        "http_relay_completed_ratio": (http_relay.completed / http_baseline.completed * 100.0).round() / 100.0,
        "http_decision_single_device_completed_ratio": (http_single.completed / http_baseline.completed * 100.0).round() / 100.0,
        "http_decision_single_device_acking_completed_ratio": (http_single.completed / http_acking.completed * 100.0).round() / 100.0,
        "http_decision_relay_devices_completed_ratio": (http_same.completed / http_baseline.completed * 100.0).round() / 100.0,
        "http_decision_relay_devices_relay_completed_ratio": (http_same.completed / http_relay.completed * 100.0).round() / 100.0,
        "http_cpu_us_per_request": {
            "baseline": http_baseline.cpu.json(),
            "baseline_acking": http_acking.cpu.json(),
            "relay": http_relay.cpu.json(),
            "decision": http_decision.cpu.json(),
            "single_device": http_single.cpu.json(),
            "relay_devices": http_same.cpu.json(),
            "repeat": http_repeat.cpu.json(),
        },
    });
    for keys in [&relay_keys, &http_keys] {
        if let (Some(r), Some(k)) = (report.as_object_mut(), keys.as_object()) {
            r.extend(k.clone());
        }
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
         | bare relay flat out (same I/O per challenge, nothing else; median of {} runs) | {:.0} challenges/s | |\n\
         | daemon / relay: challenges/s, on the relay's challenges (iOS and Android devices; median of the pairs' ratios) | {:.2}× | ≥ 0.9× |\n\
         | daemon / relay: CPU per challenge, on the relay's challenges (medians) | {:.0} / {:.0} µs ({:.2}×) | ≤ 1.1× |\n\
         | the same with the daemon's own device mix (Huawei devices too): challenges/s; CPU | {:.2}×; {:.0} µs ({:.2}×) | |\n\
         | publish → push p50 / p99 / p99.9 at half the relay's rate ({:.0}/s): daemon · relay | {:.1} / {:.1} / {:.1} · {:.1} / {:.1} / {:.1} ms | daemon p99 ≤ 10 ms |\n\
         | the same, the daemon with the relay's devices (iOS and Android only) | {:.1} / {:.1} / {:.1} ms | |\n\
         | the broker alone at that rate: publish → delivery to a bare consumer (the default layout) | {:.1} / {:.1} / {:.1} ms | |\n\
         | daemon flat out | {:.0} challenges/s ({:.2}× ceiling) | ≥ 0.8× |\n\
         | publish → push p50 / p99 / p99.9 at half the ceiling ({:.0}/s) | {:.1} / {:.1} / {:.1} ms | p99 ≤ 5 ms |\n\
         | publish → push p50 / p99 / p99.9 at half the daemon's flat-out rate ({:.0}/s) | {:.1} / {:.1} / {:.1} ms | |\n\
         | publish → push p99 flat out | {:.1} ms | |\n\
         | decision → outcome p50 / p99 (flat out) | {:.1} / {:.1} ms | |\n\
         | resident memory per in-flight challenge ({:.0} in flight; idle daemon settled, {:.0} right after the burst) | {:.0} bytes | ≤ 2048 |\n\
         | engine bytes per challenge: pending / retained after its outcome / retained rejection | {} / {} / {} bytes | |\n\
         | HTTP decisions completed (answered, outcome read, withdrawal received) vs bare hyper handler publishing with a confirm | {:.0} vs {:.0} req/s ({:.2}×) | ≥ 0.8× |\n\
         | the same, as answered | {:.0} vs {:.0} req/s ({:.2}×) | |\n\
         | HTTP decisions completed vs the relay's (same I/O: withdrawal push + confirmed outcome); as answered | {:.0} vs {:.0} req/s ({:.2}×); {:.0} vs {:.0} ({:.2}×) | |\n\
         | the relay's own decisions completed vs the bare handler publishing with a confirm (what the same I/O leaves of its rate) | {:.2}× | |\n\
         | bare hyper handler, empty | {:.0} req/s | |\n\
         | same requests again (409: API layer without the decision's work) | {:.0} req/s ({:.2}×) | |\n\
         | decisions on one-device challenges (no withdrawal push), completed: vs bare handler; vs bare handler also acking one of as many held deliveries alone (the same broker work) | {:.0} req/s ({:.2}×; {:.2}× of {:.0}) | |\n\
         | decisions on the relay's device mix (iOS and Android, two each), completed: vs bare handler; vs relay | {:.0} req/s ({:.2}×; {:.2}×) | |\n\
         | CPU per HTTP request, server · broker · simulators and load tool: bare handler publishing; the same acking a held delivery; relay; daemon; daemon on the relay's devices; daemon on one-device challenges | {}; {}; {}; {}; {}; {} | |\n\n\
         CPU per challenge, flat out: daemon {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs.\n\
         CPU per challenge, relay flat out (the first pair): relay {:.0} µs, broker {:.0} µs, simulators + load tool {:.0} µs.\n\
         CPU per message for the ceiling: broker {:.0} µs, bare publisher + consumer {:.0} µs.\n\n\
         Reproduce: `cargo bench --bench e2e` (RabbitMQ on 127.0.0.1:5672).\n",
        report["date"].as_str().unwrap_or(""), report["machine"].as_str().unwrap_or(""),
        ceiling_per_s,
        pairs.len(), relay_per_s, relay_ratio, daemon_cpu, relay_cpu, cpu_ratio,
        relay_ratio_own, cpu.daemon, cpu_ratio_own, relay.half_rate,
        rl.p2p[0], rl.p2p[1], rl.p2p[2], relay.half.p2p[0], relay.half.p2p[1], relay.half.p2p[2],
        rl_same.p2p[0], rl_same.p2p[1], rl_same.p2p[2],
        floor[0], floor[1], floor[2],
        e2e_per_s, e2e_per_s / ceiling_per_s, half,
        hl.p2p[0], hl.p2p[1], hl.p2p[2],
        sustain, sl.p2p[0], sl.p2p[1], sl.p2p[2],
        flat.p2p[1],
        flat.d2o[0], flat.d2o[1], held, after_burst, bytes_per,
        footprint.pending, footprint.retained, footprint.rejected,
        http_decision.completed, http_baseline.completed, http_decision.completed / http_baseline.completed,
        http_decision_per_s, http_baseline_per_s, http_decision_per_s / http_baseline_per_s,
        http_decision.completed, http_relay.completed, http_decision.completed / http_relay.completed,
        http_decision_per_s, http_relay_per_s, http_decision_per_s / http_relay_per_s,
        http_relay.completed / http_baseline.completed,
        http_empty_per_s,
        http_repeat_per_s, http_repeat_per_s / http_baseline_per_s,
        http_single.completed, http_single.completed / http_baseline.completed,
        http_single.completed / http_acking.completed, http_acking.completed,
        http_same.completed, http_same.completed / http_baseline.completed, http_same.completed / http_relay.completed,
        http_baseline.cpu, http_acking.cpu, http_relay.cpu, http_decision.cpu, http_same.cpu, http_single.cpu,
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
