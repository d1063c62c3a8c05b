//! A fake Ollama server, from <https://github.com/ollama/ollama/blob/main/docs/api.md>
//! and built from `tierd::drivers::engine::ollama_wire`.
//!
//! Behaviours kept from the real server:
//! - `POST /api/generate` with no prompt loads the model (taking the
//!   model's load time) and answers `{"done": true}`; with `keep_alive: 0`
//!   it answers `done_reason: "unload"` at once, and the model leaves
//!   `/api/ps` a little later (Ollama's scheduler unloads asynchronously,
//!   hence tierd's "unload ends when /api/ps no longer lists it").
//! - `keep_alive` (number of seconds or Go duration; negative = forever;
//!   default 5m) sets `expires_at` = end of the request + keep_alive (forever:
//!   ~292 years ahead, as Ollama's largest duration). Every request to a
//!   model (a native client's prompt too) replaces its keep_alive, so a
//!   client sending `"5m"` overrides a pin. Expired models leave on their own.
//! - Different runner `options` (e.g. `num_ctx`; a request without them
//!   means the defaults) on a loaded model reload it.
//! - `max_loaded` (OLLAMA_MAX_LOADED_MODELS): a load into a full server
//!   evicts the model that expires first, as Ollama's scheduler does.
//! - Names without a tag mean `:latest`; unknown models answer 404
//!   `{"error": "model \"x\" not found, try pulling it first"}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tierd::drivers::engine::ollama_wire::{
    DEFAULT_KEEP_ALIVE, GenerateRequest, GenerateResponse, KeepAlive, LocalModel, ModelDetails, PsResponse, RunningModel, TagsResponse,
    format_rfc3339,
};

use super::http::{Fault, Handler, HttpServer, Request, Response, ServerState};
use super::unix_now;

/// Seconds Ollama's "forever" adds to now (Go's largest duration, ~292 years).
pub const FOREVER_S: f64 = 9_223_372_036.0;

/// A model the fake has locally (`/api/tags`).
#[derive(Debug, Clone)]
pub struct ModelDef {
    /// Bytes on disk.
    pub size: u64,
    /// Bytes it takes loaded (`/api/ps` `size`); `size_vram` is the same
    /// unless `cpu_bytes` moves part of it to the CPU.
    pub loaded_size: u64,
    pub cpu_bytes: u64,
    /// How long a load takes.
    pub load_s: f64,
    pub digest: String,
}

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Unix seconds.
    pub expires_at: f64,
    pub options: Map<String, Value>,
    /// Set by an unload: the model leaves `/api/ps` at this time.
    pub leaving_at: Option<f64>,
}

#[derive(Default)]
pub struct OllamaState {
    pub models: BTreeMap<String, ModelDef>,
    pub loaded: BTreeMap<String, Loaded>,
    /// Loads in progress (name -> number of requests loading it).
    pub loading: BTreeMap<String, usize>,
    /// OLLAMA_MAX_LOADED_MODELS; `None`: no limit.
    pub max_loaded: Option<usize>,
    /// How long after an unload's answer the model leaves `/api/ps`.
    pub unload_s: f64,
    /// Loads that ran to the end (including reloads).
    pub loads_done: usize,
}

impl OllamaState {
    /// Drops expired and unloaded models (Ollama's scheduler, lazily).
    fn expire(&mut self, now: f64) {
        // A model being unloaded stays listed (expiring now) until it is gone.
        self.loaded.retain(|_, l| match l.leaving_at {
            Some(t) => t > now,
            None => l.expires_at > now,
        });
    }
}

struct OllamaHandler {
    state: Arc<Mutex<OllamaState>>,
}

/// `name` with Ollama's default tag.
pub fn full_name(name: &str) -> String {
    if name.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The options that shape the runner (a change reloads the model; the
/// sampling ones, like `temperature`, do not).
const RUNNER_OPTIONS: &[&str] = &[
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "numa",
];

fn runner_options(options: Option<&Map<String, Value>>) -> Map<String, Value> {
    options
        .map(|o| {
            o.iter()
                .filter(|(k, _)| RUNNER_OPTIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({ "error": message }))
}

fn details() -> ModelDetails {
    ModelDetails {
        parent_model: String::new(),
        format: "gguf".into(),
        family: "llama".into(),
        families: Some(vec!["llama".into()]),
        parameter_size: "1B".into(),
        quantization_level: "Q4_0".into(),
    }
}

impl OllamaHandler {
    fn generate(&self, req: &Request, server: &ServerState) -> Response {
        let Ok(body) = serde_json::from_slice::<GenerateRequest>(&req.body) else {
            return error(400, "invalid request body");
        };
        if body.model.is_empty() {
            return error(400, "model is required");
        }
        let name = full_name(&body.model);
        let keep_alive = match body.keep_alive.as_ref().map(KeepAlive::from_json) {
            None => DEFAULT_KEEP_ALIVE,
            Some(Ok(k)) => k,
            Some(Err(e)) => return error(400, &e),
        };
        let prompt = body.prompt.clone().unwrap_or_default();
        let options = runner_options(body.options.as_ref());
        let now = unix_now();
        let load_s = {
            let mut st = self.state.lock().unwrap();
            st.expire(now);
            let Some(def) = st.models.get(&name) else {
                return error(404, &format!("model \"{}\" not found, try pulling it first", body.model));
            };
            let load_s = def.load_s;
            if prompt.is_empty() && keep_alive == KeepAlive::For(Duration::ZERO) {
                let unload_s = st.unload_s;
                // Ollama sets the runner to expire now (`expireRunner` in
                // server/sched.go: `runner.expiresAt = time.Now()`), and
                // /api/ps lists it until the runner has gone.
                if let Some(l) = st.loaded.get_mut(&name) {
                    l.leaving_at = Some(now + unload_s);
                    l.expires_at = now;
                }
                st.expire(now);
                let answer = GenerateResponse {
                    model: body.model.clone(),
                    created_at: format_rfc3339(now),
                    response: String::new(),
                    done: true,
                    done_reason: Some("unload".into()),
                    load_duration: None,
                };
                return Response::json(200, &serde_json::to_value(answer).unwrap_or_default());
            }
            let needs_load = match st.loaded.get(&name) {
                Some(l) => l.leaving_at.is_some() || l.options != options,
                None => true,
            };
            if needs_load {
                st.loaded.remove(&name);
                *st.loading.entry(name.clone()).or_default() += 1;
                Some(load_s)
            } else {
                None
            }
        };
        let mut load_duration = None;
        if let Some(load_s) = load_s {
            let alive = server.sleep(Duration::from_secs_f64(load_s));
            let mut st = self.state.lock().unwrap();
            if let Some(n) = st.loading.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    st.loading.remove(&name);
                }
            }
            if !alive {
                return error(500, "server went down"); // never sent
            }
            let now = unix_now();
            st.expire(now);
            if let Some(max) = st.max_loaded {
                while st.loaded.len() >= max.max(1) {
                    // Ollama evicts the runner that expires first.
                    let Some(victim) = st
                        .loaded
                        .iter()
                        .min_by(|a, b| a.1.expires_at.total_cmp(&b.1.expires_at))
                        .map(|(k, _)| k.clone())
                    else {
                        break;
                    };
                    st.loaded.remove(&victim);
                }
            }
            st.loaded.insert(
                name.clone(),
                Loaded {
                    expires_at: f64::INFINITY,
                    options: options.clone(),
                    leaving_at: None,
                },
            );
            st.loads_done += 1;
            load_duration = Some((load_s * 1e9) as u64);
        }
        // The keep_alive of this request counts from its end.
        let now = unix_now();
        let mut st = self.state.lock().unwrap();
        if let Some(l) = st.loaded.get_mut(&name) {
            l.expires_at = match keep_alive {
                KeepAlive::Forever => now + FOREVER_S,
                KeepAlive::For(d) => now + d.as_secs_f64(),
            };
        }
        st.expire(now);
        let answer = GenerateResponse {
            model: body.model.clone(),
            created_at: format_rfc3339(now),
            response: if prompt.is_empty() {
                String::new()
            } else {
                "The sky is blue.".into()
            },
            done: true,
            done_reason: if prompt.is_empty() { None } else { Some("stop".into()) },
            load_duration,
        };
        Response::json(200, &serde_json::to_value(answer).unwrap_or_default())
    }

    fn ps(&self) -> Response {
        let now = unix_now();
        let mut st = self.state.lock().unwrap();
        st.expire(now);
        let mut models: Vec<RunningModel> = st
            .loaded
            .iter()
            .filter_map(|(name, l)| {
                let def = st.models.get(name)?;
                Some(RunningModel {
                    name: name.clone(),
                    model: name.clone(),
                    size: def.loaded_size,
                    digest: def.digest.clone(),
                    details: details(),
                    expires_at: format_rfc3339(l.expires_at),
                    size_vram: def.loaded_size.saturating_sub(def.cpu_bytes),
                    context_length: l.options.get("num_ctx").and_then(Value::as_u64).or(Some(4096)),
                })
            })
            .collect();
        // Ollama lists the model expiring last first.
        models.sort_by(|a, b| b.expires_at.cmp(&a.expires_at));
        Response::json(200, &serde_json::to_value(PsResponse { models }).unwrap_or_default())
    }

    fn tags(&self) -> Response {
        let st = self.state.lock().unwrap();
        let models = st
            .models
            .iter()
            .map(|(name, def)| LocalModel {
                name: name.clone(),
                model: name.clone(),
                modified_at: format_rfc3339(1_717_000_000.0),
                size: def.size,
                digest: def.digest.clone(),
                details: details(),
            })
            .collect();
        Response::json(200, &serde_json::to_value(TagsResponse { models }).unwrap_or_default())
    }
}

impl Handler for OllamaHandler {
    fn handle(&self, req: &Request, server: &ServerState) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/api/generate") => self.generate(req, server),
            ("GET", "/api/ps") => self.ps(),
            ("GET", "/api/tags") => self.tags(),
            ("GET" | "HEAD", "/") => Response::text(200, "Ollama is running"),
            ("GET", "/api/version") => Response::json(200, &json!({"version": "0.12.0"})),
            (_, "/api/generate" | "/api/ps" | "/api/tags") => Response::text(405, "405 method not allowed"),
            _ => Response::text(404, "404 page not found"),
        }
    }
}

/// The fake Ollama and its controls.
pub struct FakeOllama {
    pub server: HttpServer,
    pub state: Arc<Mutex<OllamaState>>,
}

impl FakeOllama {
    /// A server with these local models: (name, bytes on disk); loaded they
    /// take 1.25 times that, all on the GPU; a load takes 50 ms.
    pub fn start(models: &[(&str, u64)]) -> FakeOllama {
        let mut st = OllamaState {
            unload_s: 0.05,
            ..Default::default()
        };
        for (i, (name, size)) in models.iter().enumerate() {
            st.models.insert(
                full_name(name),
                ModelDef {
                    size: *size,
                    loaded_size: size + size / 4,
                    cpu_bytes: 0,
                    load_s: 0.05,
                    digest: format!("{:064x}", i + 1),
                },
            );
        }
        let state = Arc::new(Mutex::new(st));
        let server = HttpServer::start(Arc::new(OllamaHandler { state: Arc::clone(&state) }));
        FakeOllama { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Sets how long loading `name` takes.
    pub fn set_load_s(&self, name: &str, s: f64) {
        if let Some(def) = self.state.lock().unwrap().models.get_mut(&full_name(name)) {
            def.load_s = s;
        }
    }

    /// Sets the bytes `name` takes loaded and how many of them are on the CPU.
    pub fn set_loaded_size(&self, name: &str, size: u64, cpu_bytes: u64) {
        if let Some(def) = self.state.lock().unwrap().models.get_mut(&full_name(name)) {
            def.loaded_size = size;
            def.cpu_bytes = cpu_bytes;
        }
    }

    pub fn set_max_loaded(&self, max: Option<usize>) {
        self.state.lock().unwrap().max_loaded = max;
    }

    /// Another client loaded `name` (at once) with this keep_alive.
    pub fn external_load(&self, name: &str, keep_alive: KeepAlive) {
        let now = unix_now();
        let mut st = self.state.lock().unwrap();
        let expires_at = match keep_alive {
            KeepAlive::Forever => now + FOREVER_S,
            KeepAlive::For(d) => now + d.as_secs_f64(),
        };
        st.loaded.insert(
            full_name(name),
            Loaded {
                expires_at,
                options: Map::new(),
                leaving_at: None,
            },
        );
        st.loads_done += 1;
    }

    /// Ollama unloaded `name` on its own (expiry, eviction, a crashed runner).
    pub fn evict(&self, name: &str) {
        self.state.lock().unwrap().loaded.remove(&full_name(name));
    }

    /// A native client's request set `name`'s keep_alive: it now expires
    /// `in_s` seconds from now.
    pub fn set_expiry(&self, name: &str, in_s: f64) {
        if let Some(l) = self.state.lock().unwrap().loaded.get_mut(&full_name(name)) {
            l.expires_at = unix_now() + in_s;
        }
    }

    /// When `name` expires (Unix seconds), if loaded.
    pub fn expires_at(&self, name: &str) -> Option<f64> {
        let mut st = self.state.lock().unwrap();
        st.expire(unix_now());
        st.loaded.get(&full_name(name)).map(|l| l.expires_at)
    }

    /// The loaded models' full names, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        st.expire(unix_now());
        st.loaded.keys().cloned().collect()
    }

    /// The options `name` was loaded with.
    pub fn options_of(&self, name: &str) -> Option<Map<String, Value>> {
        self.state.lock().unwrap().loaded.get(&full_name(name)).map(|l| l.options.clone())
    }

    pub fn is_loading(&self, name: &str) -> bool {
        self.state.lock().unwrap().loading.contains_key(&full_name(name))
    }

    /// The server dies: every loaded model is gone with it.
    pub fn go_down(&self) {
        self.server.go_down();
        self.state.lock().unwrap().loaded.clear();
    }

    pub fn come_back(&self) {
        self.server.come_back();
    }

    pub fn fail_next(&self, path: &str, fault: Fault, count: usize) {
        self.server.fail_next(path, fault, count);
    }

    /// The `/api/generate` bodies received, parsed.
    pub fn generate_requests(&self) -> Vec<Value> {
        self.server
            .requests()
            .into_iter()
            .filter(|(m, p, _)| m == "POST" && p == "/api/generate")
            .filter_map(|(_, _, b)| serde_json::from_str(&b).ok())
            .collect()
    }
}
