//! `tier_job_status`: one job as it stands (`"job_id"` or
//! `{"job_id": ...}`): seed 001's fields plus `error_code`, `size_gb`,
//! `priority`, `origin`, `attempt`, `attempts`, `depends_on`, timestamps,
//! and a queued job's `position` and `estimated_start`. Jobs of earlier
//! runs are answered from the saved history.

use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, JobView};

use super::wire::name_arg;
use super::{Command, Outcome};

/// `{"tier_job_status": "<job id>"}`.
///
/// Its object form (`{"job_id": ...}`) is also the MCP tool's input,
/// whose JSON Schema is derived from this struct.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TierJobStatus {
    /// The job's id, as `move_tier` answered it (e.g. `tier_promote_gpt-j-6b_1`).
    #[schemars(length(min = 1))]
    pub job_id: String,
}

/// The answer: the job's view.
pub type TierJobStatusResponse = JobView;

impl Command for TierJobStatus {
    const KEY: &'static str = "tier_job_status";

    fn parse(body: Value) -> Result<Self, EngineError> {
        name_arg(Self::KEY, "job_id", body).map(|job_id| TierJobStatus { job_id })
    }

    fn body(&self) -> Value {
        Value::String(self.job_id.clone())
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&engine.job(now, &self.job_id)?)
    }
}
