//! `E2E_ONLY=layouts`: what the consumer layout (`amqp.prefetch` × `amqp.consumers`)
//! costs the daemon and the broker per challenge, flat out, on the relay's devices.
//!
//! Each layout runs twice a round: with nothing pending, where decided challenges are
//! acked oldest first with multiple-acks; and with `E2E_PENDING` challenges (default
//! 10,000) nobody answers held first, as a busy daemon holds challenges whose users
//! have not answered yet. Then every later decision's ack lies behind its channel's share
//! of them and goes alone, and RabbitMQ 3.10's channel walks its unacked deliveries to
//! the tag. The broker's CPU is read once its channels are idle again: single acks it has
//! not handled by the last outcome are its work for the run too.

use super::*;

/// One consumer layout.
#[derive(Clone, Copy)]
struct Layout {
    prefetch: u32,
    consumers: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.prefetch, self.consumers)
    }
}

/// `E2E_LAYOUTS`: comma-separated `PREFETCHxCONSUMERS` (default the shipped layout and
/// the same 20,000 in flight over more channels).
fn layouts() -> anyhow::Result<Vec<Layout>> {
    let spec = std::env::var("E2E_LAYOUTS").unwrap_or_else(|_| "5000x4,1000x20,500x40".into());
    spec.split(',')
        .map(|l| {
            let (p, c) = l
                .trim()
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("E2E_LAYOUTS: {l:?} is not PREFETCHxCONSUMERS"))?;
            Ok(Layout {
                prefetch: p.parse()?,
                consumers: c.parse()?,
            })
        })
        .collect()
}

/// One flat-out run's figures.
struct Figures {
    per_s: f64,
    daemon_us: f64,
    /// Up to the broker's idle again.
    broker_us: f64,
    /// Seconds the broker stayed busy after the run's last outcome was read.
    lag_s: f64,
}

/// Waits (at most 120 s) until the broker uses less than a tenth of a core over half a
/// second; the seconds waited.
async fn broker_idle() -> f64 {
    let pid = broker_pid();
    let started = Instant::now();
    let mut last = cpu_secs(&pid);
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_secs(&pid);
        if now - last < 0.05 {
            break;
        }
        last = now;
    }
    started.elapsed().as_secs_f64()
}

async fn flat_out(d: &Daemon, ns: &str, sims: &Sims, n: u64) -> anyhow::Result<Figures> {
    let broker = CpuMark::new(None);
    let (per_s, _, cpu) = daemon_run(d, ns, sims, n, None).await?;
    let lag_s = broker_idle().await;
    Ok(Figures {
        per_s,
        daemon_us: cpu.daemon,
        broker_us: broker.per(n).broker,
        lag_s,
    })
}

/// `E2E_ROUNDS` rounds (default 2) of every layout, each a fresh daemon; printed.
pub async fn run(b: &Ctx<'_>, n: u64) -> anyhow::Result<()> {
    let (conn, dir, ns, sims, c) = (b.conn, b.dir, b.ns, b.sims, b.c);
    let layouts = layouts()?;
    let pending = env_u64("E2E_PENDING", 10_000);
    let pch = conn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    println!(
        "layouts: {n} challenges flat out on the relay's devices, with nothing pending and behind {pending} pending; CPU per challenge daemon · broker (until idle)"
    );
    for round in 1..=env_u64("E2E_ROUNDS", 2) {
        for l in &layouts {
            let lns = format!("{ns}-{l}");
            let mut d = spawn_daemon(dir, &lns, sims, l.prefetch, l.consumers)?;
            d.platforms = RELAY_PLATFORMS;
            wait_ready(c, &d).await?;
            daemon_run(&d, &lns, sims, 2000, None).await?;
            broker_idle().await;
            let free = flat_out(&d, &lns, sims, n).await?;
            let held = publisher(&format!("{lns}.challenges"), pending, None, 900);
            publish(&held, &pch).await?;
            for _ in 0..600 {
                if gauge(c, &d, "sca_challenges_in_flight").await >= pending as f64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            broker_idle().await;
            let busy = flat_out(&d, &lns, sims, n).await?;
            println!(
                "round {round} {l}: nothing pending {:.0}/s, {:.0} · {:.0} µs, broker busy {:.1} s after; behind {pending} pending {:.0}/s, {:.0} · {:.0} µs, broker busy {:.1} s after",
                free.per_s, free.daemon_us, free.broker_us, free.lag_s,
                busy.per_s, busy.daemon_us, busy.broker_us, busy.lag_s,
            );
            drop(d);
            delete_queues(&pch, &lns).await;
        }
    }
    Ok(())
}
