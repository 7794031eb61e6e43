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
    parse_challenge, ChallengeSpec, Channel, Kind, OutcomeKind, Platform, Rejection,
};
use crate::challenge::otp::{OtpHasher, OTP_VALIDITY_MS};
use crate::config::Config;
use crate::limits::UserLimiter;
use crate::push::{PushContent, PushMessage};
use crate::sms::abuse::SmsLimits;
use crate::sms::SmsMessage;
use crate::wire::control::PeerNote;
use crate::wire::messages::{routing_key, to_bytes, EventMessage, OutcomeMessage, View};
use crate::wire::ops::{Authority, OpOutcome, Operation};
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;

use super::sink::ReplyTo;
use crate::challenge::machine::Progress;
use crate::cluster::Part;

/// Where the core gets its random numbers (number matching, one-time codes).
pub trait Entropy: Send + Sync + 'static {
    /// A two-digit number and two distinct decoys, shuffled.
    fn number_match(&self) -> NumberMatch;
    /// A fresh 6-digit one-time code.
    fn otp_code(&self) -> String;
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
    /// Which transports are configured.
    pub reach: Reach,
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
        }
    }

    fn reachable(&self, p: Platform) -> bool {
        match p {
            Platform::Apns => self.reach.apns,
            Platform::Fcm => self.reach.fcm,
            Platform::Hms => self.reach.hms,
        }
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
}

/// Effects of one call.
pub type Effects<A> = Vec<Effect<A>>;

impl<A> Core<A> {
    pub fn new(cfg: &Config, settings: Settings, entropy: Box<dyn Entropy>) -> Core<A> {
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
        let mut fx = Vec::new();
        let spec = match parse_challenge(body, now, self.settings.max_skew_ms) {
            Ok(s) => s,
            Err(rej) => {
                self.reject(now, body, meta, ack, rej, &mut fx);
                return fx;
            }
        };
        fx.push(Effect::Count(Metric::Received {
            kind: spec.kind.as_str(),
        }));
        let id: Arc<str> = Arc::from(&*spec.challenge_id);
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
                // A challenge handed over was counted by its first owner.
                let resumed = meta
                    .resume
                    .and_then(|p| Challenge::resume(spec.clone(), p, now));
                let resuming = resumed.is_some();
                let counted = resuming || self.limiter.check(&spec.user_id);
                let (machine, cmds) = if let Some(r) = resumed {
                    tracing::debug!(challenge_id = %id, "challenge resumed from its previous owner");
                    r
                } else if counted {
                    let reachable: Vec<bool> = spec
                        .devices
                        .iter()
                        .map(|d| self.settings.reachable(d.platform))
                        .collect();
                    let number = spec.number_match.then(|| self.entropy.number_match());
                    Challenge::start(
                        spec,
                        now,
                        &reachable,
                        self.settings.default_fallback_s,
                        number,
                    )
                } else {
                    fx.push(Effect::Count(Metric::RateLimited("user_challenges")));
                    Challenge::refused(spec, now, OutcomeKind::RateLimited, "user_rate_limit")
                };
                if counted {
                    fx.push(Effect::Count(Metric::InFlight(true)));
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
            }
        }
        fx
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
        let mut fx = Vec::new();
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
        };
        let step = entry.machine.handle(now, event);
        if let Operation::Otp { .. } = op {
            let result = match step.reply {
                Reply::Decided(_) => "ok",
                Reply::WrongCode { .. } => "wrong",
                Reply::Locked => "locked",
                Reply::CodeExpired => "expired",
                _ => "refused",
            };
            fx.push(Effect::Count(Metric::Otp(result)));
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
        let mut fx = Vec::new();
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
        let mut fx = Vec::new();
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
        let mut fx = Vec::new();
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
        let mut fx = Vec::new();
        let mut gone = 0;
        self.table.retain(|id, e| {
            let drop = e.part.is_some_and(|p| p.index == index) && !e.confirmed;
            if drop {
                gone += 1;
                if e.counted && !e.machine.is_done() {
                    fx.push(Effect::Count(Metric::InFlight(false)));
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
        let mut fx = Vec::new();
        for id in ids {
            let Some((id, e)) = self.table.remove_if(&id, |_, e| !e.machine.is_done()) else {
                continue;
            };
            let e = *e;
            if e.counted {
                fx.push(Effect::Count(Metric::InFlight(false)));
            }
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
        users
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
        let d = entry.machine.spec.devices.get(device)?;
        if !self.settings.reachable(d.platform) {
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
                expires_at_ms: entry.machine.spec.expires_at_ms(),
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
        let Some(body) = OutcomeMessage::of(m) else {
            return;
        };
        fx.push(Effect::PublishOutcome {
            id: id.clone(),
            routing_key: routing_key(Some(m.spec.kind), o.kind),
            body: to_bytes(&body),
            reply: entry.reply_to.as_deref().cloned(),
            part: entry.part,
        });
        entry.raw = None;
        fx.push(Effect::WakeWaiters(id.clone()));
    }
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
        Reply::None => OpOutcome::Accepted,
    }
}

#[cfg(test)]
mod tests;
