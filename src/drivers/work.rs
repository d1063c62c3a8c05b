//! What the work of a move shares, whether it pins or copies: progress and
//! cancel between the worker thread and its driver ([`MoveShared`]), why a
//! worker stopped ([`WorkError`]), and the rate cap ([`Throttle`]).
//!
//! Each move runs on its own thread: the worker advances `done`, the driver
//! reads it for progress and sets `cancel`. Workers clean up after
//! themselves on failure and cancel, and never touch a model's origin except
//! to read it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::files::{ModelFiles, check_file_system};
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

/// What a panic said, for a job's `error`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs a worker's body, turning a panic in it (a bug) into a failed move
/// that says so: the caller's roll-back and the driver's bookkeeping then
/// run exactly as for any other failure.
pub fn run_caught<T>(what: &str, work: impl FnOnce() -> Result<T, WorkError>) -> Result<T, WorkError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(out) => out,
        Err(payload) => {
            let message = format!("the {what} worker panicked: {}", panic_message(payload.as_ref()));
            tracing::error!("{message}");
            Err(WorkError::failed(message))
        }
    }
}

/// Starts the worker of move `key` on a thread of its own named
/// `tierd-<what>`: `work` runs under [`run_caught`] and its outcome, a panic
/// included, is always sent on `tx`, so the driver always hears how the
/// move ended. Fails (and runs nothing) where no thread can be started.
pub fn spawn_worker<T: Send + 'static>(
    what: &'static str,
    key: JobKey,
    tx: &Sender<(JobKey, Result<T, WorkError>)>,
    work: impl FnOnce() -> Result<T, WorkError> + Send + 'static,
) -> Result<(), String> {
    let tx = tx.clone();
    std::thread::Builder::new()
        .name(format!("tierd-{what}"))
        .spawn(move || {
            let out = run_caught(what, work);
            let _ = tx.send((key, out));
        })
        .map(drop)
        .map_err(|e| format!("cannot start a {what} worker thread: {e}"))
}

/// Opens `path`, a file of a model, to read it: never blocks on a FIFO,
/// refuses anything but a regular file on an ordinary filesystem, and
/// checks it still has the `size` it was registered with.
pub fn open_source(path: &Path, size: u64) -> Result<File, WorkError> {
    let file = super::sys::open_nonblocking(path).map_err(|e| WorkError::io("cannot open source", path, &e))?;
    let meta = file.metadata().map_err(|e| WorkError::io("cannot stat", path, &e))?;
    if !meta.is_file() {
        return Err(WorkError::failed(format!(
            "{} is no longer a regular file; only regular files are moved",
            path.display()
        )));
    }
    check_file_system(&file).map_err(|e| WorkError::failed(format!("{}: {e}", path.display())))?;
    if meta.len() != size {
        return Err(WorkError::failed(format!(
            "{} changed size: {} bytes, registered with {size}",
            path.display(),
            meta.len()
        )));
    }
    Ok(file)
}

/// When `done` bytes are due at `rate` bytes a second: any rate, however
/// small, gives a time (a rate too small for `Duration` waits "forever",
/// that is until the move is cancelled), never a panic.
fn due_after(done: u64, rate: f64) -> Duration {
    Duration::try_from_secs_f64(done as f64 / rate).unwrap_or(Duration::MAX)
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
        let due = due_after(done, rate);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_rate_gives_a_due_time_without_panicking() {
        for mb_s in [1e-30, 5e-324, f64::MIN_POSITIVE, 1e-300, 1e-6, 1.0, 1e300, f64::MAX] {
            let t = Throttle::new(Some(mb_s));
            let rate = t.bytes_per_s.expect("a positive finite rate is kept");
            for done in [0, 1, 1 << 20, u64::MAX] {
                let _ = due_after(done, rate);
            }
        }
        assert_eq!(due_after(1 << 20, 1e-24), Duration::MAX, "a rate too small waits until cancelled");
        assert_eq!(due_after(0, 1e-24), Duration::ZERO);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Throttle::new(Some(bad)).bytes_per_s.is_none(), "{bad} is no cap");
        }
    }

    #[test]
    fn a_tiny_rate_waits_until_cancelled() {
        let shared = MoveShared::new(1 << 20);
        let t = Throttle::new(Some(1e-30));
        let s = shared.clone();
        let waiter = std::thread::spawn(move || t.wait(1 << 20, &s));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "1e-30 MB/s waits");
        shared.cancel.store(true, Ordering::Relaxed);
        let out = waiter.join().expect("the throttle does not panic");
        assert!(matches!(out, Err(WorkError::Cancelled)), "{out:?}");
    }

    #[test]
    fn a_panicking_worker_is_a_failed_move() {
        let (tx, rx) = std::sync::mpsc::channel::<(JobKey, Result<u32, WorkError>)>();
        spawn_worker("copy", 7, &tx, || -> Result<u32, WorkError> { panic!("injected fault {}", 42) }).expect("thread started");
        let (key, out) = rx.recv_timeout(Duration::from_secs(10)).expect("the driver hears of the panic");
        assert_eq!(key, 7);
        match out {
            Err(WorkError::Failed { message, retryable, .. }) => {
                assert!(
                    message.contains("copy worker panicked") && message.contains("injected fault 42"),
                    "{message}"
                );
                assert!(!retryable);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        // A static message, and a worker that does not panic.
        let out = run_caught("pin", || -> Result<(), WorkError> { panic!("static") });
        assert!(
            matches!(&out, Err(WorkError::Failed { message, .. }) if message.contains("static")),
            "{out:?}"
        );
        spawn_worker("pin", 8, &tx, || Ok(5)).expect("thread started");
        let (key, out) = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
        assert!(key == 8 && matches!(out, Ok(5)));
    }
}
