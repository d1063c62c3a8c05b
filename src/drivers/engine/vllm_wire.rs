//! vLLM's sleep-mode HTTP API, as its documentation and its API server spell
//! it: <https://docs.vllm.ai/en/latest/features/sleep_mode/> and the dev
//! routes of `vllm/entrypoints/openai/api_server.py` (`/sleep`, `/wake_up`,
//! `/is_sleeping`, `/collective_rpc`), which exist only when the server runs
//! with `VLLM_SERVER_DEV_MODE=1` and `--enable-sleep-mode`. Field names are
//! vLLM's own; the driver ([`super::vllm`]) and the test suite's fake vLLM
//! are built from these same types.
//!
//! What tierd relies on:
//! - `POST /sleep?level=1` offloads the weights to the vLLM process's CPU
//!   memory and drops the KV cache; `level=2` drops both (the weights must
//!   be read again from storage). The level is read from the QUERY STRING
//!   (`raw_request.query_params.get("level", "1")`); a JSON body is ignored,
//!   so `{"level": 2}` in a body sleeps at level 1. The answer is an empty
//!   200.
//! - `POST /wake_up` wakes everything; `POST /wake_up?tags=weights` only
//!   re-allocates the weights, `?tags=kv_cache` only the KV cache. After a
//!   level-2 sleep the weights' memory comes back uninitialised, so the wake
//!   is: `wake_up?tags=weights`, `POST /collective_rpc {"method":
//!   "reload_weights"}`, then `wake_up?tags=kv_cache`.
//! - `GET /is_sleeping` answers `{"is_sleeping": bool}` (not the level).
//! - `POST /collective_rpc` answers `{"results": [...]}` (one entry per
//!   worker), or an empty 200 when the method returned nothing; a body
//!   without `method` answers 400 `{"detail": "Missing 'method' in request
//!   body"}`.
//! - `GET /v1/models` (OpenAI's list) names the model the instance serves.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The two sleep levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SleepLevel {
    /// Weights kept in the vLLM process's CPU memory, KV cache dropped.
    One = 1,
    /// Weights and KV cache dropped.
    Two = 2,
}

impl SleepLevel {
    /// `POST` path that puts the instance to sleep at this level.
    pub fn path(self) -> &'static str {
        match self {
            SleepLevel::One => "/sleep?level=1",
            SleepLevel::Two => "/sleep?level=2",
        }
    }
}

/// `POST` path that wakes everything.
pub const WAKE_UP: &str = "/wake_up";
/// `POST` path that re-allocates the weights only.
pub const WAKE_UP_WEIGHTS: &str = "/wake_up?tags=weights";
/// `POST` path that re-allocates the KV cache only.
pub const WAKE_UP_KV_CACHE: &str = "/wake_up?tags=kv_cache";
/// `GET` path of the sleeping state.
pub const IS_SLEEPING: &str = "/is_sleeping";
/// `POST` path of a method call on every worker.
pub const COLLECTIVE_RPC: &str = "/collective_rpc";
/// The worker method that reads the weights from storage again.
pub const RELOAD_WEIGHTS: &str = "reload_weights";
/// `GET` path of the served models.
pub const MODELS: &str = "/v1/models";

/// `GET /is_sleeping`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IsSleepingResponse {
    pub is_sleeping: bool,
}

/// `POST /collective_rpc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CollectiveRpcRequest {
    pub method: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// The answer of `POST /collective_rpc` when the method returned something.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CollectiveRpcResponse {
    pub results: Vec<Value>,
}

/// A FastAPI `HTTPException` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DetailResponse {
    pub detail: Value,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelsResponse {
    #[serde(default)]
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_is_in_the_query_string() {
        assert_eq!(SleepLevel::One.path(), "/sleep?level=1");
        assert_eq!(SleepLevel::Two.path(), "/sleep?level=2");
        let s: IsSleepingResponse = serde_json::from_str(r#"{"is_sleeping": true}"#).unwrap();
        assert!(s.is_sleeping);
        let rpc = serde_json::to_value(CollectiveRpcRequest {
            method: RELOAD_WEIGHTS.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(rpc, serde_json::json!({"method": "reload_weights"}));
    }
}
