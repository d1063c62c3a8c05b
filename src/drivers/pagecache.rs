//! `pagecache`: the RAM tier. A model in it has its origin files mapped and
//! locked in memory (`mlock` in 64 MiB pieces on a worker thread, [`pin`]);
//! where the lock limit forbids it, the pages are populated unlocked and
//! `tier_status` says so. Capacity is `MemAvailable` from `/proc/meminfo`,
//! read at most every [`MEMINFO_MAX_AGE`] and again after each pin or
//! release.
//!
//! [`pin`]: super::pin

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::files::ModelFiles;
use super::machine::OpenContext;
use super::pin::{Pin, pin_files};
use super::sys::{self, MemInfo};
use super::work::{MoveShared, WorkError, WorkerMoves, run_caught, spawn_worker};
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, TierDriver};
use crate::config::{TierConfig, bytes_to_gb};

/// Longest a `/proc/meminfo` reading is used for before it is read again.
pub const MEMINFO_MAX_AGE: Duration = Duration::from_millis(200);

/// Keys of the re-pins at start (never engine jobs).
const RESTORE_KEY_BASE: JobKey = u64::MAX / 2;

/// A pin in progress for the engine.
/// The page-cache tier. See the module docs.
pub struct PageCacheDriver {
    /// Live pins, by model.
    pins: HashMap<String, Pin>,
    running: WorkerMoves,
    /// Re-pins at start in progress: key → model.
    restoring: HashMap<JobKey, String>,
    next_restore: JobKey,
    /// Why the last pin or re-pin of a model could not lock, per model.
    pin_errors: BTreeMap<String, String>,
    tx: Sender<(JobKey, Result<Pin, WorkError>)>,
    rx: Receiver<(JobKey, Result<Pin, WorkError>)>,
    /// The last `/proc/meminfo` reading and when it was taken (a `Mutex`
    /// rather than a `Cell`: reading the capacity takes `&self`).
    meminfo: std::sync::Mutex<Option<(Instant, Result<MemInfo, String>)>>,
    last_now: f64,
}

impl std::fmt::Debug for PageCacheDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCacheDriver")
            .field("pins", &self.pins.len())
            .field("running", &self.running.len())
            .finish()
    }
}

/// Opens the page-cache tier.
pub fn open(_ctx: &mut OpenContext, _tier: &TierConfig) -> Result<Box<dyn TierDriver>, String> {
    Ok(Box::new(PageCacheDriver::new()))
}

impl Default for PageCacheDriver {
    fn default() -> Self {
        PageCacheDriver::new()
    }
}

impl PageCacheDriver {
    pub fn new() -> PageCacheDriver {
        let (tx, rx) = channel();
        PageCacheDriver {
            pins: HashMap::new(),
            running: WorkerMoves::default(),
            restoring: HashMap::new(),
            next_restore: RESTORE_KEY_BASE,
            pin_errors: BTreeMap::new(),
            tx,
            rx,
            meminfo: std::sync::Mutex::new(None),
            last_now: 0.0,
        }
    }

    /// `/proc/meminfo`, from the cache while it is young enough.
    fn mem(&self) -> Result<MemInfo, String> {
        let mut cache = self.meminfo.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cache {
            Some((at, m)) if at.elapsed() < MEMINFO_MAX_AGE => m.clone(),
            _ => {
                let m = MemInfo::read().map_err(|e| format!("/proc/meminfo: {e}"));
                *cache = Some((Instant::now(), m.clone()));
                m
            }
        }
    }

    /// Forgets the cached reading (after memory was pinned or released).
    fn invalidate(&self) {
        *self.meminfo.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Spawns a pin of `files` under `key`.
    /// A panic in the pin is a failed move (what it mapped is unmapped as
    /// the panic unwinds, its pages dropped).
    fn spawn_pin(&self, key: JobKey, files: &ModelFiles, bandwidth: Option<f64>) -> Result<Arc<MoveShared>, String> {
        let paths = files.origin_paths();
        let shared = MoveShared::new(files.bytes);
        let s = shared.clone();
        spawn_worker("pin", key, &self.tx, move || {
            let out = run_caught("pin", || pin_files(&paths, &s, bandwidth));
            if out.is_err() {
                // Roll back fully: what the pin read leaves the cache too.
                for (p, _) in &paths {
                    let _ = sys::drop_cache(p);
                }
            }
            out
        })?;
        Ok(shared)
    }

    /// A re-pin at start ended.
    fn restored(&mut self, key: JobKey, out: Result<Pin, WorkError>) {
        let Some(model) = self.restoring.remove(&key) else {
            // Released (moved out or unregistered) while it was re-pinned.
            if let Ok(pin) = out {
                pin.release_in_background();
            }
            return;
        };
        match out {
            Ok(pin) => {
                if let Some(e) = &pin.lock_error {
                    self.pin_errors.insert(model.clone(), e.clone());
                }
                self.pins.insert(model, pin);
            }
            Err(WorkError::Failed { message, .. }) => {
                tracing::warn!(model = %model, error = %message, "re-pin at start failed");
                self.pin_errors.insert(model, message);
            }
            Err(WorkError::Cancelled) => {}
        }
    }

    /// A pin for the engine ended: say how.
    fn completed(&mut self, key: JobKey, out: Result<Pin, WorkError>) -> Vec<MoveEvent> {
        let Some(run) = self.running.remove(key) else {
            if let Ok(pin) = out {
                pin.release_in_background();
            }
            return Vec::new();
        };
        let cancelled = run.shared.cancel.load(Ordering::Relaxed);
        match out {
            Err(WorkError::Cancelled) => vec![MoveEvent::Cancelled { job: key }],
            Ok(pin) if cancelled => {
                // A cancel that arrived after the work was done: roll back.
                pin.release_in_background();
                vec![MoveEvent::Cancelled { job: key }]
            }
            Ok(pin) => {
                if let Some(e) = &pin.lock_error {
                    self.pin_errors.insert(run.model.to_string(), e.clone());
                }
                self.pins.insert(run.model.to_string(), pin);
                vec![MoveEvent::Finished {
                    job: key,
                    checksums: None,
                    mtimes: None,
                }]
            }
            Err(WorkError::Failed {
                message,
                retryable,
                vanished,
            }) => run.failure_events(key, message, retryable, vanished),
        }
    }
}

impl TierDriver for PageCacheDriver {
    fn kind(&self) -> &'static str {
        "pagecache"
    }

    fn capacity(&self) -> Capacity {
        match self.mem() {
            Ok(m) => Capacity::Free(m.available),
            Err(e) => Capacity::Unavailable(e),
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.last_now = now;
        let files = self.running.files_for(order, "pin")?;
        // The worker checks each file's size as it opens it: a vanished or
        // changed origin fails the move there, not here under the lock.
        let shared = self.spawn_pin(order.job, &files, order.bandwidth_mb_s)?;
        self.running.insert(order, files, shared);
        Ok(())
    }

    fn cancel_move(&mut self, now: f64, job: JobKey) {
        self.last_now = now;
        self.running.cancel(job);
    }

    fn progress(&self, _now: f64, job: JobKey) -> f64 {
        self.running.progress(job)
    }

    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        self.last_now = now;
        while let Ok((key, out)) = self.rx.try_recv() {
            self.invalidate();
            if key >= RESTORE_KEY_BASE {
                self.restored(key, out);
                continue;
            }
            for event in self.completed(key, out) {
                events.push(DriverEvent { at: now, event });
            }
        }
    }

    fn next_event_time(&self) -> Option<f64> {
        // Wall-clock work: look again shortly.
        (!self.running.is_empty() || !self.restoring.is_empty()).then_some(self.last_now + super::POLL_EVERY_S)
    }

    fn release(&mut self, model: &str, _files: Option<&ModelFiles>) {
        if let Some(p) = self.pins.remove(model) {
            p.release_in_background();
        }
        self.pin_errors.remove(model);
        self.restoring.retain(|_, m| m != model);
        self.invalidate();
    }

    fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Ok(mem) = self.mem() {
            m.insert("mem_available_gb".into(), json!(bytes_to_gb(mem.available)));
            m.insert("mem_total_gb".into(), json!(bytes_to_gb(mem.total)));
            m.insert("mlocked_gb".into(), json!(bytes_to_gb(mem.mlocked)));
        }
        m.insert("locked".into(), json!(self.pins.values().all(|p| p.locked)));
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
        m.insert("driver".into(), json!(self.kind()));
        m
    }

    fn resident_fraction(&self, model: &str, files: Option<&ModelFiles>) -> Option<f64> {
        let files = files?;
        if files.bytes == 0 {
            return Some(1.0);
        }
        // The pin's own mappings when there is one (no file to open).
        let present = match self.pins.get(model) {
            Some(pin) => pin.resident_bytes(),
            None => files
                .files
                .iter()
                .map(|f| sys::file_resident_fraction(&files.origin_file(f)).map(|r| r.0).unwrap_or(0))
                .sum(),
        };
        Some((present as f64 / files.bytes as f64).clamp(0.0, 1.0))
    }

    fn restore(&mut self, model: &str, files: &ModelFiles) {
        let key = self.next_restore;
        self.next_restore += 1;
        match self.spawn_pin(key, files, None) {
            Ok(_) => {
                self.restoring.insert(key, model.to_string());
            }
            Err(e) => {
                tracing::warn!(model = %model, error = %e, "re-pin at start not started");
                self.pin_errors.insert(model.to_string(), e);
            }
        }
    }
}
