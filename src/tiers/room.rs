//! Room: whether a model fits in a tier, and what must leave for it to fit.
//!
//! The rules:
//! - **admission**: a move is accepted only if the target's committed bytes
//!   (`used + incoming`, less room already counted on from moves leaving
//!   it) plus the model fit under the limit, the model count under
//!   `max_models`, and the model under what the hardware can still take;
//!   room freed by demotions the move depends on counts, each freed byte
//!   once ([`Relief`]). The reservation is taken at once, so concurrent
//!   moves never overcommit a tier;
//! - **start**: a queued move starts only when its dependencies have
//!   succeeded and its bytes physically fit (`used + incoming_running +
//!   size <= limit`, and the hardware's total where it has one, or, for a
//!   `dir` tier, its measured free space net of the copies running in, less
//!   the reserve);
//! - a model is in exactly one tier; while it moves it stays in its source.

use crate::drivers::Capacity;
use crate::error::EngineError;

use super::engine::Engine;
use super::job::{Job, JobKey, JobStatus};
use super::state::ModelId;

/// What a room check counts on beyond a tier's current books: room that
/// moves this one waits for will free.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Relief {
    pub bytes: u64,
    pub models: usize,
}

/// Why `bytes` more do not fit in a tier (the first check that fails).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lack {
    Limit { free: u64, limit: u64 },
    Count { max_models: usize },
    Hardware { available: u64 },
    Unavailable,
}

impl Engine {
    /// Bytes the hardware can still take in `tier`, after the reserve and
    /// the moves already on their way in; `None` when unbounded.
    pub(crate) fn hardware_available(&self, tier: usize) -> Result<Option<u64>, EngineError> {
        let t = &self.state.tiers[tier];
        match self.machine.drivers[tier].capacity() {
            Capacity::Unbounded => Ok(None),
            Capacity::Total(total) => Ok(Some(total.saturating_sub(t.reserved).saturating_sub(t.committed()))),
            Capacity::Free(free) => Ok(Some(
                free.saturating_sub(t.reserved)
                    .saturating_sub(t.incoming.saturating_sub(t.incoming_running)),
            )),
            Capacity::Unavailable(reason) => Err(EngineError::TierUnavailable {
                tier: t.name.clone(),
                reason,
            }),
        }
    }

    /// Whether `bytes` more fit in `tier` under its limit, model count and
    /// hardware, given `relief`; the error is what a request is refused with.
    pub(crate) fn room(&self, tier: usize, bytes: u64, mut relief: Relief, model: &str) -> Result<(), EngineError> {
        let t = &self.state.tiers[tier];
        if !t.engine_held_by.is_empty()
            && let Some(id) = self.state.model_id(model)
        {
            relief.bytes += self.engine_held_of(tier, id);
        }
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
    pub(crate) fn lack_of_room(&self, tier: usize, bytes: u64, relief: Relief) -> Option<Lack> {
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
    pub(crate) fn relief_from(&self, tier: usize, deps: &[JobKey]) -> Relief {
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
    pub(crate) fn shortfall(&self, tier: usize, bytes: u64) -> Relief {
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
    /// first by the policy ([`Engine::eviction_order`]), never pinned, busy
    /// or unavailable models, nor `exclude`; each goes to the first slower
    /// tier with room for it. Returns (victim, destination) pairs, or the
    /// error of the room check if no set of victims suffices.
    pub(crate) fn plan_make_room(
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
        // One hardware reading per tier for the whole plan.
        let hw: Vec<Result<Option<u64>, EngineError>> = (0..self.state.tiers.len()).map(|d| self.hardware_available(d)).collect();
        for id in candidates {
            let Some(m) = self.state.model(id) else { continue };
            let dest = (tier + 1..self.state.tiers.len()).find(|&d| {
                self.state.size_allowed(m.bytes, d) && self.state.accepts_moves(d) && {
                    let t = &self.state.tiers[d];
                    let fits_limit = t.limit.is_none_or(|l| t.committed() + extra_in[d] + m.bytes <= l);
                    let fits_count = t.max_models.is_none_or(|mx| t.committed_models() + extra_models[d] < mx);
                    let fits_hw = match &hw[d] {
                        Ok(None) => true,
                        Ok(Some(a)) => *a >= extra_in[d] + m.bytes,
                        Err(_) => false,
                    };
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

    /// Bytes of the queued and running moves out of `tier`.
    pub(crate) fn bytes_leaving(&self, tier: usize) -> u64 {
        self.jobs
            .values()
            .filter(|j| matches!(j.status, JobStatus::Queued | JobStatus::Running) && j.from == tier)
            .map(|j| j.bytes)
            .sum()
    }

    /// Whether a queued job may start now: its bytes physically fit, and
    /// its target has released what it held of the model before.
    pub(crate) fn fits_now(&self, job: &Job) -> bool {
        (job.exchange || self.fits_physically(job.to, job.bytes.saturating_sub(self.engine_held_of(job.to, job.model))))
            && (self.pending_releases.is_empty() || !self.release_pending(&job.model_name, job.to))
    }

    /// Whether `bytes` more fit in `tier` right now, counting what it holds
    /// and the copies in flight into it (not room that is yet to be freed).
    #[inline]
    pub(crate) fn fits_physically(&self, tier: usize, bytes: u64) -> bool {
        let t = &self.state.tiers[tier];
        if let Some(limit) = t.limit
            && t.used + t.engine_held + t.incoming_running + bytes > limit
        {
            return false;
        }
        let driver = &self.machine.drivers[tier];
        match driver.capacity() {
            Capacity::Total(total) => t.reserved + t.used + t.incoming_running + bytes <= total,
            // Measured free space net of the moves running in (a `dir` tier).
            Capacity::Free(free) if driver.free_is_net_of_running_moves() => free.saturating_sub(t.reserved) >= bytes,
            Capacity::Free(_) | Capacity::Unbounded | Capacity::Unavailable(_) => true,
        }
    }
}
