//! `unpin_model`: `"model_name"`. Lets the policy and the engine move the
//! model again (see `pin_model`).

use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::Engine;

use super::pin_model::set_pinned;
use super::wire::name_arg;
use super::{Command, Outcome};

pub use super::pin_model::PinResponse as UnpinResponse;

/// `{"unpin_model": "<model>"}`.
///
/// Its object form (`{"model_name": ...}`) is also the MCP tool's input,
/// whose JSON Schema is derived from this struct.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UnpinModel {
    /// A registered model's name.
    #[schemars(length(min = 1))]
    pub model_name: String,
}

impl Command for UnpinModel {
    const KEY: &'static str = "unpin_model";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "model_name", body).map(|model_name| UnpinModel { model_name })
    }

    fn body(&self) -> Value {
        Value::String(self.model_name.clone())
    }

    fn apply(self, engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        set_pinned(engine, self.model_name, false)
    }
}
