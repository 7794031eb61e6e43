//! The run's shared state and its players: the simulated devices (they see their pushes
//! through the simulators' feeds and answer over the daemon's HTTP API, or enter the code
//! of an SMS) and the outcome reader. The in-flight table holds one small entry per
//! challenge awaiting its outcome; it is capped by the publisher and pruned of entries
//! older than their ttl plus a grace period.

use super::hist::{Latencies, Stage};
use super::mix::{Answer, Kind};
use super::LoadOptions;
use crate::sim::apns::RecordedPush;
use crate::sim::fcm::RecordedMessage;
use crate::sim::sms::SentSms;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use http_body_util::{BodyExt as _, Full};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinHandle;

/// One HTTP request to a daemon, at most.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An in-flight entry older than its ttl plus this is given up (counted lost).
const PRUNE_GRACE: Duration = Duration::from_secs(30);
/// Largest answer body read from the daemon.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The outcomes of the wire contract, in report order; anything else counts as `other`.
pub const OUTCOMES: [&str; 9] = [
    "approved",
    "denied",
    "expired",
    "cancelled",
    "rejected",
    "rate_limited",
    "undeliverable",
    "otp_locked",
    "other",
];

/// Index of an outcome name in [`OUTCOMES`].
pub fn outcome_index(name: &str) -> usize {
    OUTCOMES
        .iter()
        .position(|o| *o == name)
        .unwrap_or(OUTCOMES.len() - 1)
}

/// The simulators' feeds the devices listen on (`None`: no such simulator).
#[derive(Default)]
pub struct Feeds {
    pub apns: Option<broadcast::Receiver<RecordedPush>>,
    pub fcm: Option<broadcast::Receiver<RecordedMessage>>,
    pub hms: Option<broadcast::Receiver<crate::sim::hms::RecordedMessage>>,
    pub sms: Option<broadcast::Receiver<SentSms>>,
}

/// One challenge awaiting its outcome.
#[derive(Debug, Clone)]
pub struct Flight {
    pub kind: Kind,
    pub answer: Answer,
    pub sms: bool,
    pub published: Instant,
    pub pushed: Option<Instant>,
    pub decided: Option<Instant>,
    /// A decision or code is on its way (with [`LoadOptions::answer_repeats`], a push
    /// seen again meanwhile is not answered twice).
    pub answering: bool,
}

impl Flight {
    pub fn new(kind: Kind, answer: Answer, sms: bool) -> Flight {
        Flight {
            kind,
            answer,
            sms,
            published: Instant::now(),
            pushed: None,
            decided: None,
            answering: false,
        }
    }
}

/// Sees every challenge of a run from its publish to its outcomes (the chaos runner's
/// ledger); the load tool itself only follows a challenge until its first outcome.
pub trait Observer: Send + Sync {
    /// Challenge `seq` was handed to the broker.
    fn published(&self, seq: u64);
    /// The broker confirmed (`true`) or refused or lost (`false`) that publish.
    fn confirmed(&self, seq: u64, ok: bool);
    /// An outcome message for `seq`: its `outcome`, its body, and whether the broker
    /// marked the delivery redelivered (the same message again, after a reconnect).
    fn outcome(&self, seq: u64, outcome: &str, body: &[u8], redelivered: bool);
}

/// Counters of a run (all monotonic).
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Times the publisher waited for the in-flight table to shrink.
    pub throttled: AtomicU64,
    pub pushed: AtomicU64,
    pub sms: AtomicU64,
    pub decisions_sent: AtomicU64,
    /// Decisions or codes the daemon took (2xx).
    pub decisions_ok: AtomicU64,
    /// Answers by class: 409, 404, 410, other 4xx, 5xx, transport error or timeout.
    pub http_409: AtomicU64,
    pub http_404: AtomicU64,
    pub http_410: AtomicU64,
    pub http_4xx: AtomicU64,
    pub http_5xx: AtomicU64,
    pub http_failed: AtomicU64,
    pub outcomes: AtomicU64,
    /// Outcomes of this run's ids with no entry (a second outcome, or after pruning).
    pub unmatched_outcomes: AtomicU64,
    /// Entries given up after their ttl and the grace period.
    pub pruned: AtomicU64,
    /// Pushes or SMS the devices missed because a feed lagged.
    pub feed_lagged: AtomicU64,
    /// Outcomes by kind (rows: [`Kind::ALL`]) and outcome (columns: [`OUTCOMES`]).
    pub by_kind: [[AtomicU64; OUTCOMES.len()]; 5],
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Everything the publisher, the players and the reporter share.
pub struct Shared {
    pub opts: LoadOptions,
    /// Challenge ids of this run are `{prefix}{seq}`.
    pub prefix: String,
    pub started: Instant,
    pub flights: DashMap<u64, Flight>,
    pub counters: Counters,
    pub lat: Latencies,
    pub pids: Vec<u32>,
    /// When the last outcome was read, in µs since `started`.
    pub last_outcome_us: AtomicU64,
    /// When publishing ended, in µs since `started` (0: not yet).
    pub publish_end_us: AtomicU64,
    /// Told about every publish, confirm and outcome message.
    pub observer: Option<Arc<dyn Observer>>,
    client: Client,
    slots: Arc<Semaphore>,
    http_running: AtomicUsize,
}

impl Shared {
    pub fn new(opts: LoadOptions, pids: Vec<u32>) -> Arc<Shared> {
        Shared::observed(opts, pids, None)
    }

    /// [`Shared::new`] with an observer of every publish, confirm and outcome.
    pub fn observed(
        opts: LoadOptions,
        pids: Vec<u32>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Shared> {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(opts.http_concurrency)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(conn);
        let slots = Arc::new(Semaphore::new(opts.http_concurrency));
        Arc::new(Shared {
            prefix: format!("ld{:06x}-", rand::random::<u32>() & 0xff_ffff),
            started: Instant::now(),
            flights: DashMap::new(),
            counters: Counters::default(),
            lat: Latencies::default(),
            pids,
            client,
            slots,
            http_running: AtomicUsize::new(0),
            last_outcome_us: AtomicU64::new(0),
            publish_end_us: AtomicU64::new(0),
            observer,
            opts,
        })
    }

    /// The sequence number of one of this run's challenge ids.
    pub fn seq(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&self.prefix)?.parse().ok()
    }

    /// A publish's confirm came back: a nack or error forgets the challenge.
    pub fn confirmed(&self, seq: u64, r: lapin::Result<lapin::Confirmation>) {
        let ok = matches!(&r, Ok(c) if !c.is_nack());
        if let Some(o) = &self.observer {
            o.confirmed(seq, ok);
        }
        if !ok {
            self.flights.remove(&seq);
            self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives up entries older than their ttl plus the grace period.
    pub fn prune(&self) {
        let limit = Duration::from_secs(self.opts.ttl_seconds) + PRUNE_GRACE;
        // Counted in the closure: entries the outcome reader removes meanwhile are not
        // pruned ones.
        let mut gone = 0u64;
        self.flights.retain(|_, f| {
            let keep = f.published.elapsed() < limit;
            gone += u64::from(!keep);
            keep
        });
        self.counters.pruned.fetch_add(gone, Ordering::Relaxed);
    }

    /// Waits (at most `max`) until no HTTP request is running.
    pub async fn http_idle(&self, max: Duration) {
        let end = Instant::now() + max;
        while self.http_running.load(Ordering::Relaxed) > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A push for `id` was seen at `at`: the first one per challenge is timed and may
    /// trigger the device's answer.
    fn on_push(self: &Arc<Self>, id: &str, at: Instant) {
        let Some(seq) = self.seq(id) else { return };
        let answer = match self.flights.get_mut(&seq) {
            Some(mut f) => {
                if f.pushed.is_none() {
                    f.pushed = Some(at);
                    self.lat
                        .get(Stage::PublishToPush)
                        .record(at.saturating_duration_since(f.published));
                    self.counters.pushed.fetch_add(1, Ordering::Relaxed);
                } else if !self.opts.answer_repeats {
                    return;
                }
                // A push seen again (the challenge dispatched again after a crash: the
                // daemon forgot the answer) is answered again, unless one is on its way.
                if f.answering || f.answer == Answer::Ignore {
                    return;
                }
                f.answering = true;
                f.answer
            }
            // Its outcome came already: a repeated dispatch is answered as the first was.
            None if self.opts.answer_repeats => self.opts.answers.pick(seq, super::SALT_ANSWER),
            None => return,
        };
        let decision = match answer {
            Answer::Approve => "approve",
            Answer::Deny => "deny",
            Answer::Ignore => return,
        };
        let body = format!(r#"{{"device_id":"d0","decision":"{decision}"}}"#);
        self.spawn_call(seq, "decision", body, at);
    }

    /// An SMS for `reference` arrived: the user enters its code when the device ignores
    /// its push (a device that answers does so itself, even after the SMS went out).
    fn on_sms(self: &Arc<Self>, m: &SentSms) {
        let Some(seq) = m.reference.as_deref().and_then(|r| self.seq(r)) else {
            return;
        };
        self.counters.sms.fetch_add(1, Ordering::Relaxed);
        let Some(code) = m
            .text
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 6)
        else {
            return;
        };
        let seen = m.received_at;
        let take = match self.flights.get_mut(&seq) {
            Some(mut f)
                if f.answer == Answer::Ignore
                    && if self.opts.answer_repeats {
                        !f.answering
                    } else {
                        f.decided.is_none()
                    } =>
            {
                // An SMS code stands for the push when none was seen.
                if f.pushed.is_none() {
                    f.pushed = Some(seen);
                }
                f.answering = true;
                true
            }
            Some(_) => false,
            None => {
                self.opts.answer_repeats
                    && self.opts.answers.pick(seq, super::SALT_ANSWER) == Answer::Ignore
            }
        };
        if take {
            let body = format!(r#"{{"code":"{code}"}}"#);
            self.spawn_call(seq, "otp", body, seen);
        }
    }

    /// After the decision delay, POSTs `body` to `/v1/challenges/{id}/{what}` on one of
    /// the daemons.
    fn spawn_call(self: &Arc<Self>, seq: u64, what: &'static str, body: String, seen: Instant) {
        let me = self.clone();
        let n = self.opts.api.len().max(1);
        let base = &self.opts.api[(seq % n as u64) as usize];
        let url = format!("{base}/v1/challenges/{}{seq}/{what}", self.prefix);
        self.http_running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let due = seen + me.opts.decide_after;
            tokio::time::sleep_until(due.into()).await;
            if let Ok(_permit) = me.slots.clone().acquire_owned().await {
                me.call(seq, &url, body, seen).await;
            }
            me.http_running.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn call(&self, seq: u64, url: &str, body: String, seen: Instant) {
        let mut req = hyper::Request::post(url).header("content-type", "application/json");
        if let Some(t) = &self.opts.api_token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
            self.counters.http_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let sent = Instant::now();
        if let Some(mut f) = self.flights.get_mut(&seq) {
            f.decided.get_or_insert(sent);
        }
        self.counters.decisions_sent.fetch_add(1, Ordering::Relaxed);
        let c = &self.counters;
        let answer = tokio::time::timeout(HTTP_TIMEOUT, async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let _ = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await;
            Some(status)
        })
        .await
        .ok()
        .flatten();
        let counter = match answer {
            Some(200..=299) => {
                self.lat
                    .get(Stage::PushToDecision)
                    .record(Instant::now().saturating_duration_since(seen));
                &c.decisions_ok
            }
            Some(409) => &c.http_409,
            Some(404) => &c.http_404,
            Some(410) => &c.http_410,
            Some(400..=499) => &c.http_4xx,
            Some(_) => &c.http_5xx,
            None => &c.http_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(mut f) = self.flights.get_mut(&seq) {
            f.answering = false;
        }
    }

    /// An outcome message's body, read at `at` (`redelivered`: the broker's flag).
    pub fn on_outcome_message(&self, body: &[u8], redelivered: bool, at: Instant) {
        #[derive(serde::Deserialize)]
        struct Outcome<'a> {
            #[serde(borrow)]
            challenge_id: Option<&'a str>,
            #[serde(borrow)]
            outcome: Option<&'a str>,
        }
        let Ok(o) = serde_json::from_slice::<Outcome>(body) else {
            return;
        };
        let Some(id) = o.challenge_id else { return };
        let outcome = o.outcome.unwrap_or("other");
        if let (Some(obs), Some(seq)) = (&self.observer, self.seq(id)) {
            obs.outcome(seq, outcome, body, redelivered);
        }
        self.on_outcome(id, outcome, at);
    }

    /// An outcome for `id` was read at `at`.
    fn on_outcome(&self, id: &str, outcome: &str, at: Instant) {
        let Some(seq) = self.seq(id) else { return };
        let Some((_, f)) = self.flights.remove(&seq) else {
            self.counters
                .unmatched_outcomes
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.lat
            .get(Stage::PublishToOutcome)
            .record(at.saturating_duration_since(f.published));
        if let Some(d) = f.decided {
            self.lat
                .get(Stage::DecisionToOutcome)
                .record(at.saturating_duration_since(d));
        }
        let k = Kind::ALL.iter().position(|k| *k == f.kind).unwrap_or(0);
        self.counters.by_kind[k][outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        self.counters.outcomes.fetch_add(1, Ordering::Relaxed);
        let us = at.saturating_duration_since(self.started).as_micros() as u64;
        self.last_outcome_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// Receives from a feed until it closes; a lag is counted, not fatal.
async fn recv<T: Clone>(shared: &Shared, rx: &mut broadcast::Receiver<T>) -> Option<T> {
    loop {
        match rx.recv().await {
            Ok(m) => return Some(m),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                shared.counters.feed_lagged.fetch_add(n, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Starts the device players on `feeds` and the outcome reader on `outcomes` (none: the
/// caller reads them, see [`Shared::on_outcome_message`]).
pub fn start(
    shared: &Arc<Shared>,
    feeds: Feeds,
    outcomes: Option<lapin::Consumer>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(mut rx) = feeds.apns {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(p) = recv(&s, &mut rx).await {
                if p.status == 200 && p.payload["type"] != "withdraw" {
                    if let Some(id) = p.payload["challenge_id"].as_str() {
                        s.on_push(id, p.received_at);
                    }
                }
            }
        }));
    }
    if let Some(mut rx) = feeds.fcm {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = recv(&s, &mut rx).await {
                let d = m.data();
                if m.status == 200 && d["type"] == "challenge" {
                    if let Some(id) = d["challenge_id"].as_str() {
                        s.on_push(id, m.received_at);
                    }
                }
            }
        }));
    }
    if let Some(mut rx) = feeds.hms {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = recv(&s, &mut rx).await {
                // Push Kit's `80000000` is "accepted"; `data` is the parsed JSON string.
                if m.status == 200 && m.code == "80000000" && m.data["type"] == "challenge" {
                    if let Some(id) = m.data["challenge_id"].as_str() {
                        s.on_push(id, m.received_at);
                    }
                }
            }
        }));
    }
    if let Some(mut rx) = feeds.sms {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = recv(&s, &mut rx).await {
                s.on_sms(&m);
            }
        }));
    }
    if let Some(mut outcomes) = outcomes {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(d)) = outcomes.next().await {
                s.on_outcome_message(&d.data, d.redelivered, Instant::now());
            }
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Shared::new(LoadOptions::new("amqp://x", "http://127.0.0.1:1"), vec![])
    }

    #[test]
    fn an_outcome_settles_its_entry_once_and_counts_by_kind() {
        let s = shared();
        s.flights
            .insert(3, Flight::new(Kind::Payment, Answer::Ignore, false));
        let id = format!("{}3", s.prefix);
        s.on_outcome(&id, "expired", Instant::now());
        s.on_outcome(&id, "expired", Instant::now());
        s.on_outcome("someone-else-3", "approved", Instant::now());
        assert!(s.flights.is_empty());
        assert_eq!(s.counters.outcomes.load(Ordering::Relaxed), 1);
        assert_eq!(s.counters.unmatched_outcomes.load(Ordering::Relaxed), 1);
        let row = Kind::ALL.iter().position(|k| *k == Kind::Payment).unwrap();
        assert_eq!(
            s.counters.by_kind[row][outcome_index("expired")].load(Ordering::Relaxed),
            1
        );
        assert_eq!(outcome_index("something new"), OUTCOMES.len() - 1);
    }

    #[tokio::test]
    async fn an_ignored_push_is_timed_but_not_answered() {
        let s = shared();
        s.flights
            .insert(1, Flight::new(Kind::Login, Answer::Ignore, false));
        let id = format!("{}1", s.prefix);
        s.on_push(&id, Instant::now());
        s.on_push(&id, Instant::now());
        assert_eq!(s.counters.pushed.load(Ordering::Relaxed), 1);
        assert_eq!(s.lat.publish_to_push.total().count, 1);
        assert_eq!(s.http_running.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pruning_gives_up_only_old_entries() {
        let s = shared();
        let mut old = Flight::new(Kind::Login, Answer::Ignore, false);
        let Some(t) = Instant::now().checked_sub(Duration::from_secs(120)) else {
            return; // the machine booted moments ago
        };
        old.published = t;
        s.flights.insert(1, old);
        s.flights
            .insert(2, Flight::new(Kind::Login, Answer::Ignore, false));
        s.prune();
        assert_eq!(s.flights.len(), 1);
        assert!(s.flights.contains_key(&2));
        assert_eq!(s.counters.pruned.load(Ordering::Relaxed), 1);
    }
}
