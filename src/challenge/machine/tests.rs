//! Unit tests for every transition, and property tests over random event sequences.

use super::*;
use crate::challenge::model::{parse_challenge, ChallengeSpec};
use crate::challenge::otp::OtpHasher;
use crate::challenge::signature::tests::{device_key, sign};
use proptest::prelude::*;

const T0: i64 = 1_795_462_800_000;

fn spec_with(f: impl FnOnce(&mut serde_json::Value)) -> ChallengeSpec {
    let mut v = serde_json::json!({
        "v": 1, "challenge_id": "c1", "user_id": "u1", "kind": "login",
        "created_at": "2026-11-23T19:40:00Z", "ttl_seconds": 120,
        "devices": [
            {"device_id": "a", "platform": "apns", "token": "ab".repeat(32)},
            {"device_id": "b", "platform": "fcm", "token": "tok-b"},
            {"device_id": "c", "platform": "fcm", "token": "tok-c"}
        ],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 30}
    });
    f(&mut v);
    parse_challenge(v.to_string().as_bytes(), T0, 60_000).unwrap()
}

fn start(spec: ChallengeSpec) -> (Challenge, Vec<Command>) {
    let n = spec.devices.len();
    Challenge::start(spec, T0, &vec![true; n], 30, None)
}

fn decision(id: &str, approve: bool) -> Event<'_> {
    Event::Decision {
        device_id: id,
        approve,
        signature: None,
        number: None,
    }
}

#[test]
fn start_pushes_every_device_and_schedules_fallback() {
    let (c, cmds) = start(spec_with(|_| {}));
    assert_eq!(
        cmds,
        vec![
            Command::Push { device: 0 },
            Command::Push { device: 1 },
            Command::Push { device: 2 }
        ]
    );
    assert_eq!(c.next_deadline(), Some(T0 + 30_000));
}

#[test]
fn first_decision_wins_and_others_are_withdrawn() {
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(T0 + 1000, decision("b", true));
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
    assert_eq!(
        s.commands,
        vec![
            Command::Withdraw { device: 0 },
            Command::Withdraw { device: 2 },
            Command::PublishOutcome
        ]
    );
    let o = c.outcome.clone().unwrap();
    assert_eq!((o.channel, o.device), (Some(Channel::Push), Some(1)));
    let s = c.handle(T0 + 1001, decision("a", false));
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Approved));
    assert!(s.commands.is_empty());
}

#[test]
fn deny_wins_too() {
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(T0 + 5, decision("a", false));
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Denied));
}

#[test]
fn unknown_device_is_refused() {
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(T0 + 5, decision("zzz", true));
    assert_eq!(s.reply, Reply::DeviceNotBound);
    assert!(!c.is_done());
}

#[test]
fn signature_is_required_when_the_device_has_a_key() {
    let (sk, pk) = device_key(5);
    let (mut c, _) = start(spec_with(|v| {
        v["devices"][0]["public_key"] = pk.clone().into()
    }));
    let s = c.handle(T0 + 5, decision("a", true));
    assert_eq!(s.reply, Reply::BadSignature);
    let forged = sign(&sk, "sca-v1|c1|deny|");
    let s = c.handle(
        T0 + 5,
        Event::Decision {
            device_id: "a",
            approve: true,
            signature: Some(&forged),
            number: None,
        },
    );
    assert_eq!(s.reply, Reply::BadSignature);
    let good = sign(&sk, "sca-v1|c1|approve|");
    let s = c.handle(
        T0 + 5,
        Event::Decision {
            device_id: "a",
            approve: true,
            signature: Some(&good),
            number: None,
        },
    );
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
}

#[test]
fn payment_signature_binds_the_transaction() {
    let (sk, pk) = device_key(6);
    let spec = spec_with(|v| {
        v["kind"] = "payment".into();
        v["transaction"] =
            serde_json::json!({"amount": "10.00", "currency": "EUR", "payee": "Bob"});
        v["devices"][0]["public_key"] = pk.clone().into();
    });
    let digest = spec.tx_digest();
    let (mut c, _) = start(spec);
    let without_tx = sign(&sk, "sca-v1|c1|approve|");
    let s = c.handle(
        T0 + 5,
        Event::Decision {
            device_id: "a",
            approve: true,
            signature: Some(&without_tx),
            number: None,
        },
    );
    assert_eq!(s.reply, Reply::BadSignature);
    let good = sign(&sk, &format!("sca-v1|c1|approve|{digest}"));
    let s = c.handle(
        T0 + 5,
        Event::Decision {
            device_id: "a",
            approve: true,
            signature: Some(&good),
            number: None,
        },
    );
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
}

#[test]
fn number_mismatch_denies() {
    let spec = spec_with(|v| v["number_match"] = true.into());
    let nm = NumberMatch {
        number: 42,
        choices: [17, 42, 88],
    };
    let (mut c, _) = Challenge::start(spec, T0, &[true, true, true], 30, Some(nm));
    let s = c.handle(
        T0 + 5,
        Event::Decision {
            device_id: "a",
            approve: true,
            signature: None,
            number: Some(17),
        },
    );
    assert_eq!(s.reply, Reply::NumberMismatch);
    assert_eq!(c.outcome.unwrap().kind, OutcomeKind::Denied);

    let spec = spec_with(|v| v["number_match"] = true.into());
    let (mut c, _) = Challenge::start(spec, T0, &[true, true, true], 30, Some(nm));
    let s = c.handle(
        T0 + 5,
        Event::Decision {
            device_id: "a",
            approve: true,
            signature: None,
            number: Some(42),
        },
    );
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
}

#[test]
fn expiry_withdraws_and_refuses_late_decisions() {
    let (mut c, _) = start(spec_with(|v| {
        v.as_object_mut().unwrap().remove("sms");
    }));
    assert_eq!(c.next_deadline(), Some(T0 + 120_000));
    let s = c.handle(T0 + 119_999, Event::Tick);
    assert!(s.commands.is_empty());
    let s = c.handle(T0 + 120_000, Event::Tick);
    assert_eq!(s.commands.len(), 4);
    assert_eq!(c.outcome.as_ref().unwrap().kind, OutcomeKind::Expired);
    let s = c.handle(T0 + 120_001, decision("a", true));
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Expired));
}

#[test]
fn decision_at_the_deadline_is_too_late() {
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(T0 + 120_000, decision("a", true));
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Expired));
}

#[test]
fn cancel_withdraws() {
    let (mut c, _) = start(spec_with(|_| {}));
    c.handle(
        T0,
        Event::PushResult {
            device: 2,
            result: PushResult::Failed,
        },
    );
    let s = c.handle(T0 + 1, Event::Cancel);
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Cancelled));
    assert_eq!(
        s.commands,
        vec![
            Command::Withdraw { device: 0 },
            Command::Withdraw { device: 1 },
            Command::PublishOutcome
        ]
    );
    let s = c.handle(T0 + 2, Event::Cancel);
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Cancelled));
}

#[test]
fn token_gone_emits_event_and_all_failed_sends_sms() {
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(
        T0,
        Event::PushResult {
            device: 0,
            result: PushResult::TokenGone,
        },
    );
    assert_eq!(s.commands, vec![Command::TokenInvalid { device: 0 }]);
    c.handle(
        T0,
        Event::PushResult {
            device: 1,
            result: PushResult::Failed,
        },
    );
    let s = c.handle(
        T0,
        Event::PushResult {
            device: 2,
            result: PushResult::Failed,
        },
    );
    assert_eq!(s.commands, vec![Command::SendSms]);
}

#[test]
fn no_device_and_no_sms_is_undeliverable() {
    let spec = spec_with(|v| {
        v["devices"] = serde_json::json!([]);
        v.as_object_mut().unwrap().remove("sms");
    });
    let (c, cmds) = start(spec);
    assert_eq!(cmds, vec![Command::PublishOutcome]);
    assert_eq!(c.outcome.unwrap().kind, OutcomeKind::Undeliverable);
}

#[test]
fn unreachable_provider_counts_as_no_device() {
    let spec = spec_with(|v| {
        v.as_object_mut().unwrap().remove("sms");
    });
    let (c, cmds) = Challenge::start(spec, T0, &[false, false, false], 30, None);
    assert_eq!(cmds, vec![Command::PublishOutcome]);
    assert_eq!(c.outcome.unwrap().reason, Some("no_reachable_device"));
}

#[test]
fn no_device_sends_sms_at_once() {
    let (_, cmds) = start(spec_with(|v| v["devices"] = serde_json::json!([])));
    assert_eq!(cmds, vec![Command::SendSms]);
}

#[test]
fn sms_refused_with_no_push_is_undeliverable() {
    let (mut c, _) = start(spec_with(|v| v["devices"] = serde_json::json!([])));
    let s = c.handle(T0, Event::SmsUnavailable);
    assert_eq!(s.commands, vec![Command::PublishOutcome]);
    assert_eq!(c.outcome.unwrap().reason, Some("sms_failed"));
}

#[test]
fn fallback_after_delay_then_correct_code_approves_via_sms() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|_| {}));
    assert!(c.handle(T0 + 29_999, Event::Tick).commands.is_empty());
    let s = c.handle(T0 + 30_000, Event::Tick);
    assert_eq!(s.commands, vec![Command::SendSms]);
    c.handle(
        T0 + 30_000,
        Event::SmsIssued {
            hash: h.hash("123456", "c1", ""),
        },
    );
    c.handle(
        T0 + 30_100,
        Event::SmsResult {
            seq: 1,
            delivered: true,
        },
    );
    assert_eq!(c.sms, SmsState::Sent);
    let s = c.handle(
        T0 + 31_000,
        Event::OtpAttempt {
            hash: h.hash("654321", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::WrongCode { attempts_left: 4 });
    let s = c.handle(
        T0 + 32_000,
        Event::OtpAttempt {
            hash: h.hash("123456", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
    assert_eq!(s.commands.len(), 4, "three withdrawals and the outcome");
    assert_eq!(c.outcome.as_ref().unwrap().channel, Some(Channel::Sms));
    // The code is single use, and push decisions are now refused.
    let s = c.handle(
        T0 + 33_000,
        Event::OtpAttempt {
            hash: h.hash("123456", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Approved));
    assert_eq!(
        c.handle(T0 + 33_000, decision("a", true)).reply,
        Reply::AlreadyDone(OutcomeKind::Approved)
    );
}

#[test]
fn push_after_sms_wins_and_code_is_refused() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|_| {}));
    c.handle(T0 + 1, Event::SmsRequested);
    c.handle(
        T0 + 1,
        Event::SmsIssued {
            hash: h.hash("111111", "c1", ""),
        },
    );
    let s = c.handle(T0 + 2, decision("c", true));
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
    let s = c.handle(
        T0 + 3,
        Event::OtpAttempt {
            hash: h.hash("111111", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Approved));
}

#[test]
fn five_wrong_codes_lock() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|_| {}));
    c.handle(T0, Event::SmsRequested);
    c.handle(
        T0,
        Event::SmsIssued {
            hash: h.hash("111111", "c1", ""),
        },
    );
    for left in (1..=4).rev() {
        let s = c.handle(
            T0 + 1,
            Event::OtpAttempt {
                hash: h.hash("000000", "c1", ""),
            },
        );
        assert_eq!(
            s.reply,
            Reply::WrongCode {
                attempts_left: left
            }
        );
    }
    let s = c.handle(
        T0 + 1,
        Event::OtpAttempt {
            hash: h.hash("000000", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::Locked);
    assert_eq!(c.outcome.as_ref().unwrap().kind, OutcomeKind::OtpLocked);
    let s = c.handle(
        T0 + 1,
        Event::OtpAttempt {
            hash: h.hash("111111", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::Locked);
}

#[test]
fn new_sms_voids_previous_code_and_code_expires() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|v| v["ttl_seconds"] = 900.into()));
    c.handle(T0, Event::SmsRequested);
    c.handle(
        T0,
        Event::SmsIssued {
            hash: h.hash("111111", "c1", ""),
        },
    );
    c.handle(T0 + 10, Event::SmsRequested);
    c.handle(
        T0 + 10,
        Event::SmsIssued {
            hash: h.hash("222222", "c1", ""),
        },
    );
    let s = c.handle(
        T0 + 20,
        Event::OtpAttempt {
            hash: h.hash("111111", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::WrongCode { attempts_left: 4 });
    let s = c.handle(
        T0 + 10 + OTP_VALIDITY_MS,
        Event::OtpAttempt {
            hash: h.hash("222222", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::CodeExpired);
    assert!(!c.is_done());
}

#[test]
fn code_never_outlives_the_challenge() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|v| v["ttl_seconds"] = 60.into()));
    c.handle(T0 + 50_000, Event::SmsRequested);
    c.handle(
        T0 + 50_000,
        Event::SmsIssued {
            hash: h.hash("111111", "c1", ""),
        },
    );
    let s = c.handle(
        T0 + 60_000,
        Event::OtpAttempt {
            hash: h.hash("111111", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::AlreadyDone(OutcomeKind::Expired));
}

#[test]
fn otp_without_code_and_sms_without_phone() {
    let (mut c, _) = start(spec_with(|v| {
        v.as_object_mut().unwrap().remove("sms");
    }));
    let h = OtpHasher::new([1; 32]);
    assert_eq!(
        c.handle(
            T0,
            Event::OtpAttempt {
                hash: h.hash("1", "c1", "")
            }
        )
        .reply,
        Reply::NoCode
    );
    assert_eq!(c.handle(T0, Event::SmsRequested).reply, Reply::NoSms);
}

#[test]
fn a_late_failure_of_an_older_sms_never_voids_the_newer_code() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|v| v["ttl_seconds"] = 900.into()));
    let issue = |c: &mut Challenge, at: i64, code: &str| {
        assert_eq!(c.handle(at, Event::SmsRequested).reply, Reply::SmsQueued);
        c.handle(
            at,
            Event::SmsIssued {
                hash: h.hash(code, "c1", ""),
            },
        );
    };
    issue(&mut c, T0, "111111");
    issue(&mut c, T0 + 10, "222222");
    // SMS #1 reports its failure after SMS #2 was issued.
    c.handle(
        T0 + 20,
        Event::SmsResult {
            seq: 1,
            delivered: false,
        },
    );
    assert_eq!(c.sms, SmsState::Sending, "the older result is ignored");
    let s = c.handle(
        T0 + 30,
        Event::OtpAttempt {
            hash: h.hash("222222", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
}

#[test]
fn a_failure_of_the_current_sms_voids_its_code() {
    let h = OtpHasher::new([1; 32]);
    let (mut c, _) = start(spec_with(|v| v["ttl_seconds"] = 900.into()));
    c.handle(T0, Event::SmsRequested);
    c.handle(
        T0,
        Event::SmsIssued {
            hash: h.hash("111111", "c1", ""),
        },
    );
    c.handle(
        T0 + 20,
        Event::SmsResult {
            seq: 1,
            delivered: false,
        },
    );
    assert_eq!(c.sms, SmsState::Failed);
    let s = c.handle(
        T0 + 30,
        Event::OtpAttempt {
            hash: h.hash("111111", "c1", ""),
        },
    );
    assert_eq!(s.reply, Reply::NoCode);
}

#[test]
fn expired_on_arrival() {
    let spec = spec_with(|_| {});
    let (c, cmds) = Challenge::start(spec, T0 + 200_000, &[true; 3], 30, None);
    assert_eq!(cmds, vec![Command::PublishOutcome]);
    assert_eq!(c.outcome.unwrap().kind, OutcomeKind::Expired);
}

fn key_b64(seed: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

#[test]
fn a_held_back_challenge_goes_to_sms_or_ends_rate_limited() {
    let (c, cmds) = Challenge::held_back(spec_with(|_| {}), T0, "push_muted");
    assert_eq!(cmds, vec![Command::SendSms], "no push, SMS at once");
    assert!(c.devices.iter().all(|d| d.push == PushState::Suppressed));
    assert!(!c.is_done() && !c.pushed());
    let spec = spec_with(|v| {
        v.as_object_mut().unwrap().remove("sms");
    });
    let (c, cmds) = Challenge::held_back(spec, T0, "push_backoff");
    assert_eq!(cmds, vec![Command::PublishOutcome]);
    let o = c.outcome.unwrap();
    assert_eq!(
        (o.kind, o.reason),
        (OutcomeKind::RateLimited, Some("push_backoff"))
    );
}

#[test]
fn a_fraud_report_denies_with_its_reason_and_a_supersede_cancels() {
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(
        T0 + 1,
        Event::ReportFraud {
            device_id: "zz",
            signature: None,
        },
    );
    assert_eq!(s.reply, Reply::DeviceNotBound);
    let s = c.handle(
        T0 + 2,
        Event::ReportFraud {
            device_id: "c",
            signature: None,
        },
    );
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Denied));
    let o = c.outcome.clone().unwrap();
    assert_eq!((o.device, o.reason), (Some(2), Some("fraud_reported")));
    let (mut c, _) = start(spec_with(|_| {}));
    let s = c.handle(T0 + 1, Event::Supersede);
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Cancelled));
    assert_eq!(c.outcome.unwrap().reason, Some("superseded"));
}

#[test]
fn an_offline_code_approves_once_and_withdraws_every_push() {
    let spec = spec_with(|v| {
        v["offline"] = true.into();
        v["devices"][2]["offline_key"] = key_b64(7).into();
    });
    let (mut c, _) = start(spec);
    let s = c.handle(T0 + 1, Event::OfflineAttempt { code: 1 });
    assert_eq!(s.reply, Reply::NotOffline, "no operation id yet");
    c.operation_id = Some(12_345_678);
    let code = offline::OfflineKey::from_bytes([7; 32]).code("12345678", "");
    let s = c.handle(T0 + 2, Event::OfflineAttempt { code: code ^ 1 });
    assert_eq!(s.reply, Reply::WrongCode { attempts_left: 4 });
    let s = c.handle(T0 + 3, Event::OfflineAttempt { code });
    assert_eq!(s.reply, Reply::Decided(OutcomeKind::Approved));
    assert_eq!(
        s.commands
            .iter()
            .filter(|c| matches!(c, Command::Withdraw { .. }))
            .count(),
        3
    );
    let o = c.outcome.clone().unwrap();
    assert_eq!((o.channel, o.device), (Some(Channel::Offline), Some(2)));
    assert!(c.spec.devices.iter().all(|d| d.offline_key.is_none()));
}

// ---- property tests -------------------------------------------------------------

#[derive(Debug, Clone)]
enum Ev {
    Push(usize, u8),
    Decide(usize, bool),
    Otp(bool),
    SmsReq,
    SmsIssued,
    SmsUnavailable,
    SmsResult(bool),
    Cancel,
    Tick,
    Fraud(usize),
    Offline(bool),
    Supersede,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (0usize..4, 0u8..3).prop_map(|(d, r)| Ev::Push(d, r)),
        (0usize..4, any::<bool>()).prop_map(|(d, a)| Ev::Decide(d, a)),
        any::<bool>().prop_map(Ev::Otp),
        Just(Ev::SmsReq),
        Just(Ev::SmsIssued),
        Just(Ev::SmsUnavailable),
        any::<bool>().prop_map(Ev::SmsResult),
        Just(Ev::Cancel),
        Just(Ev::Tick),
        (0usize..4).prop_map(Ev::Fraud),
        any::<bool>().prop_map(Ev::Offline),
        Just(Ev::Supersede),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn invariants_hold_over_random_sequences(
        events in prop::collection::vec((ev(), 0i64..20_000), 0..40),
        ndev in 0usize..4,
        with_sms in any::<bool>(),
        reach in prop::collection::vec(any::<bool>(), 4),
    ) {
        let h = OtpHasher::new([9; 32]);
        let spec = spec_with(|v| {
            v["devices"] = serde_json::Value::Array(v["devices"].as_array().unwrap()[..ndev.min(3)].to_vec());
            if let Some(d) = v["devices"].get_mut(1) { d["offline_key"] = key_b64(5).into(); }
            if !with_sms { v.as_object_mut().unwrap().remove("sms"); }
        });
        let ttl_end = spec.expires_at_ms();
        let n = spec.devices.len();
        let (mut c, cmds) = Challenge::start(spec, T0, &reach[..n], 30, None);
        c.operation_id = Some(42);
        let right_offline = offline::OfflineKey::from_bytes([5; 32]).code("00000042", "");
        let mut all: Vec<Command> = cmds;
        let mut pushed: Vec<bool> = vec![false; n];
        let mut dead: Vec<bool> = vec![false; n];
        for cmd in &all { if let Command::Push { device } = cmd { pushed[*device] = true; } }
        let mut now = T0;
        let mut done_at: Option<usize> = if c.is_done() { Some(0) } else { None };
        for (e, dt) in events {
            now += dt;
            let was_done = c.is_done();
            let names = ["a", "b", "c", "zz"];
            let step = match e {
                Ev::Push(d, r) => {
                    let result = [PushResult::Delivered, PushResult::TokenGone, PushResult::Failed][r as usize];
                    if d < n && result != PushResult::Delivered && c.devices[d].push == PushState::Sending && !c.devices[d].withdrawn { dead[d] = true; }
                    c.handle(now, Event::PushResult { device: d, result })
                }
                Ev::Decide(d, a) => c.handle(now, decision(names[d], a)),
                Ev::Otp(right) => c.handle(now, Event::OtpAttempt { hash: h.hash(if right { "123456" } else { "000000" }, "c1", "") }),
                Ev::SmsReq => c.handle(now, Event::SmsRequested),
                Ev::SmsIssued => c.handle(now, Event::SmsIssued { hash: h.hash("123456", "c1", "") }),
                Ev::SmsUnavailable => c.handle(now, Event::SmsUnavailable),
                Ev::SmsResult(ok) => { let seq = c.sms_sent; c.handle(now, Event::SmsResult { seq, delivered: ok }) }
                Ev::Cancel => c.handle(now, Event::Cancel),
                Ev::Tick => c.handle(now, Event::Tick),
                Ev::Fraud(d) => c.handle(now, Event::ReportFraud { device_id: names[d], signature: None }),
                Ev::Offline(right) => c.handle(now, Event::OfflineAttempt { code: if right { right_offline } else { right_offline ^ 1 } }),
                Ev::Supersede => c.handle(now, Event::Supersede),
            };
            if was_done {
                // Nothing is accepted after the outcome: no new work, no second outcome.
                prop_assert!(step.commands.iter().all(|c| matches!(c, Command::TokenInvalid { .. })), "{:?}", step.commands);
                let accepted = matches!(step.reply, Reply::Decided(_) | Reply::SmsQueued | Reply::WrongCode { .. });
                prop_assert!(!accepted, "accepted after the outcome: {:?}", step.reply);
            }
            if done_at.is_none() && c.is_done() { done_at = Some(all.len()); }
            all.extend(step.commands);
        }
        // Drive time past the ttl: every challenge ends.
        let s = c.handle(ttl_end + 1, Event::Tick);
        all.extend(s.commands);
        prop_assert!(c.is_done());
        prop_assert_eq!(all.iter().filter(|c| **c == Command::PublishOutcome).count(), 1);
        let o = c.outcome.clone().unwrap();
        if o.kind == OutcomeKind::Expired {
            prop_assert!(o.decided_at_ms >= ttl_end, "expired before its ttl");
        } else {
            prop_assert!(o.decided_at_ms < ttl_end);
        }
        // Withdrawal reaches every other pushed device still alive when decided, once.
        for i in 0..n {
            let w = all.iter().filter(|c| **c == Command::Withdraw { device: i }).count();
            prop_assert!(w <= 1);
            let by_offline = o.channel == Some(Channel::Offline);
            if pushed[i] && !dead[i] && (o.device != Some(i) || by_offline) {
                prop_assert_eq!(w, 1, "device {} not withdrawn", i);
            }
            if o.device == Some(i) && !by_offline { prop_assert_eq!(w, 0); }
        }
        // Offline keys never outlive the challenge.
        prop_assert!(c.spec.devices.iter().all(|d| d.offline_key.is_none()));
        if o.channel == Some(Channel::Offline) && o.kind == OutcomeKind::Approved {
            prop_assert_eq!(o.device, Some(1));
        }
    }
}
