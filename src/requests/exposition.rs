//! The engine's metrics in Prometheus' text exposition format 0.0.4: what
//! `{"metrics": {"format": "prometheus"}}` answers and what `serve
//! --metrics-listen` serves at `GET /metrics`.
//!
//! A careful writer rather than a registry: every figure is read from the
//! engine at scrape time (the engine's own counters are the source of
//! truth), so nothing is kept twice. Conventions: prefix `tierd_`, base
//! units (`_bytes`, `_seconds`), `_total` for counters, ratios 0–1. Label
//! cardinality (README, Metrics): `tier` (one per configured tier), `from`
//! × `to` × `result` (tiers² × 3), `model` (one series per registered model,
//! in `tierd_model_tier` only).

use std::fmt::Write as _;

use crate::config::gb_to_bytes;
use crate::drivers::Capacity;
use crate::tiers::views::END_STATUSES;
use crate::tiers::{Engine, Histogram};

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Driver kinds built into tierd: a tier of any other kind is an inference
/// engine (llama-server, Ollama, vLLM) whose health tierd reports as
/// `tierd_engine_up`.
const BUILT_IN_KINDS: &[&str] = &["sim", "storage", "dir", "pagecache", "gpu"];

/// Whether tier `tier`'s driver is an engine's (it reports health).
pub fn is_engine_tier(engine: &Engine, tier: usize) -> bool {
    !BUILT_IN_KINDS.contains(&engine.driver(tier).kind())
}

/// The exposition text of `engine` at engine time `now`.
pub fn render(engine: &Engine, now: f64) -> String {
    let mut w = Writer {
        out: String::with_capacity(8 * 1024),
    };
    let state = engine.state();
    let m = engine.metrics();
    let tiers: Vec<&str> = state.tiers.iter().map(|t| t.name.as_str()).collect();

    w.family("tierd_build_info", "gauge", "Always 1; the labels say which tierd is serving.");
    w.sample(
        "tierd_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("policy", engine.policy_name()),
            ("backend", engine.machine_kind().as_str()),
        ],
        1.0,
    );
    w.family("tierd_uptime_seconds", "gauge", "Engine seconds since the engine started.");
    w.sample("tierd_uptime_seconds", &[], now - engine.started_at);

    // --------------------------------------------------------------- tiers
    w.family("tierd_tier_used_bytes", "gauge", "Bytes of the models whose current tier this is.");
    for (t, name) in state.tiers.iter().zip(&tiers) {
        w.sample("tierd_tier_used_bytes", &[("tier", name)], t.used as f64);
    }
    w.family(
        "tierd_tier_limit_bytes",
        "gauge",
        "The tier's byte budget (absent for an unbounded tier).",
    );
    for (t, name) in state.tiers.iter().zip(&tiers) {
        if let Some(l) = t.limit {
            w.sample("tierd_tier_limit_bytes", &[("tier", name)], l as f64);
        }
    }
    w.family(
        "tierd_tier_reserved_bytes",
        "gauge",
        "Memory the tier keeps for the rest of the system.",
    );
    for (t, name) in state.tiers.iter().zip(&tiers) {
        w.sample("tierd_tier_reserved_bytes", &[("tier", name)], t.reserved as f64);
    }
    w.family(
        "tierd_tier_available_bytes",
        "gauge",
        "Bytes the hardware could still take (absent when unbounded or unavailable).",
    );
    for (i, name) in tiers.iter().enumerate() {
        if let Ok(Some(a)) = engine.hardware_available(i) {
            w.sample("tierd_tier_available_bytes", &[("tier", name)], a as f64);
        }
    }
    w.family(
        "tierd_tier_hardware_bytes",
        "gauge",
        "The hardware's total bytes under the tier, where known.",
    );
    for (i, name) in tiers.iter().enumerate() {
        if let Some(b) = hardware_bytes(engine, i) {
            w.sample("tierd_tier_hardware_bytes", &[("tier", name)], b as f64);
        }
    }
    w.family(
        "tierd_tier_available",
        "gauge",
        "1 while the tier can take models, 0 while its driver says it cannot.",
    );
    for (i, name) in tiers.iter().enumerate() {
        let up = !matches!(engine.driver(i).capacity(), Capacity::Unavailable(_));
        w.sample("tierd_tier_available", &[("tier", name)], f64::from(u8::from(up)));
    }
    w.family(
        "tierd_tier_pressure",
        "gauge",
        "Used bytes over the limit, 0-1 (above 1 after a lowered limit; 0 when unbounded).",
    );
    for (t, name) in state.tiers.iter().zip(&tiers) {
        w.sample("tierd_tier_pressure", &[("tier", name)], t.utilization());
    }
    w.family(
        "tierd_tier_pressure_level",
        "gauge",
        "Pressure level as tier_status names it: 0 low, 1 medium, 2 high, 3 critical.",
    );
    for (t, name) in state.tiers.iter().zip(&tiers) {
        let level = match t.pressure(&state.pressure_cfg) {
            "medium" => 1.0,
            "high" => 2.0,
            "critical" => 3.0,
            _ => 0.0,
        };
        w.sample("tierd_tier_pressure_level", &[("tier", name)], level);
    }
    w.family("tierd_tier_models", "gauge", "Models whose current tier this is.");
    for (t, name) in state.tiers.iter().zip(&tiers) {
        w.sample("tierd_tier_models", &[("tier", name)], t.models as f64);
    }
    w.family("tierd_tier_hits_total", "counter", "Accesses served from the tier.");
    for (i, name) in tiers.iter().enumerate() {
        w.sample(
            "tierd_tier_hits_total",
            &[("tier", name)],
            m.hits_by_tier.get(i).copied().unwrap_or(0) as f64,
        );
    }

    // -------------------------------------------------------------- models
    w.family(
        "tierd_model_tier",
        "gauge",
        "1 for each model, labelled with the tier that holds it now.",
    );
    let mut models: Vec<(&str, &str)> = state
        .models
        .iter()
        .flatten()
        .map(|md| (&*md.name, tiers.get(md.tier).copied().unwrap_or("")))
        .collect();
    models.sort_unstable();
    for (model, tier) in &models {
        w.sample("tierd_model_tier", &[("model", model), ("tier", tier)], 1.0);
    }
    w.family("tierd_models", "gauge", "Registered models.");
    w.sample("tierd_models", &[], models.len() as f64);

    // --------------------------------------------------------------- moves
    w.family(
        "tierd_moves_total",
        "counter",
        "Ended moves by source tier, target tier and result.",
    );
    for ((from, to, slot), n) in &m.moves_by_route {
        let (Some(from), Some(to)) = (tiers.get(*from), tiers.get(*to)) else {
            continue;
        };
        let result = END_STATUSES[*slot].as_str();
        w.sample("tierd_moves_total", &[("from", from), ("to", to), ("result", result)], *n as f64);
    }
    w.family("tierd_moves_started_total", "counter", "Move attempts started (retries included).");
    w.sample("tierd_moves_started_total", &[], m.moves_started as f64);
    w.family("tierd_move_retries_total", "counter", "Move attempts retried after a failure.");
    w.sample("tierd_move_retries_total", &[], m.retries as f64);
    w.family("tierd_jobs_submitted_total", "counter", "Move jobs submitted.");
    w.sample("tierd_jobs_submitted_total", &[], m.jobs_submitted as f64);
    w.family("tierd_moved_bytes_total", "counter", "Bytes of the moves that succeeded.");
    w.sample("tierd_moved_bytes_total", &[], m.bytes_moved as f64);
    w.family(
        "tierd_move_duration_seconds",
        "histogram",
        "How long ended moves ran, from their first start to their end, by target tier and result.",
    );
    for (to, by_result) in tiers.iter().zip(&m.move_duration) {
        for (slot, h) in by_result.iter().enumerate() {
            w.histogram(
                "tierd_move_duration_seconds",
                &[("to", to), ("result", END_STATUSES[slot].as_str())],
                h,
            );
        }
    }

    // ------------------------------------------------------------ accesses
    w.family("tierd_accesses_total", "counter", "Model accesses counted.");
    w.sample("tierd_accesses_total", &[], m.accesses as f64);
    w.family("tierd_load_seconds_total", "counter", "Load seconds the accesses paid, in all.");
    w.sample("tierd_load_seconds_total", &[], m.load_seconds);
    w.family(
        "tierd_load_time_seconds",
        "histogram",
        "Load seconds of each access, by the tier that served it.",
    );
    for (tier, h) in tiers.iter().zip(&m.load_time) {
        w.histogram("tierd_load_time_seconds", &[("tier", tier)], h);
    }
    w.family(
        "tierd_accesses_during_promotion_total",
        "counter",
        "Accesses that found their model's own promotion queued or running.",
    );
    w.sample("tierd_accesses_during_promotion_total", &[], m.accesses_during_promotion as f64);
    w.family(
        "tierd_promotion_wait_seconds_total",
        "counter",
        "Load seconds those accesses paid beyond the tier their promotion was taking the model to.",
    );
    w.sample("tierd_promotion_wait_seconds_total", &[], m.promotion_wait_s);

    // --------------------------------------------------------------- queue
    let view = engine.metrics_view(now);
    w.family("tierd_queue_depth", "gauge", "Move jobs not yet ended, by state.");
    w.sample("tierd_queue_depth", &[("state", "queued")], view.jobs_queued as f64);
    w.sample("tierd_queue_depth", &[("state", "running")], view.jobs_running as f64);
    w.family("tierd_max_concurrent_moves", "gauge", "Moves that may run at once.");
    w.sample("tierd_max_concurrent_moves", &[], engine.max_concurrent() as f64);

    // ------------------------------------------------------------- engines
    let engines: Vec<usize> = (0..tiers.len()).filter(|&i| is_engine_tier(engine, i)).collect();
    if !engines.is_empty() {
        w.family(
            "tierd_engine_up",
            "gauge",
            "1 while the inference engine behind the tier answers, else 0.",
        );
        for &i in &engines {
            let up = !matches!(engine.driver(i).capacity(), Capacity::Unavailable(_));
            w.sample("tierd_engine_up", &[("tier", tiers[i])], f64::from(u8::from(up)));
        }
        w.family(
            "tierd_engine_load_duration_seconds",
            "histogram",
            "How long the engine behind the tier took to load models (its moves that succeeded).",
        );
        for &i in &engines {
            if let Some(h) = m.move_duration.get(i) {
                w.histogram("tierd_engine_load_duration_seconds", &[("tier", tiers[i])], &h[0]);
            }
        }
    }
    w.out
}

/// The hardware's total under tier `tier`: the driver's `Capacity::Total`,
/// else the `hardware_gb` its details report.
fn hardware_bytes(engine: &Engine, tier: usize) -> Option<u64> {
    match engine.driver(tier).capacity() {
        Capacity::Total(n) => Some(n),
        _ => engine
            .driver(tier)
            .details()
            .get("hardware_gb")
            .and_then(|v| v.as_f64())
            .map(gb_to_bytes),
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        for (le, n) in h.cumulative() {
            let _ = write!(self.out, "{name}_bucket");
            // `1.0`, not `1`: the bound as client libraries spell it.
            write_labels(&mut self.out, labels, Some(&format!("{le:?}")));
            let _ = writeln!(self.out, " {n}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count());
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", number(h.sum()));
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count());
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label(out, v);
        out.push('"');
    }
    out.push('}');
}

/// A label value: backslash, double quote and line feed escaped (any other
/// character, Unicode included, is allowed as is).
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut s = String::new();
        write_labels(&mut s, &[("model", "a\"b\\c\nd")], Some("+Inf"));
        assert_eq!(s, r#"{model="a\"b\\c\nd",le="+Inf"}"#);
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn special_numbers_are_spelled_as_the_format_wants() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(3.0), "3");
    }
}
