//! `tierd`: the project's own policy, and the default.
//!
//! Under tierd's cost model an access costs `size x` the access s/GB of the
//! tier holding the model, so keeping a model in tier `k` rather than `k+1`
//! saves `rate x size x (c[k+1] - c[k])` per second for `size` bytes: the
//! benefit per byte is the model's access rate times the tier's cost step.
//! Within one tier the step is the same for every model, so the policy ranks
//! by estimated rate, and weighs bytes when it decides what displaces what.
//!
//! - **Rate**: an exponentially decayed access count with its own half-life,
//!   kept in the log domain as `key = log2(count at t) + t / half_life`,
//!   which does not change between accesses (every count decays alike).
//!   This mixes recency and frequency (LRFU-like). A second, short count
//!   catches bursts; where it is the larger estimate it lifts the long one
//!   part of the way (`short_weight`, in the log domain: 0.5 is their
//!   geometric mean), so a burst counts relative to the model's own rate.
//! - **Admission and hysteresis**: an accessed model moves into a faster tier
//!   only if room can be made from models whose rate is lower than its own
//!   by a margin (`margin_log2`); otherwise it stays, or goes to the fastest
//!   tier where it does pass. A large model seen once thus waits behind the
//!   fast tier's regulars, and two models of similar rate do not swap places
//!   on every access. Displaced models go to the next tier only if they pass
//!   the same test there, else further down.
//! - **Prediction**: the policy keeps each model's accesses per hour over the
//!   last three days. Once a model has `min_history_s` of history, the
//!   smaller of its counts in the coming hour one and two days earlier
//!   predicts its rate then (a pattern must hold on both days). On the tick
//!   before that hour the prediction becomes a floor for the model's score
//!   until the hour ends (so it is not pushed out just before it is needed),
//!   and a model whose predicted rate exceeds its current one by
//!   `prefetch_ratio` is prefetched under the same admission rule.
//! - **Free moves**: when the configuration's moves take no time, every
//!   accessed model is admitted (see [`TierdParams::for_config`]).

use super::place::{Cascade, Ranking, plan_by_key, promotion_targets, surely_refused};
use crate::tiers::{Desire, Policy};
use crate::tiers::{ModelId, State};
use serde::Deserialize;

/// Tunables of the `tierd` policy.
#[derive(Debug, Clone)]
pub struct TierdParams {
    /// Half-life of the policy's long-term decayed access count, seconds.
    pub half_life_s: f64,
    /// Half-life of the short-term count that catches bursts, seconds (0: off).
    pub short_half_life_s: f64,
    /// How far a short-term estimate above the long-term one lifts the
    /// score, in the log domain: the score is `long^(1-w) x short^w`
    /// (0.5: their geometric mean; 1: the short estimate as it is).
    pub short_weight: f64,
    /// A model displaces others only if its key exceeds theirs by this
    /// much (log2 of a rate ratio).
    pub margin_log2: f64,
    /// History needed before the hour-of-day profile is trusted, seconds.
    pub min_history_s: f64,
    /// Period of the prediction tick, seconds.
    pub tick_s: f64,
    /// Predicted rate must exceed the decayed one by this factor to prefetch.
    pub prefetch_ratio: f64,
    /// Most prefetches started per tick.
    pub prefetch_per_tick: usize,
}

impl TierdParams {
    /// The defaults, adapted to a configuration: when moves are free
    /// (promote and demote at 0 s/GB) a promotion costs nothing, so every
    /// accessed model is admitted (the margin is `-inf`) and only the
    /// eviction order is tierd's.
    pub fn for_config(cfg: &crate::config::Config) -> TierdParams {
        let mut p = TierdParams::default();
        if cfg.moves.promote_s_per_gb == 0.0 && cfg.moves.demote_s_per_gb == 0.0 {
            p.margin_log2 = f64::NEG_INFINITY;
        }
        p
    }

    /// Applies `key=value,...` overrides (the simulator's `--tierd` option).
    pub fn with_overrides(mut self, spec: &str) -> Result<TierdParams, String> {
        for kv in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("expected key=value, found {kv:?}"))?;
            let x: f64 = v.trim().parse().map_err(|_| format!("{k}: {v:?} is not a number"))?;
            match k.trim() {
                "half_life_s" if x > 0.0 => self.half_life_s = x,
                "short_half_life_s" if x >= 0.0 => self.short_half_life_s = x,
                "short_weight" if (0.0..=1.0).contains(&x) => self.short_weight = x,
                "margin_log2" => self.margin_log2 = x,
                "min_history_s" => self.min_history_s = x,
                "tick_s" if x > 0.0 => self.tick_s = x,
                "prefetch_ratio" if x > 0.0 => self.prefetch_ratio = x,
                "prefetch_per_tick" if x >= 0.0 => self.prefetch_per_tick = x as usize,
                other => return Err(format!("unknown or invalid tierd parameter {other}={v}")),
            }
        }
        Ok(self)
    }
}

impl Default for TierdParams {
    fn default() -> Self {
        TierdParams {
            half_life_s: 1800.0,
            short_half_life_s: 30.0,
            short_weight: 0.5,
            margin_log2: 0.5,
            min_history_s: 2.0 * 86_400.0,
            tick_s: 60.0,
            prefetch_ratio: 2.0,
            prefetch_per_tick: 4,
        }
    }
}

/// Rate-ranked placement with admission, hysteresis and prediction.
#[derive(Debug, Clone)]
pub struct TierdPolicy {
    params: TierdParams,
    /// `log2(ln 2 / h)` of the long and short half-lives (hot path).
    log_scale: (f64, f64),
    /// Long-term decayed-count key by model id (`-inf`: never accessed).
    key: Vec<f64>,
    /// Short-term decayed-count key by model id.
    short: Vec<f64>,
    /// Short-term key by model id without the part of the latest access
    /// that is no evidence of a burst (see [`TierdPolicy::burst_weight`]);
    /// fixed between accesses, so it is computed once per access.
    short_burst: Vec<f64>,
    /// Predicted-rate floor of the key, by model id, and until when it holds.
    floor: Vec<(f64, f64)>,
    /// Accesses per hour over the last three days, by model id.
    hours: Vec<HourRing>,
    /// The hour the cached predictions are for, and the predicted score
    /// (log2 rate; `-inf`: none) by model id. A prediction reads only past
    /// hours, which no later access changes, so it holds for the hour.
    predicted: (Option<u64>, Vec<f64>),
    /// Time of the policy's latest decision.
    now: f64,
}

impl TierdPolicy {
    pub fn new(params: TierdParams) -> TierdPolicy {
        let scale = |h: f64| if h > 0.0 { (std::f64::consts::LN_2 / h).log2() } else { 0.0 };
        TierdPolicy {
            log_scale: (scale(params.half_life_s), scale(params.short_half_life_s)),
            params,
            key: Vec::new(),
            short: Vec::new(),
            short_burst: Vec::new(),
            floor: Vec::new(),
            hours: Vec::new(),
            predicted: (None, Vec::new()),
            now: 0.0,
        }
    }

    pub fn params(&self) -> &TierdParams {
        &self.params
    }

    /// log2 of the estimated access rate (per second) at `now` from a
    /// decayed-count key of half-life `h`: a steady rate r keeps the count
    /// at r h / ln 2.
    fn log_rate(key: f64, h: f64, log_scale: f64, now: f64) -> f64 {
        key - now / h + log_scale
    }

    /// The model's own score: log2 of its estimated rate at the latest
    /// decision. The long-term estimate, lifted towards the short-term one
    /// where that is larger (a burst) by `short_weight` of the way: a burst
    /// is read relative to the model's own rate, so a few accesses of a
    /// model seen once an hour weigh less than those of a regular.
    fn own_key(&self, model: ModelId) -> f64 {
        let long = self.key.get(model).copied().unwrap_or(f64::NEG_INFINITY);
        let r = Self::log_rate(long, self.params.half_life_s, self.log_scale.0, self.now);
        if self.params.short_half_life_s <= 0.0 {
            return r;
        }
        let h = self.params.short_half_life_s;
        let short = self.short_burst.get(model).copied().unwrap_or(f64::NEG_INFINITY);
        let s = Self::log_rate(short, h, self.log_scale.1, self.now);
        if s <= r {
            r
        } else if r == f64::NEG_INFINITY {
            s
        } else {
            r + self.params.short_weight * (s - r)
        }
    }

    /// The score with its prediction floor, as of the latest decision.
    fn effective(&self, model: ModelId) -> f64 {
        let k = self.own_key(model);
        match self.floor.get(model) {
            Some(&(f, until)) if until > self.now => k.max(f),
            _ => k,
        }
    }

    /// The model's score as plans and evictions rank it: its effective
    /// score, or, for a model the policy has not seen accessed (a configured
    /// starting count, a restart), a rank below every observed rate by its
    /// count (never used: lowest).
    fn score(&self, state: &State, id: ModelId) -> f64 {
        let k = self.effective(id);
        match state.model(id).map(|m| m.usage.count) {
            Some(c) if k == f64::NEG_INFINITY && c > 0 => -1e6 + (c as f64).log2(),
            _ => k,
        }
    }

    /// Score of a steady rate `per_s`.
    fn key_of_rate(&self, per_s: f64, _now: f64) -> f64 {
        per_s.log2()
    }

    fn bump(keys: &mut Vec<f64>, model: ModelId, now: f64, h: f64) {
        if keys.len() <= model {
            keys.resize(model + 1, f64::NEG_INFINITY);
        }
        let base = now / h;
        let x = keys[model] - base;
        keys[model] = base + (1.0 + x.exp2()).log2();
    }

    /// How much of an access the short count keeps as evidence of a burst:
    /// after an access, a renewal process with gaps of coefficient of
    /// variation `cv` brings `(cv^2 - 1) / 2` accesses more than its mean
    /// rate does (none for Poisson arrivals, 7.5 for CV 4), so a lone access
    /// counts as that many, at most one, and a model whose gaps show no
    /// clustering (or that has fewer than [`BURST_MIN_GAPS`] gaps) needs two
    /// accesses close together before the short count says anything.
    fn burst_weight(state: &State, model: ModelId) -> f64 {
        let Some(u) = state.model(model).map(|m| &m.usage) else {
            return 0.0;
        };
        if u.gaps < BURST_MIN_GAPS || u.gap_mean <= 0.0 {
            return 0.0;
        }
        let cv = u.gap_stddev() / u.gap_mean;
        ((cv * cv - 1.0) / 2.0).clamp(0.0, 1.0)
    }

    fn record(&mut self, model: ModelId, now: f64) {
        if self.hours.len() <= model {
            self.hours.resize(model + 1, HourRing::default());
        }
        self.hours[model].record(now);
        Self::bump(&mut self.key, model, now, self.params.half_life_s);
        if self.params.short_half_life_s > 0.0 {
            Self::bump(&mut self.short, model, now, self.params.short_half_life_s);
        }
    }

    /// Plans `model` into the fastest tier faster than its own where it
    /// passes admission, appending the plan to `out`; whether it found one.
    fn place(&self, state: &State, model: ModelId, reason: &'static str, out: &mut Vec<Desire>) -> bool {
        let targets = promotion_targets(state, model);
        if targets.is_empty() {
            return false;
        }
        let key = self.effective(model);
        let Some(first) = targets.clone().find(|&t| !surely_refused(state, self, model, key, t)) else {
            return false;
        };
        let mut plan = Cascade::new(state, self, reason, out);
        (first..targets.end).any(|t| plan.insert(model, key, t))
    }

    /// The model's predicted rate (per second) in the hour holding `at`:
    /// the smaller of its counts in that hour of the day one and two days
    /// before, so only a pattern that held on both days predicts anything
    /// (a model whose popularity moved is not kept on a stale profile).
    /// Whether `model` was first seen at least `min_history_s` before `at`.
    fn has_history(&self, state: &State, model: ModelId, at: f64) -> bool {
        state
            .model(model)
            .and_then(|m| m.usage.first_access)
            .is_some_and(|first| at - first >= self.params.min_history_s)
    }

    /// The rate the hour-of-day profile predicts for absolute hour `hour`:
    /// the smaller of the counts one and two days before, per second.
    fn hourly_rate(&self, ring: &HourRing, hour: u64) -> Option<f64> {
        let a = ring.count(hour.checked_sub(24)?);
        let b = ring.count(hour.checked_sub(48)?);
        Some(a.min(b) as f64 / 3600.0)
    }
}

/// Gaps a model needs before their spread is taken as a sign of bursts.
const BURST_MIN_GAPS: u64 = 3;

/// What the policy keeps of one model across a restart
/// ([`Policy::export`]): its keys (absolute in time, so they hold over the
/// downtime: they decay as they would have), its prediction floor and its
/// accesses per hour of the last three days. `None`: never accessed.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    short: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    short_burst: Option<f64>,
    /// The floor and until when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    floor: Option<(f64, f64)>,
    /// The absolute hour of the latest access, and the hours with accesses
    /// in the ring as `[hour, count]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hours: Option<(u64, Vec<(u64, u16)>)>,
}

/// The policy's [`SavedModel`]s by model name, written straight from its
/// vectors: `{"models": {name: SavedModel, ...}}`.
struct Exported<'a> {
    policy: &'a TierdPolicy,
    state: &'a State,
}

impl serde::Serialize for Exported<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Models<'a>(&'a Exported<'a>);
        impl serde::Serialize for Models<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let Exported { policy, state } = self.0;
                s.collect_map(
                    state
                        .iter_models()
                        .map(|(id, m)| (&*m.name, policy.saved_model(id)))
                        .filter(|(_, s)| s.key.is_some() || s.hours.is_some()),
                )
            }
        }
        let mut st = s.serialize_struct("Saved", 1)?;
        st.serialize_field("models", &Models(self))?;
        st.end()
    }
}

/// A saved key, if it is one (JSON has no infinities: never-accessed keys
/// are left out).
fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|x| x.is_finite())
}

impl TierdPolicy {
    fn saved_model(&self, id: ModelId) -> SavedModel {
        let get = |v: &Vec<f64>| finite(v.get(id).copied());
        SavedModel {
            key: get(&self.key),
            short: get(&self.short),
            short_burst: get(&self.short_burst),
            floor: self.floor.get(id).copied().filter(|(f, until)| f.is_finite() && until.is_finite()),
            hours: self.hours.get(id).filter(|r| r.counts.iter().any(|&c| c > 0)).map(|r| {
                let held = (r.latest.saturating_sub(71)..=r.latest).filter_map(|h| {
                    let c = r.count(h);
                    (c > 0).then_some((h, c as u16))
                });
                (r.latest, held.collect())
            }),
        }
    }

    fn restore_model(&mut self, id: ModelId, m: SavedModel) {
        let set = |v: &mut Vec<f64>, x: Option<f64>| {
            if let Some(x) = finite(x) {
                if v.len() <= id {
                    v.resize(id + 1, f64::NEG_INFINITY);
                }
                v[id] = x;
            }
        };
        set(&mut self.key, m.key);
        set(&mut self.short, m.short);
        set(&mut self.short_burst, m.short_burst);
        if let Some((f, until)) = m.floor.filter(|(f, u)| f.is_finite() && u.is_finite()) {
            if self.floor.len() <= id {
                self.floor.resize(id + 1, (f64::NEG_INFINITY, f64::NEG_INFINITY));
            }
            self.floor[id] = (f, until);
        }
        if let Some((latest, counts)) = m.hours {
            let mut ring = HourRing { latest, counts: [0; 72] };
            for (h, c) in counts {
                // Only hours of the ring's window; each kept once.
                if ring.in_window(h) {
                    ring.counts[(h % 72) as usize] = c;
                }
            }
            if self.hours.len() <= id {
                self.hours.resize(id + 1, HourRing::default());
            }
            self.hours[id] = ring;
        }
    }
}

/// Accesses per absolute hour over the last 72 hours.
#[derive(Debug, Clone)]
struct HourRing {
    /// Absolute hour (since the epoch of the engine clock) of the latest access.
    latest: u64,
    counts: [u16; 72],
}

impl Default for HourRing {
    fn default() -> Self {
        HourRing {
            latest: 0,
            counts: [0; 72],
        }
    }
}

impl HourRing {
    fn record(&mut self, now: f64) {
        let hour = (now.max(0.0) / 3600.0) as u64;
        if hour > self.latest {
            // Clear the hours skipped since the latest access.
            let gap = (hour - self.latest).min(72);
            for h in 0..gap {
                self.counts[((hour - h) % 72) as usize] = 0;
            }
            self.latest = hour;
        }
        if hour + 72 > self.latest {
            let c = &mut self.counts[(hour % 72) as usize];
            *c = c.saturating_add(1);
        }
    }

    /// Whether absolute hour `hour` is in the ring's window (the 72 hours
    /// up to the latest access).
    fn in_window(&self, hour: u64) -> bool {
        hour <= self.latest && hour + 72 > self.latest
    }

    /// Accesses in absolute hour `hour`, if it is still in the ring.
    fn count(&self, hour: u64) -> u32 {
        if self.in_window(hour) {
            u32::from(self.counts[(hour % 72) as usize])
        } else {
            0
        }
    }
}

impl Default for TierdPolicy {
    fn default() -> Self {
        TierdPolicy::new(TierdParams::default())
    }
}

impl Ranking for TierdPolicy {
    fn key(&self, _state: &State, model: ModelId) -> f64 {
        self.effective(model)
    }

    fn admit(&self, incoming: f64, victim: f64) -> bool {
        incoming > victim + self.params.margin_log2
    }
}

impl Policy for TierdPolicy {
    fn name(&self) -> &'static str {
        "tierd"
    }

    /// The plan's score: a model the policy has not seen accessed (a
    /// configured starting count, a restart) ranks below every observed
    /// rate, least used first, so make-room, a lowered limit and memory
    /// pressure demote the least-used first, as documented.
    fn eviction_rank(&self, _now: f64, state: &State, model: ModelId) -> f64 {
        self.score(state, model)
    }

    fn on_access(&mut self, now: f64, state: &State, model: ModelId, out: &mut Vec<Desire>) {
        self.now = now;
        self.record(model, now);
        if self.params.short_half_life_s > 0.0 {
            let (h, weight) = (self.params.short_half_life_s, Self::burst_weight(state, model));
            let short = self.short.get(model).copied().unwrap_or(f64::NEG_INFINITY);
            // Leave out the part of this access that is no evidence of a
            // burst: `short - now / h` is log2 of the count just after it.
            let rest = (short - now / h).exp2() - (1.0 - weight);
            let adjusted = if short > f64::NEG_INFINITY && rest > 0.0 {
                now / h + rest.log2()
            } else {
                f64::NEG_INFINITY
            };
            if self.short_burst.len() <= model {
                self.short_burst.resize(model + 1, f64::NEG_INFINITY);
            }
            self.short_burst[model] = adjusted;
        }
        self.place(state, model, "tierd: rate beats the tier's coldest", out);
    }

    fn tick_interval(&self) -> Option<f64> {
        Some(self.params.tick_s)
    }

    fn on_tick(&mut self, now: f64, state: &State, out: &mut Vec<Desire>) {
        self.now = now;
        if self.floor.len() < state.models.len() {
            self.floor.resize(state.models.len(), (f64::NEG_INFINITY, f64::NEG_INFINITY));
        }
        // Look one tick ahead: the prefetch starts on the last tick before
        // the busy hour, and the floor holds to the end of that hour.
        let at = now + self.params.tick_s;
        let hour_end = ((at / 3600.0).floor() + 1.0) * 3600.0;
        let hour = (at.max(0.0) / 3600.0) as u64;
        if self.predicted.0 != Some(hour) {
            let mut p = std::mem::take(&mut self.predicted.1);
            p.clear();
            p.extend(self.hours.iter().map(|ring| match self.hourly_rate(ring, hour) {
                Some(rate) if rate > 0.0 => self.key_of_rate(rate, now),
                _ => f64::NEG_INFINITY,
            }));
            self.predicted = (Some(hour), p);
        }
        let margin = self.params.prefetch_ratio.log2();
        let mut wanted: Vec<(f64, ModelId)> = Vec::new();
        for (id, m) in state.iter_models() {
            let predicted = self.predicted.1.get(id).copied().unwrap_or(f64::NEG_INFINITY);
            if predicted == f64::NEG_INFINITY || !self.has_history(state, id, at) {
                continue;
            }
            let own = self.own_key(id);
            self.floor[id] = (predicted, hour_end);
            if predicted > own + margin && m.tier > 0 && m.job.is_none() {
                wanted.push((predicted, id));
            }
        }
        wanted.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, id) in wanted.into_iter().take(self.params.prefetch_per_tick) {
            // One batch per tick keeps the cascade's books exact.
            if self.place(state, id, "tierd: busy hour ahead", out) {
                break;
            }
        }
    }

    fn plan(&mut self, now: f64, state: &State, out: &mut Vec<Desire>) {
        self.now = now;
        plan_by_key(state, |id| self.score(state, id), "tierd: ranked by decayed access rate", out);
    }

    fn export(&self, state: &State) -> Option<Box<serde_json::value::RawValue>> {
        serde_json::value::to_raw_value(&Exported { policy: self, state }).ok()
    }

    fn import(&mut self, state: &State, saved: &serde_json::Value) {
        let Some(models) = saved.get("models").and_then(serde_json::Value::as_object) else {
            return;
        };
        for (name, m) in models {
            let (Some(id), Ok(m)) = (state.model_id(name), SavedModel::deserialize(m)) else {
                continue;
            };
            self.restore_model(id, m);
        }
        // Predictions are worked out again from the restored history.
        self.predicted = (None, Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::tiers::{Model, Usage};

    /// One 6 GB model in storage, accessed at `times`; the policy sees each
    /// access as the engine would (usage recorded first).
    fn fed(params: TierdParams, times: &[f64]) -> (TierdPolicy, State) {
        let cfg = Config::minimal_seed();
        let mut state = State::new(&cfg);
        let last = state.last_tier();
        state.models.push(Some(Model {
            name: "m".into(),
            bytes: 6_000_000_000,
            tier: last,
            usage: Usage::default(),
            pinned: false,
            job: None,
            unavailable: None,
            path: None,
            files: None,
            registered_at: 0.0,
        }));
        state.attach(0, last);
        let mut policy = TierdPolicy::new(params);
        let usage_cfg = state.usage_cfg.clone();
        let mut out = Vec::new();
        for (seq, &t) in times.iter().enumerate() {
            state.model_mut(0).expect("model").usage.record(t, seq as u64 + 1, &usage_cfg);
            policy.on_access(t, &state, 0, &mut out);
        }
        (policy, state)
    }

    /// The score after the last access, and the long-term estimate alone.
    fn scores(times: &[f64]) -> (f64, f64) {
        let (p, _) = fed(TierdParams::default(), times);
        let long_only = TierdParams {
            short_half_life_s: 0.0,
            ..TierdParams::default()
        };
        let (q, _) = fed(long_only, times);
        (p.own_key(0), q.own_key(0))
    }

    #[test]
    fn what_the_policy_learnt_comes_back_from_its_export() {
        let day = 86_400.0;
        let times: Vec<f64> = [0.0, 10.0, 20.0, day, day + 10.0, 2.0 * day - 3600.0]
            .iter()
            .map(|t| t + 1_000_000.0 * 3600.0)
            .collect();
        let (p, mut state) = fed(TierdParams::default(), &times);
        state.by_name.insert("m".into(), 0);
        let saved = p.export(&state).expect("the tierd policy keeps what it learnt");
        // Through JSON text, as the state file holds it.
        let back: serde_json::Value = serde_json::from_str(saved.get()).expect("parse");
        let mut q = TierdPolicy::default();
        q.import(&state, &back);
        assert_eq!(q.key, p.key);
        assert_eq!(q.short, p.short);
        assert_eq!(q.short_burst, p.short_burst);
        assert_eq!(q.hours[0].latest, p.hours[0].latest);
        assert_eq!(q.hours[0].counts, p.hours[0].counts);
        // The same prediction for the busy hour two days on.
        let hour = (times[0] / 3600.0) as u64 + 48;
        // The smaller of the 3 accesses two days before and the 2 one day before.
        assert_eq!(q.hourly_rate(&q.hours[0], hour), Some(2.0 / 3600.0));
        assert_eq!(q.hourly_rate(&q.hours[0], hour), p.hourly_rate(&p.hours[0], hour));
        q.now = p.now;
        assert_eq!(q.own_key(0), p.own_key(0));
        // A never-accessed model exports nothing; bad records are skipped,
        // the good ones kept.
        let empty = TierdPolicy::default().export(&state).expect("export");
        assert_eq!(empty.get(), r#"{"models":{}}"#);
        let mut r = TierdPolicy::default();
        r.import(&state, &serde_json::json!({"models": {"gone": {"key": 1.0}, "m": {"key": "x"}}}));
        r.import(&state, &serde_json::json!("garbage"));
        r.import(
            &state,
            &serde_json::json!({"models": {"m": {"hours": [5, [[4, 2], [5, 1], [900, 7]]]}}}),
        );
        assert!(r.key.is_empty(), "{:?}", r.key);
        assert_eq!((r.hours[0].count(4), r.hours[0].count(5), r.hours[0].count(900)), (2, 1, 0));
    }

    #[test]
    fn a_lone_access_is_a_burst_only_for_a_model_whose_arrivals_cluster() {
        // Gaps of CV 0: the access at 6000 s says nothing about the next minute.
        let even = [0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0];
        let (score, long) = scores(&even);
        assert_eq!(score, long);
        // Accesses in clusters (gaps CV 1.85): a lone access lifts the score
        // halfway (in log2) to the short estimate, log2(ln 2 / 30 s) = -5.4.
        let clustered = [0.0, 0.1, 0.2, 0.3, 3000.0, 3000.1, 3000.2, 3000.3, 6000.0];
        let (score, long) = scores(&clustered);
        let short = (std::f64::consts::LN_2 / 30.0).log2();
        assert!((score - (long + 0.5 * (short - long))).abs() < 1e-9, "{score} {long} {short}");
        // Within a burst the earlier accesses count in full whatever the gaps.
        let (score, long) = scores(&[0.0, 1000.0, 2000.0, 2000.5]);
        assert!(score > long + 1.0, "{score} {long}");
    }
}
