//! Wiring and lifecycle: builds the providers, the engine and the servers from validated
//! [`Settings`], binds the ports, runs until asked to stop, and shuts down in
//! order — stop consuming, publish what is decided, leave the rest unacked — within the
//! grace deadline.

use crate::amqp::publisher::AmqpPublisher;
use crate::amqp::{self, BrokerStatus, Signals};
use crate::config::{ApiAuth, ApnsSettings, FcmSettings, Settings};
use crate::engine::{AppProviders, Engine, Providers};
use crate::http::api::{Api, Readiness};
use crate::push::apns::ApnsProvider;
use crate::push::fcm::FcmProvider;
use crate::push::hms::HmsProvider;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {key} {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Provider(String),
    #[error("{0}")]
    Broker(String),
}

/// The transports already started, so that apps sharing a credential share its
/// transport: one APNs pool and provider token per key, one FCM token cache per service
/// account, one Push Kit token cache per app id.
#[derive(Default)]
struct Started {
    apns: Vec<((String, String, String), ApnsProvider)>,
    fcm: Vec<Arc<FcmProvider>>,
    hms: Vec<Arc<HmsProvider>>,
}

impl Started {
    /// `key` names the setting an error is about (`apns.key_file`,
    /// `apps.business.apns_key_file`).
    fn apns(&mut self, s: &ApnsSettings, key: &str) -> Result<Arc<ApnsProvider>, StartError> {
        let id = (s.key_file.clone(), s.key_id.clone(), s.team_id.clone());
        if let Some((_, shared)) = self.apns.iter().find(|(k, _)| *k == id) {
            return Ok(Arc::new(shared.for_topic(s.topic.clone())));
        }
        let a = ApnsProvider::start(s).map_err(|e| StartError::Provider(format!("{key}: {e}")))?;
        let made = Arc::new(a.for_topic(s.topic.clone()));
        self.apns.push((id, a));
        Ok(made)
    }

    fn fcm(&mut self, s: &FcmSettings, key: &str) -> Result<Arc<FcmProvider>, StartError> {
        // Reading the key file costs no request: the first token is minted on the first
        // send, so a duplicate is simply dropped.
        let f = FcmProvider::start(s).map_err(|e| StartError::Provider(format!("{key}: {e}")))?;
        if let Some(shared) = self
            .fcm
            .iter()
            .find(|o| o.project_id() == f.project_id() && o.client_email() == f.client_email())
        {
            return Ok(shared.clone());
        }
        let f = Arc::new(f);
        self.fcm.push(f.clone());
        Ok(f)
    }

    fn hms(
        &mut self,
        c: &crate::config::HmsConfig,
        key: &str,
    ) -> Result<Arc<HmsProvider>, StartError> {
        if let Some(shared) = self.hms.iter().find(|o| o.app_id() == c.app_id) {
            return Ok(shared.clone());
        }
        let h =
            Arc::new(HmsProvider::new(c).map_err(|e| StartError::Provider(format!("{key}: {e}")))?);
        self.hms.push(h.clone());
        Ok(h)
    }
}

/// Builds the configured transports, the default app's and every named app's; an
/// unconfigured one is `None` and reported.
pub fn providers_from_config(cfg: &Settings) -> Result<Providers, StartError> {
    let mut p = Providers::default();
    let mut started = Started::default();
    if let Some(s) = &cfg.apns {
        p.apns = Some(started.apns(s, "apns.key_file")?);
    }
    if let Some(s) = &cfg.fcm {
        p.fcm = Some(started.fcm(s, "fcm.service_account_file")?);
    }
    if cfg.config.hms.is_configured() {
        p.hms = Some(started.hms(&cfg.config.hms, "hms.app_secret_file")?);
    }
    for app in &cfg.apps {
        let key = |k: &str| format!("apps.{}.{k}", app.name);
        let mut a = AppProviders::default();
        if let Some(s) = &app.apns {
            let k = if s.key_file == cfg.apns.as_ref().map_or("", |d| d.key_file.as_str()) {
                "apns.key_file".to_string()
            } else {
                key("apns_key_file")
            };
            a.apns = Some(started.apns(s, &k)?);
        }
        if let Some(s) = &app.fcm {
            a.fcm = Some(started.fcm(s, &key("fcm_service_account_file"))?);
        }
        if let Some(c) = &app.hms {
            a.hms = Some(started.hms(c, &key("hms_app_secret_file"))?);
        }
        p.apps.insert(app.name.clone(), a);
    }
    if let Some(s) = &cfg.sms {
        let g = crate::sms::gateway::from_settings(s)
            .map_err(|e| StartError::Provider(e.to_string()))?;
        p.sms = Some(g);
    }
    Ok(p)
}

struct Ready {
    status: Arc<BrokerStatus>,
    providers: Providers,
    auth: &'static str,
    control: Arc<amqp::control::Control>,
}

impl Readiness for Ready {
    fn broker_connected(&self) -> bool {
        self.status.connected()
    }
    /// The default app's providers and SMS at the top (as before apps existed), and
    /// every app's push providers under `apps`.
    fn providers(&self) -> serde_json::Value {
        let s = |b: bool| if b { "configured" } else { "not_configured" };
        let apps: serde_json::Map<String, serde_json::Value> = self
            .providers
            .all_apps()
            .into_iter()
            .map(|(name, p)| {
                let r = p.reach();
                (
                    name.to_string(),
                    serde_json::json!({"apns": s(r.apns), "fcm": s(r.fcm), "hms": s(r.hms)}),
                )
            })
            .collect();
        serde_json::json!({
            "apns": s(self.providers.apns.is_some()),
            "fcm": s(self.providers.fcm.is_some()),
            "hms": s(self.providers.hms.is_some()),
            "sms": s(self.providers.sms.is_some()),
            "apps": apps,
        })
    }
    fn auth(&self) -> &'static str {
        self.auth
    }
    fn cluster(&self) -> Option<serde_json::Value> {
        self.control.describe()
    }
    fn any_provider(&self) -> bool {
        self.providers.sms.is_some()
            || self.providers.all_apps().iter().any(|(_, p)| {
                let r = p.reach();
                r.apns || r.fcm || r.hms
            })
    }
}

/// A running daemon.
pub struct Daemon {
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub status: Arc<BrokerStatus>,
    /// This instance's id: in its hellos and its broker connection's name.
    pub instance: String,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Validated settings in, everything bound and running out.
    pub async fn start(settings: Settings, providers: Providers) -> Result<Daemon, StartError> {
        let prom = crate::telemetry::prometheus();
        let http_addr = settings.http.addr;
        let metrics_addr = settings.metrics_addr;
        let cfg = &settings.config;
        let http_l = tokio::net::TcpListener::bind(http_addr)
            .await
            .map_err(|source| StartError::Bind {
                key: "http.addr",
                addr: http_addr,
                source,
            })?;
        let metrics_l = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .map_err(|source| StartError::Bind {
                key: "metrics.addr",
                addr: metrics_addr,
                source,
            })?;
        let http_addr = http_l.local_addr().unwrap_or(http_addr);
        let metrics_addr = metrics_l.local_addr().unwrap_or(metrics_addr);
        for w in &settings.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(providers = %cfg.provider_summary(), "providers");
        if providers.apns.is_none() {
            tracing::warn!("APNs is not configured: iOS devices count as unreachable");
        }
        if providers.fcm.is_none() {
            tracing::warn!("FCM is not configured: Android devices count as unreachable");
        }
        if providers.hms.is_none() {
            tracing::warn!("HMS is not configured: Huawei devices count as unreachable");
        }
        if providers.sms.is_none() {
            tracing::warn!("no SMS gateway is configured: SMS fallback is off");
        }
        for (name, p) in &providers.apps {
            let r = p.reach();
            tracing::info!(
                app = %name,
                apns = r.apns,
                fcm = r.fcm,
                hms = r.hms,
                "app configured; its devices on the other platforms count as unreachable"
            );
        }
        if settings.http.auth == ApiAuth::Unauthenticated {
            tracing::warn!("http.allow_unauthenticated is set and http.api_tokens is empty: the backend API accepts calls from anyone");
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let (consume_tx, consume_rx) = watch::channel(false);
        let (close_tx, close_rx) = watch::channel(false);
        let (hard_tx, hard_rx) = watch::channel(false);
        let status = Arc::new(BrokerStatus::default());
        let publisher = Arc::new(AmqpPublisher::new(&cfg.amqp, hard_rx));
        let drain_publisher = publisher.clone();
        let engine = Engine::new(cfg, providers.clone(), publisher.clone());
        let names = crate::cluster::Names::new(&cfg.amqp.challenges_queue, cfg.cluster.partitions);
        let seal = (!cfg.cluster.secret.is_empty())
            .then(|| crate::cluster::Seal::new(&cfg.cluster.secret));
        if seal.is_none() {
            tracing::warn!(
                "cluster.secret is not set: messages between instances are not authenticated"
            );
        }
        let tick = amqp::cluster::Cluster::tick_for(cfg.cluster.takeover_seconds);
        let view = cfg.cluster.enabled.then(|| amqp::control::ClusterView {
            names: names.clone(),
            ownership: engine.ownership().clone(),
            tick,
        });
        let control = amqp::control::Control::new(&cfg.amqp.control_exchange, seal.clone(), view);
        let instance = control.id().to_string();
        engine.set_peers(control.clone());
        let cluster = match (&seal, cfg.cluster.enabled) {
            (Some(seal), true) => {
                amqp::topology::check_cluster(&cfg.amqp.url, &cfg.amqp, &names)
                    .await
                    .map_err(StartError::Broker)?;
                // In-flight challenges stay bounded by prefetch × consumers however
                // many partitions this instance owns.
                let per = (cfg.amqp.prefetch as u64 * cfg.amqp.consumers as u64
                    / cfg.cluster.partitions as u64)
                    .clamp(1, 65_535) as u16;
                tracing::info!(
                    instance = control.id(),
                    partitions = cfg.cluster.partitions,
                    "cluster mode"
                );
                Some(amqp::cluster::Cluster::new(
                    names,
                    seal.clone(),
                    control.clone(),
                    per,
                    tick,
                ))
            }
            _ => None,
        };

        let until = |rx: &watch::Receiver<bool>| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let supervisor = tokio::spawn(amqp::supervise(
            cfg.amqp.clone(),
            engine.clone(),
            publisher,
            amqp::Plane {
                control: control.clone(),
                cluster,
                spread: settings.consumer_spread.clone(),
            },
            status.clone(),
            Signals {
                stop_consuming: consume_rx,
                close: close_rx,
            },
        ));
        let timers = tokio::spawn(engine.clone().run_timers(until(&close_tx.subscribe())));
        tokio::spawn(
            engine
                .clone()
                .run_pruner(settings.prune_interval, until(&close_tx.subscribe())),
        );
        let api = Arc::new(Api {
            engine: engine.clone(),
            tokens: settings.http.auth.tokens().to_vec(),
            max_body: settings.http.max_body_bytes,
            max_wait: settings.http.max_wait,
            ready: Arc::new(Ready {
                status: status.clone(),
                providers,
                auth: settings.http.auth.label(),
                control,
            }),
        });
        let http = tokio::spawn(crate::http::serve_with(
            http_l,
            crate::http::Limits::from_config("api", &cfg.http),
            move |req, _| api.clone().handle(req),
            until(&close_tx.subscribe()),
        ));
        let scraped = engine.clone();
        tokio::spawn(crate::http::serve_with(
            metrics_l,
            crate::http::Limits::from_config("metrics", &cfg.http).with_max_connections(64),
            move |req, _| {
                let prom = prom.clone();
                let now = crate::telemetry::Scraped {
                    held: scraped.held(),
                    intake_paused: scraped.intake_paused(),
                };
                async move {
                    if req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                crate::telemetry::render(&prom, now),
                            )))
                            .unwrap_or_default()
                    } else {
                        crate::http::json_response(404, &serde_json::json!({"error": "not_found"}))
                    }
                }
            },
            until(&close_tx.subscribe()),
        ));
        tracing::info!(%http_addr, %metrics_addr, "sca-dispatch listening");

        let grace = settings.shutdown_grace;
        let eng = engine.clone();
        let mut stop_wait = stop_rx;
        let done = tokio::spawn(async move {
            let _ = stop_wait.wait_for(|s| *s).await;
            let started = tokio::time::Instant::now();
            tracing::info!("shutting down: no new challenges");
            let _ = consume_tx.send(true);
            // Cluster mode: the partitions are handed over first (their undecided
            // challenges go to the next owners with their progress).
            let _ = tokio::time::timeout(grace, eng.ownership().released_all()).await;
            let left = eng.drain(grace.saturating_sub(started.elapsed())).await;
            let events_left = drain_publisher
                .drain(grace.saturating_sub(started.elapsed()))
                .await;
            if left > 0 {
                tracing::warn!(unconfirmed = left, "grace period over with outcomes unconfirmed; their challenges will be redelivered");
            }
            if events_left > 0 {
                tracing::warn!(
                    unconfirmed = events_left,
                    "grace period over with publishes unconfirmed"
                );
            }
            let _ = hard_tx.send(true);
            let _ = close_tx.send(true);
            let _ = supervisor.await;
            let _ = timers.await;
            let _ = http.await;
            tracing::info!(
                pending = eng.pending(),
                "stopped; undecided challenges return to the queue"
            );
        });
        Ok(Daemon {
            http_addr,
            metrics_addr,
            engine,
            status,
            instance,
            stop: stop_tx,
            done,
        })
    }

    /// Asks the daemon to stop (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the daemon has stopped.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Runs the daemon until `signal` resolves, then shuts down gracefully.
pub async fn run(
    settings: Settings,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let providers = providers_from_config(&settings)?;
    let d = Daemon::start(settings, providers).await?;
    signal.await;
    d.shutdown();
    d.wait().await;
    Ok(())
}
