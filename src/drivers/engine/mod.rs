//! Engine tiers: models loaded in an inference engine (llama.cpp's
//! `llama-server` router, Ollama, vLLM), driven over the engine's HTTP API.
//!
//! An engine tier sits above the `pagecache` RAM tier:
//! - a move into it (promotion) pins the model's files in RAM on a worker
//!   thread (already resident when the model comes from the RAM tier), then
//!   loads the model in the engine, which reads the pinned, resident pages.
//!   The tier holds its own pin for as long as the model is loaded, so the
//!   RAM tier letting go of the model after the move does not evict pages
//!   the engine may read again;
//! - a move out of it to RAM unloads the model and leaves its files pinned
//!   (the RAM tier pins them before this tier lets go);
//! - a move out to storage unloads it and unpins.
//!
//! # Implementing an engine
//! One engine is one type implementing [`EngineApi`] (one file under
//! `drivers/engine/`, wire types with the engine's own field names, a link
//! to its API doc), plus one line in [`DRIVERS`](super::DRIVERS) whose open
//! function builds the API from the tier's config and calls
//! [`EngineTier::open`]. [`EngineTier`] does everything else: capacity,
//! footprints, health, the poller that reconciles the engine's loaded set
//! with tierd's books, load timing and rollback. Every [`EngineApi`] method
//! blocks and is only ever called on the tier's own threads (never under
//! the engine's lock); each makes its HTTP requests with
//! [`http::HttpClient`], whose every request has a timeout.
//!
//! # What the engine tells tierd
//! The poller looks at the engine every `poll_s` (default 1 s) and reports:
//! - [`MoveEvent::EngineLoaded`]: a load tierd did not ask for (another
//!   client, the engine's own autoload); tierd matches it to a model by name
//!   or file path and calls [`TierDriver::adopt`];
//! - [`MoveEvent::EngineUnloaded`]: a model tierd placed here is no longer
//!   loaded (LRU eviction, expiry, another client);
//! - [`MoveEvent::EngineActivity`]: the engine shows use (its activity
//!   marker moved), an access for the usage statistics;
//! - [`MoveEvent::LoadTimed`]: each load's wall time and footprint.
//!
//! # Footprint
//! A model's bytes in the tier are, in order of preference: what the engine
//! reports ([`Loaded::bytes`], Ollama `size_vram`), the growth across the
//! load of the GPU memory NVML shows for the engine's processes (the
//! listener on its URL and its descendants, [`procs`]; source `nvml`),
//! else the drop in the GPU's free memory across it (`nvml_device`), else
//! the file size times `footprint_factor` (default 1.2, `factor`).
//!
//! # Health
//! `details()` carries `health` (up, last error, consecutive failures, last
//! success). While the engine is down the tier's capacity is
//! [`Capacity::Unavailable`] with the reason, and moves into it fail at
//! once, saying so; when it answers again its loaded set is re-read.

pub mod http;
pub mod llama_server;
pub mod ollama;
pub mod ollama_wire;
pub mod procs;
pub mod vllm;
pub mod vllm_wire;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use self::http::HttpError;
use super::files::ModelFiles;
use super::gpu::GpuProbe;
use super::pin::{Pin, pin_files};
use super::work::{MoveShared, panic_message};
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, TierDriver};
use crate::config::{DEFAULT_FOOTPRINT_FACTOR, DEFAULT_LOAD_TIMEOUT_S, DEFAULT_POLL_S, TierConfig, bytes_to_gb, gb_to_bytes};

/// One model the engine has loaded, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The engine's id of the model (router id, Ollama name).
    pub id: String,
    /// The weights file the engine reports for it, where it does (matches
    /// the model to tierd's by path).
    pub path: Option<PathBuf>,
    /// Bytes the engine says the model takes (Ollama `size_vram`, else
    /// `size`); `None` where it does not say.
    pub bytes: Option<u64>,
    /// A marker that changes when the model is used (Ollama `expires_at`
    /// moving forward); `None` where the engine shows no activity.
    pub activity: Option<String>,
}

/// A tierd model as an engine needs it.
#[derive(Debug, Clone)]
pub struct ModelRef {
    pub name: String,
    pub files: Option<Arc<ModelFiles>>,
}

impl ModelRef {
    /// The model's origin paths (empty on a simulated model).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files
            .as_ref()
            .map(|f| f.origin_paths().into_iter().map(|(p, _)| p).collect())
            .unwrap_or_default()
    }
}

/// Where an unload sends the model (vLLM sleeps at level 1 for RAM and 2
/// for storage; the others simply unload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadTo {
    Ram,
    Storage,
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    /// The engine's message (HTTP status and body excerpt where it answered).
    pub message: String,
    /// The engine could not be reached: it is down.
    pub down: bool,
}

impl EngineError {
    /// The engine answered but refused or failed the request.
    pub fn refused(message: impl Into<String>) -> EngineError {
        EngineError {
            message: message.into(),
            down: false,
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<HttpError> for EngineError {
    fn from(e: HttpError) -> EngineError {
        EngineError {
            down: e.is_down(),
            message: e.to_string(),
        }
    }
}

/// How often a load or an unload looks at the engine's state while it
/// waits (a `GET` on a local engine costs well under a millisecond; the
/// move ends at most this long after the engine is done).
pub const LOAD_POLL: Duration = Duration::from_millis(2);

/// How often the engine polls an engine tier while a load runs, engine
/// seconds: a load's end reaches the books within this (finer than
/// [`super::POLL_EVERY_S`]: loads are few, and a model's load time is what
/// its clients wait for).
pub const LOADING_POLL_S: f64 = 0.001;

/// How long the pin of a model the engine unloaded on its own is kept (for
/// its move to RAM to find the pages resident).
pub const LINGER: Duration = Duration::from_secs(30);

/// How long a wait on an engine's event stream lasts before the caller
/// looks at the engine anyway (a missed or late event costs this much).
pub const EVENT_WAIT: Duration = Duration::from_millis(100);

/// A nudge from an engine's event stream (llama-server's `/models/sse`):
/// the poller and the loads waiting on the engine look again at once
/// instead of at their next poll.
#[derive(Debug, Default)]
pub struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
    /// Whether an event stream is connected now (waits then rely on it).
    live: AtomicBool,
}

impl Wake {
    /// Something changed in the engine.
    pub fn poke(&self) {
        *self.generation.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.cv.notify_all();
    }

    /// The number of pokes so far.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps up to `d`, or until a poke after generation `since`;
    /// answers the generation then.
    pub fn wait(&self, since: u64, d: Duration) -> u64 {
        let g = self.generation.lock().unwrap_or_else(PoisonError::into_inner);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |g| *g == since)
            .unwrap_or_else(PoisonError::into_inner);
        *g
    }

    /// Marks the event stream connected or not.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    pub fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }
}

/// How long after a failed [`TierDriver::drop_copy`] it is tried again.
pub const DROP_RETRY: Duration = Duration::from_secs(60);

/// What a long call (a load, an unload) checks between its steps.
#[derive(Debug, Clone)]
pub struct LoadControl {
    cancelled: Arc<AtomicBool>,
    /// When the call gives up (`load_timeout_s` from its start).
    pub deadline: Instant,
    /// The tier's poll interval (how often to look at the engine's state).
    pub poll: Duration,
    /// The engine's event stream, where it has one, and the generation
    /// of it the call has seen.
    wake: Option<(Arc<Wake>, Arc<AtomicU64>)>,
}

impl LoadControl {
    pub fn new(timeout: Duration, poll: Duration) -> LoadControl {
        LoadControl {
            cancelled: Arc::new(AtomicBool::new(false)),
            deadline: Instant::now() + timeout,
            poll,
            wake: None,
        }
    }

    /// Waits on the engine's events (see [`Wake`]) while its stream is
    /// connected, instead of polling.
    pub fn with_wake(mut self, wake: &Arc<Wake>) -> LoadControl {
        self.wake = Some((wake.clone(), Arc::new(AtomicU64::new(wake.generation()))));
        self
    }

    /// Asks the call to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Time left before the deadline (at least a millisecond, so a request
    /// made at the deadline still has a timeout).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// `Err` once cancelled or past the deadline: `what` names the wait.
    pub fn check(&self, what: &str) -> Result<(), EngineError> {
        if self.cancelled() {
            return Err(EngineError::refused(format!("{what}: cancelled")));
        }
        if Instant::now() >= self.deadline {
            return Err(EngineError::refused(format!("{what}: timed out (load_timeout_s)")));
        }
        Ok(())
    }

    /// Sleeps one poll interval (shorter near the deadline), then checks.
    /// With a connected event stream, until the engine's next event (at
    /// most [`EVENT_WAIT`]).
    pub fn wait(&self, what: &str) -> Result<(), EngineError> {
        match &self.wake {
            Some((wake, seen)) if wake.live() => {
                let g = wake.wait(seen.load(Ordering::Relaxed), EVENT_WAIT.min(self.remaining()));
                seen.store(g, Ordering::Relaxed);
            }
            _ => std::thread::sleep(self.poll.min(LOAD_POLL).min(self.remaining())),
        }
        self.check(what)
    }
}

/// An inference engine's API, as an engine tier drives it. Every method
/// blocks; the tier calls them on its own threads only.
pub trait EngineApi: Send + Sync + 'static {
    /// The driver name (`llama-server`, `ollama`, `vllm`).
    fn kind(&self) -> &'static str;

    /// The models the engine has loaded now. An `Err` with `down` marks
    /// the engine down.
    fn loaded(&self) -> Result<Vec<Loaded>, EngineError>;

    /// The engine's id for a tierd model (by its file path, or its name);
    /// `Err` when the engine does not know it.
    fn resolve(&self, model: &ModelRef) -> Result<String, EngineError>;

    /// Loads `id` with the tier's options and returns once the engine
    /// reports it loaded; gives up (`Err`) when `ctl` is cancelled or past
    /// its deadline. The tier unloads a model whose load failed.
    fn load(&self, id: &str, model: &ModelRef, ctl: &LoadControl) -> Result<(), EngineError>;

    /// Unloads `id` and returns once the engine no longer reports it loaded.
    fn unload(&self, id: &str, to: UnloadTo, ctl: &LoadControl) -> Result<(), EngineError>;

    /// Starts the engine's event stream, where it has one, on a thread of
    /// its own: each event pokes `wake`, so that the poller and waiting
    /// loads look at the engine at once. The stream ends at
    /// [`EngineApi::shutdown`]. Default: none (the poller polls).
    fn watch(&self, _wake: Arc<Wake>) {}

    /// The tierd models whose weights the engine keeps in its own CPU
    /// memory while they are not in the tier (a vLLM instance asleep at
    /// level 1): counted against the RAM tier's budget. Default: none.
    fn copies_in_ram(&self) -> Vec<String> {
        Vec::new()
    }

    /// Lets go of the CPU copy `id` keeps (see [`EngineApi::copies_in_ram`]),
    /// leaving the model out of the tier. Default: nothing to do.
    fn drop_copy(&self, _id: &str, _ctl: &LoadControl) -> Result<(), EngineError> {
        Ok(())
    }

    /// The processes serving model `id` (the listener on the engine's URL
    /// and its descendants, [`procs::serving_pids`]): their NVML
    /// per-process memory is the footprint measured across a load.
    fn serving_pids(&self, _id: &str) -> HashSet<u32> {
        HashSet::new()
    }

    /// Whether the engine answers (default: its loaded set can be read).
    fn health(&self) -> Result<(), EngineError> {
        self.loaded().map(drop)
    }

    /// Per-poll upkeep after each successful look at the engine, given what
    /// it reports and the ids tierd holds in the tier (Ollama re-asserts
    /// `keep_alive` where a client overrode it). Messages are recorded as
    /// the tier's last upkeep error.
    fn upkeep(&self, _loaded: &[Loaded], _held: &[String]) -> Result<(), EngineError> {
        Ok(())
    }

    /// The engine's own facts for `tier_status` (its process, its URL).
    fn details(&self) -> Map<String, Value> {
        Map::new()
    }

    /// The tier is closing (tierd stops): stop what the API started (a
    /// supervised engine process).
    fn shutdown(&self) {}
}

/// An engine's health, as `tier_status` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Whether the last look at the engine succeeded (false before the
    /// first look has answered).
    pub up: bool,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    /// When the engine last answered, Unix seconds.
    pub last_success: Option<f64>,
    /// Looks at the engine so far.
    pub checks: u64,
}

impl Health {
    fn record(&mut self, r: &Result<(), EngineError>) {
        self.checks += 1;
        match r {
            Ok(()) => {
                self.up = true;
                self.consecutive_failures = 0;
                self.last_success = Some(unix_now());
            }
            Err(e) => {
                if e.down {
                    self.up = false;
                    self.consecutive_failures += 1;
                }
                self.last_error = Some(e.message.clone());
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "up": self.up,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "last_success": self.last_success,
            "checks": self.checks,
        })
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A model tierd holds in the tier.
#[derive(Debug)]
struct Held {
    id: String,
    /// Its footprint in the tier and how it was found.
    footprint: u64,
    footprint_source: &'static str,
    /// The tier's own pin of its files (see the module docs).
    pin: Option<Pin>,
    /// The engine's last activity marker.
    activity: Option<String>,
}

/// A load in progress.
#[derive(Debug)]
struct Loading {
    model: String,
    /// The engine id, once resolved (an external report of it is ours).
    id: Option<String>,
    ctl: LoadControl,
    shared: Arc<MoveShared>,
}

/// What the tier's threads and its driver share.
#[derive(Debug, Default)]
struct Books {
    held: HashMap<String, Held>,
    loading: HashMap<JobKey, Loading>,
    /// Engine ids being unloaded by tierd (their disappearance is ours).
    unloading: HashSet<String>,
    /// Moves out of the tier whose unload runs before their commit
    /// ([`TierDriver::start_move_out`]): job -> the unload's control (a cancel stops its wait).
    moving_out: HashMap<JobKey, LoadControl>,
    /// Where a model leaving the tier goes (told by the engine at commit).
    leaving_to: HashMap<String, UnloadTo>,
    /// Engine ids already reported as external loads (reported once).
    reported: HashSet<String>,
    health: Health,
    /// What the engine reported at the last look.
    seen: Vec<Loaded>,
    /// The last upkeep failure.
    upkeep_error: Option<String>,
    /// Events for the next `poll`.
    events: Vec<MoveEvent>,
    /// Whether the poller should stop (the driver was dropped).
    stop: bool,
    /// Unloads that failed: (model, message).
    unload_errors: HashMap<String, String>,
    /// Pins of models the engine unloaded on its own, let go at their
    /// deadline.
    lingering: Vec<(Instant, String, Pin)>,
    /// Models whose CPU copy is being dropped ([`TierDriver::drop_copy`]),
    /// and when a failed drop may be tried again.
    dropping: HashSet<String>,
    drop_retry: HashMap<String, Instant>,
    /// Models the state file places here, checked at the first answer
    /// from the engine: still loaded (held from then on), or fallen back.
    restoring: HashMap<String, Option<Arc<ModelFiles>>>,
}

/// The settings of an engine tier, from its `[[tiers]]` entry.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub tier: String,
    /// `max_gb` in bytes.
    pub max_bytes: Option<u64>,
    /// `reserved_gb` in bytes, kept free on the GPU (the engine subtracts
    /// it from the capacity; shown in `details`).
    pub reserved_bytes: u64,
    pub poll: Duration,
    pub load_timeout: Duration,
    pub footprint_factor: f64,
    /// The engine's GPU where NVML sees it (index from the tier's name).
    pub gpu: Option<(Arc<GpuProbe>, u32)>,
    /// Nudged by the engine's event stream (see [`EngineApi::watch`]).
    pub wake: Arc<Wake>,
    /// Held by each unload while it runs; the poller's upkeep runs only
    /// while no unload does, with the held set read under it, so that it
    /// never re-asserts a pin on a model being unloaded (Ollama would load
    /// it again).
    pub unload_gate: Arc<Mutex<()>>,
}

impl EngineSettings {
    /// Reads the shared engine keys of a tier.
    pub fn from_config(tier: &TierConfig, gpu: Option<(Arc<GpuProbe>, u32)>) -> EngineSettings {
        EngineSettings {
            tier: tier.name.clone(),
            max_bytes: tier.max_gb.map(gb_to_bytes),
            reserved_bytes: tier.reserved_gb.map(gb_to_bytes).unwrap_or(0),
            poll: Duration::from_secs_f64(tier.poll_s.unwrap_or(DEFAULT_POLL_S)),
            load_timeout: Duration::from_secs_f64(tier.load_timeout_s.unwrap_or(DEFAULT_LOAD_TIMEOUT_S)),
            footprint_factor: tier.footprint_factor.unwrap_or(DEFAULT_FOOTPRINT_FACTOR),
            gpu,
            wake: Arc::default(),
            unload_gate: Arc::default(),
        }
    }

    /// The control of one load or unload bounded by `timeout`: it waits on
    /// the engine's events where it has a stream, else polls.
    pub fn control(&self, timeout: Duration) -> LoadControl {
        LoadControl::new(timeout, self.poll).with_wake(&self.wake)
    }

    /// NVML free bytes of the engine's GPU, where it sees one.
    fn gpu_free(&self) -> Option<u64> {
        let (probe, index) = self.gpu.as_ref()?;
        probe.free_bytes(*index).ok()
    }

    /// NVML's GPU memory of the engine's processes serving `id` (0 where
    /// NVML lists none of them yet), where NVML sees the GPU.
    fn gpu_used_by<A: EngineApi + ?Sized>(&self, api: &A, id: &str) -> Option<u64> {
        let (probe, index) = self.gpu.as_ref()?;
        let pids = api.serving_pids(id);
        if pids.is_empty() {
            return None;
        }
        probe.process_used_bytes(*index, &pids).ok().map(|u| u.unwrap_or(0))
    }
}

/// The GPU an engine tier runs on, where NVML sees one: the index from
/// the tier's name (`gpu1` is GPU 1), else GPU 0 when NVML has devices.
pub fn engine_gpu(ctx: &mut super::machine::OpenContext, tier: &TierConfig) -> Option<(Arc<GpuProbe>, u32)> {
    let probe = ctx.gpu();
    let index = super::gpu::gpu_index(&tier.name, 0);
    probe.free_bytes(index).ok().map(|_| (probe, index))
}

/// The engine options of a tier (`options = { ... }`) as JSON.
pub fn options_json(tier: &TierConfig) -> Map<String, Value> {
    match tier.options.as_ref().map(serde_json::to_value) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    }
}

/// An engine tier over API `A`. See the module docs.
pub struct EngineTier<A: EngineApi> {
    api: Arc<A>,
    settings: Arc<EngineSettings>,
    books: Arc<Mutex<Books>>,
    last_now: f64,
}

impl<A: EngineApi> std::fmt::Debug for EngineTier<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineTier")
            .field("kind", &self.api.kind())
            .field("tier", &self.settings.tier)
            .finish()
    }
}

fn lock(books: &Mutex<Books>) -> MutexGuard<'_, Books> {
    books.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<A: EngineApi> EngineTier<A> {
    /// Builds the tier and starts its poller thread (which takes a first
    /// look at the engine at once).
    pub fn open(api: A, settings: EngineSettings) -> Result<EngineTier<A>, String> {
        let tier = EngineTier {
            api: Arc::new(api),
            settings: Arc::new(settings),
            books: Arc::new(Mutex::new(Books::default())),
            last_now: 0.0,
        };
        tier.api.watch(tier.settings.wake.clone());
        let (api, settings, books) = (tier.api.clone(), tier.settings.clone(), tier.books.clone());
        std::thread::Builder::new()
            .name(format!("tierd-engine-{}", tier.settings.tier))
            .spawn(move || poller(&*api, &settings, &books))
            .map_err(|e| format!("cannot start the engine poller thread: {e}"))?;
        Ok(tier)
    }

    /// The engine API (tests and the bench reach the engine through it).
    pub fn api(&self) -> &Arc<A> {
        &self.api
    }

    /// The engine's health now.
    pub fn health(&self) -> Health {
        lock(&self.books).health.clone()
    }

    /// Whether the engine is known to be down, and why.
    fn down_reason(&self) -> Option<String> {
        let b = lock(&self.books);
        if b.health.up {
            return None;
        }
        Some(match (&b.health.last_error, b.health.checks) {
            (Some(e), _) => format!("engine {} is down: {e}", self.api.kind()),
            (None, 0) => format!("engine {} not reached yet", self.api.kind()),
            (None, _) => format!("engine {} is down", self.api.kind()),
        })
    }

    /// Starts the worker that releases model `model` (unload, then unpin).
    fn spawn_unload(&self, model: String, held: Held, to: UnloadTo) {
        let (api, settings, books) = (self.api.clone(), self.settings.clone(), self.books.clone());
        lock(&books).unloading.insert(held.id.clone());
        let spawned = std::thread::Builder::new().name("tierd-engine-unload".into()).spawn(move || {
            let ctl = settings.control(settings.load_timeout);
            let gate = settings.unload_gate.lock().unwrap_or_else(PoisonError::into_inner);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api.unload(&held.id, to, &ctl)))
                .unwrap_or_else(|p| Err(EngineError::refused(panic_message(&*p))));
            drop(gate);
            let mut b = lock(&books);
            b.unloading.remove(&held.id);
            b.reported.remove(&held.id);
            match r {
                Ok(()) => {
                    b.unload_errors.remove(&model);
                }
                Err(e) => {
                    tracing::warn!(model = %model, error = %e, "engine unload failed");
                    b.unload_errors.insert(model, e.message);
                }
            }
            drop(b);
            if let Some(p) = held.pin {
                p.release();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start an engine unload thread");
        }
    }
}

impl<A: EngineApi> Drop for EngineTier<A> {
    fn drop(&mut self) {
        lock(&self.books).stop = true;
        self.api.shutdown();
    }
}

/// The poller: every `poll`, looks at the engine, records its health and
/// reconciles its loaded set with the tier's books.
fn poller<A: EngineApi + ?Sized>(api: &A, settings: &EngineSettings, books: &Mutex<Books>) {
    loop {
        if lock(books).stop {
            return;
        }
        let started = Instant::now();
        // Events after this look wake the next one early.
        let generation = settings.wake.generation();
        let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api.loaded()))
            .unwrap_or_else(|p| Err(EngineError::refused(panic_message(&*p))));
        {
            let mut b = lock(books);
            let now = Instant::now();
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut b.lingering).into_iter().partition(|(at, _, _)| *at <= now);
            b.lingering = keep;
            for (_, _, p) in due {
                p.release_in_background();
            }
            b.health.record(&seen.as_ref().map(drop).map_err(Clone::clone));
            if let Ok(seen) = &seen {
                reconcile(&mut b, seen);
            }
        };
        if let Ok(seen) = &seen {
            restore_models(api, settings, books, seen);
            // Skipped this round while an unload runs (see `unload_gate`).
            if let Ok(_gate) = settings.unload_gate.try_lock() {
                let held_ids: Vec<String> = {
                    let b = lock(books);
                    b.held
                        .values()
                        .filter(|h| !b.unloading.contains(&h.id))
                        .map(|h| h.id.clone())
                        .collect()
                };
                let r = api.upkeep(seen, &held_ids);
                lock(books).upkeep_error = r.err().map(|e| e.message);
            }
        }
        // Until the next poll, or at once on an engine event.
        let rest = settings.poll.saturating_sub(started.elapsed());
        if settings.wake.generation() == generation {
            settings.wake.wait(generation, rest.max(Duration::from_millis(5)));
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Settles the models the state file placed here, once the engine
/// answers: one it still has loaded is held (its files pinned again), one
/// it does not falls back ([`MoveEvent::EngineUnloaded`]).
fn restore_models<A: EngineApi + ?Sized>(api: &A, settings: &EngineSettings, books: &Mutex<Books>, seen: &[Loaded]) {
    let pending: Vec<(String, Option<Arc<ModelFiles>>)> = lock(books).restoring.drain().collect();
    for (model, files) in pending {
        let mref = ModelRef {
            name: model.clone(),
            files: files.clone(),
        };
        let id = api.resolve(&mref).ok();
        let loaded = id.as_ref().and_then(|id| seen.iter().find(|l| &l.id == id));
        match (id.clone(), loaded) {
            (Some(id), Some(l)) => {
                let pin = files
                    .as_ref()
                    .and_then(|f| pin_files(&f.origin_paths(), &MoveShared::new(1), None).ok());
                let bytes = files.as_ref().map(|f| f.bytes).unwrap_or(0);
                let (footprint, footprint_source) = match l.bytes {
                    Some(b) => (b, "engine"),
                    None => ((bytes as f64 * settings.footprint_factor).round() as u64, "factor"),
                };
                let mut b = lock(books);
                b.reported.remove(&id);
                b.held.insert(
                    model,
                    Held {
                        id,
                        footprint,
                        footprint_source,
                        pin,
                        activity: l.activity.clone(),
                    },
                );
            }
            _ => lock(books).events.push(MoveEvent::EngineUnloaded {
                tier: 0,
                model,
                id: id.unwrap_or_default(),
                reason: "not loaded in the engine when tierd started".into(),
            }),
        }
    }
}

/// Compares what the engine reports with the books and queues the events.
fn reconcile(b: &mut Books, seen: &[Loaded]) {
    let ids: HashSet<&str> = seen.iter().map(|l| l.id.as_str()).collect();
    let loading_ids: HashSet<String> = b.loading.values().filter_map(|l| l.id.clone()).collect();
    // Models tierd placed here that the engine no longer has.
    let gone: Vec<String> = b
        .held
        .iter()
        .filter(|(_, h)| !ids.contains(h.id.as_str()) && !b.unloading.contains(&h.id))
        .map(|(m, _)| m.clone())
        .collect();
    for model in gone {
        if let Some(h) = b.held.remove(&model) {
            b.reported.remove(&h.id);
            b.events.push(MoveEvent::EngineUnloaded {
                tier: 0,
                model: model.clone(),
                id: h.id.clone(),
                reason: "the engine unloaded it on its own (eviction, expiry or another client)".into(),
            });
            // Kept a while: tierd places the model in RAM next (see
            // `tiers::engines`), whose pin then finds the pages resident.
            if let Some(p) = h.pin {
                b.lingering.push((Instant::now() + LINGER, model.clone(), p));
            }
        }
    }
    let mut activity = Vec::new();
    for l in seen {
        let ours = b.held.iter_mut().find(|(_, h)| h.id == l.id);
        match ours {
            Some((model, h)) => {
                if l.activity.is_some() && h.activity.is_some() && l.activity != h.activity {
                    activity.push(model.clone());
                }
                if l.activity.is_some() {
                    h.activity = l.activity.clone();
                }
                if let Some(bytes) = l.bytes
                    && h.footprint_source != "engine"
                {
                    h.footprint = bytes;
                    h.footprint_source = "engine";
                }
            }
            None => {
                if !loading_ids.contains(&l.id) && !b.unloading.contains(&l.id) && b.reported.insert(l.id.clone()) {
                    b.events.push(MoveEvent::EngineLoaded {
                        tier: 0,
                        id: l.id.clone(),
                        path: l.path.clone(),
                        bytes: l.bytes,
                    });
                }
            }
        }
    }
    // Reported external loads that went away again may be reported anew.
    b.reported.retain(|id| ids.contains(id.as_str()));
    for model in activity {
        b.events.push(MoveEvent::EngineActivity { tier: 0, model });
    }
    b.seen = seen.to_vec();
}

/// The result of a load worker.
struct LoadDone {
    id: String,
    footprint: u64,
    footprint_source: &'static str,
    pin: Option<Pin>,
    seconds: f64,
    resident: bool,
}

/// Whether every byte of the model's files is in the page cache now.
fn files_resident(files: Option<&ModelFiles>) -> bool {
    let Some(files) = files else { return false };
    let present: u64 = files
        .files
        .iter()
        .map(|f| super::sys::file_resident_fraction(&files.origin_file(f)).map(|r| r.0).unwrap_or(0))
        .sum();
    present >= files.bytes
}

/// A load: pin, resolve, load, measure. On failure unloads what may have
/// been half loaded and drops the pin.
/// One load a worker carries out.
struct LoadJob {
    job: JobKey,
    model: ModelRef,
    /// The model's size (the footprint estimate's base).
    bytes: u64,
    ctl: LoadControl,
    shared: Arc<MoveShared>,
}

fn run_load<A: EngineApi + ?Sized>(
    api: &A,
    settings: &EngineSettings,
    books: &Mutex<Books>,
    load: &LoadJob,
) -> Result<LoadDone, EngineError> {
    let LoadJob {
        job,
        model,
        bytes,
        ctl,
        shared,
    } = load;
    let (job, bytes) = (*job, *bytes);
    let started = Instant::now();
    let resident = files_resident(model.files.as_deref());
    let pin = match &model.files {
        Some(files) => Some(pin_files(&files.origin_paths(), shared, None).map_err(|e| match e {
            super::work::WorkError::Cancelled => EngineError::refused("load: cancelled"),
            super::work::WorkError::Failed { message, .. } => EngineError::refused(format!("pinning the files for the engine: {message}")),
        })?),
        None => None,
    };
    ctl.check("load")?;
    let id = api.resolve(model)?;
    if let Some(l) = lock(books).loading.get_mut(&job) {
        l.id = Some(id.clone());
    }
    let gpu_before = settings.gpu_free();
    let procs_before = settings.gpu_used_by(api, &id);
    if let Err(e) = api.load(&id, model, ctl) {
        // Roll back: a half-loaded model is unloaded (with a fresh
        // deadline: the load's may be spent).
        let undo = settings.control(settings.load_timeout.min(Duration::from_secs(60)));
        if let Err(u) = api.unload(&id, UnloadTo::Ram, &undo) {
            tracing::warn!(model = %model.name, error = %u, "unloading a failed load failed");
        }
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    // What the engine reports replaces this at the poller's next look
    // (one request less on the load's path).
    let reported = lock(books).seen.iter().find(|l| l.id == id).and_then(|l| l.bytes);
    // NVML: the growth of the engine's own processes' GPU memory (its new
    // child included), else of the whole GPU's used memory.
    let measured = match (procs_before, settings.gpu_used_by(api, &id)) {
        (Some(before), Some(after)) if after > before => Some((after - before, "nvml")),
        _ => match (gpu_before, settings.gpu_free()) {
            (Some(before), Some(after)) if before > after => Some((before - after, "nvml_device")),
            _ => None,
        },
    };
    let (footprint, footprint_source) = match (reported, measured) {
        (Some(b), _) => (b, "engine"),
        (None, Some((b, source))) => (b, source),
        (None, None) => ((bytes as f64 * settings.footprint_factor).round() as u64, "factor"),
    };
    Ok(LoadDone {
        id,
        footprint,
        footprint_source,
        pin,
        seconds,
        resident,
    })
}

impl<A: EngineApi> TierDriver for EngineTier<A> {
    fn kind(&self) -> &'static str {
        self.api.kind()
    }

    fn capacity(&self) -> Capacity {
        if let Some(reason) = self.down_reason() {
            return Capacity::Unavailable(reason);
        }
        let held: u64 = lock(&self.books).held.values().map(|h| h.footprint).sum();
        let budget = self.settings.max_bytes.map(|m| m.saturating_sub(held));
        // The engine takes the tier's `reserved_gb` off a `Free` reading
        // itself (room.rs): the GPU's free bytes go up as they are.
        let gpu = self.settings.gpu_free();
        match (budget, gpu) {
            (Some(a), Some(b)) => Capacity::Free(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Capacity::Free(a),
            (None, None) => Capacity::Unbounded,
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.last_now = now;
        if let Some(reason) = self.down_reason() {
            return Err(reason);
        }
        let model = order.model.to_string();
        {
            let b = lock(&self.books);
            if b.held.contains_key(&model) || b.loading.values().any(|l| l.model == model) {
                return Err(format!("model {model} is already loaded or loading in {}", order.to_name));
            }
        }
        let mref = ModelRef {
            name: model.clone(),
            files: order.files.cloned(),
        };
        let ctl = self.settings.control(self.settings.load_timeout);
        let shared = MoveShared::new(order.bytes.max(1));
        lock(&self.books).loading.insert(
            order.job,
            Loading {
                model: model.clone(),
                id: None,
                ctl: ctl.clone(),
                shared: shared.clone(),
            },
        );
        let (api, settings, books) = (self.api.clone(), self.settings.clone(), self.books.clone());
        let load = LoadJob {
            job: order.job,
            model: mref,
            bytes: order.bytes,
            ctl,
            shared,
        };
        let job = order.job;
        let spawned = std::thread::Builder::new().name("tierd-engine-load".into()).spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_load(&*api, &settings, &books, &load)))
                .unwrap_or_else(|p| Err(EngineError::refused(panic_message(&*p))));
            let mut b = lock(&books);
            b.loading.remove(&job);
            match r {
                Ok(done) => {
                    b.reported.remove(&done.id);
                    b.events.push(MoveEvent::LoadTimed {
                        tier: 0,
                        model: load.model.name.clone(),
                        seconds: done.seconds,
                        resident: done.resident,
                        footprint: done.footprint,
                    });
                    b.held.insert(
                        load.model.name.clone(),
                        Held {
                            id: done.id,
                            footprint: done.footprint,
                            footprint_source: done.footprint_source,
                            pin: done.pin,
                            activity: None,
                        },
                    );
                    b.events.push(MoveEvent::Finished {
                        job,
                        checksums: None,
                        mtimes: None,
                    });
                }
                Err(e) if load.ctl.cancelled() => {
                    tracing::debug!(error = %e, "engine load cancelled");
                    b.events.push(MoveEvent::Cancelled { job });
                }
                Err(e) => {
                    if e.down {
                        b.health.record(&Err(e.clone()));
                    }
                    b.events.push(MoveEvent::Failed {
                        job,
                        message: format!("{} load of {}: {}", api.kind(), load.model.name, e.message),
                        retryable: e.down,
                    });
                }
            }
        });
        if let Err(e) = spawned {
            lock(&self.books).loading.remove(&order.job);
            return Err(format!("cannot start an engine load thread: {e}"));
        }
        Ok(())
    }

    fn cancel_move(&mut self, now: f64, job: JobKey) {
        self.last_now = now;
        let b = lock(&self.books);
        if let Some(l) = b.loading.get(&job) {
            l.ctl.cancel();
            l.shared.cancel.store(true, Ordering::Relaxed);
        }
        // A move out waiting for the engine's unload stops waiting; where
        // the engine unloads all the same, the poller sees it as the
        // engine's own.
        if let Some(ctl) = b.moving_out.get(&job) {
            ctl.cancel();
        }
    }

    fn progress(&self, _now: f64, job: JobKey) -> f64 {
        // Pinning is the measurable half; the engine's load the other.
        lock(&self.books)
            .loading
            .get(&job)
            .map(|l| l.shared.progress() * 0.5 + if l.id.is_some() { 0.5 } else { 0.0 })
            .unwrap_or(0.0)
    }

    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        self.last_now = now;
        let drained = {
            let mut b = lock(&self.books);
            let mut events = std::mem::take(&mut b.events);
            // An engine-side load the engine has undone since (its latest
            // look no longer lists it) is stale: the books stay as they are.
            let seen: HashSet<&str> = b.seen.iter().map(|l| l.id.as_str()).collect();
            events.retain(|e| !matches!(e, MoveEvent::EngineLoaded { id, .. } if !seen.contains(id.as_str())));
            events
        };
        // `tier: 0` in the engine events is stamped by the engine.
        events.extend(drained.into_iter().map(|event| DriverEvent { at: now, event }));
    }

    fn next_event_time(&self) -> Option<f64> {
        // The poller works on its own clock: look at its news as often as
        // it can have some (loads finish within a poll; external changes
        // within `poll_s`).
        let poll_s = self.settings.poll.as_secs_f64().max(super::POLL_EVERY_S);
        let busy = {
            let b = lock(&self.books);
            !b.loading.is_empty() || !b.moving_out.is_empty()
        };
        Some(self.last_now + if busy { LOADING_POLL_S } else { poll_s.min(0.25) })
    }

    fn moving_out(&mut self, model: &str, to_kind: &str) {
        let to = if to_kind == "pagecache" { UnloadTo::Ram } else { UnloadTo::Storage };
        lock(&self.books).leaving_to.insert(model.to_string(), to);
    }

    fn start_move_out(&mut self, _now: f64, job: JobKey, model: &str, to_kind: &str) -> Result<bool, String> {
        let to = if to_kind == "pagecache" { UnloadTo::Ram } else { UnloadTo::Storage };
        let id = {
            let mut b = lock(&self.books);
            // Not held (the engine let go on its own meanwhile): nothing to
            // wait for.
            let Some(id) = b.held.get(model).map(|h| h.id.clone()) else {
                return Ok(false);
            };
            // Its disappearance from the engine is ours, not external.
            b.unloading.insert(id.clone());
            id
        };
        // Bounded by `load_timeout_s`, and cancelled with the move.
        let ctl = self.settings.control(self.settings.load_timeout);
        lock(&self.books).moving_out.insert(job, ctl.clone());
        let (api, books, name) = (self.api.clone(), self.books.clone(), model.to_string());
        let gate = self.settings.unload_gate.clone();
        let unload_id = id.clone();
        let spawned = std::thread::Builder::new().name("tierd-engine-unload".into()).spawn(move || {
            // Every API confirms on the engine (llama-server's GET /models,
            // Ollama's /api/ps, vLLM's /is_sleeping) before answering Ok.
            let gate = gate.lock().unwrap_or_else(PoisonError::into_inner);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api.unload(&unload_id, to, &ctl)))
                .unwrap_or_else(|p| Err(EngineError::refused(panic_message(&*p))));
            drop(gate);
            let mut b = lock(&books);
            b.unloading.remove(&unload_id);
            b.moving_out.remove(&job);
            let pin = match r {
                Ok(()) => {
                    b.reported.remove(&unload_id);
                    b.unload_errors.remove(&name);
                    b.events.push(MoveEvent::MovedOut { job, error: None });
                    // Gone from the tier: the target holds it now (its
                    // own pin where it is RAM).
                    b.held.remove(&name).and_then(|h| h.pin)
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "engine unload failed; the move out fails");
                    b.events.push(MoveEvent::MovedOut {
                        job,
                        error: Some(e.message),
                    });
                    None
                }
            };
            drop(b);
            if let Some(p) = pin {
                p.release();
            }
        });
        if let Err(e) = spawned {
            let mut b = lock(&self.books);
            b.unloading.remove(&id);
            b.moving_out.remove(&job);
            return Err(format!("cannot start an engine unload thread: {e}"));
        }
        Ok(true)
    }

    fn release(&mut self, model: &str, _files: Option<&ModelFiles>) {
        let (held, to) = {
            let mut b = lock(&self.books);
            let to = b.leaving_to.remove(model).unwrap_or(UnloadTo::Storage);
            (b.held.remove(model), to)
        };
        if let Some(h) = held {
            self.spawn_unload(model.to_string(), h, to);
        }
    }

    fn report_again(&mut self, id: &str) {
        lock(&self.books).reported.remove(id);
    }

    fn holds(&self, model: &str) -> Option<bool> {
        let b = lock(&self.books);
        Some(b.held.contains_key(model) || b.restoring.contains_key(model))
    }

    fn adopt(&mut self, model: &str, files: Option<&ModelFiles>, id: &str) {
        let mut b = lock(&self.books);
        let bytes = files.map(|f| f.bytes).unwrap_or(0);
        let reported = b.seen.iter().find(|l| l.id == id).and_then(|l| l.bytes);
        let (footprint, source) = match reported {
            Some(r) => (r, "engine"),
            None => ((bytes as f64 * self.settings.footprint_factor).round() as u64, "factor"),
        };
        b.held.insert(
            model.to_string(),
            Held {
                id: id.to_string(),
                footprint,
                footprint_source: source,
                // Pinned below, off the lock.
                pin: None,
                activity: None,
            },
        );
        drop(b);
        // The engine reads the files again on its next load: keep them
        // resident like a load tierd made.
        let Some(files) = files else { return };
        let (paths, books, model) = (files.origin_paths(), self.books.clone(), model.to_string());
        let spawned = std::thread::Builder::new().name("tierd-engine-pin".into()).spawn(move || {
            let shared = MoveShared::new(1);
            match pin_files(&paths, &shared, None) {
                Ok(pin) => {
                    let mut b = lock(&books);
                    match b.held.get_mut(&model) {
                        Some(h) if h.pin.is_none() => h.pin = Some(pin),
                        // Gone again meanwhile: let go.
                        _ => {
                            drop(b);
                            pin.release();
                        }
                    }
                }
                Err(e) => tracing::warn!(model = %model, error = ?e, "cannot pin an engine-loaded model's files"),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a pin thread");
        }
    }

    fn restore(&mut self, model: &str, files: &ModelFiles) {
        lock(&self.books).restoring.insert(model.to_string(), Some(Arc::new(files.clone())));
    }

    fn details(&self) -> Map<String, Value> {
        let mut m = self.api.details();
        m.insert("driver".into(), json!(self.api.kind()));
        m.insert("engine_tier".into(), json!(true));
        let b = lock(&self.books);
        m.insert("health".into(), b.health.to_json());
        if !b.health.up {
            let reason = b.health.last_error.clone().unwrap_or_else(|| "engine not reached yet".into());
            m.insert("unavailable_reason".into(), json!(reason));
        }
        let mut loaded: Vec<Value> = b
            .held
            .iter()
            .map(|(name, h)| {
                json!({
                    "model": name,
                    "engine_id": h.id,
                    "footprint_gb": bytes_to_gb(h.footprint),
                    "footprint_source": h.footprint_source,
                    "pinned": h.pin.as_ref().map(|p| p.locked),
                })
            })
            .collect();
        loaded.sort_by(|a, b| a["model"].as_str().cmp(&b["model"].as_str()));
        m.insert("loaded".into(), Value::Array(loaded));
        let engine_set: Vec<Value> = b
            .seen
            .iter()
            .map(|l| json!({"id": l.id, "path": l.path, "bytes": l.bytes}))
            .collect();
        m.insert("engine_loaded".into(), Value::Array(engine_set));
        m.insert("footprint_factor".into(), json!(self.settings.footprint_factor));
        if let Some(free) = self.settings.gpu_free() {
            m.insert("gpu_free_gb".into(), json!(bytes_to_gb(free)));
            m.insert("gpu_reserved_gb".into(), json!(bytes_to_gb(self.settings.reserved_bytes)));
        }
        m.insert("poll_s".into(), json!(self.settings.poll.as_secs_f64()));
        m.insert("load_timeout_s".into(), json!(self.settings.load_timeout.as_secs_f64()));
        if let Some(e) = &b.upkeep_error {
            m.insert("upkeep_error".into(), json!(e));
        }
        if !b.unload_errors.is_empty() {
            m.insert("unload_errors".into(), json!(b.unload_errors));
        }
        m
    }

    fn drop_copy(&mut self, model: &str) {
        {
            let mut b = lock(&self.books);
            let busy = b.held.contains_key(model) || b.dropping.contains(model) || b.loading.values().any(|l| l.model == model);
            if busy || b.drop_retry.get(model).is_some_and(|at| Instant::now() < *at) {
                return;
            }
            b.dropping.insert(model.to_string());
        }
        let (api, settings, books, name) = (self.api.clone(), self.settings.clone(), self.books.clone(), model.to_string());
        let spawned = std::thread::Builder::new().name("tierd-engine-drop".into()).spawn(move || {
            let mref = ModelRef {
                name: name.clone(),
                files: None,
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let id = api.resolve(&mref)?;
                // Woken for a moment on the way: not a load of anyone's.
                lock(&books).unloading.insert(id.clone());
                let r = api.drop_copy(&id, &settings.control(settings.load_timeout));
                let mut b = lock(&books);
                b.unloading.remove(&id);
                b.reported.remove(&id);
                r
            }))
            .unwrap_or_else(|p| Err(EngineError::refused(panic_message(&*p))));
            let mut b = lock(&books);
            b.dropping.remove(&name);
            match r {
                Ok(()) => {
                    b.drop_retry.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "cannot drop the engine's CPU copy; retrying in a minute");
                    b.drop_retry.insert(name, Instant::now() + DROP_RETRY);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start an engine thread");
            lock(&self.books).dropping.remove(model);
        }
    }

    fn ram_held(&self) -> super::RamHeld {
        let b = lock(&self.books);
        let pinned = b
            .held
            .iter()
            .filter_map(|(m, h)| h.pin.as_ref().map(|p| (m.clone(), p.bytes)))
            .chain(b.lingering.iter().map(|(_, m, p)| (m.clone(), p.bytes)))
            .collect();
        drop(b);
        super::RamHeld {
            pinned,
            copies: self.api.copies_in_ram(),
        }
    }

    fn resident_fraction(&self, model: &str, files: Option<&ModelFiles>) -> Option<f64> {
        lock(&self.books).held.contains_key(model).then_some(())?;
        let files = files?;
        Some(if files_resident(Some(files)) { 1.0 } else { 0.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine in memory: what it has loaded, whether it answers, and
    /// whether loads hang.
    #[derive(Default)]
    struct Fake {
        state: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        loaded: Vec<Loaded>,
        down: bool,
        hang: bool,
        /// Unloads never finish (until cancelled or past the deadline).
        hang_unload: bool,
        unloads: Vec<String>,
    }

    impl Fake {
        fn st(&self) -> MutexGuard<'_, FakeState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }
        fn up(&self) -> Result<(), EngineError> {
            if self.st().down {
                Err(EngineError {
                    message: "connection refused".into(),
                    down: true,
                })
            } else {
                Ok(())
            }
        }
    }

    fn entry(id: &str) -> Loaded {
        Loaded {
            id: id.into(),
            path: None,
            bytes: None,
            activity: None,
        }
    }

    impl EngineApi for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn loaded(&self) -> Result<Vec<Loaded>, EngineError> {
            self.up()?;
            Ok(self.st().loaded.clone())
        }
        fn resolve(&self, model: &ModelRef) -> Result<String, EngineError> {
            self.up()?;
            if model.name == "unknown" {
                return Err(EngineError::refused("model 'unknown' not found"));
            }
            Ok(model.name.clone())
        }
        fn load(&self, id: &str, _model: &ModelRef, ctl: &LoadControl) -> Result<(), EngineError> {
            self.up()?;
            // Half loaded: the engine lists it before it is ready.
            self.st().loaded.push(entry(id));
            while self.st().hang {
                ctl.wait(&format!("loading {id}"))?;
            }
            Ok(())
        }
        fn unload(&self, id: &str, _to: UnloadTo, ctl: &LoadControl) -> Result<(), EngineError> {
            while self.st().hang_unload {
                ctl.wait(&format!("unloading {id}"))?;
            }
            let mut st = self.st();
            st.unloads.push(id.to_string());
            st.loaded.retain(|l| l.id != id);
            Ok(())
        }
    }

    fn settings() -> EngineSettings {
        EngineSettings {
            tier: "gpu0".into(),
            max_bytes: Some(10_000),
            reserved_bytes: 0,
            poll: Duration::from_millis(10),
            load_timeout: Duration::from_millis(300),
            footprint_factor: 1.5,
            gpu: None,
            wake: Arc::default(),
            unload_gate: Arc::default(),
        }
    }

    fn order<'a>(job: JobKey, model: &'a Arc<str>) -> MoveOrder<'a> {
        MoveOrder {
            job,
            model,
            files: None,
            bytes: 1000,
            from: 1,
            to: 0,
            from_name: "ram",
            to_name: "gpu0",
            source: super::super::Source::Origin,
            expected_s: 0.0,
            bandwidth_mb_s: None,
        }
    }

    /// Polls the tier until an event matching `want` arrives (5 s at most).
    fn wait_event(t: &mut EngineTier<Fake>, want: impl Fn(&MoveEvent) -> bool) -> Vec<MoveEvent> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(5) {
            let mut events = Vec::new();
            t.poll(0.0, &mut events);
            seen.extend(events.into_iter().map(|e| e.event));
            if seen.iter().any(&want) {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no such event; saw {seen:?}");
    }

    fn up_tier() -> EngineTier<Fake> {
        let mut t = EngineTier::open(Fake::default(), settings()).expect("open");
        let start = Instant::now();
        while t.down_reason().is_some() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(t.capacity(), Capacity::Free(10_000));
        t.last_now = 0.0;
        t
    }

    #[test]
    fn a_load_finishes_with_its_time_and_the_factor_footprint() {
        let mut t = up_tier();
        let m: Arc<str> = "m".into();
        t.start_move(0.0, &order(1, &m)).expect("start");
        let ev = wait_event(&mut t, |e| matches!(e, MoveEvent::Finished { job: 1, .. }));
        let timed = ev.iter().find_map(|e| match e {
            MoveEvent::LoadTimed { footprint, seconds, .. } => Some((*footprint, *seconds)),
            _ => None,
        });
        assert!(timed.is_some_and(|(f, s)| f == 1500 && s >= 0.0), "{ev:?}");
        assert_eq!(t.capacity(), Capacity::Free(8_500));
        // Released toward storage: unloaded.
        t.moving_out("m", "storage");
        t.release("m", None);
        let start = Instant::now();
        while t.api().st().unloads.is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(t.api().st().unloads, vec!["m".to_string()]);
    }

    #[test]
    fn a_cancel_stops_the_wait_for_an_unload() {
        let mut t = up_tier();
        let m: Arc<str> = "m".into();
        t.start_move(0.0, &order(1, &m)).expect("start");
        wait_event(&mut t, |e| matches!(e, MoveEvent::Finished { job: 1, .. }));
        t.api().st().hang_unload = true;
        assert_eq!(t.start_move_out(0.0, 5, "m", "pagecache"), Ok(true));
        std::thread::sleep(Duration::from_millis(20));
        t.cancel_move(0.0, 5);
        let ev = wait_event(&mut t, |e| matches!(e, MoveEvent::MovedOut { job: 5, .. }));
        let error = ev.iter().find_map(|e| match e {
            MoveEvent::MovedOut { job: 5, error } => error.clone(),
            _ => None,
        });
        // Not the deadline's "timed out": the cancel ended the wait.
        assert!(error.as_deref().is_some_and(|e| e.contains("cancelled")), "{error:?}");
        assert!(
            t.details()["loaded"].as_array().is_some_and(|l| l.len() == 1),
            "still held: {:?}",
            t.details()
        );
    }

    #[test]
    fn a_load_that_times_out_fails_and_unloads_the_half_loaded_model() {
        let mut t = up_tier();
        t.api().st().hang = true;
        let m: Arc<str> = "slow".into();
        t.start_move(0.0, &order(2, &m)).expect("start");
        let ev = wait_event(&mut t, |e| matches!(e, MoveEvent::Failed { job: 2, .. }));
        let msg = ev
            .iter()
            .find_map(|e| match e {
                MoveEvent::Failed { message, .. } => Some(message.clone()),
                _ => None,
            })
            .unwrap_or_default();
        assert!(msg.contains("timed out"), "{msg}");
        assert!(t.api().st().loaded.is_empty(), "the half-loaded model was unloaded");
        assert_eq!(t.api().st().unloads, vec!["slow".to_string()]);
        // Not taken for an engine-side load afterwards.
        std::thread::sleep(Duration::from_millis(50));
        let mut events = Vec::new();
        t.poll(0.0, &mut events);
        assert!(
            events.iter().all(|e| !matches!(e.event, MoveEvent::EngineLoaded { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn an_unknown_model_fails_with_the_engines_message() {
        let mut t = up_tier();
        let m: Arc<str> = "unknown".into();
        t.start_move(0.0, &order(3, &m)).expect("start");
        let ev = wait_event(&mut t, |e| matches!(e, MoveEvent::Failed { job: 3, .. }));
        assert!(format!("{ev:?}").contains("model 'unknown' not found"), "{ev:?}");
    }

    #[test]
    fn a_cancelled_load_is_rolled_back() {
        let mut t = up_tier();
        t.api().st().hang = true;
        let m: Arc<str> = "c".into();
        t.start_move(0.0, &order(4, &m)).expect("start");
        std::thread::sleep(Duration::from_millis(30));
        t.cancel_move(0.0, 4);
        wait_event(&mut t, |e| matches!(e, MoveEvent::Cancelled { job: 4 }));
        assert!(t.api().st().loaded.is_empty());
    }

    #[test]
    fn engine_side_loads_and_unloads_are_reported_once() {
        let mut t = up_tier();
        t.api().st().loaded.push(entry("other"));
        let ev = wait_event(&mut t, |e| matches!(e, MoveEvent::EngineLoaded { id, .. } if id == "other"));
        assert_eq!(ev.iter().filter(|e| matches!(e, MoveEvent::EngineLoaded { .. })).count(), 1);
        t.adopt("other", None, "other");
        t.api().st().loaded.clear();
        let ev = wait_event(&mut t, |e| matches!(e, MoveEvent::EngineUnloaded { model, .. } if model == "other"));
        assert_eq!(ev.iter().filter(|e| matches!(e, MoveEvent::EngineUnloaded { .. })).count(), 1);
    }

    #[test]
    fn a_down_engine_makes_the_tier_unavailable_and_recovers() {
        let mut t = up_tier();
        t.api().st().down = true;
        let start = Instant::now();
        while t.down_reason().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        match t.capacity() {
            Capacity::Unavailable(r) => assert!(r.contains("down") && r.contains("connection refused"), "{r}"),
            c => panic!("capacity {c:?}"),
        }
        let m: Arc<str> = "m".into();
        let err = t.start_move(0.0, &order(5, &m)).unwrap_err();
        assert!(err.contains("down"), "{err}");
        let h = t.health();
        assert!(!h.up && h.consecutive_failures >= 1, "{h:?}");
        assert_eq!(t.details()["health"]["up"], json!(false));
        t.api().st().down = false;
        let start = Instant::now();
        while t.down_reason().is_some() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(t.health().up);
        assert!(t.health().last_success.is_some());
    }
}
