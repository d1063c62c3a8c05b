//! What the engine makes of engine tiers' news ([`crate::drivers::engine`]):
//! loads and unloads the engine did on its own, its activity, and each
//! load's wall time.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::engine::Engine;
use super::job::{Attempt, Job, JobKey, JobStatus, Operation, Origin, Priority};
use super::state::ModelId;
use super::submit::MoveOptions;
use crate::drivers::MoveEvent;

/// Most load times kept per model and residency (the p95 is over these).
pub const LOAD_SAMPLES: usize = 100;

/// Load times of one model (all loads, or those of one residency).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadTimes {
    pub count: u64,
    pub last: Option<f64>,
    pub mean: Option<f64>,
    pub p95: Option<f64>,
    /// The most recent samples, oldest first (not on the wire).
    #[serde(skip)]
    samples: Vec<f64>,
    #[serde(skip)]
    sum: f64,
}

impl LoadTimes {
    pub fn add(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        self.last = Some(seconds);
        self.mean = Some(self.sum / self.count as f64);
        if self.samples.len() == LOAD_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(seconds);
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample at or above 95% of them.
        let rank = ((sorted.len() as f64) * 0.95).ceil() as usize;
        self.p95 = sorted.get(rank.saturating_sub(1)).copied();
    }
}

/// A model's `load_time_s`: every load into an engine tier, and split by
/// whether its files were all RAM-resident when the load started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    #[serde(flatten)]
    pub all: LoadTimes,
    pub resident: LoadTimes,
    pub not_resident: LoadTimes,
    /// The footprint the last load measured, bytes.
    pub footprint_bytes: Option<u64>,
}

/// Load statistics by model name (they outlive a model's moves).
pub type LoadBook = HashMap<Arc<str>, LoadStats>;

/// A drop of a pinned model more than this many seconds after the one
/// before starts a new streak ([`Engine::reload_pinned`]).
pub const REPIN_QUIET_S: f64 = 300.0;
/// Most drops in a streak that tierd answers by loading the model back.
pub const REPIN_MAX_STREAK: u32 = 5;

/// Models an engine dropped on its own: pinned ones loaded back
/// ([`Engine::reload_pinned`]), and drops that wait for a queued move.
#[derive(Debug, Default)]
pub struct Repins {
    /// By model name: drops in the current streak, and the latest one's time.
    pub(crate) streaks: HashMap<Arc<str>, Streak>,
    /// Reload jobs not ended yet, and the engine tier each loads into.
    pub(crate) jobs: HashMap<JobKey, usize>,
    /// Models whose reload failed (model, engine tier, the error), for the
    /// next tick to send to RAM.
    pub(crate) fallbacks: Vec<(ModelId, usize, String)>,
    /// Drops an engine reported while a move of the model was queued
    /// (model, engine tier, engine id, the reason): applied once the move
    /// ended without taking the model out of the tier.
    pub(crate) deferred_drops: Vec<(ModelId, usize, String, String)>,
}

/// Drops of one pinned model that followed each other.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Streak {
    pub count: u32,
    pub last: f64,
}

impl Engine {
    /// Applies an engine tier's event (the driver's tier stamped on it).
    pub(crate) fn engine_event(&mut self, now: f64, event: MoveEvent) {
        match event {
            MoveEvent::LoadTimed {
                model,
                seconds,
                resident,
                footprint,
                ..
            } => {
                let Some(id) = self.state.model_id(&model) else { return };
                let Some(name) = self.state.model(id).map(|m| m.name.clone()) else {
                    return;
                };
                let stats = self.load_stats.entry(name).or_default();
                stats.all.add(seconds);
                if resident {
                    stats.resident.add(seconds);
                } else {
                    stats.not_resident.add(seconds);
                }
                stats.footprint_bytes = Some(footprint);
            }
            MoveEvent::EngineActivity { model, .. } => {
                if let Some(id) = self.state.model_id(&model) {
                    // An access like a client's: usage and the policy.
                    let _ = self.access_id(now, id);
                }
            }
            MoveEvent::EngineLoaded { tier, id, path, .. } => self.engine_loaded(now, tier, &id, path.as_deref()),
            MoveEvent::EngineUnloaded { tier, model, id, reason } => self.engine_unloaded(now, tier, &model, &id, &reason),
            _ => {}
        }
    }

    /// The model an engine-side load is of: by a file path the engine
    /// reports, else by name = engine id.
    fn model_of_engine_id(&self, id: &str, path: Option<&std::path::Path>) -> Option<ModelId> {
        if let Some(path) = path {
            let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let found = self.state.models.iter().enumerate().find_map(|(i, m)| {
                let files = m.as_ref()?.files.as_ref()?;
                files
                    .origin_paths()
                    .iter()
                    .any(|(p, _)| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()) == canon)
                    .then_some(i as ModelId)
            });
            if found.is_some() {
                return found;
            }
        }
        // Ollama names a model `name:tag`; `name` alone means `:latest`.
        self.state
            .model_id(id)
            .or_else(|| id.strip_suffix(":latest").and_then(|n| self.state.model_id(n)))
    }

    /// The engine of tier `tier` loaded a model on its own: the model moves
    /// there in the books (its old tier lets go), and a job with origin
    /// `engine` records it.
    fn engine_loaded(&mut self, now: f64, tier: usize, engine_id: &str, path: Option<&std::path::Path>) {
        let Some(id) = self.model_of_engine_id(engine_id, path) else {
            tracing::info!(engine_id, "engine loaded a model tierd does not know");
            return;
        };
        let Some(m) = self.state.model(id) else { return };
        if m.tier == tier {
            // Already ours (a restart: the tier settles it).
            return;
        }
        if m.job.is_some() {
            // A move of it is under way (say to RAM, after the engine
            // dropped it a moment ago): once it ends, the engine's load is
            // taken into the books, if the engine still has the model.
            self.machine.drivers[tier].report_again(engine_id);
            return;
        }
        let (from, files) = (m.tier, m.files.clone());
        self.rebook(id, from, tier);
        self.machine.drivers[tier].adopt(
            &self.state.model(id).map(|m| m.name.to_string()).unwrap_or_default(),
            files.as_deref(),
            engine_id,
        );
        self.refresh_next_event(tier);
        self.release_model(id, from);
        self.record_engine_job(now, id, from, tier, format!("the engine loaded {engine_id} on its own"));
        // A load is a use.
        let _ = self.access_id(now, id);
        self.enforce_max_models(now, tier, id);
    }

    /// The engine's own load took tier `tier` over its `max_models`: the
    /// coldest unpinned models (never `keep`, the one just loaded) are
    /// unloaded to the next slower tier (RAM, above which engine tiers sit).
    fn enforce_max_models(&mut self, now: f64, tier: usize, keep: ModelId) {
        let Some(max) = self.state.tiers[tier].max_models else { return };
        let t = &self.state.tiers[tier];
        let over = (t.models + t.incoming_models).saturating_sub(max);
        if over == 0 || tier + 1 >= self.state.tiers.len() {
            return;
        }
        let target = self.state.tiers[tier + 1].name.clone();
        for victim in self.eviction_order(now, tier, Some(keep)).into_iter().take(over) {
            let Some(name) = self.state.model(victim).map(|m| m.name.to_string()) else {
                continue;
            };
            let opts = MoveOptions {
                make_room: true,
                ..MoveOptions::pressure(format!(
                    "{} holds more than its max_models = {max} after an engine-side load",
                    self.state.tiers[tier].name
                ))
            };
            if let Err(e) = self.move_model(now, &name, &target, &opts) {
                tracing::warn!(model = %name, error = %e, "cannot unload a model over max_models");
            }
        }
    }

    /// The engine of tier `tier` no longer has a model tierd placed there
    /// (its LRU, its expiry, another client): the model falls back to its
    /// origin (the last tier), recorded as a job with origin `engine`. A
    /// pinned model is then loaded back into `tier` ([`Engine::reload_pinned`]);
    /// any other, or a pinned one that cannot be, moves on to the RAM tier
    /// below where it fits.
    fn engine_unloaded(&mut self, now: f64, tier: usize, model: &str, engine_id: &str, reason: &str) {
        let Some(id) = self.state.model_id(model) else { return };
        let Some(m) = self.state.model(id) else { return };
        if m.tier != tier {
            return;
        }
        if m.job.is_some() {
            // A queued move of it (a running move out is no drop): if it
            // ends with the model still booked here, the drop applies then.
            self.repins
                .deferred_drops
                .push((id, tier, engine_id.to_string(), reason.to_string()));
            return;
        }
        let pinned = m.pinned;
        let last = self.state.last_tier();
        self.rebook(id, tier, last);
        self.release_model(id, tier);
        self.refresh_next_event(tier);
        self.record_engine_job(now, id, tier, last, format!("{engine_id}: {reason}"));
        let why = if pinned {
            match self.reload_pinned(now, id, tier, engine_id) {
                Ok(()) => return,
                Err(why) => why,
            }
        } else {
            format!("{engine_id} left the engine on its own: kept in RAM")
        };
        self.keep_in_ram(now, model, tier, why);
    }

    /// "Unload to RAM instead of disk": where the RAM tier sits right below
    /// engine tier `tier` and has room, `model` (just dropped from it, in
    /// the last tier in the books) goes there; its pages are still
    /// resident: the engine tier keeps its pin a while.
    fn keep_in_ram(&mut self, now: f64, model: &str, tier: usize, reason: String) {
        let below = tier + 1;
        if below < self.state.last_tier() && self.machine.drivers[below].kind() == "pagecache" {
            let target = self.state.tiers[below].name.clone();
            let opts = MoveOptions {
                origin: Origin::Engine,
                reason: Some(reason),
                ..MoveOptions::default()
            };
            if let Err(e) = self.move_model(now, model, &target, &opts) {
                tracing::info!(model, error = %e, "an engine-evicted model stays in storage");
            }
        }
    }

    /// Loads pinned model `id`, which the engine of `tier` dropped on its
    /// own, back there: a move with origin `engine` and make-room (pinned
    /// models outrank the tier's unpinned ones), high priority. Drops that
    /// follow each other (within [`REPIN_QUIET_S`]) wait the move retry
    /// backoff (`retry_base_s`, doubling, at most `retry_cap_s`) before the
    /// load, and after [`REPIN_MAX_STREAK`] of them tierd gives up: the
    /// engine does not keep the model, so loading it again would only fight
    /// the engine. `Err` says why it is not loaded back (the model then
    /// goes to RAM); a reload that fails goes there too
    /// ([`Engine::repin_fallbacks`]).
    pub(crate) fn reload_pinned(&mut self, now: f64, id: ModelId, tier: usize, engine_id: &str) -> Result<(), String> {
        let Some(name) = self.state.model(id).map(|m| m.name.clone()) else {
            return Err("the model vanished".into());
        };
        let tier_name = self.state.tiers[tier].name.clone();
        let streak = self.repins.streaks.entry(name.clone()).or_default();
        if now - streak.last > REPIN_QUIET_S {
            streak.count = 0;
        }
        streak.count += 1;
        streak.last = now;
        let n = streak.count;
        if n > REPIN_MAX_STREAK {
            tracing::warn!(model = %name, tier = %tier_name, drops = n, "the engine keeps dropping a pinned model: kept in RAM");
            return Err(format!(
                "{engine_id} is pinned in {tier_name}, but the engine dropped it {n} times in a row: kept in RAM \
                 (move it back with move_tier)"
            ));
        }
        let delay = if n <= 1 {
            0.0
        } else {
            (self.cfg.moves.retry_base_s * 2f64.powi(n as i32 - 2)).min(self.cfg.moves.retry_cap_s)
        };
        let opts = MoveOptions {
            priority: Priority::High,
            origin: Origin::Engine,
            make_room: true,
            reason: Some(format!(
                "{name} is pinned in {tier_name}: loading it back after the engine dropped it (drop {n} in a row)"
            )),
            ..MoveOptions::default()
        };
        let key = match self.submit_with_room(now, id, tier, Vec::new(), &opts) {
            Ok((key, _)) => key,
            Err(e) => {
                tracing::warn!(model = %name, tier = %tier_name, error = %e, "cannot load a pinned model back");
                return Err(format!(
                    "{engine_id} is pinned in {tier_name}, but it cannot be loaded back ({e}): kept in RAM"
                ));
            }
        };
        self.repins.jobs.insert(key, tier);
        // The backoff: not started before its delay is over (a job with
        // make-room dependencies waits for those instead).
        if delay > 0.0
            && let Some(j) = self.jobs.get_mut(&key)
            && j.unmet_deps == 0
            && self.ready.remove(&(j.priority, key))
        {
            j.not_before = now + delay;
            self.delayed.insert((super::scheduler::TimeKey::new(j.not_before), key));
        }
        self.start_ready(now);
        Ok(())
    }

    /// A job ended: a reload of a pinned model that failed (not one
    /// cancelled) sends the model to RAM at the next tick.
    pub(crate) fn repin_ended(&mut self, key: JobKey, status: JobStatus, error: Option<&str>) {
        if self.repins.jobs.is_empty() {
            return;
        }
        let Some(tier) = self.repins.jobs.remove(&key) else { return };
        if status != JobStatus::Failed {
            return;
        }
        let Some(model) = self.jobs.get(&key).map(|j| j.model) else {
            return;
        };
        self.repins
            .fallbacks
            .push((model, tier, error.unwrap_or("the load failed").to_string()));
    }

    /// Applies the engines' drops that came while a move of the model was
    /// queued, once that move ended with the model still booked in the
    /// engine tier that no longer holds it. The engine may have loaded it
    /// again meanwhile: it is then reported anew, and taken back.
    pub(crate) fn deferred_drops(&mut self, now: f64) {
        if self.repins.deferred_drops.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.repins.deferred_drops);
        for (id, tier, engine_id, reason) in pending {
            let Some(m) = self.state.model(id) else { continue };
            if m.job.is_some() {
                self.repins.deferred_drops.push((id, tier, engine_id, reason));
                continue;
            }
            let name = m.name.to_string();
            if m.tier == tier && self.machine.drivers[tier].holds(&name) == Some(false) {
                self.engine_unloaded(now, tier, &name, &engine_id, &reason);
                self.machine.drivers[tier].report_again(&engine_id);
            }
        }
    }

    /// Sends the pinned models whose reload failed to RAM.
    pub(crate) fn repin_fallbacks(&mut self, now: f64) {
        if self.repins.fallbacks.is_empty() {
            return;
        }
        for (id, tier, error) in std::mem::take(&mut self.repins.fallbacks) {
            let Some(m) = self.state.model(id) else { continue };
            if m.tier != self.state.last_tier() || m.job.is_some() {
                continue;
            }
            let name = m.name.to_string();
            let why = format!(
                "{name} is pinned in {}, but loading it back failed ({error}): kept in RAM",
                self.state.tiers[tier].name
            );
            self.keep_in_ram(now, &name, tier, why);
        }
    }

    /// Moves model `id` from tier `from` to `to` in the books at once.
    fn rebook(&mut self, id: ModelId, from: usize, to: usize) {
        let Some(m) = self.state.model_mut(id) else { return };
        m.tier = to;
        let bytes = m.bytes;
        let tiers = &mut self.state.tiers;
        tiers[from].used -= bytes;
        tiers[from].models -= 1;
        tiers[to].used += bytes;
        tiers[to].models += 1;
        self.state.detach(id, from);
        self.state.attach(id, to);
        self.epoch += 1;
        self.dirty = true;
    }

    /// Records what the engine did as an ended job (`origin: "engine"`),
    /// for `tier_job_status` and the history.
    fn record_engine_job(&mut self, now: f64, model: ModelId, from: usize, to: usize, reason: String) {
        let Some(m) = self.state.model(model) else { return };
        let (name, bytes) = (m.name.clone(), m.bytes);
        let op = if to < from { Operation::Promote } else { Operation::Demote };
        let key = self.next_key;
        self.next_key += 1;
        let id = self.new_job_id(op, &name, now);
        let mut attempts = SmallVec::new();
        attempts.push(Attempt {
            attempt: 1,
            started_at: now,
            ended_at: Some(now),
            outcome: Some("done by the engine".into()),
        });
        *self.jobs.slot_for(key) = Some(Job {
            key,
            id: id.clone(),
            model,
            model_name: name,
            bytes,
            from,
            to,
            operation: op,
            priority: Priority::Normal,
            origin: Origin::Engine,
            depends_on: SmallVec::new(),
            claimed_releases: SmallVec::new(),
            // Nothing was claimed: `close` gives nothing back.
            unclaimed_bytes: bytes,
            unclaimed_models: 1,
            max_retries: 0,
            attempt: 1,
            status: JobStatus::Running,
            created_at: now,
            started_at: Some(now),
            ended_at: None,
            not_before: now,
            progress: 1.0,
            estimated_s: 0.0,
            error: None,
            attempts,
            cancel_requested: false,
            moving_out: None,
            cancel_at_shutdown: false,
            bandwidth_mb_s: None,
            reason: Some(reason),
            unmet_deps: 0,
            dependents: SmallVec::new(),
            exchange: false,
        });
        self.job_ids.insert(id, key);
        self.close(now, key, JobStatus::Success, None);
    }

    /// The expected seconds of a move of `model` into tier `to`: for an
    /// engine tier, the mean of the model's measured loads once there is
    /// one; else `fallback` (size times the configured rate).
    pub(crate) fn move_estimate_s(&self, model: &str, to: usize, fallback: f64) -> f64 {
        if !self.cfg.tiers.get(to).is_some_and(|t| t.is_engine()) {
            return fallback;
        }
        self.load_stats.get(model).and_then(|s| s.all.mean).unwrap_or(fallback)
    }

    /// A model's load statistics, where it was ever loaded in an engine.
    pub fn load_stats(&self, model: &str) -> Option<&LoadStats> {
        self.load_stats.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_times_keep_last_mean_and_p95() {
        let mut t = LoadTimes::default();
        for s in 1..=20 {
            t.add(s as f64);
        }
        assert_eq!(t.count, 20);
        assert_eq!(t.last, Some(20.0));
        assert_eq!(t.mean, Some(10.5));
        assert_eq!(t.p95, Some(19.0));
    }
}
