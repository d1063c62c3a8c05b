//! HTTP fakes of the inference engines tierd drives, for the tests: no
//! Ollama or vLLM binary can be installed on CI, so these stand in for them,
//! written from the engines' API documentation and built from tierd's own
//! wire types (`tierd::drivers::engine::{ollama_wire, vllm_wire}`), so that
//! a field renamed on one side breaks the build.
//!
//! - [`http`]: a small HTTP/1.1 server on 127.0.0.1 (std threads, keep-alive
//!   connections), which can go down (its port refuses connections and the
//!   answers in flight are never sent) and come back on the same port, and a
//!   tiny client for tests that play a native client of the engine.
//! - [`ollama`]: `POST /api/generate` (loads, unloads, `keep_alive`
//!   semantics, `done_reason: "unload"`), `GET /api/ps`, `GET /api/tags`.
//! - [`vllm`]: sleep mode (`/sleep?level=`, `/wake_up?tags=`,
//!   `/collective_rpc`, `/is_sleeping`), the level-2 wake sequence enforced.
//!
//! Each fake has controls for the tests: what another client or the engine
//! itself does (loads, unloads, evictions, expiry), slow loads, faults
//! (garbage, HTTP errors, hung answers) on the next requests to a path, and
//! the log of the requests it received.
#![allow(dead_code)]

pub mod http;
pub mod ollama;
pub mod vllm;

/// Wall-clock Unix seconds (the fakes keep real time: tierd's driver reads
/// `expires_at` against its own clock).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
