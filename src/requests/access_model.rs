//! `access_model`: `"model_name"`. Records one use of a model
//! ([`Engine::access`]): `load_time_s` is its size times the access cost of
//! the tier holding it now, and the policy may react by starting moves
//! (their ids are `jobs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::Engine;

use super::wire::name_arg;
use super::{Command, Outcome};

/// `{"access_model": "<model>"}`.
///
/// Its object form (`{"model_name": ...}`) is also the MCP tool's input,
/// whose JSON Schema is derived from this struct.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AccessModel {
    /// A registered model's name.
    #[schemars(length(min = 1))]
    pub model_name: String,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessModelResponse {
    pub status: String,
    pub model_name: String,
    /// The tier the access was served from.
    pub tier: String,
    pub load_time_s: f64,
    /// The model's accesses so far.
    pub usage: u64,
    /// Moves the policy started.
    pub jobs: Vec<String>,
}

impl Command for AccessModel {
    const KEY: &'static str = "access_model";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "model_name", body).map(|model_name| AccessModel { model_name })
    }

    fn body(&self) -> Value {
        Value::String(self.model_name.clone())
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        let a = engine.access(now, &self.model_name)?;
        Outcome::reply(&AccessModelResponse {
            status: "success".into(),
            model_name: self.model_name,
            tier: a.tier,
            load_time_s: a.load_time_s,
            usage: a.usage,
            jobs: a.jobs,
        })
    }
}
