//! The tier engine: a synchronous state machine that owns the placement,
//! the limits and the move jobs, and takes the current time as an argument.
//!
//! It performs no I/O. Moves are carried out by the injected [`Backend`];
//! what should move is suggested by the injected [`Policy`]. The async server,
//! the simulation harness and the property tests all drive this same type.
//!
//! Capacity rules:
//! - admission: a move is accepted only if the target's committed bytes
//!   (`used + incoming`) plus the model fit under the limit, counting room
//!   freed by demotions the move depends on (each freed byte counted once);
//!   the reservation is taken at once, so concurrent moves never overcommit;
//! - start: a queued move starts only when its dependencies have succeeded
//!   and the bytes physically fit (`used + incoming_running + size <= limit`);
//! - a model is in exactly one tier; while it moves it stays in its source.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::{Map, Value, json};
use smallvec::SmallVec;

use crate::config::{Config, bytes_to_gb, gb_to_bytes};
use crate::error::EngineError;
use crate::optimizer::{Desire, Policy};

use super::backend::{Backend, Capacity, MoveEvent, MoveOrder};
use super::job::{Attempt, Job, JobKey, JobStatus, Operation, Origin, Priority};
use super::state::{Model, ModelId, State, Usage, round6};
use super::table::{JobTable, ReadyQueue};

/// Options of one move submission.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    pub priority: Priority,
    /// Wire ids of jobs that must succeed first.
    pub depends_on: Vec<String>,
    pub make_room: bool,
    pub max_retries: Option<u32>,
    pub bandwidth_mb_s: Option<f64>,
    pub origin: Origin,
    pub reason: Option<String>,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            priority: Priority::Normal,
            depends_on: Vec::new(),
            make_room: false,
            max_retries: None,
            bandwidth_mb_s: None,
            origin: Origin::User,
            reason: None,
        }
    }
}

/// Answer to an accepted move.
#[derive(Debug, Clone)]
pub struct MoveStarted {
    /// The engine's key of the move (job ids are empty on the simulator's
    /// hot path, keys never are).
    pub job_key: JobKey,
    pub job_id: String,
    pub model_name: String,
    pub operation: Operation,
    pub source_tier: String,
    pub target_tier: String,
    /// Demotions started to make room, by job id.
    pub make_room_jobs: Vec<String>,
}

impl MoveStarted {
    pub fn to_json(&self) -> Value {
        json!({
            "status": "tier_move_started",
            "job_id": self.job_id,
            "model_name": self.model_name,
            "operation": self.operation.as_str(),
            "source_tier": self.source_tier,
            "target_tier": self.target_tier,
            "make_room": self.make_room_jobs,
        })
    }
}

/// A planned or started move of an `auto_optimize` or policy decision.
#[derive(Debug, Clone)]
pub struct PlanStep {
    pub model_name: String,
    pub operation: Operation,
    pub source_tier: String,
    pub target_tier: String,
    pub reason: String,
    pub usage: u64,
    pub job_id: Option<String>,
    /// Why the step was not started, when it was not.
    pub skipped: Option<String>,
}

impl PlanStep {
    /// The seed's sentence: "Promoting gpt2-large to RAM (usage: 12)".
    pub fn sentence(&self) -> String {
        let verb = match self.operation {
            Operation::Promote => "Promoting",
            Operation::Demote => "Demoting",
        };
        // The seed's form exactly; the policy's own reason is in the plan.
        format!(
            "{verb} {} to {} (usage: {})",
            self.model_name,
            self.target_tier.to_uppercase(),
            self.usage
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "model_name": self.model_name,
            "operation": self.operation.as_str(),
            "source_tier": self.source_tier,
            "target_tier": self.target_tier,
            "reason": self.reason,
            "usage": self.usage,
            "job_id": self.job_id,
            "skipped": self.skipped,
        })
    }
}

/// Counters for `metrics`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub accesses: u64,
    pub load_seconds: f64,
    pub hits_by_tier: Vec<u64>,
    pub moves_started: u64,
    pub moves_succeeded: u64,
    pub moves_failed: u64,
    pub moves_cancelled: u64,
    pub retries: u64,
    pub bytes_moved: u64,
    pub jobs_submitted: u64,
    /// Accesses that found their model's own promotion queued or running.
    pub accesses_during_promotion: u64,
    /// What those accesses paid beyond the cost of the tier the promotion
    /// was taking their model to: the load seconds the move's time cost
    /// (an instant move would have saved them).
    pub promotion_wait_s: f64,
}

/// A small ordered set of job keys (the running jobs: at most
/// `max_concurrent_tasks`): a sorted vector, cheaper than a B-tree at that
/// size, iterated in key order like one.
#[derive(Debug, Default)]
struct SortedKeys(Vec<JobKey>);

impl SortedKeys {
    fn insert(&mut self, key: JobKey) -> bool {
        match self.0.binary_search(&key) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, key);
                true
            }
        }
    }

    fn remove(&mut self, key: &JobKey) -> bool {
        match self.0.binary_search(key) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    fn contains(&self, key: &JobKey) -> bool {
        self.0.binary_search(key).is_ok()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, JobKey> {
        self.0.iter()
    }
}

/// The engine. See the module docs.
pub struct Engine {
    state: State,
    cfg: Config,
    backend: Box<dyn Backend>,
    policy: Box<dyn Policy>,
    /// Every job not yet pushed out of the history.
    jobs: JobTable,
    job_ids: HashMap<String, JobKey>,
    /// How many jobs are queued. A queued job is in exactly one of: `ready`,
    /// waiting on dependencies (`Job::unmet_deps > 0`), `delayed`. Their
    /// start order (listing, positions) is computed when asked for
    /// ([`Engine::queued_in_order`]), not kept on every move.
    queued: usize,
    /// Queued jobs whose dependencies have all succeeded and whose retry
    /// delay is over: the only set the scheduler scans.
    ready: ReadyQueue,
    /// Queued jobs waiting out a retry delay, by the time it ends.
    delayed: BTreeSet<(TimeKey, JobKey)>,
    running: SortedKeys,
    /// Ended jobs, oldest first, bounded by `cfg.job_history`.
    ended: VecDeque<JobKey>,
    /// The backend's events of one poll (a buffer kept between ticks).
    events: Vec<MoveEvent>,
    next_key: JobKey,
    max_concurrent: usize,
    /// Something changed that may let a queued job start.
    dirty: bool,
    metrics: Metrics,
    /// Scheduling decisions, when recording is on (property tests).
    log: Option<Vec<SchedEvent>>,
    /// Ended jobs of earlier runs (restored from a state file), newest
    /// first, as their wire views; answered by `tier_job_status` and history.
    archive: Vec<Value>,
    /// The engine second of the last job id, and the next free suffix of
    /// each id base used in it.
    id_second: u64,
    id_suffixes: HashMap<String, u64>,
    /// Some tier has a memory-pressure floor (`min_free_gb`), and when it
    /// is next checked.
    has_floors: bool,
    next_pressure_check: f64,
    started_at: f64,
    /// Build plan steps and job reasons for policy moves (off only inside
    /// [`Engine::access_load`], the simulator's hot path).
    explain: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend.name())
            .field("policy", &self.policy.name())
            .finish()
    }
}

/// An `f64` time usable as an ordered key (times are never negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TimeKey(u64);

impl TimeKey {
    fn new(t: f64) -> TimeKey {
        TimeKey(t.max(0.0).to_bits())
    }

    fn time(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// One scheduling decision, for property tests and debugging.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedEvent {
    pub time: f64,
    pub kind: SchedEventKind,
    pub job: JobKey,
    pub priority: Priority,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedEventKind {
    Submitted,
    Started,
    Retrying { not_before: f64 },
    Ended { status: JobStatus },
}

/// What `room` checks a tier against, beyond its current books.
#[derive(Debug, Clone, Copy, Default)]
struct Relief {
    bytes: u64,
    models: usize,
}

/// Why `bytes` more do not fit in a tier (the first check that fails).
#[derive(Debug, Clone, Copy)]
enum Lack {
    Limit { free: u64, limit: u64 },
    Count { max_models: usize },
    Hardware { available: u64 },
    Unavailable,
}

impl Engine {
    /// An engine with the configuration's tiers and catalog.
    pub fn new(cfg: Config, backend: Box<dyn Backend>, policy: Box<dyn Policy>, now: f64) -> Result<Engine, EngineError> {
        let mut state = State::new(&cfg);
        for mc in &cfg.models {
            let tier = match &mc.tier {
                Some(t) => state.tier_index(t).ok_or_else(|| EngineError::UnknownTier {
                    tier: t.clone(),
                    known: state.tier_names(),
                })?,
                None => state.last_tier(),
            };
            let bytes = gb_to_bytes(mc.size_gb);
            let id = state.models.len();
            state.models.push(Some(Model {
                name: mc.name.as_str().into(),
                bytes,
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
                registered_at: now,
            }));
            state.by_name.insert(mc.name.clone(), id);
            state.attach(id, tier);
            state.tiers[tier].used += bytes;
            state.tiers[tier].models += 1;
        }
        let tiers = state.tiers.len();
        let has_floors = state.tiers.iter().any(|t| t.min_free.is_some());
        Ok(Engine {
            state,
            max_concurrent: cfg.moves.max_concurrent.max(1),
            cfg,
            backend,
            policy,
            jobs: JobTable::default(),
            job_ids: HashMap::new(),
            queued: 0,
            ready: ReadyQueue::default(),
            delayed: BTreeSet::new(),
            running: SortedKeys::default(),
            ended: VecDeque::new(),
            events: Vec::new(),
            next_key: 1,
            dirty: false,
            log: None,
            archive: Vec::new(),
            id_second: u64::MAX,
            id_suffixes: HashMap::new(),
            has_floors,
            next_pressure_check: now,
            metrics: Metrics {
                hits_by_tier: vec![0; tiers],
                ..Metrics::default()
            },
            started_at: now,
            explain: true,
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

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Jobs queued or running.
    pub fn active_jobs(&self) -> usize {
        self.queued + self.running.len()
    }

    /// The queued jobs in start order: priority, then submission.
    fn queued_in_order(&self) -> Vec<(Priority, JobKey)> {
        let mut order: Vec<(Priority, JobKey)> = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .map(|j| (j.priority, j.key))
            .collect();
        order.sort_unstable();
        order
    }

    /// The earliest time at which `tick` has something to do, for drivers
    /// that advance virtual time.
    pub fn next_wakeup(&self) -> Option<f64> {
        let b = self.backend.next_event_time();
        let w = if let Some((t, _)) = self.delayed.first() {
            Some(t.time())
        } else {
            None
        };
        match (b, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn model_by_name(&self, name: &str) -> Result<ModelId, EngineError> {
        self.state
            .model_id(name)
            .ok_or_else(|| EngineError::ModelNotFound { model: name.to_string() })
    }

    fn tier_by_name(&self, name: &str) -> Result<usize, EngineError> {
        self.state.tier_index(name).ok_or_else(|| EngineError::UnknownTier {
            tier: name.to_string(),
            known: self.state.tier_names(),
        })
    }

    fn job_by_id(&self, id: &str) -> Result<JobKey, EngineError> {
        self.job_ids
            .get(id)
            .copied()
            .ok_or_else(|| EngineError::JobNotFound { job_id: id.to_string() })
    }

    // ---------------------------------------------------------------- room

    /// Bytes the hardware can still take in `tier`, after the reserve and the
    /// moves already on their way in; `None` when unbounded.
    pub(crate) fn hardware_available(&self, tier: usize) -> Result<Option<u64>, EngineError> {
        let t = &self.state.tiers[tier];
        match self.backend.capacity(tier) {
            Capacity::Unbounded => Ok(None),
            Capacity::Total(total) => Ok(Some(total.saturating_sub(t.reserved).saturating_sub(t.committed()))),
            Capacity::Free(free) => Ok(Some(
                free.saturating_sub(t.reserved)
                    .saturating_sub(t.incoming.saturating_sub(t.incoming_running)),
            )),
            Capacity::Unavailable => Err(EngineError::TierUnavailable {
                tier: t.name.clone(),
                reason: self
                    .backend
                    .tier_details(tier)
                    .get("unavailable_reason")
                    .and_then(|v| v.as_str())
                    .unwrap_or("the hardware is not available")
                    .to_string(),
            }),
        }
    }

    /// Whether `bytes` more fit in `tier` under its limit, model count and
    /// hardware, given `relief` (room that moves this one waits for free).
    fn room(&self, tier: usize, bytes: u64, relief: Relief, model: &str) -> Result<(), EngineError> {
        let t = &self.state.tiers[tier];
        match self.lack_of_room(tier, bytes, relief) {
            None => Ok(()),
            Some(Lack::Limit { free, limit }) => Err(EngineError::LimitExceeded {
                tier: t.name.clone(),
                model: model.to_string(),
                required: bytes,
                available: free,
                limit,
            }),
            Some(Lack::Count { max_models }) => Err(EngineError::ModelCountExceeded {
                tier: t.name.clone(),
                max_models,
            }),
            Some(Lack::Hardware { available }) => Err(EngineError::Insufficient {
                tier: t.name.clone(),
                model: model.to_string(),
                required: bytes,
                available,
            }),
            Some(Lack::Unavailable) => self.hardware_available(tier).map(|_| ()),
        }
    }

    /// What [`Engine::room`] would refuse, without building the error
    /// (batches try several reliefs in a row on the simulator's hot path).
    fn lack_of_room(&self, tier: usize, bytes: u64, relief: Relief) -> Option<Lack> {
        let t = &self.state.tiers[tier];
        if let Some(limit) = t.limit {
            let committed = t.committed().saturating_sub(relief.bytes);
            let free = limit.saturating_sub(committed);
            if bytes > free {
                return Some(Lack::Limit { free, limit });
            }
        }
        if let Some(max) = t.max_models
            && t.committed_models().saturating_sub(relief.models) + 1 > max
        {
            return Some(Lack::Count { max_models: max });
        }
        match self.hardware_available(tier) {
            Err(_) => Some(Lack::Unavailable),
            Ok(Some(avail)) => {
                let avail = avail.saturating_add(relief.bytes);
                (bytes > avail).then_some(Lack::Hardware { available: avail })
            }
            Ok(None) => None,
        }
    }

    /// Room freed in `tier` by the moves among `deps` that leave it and that
    /// no other job has counted on yet.
    fn relief_from(&self, tier: usize, deps: &[JobKey]) -> Relief {
        let mut relief = Relief::default();
        for k in deps {
            if let Some(j) = self.jobs.get(k)
                && j.from == tier
                && !j.status.is_terminal()
            {
                relief.bytes += j.unclaimed_bytes;
                relief.models += j.unclaimed_models;
            }
        }
        relief
    }

    /// How much room `bytes` more would lack in `tier` without relief:
    /// the largest shortfall over the limit, the model count and the hardware.
    fn shortfall(&self, tier: usize, bytes: u64) -> Relief {
        let t = &self.state.tiers[tier];
        let mut need = Relief::default();
        if let Some(limit) = t.limit {
            need.bytes = (t.committed() + bytes).saturating_sub(limit);
        }
        if let Ok(Some(avail)) = self.hardware_available(tier) {
            need.bytes = need.bytes.max(bytes.saturating_sub(avail));
        }
        if let Some(max) = t.max_models {
            need.models = (t.committed_models() + 1).saturating_sub(max);
        }
        need
    }

    /// Victims to demote from `tier` so that `bytes` fit, least valuable
    /// first by the policy, never pinned, busy or unavailable models, nor
    /// `exclude`. Returns (victim, destination) pairs, or the error of the
    /// room check if no set of victims suffices.
    fn plan_make_room(
        &self,
        now: f64,
        tier: usize,
        bytes: u64,
        exclude: Option<ModelId>,
        model_name: &str,
    ) -> Result<Vec<(ModelId, usize)>, EngineError> {
        let candidates = self.eviction_order(now, tier, exclude);
        let mut relief = Relief::default();
        let mut extra_in = vec![0u64; self.state.tiers.len()];
        let mut extra_models = vec![0usize; self.state.tiers.len()];
        let mut victims = Vec::new();
        let mut last_err = match self.room(tier, bytes, relief, model_name) {
            Ok(()) => return Ok(victims),
            Err(e) => e,
        };
        for id in candidates {
            let Some(m) = self.state.model(id) else { continue };
            // Destination: the first slower tier with room for the victim.
            let dest = (tier + 1..self.state.tiers.len()).find(|&d| {
                self.state.size_allowed(m.bytes, d) && {
                    let t = &self.state.tiers[d];
                    let fits_limit = t.limit.is_none_or(|l| t.committed() + extra_in[d] + m.bytes <= l);
                    let fits_count = t.max_models.is_none_or(|mx| t.committed_models() + extra_models[d] < mx);
                    let fits_hw = matches!(self.hardware_available(d), Ok(None))
                        || matches!(self.hardware_available(d), Ok(Some(a)) if a >= extra_in[d] + m.bytes);
                    fits_limit && fits_count && fits_hw
                }
            });
            let Some(dest) = dest else { continue };
            extra_in[dest] += m.bytes;
            extra_models[dest] += 1;
            relief.bytes += m.bytes;
            relief.models += 1;
            victims.push((id, dest));
            match self.room(tier, bytes, relief, model_name) {
                Ok(()) => return Ok(victims),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    // ---------------------------------------------------------- submission

    fn new_job_id(&mut self, op: Operation, model: &str, now: f64) -> String {
        let second = now.max(0.0).floor() as u64;
        let base = format!("tier_{}_{}_{second}", op.as_str(), model);
        // Ids taken within this second, by base: the next suffix is known
        // without searching (many moves of one model in one second stay O(1)).
        if self.id_second != second {
            self.id_second = second;
            self.id_suffixes.clear();
        }
        let next = self.id_suffixes.entry(base.clone()).or_insert(1);
        let mut n = *next;
        loop {
            let candidate = if n == 1 { base.clone() } else { format!("{base}_{n}") };
            n += 1;
            if !self.job_ids.contains_key(&candidate) {
                *next = n;
                return candidate;
            }
        }
    }

    /// Validates and queues one move. `deps` are engine keys (already
    /// resolved); the model must be idle.
    fn submit(
        &mut self,
        now: f64,
        model: ModelId,
        to: usize,
        deps: SmallVec<[JobKey; 2]>,
        opts: &MoveOptions,
    ) -> Result<JobKey, EngineError> {
        let Some(m) = self.state.model(model) else {
            return Err(EngineError::Internal(format!("model id {model} vanished")));
        };
        let (name, bytes, from) = (m.name.clone(), m.bytes, m.tier);
        self.backend.accepts_moves_into(to).map_err(EngineError::bad_request)?;
        if from == to {
            return Err(EngineError::AlreadyInTier {
                model: name.to_string(),
                tier: self.state.tiers[to].name.clone(),
            });
        }
        if let Some(k) = m.job {
            let job_id = self.jobs.get(&k).map(|j| j.id.clone()).unwrap_or_default();
            return Err(EngineError::AlreadyMoving {
                model: name.to_string(),
                job_id,
            });
        }
        if !self.state.size_allowed(bytes, to) {
            return Err(EngineError::ModelTooLarge {
                model: name.to_string(),
                size_gb: bytes_to_gb(bytes),
                max_gb: bytes_to_gb(self.state.max_single_model),
                tier: self.state.tiers[to].name.clone(),
            });
        }
        if let Some(reason) = &m.unavailable {
            return Err(EngineError::ModelUnavailable {
                model: name.to_string(),
                reason: reason.clone(),
            });
        }
        for d in &deps {
            if let Some(j) = self.jobs.get(d)
                && matches!(j.status, JobStatus::Failed | JobStatus::Cancelled)
            {
                return Err(EngineError::DependencyFailed {
                    job_id: j.id.clone(),
                    status: j.status.as_str().to_string(),
                });
            }
        }
        let relief = self.relief_from(to, &deps);
        self.room(to, bytes, relief, &name)?;
        // Room this move lacks without its dependencies (none to claim without them).
        let mut need = if deps.is_empty() {
            Relief::default()
        } else {
            self.shortfall(to, bytes)
        };

        let op = if to < from { Operation::Promote } else { Operation::Demote };
        let rate = match op {
            Operation::Promote => self.cfg.moves.promote_s_per_gb,
            Operation::Demote => self.cfg.moves.demote_s_per_gb,
        };
        let key = self.next_key;
        self.next_key += 1;
        // Jobs of the simulator's hot path are never looked up by id.
        let id = if self.explain {
            self.new_job_id(op, &name, now)
        } else {
            String::new()
        };
        let mut claimed = SmallVec::new();
        for d in &deps {
            if need.bytes == 0 && need.models == 0 {
                break;
            }
            if let Some(j) = self.jobs.get_mut(d)
                && j.from == to
                && !j.status.is_terminal()
            {
                let (b, m) = (need.bytes.min(j.unclaimed_bytes), need.models.min(j.unclaimed_models));
                j.unclaimed_bytes -= b;
                j.unclaimed_models -= m;
                self.state.tiers[to].claimed_out += b;
                self.state.tiers[to].claimed_out_models += m;
                need.bytes -= b;
                need.models -= m;
                if b > 0 || m > 0 {
                    claimed.push((*d, b, m));
                }
            }
        }
        for d in &deps {
            if let Some(j) = self.jobs.get_mut(d) {
                j.dependents.push(key);
            }
        }
        let unmet_deps = deps
            .iter()
            .filter(|d| self.jobs.get(d).is_some_and(|j| j.status != JobStatus::Success))
            .count();
        let t = &mut self.state.tiers[to];
        t.incoming += bytes;
        t.incoming_models += 1;
        if let Some(m) = self.state.model_mut(model) {
            m.job = Some(key);
        }
        *self.jobs.slot_for(key) = Some(Job {
            key,
            id: id.clone(),
            model,
            model_name: name,
            bytes,
            from,
            to,
            operation: op,
            priority: opts.priority,
            origin: opts.origin,
            depends_on: deps,
            claimed_releases: claimed,
            unclaimed_bytes: bytes,
            unclaimed_models: 1,
            max_retries: opts.max_retries.unwrap_or(self.cfg.moves.max_retries),
            attempt: 0,
            status: JobStatus::Queued,
            created_at: now,
            started_at: None,
            ended_at: None,
            not_before: now,
            progress: 0.0,
            estimated_s: bytes_to_gb(bytes) * rate,
            error: None,
            attempts: SmallVec::new(),
            cancel_requested: false,
            bandwidth_mb_s: opts.bandwidth_mb_s,
            reason: opts.reason.clone(),
            unmet_deps,
            dependents: SmallVec::new(),
        });
        if !id.is_empty() {
            self.job_ids.insert(id, key);
        }
        self.queued += 1;
        if unmet_deps == 0 {
            self.ready.insert((opts.priority, key));
        }
        self.record(now, SchedEventKind::Submitted, key, opts.priority);
        self.metrics.jobs_submitted += 1;
        self.dirty = true;
        Ok(key)
    }

    /// Removes a queued job that never started, as if never submitted (used
    /// to undo the first half of a make-room submission that failed).
    fn retract(&mut self, key: JobKey) {
        let Some(job) = self.jobs.remove(&key) else { return };
        self.job_ids.remove(&job.id);
        self.queued -= 1;
        self.ready.remove(&(job.priority, key));
        if let Some(log) = &mut self.log {
            log.retain(|e| e.job != key);
        }
        let t = &mut self.state.tiers[job.to];
        t.incoming -= job.bytes;
        t.incoming_models -= 1;
        if let Some(m) = self.state.model_mut(job.model) {
            m.job = None;
        }
        for d in &job.depends_on {
            if let Some(j) = self.jobs.get_mut(d) {
                j.dependents.retain(|k| *k != key);
            }
        }
        for (c, b, m) in &job.claimed_releases {
            if let Some(j) = self.jobs.get_mut(c) {
                j.unclaimed_bytes += b;
                j.unclaimed_models += m;
                self.state.tiers[job.to].claimed_out -= b;
                self.state.tiers[job.to].claimed_out_models -= m;
            }
        }
        self.metrics.jobs_submitted -= 1;
    }

    /// Resolves wire job ids to keys.
    fn resolve_deps(&self, ids: &[String]) -> Result<Vec<JobKey>, EngineError> {
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let k = self
                .job_ids
                .get(id)
                .copied()
                .ok_or_else(|| EngineError::UnknownDependency { job_id: id.clone() })?;
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// `move_tier`: validates in the documented order, makes room if asked,
    /// and queues the move.
    pub fn move_tier(&mut self, now: f64, model_name: &str, target: &str, opts: &MoveOptions) -> Result<MoveStarted, EngineError> {
        self.tick(now);
        let id = self.model_by_name(model_name)?;
        let to = self.tier_by_name(target)?;
        self.backend.accepts_moves_into(to).map_err(EngineError::bad_request)?;
        let deps = self.resolve_deps(&opts.depends_on)?;
        let (from, bytes, busy) = match self.state.model(id) {
            Some(m) => (m.tier, m.bytes, m.job),
            None => {
                return Err(EngineError::ModelNotFound {
                    model: model_name.to_string(),
                });
            }
        };
        if from == to {
            return Err(EngineError::AlreadyInTier {
                model: model_name.to_string(),
                tier: target.to_string(),
            });
        }
        if let Some(k) = busy {
            let job_id = self.jobs.get(&k).map(|j| j.id.clone()).unwrap_or_default();
            return Err(EngineError::AlreadyMoving {
                model: model_name.to_string(),
                job_id,
            });
        }
        let mut room_jobs = Vec::new();
        let mut all_deps = deps;
        if opts.make_room
            && self.state.size_allowed(bytes, to)
            && self.room(to, bytes, self.relief_from(to, &all_deps), model_name).is_err()
        {
            let victims = self.plan_make_room(now, to, bytes, Some(id), model_name)?;
            let room_opts = MoveOptions {
                priority: opts.priority,
                origin: Origin::MakeRoom,
                reason: Some(format!("making room for {model_name} in {target}")),
                ..MoveOptions::default()
            };
            for (victim, dest) in victims {
                match self.submit(now, victim, dest, SmallVec::new(), &room_opts) {
                    Ok(k) => room_jobs.push(k),
                    Err(e) => {
                        for k in room_jobs {
                            self.retract(k);
                        }
                        return Err(e);
                    }
                }
            }
            all_deps.extend(room_jobs.iter().copied());
        }
        match self.submit(now, id, to, all_deps.into(), opts) {
            Ok(key) => {
                // Read before the tick: a move that ends at once may leave
                // a short history before the answer is built.
                let (job_id, operation) = match self.jobs.get(&key) {
                    Some(job) => (job.id.clone(), job.operation),
                    None => return Err(EngineError::Internal(format!("job {key} vanished"))),
                };
                let make_room_jobs = room_jobs.iter().filter_map(|k| self.jobs.get(k).map(|j| j.id.clone())).collect();
                self.tick(now);
                Ok(MoveStarted {
                    job_key: key,
                    job_id,
                    model_name: model_name.to_string(),
                    operation,
                    source_tier: self.state.tiers[from].name.clone(),
                    target_tier: target.to_string(),
                    make_room_jobs,
                })
            }
            Err(e) => {
                for k in room_jobs {
                    self.retract(k);
                }
                Err(e)
            }
        }
    }

    /// Applies a policy's desires as one batch: each desire may count on
    /// room freed by earlier desires of the batch that leave its target.
    fn apply_desires(&mut self, now: f64, mut desires: Vec<Desire>, origin: Origin, priority: Priority) -> Vec<PlanStep> {
        let mut steps = Vec::with_capacity(if self.explain { desires.len() } else { 0 });
        let mut batch: SmallVec<[JobKey; 8]> = SmallVec::new();
        let mut retry: Vec<(usize, Desire)> = Vec::new();
        for d in desires.drain(..) {
            let Some(m) = self.state.model(d.model) else { continue };
            let (from, usage) = (m.tier, m.usage.count);
            if d.target >= self.state.tiers.len() || d.target == from {
                continue;
            }
            if !self.explain {
                // The simulator's hot path: no plan steps.
                if let Ok(k) = self.submit_desire(now, &d, &batch, origin, priority) {
                    batch.push(k);
                }
                continue;
            }
            let name = m.name.to_string();
            let mut step = PlanStep {
                model_name: name,
                operation: if d.target < from { Operation::Promote } else { Operation::Demote },
                source_tier: self.state.tiers[from].name.clone(),
                target_tier: self.state.tiers[d.target].name.clone(),
                reason: d.reason.to_string(),
                usage,
                job_id: None,
                skipped: None,
            };
            match self.submit_desire(now, &d, &batch, origin, priority) {
                Ok(k) => {
                    batch.push(k);
                    step.job_id = self.jobs.get(&k).map(|j| j.id.clone());
                }
                Err(e) => {
                    if matches!(
                        e,
                        EngineError::LimitExceeded { .. } | EngineError::Insufficient { .. } | EngineError::ModelCountExceeded { .. }
                    ) {
                        retry.push((steps.len(), d));
                    }
                    step.skipped = Some(e.to_string());
                }
            }
            steps.push(step);
        }
        crate::optimizer::place::recycle_desires(desires);
        // A step refused for room may fit once later steps of the batch
        // free it (plans need not be perfectly ordered): one more try.
        for (i, d) in retry {
            if let Ok(k) = self.submit_desire(now, &d, &batch, origin, priority) {
                batch.push(k);
                steps[i].job_id = self.jobs.get(&k).map(|j| j.id.clone());
                steps[i].skipped = None;
            }
        }
        self.tick(now);
        steps
    }

    /// Submits one desire of a batch, counting on just as many of the
    /// batch's moves out of its target tier as it needs for room.
    fn submit_desire(&mut self, now: f64, d: &Desire, batch: &[JobKey], origin: Origin, priority: Priority) -> Result<JobKey, EngineError> {
        let Some(m) = self.state.model(d.model) else {
            return Err(EngineError::Internal(format!("model id {} vanished", d.model)));
        };
        let (name, bytes) = (&*m.name, m.bytes);
        let opts = MoveOptions {
            priority,
            origin,
            reason: self.explain.then(|| d.reason.to_string()),
            make_room: d.make_room,
            ..MoveOptions::default()
        };
        let leaving = batch.iter().copied().filter(|k| {
            self.jobs
                .get(k)
                .is_some_and(|j| j.from == d.target && j.unclaimed_bytes > 0 && !j.status.is_terminal())
        });
        let mut deps: SmallVec<[JobKey; 2]> = SmallVec::new();
        for k in leaving {
            if self.lack_of_room(d.target, bytes, self.relief_from(d.target, &deps)).is_none() {
                break;
            }
            deps.push(k);
        }
        if d.make_room && deps.is_empty() {
            let name = name.to_string();
            let target = self.state.tiers[d.target].name.clone();
            Ok(self.move_tier(now, &name, &target, &opts)?.job_key)
        } else {
            self.submit(now, d.model, d.target, deps, &opts)
        }
    }

    // ------------------------------------------------------------ requests

    /// `register_model`: places a new model in the preferred tier if it has
    /// room, else the next slower tier with room, else the last tier.
    pub fn register(
        &mut self,
        now: f64,
        name: &str,
        size_gb: Option<f64>,
        preferred: Option<&str>,
        path: Option<&std::path::Path>,
    ) -> Result<Value, EngineError> {
        self.tick(now);
        if self.state.by_name.contains_key(name) {
            return Err(EngineError::DuplicateModel { model: name.to_string() });
        }
        if let Some(gb) = size_gb
            && !(gb.is_finite() && gb >= 0.0)
        {
            return Err(EngineError::bad_request(format!("size_gb must be a non-negative number, got {gb}")));
        }
        let first = match preferred {
            Some(p) => self.tier_by_name(p)?,
            None => 0,
        };
        let instant = self.backend.places_instantly();
        let bytes = self
            .backend
            .register_model(name, path, size_gb.map(gb_to_bytes))
            .map_err(EngineError::bad_request)?;
        let last = self.state.last_tier();
        let chosen = (first..=last)
            .find(|&t| {
                self.state.size_allowed(bytes, t)
                    && self.backend.accepts_moves_into(t).is_ok()
                    && self.room(t, bytes, Relief::default(), name).is_ok()
                    && (!instant || self.fits_physically(t, bytes))
            })
            .unwrap_or(last);
        let home = if instant { chosen } else { last };
        let id = self.state.models.len();
        self.state.models.push(Some(Model {
            name: name.into(),
            bytes,
            tier: home,
            usage: Usage {
                decayed_at: now,
                ..Usage::default()
            },
            pinned: false,
            job: None,
            unavailable: None,
            path: path.map(|p| p.to_path_buf()),
            registered_at: now,
        }));
        self.state.by_name.insert(name.to_string(), id);
        self.state.attach(id, home);
        self.state.tiers[home].used += bytes;
        self.state.tiers[home].models += 1;
        let mut job_id = None;
        if home != chosen {
            let opts = MoveOptions {
                origin: Origin::Register,
                reason: Some("hot load".into()),
                ..MoveOptions::default()
            };
            if let Ok(k) = self.submit(now, id, chosen, SmallVec::new(), &opts) {
                job_id = self.jobs.get(&k).map(|j| j.id.clone());
            }
            self.tick(now);
        }
        Ok(json!({
            "status": "success",
            "model_name": name,
            "size_gb": bytes_to_gb(bytes),
            "tier": self.state.tiers[chosen].name,
            "job_id": job_id,
        }))
    }

    /// `unregister_model`.
    pub fn unregister(&mut self, now: f64, name: &str) -> Result<Value, EngineError> {
        self.tick(now);
        let id = self.model_by_name(name)?;
        let Some(m) = self.state.model(id) else {
            return Err(EngineError::ModelNotFound { model: name.to_string() });
        };
        if let Some(k) = m.job {
            let job_id = self.jobs.get(&k).map(|j| j.id.clone()).unwrap_or_default();
            return Err(EngineError::ModelBusy {
                model: name.to_string(),
                job_id,
            });
        }
        let (tier, bytes) = (m.tier, m.bytes);
        self.backend.unregister_model(name, tier);
        self.state.tiers[tier].used -= bytes;
        self.state.tiers[tier].models -= 1;
        self.state.detach(id, tier);
        self.state.models[id] = None;
        self.state.by_name.remove(name);
        self.dirty = true;
        Ok(json!({"status": "success", "model_name": name, "tier": self.state.tiers[tier].name}))
    }

    /// `access_model`: records a use and lets the policy react.
    pub fn access(&mut self, now: f64, name: &str) -> Result<Value, EngineError> {
        let id = self.model_by_name(name)?;
        let steps = self.access_id(now, id)?;
        let Some(m) = self.state.model(id) else {
            return Err(EngineError::ModelNotFound { model: name.to_string() });
        };
        let (tier, load) = steps.0;
        Ok(json!({
            "status": "success",
            "model_name": name,
            "tier": self.state.tiers[tier].name,
            "load_time_s": round6(load),
            "usage": m.usage.count,
            "jobs": steps.1.iter().filter_map(|s| s.job_id.clone()).collect::<Vec<_>>(),
        }))
    }

    /// The simulator's access: like [`Engine::access_id`] but answers only
    /// the load seconds, and the policy's moves carry no explanations.
    pub fn access_load(&mut self, now: f64, id: ModelId) -> Result<f64, EngineError> {
        self.explain = false;
        let r = self.access_id(now, id);
        self.explain = true;
        r.map(|((_, load), _)| load)
    }

    /// The access path without names (the simulator's hot loop): returns the
    /// tier served from, the load seconds, and the policy's steps.
    pub fn access_id(&mut self, now: f64, id: ModelId) -> Result<((usize, f64), Vec<PlanStep>), EngineError> {
        self.tick(now);
        let usage_cfg = self.state.usage_cfg.clone();
        let Some(m) = self.state.model_mut(id) else {
            return Err(EngineError::ModelNotFound { model: format!("#{id}") });
        };
        if let Some(reason) = &m.unavailable {
            return Err(EngineError::ModelUnavailable {
                model: m.name.to_string(),
                reason: reason.clone(),
            });
        }
        m.usage.record(now, &usage_cfg);
        let (tier, bytes, pending) = (m.tier, m.bytes, m.job);
        let load = self.state.tiers[tier].load_seconds(bytes);
        if let Some(to) = pending.and_then(|k| self.jobs.get(&k)).map(|j| j.to).filter(|&to| to < tier) {
            self.metrics.accesses_during_promotion += 1;
            self.metrics.promotion_wait_s += load - self.state.tiers[to].load_seconds(bytes);
        }
        self.metrics.accesses += 1;
        self.metrics.load_seconds += load;
        self.metrics.hits_by_tier[tier] += 1;
        let desires = self.policy.on_access(now, &self.state, id);
        let steps = if desires.is_empty() {
            Vec::new()
        } else {
            self.apply_desires(now, desires, Origin::Policy, Priority::Low)
        };
        Ok(((tier, load), steps))
    }

    /// The policy's periodic decision.
    pub fn policy_tick(&mut self, now: f64) -> Vec<PlanStep> {
        self.tick(now);
        let desires = self.policy.on_tick(now, &self.state);
        if desires.is_empty() {
            Vec::new()
        } else {
            self.apply_desires(now, desires, Origin::Policy, Priority::Low)
        }
    }

    /// `auto_optimize`: the policy's plan, explained, and started unless `dry_run`.
    pub fn auto_optimize(&mut self, now: f64, dry_run: bool) -> Value {
        self.tick(now);
        let desires = self.policy.plan(now, &self.state);
        let steps: Vec<PlanStep> = if dry_run {
            desires
                .into_iter()
                .filter_map(|d| {
                    let m = self.state.model(d.model)?;
                    (d.target != m.tier && d.target < self.state.tiers.len()).then(|| PlanStep {
                        model_name: m.name.to_string(),
                        operation: if d.target < m.tier { Operation::Promote } else { Operation::Demote },
                        source_tier: self.state.tiers[m.tier].name.clone(),
                        target_tier: self.state.tiers[d.target].name.clone(),
                        reason: d.reason.into_owned(),
                        usage: m.usage.count,
                        job_id: None,
                        skipped: None,
                    })
                })
                .collect()
        } else {
            self.apply_desires(now, desires, Origin::Optimize, Priority::Low)
        };
        json!({
            "status": "success",
            "policy": self.policy.name(),
            "dry_run": dry_run,
            "optimizations": steps.iter().filter(|s| s.skipped.is_none()).map(PlanStep::sentence).collect::<Vec<_>>(),
            "jobs": steps.iter().filter_map(|s| s.job_id.clone()).collect::<Vec<_>>(),
            "plan": steps.iter().map(PlanStep::to_json).collect::<Vec<_>>(),
        })
    }

    /// `pin_model` / `unpin_model`.
    pub fn set_pinned(&mut self, name: &str, pinned: bool) -> Result<Value, EngineError> {
        let id = self.model_by_name(name)?;
        let tier_names = self.state.tier_names();
        let Some(m) = self.state.model_mut(id) else {
            return Err(EngineError::ModelNotFound { model: name.to_string() });
        };
        m.pinned = pinned;
        Ok(json!({"status": "success", "model_name": name, "pinned": pinned, "tier": tier_names[m.tier]}))
    }

    /// The current limits, as `update_limits` reports them.
    pub fn limits_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for t in &self.state.tiers {
            if let Some(l) = t.limit {
                m.insert(format!("{}_max_gb", t.name), json!(bytes_to_gb(l)));
            }
            if t.has_reserved {
                m.insert(format!("{}_reserved_gb", t.name), json!(bytes_to_gb(t.reserved)));
            }
        }
        m.insert("max_concurrent_tasks".into(), json!(self.max_concurrent));
        m
    }

    /// `update_limits`: validates every key before changing any; demotes the
    /// least valuable models of tiers whose limit fell below their use.
    pub fn update_limits(&mut self, now: f64, changes: &Map<String, Value>) -> Result<Value, EngineError> {
        self.tick(now);
        enum Change {
            Max(usize, u64),
            Reserved(usize, u64),
            Concurrency(usize),
        }
        let mut plan = Vec::new();
        let mut known: Vec<String> = Vec::new();
        for t in &self.state.tiers {
            if t.limit.is_some() {
                known.push(format!("{}_max_gb", t.name));
            }
            if t.has_reserved {
                known.push(format!("{}_reserved_gb", t.name));
            }
        }
        known.push("max_concurrent_tasks".into());
        if changes.is_empty() {
            return Err(EngineError::bad_request(format!(
                "update_limits needs at least one of: {}",
                known.join(", ")
            )));
        }
        for (key, value) in changes {
            if key == "max_concurrent_tasks" {
                let n = value
                    .as_u64()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| EngineError::InvalidLimit {
                        key: key.clone(),
                        value: value.as_f64().unwrap_or(f64::NAN),
                        minimum: Some(1.0),
                        message: format!("max_concurrent_tasks must be an integer from 1 to 1024, got {value}"),
                    })?;
                plan.push(Change::Concurrency(n as usize));
                continue;
            }
            let Some(v) = value.as_f64() else {
                return Err(EngineError::InvalidLimit {
                    key: key.clone(),
                    value: f64::NAN,
                    minimum: None,
                    message: format!("{key} must be a number, got {value}"),
                });
            };
            let parsed = key
                .strip_suffix("_max_gb")
                .map(|t| (t, true))
                .or_else(|| key.strip_suffix("_reserved_gb").map(|t| (t, false)));
            let tier = parsed.and_then(|(t, is_max)| self.state.tier_index(t).map(|i| (i, is_max)));
            let Some((ti, is_max)) = tier.filter(|(i, is_max)| {
                if *is_max {
                    self.state.tiers[*i].limit.is_some()
                } else {
                    self.state.tiers[*i].has_reserved
                }
            }) else {
                return Err(EngineError::BadRequest {
                    message: format!("Unknown limit {key:?}; known limits: {}", known.join(", ")),
                    details: json!({"key": key, "known_limits": known}).as_object().cloned().unwrap_or_default(),
                });
            };
            let t = &self.state.tiers[ti];
            let min = if is_max { t.min_limit } else { t.min_reserved };
            if !v.is_finite() || v < 0.0 || min.is_some_and(|m| gb_to_bytes(v) < m) {
                let what = if is_max { "limit" } else { "reserved" };
                let message = match min {
                    Some(m) => format!(
                        "{key} = {v} is below the minimum {} {what} of {} GB",
                        t.name.to_uppercase(),
                        bytes_to_gb(m)
                    ),
                    None => format!("{key} must be a non-negative number, got {v}"),
                };
                return Err(EngineError::InvalidLimit {
                    key: key.clone(),
                    value: v,
                    minimum: min.map(bytes_to_gb),
                    message,
                });
            }
            plan.push(if is_max {
                Change::Max(ti, gb_to_bytes(v))
            } else {
                Change::Reserved(ti, gb_to_bytes(v))
            });
        }
        // Pinned models that cannot fit under a lowered limit refuse the change.
        for c in &plan {
            if let Change::Max(ti, new) = c {
                let pinned: u64 = self
                    .state
                    .iter_models()
                    .filter(|(_, m)| m.tier == *ti && m.pinned)
                    .map(|(_, m)| m.bytes)
                    .sum();
                if pinned > *new {
                    let t = &self.state.tiers[*ti];
                    return Err(EngineError::PinnedConflict {
                        tier: t.name.clone(),
                        message: format!(
                            "{} limit of {} GB cannot be met without demoting pinned models ({} GB pinned); unpin them first",
                            t.name.to_uppercase(),
                            bytes_to_gb(*new),
                            bytes_to_gb(pinned)
                        ),
                    });
                }
            }
        }
        let old = self.limits_json();
        let mut lowered = Vec::new();
        for c in plan {
            match c {
                Change::Max(ti, new) => {
                    if self.state.tiers[ti].limit.is_some_and(|l| new < l) {
                        lowered.push(ti);
                    }
                    self.state.tiers[ti].limit = Some(new);
                }
                Change::Reserved(ti, new) => self.state.tiers[ti].reserved = new,
                Change::Concurrency(n) => self.max_concurrent = n,
            }
        }
        self.dirty = true;
        let mut rebalance = Vec::new();
        for ti in lowered {
            rebalance.extend(self.rebalance(now, ti));
        }
        self.tick(now);
        Ok(json!({
            "status": "success",
            "old_limits": old,
            "new_limits": self.limits_json(),
            "rebalance": rebalance,
        }))
    }

    /// Seed 004's memory-pressure cleanup: for each tier whose hardware has
    /// less available than its floor (counting moves already leaving it),
    /// demotes the coldest unpinned idle models until the floor is met.
    /// Returns the jobs started.
    pub fn relieve_pressure(&mut self, now: f64) -> Vec<String> {
        let mut started = Vec::new();
        for ti in 0..self.state.tiers.len() {
            let Some(floor) = self.state.tiers[ti].min_free else { continue };
            let Ok(Some(avail)) = self.hardware_available(ti) else { continue };
            let short = floor.saturating_sub(avail + self.bytes_leaving(ti));
            if short == 0 {
                continue;
            }
            let opts = MoveOptions {
                priority: Priority::High,
                origin: Origin::Pressure,
                reason: Some(format!(
                    "memory pressure: {} has {} GB available, under its {} GB floor",
                    self.state.tiers[ti].name,
                    bytes_to_gb(avail),
                    bytes_to_gb(floor)
                )),
                ..MoveOptions::default()
            };
            started.extend(self.demote_until(now, ti, short, &opts));
        }
        started
    }

    /// Brings a tier back under its limit: first withdraws queued moves into
    /// it, newest first, then demotes its least valuable models.
    fn rebalance(&mut self, now: f64, ti: usize) -> Vec<String> {
        let Some(limit) = self.state.tiers[ti].limit else {
            return Vec::new();
        };
        // Bytes over the limit once every pending move settles.
        let excess = |e: &Engine| {
            let t = &e.state.tiers[ti];
            (t.used + t.incoming).saturating_sub(e.bytes_leaving(ti)).saturating_sub(limit)
        };
        // Queued (not running) moves into the tier that no longer fit fail.
        let queued_in: Vec<JobKey> = self
            .queued_in_order()
            .iter()
            .rev()
            .map(|(_, k)| *k)
            .filter(|k| self.jobs.get(k).is_some_and(|j| j.to == ti))
            .collect();
        for k in queued_in {
            if excess(self) == 0 {
                break;
            }
            let msg = format!(
                "{} limit exceeded: the limit was lowered to {} GB",
                self.state.tiers[ti].name.to_uppercase(),
                bytes_to_gb(limit)
            );
            self.end_job(now, k, JobStatus::Failed, Some(("RESOURCE_UNAVAILABLE".into(), msg)));
        }
        let need = excess(self);
        if need == 0 {
            return Vec::new();
        }
        let opts = MoveOptions {
            priority: Priority::High,
            origin: Origin::Rebalance,
            reason: Some(format!("{} limit lowered to {} GB", self.state.tiers[ti].name, bytes_to_gb(limit))),
            ..MoveOptions::default()
        };
        self.demote_until(now, ti, need, &opts)
    }

    /// Bytes of the queued and running moves out of `tier`.
    fn bytes_leaving(&self, tier: usize) -> u64 {
        self.jobs
            .values()
            .filter(|j| matches!(j.status, JobStatus::Queued | JobStatus::Running) && j.from == tier)
            .map(|j| j.bytes)
            .sum()
    }

    /// The models of `tier` that may be demoted (not pinned, idle,
    /// available, not `exclude`), least valuable first by the policy; ties:
    /// least recently used, then lowest id.
    fn eviction_order(&self, now: f64, tier: usize, exclude: Option<ModelId>) -> Vec<ModelId> {
        let mut ranked: Vec<(f64, f64, ModelId)> = self
            .state
            .iter_models()
            .filter(|(id, m)| m.tier == tier && !m.pinned && m.job.is_none() && m.unavailable.is_none() && Some(*id) != exclude)
            .map(|(id, m)| {
                (
                    self.policy.eviction_rank(now, &self.state, id),
                    m.usage.last_access.unwrap_or(f64::NEG_INFINITY),
                    id,
                )
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        ranked.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Demotes models of `tier` in eviction order, each to the first slower
    /// tier with room, until `need` bytes are on their way out; returns the
    /// started jobs' ids.
    fn demote_until(&mut self, now: f64, tier: usize, need: u64, opts: &MoveOptions) -> Vec<String> {
        let mut freed = 0u64;
        let mut ids = Vec::new();
        for id in self.eviction_order(now, tier, None) {
            if freed >= need {
                break;
            }
            let Some(bytes) = self.state.model(id).map(|m| m.bytes) else {
                continue;
            };
            let dest = (tier + 1..self.state.tiers.len())
                .find(|&d| self.state.size_allowed(bytes, d) && self.room(d, bytes, Relief::default(), "").is_ok());
            if let Some(dest) = dest
                && let Ok(k) = self.submit(now, id, dest, SmallVec::new(), opts)
            {
                freed += bytes;
                if let Some(j) = self.jobs.get(&k) {
                    ids.push(j.id.clone());
                }
            }
        }
        ids
    }

    // ---------------------------------------------------------------- jobs

    /// `cancel_job`: a queued job ends at once; a running one is rolled back
    /// by the backend.
    pub fn cancel_job(&mut self, now: f64, id: &str) -> Result<Value, EngineError> {
        self.tick(now);
        let key = self.job_by_id(id)?;
        let Some(job) = self.jobs.get_mut(&key) else {
            return Err(EngineError::JobNotFound { job_id: id.to_string() });
        };
        match job.status {
            JobStatus::Queued => {
                self.end_job(
                    now,
                    key,
                    JobStatus::Cancelled,
                    Some(("CANCELLED".into(), "cancelled by request".into())),
                );
            }
            JobStatus::Running => {
                job.cancel_requested = true;
                self.backend.cancel_move(now, key);
            }
            s => {
                return Err(EngineError::JobEnded {
                    job_id: id.to_string(),
                    status: s.as_str().to_string(),
                });
            }
        }
        self.tick(now);
        self.job_status(now, id)
    }

    /// Position in line and estimated start of a queued job.
    /// `order` is [`Engine::queued_in_order`].
    fn queue_position(&self, now: f64, key: JobKey, order: &[(Priority, JobKey)]) -> Option<(usize, f64)> {
        let job = self.jobs.get(&key)?;
        if job.status != JobStatus::Queued {
            return None;
        }
        let pos = order.partition_point(|e| *e < (job.priority, key));
        // Each slot frees when its running job ends; queued jobs ahead take
        // their turn on the earliest free slot.
        let mut slots: Vec<f64> = self
            .running
            .iter()
            .filter_map(|k| self.jobs.get(k))
            .map(|j| j.started_at.unwrap_or(now) + j.estimated_s)
            .map(|t| t.max(now))
            .collect();
        slots.resize(self.max_concurrent.max(slots.len()), now);
        slots.sort_by(f64::total_cmp);
        for (_, k) in &order[..pos] {
            if let Some(j) = self.jobs.get(k) {
                slots[0] = slots[0].max(j.not_before) + j.estimated_s;
                slots.sort_by(f64::total_cmp);
            }
        }
        Some((pos, slots[0].max(job.not_before)))
    }

    fn job_json(&self, now: f64, key: JobKey) -> Option<Value> {
        let queued = self.jobs.get(&key).is_some_and(|j| j.status == JobStatus::Queued);
        let order = if queued { self.queued_in_order() } else { Vec::new() };
        self.job_json_in(now, key, &order)
    }

    /// [`Engine::job_json`] with the queue's order computed once by the caller.
    fn job_json_in(&self, now: f64, key: JobKey, order: &[(Priority, JobKey)]) -> Option<Value> {
        let job = self.jobs.get(&key)?;
        let progress = if job.status == JobStatus::Running {
            self.backend.progress(now, key).clamp(0.0, 1.0).max(job.progress)
        } else {
            job.progress
        };
        let deps: Vec<String> = job
            .depends_on
            .iter()
            .filter_map(|k| self.jobs.get(k).map(|j| j.id.clone()))
            .collect();
        Some(job.to_json(&self.state.tier_names(), now, progress, &deps, self.queue_position(now, key, order)))
    }

    /// Restores the ended jobs of an earlier run (their wire views, newest
    /// first), so history and `tier_job_status` survive a restart. Jobs
    /// that were not ended are kept as `failed`: the restart ended them.
    pub fn import_history(&mut self, jobs: Vec<Value>) {
        let keep = self.cfg.job_history.max(1);
        self.archive = jobs
            .into_iter()
            .filter(|j| {
                j.get("job_id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| !self.job_ids.contains_key(id))
            })
            .map(|mut j| {
                if let Some(m) = j.as_object_mut()
                    && matches!(m.get("status").and_then(Value::as_str), Some("queued" | "running"))
                {
                    m.insert("status".into(), json!("failed"));
                    m.insert("error".into(), json!("interrupted by a restart of tierd; rolled back"));
                    m.insert("error_code".into(), json!("TASK_FAILED"));
                }
                j
            })
            .take(keep)
            .collect();
    }

    /// How often the policy wants `policy_tick`, in engine seconds.
    pub fn policy_tick_interval(&self) -> Option<f64> {
        self.policy.tick_interval().filter(|s| s.is_finite() && *s > 0.0)
    }

    /// `tier_job_status`.
    pub fn job_status(&self, now: f64, id: &str) -> Result<Value, EngineError> {
        if !self.job_ids.contains_key(id)
            && let Some(j) = self.archive.iter().find(|j| j.get("job_id").and_then(Value::as_str) == Some(id))
        {
            return Ok(j.clone());
        }
        let key = self.job_by_id(id)?;
        self.job_json(now, key)
            .ok_or_else(|| EngineError::JobNotFound { job_id: id.to_string() })
    }

    /// Whether job `id` has ended (for `wait`).
    pub fn job_ended(&self, id: &str) -> Option<bool> {
        self.job_ids.get(id).and_then(|k| self.jobs.get(k)).map(|j| j.status.is_terminal())
    }

    /// `list_jobs`: running, then queued in start order, then ended, newest first.
    pub fn list_jobs(&self, now: f64) -> Value {
        let order = self.queued_in_order();
        let keys = self
            .running
            .iter()
            .copied()
            .chain(order.iter().map(|(_, k)| *k))
            .chain(self.ended.iter().rev().copied());
        let jobs: Vec<Value> = keys.filter_map(|k| self.job_json_in(now, k, &order)).collect();
        json!({"status": "success", "jobs": jobs})
    }

    /// Jobs with a filter, newest first (history queries).
    pub fn history(&self, now: f64, limit: usize, status: Option<&str>, since: Option<f64>) -> Vec<Value> {
        let order = self.queued_in_order();
        let mut keys: Vec<JobKey> = self.jobs.keys().collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.into_iter()
            .filter_map(|k| self.jobs.get(&k))
            .filter(|j| status.is_none_or(|s| j.status.as_str() == s))
            .filter(|j| since.is_none_or(|t| j.created_at >= t))
            .take(limit)
            .filter_map(|j| self.job_json_in(now, j.key, &order))
            .chain(
                self.archive
                    .iter()
                    .filter(|j| status.is_none_or(|s| j.get("status").and_then(Value::as_str) == Some(s)))
                    .filter(|j| since.is_none_or(|t| j.get("created_at").and_then(Value::as_f64).is_some_and(|c| c >= t)))
                    .cloned(),
            )
            .take(limit)
            .collect()
    }

    /// Counts of jobs by state.
    pub fn queue_counts(&self) -> (usize, usize, usize, usize) {
        let (mut ok, mut failed) = (0, 0);
        for k in &self.ended {
            match self.jobs.get(k).map(|j| j.status) {
                Some(JobStatus::Success) => ok += 1,
                Some(JobStatus::Failed) | Some(JobStatus::Cancelled) => failed += 1,
                _ => {}
            }
        }
        (self.queued, self.running.len(), ok, failed)
    }

    // -------------------------------------------------------------- status

    /// `tier_status`, as a JSON value (the server writes
    /// [`Engine::tier_status_view`] straight to bytes; this is the same view).
    pub fn tier_status(&self, _now: f64) -> Value {
        serde_json::to_value(self.tier_status_view()).unwrap_or_else(|e| EngineError::Internal(format!("tier_status: {e}")).to_json())
    }

    fn find_job_for(&self, m: &Model) -> (Option<String>, Option<&'static str>) {
        match m.job.and_then(|k| self.jobs.get(&k)) {
            Some(j) => (Some(j.id.clone()), Some(j.status.as_str())),
            None => (None, None),
        }
    }

    fn model_view(&self, now: f64, m: &Model) -> Value {
        let (job_id, job_status) = self.find_job_for(m);
        let mut v = self.state.model_json(m, now, job_id.as_deref(), job_status);
        if let (Some(f), Value::Object(map)) = (self.backend.resident_fraction(&m.name, m.tier), &mut v) {
            map.insert("resident_fraction".into(), json!(round6(f)));
        }
        v
    }

    /// `list_models`, optionally for one tier, sorted by name.
    pub fn list_models(&self, now: f64, tier: Option<&str>) -> Result<Value, EngineError> {
        let filter = tier.map(|t| self.tier_by_name(t)).transpose()?;
        let mut models: Vec<&Model> = self
            .state
            .iter_models()
            .map(|(_, m)| m)
            .filter(|m| filter.is_none_or(|t| m.tier == t))
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let list: Vec<Value> = models.into_iter().map(|m| self.model_view(now, m)).collect();
        Ok(json!({"status": "success", "models": list}))
    }

    /// `model_info`.
    pub fn model_info(&self, now: f64, name: &str) -> Result<Value, EngineError> {
        let id = self.model_by_name(name)?;
        let m = self
            .state
            .model(id)
            .ok_or_else(|| EngineError::ModelNotFound { model: name.to_string() })?;
        let mut v = self.model_view(now, m);
        if let Value::Object(map) = &mut v {
            map.insert("status_code".into(), json!("success"));
            map.insert("by_hour".into(), json!(m.usage.by_hour));
            map.insert("by_weekday".into(), json!(m.usage.by_weekday));
            map.insert("registered_at".into(), json!(m.registered_at));
        }
        Ok(json!({"status": "success", "model": v}))
    }

    /// `metrics`.
    pub fn metrics_json(&self, now: f64) -> Value {
        let m = &self.metrics;
        let mut util = Map::new();
        let mut hits = Map::new();
        for (i, t) in self.state.tiers.iter().enumerate() {
            util.insert(t.name.clone(), json!(t.limit.map(|_| round6(t.utilization()))));
            hits.insert(t.name.clone(), json!(m.hits_by_tier.get(i).copied().unwrap_or(0)));
        }
        let ended = m.moves_succeeded + m.moves_failed;
        json!({
            "status": "success",
            "metrics": {
                "accesses": m.accesses,
                "load_seconds": round6(m.load_seconds),
                "accesses_during_promotion": m.accesses_during_promotion,
                "promotion_wait_s": round6(m.promotion_wait_s),
                "hits_by_tier": hits,
                "moves_started": m.moves_started,
                "moves_succeeded": m.moves_succeeded,
                "moves_failed": m.moves_failed,
                "moves_cancelled": m.moves_cancelled,
                "move_success_rate": if ended > 0 { Some(round6(m.moves_succeeded as f64 / ended as f64)) } else { None },
                "retries": m.retries,
                "jobs_submitted": m.jobs_submitted,
                "bytes_moved_gb": bytes_to_gb(m.bytes_moved),
                "tier_utilization": util,
                "jobs_queued": self.queued,
                "jobs_running": self.running.len(),
                "models": self.state.by_name.len(),
                "uptime_s": round6(now - self.started_at),
            }
        })
    }

    // ---------------------------------------------------------------- time

    /// Advances the engine to `now`: applies the backend's events, retries,
    /// and starts every queued move that may start.
    pub fn tick(&mut self, now: f64) {
        // Hardware can change without an event (other programs grow):
        // pressure floors are checked at most once per engine second.
        if self.has_floors && now >= self.next_pressure_check {
            self.next_pressure_check = now + 1.0;
            if !self.relieve_pressure(now).is_empty() {
                self.dirty = true;
            }
        }
        loop {
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            if self.backend.next_event_time().is_some_and(|t| t <= now) || !self.running.is_empty() {
                self.backend.poll(now, &mut events);
            }
            let had_events = !events.is_empty();
            if had_events {
                for e in events.drain(..) {
                    self.apply_event(now, e);
                }
            }
            self.events = events;
            // Retry delays that are over make their jobs ready again.
            while let Some(&(t, key)) = self.delayed.first() {
                if t.time() > now {
                    break;
                }
                self.delayed.pop_first();
                if let Some(j) = self.jobs.get(&key) {
                    self.ready.insert((j.priority, key));
                    self.dirty = true;
                }
            }
            if !had_events && !self.dirty {
                return;
            }
            self.dirty = false;
            let started = self.schedule(now);
            if !had_events && started == 0 {
                return;
            }
        }
    }

    /// Turns schedule recording on (property tests check the log).
    pub fn record_schedule(&mut self, on: bool) {
        self.log = if on { Some(Vec::new()) } else { None };
    }

    /// The recorded scheduling decisions, oldest first.
    pub fn schedule_log(&self) -> &[SchedEvent] {
        self.log.as_deref().unwrap_or(&[])
    }

    fn record(&mut self, now: f64, kind: SchedEventKind, job: JobKey, priority: Priority) {
        if let Some(log) = &mut self.log {
            log.push(SchedEvent {
                time: now,
                kind,
                job,
                priority,
            });
        }
    }

    fn apply_event(&mut self, now: f64, e: MoveEvent) {
        match e {
            MoveEvent::Finished { job } => self.finish_job(now, job),
            MoveEvent::Failed { job, message, retryable } => self.fail_run(now, job, message, retryable),
            MoveEvent::Cancelled { job } => {
                if self.running.contains(&job) {
                    self.stop_running(now, job, "cancelled");
                    self.end_job(
                        now,
                        job,
                        JobStatus::Cancelled,
                        Some(("CANCELLED".into(), "cancelled by request; rolled back".into())),
                    );
                }
            }
            MoveEvent::ModelUnavailable { model, reason } => {
                if let Some(id) = self.state.model_id(&model)
                    && let Some(m) = self.state.model_mut(id)
                {
                    m.unavailable = Some(reason);
                }
            }
        }
    }

    /// Bookkeeping common to every end of a run.
    fn stop_running(&mut self, now: f64, key: JobKey, outcome: impl Into<Cow<'static, str>>) {
        self.running.remove(&key);
        let Some(job) = self.jobs.get_mut(&key) else { return };
        job.progress = self.backend.progress(now, key).clamp(0.0, 1.0).max(job.progress);
        if let Some(a) = job.attempts.last_mut() {
            a.ended_at = Some(now);
            a.outcome = Some(outcome.into());
        }
        let (to, bytes) = (job.to, job.bytes);
        self.state.tiers[to].incoming_running -= bytes;
        self.dirty = true;
    }

    fn finish_job(&mut self, now: f64, key: JobKey) {
        if !self.running.contains(&key) {
            return;
        }
        self.stop_running(now, key, "success");
        let Some(job) = self.jobs.get_mut(&key) else { return };
        job.progress = 1.0;
        let (from, to, bytes, model) = (job.from, job.to, job.bytes, job.model);
        let tiers = &mut self.state.tiers;
        tiers[from].used -= bytes;
        tiers[from].models -= 1;
        tiers[to].used += bytes;
        tiers[to].models += 1;
        tiers[to].incoming -= bytes;
        tiers[to].incoming_models -= 1;
        if let Some(m) = self.state.model_mut(model) {
            m.tier = to;
            m.job = None;
            self.state.detach(model, from);
            self.state.attach(model, to);
        }
        self.metrics.moves_succeeded += 1;
        self.metrics.bytes_moved += bytes;
        let (prio, dependents) = match self.jobs.get_mut(&key) {
            Some(j) => (j.priority, std::mem::take(&mut j.dependents)),
            None => (Priority::Normal, SmallVec::new()),
        };
        self.record(
            now,
            SchedEventKind::Ended {
                status: JobStatus::Success,
            },
            key,
            prio,
        );
        self.close(now, key, JobStatus::Success, None);
        // Dependents with nothing else to wait for become ready.
        for d in dependents {
            if let Some(j) = self.jobs.get_mut(&d)
                && j.status == JobStatus::Queued
                && j.unmet_deps > 0
            {
                j.unmet_deps -= 1;
                if j.unmet_deps == 0 {
                    self.ready.insert((j.priority, d));
                }
            }
        }
    }

    fn fail_run(&mut self, now: f64, key: JobKey, message: String, retryable: bool) {
        if !self.running.contains(&key) {
            return;
        }
        self.stop_running(now, key, format!("failed: {message}"));
        let Some(job) = self.jobs.get_mut(&key) else { return };
        if retryable && !job.cancel_requested && job.attempt <= job.max_retries {
            // attempt n failed; retry n waits base * 2^(n-1), capped.
            let delay = (self.cfg.moves.retry_base_s * 2f64.powi(job.attempt.saturating_sub(1) as i32)).min(self.cfg.moves.retry_cap_s);
            job.status = JobStatus::Queued;
            job.not_before = now + delay;
            job.progress = 0.0;
            let (prio, at) = (job.priority, job.not_before);
            self.queued += 1;
            self.delayed.insert((TimeKey::new(at), key));
            self.record(now, SchedEventKind::Retrying { not_before: at }, key, prio);
            self.metrics.retries += 1;
        } else {
            let status = if job.cancel_requested {
                JobStatus::Cancelled
            } else {
                JobStatus::Failed
            };
            self.end_job(now, key, status, Some(("TASK_FAILED".into(), message)));
        }
    }

    /// Ends a queued or just-stopped job that did not succeed: releases its
    /// reservation and fails its dependents.
    fn end_job(&mut self, now: f64, key: JobKey, status: JobStatus, error: Option<(String, String)>) {
        let Some(job) = self.jobs.get_mut(&key) else { return };
        if job.status.is_terminal() {
            return;
        }
        let (to, bytes, model, prio, not_before) = (job.to, job.bytes, job.model, job.priority, job.not_before);
        if job.status == JobStatus::Queued {
            self.queued -= 1;
            job.unmet_deps = 0;
            self.ready.remove(&(prio, key));
            self.delayed.remove(&(TimeKey::new(not_before), key));
        }
        let dependents = std::mem::take(&mut job.dependents);
        let id = job.id.clone();
        self.record(now, SchedEventKind::Ended { status }, key, prio);
        let t = &mut self.state.tiers[to];
        t.incoming -= bytes;
        t.incoming_models -= 1;
        if let Some(m) = self.state.model_mut(model)
            && m.job == Some(key)
        {
            m.job = None;
        }
        match status {
            JobStatus::Cancelled => self.metrics.moves_cancelled += 1,
            _ => self.metrics.moves_failed += 1,
        }
        self.close(now, key, status, error);
        self.dirty = true;
        // Dependents cannot run any more.
        for d in dependents {
            let msg = format!("Dependency {id} did not succeed ({})", status.as_str());
            if self.jobs.get(&d).is_some_and(|j| j.status == JobStatus::Queued) {
                self.end_job(now, d, JobStatus::Failed, Some(("DEPENDENCY_FAILED".into(), msg)));
            }
        }
    }

    /// Marks a job ended and bounds the history.
    fn close(&mut self, now: f64, key: JobKey, status: JobStatus, error: Option<(String, String)>) {
        if let Some(job) = self.jobs.get_mut(&key) {
            job.status = status;
            job.ended_at = Some(now);
            job.error = error;
            // Room counted on from this move is no longer pending.
            let from = &mut self.state.tiers[job.from];
            from.claimed_out -= job.bytes - job.unclaimed_bytes;
            from.claimed_out_models -= 1 - job.unclaimed_models;
            job.unclaimed_bytes = 0;
            job.unclaimed_models = 0;
        }
        self.ended.push_back(key);
        while self.ended.len() > self.cfg.job_history.max(1) {
            let Some(old) = self.ended.pop_front() else { break };
            if let Some(id) = self.jobs.discard(&old)
                && !id.is_empty()
            {
                self.job_ids.remove(&id);
            }
        }
    }

    /// Whether a queued job's bytes physically fit now.
    fn fits_now(&self, job: &Job) -> bool {
        self.fits_physically(job.to, job.bytes)
    }

    /// Whether `bytes` more fit in `tier` right now, counting what it holds
    /// and the copies in flight into it (not room that is yet to be freed).
    fn fits_physically(&self, tier: usize, bytes: u64) -> bool {
        let t = &self.state.tiers[tier];
        if let Some(limit) = t.limit
            && t.used + t.incoming_running + bytes > limit
        {
            return false;
        }
        if let Capacity::Total(total) = self.backend.capacity(tier)
            && t.reserved + t.used + t.incoming_running + bytes > total
        {
            return false;
        }
        true
    }

    /// Starts ready jobs in priority order (FIFO within a priority) while
    /// slots are free; returns how many started. A ready job whose bytes do
    /// not fit yet is passed over for lower-priority jobs that do.
    fn schedule(&mut self, now: f64) -> usize {
        let mut started = 0;
        let mut blocked_on_room: SmallVec<[JobKey; 8]> = SmallVec::new();
        let mut cursor: Option<(Priority, JobKey)> = None;
        while self.running.len() < self.max_concurrent {
            let next = match cursor {
                None => self.ready.first(),
                Some(c) => self.ready.after(c),
            };
            let Some((prio, key)) = next else { break };
            cursor = Some((prio, key));
            let Some(job) = self.jobs.get(&key) else {
                self.ready.remove(&(prio, key));
                continue;
            };
            if !self.fits_now(job) {
                blocked_on_room.push(key);
                continue;
            }
            let order = MoveOrder {
                job: key,
                model: job.model_name.clone(),
                bytes: job.bytes,
                from: job.from,
                to: job.to,
                expected_s: job.estimated_s,
                bandwidth_mb_s: job.bandwidth_mb_s,
            };
            self.ready.remove(&(prio, key));
            match self.backend.start_move(now, &order) {
                Ok(()) => {
                    self.queued -= 1;
                    self.running.insert(key);
                    self.state.tiers[order.to].incoming_running += order.bytes;
                    self.metrics.moves_started += 1;
                    started += 1;
                    self.record(now, SchedEventKind::Started, key, prio);
                    if let Some(job) = self.jobs.get_mut(&key) {
                        job.status = JobStatus::Running;
                        job.attempt += 1;
                        job.started_at.get_or_insert(now);
                        job.attempts.push(Attempt {
                            attempt: job.attempt,
                            started_at: now,
                            ended_at: None,
                            outcome: None,
                        });
                    }
                }
                Err(message) => {
                    self.end_job(now, key, JobStatus::Failed, Some(("TASK_FAILED".into(), message)));
                }
            }
        }
        // Nothing running or retrying could ever free room for these: fail
        // them rather than leave them waiting forever.
        if self.running.is_empty() && self.delayed.is_empty() && started == 0 {
            for key in blocked_on_room {
                let msg = self
                    .jobs
                    .get(&key)
                    .map(|j| {
                        format!(
                            "{} limit exceeded: no room for {} and no move in progress to free it",
                            self.state.tiers[j.to].name.to_uppercase(),
                            j.model_name
                        )
                    })
                    .unwrap_or_default();
                self.end_job(now, key, JobStatus::Failed, Some(("RESOURCE_UNAVAILABLE".into(), msg)));
            }
        }
        started
    }

    /// Checks the engine's books against a recount (tests and debugging).
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.state.tiers.len();
        let mut used = vec![0u64; n];
        let mut count = vec![0usize; n];
        for (id, m) in self.state.iter_models() {
            used[m.tier] += m.bytes;
            count[m.tier] += 1;
            if !self.state.is_member(id, m.tier) {
                return Err(format!("model {} is missing from the member list of its tier", m.name));
            }
        }
        if self.state.members.iter().map(Vec::len).sum::<usize>() != self.state.by_name.len() {
            return Err("tier member lists do not match the models".into());
        }
        let mut incoming = vec![0u64; n];
        let mut incoming_running = vec![0u64; n];
        let mut busy = HashSet::new();
        let mut claimed_out = vec![0u64; n];
        for j in self.jobs.values() {
            if !j.status.is_terminal() {
                claimed_out[j.from] += j.bytes - j.unclaimed_bytes;
            }
        }
        for j in self.jobs.values() {
            match j.status {
                JobStatus::Queued | JobStatus::Running => {
                    incoming[j.to] += j.bytes;
                    if j.status == JobStatus::Running {
                        incoming_running[j.to] += j.bytes;
                    }
                    if !busy.insert(j.model) {
                        return Err(format!("model {} has two pending jobs", j.model_name));
                    }
                }
                _ => {}
            }
        }
        let queued = self.jobs.values().filter(|j| j.status == JobStatus::Queued).count();
        if queued != self.queued {
            return Err(format!("{} jobs queued, the books say {}", queued, self.queued));
        }
        for j in self.jobs.values() {
            let k = (j.priority, j.key);
            let queued = j.status == JobStatus::Queued;
            let sets = self.ready.contains(&k) as u8
                + (queued && j.unmet_deps > 0) as u8
                + self.delayed.contains(&(TimeKey::new(j.not_before), j.key)) as u8;
            if !queued && sets != 0 {
                return Err(format!("job {} is {} but in a queue set", j.id, j.status.as_str()));
            }
            if queued && sets != 1 {
                return Err(format!("queued job {} is in {sets} of ready/waiting/delayed", j.id));
            }
            if (j.status == JobStatus::Running) != self.running.contains(&j.key) {
                return Err(format!("job {} running set mismatch", j.id));
            }
        }
        for (i, t) in self.state.tiers.iter().enumerate() {
            if t.claimed_out != claimed_out[i] {
                return Err(format!("tier {} claimed_out {} recount {}", t.name, t.claimed_out, claimed_out[i]));
            }
            if t.used != used[i] || t.models != count[i] {
                return Err(format!(
                    "tier {} books {} bytes/{} models, recount {}/{}",
                    t.name, t.used, t.models, used[i], count[i]
                ));
            }
            if t.incoming != incoming[i] || t.incoming_running != incoming_running[i] {
                return Err(format!(
                    "tier {} incoming books {}/{} recount {}/{}",
                    t.name, t.incoming, t.incoming_running, incoming[i], incoming_running[i]
                ));
            }
        }
        Ok(())
    }
}
