//! `queue_status`: the move queue: counts (pending, running, completed,
//! failed), the slots (`max_concurrent_tasks`), the engine's time, and the
//! jobs as `list_jobs` lists them (queued ones with their position and
//! estimated start).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, JobView, QueueCounts};

use super::wire::flag;
use super::{Command, Outcome};

/// `{"queue_status": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStatus;

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatusResponse {
    pub status: String,
    pub task_queue: QueueCounts,
    pub max_concurrent_tasks: usize,
    /// The engine's time, for `estimated_start`.
    pub now: f64,
    pub jobs: Vec<JobView>,
}

impl Command for QueueStatus {
    const KEY: &'static str = "queue_status";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| QueueStatus)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&QueueStatusResponse {
            status: "success".into(),
            task_queue: engine.queue_counts(),
            max_concurrent_tasks: engine.max_concurrent(),
            now,
            jobs: engine.jobs(now),
        })
    }
}
