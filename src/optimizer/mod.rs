//! Placement policies: what should live where, decided from usage.
//!
//! A [`Policy`] reads the engine's [`State`] and answers with [`Desire`]s
//! (move this model to that tier, for this reason); the engine validates and
//! schedules them as jobs. The same policy objects drive the server's
//! `auto_optimize` and on-access decisions and the simulation harness.

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

use std::borrow::Cow;

use crate::config::Config;
use crate::tiers::{ModelId, State};

/// A move a policy asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Desire {
    pub model: ModelId,
    pub target: usize,
    /// Why, in words (shown in plans); static for the hot path.
    pub reason: Cow<'static, str>,
    /// Demote others from the target tier if it lacks room.
    pub make_room: bool,
}

/// A placement policy.
pub trait Policy: Send {
    /// The name used in configuration and reports.
    fn name(&self) -> &'static str;

    /// Eviction order: among the models of a tier, those with the lowest
    /// rank leave first (ties: least recently used, then lowest id).
    fn eviction_rank(&self, now: f64, state: &State, model: ModelId) -> f64;

    /// Decision after an access to `model` (already counted in its usage).
    fn on_access(&mut self, _now: f64, _state: &State, _model: ModelId) -> Vec<Desire> {
        Vec::new()
    }

    /// Periodic decision (the server's background loop, the simulator's tick).
    fn on_tick(&mut self, _now: f64, _state: &State) -> Vec<Desire> {
        Vec::new()
    }

    /// How often the driver should call [`Policy::on_tick`], in seconds of
    /// engine time; `None` when the policy has nothing to do on a tick.
    fn tick_interval(&self) -> Option<f64> {
        None
    }

    /// A whole placement plan, for `auto_optimize`: demotions before the
    /// promotions that need their room.
    fn plan(&mut self, now: f64, state: &State) -> Vec<Desire>;
}

/// Names accepted by [`policy_by_name`] (the server's choices).
pub const POLICY_NAMES: &[&str] = &["tierd", "lru", "lfu", "gdsf", "usage"];

/// Policies the simulator compares: the server's plus `belady`, which needs
/// the future and is built from the trace by [`BeladyPolicy::from_sequence`].
pub const SIM_POLICY_NAMES: &[&str] = &["lru", "lfu", "gdsf", "belady", "tierd"];

/// The default policy of the server and the simulator.
pub const DEFAULT_POLICY: &str = "tierd";

/// Builds the policy called `name`.
pub fn policy_by_name(name: &str, cfg: &Config) -> Option<Box<dyn Policy>> {
    match name {
        "tierd" => Some(Box::new(TierdPolicy::new(TierdParams::for_config(cfg)))),
        "lru" => Some(Box::new(LruPolicy)),
        "lfu" => Some(Box::new(LfuPolicy)),
        "gdsf" => Some(Box::new(GdsfPolicy::default())),
        "usage" => Some(Box::new(UsagePolicy)),
        _ => None,
    }
}
