//! `list_models`: `{}` or `{"tier": "..."}`; the models (of one tier),
//! sorted by name, each with its tier, status, usage and measured
//! residency where the tier's driver measures it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::EngineError;
use crate::tiers::{Engine, ModelView};

use super::wire::{kind, only_fields};
use super::{Command, Outcome};

/// `{"list_models": {"tier": ...}}`.
/// Its object form is also the MCP tool's input (schema derived here).
#[derive(Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ListModels {
    /// Only the models in this tier (default: all models).
    #[schemars(default)]
    pub tier: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListModelsResponse {
    pub status: String,
    pub models: Vec<ModelView>,
}

impl Command for ListModels {
    const KEY: &'static str = "list_models";

    fn parse(body: Value) -> Result<Self, EngineError> {
        match body {
            Value::Bool(true) | Value::Null => Ok(ListModels::default()),
            body @ Value::Object(_) => match only_fields(Self::KEY, body, &["tier"])?.remove("tier") {
                None | Some(Value::Null) => Ok(ListModels::default()),
                Some(Value::String(t)) => Ok(ListModels { tier: Some(t) }),
                Some(other) => Err(EngineError::bad_request(format!(
                    "list_models: tier must be a string, got {}",
                    kind(&other)
                ))),
            },
            other => Err(EngineError::bad_request(format!(
                "list_models takes {{}} or {{\"tier\": ...}}, got {}",
                kind(&other)
            ))),
        }
    }

    fn body(&self) -> Value {
        match &self.tier {
            Some(t) => json!({ "tier": t }),
            None => json!({}),
        }
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&ListModelsResponse {
            status: "success".into(),
            models: engine.models(now, self.tier.as_deref())?,
        })
    }
}
