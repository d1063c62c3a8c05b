//! `queue_history`: `true` or `{"limit"?, "status"?, "since"?}`: jobs
//! newest first (this run's, then earlier runs' from the state file), at
//! most `limit` (default 100, at most 100,000), of one status, created at or after `since`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, HistoryFilter, JobStatus, JobView};

use super::wire::{de_history_limit, fields};
use super::{Command, Outcome};

/// The statuses a history can be filtered by.
const STATUSES: [JobStatus; 6] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Cancelling,
    JobStatus::Success,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// `queue_history`'s filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueueHistory {
    /// 0 to [`super::wire::MAX_HISTORY_LIMIT`] (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_history_limit")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueHistoryResponse {
    pub status: String,
    pub history: Vec<JobView>,
}

impl Command for QueueHistory {
    const KEY: &'static str = "queue_history";

    fn parse(body: Value) -> Result<Self, EngineError> {
        match body {
            Value::Bool(true) => Ok(QueueHistory::default()),
            body => fields(Self::KEY, body),
        }
    }

    fn body(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        let status = match &self.status {
            None => None,
            Some(s) => Some(STATUSES.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
                EngineError::bad_request(format!(
                    "queue_history: unknown status {s:?}; one of: queued, running, cancelling, success, failed, cancelled"
                ))
            })?),
        };
        let filter = HistoryFilter {
            limit: self.limit.unwrap_or(100),
            status,
            since: self.since,
        };
        Outcome::reply(&QueueHistoryResponse {
            status: "success".into(),
            history: engine.history(now, &filter),
        })
    }
}
