//! The books following what an engine did on its own
//! ([`MoveEvent::EngineLoaded`](crate::drivers::MoveEvent::EngineLoaded),
//! [`MoveEvent::EngineUnloaded`](crate::drivers::MoveEvent::EngineUnloaded)):
//! a model another client loaded moves into the engine tier; one the engine
//! dropped (expiry, eviction, a restart) moves to storage, where its bytes
//! are. Each is recorded as a finished job with `origin: "engine"`.

use std::path::Path;

use smallvec::SmallVec;

use super::engine::Engine;
use super::job::{Job, JobStatus, Operation, Origin, Priority};
use super::state::ModelId;

impl Engine {
    /// The model an engine's load of `id` (weights at `path`, if it says)
    /// is: by name (`id`, or `id` without Ollama's `:latest`), else by file.
    pub(crate) fn engine_model(&self, id: &str, path: Option<&Path>) -> Option<ModelId> {
        let by_name = self
            .state
            .model_id(id)
            .or_else(|| id.strip_suffix(":latest").and_then(|n| self.state.model_id(n)));
        by_name.or_else(|| {
            let path = path?;
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            self.state.iter_models().find_map(|(mid, m)| {
                let files = m.files.as_ref()?;
                files.origin_paths().into_iter().any(|(p, _)| p == path).then_some(mid)
            })
        })
    }

    /// An engine tier's engine loaded `id` on its own: the model moves into
    /// `tier` in the books and the tier adopts it.
    pub(crate) fn engine_loaded(&mut self, now: f64, tier: usize, id: &str, path: Option<&Path>) {
        let Some(mid) = self.engine_model(id, path) else {
            tracing::info!(tier, engine_id = id, "engine loaded a model tierd does not know");
            return;
        };
        if self.engine_moved(now, mid, tier)
            && let Some(m) = self.state.model(mid)
        {
            let (name, files) = (m.name.clone(), m.files.clone());
            if let Some(d) = self.machine.drivers.get_mut(tier) {
                d.adopt(&name, files.as_deref(), id);
            }
            self.refresh_next_event(tier);
        }
    }

    /// The engine of tier `tier` no longer has `model`: it moves to the
    /// last tier (storage) in the books.
    pub(crate) fn engine_unloaded(&mut self, now: f64, tier: usize, model: &str) {
        let Some(mid) = self.state.model_id(model) else { return };
        if self.state.model(mid).is_some_and(|m| m.tier == tier) {
            let last = self.state.last_tier();
            self.engine_moved(now, mid, last);
        }
    }

    /// Books model `mid` into tier `to` as an engine reported; whether it
    /// moved. A model with a move under way is left to that move.
    fn engine_moved(&mut self, now: f64, mid: ModelId, to: usize) -> bool {
        let Some(m) = self.state.model(mid) else { return false };
        if m.job.is_some() || m.tier == to || to >= self.state.tiers.len() {
            return false;
        }
        let (from, bytes, model_name) = (m.tier, m.bytes, m.name.clone());
        let tiers = &mut self.state.tiers;
        tiers[from].used -= bytes;
        tiers[from].models -= 1;
        tiers[to].used += bytes;
        tiers[to].models += 1;
        if let Some(m) = self.state.model_mut(mid) {
            m.tier = to;
        }
        self.state.detach(mid, from);
        self.state.attach(mid, to);
        // What the old tier held (a RAM pin, a copy) is no longer where the
        // model is served from.
        self.release_model(mid, from);
        let op = if to < from { Operation::Promote } else { Operation::Demote };
        let key = self.next_key;
        self.next_key += 1;
        let job_id = self.new_job_id(op, &model_name, now);
        let engine_tier = if to < from { to } else { from };
        *self.jobs.slot_for(key) = Some(Job {
            key,
            id: job_id.clone(),
            model: mid,
            model_name,
            bytes,
            from,
            to,
            operation: op,
            priority: Priority::Normal,
            origin: Origin::Engine,
            depends_on: SmallVec::new(),
            claimed_releases: SmallVec::new(),
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
            attempts: SmallVec::new(),
            cancel_requested: false,
            cancel_at_shutdown: false,
            bandwidth_mb_s: None,
            reason: Some(format!(
                "done by the engine of tier {} on its own",
                self.state.tiers[engine_tier].name
            )),
            unmet_deps: 0,
            dependents: SmallVec::new(),
            exchange: false,
        });
        if !job_id.is_empty() {
            self.job_ids.insert(job_id, key);
        }
        self.close(now, key, JobStatus::Success, None);
        self.dirty = true;
        true
    }
}
