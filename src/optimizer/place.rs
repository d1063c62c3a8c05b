//! The cascade every demand policy shares: put a model in a tier and, while
//! that tier is over its limit, push the tier's lowest-ranked models to the
//! next tier that can hold them, which may push that tier's models further.
//!
//! The plan is made against the engine's committed bytes (`used + incoming`)
//! so that the engine accepts each move; it is emitted deepest tier first,
//! because a demotion into a tier counts on the demotions out of it that
//! come before it in the batch (see `Engine::apply_desires`).

use std::borrow::Cow;

use crate::tiers::Desire;
use crate::tiers::{ModelId, State};

/// Whether `bytes` may live in `tier` at all (its capacity, not its room):
/// the tier takes moves, and the model is not too large for it.
pub fn holds(state: &State, bytes: u64, tier: usize) -> bool {
    state.accepts_moves(tier) && state.size_allowed(bytes, tier) && state.tiers[tier].limit.is_none_or(|l| bytes <= l)
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
    bufs: Pooled,
    /// The plan, written into the engine's vector.
    desires: &'a mut Vec<Desire>,
    reason: &'static str,
}

/// The working buffers of a [`Cascade`]. A plan is made on every access in
/// the simulator's hot loop, so they come from a small per-thread pool
/// instead of being allocated each time.
#[derive(Default)]
struct Bufs {
    extra_in: Vec<u64>,
    extra_models: Vec<usize>,
    out: Vec<u64>,
    out_models: Vec<usize>,
    /// Models this plan already moves or places (never picked as victims).
    taken: Vec<ModelId>,
    /// Eviction candidates of the tier being filled.
    cands: Vec<(f64, f64, ModelId)>,
    /// Victims chosen, as a stack: each `insert` works on the entries it
    /// pushed and truncates them before returning.
    victims: Vec<(ModelId, u64, f64)>,
    /// Models pushed out of each tier, with their keys (GDSF's inflation).
    evicted: Vec<(usize, ModelId, f64)>,
}

thread_local! {
    // Boxed on purpose: a plan takes and returns one pointer, not seven
    // vectors' worth of bytes.
    #[allow(clippy::vec_box)]
    static POOL: std::cell::RefCell<Vec<Box<Bufs>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Bufs {
    fn take(tiers: usize) -> Box<Bufs> {
        let mut b = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        for v in [&mut b.extra_in, &mut b.out] {
            v.clear();
            v.resize(tiers, 0);
        }
        for v in [&mut b.extra_models, &mut b.out_models] {
            v.clear();
            v.resize(tiers, 0);
        }
        b.taken.clear();
        b.cands.clear();
        b.victims.clear();
        b.evicted.clear();
        b
    }
}

/// [`Bufs`] on loan from the pool; dropping it gives them back.
struct Pooled(std::mem::ManuallyDrop<Box<Bufs>>);

impl std::ops::Deref for Pooled {
    type Target = Bufs;
    fn deref(&self) -> &Bufs {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Bufs {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // SAFETY: this is the last use of `self.0`: the field is taken once,
        // here, as the `Pooled` goes away, and never read afterwards.
        let b = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        // A few are enough: plans on one thread rarely overlap. `b` is
        // simply freed when the pool is full or being torn down.
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && p.len() < 4
            {
                p.push(b);
            }
        });
    }
}

impl<'a, R: Ranking + ?Sized> Cascade<'a, R> {
    /// A plan that appends its desires to `out`.
    pub fn new(state: &'a State, ranking: &'a R, reason: &'static str, out: &'a mut Vec<Desire>) -> Self {
        Cascade {
            state,
            ranking,
            bufs: Pooled(std::mem::ManuallyDrop::new(Bufs::take(state.tiers.len()))),
            desires: out,
            reason,
        }
    }

    /// Models pushed out of each tier so far, with their keys: (tier, model, key).
    pub fn evicted(&self) -> &[(usize, ModelId, f64)] {
        &self.bufs.evicted
    }

    /// Bytes and models by which `tier` would be over its limits with `bytes` more.
    fn excess(&self, tier: usize, bytes: u64) -> (u64, usize) {
        let t = &self.state.tiers[tier];
        let b = &self.bufs;
        let committed = t.committed() + b.extra_in[tier] + bytes;
        let bytes_over = match t.limit {
            Some(l) => committed.saturating_sub(b.out[tier]).saturating_sub(l),
            None => 0,
        };
        let models_over = match t.max_models {
            Some(mx) => (t.models + t.incoming_models + b.extra_models[tier] + 1).saturating_sub(b.out_models[tier] + mx),
            None => 0,
        };
        (bytes_over, models_over)
    }

    /// Plans `model` (key `key`) into `tier`, displacing what must go.
    /// Returns false, changing nothing, when room cannot be made.
    pub fn insert(&mut self, model: ModelId, key: f64, tier: usize) -> bool {
        let Some(m) = self.state.model(model) else { return false };
        let bytes = m.bytes;
        if !holds(self.state, bytes, tier) {
            return false;
        }
        let (mut bytes_over, mut models_over) = self.excess(tier, bytes);
        let first_victim = self.bufs.victims.len();
        if bytes_over > 0 || models_over > 0 {
            let b = &mut self.bufs;
            b.cands.clear();
            for &id in &self.state.members[tier] {
                let Some(v) = self.state.model(id) else { continue };
                if v.pinned || v.job.is_some() || v.unavailable.is_some() || id == model || b.taken.contains(&id) {
                    continue;
                }
                b.cands.push((
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
                let Some(pos) = b.cands.iter().enumerate().min_by(|a, b| order(a.1, b.1)).map(|(i, _)| i) else {
                    break;
                };
                let (vkey, _, id) = b.cands.swap_remove(pos);
                if !self.ranking.admit(key, vkey) {
                    break;
                }
                let vb = self.state.model(id).map_or(0, |v| v.bytes);
                b.victims.push((id, vb, vkey));
                bytes_over = bytes_over.saturating_sub(vb);
                models_over = models_over.saturating_sub(1);
            }
            if bytes_over > 0 || models_over > 0 {
                b.victims.truncate(first_victim);
                return false;
            }
        }
        // Commit: this model comes in, the victims go out and are placed
        // further down (the last tier always takes them).
        self.bufs.extra_in[tier] += bytes;
        self.bufs.extra_models[tier] += 1;
        self.bufs.taken.push(model);
        let last = self.state.last_tier();
        let last_victim = self.bufs.victims.len();
        for i in first_victim..last_victim {
            let (id, vb, vkey) = self.bufs.victims[i];
            self.bufs.out[tier] += vb;
            self.bufs.out_models[tier] += 1;
            self.bufs.taken.push(id);
            self.bufs.evicted.push((tier, id, vkey));
            let placed = (tier + 1..last).find(|&d| self.insert(id, vkey, d)).unwrap_or_else(|| {
                self.bufs.extra_in[last] += vb;
                self.bufs.extra_models[last] += 1;
                last
            });
            // `insert` pushed the victim's own desire when it succeeded.
            if placed == last {
                self.push(id, last);
            }
        }
        self.bufs.victims.truncate(first_victim);
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
/// faster than its own that can hold it. Empty when the model is busy or
/// pinned (a pinned model is never moved by a policy: pinned in a slower
/// engine tier, it stays there however hot it is).
pub fn promotion_targets(state: &State, model: ModelId) -> std::ops::Range<usize> {
    match state.model(model) {
        Some(m) if !m.pinned && m.job.is_none() && m.unavailable.is_none() => {
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
    out: &'a mut Vec<Desire>,
) -> Cascade<'a, R> {
    let targets = promotion_targets(state, model);
    let mut plan = Cascade::new(state, ranking, reason, out);
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
pub fn plan_by_key(state: &State, key: impl Fn(ModelId) -> f64, reason: &str, out: &mut Vec<Desire>) {
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
            .find(|&t| state.accepts_moves(t) && state.size_allowed(m.bytes, t) && room[t] >= m.bytes && count_room[t] > 0)
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
    out.extend(demotions);
    out.extend(promotions);
}
