//! `lfu`: the same promotion rule as `lru`, but a full tier pushes out its
//! least frequently accessed model (all-time count; ties: least recent).

use super::place::{Ranking, plan_by_key, promote_on_access};
use crate::tiers::{Desire, Policy};
use crate::tiers::{ModelId, State};

/// Least frequently used, cascading across tiers.
#[derive(Debug, Default, Clone)]
pub struct LfuPolicy;

impl Ranking for LfuPolicy {
    fn key(&self, state: &State, model: ModelId) -> f64 {
        // The engine and the cascade break ties by last access.
        state.model(model).map_or(0.0, |m| m.usage.count as f64)
    }
}

impl Policy for LfuPolicy {
    fn name(&self) -> &'static str {
        "lfu"
    }

    fn eviction_rank(&self, _now: f64, state: &State, model: ModelId) -> f64 {
        self.key(state, model)
    }

    fn on_access(&mut self, _now: f64, state: &State, model: ModelId, out: &mut Vec<Desire>) {
        promote_on_access(state, self, model, "lfu: accessed", out);
    }

    fn plan(&mut self, _now: f64, state: &State, out: &mut Vec<Desire>) {
        plan_by_key(state, |id| self.key(state, id), "lfu: most frequently used", out);
    }
}
