//! The control plane between instances. Each instance binds an exclusive queue to the
//! control fanout exchange, says hello every few seconds (in cluster mode: listing the
//! partitions it owns, which makes the owner map), and answers requests about
//! challenges it holds. An instance asked about a challenge it does not hold either
//! sends the request to the owner of the user's partition in one hop (cluster mode with
//! a `user_id` hint: through the consistent-hash exchange into the partition queue,
//! which only the owner consumes), or broadcasts it and waits for the holder's answer,
//! or for every known peer to say it does not hold it (a lookup bounded in time).
//!
//! With `cluster.secret` set every message is sealed (HMAC-SHA256 over timestamp and
//! body, [`crate::cluster::seal`]); one that fails the check or is older than 30 s is
//! dropped and counted in `sca_control_rejected_total`.

use crate::cluster::{Names, Ownership, Rejected, Seal};
use crate::engine::peers::{Asked, Peers};
use crate::engine::Engine;
use crate::telemetry as t;
use crate::wire::control::{ControlMessage, PeerAnswer, PeerNote, PeerRequest};
use crate::wire::ops::UserHint;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often an instance announces itself outside cluster mode.
const HELLO_EVERY: Duration = Duration::from_secs(5);
/// How long to wait for the owner beyond the request's own wait.
const ASK_TIMEOUT: Duration = Duration::from_millis(2000);
/// The header marking a control request published into a partition queue.
pub(crate) const CONTROL_HEADER: &str = "x-sca-control";
pub(crate) const TS_HEADER: &str = "x-sca-ts";
pub(crate) const MAC_HEADER: &str = "x-sca-mac";

/// Cluster mode, as the control plane needs it.
pub struct ClusterView {
    pub names: Names,
    pub ownership: Arc<Ownership>,
    /// How often hellos go out; a peer silent for 3 of these is gone.
    pub tick: Duration,
}

struct Peer {
    seen: Instant,
    first_seen: Instant,
    owns: Vec<u16>,
}

pub struct Control {
    id: String,
    exchange: String,
    seal: Option<Seal>,
    cluster: Option<ClusterView>,
    link: Mutex<Option<(Channel, String)>>,
    /// Requests awaiting answers, by correlation id; `None` = "not held here".
    pending: DashMap<String, mpsc::UnboundedSender<Option<PeerAnswer>>>,
    peers: DashMap<String, Peer>,
}

/// A message's timestamp and MAC headers.
pub(crate) fn seal_headers(d: &lapin::message::Delivery) -> (Option<i64>, Option<String>) {
    let Some(h) = d.properties.headers() else {
        return (None, None);
    };
    let ts = match h.inner().get(TS_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(AMQPValue::LongString(s)) => s.to_string().parse().ok(),
        _ => None,
    };
    let mac = match h.inner().get(MAC_HEADER) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    (ts, mac)
}

/// Counts a refused instance message.
pub(crate) fn rejected(why: Rejected) {
    metrics::counter!(t::CONTROL_REJECTED, "reason" => why.label()).increment(1);
    tracing::warn!(
        reason = why.label(),
        "instance message refused: unsigned, bad MAC or too old"
    );
}

impl Control {
    pub fn new(exchange: &str, seal: Option<Seal>, cluster: Option<ClusterView>) -> Arc<Control> {
        Arc::new(Control {
            id: format!("{:016x}", rand::random::<u64>()),
            exchange: exchange.to_string(),
            seal,
            cluster,
            link: Mutex::new(None),
            pending: DashMap::new(),
            peers: DashMap::new(),
        })
    }

    /// This instance's id (in its connection name and its hellos).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn hello_every(&self) -> Duration {
        self.cluster.as_ref().map(|c| c.tick).unwrap_or(HELLO_EVERY)
    }

    fn peer_ttl(&self) -> Duration {
        self.hello_every() * 3
    }

    fn live_peers(&self) -> usize {
        let ttl = self.peer_ttl();
        self.peers.retain(|_, p| p.seen.elapsed() < ttl);
        self.peers.len()
    }

    /// The live instances, this one included, sorted; with how long each has been seen.
    pub fn instances(&self) -> Vec<(String, Duration)> {
        self.live_peers();
        let mut v: Vec<(String, Duration)> = self
            .peers
            .iter()
            .map(|p| (p.key().clone(), p.first_seen.elapsed()))
            .collect();
        v.push((self.id.clone(), Duration::MAX));
        v.sort();
        v
    }

    /// The live peer announcing that it owns partition `index`, if any.
    pub fn owner_of(&self, index: u16) -> Option<String> {
        let ttl = self.peer_ttl();
        self.peers
            .iter()
            .find(|p| p.seen.elapsed() < ttl && p.owns.contains(&index))
            .map(|p| p.key().clone())
    }

    /// For `/readyz`: what this instance owns and the owner map it knows.
    pub fn describe(&self) -> Option<serde_json::Value> {
        let c = self.cluster.as_ref()?;
        let owned = c.ownership.owned();
        let mut map = serde_json::Map::new();
        for p in 0..c.ownership.partitions() as u16 {
            let who = if owned.contains(&p) {
                Some(self.id.clone())
            } else {
                self.owner_of(p)
            };
            map.insert(
                p.to_string(),
                who.map(serde_json::Value::String)
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        Some(serde_json::json!({
            "instance": self.id,
            "partitions": c.ownership.partitions(),
            "owned": owned,
            "instances": self.instances().into_iter().map(|(i, _)| i).collect::<Vec<_>>(),
            "owners": map,
        }))
    }

    fn link(&self) -> Option<(Channel, String)> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_link(&self, l: Option<(Channel, String)>) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }

    /// Properties carrying the seal of `body` (when a secret is configured).
    pub(crate) fn sealed(&self, body: &[u8], props: BasicProperties) -> BasicProperties {
        let Some(seal) = &self.seal else { return props };
        let ts = crate::clock::now_ms();
        let mut h = props.headers().clone().unwrap_or_default();
        h.insert(TS_HEADER.into(), AMQPValue::LongLongInt(ts));
        h.insert(
            MAC_HEADER.into(),
            AMQPValue::LongString(seal.sign(ts, body).into()),
        );
        props.with_headers(h)
    }

    /// Checks a received message's seal; `false` (counted) when it must be dropped.
    pub(crate) fn verify(&self, d: &lapin::message::Delivery) -> bool {
        let Some(seal) = &self.seal else { return true };
        let (ts, mac) = seal_headers(d);
        match seal.verify(crate::clock::now_ms(), ts, mac.as_deref(), &d.data) {
            Ok(()) => true,
            Err(why) => {
                rejected(why);
                false
            }
        }
    }

    async fn broadcast(&self, body: &ControlMessage) {
        let Some((ch, queue)) = self.link() else {
            return;
        };
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let props = self.sealed(
            &bytes,
            BasicProperties::default().with_reply_to(queue.into()),
        );
        if let Err(e) = ch
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &bytes,
                props,
            )
            .await
        {
            tracing::debug!("control publish failed: {e}");
        }
    }

    async fn hello(&self) {
        let owns = self
            .cluster
            .as_ref()
            .map(|c| c.ownership.owned())
            .unwrap_or_default();
        self.broadcast(&ControlMessage::Hello {
            from: self.id.clone(),
            owns,
        })
        .await;
    }

    /// Opens the control queue on `conn` and serves it until the connection ends.
    pub(crate) async fn open(
        self: &Arc<Self>,
        conn: &Connection,
        engine: Arc<Engine>,
    ) -> lapin::Result<tokio::task::JoinHandle<String>> {
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = q.name().to_string();
        ch.queue_bind(
            queue.as_str().into(),
            self.exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.set_link(Some((ch, queue)));
        self.hello().await;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            let mut consumer = consumer;
            let mut hello = tokio::time::interval(me.hello_every());
            loop {
                tokio::select! {
                    d = consumer.next() => match d {
                        Some(Ok(d)) => {
                            if me.verify(&d) {
                                let reply_to = d.properties.reply_to().as_ref().map(|r| r.to_string());
                                me.on_message(&d.data, reply_to, &engine).await;
                            }
                        }
                        Some(Err(e)) => { me.set_link(None); return format!("control consumer failed: {e}"); }
                        None => { me.set_link(None); return "control consumer ended".into(); }
                    },
                    _ = hello.tick() => me.hello().await,
                }
            }
        }))
    }

    /// Handles one verified message (from the control queue, or a request published
    /// into a partition queue this instance consumes).
    pub(crate) async fn on_message(
        self: &Arc<Self>,
        data: &[u8],
        reply_to: Option<String>,
        engine: &Arc<Engine>,
    ) {
        let msg = match serde_json::from_slice::<ControlMessage>(data) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("control message refused: {e}");
                return;
            }
        };
        let from = msg.from();
        if from == self.id {
            // Our own request routed to a partition we own: answered below like any.
            if !matches!(msg, ControlMessage::Req { .. }) {
                return;
            }
        } else {
            let owns = match &msg {
                ControlMessage::Hello { owns, .. } => Some(owns.clone()),
                _ => None,
            };
            let now = Instant::now();
            let mut newcomer = false;
            let mut p = self.peers.entry(from.to_string()).or_insert_with(|| {
                newcomer = true;
                Peer {
                    seen: now,
                    first_seen: now,
                    owns: Vec::new(),
                }
            });
            p.seen = now;
            if let Some(o) = owns {
                p.owns = o;
            }
            drop(p);
            if newcomer && matches!(msg, ControlMessage::Hello { .. }) {
                // A newcomer: let it know about us at once.
                self.hello().await;
            }
        }
        match msg {
            ControlMessage::Hello { .. } => {}
            ControlMessage::Req { corr, req, .. } => {
                let Some(reply_to) = reply_to else { return };
                let me = self.clone();
                let engine = engine.clone();
                tokio::spawn(async move {
                    let answer = engine.answer_peer(&req).await;
                    let body = ControlMessage::Rep {
                        from: me.id.clone(),
                        corr,
                        answer,
                    };
                    if let Some((ch, _)) = me.link() {
                        let bytes = serde_json::to_vec(&body).unwrap_or_default();
                        let props = me.sealed(&bytes, BasicProperties::default());
                        let _ = ch
                            .basic_publish(
                                "".into(),
                                reply_to.as_str().into(),
                                BasicPublishOptions::default(),
                                &bytes,
                                props,
                            )
                            .await;
                    }
                });
            }
            // In cluster mode the core ignores notes: SMS limits live with the owner.
            ControlMessage::Note { note, .. } => engine.apply_peer_note(&note),
            ControlMessage::Rep { corr, answer, .. } => {
                if let Some(tx) = self.pending.get(&corr) {
                    let _ = tx.send(answer);
                }
            }
        }
    }

    /// Publishes `req` and collects answers until one holds it, `enough` say they do
    /// not, or the deadline passes.
    async fn request(&self, req: PeerRequest, via_user: Option<&UserHint>, enough: usize) -> Asked {
        let Some((ch, queue)) = self.link() else {
            return Asked::Silent;
        };
        let corr = format!("{:016x}", rand::random::<u64>());
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.insert(corr.clone(), tx);
        let timeout = req.wait() + ASK_TIMEOUT;
        let deadline = tokio::time::Instant::now() + timeout;
        let msg = ControlMessage::Req {
            from: self.id.clone(),
            corr: corr.clone(),
            req,
        };
        match (via_user, &self.cluster) {
            (Some(user), Some(c)) => {
                let bytes = serde_json::to_vec(&msg).unwrap_or_default();
                let mut h = FieldTable::default();
                h.insert(CONTROL_HEADER.into(), AMQPValue::LongString("req".into()));
                // A request nobody consumed in time is of no use to anyone.
                let props = BasicProperties::default()
                    .with_reply_to(queue.into())
                    .with_headers(h)
                    .with_expiration(timeout.as_millis().to_string().into());
                let props = self.sealed(&bytes, props);
                if let Err(e) = ch
                    .basic_publish(
                        c.names.exchange.as_str().into(),
                        user.as_str().into(),
                        BasicPublishOptions::default(),
                        &bytes,
                        props,
                    )
                    .await
                {
                    tracing::debug!("request to the partition owner failed: {e}");
                }
            }
            _ => self.broadcast(&msg).await,
        }
        let mut not_held = 0;
        let mut result = Asked::Silent;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if let Some(a) = r {
                result = Asked::Answered(a);
                break;
            }
            not_held += 1;
            if not_held >= enough {
                result = Asked::NotHeld;
                break;
            }
        }
        self.pending.remove(&corr);
        result
    }
}

impl Peers for Control {
    fn tell(&self, note: PeerNote) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Cluster mode broadcasts no SMS notes: one owner per user counts alone.
            if self.cluster.is_none() && self.live_peers() > 0 {
                let from = self.id.clone();
                self.broadcast(&ControlMessage::Note { from, note }).await;
            }
        })
    }

    fn ask(&self, req: PeerRequest) -> BoxFuture<'_, Asked> {
        Box::pin(async move {
            let peers = self.live_peers();
            if peers == 0 {
                return Asked::NotHeld;
            }
            self.request(req, None, peers).await
        })
    }

    fn ask_owner<'a>(&'a self, req: PeerRequest, user: &'a UserHint) -> BoxFuture<'a, Asked> {
        Box::pin(async move {
            if self.cluster.is_none() {
                return self.ask(req).await;
            }
            self.request(req, Some(user), 1).await
        })
    }

    fn all_owned(&self) -> bool {
        let Some(c) = &self.cluster else { return true };
        (0..c.ownership.partitions() as u16)
            .all(|p| c.ownership.owns(p as usize) || self.owner_of(p).is_some())
    }
}
