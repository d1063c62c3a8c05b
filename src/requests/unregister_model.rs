//! `unregister_model`: `"model_name"`. Forgets an idle model
//! ([`Engine::unregister`]): the copies tierd made of it are removed, never
//! its origin. A model with a pending move is refused (`CONFLICT`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::Engine;

use super::wire::name_arg;
use super::{Command, Outcome};

/// `{"unregister_model": "<model>"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnregisterModel {
    pub model_name: String,
}

/// The answer: the tier the model was in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnregisterModelResponse {
    pub status: String,
    pub model_name: String,
    pub tier: String,
}

impl Command for UnregisterModel {
    const KEY: &'static str = "unregister_model";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "model_name", body).map(|model_name| UnregisterModel { model_name })
    }

    fn body(&self) -> Value {
        Value::String(self.model_name.clone())
    }

    fn apply(self, engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        let tier = engine.unregister(&self.model_name)?;
        Outcome::reply(&UnregisterModelResponse {
            status: "success".into(),
            model_name: self.model_name,
            tier,
        })
    }
}
