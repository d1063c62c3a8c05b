//! `auto_optimize`: `true`, or `{"dry_run": true}` to see the plan without
//! starting it. The policy's whole placement plan ([`Engine::optimize`]):
//! the seed's `optimizations` sentences, the started `jobs`, and the
//! `plan`, each step with its reason and, when it could not start, why.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, PlanStep};

use super::wire::{kind, only_fields};
use super::{Command, Outcome};

/// `{"auto_optimize": {"dry_run": ...}}`.
/// Its object form is also the MCP tool's input (schema derived here).
#[derive(Debug, Clone, Default, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AutoOptimize {
    /// Only show the plan; start no moves.
    #[schemars(default)]
    pub dry_run: bool,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoOptimizeResponse {
    pub status: String,
    pub policy: String,
    pub dry_run: bool,
    /// The seed's sentences, one per step that started (or would).
    pub optimizations: Vec<String>,
    pub jobs: Vec<String>,
    pub plan: Vec<PlanStep>,
}

impl Command for AutoOptimize {
    const KEY: &'static str = "auto_optimize";

    fn parse(body: Value) -> Result<Self, EngineError> {
        match body {
            Value::Bool(true) => Ok(AutoOptimize { dry_run: false }),
            body @ Value::Object(_) => match only_fields(Self::KEY, body, &["dry_run"])?.remove("dry_run") {
                None => Ok(AutoOptimize { dry_run: false }),
                Some(Value::Bool(dry_run)) => Ok(AutoOptimize { dry_run }),
                Some(other) => Err(EngineError::bad_request(format!(
                    "auto_optimize: dry_run must be a boolean, got {}",
                    kind(&other)
                ))),
            },
            other => Err(EngineError::bad_request(format!(
                "auto_optimize takes true or {{\"dry_run\": bool}}, got {}",
                kind(&other)
            ))),
        }
    }

    fn body(&self) -> Value {
        serde_json::json!({ "dry_run": self.dry_run })
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&AutoOptimizeResponse::from(engine.optimize(now, self.dry_run)))
    }
}

impl From<crate::tiers::Optimized> for AutoOptimizeResponse {
    fn from(o: crate::tiers::Optimized) -> Self {
        AutoOptimizeResponse {
            status: "success".into(),
            policy: o.policy.to_string(),
            dry_run: o.dry_run,
            optimizations: o.steps.iter().filter(|s| s.skipped.is_none()).map(PlanStep::sentence).collect(),
            jobs: o.steps.iter().filter_map(|s| s.job_id.clone()).collect(),
            plan: o.steps,
        }
    }
}
