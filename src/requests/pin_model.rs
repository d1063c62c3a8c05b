//! `pin_model`: `"model_name"`. A pinned model is never moved by the
//! policy, by make-room, by a lowered limit or by memory pressure; a
//! `move_tier` can still move it ([`Engine::set_pinned`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::Engine;

use super::wire::name_arg;
use super::{Command, Outcome};

/// `{"pin_model": "<model>"}`.
///
/// Its object form (`{"model_name": ...}`) is also the MCP tool's input,
/// whose JSON Schema is derived from this struct.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PinModel {
    /// A registered model's name.
    #[schemars(length(min = 1))]
    pub model_name: String,
}

/// The answer of `pin_model` and `unpin_model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinResponse {
    pub status: String,
    pub model_name: String,
    pub pinned: bool,
    pub tier: String,
}

/// Pins or unpins `name`.
pub(super) fn set_pinned(engine: &mut Engine, name: String, pinned: bool) -> Result<Outcome, EngineError> {
    let tier = engine.set_pinned(&name, pinned)?;
    Outcome::reply(&PinResponse {
        status: "success".into(),
        model_name: name,
        pinned,
        tier,
    })
}

impl Command for PinModel {
    const KEY: &'static str = "pin_model";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "model_name", body).map(|model_name| PinModel { model_name })
    }

    fn body(&self) -> Value {
        Value::String(self.model_name.clone())
    }

    fn apply(self, engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        set_pinned(engine, self.model_name, true)
    }
}
