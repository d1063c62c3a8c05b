//! The tier engine: a synchronous state machine over tiers, models, limits
//! and move jobs, with injected time, drivers and policy. One concern per
//! module:
//!
//! - [`engine`]: the [`Engine`] itself, its construction, and the snapshot
//!   the server saves (with the rule that a source copy is released only
//!   once the placement that no longer needs it is durable);
//! - [`room`]: admission and capacity (the rules of the engine's books);
//! - [`submit`]: a move becoming a job (`make_room` included), models
//!   entering and leaving the catalog;
//! - [`scheduler`]: `tick`, the drivers' events, starting jobs, retries and
//!   the end of a job;
//! - [`placement`]: accesses, the policy's decisions, `auto_optimize`, and
//!   the eviction order of make-room, lowered limits and memory pressure;
//! - [`limits`]: the run-time limits and `update_limits`;
//! - [`rates`]: the measured throughput of real moves, per pair of driver
//!   kinds, behind their `estimated_time`;
//! - [`views`]: the typed answers (tiers, models, jobs, metrics);
//! - [`engines`]: engine tiers' news (loads and unloads the engine did on
//!   its own, its activity, load times);
//! - [`faults`]: what the engine makes of faults noticed while running
//!   (copies and origins changed or gone, corrupt copies);
//! - [`invariants`]: the books checked against a recount;
//! - [`state`] (tiers and models, what policies read), [`job`] (move jobs),
//!   [`policy`] (the `Policy` trait policies implement), and `table` (the
//!   job containers of the hot path).
//!
//! Every public method that changes the engine leaves time alone: the
//! caller advances it with one [`Engine::tick`] per request, first.

pub mod engine;
pub mod engines;
pub mod events;
pub mod faults;
pub mod histogram;
pub mod invariants;
pub mod job;
pub mod limits;
pub mod opens;
pub mod placement;
pub mod policy;
pub mod ram_held;
pub mod rates;
pub mod room;
pub mod scheduler;
pub mod state;
pub mod submit;
mod table;
pub mod views;

pub use engine::{Engine, ModelSnapshot, Restored, RestoredModel, Snapshot};
pub use events::{Category, Event, EventKind};
pub use histogram::Histogram;
pub use job::{CancelCause, Job, JobKey, JobStatus, Operation, Origin, Priority};
pub use limits::{LimitChange, Limits, LimitsUpdated, TierLimits};
pub use placement::{Accessed, Optimized};
pub use policy::{Desire, Policy, SavedPolicy};
pub use rates::{MoveRate, MoveRates};
pub use scheduler::{SchedEvent, SchedEventKind};
pub use state::{Model, ModelId, State, Tier, Usage};
pub use submit::{MoveOptions, Registered, Registration};
pub use views::{
    AttemptView, FaultView, HistoryFilter, JobView, Metrics, MetricsView, ModelInfoView, ModelView, MoveStarted, PlanStep, QueueCounts,
    TierStatusView, TierView,
};
