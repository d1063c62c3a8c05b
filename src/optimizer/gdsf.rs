//! `gdsf`: GreedyDual-Size-Frequency (Cherkasova, 1998). Each model has a
//! value `H = L + F * C / S` where `F` is its access count, `S` its size and
//! `C` the cost of fetching it again: its reload seconds from the last tier
//! (`S x` that tier's access s/GB), so `C / S` is the same for every model.
//! `L`, one per tier, inflates to the value of the last model pushed out of
//! that tier, which ages models that stopped being used. Promotion follows
//! the `lru` rule; a full tier pushes out its lowest `H` first.

use super::place::{Ranking, plan_by_key, promote_on_access};
use crate::tiers::{Desire, Policy};
use crate::tiers::{ModelId, State};

/// GreedyDual-Size-Frequency with reload seconds as the cost.
#[derive(Debug, Default, Clone)]
pub struct GdsfPolicy {
    /// `H` by model id.
    h: Vec<f64>,
    /// Inflation value by tier.
    l: Vec<f64>,
}

impl GdsfPolicy {
    fn value(&self, state: &State, model: ModelId, tier: usize) -> f64 {
        let c = state.tiers.last().map_or(1.0, |t| t.access_s_per_gb);
        let f = state.model(model).map_or(0.0, |m| m.usage.count as f64);
        self.l.get(tier).copied().unwrap_or(0.0) + f * c
    }

    fn set(&mut self, model: ModelId, h: f64) {
        if self.h.len() <= model {
            self.h.resize(model + 1, 0.0);
        }
        self.h[model] = h;
    }
}

impl Ranking for GdsfPolicy {
    fn key(&self, _state: &State, model: ModelId) -> f64 {
        self.h.get(model).copied().unwrap_or(0.0)
    }
}

impl Policy for GdsfPolicy {
    fn name(&self) -> &'static str {
        "gdsf"
    }

    fn eviction_rank(&self, _now: f64, state: &State, model: ModelId) -> f64 {
        self.key(state, model)
    }

    fn on_access(&mut self, _now: f64, state: &State, model: ModelId, out: &mut Vec<Desire>) {
        if self.l.len() < state.tiers.len() {
            self.l.resize(state.tiers.len(), 0.0);
        }
        let Some(tier) = state.model(model).map(|m| m.tier) else {
            return;
        };
        // Value as of this access, in the tier it is headed for.
        let h = self.value(state, model, tier);
        self.set(model, h);
        let start = out.len();
        let evicted: smallvec::SmallVec<[(usize, f64); 4]> = {
            let plan = promote_on_access(state, self, model, "gdsf: accessed", out);
            plan.evicted().iter().map(|&(t, _, h)| (t, h)).collect()
        };
        for (tier, h) in evicted {
            self.l[tier] = self.l[tier].max(h);
        }
        for d in &out[start..] {
            let h = self.value(state, d.model, d.target);
            self.set(d.model, h);
        }
    }

    fn plan(&mut self, _now: f64, state: &State, out: &mut Vec<Desire>) {
        plan_by_key(state, |id| self.key(state, id), "gdsf: highest value", out);
    }
}
