//! `metrics`: the engine's counters since it started: accesses and their
//! load seconds (and the part that moves' time cost, `promotion_wait_s`),
//! hits per tier, moves started, succeeded, failed and cancelled, retries,
//! bytes moved, utilization per tier, queue depth, models and uptime.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, MetricsView};

use super::wire::flag;
use super::{Command, Outcome};

/// `{"metrics": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics;

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResponse {
    pub status: String,
    pub metrics: MetricsView,
}

impl Command for Metrics {
    const KEY: &'static str = "metrics";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| Metrics)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&MetricsResponse {
            status: "success".into(),
            metrics: engine.metrics_view(now),
        })
    }
}
