//! `list_jobs`: every job the engine still holds: running, then queued in
//! start order, then ended, newest first.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, JobView};

use super::wire::flag;
use super::{Command, Outcome};

/// `{"list_jobs": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListJobs;

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListJobsResponse {
    pub status: String,
    pub jobs: Vec<JobView>,
}

impl Command for ListJobs {
    const KEY: &'static str = "list_jobs";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| ListJobs)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&ListJobsResponse {
            status: "success".into(),
            jobs: engine.jobs(now),
        })
    }
}
