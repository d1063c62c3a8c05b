//! tierd: decides, and carries out, where ML model weights live across a
//! machine's memory and storage tiers.
//!
//! Layout (data flows one way: bytes → line → typed request → engine
//! decision → driver action → typed response → bytes; each module uses only
//! those listed after it):
//! - [`mcp`]: `tierd mcp`, the MCP server (tools over an embedded engine
//!   or a running server);
//! - [`server`]: transports (stdio, Unix socket), line framing, the shared
//!   engine and its clock, the server's lifecycle, the CLI client;
//! - [`bench`]: `tierd bench` (socket round trips) and `tierd bench-real`;
//! - [`sim`]: the simulation harness (workloads, replay, the lower bound);
//! - [`store`]: the state file the server saves the engine's snapshot in;
//! - [`requests`]: the request list, one module per request (fields,
//!   validation, apply, response);
//! - [`optimizer`]: the placement policies;
//! - [`tiers`]: the engine, a synchronous state machine over tiers, models,
//!   limits and move jobs, with injected time, drivers and policy;
//! - [`sources`]: where models are discovered (Ollama, Hugging Face, a
//!   directory);
//! - [`drivers`]: one driver per kind of tier (simulated, page cache,
//!   directory, GPU, storage) and the machine they make up;
//! - [`config`]: the one configuration structure; [`error`]: the error codes;
//!   [`human`]: how sizes, times and tables read in human output (a leaf any
//!   module may use).

pub mod bench;
pub mod config;
pub mod drivers;
pub mod error;
pub mod human;
pub mod mcp;
pub mod optimizer;
pub mod requests;
pub mod server;
pub mod sim;
pub mod sources;
pub mod store;
pub mod tiers;
