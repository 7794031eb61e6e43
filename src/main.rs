//! The command line: `run`, `check-config`, `offline-code`, `demo`, `simulate`, `load`, `chaos`. All logic is in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sca_dispatch::config::{Config, Settings};
use std::path::PathBuf;

mod heap;

/// mimalloc instead of the system allocator: under load the daemon allocates and frees
/// many short-lived buffers (deliveries, requests, frames); glibc's allocator spent a
/// quarter of the daemon's CPU there and kept freed memory resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sca-dispatch",
    version,
    about = "Strong customer authentication dispatcher"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Run {
        /// TOML configuration file (or SCA_CONFIG).
        #[arg(long, env = "SCA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and exit (non-zero with the bad key on error).
    CheckConfig {
        #[arg(long, env = "SCA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Compute an offline code as the app does (reference generator): from a device's
    /// offline key and a scanned QR payload or a typed 8-digit operation id.
    OfflineCode {
        /// The device's offline key, base64 of 32 bytes (or SCA_OFFLINE_KEY; prefer the
        /// variable or --key-file: a command line is visible to other local users).
        #[arg(
            long,
            env = "SCA_OFFLINE_KEY",
            hide_env_values = true,
            conflicts_with = "key_file"
        )]
        key: Option<String>,
        /// A file holding the base64 key.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The QR payload (`{"v":1,"op":…}`) or the operation id.
        #[arg(long)]
        qr: String,
    },
    /// Play the scenarios on the built-in simulators against a local RabbitMQ.
    #[cfg(feature = "tools")]
    Demo {
        /// RabbitMQ to use (the demo declares its own `sca-demo-<random>.*` queues there).
        #[arg(
            long,
            env = "SCA_AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        amqp_url: String,
        /// After the scenarios, keep running with this many challenges per second.
        #[arg(long)]
        load: Option<u32>,
        /// How long the load phase runs, in seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Drive daemon(s) through a broker: publish challenges, play the devices on the
    /// simulators, read outcomes, report latencies, CPU and memory (JSON and SVG).
    #[cfg(feature = "tools")]
    Load(Box<sca_dispatch::loadgen::cli::LoadArgs>),
    /// Put daemon processes through faults (SIGKILL, broker restart, closed connections,
    /// providers down) under load and count lost, duplicated and contradictory outcomes.
    #[cfg(feature = "tools")]
    Chaos(Box<sca_dispatch::chaos::cli::ChaosArgs>),
    /// Run a provider simulator alone.
    #[cfg(feature = "tools")]
    Simulate {
        #[command(subcommand)]
        which: Sim,
    },
}

#[cfg(feature = "tools")]
#[derive(Subcommand)]
enum Sim {
    /// APNs (HTTP/2 over TLS, token auth).
    Apns(SimArgs),
    /// FCM HTTP v1 with its OAuth2 token endpoint.
    Fcm(SimArgs),
    /// Huawei Push Kit v1 with its OAuth 2.0 token endpoint.
    Hms(SimArgs),
    /// SMS gateways (twilio and webhook shapes).
    Sms(SimArgs),
    /// A bare HTTP server: the benchmark's baseline for the decision endpoint.
    #[command(hide = true)]
    HttpBaseline(BaselineArgs),
    /// A bare relay doing a challenge's I/O and nothing else, with the daemon's
    /// configuration: the benchmark's baseline for the daemon.
    #[command(hide = true)]
    Relay {
        #[arg(long, env = "SCA_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[cfg(feature = "tools")]
#[derive(clap::Args)]
struct BaselineArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
    /// Publish one message with a publisher confirm per request on this broker (else
    /// the handler is empty).
    #[arg(long)]
    amqp_url: Option<String>,
    /// The (existing) exchange to publish to.
    #[arg(long, default_value = "sca.outcomes")]
    exchange: String,
    #[arg(long, default_value = "outcome.login.approved")]
    routing_key: String,
    /// Hold this queue's deliveries unacked and ack one alone per request (needs
    /// `--amqp-url` and `--held`).
    #[arg(long, requires_all = ["amqp_url", "held"])]
    ack_queue: Option<String>,
    /// How many deliveries of `--ack-queue` to hold before listening (at least 1).
    #[arg(long, requires = "ack_queue", value_parser = clap::value_parser!(u64).range(1..))]
    held: Option<u64>,
    /// How many of the held deliveries to leave unacked before acking the rest in
    /// delivery order.
    #[arg(long, requires = "ack_queue")]
    skip: Option<u64>,
    /// Publish the `--held` messages to `--ack-queue` itself once its consumers are all
    /// registered, so the queue spreads them over its channels in turn as over a
    /// daemon's consumers (else the queue must already hold them).
    #[arg(long, requires = "ack_queue")]
    fill: bool,
    /// Held deliveries per consumer channel at most (1–65535).
    #[arg(long, requires = "ack_queue", default_value_t = sca_dispatch::sim::http_baseline::PER_CHANNEL,
          value_parser = clap::value_parser!(u64).range(1..=65_535))]
    per_channel: u64,
}

#[cfg(feature = "tools")]
#[derive(clap::Args)]
struct SimArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
    /// Where to write the files to trust/use (CA, keys, service account).
    #[arg(long, default_value = "sim")]
    dir: PathBuf,
}

fn load(config: Option<PathBuf>) -> anyhow::Result<Settings> {
    Ok(Config::load(config.as_deref())?)
}

/// The validated configuration, or exit 2 naming the bad key.
fn settings_or_exit(config: Option<PathBuf>) -> Settings {
    match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            std::process::exit(2);
        }
    }
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The runtimes in `flavor` with `workers` threads (0: one per core), each thread
/// collecting its heap when idle.
fn runtimes(
    flavor: sca_dispatch::runtime::Flavor,
    workers: usize,
) -> std::io::Result<sca_dispatch::runtime::Runtimes> {
    sca_dispatch::runtime::Runtimes::build(flavor, workers, Some(heap::collect_when_idle))
}

/// A multi-threaded runtime with `workers` threads (0: one per core).
fn runtime(workers: usize) -> std::io::Result<sca_dispatch::runtime::Runtimes> {
    runtimes(sca_dispatch::runtime::Flavor::MultiThread, workers)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!("configuration is valid ({})", c.config.provider_summary());
                Ok(())
            }
            Err(e) => {
                eprintln!("invalid configuration: {e}");
                std::process::exit(2);
            }
        },
        Cmd::OfflineCode { key, key_file, qr } => {
            let text = match (key, key_file) {
                (Some(k), _) => zeroize::Zeroizing::new(k),
                (None, Some(path)) => zeroize::Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                (None, None) => anyhow::bail!("give --key, --key-file or SCA_OFFLINE_KEY"),
            };
            let key = sca_dispatch::challenge::offline::OfflineKey::parse(&text)
                .map_err(anyhow::Error::msg)?;
            match sca_dispatch::challenge::offline::code_for_qr(&key, &qr) {
                Ok(code) => {
                    println!("{code}");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("offline-code: {e}");
                    std::process::exit(2);
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = settings_or_exit(config);
            sca_dispatch::telemetry::init_tracing(cfg.log.format, &cfg.log.level);
            let mut cfg = cfg;
            let rts = runtimes(cfg.runtime_flavor, cfg.worker_threads)?;
            cfg.consumer_spread = rts.spread();
            rts.main
                .block_on(sca_dispatch::run(cfg, signal()))
                .context("sca-dispatch failed")
        }
        #[cfg(feature = "tools")]
        Cmd::Demo {
            amqp_url,
            load,
            duration,
        } => {
            sca_dispatch::telemetry::init_tracing(
                sca_dispatch::config::LogFormat::Text,
                "error,lapin=off",
            );
            let opts = sca_dispatch::demo::DemoOptions {
                amqp_url,
                load,
                duration: duration.map(std::time::Duration::from_secs),
            };
            let ok = runtime(0)?.main.block_on(sca_dispatch::demo::run(opts))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        #[cfg(feature = "tools")]
        Cmd::Load(args) => {
            sca_dispatch::telemetry::init_tracing(
                sca_dispatch::config::LogFormat::Text,
                "error,lapin=off",
            );
            let code = runtime(0)?
                .main
                .block_on(sca_dispatch::loadgen::cli::main(*args))?;
            std::process::exit(code);
        }
        #[cfg(feature = "tools")]
        Cmd::Chaos(args) => {
            sca_dispatch::telemetry::init_tracing(
                sca_dispatch::config::LogFormat::Text,
                "error,lapin=off",
            );
            let code = runtime(0)?
                .main
                .block_on(sca_dispatch::chaos::cli::main(*args))?;
            std::process::exit(code);
        }
        #[cfg(feature = "tools")]
        Cmd::Simulate { which } => {
            // The relay runs as the daemon does: its configuration, logs and runtime.
            let relay = match &which {
                Sim::Relay { config } => Some(settings_or_exit(config.clone())),
                _ => None,
            };
            match &relay {
                Some(c) => sca_dispatch::telemetry::init_tracing(c.log.format, &c.log.level),
                None => sca_dispatch::telemetry::init_tracing(
                    sca_dispatch::config::LogFormat::Text,
                    "info",
                ),
            }
            let workers = relay.as_ref().map_or(0, |c| c.worker_threads);
            runtime(workers)?.main.block_on(async move {
                match which {
                    Sim::Apns(a) => sca_dispatch::sim::apns::run_standalone(a.addr, a.dir).await,
                    Sim::Fcm(a) => sca_dispatch::sim::fcm::run_standalone(a.addr, a.dir).await,
                    Sim::Hms(a) => sca_dispatch::sim::hms::run_standalone(a.addr, a.dir).await,
                    Sim::Sms(a) => sca_dispatch::sim::sms::run_standalone(a.addr, a.dir).await,
                    Sim::HttpBaseline(a) => {
                        let skip = a.skip.unwrap_or(0);
                        let held = a.ack_queue.zip(a.held).map(|(queue, count)| {
                            sca_dispatch::sim::http_baseline::HeldAcks {
                                queue,
                                count,
                                skip,
                                fill: a.fill,
                                per_channel: a.per_channel,
                            }
                        });
                        let publish =
                            a.amqp_url
                                .map(|amqp_url| sca_dispatch::sim::http_baseline::Publish {
                                    amqp_url,
                                    exchange: a.exchange,
                                    routing_key: a.routing_key,
                                    held,
                                });
                        sca_dispatch::sim::http_baseline::run_standalone(a.addr, publish).await
                    }
                    Sim::Relay { .. } => match relay {
                        Some(cfg) => sca_dispatch::sim::relay::run(cfg, signal()).await,
                        None => Ok(()),
                    },
                }
            })
        }
    }
}
