//! Placement policies: what should live where, decided from usage.
//!
//! A [`Policy`] (the engine's seam, defined in `tiers::policy`) reads the
//! engine's `State` and answers with [`Desire`]s (move this model to that
//! tier, for this reason); the engine validates and schedules them as jobs.
//! The same policy objects drive the server's `auto_optimize` and on-access
//! decisions and the simulation harness.

mod belady;
mod gdsf;
mod lfu;
mod lru;
pub mod place;
mod tierd;
mod usage;

pub use belady::BeladyPolicy;
pub use gdsf::GdsfPolicy;
pub use lfu::LfuPolicy;
pub use lru::LruPolicy;
pub use tierd::{TierdParams, TierdPolicy};
pub use usage::UsagePolicy;

use crate::config::Config;

pub use crate::tiers::{Desire, Policy};

/// Names accepted by [`policy_by_name`] (the server's choices).
pub const POLICY_NAMES: &[&str] = &["tierd", "lru", "lfu", "gdsf", "usage"];

/// Policies the simulator compares: the server's plus `belady`, which needs
/// the future and is built from the trace by [`BeladyPolicy::from_sequence`].
pub const SIM_POLICY_NAMES: &[&str] = &["lru", "lfu", "gdsf", "belady", "tierd"];

/// The default policy of the server and the simulator.
pub use crate::config::DEFAULT_POLICY;

/// Builds the policy called `name`.
pub fn policy_by_name(name: &str, cfg: &Config) -> Option<Box<dyn Policy>> {
    match name {
        "tierd" => Some(Box::new(TierdPolicy::new(TierdParams::for_config(cfg)))),
        "lru" => Some(Box::new(LruPolicy::for_config(cfg))),
        "lfu" => Some(Box::new(LfuPolicy)),
        "gdsf" => Some(Box::new(GdsfPolicy::default())),
        "usage" => Some(Box::new(UsagePolicy)),
        _ => None,
    }
}
