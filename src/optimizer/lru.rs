//! `lru`: on every access the model goes to the fastest tier that can hold
//! it; while a tier is over its limit its least recently accessed model is
//! pushed to the next tier that can hold it. The last tier is unbounded.
//! Recency is the order of accesses (of two accesses at the same time, the
//! one made first is the older).
//!
//! With free moves (the simulator's `--moves instant`) this is exactly the
//! plain exclusive multi-tier LRU: the accessed model leaves its tier
//! first, so room it frees there counts for the models pushed into that
//! tier, and any model of an overfull tier may be pushed, also one the same
//! access pushed there ([`LruPolicy::exact_plan`]; the engine applies such
//! a plan as one exchange). With timed moves a model's bytes stay in its
//! source tier until its move has ended, so the shared cascade
//! ([`place::Cascade`](super::place::Cascade)) plans against the committed
//! bytes instead, and may push one more model down than the exact LRU.

use smallvec::SmallVec;

use super::place::{Ranking, holds, plan_by_key, promote_on_access};
use crate::config::Config;
use crate::tiers::{Desire, ModelId, Policy, State, Usage};

const REASON: &str = "lru: accessed";

/// Key of a model last accessed before this engine started (restored from
/// a state file): below every access of this run; such models are ordered
/// by their last access time, the tie-break of every ranking.
const BEFORE_THIS_RUN: f64 = -1e15;

/// Least recently used, cascading across tiers.
#[derive(Debug, Default, Clone)]
pub struct LruPolicy {
    /// Plan the exact exclusive LRU, applied as one exchange (free moves).
    exact: bool,
}

/// The books of an exact plan: bytes and models per tier once its moves
/// are done, and where it puts each model it moves (in move order).
struct Plan {
    bytes: SmallVec<[u64; 4]>,
    count: SmallVec<[usize; 4]>,
    placed: SmallVec<[(ModelId, usize); 8]>,
}

impl Plan {
    fn shift(&mut self, id: ModelId, size: u64, from: usize, to: usize) {
        self.bytes[from] -= size;
        self.count[from] -= 1;
        self.bytes[to] += size;
        self.count[to] += 1;
        match self.placed.iter_mut().find(|p| p.0 == id) {
            Some(p) => p.1 = to,
            None => self.placed.push((id, to)),
        }
    }

    fn over(&self, state: &State, k: usize) -> bool {
        let t = &state.tiers[k];
        t.limit.is_some_and(|l| self.bytes[k] > l) || t.max_models.is_some_and(|mx| self.count[k] > mx)
    }
}

/// Orders two models by recency: access order, then (for models of
/// earlier runs) last access time, then id.
fn older(a: (ModelId, &Usage), b: (ModelId, &Usage)) -> std::cmp::Ordering {
    let at = |u: &Usage| u.last_access.unwrap_or(f64::NEG_INFINITY);
    a.1.last_seq
        .cmp(&b.1.last_seq)
        .then(at(a.1).total_cmp(&at(b.1)))
        .then(a.0.cmp(&b.0))
}

impl LruPolicy {
    /// The policy for `cfg`: exact when its moves take no time.
    pub fn for_config(cfg: &Config) -> LruPolicy {
        LruPolicy {
            exact: cfg.moves.promote_s_per_gb == 0.0 && cfg.moves.demote_s_per_gb == 0.0,
        }
    }

    /// The exclusive LRU's moves for an access to `model`: it goes to the
    /// fastest tier that holds it, leaving its own; then each tier from
    /// there down, while over its limit (bytes or model count), pushes its
    /// least recently accessed movable model to the next tier that holds
    /// it. A model pushed twice moves once, to where it ends.
    pub fn exact_plan(&self, state: &State, model: ModelId, out: &mut Vec<Desire>) {
        let Some(m) = state.model(model) else { return };
        if m.pinned || m.job.is_some() || m.unavailable.is_some() {
            return;
        }
        let n = state.tiers.len();
        let Some(first) = (0..n).find(|&t| holds(state, m.bytes, t)) else {
            return;
        };
        if first >= m.tier {
            return;
        }
        let mut plan = Plan {
            bytes: state.tiers.iter().map(|t| t.committed()).collect(),
            count: state.tiers.iter().map(|t| t.committed_models()).collect(),
            placed: SmallVec::new(),
        };
        plan.shift(model, m.bytes, m.tier, first);
        for k in first..n - 1 {
            while plan.over(state, k) {
                // The least recent movable model now in tier k: its members
                // the plan did not move out, and the models it moved in.
                let here = state.members[k]
                    .iter()
                    .copied()
                    .filter(|id| !plan.placed.iter().any(|p| p.0 == *id))
                    .chain(plan.placed.iter().filter(|p| p.1 == k).map(|p| p.0))
                    .filter(|&id| id != model)
                    .filter_map(|id| state.model(id).map(|v| (id, v)))
                    .filter(|(_, v)| !v.pinned && v.job.is_none() && v.unavailable.is_none())
                    .min_by(|(a, x), (b, y)| older((*a, &x.usage), (*b, &y.usage)));
                let Some((victim, v)) = here else { break };
                let Some(dest) = (k + 1..n).find(|&d| holds(state, v.bytes, d)) else {
                    break;
                };
                plan.shift(victim, v.bytes, k, dest);
            }
        }
        for (id, to) in plan.placed {
            if state.model(id).is_some_and(|x| x.tier != to) {
                out.push(Desire {
                    model: id,
                    target: to,
                    reason: REASON.into(),
                    make_room: false,
                });
            }
        }
    }
}

impl Ranking for LruPolicy {
    fn key(&self, state: &State, model: ModelId) -> f64 {
        match state.model(model).map(|m| &m.usage) {
            Some(u) if u.last_seq > 0 => u.last_seq as f64,
            Some(u) if u.last_access.is_some() => BEFORE_THIS_RUN,
            _ => f64::NEG_INFINITY,
        }
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
        if self.exact {
            self.exact_plan(state, model, out);
        } else {
            promote_on_access(state, self, model, REASON, out);
        }
    }

    fn exchanges(&self) -> bool {
        self.exact
    }

    fn plan(&mut self, _now: f64, state: &State, out: &mut Vec<Desire>) {
        plan_by_key(state, |id| self.key(state, id), "lru: most recently used", out);
    }
}
