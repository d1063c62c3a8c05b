//! `move_tier`: moves a model to another tier, as a job.
//!
//! Fields: `model_name`, `target_tier`; optional `make_room`, `wait`,
//! `priority` (`critical`, `high`, `normal`, `low`), `depends_on` (job ids
//! that must succeed first, at most 1,024), `max_retries` (0 to 100),
//! `bandwidth_mb_s` (a rate cap, 0.1 to 1,000,000 MB/s). A number out of
//! its range is refused with the range in the message, never clamped.
//!
//! What it does is [`Engine::move_model`]: the checks in order (model
//! exists, tier exists, the tier takes moves, dependencies known, not
//! already there, not already moving, size allowed, room under the limit,
//! room in the hardware), then the job is queued and started when it may.
//! With `make_room`, when the target lacks room, its least valuable
//! movable models (the policy's eviction order; never pinned or moving
//! ones) are first demoted, each to the first slower tier with room, as
//! jobs the move depends on; if no such set makes room, nothing moves and
//! the room error is the answer. With `wait`, the answer is the job's
//! status once it has ended.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, MoveOptions, MoveStarted, Operation, Origin, Priority};

use super::wire::{MAX_DEPENDENCIES, de_bandwidth, de_retries, fields};
use super::{Command, Outcome};

/// `move_tier`'s fields (also the MCP tool's input: its JSON Schema is
/// derived from here, so the schema and the parser cannot disagree on names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveTier {
    /// The registered model to move.
    pub model_name: String,
    /// The tier to move it to (a name `tier_status` lists, e.g. `ram`).
    pub target_tier: String,
    /// Demote the least valuable models of the target first if it lacks room.
    #[schemars(description = "If the target tier lacks room, first demote its least used, unpinned models.")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub make_room: bool,
    /// Answer only when the job has ended.
    #[schemars(description = "Answer only when the move has ended, with its outcome (default: answer the job id at once).")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub wait: bool,
    /// Queue priority: `critical`, `high`, `normal` (the default) or `low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["critical", "high", "normal", "low", null]))]
    pub priority: Option<String>,
    /// Job ids that must succeed before this move starts (at most 1,024).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub depends_on: Vec<String>,
    /// Retries after a failed run: 0 to [`super::wire::MAX_RETRIES`].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_retries")]
    #[schemars(range(max = 100), description = "Retries after a failed run: 0 to 100 (default: the config's).")]
    pub max_retries: Option<u32>,
    /// Rate cap for this move, MB/s (the simulation honours it too):
    /// [`super::wire::MIN_BANDWIDTH_MB_S`] to [`super::wire::MAX_BANDWIDTH_MB_S`].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_bandwidth")]
    #[schemars(
        range(min = 0.1, max = 1_000_000.0),
        description = "Rate cap for this move in MB/s, 0.1 to 1,000,000 (default: none)."
    )]
    pub bandwidth_mb_s: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl MoveTier {
    /// A plain move of `model` to `tier`.
    pub fn new(model: &str, tier: &str) -> MoveTier {
        MoveTier {
            model_name: model.to_string(),
            target_tier: tier.to_string(),
            make_room: false,
            wait: false,
            priority: None,
            depends_on: Vec::new(),
            max_retries: None,
            bandwidth_mb_s: None,
        }
    }
}

/// The answer to an accepted move (without `wait`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveTierResponse {
    pub status: String,
    pub job_id: String,
    pub model_name: String,
    pub operation: Operation,
    pub source_tier: String,
    pub target_tier: String,
    /// The demotions started to make room, by job id.
    pub make_room: Vec<String>,
}

impl From<MoveStarted> for MoveTierResponse {
    fn from(s: MoveStarted) -> Self {
        MoveTierResponse {
            status: "tier_move_started".into(),
            job_id: s.job_id,
            model_name: s.model_name,
            operation: s.operation,
            source_tier: s.source_tier,
            target_tier: s.target_tier,
            make_room: s.make_room_jobs,
        }
    }
}

impl Command for MoveTier {
    const KEY: &'static str = "move_tier";

    fn parse(body: Value) -> Result<Self, EngineError> {
        let m: MoveTier = fields(Self::KEY, body)?;
        if let Some(p) = &m.priority
            && Priority::parse(p).is_none()
        {
            return Err(EngineError::bad_request(format!(
                "move_tier: unknown priority {p:?}; one of: {}",
                Priority::NAMES.join(", ")
            )));
        }
        if m.depends_on.len() > MAX_DEPENDENCIES {
            return Err(EngineError::bad_request(format!(
                "move_tier: depends_on names {} jobs, at most {MAX_DEPENDENCIES} are allowed",
                m.depends_on.len()
            )));
        }
        Ok(m)
    }

    fn body(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        let opts = MoveOptions {
            priority: self.priority.as_deref().and_then(Priority::parse).unwrap_or(Priority::Normal),
            depends_on: self.depends_on,
            make_room: self.make_room,
            max_retries: self.max_retries,
            bandwidth_mb_s: self.bandwidth_mb_s,
            origin: Origin::User,
            reason: None,
        };
        let started = engine.move_model(now, &self.model_name, &self.target_tier, &opts)?;
        if self.wait {
            return Ok(Outcome::WaitForJob(started.job_id));
        }
        Outcome::reply(&MoveTierResponse::from(started))
    }
}
