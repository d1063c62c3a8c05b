//! Typed events for watchers (`{"watch": ...}`): what happened to jobs,
//! models, tiers and engines, collected by the engine while it ticks and
//! applies requests, and taken out by the server after the engine's lock is
//! released ([`Engine::take_events`]) to be fanned out to its watchers.
//! The engine does no I/O for them and keeps none while nobody watches
//! ([`Engine::collect_events`] off: the simulator never pays for them).

use serde::Serialize;

use crate::config::bytes_to_gb;
use crate::drivers::Capacity;

use super::engine::Engine;
use super::job::{JobKey, JobStatus, Operation, Origin, Priority};
use super::state::round6;

/// One event: when (engine seconds) and what.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. The wire names are the variants in snake case (the
/// `event` field); docs/PROTOCOL.md lists every field.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    JobQueued {
        job_id: String,
        model_name: String,
        operation: Operation,
        source_tier: String,
        target_tier: String,
        priority: Priority,
        origin: Origin,
    },
    JobStarted {
        job_id: String,
        model_name: String,
        attempt: u32,
        source_tier: String,
        target_tier: String,
        estimated_s: f64,
    },
    /// A running move's progress, 0-1 (throttled per watcher).
    JobProgress {
        job_id: String,
        model_name: String,
        target_tier: String,
        progress: f64,
    },
    /// Attempt `attempt` failed; the next one starts at `not_before`.
    JobRetried {
        job_id: String,
        model_name: String,
        attempt: u32,
        not_before: f64,
        reason: Option<String>,
    },
    JobEnded {
        job_id: String,
        model_name: String,
        status: JobStatus,
        source_tier: String,
        target_tier: String,
        error_code: Option<String>,
        error: Option<String>,
        /// From the first start to the end (`null`: it never started).
        elapsed_s: Option<f64>,
    },
    /// A model is now served from `tier` (a move committed, or it was
    /// registered there).
    ModelPlaced {
        model_name: String,
        tier: String,
        previous_tier: Option<String>,
    },
    ModelUnavailable {
        model_name: String,
        tier: String,
        reason: String,
    },
    /// A model fell back to its origin tier (its copy changed, went
    /// corrupt or vanished).
    ModelFallback {
        model_name: String,
        from_tier: String,
        to_tier: String,
        /// What happened to the copy or the origin.
        reason: String,
    },
    TierLimitChanged {
        tier: String,
        limit_gb: Option<f64>,
        reserved_gb: f64,
    },
    TierPressureChanged {
        tier: String,
        pressure: &'static str,
        previous: &'static str,
        utilization: f64,
    },
    TierAvailable {
        tier: String,
    },
    TierUnavailable {
        tier: String,
        reason: String,
    },
    /// The inference engine behind an engine tier answers again.
    EngineUp {
        tier: String,
        driver: &'static str,
    },
    EngineDown {
        tier: String,
        driver: &'static str,
        reason: String,
    },
}

/// The groups a watcher subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Jobs,
    Models,
    Tiers,
    Pressure,
    Engines,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Jobs,
        Category::Models,
        Category::Tiers,
        Category::Pressure,
        Category::Engines,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Jobs => "jobs",
            Category::Models => "models",
            Category::Tiers => "tiers",
            Category::Pressure => "pressure",
            Category::Engines => "engines",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl EventKind {
    pub fn category(&self) -> Category {
        match self {
            EventKind::JobQueued { .. }
            | EventKind::JobStarted { .. }
            | EventKind::JobProgress { .. }
            | EventKind::JobRetried { .. }
            | EventKind::JobEnded { .. } => Category::Jobs,
            EventKind::ModelPlaced { .. } | EventKind::ModelUnavailable { .. } | EventKind::ModelFallback { .. } => Category::Models,
            EventKind::TierLimitChanged { .. } | EventKind::TierAvailable { .. } | EventKind::TierUnavailable { .. } => Category::Tiers,
            EventKind::TierPressureChanged { .. } => Category::Pressure,
            EventKind::EngineUp { .. } | EventKind::EngineDown { .. } => Category::Engines,
        }
    }

    /// Progress events are the first a full buffer drops.
    pub fn is_progress(&self) -> bool {
        matches!(self, EventKind::JobProgress { .. })
    }
}

/// Driver kinds built into tierd: a tier of any other kind is an inference
/// engine's (llama-server, Ollama, vLLM), whose availability changes are
/// also `engine_up` / `engine_down`.
pub const BUILT_IN_KINDS: &[&str] = &["sim", "storage", "dir", "pagecache", "gpu"];

/// What the watchers last heard of each tier.
#[derive(Debug, Clone, Default)]
pub(crate) struct TierSeen {
    pub pressure: &'static str,
    /// `None`: available; else why not.
    pub unavailable: Option<String>,
}

impl Engine {
    /// Turns event collection on (someone watches) or off (the buffer is
    /// dropped). Turning it on takes the tiers' pressure and availability
    /// as they are, so only later changes are events.
    pub fn collect_events(&mut self, on: bool) {
        if on == self.outbox.is_some() {
            return;
        }
        if on {
            self.outbox = Some(Vec::new());
            self.tiers_seen = (0..self.state.tiers.len()).map(|i| self.tier_now(i)).collect();
        } else {
            self.outbox = None;
        }
    }

    /// Whether events are being collected.
    #[inline]
    pub fn collecting_events(&self) -> bool {
        self.outbox.is_some()
    }

    /// The events collected since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.outbox.as_mut().map(std::mem::take).unwrap_or_default()
    }

    #[inline]
    pub(crate) fn emit(&mut self, now: f64, kind: EventKind) {
        if let Some(out) = &mut self.outbox {
            out.push(Event { at: now, kind });
        }
    }

    fn tier_name(&self, tier: usize) -> String {
        self.state.tiers.get(tier).map(|t| t.name.clone()).unwrap_or_default()
    }

    /// A job's event of `what` (queued, started, retried), if collecting.
    pub(crate) fn emit_job(&mut self, now: f64, key: JobKey, what: JobStep) {
        if !self.collecting_events() {
            return;
        }
        let Some(j) = self.jobs.get(&key) else { return };
        let (job_id, model_name) = (j.id.clone(), j.model_name.to_string());
        let (source_tier, target_tier) = (self.tier_name(j.from), self.tier_name(j.to));
        let kind = match what {
            JobStep::Queued => EventKind::JobQueued {
                job_id,
                model_name,
                operation: j.operation,
                source_tier,
                target_tier,
                priority: j.priority,
                origin: j.origin,
            },
            JobStep::Started => EventKind::JobStarted {
                job_id,
                model_name,
                attempt: j.attempt,
                source_tier,
                target_tier,
                estimated_s: round6(j.estimated_s),
            },
            JobStep::Retried { not_before } => EventKind::JobRetried {
                job_id,
                model_name,
                attempt: j.attempts.last().map(|a| a.attempt).unwrap_or(j.attempt),
                not_before,
                reason: j.attempts.last().and_then(|a| a.outcome.as_ref()).map(|o| o.to_string()),
            },
            JobStep::Ended => EventKind::JobEnded {
                job_id,
                model_name,
                status: j.status,
                source_tier,
                target_tier,
                error_code: j.error.as_ref().map(|e| e.0.clone()),
                error: j.error.as_ref().map(|e| e.1.clone()),
                elapsed_s: j.started_at.map(|s| round6((now - s).max(0.0))),
            },
        };
        self.emit(now, kind);
    }

    /// Model `model` is now served from `tier` (moved from `previous`).
    pub(crate) fn emit_placed(&mut self, now: f64, model: &str, tier: usize, previous: Option<usize>) {
        if self.collecting_events() {
            let kind = EventKind::ModelPlaced {
                model_name: model.to_string(),
                tier: self.tier_name(tier),
                previous_tier: previous.map(|p| self.tier_name(p)),
            };
            self.emit(now, kind);
        }
    }

    pub(crate) fn emit_unavailable(&mut self, now: f64, model: &str, tier: usize, reason: &str) {
        if self.collecting_events() {
            let kind = EventKind::ModelUnavailable {
                model_name: model.to_string(),
                tier: self.tier_name(tier),
                reason: reason.to_string(),
            };
            self.emit(now, kind);
        }
    }

    pub(crate) fn emit_fallback(&mut self, now: f64, model: &str, from: usize, to: usize, reason: &str) {
        if self.collecting_events() {
            let kind = EventKind::ModelFallback {
                model_name: model.to_string(),
                from_tier: self.tier_name(from),
                to_tier: self.tier_name(to),
                reason: reason.to_string(),
            };
            self.emit(now, kind);
        }
    }

    pub(crate) fn emit_limit(&mut self, now: f64, tier: usize) {
        if let (true, Some(t)) = (self.collecting_events(), self.state.tiers.get(tier)) {
            let kind = EventKind::TierLimitChanged {
                tier: t.name.clone(),
                limit_gb: t.limit.map(bytes_to_gb),
                reserved_gb: bytes_to_gb(t.reserved),
            };
            self.emit(now, kind);
        }
    }

    fn tier_now(&self, tier: usize) -> TierSeen {
        let t = &self.state.tiers[tier];
        TierSeen {
            pressure: t.pressure(&self.state.pressure_cfg),
            unavailable: match self.machine.drivers[tier].capacity() {
                Capacity::Unavailable(reason) => Some(reason),
                _ => None,
            },
        }
    }

    /// Compares each tier's pressure level and availability with what the
    /// watchers last heard, and emits the changes (the server calls it once
    /// per tick while someone watches: it asks each driver its capacity).
    pub fn observe_tiers(&mut self, now: f64) {
        if !self.collecting_events() {
            return;
        }
        for i in 0..self.state.tiers.len() {
            let seen = self.tier_now(i);
            let Some(before) = self.tiers_seen.get(i).cloned() else { continue };
            let name = self.tier_name(i);
            if seen.pressure != before.pressure {
                let kind = EventKind::TierPressureChanged {
                    tier: name.clone(),
                    pressure: seen.pressure,
                    previous: before.pressure,
                    utilization: round6(self.state.tiers[i].utilization()),
                };
                self.emit(now, kind);
            }
            if seen.unavailable != before.unavailable {
                let driver = self.machine.drivers[i].kind();
                let engine = !BUILT_IN_KINDS.contains(&driver);
                match &seen.unavailable {
                    None => {
                        self.emit(now, EventKind::TierAvailable { tier: name.clone() });
                        if engine {
                            self.emit(now, EventKind::EngineUp { tier: name, driver });
                        }
                    }
                    Some(reason) => {
                        self.emit(
                            now,
                            EventKind::TierUnavailable {
                                tier: name.clone(),
                                reason: reason.clone(),
                            },
                        );
                        if engine {
                            self.emit(
                                now,
                                EventKind::EngineDown {
                                    tier: name,
                                    driver,
                                    reason: reason.clone(),
                                },
                            );
                        }
                    }
                }
            }
            self.tiers_seen[i] = seen;
        }
    }

    /// A progress event for each running move.
    pub fn running_progress(&self, now: f64) -> Vec<Event> {
        self.running
            .iter()
            .filter_map(|k| self.jobs.get(k))
            .filter(|j| j.status == JobStatus::Running)
            .map(|j| Event {
                at: now,
                kind: EventKind::JobProgress {
                    job_id: j.id.clone(),
                    model_name: j.model_name.to_string(),
                    target_tier: self.tier_name(j.to),
                    progress: round6(self.machine.drivers[j.to].progress(now, j.key).clamp(0.0, 1.0).max(j.progress)),
                },
            })
            .collect()
    }
}

/// Which job event [`Engine::emit_job`] builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum JobStep {
    Queued,
    Started,
    Retried { not_before: f64 },
    Ended,
}
