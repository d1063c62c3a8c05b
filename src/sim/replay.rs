//! Trace replay: the server's engine and policy code, driven in virtual time.
//!
//! Every model starts in the last tier. Before each access the engine is
//! advanced through every move completion and policy tick due by then, in
//! time order (so queued moves start the moment a slot frees); then the
//! access is made with `Engine::access_load` (after the one tick every request
//! gets), which charges `size x` the access
//! cost of the tier holding the model at that moment (a model being moved is
//! still in its source tier) and lets the policy react. After the last access
//! the moves in flight are run to completion, so bytes moved count every move.

use serde::Serialize;

use super::workload::{Catalog, SimError, Trace};
use crate::config::{Config, ModelConfig};
use crate::drivers::sim::simulated_machine;
use crate::optimizer::{BeladyPolicy, Policy, TierdParams, TierdPolicy, policy_by_name};
use crate::tiers::Engine;

/// How moves take time in a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveMode {
    /// A move takes `size x` promote/demote s/GB; at most `max_concurrent` run at once.
    Timed,
    /// Moves complete the moment they start.
    Instant,
}

impl MoveMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveMode::Timed => "timed",
            MoveMode::Instant => "instant",
        }
    }
}

/// What one policy cost on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub policy: String,
    pub moves: MoveMode,
    pub total_load_s: f64,
    /// (tier name, accesses served from it), fastest first.
    pub hits_by_tier: Vec<(String, u64)>,
    pub bytes_moved_gb: f64,
    pub move_count: u64,
    /// Moves that failed or were cancelled (none unless faults are configured).
    pub moves_failed: u64,
    /// Accesses that found their model's own promotion queued or running,
    /// and what they paid beyond the promotion's target tier (the part of
    /// `total_load_s` that move time cost; 0 with instant moves).
    pub accesses_during_promotion: u64,
    pub promotion_wait_s: f64,
    /// (time, cumulative load seconds) samples for the plot.
    pub curve: Vec<(f64, f64)>,
}

/// Samples kept per curve.
const CURVE_POINTS: usize = 500;

/// The engine configuration of a replay: the given tiers and moves, the
/// catalog as its models, all in the last tier.
pub fn replay_config(cfg: &Config, catalog: &Catalog) -> Config {
    let mut cfg = cfg.clone();
    cfg.models = catalog
        .names
        .iter()
        .zip(&catalog.sizes_gb)
        .map(|(n, &s)| ModelConfig {
            name: n.clone(),
            size_gb: s,
            tier: None,
            usage: 0,
            path: None,
        })
        .collect();
    // Only a few ended jobs need to be kept: nobody asks for their status.
    cfg.job_history = 16;
    cfg
}

/// The configuration as a replay in `moves` mode sees it: with instant
/// moves the move speeds are 0 s/GB, so the jobs' estimates and the
/// policies' view of what a move costs match what the backend does.
pub fn mode_config(cfg: &Config, moves: MoveMode) -> Config {
    let mut cfg = cfg.clone();
    if moves == MoveMode::Instant {
        cfg.moves.promote_s_per_gb = 0.0;
        cfg.moves.demote_s_per_gb = 0.0;
    }
    cfg
}

/// Builds the named policy; `belady` is built from the trace.
pub fn build_policy(name: &str, cfg: &Config, catalog: &Catalog, trace: &Trace) -> Result<Box<dyn Policy>, SimError> {
    build_policy_with(name, cfg, catalog, trace, None)
}

/// [`build_policy`], with overrides of the `tierd` policy's tunables
/// (`key=value,...`, see [`TierdParams::with_overrides`]) when given.
pub fn build_policy_with(
    name: &str,
    cfg: &Config,
    catalog: &Catalog,
    trace: &Trace,
    tierd: Option<&str>,
) -> Result<Box<dyn Policy>, SimError> {
    match (name, tierd) {
        ("belady", _) => Ok(Box::new(BeladyPolicy::from_sequence(
            catalog.names.len(),
            trace.models.iter().map(|&m| m as usize),
        ))),
        ("tierd", Some(spec)) => {
            let params = TierdParams::for_config(cfg)
                .with_overrides(spec)
                .map_err(|e| SimError::Invalid(format!("tierd parameters: {e}")))?;
            Ok(Box::new(TierdPolicy::new(params)))
        }
        _ => policy_by_name(name, cfg).ok_or_else(|| {
            SimError::Invalid(format!(
                "unknown policy {name:?}; known: {}",
                crate::optimizer::SIM_POLICY_NAMES.join(", ")
            ))
        }),
    }
}

/// Replays `trace` with `policy` and returns its costs.
pub fn replay(cfg: &Config, catalog: &Catalog, trace: &Trace, policy: Box<dyn Policy>, moves: MoveMode) -> Result<RunResult, SimError> {
    let cfg = replay_config(&mode_config(cfg, moves), catalog);
    cfg.validate().map_err(|e| SimError::Invalid(e.to_string()))?;
    let tier_names: Vec<String> = cfg.tiers.iter().map(|t| t.name.clone()).collect();
    let (machine, _) = simulated_machine(&cfg, moves == MoveMode::Instant);
    let name = policy.name().to_string();
    let interval = policy.tick_interval().filter(|i| i.is_finite() && *i > 0.0);
    let t0 = trace.times.first().copied().unwrap_or(0.0);
    let mut engine = Engine::new(cfg, machine, policy, t0).map_err(|e| SimError::Invalid(e.to_string()))?;
    let mut next_tick = interval.map(|i| t0 + i);
    let n = trace.len();
    let every = n.div_ceil(CURVE_POINTS).max(1);
    let mut curve = Vec::with_capacity(CURVE_POINTS + 2);
    curve.push((t0, 0.0));
    let mut total = 0.0;
    for i in 0..n {
        let t = trace.times[i];
        advance(&mut engine, t, &mut next_tick, interval);
        engine.tick(t);
        let load = engine
            .access_load(t, trace.models[i] as usize)
            .map_err(|e| SimError::Invalid(format!("access {} at {t}: {e}", i + 1)))?;
        total += load;
        if (i + 1) % every == 0 || i + 1 == n {
            curve.push((t, total));
        }
    }
    // Let the moves in flight finish.
    let mut guard = 0usize;
    while let Some(w) = engine.next_wakeup() {
        engine.tick(w);
        guard += 1;
        if guard > 1_000_000 {
            break;
        }
    }
    if cfg!(debug_assertions)
        && let Err(e) = engine.check_invariants()
    {
        return Err(SimError::Invalid(format!("engine books broken after the replay: {e}")));
    }
    let m = engine.metrics();
    Ok(RunResult {
        policy: name,
        moves,
        total_load_s: total,
        hits_by_tier: tier_names.into_iter().zip(m.hits_by_tier.iter().copied()).collect(),
        bytes_moved_gb: m.bytes_moved as f64 / crate::config::BYTES_PER_GB,
        move_count: m.moves_succeeded,
        moves_failed: m.moves_failed + m.moves_cancelled,
        accesses_during_promotion: m.accesses_during_promotion,
        promotion_wait_s: m.promotion_wait_s,
        curve,
    })
}

/// Runs the engine through every move event and policy tick due by `t`,
/// in time order.
fn advance(engine: &mut Engine, t: f64, next_tick: &mut Option<f64>, interval: Option<f64>) {
    let mut last_wake = f64::NEG_INFINITY;
    let mut same = 0u32;
    loop {
        let wake = engine.next_wakeup().filter(|w| *w <= t);
        let tick = next_tick.filter(|x| *x <= t);
        let take_wake = match (wake, tick) {
            (None, None) => return,
            (Some(w), Some(k)) => w <= k,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if let (true, Some(w)) = (take_wake, wake) {
            // A wakeup that does not move on (nothing could start) must
            // not spin: fall through to the access time.
            if w == last_wake {
                same += 1;
                if same > 2 {
                    engine.tick(t);
                    if next_tick.is_none_or(|k| k > t) {
                        return;
                    }
                    continue;
                }
            } else {
                same = 0;
            }
            last_wake = w;
            engine.tick(w);
        } else if let Some(k) = tick {
            engine.tick(k);
            engine.policy_tick(k);
            *next_tick = interval.map(|i| k + i);
        }
    }
}
