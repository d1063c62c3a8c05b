//! `health`: whether the server answers, and what it serves: the backend
//! (`sim` or `real`), the policy, the version, the model count, the tiers,
//! the requests it knows, the configuration file and the engine's clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::drivers::opens::OpenWatchStatus;
use crate::error::EngineError;
use crate::tiers::Engine;

use super::wire::flag;
use super::{Command, Outcome, REQUEST_KEYS};

/// `{"health": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health;

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub healthy: bool,
    pub backend: String,
    pub policy: String,
    pub version: String,
    pub models: usize,
    pub tiers: Vec<String>,
    pub requests: Vec<String>,
    /// The configuration file serving, absolute; `null` for the built-in
    /// default.
    #[serde(default)]
    pub config: Option<String>,
    /// The engine's clock (unix seconds, scaled by `--time-scale`): what
    /// `last_access` and other times in answers are measured on, so a
    /// client can say them relative to now.
    #[serde(default)]
    pub now: f64,
    /// The open watcher: which mechanism counts other processes' opens of
    /// model files as accesses, and why (`off` with the reason otherwise).
    #[serde(default)]
    pub open_watch: OpenWatchStatus,
}

impl Command for Health {
    const KEY: &'static str = "health";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| Health)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&HealthResponse {
            status: "success".into(),
            healthy: true,
            backend: engine.machine_kind().as_str().into(),
            policy: engine.policy_name().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            models: engine.state().by_name.len(),
            tiers: engine.state().tier_names(),
            requests: REQUEST_KEYS.iter().map(|k| k.to_string()).collect(),
            config: engine.config().source.as_ref().map(|p| p.display().to_string()),
            now,
            open_watch: engine.open_watch_status(),
        })
    }
}
