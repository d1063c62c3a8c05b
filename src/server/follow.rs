//! Following a server's event stream from the CLI: `tierd watch` prints
//! the events (humanly, or as the JSON lines they are), and `tierd move
//! --wait` draws its progress bar from them (`requests::watch`).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::requests::watch::Watch;
use crate::tiers::Category;

use super::client::{Client, ClientError};

/// A connection in watch mode.
pub struct EventStream {
    client: Client,
    /// A line read in part before a read timed out.
    partial: Vec<u8>,
}

impl EventStream {
    /// Connects and starts watching `spec`; the server's refusal (an older
    /// server, a bad group) is a [`ClientError::Server`].
    pub fn open(socket: &Path, spec: &Watch) -> Result<EventStream, ClientError> {
        let mut client = Client::connect(socket)?;
        let ack = client.send(&spec.clone().into())?;
        if ack.get("status").and_then(Value::as_str) != Some("success") {
            let e = &ack["error"];
            return Err(ClientError::Server {
                code: e["code"].as_str().unwrap_or("ERROR").to_string(),
                message: e["message"].as_str().unwrap_or("watch refused").to_string(),
            });
        }
        Ok(EventStream {
            client,
            partial: Vec::new(),
        })
    }

    /// The next event, or `None` when none came within `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Value>, ClientError> {
        self.client.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.client.read_line_into(&mut self.partial) {
            Ok(0) => Err(ClientError::Closed),
            Ok(_) if self.partial.ends_with(b"\n") => {
                let line = std::mem::take(&mut self.partial);
                serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::BadResponse(format!("{e}: {}", String::from_utf8_lossy(&line))))
            }
            // The server closed in the middle of a line.
            Ok(_) => Err(ClientError::Closed),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Options of `tierd watch`.
#[derive(Debug, Clone, Default)]
pub struct WatchArgs {
    /// Groups (empty: all).
    pub events: Vec<String>,
    pub json: bool,
    pub progress_interval_s: Option<f64>,
}

/// `tierd watch`: prints events until the server goes away (or Ctrl-C).
pub fn watch(socket: &Path, args: &WatchArgs) -> Result<i32, ClientError> {
    let mut spec = Watch::default();
    if !args.events.is_empty() {
        spec.events.clear();
        for e in &args.events {
            let c = Category::parse(e).ok_or_else(|| {
                ClientError::Usage(format!(
                    "unknown event group {e:?}; known: {}",
                    Category::ALL.map(Category::as_str).join(", ")
                ))
            })?;
            spec.events.insert(c);
        }
    }
    if let Some(s) = args.progress_interval_s {
        spec.progress_interval_s = s;
    }
    let mut stream = EventStream::open(socket, &spec)?;
    let mut out = std::io::stdout().lock();
    loop {
        match stream.next(Duration::from_secs(3600)) {
            Ok(Some(v)) => {
                let line = if args.json { v.to_string() } else { render_event(&v) };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    // The reader went away (`tierd watch | head`).
                    return Ok(0);
                }
            }
            Ok(None) => {}
            Err(ClientError::Closed) => {
                eprintln!("tierd: the server closed the event stream");
                return Ok(1);
            }
            Err(e) => return Err(e),
        }
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn f(v: &Value, k: &str) -> String {
    match v.get(k).and_then(Value::as_f64) {
        Some(x) => short(x),
        None => "?".into(),
    }
}

/// A number for people: whole numbers as they are, others to 3 decimals
/// without trailing zeros.
fn short(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let t = format!("{x:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `HH:MM:SS` (UTC) of an engine time.
fn clock(at: f64) -> String {
    if !at.is_finite() || at < 0.0 {
        return "--:--:--".into();
    }
    let secs = at as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// One event as a line for people.
pub fn render_event(v: &Value) -> String {
    let at = clock(v.get("at").and_then(Value::as_f64).unwrap_or(f64::NAN));
    let event = s(v, "event");
    let text = match event {
        "job_queued" => format!(
            "{} queued: {} {} {} -> {} ({}, {})",
            s(v, "job_id"),
            s(v, "operation"),
            s(v, "model_name"),
            s(v, "source_tier"),
            s(v, "target_tier"),
            s(v, "priority"),
            s(v, "origin")
        ),
        "job_started" => format!(
            "{} started: attempt {}, about {} s",
            s(v, "job_id"),
            f(v, "attempt"),
            f(v, "estimated_s")
        ),
        "job_progress" => {
            let p = v.get("progress").and_then(Value::as_f64).unwrap_or(0.0);
            format!("{} {:.0}%", s(v, "job_id"), p * 100.0)
        }
        "job_retried" => format!(
            "{} attempt {} failed ({}); retrying at {}",
            s(v, "job_id"),
            f(v, "attempt"),
            v.get("reason").and_then(Value::as_str).unwrap_or("no reason given"),
            clock(v.get("not_before").and_then(Value::as_f64).unwrap_or(f64::NAN))
        ),
        "job_ended" => match v.get("error").and_then(Value::as_str) {
            Some(e) => format!("{} {}: {e}", s(v, "job_id"), s(v, "status")),
            None => format!("{} {} after {} s", s(v, "job_id"), s(v, "status"), f(v, "elapsed_s")),
        },
        "model_placed" => match v.get("previous_tier").and_then(Value::as_str) {
            Some(p) => format!("{} now in {} (was in {p})", s(v, "model_name"), s(v, "tier")),
            None => format!("{} now in {}", s(v, "model_name"), s(v, "tier")),
        },
        "model_unavailable" => format!("{} unavailable in {}: {}", s(v, "model_name"), s(v, "tier"), s(v, "reason")),
        "model_fallback" => format!(
            "{} fell back from {} to {}: {}",
            s(v, "model_name"),
            s(v, "from_tier"),
            s(v, "to_tier"),
            s(v, "reason")
        ),
        "tier_limit_changed" => {
            let limit = if v.get("limit_gb").is_some_and(Value::is_null) {
                "unbounded".to_string()
            } else {
                format!("{} GB", f(v, "limit_gb"))
            };
            format!("{} limit {limit}, reserved {} GB", s(v, "tier"), f(v, "reserved_gb"))
        }
        "tier_pressure_changed" => format!(
            "{} pressure {} -> {} ({:.0}% used)",
            s(v, "tier"),
            s(v, "previous"),
            s(v, "pressure"),
            v.get("utilization").and_then(Value::as_f64).unwrap_or(0.0) * 100.0
        ),
        "tier_available" => format!("{} available", s(v, "tier")),
        "tier_unavailable" => format!("{} unavailable: {}", s(v, "tier"), s(v, "reason")),
        "engine_up" => format!("engine of {} ({}) up", s(v, "tier"), s(v, "driver")),
        "engine_down" => format!("engine of {} ({}) down: {}", s(v, "tier"), s(v, "driver"), s(v, "reason")),
        _ => v.to_string(),
    };
    let dropped = match v.get("dropped").and_then(Value::as_u64) {
        Some(n) if n > 0 => format!("  ({n} events dropped before this one: the terminal read too slowly)"),
        _ => String::new(),
    };
    format!("{at}  {event:<21} {text}{dropped}")
}

/// How a followed job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    pub status: String,
    pub error: Option<String>,
    pub elapsed_s: f64,
}

/// What waiting on a job's events shows on the way.
pub trait Progress {
    /// `progress` 0-1, with the seconds run and expected.
    fn update(&mut self, progress: f64, elapsed_s: f64, estimated_s: f64);
    /// Whether to stop waiting (Ctrl-C).
    fn interrupted(&self) -> bool;
}

/// Follows job `job_id` on `stream` until it ends (`Some`) or the wait is
/// interrupted (`None`). `check` asks the server for the job's end when
/// the stream may have missed it (events dropped, or silence for a while).
pub fn follow_job(
    stream: &mut EventStream,
    job_id: &str,
    progress: &mut dyn Progress,
    mut check: impl FnMut() -> Result<Option<JobEnd>, ClientError>,
) -> Result<Option<JobEnd>, ClientError> {
    let mut started: Option<(Instant, f64)> = None;
    let mut last_heard = Instant::now();
    let mut suspect = false;
    loop {
        if progress.interrupted() {
            return Ok(None);
        }
        let Some(v) = stream.next(Duration::from_millis(100))? else {
            if suspect || last_heard.elapsed() >= Duration::from_secs(2) {
                if let Some(end) = check()? {
                    return Ok(Some(end));
                }
                suspect = false;
                last_heard = Instant::now();
            }
            continue;
        };
        last_heard = Instant::now();
        suspect |= v.get("dropped").and_then(Value::as_u64).unwrap_or(0) > 0;
        if v.get("job_id").and_then(Value::as_str) != Some(job_id) {
            continue;
        }
        match s(&v, "event") {
            "job_started" => {
                let est = v.get("estimated_s").and_then(Value::as_f64).unwrap_or(0.0);
                started.get_or_insert((Instant::now(), est));
                progress.update(0.0, 0.0, est);
            }
            "job_progress" => {
                let p = v.get("progress").and_then(Value::as_f64).unwrap_or(0.0);
                let (t0, est) = *started.get_or_insert((Instant::now(), 0.0));
                progress.update(p, t0.elapsed().as_secs_f64(), est);
            }
            "job_ended" => {
                return Ok(Some(JobEnd {
                    status: s(&v, "status").to_string(),
                    error: v.get("error").and_then(Value::as_str).map(str::to_string),
                    elapsed_s: v.get("elapsed_s").and_then(Value::as_f64).unwrap_or(0.0),
                }));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_read_as_sentences() {
        let v = json!({"at": 3723.5, "event": "job_queued", "job_id": "j1", "model_name": "m", "operation": "demote",
            "source_tier": "ram", "target_tier": "storage", "priority": "normal", "origin": "user", "dropped": 2});
        let line = render_event(&v);
        assert!(line.starts_with("01:02:03  job_queued"), "{line}");
        assert!(line.contains("j1 queued: demote m ram -> storage (normal, user)"), "{line}");
        assert!(line.contains("2 events dropped"), "{line}");
        let v = json!({"at": 0.0, "event": "job_ended", "job_id": "j1", "status": "failed", "error": "disk full"});
        assert!(render_event(&v).ends_with("j1 failed: disk full"));
        let v =
            json!({"at": 0.0, "event": "tier_pressure_changed", "tier": "ram", "previous": "low", "pressure": "high", "utilization": 0.91});
        assert!(render_event(&v).ends_with("ram pressure low -> high (91% used)"));
    }
}
