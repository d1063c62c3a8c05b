//! The client side of the binary, for people: sends requests over the Unix
//! socket and shows the answers as tables, lines and progress bars. It
//! builds the server's own request types and reads the answers into their
//! response types (`requests`).
//!
//! Blocking std I/O: one request at a time needs no runtime.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::human;
use crate::requests::Request;
use crate::requests::auto_optimize::{AutoOptimize, AutoOptimizeResponse};
use crate::requests::cancel_job::{CancelJob, CancelJobResponse};
use crate::requests::discover::{Discover, DiscoverResponse};
use crate::requests::health::{Health, HealthResponse};
use crate::requests::list_jobs::{ListJobs, ListJobsResponse};
use crate::requests::list_models::{ListModels, ListModelsResponse};
use crate::requests::metrics::{Metrics, MetricsResponse};
use crate::requests::move_tier::{MoveTier, MoveTierResponse};
use crate::requests::queue_history::{QueueHistory, QueueHistoryResponse};
use crate::requests::queue_status::{QueueStatus, QueueStatusResponse};
use crate::requests::tier_job_status::{TierJobStatus, TierJobStatusResponse};
use crate::requests::tier_status::{TierStatus, TierStatusResponse};
use crate::requests::update_limits::{UpdateLimits, UpdateLimitsResponse};
use crate::requests::watch::Watch;
use crate::tiers::{Category, JobStatus, JobView, ModelView, TierView};

/// The socket path used when none is given: `$TIERD_SOCKET`, else
/// `tierd.sock` in [`default_socket_dir`].
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TIERD_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    private_socket_dir().join("tierd.sock")
}

/// The private directory of the default socket, which `tierd serve` creates
/// with mode 0700 (or checks): `$XDG_RUNTIME_DIR/tierd`, else
/// `/tmp/tierd-$UID`. `None` when `$TIERD_SOCKET` names the socket.
pub fn default_socket_dir() -> Option<PathBuf> {
    match std::env::var_os("TIERD_SOCKET").filter(|p| !p.is_empty()) {
        Some(_) => None,
        None => Some(private_socket_dir()),
    }
}

fn private_socket_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("tierd");
    }
    PathBuf::from(format!("/tmp/tierd-{}", rustix::process::geteuid().as_raw()))
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // the descriptor is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(std::io::Error::last_os_error())
    }
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
    #[error(
        "refusing to talk to {path}: {what} is owned by uid {owner}, neither you (uid {me}) nor root; another user may be posing as tierd there"
    )]
    Untrusted {
        path: PathBuf,
        what: &'static str,
        owner: u32,
        me: u32,
    },
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
    /// Connects to the socket at `path`, which must be owned by this user
    /// or root, as must the server listening there.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        let untrusted = |what, owner| ClientError::Untrusted {
            path: path.to_path_buf(),
            what,
            owner,
            me,
        };
        // The file connect() reaches (symlinks followed); a missing one is
        // reported by connect().
        if let Ok(meta) = std::fs::metadata(path)
            && meta.uid() != me
            && meta.uid() != 0
        {
            return Err(untrusted("the socket file", meta.uid()));
        }
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        // The server itself, whatever the file looked like a moment ago.
        let server = peer_uid(&stream)?;
        if server != me && server != 0 {
            return Err(untrusted("the server process", server));
        }
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
        if let Err(e) = self.writer.write_all(&buf) {
            // The server may have refused the connection with one error
            // line before closing it: show that line rather than EPIPE.
            let mut resp = String::new();
            if matches!(self.reader.read_line(&mut resp), Ok(n) if n > 0) {
                return Ok(resp.trim_end_matches(['\r', '\n']).to_string());
            }
            return Err(e.into());
        }
        let mut resp = String::new();
        if self.reader.read_line(&mut resp)? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(resp.trim_end_matches(['\r', '\n']).to_string())
    }

    /// How long a read may wait (`None`: forever); a read that times out
    /// fails with `WouldBlock` or `TimedOut` and keeps what it had read.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.writer.set_read_timeout(timeout).map_err(ClientError::from)
    }

    /// Reads (the rest of) one line into `buf`, newline included; returns
    /// the bytes read (0: the server closed). Bytes read before a timeout
    /// stay in `buf`, so calling again completes the line.
    pub fn read_line_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        self.reader.read_until(b'\n', buf)
    }

    /// Sends a request, returns the response (errors included).
    pub fn send(&mut self, request: &Request) -> Result<Value, ClientError> {
        let line = self.raw(&request.to_line(None))?;
        serde_json::from_str(&line).map_err(|e| ClientError::BadResponse(format!("{e}: {line}")))
    }

    /// Sends a request and reads its answer as `T`; an error response
    /// becomes [`ClientError::Server`].
    pub fn call<T: DeserializeOwned>(&mut self, request: impl Into<Request>) -> Result<T, ClientError> {
        let v = self.send(&request.into())?;
        if is_error(&v) {
            return Err(server_error(&v));
        }
        serde_json::from_value(v.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {v}")))
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

fn opt(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

/// A GB figure for a table cell: three significant digits, `-` for none.
fn gb_cell(v: Option<f64>) -> String {
    v.map(human::sig3).unwrap_or_else(|| "-".into())
}

/// How a command prints its answer: tables and lines for people, or the
/// server's raw JSON answer (`--json`) for programs, full precision kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Human,
    Json,
}

/// Prints one JSON answer on one line.
fn print_json(v: &impl serde::Serialize) -> Result<(), ClientError> {
    let line = serde_json::to_string(v).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    println!("{line}");
    Ok(())
}

/// The tiers of a `tier_status` answer fastest first, as `tier_order`
/// lists them (JSON objects carry no order; any tier it misses comes last).
fn ordered_tiers(status: &TierStatusResponse) -> Vec<(&str, &TierView)> {
    let mut out: Vec<(&str, &TierView)> = status
        .tier_order
        .iter()
        .filter_map(|n| status.tiers.iter().find(|(name, _)| name == n).map(|(name, t)| (name.as_ref(), t)))
        .collect();
    for (name, t) in &status.tiers {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.as_ref(), t));
        }
    }
    out
}

/// Renders `tier_status` and `list_models` answers as a table of tiers
/// followed by the models of each tier.
pub fn render_status(status: &TierStatusResponse, models: &[ModelView], load_times: &LoadTimesByModel) -> String {
    let mut t = human::table(["TIER", "USED GB", "LIMIT GB", "AVAIL GB", "UTIL", "PRESSURE", "MODELS"]);
    let tiers = ordered_tiers(status);
    for &(name, tier) in &tiers {
        let util = tier
            .utilization
            .map(|u| format!("{}%", human::sig3(u * 100.0)))
            .unwrap_or_else(|| "-".into());
        // RAM held by engine tiers above counts against this tier's budget.
        let used = match tier.engine_held_gb {
            Some(h) if h > 0.0 => format!("{} (+{} engines)", gb_cell(Some(tier.used_gb)), gb_cell(Some(h))),
            _ => gb_cell(Some(tier.used_gb)),
        };
        t.add_row::<[String; 7]>([
            name.to_string(),
            used,
            gb_cell(tier.limit_gb),
            gb_cell(tier.available_gb),
            util,
            tier.pressure.to_string(),
            tier.models.to_string(),
        ]);
    }
    let mut out = format!("{t}\n");
    for &(name, tier) in &tiers {
        let here: Vec<&ModelView> = models.iter().filter(|m| m.tier == *name).collect();
        let engine = tier.details.get("engine_tier") == Some(&Value::Bool(true));
        let _ = writeln!(out, "\n{name}:{}", if engine { engine_line(tier) } else { String::new() });
        if here.is_empty() {
            let _ = writeln!(out, "  (none)");
            continue;
        }
        let mut t = if engine {
            human::table(["MODEL", "SIZE", "USAGE", "STATUS", "ENGINE"])
        } else {
            human::table(["MODEL", "SIZE", "USAGE", "STATUS"])
        };
        for m in here {
            let mut row = vec![
                m.model_name.clone(),
                human::gb(m.size_gb),
                m.usage.to_string(),
                m.status.to_string(),
            ];
            if engine {
                row.push(engine_model(tier, &m.model_name, load_times).trim().to_string());
            }
            t.add_row(row);
        }
        let _ = writeln!(out, "{t}");
    }
    out
}

/// An engine tier's heading: its engine and health.
fn engine_line(t: &crate::tiers::TierView) -> String {
    let driver = t.details.get("driver").and_then(Value::as_str).unwrap_or("engine");
    let health = t.details.get("health");
    let up = health.and_then(|h| h.get("up")).and_then(Value::as_bool).unwrap_or(false);
    if up {
        return format!(" engine tier ({driver}), up");
    }
    let failures = health
        .and_then(|h| h.get("consecutive_failures"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let reason = t.unavailable_reason.as_deref().unwrap_or("not reached yet");
    format!(" engine tier ({driver}), DOWN after {failures} failed looks: {reason}")
}

/// A loaded model's footprint and load times, for an engine tier's list.
fn engine_model(t: &crate::tiers::TierView, model: &str, load_times: &LoadTimesByModel) -> String {
    let mut out = String::new();
    let loaded = t.details.get("loaded").and_then(Value::as_array);
    if let Some(l) = loaded.and_then(|l| l.iter().find(|e| e.get("model").and_then(Value::as_str) == Some(model))) {
        let gb = l.get("footprint_gb").and_then(Value::as_f64);
        let source = l.get("footprint_source").and_then(Value::as_str).unwrap_or("?");
        let _ = write!(out, "  footprint {} GB ({source})", gb_cell(gb));
    }
    if let Some(s) = load_times.get(model) {
        let ms = |v: Option<f64>| v.map(|s| format!("{} ms", human::sig3(s * 1e3))).unwrap_or_else(|| "-".into());
        let _ = write!(
            out,
            "  load last {} mean {} p95 {} ({} loads)",
            ms(s.all.last),
            ms(s.all.mean),
            ms(s.all.p95),
            s.all.count
        );
    }
    out
}

/// Engine-tier load times by model (from `metrics`).
pub type LoadTimesByModel = std::collections::BTreeMap<String, crate::tiers::engines::LoadStats>;

/// Renders a `list_models` answer as a table; `now` is the server's clock
/// (`health`'s `now`), which last accesses are said relative to.
pub fn render_models(models: &[ModelView], now: f64) -> String {
    let mut t = human::table(["MODEL", "SIZE GB", "TIER", "STATUS", "USAGE", "LAST ACCESS"]);
    for m in models {
        t.add_row([
            m.model_name.clone(),
            human::sig3(m.size_gb),
            m.tier.clone(),
            m.status.to_string(),
            m.usage.to_string(),
            m.last_access
                .map(|at| human::relative_time(at, now))
                .unwrap_or_else(|| "never".into()),
        ]);
    }
    format!("{t}\n")
}

/// Renders a `list_jobs` answer as a table.
pub fn render_jobs(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "(no jobs)\n".into();
    }
    let mut t = human::table(["JOB", "STATUS", "PROGRESS", "ELAPSED", "ESTIMATE", "ERROR"]);
    for j in jobs {
        t.add_row([
            j.job_id.clone(),
            j.status.as_str().to_string(),
            format!("{:.0}%", j.progress * 100.0),
            human::duration(j.elapsed_time),
            human::duration(j.estimated_time),
            human::round_gb_in(j.error.as_deref().unwrap_or("")),
        ]);
    }
    format!("{t}\n")
}

/// `tierd status`: the serving line, the tiers and their models. With
/// `--json`, one object holding the three answers it is built from:
/// `{"health": ..., "tier_status": ..., "list_models": ...}`.
pub fn status(socket: &Path, output: Output) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    if output == Output::Json {
        let h = c.call::<Value>(Health)?;
        let s = c.call::<Value>(TierStatus)?;
        let m = c.call::<Value>(ListModels::default())?;
        print_json(&serde_json::json!({"health": h, "tier_status": s, "list_models": m}))?;
        return Ok(0);
    }
    let h: HealthResponse = c.call(Health)?;
    let s: TierStatusResponse = c.call(TierStatus)?;
    let m: ListModelsResponse = c.call(ListModels::default())?;
    println!("{}", serving_line(&h));
    println!("{}", config_line(&h));
    // Load times of engine tiers (an older server without them: none).
    let load_times = c
        .call::<MetricsResponse>(Metrics::default())
        .map(|r| r.metrics.engine_load_time_s)
        .unwrap_or_default();
    print!("{}", render_status(&s, &m.models, &load_times));
    Ok(0)
}

/// Which configuration the server was started with.
fn config_line(h: &HealthResponse) -> String {
    match &h.config {
        Some(path) => format!("config {path}"),
        None => "config: built-in defaults (`tierd serve --config FILE` to use a file)".into(),
    }
}

/// Which machine the server runs on, said plainly: a simulated one moves
/// no real bytes.
fn serving_line(h: &HealthResponse) -> String {
    let machine = match h.backend.as_str() {
        "sim" => "a simulated machine (no real bytes move; `tierd serve --backend real` for this one)",
        "real" => "this machine (--backend real)",
        other => other,
    };
    format!("tierd {} serving {machine}, policy {}", h.version, h.policy)
}

/// Options of `tierd move`.
#[derive(Debug, Clone, Default)]
pub struct MoveArgs {
    pub model: String,
    pub tier: String,
    pub wait: bool,
    pub make_room: bool,
    pub priority: Option<String>,
    /// A rate cap in MB/s (`bandwidth_mb_s` on the wire), so a move does
    /// not starve the disk or the bus for the models being served.
    pub bandwidth_mb_s: Option<f64>,
    pub output: Output,
}

/// The `move_tier` request of `tierd move`.
pub fn move_request(args: &MoveArgs) -> MoveTier {
    let mut m = MoveTier::new(&args.model, &args.tier);
    m.make_room = args.make_room;
    m.priority = args.priority.clone();
    m.bandwidth_mb_s = args.bandwidth_mb_s;
    m
}

/// `tierd move`: starts a move; with `wait`, shows a progress bar until it
/// ends and fails unless it succeeded. With `--json`: the `move_tier`
/// answer, and with `--wait` the job's final `tier_job_status` answer on a
/// second line.
pub fn move_model(socket: &Path, args: &MoveArgs) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let json = args.output == Output::Json;
    // The stream starts before the move, so none of its events is missed.
    // A server that cannot stream (an older one) is polled instead.
    let mut stream = if args.wait {
        let spec = Watch {
            events: [Category::Jobs].into_iter().collect(),
            progress_interval_s: 0.1,
            buffer: 4096,
        };
        super::follow::EventStream::open(socket, &spec).ok()
    } else {
        None
    };
    let started_raw: Value = c.call(move_request(args))?;
    let started: MoveTierResponse =
        serde_json::from_value(started_raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {started_raw}")))?;
    if json {
        print_json(&started_raw)?;
    } else {
        println!(
            "{} {} {} -> {}: {}",
            started.operation.as_str(),
            started.model_name,
            started.source_tier,
            started.target_tier,
            started.job_id
        );
        if !started.make_room.is_empty() {
            println!("making room first: {}", started.make_room.join(", "));
        }
    }
    if !args.wait {
        return Ok(0);
    }
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(1000)
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {percent:>3}% {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let job_id = started.job_id;
    // Ctrl-C stops the waiting, not the move: say so, and how to cancel it.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted));
    let say_interrupted = |bar: &indicatif::ProgressBar| {
        bar.abandon();
        eprintln!(
            "tierd: interrupted; the move {job_id} continues in the server. Cancel it with `tierd queue cancel {job_id}`, follow it with `tierd jobs`"
        );
        Ok(130)
    };
    if let Some(stream) = stream.as_mut() {
        let mut shown = BarProgress {
            bar: &bar,
            interrupted: &interrupted,
        };
        let ended = super::follow::follow_job(stream, &job_id, &mut shown, || {
            let st: TierJobStatusResponse = c.call(TierJobStatus { job_id: job_id.clone() })?;
            Ok(match st.status {
                JobStatus::Success | JobStatus::Failed | JobStatus::Cancelled => Some(super::follow::JobEnd {
                    status: st.status.as_str().to_string(),
                    error: st.error.clone(),
                    elapsed_s: st.elapsed_time,
                }),
                _ => None,
            })
        })?;
        let Some(end) = ended else {
            return say_interrupted(&bar);
        };
        if json {
            // The job's final status answer, as `--json` promises.
            let raw: Value = c.call(TierJobStatus { job_id: job_id.clone() })?;
            print_json(&raw)?;
            return Ok(if end.status == "success" { 0 } else { 1 });
        }
        return Ok(finish_move(&bar, &job_id, &end.status, end.elapsed_s, end.error.as_deref()));
    }
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return say_interrupted(&bar);
        }
        let raw: Value = c.call(TierJobStatus { job_id: job_id.clone() })?;
        let st: TierJobStatusResponse = serde_json::from_value(raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {raw}")))?;
        bar.set_position((st.progress.clamp(0.0, 1.0) * 1000.0) as u64);
        let status = st.status.as_str();
        bar.set_message(format!(
            "{status}  {} of about {}",
            human::duration(st.elapsed_time),
            human::duration(st.estimated_time)
        ));
        match st.status {
            JobStatus::Success | JobStatus::Failed | JobStatus::Cancelled => {
                if json {
                    print_json(&raw)?;
                    return Ok(if st.status == JobStatus::Success { 0 } else { 1 });
                }
                return Ok(finish_move(&bar, &job_id, status, st.elapsed_time, st.error.as_deref()));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The bar of `move --wait`, drawn from the job's events.
struct BarProgress<'a> {
    bar: &'a indicatif::ProgressBar,
    interrupted: &'a AtomicBool,
}

impl super::follow::Progress for BarProgress<'_> {
    fn update(&mut self, progress: f64, elapsed_s: f64, estimated_s: f64) {
        self.bar.set_position((progress.clamp(0.0, 1.0) * 1000.0) as u64);
        self.bar.set_message(format!(
            "running  {} of about {}",
            human::duration(elapsed_s),
            human::duration(estimated_s)
        ));
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

/// Ends the bar of a move that ended with `status`; returns the exit code.
/// Without a terminal the bar is hidden: one final line says how the move
/// ended, and why (stdout on success, stderr otherwise).
fn finish_move(bar: &indicatif::ProgressBar, job_id: &str, status: &str, elapsed_s: f64, error: Option<&str>) -> i32 {
    if status == "success" {
        bar.finish_with_message("success");
        if bar.is_hidden() {
            println!("{job_id}: success after {}", human::duration(elapsed_s));
        }
        0
    } else {
        let why = format!("{status}: {}", human::round_gb_in(&opt(error)));
        if bar.is_hidden() {
            eprintln!("tierd: {job_id} {why}");
        }
        bar.abandon_with_message(why);
        1
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
    pub output: Output,
}

/// Builds the `update_limits` request of `tierd limits`.
pub fn limits_request(args: &LimitArgs) -> Result<UpdateLimits, ClientError> {
    let mut r = UpdateLimits::default();
    for (k, v) in [
        ("ram_max_gb", args.ram_max),
        ("swap_max_gb", args.swap_max),
        ("ram_reserved_gb", args.ram_reserved),
    ] {
        if let Some(v) = v {
            r.set(k, v);
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
        r.set(k.trim(), value);
    }
    Ok(r)
}

/// A limit value for people: a GB figure (keys ending `_gb`), a count,
/// or `unbounded` for none.
fn limit_value(key: &str, v: &Value) -> String {
    match v.as_f64() {
        Some(x) if key.ends_with("_gb") => human::gb(x),
        Some(_) => v.to_string(),
        None if v.is_null() => "unbounded".into(),
        None => v.to_string(),
    }
}

/// `tierd limits`: with no changes, shows the current limits (with
/// `--json`, the `tier_status` answer); else the `update_limits` answer.
pub fn limits(socket: &Path, args: &LimitArgs) -> Result<i32, ClientError> {
    let req = limits_request(args)?;
    let mut c = Client::connect(socket)?;
    let json = args.output == Output::Json;
    if req.entries.is_empty() {
        // `update_limits` needs a change; the tiers' status shows the
        // limits without changing any.
        let raw: Value = c.call(TierStatus)?;
        if json {
            print_json(&raw)?;
            return Ok(0);
        }
        let s: TierStatusResponse = serde_json::from_value(raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {raw}")))?;
        let mut t = human::table(["TIER", "LIMIT", "RESERVED"]);
        for (name, tier) in ordered_tiers(&s) {
            let limit = tier.limit_gb.map(human::gb).unwrap_or_else(|| "unbounded".into());
            t.add_row::<[String; 3]>([name.to_string(), limit, human::gb(tier.reserved_gb)]);
        }
        println!("{t}");
        return Ok(0);
    }
    let raw: Value = c.call(req)?;
    if json {
        print_json(&raw)?;
        return Ok(0);
    }
    let r: UpdateLimitsResponse = serde_json::from_value(raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {raw}")))?;
    let (old, new) = (r.old_limits.to_map(), r.new_limits.to_map());
    let mut t = human::table(["KEY", "BEFORE", "AFTER", ""]);
    for (k, v) in &new {
        let before = old.get(k).cloned().unwrap_or(Value::Null);
        let mark = if before != *v { "changed" } else { "" };
        t.add_row([k.clone(), limit_value(k, &before), limit_value(k, v), mark.to_string()]);
    }
    println!("{t}");
    if !r.rebalance.is_empty() {
        println!("rebalancing:");
        for j in &r.rebalance {
            println!("  {j}");
        }
    }
    Ok(0)
}

/// `tierd optimize`.
pub fn optimize(socket: &Path, dry_run: bool, output: Output) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let raw: Value = c.call(AutoOptimize { dry_run })?;
    if output == Output::Json {
        print_json(&raw)?;
        return Ok(0);
    }
    let r: AutoOptimizeResponse = serde_json::from_value(raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {raw}")))?;
    if r.optimizations.is_empty() {
        println!("placement is already optimal");
    }
    for o in &r.optimizations {
        println!("{}", human::round_gb_in(&o.to_string()));
    }
    if !dry_run && !r.jobs.is_empty() {
        println!("started: {}", r.jobs.join(", "));
    }
    Ok(0)
}

/// `tierd jobs`.
pub fn jobs(socket: &Path, output: Output) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let raw: Value = c.call(ListJobs)?;
    if output == Output::Json {
        print_json(&raw)?;
        return Ok(0);
    }
    let r: ListJobsResponse = serde_json::from_value(raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {raw}")))?;
    print!("{}", render_jobs(&r.jobs));
    Ok(0)
}

/// `tierd models`.
pub fn models(socket: &Path, tier: Option<&str>, output: Output) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let req = ListModels {
        tier: tier.map(str::to_string),
    };
    if output == Output::Json {
        print_json(&c.call::<Value>(req)?)?;
        return Ok(0);
    }
    let h: HealthResponse = c.call(Health)?;
    let r: ListModelsResponse = c.call(req)?;
    print!("{}", render_models(&r.models, h.now));
    Ok(0)
}

/// `tierd health`.
pub fn health(socket: &Path, output: Output) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let raw: Value = c.call(Health)?;
    let h: HealthResponse = serde_json::from_value(raw.clone()).map_err(|e| ClientError::BadResponse(format!("{e}: {raw}")))?;
    if output == Output::Json {
        print_json(&raw)?;
    } else {
        println!(
            "healthy: {}  backend: {}  policy: {}  version: {}  models: {}",
            h.healthy, h.backend, h.policy, h.version, h.models
        );
    }
    Ok(if h.healthy { 0 } else { 1 })
}

/// Renders a `discover` answer: per source a heading (kind, directory,
/// register mode, what it could not read), then a table of its models.
pub fn render_discover(d: &DiscoverResponse) -> String {
    let mut out = String::new();
    if d.scanned_at.is_none() {
        let _ = writeln!(out, "no model sources are configured ([[sources]] in the config)");
        return out;
    }
    for s in &d.sources {
        let _ = writeln!(
            out,
            "source {} {} {} (register = {}): {} models",
            s.index,
            s.kind,
            s.path.display(),
            s.register,
            s.models.len()
        );
        if let Some(e) = &s.error {
            let _ = writeln!(out, "  cannot be read: {e}");
        }
        for p in &s.problems {
            let _ = writeln!(out, "  skipped: {p}");
        }
        if s.models.is_empty() {
            continue;
        }
        let mut t = human::table(["MODEL", "SIZE GB", "FILES", "REGISTERED", "STATUS"]);
        for m in &s.models {
            let status = match (&m.unavailable, &m.register_error, m.registered) {
                (Some(u), _, _) => format!("unavailable: {u}"),
                (None, Some(e), false) => format!("not registered: {e}"),
                (None, _, true) => "available".to_string(),
                (None, None, false) => "-".to_string(),
            };
            let files = m.files.len() + m.components.len();
            t.add_row([
                m.model_name.clone(),
                human::sig3(m.size_gb),
                files.to_string(),
                if m.registered { "yes" } else { "no" }.to_string(),
                status,
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    for m in &d.missing {
        let _ = writeln!(out, "gone: {} ({})", m.model_name, m.reason);
    }
    out
}

/// `tierd discover [--json]`: what every model source finds.
pub fn discover(socket: &Path, json: bool) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let v = c.send(&Discover.into())?;
    if is_error(&v) {
        return Err(server_error(&v));
    }
    if json {
        println!("{v}");
        return Ok(0);
    }
    let d: DiscoverResponse = serde_json::from_value(v).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    print!("{}", render_discover(&d));
    Ok(0)
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

/// What `tierd queue` shows or does.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueAction {
    /// Counts, slots and the jobs queued and running.
    Status,
    /// Ended and live jobs, newest first, filtered.
    History {
        limit: Option<usize>,
        status: Option<String>,
        since: Option<human::When>,
    },
    /// Cancels one job.
    Cancel { job_id: String },
}

/// Renders a `queue_status` answer.
pub fn render_queue(q: &QueueStatusResponse) -> String {
    let t = &q.task_queue;
    let mut out = format!(
        "pending {}  running {}  completed {}  failed {}  (max {} at once)\n",
        t.pending, t.running, t.completed, t.failed, q.max_concurrent_tasks
    );
    if q.jobs.is_empty() {
        out.push_str("(no jobs queued or running)\n");
        return out;
    }
    let mut table = human::table(["JOB", "STATUS", "PRIORITY", "POS", "PROGRESS", "STARTS", "DEPENDS ON"]);
    for j in &q.jobs {
        let starts = match (j.started_at, j.estimated_start) {
            (Some(at), _) => format!("started {}", human::relative_time(at, q.now)),
            (None, Some(at)) => human::relative_time(at.max(q.now), q.now),
            (None, None) => "-".into(),
        };
        table.add_row([
            j.job_id.clone(),
            j.status.as_str().to_string(),
            j.priority.as_str().to_string(),
            j.position.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:.0}%", j.progress * 100.0),
            starts,
            j.depends_on.join(","),
        ]);
    }
    let _ = writeln!(out, "{table}");
    out
}

/// Renders a `queue_history` answer; `now` is the server's clock.
pub fn render_history(h: &QueueHistoryResponse, now: f64) -> String {
    if h.history.is_empty() {
        return "(no jobs)\n".into();
    }
    let mut t = human::table(["JOB", "STATUS", "PRIORITY", "ATTEMPT", "CREATED", "ELAPSED", "ERROR"]);
    for j in &h.history {
        t.add_row([
            j.job_id.clone(),
            j.status.as_str().to_string(),
            j.priority.as_str().to_string(),
            j.attempt.to_string(),
            human::relative_time(j.created_at, now),
            human::duration(j.elapsed_time),
            human::round_gb_in(j.error.as_deref().unwrap_or("")),
        ]);
    }
    format!("{t}\n")
}

/// `tierd queue ...`.
pub fn queue(socket: &Path, action: &QueueAction, output: Output) -> Result<i32, ClientError> {
    let mut c = Client::connect(socket)?;
    let json = output == Output::Json;
    let bad = |e: serde_json::Error, raw: &Value| ClientError::BadResponse(format!("{e}: {raw}"));
    match action {
        QueueAction::Status => {
            let raw: Value = c.call(QueueStatus)?;
            if json {
                print_json(&raw)?;
            } else {
                let q: QueueStatusResponse = serde_json::from_value(raw.clone()).map_err(|e| bad(e, &raw))?;
                print!("{}", render_queue(&q));
            }
        }
        QueueAction::History { limit, status, since } => {
            // Spans count back from the server's clock, not this one's.
            let now = match since {
                Some(human::When::At(_)) | None if json => None,
                _ => Some(c.call::<HealthResponse>(Health)?.now),
            };
            let req = QueueHistory {
                limit: *limit,
                status: status.clone(),
                since: since.map(|w| w.resolve(now.unwrap_or(0.0))),
            };
            if json {
                print_json(&c.call::<Value>(req)?)?;
            } else {
                let h: QueueHistoryResponse = c.call(req)?;
                print!("{}", render_history(&h, now.unwrap_or(0.0)));
            }
        }
        QueueAction::Cancel { job_id } => {
            let raw: Value = c.call(CancelJob { job_id: job_id.clone() })?;
            if json {
                print_json(&raw)?;
            } else {
                let v: CancelJobResponse = serde_json::from_value(raw.clone()).map_err(|e| bad(e, &raw))?;
                println!("{} {}", v.job_id, v.status.as_str());
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_says_which_machine_is_served() {
        let h = |backend: &str| HealthResponse {
            status: "success".into(),
            healthy: true,
            backend: backend.into(),
            policy: "lru".into(),
            version: "0.1.0".into(),
            models: 0,
            tiers: vec![],
            requests: vec![],
            config: None,
            now: 0.0,
            open_watch: Default::default(),
        };
        assert!(serving_line(&h("sim")).contains("a simulated machine (no real bytes move"));
        assert_eq!(
            serving_line(&h("real")),
            "tierd 0.1.0 serving this machine (--backend real), policy lru"
        );
    }

    #[test]
    fn limits_request_merges_flags_and_set() {
        let args = LimitArgs {
            ram_max: Some(6.0),
            swap_max: None,
            ram_reserved: Some(1.5),
            set: vec!["gpu0_max_gb=24".into()],
            ..LimitArgs::default()
        };
        let r = limits_request(&args).unwrap();
        assert_eq!(
            Value::Object(r.entries),
            json!({"ram_max_gb": 6.0, "ram_reserved_gb": 1.5, "gpu0_max_gb": 24})
        );
        let bad = LimitArgs {
            set: vec!["ram_max_gb".into()],
            ..LimitArgs::default()
        };
        assert!(limits_request(&bad).is_err());
    }

    #[test]
    fn status_table_lists_tiers_then_models() {
        let s: TierStatusResponse = serde_json::from_value(json!({"status": "success", "tiers": {"ram": {"used_gb": 4.8, "limit_gb": 5.0, "available_gb": 2.6, "utilization": 0.96, "pressure": "high", "models": 1, "access_s_per_gb": 0.1, "reserved_gb": 1.0, "incoming_gb": 0.0, "max_models": null, "available": true}}, "tier_order": ["ram"]})).unwrap();
        let m: Vec<ModelView> = serde_json::from_value(json!([{"model_name": "bert-large", "size_gb": 1.3, "tier": "ram", "usage": 8, "status": "ready", "last_access": null, "pinned": false, "frequency": 0.0, "temperature": "cold", "interarrival_mean_s": null, "interarrival_stddev_s": null, "first_access": null, "load_time_s": 0.13, "job_id": null, "unavailable_reason": null, "path": null}])).unwrap();
        let out = render_status(&s, &m, &LoadTimesByModel::new());
        assert!(out.contains("96%"), "{out}");
        assert!(out.contains("bert-large"), "{out}");
        // RAM held by engine tiers above shows next to the tier's own.
        let s: TierStatusResponse = serde_json::from_value(json!({"status": "success", "tiers": {"ram": {"used_gb": 4.8, "engine_held_gb": 0.5, "limit_gb": 5.0, "available_gb": 2.6, "utilization": 0.96, "pressure": "high", "models": 1, "access_s_per_gb": 0.1, "reserved_gb": 1.0, "incoming_gb": 0.0, "max_models": null, "available": true}}, "tier_order": ["ram"]})).unwrap();
        let out = render_status(&s, &m, &LoadTimesByModel::new());
        assert!(out.contains("4.8 (+0.5 engines)"), "{out}");
    }

    #[test]
    fn status_shows_engine_tiers_with_footprints_health_and_load_times() {
        let tier = |up: bool| {
            json!({"used_gb": 0.5, "limit_gb": 20.0, "available_gb": 19.0, "utilization": 0.03, "pressure": "low", "models": 1,
                "access_s_per_gb": 0.01, "reserved_gb": 0.0, "incoming_gb": 0.0, "max_models": 3, "available": up,
                "unavailable_reason": if up { Value::Null } else { json!("engine llama-server is down: connection refused") },
                "driver": "llama-server", "engine_tier": true,
                "health": {"up": up, "consecutive_failures": if up { 0 } else { 4 }},
                "loaded": [{"model": "phi", "engine_id": "phi", "footprint_gb": 0.6, "footprint_source": "factor"}]})
        };
        let m: Vec<ModelView> = serde_json::from_value(json!([{"model_name": "phi", "size_gb": 0.5, "tier": "gpu0", "usage": 2, "status": "ready", "last_access": null, "pinned": false, "frequency": 0.0, "temperature": "cold", "interarrival_mean_s": null, "interarrival_stddev_s": null, "first_access": null, "load_time_s": 0.01, "job_id": null, "unavailable_reason": null, "path": null}])).unwrap();
        let mut times = LoadTimesByModel::new();
        let mut stats = crate::tiers::engines::LoadStats::default();
        stats.all.add(0.25);
        times.insert("phi".into(), stats);
        let s: TierStatusResponse =
            serde_json::from_value(json!({"status": "success", "tiers": {"gpu0": tier(true)}, "tier_order": ["gpu0"]})).unwrap();
        let out = render_status(&s, &m, &times);
        assert!(out.contains("gpu0: engine tier (llama-server), up"), "{out}");
        assert!(out.contains("footprint 0.6 GB (factor)"), "{out}");
        assert!(out.contains("load last 250 ms mean 250 ms p95 250 ms (1 loads)"), "{out}");
        let s: TierStatusResponse =
            serde_json::from_value(json!({"status": "success", "tiers": {"gpu0": tier(false)}, "tier_order": ["gpu0"]})).unwrap();
        let out = render_status(&s, &m, &times);
        assert!(
            out.contains("DOWN after 4 failed looks: engine llama-server is down: connection refused"),
            "{out}"
        );
    }
}
