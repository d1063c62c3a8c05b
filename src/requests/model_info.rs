//! `model_info`: `"model_name"`. One model: what `list_models` shows, plus
//! its hour-of-day and day-of-week access profiles and when it was
//! registered, and the components its model source lists (`components`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, ModelInfoView};

use super::wire::name_arg;
use super::{Command, Outcome};

/// `{"model_info": "<model>"}`.
///
/// Its object form (`{"model_name": ...}`) is also the MCP tool's input,
/// whose JSON Schema is derived from this struct.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ModelInfo {
    /// A registered model's name.
    #[schemars(length(min = 1))]
    pub model_name: String,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfoResponse {
    pub status: String,
    pub model: ModelInfoView,
    /// Files the model comes with besides its weights, as its model source
    /// found them (an Ollama projector or adapter layer, a GGUF
    /// repository's `mmproj` file); absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<crate::sources::Component>,
}

impl Command for ModelInfo {
    const KEY: &'static str = "model_info";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "model_name", body).map(|model_name| ModelInfo { model_name })
    }

    fn body(&self) -> Value {
        Value::String(self.model_name.clone())
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&ModelInfoResponse {
            status: "success".into(),
            model: engine.model(now, &self.model_name)?,
            components: engine
                .discovery()
                .and_then(|d| d.find(&self.model_name).map(|(_, m)| m.components.clone()))
                .unwrap_or_default(),
        })
    }
}
