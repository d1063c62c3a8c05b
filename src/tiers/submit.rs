//! Submission: how a move becomes a queued job ([`Engine::move_model`],
//! with `make_room`), and how models enter and leave the catalog
//! ([`Engine::register`], [`Engine::unregister`], [`Engine::set_pinned`]).
//!
//! Public methods here change the engine and then start what may start;
//! none of them ticks (the caller ticks once per request, before it).

use std::path::PathBuf;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::config::{MAX_GB, bytes_to_gb, gb_to_bytes};
use crate::drivers::files::check_model_name;
use crate::drivers::{MachineKind, ModelFiles};
use crate::error::EngineError;

use super::engine::Engine;
use super::job::{Job, JobKey, JobStatus, Operation, Origin, Priority};
use super::rates::MoveRates;
use super::room::Relief;
use super::scheduler::SchedEventKind;
use super::state::{Model, ModelId, Usage};
use super::views::MoveStarted;

/// Slowest rate cap a move may ask for, MB/s.
pub const MIN_BANDWIDTH_MB_S: f64 = 0.1;
/// Fastest rate cap a move may ask for, MB/s.
pub const MAX_BANDWIDTH_MB_S: f64 = 1_000_000.0;
/// Most retries a move may ask for.
pub const MAX_RETRIES: u32 = 100;

/// Why a rate cap is refused, if it is: it must be finite,
/// [`MIN_BANDWIDTH_MB_S`] to [`MAX_BANDWIDTH_MB_S`].
pub fn bandwidth_out_of_range(mb_s: f64) -> Option<String> {
    (!(mb_s.is_finite() && (MIN_BANDWIDTH_MB_S..=MAX_BANDWIDTH_MB_S).contains(&mb_s)))
        .then(|| format!("bandwidth_mb_s must be a number from {MIN_BANDWIDTH_MB_S} to {MAX_BANDWIDTH_MB_S} MB/s, got {mb_s}"))
}

/// Why a retry count is refused, if it is: 0 to [`MAX_RETRIES`].
pub fn retries_out_of_range(n: u64) -> Option<String> {
    (n > u64::from(MAX_RETRIES)).then(|| format!("max_retries must be an integer from 0 to {MAX_RETRIES}, got {n}"))
}

/// Options of one move.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    pub priority: Priority,
    /// Wire ids of jobs that must succeed first.
    pub depends_on: Vec<String>,
    /// Demote the least valuable models of the target first if it lacks room.
    pub make_room: bool,
    pub max_retries: Option<u32>,
    pub bandwidth_mb_s: Option<f64>,
    pub origin: Origin,
    pub reason: Option<String>,
}

impl MoveOptions {
    /// A high-priority demotion tierd starts itself to relieve a tier
    /// (`origin: "pressure"`), saying why.
    pub fn pressure(reason: String) -> MoveOptions {
        MoveOptions {
            priority: Priority::High,
            origin: Origin::Pressure,
            reason: Some(reason),
            ..MoveOptions::default()
        }
    }

    /// Refuses numbers out of their ranges (the wire checks them as it
    /// reads them; this guards the engine's own callers).
    pub fn check(&self) -> Result<(), EngineError> {
        if let Some(message) = self.bandwidth_mb_s.and_then(bandwidth_out_of_range) {
            return Err(EngineError::bad_request(message));
        }
        if let Some(message) = self.max_retries.and_then(|n| retries_out_of_range(n.into())) {
            return Err(EngineError::bad_request(message));
        }
        Ok(())
    }
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

/// A model to register.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    pub name: String,
    /// Its size, where no files say it (the simulated machine).
    pub size_bytes: Option<u64>,
    /// The path it was registered with.
    pub path: Option<PathBuf>,
    /// Its files, found before the engine was locked (a real machine).
    pub files: Option<ModelFiles>,
    /// The tier to place it in if that has room (else the next slower one).
    pub preferred_tier: Option<String>,
}

/// A registered model: where it was placed, and the move taking it to its
/// chosen tier on a real machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub bytes: u64,
    pub tier: String,
    pub job_id: Option<String>,
}

impl Engine {
    pub(crate) fn new_job_id(&mut self, op: Operation, model: &str, now: f64) -> String {
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

    /// Validates and queues one move ([`Engine::validate`], then
    /// [`Engine::enqueue`]). `deps` are engine keys (already resolved).
    pub(crate) fn submit(
        &mut self,
        now: f64,
        model: ModelId,
        to: usize,
        deps: SmallVec<[JobKey; 2]>,
        opts: &MoveOptions,
    ) -> Result<JobKey, EngineError> {
        let (name, bytes, from) = self.validate(model, to, &deps)?;
        self.enqueue(now, model, (name, bytes, from), to, deps, opts)
    }

    /// Whether model `model` may move to `to` at all, whatever the room:
    /// the target takes moves, the model is not there already, not moving,
    /// not over the size limit, available, and none of `deps` has failed.
    /// Returns its name, bytes and tier.
    #[inline(always)]
    pub(crate) fn validate(&self, model: ModelId, to: usize, deps: &[JobKey]) -> Result<(Arc<str>, u64, usize), EngineError> {
        let Some(m) = self.state.model(model) else {
            return Err(EngineError::Internal(format!("model id {model} vanished")));
        };
        let (name, bytes, from) = (m.name.clone(), m.bytes, m.tier);
        if let Some(reason) = &self.state.tiers[to].refuses {
            return Err(EngineError::bad_request(reason.clone()));
        }
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
        for d in deps {
            if let Some(j) = self.jobs.get(d)
                && matches!(j.status, JobStatus::Failed | JobStatus::Cancelled)
            {
                return Err(EngineError::DependencyFailed {
                    job_id: j.id.clone(),
                    status: j.status.as_str().to_string(),
                });
            }
        }
        Ok((name, bytes, from))
    }

    /// Queues a validated move if there is room for it, counting what
    /// `deps` free in the target (and claiming just as much of it).
    #[inline(always)]
    fn enqueue(
        &mut self,
        now: f64,
        model: ModelId,
        checked: (Arc<str>, u64, usize),
        to: usize,
        deps: SmallVec<[JobKey; 2]>,
        opts: &MoveOptions,
    ) -> Result<JobKey, EngineError> {
        let relief = self.relief_from(to, &deps);
        self.room(to, checked.1, relief, &checked.0)?;
        Ok(self.insert_job(now, model, checked, to, deps, opts, false))
    }

    /// Queues one move of an exchange batch, validated (`checked` is what
    /// [`Engine::validate`] answered) and its end state checked as a whole
    /// (see [`Engine::apply_exchange`]): no room check of its own.
    pub(crate) fn enqueue_exchange(
        &mut self,
        now: f64,
        model: ModelId,
        checked: (Arc<str>, u64, usize),
        to: usize,
        opts: &MoveOptions,
    ) -> JobKey {
        self.insert_job(now, model, checked, to, SmallVec::new(), opts, true)
    }

    /// Records a move as a queued job and reserves its room in the target.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn insert_job(
        &mut self,
        now: f64,
        model: ModelId,
        (name, bytes, from): (Arc<str>, u64, usize),
        to: usize,
        deps: SmallVec<[JobKey; 2]>,
        opts: &MoveOptions,
        exchange: bool,
    ) -> JobKey {
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
        // A real machine's estimate is what such moves really took (see
        // `rates`); the simulated one's is the configured seconds per GB, at
        // most the move's cap (the simulated tier keeps to it, too).
        let estimated_s = match self.machine.kind {
            MachineKind::Real => MoveRates::seconds(bytes, self.move_mb_s(from, to), opts.bandwidth_mb_s),
            MachineKind::Simulated => {
                let s = bytes_to_gb(bytes) * rate;
                match opts.bandwidth_mb_s.filter(|c| *c > 0.0) {
                    Some(cap) => s.max(bytes as f64 / (cap * 1e6)),
                    None => s,
                }
            }
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
        // Into an engine tier: the model's mean load time, once measured.
        let estimated_s = self.move_estimate_s(&name, to, estimated_s);
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
            estimated_s,
            error: None,
            attempts: SmallVec::new(),
            cancel_requested: false,
            moving_out: None,
            cancel_at_shutdown: false,
            bandwidth_mb_s: opts.bandwidth_mb_s,
            reason: opts.reason.clone(),
            unmet_deps,
            dependents: SmallVec::new(),
            exchange,
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
        key
    }

    /// Removes a queued job that never started, as if never submitted (used
    /// to undo the first half of a make-room submission that failed).
    pub(crate) fn retract(&mut self, key: JobKey) {
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

    /// Moves `model_name` to tier `target` (`move_tier`): validates in the
    /// documented order (model, tier, the tier takes moves, dependencies,
    /// not already there, not already moving, then size and room), queues
    /// the move ([`Engine::submit_with_room`]) and starts what may start.
    pub fn move_model(&mut self, now: f64, model_name: &str, target: &str, opts: &MoveOptions) -> Result<MoveStarted, EngineError> {
        opts.check()?;
        let id = self.model_by_name(model_name)?;
        let to = self.tier_by_name(target)?;
        if let Some(reason) = &self.state.tiers[to].refuses {
            return Err(EngineError::bad_request(reason.clone()));
        }
        let deps = self.resolve_deps(&opts.depends_on)?;
        let Some(from) = self.state.model(id).map(|m| m.tier) else {
            return Err(EngineError::ModelNotFound {
                model: model_name.to_string(),
            });
        };
        let (key, room_jobs) = self.submit_with_room(now, id, to, deps, opts)?;
        // Read before the jobs start: a move that ends at once may leave a
        // short history before the answer is built.
        let (job_id, operation) = match self.jobs.get(&key) {
            Some(job) => (job.id.clone(), job.operation),
            None => return Err(EngineError::Internal(format!("job {key} vanished"))),
        };
        let make_room_jobs = room_jobs.iter().filter_map(|k| self.jobs.get(k).map(|j| j.id.clone())).collect();
        self.start_ready(now);
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

    /// Queues the move of `id` to `to` after `deps`; returns its key and the
    /// make-room demotions it depends on.
    ///
    /// With `opts.make_room`, if the target lacks room, first demotes its
    /// least valuable movable models in the policy's eviction order
    /// ([`Engine::eviction_order`]: never pinned, moving or unavailable
    /// ones), each to the first slower tier with room for it, until the
    /// model fits; those demotions are jobs of their own (origin
    /// `make_room`, the move's priority) that the move depends on. If no
    /// set of victims makes enough room, nothing is submitted and the room
    /// error is returned.
    pub(crate) fn submit_with_room(
        &mut self,
        now: f64,
        id: ModelId,
        to: usize,
        deps: Vec<JobKey>,
        opts: &MoveOptions,
    ) -> Result<(JobKey, Vec<JobKey>), EngineError> {
        let checked = self.validate(id, to, &deps)?;
        let (name, bytes) = (checked.0.clone(), checked.1);
        let mut room_jobs = Vec::new();
        let mut all_deps = deps;
        if opts.make_room && self.room(to, bytes, self.relief_from(to, &all_deps), &name).is_err() {
            let victims = self.plan_make_room(now, to, bytes, Some(id), &name)?;
            let room_opts = MoveOptions {
                priority: opts.priority,
                origin: Origin::MakeRoom,
                reason: Some(format!("making room for {name} in {}", self.state.tiers[to].name)),
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
        match self.enqueue(now, id, checked, to, all_deps.into(), opts) {
            Ok(key) => Ok((key, room_jobs)),
            Err(e) => {
                for k in room_jobs {
                    self.retract(k);
                }
                Err(e)
            }
        }
    }

    /// Registers a model (`register_model`). On the simulated machine it is
    /// placed in the preferred tier if that has room, else the next slower
    /// tier with room, else the last tier; on a real machine it starts in
    /// storage (its origin) and a move ("hot load") takes it to that tier.
    pub fn register(&mut self, now: f64, reg: Registration) -> Result<Registered, EngineError> {
        let name = reg.name.as_str();
        if self.state.by_name.contains_key(name) {
            return Err(EngineError::DuplicateModel { model: name.to_string() });
        }
        let first = match &reg.preferred_tier {
            Some(p) => self.tier_by_name(p)?,
            None => 0,
        };
        let instant = self.machine.kind == MachineKind::Simulated;
        let (bytes, files) = match (self.machine.kind, reg.files, reg.size_bytes) {
            (MachineKind::Real, Some(files), _) => {
                check_model_name(name).map_err(EngineError::bad_request)?;
                self.check_origin(&files.origin)?;
                self.check_shared_files(name, &files)?;
                (files.bytes, Some(Arc::new(files)))
            }
            (MachineKind::Real, None, _) => {
                return Err(EngineError::bad_request(
                    "register_model needs \"path\" (a weights file or a directory of shards) with the real backend",
                ));
            }
            (MachineKind::Simulated, _, Some(size)) => (size, None),
            (MachineKind::Simulated, _, None) => {
                return Err(EngineError::bad_request("size_gb is required with the simulated backend"));
            }
        };
        if bytes > gb_to_bytes(MAX_GB) {
            return Err(EngineError::bad_request(format!(
                "model {name} of {} GB is over the largest model tierd counts ({MAX_GB} GB)",
                crate::human::bytes_gb(bytes)
            )));
        }
        // Checked before anything changes: bytes the books could not count
        // are refused, never wrapped or saturated.
        self.state.check_room_in_books(bytes)?;
        let last = self.state.last_tier();
        let chosen = (first..=last)
            .find(|&t| {
                self.state.size_allowed(bytes, t)
                    && self.state.accepts_moves(t)
                    && self.room(t, bytes, Relief::default(), name).is_ok()
                    && (!instant || self.fits_physically(t, bytes))
            })
            .unwrap_or(last);
        let home = if instant { chosen } else { last };
        let path = reg.path.or_else(|| files.as_ref().map(|f| f.origin.clone()));
        let id = self.state.add_model(Model {
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
            path,
            files,
            registered_at: now,
        })?;
        self.link_serve_path(id);
        self.epoch += 1;
        self.dirty = true;
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
            self.start_ready(now);
        }
        Ok(Registered {
            bytes,
            tier: self.state.tiers[chosen].name.clone(),
            job_id,
        })
    }

    /// Refuses a model with a file (same device and inode) that a
    /// registered model already has, naming that model. No I/O but one
    /// `stat` per match, to check a recorded id still holds. The model
    /// `name` itself (new files of a registered model) does not count.
    pub(crate) fn check_shared_files(&self, name: &str, files: &ModelFiles) -> Result<(), EngineError> {
        let mine = files.ids();
        for (_, m) in self.state.iter_models() {
            let Some(other) = &m.files else { continue };
            if *m.name == *name {
                continue;
            }
            if let Some((path, other_path)) = files.shared_file(&mine, other) {
                return Err(EngineError::SharedFile {
                    model: name.to_string(),
                    other: m.name.to_string(),
                    paths: Box::new((path.display().to_string(), other_path.display().to_string())),
                });
            }
        }
        Ok(())
    }

    /// Refuses a model origin that is tierd's own: inside a tier a driver
    /// manages, or inside the state directory.
    fn check_origin(&self, origin: &std::path::Path) -> Result<(), EngineError> {
        for (i, d) in self.machine.drivers.iter().enumerate() {
            if d.owns_path(origin) {
                return Err(EngineError::bad_request(format!(
                    "model path {} is inside tier directory of {}; register the original files",
                    origin.display(),
                    self.state.tiers[i].name
                )));
            }
        }
        if let Some(dir) = &self.cfg.state_dir
            && let Ok(dir) = dir.canonicalize()
            && origin.starts_with(&dir)
        {
            return Err(EngineError::bad_request(format!(
                "model path {} is inside the state directory",
                origin.display()
            )));
        }
        Ok(())
    }

    /// `unregister_model`: forgets an idle model; the copies tierd made of
    /// it are removed (never its origin).
    pub fn unregister(&mut self, name: &str) -> Result<String, EngineError> {
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
        let tier = m.tier;
        if let Some(serve) = &self.machine.serve {
            serve.remove(name);
        }
        self.release_model(id, tier);
        self.model_faults.remove(&id);
        self.source_missing.remove(&id);
        if self.state.remove_model(id).is_none() {
            return Err(EngineError::ModelNotFound { model: name.to_string() });
        }
        self.dirty = true;
        Ok(self.state.tiers[tier].name.clone())
    }

    /// `pin_model` / `unpin_model`: a pinned model is never demoted by a
    /// policy, make-room, a lowered limit or memory pressure (a request can
    /// still move it). Returns the model's tier.
    pub fn set_pinned(&mut self, name: &str, pinned: bool) -> Result<String, EngineError> {
        let id = self.model_by_name(name)?;
        let Some(m) = self.state.model_mut(id) else {
            return Err(EngineError::ModelNotFound { model: name.to_string() });
        };
        m.pinned = pinned;
        let tier = m.tier;
        Ok(self.state.tiers[tier].name.clone())
    }
}
