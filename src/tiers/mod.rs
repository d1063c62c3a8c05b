//! The tier engine: tiers, models, limits and move jobs.
//!
//! - [`state`]: tiers with their byte books, models with their usage;
//! - [`job`]: move jobs and their wire view;
//! - [`engine`]: the synchronous state machine every driver runs;
//! - [`backend`]: the interface to the hardware that carries moves out;
//! - [`status`]: `tier_status` as a typed view that serializes without a
//!   `Value` tree (the server's hot path).

pub mod backend;
pub mod engine;
pub mod job;
pub mod state;
pub mod status;
mod table;

pub use backend::{Backend, Capacity, JobKey, MoveEvent, MoveOrder};
pub use engine::{Engine, Metrics, MoveOptions, MoveStarted, PlanStep, SchedEvent, SchedEventKind};
pub use job::{Job, JobStatus, Operation, Origin, Priority};
pub use state::{Model, ModelId, State, Tier, Usage};
pub use status::{TierStatusView, TierView};
