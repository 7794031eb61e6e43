//! Everything RabbitMQ: the topology, the consumers, the ack batching, the confirming
//! publisher, and the connection supervisor that reconnects with backoff and resumes by
//! itself. This is the only module that knows lapin.

pub mod acks;
pub mod client;
pub mod cluster;
pub mod consumer;
pub mod control;
pub mod publisher;
pub mod topology;

use crate::config::AmqpConfig;
use crate::engine::Engine;
use crate::telemetry as t;
use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use publisher::AmqpPublisher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long stopping waits for the broker to confirm the consumers' cancels.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Broker connection state, for `/readyz` and the gauge.
#[derive(Default)]
pub struct BrokerStatus {
    connected: AtomicBool,
}

impl BrokerStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
    fn set(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        metrics::gauge!(t::AMQP_CONNECTED).set(if up { 1.0 } else { 0.0 });
    }
}

/// The URL with its password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<invalid url>".into(),
    }
}

/// Resolves once the flag is true (or its sender is gone); holds no borrow after.
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Signals from the daemon to the supervisor.
#[derive(Clone)]
pub struct Signals {
    /// True: stop consuming (cancel consumers), keep publishing.
    pub stop_consuming: watch::Receiver<bool>,
    /// True: close the connection now (undecided deliveries go back to the queue).
    pub close: watch::Receiver<bool>,
}

/// How this instance reaches the others: the control plane, and cluster mode's
/// partition claims when enabled.
#[derive(Clone)]
pub struct Plane {
    pub control: Arc<control::Control>,
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// The runtimes the challenge consumers are spread over (`runtime.flavor`).
    pub spread: crate::runtime::Spread,
}

/// Keeps a connection up until told to close: connect, declare, consume, and on any
/// failure start again after a backoff that doubles up to `reconnect_max_ms`.
pub async fn supervise(
    cfg: AmqpConfig,
    engine: Arc<Engine>,
    publisher: Arc<AmqpPublisher>,
    plane: Plane,
    status: Arc<BrokerStatus>,
    mut signals: Signals,
) {
    let mut backoff = Duration::from_millis(cfg.reconnect_initial_ms);
    let max = Duration::from_millis(cfg.reconnect_max_ms);
    let mut first = true;
    status.set(false);
    loop {
        if *signals.close.borrow() {
            return;
        }
        match session(
            &cfg,
            &engine,
            &publisher,
            &plane,
            &status,
            &mut signals,
            first,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                // Fencing: every partition claim died with the connection.
                engine.fence_all();
                // A connection that had come up starts the backoff over: the doubling is
                // for a broker that keeps refusing, not for every loss in the daemon's life.
                if status.connected() {
                    backoff = Duration::from_millis(cfg.reconnect_initial_ms);
                }
                publisher.set_channel(None);
                status.set(false);
                tracing::warn!(url = %redact_url(&cfg.url), "RabbitMQ connection lost or refused: {e}; retrying in {backoff:?}");
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = until_true(&mut signals.close) => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

/// One connection's life. `Ok` when closed on request, `Err` when it failed.
async fn session(
    cfg: &AmqpConfig,
    engine: &Arc<Engine>,
    publisher: &Arc<AmqpPublisher>,
    plane: &Plane,
    status: &Arc<BrokerStatus>,
    signals: &mut Signals,
    first: bool,
) -> Result<(), String> {
    let (control, cluster) = (&plane.control, plane.cluster.as_ref());
    // Shown in the management UI and `rabbitmqctl list_connections`; the instance id
    // tells instances of one process (tests) apart.
    let name = format!(
        "sca-dispatch {} pid {} instance {}",
        cfg.challenges_queue,
        std::process::id(),
        control.id()
    );
    let conn = Arc::new(
        client::connect(&cfg.url, &name)
            .await
            .map_err(|e| e.to_string())?,
    );
    // Connection errors and channels closed by the broker come on this one stream, from
    // now on (lapin drops events while nobody listens): a connection error ends the
    // session, a publishing channel closed under a live connection is replaced.
    let mut events = conn.events_listener();
    topology::declare(&conn, cfg)
        .await
        .map_err(|e| format!("declaring topology: {e}"))?;
    if let Some(c) = cluster {
        topology::declare_cluster(&conn, cfg, &c.names)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut pub_chs = publishing_channels(&conn).await?;
    publisher.set_channel(Some(pub_chs.clone()));

    let mut running = Vec::new();
    let mut consumer_tasks = tokio::task::JoinSet::new();
    if !*signals.stop_consuming.borrow() {
        let host = std::process::id();
        if let Some(c) = cluster {
            // The plain queue is re-routed to the partitions; the partitions are claimed
            // and consumed by the cluster task.
            let (r, cons, acks) = consumer::open(
                &conn,
                &cfg.challenges_queue,
                cfg.prefetch as u16,
                format!("sca-dispatch-{}-reroute", control.id()),
            )
            .await
            .map_err(|e| format!("consuming {}: {e}", cfg.challenges_queue))?;
            running.push(r);
            let ch = cluster::confirm_channel(&conn)
                .await
                .map_err(|e| format!("re-routing channel: {e}"))?;
            consumer_tasks.spawn(cluster::run_reroute(
                cons,
                acks,
                engine.clone(),
                ch,
                c.names.exchange.clone(),
            ));
            consumer_tasks.spawn(c.clone().run(
                conn.clone(),
                engine.clone(),
                signals.stop_consuming.clone(),
            ));
        }
        for i in 0..cfg.consumers {
            if cluster.is_some() {
                break;
            }
            let (r, c, acks) = consumer::open(
                &conn,
                &cfg.challenges_queue,
                cfg.prefetch as u16,
                format!("sca-dispatch-{host}-c{i}"),
            )
            .await
            .map_err(|e| format!("consuming {}: {e}", cfg.challenges_queue))?;
            running.push(r);
            let consume = consumer::run_challenges(c, acks, engine.clone());
            match plane.spread.runtime_for(i as usize) {
                Some(rt) => consumer_tasks.spawn_on(consume, rt),
                None => consumer_tasks.spawn(consume),
            };
        }
        let queue: std::sync::Arc<str> = cfg.responses_queue.as_str().into();
        let (r, c, acks) = consumer::open(&conn, &queue, 500, format!("sca-dispatch-{host}-r"))
            .await
            .map_err(|e| format!("consuming {queue}: {e}"))?;
        running.push(r);
        consumer_tasks.spawn(consumer::run_responses(c, acks, engine.clone(), queue));
    }
    let ctl = control
        .open(&conn, engine.clone())
        .await
        .map_err(|e| format!("opening the control queue: {e}"))?;
    consumer_tasks.spawn(async move { ctl.await.unwrap_or_else(|e| e.to_string()) });
    status.set(true);
    if !first {
        metrics::counter!(t::AMQP_RECONNECTS).increment(1);
    }
    tracing::info!(url = %redact_url(&cfg.url), consumers = cfg.consumers, prefetch = cfg.prefetch, "connected to RabbitMQ");

    let mut cancelled = *signals.stop_consuming.borrow();
    loop {
        tokio::select! {
            Some(event) = events.next() => {
                let lapin::Event::Error(e) = event else { continue };
                if !conn.status().connected() {
                    return Err(e.to_string());
                }
                // A channel error (an exchange deleted under us, say) closes the channel,
                // not the connection: without a new one every publish would wait forever.
                // The event does not say which channel; a consumer's or the control
                // channel's ends its own task (and the session with it).
                let fresh = |ch: &lapin::Channel| ch.status().connected();
                if fresh(&pub_chs.owed) && fresh(&pub_chs.best_effort) {
                    continue;
                }
                publisher.set_channel(None);
                tracing::warn!("publishing channel closed by the broker: {e}; opening a new one");
                if let Err(e) = topology::declare(&conn, cfg).await {
                    tracing::warn!("declaring the topology again failed: {e}");
                }
                // Only the closed one is replaced: the other may carry publishes awaiting
                // their confirm.
                if !fresh(&pub_chs.owed) {
                    pub_chs.owed = publishing_channel(&conn).await?;
                }
                if !fresh(&pub_chs.best_effort) {
                    pub_chs.best_effort = publishing_channel(&conn).await?;
                }
                publisher.set_channel(Some(pub_chs.clone()));
                metrics::counter!(t::AMQP_CHANNELS_REPLACED).increment(1);
            }
            Some(ended) = consumer_tasks.join_next(), if !cancelled => {
                let why = ended.unwrap_or_else(|e| e.to_string());
                return Err(why);
            }
            _ = until_true(&mut signals.stop_consuming), if !cancelled => {
                cancelled = true;
                // All channels at once, bounded: a broker that stops answering must not
                // hold the stop up once per consumer channel.
                let cancels = running.iter().map(|r| {
                    r.channel.basic_cancel(r.tag.as_str().into(), BasicCancelOptions::default())
                });
                let _ = tokio::time::timeout(CANCEL_WAIT, futures_util::future::join_all(cancels)).await;
                tracing::info!("stopped consuming; finishing what is decided");
            }
            _ = until_true(&mut signals.close) => {
                // Acks queued for outcomes confirmed just before the close must reach
                // the broker first, or those challenges would come back.
                futures_util::future::join_all(running.iter().map(|r| acks::flush(&r.acks))).await;
                publisher.set_channel(None);
                status.set(false);
                let _ = conn.close(200, "sca-dispatch shutting down".into()).await;
                return Ok(());
            }
        }
    }
}

/// The publisher's two channels (see [`publisher::Channels`]).
async fn publishing_channels(conn: &lapin::Connection) -> Result<publisher::Channels, String> {
    Ok(publisher::Channels {
        owed: publishing_channel(conn).await?,
        best_effort: publishing_channel(conn).await?,
    })
}

/// A confirm-mode channel; the broker closing it shows on the connection's events.
async fn publishing_channel(conn: &lapin::Connection) -> Result<lapin::Channel, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(ch)
}
