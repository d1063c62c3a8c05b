//! `dir`: a directory on a disk. A model in it has a checksummed, fsynced,
//! verified copy at `<path>/<model>/`, renamed into place atomically
//! ([`copy`]). Capacity is the filesystem's free space (`statvfs`), read at
//! most every [`STATVFS_MAX_AGE`] and again after each copy or release.
//!
//! [`copy`]: super::copy

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::copy::{CopyFile, copy_dir, copy_model, hash_file};
use super::files::{ModelFiles, PARTIAL_SUFFIX, mtime_ns};
use super::machine::OpenContext;
use super::sys;
use super::watch::{CopyLook, OriginLook};
use super::work::{MoveShared, WorkError, WorkerMoves};
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, Source, StartupReport, TierDriver};
use crate::config::{TierConfig, bytes_to_gb};

/// Longest a `statvfs` reading is used for before it is read again.
pub const STATVFS_MAX_AGE: Duration = Duration::from_millis(200);

/// Marks an old copy being deleted in the background (`.<model>.tierd-trash-N`).
const TRASH_MARK: &str = ".tierd-trash-";

/// What a copy's worker reports: the copy's checksums and the modification
/// times of its files in place, or why it stopped.
type CopyResult = Result<(Vec<String>, Vec<i64>), WorkError>;

/// A worker's report: the job, how the copy ended, and, where the move read
/// a copy of another tier (`from`) that turned out corrupt, what is wrong.
struct CopyReport {
    job: JobKey,
    out: CopyResult,
    from: usize,
    corrupt: Option<Corrupt>,
}

/// A source copy found corrupt, and what is wrong with the origin (if
/// anything: then the corrupt copy may hold the last bytes there are).
struct Corrupt {
    reason: String,
    origin_problem: Option<String>,
}

/// A directory tier. See the module docs.
pub struct DirDriver {
    /// The directory, canonical.
    root: PathBuf,
    /// Models whose complete copy is here and serves them.
    copies: BTreeSet<String>,
    running: WorkerMoves,
    tx: Sender<CopyReport>,
    rx: Receiver<CopyReport>,
    /// The last `statvfs` reading and when it was taken.
    free: std::sync::Mutex<Option<(Instant, Result<u64, String>)>>,
    last_now: f64,
}

impl std::fmt::Debug for DirDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirDriver")
            .field("root", &self.root)
            .field("copies", &self.copies.len())
            .finish()
    }
}

/// Opens a directory tier: its `path` is created if missing.
pub fn open(_ctx: &mut OpenContext, tier: &TierConfig) -> Result<Box<dyn TierDriver>, String> {
    let p = tier
        .path
        .clone()
        .ok_or_else(|| format!("tier {:?} (driver dir) needs a path", tier.name))?;
    Ok(Box::new(DirDriver::open(&p)?))
}

impl DirDriver {
    /// The tier at directory `path` (created if missing).
    pub fn open(path: &Path) -> Result<DirDriver, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let root = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = channel();
        Ok(DirDriver {
            root,
            copies: BTreeSet::new(),
            running: WorkerMoves::default(),
            tx,
            rx,
            free: std::sync::Mutex::new(None),
            last_now: 0.0,
        })
    }

    /// The tier's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn free_bytes(&self) -> Result<u64, String> {
        let mut cache = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cache {
            Some((at, f)) if at.elapsed() < STATVFS_MAX_AGE => f.clone(),
            _ => {
                let f = sys::statvfs_available(&self.root).map_err(|e| format!("{}: {e}", self.root.display()));
                *cache = Some((Instant::now(), f.clone()));
                f
            }
        }
    }

    fn invalidate(&self) {
        *self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Rolls back a copy that completed after its move was cancelled.
    fn undo(&self, model: &str) {
        let _ = std::fs::remove_dir_all(copy_dir(&self.root, model));
        let _ = sys::fsync_dir(&self.root);
    }

    /// A copy ended: say how.
    fn completed(&mut self, report: CopyReport) -> Vec<MoveEvent> {
        let CopyReport {
            job: key,
            out,
            from,
            corrupt,
        } = report;
        let Some(run) = self.running.remove(key) else {
            return Vec::new();
        };
        let cancelled = run.shared.cancel.load(Ordering::Relaxed);
        match out {
            Err(WorkError::Cancelled) => vec![MoveEvent::Cancelled { job: key }],
            Ok(_) if cancelled => {
                self.undo(&run.model);
                vec![MoveEvent::Cancelled { job: key }]
            }
            Ok((checksums, mtimes)) => {
                self.copies.insert(run.model.to_string());
                vec![MoveEvent::Finished {
                    job: key,
                    checksums: Some(checksums),
                    mtimes: Some(mtimes),
                }]
            }
            Err(WorkError::Failed {
                message,
                retryable,
                vanished,
            }) => {
                let mut events = run.failure_events(key, message, retryable && corrupt.is_none(), vanished);
                if let Some(c) = corrupt {
                    events.push(MoveEvent::CopyCorrupt {
                        job: key,
                        model: run.model.to_string(),
                        tier: from,
                        reason: c.reason,
                        origin_problem: c.origin_problem,
                    });
                }
                events
            }
        }
    }
}

/// Once a copy from the origin is in place: the origin must not have been
/// rewritten meanwhile (a same-size rewrite passes every other check), so
/// its files still have the size and modification time recorded when the
/// move started. Then reads the copy's own modification times, which say
/// later whether the copy is still the one made. A copy that fails either
/// is removed.
fn settle(root: &Path, model: &str, sources: &[CopyFile], origin_mtimes: &[Option<i64>]) -> Result<Vec<i64>, WorkError> {
    let undo = || {
        let _ = std::fs::remove_dir_all(copy_dir(root, model));
        let _ = sys::fsync_dir(root);
    };
    for (f, recorded) in sources.iter().zip(origin_mtimes) {
        let Some(recorded) = recorded else { continue };
        let changed = match std::fs::metadata(&f.src) {
            Ok(m) => m.len() != f.size || mtime_ns(&m) != *recorded,
            Err(_) => true,
        };
        if changed {
            undo();
            return Err(WorkError::failed(format!(
                "origin file {} was rewritten during the copy; the copy was discarded",
                f.src.display()
            )));
        }
    }
    let dir = copy_dir(root, model);
    let mut mtimes = Vec::with_capacity(sources.len());
    for f in sources {
        let p = dir.join(&f.rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) => mtimes.push(mtime_ns(&m)),
            Err(e) => {
                undo();
                return Err(WorkError::io("cannot stat", &p, &e));
            }
        }
    }
    Ok(mtimes)
}

/// After a failed move out of a copy: whether that copy is corrupt, read
/// again in full against its recorded checksums (a failure of the target,
/// such as a full disk, leaves the source alone). `None` when it matches,
/// or when nothing was recorded to compare with.
fn source_corruption(sources: &[CopyFile]) -> Option<String> {
    for f in sources {
        let Some(expected) = &f.expected else { continue };
        match hash_file(&f.src) {
            Ok(h) if h == *expected => {}
            Ok(h) => {
                return Some(format!(
                    "copy file {} does not match its recorded checksum (expected {expected}, read {h})",
                    f.src.display()
                ));
            }
            Err(e) => return Some(format!("copy file {} cannot be read ({e})", f.src.display())),
        }
    }
    None
}

impl TierDriver for DirDriver {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn capacity(&self) -> Capacity {
        match self.free_bytes() {
            Ok(f) => Capacity::Free(f),
            Err(e) => Capacity::Unavailable(e),
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.last_now = now;
        let files = self.running.files_for(order, "copy")?;
        let sources: Vec<CopyFile> = files
            .files
            .iter()
            .map(|f| match &order.source {
                // A copy is checked against the checksum its own copy verified.
                Source::Copy(dir) => CopyFile {
                    src: dir.join(&f.rel),
                    rel: f.rel.clone(),
                    size: f.size,
                    expected: f.blake3.clone(),
                },
                Source::Origin => CopyFile {
                    src: files.origin_file(f),
                    rel: f.rel.clone(),
                    size: f.size,
                    expected: None,
                },
            })
            .collect();
        // What the origin's files were when measured (read from a copy:
        // its checksums say whether it changed).
        let origin_mtimes: Vec<Option<i64>> = match &order.source {
            Source::Origin => files.files.iter().map(|f| f.mtime_ns).collect(),
            Source::Copy(_) => vec![None; files.files.len()],
        };
        let shared = MoveShared::new(files.bytes.saturating_mul(2));
        let (s, tx, root, model, job, bw, from) = (
            shared.clone(),
            self.tx.clone(),
            self.root.clone(),
            order.model.clone(),
            order.job,
            order.bandwidth_mb_s,
            order.from,
        );
        let (from_copy, model_files) = (order.source.is_copy(), files.clone());
        std::thread::spawn(move || {
            let out = copy_model(&root, &model, &sources, &s, bw)
                .and_then(|sums| settle(&root, &model, &sources, &origin_mtimes).map(|t| (sums, t)));
            // A move out of a copy that failed may have failed on the copy.
            let corrupt = match &out {
                Err(WorkError::Failed { .. }) if from_copy => source_corruption(&sources).map(|reason| Corrupt {
                    reason,
                    origin_problem: model_files.origin_problem(),
                }),
                _ => None,
            };
            let _ = tx.send(CopyReport { job, out, from, corrupt });
        });
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
        while let Ok(report) = self.rx.try_recv() {
            self.invalidate();
            for event in self.completed(report) {
                events.push(DriverEvent { at: now, event });
            }
        }
    }

    fn next_event_time(&self) -> Option<f64> {
        // Wall-clock work: look again shortly.
        (!self.running.is_empty()).then_some(self.last_now + super::POLL_EVERY_S)
    }

    /// Renamed out of the way at once, deleted in the background: unlinking
    /// a large file can take a second, and the move is already durable. A
    /// crash leaves a trash entry that the next start removes.
    fn release(&mut self, model: &str, _files: Option<&ModelFiles>) {
        self.copies.remove(model);
        self.invalidate();
        let p = copy_dir(&self.root, model);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let trash = self.root.join(format!(".{model}{TRASH_MARK}{stamp}"));
        match std::fs::rename(&p, &trash) {
            Ok(()) => {
                let dir = self.root.clone();
                std::thread::spawn(move || {
                    let _ = sys::fsync_dir(&dir);
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
            }
        }
    }

    fn source_of(&self, model: &str) -> Source {
        Source::Copy(copy_dir(&self.root, model))
    }

    fn owns_path(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
    }

    fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("path".into(), json!(self.root));
        match self.free_bytes() {
            Ok(a) => {
                m.insert("fs_available_gb".into(), json!(bytes_to_gb(a)));
            }
            Err(e) => {
                m.insert("unavailable_reason".into(), json!(e));
            }
        }
        let copies: Map<String, Value> = self.copies.iter().map(|n| (n.clone(), json!(copy_dir(&self.root, n)))).collect();
        m.insert("copies".into(), Value::Object(copies));
        m.insert("driver".into(), json!(self.kind()));
        m
    }

    fn resident_fraction(&self, model: &str, files: Option<&ModelFiles>) -> Option<f64> {
        let files = files?;
        if files.bytes == 0 {
            return Some(1.0);
        }
        let root = copy_dir(&self.root, model);
        let present: u64 = files
            .files
            .iter()
            .map(|f| std::fs::metadata(root.join(&f.rel)).map(|m| m.len().min(f.size)).unwrap_or(0))
            .sum();
        Some((present as f64 / files.bytes as f64).clamp(0.0, 1.0))
    }

    fn startup(&mut self, known: &dyn Fn(&str) -> bool) -> Result<StartupReport, String> {
        let mut report = StartupReport::default();
        let dir = &self.root;
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
                r.map_err(|err| format!("{}: {err}", p.display()))?;
                report.removed_partials.push(p);
                removed = true;
            } else if !known(&name) {
                report.unknown_entries.push(e.path());
            }
        }
        if removed {
            sys::fsync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(report)
    }

    /// Sizes and modification times (a copy written to since it was made
    /// is not the verified copy any more), and the origin: a copy of an
    /// origin rewritten since is stale (a vanished origin leaves the copy
    /// its last one, which is kept).
    fn check_copy(&self, model: &str, files: &ModelFiles) -> Result<(), String> {
        let root = copy_dir(&self.root, model);
        match super::watch::look_copy(files, &root) {
            CopyLook::Intact | CopyLook::Unrecorded(_) => {}
            CopyLook::Damaged(why) => return Err(why),
        }
        match super::watch::look_origin(files) {
            OriginLook::Changed { reason, .. } => Err(format!("{reason}; the copy is stale")),
            _ => Ok(()),
        }
    }

    fn remove_leftover(&mut self, model: &str) -> Result<Option<PathBuf>, String> {
        let p = copy_dir(&self.root, model);
        if !p.exists() {
            return Ok(None);
        }
        std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let _ = sys::fsync_dir(&self.root);
        Ok(Some(p))
    }

    fn restore(&mut self, model: &str, _files: &ModelFiles) {
        self.copies.insert(model.to_string());
    }
}
