//! Move jobs: what a move is, where it stands, and how it is seen on the wire.

use serde_json::{Value, json};
use smallvec::SmallVec;

use crate::config::bytes_to_gb;

pub use super::backend::JobKey;
use super::state::{ModelId, round6};

/// Direction of a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// To a faster tier.
    Promote,
    /// To a slower tier.
    Demote,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Promote => "promote",
            Operation::Demote => "demote",
        }
    }
}

/// Seed 001's priority levels; lower value runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Critical = 0,
    High = 1,
    Normal = 2,
    Low = 3,
}

impl Priority {
    pub const NAMES: [&'static str; 4] = ["critical", "high", "normal", "low"];

    pub fn as_str(self) -> &'static str {
        Priority::NAMES[self as usize]
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "critical" => Some(Priority::Critical),
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Success,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// Who asked for a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `move_tier` request.
    User,
    /// Demotions that make room for another move.
    MakeRoom,
    /// Demotions after a lowered limit.
    Rebalance,
    /// An `auto_optimize` plan.
    Optimize,
    /// A policy's on-access or periodic decision.
    Policy,
    /// Memory-pressure cleanup.
    Pressure,
    /// Placement of a newly registered model.
    Register,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::User => "user",
            Origin::MakeRoom => "make_room",
            Origin::Rebalance => "rebalance",
            Origin::Optimize => "auto_optimize",
            Origin::Policy => "policy",
            Origin::Pressure => "pressure",
            Origin::Register => "register",
        }
    }
}

/// One run of a job.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub outcome: Option<std::borrow::Cow<'static, str>>,
}

/// A move of one model from one tier to another.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: JobKey,
    /// The wire id: `tier_<operation>_<model>_<unix seconds>[_<n>]`.
    pub id: String,
    pub model: ModelId,
    pub model_name: std::sync::Arc<str>,
    pub bytes: u64,
    pub from: usize,
    pub to: usize,
    pub operation: Operation,
    pub priority: Priority,
    pub origin: Origin,
    pub depends_on: SmallVec<[JobKey; 2]>,
    /// Room this job counted on from moves (among `depends_on`) leaving its
    /// target: (job, bytes, models).
    pub claimed_releases: SmallVec<[(JobKey, u64, usize); 2]>,
    /// Room this job frees in its source tier that no other job has counted
    /// on yet: bytes and models (a freed byte is counted once).
    pub unclaimed_bytes: u64,
    pub unclaimed_models: usize,
    pub max_retries: u32,
    /// Runs so far (1 while the first run is going).
    pub attempt: u32,
    pub status: JobStatus,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// Not started again before this time (retry backoff).
    pub not_before: f64,
    /// Progress at the last look (kept when the job ends).
    pub progress: f64,
    pub estimated_s: f64,
    pub error: Option<(String, String)>,
    pub attempts: SmallVec<[Attempt; 1]>,
    pub cancel_requested: bool,
    pub bandwidth_mb_s: Option<f64>,
    /// Why the job was created (policy reasons, make_room target).
    pub reason: Option<String>,
    /// Dependencies not yet succeeded, while queued: a queued job with a
    /// non-zero count waits for them (the engine's books, not wire data).
    pub unmet_deps: usize,
    /// Jobs that depend on this one and are told when it ends.
    pub dependents: SmallVec<[JobKey; 2]>,
}

impl Job {
    /// The wire view. `progress` is the live progress for a running job;
    /// `position`/`estimated_start` describe a queued job's place in line.
    pub fn to_json(&self, tier_names: &[String], now: f64, progress: f64, dep_ids: &[String], queue_pos: Option<(usize, f64)>) -> Value {
        let elapsed = match (self.started_at, self.ended_at) {
            (Some(s), Some(e)) => e - s,
            (Some(s), None) => now - s,
            _ => 0.0,
        };
        let attempts: Vec<Value> = self
            .attempts
            .iter()
            .map(|a| json!({"attempt": a.attempt, "started_at": a.started_at, "ended_at": a.ended_at, "outcome": a.outcome}))
            .collect();
        let mut v = json!({
            "job_id": self.id,
            "model_name": &*self.model_name,
            "operation": self.operation.as_str(),
            "source_tier": tier_names.get(self.from),
            "target_tier": tier_names.get(self.to),
            "progress": round6(progress),
            "status": self.status.as_str(),
            "elapsed_time": round6(elapsed.max(0.0)),
            "estimated_time": round6(self.estimated_s),
            "error": self.error.as_ref().map(|(_, m)| m.clone()),
            "error_code": self.error.as_ref().map(|(c, _)| c.clone()),
            "size_gb": bytes_to_gb(self.bytes),
            "priority": self.priority.as_str(),
            "origin": self.origin.as_str(),
            "attempt": self.attempt,
            "max_retries": self.max_retries,
            "depends_on": dep_ids,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "attempts": attempts,
            "reason": self.reason,
        });
        if let (Some((pos, start)), Value::Object(m)) = (queue_pos, &mut v) {
            m.insert("position".into(), json!(pos));
            m.insert("estimated_start".into(), json!(round6(start)));
        }
        v
    }
}
