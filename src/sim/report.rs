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
            // Sizes read with three significant digits, as everywhere in
            // human output (the JSON report keeps full precision).
            let moved = crate::human::sig3(r.bytes_moved_gb);
            let _ = writeln!(s, " {moved:>12} {:>8} {:>12.1}", r.move_count, r.promotion_wait_s);
        }
        s
    }

    /// Draws the comparison to `path` (`.svg` or `.png`, see [`PlotFormat`]),
    /// titled with the workload's name: cumulative load seconds over time,
    /// one line per policy and the offline lower bound as a dashed line,
    /// and under it each policy's accesses by the tier that served them.
    pub fn plot(&self, path: &Path, workload: &str) -> Result<(), SimError> {
        use plotters::prelude::*;
        let err = |e: String| SimError::Invalid(format!("{}: cannot draw the plot: {e}", path.display()));
        let format = PlotFormat::of(path)?;
        register_font().map_err(err)?;
        let size = (1100, 900);
        match format {
            PlotFormat::Svg => self.draw(SVGBackend::new(path, size).into_drawing_area(), workload),
            PlotFormat::Png => self.draw(BitMapBackend::new(path, size).into_drawing_area(), workload),
        }
        .map_err(err)
    }

    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        root: plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
        workload: &str,
    ) -> Result<(), String> {
        use plotters::prelude::*;
        let e = |e: plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let title = format!("{workload}: {} accesses, {} policies", self.accesses, self.runs.len());
        let root = root.titled(&title, ("sans-serif", 26)).map_err(e)?;
        let (top, bottom) = root.split_vertically(560);
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
            * 1.08;
        let mut chart = ChartBuilder::on(&top)
            .caption("Cumulative load seconds (lower is better)", ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("hours since the first access")
            .y_desc("load seconds")
            .x_label_formatter(&|h| hours_label(*h))
            .y_label_formatter(&|y| si_label(*y))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        for (i, r) in self.runs.iter().enumerate() {
            let color = palette(i);
            let label = format!("{} ({}): {} s", r.policy, r.moves.as_str(), si_label(r.total_load_s));
            chart
                .draw_series(LineSeries::new(
                    r.curve.iter().map(|&(t, y)| ((t - t0) / 3600.0, y)),
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        // The bound is a total over the whole trace, so it is drawn at its
        // height across the plot: where every line ends, at best.
        let bound = self.lower_bound_s;
        let dash = BLACK.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(0.0, bound), (x_max, bound)], 10, 6, dash))
            .map_err(e)?
            .label(format!("lower bound (offline): {} s", si_label(bound)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], dash));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(e)?;

        // Per policy, the fraction of accesses each tier served, stacked.
        let names: Vec<String> = self.runs.iter().map(|r| r.policy.clone()).collect();
        let tiers: Vec<String> = self
            .runs
            .first()
            .map(|r| r.hits_by_tier.iter().map(|(t, _)| t.clone()).collect())
            .unwrap_or_default();
        let n = names.len().max(1) as i32;
        let mut bars = ChartBuilder::on(&bottom)
            .caption("Accesses served by each tier (fraction, fastest at the bottom)", ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(80)
            // Segments 0..=n: one per policy, and the last one left empty
            // for the legend, so it never hides a bar.
            .build_cartesian_2d((0..n).into_segmented(), 0.0..1.0)
            .map_err(e)?;
        bars.configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len().max(1))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .y_desc("fraction of accesses")
            .y_label_formatter(&|f| format!("{:.0}%", f * 100.0))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        for (k, tier) in tiers.iter().enumerate() {
            let color = tier_color(k);
            let mut rects = Vec::new();
            for (i, r) in self.runs.iter().enumerate() {
                let total: u64 = r.hits_by_tier.iter().map(|(_, h)| h).sum();
                if total == 0 {
                    continue;
                }
                let below: u64 = r.hits_by_tier.iter().take(k).map(|(_, h)| h).sum();
                let here = r.hits_by_tier.get(k).map(|(_, h)| *h).unwrap_or(0);
                let (y0, y1) = (below as f64 / total as f64, (below + here) as f64 / total as f64);
                let i = i as i32;
                let mut rect = Rectangle::new([(SegmentValue::Exact(i), y0), (SegmentValue::Exact(i + 1), y1)], color.filled());
                rect.set_margin(0, 0, 12, 12);
                rects.push(rect);
            }
            bars.draw_series(rects)
                .map_err(e)?
                .label(tier.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        }
        bars.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
        Ok(())
    }
}

/// The image formats `tierd sim --plot` writes, chosen by the file's
/// extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    Svg,
    Png,
}

impl PlotFormat {
    /// The format `path`'s extension names, or an error listing those known.
    pub fn of(path: &Path) -> Result<PlotFormat, SimError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("svg") => Ok(PlotFormat::Svg),
            Some("png") => Ok(PlotFormat::Png),
            _ => Err(SimError::Invalid(format!(
                "--plot {}: the file must end in .svg or .png",
                path.display()
            ))),
        }
    }
}

/// Checks, before a replay that may take minutes, that the plot can be
/// written at `path`: a known extension, an existing directory, and a file
/// there this process may create (tried with a probe file that is removed
/// at once) or overwrite.
pub fn check_plot_path(path: &Path) -> Result<(), SimError> {
    PlotFormat::of(path)?;
    let bad = |why: String| SimError::Invalid(format!("--plot {}: {why}", path.display()));
    if path.is_dir() {
        return Err(bad("is a directory".into()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(bad(format!("directory {} does not exist", dir.display())));
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| bad(format!("cannot be overwritten: {e}")))?;
        return Ok(());
    }
    let probe = dir.join(format!(".tierd-plot-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| bad(format!("cannot write in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The font every plot's text is drawn with (DejaVu Sans, bundled, so a
/// PNG reads the same on a machine without fonts).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT)
            .map_err(|_| "the bundled font does not load".to_string())
    })
    .clone()
}

/// An hours axis label: "0 h", "12 h", "1.5 h", "3 d" past two days.
fn hours_label(h: f64) -> String {
    if h >= 48.0 {
        format!("{} d", crate::human::sig3(h / 24.0))
    } else {
        format!("{} h", crate::human::sig3(h))
    }
}

/// A load-seconds label in k and M: 5000000 → "5M", 12500 → "12.5k".
fn si_label(y: f64) -> String {
    let a = y.abs();
    if a >= 1e6 {
        format!("{}M", crate::human::sig3(y / 1e6))
    } else if a >= 1e3 {
        format!("{}k", crate::human::sig3(y / 1e3))
    } else {
        crate::human::sig3(y)
    }
}

fn palette(i: usize) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    // Colour-blind-safe (Okabe-Ito), the black kept for the bound.
    const C: [RGBColor; 7] = [
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(0, 158, 115),
        RGBColor(213, 94, 0),
        RGBColor(0, 114, 178),
        RGBColor(204, 121, 167),
        RGBColor(150, 150, 40),
    ];
    C[i % C.len()]
}

fn tier_color(k: usize) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    // Fast tiers dark, slow ones light.
    const C: [RGBColor; 5] = [
        RGBColor(0, 90, 160),
        RGBColor(86, 160, 220),
        RGBColor(170, 210, 240),
        RGBColor(220, 220, 220),
        RGBColor(250, 230, 180),
    ];
    C[k % C.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_read_well() {
        assert_eq!(si_label(5_000_000.0), "5M");
        assert_eq!(si_label(12_500.0), "12.5k");
        assert_eq!(si_label(950.0), "950");
        assert_eq!(hours_label(12.0), "12 h");
        assert_eq!(hours_label(72.0), "3 d");
    }

    #[test]
    fn plot_paths_are_checked_up_front() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_plot_path(&d.path().join("a.svg")).is_ok());
        assert!(check_plot_path(&d.path().join("a.PNG")).is_ok());
        let e = check_plot_path(&d.path().join("a.jpg")).unwrap_err().to_string();
        assert!(e.contains(".svg or .png"), "{e}");
        let e = check_plot_path(&d.path().join("missing/a.svg")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_plot_path(d.path()).unwrap_err().to_string();
        assert!(e.contains(".svg or .png") || e.contains("directory"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "the probe is removed");
    }
}
