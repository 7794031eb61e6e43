//! `E2E_ONLY=binding`: publish → push at half the relay's rate with the broker's
//! schedulers bound to cores, as RabbitMQ starts them (`+stbt db`), and unbound
//! (`+stbt u`), side by side in one run.
//!
//! A bound Erlang scheduler runs on its own core only: while the daemon, the simulators
//! and the load tool keep that core busy it waits, with the other core idle, and every
//! delivery it holds waits with it. The rounds alternate the two bind types on the
//! running broker (`erlang:system_flag(scheduler_bind_type, _)`, what
//! `SCHEDULER_BIND_TYPE` in `rabbitmq-env.conf` sets at start) and put back the broker's
//! own at the end, or when the bench fails early (a bench killed by a signal leaves the
//! last round's: `rabbitmqctl eval 'erlang:system_flag(scheduler_bind_type,
//! thread_no_node_processor_spread).'` puts RabbitMQ's default back). For each: the
//! relay and the daemon (its own device mix, then the relay's), and how long the
//! broker's schedulers waited for a core per second of the runs
//! (`/proc/PID/task/*/schedstat`). Printed and written to
//! `bench/results/broker-binding.json`.

use super::*;

/// The two bind types compared: RabbitMQ's default and unbound.
const BOUND: &str = "thread_no_node_processor_spread";
const UNBOUND: &str = "unbound";

fn eval(expr: &str) -> anyhow::Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "eval", expr])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl eval {expr}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The broker's scheduler bind type.
fn bind_type() -> anyhow::Result<String> {
    eval("erlang:system_info(scheduler_bind_type).")
}

fn set_bind_type(t: &str) -> anyhow::Result<()> {
    eval(&format!("erlang:system_flag(scheduler_bind_type, {t})."))?;
    let now = bind_type()?;
    anyhow::ensure!(now == t, "the broker's bind type is {now}, not {t}");
    Ok(())
}

/// Puts the broker's own bind type back when dropped.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = set_bind_type(&self.0) {
            eprintln!(
                "the broker's scheduler bind type was not put back to {}: {e}",
                self.0
            );
        }
    }
}

/// Seconds the broker's normal schedulers (threads `N_scheduler`) have waited for a core.
fn scheduler_wait_s(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(n) = comm.trim().strip_suffix("_scheduler") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

/// One bind type's runs in one round.
struct Runs {
    relay: Lat,
    daemon: Lat,
    daemon_relay_devices: Lat,
    /// Milliseconds the broker's schedulers waited for a core per second of the runs.
    wait_ms_per_s: f64,
}

async fn runs(
    relay: &Daemon,
    rns: &str,
    d: &mut Daemon,
    ns: &str,
    sims: &Sims,
    rate: f64,
) -> anyhow::Result<Runs> {
    let pid = broker_pid();
    let (w0, t0) = (scheduler_wait_s(&pid), Instant::now());
    let n = paced_n(rate);
    let (_, relay_lat, _) = daemon_run(relay, rns, sims, n, Some(rate)).await?;
    let (own, same) = at_half_relay(d, ns, sims, rate).await?;
    let wait = scheduler_wait_s(&pid) - w0;
    Ok(Runs {
        relay: relay_lat,
        daemon: own,
        daemon_relay_devices: same,
        wait_ms_per_s: wait * 1e3 / t0.elapsed().as_secs_f64(),
    })
}

fn lat_json(l: &Lat) -> serde_json::Value {
    json!({"p50": l.p2p[0], "p99": l.p2p[1], "p999": l.p2p[2]})
}

/// The relay flat out once for the rate, then `E2E_ROUNDS` rounds (default 2) of both
/// bind types at half that rate.
pub async fn run(b: &Ctx<'_>, n: u64) -> anyhow::Result<()> {
    let (conn, dir, ns, sims, c) = (b.conn, b.dir, b.ns, b.sims, b.c);
    let own = bind_type()?;
    let _restore = Restore(own.clone());
    let (relay, rns, relay_per_s, _) = relay_flat_out(dir, ns, sims, c, n).await?;
    let rate = relay_per_s / 2.0;
    let mut d = warm_daemon(dir, ns, sims, c).await?;
    println!(
        "broker scheduler binding (the broker's own: {own}); publish → push p50 / p99 / p99.9 ms at {rate:.0}/s, half the relay's {relay_per_s:.0}/s"
    );
    let mut rows = Vec::new();
    for round in 1..=env_u64("E2E_ROUNDS", 2) {
        for bind in [BOUND, UNBOUND] {
            set_bind_type(bind)?;
            let r = runs(&relay, &rns, &mut d, ns, sims, rate).await?;
            let f = |l: &Lat| format!("{:.1} / {:.1} / {:.1}", l.p2p[0], l.p2p[1], l.p2p[2]);
            println!(
                "round {round} {bind}: relay {}; daemon {}; daemon with the relay's devices {}; the broker's schedulers waited {:.1} ms/s for a core",
                f(&r.relay), f(&r.daemon), f(&r.daemon_relay_devices), r.wait_ms_per_s
            );
            rows.push(json!({
                "round": round,
                "bind_type": bind,
                "relay": lat_json(&r.relay),
                "daemon": lat_json(&r.daemon),
                "daemon_relay_devices": lat_json(&r.daemon_relay_devices),
                "broker_scheduler_wait_ms_per_s": (r.wait_ms_per_s * 10.0).round() / 10.0,
            }));
        }
    }
    drop(relay);
    drop(d);
    let ch = conn.create_channel().await?;
    delete_queues(&ch, &rns).await;
    delete_queues(&ch, ns).await;
    let med = |bind: &str, who: &str, k: &str| {
        median(
            rows.iter()
                .filter(|r| r["bind_type"] == bind)
                .filter_map(|r| r[who][k].as_f64())
                .collect(),
        )
    };
    let mut medians = serde_json::Map::new();
    for bind in [BOUND, UNBOUND] {
        let m = json!({
            "relay_p99": med(bind, "relay", "p99"),
            "daemon_p99": med(bind, "daemon", "p99"),
            "daemon_relay_devices_p99": med(bind, "daemon_relay_devices", "p99"),
        });
        println!("median p99 {bind}: {m}");
        medians.insert(bind.into(), m);
    }
    let out = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine(),
        "rate_per_s": rate.round(),
        "relay_flat_out_per_s": relay_per_s.round(),
        "broker_own_bind_type": own,
        "rounds": rows,
        "median_p99_ms": medians,
    });
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/broker-binding.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
