//! `cancel_job`: `"job_id"`. A queued job ends at once; a running one is
//! rolled back by its driver (the simulated one at once). Answers the job
//! as it stands ([`Engine::cancel_job`]).

use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, JobView};

use super::wire::name_arg;
use super::{Command, Outcome};

/// `{"cancel_job": "<job id>"}`.
///
/// Its object form (`{"job_id": ...}`) is also the MCP tool's input,
/// whose JSON Schema is derived from this struct.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CancelJob {
    /// The id of the queued or running job to cancel.
    #[schemars(length(min = 1))]
    pub job_id: String,
}

/// The answer: the job's view.
pub type CancelJobResponse = JobView;

impl Command for CancelJob {
    const KEY: &'static str = "cancel_job";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "job_id", body).map(|job_id| CancelJob { job_id })
    }

    fn body(&self) -> Value {
        Value::String(self.job_id.clone())
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&engine.cancel_job(now, &self.job_id)?)
    }
}
