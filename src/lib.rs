//! tierd: decides, and carries out, where ML model weights live across a
//! machine's memory and storage tiers.
//!
//! Layout (data flows one way, top to bottom):
//! - [`server`]: transports (stdio, Unix socket), line framing, the request
//!   enum and its dispatch, and the CLI client;
//! - [`tiers`]: the engine, a synchronous state machine over tiers, models,
//!   limits and move jobs, with injected time and hardware;
//! - [`optimizer`]: placement policies behind one trait;
//! - [`sim`]: the deterministic simulated hardware;
//! - [`real`]: the real hardware backend (page cache, directories, NVML)
//!   and its state file;
//! - [`config`]: the one configuration structure; [`error`]: the error codes.

pub mod config;
pub mod error;
pub mod optimizer;
pub mod real;
pub mod server;
pub mod sim;
pub mod tiers;
