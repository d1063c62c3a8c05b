//! The cascade every demand policy shares: put a model in a tier and, while
//! that tier is over its limit, push the tier's lowest-ranked models to the
//! next tier that can hold them, which may push that tier's models further.
//!
//! The plan is made against the engine's committed bytes (`used + incoming`)
//! so that the engine accepts each move; it is emitted deepest tier first,
//! because a demotion into a tier counts on the demotions out of it that
//! come before it in the batch (see `Engine::apply_desires`).

use std::borrow::Cow;

use super::Desire;
use crate::tiers::{ModelId, State};

/// Whether `bytes` may live in `tier` at all (its capacity, not its room).
pub fn holds(state: &State, bytes: u64, tier: usize) -> bool {
    state.size_allowed(bytes, tier) && state.tiers[tier].limit.is_none_or(|l| bytes <= l)
}

/// How a policy orders a tier's models and whether it lets one displace another.
pub trait Ranking {
    /// Eviction key: the lowest leaves first (ties: least recently used, then lowest id).
    fn key(&self, state: &State, model: ModelId) -> f64;

    /// Whether a model with key `incoming` may push out one with key `victim`.
    fn admit(&self, _incoming: f64, _victim: f64) -> bool {
        true
    }
}

/// A plan under construction: bytes and model counts it adds to or takes
/// from each tier, and the desires so far.
pub struct Cascade<'a, R: Ranking + ?Sized> {
    state: &'a State,
    ranking: &'a R,
    extra_in: Vec<u64>,
    extra_models: Vec<usize>,
    out: Vec<u64>,
    out_models: Vec<usize>,
    /// Models this plan already moves or places (never picked as victims).
    taken: Vec<ModelId>,
    pub desires: Vec<Desire>,
    /// Models pushed out of each tier, with their keys (GDSF's inflation).
    pub evicted: Vec<(usize, ModelId, f64)>,
    reason: &'static str,
    scratch: Vec<(f64, f64, ModelId)>,
}

impl<'a, R: Ranking + ?Sized> Cascade<'a, R> {
    pub fn new(state: &'a State, ranking: &'a R, reason: &'static str) -> Self {
        Cascade {
            state,
            ranking,
            extra_in: Vec::new(),
            extra_models: Vec::new(),
            out: Vec::new(),
            out_models: Vec::new(),
            taken: Vec::new(),
            desires: Vec::new(),
            evicted: Vec::new(),
            reason,
            scratch: Vec::new(),
        }
    }

    /// Bytes and models by which `tier` would be over its limits with `bytes` more.
    fn excess(&self, tier: usize, bytes: u64) -> (u64, usize) {
        let t = &self.state.tiers[tier];
        let committed = t.committed() + self.extra_in[tier] + bytes;
        let bytes_over = match t.limit {
            Some(l) => committed.saturating_sub(self.out[tier]).saturating_sub(l),
            None => 0,
        };
        let models_over = match t.max_models {
            Some(mx) => (t.models + t.incoming_models + self.extra_models[tier] + 1).saturating_sub(self.out_models[tier] + mx),
            None => 0,
        };
        (bytes_over, models_over)
    }

    /// Plans `model` (key `key`) into `tier`, displacing what must go.
    /// Returns false, changing nothing, when room cannot be made.
    pub fn insert(&mut self, model: ModelId, key: f64, tier: usize) -> bool {
        if self.extra_in.is_empty() {
            let n = self.state.tiers.len();
            self.extra_in = vec![0; n];
            self.extra_models = vec![0; n];
            self.out = vec![0; n];
            self.out_models = vec![0; n];
        }
        let Some(m) = self.state.model(model) else { return false };
        let bytes = m.bytes;
        if !holds(self.state, bytes, tier) {
            return false;
        }
        let (mut bytes_over, mut models_over) = self.excess(tier, bytes);
        let mut victims: Vec<(ModelId, u64, f64)> = Vec::new();
        if bytes_over > 0 || models_over > 0 {
            let mut cands = std::mem::take(&mut self.scratch);
            cands.clear();
            for &id in &self.state.members[tier] {
                let Some(v) = self.state.model(id) else { continue };
                if v.pinned || v.job.is_some() || v.unavailable.is_some() || id == model || self.taken.contains(&id) {
                    continue;
                }
                cands.push((
                    self.ranking.key(self.state, id),
                    v.usage.last_access.unwrap_or(f64::NEG_INFINITY),
                    id,
                ));
            }
            // Victims in key order: the few needed are picked by repeated
            // minimum, cheaper than sorting the whole tier.
            let order =
                |a: &(f64, f64, ModelId), b: &(f64, f64, ModelId)| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2));
            while bytes_over > 0 || models_over > 0 {
                let Some(pos) = cands.iter().enumerate().min_by(|a, b| order(a.1, b.1)).map(|(i, _)| i) else {
                    break;
                };
                let (vkey, _, id) = cands.swap_remove(pos);
                if !self.ranking.admit(key, vkey) {
                    break;
                }
                let vb = self.state.model(id).map_or(0, |v| v.bytes);
                victims.push((id, vb, vkey));
                bytes_over = bytes_over.saturating_sub(vb);
                models_over = models_over.saturating_sub(1);
            }
            self.scratch = cands;
            if bytes_over > 0 || models_over > 0 {
                return false;
            }
        }
        // Commit: this model comes in, the victims go out and are placed
        // further down (the last tier always takes them).
        self.extra_in[tier] += bytes;
        self.extra_models[tier] += 1;
        self.taken.push(model);
        let last = self.state.last_tier();
        for (id, vb, vkey) in victims {
            self.out[tier] += vb;
            self.out_models[tier] += 1;
            self.taken.push(id);
            self.evicted.push((tier, id, vkey));
            let placed = (tier + 1..last).find(|&d| self.insert(id, vkey, d)).unwrap_or_else(|| {
                self.extra_in[last] += vb;
                self.extra_models[last] += 1;
                last
            });
            // `insert` pushed the victim's own desire when it succeeded.
            if placed == last {
                self.push(id, last);
            }
        }
        if self.state.model(model).is_some_and(|m| m.tier != tier) {
            self.push(model, tier);
        }
        true
    }

    fn push(&mut self, model: ModelId, target: usize) {
        self.desires.push(Desire {
            model,
            target,
            reason: Cow::Borrowed(self.reason),
            make_room: false,
        });
    }
}

/// Whether inserting `model` (key `key`) into `tier` would need victims
/// and the coldest movable one would not be admitted: then the insert must
/// fail, and this finds out without building a plan (the hot path).
pub fn surely_refused<R: Ranking + ?Sized>(state: &State, ranking: &R, model: ModelId, key: f64, tier: usize) -> bool {
    let Some(m) = state.model(model) else { return true };
    let t = &state.tiers[tier];
    let bytes_fit = t.limit.is_none_or(|l| t.committed() + m.bytes <= l);
    let count_fits = t.max_models.is_none_or(|mx| t.models + t.incoming_models < mx);
    if bytes_fit && count_fits {
        return false;
    }
    let coldest = state.members[tier]
        .iter()
        .filter(|&&id| id != model)
        .filter_map(|&id| state.model(id).map(|v| (id, v)))
        .filter(|(_, v)| !v.pinned && v.job.is_none() && v.unavailable.is_none())
        .map(|(id, _)| ranking.key(state, id))
        .min_by(f64::total_cmp);
    coldest.is_none_or(|c| !ranking.admit(key, c))
}

/// Tiers a demand policy may promote `model` into, fastest first: those
/// faster than its own that can hold it. Empty when the model is busy.
pub fn promotion_targets(state: &State, model: ModelId) -> std::ops::Range<usize> {
    match state.model(model) {
        Some(m) if m.job.is_none() && m.unavailable.is_none() => {
            let first = (0..m.tier).find(|&t| holds(state, m.bytes, t)).unwrap_or(m.tier);
            first..m.tier
        }
        _ => 0..0,
    }
}

/// The LRU-style promotion rule shared by lru, lfu, gdsf and belady: the
/// accessed model goes to the fastest tier that holds it, cascading; a tier
/// where no room can be made (every candidate busy) is skipped.
pub fn promote_on_access<'a, R: Ranking + ?Sized>(
    state: &'a State,
    ranking: &'a R,
    model: ModelId,
    reason: &'static str,
) -> Cascade<'a, R> {
    let targets = promotion_targets(state, model);
    let mut plan = Cascade::new(state, ranking, reason);
    if targets.is_empty() {
        return plan;
    }
    let key = ranking.key(state, model);
    for t in targets {
        if holds(state, state.model(model).map_or(0, |m| m.bytes), t) && plan.insert(model, key, t) {
            break;
        }
    }
    plan
}

/// A whole placement for `auto_optimize`: movable models by descending key
/// fill the tiers fastest first; demotions come before the promotions that
/// need their room. Models never accessed (key `-inf`) are only kept or demoted.
pub fn plan_by_key(state: &State, key: impl Fn(ModelId) -> f64, reason: &str) -> Vec<Desire> {
    let last = state.last_tier();
    let mut room: Vec<u64> = state
        .tiers
        .iter()
        .map(|t| t.limit.unwrap_or(u64::MAX).saturating_sub(t.incoming))
        .collect();
    let mut count_room: Vec<usize> = state
        .tiers
        .iter()
        .map(|t| t.max_models.unwrap_or(usize::MAX).saturating_sub(t.incoming_models))
        .collect();
    let mut movable: Vec<(f64, f64, ModelId)> = Vec::new();
    for (id, m) in state.iter_models() {
        if m.pinned || m.job.is_some() || m.unavailable.is_some() {
            room[m.tier] = room[m.tier].saturating_sub(m.bytes);
            count_room[m.tier] = count_room[m.tier].saturating_sub(1);
        } else {
            movable.push((key(id), m.usage.last_access.unwrap_or(f64::NEG_INFINITY), id));
        }
    }
    // Most valuable first; ties: most recent, then lowest id.
    movable.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut promotions = Vec::new();
    let mut demotions = Vec::new();
    for (k, _, id) in movable {
        let Some(m) = state.model(id) else { continue };
        let first = if k == f64::NEG_INFINITY { m.tier } else { 0 };
        let target = (first..=last)
            .find(|&t| state.size_allowed(m.bytes, t) && room[t] >= m.bytes && count_room[t] > 0)
            .unwrap_or(last);
        room[target] = room[target].saturating_sub(m.bytes);
        count_room[target] = count_room[target].saturating_sub(1);
        if target == m.tier {
            continue;
        }
        let d = Desire {
            model: id,
            target,
            // The seed's sentence reads "(usage: 12)"; the policy's why follows.
            reason: Cow::Owned(format!("usage: {}; {reason}", m.usage.count)),
            make_room: false,
        };
        if target < m.tier { promotions.push(d) } else { demotions.push(d) }
    }
    // Demotions from the slowest tiers first, so each frees the room the one
    // from the tier above needs; then promotions into the fastest tiers
    // first, freeing room in the tiers they leave.
    demotions.sort_by_key(|d| std::cmp::Reverse(state.model(d.model).map(|m| m.tier).unwrap_or(0)));
    promotions.sort_by_key(|d| d.target);
    demotions.extend(promotions);
    demotions
}
