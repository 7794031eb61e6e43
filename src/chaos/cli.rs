//! `sca-dispatch chaos`: its options, the run, the table and the JSON report; the exit
//! code is 1 when anything was lost or contradicted.

use super::faults::FaultKind;
use super::{report, ChaosOptions};
use crate::loadgen::mix::Shares;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `sca-dispatch chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// The broker (local: the broker faults use `rabbitmqctl` on this machine).
    #[arg(
        long,
        env = "SCA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Challenges per second throughout the run.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// The faults, in the order run (default: all but cluster-sigkill): sigkill,
    /// broker-restart, connection-close, apns-503, apns-stall, fcm-token-down, sms-down,
    /// cluster-sigkill.
    #[arg(long)]
    pub faults: Option<String>,
    /// How long the long faults last (the broker is down a quarter of it).
    #[arg(long, default_value_t = 20.0)]
    pub fault_seconds: f64,
    /// Load without a fault after each fault (and before the first).
    #[arg(long, default_value_t = 10.0)]
    pub settle_seconds: f64,
    /// Daemon instances sharing the broker (cluster-sigkill needs 3).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Challenge ttl in seconds (the run waits this plus a margin at the end).
    #[arg(long, default_value_t = 20)]
    pub ttl: u64,
    /// Percent of challenges with an SMS fallback.
    #[arg(long, default_value_t = 20.0)]
    pub sms_share: f64,
    /// What the devices do, with weights (approve, deny, ignore).
    #[arg(long, default_value = "approve=8,deny=1,ignore=1")]
    pub answers: String,
    /// Device platforms, with weights (apns, fcm, hms).
    #[arg(long, default_value = "apns=1,fcm=1")]
    pub platforms: String,
    /// A device answers this many milliseconds after its push.
    #[arg(long, default_value_t = 200)]
    pub decide_after_ms: u64,
    /// Where the daemons' configurations and logs and the simulators' files go.
    #[arg(long, default_value = "chaos-run")]
    pub dir: PathBuf,
    /// The JSON report.
    #[arg(long, default_value = "bench/results/chaos.json")]
    pub out: PathBuf,
    /// No line per second.
    #[arg(long)]
    pub quiet: bool,
}

fn seconds(v: f64, name: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
        anyhow::bail!("--{name} must be 0..=3600");
    }
    Ok(Duration::from_secs_f64(v))
}

impl ChaosArgs {
    /// The run's options; the error names the option.
    pub fn options(&self) -> anyhow::Result<ChaosOptions> {
        let exe = std::env::current_exe().context("finding this binary (the daemon to run)")?;
        let mut o = ChaosOptions::new(exe, self.dir.clone());
        o.amqp_url = self.amqp_url.clone();
        o.rate = self.rate;
        if let Some(f) = &self.faults {
            o.faults = FaultKind::parse_list(f).map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
        }
        o.fault_time = seconds(self.fault_seconds, "fault-seconds")?;
        o.settle = seconds(self.settle_seconds, "settle-seconds")?;
        o.warmup = o.settle;
        o.instances = self.instances;
        o.ttl_seconds = self.ttl;
        if !(0.0..=100.0).contains(&self.sms_share) {
            anyhow::bail!("--sms-share must be 0..=100 (percent)");
        }
        o.sms_share = self.sms_share / 100.0;
        o.answers = Shares::parse(&self.answers).map_err(|e| anyhow::anyhow!("--answers: {e}"))?;
        o.platforms =
            Shares::parse(&self.platforms).map_err(|e| anyhow::anyhow!("--platforms: {e}"))?;
        o.decide_after = Duration::from_millis(self.decide_after_ms);
        o.verbose = !self.quiet;
        o.validate()?;
        Ok(o)
    }
}

/// Runs `sca-dispatch chaos`; the exit code is 0 when every target was met.
pub async fn main(args: ChaosArgs) -> anyhow::Result<i32> {
    let o = args.options()?;
    let r = super::run(o).await?;
    print!("\n{}", report::table(&r.rows));
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&r.json)?;
    std::fs::write(&args.out, text + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("report: {}", args.out.display());
    if !r.targets_met() {
        eprintln!("targets missed: a challenge was lost or got contradictory outcomes");
        return Ok(1);
    }
    if r.rows.iter().any(|row| !row.phase.happened) {
        eprintln!("a fault left no trace (see `happened` in the report)");
        return Ok(1);
    }
    Ok(0)
}
