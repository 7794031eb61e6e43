//! `sca-dispatch chaos`: the daemon under faults. It starts the simulators (in-process, as
//! `load` does), N real daemon processes (this binary, `run --config …`) on the local
//! RabbitMQ with queues of their own, and a steady load through the load tool (devices
//! deciding over HTTP, outcomes read through a durable queue so none is missed across
//! broker restarts). After a baseline it puts the daemons through each fault in turn,
//! with a settling time after each; then it stops publishing, waits the ttl plus a margin
//! and counts, per fault, the challenges published from its start to the next one's:
//! lost (accepted by the broker, no outcome), duplicated (more than one outcome message)
//! and contradictory (outcome messages that disagree), with the time from the fault's end
//! until outcomes flow at full rate again and the p99 time to an outcome of the
//! challenges published during the fault.
//!
//! - [`faults`]: the faults, their names and durations; [`broker`]: `rabbitmqctl` and the
//!   guard that starts the broker again; [`daemons`]: the daemon processes;
//!   [`ledger`]: every challenge's publish and outcomes, and the figures; [`report`]: the
//!   table and the JSON; [`cli`]: the command.

pub mod broker;
pub mod cli;
pub mod daemons;
pub mod faults;
pub mod ledger;
pub mod report;

use crate::loadgen::mix::{Answer, Platform, Shares};
use crate::loadgen::player::{Observer, Shared};
use crate::loadgen::sims::{SimOptions, Sims};
use crate::loadgen::LoadOptions;
use crate::sim::fault::Fault;
use anyhow::Context;
use broker::{Rabbitmqctl, StartGuard};
use daemons::Fleet;
use faults::FaultKind;
use ledger::Ledger;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a daemon may take to answer `/readyz` after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// After the last outcome awaited, outcomes are still read this long (late duplicates).
const LINGER: Duration = Duration::from_secs(3);
/// Past the ttl, how long the run waits for the outcomes still owed.
const DRAIN_MARGIN: Duration = Duration::from_secs(15);
/// How often the daemons are checked while a fault or a settling time runs.
const POLL: Duration = Duration::from_millis(200);
/// How long the connection-close fault waits for a daemon connection to close (the
/// daemons may still be reconnecting after the fault before).
const CONNECTION_WAIT: Duration = Duration::from_secs(30);
/// Instances at most.
pub const MAX_INSTANCES: usize = 8;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub amqp_url: String,
    /// Challenges per second throughout.
    pub rate: f64,
    /// The faults, in the order run.
    pub faults: Vec<FaultKind>,
    /// How long the long faults last (20 s in a full run; the broker's outage is a
    /// quarter of it).
    pub fault_time: Duration,
    /// Load without a fault before the first one (the baseline).
    pub warmup: Duration,
    /// Load without a fault after each one.
    pub settle: Duration,
    /// Daemon instances on the one broker; `cluster-sigkill` needs 3 (cluster mode).
    pub instances: usize,
    pub ttl_seconds: u64,
    /// Share (0..=1) of challenges with an SMS fallback.
    pub sms_share: f64,
    pub answers: Shares<Answer>,
    pub platforms: Shares<Platform>,
    /// A device answers this long after its push.
    pub decide_after: Duration,
    /// Where configurations, logs and the simulators' files go.
    pub dir: PathBuf,
    /// The daemon binary (`sca-dispatch`; the runner's own by default).
    pub daemon_exe: PathBuf,
    /// Print the load's line each second and the faults as they come.
    pub verbose: bool,
}

impl ChaosOptions {
    /// A full run's defaults: 500/s, every fault without the cluster, 20 s faults.
    pub fn new(daemon_exe: PathBuf, dir: PathBuf) -> ChaosOptions {
        ChaosOptions {
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            rate: 500.0,
            faults: FaultKind::single_instance(),
            fault_time: Duration::from_secs(20),
            warmup: Duration::from_secs(10),
            settle: Duration::from_secs(10),
            instances: 1,
            ttl_seconds: 20,
            sms_share: 0.2,
            answers: Shares::new(vec![
                (Answer::Approve, 8),
                (Answer::Deny, 1),
                (Answer::Ignore, 1),
            ])
            .expect("valid shares"),
            platforms: Shares::new(vec![(Platform::Apns, 1), (Platform::Fcm, 1)])
                .expect("valid shares"),
            decide_after: Duration::from_millis(200),
            dir,
            daemon_exe,
            verbose: true,
        }
    }

    /// Checks the options; the error names the option.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            anyhow::bail!("--instances must be 1..={MAX_INSTANCES}");
        }
        if self.faults.contains(&FaultKind::ClusterSigkill) && self.instances != 3 {
            anyhow::bail!(
                "--faults cluster-sigkill needs --instances 3: it SIGKILLs one of three instances in cluster mode ([cluster] enabled = true)"
            );
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100_000.0) {
            anyhow::bail!("--rate must be above 0 and at most 100,000");
        }
        if self.fault_time < Duration::from_secs(1) || self.fault_time > Duration::from_secs(600) {
            anyhow::bail!("--fault-seconds must be 1..=600");
        }
        if self.settle > Duration::from_secs(600) || self.warmup > Duration::from_secs(600) {
            anyhow::bail!("--settle-seconds must be at most 600");
        }
        if !self.daemon_exe.is_file() {
            anyhow::bail!("the daemon binary {} is missing", self.daemon_exe.display());
        }
        Ok(())
    }

    fn cluster(&self) -> bool {
        self.faults.contains(&FaultKind::ClusterSigkill)
    }
}

/// One phase of the run: the baseline or a fault, with the settling time after it.
#[derive(Debug, Clone)]
pub struct Phase {
    /// `baseline` or the fault's name.
    pub name: String,
    pub fault: Option<FaultKind>,
    pub start_us: u64,
    pub fault_end_us: u64,
    /// Start of the next phase (the end of publishing for the last one).
    pub end_us: u64,
    /// What shows the fault happened (pids, counts of refused requests, …).
    pub evidence: Map<String, Value>,
    /// Whether the evidence shows the fault took effect.
    pub happened: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    pub rows: Vec<report::Row>,
    pub json: Value,
}

impl ChaosReport {
    /// Lost = 0 and contradictory = 0 in every phase.
    pub fn targets_met(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.figures.lost == 0 && r.figures.contradictory == 0)
    }

    /// The row of a fault.
    pub fn row(&self, fault: FaultKind) -> Option<&report::Row> {
        self.rows.iter().find(|r| r.phase.fault == Some(fault))
    }
}

/// The simulators, the daemons and what the faults need of them.
struct Bench {
    sims: Sims,
    fleet: Fleet,
    ctl: Rabbitmqctl,
    guard: StartGuard,
    /// `rabbitmqctl list_connections` names the daemons' connections with this prefix.
    connection_prefix: String,
    amqp_url: String,
    verbose: bool,
}

fn say(verbose: bool, line: &str) {
    if verbose {
        println!("{line}");
    }
}

impl Bench {
    /// Sleeps `d`, restarting (and noting) any instance that died meanwhile.
    async fn hold(&mut self, d: Duration, phase: &mut Map<String, Value>) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + d;
        loop {
            for (i, why) in self.fleet.reap_exited() {
                // A daemon that dies on its own is a finding: noted, and started again so
                // the run goes on.
                let note = phase
                    .entry("unexpected_exits")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = note {
                    a.push(Value::String(why.clone()));
                }
                say(self.verbose, &format!("!! {why}"));
                self.fleet.spawn(i)?;
            }
            let now = tokio::time::Instant::now();
            if now >= end {
                return Ok(());
            }
            tokio::time::sleep((end - now).min(POLL)).await;
        }
    }

    async fn ready(&mut self, i: usize) -> anyhow::Result<()> {
        self.fleet.wait_ready(i, READY_TIMEOUT).await
    }

    /// Runs one fault; fills the phase's evidence and returns when the fault ended.
    async fn inject(
        &mut self,
        fault: FaultKind,
        d: Duration,
        ev: &mut Map<String, Value>,
        ledger: &Ledger,
    ) -> anyhow::Result<(u64, bool)> {
        let happened = match fault {
            FaultKind::Sigkill | FaultKind::ClusterSigkill => {
                // The cluster fault kills one of the others: instance 0 took the first.
                let i = if fault == FaultKind::Sigkill { 0 } else { 1 };
                let before = self.fleet.kill(i)?;
                ev.insert("instance".into(), json!(i));
                ev.insert("pid_killed".into(), json!(before));
                self.hold(d, ev).await?;
                let after = self.fleet.spawn(i)?;
                ev.insert("pid_restarted".into(), json!(after));
                let end = ledger.now_us();
                let t = Instant::now();
                self.ready(i).await?;
                ev.insert(
                    "ready_after_restart_s".into(),
                    json!(t.elapsed().as_secs_f64()),
                );
                return Ok((end, before != after));
            }
            FaultKind::BrokerRestart => {
                self.guard.arm();
                self.ctl.stop_app().await?;
                ev.insert("stop_app".into(), json!(true));
                // The listener must refuse connections while the application is down.
                let refused = tokio::net::TcpStream::connect(broker_addr(&self.amqp_url))
                    .await
                    .is_err();
                ev.insert("amqp_port_refused".into(), json!(refused));
                self.hold(d, ev).await?;
                let t = Instant::now();
                self.ctl.start_app().await?;
                self.guard.disarm();
                ev.insert("start_app_s".into(), json!(t.elapsed().as_secs_f64()));
                true
            }
            FaultKind::ConnectionClose => {
                // The daemons may still be reconnecting after an earlier fault (a broker
                // restart): there must be a connection to close. Bounded wait.
                let t = Instant::now();
                let ours = loop {
                    let ours: Vec<_> = self
                        .ctl
                        .connections()
                        .await?
                        .into_iter()
                        .filter(|c| c.name.starts_with(&self.connection_prefix))
                        .collect();
                    if !ours.is_empty() || t.elapsed() >= CONNECTION_WAIT {
                        break ours;
                    }
                    tokio::time::sleep(POLL).await;
                };
                ev.insert(
                    "waited_for_a_connection_s".into(),
                    json!(t.elapsed().as_secs_f64()),
                );
                for c in &ours {
                    self.ctl
                        .close_connection(&c.pid, "chaos: connection closed by the broker")
                        .await?;
                }
                ev.insert("connections_closed".into(), json!(ours.len()));
                ev.insert(
                    "names".into(),
                    json!(ours.iter().map(|c| c.name.clone()).collect::<Vec<_>>()),
                );
                !ours.is_empty()
            }
            FaultKind::Apns503 | FaultKind::ApnsStall => {
                let sw = self.sims.apns.fault();
                let (u, s) = (sw.unavailable_answers(), sw.stalled_requests());
                sw.set(if fault == FaultKind::Apns503 {
                    Fault::Unavailable
                } else {
                    Fault::Stall
                });
                self.hold(d, ev).await?;
                let sw = self.sims.apns.fault();
                sw.set(Fault::Off);
                let (u, s) = (sw.unavailable_answers() - u, sw.stalled_requests() - s);
                ev.insert("apns_503_answers".into(), json!(u));
                ev.insert("apns_stalled_requests".into(), json!(s));
                if fault == FaultKind::Apns503 {
                    u > 0
                } else {
                    s > 0
                }
            }
            FaultKind::FcmTokenDown => {
                let sw = self.sims.fcm.token_fault();
                let refused = sw.unavailable_answers();
                let mints = self.sims.fcm.token_mints();
                sw.set(Fault::Unavailable);
                self.sims.fcm.revoke_access_tokens();
                self.hold(d, ev).await?;
                let sw = self.sims.fcm.token_fault();
                sw.set(Fault::Off);
                let refused = sw.unavailable_answers() - refused;
                ev.insert("token_requests_refused".into(), json!(refused));
                ev.insert(
                    "tokens_minted_during".into(),
                    json!(self.sims.fcm.token_mints() - mints),
                );
                refused > 0
            }
            FaultKind::SmsDown => {
                let sw = self.sims.sms.fault();
                let u = sw.unavailable_answers();
                sw.set(Fault::Unavailable);
                self.hold(d, ev).await?;
                let sw = self.sims.sms.fault();
                sw.set(Fault::Off);
                let u = sw.unavailable_answers() - u;
                ev.insert("sms_503_answers".into(), json!(u));
                u > 0
            }
        };
        Ok((ledger.now_us(), happened))
    }
}

/// The broker's address in an `amqp://` URL (127.0.0.1:5672 when it cannot be read).
fn broker_addr(url: &str) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 5672));
    let Ok(u) = url::Url::parse(url) else {
        return fallback;
    };
    let host = match u.host_str() {
        Some("localhost") | None => "127.0.0.1".to_string(),
        Some(h) => h.trim_matches(|c| c == '[' || c == ']').to_string(),
    };
    format!("{host}:{}", u.port().unwrap_or(5672))
        .parse()
        .unwrap_or(fallback)
}

/// The daemon's configuration for instance `i`.
fn daemon_config(
    ns: &str,
    o: &ChaosOptions,
    token: &str,
    secret: &str,
    sims: &Sims,
    http: u16,
    metrics: u16,
) -> anyhow::Result<String> {
    let mut c = crate::Config::default();
    c.amqp = c.amqp.namespaced(ns);
    c.amqp.url = o.amqp_url.clone();
    c.http.addr = format!("127.0.0.1:{http}");
    c.metrics.addr = format!("127.0.0.1:{metrics}");
    c.http.api_tokens = token.into();
    c.log.level = "warn".into();
    c.shutdown.grace_seconds = 2;
    sims.apply(&mut c);
    // Every challenge has its own user and number; the global cap is the one that
    // would bite at this rate.
    c.sms.max_per_minute_global = 1_000_000;
    if o.cluster() {
        // Cluster mode (CONTRACT §10): every instance shares one fresh secret.
        c.cluster.enabled = true;
        c.cluster.secret = secret.to_string();
    }
    let text = toml::to_string(&c).context("writing the daemon's configuration")?;
    Ok(text)
}

/// Deletes the run's queues and exchanges (best effort).
async fn clean_up(url: &str, ns: &str, outcomes_queue: &str, cluster: bool) {
    let Ok(conn) = crate::amqp::client::connect(url, "sca-dispatch chaos clean-up").await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let mut queues = vec![
            format!("{ns}.challenges"),
            format!("{ns}.responses"),
            format!("{ns}.dead"),
            outcomes_queue.to_string(),
        ];
        if cluster {
            // The default 16 partitions (CONTRACT §10).
            queues.extend((0..16).map(|p| format!("{ns}.challenges.p{p}")));
            let _ = ch
                .exchange_delete(
                    format!("{ns}.challenges.by-user").into(),
                    Default::default(),
                )
                .await;
        }
        for q in queues {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for x in ["outcomes", "events", "dead", "control"] {
            let _ = ch
                .exchange_delete(format!("{ns}.{x}").into(), Default::default())
                .await;
        }
    }
    let _ = conn.close(200, "chaos done".into()).await;
}

/// Runs the faults; the report of every phase.
pub async fn run(o: ChaosOptions) -> anyhow::Result<ChaosReport> {
    o.validate()?;
    let ctl = Rabbitmqctl::default();
    let needs_ctl = o
        .faults
        .iter()
        .any(|f| matches!(f, FaultKind::BrokerRestart | FaultKind::ConnectionClose));
    if needs_ctl {
        ctl.await_startup()
            .await
            .context("the broker faults need rabbitmqctl and a running local RabbitMQ")?;
    }
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let ns = format!("chaos-{:08x}", rand::random::<u32>());
    let token = format!("chaos-{:032x}", rand::random::<u128>());
    // Cluster mode: one control-traffic secret shared by every instance.
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let sims = Sims::start(&SimOptions {
        apns_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        fcm_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        hms_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        sms_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        dir: o.dir.join("sims"),
        fcm_tls: false,
    })
    .await?;
    let fleet = Fleet::prepare(&o.daemon_exe, &o.dir, o.instances, |_, http, metrics| {
        daemon_config(&ns, &o, &token, &secret, &sims, http, metrics)
    })?;
    let mut bench = Bench {
        sims,
        fleet,
        ctl,
        guard: StartGuard::default(),
        connection_prefix: format!("sca-dispatch {ns}.challenges pid "),
        amqp_url: o.amqp_url.clone(),
        verbose: o.verbose,
    };
    let outcomes_queue = format!("{ns}.chaos-outcomes");
    let result = run_on(&o, &ns, &token, &outcomes_queue, &mut bench).await;
    bench.fleet.stop_all();
    bench.sims.shutdown().await;
    clean_up(&o.amqp_url, &ns, &outcomes_queue, o.cluster()).await;
    result
}

async fn run_on(
    o: &ChaosOptions,
    ns: &str,
    token: &str,
    outcomes_queue: &str,
    bench: &mut Bench,
) -> anyhow::Result<ChaosReport> {
    for i in 0..o.instances {
        bench.fleet.spawn(i)?;
    }
    for i in 0..o.instances {
        bench.ready(i).await.with_context(|| {
            if o.cluster() {
                "starting the daemons in cluster mode ([cluster] enabled = true): a build without cluster mode refuses the section".to_string()
            } else {
                "starting the daemons".to_string()
            }
        })?;
    }
    say(
        o.verbose,
        &format!(
            "{} daemon(s) ready (queues {ns}.*, logs in {}); load at {}/s",
            o.instances,
            o.dir.display(),
            o.rate
        ),
    );

    let mut lo = LoadOptions::new(&o.amqp_url, "http://127.0.0.1:1");
    lo.challenges_queue = format!("{ns}.challenges");
    if o.cluster() {
        // Partitioned intake: by user, as backends publish in cluster mode.
        lo.challenges_exchange = Some(format!("{ns}.challenges.by-user"));
    }
    lo.outcomes_exchange = format!("{ns}.outcomes");
    lo.api = bench.fleet.instances.iter().map(|i| i.api()).collect();
    lo.api_token = Some(token.to_string());
    lo.rate = Some(o.rate);
    let planned: Duration = o.warmup
        + o.faults
            .iter()
            .map(|f| f.duration(o.fault_time) + o.settle)
            .sum::<Duration>();
    // Stopped by the runner; the duration only bounds a run that hangs.
    lo.duration = Some(planned * 3 + Duration::from_secs(600));
    lo.platforms = o.platforms.clone();
    lo.answers = o.answers.clone();
    lo.sms_share = o.sms_share;
    lo.sms_fallback_seconds = 2;
    lo.decide_after = o.decide_after;
    lo.ttl_seconds = o.ttl_seconds;
    lo.drain = Duration::from_secs(o.ttl_seconds) + DRAIN_MARGIN;
    lo.print_seconds = o.verbose;
    lo.reconnect = true;
    lo.outcomes_queue = Some(outcomes_queue.to_string());
    lo.answer_repeats = true;
    lo.linger = LINGER;
    lo.validate()?;

    let ledger = Arc::new(Ledger::new(Instant::now()));
    let observer: Arc<dyn Observer> = ledger.clone();
    let shared = Shared::observed(lo, Vec::new(), Some(observer));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let feeds = bench.sims.feeds();
    let load = tokio::spawn(crate::loadgen::run_shared(
        shared.clone(),
        feeds,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let mut phases = Vec::new();
    let mut base = Phase {
        name: "baseline".into(),
        fault: None,
        start_us: ledger.now_us(),
        fault_end_us: 0,
        end_us: 0,
        evidence: Map::new(),
        happened: true,
    };
    let faults_run = async {
        bench.hold(o.warmup, &mut base.evidence).await?;
        base.fault_end_us = ledger.now_us();
        for &f in &o.faults {
            let d = f.duration(o.fault_time);
            say(o.verbose, &format!("== {f}: start ({} s)", d.as_secs_f64()));
            let start_us = ledger.now_us();
            let mut ev = Map::new();
            let (fault_end_us, happened) = bench.inject(f, d, &mut ev, &ledger).await?;
            say(
                o.verbose,
                &format!("== {f}: ended; {}", Value::Object(ev.clone())),
            );
            bench.hold(o.settle, &mut ev).await?;
            phases.push(Phase {
                name: f.to_string(),
                fault: Some(f),
                start_us,
                fault_end_us,
                end_us: 0,
                evidence: ev,
                happened,
            });
        }
        anyhow::Ok(())
    };
    let faulted = faults_run.await;
    let publish_end_us = ledger.now_us();
    let _ = stop_tx.send(());
    say(
        o.verbose,
        &format!(
            "publishing stopped; waiting for the outcomes (at most {} s)",
            (Duration::from_secs(o.ttl_seconds) + DRAIN_MARGIN + LINGER).as_secs()
        ),
    );
    let load_report = load.await.context("the load task failed")?;
    faulted?;
    let load_report = load_report?;

    base.end_us = phases.first().map_or(publish_end_us, |p| p.start_us);
    let mut all = vec![base];
    let n = phases.len();
    for i in 0..n {
        let next = if i + 1 < n {
            phases[i + 1].start_us
        } else {
            publish_end_us
        };
        phases[i].end_us = next;
    }
    all.extend(phases);
    // Full throughput: the baseline's outcome rate past its first seconds (or the rate).
    let b = &all[0];
    let skip = (b.fault_end_us - b.start_us) / 3;
    let measured = ledger.outcome_rate(b.start_us + skip, b.fault_end_us);
    let full = if measured > 0.0 {
        measured.min(o.rate)
    } else {
        o.rate
    };
    let last = all.len() - 1;
    let rows: Vec<report::Row> = all
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            // Outcomes read during the drain belong to the last phase.
            let arrivals_end = if i == last { u64::MAX } else { p.end_us };
            let figures = ledger.phase(p.start_us, p.fault_end_us, p.end_us, arrivals_end);
            let recovery = p
                .fault
                .and_then(|_| ledger.recovery(p.fault_end_us, p.end_us, full));
            report::Row {
                phase: p,
                figures,
                recovery,
            }
        })
        .collect();
    let json = report::json(o, &rows, full, &ledger, &load_report, &shared.prefix);
    Ok(ChaosReport { rows, json })
}
