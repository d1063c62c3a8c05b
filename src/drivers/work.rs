//! What the work of a move shares, whether it pins or copies: progress and
//! cancel between the worker thread and its driver ([`MoveShared`]), why a
//! worker stopped ([`WorkError`]), and the rate cap ([`Throttle`]).
//!
//! Each move runs on its own thread: the worker advances `done`, the driver
//! reads it for progress and sets `cancel`. Workers clean up after
//! themselves on failure and cancel, and never touch a model's origin except
//! to read it.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::files::ModelFiles;
use super::{JobKey, MoveEvent, MoveOrder};

/// State shared between a running move and the backend.
#[derive(Debug)]
pub struct MoveShared {
    /// Bytes of work done (a copy counts its bytes twice: written, verified).
    pub done: AtomicU64,
    /// Total bytes of work.
    pub total: u64,
    pub cancel: AtomicBool,
}

impl MoveShared {
    pub fn new(total: u64) -> Arc<MoveShared> {
        Arc::new(MoveShared {
            done: AtomicU64::new(0),
            total,
            cancel: AtomicBool::new(false),
        })
    }

    pub fn progress(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        (self.done.load(Ordering::Relaxed) as f64 / self.total as f64).clamp(0.0, 1.0)
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// A move a driver's worker thread is carrying out, as the driver keeps it.
pub struct WorkerMove {
    pub model: Arc<str>,
    pub files: Arc<ModelFiles>,
    pub shared: Arc<MoveShared>,
    /// The model's source holds a copy of its own (so a vanished origin
    /// does not make it unavailable).
    pub source_is_copy: bool,
}

impl WorkerMove {
    /// The events of a worker's failure: the move failed, and, where a
    /// file vanished from the origin the model is served from, the model
    /// is unavailable.
    pub fn failure_events(&self, job: JobKey, message: String, retryable: bool, vanished: bool) -> Vec<MoveEvent> {
        let mut events = Vec::with_capacity(2);
        if vanished
            && !self.source_is_copy
            && let Some(problem) = self.files.origin_problem()
        {
            events.push(MoveEvent::ModelUnavailable {
                model: self.model.to_string(),
                reason: problem,
            });
        }
        events.push(MoveEvent::Failed { job, message, retryable });
        events
    }
}

/// The moves a driver's worker threads are carrying out, by job.
#[derive(Default)]
pub struct WorkerMoves(HashMap<JobKey, WorkerMove>);

impl WorkerMoves {
    /// The files of `order`, checked as the driver needs them: the model
    /// has files, and no other move of it is running here. `what` names
    /// the driver's work in the error ("copy", "pin").
    pub fn files_for(&self, order: &MoveOrder<'_>, what: &str) -> Result<Arc<ModelFiles>, String> {
        let files = order
            .files
            .cloned()
            .ok_or_else(|| format!("model {} has no files to {what}", order.model))?;
        if self.0.values().any(|r| r.model == *order.model) {
            return Err(format!("model {} already has a move running", order.model));
        }
        Ok(files)
    }

    /// Records the move of `order`, carried out by a worker sharing `shared`.
    pub fn insert(&mut self, order: &MoveOrder<'_>, files: Arc<ModelFiles>, shared: Arc<MoveShared>) {
        let run = WorkerMove {
            model: order.model.clone(),
            files,
            shared,
            source_is_copy: order.source.is_copy(),
        };
        self.0.insert(order.job, run);
    }

    /// Asks the worker of `job` to stop (it rolls back and says so).
    pub fn cancel(&self, job: JobKey) {
        if let Some(r) = self.0.get(&job) {
            r.shared.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// How far the worker of `job` got, 0 to 1.
    pub fn progress(&self, job: JobKey) -> f64 {
        self.0.get(&job).map(|r| r.shared.progress()).unwrap_or(0.0)
    }

    pub fn remove(&mut self, job: JobKey) -> Option<WorkerMove> {
        self.0.remove(&job)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a worker stopped without finishing.
#[derive(Debug)]
pub enum WorkError {
    Cancelled,
    /// A failure, with the message for the job's `error` and whether a retry
    /// may help.
    Failed {
        message: String,
        retryable: bool,
        vanished: bool,
    },
}

impl WorkError {
    /// Classifies an I/O error on `path` during `what`.
    pub fn io(what: &str, path: &Path, e: &io::Error) -> WorkError {
        let no_space = matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded);
        let vanished = e.kind() == io::ErrorKind::NotFound;
        let message = if no_space {
            format!("{what} {}: no space left on the target filesystem ({e})", path.display())
        } else if vanished {
            format!("{what} {}: the file vanished ({e})", path.display())
        } else {
            format!("{what} {}: {e}", path.display())
        };
        WorkError::Failed {
            message,
            retryable: !no_space && !vanished,
            vanished,
        }
    }

    pub fn failed(message: String) -> WorkError {
        WorkError::Failed {
            message,
            retryable: false,
            vanished: false,
        }
    }
}

/// Keeps a move at or under a rate, sleeping in short slices so cancel stays
/// prompt.
pub struct Throttle {
    start: Instant,
    bytes_per_s: Option<f64>,
}

impl Throttle {
    pub fn new(bandwidth_mb_s: Option<f64>) -> Throttle {
        Throttle {
            start: Instant::now(),
            bytes_per_s: bandwidth_mb_s.filter(|b| b.is_finite() && *b > 0.0).map(|b| b * 1e6),
        }
    }

    pub fn wait(&self, done: u64, shared: &MoveShared) -> Result<(), WorkError> {
        let Some(rate) = self.bytes_per_s else { return Ok(()) };
        let due = Duration::from_secs_f64(done as f64 / rate);
        loop {
            if shared.cancelled() {
                return Err(WorkError::Cancelled);
            }
            let elapsed = self.start.elapsed();
            if elapsed >= due {
                return Ok(());
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(20)));
        }
    }
}
