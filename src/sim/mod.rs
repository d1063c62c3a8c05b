//! Simulated hardware and workload replay.
//!
//! - The simulated machine itself (every tier a `drivers::sim::SimTier`,
//!   deterministic and seeded) is the default of `tierd serve`.
//! - The harness (`tierd sim`) replays a trace through the same engine and
//!   policies in virtual time and compares them with an offline lower bound:
//!   [`workload`] (catalog and trace CSVs), [`replay`], [`bound`], [`report`],
//!   [`synth`] (synthetic families), [`servegen`] and [`azure`] (real-trace
//!   converters) and [`cli`].

pub mod azure;
pub mod bound;
pub mod cli;
pub mod replay;
pub mod report;
pub mod servegen;
pub mod synth;
pub mod workload;

pub use replay::{MoveMode, RunResult, replay};
pub use report::Report;
pub use workload::{Catalog, SimError, Trace};

use crate::config::Config;

/// The simulation configuration (48 GB RAM, 160 GB swap, storage).
pub const DEFAULT_SIM_CONFIG: &str = include_str!("../../fixtures/sim/config.toml");

/// Replays `trace` with each named policy and computes the lower bound.
pub fn compare(cfg: &Config, catalog: &Catalog, trace: &Trace, policies: &[String], moves: MoveMode) -> Result<Report, SimError> {
    compare_with(cfg, catalog, trace, policies, moves, None)
}

/// [`compare`], with overrides of the `tierd` policy's tunables when given.
pub fn compare_with(
    cfg: &Config,
    catalog: &Catalog,
    trace: &Trace,
    policies: &[String],
    moves: MoveMode,
    tierd: Option<&str>,
) -> Result<Report, SimError> {
    let mut runs = Vec::with_capacity(policies.len());
    for name in policies {
        let policy = replay::build_policy_with(name, &replay::mode_config(cfg, moves), catalog, trace, tierd)?;
        runs.push(replay(cfg, catalog, trace, policy, moves)?);
    }
    Ok(Report {
        accesses: trace.len(),
        lower_bound_s: bound::lower_bound_s(cfg, catalog, trace),
        runs,
    })
}
