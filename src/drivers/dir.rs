//! `dir`: a directory on a disk. A model in it has a checksummed, fsynced,
//! verified copy at `<path>/<escaped name>/` (the name as one path component:
//! [`name_component`]; `org/name:Q4_K_M` is `org%2Fname:Q4_K_M`), renamed into place atomically
//! ([`copy`]). Capacity is the filesystem's free space (`statvfs`) net of
//! the copies running into it, from this tier or another on the same
//! filesystem ([`space`]).
//!
//! On disk: the tier directory is created with the tier's `mode` (0700 by
//! default), and so are the directories of its copies. It holds a lock file
//! ([`LOCK_FILE`]) that the server owning the tier takes when it opens the
//! tier, before it cleans anything up: a second server over the same
//! directory refuses to start and touches nothing. Every removal goes
//! through [`sys::remove_inside`], which refuses anything that resolves
//! outside the tier directory.
//!
//! [`copy`]: super::copy
//! [`space`]: super::space

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use serde_json::{Map, Value, json};

use super::copy::{CopyFile, CopyOrigin, copy_dir, copy_model, hash_file};
use super::files::{ModelFiles, PARTIAL_SUFFIX, check_model_name, mtime_ns, name_component, name_from_component};
use super::machine::OpenContext;
use super::space::{FsSpace, FsSpaces};
use super::sys;
use super::watch::{CopyLook, OriginLook};
use super::work::{MoveShared, WorkError, WorkerMoves, spawn_worker};
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, Source, StartupReport, TierDriver};
use crate::config::{TierConfig, bytes_to_gb};

pub use super::space::STATVFS_MAX_AGE;

/// The lock file in a tier directory, held by the server that owns the tier.
pub const LOCK_FILE: &str = ".tierd-lock";

/// Mode of a tier directory (and of its copies' directories) unless the
/// tier's configuration names one.
pub const DEFAULT_DIR_MODE: u32 = 0o700;

/// Tells apart the tiers whose copies share a filesystem's books.
static NEXT_TIER_ID: AtomicUsize = AtomicUsize::new(0);

/// Marks an old copy being deleted in the background (`.<model>.tierd-trash-N`).
const TRASH_MARK: &str = ".tierd-trash-";

/// What a copy's worker reports: the copy's checksums and the modification
/// times of its files in place, or why it stopped.
type CopyResult = Result<(Vec<String>, Vec<i64>), WorkError>;

/// A worker's report: how the copy ended, and, where the move read a copy
/// that turned out corrupt, what is wrong. (A worker that panicked sends
/// no report, only its failure.)
struct CopyReport {
    out: CopyResult,
    corrupt: Option<Corrupt>,
}

/// A source copy found corrupt, the tier that holds it (`from`), and what
/// is wrong with the origin (if anything: then the corrupt copy may hold
/// the last bytes there are).
struct Corrupt {
    reason: String,
    origin_problem: Option<String>,
    from: usize,
}

/// A directory tier. See the module docs.
pub struct DirDriver {
    /// The directory, canonical.
    root: PathBuf,
    /// Holds the lock on [`LOCK_FILE`] for as long as the tier is open (the
    /// kernel releases it when the process dies).
    _lock: File,
    /// Free-space books of the tier's filesystem, and this tier's key in them.
    space: Arc<FsSpace>,
    id: usize,
    /// Models whose complete copy is here and serves them.
    copies: BTreeSet<String>,
    running: WorkerMoves,
    tx: Sender<(JobKey, Result<CopyReport, WorkError>)>,
    rx: Receiver<(JobKey, Result<CopyReport, WorkError>)>,
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

/// Checks a `dir` tier's path without touching the disk: an existing
/// directory, or, with `create`, a missing one whose parent exists (tierd
/// creates one directory, never a chain: a typo in a mount point is an
/// error, not a tier on the root disk).
pub fn check_path(path: &Path, create: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(_) if !create => Err(format!(
            "directory {} does not exist; create it (and mount what it should be on), or set create = true on the tier",
            path.display()
        )),
        Err(_) => match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) if !parent.is_dir() => Err(format!(
                "cannot create {}: its parent {} does not exist",
                path.display(),
                parent.display()
            )),
            _ => Ok(()),
        },
    }
}

/// Opens a directory tier: its `path` must exist, or is created when the
/// tier says `create = true` (see [`check_path`]).
pub fn open(ctx: &mut OpenContext, tier: &TierConfig) -> Result<Box<dyn TierDriver>, String> {
    let p = tier
        .path
        .clone()
        .ok_or_else(|| format!("tier {:?} (driver dir) needs a path", tier.name))?;
    check_path(&p, tier.create)?;
    Ok(Box::new(DirDriver::open_with(&p, tier.mode, &ctx.spaces)?))
}

impl DirDriver {
    /// The tier at directory `path` (created 0700 if missing), with
    /// free-space books of its own.
    pub fn open(path: &Path) -> Result<DirDriver, String> {
        Self::open_with(path, None, &FsSpaces::default())
    }

    /// The tier at directory `path`: created with `mode` (0700 when
    /// `None`) if missing, set to `mode` if it exists and `mode` is given;
    /// its lock taken; its free space booked in `spaces`.
    pub fn open_with(path: &Path, mode: Option<u32>, spaces: &FsSpaces) -> Result<DirDriver, String> {
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let existed = path.is_dir();
        if !existed {
            sys::create_dir_mode(path, mode.unwrap_or(DEFAULT_DIR_MODE)).map_err(io)?;
        }
        let root = path.canonicalize().map_err(io)?;
        // Nothing in a directory another server owns is changed.
        let lock = lock_tier(&root)?;
        if let (true, Some(m)) = (existed, mode) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(m)).map_err(io)?;
        }
        let space = spaces.for_dir(&root)?;
        let (tx, rx) = channel();
        Ok(DirDriver {
            root,
            _lock: lock,
            space,
            id: NEXT_TIER_ID.fetch_add(1, Ordering::Relaxed),
            copies: BTreeSet::new(),
            running: WorkerMoves::default(),
            tx,
            rx,
            last_now: 0.0,
        })
    }

    /// The tier's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes a new copy can take: see [`space`](super::space).
    fn free_bytes(&self) -> Result<u64, String> {
        self.space.free(&self.root)
    }

    fn invalidate(&self) {
        self.space.invalidate();
    }

    /// Removes `path`, which must lie inside the tier directory
    /// ([`sys::remove_inside`]); whether there was something to remove.
    fn remove(&self, path: &Path) -> Result<bool, String> {
        sys::remove_inside(&self.root, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Rolls back a copy that completed after its move was cancelled.
    fn undo(&self, model: &str) {
        if let Err(e) = self.remove(&copy_dir(&self.root, model)) {
            tracing::warn!(error = %e, "cannot roll back a cancelled copy");
        }
        let _ = sys::fsync_dir(&self.root);
    }

    /// A copy ended: say how.
    fn completed(&mut self, key: JobKey, report: CopyReport) -> Vec<MoveEvent> {
        let CopyReport { out, corrupt } = report;
        let Some(run) = self.running.remove(key) else {
            return Vec::new();
        };
        self.space.end(self.id, key);
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
                        tier: c.from,
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

    fn free_is_net_of_running_moves(&self) -> bool {
        true
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
        // What the origin's files were when measured (read from a copy:
        // its checksums say whether it changed).
        let origin_mtimes: Vec<Option<i64>> = match &order.source {
            Source::Origin => files.files.iter().map(|f| f.mtime_ns).collect(),
            Source::Copy(_) => vec![None; files.files.len()],
        };
        let shared = MoveShared::new(files.bytes.saturating_mul(2));
        let origin = CopyOrigin {
            path: files.origin.clone(),
            single: files.single,
        };
        let (s, root, model, bw, from) = (
            shared.clone(),
            self.root.clone(),
            order.model.clone(),
            order.bandwidth_mb_s,
            order.from,
        );
        let (from_copy, model_files) = (order.source.is_copy(), files.clone());
        // A panic in the copy is a failed move (its partial removed).
        spawn_worker("copy", order.job, &self.tx, move || {
            let out = copy_model(&root, &model, &sources, &origin, &s, bw)
                .and_then(|sums| settle(&root, &model, &sources, &origin_mtimes).map(|t| (sums, t)));
            // A move out of a copy that failed may have failed on the copy.
            let corrupt = match &out {
                Err(WorkError::Failed { .. }) if from_copy => source_corruption(&sources).map(|reason| Corrupt {
                    reason,
                    origin_problem: model_files.origin_problem(),
                    from,
                }),
                _ => None,
            };
            Ok(CopyReport { out, corrupt })
        })?;
        self.space.start(self.id, order.job, files.bytes, shared.clone());
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
        while let Ok((key, sent)) = self.rx.try_recv() {
            self.invalidate();
            let report = sent.unwrap_or_else(|e| CopyReport {
                out: Err(e),
                corrupt: None,
            });
            for event in self.completed(key, report) {
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
    fn release(&mut self, model: &str, files: Option<&ModelFiles>) {
        self.copies.remove(model);
        self.invalidate();
        let p = copy_dir(&self.root, model);
        if let Err(e) = check_model_name(model).and_then(|()| sys::resolve_inside(&self.root, &p).map_err(|e| e.to_string())) {
            tracing::warn!(path = %p.display(), error = %e, "refusing to release a copy outside the tier directory");
            return;
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let trash = self.root.join(format!(".{}{TRASH_MARK}{stamp}", name_component(model)));
        match std::fs::rename(&p, &trash) {
            Ok(()) => {
                let dir = self.root.clone();
                let space = self.space.clone();
                let bytes = files.map(|f| f.bytes).unwrap_or(0);
                space.freeing(bytes);
                std::thread::spawn(move || {
                    let _ = sys::fsync_dir(&dir);
                    if let Err(e) = sys::remove_inside(&dir, &trash) {
                        tracing::warn!(path = %trash.display(), error = %e, "cannot remove an old copy");
                    }
                    let _ = sys::fsync_dir(&dir);
                    space.freed(bytes);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot move an old copy aside; removing it in place");
                if let Err(e) = self.remove(&p) {
                    tracing::warn!(error = %e, "cannot remove an old copy");
                }
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
        match self.space.available(&self.root) {
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
            if name == LOCK_FILE {
                continue;
            }
            if name.ends_with(PARTIAL_SUFFIX) || (name.starts_with('.') && name.contains(TRASH_MARK)) {
                let p = e.path();
                self.remove(&p)?;
                report.removed_partials.push(p);
                removed = true;
            } else if !name_from_component(&name).is_some_and(|n| known(&n)) {
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
        if !self.remove(&p)? {
            return Ok(None);
        }
        let _ = sys::fsync_dir(&self.root);
        Ok(Some(p))
    }

    fn restore(&mut self, model: &str, _files: &ModelFiles) {
        self.copies.insert(model.to_string());
    }
}

/// Takes the tier directory's lock, or says who holds it. The lock file is
/// created 0600.
fn lock_tier(root: &Path) -> Result<File, String> {
    let path = root.join(LOCK_FILE);
    let f = sys::open_private(&path, false).map_err(|e| format!("{}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(e) => {
            return Err(format!(
                "tier directory {} is in use by another tierd ({}: {e}); nothing in it was touched",
                root.display(),
                path.display()
            ));
        }
    }
    // Only once the lock is ours: another server's file is left alone.
    sys::make_private(&f).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_tier_directory_is_private_or_takes_the_configured_mode() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = DirDriver::open(&d.path().join("new/tier")).expect("open");
        assert_eq!(mode(t.root()), 0o700);
        assert_eq!(mode(&t.root().join(LOCK_FILE)), 0o600);
        drop(t);
        let old = d.path().join("old");
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let t = DirDriver::open_with(&old, Some(0o750), &FsSpaces::default()).expect("open");
        assert_eq!(mode(t.root()), 0o750);
        let t2 = DirDriver::open_with(&d.path().join("made"), Some(0o710), &FsSpaces::default()).expect("open");
        assert_eq!(mode(t2.root()), 0o710);
    }

    #[test]
    fn a_tier_directory_has_one_owner() {
        let d = tempfile::tempdir().expect("tempdir");
        let _a = DirDriver::open(d.path()).expect("first");
        let err = DirDriver::open(d.path()).expect_err("second");
        assert!(err.contains("in use by another tierd") && err.contains(LOCK_FILE), "{err}");
    }

    #[test]
    fn a_leftover_outside_the_tier_is_never_removed() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victimdir");
        std::fs::create_dir_all(&victim).expect("mkdir");
        std::fs::write(victim.join("keep"), b"keep").expect("write");
        let mut t = DirDriver::open(&d.path().join("tier")).expect("open");
        // Any name is one entry inside the tier (escaped): nothing outside
        // is ever named, so nothing outside is removed.
        let r = t.remove_leftover("../victimdir").expect("a name never leaves the tier");
        assert_eq!(r, None);
        t.release("../victimdir", None);
        assert_eq!(copy_dir(t.root(), "../victimdir"), t.root().join("%2E.%2Fvictimdir"));
        assert!(victim.join("keep").exists());
        // A partial that is a link to a directory outside: the link goes, not its content.
        std::os::unix::fs::symlink(&victim, t.root().join(format!("m{PARTIAL_SUFFIX}"))).expect("symlink");
        let report = t.startup(&|_| false).expect("startup");
        assert_eq!(report.removed_partials.len(), 1, "{report:?}");
        assert!(report.unknown_entries.is_empty(), "the lock file is tierd's own: {report:?}");
        assert_eq!(std::fs::read(victim.join("keep")).expect("kept"), b"keep");
    }
}
