//! The client side of the binary, for people: sends requests over the Unix
//! socket and shows the answers as tables, lines and progress bars.
//!
//! Blocking std I/O: one request at a time needs no runtime.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

/// The socket path used when none is given: `$TIERD_SOCKET`, else
/// `$XDG_RUNTIME_DIR/tierd.sock`, else `/tmp/tierd-$UID.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TIERD_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("tierd.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/tierd-{uid}.sock"))
}

/// Why a client command could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to tierd at {path}: {source} (is `tierd serve --socket` running? set --socket or TIERD_SOCKET)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("I/O error talking to tierd: {0}")]
    Io(#[from] std::io::Error),
    #[error("tierd closed the connection without answering")]
    Closed,
    #[error("unreadable response from tierd: {0}")]
    BadResponse(String),
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    #[error("{0}")]
    Usage(String),
}

/// One connection to a tierd socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one raw line, returns the response line (without newline).
    pub fn raw(&mut self, line: &str) -> Result<String, ClientError> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.trim_end_matches(['\r', '\n']).as_bytes());
        buf.push(b'\n');
        self.writer.write_all(&buf)?;
        let mut resp = String::new();
        if self.reader.read_line(&mut resp)? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(resp.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Sends a request, returns the response (errors included).
    pub fn send(&mut self, request: &Value) -> Result<Value, ClientError> {
        let line = self.raw(&request.to_string())?;
        serde_json::from_str(&line).map_err(|e| ClientError::BadResponse(format!("{e}: {line}")))
    }

    /// Sends a request; an error response becomes [`ClientError::Server`].
    pub fn call(&mut self, request: &Value) -> Result<Value, ClientError> {
        let v = self.send(request)?;
        if is_error(&v) {
            return Err(server_error(&v));
        }
        Ok(v)
    }
}

fn is_error(v: &Value) -> bool {
    v.get("status").and_then(Value::as_str) == Some("error")
}

fn server_error(v: &Value) -> ClientError {
    let e = &v["error"];
    ClientError::Server {
        code: e["code"].as_str().unwrap_or("ERROR").to_string(),
        message: e["message"].as_str().unwrap_or("unknown error").to_string(),
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.2}"),
        None => "-".to_string(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// The tiers of a `tier_status` answer, fastest first.
fn tier_order(status: &Value) -> Vec<String> {
    match status.get("tier_order").and_then(Value::as_array) {
        Some(o) => o.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        None => status["tiers"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default(),
    }
}

/// Renders `tier_status` and `list_models` responses as a table of tiers
/// followed by the models of each tier.
pub fn render_status(status: &Value, models: &Value) -> String {
    let mut out = String::new();
    let order = tier_order(status);
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>7} {:>9} {:>6}",
        "TIER", "USED GB", "LIMIT GB", "AVAIL GB", "UTIL", "PRESSURE", "MODELS"
    );
    for name in &order {
        let t = &status["tiers"][name];
        let util = t["utilization"]
            .as_f64()
            .map(|u| format!("{:.1}%", u * 100.0))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>7} {:>9} {:>6}",
            name,
            num(&t["used_gb"]),
            num(&t["limit_gb"]),
            num(&t["available_gb"]),
            util,
            text(&t["pressure"]),
            text(&t["models"])
        );
    }
    let list = models["models"].as_array().cloned().unwrap_or_default();
    for name in &order {
        let here: Vec<&Value> = list.iter().filter(|m| m["tier"].as_str() == Some(name.as_str())).collect();
        let _ = writeln!(out, "\n{name}:");
        if here.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for m in here {
            let _ = writeln!(
                out,
                "  {:<24} {:>7} GB  usage {:>4}  {}",
                text(&m["model_name"]),
                num(&m["size_gb"]),
                text(&m["usage"]),
                text(&m["status"])
            );
        }
    }
    out
}

/// Renders a `list_models` response as a table.
pub fn render_models(models: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:<10} {:<8} {:>6}  LAST ACCESS",
        "MODEL", "SIZE GB", "TIER", "STATUS", "USAGE"
    );
    for m in models["models"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:<10} {:<8} {:>6}  {}",
            text(&m["model_name"]),
            num(&m["size_gb"]),
            text(&m["tier"]),
            text(&m["status"]),
            text(&m["usage"]),
            text(&m["last_access"])
        );
    }
    out
}

/// Renders a `list_jobs` response as a table.
pub fn render_jobs(jobs: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<10} {:>8} {:>9} {:>9}  ERROR",
        "JOB", "STATUS", "PROGRESS", "ELAPSED", "ESTIMATE"
    );
    let list = jobs["jobs"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        let _ = writeln!(out, "(no jobs)");
    }
    for j in list {
        let progress = j["progress"]
            .as_f64()
            .map(|p| format!("{:.0}%", p * 100.0))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<44} {:<10} {:>8} {:>8}s {:>8}s  {}",
            text(&j["job_id"]),
            text(&j["status"]),
            progress,
            num(&j["elapsed_time"]),
            num(&j["estimated_time"]),
            if j["error"].is_null() { String::new() } else { text(&j["error"]) }
        );
    }
    out
}

/// `tierd status`.
pub fn status(socket: &Path) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let s = c.call(&json!({"tier_status": true}))?;
    let m = c.call(&json!({"list_models": {}}))?;
    print!("{}", render_status(&s, &m));
    Ok(0)
}

/// Options of `tierd move`.
#[derive(Debug, Clone, Default)]
pub struct MoveArgs {
    pub model: String,
    pub tier: String,
    pub wait: bool,
    pub make_room: bool,
    pub priority: Option<String>,
}

/// `tierd move`: starts a move; with `wait`, shows a progress bar until it
/// ends and fails unless it succeeded.
pub fn move_model(socket: &Path, args: &MoveArgs) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let mut body = json!({"model_name": args.model, "target_tier": args.tier});
    if args.make_room {
        body["make_room"] = json!(true);
    }
    if let Some(p) = &args.priority {
        body["priority"] = json!(p);
    }
    let started = c.call(&json!({ "move_tier": body }))?;
    let job_id = text(&started["job_id"]);
    println!(
        "{} {} {} -> {}: {}",
        text(&started["operation"]),
        text(&started["model_name"]),
        text(&started["source_tier"]),
        text(&started["target_tier"]),
        job_id
    );
    if let Some(extra) = started["make_room"].as_array().filter(|a| !a.is_empty()) {
        println!("making room first: {}", extra.iter().map(text).collect::<Vec<_>>().join(", "));
    }
    if !args.wait {
        return Ok(0);
    }
    let bar = indicatif::ProgressBar::new(1000);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {percent:>3}% {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    loop {
        let st = c.call(&json!({ "tier_job_status": job_id }))?;
        let progress = st["progress"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
        bar.set_position((progress * 1000.0) as u64);
        let status = text(&st["status"]);
        bar.set_message(format!("{status}  {}s / {}s", num(&st["elapsed_time"]), num(&st["estimated_time"])));
        match status.as_str() {
            "success" => {
                bar.finish_with_message("success");
                return Ok(0);
            }
            "failed" | "cancelled" => {
                bar.abandon_with_message(format!("{status}: {}", text(&st["error"])));
                return Ok(1);
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Options of `tierd limits`.
#[derive(Debug, Clone, Default)]
pub struct LimitArgs {
    pub ram_max: Option<f64>,
    pub swap_max: Option<f64>,
    pub ram_reserved: Option<f64>,
    /// `KEY=VALUE` pairs (`<tier>_max_gb=...`).
    pub set: Vec<String>,
}

/// Builds the `update_limits` object of `tierd limits`.
pub fn limits_body(args: &LimitArgs) -> Result<Map<String, Value>, ClientError> {
    let mut m = Map::new();
    for (k, v) in [
        ("ram_max_gb", args.ram_max),
        ("swap_max_gb", args.swap_max),
        ("ram_reserved_gb", args.ram_reserved),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    for kv in &args.set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(ClientError::Usage(format!("--set takes KEY=VALUE, got {kv:?}")));
        };
        let value: Value = serde_json::from_str(v.trim())
            .ok()
            .filter(Value::is_number)
            .ok_or_else(|| ClientError::Usage(format!("--set {k}: {v:?} is not a number")))?;
        m.insert(k.trim().to_string(), value);
    }
    Ok(m)
}

/// `tierd limits`: with no changes, shows the current limits.
pub fn limits(socket: &Path, args: &LimitArgs) -> Result<i32, ClientError> {
    let body = limits_body(args)?;
    let mut c = Client::connect(socket)?;
    if body.is_empty() {
        // `update_limits` needs a change; the health of the tiers shows the
        // limits without changing any.
        let s = c.call(&json!({"tier_status": true}))?;
        for name in tier_order(&s) {
            let t = &s["tiers"][&name];
            let limit = match t["limit_gb"].as_f64() {
                Some(l) => format!("{l:.2} GB"),
                None => "unbounded".to_string(),
            };
            println!("{name:<10} limit {limit:>12}   reserved {:>6} GB", num(&t["reserved_gb"]));
        }
        return Ok(0);
    }
    let r = c.call(&json!({ "update_limits": body }))?;
    let (old, new) = (&r["old_limits"], &r["new_limits"]);
    for (k, v) in new.as_object().into_iter().flatten() {
        let before = &old[k];
        let mark = if before != v { "  (changed)" } else { "" };
        println!("{k:<22} {:>8} -> {:>8}{mark}", text(before), text(v));
    }
    if let Some(jobs) = r["rebalance"].as_array().filter(|a| !a.is_empty()) {
        println!("rebalancing:");
        for j in jobs {
            println!("  {}", j.as_str().map(str::to_string).unwrap_or_else(|| text(&j["job_id"])));
        }
    }
    Ok(0)
}

/// `tierd optimize`.
pub fn optimize(socket: &Path, dry_run: bool) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let r = c.call(&json!({"auto_optimize": {"dry_run": dry_run}}))?;
    let list = r["optimizations"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("placement is already optimal");
    }
    for o in list {
        println!("{}", text(&o));
    }
    if !dry_run && let Some(jobs) = r["jobs"].as_array().filter(|a| !a.is_empty()) {
        println!("started: {}", jobs.iter().map(text).collect::<Vec<_>>().join(", "));
    }
    Ok(0)
}

/// `tierd jobs`.
pub fn jobs(socket: &Path) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    print!("{}", render_jobs(&c.call(&json!({"list_jobs": true}))?));
    Ok(0)
}

/// `tierd models`.
pub fn models(socket: &Path, tier: Option<&str>) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    print!("{}", render_models(&c.call(&json!({"list_models": {"tier": tier}}))?));
    Ok(0)
}

/// `tierd health`.
pub fn health(socket: &Path) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let h = c.call(&json!({"health": true}))?;
    println!(
        "healthy: {}  backend: {}  policy: {}  version: {}  models: {}",
        text(&h["healthy"]),
        text(&h["backend"]),
        text(&h["policy"]),
        text(&h["version"]),
        text(&h["models"])
    );
    Ok(if h["healthy"].as_bool() == Some(true) { 0 } else { 1 })
}

/// `tierd request '<json>'`: prints the raw response line; exit 1 when it is
/// an error.
pub fn request(socket: &Path, line: &str) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let resp = c.raw(line)?;
    println!("{resp}");
    let v: Value = serde_json::from_str(&resp).map_err(|e| ClientError::BadResponse(format!("{e}: {resp}")))?;
    Ok(if is_error(&v) { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_body_merges_flags_and_set() {
        let args = LimitArgs {
            ram_max: Some(6.0),
            swap_max: None,
            ram_reserved: Some(1.5),
            set: vec!["gpu0_max_gb=24".into()],
        };
        let m = limits_body(&args).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"ram_max_gb": 6.0, "ram_reserved_gb": 1.5, "gpu0_max_gb": 24})
        );
        let bad = LimitArgs {
            set: vec!["ram_max_gb".into()],
            ..LimitArgs::default()
        };
        assert!(limits_body(&bad).is_err());
    }

    #[test]
    fn status_table_lists_tiers_then_models() {
        let s = json!({"tiers": {"ram": {"used_gb": 4.8, "limit_gb": 5.0, "available_gb": 2.6, "utilization": 0.96, "pressure": "high", "models": 1}}, "tier_order": ["ram"]});
        let m = json!({"models": [{"model_name": "bert-large", "size_gb": 1.3, "tier": "ram", "usage": 8, "status": "ready"}]});
        let out = render_status(&s, &m);
        assert!(out.contains("96.0%"), "{out}");
        assert!(out.contains("bert-large"), "{out}");
    }
}

/// What `tierd queue` shows or does.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueAction {
    /// Counts, slots and the jobs queued and running.
    Status,
    /// Ended and live jobs, newest first, filtered.
    History {
        limit: Option<usize>,
        status: Option<String>,
        since: Option<f64>,
    },
    /// Cancels one job.
    Cancel { job_id: String },
}

/// Renders a `queue_status` response.
pub fn render_queue(q: &Value) -> String {
    let t = &q["task_queue"];
    let mut out = format!(
        "pending {}  running {}  completed {}  failed {}  (max {} at once)\n",
        text(&t["pending"]),
        text(&t["running"]),
        text(&t["completed"]),
        text(&t["failed"]),
        text(&q["max_concurrent_tasks"])
    );
    let mut jobs = String::new();
    let _ = writeln!(
        jobs,
        "{:<44} {:<9} {:<9} {:>4} {:>8} {:>9}  DEPENDS ON",
        "JOB", "STATUS", "PRIORITY", "POS", "PROGRESS", "START IN"
    );
    let list = q["jobs"].as_array().cloned().unwrap_or_default();
    let now = q["now"].as_f64();
    for j in &list {
        let start_in = match (j["estimated_start"].as_f64(), now) {
            (Some(s), Some(n)) => format!("{:.1}s", (s - n).max(0.0)),
            (Some(_), None) => "queued".into(),
            _ => "-".into(),
        };
        let deps: Vec<String> = j["depends_on"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
        let _ = writeln!(
            jobs,
            "{:<44} {:<9} {:<9} {:>4} {:>7.0}% {:>9}  {}",
            text(&j["job_id"]),
            text(&j["status"]),
            text(&j["priority"]),
            text(&j["position"]),
            j["progress"].as_f64().unwrap_or(0.0) * 100.0,
            start_in,
            deps.join(",")
        );
    }
    if list.is_empty() {
        jobs.push_str("(no jobs queued or running)\n");
    }
    out.push_str(&jobs);
    out
}

/// Renders a `queue_history` response.
pub fn render_history(h: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<9} {:<9} {:>7} {:>8}  ERROR",
        "JOB", "STATUS", "PRIORITY", "ATTEMPT", "ELAPSED"
    );
    let list = h["history"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        let _ = writeln!(out, "(no jobs)");
    }
    for j in list {
        let _ = writeln!(
            out,
            "{:<44} {:<9} {:<9} {:>7} {:>7}s  {}",
            text(&j["job_id"]),
            text(&j["status"]),
            text(&j["priority"]),
            text(&j["attempt"]),
            num(&j["elapsed_time"]),
            if j["error"].is_null() { String::new() } else { text(&j["error"]) }
        );
    }
    out
}

/// `tierd queue ...`.
pub fn queue(socket: &Path, action: &QueueAction) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    match action {
        QueueAction::Status => print!("{}", render_queue(&c.call(&json!({"queue_status": true}))?)),
        QueueAction::History { limit, status, since } => {
            let mut body = Map::new();
            if let Some(l) = limit {
                body.insert("limit".into(), json!(l));
            }
            if let Some(s) = status {
                body.insert("status".into(), json!(s));
            }
            if let Some(t) = since {
                body.insert("since".into(), json!(t));
            }
            print!("{}", render_history(&c.call(&json!({ "queue_history": body }))?));
        }
        QueueAction::Cancel { job_id } => {
            let v = c.call(&json!({ "cancel_job": job_id }))?;
            println!("{} {}", text(&v["job_id"]), text(&v["status"]));
        }
    }
    Ok(0)
}
