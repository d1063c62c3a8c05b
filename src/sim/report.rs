//! Reports of a comparison: one JSON object for programs, a table for
//! people, and an SVG plot of cumulative load seconds over time.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde::ser::SerializeMap;

use super::replay::RunResult;
use super::workload::SimError;
use crate::tiers::state::round6;

/// Everything a `tierd sim` run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub accesses: usize,
    pub lower_bound_s: f64,
    pub runs: Vec<RunResult>,
}

struct Hits<'a>(&'a [(String, u64)]);

impl Serialize for Hits<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct PolicyJson<'a> {
    policy: &'a str,
    moves: &'static str,
    total_load_s: f64,
    hits_by_tier: Hits<'a>,
    bytes_moved_gb: f64,
    move_count: u64,
    accesses_during_promotion: u64,
    promotion_wait_s: f64,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    accesses: usize,
    lower_bound_s: f64,
    policies: Vec<PolicyJson<'a>>,
}

impl Report {
    /// The JSON report, one line.
    pub fn to_json(&self) -> String {
        let r = ReportJson {
            accesses: self.accesses,
            lower_bound_s: round6(self.lower_bound_s),
            policies: self
                .runs
                .iter()
                .map(|r| PolicyJson {
                    policy: &r.policy,
                    moves: r.moves.as_str(),
                    total_load_s: round6(r.total_load_s),
                    hits_by_tier: Hits(&r.hits_by_tier),
                    bytes_moved_gb: round6(r.bytes_moved_gb),
                    move_count: r.move_count,
                    accesses_during_promotion: r.accesses_during_promotion,
                    promotion_wait_s: round6(r.promotion_wait_s),
                })
                .collect(),
        };
        serde_json::to_string(&r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table for people: each policy's cost, and its ratio to `lru` and to the bound.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "accesses: {}   lower bound: {:.1} s", self.accesses, self.lower_bound_s);
        let lru = self.runs.iter().find(|r| r.policy == "lru").map(|r| r.total_load_s);
        let tiers: Vec<&str> = self
            .runs
            .first()
            .map(|r| r.hits_by_tier.iter().map(|(t, _)| t.as_str()).collect())
            .unwrap_or_default();
        let _ = write!(
            s,
            "{:<8} {:<7} {:>14} {:>7} {:>9}",
            "policy", "moves", "total_load_s", "vs_lru", "vs_bound"
        );
        for t in &tiers {
            let _ = write!(s, " {:>10}", format!("hits_{t}"));
        }
        let _ = writeln!(s, " {:>12} {:>8} {:>12}", "moved_gb", "moves", "wait_s");
        for r in &self.runs {
            let vs_lru = match lru {
                Some(l) if l > 0.0 => format!("{:.3}", r.total_load_s / l),
                _ => "-".into(),
            };
            let vs_bound = if self.lower_bound_s > 0.0 {
                format!("{:.3}", r.total_load_s / self.lower_bound_s)
            } else {
                "-".into()
            };
            let _ = write!(
                s,
                "{:<8} {:<7} {:>14.1} {:>7} {:>9}",
                r.policy,
                r.moves.as_str(),
                r.total_load_s,
                vs_lru,
                vs_bound
            );
            for (_, h) in &r.hits_by_tier {
                let _ = write!(s, " {h:>10}");
            }
            let _ = writeln!(s, " {:>12.1} {:>8} {:>12.1}", r.bytes_moved_gb, r.move_count, r.promotion_wait_s);
        }
        s
    }

    /// Cumulative load seconds over time (hours from the first access), one line per policy.
    pub fn plot(&self, path: &Path) -> Result<(), SimError> {
        use plotters::prelude::*;
        let err = |e: String| SimError::Invalid(format!("{}: cannot draw the plot: {e}", path.display()));
        let t0 = self
            .runs
            .iter()
            .filter_map(|r| r.curve.first().map(|p| p.0))
            .fold(f64::INFINITY, f64::min);
        let t0 = if t0.is_finite() { t0 } else { 0.0 };
        let x_max = self
            .runs
            .iter()
            .filter_map(|r| r.curve.last().map(|p| (p.0 - t0) / 3600.0))
            .fold(0.0, f64::max)
            .max(1e-6);
        let y_max = self
            .runs
            .iter()
            .map(|r| r.total_load_s)
            .fold(self.lower_bound_s, f64::max)
            .max(1e-6)
            * 1.05;
        let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Cumulative load seconds", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("hours since the first access")
            .y_desc("load seconds")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let colors = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN, RGBColor(255, 140, 0)];
        for (i, r) in self.runs.iter().enumerate() {
            let color = colors[i % colors.len()];
            let label = format!("{} ({})", r.policy, r.moves.as_str());
            chart
                .draw_series(LineSeries::new(
                    r.curve.iter().map(|&(t, y)| ((t - t0) / 3600.0, y)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}
