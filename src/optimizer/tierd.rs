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
//!   This mixes recency and frequency (LRFU-like).
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
use super::{Desire, Policy};
use crate::tiers::{ModelId, State};

/// Tunables of the `tierd` policy.
#[derive(Debug, Clone)]
pub struct TierdParams {
    /// Half-life of the policy's long-term decayed access count, seconds.
    pub half_life_s: f64,
    /// Half-life of the short-term count that catches bursts, seconds (0: off).
    pub short_half_life_s: f64,
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
            short_half_life_s: 120.0,
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
    /// Predicted-rate floor of the key, by model id, and until when it holds.
    floor: Vec<(f64, f64)>,
    /// Accesses per hour over the last three days, by model id.
    hours: Vec<HourRing>,
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
            floor: Vec::new(),
            hours: Vec::new(),
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
    /// decision, the larger of the long-term and the short-term estimate.
    fn own_key(&self, model: ModelId) -> f64 {
        let long = self.key.get(model).copied().unwrap_or(f64::NEG_INFINITY);
        let mut r = Self::log_rate(long, self.params.half_life_s, self.log_scale.0, self.now);
        if self.params.short_half_life_s > 0.0 {
            let short = self.short.get(model).copied().unwrap_or(f64::NEG_INFINITY);
            r = r.max(Self::log_rate(short, self.params.short_half_life_s, self.log_scale.1, self.now));
        }
        r
    }

    /// The score with its prediction floor, as of the latest decision.
    fn effective(&self, model: ModelId) -> f64 {
        let k = self.own_key(model);
        match self.floor.get(model) {
            Some(&(f, until)) if until > self.now => k.max(f),
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
    /// passes admission.
    fn place(&self, state: &State, model: ModelId, reason: &'static str) -> Vec<Desire> {
        let targets = promotion_targets(state, model);
        if targets.is_empty() {
            return Vec::new();
        }
        let key = self.effective(model);
        let Some(first) = targets.clone().find(|&t| !surely_refused(state, self, model, key, t)) else {
            return Vec::new();
        };
        let mut plan = Cascade::new(state, self, reason);
        for t in first..targets.end {
            if plan.insert(model, key, t) {
                return plan.desires;
            }
        }
        Vec::new()
    }

    /// The model's predicted rate (per second) in the hour holding `at`:
    /// the smaller of its counts in that hour of the day one and two days
    /// before, so only a pattern that held on both days predicts anything
    /// (a model whose popularity moved is not kept on a stale profile).
    fn predicted_rate(&self, state: &State, model: ModelId, at: f64) -> Option<f64> {
        let first = state.model(model)?.usage.first_access?;
        if at - first < self.params.min_history_s {
            return None;
        }
        let ring = self.hours.get(model)?;
        let hour = (at.max(0.0) / 3600.0) as u64;
        let a = ring.count(hour.checked_sub(24)?);
        let b = ring.count(hour.checked_sub(48)?);
        Some(a.min(b) as f64 / 3600.0)
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

    /// Accesses in absolute hour `hour`, if it is still in the ring.
    fn count(&self, hour: u64) -> u32 {
        if hour <= self.latest && hour + 72 > self.latest {
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

    fn eviction_rank(&self, _now: f64, _state: &State, model: ModelId) -> f64 {
        self.effective(model)
    }

    fn on_access(&mut self, now: f64, state: &State, model: ModelId) -> Vec<Desire> {
        self.now = now;
        self.record(model, now);
        self.place(state, model, "tierd: rate beats the tier's coldest")
    }

    fn tick_interval(&self) -> Option<f64> {
        Some(self.params.tick_s)
    }

    fn on_tick(&mut self, now: f64, state: &State) -> Vec<Desire> {
        self.now = now;
        if self.floor.len() < state.models.len() {
            self.floor.resize(state.models.len(), (f64::NEG_INFINITY, f64::NEG_INFINITY));
        }
        // Look one tick ahead: the prefetch starts on the last tick before
        // the busy hour, and the floor holds to the end of that hour.
        let at = now + self.params.tick_s;
        let hour_end = ((at / 3600.0).floor() + 1.0) * 3600.0;
        let mut wanted: Vec<(f64, ModelId)> = Vec::new();
        for (id, m) in state.iter_models() {
            let Some(rate) = self.predicted_rate(state, id, at) else { continue };
            if rate <= 0.0 {
                continue;
            }
            let predicted = self.key_of_rate(rate, now);
            let own = self.own_key(id);
            self.floor[id] = (predicted, hour_end);
            if predicted > own + self.params.prefetch_ratio.log2() && m.tier > 0 && m.job.is_none() {
                wanted.push((predicted, id));
            }
        }
        wanted.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out = Vec::new();
        for (_, id) in wanted.into_iter().take(self.params.prefetch_per_tick) {
            let d = self.place(state, id, "tierd: busy hour ahead");
            if !d.is_empty() {
                out.extend(d);
                // One batch per tick keeps the cascade's books exact.
                break;
            }
        }
        out
    }

    fn plan(&mut self, now: f64, state: &State) -> Vec<Desire> {
        self.now = now;
        // Models the policy has not seen accessed (a configured starting
        // count, a restart) rank below every observed rate, by count.
        let score = |id: ModelId| {
            let k = self.effective(id);
            match state.model(id).map(|m| m.usage.count) {
                Some(c) if k == f64::NEG_INFINITY && c > 0 => -1e6 + (c as f64).log2(),
                _ => k,
            }
        };
        plan_by_key(state, score, "tierd: ranked by decayed access rate")
    }
}
