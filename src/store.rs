//! The state file under `state_dir`: where each model's verified copies
//! are, and the engine's limits, usage counts, pins and job history. The
//! server writes it from an engine [`Snapshot`], outside the engine's lock;
//! at start it is read back, reconciled with the files
//! ([`Machine::reconcile`](crate::drivers::Machine::reconcile)) and
//! restored into the engine ([`StateFile::restored`]).
//!
//! Every write is atomic: a temporary file, fsync, rename over the state
//! file, fsync of the directory. A crash leaves either the old or the new
//! file, never a torn one. An exclusive lock on `<state_dir>/tierd.lock`
//! keeps a second tierd off the same state. The state directory is created
//! 0700; the state file (and its temporary file) and the lock file are 0600.
//!
//! A state file is not trusted further than a request: every model name in
//! it must pass the check a registration's name passes, and every file of a
//! model must be a plain relative path, or the start stops with a message
//! naming the record (tier directories are cleaned by these names).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::drivers::files::{ModelFile, check_model_name};
use crate::drivers::machine::{Placed, Record};
use crate::drivers::{ModelFiles, sys};
use crate::tiers::{JobView, Limits, MoveRate, Restored, RestoredModel, SavedPolicy, Snapshot, Usage};

/// File name of the state file inside `state_dir`.
pub const STATE_FILE: &str = "tierd-state.json";
const FORMAT_VERSION: u32 = 1;

/// Why the state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    State(String),
}

/// What the file records of one model's files and placement.
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

/// Usage of one model as the engine last reported it: the whole record
/// ([`crate::tiers::Usage`]), so that a restart keeps what the policies
/// learnt. Every field after `pinned` came later: a state file without
/// them still reads (they start empty, as before).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelUsage {
    pub usage: u64,
    pub last_access: Option<f64>,
    pub pinned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_access: Option<f64>,
    /// The exponentially decayed access count as of `decayed_at` (engine
    /// time, Unix seconds): decayed on from there at the next start.
    #[serde(default)]
    pub decayed: f64,
    #[serde(default)]
    pub decayed_at: Option<f64>,
    /// Welford's running mean and M2 of the gaps between accesses.
    #[serde(default)]
    pub gap_mean: f64,
    #[serde(default)]
    pub gap_m2: f64,
    #[serde(default)]
    pub gaps: u64,
    /// Accesses per hour of day (24) and day of week (7, Monday first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_hour: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_weekday: Vec<u32>,
    /// Place of the last access in the sequence of all accesses.
    #[serde(default)]
    pub last_seq: u64,
    /// When the model was first registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<f64>,
}

impl ModelUsage {
    fn of(pinned: bool, u: &Usage, registered_at: f64) -> ModelUsage {
        ModelUsage {
            usage: u.count,
            last_access: u.last_access,
            pinned,
            first_access: u.first_access,
            decayed: u.decayed,
            decayed_at: Some(u.decayed_at),
            gap_mean: u.gap_mean,
            gap_m2: u.gap_m2,
            gaps: u.gaps,
            by_hour: u.by_hour.to_vec(),
            by_weekday: u.by_weekday.to_vec(),
            last_seq: u.last_seq,
            registered_at: Some(registered_at),
        }
    }

    /// The engine's record, where the file has one (`decayed_at` is
    /// written by every tierd that saves the whole record); profiles of
    /// the wrong length are dropped rather than trusted.
    fn stats(&self) -> Option<Usage> {
        let decayed_at = self.decayed_at?;
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        Some(Usage {
            count: self.usage,
            last_access: self.last_access,
            last_seq: self.last_seq,
            first_access: self.first_access,
            decayed: finite(self.decayed).max(0.0),
            decayed_at: finite(decayed_at),
            gap_mean: finite(self.gap_mean),
            gap_m2: finite(self.gap_m2).max(0.0),
            gaps: self.gaps,
            by_hour: self.by_hour.as_slice().try_into().unwrap_or_default(),
            by_weekday: self.by_weekday.as_slice().try_into().unwrap_or_default(),
        })
    }
}

/// The engine's part of the state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineState {
    /// `update_limits`' view: `<tier>_max_gb`, `<tier>_reserved_gb`, ...
    pub limits: Limits,
    pub models: BTreeMap<String, ModelUsage>,
    /// Ended and pending jobs, newest first, as the history shows them.
    pub jobs: Vec<Value>,
    pub saved_at: f64,
    /// Measured move throughput per pair of driver kinds (`tiers::rates`);
    /// absent from older state files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub move_rates: Vec<MoveRate>,
    /// What the policy learnt (its decayed rates, its hour-by-hour history),
    /// under the policy's name; absent from older state files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SavedPolicy>,
}

/// The whole state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateFile {
    pub version: u32,
    pub models: BTreeMap<String, ModelRecord>,
    #[serde(default)]
    pub engine: EngineState,
}

impl ModelRecord {
    fn files(&self) -> ModelFiles {
        ModelFiles {
            origin: self.origin.clone(),
            single: self.single,
            files: self.files.clone(),
            bytes: self.bytes,
        }
    }
}

impl StateFile {
    /// The placement records start-up reconciliation checks.
    pub fn records(&self) -> BTreeMap<String, Record> {
        self.models
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    Record {
                        files: r.files(),
                        tier: r.tier.clone(),
                    },
                )
            })
            .collect()
    }

    /// What the engine takes back: the reconciled placement with each
    /// model's usage and pin, the limits, and the readable jobs.
    pub fn restored(&self, placed: Vec<Placed>) -> Restored {
        let models = placed
            .into_iter()
            .map(|p| {
                let u = self.engine.models.get(&p.name).cloned().unwrap_or_default();
                RestoredModel {
                    name: p.name,
                    tier: p.tier,
                    files: Some(p.files),
                    usage: u.usage,
                    last_access: u.last_access,
                    pinned: u.pinned,
                    unavailable: p.unavailable,
                    stats: u.stats(),
                    registered_at: u.registered_at,
                }
            })
            .collect();
        Restored {
            models,
            limits: Some(self.engine.limits.clone()),
            jobs: self
                .engine
                .jobs
                .iter()
                .filter_map(|j| serde_json::from_value::<JobView>(j.clone()).ok())
                .collect(),
            move_rates: self.engine.move_rates.clone(),
            policy: self.engine.policy.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Holds the exclusive lock on `<state_dir>/tierd.lock` for as long as
    /// any handle lives: two tierds on one state directory would undo each
    /// other's moves. The kernel releases it when the process dies.
    _lock: File,
    dir: PathBuf,
    /// The bytes last written, to skip writes that change nothing.
    last: Vec<u8>,
}

/// A cheap-to-clone handle on the state file. Writes take its own lock,
/// never the engine's.
#[derive(Debug, Clone)]
pub struct StateStore {
    inner: Arc<Mutex<Inner>>,
}

impl StateStore {
    /// Opens (or starts) the state in `dir`; a corrupt state file is an
    /// error, not a silent fresh start.
    pub fn open(dir: &Path) -> Result<(StateStore, StateFile), StoreError> {
        sys::create_dir_mode(dir, 0o700).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(STATE_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::State(format!(
                        "state file {} is corrupt ({e}); move it away to start with an empty state (model origins are never touched)",
                        path.display()
                    ))
                })?;
                if f.version > FORMAT_VERSION {
                    return Err(StoreError::State(format!(
                        "state file {} has format version {}, newer than this tierd ({FORMAT_VERSION})",
                        path.display(),
                        f.version
                    )));
                }
                check_records(&f).map_err(|e| StoreError::State(format!("state file {}: {e}", path.display())))?;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: FORMAT_VERSION,
                ..StateFile::default()
            },
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        // Leftover temporary files of an interrupted write.
        let _ = std::fs::remove_file(dir.join(format!("{STATE_FILE}.tmp")));
        let store = StateStore {
            inner: Arc::new(Mutex::new(Inner {
                _lock: lock,
                dir: dir.to_path_buf(),
                last: Vec::new(),
            })),
        };
        Ok((store, file))
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).dir.join(STATE_FILE)
    }

    /// Writes `snap` durably unless it changes nothing; returns whether it
    /// wrote. Blocking (fsyncs): call it outside the engine's lock.
    pub fn save(&self, snap: &Snapshot, now: f64) -> Result<bool, StoreError> {
        let mut file = StateFile {
            version: FORMAT_VERSION,
            models: BTreeMap::new(),
            engine: EngineState {
                limits: snap.limits.clone(),
                models: BTreeMap::new(),
                jobs: snap.jobs.iter().filter_map(|j| serde_json::to_value(j).ok()).collect(),
                saved_at: 0.0,
                move_rates: snap.move_rates.clone(),
                policy: snap.policy.clone(),
            },
        };
        for m in &snap.models {
            if let Some(f) = &m.files {
                file.models.insert(
                    m.name.clone(),
                    ModelRecord {
                        origin: f.origin.clone(),
                        single: f.single,
                        files: f.files.clone(),
                        bytes: f.bytes,
                        tier: m.tier.clone(),
                    },
                );
            }
            file.engine
                .models
                .insert(m.name.clone(), ModelUsage::of(m.pinned, &m.stats, m.registered_at));
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Compared without the time of the save: an unchanged state is not rewritten.
        let unstamped = encode(&file)?;
        if unstamped == inner.last {
            return Ok(false);
        }
        file.engine.saved_at = now;
        write(&inner.dir, &encode(&file)?)?;
        inner.last = unstamped;
        Ok(true)
    }
}

fn encode(file: &StateFile) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(file).map_err(|e| StoreError::State(format!("cannot encode state: {e}")))
}

/// Every model name of the file passes a registration's name check, and
/// every file of a model is a plain relative path (no `..`, not absolute).
fn check_records(f: &StateFile) -> Result<(), String> {
    let names = f.models.keys().chain(f.engine.models.keys());
    for name in names {
        check_model_name(name).map_err(|e| format!("record {name:?} refused: {e}; remove the record to start"))?;
    }
    for (name, m) in &f.models {
        for file in &m.files {
            let plain = file.rel.components().count() > 0 && file.rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(format!(
                    "record {name:?} refused: file {} is not a plain relative path; remove the record to start",
                    file.rel.display()
                ));
            }
        }
    }
    Ok(())
}

/// Opens `path` for writing, created 0600 (and set to 0600 if it existed).
fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let f = sys::open_private(path, truncate)?;
    sys::make_private(&f)?;
    Ok(f)
}

/// Takes the state directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("tierd.lock");
    let f = open_private(&path, false).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(e) => Err(StoreError::State(format!(
            "state directory {} is in use by another tierd ({}: {e})",
            dir.display(),
            path.display()
        ))),
    }
}

/// Atomic write: temp file, fsync, rename, fsync of the directory.
fn write(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let mut f = open_private(&tmp, true).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sys::fsync_dir(dir).map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_store_on_one_directory_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_a, _) = StateStore::open(d.path()).expect("first");
        let err = StateStore::open(d.path()).expect_err("second");
        assert!(err.to_string().contains("in use by another tierd"), "{err}");
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn the_state_file_and_lock_are_private() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("state");
        // A temporary file left world-readable by an older tierd.
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("{STATE_FILE}.tmp")), b"{}").expect("write");
        std::fs::write(dir.join("tierd.lock"), b"").expect("write");
        let (s, _) = StateStore::open(&dir).expect("open");
        let snap = Snapshot {
            epoch: 1,
            limits: Limits::default(),
            models: Vec::new(),
            jobs: Vec::new(),
            move_rates: Vec::new(),
            policy: None,
        };
        assert!(s.save(&snap, 1.0).expect("save"));
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        assert_eq!(mode(&dir.join("tierd.lock")), 0o600);
        let fresh = d.path().join("new/state");
        let (_s2, _) = StateStore::open(&fresh).expect("open");
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join("tierd.lock")), 0o600);
    }

    #[test]
    fn the_temporary_state_file_is_private_before_its_rename() {
        let d = tempfile::tempdir().expect("tempdir");
        // Stop the write between the temporary file and its rename: the
        // state file's name is taken by a directory, so the rename fails.
        std::fs::create_dir_all(d.path().join(STATE_FILE).join("x")).expect("mkdir");
        assert!(write(d.path(), b"{}").is_err());
        assert_eq!(mode(&d.path().join(format!("{STATE_FILE}.tmp"))), 0o600);
    }

    #[test]
    fn a_record_with_a_refused_name_or_an_escaping_file_stops_the_start() {
        let d = tempfile::tempdir().expect("tempdir");
        let rec = |name: &str, rel: &str| {
            format!(
                r#"{{"version":1,"models":{{"{name}":{{"origin":"/x","single":false,"files":[{{"rel":"{rel}","size":1}}],"bytes":1,"tier":"swap"}}}}}}"#
            )
        };
        // (`../victimdir` or `.hidden` are names like any other: tiers use
        // their escaped form, `%2E.%2Fvictimdir`.)
        let long = "a".repeat(201);
        for (name, rel, what) in [
            ("", "w.bin", "is empty"),
            (long.as_str(), "w.bin", "longer than 200"),
            ("ok", "../../etc/passwd", "../../etc/passwd"),
            ("ok", "/etc/passwd", "/etc/passwd"),
        ] {
            std::fs::write(d.path().join(STATE_FILE), rec(name, rel)).expect("write");
            let err = StateStore::open(d.path()).expect_err("refused").to_string();
            assert!(err.contains(what) && err.contains("refused"), "{err}");
        }
        std::fs::write(d.path().join(STATE_FILE), rec("fine", "sub/w.bin")).expect("write");
        assert!(StateStore::open(d.path()).is_ok());
    }

    #[test]
    fn an_unchanged_snapshot_is_not_rewritten() {
        let d = tempfile::tempdir().expect("tempdir");
        let (s, _) = StateStore::open(d.path()).expect("open");
        let snap = Snapshot {
            epoch: 1,
            limits: Limits::default(),
            models: Vec::new(),
            jobs: Vec::new(),
            move_rates: Vec::new(),
            policy: None,
        };
        assert!(s.save(&snap, 1.0).expect("save"));
        assert!(!s.save(&snap, 2.0).expect("save again"));
        let (_, file) = {
            drop(s);
            StateStore::open(d.path()).expect("reopen")
        };
        assert_eq!(file.engine.saved_at, 1.0);
    }
}
