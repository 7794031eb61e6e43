//! The chaos runner's ledger: every challenge of the run from its publish to every
//! outcome message read for it (the load tool follows a challenge only until its first
//! outcome), and the per-phase figures drawn from it — accepted, lost, duplicated,
//! contradictory, the p99 time to an outcome, and the recovery of throughput.

use crate::loadgen::player::Observer;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ids listed per kind of problem in a phase's figures, at most.
const EXAMPLES: usize = 10;
/// The throughput window of the recovery measure, and its step.
const WINDOW_US: u64 = 1_000_000;
const STEP_US: u64 = 100_000;
/// Throughput counts as full again at this share of the baseline's.
const FULL_SHARE: f64 = 0.9;

/// One outcome message read.
#[derive(Debug, Clone)]
struct Seen {
    outcome: Box<str>,
    at_us: u64,
    body_hash: u64,
}

/// One challenge.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// When it was handed to the broker (µs since the ledger's start).
    published_us: Option<u64>,
    /// The broker's confirm: `Some(true)` accepted.
    confirmed: Option<bool>,
    outcomes: Vec<Seen>,
}

/// Every challenge of the run, by sequence number.
pub struct Ledger {
    started: Instant,
    entries: Mutex<HashMap<u64, Entry>>,
    /// Outcome messages the broker gave the reader again after a reconnect (same body,
    /// flagged redelivered): not a second outcome.
    reader_redeliveries: std::sync::atomic::AtomicU64,
}

fn hash(body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

impl Ledger {
    pub fn new(started: Instant) -> Ledger {
        Ledger {
            started,
            entries: Mutex::new(HashMap::new()),
            reader_redeliveries: Default::default(),
        }
    }

    /// Microseconds since the ledger's start.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reader_redeliveries(&self) -> u64 {
        self.reader_redeliveries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records an outcome message (what [`Observer::outcome`] does), at `at_us`.
    pub fn record_outcome(
        &self,
        seq: u64,
        outcome: &str,
        body: &[u8],
        redelivered: bool,
        at_us: u64,
    ) {
        let body_hash = hash(body);
        let mut m = self.lock();
        let e = m.entry(seq).or_default();
        if redelivered && e.outcomes.iter().any(|s| s.body_hash == body_hash) {
            self.reader_redeliveries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        e.outcomes.push(Seen {
            outcome: outcome.into(),
            at_us,
            body_hash,
        });
    }

    /// The figures of a phase: the challenges published in `[from_us, to_us)` (accepted,
    /// lost, first outcomes; the time to an outcome over those published in `[from_us,
    /// fault_end_us)`, at least one second), and the duplicated and contradictory
    /// challenges whose second (or first disagreeing) outcome message arrived in
    /// `[from_us, arrivals_to_us)` — a crash's second outcomes belong to the crash, also
    /// for challenges published just before it.
    pub fn phase(
        &self,
        from_us: u64,
        fault_end_us: u64,
        to_us: u64,
        arrivals_to_us: u64,
    ) -> PhaseFigures {
        let m = self.lock();
        let lat_end = fault_end_us.max(from_us + WINDOW_US);
        let arrived = |t: u64| t >= from_us && t < arrivals_to_us;
        let mut f = PhaseFigures::default();
        let mut lat = Vec::new();
        let mut ids: Vec<(&u64, &Entry)> = m.iter().collect();
        ids.sort_by_key(|(s, _)| **s);
        for (seq, e) in ids {
            if let Some(p) = e.published_us.filter(|p| *p >= from_us && *p < to_us) {
                f.challenges += 1;
                let accepted = e.confirmed == Some(true);
                if accepted {
                    f.accepted += 1;
                } else {
                    f.unconfirmed += 1;
                    if !e.outcomes.is_empty() {
                        f.unconfirmed_with_outcome += 1;
                    }
                }
                if let Some(first) = e.outcomes.first() {
                    *f.outcomes.entry(first.outcome.to_string()).or_default() += 1;
                    // A decision's latency; an expiry comes at the ttl by definition.
                    let decided = matches!(&*first.outcome, "approved" | "denied");
                    if p < lat_end && decided {
                        lat.push((first.at_us.saturating_sub(p), *seq));
                    }
                } else if accepted {
                    f.lost += 1;
                    if f.lost_ids.len() < EXAMPLES {
                        f.lost_ids.push(*seq);
                    }
                }
            }
            let Some(first) = e.outcomes.first() else {
                continue;
            };
            let seen = || {
                e.outcomes
                    .iter()
                    .map(|s| s.outcome.to_string())
                    .collect::<Vec<_>>()
            };
            if e.outcomes.get(1).is_some_and(|s| arrived(s.at_us)) {
                f.duplicated += 1;
                f.extra_messages += e.outcomes.len() as u64 - 1;
                if e.outcomes.iter().all(|s| s.body_hash == first.body_hash) {
                    f.identical_duplicates += 1;
                }
                if f.duplicated_ids.len() < EXAMPLES {
                    f.duplicated_ids.push((*seq, seen()));
                }
            }
            let differs = e.outcomes.iter().find(|s| s.outcome != first.outcome);
            if differs.is_some_and(|s| arrived(s.at_us)) {
                f.contradictory += 1;
                if f.contradictory_ids.len() < EXAMPLES {
                    f.contradictory_ids.push((*seq, seen()));
                }
            }
        }
        lat.sort_unstable();
        f.latency_samples = lat.len() as u64;
        if !lat.is_empty() {
            let at =
                |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1].0;
            f.p50_ms = Some(at(0.50) as f64 / 1000.0);
            f.p99_ms = Some(at(0.99) as f64 / 1000.0);
            f.slowest = lat
                .iter()
                .rev()
                .take(EXAMPLES / 2)
                .map(|(us, s)| (*s, *us as f64 / 1000.0))
                .collect();
        }
        f
    }

    /// Outcome messages read (every one, duplicates included) in `[from_us, to_us)`, per
    /// second.
    pub fn outcome_rate(&self, from_us: u64, to_us: u64) -> f64 {
        if to_us <= from_us {
            return 0.0;
        }
        let m = self.lock();
        let n = m
            .values()
            .flat_map(|e| e.outcomes.iter())
            .filter(|s| s.at_us >= from_us && s.at_us < to_us)
            .count();
        n as f64 / ((to_us - from_us) as f64 / 1e6)
    }

    /// From `from_us`, how long until a one-second window of outcome messages reaches
    /// [`FULL_SHARE`] of `full_rate` per second; `None` if none starting before `until_us`
    /// does.
    pub fn recovery(&self, from_us: u64, until_us: u64, full_rate: f64) -> Option<Duration> {
        let need = (full_rate * FULL_SHARE).max(1.0);
        let m = self.lock();
        let mut times: Vec<u64> = m
            .values()
            .flat_map(|e| e.outcomes.iter())
            .map(|s| s.at_us)
            .filter(|t| *t >= from_us && *t < until_us.saturating_add(WINDOW_US))
            .collect();
        drop(m);
        times.sort_unstable();
        let mut t = from_us;
        let (mut lo, mut hi) = (0usize, 0usize);
        while t < until_us {
            while lo < times.len() && times[lo] < t {
                lo += 1;
            }
            while hi < times.len() && times[hi] < t + WINDOW_US {
                hi += 1;
            }
            if (hi.saturating_sub(lo)) as f64 >= need {
                return Some(Duration::from_micros(t - from_us));
            }
            t += STEP_US;
        }
        None
    }
}

impl Observer for Ledger {
    fn published(&self, seq: u64) {
        let now = self.now_us();
        self.lock().entry(seq).or_default().published_us = Some(now);
    }

    fn confirmed(&self, seq: u64, ok: bool) {
        self.lock().entry(seq).or_default().confirmed = Some(ok);
    }

    fn outcome(&self, seq: u64, outcome: &str, body: &[u8], redelivered: bool) {
        let now = self.now_us();
        self.record_outcome(seq, outcome, body, redelivered, now);
    }
}

/// What one phase's challenges came to.
#[derive(Debug, Clone, Default)]
pub struct PhaseFigures {
    /// Published in the phase.
    pub challenges: u64,
    /// Confirmed by the broker.
    pub accepted: u64,
    /// Not confirmed (the publish failed or its confirm was lost): not owed an outcome.
    pub unconfirmed: u64,
    /// Of those, how many got one all the same (the broker had taken them).
    pub unconfirmed_with_outcome: u64,
    /// Accepted, and no outcome by the end of the run.
    pub lost: u64,
    /// More than one outcome message (counted where the second arrived).
    pub duplicated: u64,
    /// Outcome messages beyond the first.
    pub extra_messages: u64,
    /// Duplicated challenges whose messages are all the same bytes (one outcome published
    /// again, not a second decision).
    pub identical_duplicates: u64,
    /// Outcome messages that disagree (counted where the first disagreeing one arrived).
    pub contradictory: u64,
    /// First outcomes by name.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Publish → first outcome, when it is a decision (approved or denied), over the
    /// challenges published during the fault.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub latency_samples: u64,
    /// The slowest decisions: sequence number and milliseconds.
    pub slowest: Vec<(u64, f64)>,
    pub lost_ids: Vec<u64>,
    pub duplicated_ids: Vec<(u64, Vec<String>)>,
    pub contradictory_ids: Vec<(u64, Vec<String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_duplicated_and_contradictory_per_phase() {
        let l = Ledger::new(Instant::now());
        let put = |seq: u64, at: u64, ok: bool| {
            let mut m = l.lock();
            let e = m.entry(seq).or_default();
            e.published_us = Some(at);
            e.confirmed = Some(ok);
        };
        put(1, 10, true); // one outcome
        put(2, 20, true); // lost
        put(3, 30, true); // duplicated, same outcome
        put(4, 40, true); // contradictory
        put(5, 50, false); // unconfirmed, no outcome: not lost
        put(6, 5_000_000, true); // another phase
        l.record_outcome(1, "approved", b"a1", false, 100);
        l.record_outcome(3, "approved", b"a3", false, 200);
        l.record_outcome(3, "approved", b"a3", true, 300); // the reader's own redelivery
        l.record_outcome(3, "approved", b"a3-again", false, 400);
        l.record_outcome(4, "approved", b"a4", false, 500);
        l.record_outcome(4, "expired", b"e4", false, 600);
        let f = l.phase(0, 1_000, 1_000_000, 1_000_000);
        assert_eq!((f.challenges, f.accepted, f.unconfirmed), (5, 4, 1));
        assert_eq!((f.lost, f.duplicated, f.contradictory), (1, 2, 1));
        assert_eq!(f.extra_messages, 2);
        // A second outcome belongs to the phase it arrived in.
        let early = l.phase(0, 1_000, 1_000_000, 450);
        assert_eq!((early.duplicated, early.contradictory), (1, 0));
        assert_eq!(f.lost_ids, vec![2]);
        assert_eq!(l.reader_redeliveries(), 1);
        assert_eq!(f.outcomes["approved"], 3);
        assert_eq!(f.latency_samples, 3);
        assert!(f.p99_ms.is_some());
        let g = l.phase(1_000_000, 1_000_001, 10_000_000, u64::MAX);
        assert_eq!((g.challenges, g.lost), (1, 1));
    }

    #[test]
    fn recovery_is_the_first_full_window() {
        let l = Ledger::new(Instant::now());
        // Nothing for 2 s, then 10 outcomes per 100 ms (100/s).
        for i in 0..100u64 {
            l.record_outcome(
                i,
                "approved",
                &i.to_le_bytes(),
                false,
                2_000_000 + i * 10_000,
            );
        }
        let r = l.recovery(0, 5_000_000, 100.0).unwrap();
        assert!(
            r >= Duration::from_millis(1_500) && r <= Duration::from_millis(2_000),
            "{r:?}"
        );
        assert_eq!(l.recovery(0, 5_000_000, 1_000.0), None);
        assert!(l.outcome_rate(2_000_000, 3_000_000) > 99.0);
    }
}
