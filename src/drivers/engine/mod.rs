//! Engine tiers (placeholder until the engine-tier core is merged): the wire
//! types of the engines' APIs.

pub mod client;
pub mod ollama;
pub mod ollama_wire;
pub mod tier;
pub mod vllm;
pub mod vllm_wire;
