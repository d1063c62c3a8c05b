//! The CLI commands of the everyday real workflow, one model at a time:
//! `register`, `unregister`, `pin`, `unpin`, `info`, `access` and `path`.
//! Each sends one request over the socket ([`Client`]) and shows the answer
//! for people, or, with `--json`, prints the server's answer line as it
//! came (an error answer too, with exit status 1), for scripts.
//!
//! `register` makes its path absolute on the client's side, against the
//! client's working directory: the server's is no business of the user's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::{Client, ClientError};
use crate::requests::Request;
use crate::requests::access_model::{AccessModel, AccessModelResponse};
use crate::requests::model_info::{ModelInfo, ModelInfoResponse};
use crate::requests::pin_model::{PinModel, PinResponse};
use crate::requests::register_model::{RegisterModel, RegisterModelResponse};
use crate::requests::unpin_model::UnpinModel;
use crate::requests::unregister_model::{UnregisterModel, UnregisterModelResponse};
use crate::tiers::ModelInfoView;

/// One of the commands, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelCommand {
    /// `tierd register NAME PATH [--tier T] [--size-gb GB]`.
    Register {
        name: String,
        path: PathBuf,
        tier: Option<String>,
        /// The size a simulated machine needs (a real one measures the files).
        size_gb: Option<f64>,
    },
    Unregister {
        name: String,
    },
    Pin {
        name: String,
    },
    Unpin {
        name: String,
    },
    Info {
        name: String,
    },
    Access {
        name: String,
    },
    Path {
        name: String,
    },
}

/// Runs `cmd` against the server at `socket`; with `json`, prints the raw
/// answer. Returns the exit status.
pub fn run(socket: &Path, cmd: &ModelCommand, json: bool) -> Result<i32, ClientError> {
    let request = build(cmd)?;
    let mut c = Client::connect(socket)?;
    let answer = c.send(&request)?;
    if json {
        // `path --json` answers just the path; every other command, the
        // server's whole answer.
        let out = match (cmd, is_error(&answer)) {
            (ModelCommand::Path { name }, false) => {
                let info: ModelInfoResponse = decode(&answer)?;
                serde_json::json!({"status": "success", "model_name": name, "serve_path": info.model.model.serve_path})
            }
            _ => answer.clone(),
        };
        println!("{out}");
        return Ok(if is_error(&answer) { 1 } else { 0 });
    }
    if is_error(&answer) {
        let e = &answer["error"];
        return Err(ClientError::Server {
            code: e["code"].as_str().unwrap_or("ERROR").to_string(),
            message: e["message"].as_str().unwrap_or("unknown error").to_string(),
        });
    }
    print!("{}", render(cmd, &answer, now())?);
    Ok(0)
}

/// The request a command sends.
pub fn build(cmd: &ModelCommand) -> Result<Request, ClientError> {
    Ok(match cmd {
        ModelCommand::Register { name, path, tier, size_gb } => {
            let abs = std::path::absolute(path).map_err(|e| ClientError::Usage(format!("cannot make {} absolute: {e}", path.display())))?;
            RegisterModel {
                model_name: name.clone(),
                size_gb: *size_gb,
                preferred_tier: tier.clone(),
                path: Some(abs),
                files: None,
            }
            .into()
        }
        ModelCommand::Unregister { name } => UnregisterModel { model_name: name.clone() }.into(),
        ModelCommand::Pin { name } => PinModel { model_name: name.clone() }.into(),
        ModelCommand::Unpin { name } => UnpinModel { model_name: name.clone() }.into(),
        ModelCommand::Info { name } | ModelCommand::Path { name } => ModelInfo { model_name: name.clone() }.into(),
        ModelCommand::Access { name } => AccessModel { model_name: name.clone() }.into(),
    })
}

/// The human form of a successful answer; `now` (Unix seconds) is what
/// the relative times are counted from.
pub fn render(cmd: &ModelCommand, answer: &Value, now: f64) -> Result<String, ClientError> {
    let mut out = String::new();
    match cmd {
        ModelCommand::Register { .. } => {
            let r: RegisterModelResponse = decode(answer)?;
            let _ = write!(out, "registered {} ({:.2} GB)", r.model_name, r.size_gb);
            match &r.job_id {
                Some(job) => {
                    let _ = writeln!(out, "; moving to {} ({job})", r.tier);
                }
                None => {
                    let _ = writeln!(out, " in {}", r.tier);
                }
            }
            if let Some(p) = &r.serve_path {
                let _ = writeln!(out, "serve path: {}", p.display());
            }
        }
        ModelCommand::Unregister { .. } => {
            let r: UnregisterModelResponse = decode(answer)?;
            let _ = writeln!(out, "unregistered {} (was in {}; its origin is untouched)", r.model_name, r.tier);
        }
        ModelCommand::Pin { .. } | ModelCommand::Unpin { .. } => {
            let r: PinResponse = decode(answer)?;
            let what = if r.pinned { "pinned" } else { "unpinned" };
            let _ = writeln!(out, "{} {what} in {}", r.model_name, r.tier);
        }
        ModelCommand::Access { .. } => {
            let r: AccessModelResponse = decode(answer)?;
            let _ = writeln!(
                out,
                "{}: served from {} (load {:.2} s), {} accesses",
                r.model_name, r.tier, r.load_time_s, r.usage
            );
            if !r.jobs.is_empty() {
                let _ = writeln!(out, "started: {}", r.jobs.join(", "));
            }
        }
        ModelCommand::Info { .. } => {
            let r: ModelInfoResponse = decode(answer)?;
            out = render_info(&r.model, now);
        }
        ModelCommand::Path { name } => {
            let r: ModelInfoResponse = decode(answer)?;
            match &r.model.model.serve_path {
                Some(p) => {
                    let _ = writeln!(out, "{}", p.display());
                }
                None => {
                    return Err(ClientError::Usage(format!(
                        "{name} has no serve path: the server runs a simulated machine (no files); `tierd serve --backend real` gives every model one"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// `tierd info`: the model's place, paths, residency and usage, with
/// times relative to `now`.
pub fn render_info(v: &ModelInfoView, now: f64) -> String {
    let m = &v.model;
    let mut out = String::new();
    let _ = writeln!(out, "{}  ({:.2} GB, {})", m.model_name, m.size_gb, m.status);
    let pinned = if m.pinned { ", pinned" } else { "" };
    let _ = writeln!(out, "  tier          {}{pinned}", m.tier);
    if let Some(job) = &m.job_id {
        let _ = writeln!(out, "  moving        {job}");
    }
    if let Some(p) = &m.serve_path {
        let _ = writeln!(out, "  serve path    {}", p.display());
    }
    if let Some(p) = &m.path {
        let _ = writeln!(out, "  origin        {}", p.display());
    }
    if let Some(r) = m.resident_fraction {
        let _ = writeln!(out, "  resident      {:.1}% of its bytes in {}", r * 100.0, m.tier);
    }
    let _ = writeln!(out, "  load time     {:.2} s from {}", m.load_time_s, m.tier);
    if let Some(l) = &v.engine_load_time_s {
        let ms = |s: Option<f64>| s.map_or_else(|| "-".to_string(), |s| format!("{:.0} ms", s * 1000.0));
        let _ = writeln!(
            out,
            "  engine loads  {}, last {}, mean {}, p95 {}",
            l.all.count,
            ms(l.all.last),
            ms(l.all.mean),
            ms(l.all.p95)
        );
        for (label, t) in [("resident", &l.resident), ("not resident", &l.not_resident)] {
            if t.count > 0 {
                let _ = writeln!(out, "    {label:<14}{}, mean {}, p95 {}", t.count, ms(t.mean), ms(t.p95));
            }
        }
        if let Some(b) = l.footprint_bytes {
            let _ = writeln!(
                out,
                "  footprint     {} (last load)",
                crate::human::gb(crate::config::bytes_to_gb(b))
            );
        }
    }
    let last = m.last_access.map_or_else(|| "never".to_string(), |t| ago(now - t));
    let _ = writeln!(out, "  usage         {} accesses, last {last}", m.usage);
    if let Some(first) = m.first_access {
        let _ = writeln!(out, "  first access  {}", ago(now - first));
    }
    let _ = writeln!(out, "  temperature   {} (decayed frequency {:.3})", m.temperature, m.frequency);
    if let Some(mean) = m.interarrival_mean_s {
        let sd = m
            .interarrival_stddev_s
            .map_or_else(String::new, |s| format!(", stddev {}", span(s)));
        let _ = writeln!(out, "  between uses  {} on average{sd}", span(mean));
    }
    if let Some(busiest) = busiest(&v.by_hour, |h| format!("{h:02}h")) {
        let _ = writeln!(out, "  busiest hours {busiest} (UTC)");
    }
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    if let Some(busiest) = busiest(&v.by_weekday, |d| DAYS.get(d).copied().unwrap_or("?").to_string()) {
        let _ = writeln!(out, "  busiest days  {busiest}");
    }
    let _ = writeln!(out, "  registered    {}", ago(now - v.registered_at));
    if let Some(why) = &m.unavailable_reason {
        let _ = writeln!(out, "  unavailable   {why}");
    }
    if let Some(f) = &m.fault {
        let _ = writeln!(out, "  last fault    {} {}: {} ({})", ago(now - f.at), f.kind, f.reason, f.action);
    }
    out
}

/// The three busiest slots of a profile, most accesses first.
fn busiest(counts: &[u32], label: impl Fn(usize) -> String) -> Option<String> {
    let mut used: Vec<(usize, u32)> = counts.iter().copied().enumerate().filter(|(_, n)| *n > 0).collect();
    if used.is_empty() {
        return None;
    }
    used.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Some(
        used.iter()
            .take(3)
            .map(|(i, n)| format!("{} ({n})", label(*i)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A duration for people: `45 s`, `3 min`, `2.5 h`, `4 days`.
pub fn span(s: f64) -> String {
    let s = s.max(0.0);
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 90.0 * 60.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 36.0 * 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} days", s / 86_400.0)
    }
}

/// How long ago something `elapsed` seconds old happened: `just now`,
/// `3 min ago` (or `in 5 s` for a time ahead of this clock).
pub fn ago(elapsed: f64) -> String {
    if !elapsed.is_finite() {
        return "-".into();
    }
    if elapsed.abs() < 2.0 {
        "just now".into()
    } else if elapsed < 0.0 {
        format!("in {}", span(-elapsed))
    } else {
        format!("{} ago", span(elapsed))
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn is_error(v: &Value) -> bool {
    v.get("status").and_then(Value::as_str) == Some("error")
}

fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, ClientError> {
    serde_json::from_value(v.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_as_people_say_them() {
        assert_eq!(ago(0.5), "just now");
        assert_eq!(ago(45.0), "45 s ago");
        assert_eq!(ago(180.0), "3 min ago");
        assert_eq!(ago(3.0 * 3600.0), "3.0 h ago");
        assert_eq!(ago(5.0 * 86_400.0), "5 days ago");
        assert_eq!(ago(-10.0), "in 10 s");
    }

    #[test]
    fn register_sends_an_absolute_path_made_on_the_client_side() {
        let cmd = ModelCommand::Register {
            name: "m".into(),
            path: PathBuf::from("models/m.gguf"),
            tier: Some("ram".into()),
            size_gb: None,
        };
        let Ok(Request::RegisterModel(r)) = build(&cmd) else {
            panic!("not a registration")
        };
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(r.path, Some(cwd.join("models/m.gguf")));
        assert_eq!(r.preferred_tier.as_deref(), Some("ram"));
    }

    #[test]
    fn info_shows_tier_serve_path_residency_and_relative_usage() {
        let v: ModelInfoView = serde_json::from_value(serde_json::json!({
            "model_name": "m", "size_gb": 1.5, "tier": "ram", "status": "ready", "usage": 3,
            "last_access": 1000.0, "pinned": true, "frequency": 2.5, "temperature": "warm",
            "interarrival_mean_s": 120.0, "interarrival_stddev_s": 30.0, "first_access": 700.0,
            "load_time_s": 0.15, "job_id": null, "unavailable_reason": null, "path": "/models/m.gguf",
            "serve_path": "/state/serve/m", "resident_fraction": 1.0,
            "status_code": "success", "by_hour": [0,0,0,0,0,0,0,0,0,2,0,0,0,0,1,0,0,0,0,0,0,0,0,0],
            "by_weekday": [3,0,0,0,0,0,0], "registered_at": 100.0
        }))
        .expect("view");
        let s = render_info(&v, 1180.0);
        for want in [
            "tier          ram, pinned",
            "serve path    /state/serve/m",
            "resident      100.0% of its bytes in ram",
            "3 accesses, last 3 min ago",
            "first access  8 min ago",
            "2 min on average, stddev 30 s",
            "09h (2), 14h (1)",
            "Mon (3)",
        ] {
            assert!(s.contains(want), "{want:?} in\n{s}");
        }
        assert!(!s.contains("engine loads"), "never loaded in an engine:\n{s}");
        let mut v = v;
        let mut stats = crate::tiers::engines::LoadStats::default();
        stats.all.add(0.25);
        stats.resident.add(0.25);
        stats.footprint_bytes = Some(600_000_000);
        v.engine_load_time_s = Some(stats);
        let s = render_info(&v, 1180.0);
        for want in [
            "engine loads  1, last 250 ms, mean 250 ms, p95 250 ms",
            "    resident      1, mean 250 ms",
            "footprint     0.6 GB",
        ] {
            assert!(s.contains(want), "{want:?} in\n{s}");
        }
        assert!(!s.contains("not resident"), "{s}");
    }
}
