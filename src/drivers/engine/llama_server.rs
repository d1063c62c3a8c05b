//! `llama-server`: llama.cpp's server in router mode (started with
//! `--models-dir` or `--models-preset`, without `-m`), one child process
//! per loaded model.
//!
//! API (llama.cpp `tools/server/README.md`, "Using multiple models",
//! <https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md>),
//! checked against the real binary:
//! - `GET /models` → `{"data": [{"id", "status": {"value": "unloaded" |
//!   "loading" | "loaded", "args": [argv of the child, with "--model" PATH],
//!   "failed": true, "exit_code": N}}]}` (`failed`/`exit_code` after a
//!   child that exited with an error);
//! - `POST /models/load {"model": id}` → `{"success": true}`; the child
//!   then starts, and the move ends when `GET /models` says `loaded`
//!   (or `unloaded` + `failed`: the load failed);
//! - `POST /models/unload {"model": id}` → `{"success": true}`, done when
//!   `GET /models` says `unloaded`;
//! - `GET /models/sse` → `text/event-stream`, one `data: {"model", "event",
//!   "data"}` line per change (`status_change` with `data.status`,
//!   `models_reload`, downloads): tierd follows it on a thread of its own
//!   and reads `GET /models` at each event ([`EngineApi::watch`]), so
//!   engine-side changes and the end of its own loads are seen at once,
//!   between polls. The stream is reconnected with backoff; a router
//!   without it (404) is asked again every minute, and polling goes on
//!   meanwhile.
//!
//! tierd models are matched to router ids by the GGUF path the router
//! reports (`--model` in `status.args`, made absolute against the router's
//! working directory), else by id = model name.
//!
//! With `command = [...]` in the tier, tierd starts the router itself,
//! restarts it with exponential backoff (0.5 s doubling to 30 s) when it
//! exits, and stops it (SIGTERM, then SIGKILL) when the tier closes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::HttpClient;
use super::{EngineApi, EngineError, EngineSettings, EngineTier, LoadControl, Loaded, ModelRef, UnloadTo, Wake};
use crate::config::TierConfig;
use crate::drivers::TierDriver;
use crate::drivers::machine::OpenContext;

/// Longest one router request may take (they answer at once; loads are
/// followed by polling `GET /models`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------ wire types

/// `GET /models`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelList {
    pub data: Vec<RouterModel>,
}

/// One entry of `GET /models`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouterModel {
    pub id: String,
    pub status: RouterStatus,
}

/// A router model's `status`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouterStatus {
    /// `unloaded`, `loading`, `loaded` (and `unloading` in some builds).
    pub value: String,
    /// The child's argv (holds `--model PATH`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The last child exited with an error.
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

impl RouterModel {
    /// The GGUF path the child is (or would be) started with.
    pub fn model_path(&self) -> Option<PathBuf> {
        let i = self.status.args.iter().position(|a| a == "--model" || a == "-m")?;
        self.status.args.get(i + 1).map(PathBuf::from)
    }
}

// ------------------------------------------------------------ supervisor

/// A router tierd started (`command = [...]`): restarted with backoff.
struct Supervised {
    argv: Vec<String>,
    child: Option<Child>,
    /// When the next start may happen, and the current backoff.
    next_start: Instant,
    backoff: Duration,
    started_at: Option<Instant>,
    restarts: u64,
    last_exit: Option<String>,
    stopped: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Supervised {
    /// Starts the router if it is not running and its backoff is over.
    fn ensure(&mut self) {
        if self.stopped {
            return;
        }
        if let Some(c) = &mut self.child {
            match c.try_wait() {
                Ok(None) => {
                    // Running for a while: the next crash starts again
                    // from the shortest backoff.
                    if self.started_at.is_some_and(|t| t.elapsed() > BACKOFF_MAX) {
                        self.backoff = BACKOFF_MIN;
                    }
                    return;
                }
                Ok(Some(st)) => {
                    self.last_exit = Some(format!("router exited: {st}"));
                    tracing::warn!(status = %st, "supervised llama-server exited; restarting with backoff");
                    self.child = None;
                    self.next_start = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => {
                    self.last_exit = Some(format!("cannot wait for the router: {e}"));
                    return;
                }
            }
        }
        if Instant::now() < self.next_start {
            return;
        }
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(c) => {
                if self.started_at.is_some() {
                    self.restarts += 1;
                }
                self.child = Some(c);
                self.started_at = Some(Instant::now());
            }
            Err(e) => {
                self.last_exit = Some(format!("cannot start {}: {e}", self.argv[0]));
                self.next_start = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        let Some(mut c) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill(2) on our own child's pid with a valid signal.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ------------------------------------------------------------ events

/// How tierd follows the router's event stream (`GET /models/sse`).
#[derive(Debug, Default)]
struct EventStream {
    connected: bool,
    /// Events received (each `data:` line).
    events: u64,
    /// The last event's `event` and `model`.
    last_event: Option<String>,
    last_error: Option<String>,
    /// Connections made (the first, then each reconnect).
    connects: u64,
}

/// Retry delays of the event stream after it failed or ended.
const STREAM_RETRY_MIN: Duration = Duration::from_millis(500);
const STREAM_RETRY_MAX: Duration = Duration::from_secs(10);
/// A router without `/models/sse` (404) is asked again this rarely.
const STREAM_RETRY_UNSUPPORTED: Duration = Duration::from_secs(60);

/// Follows `GET /models/sse` until `stop`: each event pokes `wake`
/// (also each (re)connect, since events may have been missed).
fn follow_events(http: &HttpClient, stop: &AtomicBool, state: &Mutex<EventStream>, wake: &Wake) {
    let mut retry = STREAM_RETRY_MIN;
    while !stop.load(Ordering::Relaxed) {
        let r = http.stream_lines(
            "/models/sse",
            REQUEST_TIMEOUT,
            Duration::from_millis(250),
            stop,
            || {
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                st.connected = true;
                st.connects += 1;
                drop(st);
                wake.set_live(true);
                wake.poke();
            },
            |line| {
                let Some(data) = line.strip_prefix("data:") else {
                    return true; // comments (pings), blank separators
                };
                let what = match serde_json::from_str::<Value>(data.trim()) {
                    Ok(v) => format!(
                        "{} {}",
                        v.get("event").and_then(Value::as_str).unwrap_or("?"),
                        v.get("model").and_then(Value::as_str).unwrap_or("?")
                    ),
                    Err(_) => "unparsed event".to_string(),
                };
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                st.events += 1;
                st.last_event = Some(what);
                drop(st);
                wake.poke();
                true
            },
        );
        let was_connected = {
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            let was = st.connected;
            st.connected = false;
            st.last_error = Some(match &r {
                Ok(()) => "the router ended the event stream".to_string(),
                Err(e) => e.to_string(),
            });
            was
        };
        wake.set_live(false);
        wake.poke();
        let delay = match &r {
            Err(super::http::HttpError::Status { status: 404, .. }) => STREAM_RETRY_UNSUPPORTED,
            _ if was_connected => STREAM_RETRY_MIN,
            _ => retry,
        };
        retry = if was_connected {
            STREAM_RETRY_MIN
        } else {
            (retry * 2).min(STREAM_RETRY_MAX)
        };
        let until = Instant::now() + delay;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ------------------------------------------------------------ the API

/// The llama-server router API of one tier.
pub struct LlamaServer {
    http: HttpClient,
    url: String,
    supervised: Option<Mutex<Supervised>>,
    /// Directory relative `--model` paths are resolved against (the
    /// router's working directory when tierd starts it: tierd's own).
    base_dir: PathBuf,
    /// The last `GET /models` answer (a load reads the entry's earlier
    /// failure flag from it without one more request).
    last_list: Mutex<Vec<RouterModel>>,
    /// The event stream's state, and its stop flag (set at shutdown).
    events: Arc<Mutex<EventStream>>,
    stop: Arc<AtomicBool>,
}

impl LlamaServer {
    pub fn new(url: &str, allow_remote: bool, command: Option<Vec<String>>) -> Result<LlamaServer, String> {
        let http = HttpClient::new(url, allow_remote)?;
        let supervised = command.map(|argv| {
            Mutex::new(Supervised {
                argv,
                child: None,
                next_start: Instant::now(),
                backoff: BACKOFF_MIN,
                started_at: None,
                restarts: 0,
                last_exit: None,
                stopped: false,
            })
        });
        let s = LlamaServer {
            http,
            url: url.to_string(),
            supervised,
            base_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            last_list: Mutex::new(Vec::new()),
            events: Arc::default(),
            stop: Arc::default(),
        };
        s.supervise();
        Ok(s)
    }

    /// Starts or restarts a supervised router (no-op otherwise).
    fn supervise(&self) {
        if let Some(s) = &self.supervised {
            s.lock().unwrap_or_else(PoisonError::into_inner).ensure();
        }
    }

    /// The pid of the supervised router, when tierd runs it.
    pub fn router_pid(&self) -> Option<u32> {
        let s = self.supervised.as_ref()?;
        s.lock().unwrap_or_else(PoisonError::into_inner).child.as_ref().map(Child::id)
    }

    /// `GET /models`, parsed.
    pub fn models(&self) -> Result<Vec<RouterModel>, EngineError> {
        let v = self.http.get_json("/models", REQUEST_TIMEOUT)?;
        let list: ModelList =
            serde_json::from_value(v).map_err(|e| EngineError::refused(format!("GET /models: unexpected answer ({e})")))?;
        self.last_list.lock().unwrap_or_else(PoisonError::into_inner).clone_from(&list.data);
        Ok(list.data)
    }

    fn absolute(&self, p: &Path) -> PathBuf {
        let p = if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) };
        std::fs::canonicalize(&p).unwrap_or(p)
    }

    fn status_of(&self, id: &str) -> Result<Option<RouterStatus>, EngineError> {
        Ok(self.models()?.into_iter().find(|m| m.id == id).map(|m| m.status))
    }
}

impl EngineApi for LlamaServer {
    fn kind(&self) -> &'static str {
        "llama-server"
    }

    /// The router (the listener on the URL, or the process tierd runs) and
    /// its children: the model's child among them.
    fn serving_pids(&self, _id: &str) -> std::collections::HashSet<u32> {
        let mut roots = super::procs::serving_pids(self.http.endpoint());
        if let Some(pid) = self.router_pid() {
            roots.extend(super::procs::with_descendants(&std::iter::once(pid).collect()));
        }
        roots
    }

    fn loaded(&self) -> Result<Vec<Loaded>, EngineError> {
        self.supervise();
        Ok(self
            .models()?
            .into_iter()
            .filter(|m| m.status.value == "loaded")
            .map(|m| Loaded {
                path: m.model_path().map(|p| self.absolute(&p)),
                id: m.id,
                // The router reports weights only (`meta.size`), not what
                // the child holds: the footprint is measured or estimated.
                bytes: None,
                activity: None,
            })
            .collect())
    }

    fn resolve(&self, model: &ModelRef) -> Result<String, EngineError> {
        let paths: Vec<PathBuf> = model.paths().iter().map(|p| self.absolute(p)).collect();
        let models = self.models()?;
        if let Some(m) = models
            .iter()
            .find(|m| m.model_path().is_some_and(|p| paths.contains(&self.absolute(&p))))
        {
            return Ok(m.id.clone());
        }
        if let Some(m) = models.iter().find(|m| m.id == model.name) {
            return Ok(m.id.clone());
        }
        Err(EngineError::refused(format!(
            "the router knows no model with the files of {} (GET /models lists {} models; start it with a --models-dir or --models-preset that holds them)",
            model.name,
            models.len()
        )))
    }

    fn load(&self, id: &str, _model: &ModelRef, ctl: &LoadControl) -> Result<(), EngineError> {
        // The failure flag of an earlier load stays on the entry: as the
        // last `GET /models` (the resolve just before) showed it.
        let failed_before = self
            .last_list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|m| m.id == id)
            .is_none_or(|m| m.status.failed);
        let started = Instant::now();
        if let Err(e) = self
            .http
            .post_json("/models/load", Some(&json!({ "model": id })), REQUEST_TIMEOUT.min(ctl.remaining()))
        {
            return match self.status_of(id)? {
                // "model is already running".
                Some(s) if s.value == "loaded" => Ok(()),
                _ => Err(e.into()),
            };
        }
        let mut seen_loading = false;
        loop {
            match self.status_of(id)? {
                None => return Err(EngineError::refused(format!("the router no longer lists {id}"))),
                Some(s) if s.value == "loaded" => return Ok(()),
                Some(s) if s.value == "loading" => seen_loading = true,
                Some(s) if s.failed && (seen_loading || !failed_before || started.elapsed() > Duration::from_secs(3)) => {
                    return Err(EngineError::refused(format!(
                        "the router's child for {id} exited{} before it was loaded",
                        s.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default()
                    )));
                }
                Some(_) => {}
            }
            ctl.wait(&format!("loading {id}"))?;
        }
    }

    fn unload(&self, id: &str, _to: UnloadTo, ctl: &LoadControl) -> Result<(), EngineError> {
        match self.status_of(id)? {
            None => return Ok(()),
            Some(s) if s.value == "unloaded" => return Ok(()),
            Some(_) => {}
        }
        if let Err(e) = self.http.post_json(
            "/models/unload",
            Some(&json!({ "model": id })),
            REQUEST_TIMEOUT.min(ctl.remaining()),
        ) {
            // "model is not running": it went away meanwhile.
            if !matches!(self.status_of(id)?, Some(ref s) if s.value != "unloaded") {
                return Ok(());
            }
            return Err(e.into());
        }
        loop {
            match self.status_of(id)? {
                None => return Ok(()),
                Some(s) if s.value == "unloaded" => return Ok(()),
                Some(_) => {}
            }
            ctl.wait(&format!("unloading {id}"))?;
        }
    }

    fn watch(&self, wake: Arc<Wake>) {
        let (http, stop, state) = (self.http.clone(), self.stop.clone(), self.events.clone());
        let spawned = std::thread::Builder::new()
            .name("tierd-engine-sse".into())
            .spawn(move || follow_events(&http, &stop, &state, &wake));
        if let Err(e) = spawned {
            // Polling alone still sees everything, a poll later.
            tracing::warn!(error = %e, "cannot start the llama-server event stream thread; polling only");
        }
    }

    fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("url".into(), json!(self.url));
        {
            let st = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            m.insert(
                "events".into(),
                json!({
                    "stream": "/models/sse",
                    "connected": st.connected,
                    "events": st.events,
                    "connects": st.connects,
                    "last_event": st.last_event,
                    "last_error": st.last_error,
                }),
            );
        }
        if let Some(s) = &self.supervised {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            m.insert(
                "supervised".into(),
                json!({
                    "command": s.argv,
                    "pid": s.child.as_ref().map(Child::id),
                    "restarts": s.restarts,
                    "last_exit": s.last_exit,
                    "backoff_s": s.backoff.as_secs_f64(),
                }),
            );
        }
        m
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = &self.supervised {
            s.lock().unwrap_or_else(PoisonError::into_inner).stop();
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens a `llama-server` tier.
pub fn open(ctx: &mut OpenContext, tier: &TierConfig) -> Result<Box<dyn TierDriver>, String> {
    Ok(Box::new(open_tier(ctx, tier)?))
}

/// Opens a `llama-server` tier, typed (tests and the bench use the API).
pub fn open_tier(ctx: &mut OpenContext, tier: &TierConfig) -> Result<EngineTier<LlamaServer>, String> {
    let url = tier
        .url
        .as_deref()
        .ok_or_else(|| format!("tier {:?}: a llama-server tier needs url = \"http://127.0.0.1:PORT\"", tier.name))?;
    let api = LlamaServer::new(url, tier.allow_remote_engines, tier.command.clone()).map_err(|e| format!("tier {:?}: {e}", tier.name))?;
    let settings = EngineSettings::from_config(tier, super::engine_gpu(ctx, tier));
    EngineTier::open(api, settings)
}
