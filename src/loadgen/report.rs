//! What a run tells: a line each second, the end-of-run summary, the JSON report and the
//! SVG picture. The per-second series is kept for the picture, at most a day of rows.

use super::hist::{Stage, Summary};
use super::mix::Kind;
use super::player::{Shared, OUTCOMES};
use super::procstat::{self, CpuMark};
use super::svg;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rows kept for the picture (a day of seconds).
const MAX_ROWS: usize = 86_400;
/// How long past its ttl a challenge may wait for the outcome of its expiry before it
/// counts as lost.
const OVERDUE_MARGIN: Duration = Duration::from_secs(10);
/// Challenges still waiting for an outcome listed in the report, at most.
const LOST_EXAMPLES: usize = 10;

/// One second of the run.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub t: u64,
    pub published: u64,
    pub pushed: u64,
    pub decided: u64,
    pub outcomes: u64,
    pub in_flight: u64,
    pub errors: u64,
    pub publish_to_push: Summary,
    pub publish_to_outcome: Summary,
    /// Cores the daemon processes used in this second.
    pub daemon_cores: Option<f64>,
    pub by_outcome: [u64; OUTCOMES.len()],
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn errors(s: &Shared) -> u64 {
    let c = &s.counters;
    get(&c.publish_errors)
        + get(&c.http_409)
        + get(&c.http_404)
        + get(&c.http_410)
        + get(&c.http_4xx)
        + get(&c.http_5xx)
        + get(&c.http_failed)
        + get(&c.feed_lagged)
}

fn outcome_totals(s: &Shared) -> [u64; OUTCOMES.len()] {
    let mut out = [0u64; OUTCOMES.len()];
    for row in &s.counters.by_kind {
        for (o, v) in out.iter_mut().zip(row) {
            *o += get(v);
        }
    }
    out
}

/// The per-second reporter.
pub struct Seconds {
    last: Row,
    rows: Vec<Row>,
    cpu_second: Option<CpuMark>,
    cpu_run: Option<CpuMark>,
    rss_peak: u64,
    load_start: Option<[f64; 3]>,
    wall_start: Instant,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl Seconds {
    pub fn new(s: &Shared) -> Seconds {
        let mark = (!s.pids.is_empty()).then(|| CpuMark::new(&s.pids));
        Seconds {
            last: Row::default(),
            rows: Vec::new(),
            cpu_second: mark.clone(),
            cpu_run: mark,
            rss_peak: 0,
            load_start: procstat::loadavg(),
            wall_start: Instant::now(),
            started_at: chrono::Utc::now(),
        }
    }

    pub fn header() -> String {
        format!(
            "{:>5} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>15} {:>15} {:>6}",
            "t(s)",
            "published",
            "pushed",
            "decided",
            "outcomes",
            "in-flight",
            "errors",
            "pub→push p50/99",
            "pub→out p50/99",
            "cores"
        )
    }

    /// Ends a second: returns its line.
    pub fn tick(&mut self, s: &Shared) -> String {
        let c = &s.counters;
        let now = Row {
            t: s.started.elapsed().as_secs_f64().round() as u64,
            published: get(&c.published),
            pushed: get(&c.pushed),
            decided: get(&c.decisions_ok),
            outcomes: get(&c.outcomes),
            in_flight: s.flights.len() as u64,
            errors: errors(s),
            by_outcome: outcome_totals(s),
            ..Row::default()
        };
        let mut row = Row {
            t: now.t,
            published: now.published - self.last.published,
            pushed: now.pushed - self.last.pushed,
            decided: now.decided - self.last.decided,
            outcomes: now.outcomes - self.last.outcomes,
            in_flight: now.in_flight,
            errors: now.errors - self.last.errors,
            publish_to_push: s.lat.get(Stage::PublishToPush).take_second(),
            publish_to_outcome: s.lat.get(Stage::PublishToOutcome).take_second(),
            daemon_cores: None,
            by_outcome: [0; OUTCOMES.len()],
        };
        for (i, v) in row.by_outcome.iter_mut().enumerate() {
            *v = now.by_outcome[i] - self.last.by_outcome[i];
        }
        s.lat.get(Stage::PushToDecision).take_second();
        s.lat.get(Stage::DecisionToOutcome).take_second();
        if let Some(m) = &self.cpu_second {
            let (cpu, wall) = m.since();
            row.daemon_cores = Some(if wall > 0.0 { cpu / wall } else { 0.0 });
            self.cpu_second = Some(CpuMark::new(m.pids()));
            let rss: u64 = s.pids.iter().filter_map(|p| procstat::rss_bytes(*p)).sum();
            self.rss_peak = self.rss_peak.max(rss);
        }
        self.last = now;
        let line = format!(
            "{:>5} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>15} {:>15} {:>6}",
            row.t,
            row.published,
            row.pushed,
            row.decided,
            row.outcomes,
            row.in_flight,
            row.errors,
            row.publish_to_push.short(),
            row.publish_to_outcome.short(),
            row.daemon_cores
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into())
        );
        if self.rows.len() < MAX_ROWS {
            self.rows.push(row);
        }
        line
    }

    /// The end-of-run report.
    pub fn finish(self, s: &Shared) -> Report {
        let c = &s.counters;
        let wall = self.wall_start.elapsed().as_secs_f64().max(1e-9);
        let o = &s.opts;
        let published = get(&c.published);
        let outcomes = get(&c.outcomes);
        // A challenge still waiting past its expiry (plus a margin for the expiry's own
        // outcome) is lost; one still inside it when the drain ended is only unfinished.
        let overdue_after = Duration::from_secs(o.ttl_seconds) + OVERDUE_MARGIN;
        let overdue = s
            .flights
            .iter()
            .filter(|e| e.value().published.elapsed() >= overdue_after)
            .count() as u64;
        let unfinished = (s.flights.len() as u64).saturating_sub(overdue);
        let lost = overdue + get(&c.pruned);
        // A few of the challenges still waiting, to look them up on the daemon.
        let waiting: Vec<Value> = s
            .flights
            .iter()
            .take(LOST_EXAMPLES)
            .map(|e| {
                let f = e.value();
                let ms = |t: Option<Instant>| {
                    t.map(|t| t.saturating_duration_since(f.published).as_millis() as u64)
                };
                json!({
                    "challenge_id": format!("{}{}", s.prefix, e.key()),
                    "kind": f.kind.as_str(),
                    "answer": f.answer.as_str(),
                    "age_ms": f.published.elapsed().as_millis() as u64,
                    "pushed_after_ms": ms(f.pushed),
                    "decided_after_ms": ms(f.decided),
                })
            })
            .collect();
        let mut by_kind = Map::new();
        for (k, row) in Kind::ALL.iter().zip(&c.by_kind) {
            let mut m = Map::new();
            for (name, v) in OUTCOMES.iter().zip(row) {
                if get(v) > 0 {
                    m.insert(name.to_string(), json!(get(v)));
                }
            }
            if !m.is_empty() {
                by_kind.insert(k.as_str().to_string(), Value::Object(m));
            }
        }
        let mut latency = Map::new();
        for st in Stage::ALL {
            latency.insert(st.name().into(), s.lat.get(st).total().to_json());
        }
        let daemon = self.cpu_run.as_ref().map(|m| {
            let (cpu, wall) = m.since();
            let rss: u64 = s.pids.iter().filter_map(|p| procstat::rss_bytes(*p)).sum();
            json!({
                "pids": s.pids,
                "cpu_seconds": (cpu * 100.0).round() / 100.0,
                "cpu_cores": ((cpu / wall.max(1e-9)) * 1000.0).round() / 1000.0,
                "cpu_us_per_challenge": if outcomes > 0 { (cpu * 1e6 / outcomes as f64).round() } else { 0.0 },
                "rss_bytes": rss,
                "rss_peak_bytes": self.rss_peak.max(rss),
            })
        });
        let round = |v: f64| (v * 10.0).round() / 10.0;
        let publishing = match get(&s.publish_end_us) {
            0 => wall,
            us => us as f64 / 1e6,
        };
        let last_outcome = get(&s.last_outcome_us) as f64 / 1e6;
        let json = json!({
            "v": 1,
            "started_at": self.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "wall_seconds": round(wall),
            "publishing_seconds": (publishing * 1000.0).round() / 1000.0,
            "last_outcome_seconds": (last_outcome * 1000.0).round() / 1000.0,
            "settings": {
                "rate_per_s": o.rate,
                "duration_s": o.duration.map(|d| d.as_secs_f64()),
                "count": o.count,
                "kinds": o.kinds.to_string(),
                "platforms": o.platforms.to_string(),
                "devices_per_challenge": o.devices_per_challenge,
                "sms_share": o.sms_share,
                "sms_fallback_seconds": o.sms_fallback_seconds,
                "payload_bytes": o.payload_bytes,
                "answers": o.answers.to_string(),
                "decide_after_ms": o.decide_after.as_millis() as u64,
                "ttl_seconds": o.ttl_seconds,
                "instances": o.api.len(),
            },
            "published": published,
            "pushed": get(&c.pushed),
            "sms": get(&c.sms),
            "decisions_sent": get(&c.decisions_sent),
            "decisions_ok": get(&c.decisions_ok),
            "outcomes": outcomes,
            "lost": lost,
            "unfinished": unfinished,
            "waiting_examples": waiting,
            "rates": {
                "offered_per_s": o.rate,
                // Over the publishing time, and up to the last outcome.
                "published_per_s": round(published as f64 / publishing.max(1e-3)),
                "outcomes_per_s": round(outcomes as f64 / last_outcome.max(1e-3)),
            },
            "latency": latency,
            "errors": {
                "total": errors(s),
                "publish": get(&c.publish_errors),
                "http_409": get(&c.http_409),
                "http_404": get(&c.http_404),
                "http_410": get(&c.http_410),
                "http_4xx_other": get(&c.http_4xx),
                "http_5xx": get(&c.http_5xx),
                "http_failed": get(&c.http_failed),
                "feed_lagged": get(&c.feed_lagged),
                "unmatched_outcomes": get(&c.unmatched_outcomes),
                "pruned": get(&c.pruned),
                "throttled": get(&c.throttled),
            },
            "outcomes_by_kind": by_kind,
            "daemon": daemon,
            "machine": {
                "cores": procstat::cores(),
                "loadavg_start": self.load_start,
                "loadavg_end": procstat::loadavg(),
            },
        });
        Report {
            json,
            rows: self.rows,
        }
    }
}

/// The end-of-run report.
#[derive(Debug, Clone)]
pub struct Report {
    pub json: Value,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn lost(&self) -> u64 {
        self.json["lost"].as_u64().unwrap_or(0)
    }

    /// Challenges still inside their ttl, without an outcome, when the drain ended.
    pub fn unfinished(&self) -> u64 {
        self.json["unfinished"].as_u64().unwrap_or(0)
    }

    /// Whole-run figures of one stage.
    pub fn latency(&self, stage: Stage) -> &Value {
        &self.json["latency"][stage.name()]
    }

    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let j = &self.json;
        let mut out = String::new();
        out.push_str(&format!(
            "\nSummary: {} published, {} outcomes, {} lost, {} unfinished, {} errors in {} s ({} published/s, {} outcomes/s)\n",
            j["published"], j["outcomes"], j["lost"], j["unfinished"], j["errors"]["total"], j["wall_seconds"],
            j["rates"]["published_per_s"], j["rates"]["outcomes_per_s"]
        ));
        out.push_str("  latency (ms)          count     p50     p90     p99   p99.9     max\n");
        for st in Stage::ALL {
            let l = &j["latency"][st.name()];
            out.push_str(&format!(
                "  {:<20} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
                st.name(),
                l["count"],
                l["p50_ms"],
                l["p90_ms"],
                l["p99_ms"],
                l["p999_ms"],
                l["max_ms"]
            ));
        }
        if let Some(k) = j["outcomes_by_kind"].as_object() {
            for (kind, m) in k {
                out.push_str(&format!("  {kind:<20} {m}\n"));
            }
        }
        if let Some(w) = j["waiting_examples"].as_array().filter(|w| !w.is_empty()) {
            out.push_str("  still without an outcome (first few):\n");
            for e in w {
                out.push_str(&format!("    {e}\n"));
            }
        }
        if let Some(d) = j["daemon"].as_object() {
            out.push_str(&format!(
                "  daemon pid(s) {}: {} cores, {} µs CPU per challenge, RSS {:.1} MiB (peak {:.1} MiB)\n",
                d["pids"],
                d["cpu_cores"],
                d["cpu_us_per_challenge"],
                d["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                d["rss_peak_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            ));
        }
        out.push_str(&format!(
            "  machine: {} cores, load average {} → {}\n",
            j["machine"]["cores"], j["machine"]["loadavg_start"], j["machine"]["loadavg_end"]
        ));
        out
    }

    /// The picture: throughput, publish → push p50/p99 (the daemon's dispatch latency,
    /// free of the devices' delay and of expiries) and outcomes per second.
    pub fn svg(&self, title: &str) -> String {
        let points: Vec<svg::Point> = self
            .rows
            .iter()
            .map(|r| svg::Point {
                t: r.t,
                published: r.published,
                outcomes: r.outcomes,
                p50_ms: (r.publish_to_push.count > 0).then_some(r.publish_to_push.p50_ms),
                p99_ms: (r.publish_to_push.count > 0).then_some(r.publish_to_push.p99_ms),
                by_outcome: OUTCOMES
                    .iter()
                    .zip(r.by_outcome)
                    .filter(|(_, c)| *c > 0)
                    .map(|(n, c)| (n.to_string(), c))
                    .collect(),
            })
            .collect();
        let j = &self.json;
        let s = &j["settings"];
        let rate = s["rate_per_s"]
            .as_f64()
            .map(|r| format!("{r}/s"))
            .unwrap_or_else(|| "flat out".into());
        let subtitle = format!(
            "{} · {rate} · {} · answers {} after {} ms · {} published, {} outcomes, {} lost · {} cores, load avg {}",
            j["started_at"].as_str().unwrap_or(""),
            s["kinds"].as_str().unwrap_or(""),
            s["answers"].as_str().unwrap_or(""),
            s["decide_after_ms"],
            j["published"],
            j["outcomes"],
            j["lost"],
            j["machine"]["cores"],
            j["machine"]["loadavg_end"].get(0).cloned().unwrap_or(Value::Null)
        );
        svg::render(title, &subtitle, "publish → push", &points)
    }

    /// Writes `<path>.json` and `<path>.svg`.
    pub fn write(&self, path: &std::path::Path, title: &str) -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d)?;
            }
        }
        let j = serde_json::to_string_pretty(&self.json).unwrap_or_default() + "\n";
        std::fs::write(path.with_extension("json"), j)?;
        std::fs::write(path.with_extension("svg"), self.svg(title))?;
        Ok(())
    }
}
