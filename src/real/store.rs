//! The state file under `state_dir`: where each model's verified copies
//! are (written by the backend at the moment a move becomes durable) and the
//! engine's limits, usage counts and job history (written by the server via
//! [`StateStore::save_engine`]).
//!
//! Every write is atomic: a temporary file, fsync, rename over the state
//! file, fsync of the directory. A crash leaves either the old or the new
//! file, never a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::RealError;
use super::files::ModelFile;
use super::sys;
use crate::tiers::Engine;

/// File name of the state file inside `state_dir`.
pub const STATE_FILE: &str = "tierd-state.json";
const FORMAT_VERSION: u32 = 1;

/// What the backend knows of one model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRecord {
    /// The origin file or directory (absolute); never modified by tierd.
    pub origin: PathBuf,
    /// Whether the origin is a single file (else a directory of shards).
    pub single: bool,
    pub files: Vec<ModelFile>,
    pub bytes: u64,
    /// Name of the tier holding the model's serving copy.
    pub tier: String,
}

/// Usage of one model as the engine last reported it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelUsage {
    pub usage: u64,
    pub last_access: Option<f64>,
    pub pinned: bool,
}

/// The engine's part of the state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineSnapshot {
    /// `update_limits`' view: `<tier>_max_gb`, `<tier>_reserved_gb`, ...
    pub limits: Map<String, Value>,
    pub models: BTreeMap<String, ModelUsage>,
    /// Ended and pending jobs, newest first, as `list_jobs` shows them.
    pub jobs: Vec<Value>,
    pub saved_at: f64,
}

/// The whole state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateFile {
    pub version: u32,
    pub models: BTreeMap<String, ModelRecord>,
    #[serde(default)]
    pub engine: EngineSnapshot,
}

#[derive(Debug)]
struct Inner {
    /// Holds an exclusive `flock` on `<state_dir>/tierd.lock` for as long as
    /// any handle lives: two tierds on one state directory would undo each
    /// other's moves. The kernel releases it when the process dies.
    _lock: std::fs::File,
    dir: PathBuf,
    file: StateFile,
    /// The bytes last written, to skip writes that change nothing.
    last: Vec<u8>,
}

/// A cheap-to-clone handle on the state file; the backend and the server
/// share it (a std mutex: no lock is held across I/O waits of others).
#[derive(Debug, Clone)]
pub struct StateStore {
    inner: Arc<Mutex<Inner>>,
}

impl StateStore {
    /// Opens (or starts) the state in `dir`; a corrupt state file is an
    /// error, not a silent fresh start.
    pub fn open(dir: &Path) -> Result<(StateStore, StateFile), RealError> {
        std::fs::create_dir_all(dir).map_err(|source| RealError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(STATE_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                    RealError::State(format!(
                        "state file {} is corrupt ({e}); move it away to start with an empty state (model origins are never touched)",
                        path.display()
                    ))
                })?;
                if f.version > FORMAT_VERSION {
                    return Err(RealError::State(format!(
                        "state file {} has format version {}, newer than this tierd ({FORMAT_VERSION})",
                        path.display(),
                        f.version
                    )));
                }
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: FORMAT_VERSION,
                ..StateFile::default()
            },
            Err(source) => return Err(RealError::Io { path, source }),
        };
        // Leftover temporary files of an interrupted write.
        let _ = std::fs::remove_file(dir.join(format!("{STATE_FILE}.tmp")));
        let store = StateStore {
            inner: Arc::new(Mutex::new(Inner {
                _lock: lock,
                dir: dir.to_path_buf(),
                file: file.clone(),
                last: Vec::new(),
            })),
        };
        Ok((store, file))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut g)
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.with(|i| i.dir.join(STATE_FILE))
    }

    /// Replaces the model placement and writes the file durably.
    pub fn save_models(&self, models: &BTreeMap<String, ModelRecord>) -> Result<(), RealError> {
        self.with(|i| {
            i.file.models = models.clone();
            write(i)
        })
    }

    /// Records the engine's limits, usage counts, pins and job history and
    /// writes the file if anything changed. Call it after requests that
    /// change them (or on a timer); placement is saved by the backend itself.
    pub fn save_engine(&self, engine: &Engine, now: f64) -> Result<(), RealError> {
        let mut snap = EngineSnapshot {
            limits: engine.limits_json(),
            models: BTreeMap::new(),
            jobs: engine.history(now, engine.config().job_history, None, None),
            saved_at: 0.0,
        };
        for (_, m) in engine.state().iter_models() {
            snap.models.insert(
                m.name.to_string(),
                ModelUsage {
                    usage: m.usage.count,
                    last_access: m.usage.last_access,
                    pinned: m.pinned,
                },
            );
        }
        self.with(|i| {
            let mut same = i.file.engine.clone();
            same.saved_at = 0.0;
            if same == snap {
                return Ok(());
            }
            snap.saved_at = now;
            i.file.engine = snap;
            write(i)
        })
    }

    /// The state as last written or loaded.
    pub fn snapshot(&self) -> StateFile {
        self.with(|i| i.file.clone())
    }
}

/// Takes the state directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, RealError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("tierd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| RealError::Io {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; it reads no memory of ours.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(RealError::State(format!(
            "state directory {} is in use by another tierd ({}: {e})",
            dir.display(),
            path.display()
        )));
    }
    Ok(f)
}

/// Atomic write: temp file, fsync, rename, fsync of the directory.
fn write(i: &mut Inner) -> Result<(), RealError> {
    i.file.version = FORMAT_VERSION;
    let bytes = serde_json::to_vec_pretty(&i.file).map_err(|e| RealError::State(format!("cannot encode state: {e}")))?;
    if bytes == i.last {
        return Ok(());
    }
    let path = i.dir.join(STATE_FILE);
    let tmp = i.dir.join(format!("{STATE_FILE}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| RealError::Io { path: p, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sys::fsync_dir(&i.dir).map_err(io(&i.dir))?;
    i.last = bytes;
    Ok(())
}
