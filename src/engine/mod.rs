//! The engine owns the in-memory challenge table (dashmap) and the timers, feeds events
//! to the state machines and carries out their commands through the [`PushProvider`],
//! [`SmsGateway`] and [`OutcomeSink`] traits. It is the only place where concurrency and
//! the table meet: a table entry is locked only for synchronous work, never across an
//! `.await`.
//!
//! Delivery guarantee: a challenge's AMQP delivery is acked only after its outcome is
//! confirmed by the broker. A crash before that leaves it unacked, RabbitMQ redelivers
//! it, and it is dispatched again.

pub mod json;
pub mod peers;
pub mod requests;
pub mod sink;
pub mod timers;

use crate::amqp::acks::AckHandle;
use crate::challenge::machine::{Challenge, Command, Event, NumberMatch, PushResult, Reply};
use crate::challenge::model::{parse_challenge, OutcomeKind, Platform, Rejection};
use crate::challenge::otp::{self, OtpHasher, OTP_VALIDITY_MS};
use crate::config::Config;
use crate::limits::UserLimiter;
use crate::push::{PushContent, PushMessage, PushProvider};
use crate::sms::abuse::{SmsLimits, SmsRefusal};
use crate::sms::{SmsGateway, SmsMessage};
use crate::telemetry as t;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use json::Answer;
use rand::seq::SliceRandom;
use rand::Rng;
use sink::{OutcomeSink, ReplyTo};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use timers::Timers;
use tokio::sync::Notify;

/// Wall-clock Unix milliseconds: the only clock the engine reads.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The transports the engine drives. `None` = not configured.
#[derive(Clone, Default)]
pub struct Providers {
    pub apns: Option<Arc<dyn PushProvider>>,
    pub fcm: Option<Arc<dyn PushProvider>>,
    pub hms: Option<Arc<dyn PushProvider>>,
    pub sms: Option<Arc<dyn SmsGateway>>,
}

/// AMQP properties of a challenge delivery the engine cares about.
#[derive(Debug, Default, Clone)]
pub struct DeliveryMeta {
    pub reply_to: Option<ReplyTo>,
    pub redelivered: bool,
}

/// An operation on a challenge, from the HTTP API or `sca.responses`.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    Decision {
        device_id: &'a str,
        approve: bool,
        signature: Option<&'a str>,
        number: Option<u32>,
    },
    Otp {
        code: &'a str,
    },
    Sms,
    Cancel,
}

struct Entry {
    machine: Challenge,
    /// Deliveries of this challenge id awaiting the outcome's confirm (usually one).
    acks: Vec<AckHandle>,
    reply_to: Option<Box<ReplyTo>>,
    /// The outcome is confirmed by the broker and the deliveries are acked.
    confirmed: bool,
    /// Counted in `sca_challenges_in_flight`.
    counted: bool,
    timer_at: Option<i64>,
    remove_at: Option<i64>,
}

struct Settings {
    default_fallback_s: u64,
    retain_ms: i64,
    max_skew_ms: i64,
    dispatched_events: bool,
    challenges_queue: Arc<str>,
}

/// The challenge engine.
pub struct Engine {
    settings: Settings,
    /// Boxed entries: the map's slack (it grows by doubling) then costs a pointer per
    /// slot instead of a whole entry.
    table: DashMap<Arc<str>, Box<Entry>>,
    timers: Timers,
    providers: Providers,
    sink: Arc<dyn OutcomeSink>,
    limiter: UserLimiter,
    sms_limits: SmsLimits,
    otp: OtpHasher,
    waiters: DashMap<Arc<str>, Arc<Notify>>,
    /// Other instances, once the broker connection is up.
    peers: std::sync::OnceLock<Arc<dyn peers::Peers>>,
    /// Outcomes (and rejections) published but not yet confirmed.
    unsettled: AtomicUsize,
    settled_notify: Notify,
}

impl Engine {
    pub fn new(cfg: &Config, providers: Providers, sink: Arc<dyn OutcomeSink>) -> Arc<Engine> {
        Arc::new(Engine {
            settings: Settings {
                default_fallback_s: cfg.challenge.default_fallback_after_seconds,
                retain_ms: cfg.challenge.retain_completed_seconds as i64 * 1000,
                max_skew_ms: cfg.challenge.max_clock_skew_seconds as i64 * 1000,
                dispatched_events: cfg.amqp.dispatched_events,
                challenges_queue: cfg.amqp.challenges_queue.as_str().into(),
            },
            table: DashMap::new(),
            timers: Timers::default(),
            providers,
            sink,
            limiter: UserLimiter::new(&cfg.limits),
            sms_limits: SmsLimits::new(&cfg.sms),
            otp: OtpHasher::from_config(&cfg.sms.otp_key),
            waiters: DashMap::new(),
            peers: std::sync::OnceLock::new(),
            unsettled: AtomicUsize::new(0),
            settled_notify: Notify::new(),
        })
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// Challenges held in memory (pending or recently finished).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Pending (undecided) challenges.
    pub fn pending(&self) -> usize {
        self.table.iter().filter(|e| !e.machine.is_done()).count()
    }

    fn reachable(&self, p: Platform) -> bool {
        match p {
            Platform::Apns => self.providers.apns.is_some(),
            Platform::Fcm => self.providers.fcm.is_some(),
            Platform::Hms => self.providers.hms.is_some(),
        }
    }

    // ---- intake ---------------------------------------------------------------

    /// Takes one delivery from the challenges queue. Never blocks on I/O.
    pub fn accept(self: &Arc<Self>, body: &[u8], meta: DeliveryMeta, ack: AckHandle) {
        let now = now_ms();
        let spec = match parse_challenge(body, now, self.settings.max_skew_ms) {
            Ok(s) => s,
            Err(rej) => return self.reject(body, meta, ack, rej, now),
        };
        metrics::counter!(t::CHALLENGES_RECEIVED, "kind" => spec.kind.as_str()).increment(1);
        let id: Arc<str> = Arc::from(&*spec.challenge_id);
        match self.table.entry(id.clone()) {
            MapEntry::Occupied(mut e) => {
                // A duplicate or a redelivery of a challenge we hold: never a second one.
                let entry = e.get_mut();
                tracing::debug!(challenge_id = %id, redelivered = meta.redelivered, "duplicate challenge");
                if entry.confirmed {
                    ack.ack();
                } else {
                    entry.acks.push(ack);
                }
            }
            MapEntry::Vacant(v) => {
                let allowed = self.limiter.check(&spec.user_id);
                let (machine, cmds, counted) = if allowed {
                    let reachable: Vec<bool> = spec
                        .devices
                        .iter()
                        .map(|d| self.reachable(d.platform))
                        .collect();
                    let number = spec.number_match.then(random_number_match);
                    let (m, cmds) = Challenge::start(
                        spec,
                        now,
                        &reachable,
                        self.settings.default_fallback_s,
                        number,
                    );
                    (m, cmds, true)
                } else {
                    t::record_rate_limited("user_challenges");
                    let (m, cmds) =
                        Challenge::refused(spec, now, OutcomeKind::RateLimited, "user_rate_limit");
                    (m, cmds, false)
                };
                if counted {
                    metrics::gauge!(t::IN_FLIGHT).increment(1.0);
                }
                let mut entry = v.insert(Box::new(Entry {
                    machine,
                    acks: vec![ack],
                    reply_to: meta.reply_to.map(Box::new),
                    confirmed: false,
                    counted,
                    timer_at: None,
                    remove_at: None,
                }));
                if counted && self.settings.dispatched_events && !entry.machine.is_done() {
                    self.event(
                        "challenge.dispatched",
                        json::dispatched(&entry.machine, now),
                    );
                }
                self.apply(&id, &mut entry, cmds, now);
            }
        }
    }

    fn reject(
        self: &Arc<Self>,
        body: &[u8],
        meta: DeliveryMeta,
        ack: AckHandle,
        rej: Rejection,
        now: i64,
    ) {
        metrics::counter!(t::CHALLENGES_REJECTED, "reason" => rej.code).increment(1);
        tracing::warn!(challenge_id = ?rej.challenge_id, reason = %rej, "challenge rejected");
        // A rejected copy of a challenge we hold must not produce a second outcome.
        let outcome = rej
            .challenge_id
            .as_deref()
            .filter(|id| !self.table.contains_key(*id))
            .map(|id| {
                let kind = rej.kind.map(|k| k.as_str());
                let body = json::rejected_outcome(id, rej.user_id.as_deref(), kind, &rej.to_string(), now);
                let rk = json::routing_key(kind.unwrap_or("unknown"), OutcomeKind::Rejected);
                metrics::counter!(t::OUTCOMES, "kind" => kind.unwrap_or("unknown"), "outcome" => "rejected", "channel" => "none").increment(1);
                (rk, serde_json::to_vec(&body).unwrap_or_default())
            });
        let engine = self.clone();
        let body = body.to_vec();
        let reason = rej.to_string();
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let dead = engine
                .sink
                .dead_letter(engine.settings.challenges_queue.clone(), body, reason)
                .await;
            if let Some((rk, out)) = outcome {
                engine.sink.publish_outcome(rk, out, meta.reply_to).await;
            }
            // Should the dead-letter publish fail, the queue's own DLX still catches it.
            if dead {
                ack.ack();
            } else {
                ack.reject();
            }
            engine.settled_one();
        });
    }

    // ---- operations -----------------------------------------------------------

    /// Runs one operation and answers it (HTTP status + JSON body).
    pub fn operate(self: &Arc<Self>, id: &str, op: Op<'_>) -> Answer {
        if let Op::Otp { code } = op {
            if !otp::well_formed(code) {
                return Answer::error(422, "invalid_code", "code must be 6 digits");
            }
        }
        let now = now_ms();
        let Some(mut entry) = self.table.get_mut(id) else {
            return Answer::not_found();
        };
        let key: Arc<str> = entry.key().clone();
        let hash;
        let event = match op {
            Op::Decision {
                device_id,
                approve,
                signature,
                number,
            } => Event::Decision {
                device_id,
                approve,
                signature,
                number,
            },
            Op::Otp { code } => {
                hash = self.otp.hash(code, id, &entry.machine.spec.tx_digest());
                Event::OtpAttempt { hash }
            }
            Op::Sms => Event::SmsRequested,
            Op::Cancel => Event::Cancel,
        };
        let step = entry.machine.handle(now, event);
        let reply = step.reply.unwrap_or(Reply::None);
        if let Op::Otp { .. } = op {
            let result = match reply {
                Reply::Decided(_) => "ok",
                Reply::WrongCode { .. } => "wrong",
                Reply::Locked => "locked",
                Reply::CodeExpired => "expired",
                _ => "refused",
            };
            metrics::counter!(t::OTP_VERIFICATIONS, "result" => result).increment(1);
        }
        let sms = self.apply(&key, &mut entry, step.commands, now);
        match (reply, sms) {
            (Reply::SmsQueued, Some(Err(SmsBlock::Limit(r)))) => Answer::sms_refused(r),
            (Reply::SmsQueued, Some(Err(SmsBlock::NoGateway))) => {
                Answer::error(503, "sms_unavailable", "no SMS gateway is configured")
            }
            _ => json::answer(reply),
        }
    }

    /// Sets how other instances are reached (once).
    pub fn set_peers(&self, p: Arc<dyn peers::Peers>) {
        let _ = self.peers.set(p);
    }

    pub fn holds(&self, id: &str) -> bool {
        self.table.contains_key(id)
    }

    /// Runs an operation on a challenge wherever it is held: here, or at the instance
    /// that consumed it.
    pub async fn operate_anywhere(self: &Arc<Self>, id: &str, op: Op<'_>) -> Answer {
        self.route(id, op, false).await
    }

    /// A decision from a caller without a bearer token (the device itself): taken only
    /// when the device signs its decisions, wherever the challenge is held.
    pub async fn decide_signed_only(self: &Arc<Self>, id: &str, op: Op<'_>) -> Answer {
        self.route(id, op, true).await
    }

    fn unsigned_refused() -> Answer {
        Answer::error(
            401,
            "unauthorized",
            "missing or invalid bearer token (or device signature)",
        )
    }

    fn operate_checked(self: &Arc<Self>, id: &str, op: Op<'_>, signed_only: bool) -> Answer {
        if signed_only {
            let signs =
                matches!(op, Op::Decision { device_id, .. } if self.device_signs(id, device_id));
            if !signs && self.holds(id) {
                return Self::unsigned_refused();
            }
        }
        self.operate(id, op)
    }

    async fn route(self: &Arc<Self>, id: &str, op: Op<'_>, signed_only: bool) -> Answer {
        if self.holds(id) {
            return self.operate_checked(id, op, signed_only);
        }
        if let Some(p) = self.peers.get() {
            let mut body = requests::op_json(id, op);
            if signed_only {
                body["signed_only"] = true.into();
            }
            let req = peers::PeerRequest {
                challenge_id: id.to_string(),
                op: body,
                wait: Duration::ZERO,
            };
            if let Some(a) = p.ask(req).await {
                return a;
            }
        }
        // It may have arrived here meanwhile.
        self.operate_checked(id, op, signed_only)
    }

    /// The view of a challenge wherever it is held, waiting up to `wait` for a decision.
    pub async fn view_anywhere(&self, id: &str, wait: Duration) -> Option<serde_json::Value> {
        if self.holds(id) {
            return self.view_when_decided(id, wait).await;
        }
        let p = self.peers.get()?;
        let req = peers::PeerRequest {
            challenge_id: id.to_string(),
            op: serde_json::json!({"op": "view", "challenge_id": id, "wait_ms": wait.as_millis() as u64}),
            wait,
        };
        match p.ask(req).await {
            Some(a) if a.status == 200 => Some(a.body),
            _ => self.view(id),
        }
    }

    /// Shares what the per-user SMS limits count with the other instances, so a user's
    /// quota holds across them.
    fn tell_peers(self: &Arc<Self>, note: serde_json::Value) {
        if let Some(p) = self.peers.get() {
            let p = p.clone();
            tokio::spawn(async move { p.tell(note).await });
        }
    }

    /// Applies what another instance told (see [`Engine::tell_peers`]).
    pub fn apply_peer_note(&self, note: &serde_json::Value) {
        let Some(user) = note["user"]
            .as_str()
            .filter(|u| !u.is_empty() && u.len() <= 128)
        else {
            return;
        };
        match note["kind"].as_str() {
            Some("sms_sent") => {
                let at = note["at"].as_i64().unwrap_or_else(now_ms);
                self.sms_limits.record_remote(user, at.min(now_ms()));
            }
            Some("sms_confirmed") => self.sms_limits.confirmed(user),
            _ => {}
        }
    }

    /// Answers a peer's request if this instance holds the challenge.
    pub async fn answer_peer(self: &Arc<Self>, op: &serde_json::Value) -> Option<Answer> {
        let id = op.get("challenge_id")?.as_str()?;
        if !self.holds(id) {
            return None;
        }
        if op.get("op").and_then(|o| o.as_str()) == Some("view") {
            let wait = op
                .get("wait_ms")
                .and_then(|w| w.as_u64())
                .unwrap_or(0)
                .min(300_000);
            let v = self
                .view_when_decided(id, Duration::from_millis(wait))
                .await?;
            return Some(Answer::new(200, v));
        }
        let signed_only = op.get("signed_only").and_then(|v| v.as_bool()) == Some(true);
        let mut op = op.clone();
        if let Some(o) = op.as_object_mut() {
            o.remove("signed_only");
        }
        match requests::ResponseMessage::parse(op.to_string().as_bytes()) {
            Ok(m) => Some(self.operate_checked(m.challenge_id(), m.op(), signed_only)),
            Err(e) => Some(Answer::error(422, "invalid_body", &e)),
        }
    }

    /// True when `device_id` is bound to the challenge with a public key (its decisions
    /// are then signed and verified).
    pub fn device_signs(&self, id: &str, device_id: &str) -> bool {
        self.table.get(id).is_some_and(|e| {
            e.machine
                .spec
                .devices
                .iter()
                .any(|d| &*d.device_id == device_id && d.public_key.is_some())
        })
    }

    pub fn sink(&self) -> &Arc<dyn OutcomeSink> {
        &self.sink
    }

    /// The JSON view of a challenge, if held.
    pub fn view(&self, id: &str) -> Option<serde_json::Value> {
        self.table.get(id).map(|e| json::view(&e.machine))
    }

    /// Waits up to `wait` for the challenge to be decided, then returns its view.
    pub async fn view_when_decided(&self, id: &str, wait: Duration) -> Option<serde_json::Value> {
        let notify = {
            let e = self.table.get(id)?;
            if e.machine.is_done() {
                return Some(json::view(&e.machine));
            }
            let key = e.key().clone();
            drop(e);
            self.waiters.entry(key).or_default().clone()
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Re-check after registering so a decision in between is not missed.
        if !self.table.get(id).is_some_and(|e| e.machine.is_done()) {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        self.view(id)
    }

    // ---- command execution ----------------------------------------------------

    /// Carries out commands for one entry (its lock held by the caller). Returns what
    /// happened to an SMS request, if one was made.
    fn apply(
        self: &Arc<Self>,
        id: &Arc<str>,
        entry: &mut Entry,
        cmds: Vec<Command>,
        now: i64,
    ) -> Option<Result<(), SmsBlock>> {
        let mut queue = std::collections::VecDeque::from(cmds);
        let mut sms_result = None;
        let mut texts: Option<(Arc<str>, Arc<str>)> = None;
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Command::Push { device } => {
                    let (title, body) = texts
                        .get_or_insert_with(|| {
                            let s = &entry.machine.spec;
                            let (a, b) =
                                crate::texts::push_texts(&s.locale, s.kind, s.transaction.as_ref());
                            (a.into(), b.into())
                        })
                        .clone();
                    let content = PushContent::Challenge {
                        title,
                        body,
                        number_choices: entry.machine.number.map(|n| n.choices),
                    };
                    self.spawn_push(id, entry, device, content);
                }
                Command::Withdraw { device } => {
                    self.spawn_push(id, entry, device, PushContent::Withdraw)
                }
                Command::SendSms => {
                    let (r, more) = self.issue_sms(id, entry, now);
                    sms_result = Some(r);
                    queue.extend(more);
                }
                Command::TokenInvalid { device } => {
                    let d = &entry.machine.spec.devices[device];
                    tracing::info!(challenge_id = %id, device_id = %d.device_id, token = %crate::push::mask_token(&d.token), "device token invalid");
                    self.event(
                        "device.token_invalid",
                        json::token_invalid(&entry.machine.spec, device, now),
                    );
                }
                Command::PublishOutcome => self.publish_outcome(id, entry),
            }
        }
        self.arm(id, entry, now);
        sms_result
    }

    fn spawn_push(
        self: &Arc<Self>,
        id: &Arc<str>,
        entry: &Entry,
        device: usize,
        content: PushContent,
    ) {
        let d = &entry.machine.spec.devices[device];
        let provider = match d.platform {
            Platform::Apns => self.providers.apns.clone(),
            Platform::Fcm => self.providers.fcm.clone(),
            Platform::Hms => self.providers.hms.clone(),
        };
        let Some(provider) = provider else { return };
        let withdraw = matches!(content, PushContent::Withdraw);
        let msg = PushMessage {
            challenge_id: id.clone(),
            kind: entry.machine.spec.kind,
            device_id: d.device_id.clone(),
            token: d.token.clone(),
            content,
            expires_at_ms: entry.machine.spec.expires_at_ms(),
        };
        let engine = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let result = provider.send(msg).await;
            if !withdraw {
                engine.on_push_result(&id, device, result);
            }
        });
    }

    fn on_push_result(self: &Arc<Self>, id: &Arc<str>, device: usize, result: PushResult) {
        let now = now_ms();
        if let Some(mut entry) = self.table.get_mut(id) {
            let step = entry
                .machine
                .handle(now, Event::PushResult { device, result });
            self.apply(id, &mut entry, step.commands, now);
        }
    }

    /// Issues a code and hands the SMS to the gateway, unless a limit or the missing
    /// gateway stops it; either way the machine learns what happened.
    fn issue_sms(
        self: &Arc<Self>,
        id: &Arc<str>,
        entry: &mut Entry,
        now: i64,
    ) -> (Result<(), SmsBlock>, Vec<Command>) {
        let spec = &entry.machine.spec;
        let Some(sms) = spec.sms.as_ref() else {
            return (Err(SmsBlock::NoGateway), Vec::new());
        };
        let refused = |engine: &Arc<Self>, entry: &mut Entry, why: &str| {
            engine.event(
                "sms.failed",
                json::sms_event(&entry.machine.spec, false, Some(why), now),
            );
            metrics::counter!(t::SMS, "result" => "refused").increment(1);
            entry.machine.handle(now, Event::SmsUnavailable).commands
        };
        let Some(gateway) = self.providers.sms.clone() else {
            let cmds = refused(self, entry, "sms_not_configured");
            return (Err(SmsBlock::NoGateway), cmds);
        };
        if let Err(r) = self.sms_limits.try_send(&spec.user_id, &sms.phone, now) {
            t::record_rate_limited(r.label());
            tracing::info!(challenge_id = %id, limit = r.label(), "SMS refused by limit");
            let cmds = refused(self, entry, r.label());
            return (Err(SmsBlock::Limit(r)), cmds);
        }
        self.tell_peers(serde_json::json!({"kind": "sms_sent", "user": &*spec.user_id, "at": now}));
        let code = otp::generate_code();
        let hash = self.otp.hash(&code, id, &spec.tx_digest());
        let msg = SmsMessage {
            to: sms.phone.to_string(),
            text: crate::texts::sms_text(&spec.locale, spec.kind, spec.transaction.as_ref(), &code),
            reference: id.to_string(),
        };
        let valid_for =
            Duration::from_millis(OTP_VALIDITY_MS.min(spec.expires_at_ms() - now).max(0) as u64);
        let cmds = entry
            .machine
            .handle(now, Event::SmsIssued { hash })
            .commands;
        let engine = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let r = crate::sms::deliver(&*gateway, &msg, valid_for).await;
            engine.on_sms_result(&id, r);
        });
        (Ok(()), cmds)
    }

    fn on_sms_result(self: &Arc<Self>, id: &Arc<str>, r: Result<(), crate::sms::SmsError>) {
        let now = now_ms();
        let delivered = r.is_ok();
        metrics::counter!(t::SMS, "result" => if delivered { "sent" } else { "failed" })
            .increment(1);
        let Some(mut entry) = self.table.get_mut(id) else {
            return;
        };
        let reason = r.err().map(|e| e.to_string());
        if let Some(reason) = &reason {
            tracing::warn!(challenge_id = %id, %reason, "SMS failed");
        }
        self.event(
            if delivered { "sms.sent" } else { "sms.failed" },
            json::sms_event(&entry.machine.spec, delivered, reason.as_deref(), now),
        );
        let step = entry.machine.handle(now, Event::SmsResult { delivered });
        self.apply(id, &mut entry, step.commands, now);
    }

    fn publish_outcome(self: &Arc<Self>, id: &Arc<str>, entry: &mut Entry) {
        let m = &entry.machine;
        let Some(o) = m.outcome.as_ref() else { return };
        let kind = m.spec.kind.as_str();
        let channel = o.channel.map(|c| c.as_str()).unwrap_or("none");
        metrics::counter!(t::OUTCOMES, "kind" => kind, "outcome" => o.kind.as_str(), "channel" => channel).increment(1);
        if let Some(ch) = o.channel {
            let secs = (o.decided_at_ms - m.dispatched_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(t::DECISION_LATENCY, "channel" => ch.as_str()).record(secs);
        }
        if entry.counted {
            metrics::gauge!(t::IN_FLIGHT).decrement(1.0);
        }
        if o.kind == OutcomeKind::Approved
            && o.channel == Some(crate::challenge::model::Channel::Sms)
        {
            self.sms_limits.confirmed(&m.spec.user_id);
            self.tell_peers(serde_json::json!({"kind": "sms_confirmed", "user": &*m.spec.user_id}));
        }
        // Debug, not info: the outcome event on RabbitMQ is the audit trail, and a line per
        // challenge at tens of thousands per second is a cost of its own.
        tracing::debug!(challenge_id = %id, outcome = o.kind.as_str(), channel, "challenge decided");
        let rk = json::routing_key(kind, o.kind);
        let body = serde_json::to_vec(&json::outcome(m)).unwrap_or_default();
        let reply = entry.reply_to.as_deref().cloned();
        if let Some((_, n)) = self.waiters.remove(id) {
            n.notify_waiters();
        }
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        let engine = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let confirmed = engine.sink.publish_outcome(rk, body, reply).await;
            if confirmed {
                engine.on_confirmed(&id);
            }
            engine.settled_one();
        });
    }

    fn on_confirmed(self: &Arc<Self>, id: &Arc<str>) {
        let now = now_ms();
        if let Some(mut e) = self.table.get_mut(id) {
            e.confirmed = true;
            for a in e.acks.drain(..) {
                a.ack();
            }
            let at = now + self.settings.retain_ms;
            e.remove_at = Some(at);
            self.timers.arm(id, at);
        }
    }

    fn settled_one(&self) {
        self.unsettled.fetch_sub(1, Ordering::SeqCst);
        self.settled_notify.notify_waiters();
    }

    fn event(self: &Arc<Self>, routing_key: &'static str, body: serde_json::Value) {
        let engine = self.clone();
        let body = serde_json::to_vec(&body).unwrap_or_default();
        tokio::spawn(async move {
            engine.sink.publish_event(routing_key, body).await;
        });
    }

    // ---- time -----------------------------------------------------------------

    fn arm(&self, id: &Arc<str>, entry: &mut Entry, now: i64) {
        if let Some(at) = entry.machine.next_deadline() {
            if entry.timer_at.is_none_or(|t| at < t || t <= now) {
                entry.timer_at = Some(at);
                self.timers.arm(id, at);
            }
        }
    }

    fn tick(self: &Arc<Self>, id: &Arc<str>, now: i64) {
        let remove = {
            let Some(mut entry) = self.table.get_mut(id) else {
                return;
            };
            if entry.timer_at.is_some_and(|t| t <= now) {
                entry.timer_at = None;
            }
            if entry.machine.is_done() {
                entry.confirmed && entry.remove_at.is_some_and(|t| t <= now)
            } else {
                let step = entry.machine.handle(now, Event::Tick);
                self.apply(id, &mut entry, step.commands, now);
                false
            }
        };
        if remove {
            self.table.remove_if(id, |_, e| e.confirmed);
        }
    }

    /// Serves the timers until `stop` resolves.
    pub async fn run_timers(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut due = Vec::new();
        loop {
            let now = now_ms();
            due.clear();
            let next = self.timers.due(now, &mut due);
            for id in &due {
                self.tick(id, now);
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
                    let users = self.limiter.prune();
                    self.sms_limits.prune(now_ms());
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

/// Why an SMS did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsBlock {
    Limit(SmsRefusal),
    NoGateway,
}

/// A two-digit number and two distinct decoys, shuffled.
fn random_number_match() -> NumberMatch {
    let mut rng = rand::thread_rng();
    let number: u8 = rng.gen_range(10..100);
    let mut choices = [number, 0, 0];
    let mut i = 1;
    while i < 3 {
        let c: u8 = rng.gen_range(10..100);
        if !choices[..i].contains(&c) {
            choices[i] = c;
            i += 1;
        }
    }
    choices.shuffle(&mut rng);
    NumberMatch { number, choices }
}
