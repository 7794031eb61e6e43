//! Driver tests with test doubles for the sink and the providers, no broker, and
//! tokio's paused clock (no wall-clock waits).

use super::*;
use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::push::{PushMessage, PushProvider};
use crate::sms::{SmsError, SmsGateway, SmsMessage};
use crate::wire::ops::OpOutcome;
use futures_util::future::BoxFuture;
use serde_json::json;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

/// A sink that confirms everything at once and keeps the outcomes.
#[derive(Default)]
struct Sink {
    outcomes: Mutex<Vec<String>>,
}

impl OutcomeSink for Sink {
    fn publish_outcome(
        &self,
        routing_key: String,
        _: Vec<u8>,
        _: Option<super::super::sink::ReplyTo>,
    ) -> BoxFuture<'_, bool> {
        self.outcomes.lock().unwrap().push(routing_key);
        Box::pin(async { true })
    }
    fn publish_event(&self, _: &'static str, _: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn dead_letter(&self, _: Arc<str>, _: Vec<u8>, _: String) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn reply(&self, _: super::super::sink::ReplyTo, _: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

struct NoAck;

impl AckToken for NoAck {
    fn ack(self: Box<Self>) {}
    fn reject(self: Box<Self>) {}
}

/// A push provider that never answers.
struct Silent;

impl PushProvider for Silent {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }
    fn send(&self, _: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(std::future::pending())
    }
}

/// An SMS gateway that always asks to retry in 5 s.
#[derive(Default)]
struct Busy {
    sends: AtomicUsize,
}

impl SmsGateway for Busy {
    fn name(&self) -> &'static str {
        "busy"
    }
    fn send<'a>(&'a self, _: &'a SmsMessage) -> BoxFuture<'a, Result<(), SmsError>> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Err(SmsError::Retryable {
                reason: "busy".into(),
                retry_after: Some(Duration::from_secs(5)),
            })
        })
    }
}

fn challenge(id: &str, with_sms: bool) -> Vec<u8> {
    let created = crate::wire::rfc3339_ms(now_ms());
    let mut v = json!({
        "v": 1, "challenge_id": id, "user_id": "u1", "kind": "login",
        "created_at": created, "ttl_seconds": 300,
        "devices": [{"device_id": "a", "platform": "fcm", "token": "tok-a"}],
        "sms": {"phone": "+393401234567", "fallback_after_seconds": 60}
    });
    if !with_sms {
        v.as_object_mut().unwrap().remove("sms");
    }
    v.to_string().into_bytes()
}

fn id(s: &str) -> ChallengeId {
    ChallengeId::parse(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn sms_retries_stop_once_the_challenge_is_decided() {
    let gw = Arc::new(Busy::default());
    let providers = Providers {
        sms: Some(gw.clone()),
        ..Providers::default()
    };
    let sink = Arc::new(Sink::default());
    let e = Engine::new(&Config::default(), providers, sink.clone());
    // No push provider: the SMS goes out at once.
    e.accept(
        &challenge("s1", true),
        DeliveryMeta::default(),
        Box::new(NoAck),
    );
    while gw.sends.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let o = e
        .operate_anywhere(&id("s1"), Operation::Cancel, Authority::Bearer)
        .await;
    assert_eq!(
        o,
        OpOutcome::Decided {
            outcome: crate::challenge::model::OutcomeKind::Cancelled
        }
    );
    // Long past every retry the gateway asked for.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        gw.sends.load(Ordering::SeqCst),
        1,
        "no retry after the decision"
    );
    assert_eq!(e.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_leaves_no_waiter_behind() {
    let providers = Providers {
        fcm: Some(Arc::new(Silent)),
        ..Providers::default()
    };
    let e = Engine::new(&Config::default(), providers, Arc::new(Sink::default()));
    e.accept(
        &challenge("w1", false),
        DeliveryMeta::default(),
        Box::new(NoAck),
    );
    // A wait that times out.
    let v = e
        .view_when_decided("w1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!v.is_completed());
    assert_eq!(e.waiting(), 0, "the timed-out waiter is removed");
    // A wait the decision ends.
    let poll = {
        let e = e.clone();
        tokio::spawn(async move { e.view_when_decided("w1", Duration::from_secs(30)).await })
    };
    while e.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    e.operate_anywhere(&id("w1"), Operation::Cancel, Authority::Bearer)
        .await;
    assert!(poll.await.unwrap().unwrap().is_completed());
    assert_eq!(e.waiting(), 0);
    // A wait on a decided challenge registers nothing.
    assert!(e
        .view_when_decided("w1", Duration::from_secs(30))
        .await
        .unwrap()
        .is_completed());
    assert_eq!(e.waiting(), 0);
}
