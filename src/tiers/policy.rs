//! The seam between the engine and its placement policies: a [`Policy`]
//! reads the engine's [`State`] and answers with [`Desire`]s (move this
//! model to that tier, for this reason), which the engine validates and
//! schedules as jobs. The policies themselves live in `optimizer`, which
//! depends on this module and on [`State`], never the other way round.
//!
//! A policy writes its desires into a vector the engine lends it (and
//! reuses from one decision to the next: a decision is made on every
//! access in the simulator's hot loop).

use std::borrow::Cow;

use super::state::{ModelId, State};

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
    /// rank leave first (ties: least recently used, then lowest id). The
    /// engine uses it for `make_room`, lowered limits and memory pressure.
    fn eviction_rank(&self, now: f64, state: &State, model: ModelId) -> f64;

    /// Decision after an access to `model` (already counted in its usage),
    /// appended to `out`.
    fn on_access(&mut self, _now: f64, _state: &State, _model: ModelId, _out: &mut Vec<Desire>) {}

    /// Periodic decision (the server's background loop, the simulator's
    /// tick), appended to `out`.
    fn on_tick(&mut self, _now: f64, _state: &State, _out: &mut Vec<Desire>) {}

    /// How often the driver should call [`Policy::on_tick`], in seconds of
    /// engine time; `None` when the policy has nothing to do on a tick.
    fn tick_interval(&self) -> Option<f64> {
        None
    }

    /// Whether the policy's on-access batches are placements to reach as a
    /// whole: each move may count on the room any other move of the batch
    /// frees, in whatever order they run. The engine applies a batch so
    /// where every move of it completes the moment it starts (and the end
    /// state fits every tier); elsewhere one move after the other, each
    /// counting only on the moves before it.
    fn exchanges(&self) -> bool {
        false
    }

    /// A whole placement plan, for `auto_optimize`, appended to `out`:
    /// demotions before the promotions that need their room.
    fn plan(&mut self, now: f64, state: &State, out: &mut Vec<Desire>);

    /// What the policy learnt of the models in `state` (keyed by model
    /// name, never by id), for the state file to keep across restarts, as
    /// JSON text (made under the engine's lock at every save: no value
    /// tree); `None` (the default) when it keeps nothing beyond the
    /// models' usage.
    fn export(&self, _state: &State) -> Option<Box<serde_json::value::RawValue>> {
        None
    }

    /// Takes back what [`Policy::export`] gave in an earlier run, once the
    /// models are restored into `state`. What does not parse, or names a
    /// model no longer registered, is left out; the rest is kept.
    fn import(&mut self, _state: &State, _saved: &serde_json::Value) {}
}

/// A policy's [`Policy::export`] as the state file keeps it: taken back
/// only by a policy of the same name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedPolicy {
    pub name: String,
    pub data: Box<serde_json::value::RawValue>,
}

impl PartialEq for SavedPolicy {
    fn eq(&self, other: &SavedPolicy) -> bool {
        self.name == other.name && self.data.get() == other.data.get()
    }
}
