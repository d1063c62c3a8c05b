//! What inference engines do on their own, in the books: a model another
//! client loaded into an engine tier moves there; one the engine unloaded
//! (expiry, eviction, a restart) moves to where its bytes are now. Each is
//! recorded as a finished job with `origin: "engine"`.

use smallvec::SmallVec;

use super::engine::Engine;
use super::job::{Job, JobStatus, Operation, Origin, Priority};

impl Engine {
    /// Books model `name` into tier `to` as the engine of an engine tier
    /// reported. A model with a move under way is left to that move (the
    /// engine tier reports again at its next look if they still differ).
    pub(crate) fn engine_moved(&mut self, now: f64, name: &str, to: usize) {
        let Some(id) = self.state.model_id(name) else { return };
        let Some(m) = self.state.model(id) else { return };
        if m.job.is_some() || m.tier == to || to >= self.state.tiers.len() {
            return;
        }
        let (from, bytes, model_name) = (m.tier, m.bytes, m.name.clone());
        let tiers = &mut self.state.tiers;
        tiers[from].used -= bytes;
        tiers[from].models -= 1;
        tiers[to].used += bytes;
        tiers[to].models += 1;
        if let Some(m) = self.state.model_mut(id) {
            m.tier = to;
        }
        self.state.detach(id, from);
        self.state.attach(id, to);
        self.release_model(id, from);
        let op = if to < from { Operation::Promote } else { Operation::Demote };
        let key = self.next_key;
        self.next_key += 1;
        let job_id = self.new_job_id(op, &model_name, now);
        *self.jobs.slot_for(key) = Some(Job {
            key,
            id: job_id.clone(),
            model: id,
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
            reason: Some(format!("seen in the engine of tier {}", self.state.tiers[to.min(from)].name)),
            unmet_deps: 0,
            dependents: SmallVec::new(),
            exchange: false,
        });
        if !job_id.is_empty() {
            self.job_ids.insert(job_id, key);
        }
        self.close(now, key, JobStatus::Success, None);
        self.dirty = true;
    }
}
