//! Limits: the run-time byte budgets, reserves and move concurrency, and
//! what changing them does (a lowered limit demotes until the tier fits).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::config::{MAX_GB, bytes_to_gb, gb_to_bytes, in_gb_range};
use crate::error::EngineError;

use super::engine::Engine;
use super::job::{JobKey, JobStatus, Origin, Priority};
use super::submit::MoveOptions;

/// Most moves that may run at once, as a limit can set it.
pub const MAX_CONCURRENT_TASKS: usize = 1024;

/// One change of `update_limits`, parsed from the wire once.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitChange {
    /// `<tier>_max_gb`: the tier's byte budget.
    Max { tier: String, gb: f64 },
    /// `<tier>_reserved_gb`: memory kept for the rest of the system.
    Reserved { tier: String, gb: f64 },
    /// `max_concurrent_tasks`: moves that may run at once.
    Concurrency(usize),
}

impl LimitChange {
    /// The change's wire key.
    pub fn key(&self) -> String {
        match self {
            LimitChange::Max { tier, .. } => format!("{tier}_max_gb"),
            LimitChange::Reserved { tier, .. } => format!("{tier}_reserved_gb"),
            LimitChange::Concurrency(_) => "max_concurrent_tasks".into(),
        }
    }
}

/// One tier's settable limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TierLimits {
    pub tier: String,
    /// The byte budget, GB (tiers with one).
    pub max_gb: Option<f64>,
    /// The reserve, GB (tiers that have the setting).
    pub reserved_gb: Option<f64>,
}

/// Every settable limit. On the wire (and in the state file) it is the
/// object `update_limits` takes: `{"<tier>_max_gb": .., "<tier>_reserved_gb":
/// .., "max_concurrent_tasks": ..}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    pub tiers: Vec<TierLimits>,
    pub max_concurrent_tasks: usize,
}

impl Limits {
    /// The wire keys, in the order `update_limits` lists them.
    pub fn keys(&self) -> Vec<String> {
        let mut known = Vec::new();
        for t in &self.tiers {
            if t.max_gb.is_some() {
                known.push(format!("{}_max_gb", t.tier));
            }
            if t.reserved_gb.is_some() {
                known.push(format!("{}_reserved_gb", t.tier));
            }
        }
        known.push("max_concurrent_tasks".into());
        known
    }

    /// The wire object.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for t in &self.tiers {
            if let Some(v) = t.max_gb {
                m.insert(format!("{}_max_gb", t.tier), Value::from(v));
            }
            if let Some(v) = t.reserved_gb {
                m.insert(format!("{}_reserved_gb", t.tier), Value::from(v));
            }
        }
        m.insert("max_concurrent_tasks".into(), Value::from(self.max_concurrent_tasks));
        m
    }

    /// Reads the wire object; keys it cannot place are ignored.
    pub fn from_map(m: &Map<String, Value>) -> Limits {
        let mut tiers: BTreeMap<String, TierLimits> = BTreeMap::new();
        let mut max_concurrent_tasks = 0;
        for (k, v) in m {
            if k == "max_concurrent_tasks" {
                max_concurrent_tasks = v.as_u64().unwrap_or(0) as usize;
            } else if let (Some(t), Some(gb)) = (k.strip_suffix("_max_gb"), v.as_f64()) {
                tiers.entry(t.to_string()).or_insert_with(|| TierLimits::named(t)).max_gb = Some(gb);
            } else if let (Some(t), Some(gb)) = (k.strip_suffix("_reserved_gb"), v.as_f64()) {
                tiers.entry(t.to_string()).or_insert_with(|| TierLimits::named(t)).reserved_gb = Some(gb);
            }
        }
        Limits {
            tiers: tiers.into_values().collect(),
            max_concurrent_tasks,
        }
    }
}

impl TierLimits {
    fn named(t: &str) -> TierLimits {
        TierLimits {
            tier: t.to_string(),
            max_gb: None,
            reserved_gb: None,
        }
    }
}

impl Serialize for Limits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Limits::from_map(&Map::deserialize(d)?))
    }
}

/// A checked change, by tier index and bytes.
enum Planned {
    Max(usize, u64),
    Reserved(usize, u64),
    Concurrency(usize),
}

/// What `update_limits` did: the limits before and after, and the moves a
/// lowered limit started.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsUpdated {
    pub old: Limits,
    pub new: Limits,
    pub rebalance: Vec<String>,
}

impl Engine {
    /// The current limits.
    pub fn limits(&self) -> Limits {
        Limits {
            tiers: self
                .state
                .tiers
                .iter()
                .map(|t| TierLimits {
                    tier: t.name.clone(),
                    max_gb: t.limit.map(bytes_to_gb),
                    reserved_gb: t.has_reserved.then(|| bytes_to_gb(t.reserved)),
                })
                .collect(),
            max_concurrent_tasks: self.max_concurrent,
        }
    }

    /// The error for a limit key the engine does not have.
    pub fn unknown_limit(&self, key: &str) -> EngineError {
        let known = self.limits().keys();
        let mut details = Map::new();
        details.insert("key".into(), Value::from(key));
        details.insert("known_limits".into(), Value::from(known.clone()));
        EngineError::BadRequest {
            message: format!("Unknown limit {key:?}; known limits: {}", known.join(", ")),
            details,
        }
    }

    /// `update_limits`: checks every change before making any (the tier has
    /// that limit, the value is at or above its minimum, pinned models fit
    /// under a lowered limit); then applies them and, for each tier whose
    /// limit fell below its use, withdraws queued moves into it (newest
    /// first) and demotes its least valuable models until it fits.
    pub fn update_limits(&mut self, now: f64, changes: &[LimitChange]) -> Result<LimitsUpdated, EngineError> {
        if changes.is_empty() {
            return Err(EngineError::bad_request(format!(
                "update_limits needs at least one of: {}",
                self.limits().keys().join(", ")
            )));
        }
        let plan = self.check_limit_changes(changes)?;
        self.apply_limit_plan(now, plan)
    }

    /// Checks changes as [`Engine::update_limits`] does, one after the
    /// other, changing nothing; the first refusal is the error.
    pub fn check_limits(&self, changes: &[LimitChange]) -> Result<(), EngineError> {
        self.check_limit_changes(changes).map(|_| ())
    }

    fn check_limit_changes(&self, changes: &[LimitChange]) -> Result<Vec<Planned>, EngineError> {
        let mut plan = Vec::with_capacity(changes.len());
        for c in changes {
            let (tier, v, is_max) = match c {
                LimitChange::Concurrency(n) => {
                    if !(1..=MAX_CONCURRENT_TASKS).contains(n) {
                        return Err(EngineError::InvalidLimit {
                            key: c.key(),
                            value: *n as f64,
                            minimum: Some(1.0),
                            message: format!("max_concurrent_tasks must be an integer from 1 to {MAX_CONCURRENT_TASKS}, got {n}"),
                        });
                    }
                    plan.push(Planned::Concurrency(*n));
                    continue;
                }
                LimitChange::Max { tier, gb } => (tier, *gb, true),
                LimitChange::Reserved { tier, gb } => (tier, *gb, false),
            };
            let key = c.key();
            let Some(ti) = self.state.tier_index(tier).filter(|&i| {
                let t = &self.state.tiers[i];
                if is_max { t.limit.is_some() } else { t.has_reserved }
            }) else {
                return Err(self.unknown_limit(&key));
            };
            let t = &self.state.tiers[ti];
            let min = if is_max { t.min_limit } else { t.min_reserved };
            if !in_gb_range(v) || min.is_some_and(|m| gb_to_bytes(v) < m) {
                let what = if is_max { "limit" } else { "reserved" };
                let message = match min {
                    Some(m) if in_gb_range(v) => format!(
                        "{key} = {v} is below the minimum {} {what} of {} GB",
                        t.name.to_uppercase(),
                        crate::human::bytes_gb(m)
                    ),
                    _ => format!("{key} must be a number from 0 to {MAX_GB} GB, got {v}"),
                };
                return Err(EngineError::InvalidLimit {
                    key,
                    value: v,
                    minimum: min.map(bytes_to_gb),
                    message,
                });
            }
            plan.push(if is_max {
                Planned::Max(ti, gb_to_bytes(v))
            } else {
                Planned::Reserved(ti, gb_to_bytes(v))
            });
        }
        Ok(plan)
    }

    fn apply_limit_plan(&mut self, now: f64, plan: Vec<Planned>) -> Result<LimitsUpdated, EngineError> {
        // Pinned models that cannot fit under a lowered limit refuse the change.
        for c in &plan {
            if let Planned::Max(ti, new) = c {
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
                            crate::human::bytes_gb(*new),
                            crate::human::bytes_gb(pinned)
                        ),
                    });
                }
            }
        }
        let old = self.limits();
        let mut lowered = Vec::new();
        for c in plan {
            match c {
                Planned::Max(ti, new) => {
                    if self.state.tiers[ti].limit.is_some_and(|l| new < l) {
                        lowered.push(ti);
                    }
                    self.state.tiers[ti].limit = Some(new);
                    self.emit_limit(now, ti);
                }
                Planned::Reserved(ti, new) => {
                    self.state.tiers[ti].reserved = new;
                    self.emit_limit(now, ti);
                }
                Planned::Concurrency(n) => self.max_concurrent = n,
            }
        }
        self.dirty = true;
        let mut rebalance = Vec::new();
        for ti in lowered {
            rebalance.extend(self.rebalance(now, ti));
        }
        self.start_ready(now);
        Ok(LimitsUpdated {
            old,
            new: self.limits(),
            rebalance,
        })
    }

    /// Takes back limits saved by an earlier run, each only if the tier
    /// still has it and it is at or above its minimum.
    pub(crate) fn restore_limits(&mut self, limits: &Limits) {
        for l in &limits.tiers {
            let Some(ti) = self.state.tier_index(&l.tier) else { continue };
            let t = &mut self.state.tiers[ti];
            if let Some(v) = l.max_gb
                && t.limit.is_some()
                && in_gb_range(v)
                && t.min_limit.is_none_or(|m| gb_to_bytes(v) >= m)
            {
                t.limit = Some(gb_to_bytes(v));
            }
            if let Some(v) = l.reserved_gb
                && t.has_reserved
                && in_gb_range(v)
                && t.min_reserved.is_none_or(|m| gb_to_bytes(v) >= m)
            {
                t.reserved = gb_to_bytes(v);
            }
        }
        if (1..=MAX_CONCURRENT_TASKS).contains(&limits.max_concurrent_tasks) {
            self.max_concurrent = limits.max_concurrent_tasks;
        }
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
                crate::human::bytes_gb(limit)
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
            reason: Some(format!(
                "{} limit lowered to {} GB",
                self.state.tiers[ti].name,
                crate::human::bytes_gb(limit)
            )),
            ..MoveOptions::default()
        };
        self.demote_until(now, ti, need, &opts)
    }
}
