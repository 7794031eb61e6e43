//! What a chaos run tells: one row per phase (the baseline, then each fault with its
//! settling time) printed as a table, and the JSON written to `bench/results/chaos.json`.

use super::ledger::{Ledger, PhaseFigures};
use super::{ChaosOptions, Phase};
use crate::loadgen::report::Report as LoadReport;
use serde_json::{json, Value};
use std::time::Duration;

/// One phase and its figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub phase: Phase,
    pub figures: PhaseFigures,
    /// From the fault's end until outcomes flow at full rate again (`None`: not within
    /// the phase; always `None` for the baseline).
    pub recovery: Option<Duration>,
}

impl Row {
    /// Lost = 0 and contradictory = 0.
    pub fn ok(&self) -> bool {
        self.figures.lost == 0 && self.figures.contradictory == 0
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

/// The table printed at the end.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<17} {:>10} {:>6} {:>10} {:>13} {:>11} {:>12} {:>8}\n",
        "fault",
        "challenges",
        "lost",
        "duplicated",
        "contradictory",
        "recovery s",
        "p99 ms",
        "happened"
    );
    for r in rows {
        let f = &r.figures;
        let recovery = match (&r.phase.fault, r.recovery) {
            (None, _) => "-".to_string(),
            (Some(_), Some(d)) => format!("{:.1}", d.as_secs_f64()),
            (Some(_), None) => "none".to_string(),
        };
        out.push_str(&format!(
            "{:<17} {:>10} {:>6} {:>10} {:>13} {:>11} {:>12} {:>8}\n",
            r.phase.name,
            f.challenges,
            f.lost,
            f.duplicated,
            f.contradictory,
            recovery,
            ms(f.p99_ms),
            if r.phase.happened { "yes" } else { "NO" }
        ));
    }
    out
}

/// The JSON report.
pub fn json(
    o: &ChaosOptions,
    rows: &[Row],
    full_rate: f64,
    ledger: &Ledger,
    load: &LoadReport,
    prefix: &str,
) -> Value {
    let id = |seq: &u64| format!("{prefix}{seq}");
    let phases: Vec<Value> = rows
        .iter()
        .map(|r| {
            let f = &r.figures;
            let p = &r.phase;
            let s = |us: u64| us as f64 / 1e6;
            json!({
                "fault": p.name,
                "started_s": s(p.start_us),
                "fault_ended_s": s(p.fault_end_us),
                "ended_s": s(p.end_us),
                "happened": p.happened,
                "evidence": p.evidence,
                "challenges": f.challenges,
                "accepted": f.accepted,
                "unconfirmed": f.unconfirmed,
                "unconfirmed_with_outcome": f.unconfirmed_with_outcome,
                "lost": f.lost,
                "duplicated": f.duplicated,
                "duplicate_messages": f.extra_messages,
                "identical_duplicates": f.identical_duplicates,
                "contradictory": f.contradictory,
                "recovery_s": r.recovery.map(|d| d.as_secs_f64()),
                "latency_during_fault_ms": {
                    "what": "publish to a decision's outcome (approved or denied), challenges published during the fault",
                    "samples": f.latency_samples,
                    "p50": f.p50_ms,
                    "p99": f.p99_ms,
                    "slowest": f.slowest.iter().map(|(s, ms)| json!({"challenge_id": id(s), "ms": ms})).collect::<Vec<_>>(),
                },
                "outcomes": f.outcomes,
                "lost_ids": f.lost_ids.iter().map(id).collect::<Vec<_>>(),
                "duplicated_ids": f.duplicated_ids.iter().map(|(s, o)| json!({"challenge_id": id(s), "outcomes": o})).collect::<Vec<_>>(),
                "contradictory_ids": f.contradictory_ids.iter().map(|(s, o)| json!({"challenge_id": id(s), "outcomes": o})).collect::<Vec<_>>(),
                "targets_met": r.ok(),
            })
        })
        .collect();
    let faults: Vec<&str> = o.faults.iter().map(|f| f.as_str()).collect();
    json!({
        "tool": "sca-dispatch chaos",
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "settings": {
            "rate": o.rate,
            "faults": faults,
            "fault_seconds": o.fault_time.as_secs_f64(),
            "warmup_seconds": o.warmup.as_secs_f64(),
            "settle_seconds": o.settle.as_secs_f64(),
            "instances": o.instances,
            "ttl_seconds": o.ttl_seconds,
            "sms_share": o.sms_share,
            "answers": o.answers.to_string(),
            "platforms": o.platforms.to_string(),
            "decide_after_ms": o.decide_after.as_millis() as u64,
        },
        "definitions": {
            "challenges": "published from the fault's start to the next fault's start (fault plus settling time)",
            "accepted": "the broker confirmed the publish",
            "lost": "accepted, and no outcome by the end of the run (ttl + margin after the last publish)",
            "duplicated": "challenges with more than one outcome message, counted in the phase where the second arrived (the reader's own redeliveries after a reconnect are not counted)",
            "contradictory": "challenges whose outcome messages disagree, counted in the phase where the first disagreeing one arrived",
            "recovery_s": "from the fault's end to the first one-second window with outcome messages at 90% of the baseline's rate",
        },
        "full_rate_per_s": full_rate,
        "reader_redeliveries": ledger.reader_redeliveries(),
        "phases": phases,
        "targets_met": rows.iter().all(Row::ok),
        "load": load.json,
    })
}
