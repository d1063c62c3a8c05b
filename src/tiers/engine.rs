//! The [`Engine`] itself: what it holds, how it is built, and how its state
//! is saved and restored. What it does is split by concern in the sibling
//! modules (see [`crate::tiers`]).
//!
//! The engine performs no I/O (but for the serve links' `symlink` and
//! `rename`, which must be done when a move commits: `drivers::serve`) and
//! takes the current time as an argument.
//! Moves are carried out by the machine's drivers; what should move is
//! suggested by the injected [`Policy`]. The async server, the simulation
//! harness and the property tests all drive this same type, and each of
//! them advances it with one [`Engine::tick`] before each request.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::config::{Config, gb_to_bytes};
use crate::drivers::{DriverEvent, Machine, MachineKind, ModelFiles, TierDriver};
use crate::error::EngineError;

use super::job::{JobKey, JobStatus};
use super::limits::Limits;
use super::policy::{Desire, Policy, SavedPolicy};
use super::rates::{MoveRate, MoveRates};
use super::scheduler::{SchedEvent, SortedKeys, TimeKey};
use super::state::{Model, ModelId, State, Usage};
use super::table::{JobTable, ReadyQueue};
use super::views::{FaultView, JobView, Metrics};

/// The engine. See the module docs.
pub struct Engine {
    pub(crate) state: State,
    pub(crate) cfg: Config,
    pub(crate) machine: Machine,
    pub(crate) policy: Box<dyn Policy>,
    /// Every job not yet pushed out of the history.
    pub(crate) jobs: JobTable,
    pub(crate) job_ids: HashMap<String, JobKey>,
    /// How many jobs are queued. A queued job is in exactly one of: `ready`,
    /// waiting on dependencies (`Job::unmet_deps > 0`), `delayed`. Their
    /// start order (listing, positions) is computed when asked for
    /// ([`Engine::queued_in_order`]), not kept on every move.
    pub(crate) queued: usize,
    /// Queued jobs whose dependencies have all succeeded and whose retry
    /// delay is over: the only set the scheduler scans.
    pub(crate) ready: ReadyQueue,
    /// Queued jobs waiting out a retry delay, by the time it ends.
    pub(crate) delayed: BTreeSet<(TimeKey, JobKey)>,
    pub(crate) running: SortedKeys,
    /// Each driver's next event time, as it last said (see
    /// `Engine::refresh_next_event`): asked on every tick, changed only by
    /// the engine's calls into the driver.
    pub(crate) next_events: Vec<Option<f64>>,
    /// The earliest of `next_events`.
    pub(crate) next_event: Option<f64>,
    /// Ended jobs, oldest first, bounded by `cfg.job_history`.
    pub(crate) ended: VecDeque<JobKey>,
    /// The drivers' events of one poll (a buffer kept between ticks).
    pub(crate) events: Vec<DriverEvent>,
    /// A policy's desires of one decision (a buffer kept between decisions).
    pub(crate) desires: Vec<Desire>,
    pub(crate) next_key: JobKey,
    pub(crate) max_concurrent: usize,
    /// Something changed that may let a queued job start.
    pub(crate) dirty: bool,
    pub(crate) metrics: Metrics,
    /// Scheduling decisions, when recording is on (property tests).
    pub(crate) log: Option<Vec<SchedEvent>>,
    /// Ended jobs of earlier runs (restored from a state file), newest
    /// first; answered by `tier_job_status` and history.
    pub(crate) archive: Vec<JobView>,
    /// The engine second of the last job id, and the next free suffix of
    /// each id base used in it.
    pub(crate) id_second: u64,
    pub(crate) id_suffixes: HashMap<String, u64>,
    /// Some tier has a memory-pressure floor (`min_free_gb`), and when it
    /// is next checked.
    pub(crate) has_floors: bool,
    pub(crate) next_pressure_check: f64,
    /// Some tier is an engine tier above a `pagecache` tier: the RAM it
    /// holds is booked there each tick (`ram_held.rs`).
    pub(crate) has_engine_tiers: bool,
    pub(crate) started_at: f64,
    /// Build plan steps and job reasons for policy moves (off only inside
    /// [`Engine::access_load`], the simulator's hot path).
    pub(crate) explain: bool,
    /// Accesses seen so far (the sequence number of the last one).
    pub(crate) accesses_seen: u64,
    /// Bumped at every change of placement (a move committed, a model
    /// registered or removed): a saved [`Snapshot`] says which it records.
    pub(crate) epoch: u64,
    /// Whether the placement is saved to a state file: then a source copy
    /// is released only once a snapshot recording its move is durable.
    pub(crate) durable: bool,
    /// Releases waiting for the placement that needs them no more to be
    /// saved, oldest first.
    pub(crate) pending_releases: Vec<PendingRelease>,
    /// Faults noticed while running ([`super::faults`]): the recent ones of
    /// each tier, and the last one of each model.
    pub(crate) fault_log: Vec<VecDeque<FaultView>>,
    pub(crate) model_faults: HashMap<ModelId, FaultView>,
    /// Models a model source had and no longer finds, with why: they stay
    /// unavailable (whatever the watcher sees of their files) until the
    /// source finds them again ([`super::faults`]).
    pub(crate) source_missing: HashMap<ModelId, String>,
    /// What the model sources held at their last scan (`discover`), set by
    /// the server that scans them.
    pub(crate) discovery: Option<Arc<crate::sources::Discovery>>,
    /// What real moves took, per pair of driver kinds (the estimates of
    /// later moves; saved in the state file).
    pub(crate) move_rates: MoveRates,
    /// Events for watchers since the server last took them; `None` while
    /// nobody watches ([`super::events`]).
    pub(crate) outbox: Option<Vec<super::events::Event>>,
    /// Each tier's pressure and availability as watchers last heard them.
    pub(crate) tiers_seen: Vec<super::events::TierSeen>,
    /// Load times into engine tiers, by model ([`super::engines`]).
    pub(crate) load_stats: super::engines::LoadBook,
    /// Pinned models an engine dropped on its own, being loaded back
    /// ([`super::engines`]).
    pub(crate) repins: super::engines::Repins,
}

/// What a tier holds of a model that it no longer needs, once the
/// placement recorded at `epoch` is durable.
#[derive(Debug, Clone)]
pub(crate) struct PendingRelease {
    pub epoch: u64,
    pub model: Arc<str>,
    pub tier: usize,
    pub files: Option<Arc<ModelFiles>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("machine", &self.machine)
            .field("policy", &self.policy.name())
            .finish()
    }
}

/// A model of an earlier run, as [`Engine::restore`] takes it back.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredModel {
    pub name: String,
    /// The tier that really holds it (after start-up reconciliation).
    pub tier: usize,
    pub files: Option<ModelFiles>,
    pub usage: u64,
    pub last_access: Option<f64>,
    pub pinned: bool,
    pub unavailable: Option<String>,
    /// The whole usage record of the earlier run (decayed frequency, gaps,
    /// profiles), where the state file has it; `usage` and `last_access`
    /// alone otherwise (an older state file).
    pub stats: Option<Usage>,
    /// When it was first registered (an older state file has no time).
    pub registered_at: Option<f64>,
}

/// What an earlier run left, for [`Engine::restore`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    pub models: Vec<RestoredModel>,
    /// The limits as last changed (each is checked against its minimum).
    pub limits: Option<Limits>,
    /// Ended jobs, newest first.
    pub jobs: Vec<JobView>,
    /// The measured throughput of moves, per pair of driver kinds.
    pub move_rates: Vec<MoveRate>,
    /// What the policy learnt ([`Policy::export`]).
    pub policy: Option<SavedPolicy>,
}

/// One model in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSnapshot {
    pub name: String,
    pub tier: String,
    pub files: Option<ModelFiles>,
    pub usage: u64,
    pub last_access: Option<f64>,
    pub pinned: bool,
    /// The whole usage record, for the state file to keep across restarts.
    pub stats: Usage,
    pub registered_at: f64,
}

/// What the server saves: placement, limits, usage, pins and job history.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The placement epoch this snapshot records (see [`Engine::saved`]).
    pub epoch: u64,
    pub limits: Limits,
    pub models: Vec<ModelSnapshot>,
    /// Jobs newest first, as the history shows them.
    pub jobs: Vec<JobView>,
    /// The measured throughput of moves, per pair of driver kinds.
    pub move_rates: Vec<MoveRate>,
    /// What the policy had learnt ([`Policy::export`]).
    pub policy: Option<SavedPolicy>,
}

impl Engine {
    /// An engine over `machine` (one driver per configured tier) with the
    /// configuration's catalog.
    pub fn new(cfg: Config, machine: Machine, policy: Box<dyn Policy>, now: f64) -> Result<Engine, EngineError> {
        if machine.drivers.len() != cfg.tiers.len() {
            return Err(EngineError::Internal(format!(
                "{} tiers configured but {} drivers given",
                cfg.tiers.len(),
                machine.drivers.len()
            )));
        }
        let mut state = State::new(&cfg);
        for (t, d) in state.tiers.iter_mut().zip(&machine.drivers) {
            t.refuses = d.accepts_moves().err();
        }
        for mc in &cfg.models {
            let tier = match &mc.tier {
                Some(t) => state.tier_index(t).ok_or_else(|| EngineError::UnknownTier {
                    tier: t.clone(),
                    known: state.tier_names(),
                })?,
                None => state.last_tier(),
            };
            state
                .add_model(Model {
                    name: mc.name.as_str().into(),
                    bytes: gb_to_bytes(mc.size_gb),
                    tier,
                    usage: Usage {
                        count: mc.usage,
                        decayed_at: now,
                        ..Usage::default()
                    },
                    pinned: false,
                    job: None,
                    unavailable: None,
                    path: mc.path.clone(),
                    files: None,
                    registered_at: now,
                })
                .map_err(|e| EngineError::bad_request(format!("model {:?}: {e}", mc.name)))?;
        }
        let tiers = state.tiers.len();
        let next_events: Vec<Option<f64>> = machine.drivers.iter().map(|d| d.next_event_time()).collect();
        let next_event = next_events.iter().copied().flatten().min_by(f64::total_cmp);
        let has_floors = state.tiers.iter().any(|t| t.min_free.is_some());
        let has_engine_tiers = machine.drivers.iter().any(|d| crate::config::ENGINE_DRIVERS.contains(&d.kind()))
            && machine.drivers.iter().any(|d| d.kind() == "pagecache");
        Ok(Engine {
            state,
            max_concurrent: cfg.moves.max_concurrent.max(1),
            cfg,
            machine,
            policy,
            jobs: JobTable::default(),
            job_ids: HashMap::new(),
            queued: 0,
            ready: ReadyQueue::default(),
            delayed: BTreeSet::new(),
            running: SortedKeys::default(),
            next_events,
            next_event,
            ended: VecDeque::new(),
            events: Vec::new(),
            desires: Vec::new(),
            next_key: 1,
            dirty: false,
            log: None,
            archive: Vec::new(),
            id_second: u64::MAX,
            id_suffixes: HashMap::new(),
            has_floors,
            next_pressure_check: now,
            has_engine_tiers,
            metrics: Metrics::for_tiers(tiers),
            started_at: now,
            explain: true,
            accesses_seen: 0,
            epoch: 0,
            durable: false,
            pending_releases: Vec::new(),
            fault_log: vec![VecDeque::new(); tiers],
            model_faults: HashMap::new(),
            source_missing: HashMap::new(),
            discovery: None,
            move_rates: MoveRates::default(),
            outbox: None,
            tiers_seen: Vec::new(),
            load_stats: HashMap::new(),
            repins: super::engines::Repins::default(),
        })
    }

    /// Read access to the placement.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Replaces the policy (the simulator runs several over one trace).
    pub fn set_policy(&mut self, policy: Box<dyn Policy>) {
        self.policy = policy;
    }

    /// What kind of machine the engine drives (`health`'s backend).
    pub fn machine_kind(&self) -> MachineKind {
        self.machine.kind
    }

    /// The driver of tier `tier`.
    pub fn driver(&self, tier: usize) -> &dyn TierDriver {
        self.machine.drivers[tier].as_ref()
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Jobs queued or running.
    pub fn active_jobs(&self) -> usize {
        self.queued + self.running.len()
    }

    /// How often the policy wants [`Engine::policy_tick`], in engine seconds.
    pub fn policy_tick_interval(&self) -> Option<f64> {
        self.policy.tick_interval().filter(|s| s.is_finite() && *s > 0.0)
    }

    pub(crate) fn model_by_name(&self, name: &str) -> Result<ModelId, EngineError> {
        self.state
            .model_id(name)
            .ok_or_else(|| EngineError::ModelNotFound { model: name.to_string() })
    }

    pub(crate) fn tier_by_name(&self, name: &str) -> Result<usize, EngineError> {
        self.state.tier_index(name).ok_or_else(|| EngineError::UnknownTier {
            tier: name.to_string(),
            known: self.state.tier_names(),
        })
    }

    pub(crate) fn job_by_id(&self, id: &str) -> Result<JobKey, EngineError> {
        self.job_ids
            .get(id)
            .copied()
            .ok_or_else(|| EngineError::JobNotFound { job_id: id.to_string() })
    }

    // --------------------------------------------------------- persistence

    /// Takes back what an earlier run left: its models in the tiers that
    /// hold them (with usage counts, last access and pins), its limits
    /// (where still above their minimums) and its ended jobs. Jobs that had
    /// not ended are kept as `failed`: the restart ended them.
    pub fn restore(&mut self, now: f64, restored: Restored) -> Result<(), EngineError> {
        for m in restored.models {
            if self.state.by_name.contains_key(&m.name) {
                return Err(EngineError::DuplicateModel { model: m.name });
            }
            if m.tier >= self.state.tiers.len() {
                return Err(EngineError::Internal(format!("model {} restored into tier #{}", m.name, m.tier)));
            }
            let bytes = m.files.as_ref().map(|f| f.bytes).unwrap_or(0);
            self.state
                .add_model(Model {
                    name: m.name.as_str().into(),
                    bytes,
                    tier: m.tier,
                    // The saved record as it was: its decayed frequency keeps
                    // decaying from the time it was last updated, over the
                    // downtime too.
                    usage: match m.stats {
                        Some(stats) => Usage {
                            count: m.usage,
                            last_access: m.last_access,
                            ..stats
                        },
                        None => Usage {
                            count: m.usage,
                            last_access: m.last_access,
                            decayed_at: now,
                            ..Usage::default()
                        },
                    },
                    pinned: m.pinned,
                    job: None,
                    unavailable: m.unavailable,
                    path: m.files.as_ref().map(|f| f.origin.clone()),
                    files: m.files.map(Arc::new),
                    registered_at: m.registered_at.filter(|t| t.is_finite()).unwrap_or(now),
                })
                .map_err(|e| EngineError::bad_request(format!("state file: model {:?}: {e}", m.name)))?;
        }
        // Accesses of this run come after every access of the earlier ones.
        let last_seq = self.state.iter_models().map(|(_, m)| m.usage.last_seq).max().unwrap_or(0);
        self.accesses_seen = self.accesses_seen.max(last_seq);
        if let Some(l) = &restored.limits {
            self.restore_limits(l);
        }
        self.move_rates.restore(&restored.move_rates);
        // What the policy learnt, if the same policy saved it (another
        // policy's figures mean nothing to this one).
        if let Some(saved) = &restored.policy
            && saved.name == self.policy.name()
        {
            match serde_json::from_str::<serde_json::Value>(saved.data.get()) {
                Ok(data) => self.policy.import(&self.state, &data),
                Err(e) => tracing::warn!(error = %e, "the policy's saved data does not parse; it starts afresh"),
            }
        }
        let keep = self.cfg.job_history.max(1);
        self.archive = restored
            .jobs
            .into_iter()
            .filter(|j| !self.job_ids.contains_key(&j.job_id))
            .map(|mut j| {
                if !j.status.is_terminal() {
                    j.status = JobStatus::Failed;
                    j.error = Some("interrupted by a restart of tierd; rolled back".into());
                    j.error_code = Some("TASK_FAILED".into());
                    j.position = None;
                    j.estimated_start = None;
                }
                j
            })
            .take(keep)
            .collect();
        self.epoch += 1;
        Ok(())
    }

    /// Everything the server saves: placement, limits, usage, pins and the
    /// job history, recording placement epoch [`Snapshot::epoch`].
    pub fn snapshot(&self, now: f64) -> Snapshot {
        let names = &self.state.tiers;
        let mut models: Vec<ModelSnapshot> = self
            .state
            .iter_models()
            .map(|(_, m)| ModelSnapshot {
                name: m.name.to_string(),
                tier: names[m.tier].name.clone(),
                files: m.files.as_deref().cloned(),
                usage: m.usage.count,
                last_access: m.usage.last_access,
                pinned: m.pinned,
                stats: m.usage.clone(),
                registered_at: m.registered_at,
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            epoch: self.epoch,
            limits: self.limits(),
            models,
            jobs: self.history(
                now,
                &super::views::HistoryFilter {
                    limit: self.cfg.job_history,
                    ..Default::default()
                },
            ),
            move_rates: self.move_rates.list(),
            policy: self.policy.export(&self.state).map(|data| SavedPolicy {
                name: self.policy.name().to_string(),
                data,
            }),
        }
    }

    /// The throughput estimate of a move from tier `from` to tier `to`,
    /// MB/s: measured for the pair of their drivers' kinds, else the target
    /// driver's default.
    pub fn move_mb_s(&self, from: usize, to: usize) -> f64 {
        let (a, b) = (&self.machine.drivers[from], &self.machine.drivers[to]);
        self.move_rates.mb_s(a.kind(), b.kind(), b.default_move_mb_s())
    }

    /// Every measured pair's estimate.
    pub fn move_rates(&self) -> Vec<MoveRate> {
        self.move_rates.list()
    }

    /// Turns on durable placement: from now on, what a move's source tier
    /// held is released only after [`Engine::saved`] confirms a snapshot
    /// that records the move.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
        if !durable {
            self.saved(u64::MAX);
        }
    }

    /// The snapshot of placement epoch `epoch` is durable: releases what
    /// the moves it records left behind.
    pub fn saved(&mut self, epoch: u64) {
        if self.pending_releases.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.pending_releases) {
            if r.epoch <= epoch {
                self.machine.drivers[r.tier].release(&r.model, r.files.as_deref());
                self.refresh_next_event(r.tier);
                self.dirty = true;
            } else {
                keep.push(r);
            }
        }
        self.pending_releases = keep;
    }

    /// Releases waiting for a snapshot to be saved.
    pub fn pending_releases(&self) -> usize {
        self.pending_releases.len()
    }

    /// The current placement epoch (see [`Snapshot::epoch`]).
    pub fn placement_epoch(&self) -> u64 {
        self.epoch
    }

    /// Tier `tier` no longer needs what it holds of model `id` (a move out
    /// of it committed, or the model is being unregistered): released now,
    /// or once the placement is durable.
    pub(crate) fn release_model(&mut self, id: ModelId, tier: usize) {
        self.epoch += 1;
        let Some(m) = self.state.model(id) else { return };
        if self.durable {
            self.pending_releases.push(PendingRelease {
                epoch: self.epoch,
                model: m.name.clone(),
                tier,
                files: m.files.clone(),
            });
        } else {
            self.machine.drivers[tier].release(&m.name, m.files.as_deref());
            self.refresh_next_event(tier);
        }
    }

    // --------------------------------------------------------- serve paths

    /// Points model `id`'s serve path at the copy its tier serves (no-op
    /// without a serve directory). Called whenever a model's tier changes,
    /// before the old tier is told to release it. A failure is logged: the
    /// model keeps its placement, and the next change tries again.
    pub(crate) fn link_serve_path(&mut self, id: ModelId) {
        let (Some(serve), Some(m)) = (&self.machine.serve, self.state.model(id)) else {
            return;
        };
        let Some(files) = &m.files else { return };
        let source = self.machine.drivers[m.tier].source_of(&m.name);
        if let Err(e) = serve.point(&m.name, files, &source) {
            tracing::warn!(model = %m.name, "serve path not updated: {e}");
        }
    }

    /// Makes the serve path of every model anew and removes those of
    /// models no longer known (at start, after [`Engine::restore`]).
    pub fn reconcile_serve_paths(&mut self) -> Option<crate::drivers::serve::ServeReport> {
        let serve = self.machine.serve.as_ref()?;
        let models: Vec<_> = self
            .state
            .iter_models()
            .filter_map(|(_, m)| {
                let files = m.files.as_deref()?.clone();
                Some((m.name.to_string(), files, self.machine.drivers[m.tier].source_of(&m.name)))
            })
            .collect();
        Some(serve.reconcile(&models))
    }

    /// Model `name`'s serve path, where it has one.
    pub fn serve_path(&self, name: &str) -> Option<std::path::PathBuf> {
        let serve = self.machine.serve.as_ref()?;
        let id = self.state.model_id(name)?;
        self.state.model(id)?.files.as_ref()?;
        Some(serve.path_of(name))
    }

    /// Whether tier `tier` still waits to release what it held of `model`
    /// (a move back into it waits for that).
    pub(crate) fn release_pending(&self, model: &str, tier: usize) -> bool {
        self.pending_releases.iter().any(|r| r.tier == tier && &*r.model == model)
    }
}
