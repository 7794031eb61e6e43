//! `sca-dispatch load`: its options, and the run: start the simulators, print the
//! configuration lines for the daemon(s) under test, wait until every API is ready, run
//! the load, print the summary and write the JSON and SVG reports.

use super::mix::Shares;
use super::sims::{SimOptions, Sims};
use super::LoadOptions;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `sca-dispatch load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The broker the daemon(s) under test consume from.
    #[arg(
        long,
        env = "SCA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Queue the daemons consume challenges from (`amqp.challenges_queue`).
    #[arg(long, default_value = "sca.challenges")]
    pub challenges_queue: String,
    /// Exchange the daemons publish outcomes to (`amqp.outcomes_exchange`).
    #[arg(long, default_value = "sca.outcomes")]
    pub outcomes_exchange: String,
    /// A daemon's HTTP API, e.g. http://127.0.0.1:8080; repeat for several instances
    /// (decisions are spread over them).
    #[arg(long = "api", required = true)]
    pub api: Vec<String>,
    /// Bearer token for the daemons' API (one of `http.api_tokens`).
    #[arg(long, env = "SCA_LOAD_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Challenges per second (absent: flat out).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop publishing after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Stop publishing after this many challenges.
    #[arg(long)]
    pub count: Option<u64>,
    /// Challenge kinds and their weights.
    #[arg(long, default_value = "login=2,payment=1")]
    pub kinds: String,
    /// Device platforms and their weights (apns, fcm, hms).
    #[arg(long, default_value = "apns=1,fcm=1")]
    pub platforms: String,
    /// Devices per challenge (1-10), each on a platform picked from --platforms.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Challenges go to this many users in turn (absent: a new user for each challenge).
    /// Each user then gets a challenge every users / --rate seconds; keep that pace below
    /// the daemon's `limits.challenges_per_minute`, or the limit refuses some.
    #[arg(long)]
    pub users: Option<u64>,
    /// Percent of challenges with an SMS fallback.
    #[arg(long, default_value_t = 0.0)]
    pub sms_share: f64,
    /// Seconds before the SMS fallback.
    #[arg(long, default_value_t = 2)]
    pub sms_fallback: u64,
    /// Pad each challenge to about this many bytes.
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// What the devices do and the weights (approve, deny, ignore). An ignored push
    /// ends by SMS code when the challenge has SMS, else it expires after --ttl.
    #[arg(long, default_value = "approve=1")]
    pub answers: String,
    /// A device answers this many milliseconds after its push.
    #[arg(long, default_value_t = 200)]
    pub decide_after_ms: u64,
    /// Challenge ttl in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: u64,
    /// Publishing pauses while this many challenges await their outcome.
    #[arg(long, default_value_t = 100_000)]
    pub max_in_flight: usize,
    /// HTTP requests to the daemons at once.
    #[arg(long, default_value_t = 256)]
    pub http_concurrency: usize,
    /// After publishing, wait at most this many seconds for outstanding outcomes. A
    /// challenge still inside its ttl at the end counts as unfinished, not lost: keep this
    /// above --ttl to account for every challenge.
    #[arg(long, default_value_t = 75)]
    pub drain: u64,
    /// A daemon process to measure (CPU, RSS); repeat for several. Default: the local
    /// listeners of loopback --api addresses.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// APNs simulator address (`apns.endpoint` of the daemons).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub apns_addr: SocketAddr,
    /// FCM simulator address (`fcm.endpoint`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub fcm_addr: SocketAddr,
    /// Huawei Push Kit simulator address (`hms.endpoint`, `hms.token_endpoint`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub hms_addr: SocketAddr,
    /// SMS simulator address (`sms.endpoint`, webhook shape).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub sms_addr: SocketAddr,
    /// Serve FCM over HTTPS with HTTP/2 (as Google does); its CA goes in `fcm.ca_file`.
    #[arg(long)]
    pub fcm_tls: bool,
    /// Where the simulators write their keys and certificates.
    #[arg(long, default_value = "sim-load")]
    pub sim_dir: PathBuf,
    /// Wait at most this many seconds for every --api to answer /readyz.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout: u64,
    /// Write the report to PATH.json and PATH.svg.
    #[arg(long, default_value = "load-report")]
    pub report: PathBuf,
    /// No line per second.
    #[arg(long)]
    pub quiet: bool,
    /// Abuse mode: the run alone, then again while this many requests of each kind of
    /// HTTP abuse go to the APIs (`loadgen::abuse`); the report compares both.
    #[arg(long)]
    pub abuse: Option<u64>,
}

impl LoadArgs {
    /// The run's options; the error names the option.
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        let mut o = LoadOptions::new(&self.amqp_url, "http://127.0.0.1:8080");
        o.challenges_queue = self.challenges_queue.clone();
        o.outcomes_exchange = self.outcomes_exchange.clone();
        o.api = self
            .api
            .iter()
            .map(|a| a.trim_end_matches('/').to_string())
            .collect();
        o.api_token = self.api_token.clone().filter(|t| !t.is_empty());
        o.rate = self.rate;
        o.duration = self.duration.map(Duration::from_secs);
        o.count = self.count;
        o.kinds = Shares::parse(&self.kinds).map_err(|e| anyhow::anyhow!("--kinds: {e}"))?;
        o.platforms =
            Shares::parse(&self.platforms).map_err(|e| anyhow::anyhow!("--platforms: {e}"))?;
        o.devices_per_challenge = self.devices;
        o.users = self.users;
        o.sms_share = self.sms_share / 100.0;
        o.sms_fallback_seconds = self.sms_fallback;
        o.payload_bytes = self.payload_bytes;
        o.answers = Shares::parse(&self.answers).map_err(|e| anyhow::anyhow!("--answers: {e}"))?;
        o.decide_after = Duration::from_millis(self.decide_after_ms);
        o.ttl_seconds = self.ttl;
        o.max_in_flight = self.max_in_flight;
        o.http_concurrency = self.http_concurrency;
        o.drain = Duration::from_secs(self.drain);
        o.pids = self.pids.clone();
        o.print_seconds = !self.quiet;
        o.validate()?;
        Ok(o)
    }
}

/// Waits until every API answers `GET /readyz` with 200, at most `timeout`.
pub async fn wait_ready(api: &[String], timeout: Duration) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let end = Instant::now() + timeout;
    for a in api {
        let uri: hyper::Uri = format!("{a}/readyz")
            .parse()
            .with_context(|| format!("--api {a}"))?;
        loop {
            let ok = tokio::time::timeout(Duration::from_secs(2), client.get(uri.clone()))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() >= end {
                anyhow::bail!(
                    "{a}/readyz did not answer 200 within {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// Runs `sca-dispatch load`; the exit code is 0 when nothing was lost, 1 otherwise.
pub async fn main(args: LoadArgs) -> anyhow::Result<i32> {
    let opts = args.options()?;
    if opts.api_token.is_none() {
        eprintln!("note: no --api-token given; a daemon with http.api_tokens will answer 401");
    }
    let sims = Sims::start(&SimOptions {
        apns_addr: args.apns_addr,
        fcm_addr: args.fcm_addr,
        hms_addr: args.hms_addr,
        sms_addr: args.sms_addr,
        dir: args.sim_dir.clone(),
        fcm_tls: args.fcm_tls,
    })
    .await?;
    println!("Simulators running (files in {}).", args.sim_dir.display());
    println!("Configure the daemon(s) under test with:\n");
    print!("{}", sims.config_toml());
    println!(
        "\nWaiting for {} to answer /readyz (at most {} s)…",
        opts.api.join(", "),
        args.ready_timeout
    );
    wait_ready(&opts.api, Duration::from_secs(args.ready_timeout)).await?;
    if let Some(n) = args.abuse {
        let code = super::abuse::main(&args, opts, &sims, n).await?;
        sims.shutdown().await;
        return Ok(code);
    }
    let feeds = sims.feeds();
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = super::run_until(opts, feeds, ctrl_c).await?;
    print!("{}", report.summary());
    report
        .write(&args.report, "sca-dispatch load")
        .with_context(|| format!("writing {}", args.report.display()))?;
    println!(
        "report: {} and {}",
        args.report.with_extension("json").display(),
        args.report.with_extension("svg").display()
    );
    sims.shutdown().await;
    if report.unfinished() > 0 {
        eprintln!(
            "{} challenges were still inside their ttl when the drain ended: raise --drain above --ttl to account for them",
            report.unfinished()
        );
    }
    Ok(if report.lost() == 0 { 0 } else { 1 })
}
