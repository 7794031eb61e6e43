//! The sans-io engine core: the table of challenges and every rule that spans more than
//! one state machine — duplicates, settlement, retention, limits, peers' counts. Like
//! quinn-proto's `Endpoint`, it does no I/O: each call takes `now` (Unix ms) and returns
//! an answer plus the [`Effect`]s the driver must carry out (push, withdraw, send an SMS,
//! publish, settle deliveries, arm a timer, wake waiters, tell peers, count). It never
//! reads the clock, never spawns, and draws random numbers only through the injected
//! [`Entropy`]. The ack token of a delivery is the type parameter `A`: the core only
//! hands tokens back in [`Effect::Settle`] once an outcome is confirmed.
//!
//! A table entry is locked only for the synchronous work of one call (dashmap shards),
//! so calls for different challenges run in parallel.

use crate::challenge::machine::{Challenge, Command, Event, NumberMatch, PushResult, Reply};
use crate::challenge::model::{
    parse_challenge, AppName, ChallengeSpec, Channel, Kind, OutcomeKind, Platform, Rejection,
};
use crate::challenge::otp::{OtpHasher, OTP_VALIDITY_MS};
use crate::config::Config;
use crate::limits::UserLimiter;
use crate::push::{PushContent, PushExtra, PushMessage};
use crate::sms::abuse::SmsLimits;
use crate::sms::SmsMessage;
use crate::wire::control::PeerNote;
use crate::wire::messages::{
    routing_key, to_bytes, EventMessage, OutcomeMessage, PendingChallenge, PendingList, View,
};
use crate::wire::ops::{Authority, OpOutcome, Operation};
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;

use super::fatigue::{Fatigue, Gate};
use super::pending_index::PendingIndex;
use super::sink::ReplyTo;
use crate::challenge::machine::Progress;
use crate::cluster::Part;

/// Where the core gets its random numbers (number matching, one-time codes).
pub trait Entropy: Send + Sync + 'static {
    /// A two-digit number and two distinct decoys, shuffled.
    fn number_match(&self) -> NumberMatch;
    /// A fresh 6-digit one-time code.
    fn otp_code(&self) -> String;
    /// A fresh 8-digit operation id for offline confirmation (below 10^8).
    fn operation_id(&self) -> u32 {
        use rand::Rng;
        rand::rngs::OsRng.gen_range(0..100_000_000)
    }
}

/// The operating system's randomness (OTP codes from the OS CSPRNG).
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn number_match(&self) -> NumberMatch {
        use rand::seq::SliceRandom;
        use rand::Rng;
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
    fn otp_code(&self) -> String {
        crate::challenge::otp::generate_code()
    }
}

/// AMQP properties of a challenge delivery the engine cares about.
#[derive(Debug, Default, Clone)]
pub struct DeliveryMeta {
    pub reply_to: Option<ReplyTo>,
    pub redelivered: bool,
    /// The partition (and claim) it was consumed from, in cluster mode.
    pub part: Option<Part>,
    /// The progress handed over by the partition's previous owner (already verified).
    pub resume: Option<Progress>,
}

/// An undecided challenge taken out of the table to be handed to the next owner of its
/// partition: its original body and properties, its progress, its deliveries.
#[derive(Debug)]
pub struct HandedOver<A> {
    pub id: Arc<str>,
    pub raw: Box<[u8]>,
    pub reply_to: Option<ReplyTo>,
    pub progress: Progress,
    pub acks: Vec<A>,
}

/// What the core needs to know of the configuration and the providers.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_fallback_s: u64,
    pub retain_ms: i64,
    pub max_skew_ms: i64,
    pub dispatched_events: bool,
    /// Cluster mode: one owner per user, so SMS limits are local (no notes to peers).
    pub cluster: bool,
    /// Which transports are configured (for the default app).
    pub reach: Reach,
    /// A new challenge supersedes the user's pending one.
    pub one_pending_per_user: bool,
    /// The named apps (CONTRACT §10 `app`) and which of their transports are
    /// configured; a challenge for an app not here (nor the default) is refused
    /// `unknown_app`.
    pub apps: Vec<(AppName, AppReach)>,
}

/// Which of a named app's push transports are configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppReach {
    pub apns: bool,
    pub fcm: bool,
    pub hms: bool,
}

impl AppReach {
    pub fn has(self, p: Platform) -> bool {
        match p {
            Platform::Apns => self.apns,
            Platform::Fcm => self.fcm,
            Platform::Hms => self.hms,
        }
    }
}

/// Which transports are configured; a device on a missing one counts as unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reach {
    pub apns: bool,
    pub fcm: bool,
    pub hms: bool,
    pub sms_gateway: bool,
}

impl Settings {
    pub fn from_config(cfg: &Config, reach: Reach) -> Settings {
        Settings {
            default_fallback_s: cfg.challenge.default_fallback_after_seconds,
            retain_ms: cfg.challenge.retain_completed_seconds as i64 * 1000,
            max_skew_ms: cfg.challenge.max_clock_skew_seconds as i64 * 1000,
            dispatched_events: cfg.amqp.dispatched_events,
            cluster: cfg.cluster.enabled,
            reach,
            apps: Vec::new(),
            one_pending_per_user: cfg.limits.one_pending_per_user,
        }
    }

    /// The configured name of `app` (sharing its allocation) and its transports; `None`
    /// for an app that is not configured.
    fn app(&self, app: &AppName) -> Option<(AppName, AppReach)> {
        if app.is_default() {
            let r = self.reach;
            return Some((
                AppName::default(),
                AppReach {
                    apns: r.apns,
                    fcm: r.fcm,
                    hms: r.hms,
                },
            ));
        }
        self.apps.iter().find(|(n, _)| n == app).cloned()
    }

    fn reachable(&self, app: &AppName, p: Platform) -> bool {
        self.app(app).is_some_and(|(_, r)| r.has(p))
    }
}

/// What to count; the driver turns these into metrics (CONTRACT's names).
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    Received {
        kind: &'static str,
    },
    Rejected {
        reason: &'static str,
    },
    Outcome {
        kind: &'static str,
        outcome: &'static str,
        channel: &'static str,
        /// Seconds from dispatch to a user's decision.
        latency_s: Option<f64>,
    },
    /// `sca_challenges_in_flight` up (`true`) or down.
    InFlight(bool),
    RateLimited(&'static str),
    Otp(&'static str),
    Sms(&'static str),
    /// An offline code check, by result.
    Offline(&'static str),
    FraudReported,
}

/// Work for the driver. `A` is the ack token of a delivery.
#[derive(Debug)]
pub enum Effect<A> {
    /// Send a challenge push; its result comes back through [`Core::push_result`].
    Push {
        device: usize,
        platform: Platform,
        msg: PushMessage,
    },
    /// Withdraw a push (one attempt, no result).
    Withdraw {
        platform: Platform,
        msg: PushMessage,
    },
    /// Send SMS number `seq` of the challenge; the result comes back through
    /// [`Core::sms_result`].
    SendSms {
        id: Arc<str>,
        seq: u8,
        msg: SmsMessage,
        valid_for: Duration,
    },
    /// Publish an outcome (confirmed), then call [`Core::confirmed`].
    PublishOutcome {
        id: Arc<str>,
        routing_key: String,
        body: Vec<u8>,
        reply: Option<ReplyTo>,
        /// The claim the challenge was taken under: once it is lost, stop trying.
        part: Option<Part>,
    },
    PublishEvent {
        routing_key: &'static str,
        body: Vec<u8>,
    },
    /// A refused delivery: dead-letter `body` with `reason`, publish `outcome` (if any),
    /// then ack the delivery (reject it should the dead letter fail).
    DeadLetter {
        body: Vec<u8>,
        reason: String,
        outcome: Option<(String, Vec<u8>)>,
        /// The id retained as a `rejected` record: once `outcome` is confirmed, call
        /// [`Core::confirmed`] for it (which starts its retention).
        retained: Option<Arc<str>>,
        reply: Option<ReplyTo>,
        ack: A,
    },
    /// Ack these deliveries: their challenge's outcome is confirmed.
    Settle(Vec<A>),
    /// Call [`Core::tick`] for `id` at `at` (Unix ms).
    ArmTimer {
        id: Arc<str>,
        at: i64,
    },
    /// The challenge is decided: wake whoever waits for it.
    WakeWaiters(Arc<str>),
    TellPeers(PeerNote),
    Count(Metric),
}

struct Entry<A> {
    machine: Challenge,
    /// Deliveries of this challenge id awaiting the outcome's confirm (usually one).
    acks: Vec<A>,
    reply_to: Option<Box<ReplyTo>>,
    /// The outcome is confirmed by the broker and the deliveries are settled.
    confirmed: bool,
    /// Counted in `sca_challenges_in_flight`.
    counted: bool,
    timer_at: Option<i64>,
    remove_at: Option<i64>,
    /// The partition claim it came under (cluster mode).
    part: Option<Part>,
    /// The delivery's body while undecided in cluster mode, to hand it over.
    raw: Option<Box<[u8]>>,
}

/// Why an SMS did not go out.
enum SmsBlock {
    Limit(&'static str),
    NoGateway,
}

/// The sans-io core.
pub struct Core<A> {
    settings: Settings,
    /// Boxed entries: the map's slack (it grows by doubling) then costs a pointer per
    /// slot instead of a whole entry.
    table: DashMap<Arc<str>, Box<Entry<A>>>,
    limiter: UserLimiter,
    sms_limits: SmsLimits,
    otp: OtpHasher,
    entropy: Box<dyn Entropy>,
    /// Fraud mutes and the unanswered-push backoff, per user.
    fatigue: Fatigue,
    /// Undecided challenges by device and by user.
    pending_index: PendingIndex,
}

/// Effects of one call.
pub type Effects<A> = Vec<Effect<A>>;

/// Room for what an intake or a decision yields (a push per device, the timer, the
/// counts; the withdrawals, the outcome, the wake-up): allocated once, not grown step
/// by step.
const EFFECTS_PER_CALL: usize = 8;

impl<A> Core<A> {
    pub fn new(cfg: &Config, settings: Settings, entropy: Box<dyn Entropy>) -> Core<A> {
        let pending_index = PendingIndex::new(settings.one_pending_per_user);
        Core {
            settings,
            table: DashMap::new(),
            limiter: UserLimiter::new(&cfg.limits),
            sms_limits: SmsLimits::new(&cfg.sms),
            // In cluster mode a code must verify on whichever instance owns the
            // partition next: without a configured key, one derived from the cluster's.
            otp: if cfg.cluster.enabled && cfg.sms.otp_key.is_empty() {
                OtpHasher::new(crate::cluster::Seal::new(&cfg.cluster.secret).derive("otp"))
            } else {
                OtpHasher::from_config(&cfg.sms.otp_key)
            },
            entropy,
            fatigue: Fatigue::new(cfg),
            pending_index,
        }
    }

    /// Challenges held in memory (pending or retained after their outcome).
    pub fn held(&self) -> usize {
        self.table.len()
    }

    /// Pending (undecided) challenges.
    pub fn pending(&self) -> usize {
        self.table.iter().filter(|e| !e.machine.is_done()).count()
    }

    pub fn holds(&self, id: &str) -> bool {
        self.table.contains_key(id)
    }

    /// `Some(true)` once decided, `None` when not held.
    pub fn is_decided(&self, id: &str) -> Option<bool> {
        self.table.get(id).map(|e| e.machine.is_done())
    }

    /// The view of a challenge, if held.
    pub fn view(&self, id: &str) -> Option<View> {
        self.table.get(id).map(|e| View::of(&e.machine))
    }

    // ---- intake ---------------------------------------------------------------

    /// Takes one delivery from the challenges queue.
    pub fn intake(&self, now: i64, body: &[u8], meta: DeliveryMeta, ack: A) -> Effects<A> {
        let mut fx = Effects::with_capacity(EFFECTS_PER_CALL);
        let mut spec = match parse_challenge(body, now, self.settings.max_skew_ms) {
            Ok(s) => s,
            Err(rej) => {
                self.reject(now, body, meta, ack, rej, &mut fx);
                return fx;
            }
        };
        let Some((app, reach)) = self.settings.app(&spec.app) else {
            let rej = unknown_app(&spec);
            self.reject(now, body, meta, ack, rej, &mut fx);
            return fx;
        };
        // The configured name: one allocation per app, not per challenge.
        spec.app = app;
        fx.push(Effect::Count(Metric::Received {
            kind: spec.kind.as_str(),
        }));
        let id: Arc<str> = Arc::from(&*spec.challenge_id);
        let mut supersede: Option<Box<str>> = None;
        match self.table.entry(id.clone()) {
            MapEntry::Occupied(mut e) => {
                // A duplicate or a redelivery of a challenge we hold: never a second one.
                let entry = e.get_mut();
                tracing::debug!(challenge_id = %id, redelivered = meta.redelivered, "duplicate challenge");
                if entry.confirmed {
                    fx.push(Effect::Settle(vec![ack]));
                } else {
                    entry.acks.push(ack);
                }
            }
            MapEntry::Vacant(v) => {
                let raw = meta.part.map(|_| Box::<[u8]>::from(body));
                // A challenge handed over was counted, and passed its gates, at its first
                // owner: it resumes where it was, never pushed again.
                let resumed = meta
                    .resume
                    .and_then(|p| Challenge::resume(spec.clone(), p, now));
                let resuming = resumed.is_some();
                let allowed = resuming || self.limiter.check(&spec.user_id);
                let gate = if allowed && !resuming {
                    self.fatigue.gate(&spec.user_id, now)
                } else {
                    Gate::Open
                };
                let offline = spec.offline;
                let (mut machine, cmds) = if let Some(r) = resumed {
                    tracing::debug!(challenge_id = %id, "challenge resumed from its previous owner");
                    r
                } else if !allowed {
                    fx.push(Effect::Count(Metric::RateLimited("user_challenges")));
                    Challenge::refused(spec, now, OutcomeKind::RateLimited, "user_rate_limit")
                } else if let Some(reason) = gate.reason() {
                    // Muted or inside the backoff: SMS at once, else `rate_limited`.
                    fx.push(Effect::Count(Metric::RateLimited(reason)));
                    tracing::info!(challenge_id = %id, reason, "push held back");
                    Challenge::held_back(spec, now, reason)
                } else {
                    let reachable: Vec<bool> =
                        spec.devices.iter().map(|d| reach.has(d.platform)).collect();
                    let number = spec.number_match.then(|| self.entropy.number_match());
                    Challenge::start(
                        spec,
                        now,
                        &reachable,
                        self.settings.default_fallback_s,
                        number,
                    )
                };
                // Refused at once (rate limit, or held back with no phone): not in flight.
                let counted = allowed && !(gate != Gate::Open && machine.is_done());
                if counted {
                    fx.push(Effect::Count(Metric::InFlight(true)));
                    // A resumed challenge keeps the operation id its first owner gave it.
                    if offline && !machine.is_done() && machine.operation_id.is_none() {
                        machine.operation_id = Some(self.entropy.operation_id());
                    }
                }
                let mut entry = v.insert(Box::new(Entry {
                    machine,
                    acks: vec![ack],
                    reply_to: meta.reply_to.map(Box::new),
                    confirmed: false,
                    counted,
                    timer_at: None,
                    remove_at: None,
                    part: meta.part,
                    raw,
                }));
                if counted
                    && !resuming
                    && self.settings.dispatched_events
                    && !entry.machine.is_done()
                {
                    let e = EventMessage::dispatched(&entry.machine, now);
                    fx.push(event(&e));
                }
                self.apply(&id, &mut entry, cmds, now, &mut fx);
                if !entry.machine.is_done() {
                    let s = &entry.machine.spec;
                    let devices = s.devices.iter().map(|d| &d.device_id);
                    self.pending_index.add(&id, &s.user_id, devices);
                    // A resumed challenge superseded the older ones at its first owner.
                    if self.settings.one_pending_per_user && !resuming {
                        supersede = Some(s.user_id.clone());
                    }
                }
            }
        }
        // Outside the new entry's lock: another entry of the same shard may be locked.
        if let Some(user) = supersede {
            self.supersede(now, &id, &user, &mut fx);
        }
        fx
    }

    /// Cancels the user's other pending challenges (`superseded`).
    fn supersede(&self, now: i64, newer: &Arc<str>, user: &str, fx: &mut Effects<A>) {
        for old in self.pending_index.for_user(user) {
            if old == *newer {
                continue;
            }
            let Some(mut entry) = self.table.get_mut(&old) else {
                continue;
            };
            if &*entry.machine.spec.user_id != user {
                continue;
            }
            let step = entry.machine.handle(now, Event::Supersede);
            self.apply(&old, &mut entry, step.commands, now, fx);
        }
    }

    fn reject(
        &self,
        now: i64,
        body: &[u8],
        meta: DeliveryMeta,
        ack: A,
        rej: Rejection,
        fx: &mut Effects<A>,
    ) {
        fx.push(Effect::Count(Metric::Rejected { reason: rej.code }));
        tracing::warn!(challenge_id = ?rej.challenge_id, reason = %rej, "challenge rejected");
        let reason = rej.to_string();
        // A rejected copy of a challenge we hold must not produce a second outcome; a
        // readable id not held yet is retained as a compact `rejected` record, so that
        // later copies (valid or not) are duplicates of a finished challenge.
        let mut retained = None;
        if let Some(id) = rej.challenge_id.as_deref() {
            if let MapEntry::Vacant(v) = self.table.entry(Arc::from(id)) {
                let key = v.key().clone();
                let spec = ChallengeSpec {
                    challenge_id: id.into(),
                    user_id: rej.user_id.as_deref().unwrap_or_default().into(),
                    kind: rej.kind.unwrap_or(Kind::Other),
                    created_at_ms: now,
                    ttl_seconds: rej.ttl_seconds.unwrap_or(0),
                    locale: Box::default(),
                    transaction: None,
                    devices: Vec::new(),
                    sms: None,
                    number_match: false,
                    app: AppName::default(),
                    user_label: None,
                    context: None,
                    offline: false,
                };
                // The record's outcome message is the one below (it names the reason and
                // leaves an unknown kind out), so the machine's commands are not needed.
                let (mut machine, _) =
                    Challenge::refused(spec, now, OutcomeKind::Rejected, rej.code);
                machine.compact();
                v.insert(Box::new(Entry {
                    machine,
                    acks: Vec::new(),
                    reply_to: None,
                    confirmed: false,
                    counted: false,
                    timer_at: None,
                    remove_at: None,
                    part: meta.part,
                    raw: None,
                }));
                retained = Some(key);
            }
        }
        let outcome = retained.as_deref().map(|id| {
            let o =
                OutcomeMessage::rejected(id, rej.user_id.as_deref(), rej.kind, reason.clone(), now);
            fx.push(Effect::Count(Metric::Outcome {
                kind: rej.kind.map(|k| k.as_str()).unwrap_or("unknown"),
                outcome: OutcomeKind::Rejected.as_str(),
                channel: "none",
                latency_s: None,
            }));
            (routing_key(rej.kind, OutcomeKind::Rejected), to_bytes(&o))
        });
        fx.push(Effect::DeadLetter {
            body: body.to_vec(),
            reason,
            outcome,
            retained,
            reply: meta.reply_to,
            ack,
        });
    }

    // ---- operations -----------------------------------------------------------

    /// Runs one operation on a challenge held here.
    pub fn operate(
        &self,
        now: i64,
        id: &str,
        op: &Operation,
        authority: Authority,
    ) -> (OpOutcome, Effects<A>) {
        let mut fx = Effects::with_capacity(EFFECTS_PER_CALL);
        let Some(mut entry) = self.table.get_mut(id) else {
            return (OpOutcome::NotFound, fx);
        };
        // Without a token only a device that signs its decisions is heard; checked under
        // the same lock as the decision itself.
        if authority == Authority::DeviceSignature && !device_signs(&entry.machine, op) {
            return (OpOutcome::Unauthorized, fx);
        }
        let key: Arc<str> = entry.key().clone();
        let hash;
        let event = match op {
            Operation::Decision(d) if d.report_fraud => Event::ReportFraud {
                device_id: d.device_id.as_str(),
                signature: d.signature.as_deref(),
            },
            Operation::Decision(d) => Event::Decision {
                device_id: d.device_id.as_str(),
                approve: d.decision.approves(),
                signature: d.signature.as_deref(),
                number: d.number,
            },
            Operation::Otp { code } => {
                hash = self
                    .otp
                    .hash(code.expose(), id, &entry.machine.spec.tx_digest());
                Event::OtpAttempt { hash }
            }
            Operation::Sms => Event::SmsRequested,
            Operation::Cancel => Event::Cancel,
            Operation::Offline { code } => Event::OfflineAttempt { code: code.value() },
        };
        let step = entry.machine.handle(now, event);
        if let Operation::Otp { .. } | Operation::Offline { .. } = op {
            let result = match step.reply {
                Reply::Decided(_) => "ok",
                Reply::WrongCode { .. } => "wrong",
                Reply::Locked => "locked",
                Reply::CodeExpired => "expired",
                _ => "refused",
            };
            fx.push(Effect::Count(if let Operation::Otp { .. } = op {
                Metric::Otp(result)
            } else {
                Metric::Offline(result)
            }));
        }
        let sms = self.apply(&key, &mut entry, step.commands, now, &mut fx);
        let outcome = match (step.reply, sms) {
            (Reply::SmsQueued, Some(Err(SmsBlock::Limit(limit)))) => OpOutcome::SmsLimit {
                limit: limit.to_string(),
            },
            (Reply::SmsQueued, Some(Err(SmsBlock::NoGateway))) => OpOutcome::SmsUnavailable,
            (reply, _) => op_outcome(reply),
        };
        (outcome, fx)
    }

    /// A push's result, after the provider's own retries.
    pub fn push_result(&self, now: i64, id: &str, device: usize, result: PushResult) -> Effects<A> {
        let mut fx = Effects::new();
        if let Some(mut entry) = self.table.get_mut(id) {
            let key = entry.key().clone();
            let step = entry
                .machine
                .handle(now, Event::PushResult { device, result });
            self.apply(&key, &mut entry, step.commands, now, &mut fx);
            if entry.confirmed && !entry.machine.push_in_flight() {
                entry.machine.compact();
            }
        }
        fx
    }

    /// What became of SMS number `seq`; `Err` holds the gateway's reason.
    pub fn sms_result(&self, now: i64, id: &str, seq: u8, r: Result<(), String>) -> Effects<A> {
        let delivered = r.is_ok();
        let mut fx = vec![Effect::Count(Metric::Sms(if delivered {
            "sent"
        } else {
            "failed"
        }))];
        let Some(mut entry) = self.table.get_mut(id) else {
            return fx;
        };
        let key = entry.key().clone();
        let reason = r.err();
        if let Some(reason) = &reason {
            tracing::warn!(challenge_id = %id, %reason, "SMS failed");
        }
        let e = EventMessage::sms(&entry.machine.spec, delivered, reason.as_deref(), now);
        fx.push(event(&e));
        let step = entry
            .machine
            .handle(now, Event::SmsResult { seq, delivered });
        self.apply(&key, &mut entry, step.commands, now, &mut fx);
        fx
    }

    /// The broker confirmed the outcome: settle the deliveries and retain the entry
    /// until its expiry and `retain_completed_seconds` after now, whichever is later
    /// (a copy published again meanwhile is a duplicate, not a new challenge).
    pub fn confirmed(&self, now: i64, id: &str) -> Effects<A> {
        let mut fx = Effects::new();
        if let Some(mut e) = self.table.get_mut(id) {
            let key = e.key().clone();
            e.confirmed = true;
            let acks = std::mem::take(&mut e.acks);
            if !acks.is_empty() {
                fx.push(Effect::Settle(acks));
            }
            // What is kept from now on is a compact record; a push still in flight may
            // yet report a gone token (with the token masked in the event), so wait for it.
            if !e.machine.push_in_flight() {
                e.machine.compact();
            }
            let at = (now + self.settings.retain_ms).max(e.machine.spec.expires_at_ms());
            e.remove_at = Some(at);
            fx.push(Effect::ArmTimer { id: key, at });
        }
        fx
    }

    /// A timer armed for `id` is due: expiry, fallback, or the end of retention.
    pub fn tick(&self, now: i64, id: &str) -> Effects<A> {
        let mut fx = Effects::new();
        let remove = {
            let Some(mut entry) = self.table.get_mut(id) else {
                return fx;
            };
            let key = entry.key().clone();
            if entry.timer_at.is_some_and(|t| t <= now) {
                entry.timer_at = None;
            }
            if entry.machine.is_done() {
                entry.confirmed && entry.remove_at.is_some_and(|t| t <= now)
            } else {
                let step = entry.machine.handle(now, Event::Tick);
                self.apply(&key, &mut entry, step.commands, now, &mut fx);
                false
            }
        };
        if remove {
            self.table.remove_if(id, |_, e| e.confirmed);
        }
        fx
    }

    /// Applies what another instance told. In cluster mode nothing is: a user's SMS
    /// limits live with the one owner of the user's partition.
    pub fn peer_note(&self, now: i64, note: &PeerNote) {
        if self.settings.cluster {
            return;
        }
        let Some(user) = note.user() else { return };
        match note {
            PeerNote::SmsSent { at, .. } => self.sms_limits.record_remote(user, (*at).min(now)),
            PeerNote::SmsConfirmed { .. } => self.sms_limits.confirmed(user),
        }
    }

    // ---- partitions (cluster mode) ---------------------------------------------

    /// The claim on partition `index` is lost (fencing): every challenge of it not yet
    /// settled leaves the table at once, so nothing more is pushed, sent or published
    /// for it here. Their deliveries went back to the queue with the claim; the next
    /// owner dispatches them. Returns the effects (gauges, waiters) and how many left.
    pub fn drop_partition(&self, index: u16) -> (Effects<A>, usize) {
        let mut fx = Effects::new();
        let mut gone = 0;
        self.table.retain(|id, e| {
            let drop = e.part.is_some_and(|p| p.index == index) && !e.confirmed;
            if drop {
                gone += 1;
                if !e.machine.is_done() {
                    if e.counted {
                        fx.push(Effect::Count(Metric::InFlight(false)));
                    }
                    self.unindex(id, &e.machine);
                }
                fx.push(Effect::WakeWaiters(id.clone()));
            }
            !drop
        });
        (fx, gone)
    }

    /// Takes every undecided challenge of partition `index` out of the table, with what
    /// the next owner needs to resume it. Decided ones stay until their outcome is
    /// confirmed ([`Core::unsettled_in`]).
    pub fn extract_partition(&self, index: u16) -> (Vec<HandedOver<A>>, Effects<A>) {
        let ids: Vec<Arc<str>> = self
            .table
            .iter()
            .filter(|e| e.part.is_some_and(|p| p.index == index) && !e.machine.is_done())
            .map(|e| e.key().clone())
            .collect();
        let mut out = Vec::new();
        let mut fx = Effects::new();
        for id in ids {
            let Some((id, e)) = self.table.remove_if(&id, |_, e| !e.machine.is_done()) else {
                continue;
            };
            let e = *e;
            if e.counted {
                fx.push(Effect::Count(Metric::InFlight(false)));
            }
            self.unindex(&id, &e.machine);
            fx.push(Effect::WakeWaiters(id.clone()));
            let (Some(raw), Some(progress)) = (e.raw, e.machine.progress()) else {
                continue;
            };
            out.push(HandedOver {
                id,
                raw,
                reply_to: e.reply_to.map(|r| *r),
                progress,
                acks: e.acks,
            });
        }
        (out, fx)
    }

    /// Removes an undecided challenge leaving the table from the pending index.
    fn unindex(&self, id: &str, m: &Challenge) {
        let devices = m.spec.devices.iter().map(|d| &*d.device_id);
        self.pending_index.remove(id, &m.spec.user_id, devices);
    }

    /// Challenges of partition `index` decided but not yet confirmed.
    pub fn unsettled_in(&self, index: u16) -> usize {
        self.table
            .iter()
            .filter(|e| {
                e.part.is_some_and(|p| p.index == index) && e.machine.is_done() && !e.confirmed
            })
            .count()
    }

    /// Prunes limiter state; returns the users the challenge limiter still tracks.
    pub fn prune(&self, now: i64) -> usize {
        let users = self.limiter.prune();
        self.sms_limits.prune(now);
        self.fatigue.prune(now);
        users
    }

    /// The undecided challenges bound to a device (CONTRACT §10), read from the index.
    /// With [`DeviceAuth::Signed`] the timestamp must be within ±60 s of `now` (else
    /// `None`: unauthorized), and only challenges whose bound key for this device
    /// verifies the signature are listed — a signature no pending challenge can verify
    /// gets an empty list, the same answer as a device with nothing pending, so the
    /// endpoint tells a caller without the key nothing.
    pub fn pending_for_device(
        &self,
        now: i64,
        device_id: &str,
        auth: &DeviceAuth,
    ) -> Option<PendingList> {
        if let DeviceAuth::Signed { timestamp, .. } = auth {
            if (now.div_euclid(1000) - timestamp).abs() > PENDING_SKEW_S {
                return None;
            }
        }
        let mut challenges = Vec::new();
        for id in self.pending_index.for_device(device_id) {
            let Some(entry) = self.table.get(&id) else {
                continue;
            };
            let m = &entry.machine;
            if m.is_done() || now >= m.spec.expires_at_ms() {
                continue;
            }
            let Some(d) = m.spec.devices.iter().find(|d| &*d.device_id == device_id) else {
                continue;
            };
            if let DeviceAuth::Signed {
                timestamp,
                signature,
            } = auth
            {
                let msg = crate::challenge::signature::pending_message(device_id, *timestamp);
                let ok = d
                    .public_key
                    .as_deref()
                    .is_some_and(|k| crate::challenge::signature::verify(k, &msg, signature));
                if !ok {
                    continue;
                }
            }
            challenges.push(PendingChallenge::of(m));
        }
        Some(PendingList { challenges })
    }

    // ---- commands -------------------------------------------------------------

    /// Turns one entry's machine commands into effects (its lock held by the caller).
    /// Returns what happened to an SMS request, if one was made.
    fn apply(
        &self,
        id: &Arc<str>,
        entry: &mut Entry<A>,
        cmds: Vec<Command>,
        now: i64,
        fx: &mut Effects<A>,
    ) -> Option<Result<(), SmsBlock>> {
        let mut queue = std::collections::VecDeque::from(cmds);
        let mut sms_result = None;
        let mut texts: Option<(Arc<str>, Arc<str>)> = None;
        let mut extras: Option<Option<Arc<PushExtra>>> = None;
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Command::Push { device } => {
                    let (title, body) = texts
                        .get_or_insert_with(|| {
                            let (a, b) = crate::texts::challenge_texts(&entry.machine.spec);
                            (a.into(), b.into())
                        })
                        .clone();
                    let extra = extras
                        .get_or_insert_with(|| push_extra(&entry.machine.spec))
                        .clone();
                    let content = PushContent::Challenge {
                        title,
                        body,
                        number_choices: entry.machine.number.map(|n| n.choices),
                        extra,
                    };
                    if let Some((platform, msg)) = self.push_message(id, entry, device, content) {
                        fx.push(Effect::Push {
                            device,
                            platform,
                            msg,
                        });
                    }
                }
                Command::Withdraw { device } => {
                    let content = PushContent::Withdraw;
                    if let Some((platform, msg)) = self.push_message(id, entry, device, content) {
                        fx.push(Effect::Withdraw { platform, msg });
                    }
                }
                Command::SendSms => {
                    let (r, more) = self.issue_sms(id, entry, now, fx);
                    sms_result = Some(r);
                    queue.extend(more);
                }
                Command::TokenInvalid { device } => {
                    if let Some(d) = entry.machine.spec.devices.get(device) {
                        tracing::info!(challenge_id = %id, device_id = %d.device_id, token = %crate::push::mask_token(&d.token), "device token invalid");
                    }
                    if let Some(e) = EventMessage::token_invalid(&entry.machine.spec, device, now) {
                        fx.push(event(&e));
                    }
                }
                Command::PublishOutcome => self.publish_outcome(id, entry, fx),
            }
        }
        if let Some(at) = entry.machine.next_deadline() {
            if entry.timer_at.is_none_or(|t| at < t || t <= now) {
                entry.timer_at = Some(at);
                fx.push(Effect::ArmTimer { id: id.clone(), at });
            }
        }
        sms_result
    }

    /// The push for a device whose platform has a provider.
    fn push_message(
        &self,
        id: &Arc<str>,
        entry: &Entry<A>,
        device: usize,
        content: PushContent,
    ) -> Option<(Platform, PushMessage)> {
        let spec = &entry.machine.spec;
        let d = spec.devices.get(device)?;
        if !self.settings.reachable(&spec.app, d.platform) {
            return None;
        }
        Some((
            d.platform,
            PushMessage {
                challenge_id: id.clone(),
                kind: entry.machine.spec.kind,
                device_id: d.device_id.clone(),
                token: d.token.clone(),
                content,
                expires_at_ms: spec.expires_at_ms(),
                app: spec.app.clone(),
            },
        ))
    }

    /// Issues a code and hands the SMS to the driver, unless a limit or the missing
    /// gateway stops it; either way the machine learns what happened.
    fn issue_sms(
        &self,
        id: &Arc<str>,
        entry: &mut Entry<A>,
        now: i64,
        fx: &mut Effects<A>,
    ) -> (Result<(), SmsBlock>, Vec<Command>) {
        let spec = &entry.machine.spec;
        let Some(sms) = spec.sms.as_ref() else {
            return (Err(SmsBlock::NoGateway), Vec::new());
        };
        let refused = |entry: &mut Entry<A>, why: &str, fx: &mut Effects<A>| {
            let e = EventMessage::sms(&entry.machine.spec, false, Some(why), now);
            fx.push(event(&e));
            fx.push(Effect::Count(Metric::Sms("refused")));
            entry.machine.handle(now, Event::SmsUnavailable).commands
        };
        if !self.settings.reach.sms_gateway {
            let cmds = refused(entry, "sms_not_configured", fx);
            return (Err(SmsBlock::NoGateway), cmds);
        }
        if let Err(r) = self.sms_limits.try_send(&spec.user_id, &sms.phone, now) {
            fx.push(Effect::Count(Metric::RateLimited(r.label())));
            tracing::info!(challenge_id = %id, limit = r.label(), "SMS refused by limit");
            let cmds = refused(entry, r.label(), fx);
            return (Err(SmsBlock::Limit(r.label())), cmds);
        }
        if !self.settings.cluster {
            fx.push(Effect::TellPeers(PeerNote::SmsSent {
                user: spec.user_id.to_string(),
                at: now,
            }));
        }
        let code = self.entropy.otp_code();
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
        fx.push(Effect::SendSms {
            id: id.clone(),
            seq: entry.machine.sms_sent,
            msg,
            valid_for,
        });
        (Ok(()), cmds)
    }

    fn publish_outcome(&self, id: &Arc<str>, entry: &mut Entry<A>, fx: &mut Effects<A>) {
        let m = &entry.machine;
        let Some(o) = m.outcome.as_ref() else { return };
        let channel = o.channel.map(|c| c.as_str()).unwrap_or("none");
        fx.push(Effect::Count(Metric::Outcome {
            kind: m.spec.kind.as_str(),
            outcome: o.kind.as_str(),
            channel,
            latency_s: o
                .channel
                .map(|_| (o.decided_at_ms - m.dispatched_at_ms).max(0) as f64 / 1000.0),
        }));
        if entry.counted {
            fx.push(Effect::Count(Metric::InFlight(false)));
        }
        self.pending_index.remove(
            id,
            &m.spec.user_id,
            m.spec.devices.iter().map(|d| &*d.device_id),
        );
        self.fatigue_after(m, o.decided_at_ms, fx);
        if o.kind == OutcomeKind::Approved && o.channel == Some(Channel::Sms) {
            self.sms_limits.confirmed(&m.spec.user_id);
            if !self.settings.cluster {
                fx.push(Effect::TellPeers(PeerNote::SmsConfirmed {
                    user: m.spec.user_id.to_string(),
                }));
            }
        }
        // Debug, not info: the outcome event on RabbitMQ is the audit trail, and a line per
        // challenge at tens of thousands per second is a cost of its own.
        tracing::debug!(challenge_id = %id, outcome = o.kind.as_str(), channel, "challenge decided");
        let Some(body) = OutcomeMessage::body_of(m) else {
            return;
        };
        fx.push(Effect::PublishOutcome {
            id: id.clone(),
            routing_key: routing_key(Some(m.spec.kind), o.kind),
            body,
            reply: entry.reply_to.as_deref().cloned(),
            part: entry.part,
        });
        entry.raw = None;
        fx.push(Effect::WakeWaiters(id.clone()));
    }
}

/// The refusal of a valid challenge whose `app` is not configured (CONTRACT §10).
fn unknown_app(spec: &ChallengeSpec) -> Rejection {
    Rejection {
        code: "unknown_app",
        // The name passed the app-name rule: safe to repeat.
        detail: format!("app `{}` is not configured", spec.app),
        challenge_id: Some(spec.challenge_id.to_string()),
        user_id: Some(spec.user_id.to_string()),
        kind: Some(spec.kind),
        ttl_seconds: Some(spec.ttl_seconds),
    }
}

impl<A> Core<A> {
    /// What a settled challenge means for the user's push fatigue: a fraud report mutes
    /// (and is announced), an answer resets the backoff, a push that reached the user
    /// and expired unanswered lengthens it.
    fn fatigue_after(&self, m: &Challenge, now: i64, fx: &mut Effects<A>) {
        let Some(o) = m.outcome.as_ref() else { return };
        let user = &m.spec.user_id;
        if o.reason == Some("fraud_reported") {
            self.fatigue.fraud_reported(user, now);
            fx.push(Effect::Count(Metric::FraudReported));
            tracing::warn!(challenge_id = %m.spec.challenge_id, "fraud reported; pushes to the user muted");
            if let Some(e) = EventMessage::fraud_reported(m, now) {
                fx.push(event(&e));
            }
        }
        match o.kind {
            OutcomeKind::Approved | OutcomeKind::Denied if o.channel.is_some() => {
                self.fatigue.answered(user)
            }
            OutcomeKind::Expired if m.pushed() => self.fatigue.unanswered(user, now),
            _ => {}
        }
    }
}

/// How `GET /v1/devices/{device_id}/challenges` was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// A valid bearer token: every pending challenge bound to the device.
    Bearer,
    /// `X-SCA-Timestamp` and `X-SCA-Signature`: those whose key verifies.
    Signed { timestamp: i64, signature: String },
}

/// How far `X-SCA-Timestamp` may be from the clock.
pub const PENDING_SKEW_S: i64 = 60;

/// Encoded context beyond this leaves its `details` out of the push data (the
/// payloads' own limits are 4 KiB; the pending list still shows them).
const MAX_PUSH_CONTEXT_BYTES: usize = 1536;

/// The account label and context a challenge's pushes carry as data, if any.
fn push_extra(spec: &ChallengeSpec) -> Option<Arc<PushExtra>> {
    if spec.user_label.is_none() && spec.context.is_none() {
        return None;
    }
    let mut context = spec.context.as_deref().cloned();
    if let Some(c) = context.as_mut() {
        let len = serde_json::to_vec(c).map(|v| v.len()).unwrap_or(usize::MAX);
        if len > MAX_PUSH_CONTEXT_BYTES {
            c.details.clear();
        }
    }
    Some(Arc::new(PushExtra {
        user_label: spec.user_label.clone(),
        context,
    }))
}

fn event<A>(e: &EventMessage) -> Effect<A> {
    Effect::PublishEvent {
        routing_key: e.routing_key(),
        body: to_bytes(e),
    }
}

/// True when `op` is a decision of a device bound with a public key (its decisions are
/// signed and verified by the machine).
fn device_signs(c: &Challenge, op: &Operation) -> bool {
    let Operation::Decision(d) = op else {
        return false;
    };
    c.spec
        .devices
        .iter()
        .any(|x| &*x.device_id == d.device_id.as_str() && x.public_key.is_some())
}

/// A machine's reply to an operation.
fn op_outcome(reply: Reply) -> OpOutcome {
    match reply {
        Reply::Decided(outcome) => OpOutcome::Decided { outcome },
        Reply::AlreadyDone(outcome) => OpOutcome::AlreadyDecided { outcome },
        Reply::DeviceNotBound => OpOutcome::DeviceNotBound,
        Reply::BadSignature => OpOutcome::BadSignature,
        Reply::NumberMismatch => OpOutcome::NumberMismatch,
        Reply::WrongCode { attempts_left } => OpOutcome::WrongCode { attempts_left },
        Reply::Locked => OpOutcome::Locked,
        Reply::NoCode => OpOutcome::NoCode,
        Reply::CodeExpired => OpOutcome::CodeExpired,
        Reply::NoSms => OpOutcome::NoSms,
        Reply::SmsQueued => OpOutcome::SmsSent,
        Reply::NotOffline => OpOutcome::NotOffline,
        Reply::None => OpOutcome::Accepted,
    }
}

#[cfg(test)]
mod tests;
