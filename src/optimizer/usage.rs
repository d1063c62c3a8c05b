//! `usage`: the seed's simple optimizer. Most-used models go to the fastest
//! tier they fit in; the least-used make room. No decisions on access.

use super::place::plan_by_key;
use crate::tiers::{Desire, Policy};
use crate::tiers::{ModelId, State};

/// Ranks by access count; plans by greedy fill, most used first.
#[derive(Debug, Default, Clone)]
pub struct UsagePolicy;

impl Policy for UsagePolicy {
    fn name(&self) -> &'static str {
        "usage"
    }

    fn eviction_rank(&self, _now: f64, state: &State, model: ModelId) -> f64 {
        state.model(model).map(|m| m.usage.count as f64).unwrap_or(0.0)
    }

    fn plan(&mut self, _now: f64, state: &State, out: &mut Vec<Desire>) {
        // Never-used models are not promoted, only kept or demoted.
        let key = |id: ModelId| match state.model(id).map(|m| m.usage.count) {
            Some(c) if c > 0 => c as f64,
            _ => f64::NEG_INFINITY,
        };
        plan_by_key(state, key, "usage: most used first", out);
    }
}
