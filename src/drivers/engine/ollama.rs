//! `ollama`: an engine tier whose models are loaded in an Ollama server.
//! Wire types: [`super::ollama_wire`] (Ollama's docs/api.md).
//!
//! - Load: `POST /api/generate {"model": M, "keep_alive": -1, "options":
//!   {...}, "stream": false}` with no prompt. The configured `options` (the
//!   tier's `options` table, e.g. `num_ctx`) go with it, so that the first
//!   request of a client using the same options does not make Ollama
//!   reload the model.
//! - Unload: the same with `"keep_alive": 0`; it ends when the answer says
//!   `done_reason: "unload"` AND `/api/ps` no longer lists the model
//!   (Ollama unloads asynchronously after answering).
//! - Observation: `GET /api/ps` every `poll_s`; a model's footprint is its
//!   `size_vram` (the GPU bytes), or `size` when nothing is on the GPU.
//! - Pins: tierd loads with `keep_alive: -1`, which Ollama shows as an
//!   `expires_at` centuries away. Any request to the model replaces its
//!   keep_alive (a native client's `"5m"`, or none: the default 5 minutes),
//!   which is how models "unload despite keep_alive=-1" (ollama#7773). When
//!   a model tierd loaded shows an `expires_at` less than
//!   [`PIN_HORIZON_S`] away, tierd re-asserts its keep_alive with another
//!   empty-prompt request.
//! - Activity: a changed `expires_at` means a request reached the model;
//!   it counts as an access (except the change tierd's own re-assertion
//!   makes).
//! - Names: Ollama's `name:tag` (no tag means `:latest`); a tierd model is
//!   matched to the name `/api/tags` lists for it.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::ollama_wire::{ErrorResponse, GenerateRequest, GenerateResponse, PsResponse, TagsResponse, parse_rfc3339};

/// An `expires_at` closer than this (seconds) is no longer tierd's pin:
/// a request with a finite keep_alive overrode it. Ollama's "forever" is
/// about 292 years away; a keep_alive a client sets on purpose is rarely
/// more than days.
pub const PIN_HORIZON_S: f64 = 365.0 * 86_400.0;

/// `name` with Ollama's default tag.
pub fn full_name(name: &str) -> String {
    if name.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The body of a load.
pub fn load_request(model: &str, options: &Map<String, Value>) -> Value {
    let req = GenerateRequest {
        model: model.to_string(),
        prompt: None,
        keep_alive: Some(json!(-1)),
        options: if options.is_empty() { None } else { Some(options.clone()) },
        stream: Some(false),
    };
    serde_json::to_value(req).unwrap_or(Value::Null)
}

/// The body of an unload.
pub fn unload_request(model: &str) -> Value {
    let req = GenerateRequest {
        model: model.to_string(),
        keep_alive: Some(json!(0)),
        stream: Some(false),
        ..Default::default()
    };
    serde_json::to_value(req).unwrap_or(Value::Null)
}

/// The engine's own words for a failed answer: Ollama's `{"error": ...}`,
/// else the status and the start of the body.
pub fn engine_message(status: u16, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorResponse>(body) {
        return format!("ollama: {} (HTTP {status})", e.error);
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.chars().take(200).collect();
    format!("ollama: HTTP {status}: {}", excerpt.trim())
}

/// Checks the answer to a load.
pub fn check_load(status: u16, body: &[u8]) -> Result<GenerateResponse, String> {
    if !(200..300).contains(&status) {
        return Err(engine_message(status, body));
    }
    let answer: GenerateResponse = serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(body);
        format!(
            "ollama answered garbage to a load ({e}): {:?}",
            text.chars().take(120).collect::<String>()
        )
    })?;
    if !answer.done {
        return Err("ollama answered a load with done: false".into());
    }
    Ok(answer)
}

/// Checks the answer to an unload: it must say `done_reason: "unload"`.
pub fn check_unload(status: u16, body: &[u8]) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(engine_message(status, body));
    }
    let answer: GenerateResponse = serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(body);
        format!(
            "ollama answered garbage to an unload ({e}): {:?}",
            text.chars().take(120).collect::<String>()
        )
    })?;
    match answer.done_reason.as_deref() {
        Some("unload") => Ok(()),
        other => Err(format!("ollama answered an unload with done_reason {other:?}, not \"unload\"")),
    }
}

/// One loaded model as `/api/ps` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// Ollama's full name (`name:tag`).
    pub name: String,
    /// Bytes it takes: `size_vram`, or `size` when none is on the GPU.
    pub bytes: u64,
    /// Of which on the GPU.
    pub vram_bytes: u64,
    /// Unix seconds.
    pub expires_at: Option<f64>,
}

/// Parses `/api/ps`.
pub fn parse_ps(status: u16, body: &[u8]) -> Result<Vec<Running>, String> {
    if !(200..300).contains(&status) {
        return Err(engine_message(status, body));
    }
    let ps: PsResponse = serde_json::from_slice(body).map_err(|e| format!("ollama /api/ps answered garbage: {e}"))?;
    Ok(ps
        .models
        .into_iter()
        .map(|m| Running {
            name: full_name(if m.name.is_empty() { &m.model } else { &m.name }),
            bytes: if m.size_vram > 0 { m.size_vram } else { m.size },
            vram_bytes: m.size_vram,
            expires_at: parse_rfc3339(&m.expires_at).ok(),
        })
        .collect())
}

/// Parses `/api/tags` into full name -> bytes on disk.
pub fn parse_tags(status: u16, body: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    if !(200..300).contains(&status) {
        return Err(engine_message(status, body));
    }
    let tags: TagsResponse = serde_json::from_slice(body).map_err(|e| format!("ollama /api/tags answered garbage: {e}"))?;
    Ok(tags.models.into_iter().map(|m| (full_name(&m.name), m.size)).collect())
}

/// The Ollama name of tierd model `model` among the local ones: the same
/// name, or the same with `:latest`.
pub fn resolve(model: &str, local: &BTreeMap<String, u64>) -> Option<String> {
    let full = full_name(model);
    local.contains_key(&full).then_some(full)
}

/// Whether a model tierd pinned needs its keep_alive re-asserted.
pub fn pin_overridden(expires_at: Option<f64>, now: f64) -> bool {
    match expires_at {
        Some(t) => t < now + PIN_HORIZON_S,
        // Ollama shows no parsable time: leave it, the next poll looks again.
        None => false,
    }
}

/// What the driver remembers between polls to tell activity from its own
/// doing: the last `expires_at` of each loaded model.
#[derive(Debug, Default)]
pub struct Activity {
    last: HashMap<String, f64>,
}

impl Activity {
    /// Compares a poll with the last one: the models a request reached in
    /// between (their `expires_at` changed). `own` names the models whose
    /// change tierd caused (its loads and re-assertions since the last poll).
    pub fn accesses(&mut self, running: &[Running], own: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut touched = Vec::new();
        let mut next = HashMap::with_capacity(running.len());
        for r in running {
            let Some(t) = r.expires_at else { continue };
            if let Some(&before) = self.last.get(&r.name)
                && (t - before).abs() > 0.5
                && !own(&r.name)
            {
                touched.push(r.name.clone());
            }
            next.insert(r.name.clone(), t);
        }
        self.last = next;
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_and_unload_bodies_are_ollamas() {
        let mut options = Map::new();
        options.insert("num_ctx".into(), json!(8192));
        assert_eq!(
            load_request("llama3.2:latest", &options),
            json!({"model": "llama3.2:latest", "keep_alive": -1, "options": {"num_ctx": 8192}, "stream": false})
        );
        assert_eq!(
            load_request("m", &Map::new()),
            json!({"model": "m", "keep_alive": -1, "stream": false})
        );
        assert_eq!(unload_request("m"), json!({"model": "m", "keep_alive": 0, "stream": false}));
    }

    #[test]
    fn answers_are_checked_with_the_engines_message() {
        assert!(check_unload(200, br#"{"model":"m","done":true,"done_reason":"unload"}"#).is_ok());
        assert!(
            check_unload(200, br#"{"model":"m","done":true}"#)
                .unwrap_err()
                .contains("not \"unload\"")
        );
        let e = check_load(404, br#"{"error":"model \"x\" not found, try pulling it first"}"#).unwrap_err();
        assert!(e.contains("not found") && e.contains("404"), "{e}");
        assert!(check_load(200, b"<html>").unwrap_err().contains("garbage"));
        assert!(engine_message(502, b"Bad Gateway").contains("HTTP 502: Bad Gateway"));
    }

    #[test]
    fn ps_footprint_and_pins() {
        let body = br#"{"models":[{"name":"a:latest","model":"a:latest","size":100,"size_vram":80,"expires_at":"2318-01-01T00:00:00Z"},
                                  {"name":"b","model":"b","size":50,"size_vram":0,"expires_at":"2024-06-04T14:38:31.83753-07:00"}]}"#;
        let r = parse_ps(200, body).unwrap();
        assert_eq!((r[0].name.as_str(), r[0].bytes), ("a:latest", 80));
        assert_eq!((r[1].name.as_str(), r[1].bytes), ("b:latest", 50), "CPU-only model: size");
        let now = 1_800_000_000.0;
        assert!(!pin_overridden(r[0].expires_at, now));
        assert!(pin_overridden(r[1].expires_at, now));
        assert!(parse_ps(200, b"{}").is_err());
    }

    #[test]
    fn activity_is_a_changed_expiry_not_tierds_own() {
        let mut a = Activity::default();
        let run = |t: f64| {
            vec![Running {
                name: "a:latest".into(),
                bytes: 1,
                vram_bytes: 1,
                expires_at: Some(t),
            }]
        };
        assert!(a.accesses(&run(100.0), &|_| false).is_empty(), "first sight is not an access");
        assert!(a.accesses(&run(100.0), &|_| false).is_empty());
        assert_eq!(a.accesses(&run(400.0), &|_| false), vec!["a:latest".to_string()]);
        assert!(a.accesses(&run(9e9), &|_| true).is_empty(), "tierd's re-assertion");
    }

    #[test]
    fn names_resolve_with_the_default_tag() {
        let local: BTreeMap<String, u64> = [("llama3.2:latest".to_string(), 1), ("qwen:0.5b".to_string(), 2)].into();
        assert_eq!(resolve("llama3.2", &local).as_deref(), Some("llama3.2:latest"));
        assert_eq!(resolve("qwen:0.5b", &local).as_deref(), Some("qwen:0.5b"));
        assert_eq!(resolve("library/x", &local), None);
    }
}

// ------------------------------------------------------------- operations

/// One HTTP exchange with the engine: `(status, body)`, or why there was no
/// answer (refused, reset, timed out). Implemented over the engine-tier
/// HTTP client; the operations below take it so that they can run on any
/// worker thread and be tested against the fakes.
pub trait Exchange {
    fn exchange(&self, method: &str, path: &str, body: Option<&Value>, timeout: std::time::Duration) -> Result<(u16, Vec<u8>), String>;
}

/// How often a load or an unload looks at `/api/ps` while it waits for
/// Ollama to list (or drop) the model.
pub const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

fn left(deadline: std::time::Instant) -> Result<std::time::Duration, String> {
    deadline
        .checked_duration_since(std::time::Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".to_string())
}

/// Reads `/api/ps`.
pub fn running(http: &dyn Exchange, timeout: std::time::Duration) -> Result<Vec<Running>, String> {
    let (status, body) = http.exchange("GET", "/api/ps", None, timeout)?;
    parse_ps(status, &body)
}

/// Reads `/api/tags`.
pub fn local_models(http: &dyn Exchange, timeout: std::time::Duration) -> Result<BTreeMap<String, u64>, String> {
    let (status, body) = http.exchange("GET", "/api/tags", None, timeout)?;
    parse_tags(status, &body)
}

/// Loads `name` pinned, with `options`, and waits until `/api/ps` lists it;
/// its entry. `Err` carries the engine's message, or says it timed out at
/// `deadline` (the caller then unloads what the engine may still finish
/// loading). `cancelled` is asked between steps.
pub fn load(
    http: &dyn Exchange,
    name: &str,
    options: &Map<String, Value>,
    deadline: std::time::Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<Running, String> {
    let timed_out = |what: &str| format!("ollama: loading {name} timed out ({what})");
    let wait = left(deadline).map_err(|_| timed_out("before it started"))?;
    let (status, body) = http
        .exchange("POST", "/api/generate", Some(&load_request(name, options)), wait)
        .map_err(|e| {
            if left(deadline).is_err() {
                timed_out(&e)
            } else {
                format!("ollama: load of {name}: {e}")
            }
        })?;
    check_load(status, &body)?;
    loop {
        if cancelled() {
            return Err("cancelled".into());
        }
        let wait = left(deadline).map_err(|_| timed_out("/api/ps never listed it"))?;
        if let Some(r) = running(http, wait)?.into_iter().find(|r| r.name == name) {
            return Ok(r);
        }
        std::thread::sleep(SETTLE_POLL.min(wait));
    }
}

/// Unloads `name` and waits until `/api/ps` no longer lists it.
pub fn unload(http: &dyn Exchange, name: &str, deadline: std::time::Instant) -> Result<(), String> {
    request_unload(http, name, deadline)?;
    wait_gone(http, name, deadline)
}

/// Asks Ollama to unload `name` (`keep_alive: 0`); `Ok` once it answered
/// `done_reason: "unload"`.
fn request_unload(http: &dyn Exchange, name: &str, deadline: std::time::Instant) -> Result<(), String> {
    let wait = left(deadline).map_err(|_| format!("ollama: unloading {name} timed out"))?;
    let (status, body) = http.exchange("POST", "/api/generate", Some(&unload_request(name)), wait)?;
    check_unload(status, &body)
}

/// Waits until `/api/ps` no longer lists `name`.
fn wait_gone(http: &dyn Exchange, name: &str, deadline: std::time::Instant) -> Result<(), String> {
    loop {
        let wait = left(deadline).map_err(|_| format!("ollama: unloading {name} timed out: /api/ps still lists it"))?;
        if !running(http, wait)?.iter().any(|r| r.name == name) {
            return Ok(());
        }
        std::thread::sleep(SETTLE_POLL.min(wait));
    }
}

/// Re-asserts tierd's pin on a loaded model (the same empty-prompt request
/// as a load, which Ollama answers at once for a loaded model with the same
/// options).
pub fn reassert_pin(http: &dyn Exchange, name: &str, options: &Map<String, Value>, timeout: std::time::Duration) -> Result<(), String> {
    let (status, body) = http.exchange("POST", "/api/generate", Some(&load_request(name, options)), timeout)?;
    check_load(status, &body).map(|_| ())
}

// ---------------------------------------------------------- the engine api

/// What the `ollama` tier keeps between calls (all behind one lock, taken
/// only between HTTP exchanges, never across one).
#[derive(Debug, Default)]
struct Books {
    /// Ollama names of the models tierd loaded (and so pinned).
    pinned: std::collections::HashSet<String>,
    /// Models whose `expires_at` tierd itself changed since the last look
    /// (its loads and re-assertions): not a client's access.
    own: std::collections::HashSet<String>,
    /// Models tierd is unloading: the `expires_at` Ollama sets to now is
    /// tierd's doing, not a client's access.
    unloading: std::collections::HashSet<String>,
    /// Loads tierd gave up on (timed out, cancelled): if Ollama finishes
    /// one anyway, tierd unloads it rather than adopting it.
    abandoned: std::collections::HashSet<String>,
    activity: Activity,
    /// The last `/api/ps` reading.
    last_seen: Vec<Running>,
    /// `/api/tags`, refreshed when a name is not found in it.
    local: BTreeMap<String, u64>,
}

/// One Ollama server, as the engine tier sees it.
pub struct Ollama {
    pub http: Box<dyn Exchange + Send + Sync>,
    /// The tier's `options` table, sent with every load.
    options: Map<String, Value>,
    /// Timeout of a look (`/api/ps`, `/api/tags`) and of an unload.
    pub request_timeout: std::time::Duration,
    books: std::sync::Mutex<Books>,
}

/// What a look at Ollama found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// The loaded models (abandoned loads left out: they are being unloaded).
    pub running: Vec<Running>,
    /// Models a client's request reached since the last look.
    pub accessed: Vec<String>,
}

impl Ollama {
    pub fn new(http: Box<dyn Exchange + Send + Sync>, options: Map<String, Value>, request_timeout: std::time::Duration) -> Ollama {
        Ollama {
            http,
            options,
            request_timeout,
            books: std::sync::Mutex::new(Books::default()),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Ollama name of tierd model `model`, or why there is none.
    pub fn resolve(&self, model: &str) -> Result<String, String> {
        if let Some(name) = resolve(model, &self.books().local) {
            return Ok(name);
        }
        let local = local_models(&*self.http, self.request_timeout)?;
        let found = resolve(model, &local);
        self.books().local = local;
        found.ok_or_else(|| format!("ollama: model \"{model}\" not found (not in /api/tags), try pulling it first"))
    }

    /// Loads `name` pinned, within `timeout`; its footprint in bytes.
    pub fn load(&self, name: &str, timeout: std::time::Duration, cancelled: &dyn Fn() -> bool) -> Result<u64, String> {
        self.books().abandoned.remove(name);
        match load(&*self.http, name, &self.options, std::time::Instant::now() + timeout, cancelled) {
            Ok(r) => {
                let mut b = self.books();
                b.pinned.insert(name.to_string());
                b.own.insert(name.to_string());
                Ok(r.bytes)
            }
            Err(e) => {
                // Ollama may still finish it: unload it when it shows up,
                // and try at once in case it already has.
                self.books().abandoned.insert(name.to_string());
                let _ = unload(&*self.http, name, std::time::Instant::now() + self.request_timeout);
                Err(e)
            }
        }
    }

    /// Unloads `name` and waits until `/api/ps` no longer lists it.
    pub fn unload(&self, name: &str) -> Result<(), String> {
        unload(&*self.http, name, std::time::Instant::now() + self.request_timeout)?;
        let mut b = self.books();
        b.pinned.remove(name);
        b.own.remove(name);
        Ok(())
    }

    /// Unloads `name` before `deadline`.
    /// Unloads `name` and waits until `/api/ps` no longer lists it. From
    /// the request on, tierd's pin is no longer re-asserted: while Ollama
    /// unloads, `/api/ps` lists the model expiring now, and one that takes
    /// longer than the deadline is still on its way out (re-asserting would
    /// load it again). A request Ollama refused leaves the pin as it was.
    pub fn unload_until(&self, name: &str, deadline: std::time::Instant) -> Result<(), String> {
        let was_pinned = {
            let mut b = self.books();
            b.unloading.insert(name.to_string());
            b.pinned.remove(name)
        };
        let r = request_unload(&*self.http, name, deadline);
        if r.is_err() && was_pinned {
            self.books().pinned.insert(name.to_string());
        }
        let r = r.and_then(|()| wait_gone(&*self.http, name, deadline));
        let mut b = self.books();
        b.unloading.remove(name);
        if r.is_ok() {
            b.own.remove(name);
        }
        r
    }

    /// Sorts one `/api/ps` reading: leaves out the abandoned loads (they
    /// are being unloaded), remembers when each model expires, and tells
    /// which models a client's request reached since the last reading.
    pub fn look(&self, mut running: Vec<Running>, _now_unix: f64) -> Observation {
        let mut b = self.books();
        b.last_seen = running.clone();
        running.retain(|r| !b.abandoned.contains(&r.name));
        let own = std::mem::take(&mut b.own);
        let unloading = b.unloading.clone();
        let accessed = b.activity.accesses(&running, &|n| own.contains(n) || unloading.contains(n));
        Observation { running, accessed }
    }

    /// The upkeep after a reading: re-asserts tierd's pin on the `held`
    /// models tierd loaded itself whose `expires_at` a client shortened (a
    /// model another client loaded keeps that client's keep_alive), and
    /// unloads abandoned loads Ollama finished after all.
    pub fn upkeep(&self, held: &[String], now_unix: f64) -> Result<(), String> {
        let (reassert, drop): (Vec<String>, Vec<String>) = {
            let b = self.books();
            let seen = |n: &str| b.last_seen.iter().find(|r| r.name == n).cloned();
            (
                held.iter()
                    .filter(|n| b.pinned.contains(*n) && seen(n).is_some_and(|r| pin_overridden(r.expires_at, now_unix)))
                    .cloned()
                    .collect(),
                b.abandoned
                    .iter()
                    .filter(|n| seen(n).is_some() && !held.contains(n))
                    .cloned()
                    .collect(),
            )
        };
        let mut errors = Vec::new();
        for name in &drop {
            match unload(&*self.http, name, std::time::Instant::now() + self.request_timeout) {
                Ok(()) => {
                    self.books().abandoned.remove(name);
                }
                Err(e) => errors.push(format!("unloading the abandoned load of {name}: {e}")),
            }
        }
        for name in reassert {
            self.books().own.insert(name.clone());
            if let Err(e) = reassert_pin(&*self.http, &name, &self.options, self.request_timeout) {
                errors.push(format!("re-asserting keep_alive -1 on {name}: {e}"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Looks at `/api/ps`, and does the upkeep the look calls for:
    /// re-asserts the pins a client overrode, unloads abandoned loads that
    /// Ollama finished.
    pub fn observe(&self, now_unix: f64) -> Result<Observation, String> {
        let seen = self.look(running(&*self.http, self.request_timeout)?, now_unix);
        let held: Vec<String> = seen.running.iter().map(|r| r.name.clone()).collect();
        if let Err(e) = self.upkeep(&held, now_unix) {
            tracing::warn!(error = %e, "ollama upkeep");
        }
        Ok(seen)
    }
}

// ------------------------------------------------------------- the driver

/// Timeout of one look at Ollama (`/api/ps`, `/api/tags`).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Exchange for super::http::HttpClient {
    fn exchange(&self, method: &str, path: &str, body: Option<&Value>, timeout: std::time::Duration) -> Result<(u16, Vec<u8>), String> {
        self.request(method, path, body, timeout)
            .map(|a| (a.status, a.body.to_vec()))
            .map_err(|e| e.to_string())
    }
}

/// An Ollama server as the engine tier drives it
/// ([`super::EngineApi`]).
pub struct OllamaEngine {
    pub url: String,
    pub api: Ollama,
    /// Per model, a counter bumped at each access [`Ollama::observe`] saw:
    /// the activity marker the engine tier compares between looks.
    accesses: std::sync::Mutex<HashMap<String, u64>>,
}

impl OllamaEngine {
    pub fn new(url: &str, api: Ollama) -> OllamaEngine {
        OllamaEngine {
            url: url.to_string(),
            api,
            accesses: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

fn refused(message: String) -> super::EngineError {
    super::EngineError::refused(message)
}

impl super::EngineApi for OllamaEngine {
    fn kind(&self) -> &'static str {
        "ollama"
    }

    /// `ollama serve` (the listener on the URL) and its runners.
    fn serving_pids(&self, _id: &str) -> std::collections::HashSet<u32> {
        match super::http::Endpoint::parse(&self.url, true) {
            Ok(ep) => super::procs::serving_pids(&ep),
            Err(_) => std::collections::HashSet::new(),
        }
    }

    fn loaded(&self) -> Result<Vec<super::Loaded>, super::EngineError> {
        // Reachability first: a refused connection marks Ollama down.
        let (status, body) = self
            .api
            .http
            .exchange("GET", "/api/ps", None, self.api.request_timeout)
            .map_err(|e| super::EngineError {
                message: format!("ollama at {}: {e}", self.url),
                down: true,
            })?;
        let running = parse_ps(status, &body).map_err(refused)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let seen = self.api.look(running, now);
        let mut counts = self.accesses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in &seen.accessed {
            *counts.entry(name.clone()).or_default() += 1;
        }
        Ok(seen
            .running
            .into_iter()
            .map(|r| super::Loaded {
                activity: Some(counts.get(&r.name).copied().unwrap_or(0).to_string()),
                id: r.name,
                path: None,
                bytes: Some(r.bytes),
            })
            .collect())
    }

    fn resolve(&self, model: &super::ModelRef) -> Result<String, super::EngineError> {
        self.api.resolve(&model.name).map_err(refused)
    }

    fn load(&self, id: &str, _model: &super::ModelRef, ctl: &super::LoadControl) -> Result<(), super::EngineError> {
        self.api.load(id, ctl.remaining(), &|| ctl.cancelled()).map(drop).map_err(refused)
    }

    fn unload(&self, id: &str, _to: super::UnloadTo, ctl: &super::LoadControl) -> Result<(), super::EngineError> {
        self.api.unload_until(id, ctl.deadline).map_err(refused)
    }

    fn upkeep(&self, _loaded: &[super::Loaded], held: &[String]) -> Result<(), super::EngineError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.api.upkeep(held, now).map_err(refused)
    }

    fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        d.insert("url".into(), json!(self.url));
        d.insert("pin_horizon_s".into(), json!(PIN_HORIZON_S));
        d
    }
}

/// The GPU an engine tier's capacity follows, where NVML sees one: GPU N
/// for a tier named with a trailing number (`gpu0`, `ollama1`), else GPU 0.
pub fn engine_gpu(
    ctx: &mut crate::drivers::machine::OpenContext,
    tier: &crate::config::TierConfig,
) -> Option<(std::sync::Arc<crate::drivers::gpu::GpuProbe>, u32)> {
    let digits: String = tier
        .name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let index = digits.parse::<u32>().unwrap_or(0);
    let probe = ctx.gpu();
    match &*probe {
        crate::drivers::gpu::GpuProbe::Ready(_) if probe.free_bytes(index).is_ok() => Some((probe, index)),
        _ => None,
    }
}

/// Opens an `ollama` tier: `url` (required), `options`, `poll_s`,
/// `load_timeout_s`, `max_gb`, `max_models`.
pub fn open(
    ctx: &mut crate::drivers::machine::OpenContext,
    tier: &crate::config::TierConfig,
) -> Result<Box<dyn crate::drivers::TierDriver>, String> {
    let url = tier.url.as_deref().ok_or("an ollama tier needs url = \"http://127.0.0.1:11434\"")?;
    let client = super::http::HttpClient::new(url, tier.allow_remote_engines)?;
    let api = Ollama::new(Box::new(client), super::options_json(tier), REQUEST_TIMEOUT);
    let gpu = engine_gpu(ctx, tier);
    let settings = super::EngineSettings::from_config(tier, gpu);
    Ok(Box::new(super::EngineTier::open(OllamaEngine::new(url, api), settings)?))
}
