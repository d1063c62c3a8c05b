//! Simulated hardware and, later, workload replay.
//!
//! [`SimBackend`] is the default backend of `tierd serve`: deterministic,
//! seeded, with the configured capacities and move speeds and optional fault
//! injection.

mod hardware;

pub use hardware::SimBackend;
