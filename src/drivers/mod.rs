//! One driver per tier: the hardware that holds a tier's models and carries
//! out the moves into it.
//!
//! The engine never performs I/O. For a move from tier `a` to tier `b` it
//! asks `b`'s driver to bring the model in ([`TierDriver::start_move`], told
//! by `a`'s driver where to read it: [`TierDriver::source_of`]); the driver
//! reports the end through [`TierDriver::poll`]. Once the engine has
//! committed the move (and, with a state file, made the new placement
//! durable), it tells `a`'s driver to let go of what it held
//! ([`TierDriver::release`]). So a model always has a complete copy, and
//! every method here returns at once: the work runs on the driver's own
//! threads.
//!
//! A machine ([`Machine`]) is the list of its tiers' drivers, fastest first:
//! - the simulated tier ([`sim`]), every tier of the simulated backend;
//! - `pagecache` ([`pagecache`]): RAM, origin files pinned with `mlock`;
//! - `dir` ([`dir`]): verified, fsynced copies in a directory;
//! - `gpu` ([`gpu`]): observed through NVML, refuses moves;
//! - `storage` ([`storage`]): the origins, never modified;
//! - engine tiers ([`engine`]): models loaded in an inference engine
//!   (`llama-server`, `ollama`, `vllm`).
//!
//! Adding a kind of tier is one new file implementing [`TierDriver`] and one
//! line in [`DRIVERS`].
//!
//! Support modules: [`files`] (a model's files and names), [`sys`] (the
//! Linux calls, behind safe wrappers), [`work`] (what pins and copies share),
//! [`pin`], [`copy`], [`serve`] (the stable serve path of each model), [`space`] (a `dir` filesystem's free space net of the
//! copies running into it), [`machine`] (opening a real machine and
//! reconciling it with its state at start), [`watch`] (the look at every
//! origin and copy while running) and [`opens`] (other processes' opens of
//! the files tierd serves, counted as accesses).

pub mod copy;
pub mod dir;
pub mod engine;
pub mod files;
pub mod gpu;
pub mod machine;
pub mod opens;
pub mod pagecache;
pub mod pin;
pub mod serve;
pub mod sim;
pub mod space;
pub mod storage;
pub mod sys;
pub mod watch;
pub mod work;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::TierConfig;

pub use self::files::ModelFiles;
pub use self::machine::{Machine, MachineKind};

/// Which job a driver event is about (the engine's internal job number).
pub type JobKey = u64;

/// How often a driver whose work runs on threads wants to be polled while
/// it works, in engine seconds (the server's ticker wakes as often).
pub const POLL_EVERY_S: f64 = 0.02;

/// What the hardware says about a tier's room.
#[derive(Debug, Clone, PartialEq)]
pub enum Capacity {
    /// No hardware bound (the storage tier, or an unmeasured one).
    Unbounded,
    /// The tier's total bytes; the engine subtracts the reserve, what the
    /// tier holds and what is on its way in (simulated hardware).
    Total(u64),
    /// Bytes the hardware can take now, measured; the engine subtracts the
    /// reserve and the queued moves on their way in. Where the driver says
    /// the figure is net of what its running moves have still to bring in
    /// ([`TierDriver::free_is_net_of_running_moves`]; a `dir` tier:
    /// [`space`]), the engine also starts a queued move only while it fits.
    Free(u64),
    /// The tier cannot take models at all, and why.
    Unavailable(String),
}

/// Where a move reads a model's bytes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The model's origin files (a model in storage, or pinned in RAM).
    Origin,
    /// A complete copy of the model in this directory (a `dir` tier), with
    /// the checksums it was verified against.
    Copy(PathBuf),
}

impl Source {
    /// Whether the source is a copy of its own: then it may be the model's
    /// last complete copy when the origin is damaged.
    pub fn is_copy(&self) -> bool {
        matches!(self, Source::Copy(_))
    }
}

/// One move for the target tier's driver to carry out (borrowed from the
/// engine's records: a driver that keeps a part clones it).
#[derive(Debug, Clone)]
pub struct MoveOrder<'a> {
    pub job: JobKey,
    pub model: &'a Arc<str>,
    /// The model's files (real hardware); `None` on the simulated machine.
    pub files: Option<&'a Arc<ModelFiles>>,
    pub bytes: u64,
    pub from: usize,
    pub to: usize,
    /// The source and target tiers' names (for messages).
    pub from_name: &'a str,
    pub to_name: &'a str,
    /// Where the source tier holds the model.
    pub source: Source,
    /// Expected duration in engine seconds (the simulated tier's duration).
    pub expected_s: f64,
    /// Optional rate cap for this move, MB/s.
    pub bandwidth_mb_s: Option<f64>,
}

/// What a driver reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum MoveEvent {
    /// The move completed: the model is complete (and durable) in the
    /// target tier. A copy reports the checksums it verified and the
    /// modification times its files have in place, one per file.
    Finished {
        job: JobKey,
        checksums: Option<Vec<String>>,
        mtimes: Option<Vec<i64>>,
    },
    /// The move failed and was rolled back; the model is still in its source.
    Failed { job: JobKey, message: String, retryable: bool },
    /// A cancel took effect and the move was rolled back.
    Cancelled { job: JobKey },
    /// A model's files changed under the driver (vanished, changed size).
    ModelUnavailable { model: String, reason: String },
    /// Move `job` read the model's copy in tier `tier` and found it corrupt
    /// (it no longer matches its recorded checksums). Comes right after the
    /// move's `Failed`. `origin_problem` says what is wrong with the origin,
    /// if anything: then the corrupt copy may hold the last bytes there are.
    CopyCorrupt {
        job: JobKey,
        model: String,
        tier: usize,
        reason: String,
        origin_problem: Option<String>,
    },
    /// The source tier of job `job` let go of the model that the job moves
    /// out of it (answers [`TierDriver::start_move_out`]): `error` is `None`
    /// once the engine shows it unloaded, else the engine's message (the
    /// model is still in the source tier).
    MovedOut { job: JobKey, error: Option<String> },
    /// An engine tier's engine loaded a model tierd did not ask it to (by
    /// engine id, with the weights path it reports); the engine matches it
    /// to a model and calls [`TierDriver::adopt`].
    EngineLoaded {
        /// The tier (set by the engine when it polls the driver).
        tier: usize,
        id: String,
        path: Option<PathBuf>,
        bytes: Option<u64>,
    },
    /// A model tierd placed in an engine tier is no longer loaded there
    /// (the engine's LRU, its expiry, another client).
    EngineUnloaded {
        tier: usize,
        model: String,
        id: String,
        reason: String,
    },
    /// The engine shows the model in use: an access.
    EngineActivity { tier: usize, model: String },
    /// A load into an engine tier ended: its wall time, whether the files
    /// were all RAM-resident at its start, and the model's footprint there.
    /// Comes right before the move's `Finished`.
    LoadTimed {
        tier: usize,
        model: String,
        seconds: f64,
        resident: bool,
        footprint: u64,
    },
}

impl MoveEvent {
    /// Stamps an engine event with the tier whose driver reported it
    /// (drivers do not know their place in the machine).
    pub fn set_tier(&mut self, index: usize) {
        match self {
            MoveEvent::EngineLoaded { tier, .. }
            | MoveEvent::EngineUnloaded { tier, .. }
            | MoveEvent::EngineActivity { tier, .. }
            | MoveEvent::LoadTimed { tier, .. } => *tier = index,
            _ => {}
        }
    }

    /// The job the event is about, if any (events of one job keep their
    /// order: `CopyCorrupt` comes after the `Failed` that ends its move).
    pub fn job(&self) -> Option<JobKey> {
        match self {
            MoveEvent::Finished { job, .. }
            | MoveEvent::Failed { job, .. }
            | MoveEvent::Cancelled { job }
            | MoveEvent::MovedOut { job, .. }
            | MoveEvent::CopyCorrupt { job, .. } => Some(*job),
            MoveEvent::ModelUnavailable { .. }
            | MoveEvent::EngineLoaded { .. }
            | MoveEvent::EngineUnloaded { .. }
            | MoveEvent::EngineActivity { .. }
            | MoveEvent::LoadTimed { .. } => None,
        }
    }
}

/// A driver's event and the engine time it happened at (events of several
/// tiers are applied in time order).
#[derive(Debug, Clone, PartialEq)]
pub struct DriverEvent {
    pub at: f64,
    pub event: MoveEvent,
}

/// What a driver found and did when the machine started.
#[derive(Debug, Clone, Default)]
pub struct StartupReport {
    /// Partial copies of interrupted moves (and old copies whose background
    /// removal was interrupted) that were removed.
    pub removed_partials: Vec<PathBuf>,
    /// Entries in the tier that tierd does not know (left alone).
    pub unknown_entries: Vec<PathBuf>,
}

/// RAM a tier holds outside the RAM tier's books ([`TierDriver::ram_held`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RamHeld {
    /// Models whose files the tier keeps pinned, and the bytes pinned.
    pub pinned: Vec<(String, u64)>,
    /// Models whose weights the engine keeps in its own CPU memory (a
    /// vLLM instance asleep at level 1), each counted at its size.
    pub copies: Vec<String>,
}

/// The hardware of one tier. See the module docs for a move's life.
pub trait TierDriver: Send {
    /// The driver's name in the configuration (`sim`, `pagecache`, `dir`,
    /// `gpu`, `storage`).
    fn kind(&self) -> &'static str;

    /// Whether the tier takes models at all; an `Err` says why not. The
    /// engine refuses such moves with `INVALID_REQUEST`, and no policy
    /// proposes them.
    fn accepts_moves(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether a move into this tier completes the moment it starts, in
    /// engine time (the simulated tier with `--moves instant`): then a
    /// batch of such moves may pass through states over a tier's limit
    /// that no one can observe (see `Policy::exchanges`).
    fn instant(&self) -> bool {
        false
    }

    /// What the hardware says about the tier's room. Called often, under
    /// the engine's lock: a driver that measures caches its reading with a
    /// bounded age rather than reading the hardware each time.
    fn capacity(&self) -> Capacity;

    /// Whether a [`Capacity::Free`] reading already leaves out what the
    /// driver's running moves have still to bring in (so that a queued move
    /// is started only while it fits in it).
    fn free_is_net_of_running_moves(&self) -> bool {
        false
    }

    /// Starts bringing a model into this tier; an `Err` means it could not
    /// even start (nothing was changed).
    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String>;

    /// Asks a running move to stop and roll back; confirmed by a
    /// `Cancelled` event (or, if it was too late, `Finished`).
    fn cancel_move(&mut self, now: f64, job: JobKey);

    /// Progress of a running move, 0..=1.
    fn progress(&self, now: f64, job: JobKey) -> f64;

    /// Appends the events since the last poll to `events`, in the order
    /// they happened (the caller reuses one buffer).
    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>);

    /// The earliest time at which `poll` will have something new (virtual
    /// time drivers jump to it); `None` when nothing is pending. The engine
    /// polls a driver only once this time has come, and asks again after
    /// each call into it: a driver whose work runs on threads of its own
    /// answers [`POLL_EVERY_S`] after its last call while work is under way.
    fn next_event_time(&self) -> Option<f64>;

    /// The model left this tier for good (its move out committed, or it
    /// was unregistered): drop what the tier holds of it. Never blocks; the
    /// driver does slow work on a thread of its own.
    fn release(&mut self, _model: &str, _files: Option<&ModelFiles>) {}

    /// A move of `model` out of this tier to a tier of driver `to_kind` is
    /// committing (before [`TierDriver::release`]): an engine tier unloads
    /// toward RAM or storage accordingly (vLLM's sleep level).
    fn moving_out(&mut self, _model: &str, _to_kind: &str) {}

    /// The target of job `job`, a move of `model` out of this tier to a tier
    /// of driver `to_kind`, has finished its part: the source lets go before
    /// the move commits. `Ok(true)` says the driver confirms with a
    /// [`MoveEvent::MovedOut`] of the job (an engine tier unloads and waits
    /// for the engine to show it unloaded: toward RAM the files stay pinned,
    /// vLLM's sleep level 1; toward storage, level 2); the move commits only
    /// then, and fails (the target's copy released) if the unload fails.
    /// `Ok(false)` (the default) commits at once; `Err` fails the move.
    fn start_move_out(&mut self, _now: f64, _job: JobKey, _model: &str, _to_kind: &str) -> Result<bool, String> {
        Ok(false)
    }

    /// The engine matched an engine-side load ([`MoveEvent::EngineLoaded`])
    /// to `model` and placed it in this tier: hold it from now on.
    fn adopt(&mut self, _model: &str, _files: Option<&ModelFiles>, _engine_id: &str) {}

    /// The engine could not take an engine-side load of `engine_id` into
    /// its books yet (a move of that model was under way): report it again
    /// at the next look if the engine still has it.
    fn report_again(&mut self, _engine_id: &str) {}

    /// Whether this engine tier holds `model` as loaded (or is settling it
    /// after a restart); `None` for a tier that is no engine's.
    fn holds(&self, _model: &str) -> Option<bool> {
        None
    }

    /// Where a move out of this tier reads the model from.
    fn source_of(&self, _model: &str) -> Source {
        Source::Origin
    }

    /// Whether `path` (canonical) lies inside what this tier manages (a
    /// model registered from there would be tierd's own copy).
    fn owns_path(&self, _path: &Path) -> bool {
        false
    }

    /// The driver's own facts about the tier, for `tier_status`.
    fn details(&self) -> Map<String, Value> {
        Map::new()
    }

    /// The throughput a move into this tier is expected to reach, MB/s,
    /// before tierd has measured one (`tiers::rates` keeps the measured
    /// figures per pair of driver kinds). See [`DEFAULT_MOVE_MB_S`].
    fn default_move_mb_s(&self) -> f64 {
        default_move_mb_s(self.kind())
    }

    /// Measured fraction of a model's bytes that is resident in this tier,
    /// where the driver can measure it.
    fn resident_fraction(&self, _model: &str, _files: Option<&ModelFiles>) -> Option<f64> {
        None
    }

    /// The RAM this tier holds outside the RAM tier's books (an engine
    /// tier's pins of its loaded models' files, a vLLM instance's CPU copy
    /// of its weights): tierd counts it against the budget of the first
    /// `pagecache` tier below this one (`tiers::ram_held`).
    fn ram_held(&self) -> RamHeld {
        RamHeld::default()
    }

    /// Asks the tier to let go of the copy of `model` it keeps in RAM
    /// (one of [`RamHeld::copies`]) now that the model has left the RAM
    /// tier: a vLLM instance asleep at level 1 is woken and put to sleep
    /// at level 2. In the background; a failure is retried later.
    fn drop_copy(&mut self, _model: &str) {}

    // ---------------------------------------------------------- start-up

    /// Cleans what interrupted moves left in the tier; `known` tells the
    /// models of the state file.
    fn startup(&mut self, _known: &dyn Fn(&str) -> bool) -> Result<StartupReport, String> {
        Ok(StartupReport::default())
    }

    /// Whether this tier holds a complete copy of the model that loads can
    /// be served from (`Err` says what is wrong).
    fn check_copy(&self, _model: &str, _files: &ModelFiles) -> Result<(), String> {
        Ok(())
    }

    /// Removes a copy of the model that the state file does not place here
    /// (a move interrupted after its copy was renamed into place); returns
    /// what was removed.
    fn remove_leftover(&mut self, _model: &str) -> Result<Option<PathBuf>, String> {
        Ok(None)
    }

    /// Puts back what the tier holds of a model that the state file places
    /// here (re-pins it in RAM); in the background.
    fn restore(&mut self, _model: &str, _files: &ModelFiles) {}
}

/// The documented starting estimates of move throughput by target driver
/// kind, MB/s, until tierd has measured moves of that kind (then the
/// measured figure is used):
/// - `pagecache` 1000: reading an NVMe origin into RAM and locking it;
/// - `dir` 400: a copy, its fsync and a second read that verifies it;
/// - `storage` 10000: a demotion to the origin only checks it and lets go.
///
/// Any other kind starts at [`FALLBACK_MOVE_MB_S`].
pub const DEFAULT_MOVE_MB_S: &[(&str, f64)] = &[("pagecache", 1000.0), ("dir", 400.0), ("storage", 10_000.0)];

/// The starting estimate of a kind not in [`DEFAULT_MOVE_MB_S`].
pub const FALLBACK_MOVE_MB_S: f64 = 200.0;

/// The starting estimate of moves into a tier of driver `kind`.
pub fn default_move_mb_s(kind: &str) -> f64 {
    DEFAULT_MOVE_MB_S
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(FALLBACK_MOVE_MB_S, |(_, mb)| *mb)
}

/// How a driver is built from its tier's configuration.
pub type OpenDriver = fn(&mut machine::OpenContext, &TierConfig) -> Result<Box<dyn TierDriver>, String>;

/// The real drivers, by the name a tier's `driver` gives. A new kind of tier
/// is one file and one line here.
pub const DRIVERS: &[(&str, OpenDriver)] = &[
    ("pagecache", pagecache::open),
    ("dir", dir::open),
    ("gpu", gpu::open),
    ("storage", storage::open),
    ("llama-server", engine::llama_server::open),
    ("ollama", engine::ollama::open),
    ("vllm", engine::vllm::open),
];
