//! `belady`: the offline, clairvoyant reference. It knows the whole trace:
//! promotion follows the `lru` rule, and a full tier pushes out the model
//! whose next access is furthest in the future (never again first). It is
//! built from a trace by the simulator; the server cannot run it.

use super::place::{Ranking, plan_by_key, promote_on_access};
use crate::tiers::{Desire, Policy};
use crate::tiers::{ModelId, State};

/// Furthest-next-use eviction from a known future.
#[derive(Debug, Clone, Default)]
pub struct BeladyPolicy {
    /// Request indices of each model's accesses, in order.
    uses: Vec<Vec<u32>>,
    /// Per model: how many of its accesses have happened.
    seen: Vec<u32>,
}

impl BeladyPolicy {
    /// The future as the sequence of accessed model ids, in trace order.
    pub fn from_sequence(models: usize, sequence: impl IntoIterator<Item = ModelId>) -> BeladyPolicy {
        let mut uses = vec![Vec::new(); models];
        for (i, m) in sequence.into_iter().enumerate() {
            if m >= uses.len() {
                uses.resize(m + 1, Vec::new());
            }
            uses[m].push(i as u32);
        }
        let seen = vec![0; uses.len()];
        BeladyPolicy { uses, seen }
    }
}

impl Ranking for BeladyPolicy {
    fn key(&self, _state: &State, model: ModelId) -> f64 {
        let seen = self.seen.get(model).copied().unwrap_or(0) as usize;
        match self.uses.get(model).and_then(|u| u.get(seen)) {
            Some(&next) => -(next as f64),
            None => f64::NEG_INFINITY,
        }
    }
}

impl Policy for BeladyPolicy {
    fn name(&self) -> &'static str {
        "belady"
    }

    fn eviction_rank(&self, _now: f64, state: &State, model: ModelId) -> f64 {
        self.key(state, model)
    }

    fn on_access(&mut self, _now: f64, state: &State, model: ModelId, out: &mut Vec<Desire>) {
        if let Some(s) = self.seen.get_mut(model) {
            *s += 1;
        }
        promote_on_access(state, self, model, "belady: accessed", out);
    }

    fn plan(&mut self, _now: f64, state: &State, out: &mut Vec<Desire>) {
        plan_by_key(state, |id| self.key(state, id), "belady: soonest next use", out);
    }
}
