//! A fake vLLM instance in sleep mode, from
//! <https://docs.vllm.ai/en/latest/features/sleep_mode/> and the dev routes
//! of vLLM's API server, built from `tierd::drivers::engine::vllm_wire`.
//!
//! Behaviours kept from the real server:
//! - `POST /sleep` reads `level` from the query string only (default 1; a
//!   JSON body is ignored; a level that is not an integer is a 500).
//!   Level 1 moves the weights to CPU memory, level 2 (or any other
//!   integer, as vLLM treats them) discards them. Sleeping while asleep
//!   and waking while awake do nothing (vLLM logs a warning).
//! - `POST /wake_up` with `tags` (repeatable: `weights`, `kv_cache`) wakes
//!   those, no tags wakes all; `is_sleeping` stays true until every tag is
//!   awake.
//! - After level 2 the weights come back uninitialised: `POST
//!   /collective_rpc {"method": "reload_weights"}` must run after
//!   `wake_up?tags=weights` and before the KV cache wakes. The fake
//!   enforces it: waking the KV cache (or everything) on unloaded weights,
//!   or reloading weights that are not allocated, answers 500 "Internal
//!   Server Error" (the real server would serve garbage or fail in the
//!   worker; either way the instance is unusable).
//! - `GET /is_sleeping` -> `{"is_sleeping": bool}`; `GET /v1/models`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tierd::drivers::engine::vllm_wire::{
    CollectiveRpcRequest, CollectiveRpcResponse, IsSleepingResponse, ModelCard, ModelsResponse, RELOAD_WEIGHTS,
};

use super::http::{Fault, Handler, HttpServer, Request, Response, ServerState};

/// Where the instance's weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// On the GPU, valid.
    Gpu,
    /// Backed up in the process's CPU memory (level 1).
    Cpu,
    /// Discarded (level 2).
    Discarded,
    /// GPU memory allocated after a level-2 sleep, not yet reloaded.
    Uninitialised,
}

#[derive(Debug)]
pub struct VllmState {
    pub model: String,
    pub weights: Weights,
    /// Tags still asleep (`weights`, `kv_cache`).
    pub sleeping_tags: BTreeSet<String>,
    /// The level of the last sleep that took effect.
    pub last_level: Option<u32>,
    /// How long each operation takes.
    pub sleep_s: f64,
    pub wake_s: f64,
    pub reload_s: f64,
    /// Number of reload_weights that completed.
    pub reloads: usize,
}

impl VllmState {
    pub fn is_sleeping(&self) -> bool {
        !self.sleeping_tags.is_empty()
    }
}

struct VllmHandler {
    state: Arc<Mutex<VllmState>>,
}

fn internal_error() -> Response {
    Response::text(500, "Internal Server Error")
}

impl VllmHandler {
    fn sleep(&self, req: &Request, server: &ServerState) -> Response {
        let level = match req.query_get("level").unwrap_or("1").parse::<i64>() {
            Ok(l) => l,
            Err(_) => return internal_error(),
        };
        let wait = {
            let st = self.state.lock().unwrap();
            if st.is_sleeping() {
                return Response::empty(); // "Executor is already sleeping."
            }
            st.sleep_s
        };
        if !server.sleep(Duration::from_secs_f64(wait)) {
            return internal_error();
        }
        let mut st = self.state.lock().unwrap();
        st.weights = if level == 1 { Weights::Cpu } else { Weights::Discarded };
        st.sleeping_tags = ["weights".to_string(), "kv_cache".to_string()].into();
        st.last_level = Some(if level == 1 { 1 } else { 2 });
        Response::empty()
    }

    fn wake_up(&self, req: &Request, server: &ServerState) -> Response {
        let tags: Vec<String> = req.query_all("tags").into_iter().map(str::to_string).collect();
        let wake: BTreeSet<String> = if tags.is_empty() {
            ["weights".to_string(), "kv_cache".to_string()].into()
        } else {
            tags.into_iter().collect()
        };
        let wait = {
            let st = self.state.lock().unwrap();
            if !st.is_sleeping() {
                return Response::empty(); // "Executor is not sleeping."
            }
            // The KV cache may only come back on valid weights.
            let weights_after = if wake.contains("weights") && st.sleeping_tags.contains("weights") {
                match st.weights {
                    Weights::Cpu => Weights::Gpu,
                    Weights::Discarded => Weights::Uninitialised,
                    w => w,
                }
            } else {
                st.weights
            };
            if wake.contains("kv_cache") && st.sleeping_tags.contains("kv_cache") && weights_after != Weights::Gpu {
                return internal_error();
            }
            if wake.contains("weights") && st.weights == Weights::Cpu {
                st.wake_s
            } else {
                st.wake_s / 10.0
            }
        };
        if !server.sleep(Duration::from_secs_f64(wait)) {
            return internal_error();
        }
        let mut st = self.state.lock().unwrap();
        if wake.contains("weights") && st.sleeping_tags.remove("weights") {
            st.weights = match st.weights {
                Weights::Cpu => Weights::Gpu,
                Weights::Discarded => Weights::Uninitialised,
                w => w,
            };
        }
        if wake.contains("kv_cache") {
            st.sleeping_tags.remove("kv_cache");
        }
        Response::empty()
    }

    fn collective_rpc(&self, req: &Request, server: &ServerState) -> Response {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
            return Response::json(400, &json!({"detail": "JSON decode error"}));
        };
        let Ok(rpc) = serde_json::from_value::<CollectiveRpcRequest>(body) else {
            return Response::json(400, &json!({"detail": "Missing 'method' in request body"}));
        };
        if rpc.method != RELOAD_WEIGHTS {
            return internal_error(); // AttributeError in the worker
        }
        let wait = {
            let st = self.state.lock().unwrap();
            if st.sleeping_tags.contains("weights") {
                return internal_error(); // no GPU memory to load into
            }
            st.reload_s
        };
        if !server.sleep(Duration::from_secs_f64(wait)) {
            return internal_error();
        }
        let mut st = self.state.lock().unwrap();
        st.weights = Weights::Gpu;
        st.reloads += 1;
        Response::json(
            200,
            &serde_json::to_value(CollectiveRpcResponse {
                results: vec![serde_json::Value::Null],
            })
            .unwrap_or_default(),
        )
    }
}

impl Handler for VllmHandler {
    fn handle(&self, req: &Request, server: &ServerState) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/sleep") => self.sleep(req, server),
            ("POST", "/wake_up") => self.wake_up(req, server),
            ("POST", "/collective_rpc") => self.collective_rpc(req, server),
            ("GET", "/is_sleeping") => {
                let s = self.state.lock().unwrap().is_sleeping();
                Response::json(
                    200,
                    &serde_json::to_value(IsSleepingResponse { is_sleeping: s }).unwrap_or_default(),
                )
            }
            ("GET", "/health") => Response::empty(),
            ("GET", "/v1/models") => {
                let model = self.state.lock().unwrap().model.clone();
                let answer = ModelsResponse {
                    object: "list".into(),
                    data: vec![ModelCard {
                        id: model.clone(),
                        object: "model".into(),
                        root: Some(model),
                        max_model_len: Some(4096),
                    }],
                };
                Response::json(200, &serde_json::to_value(answer).unwrap_or_default())
            }
            (_, "/sleep" | "/wake_up" | "/collective_rpc" | "/is_sleeping") => {
                Response::json(405, &json!({"detail": "Method Not Allowed"}))
            }
            _ => Response::json(404, &json!({"detail": "Not Found"})),
        }
    }
}

/// The fake vLLM instance and its controls.
pub struct FakeVllm {
    pub server: HttpServer,
    pub state: Arc<Mutex<VllmState>>,
}

impl FakeVllm {
    /// An instance serving `model`, awake; sleeping takes 20 ms, waking from
    /// level 1 50 ms, a reload of the weights 100 ms.
    pub fn start(model: &str) -> FakeVllm {
        let state = Arc::new(Mutex::new(VllmState {
            model: model.to_string(),
            weights: Weights::Gpu,
            sleeping_tags: BTreeSet::new(),
            last_level: None,
            sleep_s: 0.02,
            wake_s: 0.05,
            reload_s: 0.1,
            reloads: 0,
        }));
        let server = HttpServer::start(Arc::new(VllmHandler { state: Arc::clone(&state) }));
        FakeVllm { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn is_sleeping(&self) -> bool {
        self.state.lock().unwrap().is_sleeping()
    }

    pub fn weights(&self) -> Weights {
        self.state.lock().unwrap().weights
    }

    pub fn last_level(&self) -> Option<u32> {
        self.state.lock().unwrap().last_level
    }

    pub fn reloads(&self) -> usize {
        self.state.lock().unwrap().reloads
    }

    /// Sets how long a wake from level 1 and a reload of the weights take.
    pub fn set_times(&self, wake_s: f64, reload_s: f64) {
        let mut st = self.state.lock().unwrap();
        st.wake_s = wake_s;
        st.reload_s = reload_s;
    }

    /// Another client put the instance to sleep at `level`.
    pub fn external_sleep(&self, level: u32) {
        let mut st = self.state.lock().unwrap();
        st.weights = if level == 1 { Weights::Cpu } else { Weights::Discarded };
        st.sleeping_tags = ["weights".to_string(), "kv_cache".to_string()].into();
        st.last_level = Some(level);
    }

    /// Another client woke it fully (reloading the weights if needed).
    pub fn external_wake(&self) {
        let mut st = self.state.lock().unwrap();
        st.weights = Weights::Gpu;
        st.sleeping_tags.clear();
    }

    /// The instance dies; [`FakeVllm::come_back`] restarts it awake with its
    /// weights loaded, as a freshly started vLLM is.
    pub fn go_down(&self) {
        self.server.go_down();
    }

    pub fn come_back(&self) {
        {
            let mut st = self.state.lock().unwrap();
            st.weights = Weights::Gpu;
            st.sleeping_tags.clear();
            st.last_level = None;
        }
        self.server.come_back();
    }

    pub fn fail_next(&self, path: &str, fault: Fault, count: usize) {
        self.server.fail_next(path, fault, count);
    }

    /// The paths (with query) of the POSTs received, in order.
    pub fn posts(&self) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .filter(|(m, _, _)| m == "POST")
            .map(|(_, p, _)| p)
            .collect()
    }
}
