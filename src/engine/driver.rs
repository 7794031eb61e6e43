//! The async driver around [`Core`]: it owns the clock, the spawning, the metrics, the
//! timers and the waiters, and carries the core's [`Effect`]s out through the
//! [`PushProvider`](crate::push::PushProvider), [`SmsGateway`](crate::sms::SmsGateway),
//! [`OutcomeSink`] and [`Peers`] traits. It holds no lock across an `.await`: each core
//! call locks one table entry for its synchronous work and returns; the effects are then
//! carried out (provider calls and publishes in spawned tasks that re-enter the core by
//! id).

use super::core::{
    Core, DeliveryMeta, Effect, Effects, HandedOver, Metric, OsEntropy, Reach, Settings,
};
use super::peers::{Asked, Peers};
use super::sink::OutcomeSink;
use super::timers::Timers;
use super::Providers;
use crate::cluster::Ownership;
use crate::config::Config;
use crate::telemetry as t;
use crate::wire::control::{PeerAnswer, PeerAsk, PeerRequest};
use crate::wire::messages::View;
use crate::wire::ops::{Authority, ChallengeId, OpOutcome, Operation, UserHint};
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The only clock the engine reads: [`crate::clock::now_ms`].
pub use crate::clock::now_ms;

/// How a delivery is settled; `amqp` implements it for its ack handle.
pub trait AckToken: Send + Sync + 'static {
    fn ack(self: Box<Self>);
    fn reject(self: Box<Self>);
}

/// The ack token the driver's core holds.
pub type Ack = Box<dyn AckToken>;

/// The challenge engine: the core plus the I/O around it.
pub struct Engine {
    core: Core<Ack>,
    timers: Timers,
    providers: Providers,
    sink: Arc<dyn OutcomeSink>,
    waiters: DashMap<Arc<str>, Arc<Notify>>,
    /// Other instances, once the broker connection is up.
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
    /// Outcomes (and rejections) published but not yet confirmed.
    unsettled: AtomicUsize,
    settled_notify: Notify,
    /// Where refused challenges come from (the `x-sca-source` of their dead letters).
    challenges_queue: Arc<str>,
    /// The bound on an operation body from `sca.responses` (`http.max_body_bytes`).
    max_response_bytes: usize,
    /// Cluster mode: the partitions held, with their fencing epochs (none otherwise).
    ownership: Arc<Ownership>,
    cluster: bool,
    /// Ids dropped by a fence lately (Unix ms of the fence): an operation on one that no
    /// instance holds yet answers 503 `partition_moving`, not 404. Bounded.
    fenced: DashMap<Arc<str>, i64>,
    fenced_for_ms: i64,
    /// `challenge.max_held`: at this many held, intake waits ([`Engine::room`]).
    max_held: usize,
    /// Consumers waiting for room in [`Engine::room`] now.
    waiting_for_room: AtomicUsize,
}

/// How often paused intake looks at the table again (room comes back as retention runs
/// out, which the timers do on their own schedule).
const ROOM_POLL: Duration = Duration::from_millis(50);

/// The most ids remembered as recently fenced.
const MAX_FENCED: usize = 100_000;

impl Engine {
    pub fn new(cfg: &Config, providers: Providers, sink: Arc<dyn OutcomeSink>) -> Arc<Engine> {
        let mut settings = Settings::from_config(
            cfg,
            Reach {
                apns: providers.apns.is_some(),
                fcm: providers.fcm.is_some(),
                hms: providers.hms.is_some(),
                sms_gateway: providers.sms.is_some(),
            },
        );
        settings.apps = providers
            .apps
            .iter()
            .map(|(name, p)| (name.clone(), p.reach()))
            .collect();
        Arc::new(Engine {
            core: Core::new(cfg, settings, Box::new(OsEntropy)),
            timers: Timers::default(),
            providers,
            sink,
            waiters: DashMap::new(),
            peers: std::sync::OnceLock::new(),
            unsettled: AtomicUsize::new(0),
            settled_notify: Notify::new(),
            challenges_queue: cfg.amqp.challenges_queue.as_str().into(),
            max_response_bytes: cfg.http.max_body_bytes,
            ownership: Arc::new(Ownership::new(if cfg.cluster.enabled {
                cfg.cluster.partitions as usize
            } else {
                0
            })),
            cluster: cfg.cluster.enabled,
            fenced: DashMap::new(),
            fenced_for_ms: cfg.cluster.takeover_seconds as i64 * 3000,
            max_held: usize::try_from(cfg.challenge.max_held).unwrap_or(usize::MAX),
            waiting_for_room: AtomicUsize::new(0),
        })
    }

    /// The partitions this instance holds (cluster mode).
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// Fencing: the claim on partition `index` is gone (connection or consumer lost).
    /// Its challenges stop acting here at once: no push, SMS or outcome from this copy.
    pub fn fence(self: &Arc<Self>, index: usize) {
        let held = self.ownership.release(index);
        let (fx, gone) = self.core.drop_partition(index as u16);
        let now = now_ms();
        if self.fenced.len() > MAX_FENCED {
            self.fenced.clear();
        }
        for e in &fx {
            if let Effect::WakeWaiters(id) = e {
                self.fenced.insert(id.clone(), now);
            }
        }
        self.run(fx);
        if held || gone > 0 {
            metrics::counter!(t::CLUSTER_FENCES).increment(1);
            tracing::warn!(
                partition = index,
                dropped = gone,
                "partition lost: its challenges are dropped here and go to the next owner"
            );
        }
        self.partition_gauge();
    }

    /// Fences every partition held (the broker connection is gone).
    pub fn fence_all(self: &Arc<Self>) {
        for i in 0..self.ownership.partitions() {
            self.fence(i);
        }
    }

    /// A new claim on partition `index`; deliveries from it carry the returned part.
    pub fn claimed(&self, index: usize) -> crate::cluster::Part {
        let p = self.ownership.claim(index);
        self.partition_gauge();
        p
    }

    /// Hand-over, first step: the undecided challenges of partition `index` leave the
    /// table with their progress (the claim stays until the decided ones are settled).
    pub fn hand_over(self: &Arc<Self>, index: usize) -> Vec<HandedOver<Ack>> {
        let (items, fx) = self.core.extract_partition(index as u16);
        let now = now_ms();
        for e in &fx {
            if let Effect::WakeWaiters(id) = e {
                self.fenced.insert(id.clone(), now);
            }
        }
        self.run(fx);
        items
    }

    /// Challenges of partition `index` decided but not yet confirmed.
    pub fn unsettled_in(&self, index: usize) -> usize {
        self.core.unsettled_in(index as u16)
    }

    fn partition_gauge(&self) {
        if self.cluster {
            metrics::gauge!(t::PARTITIONS_OWNED).set(self.ownership.owned().len() as f64);
        }
    }

    fn recently_fenced(&self, id: &str) -> bool {
        let now = now_ms();
        let at = self.fenced.get(id).map(|a| *a);
        match at {
            Some(at) if now - at <= self.fenced_for_ms => true,
            Some(_) => {
                self.fenced.remove(id);
                false
            }
            None => false,
        }
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub fn sink(&self) -> &Arc<dyn OutcomeSink> {
        &self.sink
    }

    /// The largest operation body accepted from `sca.responses` (as for HTTP bodies).
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Pending (undecided) challenges.
    pub fn pending(&self) -> usize {
        self.core.pending()
    }

    pub fn holds(&self, id: &str) -> bool {
        self.core.holds(id)
    }

    /// Challenges held in memory, pending and retained.
    pub fn held(&self) -> usize {
        self.core.held()
    }

    /// Returns once the table holds fewer than `challenge.max_held` challenges. The
    /// consumers call it with each delivery in hand, before the engine takes it: at the
    /// bound the deliveries wait, unacked, in the queue and the channels' prefetch until
    /// retention frees room (consumers checking at the same moment may each take one, so
    /// the table can pass the bound by at most one per consumer). A retained
    /// record is never dropped early to make room — a copy published again would then
    /// be taken as new and get a second outcome.
    pub async fn room(&self) {
        if self.core.held() < self.max_held {
            return;
        }
        if self.waiting_for_room.fetch_add(1, Ordering::SeqCst) == 0 {
            tracing::warn!(
                held = self.core.held(),
                max_held = self.max_held,
                "challenge.max_held reached: intake paused until retention frees room"
            );
        }
        while self.core.held() >= self.max_held {
            tokio::time::sleep(ROOM_POLL).await;
        }
        if self.waiting_for_room.fetch_sub(1, Ordering::SeqCst) == 1 {
            tracing::info!(held = self.core.held(), "intake resumed");
        }
    }

    /// Whether a consumer is waiting for room now (`sca_intake_paused`).
    pub fn intake_paused(&self) -> bool {
        self.waiting_for_room.load(Ordering::SeqCst) > 0
    }

    /// Sets how other instances are reached (once).
    pub fn set_peers(&self, p: Arc<dyn Peers>) {
        let _ = self.peers.set(p);
    }

    /// Takes one delivery from the challenges queue. Never blocks on I/O.
    pub fn accept(self: &Arc<Self>, body: &[u8], meta: DeliveryMeta, ack: Ack) {
        let fx = self.core.intake(now_ms(), body, meta, ack);
        self.run(fx);
    }

    // ---- operations -----------------------------------------------------------

    /// Runs an operation here, if the challenge is held here.
    fn operate_here(self: &Arc<Self>, id: &str, op: &Operation, auth: Authority) -> OpOutcome {
        let (outcome, fx) = self.core.operate(now_ms(), id, op, auth);
        self.run(fx);
        outcome
    }

    /// Runs an operation on a challenge wherever it is held: here, or at the instance
    /// that consumed it. An owner that cannot be reached answers like an unknown
    /// challenge (404), as the HTTP API always has.
    pub async fn operate_anywhere(
        self: &Arc<Self>,
        id: &ChallengeId,
        op: Operation,
        authority: Authority,
    ) -> OpOutcome {
        self.operate_hinted(id, op, authority, None).await
    }

    /// As [`Engine::operate_anywhere`], with the challenge's user as a routing hint.
    pub async fn operate_hinted(
        self: &Arc<Self>,
        id: &ChallengeId,
        op: Operation,
        authority: Authority,
        user: Option<&UserHint>,
    ) -> OpOutcome {
        match self.operate_routed(id, op, authority, user).await {
            OpOutcome::Unreachable => OpOutcome::NotFound,
            o => o,
        }
    }

    /// As [`Engine::operate_anywhere`], but says [`OpOutcome::Unreachable`] when a known
    /// instance did not answer and the challenge is not here either (`sca.responses`
    /// then tries again later).
    pub async fn operate_routed(
        self: &Arc<Self>,
        id: &ChallengeId,
        op: Operation,
        authority: Authority,
        user: Option<&UserHint>,
    ) -> OpOutcome {
        if self.core.holds(id.as_str()) {
            return self.operate_here(id.as_str(), &op, authority);
        }
        let started = std::time::Instant::now();
        let mut silent = false;
        let mut all_owned = true;
        if let Some(p) = self.peers.get() {
            let req = PeerRequest {
                challenge_id: id.clone(),
                ask: PeerAsk::Operate {
                    op: op.clone(),
                    authority,
                },
            };
            let (asked, how) = match user {
                Some(u) if self.cluster => (p.ask_owner(req, u).await, "owner"),
                _ => (p.ask(req).await, "lookup"),
            };
            if self.cluster {
                let r = match &asked {
                    Asked::Answered(_) => "answered",
                    Asked::NotHeld => "not_held",
                    Asked::Silent => "silent",
                };
                metrics::counter!(t::CLUSTER_FORWARDS, "route" => how, "result" => r).increment(1);
                metrics::histogram!(t::CLUSTER_FORWARD_LATENCY, "route" => how)
                    .record(started.elapsed().as_secs_f64());
            }
            match asked {
                Asked::Answered(PeerAnswer::Op(o)) => return o,
                Asked::Answered(PeerAnswer::View(_)) | Asked::NotHeld => {}
                Asked::Silent => silent = true,
            }
            all_owned = p.all_owned();
        }
        // It may have arrived here meanwhile.
        match self.operate_here(id.as_str(), &op, authority) {
            // Cluster mode: a challenge fenced here lately, or a partition without an
            // owner, means the challenge may be on its way to its next owner.
            OpOutcome::NotFound
                if self.cluster && (self.recently_fenced(id.as_str()) || !all_owned) =>
            {
                OpOutcome::Moving
            }
            OpOutcome::NotFound if silent => OpOutcome::Unreachable,
            o => o,
        }
    }

    /// The view of a challenge wherever it is held, waiting up to `wait` for a decision.
    pub async fn view_anywhere(&self, id: &ChallengeId, wait: Duration) -> Option<View> {
        if self.core.holds(id.as_str()) {
            return self.view_when_decided(id.as_str(), wait).await;
        }
        let p = self.peers.get()?;
        let req = PeerRequest {
            challenge_id: id.clone(),
            ask: PeerAsk::View {
                wait_ms: wait.as_millis().min(u64::MAX as u128) as u64,
            },
        };
        match p.ask(req).await {
            Asked::Answered(PeerAnswer::View(v)) => Some(*v),
            _ => self.core.view(id.as_str()),
        }
    }

    /// Answers a peer's request if this instance holds the challenge.
    pub async fn answer_peer(self: &Arc<Self>, req: &PeerRequest) -> Option<PeerAnswer> {
        let id = req.challenge_id.as_str();
        if !self.core.holds(id) {
            return None;
        }
        match &req.ask {
            PeerAsk::View { .. } => {
                let v = self.view_when_decided(id, req.wait()).await?;
                Some(PeerAnswer::View(Box::new(v)))
            }
            PeerAsk::Operate { op, authority } => {
                Some(PeerAnswer::Op(self.operate_here(id, op, *authority)))
            }
        }
    }

    /// The undecided challenges bound to a device held here; `None` when a signed
    /// request's timestamp is off by more than 60 s.
    pub fn pending_for_device(
        &self,
        device_id: &str,
        auth: &super::core::DeviceAuth,
    ) -> Option<crate::wire::messages::PendingList> {
        self.core.pending_for_device(now_ms(), device_id, auth)
    }

    /// Applies what another instance told.
    pub fn apply_peer_note(&self, note: &crate::wire::control::PeerNote) {
        self.core.peer_note(now_ms(), note);
    }

    /// Waits up to `wait` for the challenge to be decided, then returns its view.
    pub async fn view_when_decided(&self, id: &str, wait: Duration) -> Option<View> {
        match self.core.is_decided(id)? {
            true => return self.core.view(id),
            false if wait.is_zero() => return self.core.view(id),
            false => {}
        }
        let key: Arc<str> = id.into();
        let notify = self.waiters.entry(key.clone()).or_default().clone();
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Re-check after registering so a decision in between is not missed.
        if self.core.is_decided(id) == Some(false) {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        // The decision may have landed before the registration (its wake found no
        // entry): remove ours unless someone else still waits on it.
        self.waiters.remove_if(&key, |_, n| {
            Arc::ptr_eq(n, &notify) && Arc::strong_count(n) <= 2
        });
        self.core.view(id)
    }

    /// Waiter entries (for tests of their cleanup).
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Resolves once the challenge is decided or no longer held.
    async fn decided(&self, id: &Arc<str>) {
        loop {
            let notify = self.waiters.entry(id.clone()).or_default().clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.core.is_decided(id) != Some(false) {
                self.waiters.remove_if(id, |_, n| {
                    Arc::ptr_eq(n, &notify) && Arc::strong_count(n) <= 2
                });
                return;
            }
            notified.await;
        }
    }

    // ---- effects --------------------------------------------------------------

    /// Carries out effects of one core call, each asynchronous one in a task of its own.
    /// (Joining one call's effects in one task saves a spawn, but every joined future is
    /// polled at each wake-up: a push waiting on its HTTP/2 stream was polled whenever
    /// the other device's answer came. Measured: 1.05–1.11× the CPU per challenge.)
    fn run(self: &Arc<Self>, fx: Effects<Ack>) {
        for e in fx {
            self.execute(e);
        }
    }

    fn execute(self: &Arc<Self>, e: Effect<Ack>) {
        match e {
            Effect::Push {
                device,
                platform,
                msg,
            } => {
                let Some(provider) = self.providers.push(&msg.app, platform) else {
                    return;
                };
                let engine = self.clone();
                tokio::spawn(async move {
                    let id = msg.challenge_id.clone();
                    let result = provider.send(msg).await;
                    let fx = engine.core.push_result(now_ms(), &id, device, result);
                    engine.run(fx);
                });
            }
            Effect::Withdraw { platform, msg } => {
                let Some(provider) = self.providers.push(&msg.app, platform) else {
                    return;
                };
                tokio::spawn(async move {
                    provider.send(msg).await;
                });
            }
            Effect::SendSms {
                id,
                seq,
                msg,
                valid_for,
            } => {
                let Some(gateway) = self.providers.sms.clone() else {
                    return;
                };
                let engine = self.clone();
                tokio::spawn(async move {
                    // Retries stop once the challenge is decided.
                    let r = tokio::select! {
                        r = crate::sms::deliver(&*gateway, &msg, valid_for) => r,
                        _ = engine.decided(&id) => return,
                    };
                    let fx =
                        engine
                            .core
                            .sms_result(now_ms(), &id, seq, r.map_err(|e| e.to_string()));
                    engine.run(fx);
                });
            }
            Effect::PublishOutcome {
                id,
                routing_key,
                body,
                reply,
                part,
            } => {
                self.unsettled.fetch_add(1, Ordering::SeqCst);
                let engine = self.clone();
                tokio::spawn(async move {
                    let publish = engine.sink.publish_outcome(routing_key, body, reply);
                    // Fencing: once the claim it came under is lost, the delivery went
                    // back to the queue; this copy's outcome must not go out (retries
                    // across a reconnect included).
                    let confirmed = match part {
                        Some(part) => tokio::select! {
                            c = publish => c,
                            _ = engine.ownership.lost(part) => false,
                        },
                        None => publish.await,
                    };
                    if confirmed {
                        let fx = engine.core.confirmed(now_ms(), &id);
                        engine.run(fx);
                    }
                    engine.settled_one();
                });
            }
            Effect::PublishEvent { routing_key, body } => {
                let engine = self.clone();
                tokio::spawn(async move {
                    engine.sink.publish_event(routing_key, body).await;
                });
            }
            Effect::DeadLetter {
                body,
                reason,
                outcome,
                retained,
                reply,
                ack,
            } => {
                self.unsettled.fetch_add(1, Ordering::SeqCst);
                let engine = self.clone();
                tokio::spawn(async move {
                    let queue = engine.challenges_queue.clone();
                    let dead = engine.sink.dead_letter(queue, body, reason).await;
                    if let Some((rk, out)) = outcome {
                        let confirmed = engine.sink.publish_outcome(rk, out, reply).await;
                        if let (true, Some(id)) = (confirmed, retained) {
                            let fx = engine.core.confirmed(now_ms(), &id);
                            engine.run(fx);
                        }
                    }
                    // Should the dead-letter publish fail, the queue's own DLX still
                    // catches it.
                    if dead {
                        ack.ack();
                    } else {
                        ack.reject();
                    }
                    engine.settled_one();
                });
            }
            Effect::Settle(acks) => acks.into_iter().for_each(|a| a.ack()),
            Effect::ArmTimer { id, at } => self.timers.arm(&id, at),
            Effect::WakeWaiters(id) => {
                if let Some((_, n)) = self.waiters.remove(&id) {
                    n.notify_waiters();
                }
            }
            Effect::TellPeers(note) => {
                if let Some(p) = self.peers.get() {
                    let p = p.clone();
                    tokio::spawn(async move { p.tell(note).await });
                }
            }
            Effect::Count(m) => count(m),
        }
    }

    fn settled_one(&self) {
        self.unsettled.fetch_sub(1, Ordering::SeqCst);
        self.settled_notify.notify_waiters();
    }

    // ---- time -----------------------------------------------------------------

    /// Serves the timers until `stop` resolves.
    pub async fn run_timers(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut due = Vec::new();
        loop {
            let now = now_ms();
            due.clear();
            let next = self.timers.due(now, &mut due);
            for id in &due {
                let fx = self.core.tick(now, id);
                self.run(fx);
            }
            if !due.is_empty() {
                // More may be due already (the batch is capped); yield and look again.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = self.timers.sleep(next, now) => {}
                _ = &mut stop => return,
            }
        }
    }

    /// Prunes limiter state periodically until `stop` resolves.
    pub async fn run_pruner(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let users = self.core.prune(now_ms());
                    tracing::debug!(limiter_keys = users, "limiter state pruned");
                }
                _ = &mut stop => return,
            }
        }
    }

    /// Waits until every published outcome is confirmed, or `deadline` passes.
    /// Returns the number still unconfirmed.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.settled_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unsettled.load(Ordering::SeqCst) == 0 {
                return 0;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.unsettled.load(Ordering::SeqCst);
            }
        }
    }
}

/// The metric behind a core [`Metric`], through handles registered once
/// ([`t::handles`]).
fn count(m: Metric) {
    use t::handles::{count, gauge_add, record};
    match m {
        Metric::Received { kind } => count(t::CHALLENGES_RECEIVED, &["kind"], &[kind], 1),
        Metric::Rejected { reason } => count(t::CHALLENGES_REJECTED, &["reason"], &[reason], 1),
        Metric::Outcome {
            kind,
            outcome,
            channel,
            latency_s,
        } => {
            count(
                t::OUTCOMES,
                &["kind", "outcome", "channel"],
                &[kind, outcome, channel],
                1,
            );
            if let Some(secs) = latency_s {
                record(t::DECISION_LATENCY, &["channel"], &[channel], secs);
            }
        }
        Metric::InFlight(true) => gauge_add(t::IN_FLIGHT, &[], &[], 1.0),
        Metric::InFlight(false) => gauge_add(t::IN_FLIGHT, &[], &[], -1.0),
        Metric::RateLimited(limit) => t::record_rate_limited(limit),
        Metric::Otp(result) => count(t::OTP_VERIFICATIONS, &["result"], &[result], 1),
        Metric::Sms(result) => count(t::SMS, &["result"], &[result], 1),
        Metric::Offline(result) => count(t::OFFLINE_VERIFICATIONS, &["result"], &[result], 1),
        Metric::FraudReported => count(t::FRAUD_REPORTS, &[], &[], 1),
    }
}

#[cfg(test)]
mod tests;
