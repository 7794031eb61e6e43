//! Broker-free tests of the core: one per operation, and property tests over random
//! interleavings of intake, duplicates, decisions, provider results, confirms, ticks and
//! shutdown against ARCHITECTURE.md's invariants.

use super::*;
use crate::challenge::machine::NumberMatch;
use crate::wire::ops::{Decision, DecisionOp, OtpCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// `created_at` of the test challenges, in Unix ms.
const T0: i64 = 1_795_462_800_000;
const CODE: &str = "123456";

/// Fixed randomness: number 42 among 17/42/88; every code is [`CODE`].
struct Fixed;

impl Entropy for Fixed {
    fn number_match(&self) -> NumberMatch {
        NumberMatch {
            number: 42,
            choices: [17, 42, 88],
        }
    }
    fn otp_code(&self) -> String {
        CODE.into()
    }
}

/// Ack tokens of the tests: a delivery number.
type Tag = u32;

fn core_with(tweak: impl FnOnce(&mut Config, &mut Settings)) -> Core<Tag> {
    let mut cfg = Config::default();
    cfg.sms.otp_key = "test-key".into();
    let mut s = Settings::from_config(
        &cfg,
        Reach {
            apns: true,
            fcm: true,
            hms: true,
            sms_gateway: true,
        },
    );
    tweak(&mut cfg, &mut s);
    Core::new(&cfg, s, Box::new(Fixed))
}

fn core() -> Core<Tag> {
    core_with(|_, _| {})
}

fn challenge(id: &str) -> Value {
    json!({
        "v": 1, "challenge_id": id, "user_id": format!("u-{id}"), "kind": "login",
        "created_at": "2026-11-23T19:40:00Z", "ttl_seconds": 120,
        "devices": [
            {"device_id": "a", "platform": "apns", "token": "ab".repeat(32)},
            {"device_id": "b", "platform": "fcm", "token": "tok-b"}
        ],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 30}
    })
}

fn body(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn decide(device: &str, approve: bool) -> Operation {
    Operation::Decision(DecisionOp {
        device_id: serde_json::from_value(json!(device)).unwrap(),
        decision: if approve {
            Decision::Approve
        } else {
            Decision::Deny
        },
        signature: None,
        number: None,
        report_fraud: false,
    })
}

fn otp(code: &str) -> Operation {
    Operation::Otp {
        code: OtpCode::parse(code).unwrap(),
    }
}

fn pushes(fx: &Effects<Tag>) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Push { .. }))
        .count()
}

fn withdrawals(fx: &Effects<Tag>) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Withdraw { .. }))
        .count()
}

fn outcome_of(fx: &Effects<Tag>) -> Option<Value> {
    fx.iter().find_map(|e| match e {
        Effect::PublishOutcome { body, .. } => serde_json::from_slice(body).ok(),
        _ => None,
    })
}

fn settled(fx: &Effects<Tag>) -> Vec<Tag> {
    fx.iter()
        .flat_map(|e| match e {
            Effect::Settle(a) => a.clone(),
            _ => vec![],
        })
        .collect()
}

fn events(fx: &Effects<Tag>) -> Vec<&'static str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::PublishEvent { routing_key, .. } => Some(*routing_key),
            _ => None,
        })
        .collect()
}

#[test]
fn intake_pushes_every_device_and_arms_the_fallback() {
    let c = core();
    let fx = c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    assert_eq!(pushes(&fx), 2);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::ArmTimer { id, at } if &**id == "c1" && *at == T0 + 30_000)));
    assert!(fx.contains_effect_count(Metric::InFlight(true)));
    assert!(c.holds("c1"));
    assert_eq!(c.pending(), 1);
}

trait CountEffect {
    fn contains_effect_count(&self, m: Metric) -> bool;
}

impl CountEffect for Effects<Tag> {
    fn contains_effect_count(&self, m: Metric) -> bool {
        self.iter()
            .any(|e| matches!(e, Effect::Count(x) if *x == m))
    }
}

#[test]
fn a_duplicate_joins_and_is_settled_with_the_first() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let fx = c.intake(T0 + 5, &body(&challenge("c1")), DeliveryMeta::default(), 2);
    assert_eq!(pushes(&fx), 0, "never dispatched twice");
    assert!(
        settled(&fx).is_empty(),
        "no settle before the outcome's confirm"
    );
    let (o, fx) = c.operate(T0 + 10, "c1", &decide("a", true), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Approved
        }
    );
    assert!(settled(&fx).is_empty());
    assert_eq!(withdrawals(&fx), 1, "the other device is withdrawn");
    assert_eq!(outcome_of(&fx).unwrap()["outcome"], "approved");
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::WakeWaiters(id) if &**id == "c1")));
    let fx = c.confirmed(T0 + 20, "c1");
    assert_eq!(settled(&fx), vec![1, 2]);
    // A copy after the confirm is settled at once.
    let fx = c.intake(T0 + 30, &body(&challenge("c1")), DeliveryMeta::default(), 3);
    assert_eq!(settled(&fx), vec![3]);
    assert_eq!(pushes(&fx), 0);
}

#[test]
fn a_second_decision_is_refused() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    c.operate(T0 + 1, "c1", &decide("a", false), Authority::Bearer);
    let (o, fx) = c.operate(T0 + 2, "c1", &decide("b", true), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::AlreadyDecided {
            outcome: OutcomeKind::Denied
        }
    );
    assert!(outcome_of(&fx).is_none());
}

#[test]
fn an_unsigned_caller_is_refused_in_the_same_step_as_the_decision() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let (o, fx) = c.operate(T0 + 1, "c1", &decide("a", true), Authority::DeviceSignature);
    assert_eq!(o, OpOutcome::Unauthorized);
    assert!(fx.is_empty());
    assert_eq!(c.is_decided("c1"), Some(false));
    let (o, _) = c.operate(T0 + 1, "c1", &Operation::Cancel, Authority::DeviceSignature);
    assert_eq!(o, OpOutcome::Unauthorized);
    let (o, _) = c.operate(T0 + 1, "zz", &decide("a", true), Authority::DeviceSignature);
    assert_eq!(o, OpOutcome::NotFound);
}

#[test]
fn sms_then_code_approves_and_counts() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let (o, fx) = c.operate(T0 + 1, "c1", &Operation::Sms, Authority::Bearer);
    assert_eq!(o, OpOutcome::SmsSent);
    let (seq, msg) = fx
        .iter()
        .find_map(|e| match e {
            Effect::SendSms { seq, msg, .. } => Some((*seq, msg.clone())),
            _ => None,
        })
        .expect("an SMS");
    assert_eq!(seq, 1);
    assert!(msg.text.contains(CODE));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::TellPeers(PeerNote::SmsSent { .. }))));
    let fx = c.sms_result(T0 + 2, "c1", 1, Ok(()));
    assert_eq!(events(&fx), vec!["sms.sent"]);
    let (o, _) = c.operate(T0 + 3, "c1", &otp("000000"), Authority::Queue);
    assert_eq!(o, OpOutcome::WrongCode { attempts_left: 4 });
    let (o, fx) = c.operate(T0 + 4, "c1", &otp(CODE), Authority::Queue);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Approved
        }
    );
    assert_eq!(outcome_of(&fx).unwrap()["channel"], "sms");
    assert!(fx.contains_effect_count(Metric::Otp("ok")));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::TellPeers(PeerNote::SmsConfirmed { .. }))));
}

#[test]
fn a_late_result_of_an_older_sms_keeps_the_newer_code() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    c.operate(T0 + 1, "c1", &Operation::Sms, Authority::Bearer);
    c.operate(T0 + 2, "c1", &Operation::Sms, Authority::Bearer);
    c.sms_result(T0 + 3, "c1", 1, Err("gave up".into()));
    let (o, _) = c.operate(T0 + 4, "c1", &otp(CODE), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Approved
        }
    );
}

#[test]
fn sms_without_gateway_or_over_the_limit_is_refused() {
    let c = core_with(|_, s| s.reach.sms_gateway = false);
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let (o, fx) = c.operate(T0 + 1, "c1", &Operation::Sms, Authority::Bearer);
    assert_eq!(o, OpOutcome::SmsUnavailable);
    assert_eq!(events(&fx), vec!["sms.failed"]);

    let c = core_with(|cfg, _| cfg.sms.max_per_window = 1);
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let (o, _) = c.operate(T0 + 1, "c1", &Operation::Sms, Authority::Bearer);
    assert_eq!(o, OpOutcome::SmsSent);
    let (o, _) = c.operate(T0 + 2, "c1", &Operation::Sms, Authority::Bearer);
    assert!(matches!(o, OpOutcome::SmsLimit { .. }), "{o:?}");
}

#[test]
fn cancel_and_no_sms() {
    let c = core();
    let mut v = challenge("c1");
    v.as_object_mut().unwrap().remove("sms");
    c.intake(T0, &body(&v), DeliveryMeta::default(), 1);
    let (o, _) = c.operate(T0 + 1, "c1", &Operation::Sms, Authority::Bearer);
    assert_eq!(o, OpOutcome::NoSms);
    let (o, _) = c.operate(T0 + 1, "c1", &otp(CODE), Authority::Bearer);
    assert_eq!(o, OpOutcome::NoCode);
    let (o, fx) = c.operate(T0 + 2, "c1", &Operation::Cancel, Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Cancelled
        }
    );
    assert_eq!(withdrawals(&fx), 2);
    let (o, _) = c.operate(T0 + 2, "nope", &Operation::Cancel, Authority::Bearer);
    assert_eq!(o, OpOutcome::NotFound);
}

#[test]
fn a_refused_body_is_dead_lettered_with_a_rejected_outcome_unless_held() {
    let c = core();
    let mut bad = challenge("c1");
    bad["ttl_seconds"] = json!(1);
    let fx = c.intake(T0, &body(&bad), DeliveryMeta::default(), 1);
    let Some(Effect::DeadLetter { outcome, ack, .. }) =
        fx.iter().find(|e| matches!(e, Effect::DeadLetter { .. }))
    else {
        panic!("no dead letter: {fx:?}")
    };
    assert_eq!(*ack, 1);
    let (rk, out) = outcome.as_ref().expect("a rejected outcome");
    assert_eq!(rk, "outcome.login.rejected");
    let out: Value = serde_json::from_slice(out).unwrap();
    assert_eq!(out["outcome"], "rejected");
    // The rejected id is retained as a finished challenge.
    assert_eq!(c.is_decided("c1"), Some(true));
    // The same id held: no second outcome.
    c.intake(T0, &body(&challenge("c2")), DeliveryMeta::default(), 2);
    let fx = c.intake(
        T0,
        &body(&{
            let mut b = challenge("c2");
            b["ttl_seconds"] = json!(1);
            b
        }),
        DeliveryMeta::default(),
        3,
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::DeadLetter {
            outcome: None,
            retained: None,
            ..
        }
    )));
}

#[test]
fn an_unknown_app_is_dead_lettered_and_each_app_pushes_on_its_own_platforms() {
    let business = AppName::parse("business").unwrap();
    let c = core_with(|_, s| {
        s.apps = vec![(
            business.clone(),
            AppReach {
                apns: true,
                fcm: false,
                hms: false,
            },
        )]
    });
    let mut v = challenge("c1");
    v["app"] = json!("nope");
    let fx = c.intake(T0, &body(&v), DeliveryMeta::default(), 1);
    let Some(Effect::DeadLetter {
        reason, outcome, ..
    }) = fx.iter().find(|e| matches!(e, Effect::DeadLetter { .. }))
    else {
        panic!("no dead letter: {fx:?}")
    };
    assert_eq!(reason, "unknown_app: app `nope` is not configured");
    let out: Value = serde_json::from_slice(&outcome.as_ref().unwrap().1).unwrap();
    assert_eq!(out["outcome"], "rejected");
    assert_eq!(pushes(&fx), 0);
    assert!(fx.contains_effect_count(Metric::Rejected {
        reason: "unknown_app"
    }));
    // A configured app: only its APNs device is pushed (it has no FCM), with its name.
    v["challenge_id"] = json!("c2");
    v["app"] = json!("business");
    let fx = c.intake(T0, &body(&v), DeliveryMeta::default(), 2);
    let apps: Vec<(&str, Platform)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Push { msg, platform, .. } => Some((msg.app.as_str(), *platform)),
            _ => None,
        })
        .collect();
    assert_eq!(apps, [("business", Platform::Apns)]);
    // The configured name is shared, not copied per challenge.
    let shared = fx.iter().find_map(|e| match e {
        Effect::Push { msg, .. } => msg.app.shared().cloned(),
        _ => None,
    });
    assert!(Arc::ptr_eq(&shared.unwrap(), business.shared().unwrap()));
    // "default" and no app are the default app: both devices.
    v["challenge_id"] = json!("c3");
    v["app"] = json!("default");
    let fx = c.intake(T0, &body(&v), DeliveryMeta::default(), 3);
    assert_eq!(pushes(&fx), 2);
}

#[test]
fn a_rejected_id_is_retained_and_later_copies_get_no_second_outcome() {
    let c = core_with(|_, s| s.retain_ms = 60_000);
    let mut bad = challenge("c1");
    bad["devices"] = json!("nope");
    let fx = c.intake(T0, &body(&bad), DeliveryMeta::default(), 1);
    let Some(Effect::DeadLetter {
        retained,
        outcome,
        reason,
        ..
    }) = fx.iter().find(|e| matches!(e, Effect::DeadLetter { .. }))
    else {
        panic!("no dead letter: {fx:?}")
    };
    assert_eq!(retained.as_deref(), Some("c1"));
    assert!(outcome.is_some());
    assert!(reason.starts_with("invalid_field"), "{reason}");
    // A valid copy before the confirm: no dispatch, no outcome, settled at the confirm.
    let fx = c.intake(T0 + 1, &body(&challenge("c1")), DeliveryMeta::default(), 2);
    assert_eq!(pushes(&fx), 0, "{fx:?}");
    assert!(outcome_of(&fx).is_none());
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Settle(_) | Effect::DeadLetter { .. })));
    // An invalid copy: dead-lettered without a second outcome.
    let fx = c.intake(T0 + 1, &body(&bad), DeliveryMeta::default(), 3);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::DeadLetter {
            outcome: None,
            retained: None,
            ack: 3,
            ..
        }
    )));
    let fx = c.confirmed(T0 + 2, "c1");
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Settle(a) if a == &vec![2])),
        "{fx:?}"
    );
    // Retained for ttl (120 s parsed) since it is later than confirm + 60 s.
    let at = fx
        .iter()
        .find_map(|e| match e {
            Effect::ArmTimer { at, .. } => Some(*at),
            _ => None,
        })
        .expect("a retention timer");
    assert_eq!(at, T0 + 120_000);
    let v = c.view("c1").unwrap();
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["state"], "completed", "{json}");
    assert_eq!(json["outcome"], "rejected", "{json}");
    assert!(v.devices.is_empty());
    // A late operation is answered as for a finished challenge.
    let (o, fx) = c.operate(T0 + 3, "c1", &Operation::Cancel, Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::AlreadyDecided {
            outcome: OutcomeKind::Rejected
        }
    );
    assert!(outcome_of(&fx).is_none());
    // A valid copy after the confirm is settled at once, never dispatched.
    let fx = c.intake(T0 + 4, &body(&challenge("c1")), DeliveryMeta::default(), 4);
    assert_eq!(pushes(&fx), 0);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Settle(a) if a == &vec![4])));
    // Retention over: forgotten.
    c.tick(T0 + 120_000, "c1");
    assert!(!c.holds("c1"));
}

#[test]
fn a_rejection_without_ttl_is_retained_for_the_retention_alone() {
    let c = core_with(|_, s| s.retain_ms = 60_000);
    let mut bad = challenge("c1");
    bad["ttl_seconds"] = json!("x");
    c.intake(T0, &body(&bad), DeliveryMeta::default(), 1);
    let fx = c.confirmed(T0 + 5, "c1");
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::ArmTimer { at, .. } if *at == T0 + 5 + 60_000)));
}

#[test]
fn a_rate_limited_challenge_is_retained_compact() {
    let c = core_with(|cfg, s| {
        cfg.limits.challenges_per_minute = 1;
        cfg.limits.challenge_burst = 1;
        s.retain_ms = 60_000;
    });
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let mut dup = challenge("c2");
    dup["user_id"] = json!("u-c1");
    let fx = c.intake(T0, &body(&dup), DeliveryMeta::default(), 2);
    assert_eq!(pushes(&fx), 0);
    assert!(outcome_of(&fx).is_some());
    c.confirmed(T0 + 1, "c2");
    let v = serde_json::to_value(c.view("c2").unwrap()).unwrap();
    assert_eq!(v["outcome"], "rate_limited", "{v}");
    // Compact: device tokens and names are gone.
    let dev = &v["devices"];
    assert!(!v.to_string().contains("tok-"), "{v}");
    assert!(
        dev.as_array()
            .is_some_and(|d| d.iter().all(|d| d.get("name").is_none())),
        "{v}"
    );
    // A duplicate is settled without dispatch or a second outcome.
    let fx = c.intake(T0 + 2, &body(&dup), DeliveryMeta::default(), 3);
    assert_eq!(pushes(&fx), 0);
    assert!(outcome_of(&fx).is_none());
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Settle(a) if a == &vec![3])));
}

#[test]
fn rate_limited_challenges_are_settled_without_dispatch() {
    let c = core_with(|cfg, _| {
        cfg.limits.challenges_per_minute = 1;
        cfg.limits.challenge_burst = 1;
    });
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let mut v = challenge("c2");
    v["user_id"] = json!("u-c1");
    let fx = c.intake(T0, &body(&v), DeliveryMeta::default(), 2);
    assert_eq!(pushes(&fx), 0);
    assert_eq!(outcome_of(&fx).unwrap()["outcome"], "rate_limited");
    assert!(fx.contains_effect_count(Metric::RateLimited("user_challenges")));
}

#[test]
fn push_results_and_fallback() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let fx = c.push_result(T0 + 1, "c1", 0, PushResult::TokenGone);
    assert_eq!(events(&fx), vec!["device.token_invalid"]);
    // The last push fails: SMS at once.
    let fx = c.push_result(T0 + 2, "c1", 1, PushResult::Failed);
    assert!(fx.iter().any(|e| matches!(e, Effect::SendSms { .. })));
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    assert!(c.tick(T0 + 29_999, "c1").is_empty() || c.is_decided("c1") == Some(false));
    let fx = c.tick(T0 + 30_000, "c1");
    assert!(fx.iter().any(|e| matches!(e, Effect::SendSms { .. })));
}

#[test]
fn expiry_then_retention_until_expiry_and_after_confirm() {
    let c = core_with(|_, s| s.retain_ms = 1_000);
    let mut v = challenge("c1");
    v["ttl_seconds"] = json!(900);
    c.intake(T0, &body(&v), DeliveryMeta::default(), 1);
    c.operate(T0 + 1_000, "c1", &decide("a", true), Authority::Bearer);
    let fx = c.confirmed(T0 + 1_100, "c1");
    let at = fx
        .iter()
        .find_map(|e| match e {
            Effect::ArmTimer { at, .. } => Some(*at),
            _ => None,
        })
        .unwrap();
    assert_eq!(at, T0 + 900_000, "kept until its expiry");
    // Re-published 700 s after its approval: a duplicate, not dispatched again.
    c.tick(T0 + 701_000, "c1");
    let fx = c.intake(T0 + 701_000, &body(&v), DeliveryMeta::default(), 2);
    assert_eq!(pushes(&fx), 0);
    assert_eq!(settled(&fx), vec![2]);
    c.tick(T0 + 900_000, "c1");
    assert!(!c.holds("c1"), "memory released after retention");

    // Expiry by the clock, and retention after the confirm when that is later.
    let c = core_with(|_, s| s.retain_ms = 600_000);
    c.intake(T0, &body(&challenge("c2")), DeliveryMeta::default(), 1);
    c.tick(T0 + 30_000, "c2");
    let fx = c.tick(T0 + 120_000, "c2");
    assert_eq!(outcome_of(&fx).unwrap()["outcome"], "expired");
    let fx = c.confirmed(T0 + 120_010, "c2");
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::ArmTimer { at, .. } if *at == T0 + 720_010)));
    c.tick(T0 + 720_009, "c2");
    assert!(c.holds("c2"));
    c.tick(T0 + 720_010, "c2");
    assert_eq!(c.held(), 0);
}

#[test]
fn an_unconfirmed_outcome_keeps_the_entry() {
    let c = core_with(|_, s| s.retain_ms = 1_000);
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    c.operate(T0 + 1, "c1", &Operation::Cancel, Authority::Bearer);
    c.tick(T0 + 10_000_000, "c1");
    assert!(c.holds("c1"), "removed only once confirmed");
}

#[test]
fn number_matching_comes_from_the_injected_entropy() {
    let c = core();
    let mut v = challenge("c1");
    v["number_match"] = json!(true);
    let fx = c.intake(T0, &body(&v), DeliveryMeta::default(), 1);
    let choices = fx.iter().find_map(|e| match e {
        Effect::Push { msg, .. } => match &msg.content {
            PushContent::Challenge { number_choices, .. } => *number_choices,
            _ => None,
        },
        _ => None,
    });
    assert_eq!(choices, Some([17, 42, 88]));
    assert_eq!(c.view("c1").unwrap().number, Some(42));
}

#[test]
fn peer_notes_count_toward_the_limits() {
    let c = core_with(|cfg, _| cfg.sms.max_per_window = 1);
    c.peer_note(
        T0,
        &PeerNote::SmsSent {
            user: "u-c1".into(),
            at: T0,
        },
    );
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    let (o, _) = c.operate(T0 + 1, "c1", &Operation::Sms, Authority::Bearer);
    assert!(matches!(o, OpOutcome::SmsLimit { .. }), "{o:?}");
}

// ---- property tests over interleavings -------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// Deliver challenge `id` (a valid body, or a refused one).
    Intake(usize, bool),
    Decide(usize, usize, bool),
    Otp(usize, bool),
    Sms(usize),
    Cancel(usize),
    /// Answer the n-th push in flight.
    PushDone(usize, u8),
    /// Answer the n-th SMS in flight.
    SmsDone(usize, bool),
    /// The broker confirms the n-th outcome in flight.
    Confirm(usize),
    /// Time passes; due timers fire.
    Advance(i64),
    /// Stop consuming: no more intake.
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..3, prop::bool::weighted(0.85)).prop_map(|(i, ok)| Step::Intake(i, ok)),
        2 => (0usize..3, 0usize..3, any::<bool>()).prop_map(|(i, d, a)| Step::Decide(i, d, a)),
        1 => (0usize..3, any::<bool>()).prop_map(|(i, r)| Step::Otp(i, r)),
        1 => (0usize..3).prop_map(Step::Sms),
        1 => (0usize..3).prop_map(Step::Cancel),
        2 => (0usize..8, 0u8..3).prop_map(|(n, r)| Step::PushDone(n, r)),
        1 => (0usize..4, any::<bool>()).prop_map(|(n, ok)| Step::SmsDone(n, ok)),
        2 => (0usize..4).prop_map(Step::Confirm),
        2 => (0i64..40_000).prop_map(Step::Advance),
        1 => Just(Step::Shutdown),
    ]
}

/// What the driver would hold, and what the invariants need to know.
#[derive(Default)]
struct World {
    now: i64,
    timers: BTreeMap<(i64, u64), Arc<str>>,
    timer_seq: u64,
    pushes: Vec<(Arc<str>, usize)>,
    sms: Vec<(Arc<str>, u8)>,
    publishes: Vec<Arc<str>>,
    /// Per id, for its current life in the table: outcomes published, confirmed.
    outcomes: HashMap<String, usize>,
    confirmed: HashSet<String>,
    /// Deliveries of valid bodies by id (not yet settled), and every settled tag.
    open_acks: HashMap<Tag, String>,
    settled: HashSet<Tag>,
    next_tag: Tag,
    stopped: bool,
}

impl World {
    fn absorb(&mut self, c: &Core<Tag>, fx: Effects<Tag>) -> Result<(), TestCaseError> {
        for e in fx {
            match e {
                Effect::Push { device, msg, .. } => {
                    let id = msg.challenge_id.to_string();
                    prop_assert!(
                        !self.outcomes.contains_key(&id),
                        "push after the outcome of {id}"
                    );
                    self.pushes.push((msg.challenge_id, device));
                }
                Effect::SendSms { id, seq, .. } => {
                    prop_assert!(
                        !self.outcomes.contains_key(&*id),
                        "SMS after the outcome of {id}"
                    );
                    self.sms.push((id, seq));
                }
                Effect::PublishOutcome { id, .. } => {
                    let n = self.outcomes.entry(id.to_string()).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "a second outcome for {}", id);
                    self.publishes.push(id);
                }
                Effect::Settle(tags) => {
                    for t in tags {
                        let id = self.open_acks.remove(&t);
                        prop_assert!(id.is_some(), "tag {} settled twice or unknown", t);
                        let id = id.unwrap();
                        prop_assert!(
                            self.confirmed.contains(&id),
                            "{id} settled before its outcome's confirm"
                        );
                        self.settled.insert(t);
                    }
                }
                Effect::DeadLetter {
                    ack,
                    outcome,
                    retained,
                    ..
                } => {
                    prop_assert!(self.settled.insert(ack));
                    prop_assert_eq!(outcome.is_some(), retained.is_some());
                    if let Some(id) = retained {
                        // The rejected outcome counts like any other: one per id.
                        let n = self.outcomes.entry(id.to_string()).or_default();
                        *n += 1;
                        prop_assert_eq!(*n, 1, "a second outcome for {}", id);
                        self.publishes.push(id);
                    }
                }
                Effect::ArmTimer { id, at } => {
                    self.timer_seq += 1;
                    self.timers.insert((at, self.timer_seq), id);
                }
                Effect::Withdraw { .. }
                | Effect::PublishEvent { .. }
                | Effect::WakeWaiters(_)
                | Effect::TellPeers(_)
                | Effect::Count(_) => {}
            }
        }
        let _ = c;
        Ok(())
    }

    fn fire_timers(&mut self, c: &Core<Tag>) -> Result<(), TestCaseError> {
        while let Some((&(at, seq), _)) = self.timers.iter().next() {
            if at > self.now {
                break;
            }
            let id = self.timers.remove(&(at, seq)).unwrap();
            let fx = c.tick(self.now, &id);
            self.absorb(c, fx)?;
            if !c.holds(&id) {
                // Retention over: a later copy starts a new life.
                self.outcomes.remove(&*id);
                self.confirmed.remove(&*id);
            }
        }
        Ok(())
    }

    fn confirm(&mut self, c: &Core<Tag>, n: usize) -> Result<(), TestCaseError> {
        if self.publishes.is_empty() {
            return Ok(());
        }
        let id = self.publishes.remove(n % self.publishes.len());
        self.confirmed.insert(id.to_string());
        let fx = c.confirmed(self.now, &id);
        self.absorb(c, fx)
    }
}

const IDS: [&str; 3] = ["p0", "p1", "p2"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]
    #[test]
    fn invariants_hold_over_random_interleavings(
        steps in prop::collection::vec(step(), 0..60),
        retain_s in 1i64..900,
    ) {
        let c = core_with(|_, s| s.retain_ms = retain_s * 1000);
        let mut w = World { now: T0, ..World::default() };
        for s in steps {
            match s {
                Step::Intake(i, ok) => {
                    if w.stopped { continue; }
                    let mut v = challenge(IDS[i]);
                    // Invalid copies: without a readable ttl, or with one (retained longer).
                    if !ok && w.next_tag.is_multiple_of(2) { v["ttl_seconds"] = json!(1); }
                    if !ok && w.next_tag % 2 == 1 { v["devices"] = json!("nope"); }
                    w.next_tag += 1;
                    let tag = w.next_tag;
                    let held_before = c.holds(IDS[i]);
                    let fx = c.intake(w.now, &body(&v), DeliveryMeta::default(), tag);
                    if ok {
                        w.open_acks.insert(tag, IDS[i].to_string());
                    } else {
                        let second = fx.iter().any(|e| matches!(e, Effect::DeadLetter { outcome: Some(_), .. }));
                        prop_assert!(!(held_before && second), "a rejected copy of a held challenge got an outcome");
                    }
                    w.absorb(&c, fx)?;
                }
                Step::Decide(i, d, a) => {
                    let (_, fx) = c.operate(w.now, IDS[i], &decide(["a", "b", "x"][d], a), Authority::Bearer);
                    w.absorb(&c, fx)?;
                }
                Step::Otp(i, right) => {
                    let (_, fx) = c.operate(w.now, IDS[i], &otp(if right { CODE } else { "000000" }), Authority::Queue);
                    w.absorb(&c, fx)?;
                }
                Step::Sms(i) => {
                    let (_, fx) = c.operate(w.now, IDS[i], &Operation::Sms, Authority::Bearer);
                    w.absorb(&c, fx)?;
                }
                Step::Cancel(i) => {
                    let (_, fx) = c.operate(w.now, IDS[i], &Operation::Cancel, Authority::Bearer);
                    w.absorb(&c, fx)?;
                }
                Step::PushDone(n, r) => {
                    if w.pushes.is_empty() { continue; }
                    let (id, device) = w.pushes.remove(n % w.pushes.len());
                    let r = [PushResult::Delivered, PushResult::TokenGone, PushResult::Failed][r as usize];
                    let fx = c.push_result(w.now, &id, device, r);
                    w.absorb(&c, fx)?;
                }
                Step::SmsDone(n, ok) => {
                    if w.sms.is_empty() { continue; }
                    let (id, seq) = w.sms.remove(n % w.sms.len());
                    let fx = c.sms_result(w.now, &id, seq, if ok { Ok(()) } else { Err("failed".into()) });
                    w.absorb(&c, fx)?;
                }
                Step::Confirm(n) => w.confirm(&c, n)?,
                Step::Advance(dt) => {
                    w.now += dt;
                    w.fire_timers(&c)?;
                }
                Step::Shutdown => w.stopped = true,
            }
        }
        // Drain: time runs past every ttl, every outcome in flight is confirmed.
        w.now += 121_000;
        w.fire_timers(&c)?;
        while !w.publishes.is_empty() {
            w.confirm(&c, 0)?;
        }
        prop_assert_eq!(c.pending(), 0, "every accepted challenge has its outcome");
        for id in IDS {
            if c.holds(id) {
                prop_assert_eq!(w.outcomes.get(id).copied(), Some(1), "{} has one outcome", id);
            }
        }
        prop_assert!(w.open_acks.is_empty(), "unsettled at drain: {:?}", w.open_acks);
        // Retention ends for everything.
        w.now += 901_000;
        w.fire_timers(&c)?;
        prop_assert_eq!(c.held(), 0, "memory released after retention");
    }
}

#[test]
fn the_compact_record_answers_as_the_challenge_did() {
    let c = core();
    c.intake(T0, &body(&challenge("c1")), DeliveryMeta::default(), 1);
    c.push_result(T0 + 1, "c1", 0, PushResult::Delivered);
    c.push_result(T0 + 1, "c1", 1, PushResult::Delivered);
    c.operate(T0 + 2, "c1", &decide("a", true), Authority::Bearer);
    let before = c.view("c1").unwrap();
    c.confirmed(T0 + 3, "c1");
    assert_eq!(c.view("c1").unwrap(), before, "the view is unchanged");
    let late = [
        decide("b", false),
        otp(CODE),
        Operation::Sms,
        Operation::Cancel,
    ];
    for op in late {
        let (o, fx) = c.operate(T0 + 4, "c1", &op, Authority::Bearer);
        assert_eq!(
            o,
            OpOutcome::AlreadyDecided {
                outcome: OutcomeKind::Approved
            },
            "{op:?}"
        );
        assert!(outcome_of(&fx).is_none());
    }
}

// ---- offline confirmation, fraud reports, push fatigue, pending per device ---------

use crate::challenge::offline::{format_code, OfflineKey, QrPayload};
use crate::challenge::signature::tests::{device_key, sign};
use crate::engine::fatigue::Gate;
use crate::wire::ops::OfflineCode;

fn key_b64(seed: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

fn offline_challenge(id: &str) -> Value {
    let mut v = challenge(id);
    v["kind"] = json!("payment");
    v["transaction"] = json!({"amount": "125.40", "currency": "EUR", "payee": "Mario Rossi"});
    v["offline"] = json!(true);
    v["devices"][1]["offline_key"] = json!(key_b64(5));
    v
}

fn offline_op(code: u32) -> Operation {
    Operation::Offline {
        code: OfflineCode::parse(&format_code(code)).unwrap(),
    }
}

fn fraud(device: &str, signature: Option<String>) -> Operation {
    Operation::Decision(DecisionOp {
        device_id: serde_json::from_value(json!(device)).unwrap(),
        decision: Decision::Deny,
        signature,
        number: None,
        report_fraud: true,
    })
}

/// The code the app computes from the view's QR payload.
fn app_code(c: &Core<Tag>, id: &str, seed: u8) -> u32 {
    let qr = c.view(id).unwrap().qr.expect("a QR payload while pending");
    let key = OfflineKey::from_bytes([seed; 32]);
    crate::challenge::offline::code_for_qr(&key, &qr)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn an_offline_code_from_the_qr_approves_with_the_matching_device() {
    let c = core();
    c.intake(
        T0,
        &body(&offline_challenge("o1")),
        DeliveryMeta::default(),
        1,
    );
    let v = c.view("o1").unwrap();
    let op = v.operation_id.clone().unwrap();
    assert_eq!(op.len(), 8);
    let qr: QrPayload = serde_json::from_str(v.qr.as_deref().unwrap()).unwrap();
    assert_eq!((qr.op.as_str(), qr.kind), (op.as_str(), Kind::Payment));
    assert_eq!(qr.tx.unwrap().payee, "Mario Rossi");
    let good = app_code(&c, "o1", 5);
    let wrong = (good + 1) % 100_000_000;
    let (o, _) = c.operate(T0 + 1, "o1", &offline_op(wrong), Authority::Bearer);
    assert_eq!(o, OpOutcome::WrongCode { attempts_left: 4 });
    // A code from another key (another device's app) is wrong too.
    let other = app_code(&c, "o1", 6);
    let (o, _) = c.operate(T0 + 2, "o1", &offline_op(other), Authority::Bearer);
    assert_eq!(o, OpOutcome::WrongCode { attempts_left: 3 });
    let (o, fx) = c.operate(T0 + 3, "o1", &offline_op(good), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Approved
        }
    );
    let out = outcome_of(&fx).unwrap();
    assert_eq!(
        (out["channel"].as_str(), out["device_id"].as_str()),
        (Some("offline"), Some("b"))
    );
    assert_eq!(withdrawals(&fx), 2, "both pushes are withdrawn");
    assert!(fx.contains_effect_count(Metric::Offline("ok")));
    // The keys are gone with the challenge; the QR is no longer shown.
    let e = c.table.get("o1").unwrap();
    assert!(e
        .machine
        .spec
        .devices
        .iter()
        .all(|d| d.offline_key.is_none()));
    drop(e);
    assert!(c.view("o1").unwrap().qr.is_none());
    let (o, _) = c.operate(T0 + 4, "o1", &offline_op(good), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::AlreadyDecided {
            outcome: OutcomeKind::Approved
        }
    );
}

#[test]
fn wrong_offline_and_sms_codes_share_one_lock() {
    let c = core();
    c.intake(
        T0,
        &body(&offline_challenge("o2")),
        DeliveryMeta::default(),
        1,
    );
    c.operate(T0 + 1, "o2", &Operation::Sms, Authority::Bearer);
    let good = app_code(&c, "o2", 5);
    let wrong = (good + 1) % 100_000_000;
    for left in [4, 3] {
        let (o, _) = c.operate(T0 + 2, "o2", &offline_op(wrong), Authority::Bearer);
        assert_eq!(
            o,
            OpOutcome::WrongCode {
                attempts_left: left
            }
        );
    }
    for left in [2, 1] {
        let (o, _) = c.operate(T0 + 3, "o2", &otp("999999"), Authority::Bearer);
        assert_eq!(
            o,
            OpOutcome::WrongCode {
                attempts_left: left
            }
        );
    }
    let (o, fx) = c.operate(T0 + 4, "o2", &offline_op(wrong), Authority::Bearer);
    assert_eq!(o, OpOutcome::Locked);
    assert_eq!(outcome_of(&fx).unwrap()["outcome"], "otp_locked");
    let (o, _) = c.operate(T0 + 5, "o2", &offline_op(good), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Locked,
        "the right code after the lock is refused"
    );
}

#[test]
fn offline_needs_an_operation_id_and_a_key() {
    let c = core();
    c.intake(T0, &body(&challenge("o3")), DeliveryMeta::default(), 1);
    assert!(c.view("o3").unwrap().operation_id.is_none());
    let (o, _) = c.operate(T0 + 1, "o3", &offline_op(1), Authority::Bearer);
    assert_eq!(o, OpOutcome::NotOffline);
    assert_eq!(o.answer().status, 409);
    assert_eq!(o.answer().body["error"], "not_offline");
    let mut v = challenge("o4");
    v["offline"] = json!(true);
    let fx = c.intake(T0, &body(&v), DeliveryMeta::default(), 2);
    let reason = fx.iter().find_map(|e| match e {
        Effect::DeadLetter { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.unwrap().contains("offline_key"), "fail closed");
}

fn same_user(id: &str, user: &str, sms: bool) -> Value {
    let mut v = challenge(id);
    v["user_id"] = json!(user);
    if !sms {
        v.as_object_mut().unwrap().remove("sms");
    }
    v
}

fn sms_sends(fx: &Effects<Tag>) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::SendSms { .. }))
        .count()
}

#[test]
fn a_fraud_report_denies_announces_and_mutes_the_user() {
    let c = core();
    c.intake(
        T0,
        &body(&same_user("f1", "u", true)),
        DeliveryMeta::default(),
        1,
    );
    let (o, fx) = c.operate(T0 + 1, "f1", &fraud("a", None), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Denied
        }
    );
    let out = outcome_of(&fx).unwrap();
    assert_eq!(
        (out["reason"].as_str(), out["device_id"].as_str()),
        (Some("fraud_reported"), Some("a"))
    );
    assert!(events(&fx).contains(&"user.fraud_reported"));
    let ev = fx.iter().find_map(|e| match e {
        Effect::PublishEvent {
            routing_key: "user.fraud_reported",
            body,
        } => serde_json::from_slice::<Value>(body).ok(),
        _ => None,
    });
    let ev = ev.unwrap();
    assert_eq!(
        (ev["user_id"].as_str(), ev["challenge_id"].as_str()),
        (Some("u"), Some("f1"))
    );
    assert!(fx.contains_effect_count(Metric::FraudReported));
    // Inside the mute: straight to SMS, nothing pushed.
    let fx = c.intake(
        T0 + 2,
        &body(&same_user("f2", "u", true)),
        DeliveryMeta::default(),
        2,
    );
    assert_eq!((pushes(&fx), sms_sends(&fx)), (0, 1));
    assert!(fx.contains_effect_count(Metric::RateLimited("push_muted")));
    let v = c.view("f2").unwrap();
    assert!(v.devices.iter().all(|d| d.push == "suppressed"));
    // Without a phone: rate_limited, reason push_muted.
    let fx = c.intake(
        T0 + 3,
        &body(&same_user("f3", "u", false)),
        DeliveryMeta::default(),
        3,
    );
    let out = outcome_of(&fx).unwrap();
    assert_eq!(
        (out["outcome"].as_str(), out["reason"].as_str()),
        (Some("rate_limited"), Some("push_muted"))
    );
    assert_eq!(pushes(&fx), 0);
    // Another user is not muted; the mute ends after fraud.mute_seconds.
    let fx = c.intake(
        T0 + 4,
        &body(&same_user("f4", "v", false)),
        DeliveryMeta::default(),
        4,
    );
    assert_eq!(pushes(&fx), 2);
    let after = T0 + 1 + 1_200_000;
    assert_eq!(c.fatigue.gate("u", after - 1), Gate::Muted);
    let mut late = same_user("f5", "u", false);
    late["created_at"] = json!(rfc(after));
    let fx = c.intake(after, &body(&late), DeliveryMeta::default(), 5);
    assert_eq!(pushes(&fx), 2);
}

fn rfc(ms: i64) -> String {
    crate::wire::rfc3339_ms(ms)
}

#[test]
fn a_signed_fraud_report_must_sign_the_fraud_suffix() {
    let c = core();
    let (sk, pk) = device_key(3);
    let mut v = same_user("f6", "w", true);
    v["devices"][0]["public_key"] = json!(pk);
    c.intake(T0, &body(&v), DeliveryMeta::default(), 1);
    let plain = sign(&sk, "sca-v1|f6|deny|");
    let (o, _) = c.operate(
        T0 + 1,
        "f6",
        &fraud("a", Some(plain)),
        Authority::DeviceSignature,
    );
    assert_eq!(
        o,
        OpOutcome::BadSignature,
        "a plain deny's signature is no fraud report"
    );
    let signed = sign(&sk, "sca-v1|f6|deny||fraud");
    let (o, fx) = c.operate(
        T0 + 2,
        "f6",
        &fraud("a", Some(signed)),
        Authority::DeviceSignature,
    );
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Denied
        }
    );
    assert_eq!(outcome_of(&fx).unwrap()["reason"], "fraud_reported");
}

/// A challenge of `user` pushed, delivered to both devices and left to expire.
fn left_unanswered(c: &Core<Tag>, id: &str, user: &str, at: i64) -> i64 {
    let mut v = same_user(id, user, false);
    v["created_at"] = json!(rfc(at));
    v["ttl_seconds"] = json!(10);
    let fx = c.intake(at, &body(&v), DeliveryMeta::default(), 1);
    assert_eq!(pushes(&fx), 2, "{id} is pushed");
    c.push_result(at + 1, id, 0, PushResult::Delivered);
    c.push_result(at + 1, id, 1, PushResult::Delivered);
    let end = at + 10_000;
    let fx = c.tick(end, id);
    assert_eq!(outcome_of(&fx).unwrap()["outcome"], "expired");
    end
}

#[test]
fn unanswered_pushes_double_the_gap_and_an_answer_resets_it() {
    let c = core_with(|cfg, _| cfg.limits.challenge_burst = 100);
    let end = left_unanswered(&c, "b1", "u", T0);
    let mut v = same_user("b2", "u", true);
    v["created_at"] = json!(rfc(end + 5_000));
    let fx = c.intake(end + 5_000, &body(&v), DeliveryMeta::default(), 2);
    assert_eq!(
        (pushes(&fx), sms_sends(&fx)),
        (0, 1),
        "inside the 10 s gap: SMS"
    );
    assert!(fx.contains_effect_count(Metric::RateLimited("push_backoff")));
    let mut v = same_user("b3", "u", false);
    v["created_at"] = json!(rfc(end + 5_000));
    let fx = c.intake(end + 5_000, &body(&v), DeliveryMeta::default(), 3);
    assert_eq!(outcome_of(&fx).unwrap()["reason"], "push_backoff");
    // Past the gap the next push goes out; left unanswered too, the gap is 20 s.
    let end2 = left_unanswered(&c, "b4", "u", end + 10_000);
    assert_eq!(c.fatigue.gate("u", end2 + 19_999), Gate::Backoff);
    assert_eq!(c.fatigue.gate("u", end2 + 20_000), Gate::Open);
    // An answer starts over.
    let at = end2 + 20_000;
    let mut v = same_user("b5", "u", false);
    v["created_at"] = json!(rfc(at));
    c.intake(at, &body(&v), DeliveryMeta::default(), 4);
    c.operate(at + 1, "b5", &decide("a", true), Authority::Bearer);
    let end3 = left_unanswered(&c, "b6", "u", at + 2);
    assert_eq!(
        c.fatigue.gate("u", end3 + 10_000),
        Gate::Open,
        "back to 10 s"
    );
}

#[test]
fn one_pending_per_user_supersedes_the_older_challenge() {
    let c = core_with(|_, s| s.one_pending_per_user = true);
    c.intake(
        T0,
        &body(&same_user("p1", "u", false)),
        DeliveryMeta::default(),
        1,
    );
    let fx = c.intake(
        T0 + 1,
        &body(&same_user("p2", "u", false)),
        DeliveryMeta::default(),
        2,
    );
    assert_eq!(pushes(&fx), 2, "the newer one is pushed");
    let out = outcome_of(&fx).unwrap();
    assert_eq!(out["challenge_id"], "p1");
    assert_eq!(
        (out["outcome"].as_str(), out["reason"].as_str()),
        (Some("cancelled"), Some("superseded"))
    );
    assert_eq!(withdrawals(&fx), 2, "the older one's pushes are withdrawn");
    assert_eq!(c.is_decided("p2"), Some(false));
    // Without the option both stay pending.
    let c = core();
    c.intake(
        T0,
        &body(&same_user("p1", "u", false)),
        DeliveryMeta::default(),
        1,
    );
    c.intake(
        T0 + 1,
        &body(&same_user("p2", "u", false)),
        DeliveryMeta::default(),
        2,
    );
    assert_eq!(c.pending(), 2);
}

#[test]
fn pending_challenges_of_a_device_come_from_the_index() {
    let c = core();
    let (sk, pk) = device_key(4);
    let mut v = challenge("q1");
    v["devices"][0]["public_key"] = json!(pk);
    v["number_match"] = json!(true);
    v["user_label"] = json!("Conto business");
    v["context"] = json!({"location": "Milano"});
    c.intake(T0, &body(&v), DeliveryMeta::default(), 1);
    c.intake(T0, &body(&challenge("q2")), DeliveryMeta::default(), 2);
    let all = c
        .pending_for_device(T0 + 1, "a", &DeviceAuth::Bearer)
        .unwrap();
    let ids: Vec<_> = all
        .challenges
        .iter()
        .map(|p| p.challenge_id.as_str())
        .collect();
    assert_eq!(ids, ["q1", "q2"]);
    let q1 = &all.challenges[0];
    assert_eq!(q1.number_choices, Some([17, 42, 88]));
    assert!(q1.title.starts_with("Conto business: ") && q1.body.contains("Milano"));
    // Signed: only the challenges whose key for this device verifies.
    let ts = (T0 + 1) / 1000;
    let signed = |ts: i64, sk: &p256::ecdsa::SigningKey| DeviceAuth::Signed {
        timestamp: ts,
        signature: sign(sk, &format!("sca-v1|pending|a|{ts}")),
    };
    let l = c.pending_for_device(T0 + 1, "a", &signed(ts, &sk)).unwrap();
    assert_eq!(l.challenges.len(), 1);
    assert_eq!(l.challenges[0].challenge_id, "q1");
    let (other, _) = device_key(5);
    let l = c
        .pending_for_device(T0 + 1, "a", &signed(ts, &other))
        .unwrap();
    assert!(
        l.challenges.is_empty(),
        "a key no challenge binds sees nothing"
    );
    assert!(c
        .pending_for_device(T0 + 1, "a", &signed(ts - 61, &sk))
        .is_none());
    assert!(c
        .pending_for_device(T0 + 1, "a", &signed(ts + 61, &sk))
        .is_none());
    // Decided challenges leave the index.
    c.operate(T0 + 2, "q1", &decide("b", false), Authority::Bearer);
    let l = c
        .pending_for_device(T0 + 3, "a", &DeviceAuth::Bearer)
        .unwrap();
    assert_eq!(l.challenges.len(), 1);
    c.operate(T0 + 2, "q2", &Operation::Cancel, Authority::Bearer);
    assert!(c
        .pending_for_device(T0 + 3, "a", &DeviceAuth::Bearer)
        .unwrap()
        .challenges
        .is_empty());
    assert_eq!(c.pending_index.keys(), (0, 0), "nothing left behind");
}

// ---- partitions (cluster mode) ---------------------------------------------------

fn in_part(epoch: u64) -> DeliveryMeta {
    DeliveryMeta {
        part: Some(Part { index: 3, epoch }),
        ..Default::default()
    }
}

fn sms_effects(fx: &Effects<Tag>) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::SendSms { .. }))
        .count()
}

#[test]
fn a_fenced_partition_leaves_the_table_and_a_confirmed_record_stays() {
    let c = core();
    let now = T0 + 1_000;
    c.intake(now, &body(&challenge("f1")), in_part(1), 1);
    c.intake(now, &body(&challenge("f2")), in_part(1), 2);
    c.intake(now, &body(&challenge("other")), DeliveryMeta::default(), 3);
    let (_, fx) = c.operate(now, "f2", &decide("a", true), Authority::Bearer);
    assert!(outcome_of(&fx).is_some());
    c.confirmed(now, "f2");
    let (fx, gone) = c.drop_partition(3);
    assert_eq!(gone, 1, "only the unsettled one");
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::WakeWaiters(id) if &**id == "f1")));
    assert!(!c.holds("f1") && c.holds("f2") && c.holds("other"));
    let (o, _) = c.operate(now, "f1", &decide("a", true), Authority::Bearer);
    assert_eq!(o, OpOutcome::NotFound, "never decided on a stale copy");
}

#[test]
fn a_handed_over_challenge_resumes_without_pushing_and_its_code_still_verifies() {
    let old = core();
    let now = T0 + 1_000;
    let raw = body(&challenge("h1"));
    let fx = old.intake(now, &raw, in_part(1), 1);
    assert_eq!(pushes(&fx), 2);
    let (o, fx) = old.operate(now, "h1", &Operation::Sms, Authority::Bearer);
    assert_eq!((o, sms_effects(&fx)), (OpOutcome::SmsSent, 1));
    let (o, _) = old.operate(now, "h1", &otp("000000"), Authority::Bearer);
    assert_eq!(o, OpOutcome::WrongCode { attempts_left: 4 });
    // Decided ones are not handed over.
    old.intake(now, &body(&challenge("h2")), in_part(1), 2);
    old.operate(now, "h2", &decide("a", false), Authority::Bearer);
    assert_eq!(old.unsettled_in(3), 1);
    let (items, _) = old.extract_partition(3);
    assert_eq!(items.len(), 1);
    let item = items.into_iter().next().unwrap();
    assert_eq!(
        (&*item.id, &*item.raw, item.acks.as_slice()),
        ("h1", &raw[..], &[1][..])
    );
    assert!(!old.holds("h1") && old.holds("h2"));
    // Through the wire form, as the next owner reads it.
    let wire = crate::wire::control::Handover::of(
        crate::wire::ops::ChallengeId::parse("h1").unwrap(),
        &item.progress,
    );
    let progress = wire.into_progress().unwrap();
    let new = core();
    let meta = DeliveryMeta {
        resume: Some(progress),
        ..in_part(9)
    };
    let fx = new.intake(now + 500, &item.raw, meta, 7);
    assert_eq!(
        (pushes(&fx), sms_effects(&fx)),
        (0, 0),
        "nothing sent again"
    );
    let (o, _) = new.operate(now + 600, "h1", &otp("000000"), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::WrongCode { attempts_left: 3 },
        "attempts carried over"
    );
    let (o, fx) = new.operate(now + 700, "h1", &otp(CODE), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Approved
        }
    );
    assert_eq!(outcome_of(&fx).unwrap()["outcome"], "approved");
}

#[test]
fn cluster_mode_tells_peers_nothing_and_ignores_their_notes() {
    let c = core_with(|cfg, s| {
        cfg.cluster.enabled = true;
        s.cluster = true;
    });
    let now = T0 + 1_000;
    c.intake(now, &body(&challenge("n1")), in_part(1), 1);
    let (_, fx) = c.operate(now, "n1", &Operation::Sms, Authority::Bearer);
    assert!(!fx.iter().any(|e| matches!(e, Effect::TellPeers(_))));
    for _ in 0..10 {
        c.peer_note(
            now,
            &PeerNote::SmsSent {
                user: "u-n2".into(),
                at: now,
            },
        );
    }
    c.intake(now, &body(&challenge("n2")), in_part(1), 2);
    let (o, _) = c.operate(now, "n2", &Operation::Sms, Authority::Bearer);
    assert_eq!(o, OpOutcome::SmsSent, "forged or stale notes block nobody");
}

/// The next owner's intake of an item handed over, through the wire form.
fn resume_on(
    new: &Core<Tag>,
    now: i64,
    item: &HandedOver<Tag>,
    epoch: u64,
    ack: Tag,
) -> Effects<Tag> {
    let wire = crate::wire::control::Handover::of(
        crate::wire::ops::ChallengeId::parse(&item.id).unwrap(),
        &item.progress,
    );
    let meta = DeliveryMeta {
        resume: Some(wire.into_progress().unwrap()),
        ..in_part(epoch)
    };
    new.intake(now, &item.raw, meta, ack)
}

#[test]
fn a_handed_over_offline_challenge_keeps_its_operation_id_and_the_app_code_approves() {
    let old = core();
    let now = T0 + 1_000;
    old.intake(now, &body(&offline_challenge("ho1")), in_part(1), 1);
    let op = old.view("ho1").unwrap().operation_id.unwrap();
    let good = app_code(&old, "ho1", 5);
    let (items, _) = old.extract_partition(3);
    assert_eq!(items.len(), 1);
    // The next owner draws other operation ids: the handed-over one must win.
    let new = core();
    new.intake(now, &body(&offline_challenge("ho2")), in_part(9), 2);
    let fx = resume_on(&new, now + 500, &items[0], 9, 7);
    assert_eq!(pushes(&fx), 0, "nothing pushed again");
    assert_eq!(new.view("ho1").unwrap().operation_id, Some(op));
    let (o, fx) = new.operate(now + 600, "ho1", &offline_op(good), Authority::Bearer);
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: OutcomeKind::Approved
        }
    );
    assert_eq!(outcome_of(&fx).unwrap()["channel"], "offline");
}

#[test]
fn challenges_leaving_their_partition_leave_the_pending_index() {
    let c = core();
    let now = T0 + 1_000;
    c.intake(now, &body(&challenge("x1")), in_part(1), 1);
    c.intake(now, &body(&challenge("x2")), in_part(1), 2);
    assert_eq!(
        c.pending_for_device(now, "a", &DeviceAuth::Bearer)
            .unwrap()
            .challenges
            .len(),
        2
    );
    let (_, gone) = c.drop_partition(3);
    assert_eq!(gone, 2);
    assert_eq!(
        c.pending_index.keys(),
        (0, 0),
        "fenced: nothing left behind"
    );
    c.intake(now, &body(&challenge("x3")), in_part(2), 3);
    let (items, _) = c.extract_partition(3);
    assert_eq!(items.len(), 1);
    assert_eq!(
        c.pending_index.keys(),
        (0, 0),
        "handed over: nothing left behind"
    );
    assert!(c
        .pending_for_device(now, "a", &DeviceAuth::Bearer)
        .unwrap()
        .challenges
        .is_empty());
}

#[test]
fn a_resumed_challenge_supersedes_nothing_on_its_new_owner() {
    let old = core_with(|_, s| s.one_pending_per_user = true);
    let now = T0 + 1_000;
    old.intake(now, &body(&same_user("r1", "u", false)), in_part(1), 1);
    let (items, _) = old.extract_partition(3);
    let new = core_with(|_, s| s.one_pending_per_user = true);
    new.intake(
        now + 100,
        &body(&same_user("r2", "u", false)),
        in_part(9),
        2,
    );
    let fx = resume_on(&new, now + 200, &items[0], 9, 3);
    assert!(
        outcome_of(&fx).is_none(),
        "the newer challenge stays pending"
    );
    assert_eq!(
        (new.is_decided("r1"), new.is_decided("r2")),
        (Some(false), Some(false))
    );
}
