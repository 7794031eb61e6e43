//! The control plane between instances. Each instance binds an exclusive queue to the
//! control fanout exchange, says hello every few seconds so the others know it is there,
//! and answers requests about challenges it holds. An instance asked about a challenge it
//! does not hold broadcasts the request and waits for the owner's answer, or for every
//! known peer to say it does not hold it either.

use crate::engine::peers::{Asked, Peers};
use crate::engine::Engine;
use crate::wire::control::{ControlMessage, PeerAnswer, PeerNote, PeerRequest};
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often an instance announces itself.
const HELLO_EVERY: Duration = Duration::from_secs(5);
/// A peer not heard from for this long is forgotten.
const PEER_TTL: Duration = Duration::from_secs(15);
/// How long to wait for the owner beyond the request's own wait.
const ASK_TIMEOUT: Duration = Duration::from_millis(2000);

pub struct Control {
    id: String,
    exchange: String,
    link: Mutex<Option<(Channel, String)>>,
    /// Requests awaiting answers, by correlation id; `None` = "not held here".
    pending: DashMap<String, mpsc::UnboundedSender<Option<PeerAnswer>>>,
    peers: DashMap<String, Instant>,
}

impl Control {
    pub fn new(exchange: &str) -> Arc<Control> {
        Arc::new(Control {
            id: format!("{:016x}", rand::random::<u64>()),
            exchange: exchange.to_string(),
            link: Mutex::new(None),
            pending: DashMap::new(),
            peers: DashMap::new(),
        })
    }

    fn live_peers(&self) -> usize {
        self.peers.retain(|_, seen| seen.elapsed() < PEER_TTL);
        self.peers.len()
    }

    fn link(&self) -> Option<(Channel, String)> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_link(&self, l: Option<(Channel, String)>) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }

    async fn broadcast(&self, body: &ControlMessage) {
        let Some((ch, queue)) = self.link() else {
            return;
        };
        let props = BasicProperties::default().with_reply_to(queue.into());
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        if let Err(e) = ch
            .basic_publish(
                &self.exchange,
                "",
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
        self.broadcast(&ControlMessage::Hello {
            from: self.id.clone(),
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
                "",
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
            &queue,
            &self.exchange,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                &queue,
                "",
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
            let mut hello = tokio::time::interval(HELLO_EVERY);
            loop {
                tokio::select! {
                    d = consumer.next() => match d {
                        Some(Ok(d)) => {
                            let reply_to = d.properties.reply_to().as_ref().map(|r| r.to_string());
                            me.on_message(&d.data, reply_to, &engine).await;
                        }
                        Some(Err(e)) => { me.set_link(None); return format!("control consumer failed: {e}"); }
                        None => { me.set_link(None); return "control consumer ended".into(); }
                    },
                    _ = hello.tick() => me.hello().await,
                }
            }
        }))
    }

    async fn on_message(
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
            return;
        }
        let newcomer = self
            .peers
            .insert(from.to_string(), Instant::now())
            .is_none();
        match msg {
            // A newcomer: let it know about us at once.
            ControlMessage::Hello { .. } if newcomer => self.hello().await,
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
                        let _ = ch
                            .basic_publish(
                                "",
                                &reply_to,
                                BasicPublishOptions::default(),
                                &bytes,
                                BasicProperties::default(),
                            )
                            .await;
                    }
                });
            }
            ControlMessage::Note { note, .. } => engine.apply_peer_note(&note),
            ControlMessage::Rep { corr, answer, .. } => {
                if let Some(tx) = self.pending.get(&corr) {
                    let _ = tx.send(answer);
                }
            }
        }
    }
}

impl Peers for Control {
    fn tell(&self, note: PeerNote) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.live_peers() > 0 {
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
            if self.link().is_none() {
                return Asked::Silent;
            }
            let corr = format!("{:016x}", rand::random::<u64>());
            let (tx, mut rx) = mpsc::unbounded_channel();
            self.pending.insert(corr.clone(), tx);
            let deadline = tokio::time::Instant::now() + req.wait() + ASK_TIMEOUT;
            let from = self.id.clone();
            let msg = ControlMessage::Req {
                from,
                corr: corr.clone(),
                req,
            };
            self.broadcast(&msg).await;
            let mut not_held = 0;
            let mut result = Asked::Silent;
            while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if let Some(a) = r {
                    result = Asked::Answered(a);
                    break;
                }
                not_held += 1;
                if not_held >= peers {
                    result = Asked::NotHeld;
                    break;
                }
            }
            self.pending.remove(&corr);
            result
        })
    }
}
