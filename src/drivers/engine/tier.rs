//! The engine tier: a [`TierDriver`] whose models are loaded in an
//! inference engine, generic over the engine's API ([`EngineApi`]: one
//! implementation per engine, `ollama` and `vllm`).
//!
//! - A move into the tier loads the model (on a thread of its own, with
//!   `load_timeout_s`); it ends when the engine shows the model loaded. A
//!   failure (the engine's message, a timeout, an engine that dies
//!   mid-load) fails the move; the API implementation unloads what it half
//!   loaded.
//! - A move out of the tier is carried out by the target tier (the RAM tier
//!   pins the files); once it committed, the tier is told
//!   ([`TierDriver::release_to`]) and unloads: to the RAM tier right below
//!   it, or further down (vLLM: sleep level 1 or 2).
//! - An observer thread looks at the engine every `poll_s`. What the engine
//!   loaded or dropped on its own becomes [`MoveEvent::EngineMoved`] (the
//!   engine moves the model in its books and records a job with `origin:
//!   "engine"`); a request the engine shows reaching a model becomes
//!   [`MoveEvent::EngineAccess`].
//! - Health: up or down, the last error, consecutive failures, the last
//!   success (in `tier_status`). While the engine does not answer the tier
//!   is unavailable, with the reason; moves into it fail at once. When it
//!   answers again its state is read again (models a restart lost leave the
//!   tier).
//!
//! Nothing here blocks the engine's lock: every HTTP exchange runs on the
//! tier's threads, each with a timeout.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::drivers::files::ModelFiles;
use crate::drivers::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, POLL_EVERY_S, TierDriver};

/// What an engine shows at one look.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The loaded models: the engine's id and the footprint it reports.
    pub loaded: Vec<(String, Option<u64>)>,
    /// Engine ids a request reached since the last look.
    pub accessed: Vec<String>,
}

/// One engine's API, as the engine tier uses it. Every method may block on
/// HTTP (within its timeout); the tier calls them on its own threads.
pub trait EngineApi: Send + Sync + 'static {
    /// The driver's name (`ollama`, `vllm`).
    fn kind(&self) -> &'static str;
    /// Where the engine is, for messages (its URL or URLs).
    fn location(&self) -> String;
    /// The engine's id of tierd model `model`, or why it has none.
    fn resolve(&self, model: &str) -> Result<String, String>;
    /// Loads `id` within `timeout`; the footprint the engine reports. On an
    /// error, what was half loaded is unloaded (or will be, when it shows).
    fn load(&self, id: &str, timeout: Duration, cancelled: &dyn Fn() -> bool) -> Result<Option<u64>, String>;
    /// Unloads `id`: into RAM (`to_ram`) or further down.
    fn unload(&self, id: &str, to_ram: bool) -> Result<(), String>;
    /// One look at the engine.
    fn observe(&self) -> Result<View, String>;
    /// tierd's possible names of engine id `id` (the engine drops unknown ones).
    fn model_names(&self, id: &str) -> Vec<String>;
    /// Whether a model the engine dropped on its own still has its bytes in
    /// RAM (vLLM's sleep: in the process's CPU memory) rather than only in
    /// storage.
    fn dropped_to_ram(&self) -> bool;
}

/// The engine's health, as the tier saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub up: bool,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// Unix seconds of the last look that succeeded.
    pub last_success: Option<f64>,
}

/// What the tier's threads report.
enum Msg {
    Loaded {
        job: JobKey,
        model: String,
        result: Result<(String, Option<u64>), String>,
        at: Instant,
    },
    Unloaded {
        model: String,
        result: Result<(), String>,
        at: Instant,
    },
    Observed {
        started: Instant,
        result: Result<View, String>,
    },
}

struct Load {
    started: Instant,
    expected_s: f64,
    cancel: Arc<AtomicBool>,
}

/// The settings of an engine tier.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This tier's position; the tier right below is RAM.
    pub index: usize,
    /// How many tiers there are (the last is storage).
    pub tier_count: usize,
    pub poll: Duration,
    pub load_timeout: Duration,
}

/// An engine tier over engine API `A`.
pub struct EngineTier<A: EngineApi> {
    api: Arc<A>,
    settings: Settings,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    loads: HashMap<JobKey, Load>,
    /// The models tierd holds in this tier, with their engine ids.
    held: HashMap<String, String>,
    /// Models with a load or unload in flight: the observer's views of
    /// them are not news.
    busy: HashSet<String>,
    /// When each model's last command ended: a view taken before is stale
    /// for it.
    settled: HashMap<String, Instant>,
    health: Health,
    /// Footprints the engine reported, by model.
    footprints: HashMap<String, u64>,
    /// The engine's loaded set at the last look (tierd names).
    engine_set: Vec<String>,
    /// The same, as the engine's ids (for `tier_status`).
    engine_ids: Vec<String>,
    stop: Arc<AtomicBool>,
    last_call: f64,
}

impl<A: EngineApi> EngineTier<A> {
    /// Starts the tier and its observer thread.
    pub fn start(api: A, settings: Settings) -> EngineTier<A> {
        let (tx, rx) = channel();
        let api = Arc::new(api);
        let stop = Arc::new(AtomicBool::new(false));
        let (obs_api, obs_tx, obs_stop, poll) = (Arc::clone(&api), tx.clone(), Arc::clone(&stop), settings.poll);
        let spawned = std::thread::Builder::new().name(format!("tierd-{}", api.kind())).spawn(move || {
            while !obs_stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let result = obs_api.observe();
                if obs_tx.send(Msg::Observed { started, result }).is_err() {
                    break;
                }
                let end = Instant::now() + poll;
                while Instant::now() < end && !obs_stop.load(Ordering::SeqCst) {
                    std::thread::sleep(poll.min(Duration::from_millis(10)));
                }
            }
        });
        let health = match spawned {
            Ok(_) => Health::default(),
            Err(e) => Health {
                up: false,
                last_error: Some(format!("cannot start the observer thread: {e}")),
                ..Health::default()
            },
        };
        EngineTier {
            api,
            settings,
            tx,
            rx,
            loads: HashMap::new(),
            held: HashMap::new(),
            busy: HashSet::new(),
            settled: HashMap::new(),
            health,
            footprints: HashMap::new(),
            engine_set: Vec::new(),
            engine_ids: Vec::new(),
            stop,
            last_call: 0.0,
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    fn down_reason(&self) -> String {
        format!(
            "{} engine at {} is not answering: {}",
            self.api.kind(),
            self.api.location(),
            self.health.last_error.as_deref().unwrap_or("unknown error")
        )
    }

    fn stale(&self, model: &str, started: Instant) -> bool {
        self.busy.contains(model) || self.settled.get(model).is_some_and(|t| started < *t)
    }

    fn observed(&mut self, started: Instant, view: View, events: &mut Vec<DriverEvent>) {
        let was_down = !self.health.up;
        self.health.up = true;
        self.health.consecutive_failures = 0;
        self.health.last_success = Some(unix_now());
        if was_down {
            tracing::info!(engine = %self.api.location(), "engine tier: the engine answers");
        }
        let at = self.last_call;
        let mut now_set = Vec::new();
        for (id, bytes) in &view.loaded {
            for name in self.api.model_names(id) {
                now_set.push(name.clone());
                if !self.engine_ids.contains(id) {
                    self.engine_ids.push(id.clone());
                }
                if let Some(b) = bytes {
                    self.footprints.insert(name.clone(), *b);
                }
                if self.stale(&name, started) {
                    continue;
                }
                self.held.entry(name.clone()).or_insert_with(|| id.clone());
                // Idempotent: the engine books it here unless it already is
                // (or a move of it is under way).
                events.push(DriverEvent {
                    at,
                    event: MoveEvent::EngineMoved {
                        model: name,
                        to: self.settings.index,
                        bytes: *bytes,
                    },
                });
            }
        }
        let dropped_to = if self.api.dropped_to_ram() {
            (self.settings.index + 1).min(self.settings.tier_count.saturating_sub(1))
        } else {
            self.settings.tier_count.saturating_sub(1)
        };
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|m| !now_set.contains(m) && !self.stale(m, started))
            .cloned()
            .collect();
        for model in gone {
            self.held.remove(&model);
            self.footprints.remove(&model);
            events.push(DriverEvent {
                at,
                event: MoveEvent::EngineMoved {
                    model,
                    to: dropped_to,
                    bytes: None,
                },
            });
        }
        for id in &view.accessed {
            for name in self.api.model_names(id) {
                events.push(DriverEvent {
                    at,
                    event: MoveEvent::EngineAccess { model: name },
                });
            }
        }
        self.engine_ids.retain(|id| view.loaded.iter().any(|(i, _)| i == id));
        self.engine_ids.sort();
        self.engine_set = now_set;
    }
}

impl<A: EngineApi> Drop for EngineTier<A> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in self.loads.values() {
            l.cancel.store(true, Ordering::SeqCst);
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl<A: EngineApi> TierDriver for EngineTier<A> {
    fn kind(&self) -> &'static str {
        self.api.kind()
    }

    fn capacity(&self) -> Capacity {
        if self.health.up {
            Capacity::Unbounded
        } else {
            Capacity::Unavailable(self.down_reason())
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.last_call = now;
        if !self.health.up {
            return Err(self.down_reason());
        }
        let model = order.model.to_string();
        let cancel = Arc::new(AtomicBool::new(false));
        let (api, tx, flag, timeout, job) = (
            Arc::clone(&self.api),
            self.tx.clone(),
            Arc::clone(&cancel),
            self.settings.load_timeout,
            order.job,
        );
        let m = model.clone();
        std::thread::Builder::new()
            .name(format!("tierd-{}-load", self.api.kind()))
            .spawn(move || {
                let result = api.resolve(&m).and_then(|id| {
                    let bytes = api.load(&id, timeout, &|| flag.load(Ordering::SeqCst))?;
                    Ok((id, bytes))
                });
                let _ = tx.send(Msg::Loaded {
                    job,
                    model: m,
                    result,
                    at: Instant::now(),
                });
            })
            .map_err(|e| format!("cannot start the load thread: {e}"))?;
        self.busy.insert(model);
        self.loads.insert(
            job,
            Load {
                started: Instant::now(),
                expected_s: order.expected_s,
                cancel,
            },
        );
        Ok(())
    }

    fn cancel_move(&mut self, now: f64, job: JobKey) {
        self.last_call = now;
        if let Some(l) = self.loads.get(&job) {
            l.cancel.store(true, Ordering::SeqCst);
        }
    }

    fn progress(&self, _now: f64, job: JobKey) -> f64 {
        self.loads.get(&job).map_or(0.0, |l| {
            let expected = l.expected_s.max(0.1);
            (l.started.elapsed().as_secs_f64() / expected).min(0.95)
        })
    }

    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        self.last_call = now;
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Loaded { job, model, result, at } => {
                    let Some(load) = self.loads.remove(&job) else { continue };
                    self.busy.remove(&model);
                    self.settled.insert(model.clone(), at);
                    match result {
                        Ok((id, bytes)) if load.cancel.load(Ordering::SeqCst) => {
                            // Too late to cancel the load: undo it.
                            self.release_to(&model, None, self.settings.tier_count.saturating_sub(1));
                            let _ = (id, bytes);
                            events.push(DriverEvent {
                                at: now,
                                event: MoveEvent::Cancelled { job },
                            });
                        }
                        Ok((id, bytes)) => {
                            self.held.insert(model.clone(), id);
                            if let Some(b) = bytes {
                                self.footprints.insert(model, b);
                            }
                            events.push(DriverEvent {
                                at: now,
                                event: MoveEvent::Finished {
                                    job,
                                    checksums: None,
                                    mtimes: None,
                                },
                            });
                        }
                        Err(_) if load.cancel.load(Ordering::SeqCst) => {
                            events.push(DriverEvent {
                                at: now,
                                event: MoveEvent::Cancelled { job },
                            });
                        }
                        Err(message) => {
                            events.push(DriverEvent {
                                at: now,
                                event: MoveEvent::Failed {
                                    job,
                                    message,
                                    retryable: false,
                                },
                            });
                        }
                    }
                }
                Msg::Unloaded { model, result, at } => {
                    self.busy.remove(&model);
                    self.settled.insert(model.clone(), at);
                    if let Err(e) = result {
                        tracing::warn!(model = %model, error = %e, "engine tier: unload failed");
                        self.health.last_error = Some(e);
                    }
                }
                Msg::Observed { started, result: Ok(view) } => self.observed(started, view, events),
                Msg::Observed { result: Err(e), .. } => {
                    if self.health.up {
                        tracing::warn!(engine = %self.api.location(), error = %e, "engine tier: the engine does not answer");
                    }
                    self.health.up = false;
                    self.health.consecutive_failures += 1;
                    self.health.last_error = Some(e);
                }
            }
        }
    }

    fn next_event_time(&self) -> Option<f64> {
        Some(self.last_call + POLL_EVERY_S)
    }

    fn release_to(&mut self, model: &str, _files: Option<&ModelFiles>, to: usize) {
        let Some(id) = self.held.remove(model) else { return };
        self.footprints.remove(model);
        let to_ram = to == self.settings.index + 1 && to + 1 < self.settings.tier_count;
        self.busy.insert(model.to_string());
        let (api, tx, m) = (Arc::clone(&self.api), self.tx.clone(), model.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("tierd-{}-unload", self.api.kind()))
            .spawn(move || {
                let result = api.unload(&id, to_ram);
                let _ = tx.send(Msg::Unloaded {
                    model: m,
                    result,
                    at: Instant::now(),
                });
            });
        if let Err(e) = spawned {
            self.busy.remove(model);
            tracing::warn!(model, error = %e, "engine tier: cannot start the unload thread");
        }
    }

    fn release(&mut self, model: &str, files: Option<&ModelFiles>) {
        let last = self.settings.tier_count.saturating_sub(1);
        self.release_to(model, files, last);
    }

    fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        d.insert("engine".into(), json!(self.api.kind()));
        d.insert("engine_url".into(), json!(self.api.location()));
        d.insert(
            "health".into(),
            json!({
                "up": self.health.up,
                "last_error": self.health.last_error,
                "consecutive_failures": self.health.consecutive_failures,
                "last_success": self.health.last_success,
            }),
        );
        d.insert("engine_loaded".into(), json!(self.engine_ids));
        let fp: Map<String, Value> = self.footprints.iter().map(|(k, v)| (k.clone(), json!(*v as f64 / 1e9))).collect();
        d.insert("footprint_gb".into(), Value::Object(fp));
        if !self.health.up {
            d.insert("unavailable_reason".into(), json!(self.down_reason()));
        }
        d
    }
}

/// Shared by the `ollama` and `vllm` openers: the engine-tier settings of a
/// tier's configuration.
pub fn settings(ctx: &crate::drivers::machine::OpenContext, tier: &crate::config::TierConfig) -> Result<Settings, String> {
    let poll_s = tier.poll_s.unwrap_or(1.0);
    if !(poll_s.is_finite() && (0.01..=3600.0).contains(&poll_s)) {
        return Err(format!("poll_s {poll_s} must be between 0.01 and 3600"));
    }
    let timeout_s = tier.load_timeout_s.unwrap_or(300.0);
    if !(timeout_s.is_finite() && (0.01..=86_400.0).contains(&timeout_s)) {
        return Err(format!("load_timeout_s {timeout_s} must be between 0.01 and 86400"));
    }
    Ok(Settings {
        index: ctx.tier_index,
        tier_count: ctx.tier_count,
        poll: Duration::from_secs_f64(poll_s),
        load_timeout: Duration::from_secs_f64(timeout_s),
    })
}

/// A lock that survives a panicked holder.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
