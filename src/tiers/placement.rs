//! Placement: accesses and what the policy makes of them, `auto_optimize`,
//! and the demotions the engine decides itself (the eviction order used by
//! make-room, lowered limits and memory pressure).

use smallvec::SmallVec;

use crate::error::EngineError;

use super::engine::Engine;
use super::job::{JobKey, Operation, Origin, Priority};
use super::policy::Desire;
use super::room::Relief;
use super::state::{ModelId, round6};
use super::submit::MoveOptions;
use super::views::PlanStep;

/// An access: the tier it was served from, what it cost, and the moves the
/// policy started in reaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Accessed {
    pub tier: String,
    pub load_time_s: f64,
    /// The model's accesses so far.
    pub usage: u64,
    pub jobs: Vec<String>,
}

/// The outcome of `auto_optimize`.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimized {
    pub policy: &'static str,
    pub dry_run: bool,
    pub steps: Vec<PlanStep>,
}

impl Engine {
    /// `access_model`: records a use of `name` and lets the policy react.
    pub fn access(&mut self, now: f64, name: &str) -> Result<Accessed, EngineError> {
        let id = self.model_by_name(name)?;
        let ((tier, load), steps) = self.access_id(now, id)?;
        let usage = self.state.model(id).map(|m| m.usage.count).unwrap_or(0);
        Ok(Accessed {
            tier: self.state.tiers[tier].name.clone(),
            load_time_s: round6(load),
            usage,
            jobs: steps.into_iter().filter_map(|s| s.job_id).collect(),
        })
    }

    /// The simulator's access: like [`Engine::access_id`] but answers only
    /// the load seconds, and the policy's moves carry no explanations.
    pub fn access_load(&mut self, now: f64, id: ModelId) -> Result<f64, EngineError> {
        self.explain = false;
        let r = self.access_id(now, id);
        self.explain = true;
        r.map(|((_, load), _)| load)
    }

    /// The access path by model id: counts the access (the cost is the
    /// model's size times the access cost of the tier holding it now),
    /// lets the policy react, and returns the tier served from, the load
    /// seconds and the policy's steps.
    pub fn access_id(&mut self, now: f64, id: ModelId) -> Result<((usize, f64), Vec<PlanStep>), EngineError> {
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
        self.accesses_seen += 1;
        m.usage.record(now, self.accesses_seen, &usage_cfg);
        let (tier, bytes, pending) = (m.tier, m.bytes, m.job);
        let load = self.state.tiers[tier].load_seconds(bytes);
        if let Some(to) = pending.and_then(|k| self.jobs.get(&k)).map(|j| j.to).filter(|&to| to < tier) {
            self.metrics.accesses_during_promotion += 1;
            self.metrics.promotion_wait_s += load - self.state.tiers[to].load_seconds(bytes);
        }
        self.metrics.accesses += 1;
        self.metrics.load_seconds += load;
        if let Some(h) = self.metrics.load_time.get_mut(tier) {
            h.observe(load);
        }
        self.metrics.hits_by_tier[tier] += 1;
        let mut desires = std::mem::take(&mut self.desires);
        self.policy.on_access(now, &self.state, id, &mut desires);
        let steps = self.apply_desires(now, &mut desires, Origin::Policy, Priority::Low);
        self.desires = desires;
        Ok(((tier, load), steps))
    }

    /// The policy's periodic decision, applied.
    pub fn policy_tick(&mut self, now: f64) -> Vec<PlanStep> {
        let mut desires = std::mem::take(&mut self.desires);
        self.policy.on_tick(now, &self.state, &mut desires);
        let steps = self.apply_desires(now, &mut desires, Origin::Policy, Priority::Low);
        self.desires = desires;
        steps
    }

    /// `auto_optimize`: the policy's whole plan, explained, and started
    /// unless `dry_run`.
    pub fn optimize(&mut self, now: f64, dry_run: bool) -> Optimized {
        let mut desires = Vec::new();
        self.policy.plan(now, &self.state, &mut desires);
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
            self.apply_desires(now, &mut desires, Origin::Optimize, Priority::Low)
        };
        Optimized {
            policy: self.policy.name(),
            dry_run,
            steps,
        }
    }

    /// Applies a policy's desires as one batch (emptying `desires`): each
    /// desire may count on room freed by earlier desires of the batch that
    /// leave its target. Then starts what may start.
    fn apply_desires(&mut self, now: f64, desires: &mut Vec<Desire>, origin: Origin, priority: Priority) -> Vec<PlanStep> {
        if desires.is_empty() {
            return Vec::new();
        }
        let n = self.state.tiers.len();
        if origin == Origin::Policy
            && desires.len() > 1
            && self.policy.exchanges()
            && desires.iter().all(|d| d.target < n && self.machine.drivers[d.target].instant())
            && let Some(steps) = self.apply_exchange(now, desires, origin, priority)
        {
            return steps;
        }
        let mut steps = Vec::with_capacity(if self.explain { desires.len() } else { 0 });
        let mut batch: SmallVec<[JobKey; 8]> = SmallVec::new();
        let mut retry: Vec<(usize, Desire)> = Vec::new();
        for d in desires.drain(..) {
            let Some(from) = self.state.model(d.model).map(|m| m.tier) else {
                continue;
            };
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
            let mut step = self.plan_step(&d);
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
        // A step refused for room may fit once later steps of the batch
        // free it (plans need not be perfectly ordered): one more try.
        for (i, d) in retry {
            if let Ok(k) = self.submit_desire(now, &d, &batch, origin, priority) {
                batch.push(k);
                steps[i].job_id = self.jobs.get(&k).map(|j| j.id.clone());
                steps[i].skipped = None;
            }
        }
        self.start_ready(now);
        steps
    }

    /// Applies a batch as one placement change ([`Policy::exchanges`]):
    /// each model moves at most once, every move is valid on its own, and
    /// the state after all of them fits every tier they fill (limit, model
    /// count, hardware). Then the moves are queued without room checks of
    /// their own and started; they complete the moment they start, so the
    /// states they pass through are never seen. `None` (nothing changed)
    /// when the batch is not such a placement.
    ///
    /// [`Policy::exchanges`]: super::policy::Policy::exchanges
    fn apply_exchange(&mut self, now: f64, desires: &mut Vec<Desire>, origin: Origin, priority: Priority) -> Option<Vec<PlanStep>> {
        let n = self.state.tiers.len();
        let mut bytes_in: SmallVec<[i128; 4]> = SmallVec::from_elem(0, n);
        let mut models_in: SmallVec<[i64; 4]> = SmallVec::from_elem(0, n);
        // Each move validated once; queueing one changes no other's answer
        // (the models are distinct).
        let mut checked = Vec::with_capacity(desires.len());
        for (i, d) in desires.iter().enumerate() {
            if desires[..i].iter().any(|e| e.model == d.model) {
                return None;
            }
            let c = self.validate(d.model, d.target, &[]).ok()?;
            let (bytes, from) = (c.1, c.2);
            checked.push(c);
            bytes_in[from] -= i128::from(bytes);
            bytes_in[d.target] += i128::from(bytes);
            models_in[from] -= 1;
            models_in[d.target] += 1;
        }
        for t in 0..n {
            let tier = &self.state.tiers[t];
            let (db, dm) = (bytes_in[t], models_in[t]);
            if db > 0 {
                let end = i128::from(tier.committed()) + db;
                if tier.limit.is_some_and(|l| end > i128::from(l)) {
                    return None;
                }
                match self.hardware_available(t) {
                    Ok(None) => {}
                    Ok(Some(avail)) if db <= i128::from(avail) => {}
                    _ => return None,
                }
            }
            if dm > 0
                && let Some(max) = tier.max_models
                && tier.committed_models() as i64 + dm > max as i64
            {
                return None;
            }
        }
        let mut steps = Vec::with_capacity(if self.explain { desires.len() } else { 0 });
        for (d, c) in desires.drain(..).zip(checked) {
            let opts = MoveOptions {
                priority,
                origin,
                reason: self.explain.then(|| d.reason.to_string()),
                ..MoveOptions::default()
            };
            let step = self.explain.then(|| self.plan_step(&d));
            let key = self.enqueue_exchange(now, d.model, c, d.target, &opts);
            if let Some(mut step) = step {
                step.job_id = self.jobs.get(&key).map(|j| j.id.clone());
                steps.push(step);
            }
        }
        self.start_ready(now);
        Some(steps)
    }

    /// The plan step of desire `d`, not started yet.
    fn plan_step(&self, d: &Desire) -> PlanStep {
        let (name, from, usage) = match self.state.model(d.model) {
            Some(m) => (m.name.to_string(), m.tier, m.usage.count),
            None => (String::new(), d.target, 0),
        };
        PlanStep {
            model_name: name,
            operation: if d.target < from { Operation::Promote } else { Operation::Demote },
            source_tier: self.state.tiers[from].name.clone(),
            target_tier: self.state.tiers[d.target].name.clone(),
            reason: d.reason.to_string(),
            usage,
            job_id: None,
            skipped: None,
        }
    }

    /// Submits one desire of a batch, counting on just as many of the
    /// batch's moves out of its target tier as it needs for room.
    fn submit_desire(&mut self, now: f64, d: &Desire, batch: &[JobKey], origin: Origin, priority: Priority) -> Result<JobKey, EngineError> {
        let Some(m) = self.state.model(d.model) else {
            return Err(EngineError::Internal(format!("model id {} vanished", d.model)));
        };
        if m.pinned {
            // Whatever a policy asks: a pinned model moves only by request.
            return Err(EngineError::bad_request(format!("{} is pinned: only move_tier moves it", m.name)));
        }
        let bytes = m.bytes;
        let opts = MoveOptions {
            priority,
            origin,
            reason: self.explain.then(|| d.reason.to_string()),
            make_room: d.make_room,
            ..MoveOptions::default()
        };
        let mut deps: SmallVec<[JobKey; 2]> = SmallVec::new();
        // The batch's moves out of the target that still free room.
        for &k in batch {
            let leaving = self
                .jobs
                .get(&k)
                .is_some_and(|j| j.from == d.target && j.unclaimed_bytes > 0 && !j.status.is_terminal());
            if !leaving {
                continue;
            }
            if self.lack_of_room(d.target, bytes, self.relief_from(d.target, &deps)).is_none() {
                break;
            }
            deps.push(k);
        }
        if d.make_room && deps.is_empty() {
            Ok(self.submit_with_room(now, d.model, d.target, Vec::new(), &opts)?.0)
        } else {
            self.submit(now, d.model, d.target, deps, &opts)
        }
    }

    /// The models of `tier` that may be demoted (not pinned, idle,
    /// available, not `exclude`), least valuable first by the policy's
    /// [`eviction_rank`](super::policy::Policy::eviction_rank); ties: least
    /// recently used, then lowest id.
    pub fn eviction_order(&self, now: f64, tier: usize, exclude: Option<ModelId>) -> Vec<ModelId> {
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
    pub(crate) fn demote_until(&mut self, now: f64, tier: usize, need: u64, opts: &MoveOptions) -> Vec<String> {
        let mut freed = 0u64;
        let mut ids = Vec::new();
        for id in self.eviction_order(now, tier, None) {
            if freed >= need {
                break;
            }
            let Some(bytes) = self.state.model(id).map(|m| m.bytes) else {
                continue;
            };
            let dest = (tier + 1..self.state.tiers.len()).find(|&d| {
                self.state.size_allowed(bytes, d) && self.state.accepts_moves(d) && self.room(d, bytes, Relief::default(), "").is_ok()
            });
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

    /// Seed 004's memory-pressure cleanup: for each tier whose hardware has
    /// less available than its floor (counting moves already leaving it),
    /// demotes the coldest unpinned idle models until the floor is met.
    /// Returns the jobs started.
    pub(crate) fn relieve_pressure(&mut self, now: f64) -> Vec<String> {
        let mut started = Vec::new();
        for ti in 0..self.state.tiers.len() {
            let Some(floor) = self.state.tiers[ti].min_free else { continue };
            let Ok(Some(avail)) = self.hardware_available(ti) else { continue };
            let short = floor.saturating_sub(avail + self.bytes_leaving(ti));
            if short == 0 {
                continue;
            }
            let opts = MoveOptions::pressure(format!(
                "memory pressure: {} has {} GB available, under its {} GB floor",
                self.state.tiers[ti].name,
                crate::human::bytes_gb(avail),
                crate::human::bytes_gb(floor)
            ));
            started.extend(self.demote_until(now, ti, short, &opts));
        }
        started
    }
}
