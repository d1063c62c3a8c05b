//! RAM that engine tiers hold outside the RAM tier's books, counted
//! against the RAM tier's budget.
//!
//! An engine tier keeps its loaded models' files pinned (the engine reads
//! those pages; see `drivers::engine`), and a vLLM instance asleep at
//! level 1 keeps its weights in its own CPU memory. Neither is a model of
//! the RAM tier, yet both are RAM: each tick, what the engine tiers report
//! ([`TierDriver::ram_held`](crate::drivers::TierDriver::ram_held)) is
//! booked as `engine_held` on the first `pagecache` tier below them, which
//! counts it in its committed bytes (admission, the start of queued moves,
//! make-room) and in its utilization. When it takes the RAM tier over its
//! limit, the RAM tier's coldest unpinned idle models are demoted until it
//! fits again (`origin: "pressure"`).
//!
//! A copy kept for a model that went on below the RAM tier (a vLLM
//! instance asleep at level 1 whose model was demoted from RAM to
//! storage) is of no use: the engine tier is asked to drop it
//! ([`TierDriver::drop_copy`](crate::drivers::TierDriver::drop_copy)).
//!
//! Each byte counts once: a pin of a model that is booked in the RAM tier
//! itself, or that is moving (the RAM tier's `incoming` counts a move to
//! it), is left out.

use super::MoveOptions;
use super::engine::Engine;
use super::state::ModelId;

impl Engine {
    /// Books the engine tiers' RAM on the RAM tiers below them; demotes
    /// from a RAM tier it takes over its limit. Returns whether a job
    /// started.
    pub(crate) fn book_engine_ram(&mut self, now: f64) -> bool {
        let n = self.state.tiers.len();
        let mut held = vec![0u64; n];
        let mut by: Vec<Vec<(ModelId, u64)>> = vec![Vec::new(); n];
        let mut any_ram = false;
        for i in 0..n {
            let reports = self.machine.drivers[i].ram_held();
            if reports.pinned.is_empty() && reports.copies.is_empty() {
                continue;
            }
            let Some(ram) = (i + 1..n).find(|&d| self.machine.drivers[d].kind() == "pagecache") else {
                continue;
            };
            any_ram = true;
            for (model, bytes) in &reports.pinned {
                let Some(id) = self.state.model_id(model) else {
                    held[ram] += bytes;
                    continue;
                };
                let counted_elsewhere = self.state.model(id).is_some_and(|m| m.tier == ram || m.job.is_some());
                if !counted_elsewhere {
                    held[ram] += bytes;
                    by[ram].push((id, *bytes));
                }
            }
            for model in &reports.copies {
                if let Some(id) = self.state.model_id(model)
                    && let Some(m) = self.state.model(id)
                {
                    held[ram] += m.bytes;
                    // The model went on below RAM: the copy is of no use.
                    if m.tier > ram && m.job.is_none() {
                        self.machine.drivers[i].drop_copy(model);
                    }
                }
            }
        }
        let mut changed = false;
        for ((t, h), by) in self.state.tiers.iter_mut().zip(&held).zip(by) {
            if t.engine_held != *h {
                t.engine_held = *h;
                changed = true;
            }
            t.engine_held_by = by;
        }
        if !any_ram && !changed {
            return false;
        }
        let mut started = false;
        for (ti, &h) in held.iter().enumerate() {
            let t = &self.state.tiers[ti];
            let Some(limit) = t.limit else { continue };
            if h == 0 {
                continue;
            }
            let over = (t.used + h).saturating_sub(limit);
            let leaving = self.bytes_leaving(ti);
            if over <= leaving {
                continue;
            }
            let opts = MoveOptions::pressure(format!(
                "RAM budget: the engine tiers above {} hold {} GB of it (pinned files of loaded models, engines' CPU copies)",
                t.name,
                crate::human::bytes_gb(h)
            ));
            started |= !self.demote_until(now, ti, over - leaving, &opts).is_empty();
        }
        started
    }

    /// Bytes of `model`'s own pages in `tier`'s `engine_held` (a move of
    /// it into `tier` brings no new RAM for them).
    pub(crate) fn engine_held_of(&self, tier: usize, model: ModelId) -> u64 {
        self.state.tiers[tier]
            .engine_held_by
            .iter()
            .filter(|(m, _)| *m == model)
            .map(|(_, b)| b)
            .sum()
    }
}
