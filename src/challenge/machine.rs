//! The per-challenge state machine. Pure: no I/O, no clock, no randomness. Time, one-time
//! code hashes and random numbers come in with the events; what must happen next goes out
//! as [`Command`]s that the engine carries out. The first valid decision wins.

use super::model::{ChallengeSpec, Channel, OutcomeKind};
use super::offline;
use super::otp::{OtpHash, MAX_OTP_ATTEMPTS, OTP_VALIDITY_MS};
use super::signature;

/// What a provider said about one push, after its own retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    Delivered,
    /// The device token is gone (unregistered, bad token): never retry it.
    TokenGone,
    /// Failed for good for this challenge (permanent error, or retries ran out).
    Failed,
}

/// The state of the push to one device, as `GET /v1/challenges/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushState {
    /// Sent to the provider, no answer yet.
    Sending,
    Delivered,
    TokenInvalid,
    Failed,
    /// No provider is configured for this device's platform.
    Unavailable,
    /// Never sent: the challenge was over before it could be.
    NotSent,
    /// Held back: pushes to the user are muted after a fraud report, or inside the
    /// push-fatigue backoff (the challenge went to SMS).
    Suppressed,
}

impl PushState {
    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Sending => "sending",
            PushState::Delivered => "delivered",
            PushState::TokenInvalid => "token_invalid",
            PushState::Failed => "failed",
            PushState::Unavailable => "unavailable",
            PushState::NotSent => "not_sent",
            PushState::Suppressed => "suppressed",
        }
    }
    /// The push may still reach (or has reached) the device.
    fn alive(self) -> bool {
        matches!(self, PushState::Sending | PushState::Delivered)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    pub push: PushState,
    pub withdrawn: bool,
}

/// SMS fallback progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsState {
    /// Not asked for yet.
    Idle,
    /// [`Command::SendSms`] was emitted; waiting for the engine to issue a code.
    Requested,
    /// A code is issued and on its way through the gateway.
    Sending,
    Sent,
    Failed,
    /// The engine refused to send (abuse limit, gateway not configured).
    Refused,
}

impl SmsState {
    pub fn as_str(self) -> &'static str {
        match self {
            SmsState::Idle => "idle",
            SmsState::Requested | SmsState::Sending => "sending",
            SmsState::Sent => "sent",
            SmsState::Failed => "failed",
            SmsState::Refused => "refused",
        }
    }
}

/// The number the user must pick on the device (number matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberMatch {
    pub number: u8,
    pub choices: [u8; 3],
}

/// A settled challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub channel: Option<Channel>,
    /// Index into the spec's devices of the deciding device.
    pub device: Option<usize>,
    pub reason: Option<&'static str>,
    pub decided_at_ms: i64,
}

#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    PushResult {
        device: usize,
        result: PushResult,
    },
    Decision {
        device_id: &'a str,
        approve: bool,
        signature: Option<&'a str>,
        number: Option<u32>,
    },
    /// The keyed hash of the code the user typed.
    OtpAttempt {
        hash: OtpHash,
    },
    /// The user asks for an SMS ("I did not get the push").
    SmsRequested,
    /// The engine issued a new code (voiding the previous one) and is sending it.
    SmsIssued {
        hash: OtpHash,
    },
    /// The engine will not send an SMS (limit reached, no gateway).
    SmsUnavailable,
    /// What became of SMS number `seq` (1 for the first, see [`Challenge::sms_sent`]).
    /// A late result of an older SMS is ignored: it must not void a newer code.
    SmsResult {
        seq: u8,
        delivered: bool,
    },
    Cancel,
    /// Time passed; expiry and fallback are checked against `now`.
    Tick,
    /// A device denies and reports fraud (signed over `…|deny|{tx_digest}|fraud`).
    ReportFraud {
        device_id: &'a str,
        signature: Option<&'a str>,
    },
    /// An offline code the app computed (8 digits, parsed).
    OfflineAttempt {
        code: u32,
    },
    /// A newer challenge of the same user replaces this one (`one_pending_per_user`).
    Supersede,
}

/// Work for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Push {
        device: usize,
    },
    Withdraw {
        device: usize,
    },
    /// Issue a code (answer with `SmsIssued` or `SmsUnavailable`) and send it.
    SendSms,
    /// Publish `device.token_invalid` for this device.
    TokenInvalid {
        device: usize,
    },
    /// Publish the outcome; ack the delivery once the broker confirms it.
    PublishOutcome,
}

/// The answer to the event's sender (mapped to HTTP statuses by the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    None,
    /// This event settled the challenge with this outcome.
    Decided(OutcomeKind),
    /// Already settled earlier.
    AlreadyDone(OutcomeKind),
    DeviceNotBound,
    BadSignature,
    /// Wrong number picked: the challenge is denied.
    NumberMismatch,
    WrongCode {
        attempts_left: u8,
    },
    Locked,
    NoCode,
    CodeExpired,
    NoSms,
    /// An SMS was requested; the engine decides whether it goes out.
    SmsQueued,
    /// An offline code for a challenge without an operation id.
    NotOffline,
}

/// The output of one step.
#[derive(Debug)]
pub struct Step {
    pub reply: Reply,
    pub commands: Vec<Command>,
}

/// One challenge's whole state.
#[derive(Debug)]
pub struct Challenge {
    pub spec: ChallengeSpec,
    pub devices: Vec<DeviceSlot>,
    pub sms: SmsState,
    pub sms_sent: u8,
    otp: Option<(OtpHash, i64)>,
    pub otp_failures: u8,
    pub fallback_at_ms: Option<i64>,
    pub dispatched_at_ms: i64,
    pub number: Option<NumberMatch>,
    pub outcome: Option<Outcome>,
    /// The 8-digit operation id of an offline challenge (set by the engine at start).
    pub operation_id: Option<u32>,
}

/// What a challenge has done so far, without its spec: handed to the next owner of its
/// partition, which resumes it with [`Challenge::resume`] instead of starting over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub devices: Vec<DeviceSlot>,
    pub sms: SmsState,
    pub sms_sent: u8,
    /// The code's keyed hash and the end of its validity (Unix ms).
    pub otp: Option<(OtpHash, i64)>,
    pub otp_failures: u8,
    pub fallback_at_ms: Option<i64>,
    pub dispatched_at_ms: i64,
    pub number: Option<NumberMatch>,
    /// The operation id of an offline challenge: the code the app shows is bound to it.
    pub operation_id: Option<u32>,
}

impl Challenge {
    /// The progress of a pending challenge (`None` once decided).
    pub fn progress(&self) -> Option<Progress> {
        if self.is_done() {
            return None;
        }
        Some(Progress {
            devices: self.devices.clone(),
            sms: self.sms,
            sms_sent: self.sms_sent,
            otp: self.otp,
            otp_failures: self.otp_failures,
            fallback_at_ms: self.fallback_at_ms,
            dispatched_at_ms: self.dispatched_at_ms,
            number: self.number,
            operation_id: self.operation_id,
        })
    }

    /// Resumes a challenge another instance started: nothing already sent is sent
    /// again, the code already sent stays valid. A push or an SMS whose result the old
    /// owner was still waiting for counts as delivered (it went out). `None` when the
    /// progress does not fit the spec (then the caller starts it afresh).
    pub fn resume(spec: ChallengeSpec, p: Progress, now: i64) -> Option<(Challenge, Vec<Command>)> {
        if p.devices.len() != spec.devices.len() || (p.number.is_some() && !spec.number_match) {
            return None;
        }
        let devices = p
            .devices
            .into_iter()
            .map(|mut d| {
                if d.push == PushState::Sending {
                    d.push = PushState::Delivered;
                }
                d
            })
            .collect();
        let sms = match p.sms {
            SmsState::Sending => SmsState::Sent,
            // A request the old owner had not acted on yet: ask again below.
            SmsState::Requested => SmsState::Idle,
            s => s,
        };
        let mut c = Challenge::fresh(
            spec,
            p.dispatched_at_ms,
            devices,
            p.fallback_at_ms,
            p.number,
        );
        c.sms = sms;
        c.sms_sent = p.sms_sent;
        c.otp = p.otp;
        c.otp_failures = p.otp_failures.min(MAX_OTP_ATTEMPTS.saturating_sub(1));
        c.operation_id = p.operation_id.filter(|_| c.spec.offline);
        let step = c.handle(now, Event::Tick);
        let mut cmds = step.commands;
        if !c.is_done() {
            c.check_reachable(now, &mut cmds);
        }
        Some((c, cmds))
    }

    /// Starts a challenge at `now`. `reachable[i]` says whether a provider exists for
    /// device `i`; `default_fallback_s` resolves an `sms` without its own delay.
    pub fn start(
        spec: ChallengeSpec,
        now: i64,
        reachable: &[bool],
        default_fallback_s: u64,
        number: Option<NumberMatch>,
    ) -> (Challenge, Vec<Command>) {
        let devices = (0..spec.devices.len())
            .map(|i| DeviceSlot {
                push: if reachable.get(i).copied().unwrap_or(false) {
                    PushState::Sending
                } else {
                    PushState::Unavailable
                },
                withdrawn: false,
            })
            .collect();
        let fallback_at_ms = spec.sms.as_ref().map(|s| {
            let secs = s.fallback_after_seconds.unwrap_or(default_fallback_s);
            now + (secs.min(24 * 3600) as i64) * 1000
        });
        let number = if spec.number_match { number } else { None };
        let mut c = Challenge::fresh(spec, now, devices, fallback_at_ms, number);
        let mut cmds = Vec::new();
        if now >= c.spec.expires_at_ms() {
            c.devices
                .iter_mut()
                .for_each(|d| d.push = PushState::NotSent);
            c.finish(
                now,
                OutcomeKind::Expired,
                None,
                None,
                Some("ttl_elapsed"),
                &mut cmds,
            );
            return (c, cmds);
        }
        for (i, d) in c.devices.iter().enumerate() {
            if d.push == PushState::Sending {
                cmds.push(Command::Push { device: i });
            }
        }
        c.check_fallback(now, &mut cmds);
        c.check_reachable(now, &mut cmds);
        (c, cmds)
    }

    /// A challenge with nothing done yet.
    fn fresh(
        spec: ChallengeSpec,
        now: i64,
        devices: Vec<DeviceSlot>,
        fallback_at_ms: Option<i64>,
        number: Option<NumberMatch>,
    ) -> Challenge {
        Challenge {
            spec,
            devices,
            sms: SmsState::Idle,
            sms_sent: 0,
            otp: None,
            otp_failures: 0,
            fallback_at_ms,
            dispatched_at_ms: now,
            number,
            outcome: None,
            operation_id: None,
        }
    }

    /// A challenge refused at intake (e.g. rate limited): settled at once, nothing sent.
    pub fn refused(
        spec: ChallengeSpec,
        now: i64,
        kind: OutcomeKind,
        reason: &'static str,
    ) -> (Challenge, Vec<Command>) {
        let not_sent = DeviceSlot {
            push: PushState::NotSent,
            withdrawn: false,
        };
        let devices = vec![not_sent; spec.devices.len()];
        let mut c = Challenge::fresh(spec, now, devices, None, None);
        let mut cmds = Vec::new();
        c.finish(now, kind, None, None, Some(reason), &mut cmds);
        (c, cmds)
    }

    /// A challenge whose pushes are held back (fraud mute, push-fatigue backoff): its
    /// SMS goes out at once; without a phone it is settled `rate_limited` with `reason`.
    pub fn held_back(
        spec: ChallengeSpec,
        now: i64,
        reason: &'static str,
    ) -> (Challenge, Vec<Command>) {
        if spec.sms.is_none() {
            return Challenge::refused(spec, now, OutcomeKind::RateLimited, reason);
        }
        let slot = DeviceSlot {
            push: PushState::Suppressed,
            withdrawn: false,
        };
        let devices = vec![slot; spec.devices.len()];
        let mut c = Challenge::fresh(spec, now, devices, None, None);
        let mut cmds = Vec::new();
        if now >= c.spec.expires_at_ms() {
            c.finish(
                now,
                OutcomeKind::Expired,
                None,
                None,
                Some("ttl_elapsed"),
                &mut cmds,
            );
            return (c, cmds);
        }
        c.check_reachable(now, &mut cmds);
        (c, cmds)
    }

    /// True when a push reached at least one device.
    pub fn pushed(&self) -> bool {
        self.devices.iter().any(|d| d.push == PushState::Delivered)
    }

    pub fn is_done(&self) -> bool {
        self.outcome.is_some()
    }

    /// True while a push may still report a result (it would be reported as an event).
    pub fn push_in_flight(&self) -> bool {
        self.devices.iter().any(|d| d.push == PushState::Sending)
    }

    /// Drops what a settled challenge no longer needs, keeping what its view and its
    /// answers to late operations (409, 410, 423) use: ids, kind, expiry, per-device
    /// state, SMS progress and the outcome. Device tokens and names, the transaction and
    /// the locale go. Does nothing to a pending challenge.
    pub fn compact(&mut self) {
        if !self.is_done() {
            return;
        }
        let s = &mut self.spec;
        for d in &mut s.devices {
            d.token = std::sync::Arc::default();
            d.name = None;
        }
        s.devices.shrink_to_fit();
        self.devices.shrink_to_fit();
        s.transaction = None;
        s.locale = Box::default();
        s.user_label = None;
        s.context = None;
        self.otp = None;
    }

    /// When the engine should next send `Tick`, if ever.
    pub fn next_deadline(&self) -> Option<i64> {
        if self.is_done() {
            return None;
        }
        let exp = self.spec.expires_at_ms();
        match self.fallback_at_ms {
            Some(f) if self.sms == SmsState::Idle && f < exp => Some(f),
            _ => Some(exp),
        }
    }

    /// The outcome's deciding device id, if any.
    pub fn decided_device_id(&self) -> Option<&str> {
        let i = self.outcome.as_ref()?.device?;
        Some(&self.spec.devices[i].device_id)
    }

    /// Feeds one event at time `now`.
    pub fn handle(&mut self, now: i64, event: Event<'_>) -> Step {
        let mut commands = Vec::new();
        let cmds = &mut commands;
        // Expiry comes first: nothing is accepted at or after the deadline.
        if !self.is_done() && now >= self.spec.expires_at_ms() {
            self.finish(
                now,
                OutcomeKind::Expired,
                None,
                None,
                Some("ttl_elapsed"),
                cmds,
            );
        }
        let reply = match event {
            Event::Tick => {
                if !self.is_done() {
                    self.check_fallback(now, cmds);
                }
                Reply::None
            }
            Event::PushResult { device, result } => {
                self.on_push_result(now, device, result, cmds);
                Reply::None
            }
            Event::Decision {
                device_id,
                approve,
                signature: sig,
                number,
            } => self.on_decision(now, device_id, approve, sig, number, cmds),
            Event::OtpAttempt { hash } => self.on_otp(now, hash, cmds),
            Event::SmsRequested => {
                if let Some(done) = self.done_reply() {
                    done
                } else if self.spec.sms.is_none() {
                    Reply::NoSms
                } else {
                    self.sms = SmsState::Requested;
                    cmds.push(Command::SendSms);
                    Reply::SmsQueued
                }
            }
            Event::SmsIssued { hash } => {
                if !self.is_done() && self.spec.sms.is_some() {
                    let until = (now + OTP_VALIDITY_MS).min(self.spec.expires_at_ms());
                    self.otp = Some((hash, until));
                    self.sms = SmsState::Sending;
                    self.sms_sent = self.sms_sent.saturating_add(1);
                }
                Reply::None
            }
            Event::SmsUnavailable => {
                if !self.is_done() && self.sms == SmsState::Requested {
                    self.sms = if self.sms_sent > 0 {
                        SmsState::Sent
                    } else {
                        SmsState::Refused
                    };
                    self.check_reachable(now, cmds);
                }
                Reply::None
            }
            Event::SmsResult { seq, delivered } => {
                if !self.is_done() && self.sms == SmsState::Sending && seq == self.sms_sent {
                    self.sms = if delivered {
                        SmsState::Sent
                    } else {
                        SmsState::Failed
                    };
                    if !delivered {
                        self.otp = None;
                    }
                    self.check_reachable(now, cmds);
                }
                Reply::None
            }
            Event::Cancel => match self.done_reply() {
                Some(r) => r,
                None => {
                    self.finish(now, OutcomeKind::Cancelled, None, None, None, cmds);
                    Reply::Decided(OutcomeKind::Cancelled)
                }
            },
            Event::Supersede => match self.done_reply() {
                Some(r) => r,
                None => {
                    let reason = Some("superseded");
                    self.finish(now, OutcomeKind::Cancelled, None, None, reason, cmds);
                    Reply::Decided(OutcomeKind::Cancelled)
                }
            },
            Event::ReportFraud {
                device_id,
                signature: sig,
            } => self.on_fraud_report(now, device_id, sig, cmds),
            Event::OfflineAttempt { code } => self.on_offline(now, code, cmds),
        };
        Step { reply, commands }
    }

    fn done_reply(&self) -> Option<Reply> {
        self.outcome.as_ref().map(|o| Reply::AlreadyDone(o.kind))
    }

    fn on_push_result(&mut self, now: i64, i: usize, result: PushResult, cmds: &mut Vec<Command>) {
        let Some(slot) = self.devices.get_mut(i) else {
            return;
        };
        if slot.push != PushState::Sending {
            return;
        }
        slot.push = match result {
            PushResult::Delivered => PushState::Delivered,
            PushResult::TokenGone => PushState::TokenInvalid,
            PushResult::Failed => PushState::Failed,
        };
        if result == PushResult::TokenGone {
            cmds.push(Command::TokenInvalid { device: i });
        }
        if !self.is_done() {
            self.check_reachable(now, cmds);
        }
    }

    fn on_decision(
        &mut self,
        now: i64,
        device_id: &str,
        approve: bool,
        sig: Option<&str>,
        number: Option<u32>,
        cmds: &mut Vec<Command>,
    ) -> Reply {
        if let Some(r) = self.done_reply() {
            return r;
        }
        let Some(i) = self
            .spec
            .devices
            .iter()
            .position(|d| &*d.device_id == device_id)
        else {
            return Reply::DeviceNotBound;
        };
        let decision = if approve { "approve" } else { "deny" };
        if let Some(key) = &self.spec.devices[i].public_key {
            let msg = signature::signed_message(
                &self.spec.challenge_id,
                decision,
                &self.spec.tx_digest(),
            );
            if !sig.is_some_and(|s| signature::verify(key, &msg, s)) {
                return Reply::BadSignature;
            }
        }
        if approve {
            if let Some(nm) = self.number {
                if number != Some(nm.number as u32) {
                    let (ch, dev) = (Some(Channel::Push), Some(i));
                    self.finish(
                        now,
                        OutcomeKind::Denied,
                        ch,
                        dev,
                        Some("number_mismatch"),
                        cmds,
                    );
                    return Reply::NumberMismatch;
                }
            }
        }
        let kind = if approve {
            OutcomeKind::Approved
        } else {
            OutcomeKind::Denied
        };
        self.finish(now, kind, Some(Channel::Push), Some(i), None, cmds);
        Reply::Decided(kind)
    }

    /// A deny that reports fraud: the device's signature (if it has a key) covers the
    /// `|fraud` suffix, so a plain deny can never be turned into a report.
    fn on_fraud_report(
        &mut self,
        now: i64,
        device_id: &str,
        sig: Option<&str>,
        cmds: &mut Vec<Command>,
    ) -> Reply {
        if let Some(r) = self.done_reply() {
            return r;
        }
        let Some(i) = self
            .spec
            .devices
            .iter()
            .position(|d| &*d.device_id == device_id)
        else {
            return Reply::DeviceNotBound;
        };
        if let Some(key) = &self.spec.devices[i].public_key {
            let msg = signature::fraud_message(&self.spec.challenge_id, &self.spec.tx_digest());
            if !sig.is_some_and(|s| signature::verify(key, &msg, s)) {
                return Reply::BadSignature;
            }
        }
        let (ch, dev) = (Some(Channel::Push), Some(i));
        self.finish(
            now,
            OutcomeKind::Denied,
            ch,
            dev,
            Some("fraud_reported"),
            cmds,
        );
        Reply::Decided(OutcomeKind::Denied)
    }

    /// An offline code: checked against every bound device's key in constant time; wrong
    /// codes count against the same limit as SMS codes.
    fn on_offline(&mut self, now: i64, code: u32, cmds: &mut Vec<Command>) -> Reply {
        if let Some(o) = &self.outcome {
            return if o.kind == OutcomeKind::OtpLocked {
                Reply::Locked
            } else {
                Reply::AlreadyDone(o.kind)
            };
        }
        let Some(op) = self.operation_id else {
            return Reply::NotOffline;
        };
        let op = offline::format_code(op);
        let keys = self.spec.devices.iter().map(|d| d.offline_key.as_ref());
        if let Some(i) = offline::verify(keys, &op, &self.spec.tx_digest(), code) {
            let (ch, dev) = (Some(Channel::Offline), Some(i));
            self.finish(now, OutcomeKind::Approved, ch, dev, None, cmds);
            return Reply::Decided(OutcomeKind::Approved);
        }
        self.otp_failures = self.otp_failures.saturating_add(1);
        if self.otp_failures >= MAX_OTP_ATTEMPTS {
            let reason = Some("too_many_wrong_codes");
            let ch = Some(Channel::Offline);
            self.finish(now, OutcomeKind::OtpLocked, ch, None, reason, cmds);
            return Reply::Locked;
        }
        Reply::WrongCode {
            attempts_left: MAX_OTP_ATTEMPTS - self.otp_failures,
        }
    }

    fn on_otp(&mut self, now: i64, hash: OtpHash, cmds: &mut Vec<Command>) -> Reply {
        if let Some(o) = &self.outcome {
            return if o.kind == OutcomeKind::OtpLocked {
                Reply::Locked
            } else {
                Reply::AlreadyDone(o.kind)
            };
        }
        let Some((expected, until)) = self.otp else {
            return Reply::NoCode;
        };
        if now >= until {
            self.otp = None;
            return Reply::CodeExpired;
        }
        if expected.matches(&hash) {
            self.otp = None;
            self.finish(
                now,
                OutcomeKind::Approved,
                Some(Channel::Sms),
                None,
                None,
                cmds,
            );
            return Reply::Decided(OutcomeKind::Approved);
        }
        self.otp_failures = self.otp_failures.saturating_add(1);
        if self.otp_failures >= MAX_OTP_ATTEMPTS {
            self.otp = None;
            let reason = Some("too_many_wrong_codes");
            self.finish(
                now,
                OutcomeKind::OtpLocked,
                Some(Channel::Sms),
                None,
                reason,
                cmds,
            );
            return Reply::Locked;
        }
        Reply::WrongCode {
            attempts_left: MAX_OTP_ATTEMPTS - self.otp_failures,
        }
    }

    /// Sends the SMS once the fallback delay has passed without a decision.
    fn check_fallback(&mut self, now: i64, cmds: &mut Vec<Command>) {
        if self.sms == SmsState::Idle && self.fallback_at_ms.is_some_and(|f| now >= f) {
            self.sms = SmsState::Requested;
            cmds.push(Command::SendSms);
        }
    }

    /// With no push alive: SMS at once if there is one to send, else `undeliverable`.
    fn check_reachable(&mut self, now: i64, cmds: &mut Vec<Command>) {
        if self.devices.iter().any(|d| d.push.alive()) {
            return;
        }
        match self.sms {
            SmsState::Idle if self.spec.sms.is_some() => {
                self.sms = SmsState::Requested;
                cmds.push(Command::SendSms);
            }
            SmsState::Requested | SmsState::Sending | SmsState::Sent => {}
            _ => {
                let reason = if self.spec.sms.is_some() {
                    "sms_failed"
                } else {
                    "no_reachable_device"
                };
                self.finish(
                    now,
                    OutcomeKind::Undeliverable,
                    None,
                    None,
                    Some(reason),
                    cmds,
                );
            }
        }
    }

    fn finish(
        &mut self,
        now: i64,
        kind: OutcomeKind,
        channel: Option<Channel>,
        device: Option<usize>,
        reason: Option<&'static str>,
        cmds: &mut Vec<Command>,
    ) {
        debug_assert!(self.outcome.is_none());
        self.outcome = Some(Outcome {
            kind,
            channel,
            device,
            reason,
            decided_at_ms: now,
        });
        self.otp = None;
        // Offline keys live only while the challenge can be confirmed (zeroized on drop).
        for d in &mut self.spec.devices {
            d.offline_key = None;
        }
        // The deciding device keeps its push (it shows the answer), unless the answer
        // came by an offline code: then its notification goes too.
        let keep = device.filter(|_| channel != Some(Channel::Offline));
        for (i, d) in self.devices.iter_mut().enumerate() {
            if Some(i) != keep && d.push.alive() && !d.withdrawn {
                d.withdrawn = true;
                cmds.push(Command::Withdraw { device: i });
            }
        }
        cmds.push(Command::PublishOutcome);
    }
}

#[cfg(test)]
mod tests;
