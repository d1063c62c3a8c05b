//! Placement policies: what should live where, decided from usage.
//!
//! A [`Policy`] reads the engine's [`State`] and answers with [`Desire`]s
//! (move this model to that tier, for this reason); the engine validates and
//! schedules them as jobs. The same policy objects drive the server's
//! `auto_optimize` and on-access decisions and the simulation harness.

mod usage;

pub use usage::UsagePolicy;

use crate::config::Config;
use crate::tiers::{ModelId, State};

/// A move a policy asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Desire {
    pub model: ModelId,
    pub target: usize,
    /// Why, in words (shown in plans).
    pub reason: String,
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

    /// A whole placement plan, for `auto_optimize`: demotions before the
    /// promotions that need their room.
    fn plan(&mut self, now: f64, state: &State) -> Vec<Desire>;
}

/// Names accepted by [`policy_by_name`].
pub const POLICY_NAMES: &[&str] = &["usage"];

/// Builds the policy called `name`.
pub fn policy_by_name(name: &str, _cfg: &Config) -> Option<Box<dyn Policy>> {
    match name {
        "usage" => Some(Box::new(UsagePolicy)),
        _ => None,
    }
}
