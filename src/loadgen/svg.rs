//! The load report as a picture: throughput, p50/p99 latency and outcomes (stacked) per
//! second, written as plain SVG text (no plotting library).

use std::fmt::Write as _;

/// One second of a run, as drawn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    /// Seconds since the start of the load.
    pub t: u64,
    pub published: u64,
    pub outcomes: u64,
    /// Publish → outcome (or the chosen latency) in this second; `None` without samples.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Outcomes read in this second, by outcome name.
    pub by_outcome: Vec<(String, u64)>,
}

const W: f64 = 960.0;
const PANEL_H: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 50.0;
const GAP: f64 = 60.0;
const PALETTE: [&str; 8] = [
    "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
];

/// Escapes text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

/// A round upper bound for an axis (1, 2 or 5 × 10^n), at least `min`.
pub fn nice_max(v: f64, min: f64) -> f64 {
    let v = if v.is_finite() { v.max(min) } else { min };
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

struct Panel {
    top: f64,
    ymax: f64,
    t0: u64,
    t1: u64,
}

impl Panel {
    fn x(&self, t: u64) -> f64 {
        let span = (self.t1 - self.t0).max(1) as f64;
        LEFT + (t.saturating_sub(self.t0)) as f64 / span * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        self.top + PANEL_H - (v / self.ymax).clamp(0.0, 1.0) * PANEL_H
    }
    fn frame(&self, out: &mut String, title: &str, unit: &str) {
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"##,
            self.top - 10.0,
            escape(title)
        );
        for i in 0..=4 {
            let v = self.ymax * i as f64 / 4.0;
            let y = self.y(v);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v),
                escape(unit)
            );
        }
        let bottom = self.top + PANEL_H;
        let ticks = 6u64;
        for i in 0..=ticks {
            let t = self.t0 + (self.t1 - self.t0) * i / ticks;
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t} s</text>"##,
                self.x(t),
                bottom + 16.0
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
            self.top,
            W - LEFT - RIGHT
        );
    }
    fn line(&self, out: &mut String, pts: impl Iterator<Item = (u64, f64)>, colour: &str) {
        let mut d = String::new();
        for (t, v) in pts {
            let _ = write!(d, "{:.1},{:.1} ", self.x(t), self.y(v));
        }
        if !d.is_empty() {
            let _ = writeln!(
                out,
                r##"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"##,
                d.trim_end()
            );
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn legend(out: &mut String, top: f64, i: usize, colour: &str, label: &str) {
    let y = top + 14.0 + i as f64 * 18.0;
    let x = W - RIGHT + 12.0;
    let _ = writeln!(
        out,
        r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{y:.1}">{}</text>"##,
        y - 10.0,
        x + 18.0,
        escape(label)
    );
}

/// The whole picture: `title` on top, `subtitle` (settings, machine) under it.
pub fn render(title: &str, subtitle: &str, latency_label: &str, points: &[Point]) -> String {
    let h = TOP + 3.0 * (PANEL_H + GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="18" font-size="15" font-weight="bold">{}</text><text x="{LEFT}" y="34" fill="#555">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    let t0 = points.first().map(|p| p.t).unwrap_or(0);
    let t1 = points.last().map(|p| p.t).unwrap_or(0).max(t0 + 1);

    // 1. Throughput.
    let ymax = nice_max(
        points
            .iter()
            .map(|p| p.published.max(p.outcomes) as f64)
            .fold(0.0, f64::max),
        1.0,
    );
    let p = Panel {
        top: TOP + 20.0,
        ymax,
        t0,
        t1,
    };
    p.frame(&mut out, "Throughput (per second)", "");
    p.line(
        &mut out,
        points.iter().map(|q| (q.t, q.published as f64)),
        "#1f77b4",
    );
    p.line(
        &mut out,
        points.iter().map(|q| (q.t, q.outcomes as f64)),
        "#2ca02c",
    );
    legend(&mut out, p.top, 0, "#1f77b4", "published");
    legend(&mut out, p.top, 1, "#2ca02c", "outcomes");

    // 2. Latency.
    let ymax = nice_max(
        points.iter().filter_map(|q| q.p99_ms).fold(0.0, f64::max),
        1.0,
    );
    let p = Panel {
        top: TOP + 20.0 + PANEL_H + GAP,
        ymax,
        t0,
        t1,
    };
    p.frame(&mut out, &format!("{latency_label} latency"), " ms");
    p.line(
        &mut out,
        points.iter().filter_map(|q| Some((q.t, q.p50_ms?))),
        "#1f77b4",
    );
    p.line(
        &mut out,
        points.iter().filter_map(|q| Some((q.t, q.p99_ms?))),
        "#d62728",
    );
    legend(&mut out, p.top, 0, "#1f77b4", "p50");
    legend(&mut out, p.top, 1, "#d62728", "p99");

    // 3. Outcomes, stacked by outcome.
    let mut names: Vec<&str> = Vec::new();
    for q in points {
        for (n, _) in &q.by_outcome {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    names.sort_unstable();
    let ymax = nice_max(
        points
            .iter()
            .map(|q| q.by_outcome.iter().map(|(_, c)| *c).sum::<u64>() as f64)
            .fold(0.0, f64::max),
        1.0,
    );
    let p = Panel {
        top: TOP + 20.0 + 2.0 * (PANEL_H + GAP),
        ymax,
        t0,
        t1,
    };
    p.frame(&mut out, "Outcomes (per second, stacked)", "");
    let bar_w = ((W - LEFT - RIGHT) / (t1 - t0 + 1) as f64).max(0.5);
    for q in points {
        let mut acc = 0.0;
        for (i, name) in names.iter().enumerate() {
            let c = q
                .by_outcome
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c as f64)
                .unwrap_or(0.0);
            if c <= 0.0 {
                continue;
            }
            let (y_top, y_bot) = (p.y(acc + c), p.y(acc));
            acc += c;
            let _ = writeln!(
                out,
                r##"<rect x="{:.1}" y="{y_top:.1}" width="{bar_w:.2}" height="{:.1}" fill="{}"/>"##,
                p.x(q.t),
                (y_bot - y_top).max(0.0),
                PALETTE[i % PALETTE.len()]
            );
        }
    }
    for (i, name) in names.iter().enumerate() {
        legend(&mut out, p.top, i, PALETTE[i % PALETTE.len()], name);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t: u64, n: u64) -> Point {
        Point {
            t,
            published: n,
            outcomes: n,
            p50_ms: Some(2.0),
            p99_ms: Some(9.0),
            by_outcome: vec![("approved".into(), n - 1), ("denied".into(), 1)],
        }
    }

    #[test]
    fn draws_one_line_point_per_second_and_a_bar_per_outcome() {
        let pts: Vec<Point> = (1..=10).map(|t| pt(t, 300)).collect();
        let s = render("Load <test>", "300/s & more", "publish → outcome", &pts);
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>\n"));
        // Four polylines (published, outcomes, p50, p99) of ten points each.
        let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("<polyline")).collect();
        assert_eq!(lines.len(), 4);
        for l in lines {
            let pts = l.split("points=\"").nth(1).unwrap();
            assert_eq!(pts.split(' ').count(), 10, "{l}");
        }
        // Two stacked bars per second.
        let bars = s
            .lines()
            .filter(|l| {
                l.contains("width=\"")
                    && l.starts_with("<rect x=\"")
                    && !l.contains("stroke")
                    && !l.contains("<text")
            })
            .count();
        assert_eq!(bars, 20);
        assert!(s.contains("Load &lt;test&gt;") && s.contains("300/s &amp; more"));
        assert!(s.contains(">approved</text>") && s.contains(">denied</text>"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    #[test]
    fn an_empty_run_is_still_a_valid_picture() {
        let s = render("empty", "", "x", &[]);
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>\n"));
        assert!(!s.contains("<polyline"));
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn seconds_without_latency_samples_are_left_out_of_the_latency_lines() {
        let mut pts: Vec<Point> = (1..=4).map(|t| pt(t, 10)).collect();
        pts[1].p50_ms = None;
        pts[1].p99_ms = None;
        let s = render("t", "", "x", &pts);
        let counts: Vec<usize> = s
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| l.split("points=\"").nth(1).unwrap().split(' ').count())
            .collect();
        assert_eq!(counts, vec![4, 4, 3, 3]);
    }

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(0.0, 1.0), 1.0);
        assert_eq!(nice_max(3.0, 1.0), 5.0);
        assert_eq!(nice_max(301.0, 1.0), 500.0);
        assert_eq!(nice_max(1000.0, 1.0), 1000.0);
        assert_eq!(nice_max(f64::NAN, 1.0), 1.0);
    }

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
