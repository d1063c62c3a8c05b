//! `usage`: the seed's simple optimizer. Most-used models go to the fastest
//! tier they fit in; the least-used make room. No decisions on access.

use super::{Desire, Policy};
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

    fn plan(&mut self, _now: f64, state: &State) -> Vec<Desire> {
        let last = state.last_tier();
        // Room per tier for models the plan may place: the limit minus what
        // stays put (pinned, busy or unavailable models, and moves on their way).
        let mut room: Vec<u64> = state
            .tiers
            .iter()
            .map(|t| t.limit.unwrap_or(u64::MAX).saturating_sub(t.incoming))
            .collect();
        let mut movable: Vec<(ModelId, u64, u64, f64)> = Vec::new();
        for (id, m) in state.iter_models() {
            if m.pinned || m.job.is_some() || m.unavailable.is_some() {
                room[m.tier] = room[m.tier].saturating_sub(m.bytes);
            } else {
                movable.push((id, m.bytes, m.usage.count, m.usage.last_access.unwrap_or(f64::NEG_INFINITY)));
            }
        }
        // Most used first; ties: most recent, then smallest, then id.
        movable.sort_by(|a, b| b.2.cmp(&a.2).then(b.3.total_cmp(&a.3)).then(a.1.cmp(&b.1)).then(a.0.cmp(&b.0)));
        let mut promotions = Vec::new();
        let mut demotions = Vec::new();
        for (id, bytes, count, _) in movable {
            let Some(m) = state.model(id) else { continue };
            // Never-used models are not promoted, only kept or demoted.
            let first = if count == 0 { m.tier } else { 0 };
            let target = (first..=last)
                .find(|&t| state.size_allowed(bytes, t) && room[t] >= bytes)
                .unwrap_or(last);
            room[target] = room[target].saturating_sub(bytes);
            let reason: std::borrow::Cow<'static, str> = format!("usage: {count}").into();
            if target < m.tier {
                promotions.push(Desire {
                    model: id,
                    target,
                    reason,
                    make_room: false,
                });
            } else if target > m.tier {
                demotions.push(Desire {
                    model: id,
                    target,
                    reason,
                    make_room: false,
                });
            }
        }
        // Demotions from the slowest tiers first, so each frees the room the
        // one from the tier above needs; then promotions into the fastest
        // tiers first, freeing room in the tiers they leave.
        demotions.sort_by_key(|d| std::cmp::Reverse(state.model(d.model).map(|m| m.tier).unwrap_or(0)));
        promotions.sort_by_key(|d| d.target);
        demotions.extend(promotions);
        demotions
    }
}
