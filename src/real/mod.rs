//! The real hardware backend: it owns the model files tierd manages on a
//! machine, the page-cache pins, the copies in `dir` tiers, the GPU
//! readings, and the state file that lets all of it survive a restart.
//!
//! Drivers (the `driver` of each `[[tiers]]` entry):
//! - `pagecache`: the RAM tier. A model in it has its origin files mapped and
//!   locked in memory (`mlock` in 64 MiB chunks on a worker thread); where
//!   the lock limit forbids it the pages are populated unlocked and
//!   `tier_status` says so. Capacity is `MemAvailable` from `/proc/meminfo`.
//! - `dir`: a directory. A model in it has a checksummed, fsynced, verified
//!   copy at `<path>/<model>/`, renamed into place atomically. Capacity from
//!   `statvfs`.
//! - `gpu`: observed through NVML; moves into it are refused.
//! - `storage`: the origin path a model was registered with; never modified.
//!
//! Safety rule: a model always has a complete copy. The origin is only ever
//! read; a `dir` copy counts only once verified and durably renamed, and is
//! recorded in the state file before the source copy is removed.
//!
//! Layout: [`sys`] (Linux calls), [`files`] (names and file lists),
//! [`worker`] (pin and copy threads), [`gpu`] (NVML), [`store`] (state file),
//! [`bench`] (the promotion and copy benchmark).

pub mod bench;
pub mod files;
pub mod gpu;
pub mod store;
pub mod sys;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};

use serde_json::{Map, Value, json};

use crate::config::{Config, ModelConfig, bytes_to_gb};
use crate::tiers::{Backend, Capacity, JobKey, MoveEvent, MoveOrder};

use self::files::{ModelFile, PARTIAL_SUFFIX, check_model_name, list_files, origin_file};
use self::gpu::{GPU_MOVES_UNSUPPORTED, GpuProbe, gpu_index};
use self::store::{ModelRecord, StateFile, StateStore};
use self::worker::{CopyFile, MoveShared, Pin, WorkError, copy_dir, copy_model, pin_files};

/// Why the real backend could not start or take a model.
#[derive(Debug, thiserror::Error)]
pub enum RealError {
    /// The configuration does not describe usable real tiers.
    #[error("invalid real-backend config: {0}")]
    Config(String),
    /// A model name that could escape a tier directory.
    #[error("{0}")]
    BadModelName(String),
    /// A model path that cannot be used.
    #[error("{0}")]
    BadPath(String),
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The state file cannot be used.
    #[error("{0}")]
    State(String),
}

/// What a tier is backed by.
#[derive(Debug, Clone)]
enum Driver {
    PageCache,
    Dir(PathBuf),
    Gpu(u32),
    Storage,
}

impl Driver {
    fn name(&self) -> &'static str {
        match self {
            Driver::PageCache => "pagecache",
            Driver::Dir(_) => "dir",
            Driver::Gpu(_) => "gpu",
            Driver::Storage => "storage",
        }
    }
}

/// What a worker thread reports when it stops.
enum Outcome {
    Pinned(Pin),
    Copied(Vec<String>),
    /// Nothing to carry (moves to storage, or a pin source released).
    Ready,
    Error(WorkError),
}

struct Running {
    order: MoveOrder,
    shared: Arc<MoveShared>,
}

/// Marks an old copy being deleted in the background (`.<model>.tierd-trash-N`).
const TRASH_MARK: &str = ".tierd-trash-";

/// Startup re-pins run under keys above this (never engine jobs).
const RESTORE_KEY_BASE: JobKey = u64::MAX / 2;

/// The real backend. See the module docs.
pub struct RealBackend {
    tier_names: Vec<String>,
    drivers: Vec<Driver>,
    gpu: GpuProbe,
    models: BTreeMap<String, ModelRecord>,
    /// Live pins of models in `pagecache` tiers.
    pins: HashMap<String, Pin>,
    running: HashMap<JobKey, Running>,
    /// Startup re-pins in progress: key → model.
    restoring: HashMap<JobKey, String>,
    /// Why the last pin or re-pin of a model could not lock, per model.
    pin_errors: BTreeMap<String, String>,
    tx: Sender<(JobKey, Outcome)>,
    rx: Receiver<(JobKey, Outcome)>,
    pending: Vec<MoveEvent>,
    store: StateStore,
    state_dir: PathBuf,
    last_now: f64,
}

impl std::fmt::Debug for RealBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealBackend")
            .field("tiers", &self.tier_names)
            .field("models", &self.models.len())
            .field("running", &self.running.len())
            .finish()
    }
}

/// What start-up reconciliation found and did.
#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
    /// Partial copies of interrupted moves (and old copies whose background
    /// removal was interrupted) that were removed.
    pub removed_partials: Vec<PathBuf>,
    /// Complete copies no model's placement refers to, removed.
    pub removed_orphans: Vec<PathBuf>,
    /// Models whose files vanished, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// Models whose copy was damaged and that fell back to storage.
    pub fell_back: Vec<(String, String)>,
    /// Models being re-pinned in memory.
    pub repinning: Vec<String>,
    /// Entries in tier directories that tierd does not know (left alone).
    pub unknown_entries: Vec<PathBuf>,
}

/// The real backend opened on a configuration, with its state reconciled.
pub struct RealRuntime {
    /// The backend, to hand to `Engine::new`.
    pub backend: Box<dyn Backend>,
    /// The configuration to build the engine with: the models and limits
    /// from the state file, each model in the tier that really holds it.
    pub config: Config,
    /// Handle to persist the engine's limits, usage and job history.
    pub store: StateStore,
    pub report: ReconcileReport,
    /// Jobs of the previous run, newest first (as `list_jobs` showed them).
    pub previous_jobs: Vec<Value>,
    /// Models the configuration's catalog wants in a faster tier than where
    /// they are (the server may submit these moves after start).
    pub wanted_moves: Vec<(String, String)>,
}

impl std::fmt::Debug for RealRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealRuntime").field("report", &self.report).finish()
    }
}

/// Applies what `Engine::new` cannot take from the configuration: the
/// models pinned (`pin_model`) before the restart. Call it once after
/// building the engine from a [`RealRuntime`].
pub fn restore_pins(engine: &mut crate::tiers::Engine, store: &StateStore) {
    for (name, usage) in store.snapshot().engine.models {
        if usage.pinned {
            let _ = engine.set_pinned(&name, true);
        }
    }
}

/// Builds the real backend for `cfg` (reconciling its state directory).
/// Prefer [`RealRuntime::open`], which also gives the engine configuration
/// with the persisted models.
pub fn build_backend(cfg: &Config) -> Result<Box<dyn Backend>, RealError> {
    Ok(RealRuntime::open(cfg)?.backend)
}

impl RealRuntime {
    /// Opens the real backend: checks the tiers, loads the state file,
    /// reconciles it with the files (removes partial copies, checks what
    /// each tier holds, re-pins RAM-tier models, marks models whose files
    /// vanished unavailable) and registers the configuration's catalog.
    pub fn open(cfg: &Config) -> Result<RealRuntime, RealError> {
        Self::open_with_gpu(cfg, GpuProbe::open)
    }

    /// As [`RealRuntime::open`], with the NVML probe given (tests).
    pub fn open_with_gpu(cfg: &Config, gpu: impl FnOnce() -> GpuProbe) -> Result<RealRuntime, RealError> {
        let state_dir = cfg
            .state_dir
            .clone()
            .ok_or_else(|| RealError::Config("state_dir is required with the real backend".into()))?;
        let drivers = drivers_of(cfg)?;
        let probe = if drivers.iter().any(|d| matches!(d, Driver::Gpu(_))) {
            gpu()
        } else {
            GpuProbe::Missing("no gpu tier configured".into())
        };
        let (store, file) = StateStore::open(&state_dir)?;
        let (tx, rx) = channel();
        let mut b = RealBackend {
            tier_names: cfg.tiers.iter().map(|t| t.name.clone()).collect(),
            drivers,
            gpu: probe,
            models: BTreeMap::new(),
            pins: HashMap::new(),
            running: HashMap::new(),
            restoring: HashMap::new(),
            pin_errors: BTreeMap::new(),
            tx,
            rx,
            pending: Vec::new(),
            store: store.clone(),
            state_dir,
            last_now: 0.0,
        };
        let report = b.reconcile(&file)?;
        // The configuration's catalog: models not yet known are registered
        // in storage; a tier they ask for becomes a wanted move.
        let mut wanted_moves = Vec::new();
        for mc in &cfg.models {
            let Some(path) = &mc.path else {
                return Err(RealError::Config(format!("model {:?} needs a path with the real backend", mc.name)));
            };
            if !b.models.contains_key(&mc.name) {
                b.add_model(&mc.name, path)?;
            }
            if let (Some(t), Some(rec)) = (&mc.tier, b.models.get(&mc.name))
                && *t != rec.tier
                && b.tier_index(t).is_some_and(|i| b.tier_index(&rec.tier).is_some_and(|j| i < j))
            {
                wanted_moves.push((mc.name.clone(), t.clone()));
            }
        }
        b.persist()?;
        let config = engine_config(cfg, &b, &file);
        Ok(RealRuntime {
            backend: Box::new(b),
            config,
            store,
            report,
            previous_jobs: file.engine.jobs.clone(),
            wanted_moves,
        })
    }
}

/// The drivers of the configured tiers.
fn drivers_of(cfg: &Config) -> Result<Vec<Driver>, RealError> {
    let n = cfg.tiers.len();
    let mut gpus = 0u32;
    let mut out = Vec::with_capacity(n);
    for (i, t) in cfg.tiers.iter().enumerate() {
        let last = i + 1 == n;
        let default = if last {
            "storage"
        } else if i == 0 {
            "pagecache"
        } else {
            "dir"
        };
        let d = match t.driver.as_deref().unwrap_or(default) {
            "pagecache" => Driver::PageCache,
            "dir" => {
                let p = t
                    .path
                    .clone()
                    .ok_or_else(|| RealError::Config(format!("tier {:?} (driver dir) needs a path", t.name)))?;
                std::fs::create_dir_all(&p).map_err(|source| RealError::Io { path: p.clone(), source })?;
                let p = p.canonicalize().map_err(|source| RealError::Io { path: p.clone(), source })?;
                Driver::Dir(p)
            }
            "gpu" => {
                gpus += 1;
                Driver::Gpu(gpu_index(&t.name, gpus - 1))
            }
            "storage" => Driver::Storage,
            other => {
                return Err(RealError::Config(format!(
                    "tier {:?}: unknown driver {other:?} (known: pagecache, dir, gpu, storage)",
                    t.name
                )));
            }
        };
        if last != matches!(d, Driver::Storage) {
            return Err(RealError::Config(format!(
                "tier {:?}: the last tier, and only it, must use the storage driver",
                t.name
            )));
        }
        out.push(d);
    }
    let dirs: Vec<&PathBuf> = out
        .iter()
        .filter_map(|d| match d {
            Driver::Dir(p) => Some(p),
            _ => None,
        })
        .collect();
    for (i, a) in dirs.iter().enumerate() {
        if dirs.iter().skip(i + 1).any(|b| a.starts_with(b) || b.starts_with(a)) {
            return Err(RealError::Config(format!("dir tier {} overlaps another dir tier", a.display())));
        }
    }
    Ok(out)
}

/// The engine configuration: the models the backend holds, in their tiers,
/// with persisted usage counts and limits.
fn engine_config(cfg: &Config, b: &RealBackend, file: &StateFile) -> Config {
    let mut out = cfg.clone();
    out.models = b
        .models
        .iter()
        .map(|(name, r)| ModelConfig {
            name: name.clone(),
            size_gb: bytes_to_gb(r.bytes),
            tier: Some(r.tier.clone()),
            usage: file.engine.models.get(name).map(|u| u.usage).unwrap_or(0),
            path: Some(r.origin.clone()),
        })
        .collect();
    for t in &mut out.tiers {
        let limits = &file.engine.limits;
        if let Some(v) = limits.get(&format!("{}_max_gb", t.name)).and_then(Value::as_f64)
            && t.max_gb.is_some()
            && t.min_max_gb.is_none_or(|m| v >= m)
        {
            t.max_gb = Some(v);
        }
        if let Some(v) = limits.get(&format!("{}_reserved_gb", t.name)).and_then(Value::as_f64)
            && t.reserved_gb.is_some()
            && t.min_reserved_gb.is_none_or(|m| v >= m)
        {
            t.reserved_gb = Some(v);
        }
    }
    if let Some(n) = file
        .engine
        .limits
        .get("max_concurrent_tasks")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
    {
        out.moves.max_concurrent = n as usize;
    }
    out
}

impl RealBackend {
    fn tier_index(&self, name: &str) -> Option<usize> {
        self.tier_names.iter().position(|t| t == name)
    }

    fn is_pagecache(&self, tier: &str) -> bool {
        self.tier_index(tier).is_some_and(|i| matches!(self.drivers[i], Driver::PageCache))
    }

    fn storage_name(&self) -> String {
        self.tier_names.last().cloned().unwrap_or_default()
    }

    fn persist(&self) -> Result<(), RealError> {
        self.store.save_models(&self.models)
    }

    /// Checks and measures a new model and records it in storage.
    fn add_model(&mut self, name: &str, path: &Path) -> Result<u64, RealError> {
        check_model_name(name)?;
        let origin = path
            .canonicalize()
            .map_err(|e| RealError::BadPath(format!("model path {}: {e}", path.display())))?;
        for d in &self.drivers {
            if let Driver::Dir(p) = d
                && origin.starts_with(p)
            {
                return Err(RealError::BadPath(format!(
                    "model path {} is inside tier directory {}; register the original files",
                    origin.display(),
                    p.display()
                )));
            }
        }
        if origin.starts_with(&self.state_dir) {
            return Err(RealError::BadPath(format!(
                "model path {} is inside the state directory",
                origin.display()
            )));
        }
        let single = std::fs::metadata(&origin).map(|m| m.is_file()).unwrap_or(false);
        let files = list_files(&origin)?;
        let bytes = files.iter().map(|f| f.size).sum();
        let tier = self.storage_name();
        self.models.insert(
            name.to_string(),
            ModelRecord {
                origin,
                single,
                files,
                bytes,
                tier,
            },
        );
        Ok(bytes)
    }

    /// Whether the origin of `r` is complete (every file present, same size).
    fn origin_problem(r: &ModelRecord) -> Option<String> {
        for f in &r.files {
            let p = origin_file(&r.origin, r.single, f);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => {
                    return Some(format!(
                        "origin file {} changed size ({} bytes, expected {})",
                        p.display(),
                        m.len(),
                        f.size
                    ));
                }
                Err(e) => return Some(format!("origin file {} is gone ({e})", p.display())),
            }
        }
        None
    }

    /// Whether the copy of `r` in dir `dir` is complete (every file, its size).
    fn copy_problem(dir: &Path, name: &str, r: &ModelRecord) -> Option<String> {
        let root = copy_dir(dir, name);
        for f in &r.files {
            let p = root.join(&f.rel);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => return Some(format!("copy {} has {} bytes, expected {}", p.display(), m.len(), f.size)),
                Err(e) => return Some(format!("copy {} is missing ({e})", p.display())),
            }
        }
        None
    }

    /// Start-up: brings the recorded state and the files into agreement.
    fn reconcile(&mut self, file: &StateFile) -> Result<ReconcileReport, RealError> {
        let mut report = ReconcileReport::default();
        // 1. Partial copies of interrupted moves go.
        for d in &self.drivers {
            let Driver::Dir(dir) = d else { continue };
            let entries = std::fs::read_dir(dir).map_err(|source| RealError::Io { path: dir.clone(), source })?;
            let mut removed = false;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(PARTIAL_SUFFIX) || (name.starts_with('.') && name.contains(TRASH_MARK)) {
                    let p = e.path();
                    let r = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    r.map_err(|source| RealError::Io { path: p.clone(), source })?;
                    report.removed_partials.push(p);
                    removed = true;
                } else if !file.models.contains_key(&name) {
                    report.unknown_entries.push(e.path());
                }
            }
            if removed {
                sys::fsync_dir(dir).map_err(|source| RealError::Io { path: dir.clone(), source })?;
            }
        }
        // 2. Each model: is its serving copy there? Copies elsewhere go.
        for (name, rec) in &file.models {
            let mut rec = rec.clone();
            let tier = match self.tier_index(&rec.tier) {
                Some(t) => t,
                None => {
                    tracing::warn!(model = %name, tier = %rec.tier, "tier no longer configured; model back in storage");
                    report
                        .fell_back
                        .push((name.clone(), format!("tier {} is no longer configured", rec.tier)));
                    self.tier_names.len() - 1
                }
            };
            let origin_problem = Self::origin_problem(&rec);
            let mut serving = tier;
            if let Driver::Dir(dir) = &self.drivers[tier]
                && let Some(problem) = Self::copy_problem(dir, name, &rec)
            {
                let p = copy_dir(dir, name);
                let _ = std::fs::remove_dir_all(&p);
                let _ = sys::fsync_dir(dir);
                report.fell_back.push((name.clone(), problem));
                serving = self.tier_names.len() - 1;
            }
            if let Driver::Gpu(_) = self.drivers[tier] {
                serving = self.tier_names.len() - 1;
            }
            rec.tier = self.tier_names[serving].clone();
            // Copies in tiers other than the serving one are leftovers of a
            // move interrupted after its rename: remove them.
            for (i, d) in self.drivers.iter().enumerate() {
                if let Driver::Dir(dir) = d
                    && i != serving
                {
                    let p = copy_dir(dir, name);
                    if p.exists() {
                        std::fs::remove_dir_all(&p).map_err(|source| RealError::Io { path: p.clone(), source })?;
                        let _ = sys::fsync_dir(dir);
                        report.removed_orphans.push(p);
                    }
                }
            }
            let dir_copy_ok = matches!(self.drivers[serving], Driver::Dir(_));
            if let Some(problem) = &origin_problem
                && !dir_copy_ok
            {
                report.unavailable.push((name.clone(), problem.clone()));
                self.pending.push(MoveEvent::ModelUnavailable {
                    model: name.clone(),
                    reason: problem.clone(),
                });
            }
            if matches!(self.drivers[serving], Driver::PageCache) && origin_problem.is_none() {
                let key = RESTORE_KEY_BASE + self.restoring.len() as JobKey;
                self.spawn_pin(key, &rec, None);
                self.restoring.insert(key, name.clone());
                report.repinning.push(name.clone());
            }
            if rec.tier != file.models[name].tier {
                tracing::warn!(model = %name, from = %file.models[name].tier, to = %rec.tier, "placement corrected at start");
            }
            self.models.insert(name.clone(), rec);
        }
        Ok(report)
    }

    /// Spawns a pin of `rec`'s origin files under `key`.
    fn spawn_pin(&mut self, key: JobKey, rec: &ModelRecord, bandwidth: Option<f64>) -> Arc<MoveShared> {
        let paths: Vec<(PathBuf, u64)> = rec
            .files
            .iter()
            .map(|f| (origin_file(&rec.origin, rec.single, f), f.size))
            .collect();
        let shared = MoveShared::new(rec.bytes);
        let s = shared.clone();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let out = match pin_files(&paths, &s, bandwidth) {
                Ok(p) => Outcome::Pinned(p),
                Err(e) => {
                    // Roll back fully: what the pin read leaves the cache too.
                    for (p, _) in &paths {
                        let _ = sys::drop_cache(p);
                    }
                    Outcome::Error(e)
                }
            };
            let _ = tx.send((key, out));
        });
        shared
    }

    /// Where to read `name`'s files from for a copy out of tier `from`.
    fn copy_sources(&self, name: &str, rec: &ModelRecord, from: usize) -> Vec<CopyFile> {
        let from_dir = match &self.drivers[from] {
            Driver::Dir(d) => Some(copy_dir(d, name)),
            _ => None,
        };
        rec.files
            .iter()
            .map(|f| CopyFile {
                src: match &from_dir {
                    Some(d) => d.join(&f.rel),
                    None => origin_file(&rec.origin, rec.single, f),
                },
                rel: f.rel.clone(),
                size: f.size,
                // A copy is checked against the checksum its own copy verified.
                expected: if from_dir.is_some() { f.blake3.clone() } else { None },
            })
            .collect()
    }

    /// Removes what a model leaves behind in tier `tier` (a copy or a pin).
    fn drop_from(&mut self, name: &str, tier: usize) {
        match &self.drivers[tier] {
            Driver::PageCache => {
                if let Some(p) = self.pins.remove(name) {
                    p.release();
                }
                self.pin_errors.remove(name);
            }
            Driver::Dir(dir) => {
                // Renamed out of the way at once, deleted in the background:
                // unlinking a large file can take a second, and the move is
                // already durable. A crash leaves a trash entry that the
                // next start removes.
                let p = copy_dir(dir, name);
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let trash = dir.join(format!(".{name}{TRASH_MARK}{stamp}"));
                match std::fs::rename(&p, &trash) {
                    Ok(()) => {
                        let _ = sys::fsync_dir(dir);
                        let dir = dir.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = std::fs::remove_dir_all(&trash) {
                                tracing::warn!(path = %trash.display(), error = %e, "cannot remove an old copy");
                            }
                            let _ = sys::fsync_dir(&dir);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "cannot move an old copy aside; removing it in place");
                        let _ = std::fs::remove_dir_all(&p);
                        let _ = sys::fsync_dir(dir);
                    }
                }
            }
            Driver::Gpu(_) | Driver::Storage => {}
        }
    }

    /// A worker finished: commit (record, persist, then clean the source)
    /// or roll back, and say what happened.
    fn complete(&mut self, key: JobKey, outcome: Outcome) -> Option<MoveEvent> {
        if let Some(model) = self.restoring.remove(&key) {
            match outcome {
                // Unregistered, or moved out of RAM, while it was re-pinned.
                Outcome::Pinned(pin) if self.models.get(&model).is_none_or(|r| !self.is_pagecache(&r.tier)) => pin.release(),
                Outcome::Pinned(pin) => {
                    if let Some(e) = &pin.lock_error {
                        self.pin_errors.insert(model.clone(), e.clone());
                    }
                    self.pins.insert(model, pin);
                }
                Outcome::Error(WorkError::Failed { message, .. }) => {
                    tracing::warn!(model = %model, error = %message, "re-pin at start failed");
                    self.pin_errors.insert(model, message);
                }
                _ => {}
            }
            return None;
        }
        let run = self.running.remove(&key)?;
        let order = run.order;
        let job = order.job;
        let name = order.model.to_string();
        let cancelled = run.shared.cancel.load(Ordering::Relaxed);
        let outcome = match outcome {
            Outcome::Error(WorkError::Cancelled) => return Some(MoveEvent::Cancelled { job }),
            Outcome::Error(WorkError::Failed {
                message,
                retryable,
                vanished,
            }) => {
                if vanished
                    && let Some(r) = self.models.get(&name)
                    && let Some(problem) = Self::origin_problem(r)
                    && !matches!(self.drivers[order.from], Driver::Dir(_))
                {
                    self.pending.push(MoveEvent::ModelUnavailable {
                        model: name.clone(),
                        reason: problem,
                    });
                }
                return Some(MoveEvent::Failed { job, message, retryable });
            }
            o => o,
        };
        // A cancel that arrived after the work was done: roll back.
        if cancelled {
            self.undo_target(&name, order.to, outcome);
            return Some(MoveEvent::Cancelled { job });
        }
        let Some(rec) = self.models.get(&name).cloned() else {
            self.undo_target(&name, order.to, outcome);
            return Some(MoveEvent::Failed {
                job,
                message: format!("model {name} was unregistered during the move"),
                retryable: false,
            });
        };
        let mut new = rec.clone();
        new.tier = self.tier_names[order.to].clone();
        let mut pin = None;
        match outcome {
            Outcome::Copied(hashes) => {
                for (f, h) in new.files.iter_mut().zip(hashes) {
                    f.blake3 = Some(h);
                }
            }
            Outcome::Pinned(p) => pin = Some(p),
            _ => {}
        }
        self.models.insert(name.clone(), new);
        if let Err(e) = self.persist() {
            // Not durable: the move did not happen.
            self.models.insert(name.clone(), rec);
            let back = match pin {
                Some(p) => Outcome::Pinned(p),
                None => Outcome::Ready,
            };
            self.undo_target(&name, order.to, back);
            return Some(MoveEvent::Failed {
                job,
                message: format!("could not record the move in the state file: {e}"),
                retryable: true,
            });
        }
        if let Some(p) = pin {
            if let Some(e) = &p.lock_error {
                self.pin_errors.insert(name.clone(), e.clone());
            }
            self.pins.insert(name.clone(), p);
        }
        // Only now, with the new copy durable and recorded, the source goes.
        self.drop_from(&name, order.from);
        Some(MoveEvent::Finished { job })
    }

    /// Rolls back what a finished worker put in tier `to`.
    fn undo_target(&mut self, name: &str, to: usize, outcome: Outcome) {
        match (outcome, &self.drivers[to]) {
            (Outcome::Pinned(p), _) => p.release(),
            (Outcome::Copied(_), Driver::Dir(dir)) => {
                let _ = std::fs::remove_dir_all(copy_dir(dir, name));
                let _ = sys::fsync_dir(dir);
            }
            _ => {}
        }
    }

    fn pagecache_details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Ok(a) = sys::meminfo("MemAvailable") {
            m.insert("mem_available_gb".into(), json!(bytes_to_gb(a)));
        }
        if let Ok(t) = sys::meminfo("MemTotal") {
            m.insert("mem_total_gb".into(), json!(bytes_to_gb(t)));
        }
        if let Ok(l) = sys::meminfo("Mlocked") {
            m.insert("mlocked_gb".into(), json!(bytes_to_gb(l)));
        }
        let locked = self.pins.values().all(|p| p.locked);
        m.insert("locked".into(), json!(locked));
        let errors: Map<String, Value> = self.pin_errors.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        if let Some(first) = self.pin_errors.values().next() {
            m.insert("lock_error".into(), json!(first));
        }
        m.insert("pin_errors".into(), Value::Object(errors));
        let mut pinned: Vec<&String> = self.pins.keys().collect();
        pinned.sort();
        m.insert("pinned_models".into(), json!(pinned));
        let mut restoring: Vec<&String> = self.restoring.values().collect();
        restoring.sort();
        m.insert("restoring".into(), json!(restoring));
        m
    }
}

impl Backend for RealBackend {
    fn name(&self) -> &'static str {
        "real"
    }

    fn capacity(&self, tier: usize) -> Capacity {
        match self.drivers.get(tier) {
            Some(Driver::PageCache) => sys::meminfo("MemAvailable").map(Capacity::Free).unwrap_or(Capacity::Unavailable),
            Some(Driver::Dir(p)) => sys::statvfs_available(p).map(Capacity::Free).unwrap_or(Capacity::Unavailable),
            Some(Driver::Gpu(i)) => self.gpu.free_bytes(*i).map(Capacity::Free).unwrap_or(Capacity::Unavailable),
            Some(Driver::Storage) | None => Capacity::Unbounded,
        }
    }

    fn accepts_moves_into(&self, tier: usize) -> Result<(), String> {
        match self.drivers.get(tier) {
            Some(Driver::Gpu(_)) => Err(GPU_MOVES_UNSUPPORTED.to_string()),
            _ => Ok(()),
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder) -> Result<(), String> {
        self.last_now = now;
        self.accepts_moves_into(order.to)?;
        let rec = self
            .models
            .get(&*order.model)
            .cloned()
            .ok_or_else(|| format!("model {} is not known to the real backend", order.model))?;
        if self.running.values().any(|r| r.order.model == order.model) {
            return Err(format!("model {} already has a move running", order.model));
        }
        let (Some(from), Some(to)) = (self.drivers.get(order.from).cloned(), self.drivers.get(order.to).cloned()) else {
            return Err("unknown tier".to_string());
        };
        if self.tier_names[order.from] != rec.tier {
            return Err(format!(
                "model {} is in {} according to the backend, not {}",
                order.model, rec.tier, self.tier_names[order.from]
            ));
        }
        let job = order.job;
        let bw = order.bandwidth_mb_s;
        let shared = match to {
            Driver::PageCache => {
                if let Some(p) = Self::origin_problem(&rec) {
                    return Err(format!("cannot pin {}: {p}", order.model));
                }
                self.spawn_pin(job, &rec, bw)
            }
            Driver::Dir(dir) => {
                let sources = self.copy_sources(&order.model, &rec, order.from);
                let shared = MoveShared::new(rec.bytes.saturating_mul(2));
                let s = shared.clone();
                let tx = self.tx.clone();
                let model = order.model.clone();
                std::thread::spawn(move || {
                    let out = match copy_model(&dir, &model, &sources, &s, bw) {
                        Ok(h) => Outcome::Copied(h),
                        Err(e) => Outcome::Error(e),
                    };
                    let _ = tx.send((job, out));
                });
                shared
            }
            Driver::Storage => {
                // The origin must be complete before the last other copy goes.
                if let Some(p) = Self::origin_problem(&rec)
                    && !matches!(from, Driver::PageCache)
                {
                    return Err(format!(
                        "refusing to demote {} to {}: {p}; the copy in {} is its last complete copy",
                        order.model, self.tier_names[order.to], rec.tier
                    ));
                }
                let shared = MoveShared::new(1);
                shared.done.store(1, Ordering::Relaxed);
                let _ = self.tx.send((job, Outcome::Ready));
                shared
            }
            Driver::Gpu(_) => return Err(GPU_MOVES_UNSUPPORTED.to_string()),
        };
        self.running.insert(
            job,
            Running {
                order: order.clone(),
                shared,
            },
        );
        Ok(())
    }

    fn cancel_move(&mut self, now: f64, job: JobKey) {
        self.last_now = now;
        if let Some(r) = self.running.get(&job) {
            r.shared.cancel.store(true, Ordering::Relaxed);
        }
    }

    fn progress(&self, _now: f64, job: JobKey) -> f64 {
        self.running.get(&job).map(|r| r.shared.progress()).unwrap_or(0.0)
    }

    fn poll(&mut self, now: f64, events: &mut Vec<MoveEvent>) {
        self.last_now = now;
        events.append(&mut self.pending);
        while let Ok((key, outcome)) = self.rx.try_recv() {
            if let Some(e) = self.complete(key, outcome) {
                events.push(e);
            }
            events.append(&mut self.pending);
        }
    }

    fn next_event_time(&self) -> Option<f64> {
        if !self.pending.is_empty() {
            Some(self.last_now)
        } else if !self.running.is_empty() || !self.restoring.is_empty() {
            // Wall-clock work: look again shortly.
            Some(self.last_now + 0.05)
        } else {
            None
        }
    }

    fn tier_details(&self, tier: usize) -> Map<String, Value> {
        let Some(d) = self.drivers.get(tier) else { return Map::new() };
        let mut m = match d {
            Driver::PageCache => self.pagecache_details(),
            Driver::Gpu(i) => return self.gpu.details(*i),
            Driver::Dir(p) => {
                let mut m = Map::new();
                m.insert("path".into(), json!(p));
                match sys::statvfs_available(p) {
                    Ok(a) => {
                        m.insert("fs_available_gb".into(), json!(bytes_to_gb(a)));
                    }
                    Err(e) => {
                        m.insert("unavailable_reason".into(), json!(format!("{}: {e}", p.display())));
                    }
                }
                let copies: Map<String, Value> = self
                    .models
                    .iter()
                    .filter(|(_, r)| r.tier == self.tier_names[tier])
                    .map(|(n, _)| (n.clone(), json!(copy_dir(p, n))))
                    .collect();
                m.insert("copies".into(), Value::Object(copies));
                m
            }
            Driver::Storage => Map::new(),
        };
        m.insert("driver".into(), json!(d.name()));
        m
    }

    fn resident_fraction(&self, model: &str, tier: usize) -> Option<f64> {
        let rec = self.models.get(model)?;
        if rec.bytes == 0 {
            return Some(1.0);
        }
        let present = match self.drivers.get(tier)? {
            // Memory: pages of the origin in the page cache (mincore).
            Driver::PageCache => rec
                .files
                .iter()
                .map(|f| {
                    sys::file_resident_fraction(&origin_file(&rec.origin, rec.single, f))
                        .map(|r| r.0)
                        .unwrap_or(0)
                })
                .sum::<u64>(),
            // Disk: bytes of the copy (or origin) present.
            Driver::Dir(dir) => {
                let root = copy_dir(dir, model);
                rec.files
                    .iter()
                    .map(|f| std::fs::metadata(root.join(&f.rel)).map(|m| m.len().min(f.size)).unwrap_or(0))
                    .sum()
            }
            Driver::Storage => rec
                .files
                .iter()
                .map(|f| {
                    std::fs::metadata(origin_file(&rec.origin, rec.single, f))
                        .map(|m| m.len().min(f.size))
                        .unwrap_or(0)
                })
                .sum(),
            Driver::Gpu(_) => return None,
        };
        Some((present as f64 / rec.bytes as f64).clamp(0.0, 1.0))
    }

    fn places_instantly(&self) -> bool {
        false
    }

    fn register_model(&mut self, name: &str, path: Option<&Path>, _size: Option<u64>) -> Result<u64, String> {
        check_model_name(name).map_err(|e| e.to_string())?;
        let path = path
            .ok_or_else(|| "register_model needs \"path\" (a weights file or a directory of shards) with the real backend".to_string())?;
        if self.models.contains_key(name) {
            return Err(format!("model {name} is already known to the real backend"));
        }
        let bytes = self.add_model(name, path).map_err(|e| e.to_string())?;
        if let Err(e) = self.persist() {
            self.models.remove(name);
            return Err(format!("could not record model {name} in the state file: {e}"));
        }
        Ok(bytes)
    }

    fn unregister_model(&mut self, name: &str, tier: usize) {
        let Some(rec) = self.models.get(name) else { return };
        let idx = self.tier_index(&rec.tier).unwrap_or(tier);
        self.models.remove(name);
        if let Err(e) = self.persist() {
            tracing::warn!(model = %name, error = %e, "could not record the unregistration");
        }
        self.drop_from(name, idx);
    }
}

/// Re-exported for tests and the bench: the files of a model.
pub fn model_files(origin: &Path) -> Result<Vec<ModelFile>, RealError> {
    list_files(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_names_known_drivers() {
        let cfg = Config::from_toml(include_str!("../../fixtures/real.toml")).expect("fixtures/real.toml parses");
        assert_eq!(cfg.state_dir.as_deref(), Some(Path::new("/var/lib/tierd")));
        let drivers: Vec<_> = cfg.tiers.iter().map(|t| t.driver.clone().unwrap_or_default()).collect();
        assert_eq!(drivers, ["gpu", "pagecache", "dir", "storage"]);
    }

    #[test]
    fn bad_driver_layouts_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let base = format!("state_dir = {:?}\n", root.path().join("s"));
        let bad = [
            "[[tiers]]\nname='ram'\ndriver='floppy'\nmax_gb=1.0\n[[tiers]]\nname='storage'\ndriver='storage'\n",
            "[[tiers]]\nname='swap'\ndriver='dir'\nmax_gb=1.0\n[[tiers]]\nname='storage'\ndriver='storage'\n",
            "[[tiers]]\nname='ram'\ndriver='pagecache'\nmax_gb=1.0\n[[tiers]]\nname='last'\ndriver='pagecache'\n",
        ];
        for text in bad {
            let cfg = Config::from_toml(&format!("{base}{text}")).expect("parses");
            assert!(RealRuntime::open(&cfg).is_err(), "{text}");
        }
        let no_state = Config::from_toml("[[tiers]]\nname='ram'\nmax_gb=1.0\n[[tiers]]\nname='storage'\n").expect("parses");
        let err = RealRuntime::open(&no_state).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("state_dir"), "{err}");
    }
}
