//! Cluster benchmark (not a test). Runs 1, 2 and 3 release daemons in cluster mode as
//! child processes on the real RabbitMQ on 127.0.0.1:5672, with the simulators and the
//! project's load tool (`sca_dispatch::loadgen`) in this process, and measures:
//!
//! 1. for each instance count: sustained challenges/s flat out (published to the plain
//!    `sca.challenges` queue, so re-routing to the partitions is included; devices approve
//!    over HTTP 20 ms after their push through any instance, so two thirds of decisions
//!    are forwarded with three instances) and the daemons' CPU per challenge;
//! 2. takeover: with 3 instances under load, one is killed with SIGKILL and the time until
//!    the survivors own every partition again is measured (the bound is
//!    `cluster.takeover_seconds`, 10 s by default); every challenge still ends with an
//!    outcome.
//!
//! It prints the figures and merges them under the key `"cluster"` into
//! `bench/results/latest.json` (read-modify-write: the other keys are kept).
//! `CLUSTER_N` sets the challenge count per run (default 10,000).

use sca_dispatch::loadgen::sims::{SimOptions, Sims};
use sca_dispatch::loadgen::{self, LoadOptions};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TOKEN: &str = "cluster-bench-token";
const SECRET: &str = "cluster-bench-secret-0123456789abcdef";
const PARTITIONS: u32 = 16;

struct Daemon {
    child: Child,
    http: String,
    metrics: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn spawn_daemon(dir: &std::path::Path, ns: &str, i: usize, sims: &Sims) -> anyhow::Result<Daemon> {
    let (hp, mp) = (free_port(), free_port());
    let mut cfg = sca_dispatch::Config::default();
    cfg.amqp = cfg.amqp.namespaced(ns);
    cfg.amqp.url = URL.into();
    cfg.amqp.dispatched_events = false;
    cfg.http.addr = format!("127.0.0.1:{hp}");
    cfg.metrics.addr = format!("127.0.0.1:{mp}");
    cfg.log.level = "warn".into();
    cfg.limits.challenges_per_minute = 1_000_000;
    cfg.limits.challenge_burst = 1_000_000;
    cfg.http.api_tokens = TOKEN.into();
    cfg.cluster.enabled = true;
    cfg.cluster.secret = SECRET.into();
    cfg.cluster.partitions = PARTITIONS;
    sims.apply(&mut cfg);
    cfg.fcm.max_concurrent = 512;
    let path = dir.join(format!("{ns}-{i}.toml"));
    std::fs::write(&path, toml::to_string(&cfg)?)?;
    let child = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Daemon {
        child,
        http: format!("http://127.0.0.1:{hp}"),
        metrics: format!("http://127.0.0.1:{mp}/metrics"),
    })
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

async fn get(c: &Client, url: &str) -> Option<String> {
    let r = c.get(url.parse().ok()?).await.ok()?;
    let b = http_body_util::BodyExt::collect(r.into_body())
        .await
        .ok()?
        .to_bytes();
    Some(String::from_utf8_lossy(&b).into_owned())
}

async fn owned(c: &Client, d: &Daemon) -> f64 {
    get(c, &d.metrics)
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("sca_partitions_owned ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Waits until `ds` own every partition between them, each at least ⌊N/n⌋.
async fn spread(c: &Client, ds: &[&Daemon], within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let floor = (PARTITIONS as usize / ds.len()) as f64;
    loop {
        let mut total = 0.0;
        let mut ok = true;
        for d in ds {
            let o = owned(c, d).await;
            total += o;
            ok &= o >= floor;
        }
        if ok && total == PARTITIONS as f64 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            anyhow::bail!("partitions not spread within {within:?} ({total} owned)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn load(ns: &str, ds: &[&Daemon], n: u64, rate: Option<f64>) -> LoadOptions {
    let mut o = LoadOptions::new(URL, &ds[0].http);
    o.api = ds.iter().map(|d| d.http.clone()).collect();
    o.challenges_queue = format!("{ns}.challenges");
    o.outcomes_exchange = format!("{ns}.outcomes");
    o.api_token = Some(TOKEN.into());
    o.rate = rate;
    o.count = Some(n);
    o.duration = None;
    o.devices_per_challenge = 2;
    o.decide_after = Duration::from_millis(20);
    o.ttl_seconds = 120;
    o.max_in_flight = n as usize + 1;
    o.drain = Duration::from_secs(120);
    o.pids = ds.iter().map(|d| d.child.id()).collect();
    o.print_seconds = false;
    o
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|p| loadgen::procstat::cpu_secs(*p).unwrap_or(0.0))
        .sum()
}

async fn bench() -> anyhow::Result<()> {
    let n: u64 = std::env::var("CLUSTER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("sca-cluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let sims = Sims::start(&SimOptions {
        apns_addr: any,
        fcm_addr: any,
        hms_addr: any,
        sms_addr: any,
        dir: dir.join("sim"),
        fcm_tls: true,
    })
    .await?;
    let c: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut runs = Vec::new();
    for k in 1..=3usize {
        let ns = format!("clb{k}-{}", std::process::id());
        let ds: Vec<Daemon> = (0..k)
            .map(|i| spawn_daemon(&dir, &ns, i, &sims))
            .collect::<anyhow::Result<_>>()?;
        let refs: Vec<&Daemon> = ds.iter().collect();
        spread(&c, &refs, Duration::from_secs(60)).await?;
        let pids: Vec<u32> = ds.iter().map(|d| d.child.id()).collect();
        let before = cpu(&pids);
        let report = loadgen::run(load(&ns, &refs, n, None), sims.feeds()).await?;
        let used = cpu(&pids) - before;
        if report.lost() > 0 {
            eprint!("{}", report.summary());
            anyhow::bail!(
                "{k} instances: {} challenges without an outcome",
                report.lost()
            );
        }
        let per_s = report.json["outcomes"].as_f64().unwrap_or(0.0)
            / report.json["last_outcome_seconds"]
                .as_f64()
                .unwrap_or(1.0)
                .max(1e-3);
        let cpu_us = used * 1e6 / n as f64;
        println!(
            "{k} instance(s): {per_s:.0} challenges/s, daemons' CPU {cpu_us:.0} µs per challenge"
        );
        runs.push(json!({"instances": k, "challenges_per_s": per_s.round(), "daemon_cpu_us_per_challenge": cpu_us.round()}));
        if k < 3 {
            continue;
        }
        // Takeover under load: kill one of the three, time until the others own all.
        let rate = (per_s / 2.0).max(50.0);
        let secs = 20.0;
        let count = (rate * secs) as u64;
        let opts = load(&ns, &refs, count, Some(rate));
        let feeds = sims.feeds();
        let run = tokio::spawn(async move { loadgen::run(opts, feeds).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut ds = ds;
        let mut victim = ds.remove(2);
        let killed = Instant::now();
        victim.child.kill()?;
        let _ = victim.child.wait();
        let survivors: Vec<&Daemon> = ds.iter().collect();
        spread(&c, &survivors, Duration::from_secs(60)).await?;
        let takeover = killed.elapsed();
        let report = run.await??;
        println!(
            "takeover after SIGKILL of one of 3 under {rate:.0}/s: {:.2} s; {} of {count} challenges without an outcome",
            takeover.as_secs_f64(),
            report.lost()
        );
        runs.push(json!({"takeover_after_sigkill_s": (takeover.as_secs_f64() * 100.0).round() / 100.0, "load_per_s": rate.round(), "challenges_without_outcome": report.lost()}));
        drop(victim);
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&out)?;
    let path = out.join("latest.json");
    let mut all: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    if !all.is_object() {
        all = json!({});
    }
    all["cluster"] = json!({
        "runs": runs,
        "challenges": n,
        "partitions": PARTITIONS,
        "profile": if cfg!(debug_assertions) { "dev (unoptimized: throughput and CPU figures are not representative)" } else { "release" },
        "config": "daemons in cluster mode (16 partitions, takeover_seconds 10), prefetch 5000 x 4 over the partitions, dispatched_events = false; challenges published to the plain queue and re-routed; devices approve 20 ms after their push over HTTP through any instance (decisions without a user_id hint); broker, daemons, simulators and load tool share the machine",
    });
    std::fs::write(&path, serde_json::to_string_pretty(&all)? + "\n")?;
    println!("merged \"cluster\" into bench/results/latest.json");
    sims.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench())
}
