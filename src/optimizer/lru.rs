//! `lru`: on every access the model goes to the fastest tier that can hold
//! it; while a tier is over its limit its least recently accessed model
//! (never one this access or cascade just placed) is pushed to the next tier
//! that can hold it. The last tier is unbounded.

use super::place::{Ranking, plan_by_key, promote_on_access};
use crate::tiers::{Desire, Policy};
use crate::tiers::{ModelId, State};

/// Least recently used, cascading across tiers.
#[derive(Debug, Default, Clone)]
pub struct LruPolicy;

impl Ranking for LruPolicy {
    fn key(&self, state: &State, model: ModelId) -> f64 {
        state.model(model).and_then(|m| m.usage.last_access).unwrap_or(f64::NEG_INFINITY)
    }
}

impl Policy for LruPolicy {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn eviction_rank(&self, _now: f64, state: &State, model: ModelId) -> f64 {
        self.key(state, model)
    }

    fn on_access(&mut self, _now: f64, state: &State, model: ModelId, out: &mut Vec<Desire>) {
        promote_on_access(state, self, model, "lru: accessed", out);
    }

    fn plan(&mut self, _now: f64, state: &State, out: &mut Vec<Desire>) {
        plan_by_key(state, |id| self.key(state, id), "lru: most recently used", out);
    }
}
