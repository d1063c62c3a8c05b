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

use super::copy::{CopyFile, CopyOrigin, copy_dir, copy_model};
use super::files::{ModelFiles, PARTIAL_SUFFIX};
use super::machine::OpenContext;
use super::sys;
use super::work::{MoveShared, WorkError, WorkerMoves, spawn_worker};
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, Source, StartupReport, TierDriver};
use crate::config::{TierConfig, bytes_to_gb};

/// Longest a `statvfs` reading is used for before it is read again.
pub const STATVFS_MAX_AGE: Duration = Duration::from_millis(200);

/// Marks an old copy being deleted in the background (`.<model>.tierd-trash-N`).
const TRASH_MARK: &str = ".tierd-trash-";

/// A copy in progress.
/// A directory tier. See the module docs.
pub struct DirDriver {
    /// The directory, canonical.
    root: PathBuf,
    /// Models whose complete copy is here and serves them.
    copies: BTreeSet<String>,
    running: WorkerMoves,
    tx: Sender<(JobKey, Result<Vec<String>, WorkError>)>,
    rx: Receiver<(JobKey, Result<Vec<String>, WorkError>)>,
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
    fn completed(&mut self, key: JobKey, out: Result<Vec<String>, WorkError>) -> Vec<MoveEvent> {
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
            Ok(checksums) => {
                self.copies.insert(run.model.to_string());
                vec![MoveEvent::Finished {
                    job: key,
                    checksums: Some(checksums),
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
                    origin: files.origin_file(f),
                },
                Source::Origin => CopyFile {
                    src: files.origin_file(f),
                    rel: f.rel.clone(),
                    size: f.size,
                    expected: None,
                    origin: files.origin_file(f),
                },
            })
            .collect();
        let shared = MoveShared::new(files.bytes.saturating_mul(2));
        let origin = CopyOrigin {
            path: files.origin.clone(),
            single: files.single,
        };
        let (s, root, model, bw) = (shared.clone(), self.root.clone(), order.model.clone(), order.bandwidth_mb_s);
        // A panic in the copy is a failed move (its partial removed).
        spawn_worker("copy", order.job, &self.tx, move || {
            copy_model(&root, &model, &sources, &origin, &s, bw)
        })?;
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
            for event in self.completed(key, out) {
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

    fn check_copy(&self, model: &str, files: &ModelFiles) -> Result<(), String> {
        let root = copy_dir(&self.root, model);
        for f in &files.files {
            let p = root.join(&f.rel);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => return Err(format!("copy {} has {} bytes, expected {}", p.display(), m.len(), f.size)),
                Err(e) => return Err(format!("copy {} is missing ({e})", p.display())),
            }
        }
        Ok(())
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
