//! Move jobs: what a move is and where it stands. Their wire view is
//! [`JobView`](super::views::JobView).

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

pub use crate::drivers::JobKey;

use super::state::ModelId;

/// Direction of a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    /// A running job asked to roll back, until its driver confirms (then it
    /// is `cancelled`, or `failed` if the run failed first). Only views
    /// show it: the engine's own record stays `Running` meanwhile.
    Cancelling,
    Success,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// Who cancelled a job: the answer's `error` says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// A `cancel_job` request.
    Request,
    /// The server shutting down (queued moves, and running ones past the
    /// drain deadline).
    Shutdown,
}

impl CancelCause {
    /// The error of a job it ended before it started.
    pub fn queued_message(self) -> &'static str {
        match self {
            CancelCause::Request => "cancelled by request",
            CancelCause::Shutdown => "cancelled at shutdown (never started)",
        }
    }

    /// The error of a running job it rolled back.
    pub fn rolled_back_message(self) -> &'static str {
        match self {
            CancelCause::Request => "cancelled by request; rolled back",
            CancelCause::Shutdown => "rolled back at shutdown",
        }
    }
}

/// Who asked for a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A `move_tier` request.
    User,
    /// Demotions that make room for another move.
    MakeRoom,
    /// Demotions after a lowered limit.
    Rebalance,
    /// An `auto_optimize` plan.
    #[serde(rename = "auto_optimize")]
    Optimize,
    /// A policy's on-access or periodic decision.
    Policy,
    /// Memory-pressure cleanup.
    Pressure,
    /// Placement of a newly registered model.
    Register,
    /// A load or unload an inference engine did on its own (another
    /// client, its LRU, its expiry), followed in tierd's books.
    Engine,
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
            Origin::Engine => "engine",
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

impl Job {
    /// The status the wire shows: `cancelling` for a running job asked to
    /// roll back, else the job's own.
    pub fn wire_status(&self) -> JobStatus {
        if self.status == JobStatus::Running && self.cancel_requested {
            JobStatus::Cancelling
        } else {
            self.status
        }
    }

    /// Who cancelled it, if anyone did.
    pub fn cancel_cause(&self) -> Option<CancelCause> {
        self.cancel_requested.then_some(if self.cancel_at_shutdown {
            CancelCause::Shutdown
        } else {
            CancelCause::Request
        })
    }
}

/// What a move's target reported when it finished: the checksums it
/// verified and the modification times of its copy (see
/// [`crate::drivers::MoveEvent::Finished`]).
pub type TargetDone = (Option<Vec<String>>, Option<Vec<i64>>);

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
    /// Why the job did not succeed: (code, message).
    pub error: Option<(String, String)>,
    pub attempts: SmallVec<[Attempt; 1]>,
    pub cancel_requested: bool,
    /// The target finished and the source is letting go (an engine tier
    /// unloading, [`crate::drivers::TierDriver::start_move_out`]): what the
    /// target reported (checksums, mtimes), kept for the commit that waits
    /// for the source's [`crate::drivers::MoveEvent::MovedOut`].
    pub moving_out: Option<TargetDone>,
    /// The cancel came from the server shutting down, not from a request.
    pub cancel_at_shutdown: bool,
    pub bandwidth_mb_s: Option<f64>,
    /// Why the job was created (policy reasons, make_room target).
    pub reason: Option<String>,
    /// Dependencies not yet succeeded, while queued: a queued job with a
    /// non-zero count waits for them (the engine's books, not wire data).
    pub unmet_deps: usize,
    /// Jobs that depend on this one and are told when it ends.
    pub dependents: SmallVec<[JobKey; 2]>,
    /// Part of an exchange batch: admitted on the batch's end state, and
    /// started without waiting for room (its move completes at once).
    pub exchange: bool,
}
