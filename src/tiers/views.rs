//! The engine's typed views: what it answers about tiers, models, jobs and
//! its counters. The request modules put them on the wire (and the CLI reads
//! them back with the same types); the engine builds no JSON.
//!
//! `tier_status` is what monitoring clients poll, so [`TierStatusView`]
//! serializes straight to bytes, without a `serde_json::Value` tree.

use std::borrow::Cow;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::bytes_to_gb;
use crate::error::EngineError;

use super::engine::Engine;
use super::histogram::{Histogram, LOAD_BUCKETS_S, MOVE_BUCKETS_S};
use super::job::{Job, JobKey, JobStatus, Operation, Origin, Priority};
use super::state::{Model, round6};

// ------------------------------------------------------------------ tiers

/// One tier's line of `tier_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierView {
    pub used_gb: f64,
    /// What the hardware could still take; `null` when unbounded or unavailable.
    pub available_gb: Option<f64>,
    pub limit_gb: Option<f64>,
    pub utilization: Option<f64>,
    pub models: usize,
    pub access_s_per_gb: f64,
    pub reserved_gb: f64,
    pub incoming_gb: f64,
    /// RAM the engine tiers above hold outside this tier's models (their
    /// pinned files, engines' CPU copies), counted against its limit; on
    /// `pagecache` tiers below an engine tier only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_held_gb: Option<f64>,
    pub pressure: Cow<'static, str>,
    pub max_models: Option<usize>,
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// Recent faults noticed in the tier while running, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultView>,
    /// The driver's own facts about the tier (`hardware_gb`, `driver`, ...).
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// A fault noticed while running (see [`super::faults`]): a copy or an
/// origin that changed or vanished, or a copy found corrupt, and what
/// tierd did about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultView {
    /// Engine time it was noticed.
    pub at: f64,
    pub model_name: String,
    /// The tier that served the model.
    pub tier: String,
    /// `copy_changed`, `copy_corrupt`, `origin_changed`, `origin_gone` or
    /// `available_again`.
    pub kind: String,
    pub reason: String,
    /// What tierd did: the model fell back, became unavailable, ...
    pub action: String,
}

/// The whole `tier_status` answer, tiers fastest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierStatusView<'a> {
    pub status: Cow<'static, str>,
    #[serde(serialize_with = "tiers_as_map", deserialize_with = "tiers_from_map")]
    pub tiers: Vec<(Cow<'a, str>, TierView)>,
    pub tier_order: Vec<Cow<'a, str>>,
}

impl TierStatusView<'_> {
    /// The line of tier `name`.
    pub fn tier(&self, name: &str) -> Option<&TierView> {
        self.tiers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

fn tiers_as_map<S: Serializer>(tiers: &[(Cow<'_, str>, TierView)], s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(tiers.len()))?;
    for (name, view) in tiers {
        m.serialize_entry(name, view)?;
    }
    m.end()
}

/// Reads the `tiers` object in the order it was written.
fn tiers_from_map<'de, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<(Cow<'a, str>, TierView)>, D::Error> {
    struct InOrder<'a>(std::marker::PhantomData<&'a ()>);
    impl<'de, 'a> Visitor<'de> for InOrder<'a> {
        type Value = Vec<(Cow<'a, str>, TierView)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of tiers")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, TierView>()? {
                out.push((Cow::Owned(k), v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(InOrder(std::marker::PhantomData))
}

// ------------------------------------------------------------------- jobs

/// One run of a job, as the wire shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub outcome: Option<String>,
}

/// A job as `tier_job_status`, `list_jobs` and the history show it (seed
/// 001's fields and tierd's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub model_name: String,
    pub operation: Operation,
    pub source_tier: Option<String>,
    pub target_tier: Option<String>,
    pub progress: f64,
    pub status: JobStatus,
    pub elapsed_time: f64,
    pub estimated_time: f64,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub size_gb: f64,
    pub priority: Priority,
    pub origin: Origin,
    pub attempt: u32,
    pub max_retries: u32,
    pub depends_on: Vec<String>,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    pub attempts: Vec<AttemptView>,
    pub reason: Option<String>,
    /// A queued job's place in line (0 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// When a queued job is expected to start, engine time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start: Option<f64>,
}

/// Filters of a history query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryFilter {
    pub limit: usize,
    pub status: Option<JobStatus>,
    pub since: Option<f64>,
}

/// Jobs by state, for `queue_status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub pending: usize,
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
}

// ----------------------------------------------------------------- models

/// A model as `list_models` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    pub model_name: String,
    pub size_gb: f64,
    pub tier: String,
    /// `ready`, `queued`, `moving` or `unavailable`.
    pub status: String,
    pub usage: u64,
    pub last_access: Option<f64>,
    pub pinned: bool,
    pub frequency: f64,
    pub temperature: String,
    pub interarrival_mean_s: Option<f64>,
    pub interarrival_stddev_s: Option<f64>,
    pub first_access: Option<f64>,
    pub load_time_s: f64,
    pub job_id: Option<String>,
    pub unavailable_reason: Option<String>,
    pub path: Option<std::path::PathBuf>,
    /// The model's stable serve path, leading to its fastest complete copy
    /// (a real machine; see `drivers::serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_path: Option<std::path::PathBuf>,
    /// Measured share of the model's bytes resident in its tier, where the
    /// tier's driver measures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_fraction: Option<f64>,
    /// The last fault noticed about the model while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultView>,
}

/// A model as `model_info` shows it: the list view and its profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfoView {
    #[serde(flatten)]
    pub model: ModelView,
    pub status_code: String,
    pub by_hour: Vec<u32>,
    pub by_weekday: Vec<u32>,
    pub registered_at: f64,
    /// Measured loads into engine tiers: last, mean, p95, count, and split
    /// by whether the files were RAM-resident at the load's start (absent
    /// for a model never loaded in an engine). Not `load_time_s`: that key
    /// is the seed's estimated load seconds from the model's tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_load_time_s: Option<super::engines::LoadStats>,
}

// ---------------------------------------------------------------- metrics

/// Counters of the engine since it started.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub accesses: u64,
    pub load_seconds: f64,
    pub hits_by_tier: Vec<u64>,
    pub moves_started: u64,
    pub moves_succeeded: u64,
    pub moves_failed: u64,
    pub moves_cancelled: u64,
    pub retries: u64,
    /// Bytes of the moves that succeeded, in all: a `u128`, which no run
    /// can fill (a `u64` would after some 18,000 moves of 1 PB models).
    pub bytes_moved: u128,
    pub jobs_submitted: u64,
    /// Accesses that found their model's own promotion queued or running.
    pub accesses_during_promotion: u64,
    /// What those accesses paid beyond the cost of the tier the promotion
    /// was taking their model to: the load seconds the move's time cost
    /// (an instant move would have saved them).
    pub promotion_wait_s: f64,
    /// Ended moves by (source tier, target tier, [`status_slot`]): the
    /// `tierd_moves_total{from,to,result}` counter. At most tiers² × 3 keys.
    pub moves_by_route: std::collections::BTreeMap<(usize, usize, usize), u64>,
    /// How long ended moves ran (first start to end, retries included), by
    /// target tier, then final status (index [`status_slot`]). A move into
    /// an engine tier is the engine loading the model: its duration is the
    /// engine's load duration.
    pub move_duration: Vec<[Histogram; 3]>,
    /// Load seconds of each access, by the tier that served it.
    pub load_time: Vec<Histogram>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            accesses: 0,
            load_seconds: 0.0,
            hits_by_tier: Vec::new(),
            moves_started: 0,
            moves_succeeded: 0,
            moves_failed: 0,
            moves_cancelled: 0,
            retries: 0,
            bytes_moved: 0,
            jobs_submitted: 0,
            accesses_during_promotion: 0,
            promotion_wait_s: 0.0,
            moves_by_route: std::collections::BTreeMap::new(),
            move_duration: Vec::new(),
            load_time: Vec::new(),
        }
    }
}

impl Metrics {
    /// Zeroed counters for an engine of `tiers` tiers.
    pub fn for_tiers(tiers: usize) -> Metrics {
        Metrics {
            hits_by_tier: vec![0; tiers],
            move_duration: (0..tiers)
                .map(|_| std::array::from_fn(|_| Histogram::new(MOVE_BUCKETS_S)))
                .collect(),
            load_time: (0..tiers).map(|_| Histogram::new(LOAD_BUCKETS_S)).collect(),
            ..Metrics::default()
        }
    }
}

/// The final statuses a move ends in, in the order of
/// [`Metrics::move_duration`].
pub const END_STATUSES: [JobStatus; 3] = [JobStatus::Success, JobStatus::Failed, JobStatus::Cancelled];

/// The slot of `status` in [`Metrics::move_duration`] (anything not a
/// success or a cancellation ended as a failure).
pub fn status_slot(status: JobStatus) -> usize {
    match status {
        JobStatus::Success => 0,
        JobStatus::Cancelled => 2,
        _ => 1,
    }
}

/// `metrics` as the wire shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsView {
    pub accesses: u64,
    pub load_seconds: f64,
    pub accesses_during_promotion: u64,
    pub promotion_wait_s: f64,
    pub hits_by_tier: std::collections::BTreeMap<String, u64>,
    pub moves_started: u64,
    pub moves_succeeded: u64,
    pub moves_failed: u64,
    pub moves_cancelled: u64,
    pub move_success_rate: Option<f64>,
    pub retries: u64,
    pub jobs_submitted: u64,
    pub bytes_moved_gb: f64,
    pub tier_utilization: std::collections::BTreeMap<String, Option<f64>>,
    pub jobs_queued: usize,
    pub jobs_running: usize,
    pub models: usize,
    pub uptime_s: f64,
    /// The measured throughput of real moves per pair of driver kinds, the
    /// base of their `estimated_time` (none until a move was measured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub move_rates: Vec<super::rates::MoveRate>,
    /// Engine-tier load times by model (`engine_load_time_s` of
    /// `model_info`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub engine_load_time_s: std::collections::BTreeMap<String, super::engines::LoadStats>,
}

// ------------------------------------------------------------------ plans

/// A planned or started move of an `auto_optimize` or policy decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub model_name: String,
    pub operation: Operation,
    pub source_tier: String,
    pub target_tier: String,
    pub reason: String,
    pub usage: u64,
    pub job_id: Option<String>,
    /// Why the step was not started, when it was not.
    pub skipped: Option<String>,
}

impl PlanStep {
    /// The seed's sentence: "Promoting gpt2-large to RAM (usage: 12)".
    pub fn sentence(&self) -> String {
        let verb = match self.operation {
            Operation::Promote => "Promoting",
            Operation::Demote => "Demoting",
        };
        // The seed's form exactly; the policy's own reason is in the plan.
        format!(
            "{verb} {} to {} (usage: {})",
            self.model_name,
            self.target_tier.to_uppercase(),
            self.usage
        )
    }
}

/// An accepted move.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveStarted {
    /// The engine's key of the move (job ids are empty on the simulator's
    /// hot path, keys never are).
    pub job_key: JobKey,
    pub job_id: String,
    pub model_name: String,
    pub operation: Operation,
    pub source_tier: String,
    pub target_tier: String,
    /// Demotions started to make room, by job id.
    pub make_room_jobs: Vec<String>,
}

// ------------------------------------------------------------ the queries

impl Engine {
    /// `tier_status`: every tier's books, hardware room and driver facts.
    pub fn tier_status(&self) -> TierStatusView<'_> {
        let state = self.state();
        let tiers = state
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let hw = self.hardware_available(i);
                let view = TierView {
                    used_gb: bytes_to_gb(t.used),
                    available_gb: match &hw {
                        Ok(Some(a)) => Some(bytes_to_gb(*a)),
                        _ => None,
                    },
                    limit_gb: t.limit.map(bytes_to_gb),
                    utilization: t.limit.map(|_| round6(t.utilization())),
                    models: t.models,
                    access_s_per_gb: t.access_s_per_gb,
                    reserved_gb: bytes_to_gb(t.reserved),
                    incoming_gb: bytes_to_gb(t.incoming),
                    engine_held_gb: (self.has_engine_tiers && self.driver(i).kind() == "pagecache").then(|| bytes_to_gb(t.engine_held)),
                    pressure: Cow::Borrowed(t.pressure(&state.pressure_cfg)),
                    max_models: t.max_models,
                    available: hw.is_ok(),
                    unavailable_reason: hw.err().map(|e| e.to_string()),
                    faults: self.fault_log.get(i).map(|l| l.iter().cloned().collect()).unwrap_or_default(),
                    details: self.driver(i).details(),
                };
                (Cow::Borrowed(t.name.as_str()), view)
            })
            .collect();
        TierStatusView {
            status: Cow::Borrowed("success"),
            tiers,
            tier_order: state.tiers.iter().map(|t| Cow::Borrowed(t.name.as_str())).collect(),
        }
    }

    /// The queued jobs in start order: priority, then submission.
    pub(crate) fn queued_in_order(&self) -> Vec<(Priority, JobKey)> {
        let mut order: Vec<(Priority, JobKey)> = self
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .map(|j| (j.priority, j.key))
            .collect();
        order.sort_unstable();
        order
    }

    /// Position in line and estimated start of a queued job; `order` is
    /// [`Engine::queued_in_order`].
    fn queue_position(&self, now: f64, key: JobKey, order: &[(Priority, JobKey)]) -> Option<(usize, f64)> {
        let job = self.jobs.get(&key)?;
        if job.status != JobStatus::Queued {
            return None;
        }
        let pos = order.partition_point(|e| *e < (job.priority, key));
        // Each slot frees when its running job ends; queued jobs ahead take
        // their turn on the earliest free slot.
        let mut slots: Vec<f64> = self
            .running
            .iter()
            .filter_map(|k| self.jobs.get(k))
            .map(|j| j.started_at.unwrap_or(now) + j.estimated_s)
            .map(|t| t.max(now))
            .collect();
        slots.resize(self.max_concurrent.max(slots.len()), now);
        slots.sort_by(f64::total_cmp);
        for (_, k) in &order[..pos] {
            if let Some(j) = self.jobs.get(k) {
                slots[0] = slots[0].max(j.not_before) + j.estimated_s;
                slots.sort_by(f64::total_cmp);
            }
        }
        Some((pos, slots[0].max(job.not_before)))
    }

    /// The view of a live job; `order` is [`Engine::queued_in_order`] (only
    /// read for a queued job).
    fn job_view_in(&self, now: f64, job: &Job, order: &[(Priority, JobKey)]) -> JobView {
        let progress = if job.status == JobStatus::Running {
            self.driver(job.to).progress(now, job.key).clamp(0.0, 1.0).max(job.progress)
        } else {
            job.progress
        };
        let elapsed = match (job.started_at, job.ended_at) {
            (Some(s), Some(e)) => e - s,
            (Some(s), None) => now - s,
            _ => 0.0,
        };
        let names = &self.state().tiers;
        let position = self.queue_position(now, job.key, order);
        JobView {
            job_id: job.id.clone(),
            model_name: job.model_name.to_string(),
            operation: job.operation,
            source_tier: names.get(job.from).map(|t| t.name.clone()),
            target_tier: names.get(job.to).map(|t| t.name.clone()),
            progress: round6(progress),
            status: job.wire_status(),
            elapsed_time: round6(elapsed.max(0.0)),
            estimated_time: round6(job.estimated_s),
            error: job.error.as_ref().map(|(_, m)| m.clone()),
            error_code: job.error.as_ref().map(|(c, _)| c.clone()),
            size_gb: bytes_to_gb(job.bytes),
            priority: job.priority,
            origin: job.origin,
            attempt: job.attempt,
            max_retries: job.max_retries,
            depends_on: job
                .depends_on
                .iter()
                .filter_map(|k| self.jobs.get(k).map(|j| j.id.clone()))
                .collect(),
            created_at: job.created_at,
            started_at: job.started_at,
            ended_at: job.ended_at,
            attempts: job
                .attempts
                .iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    started_at: a.started_at,
                    ended_at: a.ended_at,
                    outcome: a.outcome.as_ref().map(|o| o.to_string()),
                })
                .collect(),
            reason: job.reason.clone(),
            position: position.map(|p| p.0),
            estimated_start: position.map(|p| round6(p.1)),
        }
    }

    pub(crate) fn job_view(&self, now: f64, key: JobKey) -> Option<JobView> {
        let job = self.jobs.get(&key)?;
        let order = if job.status == JobStatus::Queued {
            self.queued_in_order()
        } else {
            Vec::new()
        };
        Some(self.job_view_in(now, job, &order))
    }

    /// `tier_job_status`: a live job, or an ended one of an earlier run.
    pub fn job(&self, now: f64, id: &str) -> Result<JobView, EngineError> {
        match self.job_ids.get(id) {
            Some(&key) => self
                .job_view(now, key)
                .ok_or_else(|| EngineError::JobNotFound { job_id: id.to_string() }),
            None => self
                .archive
                .iter()
                .find(|j| j.job_id == id)
                .cloned()
                .ok_or_else(|| EngineError::JobNotFound { job_id: id.to_string() }),
        }
    }

    /// Whether job `id` has ended (for `wait`); `None` when unknown.
    pub fn job_ended(&self, id: &str) -> Option<bool> {
        self.job_ids.get(id).and_then(|k| self.jobs.get(k)).map(|j| j.status.is_terminal())
    }

    /// `list_jobs`: running, then queued in start order, then ended, newest first.
    pub fn jobs(&self, now: f64) -> Vec<JobView> {
        let order = self.queued_in_order();
        self.running
            .iter()
            .copied()
            .chain(order.iter().map(|(_, k)| *k))
            .chain(self.ended.iter().rev().copied())
            .filter_map(|k| self.jobs.get(&k))
            .map(|j| self.job_view_in(now, j, &order))
            .collect()
    }

    /// Jobs matching `filter`, newest first: this run's, then earlier runs'.
    pub fn history(&self, now: f64, filter: &HistoryFilter) -> Vec<JobView> {
        let order = self.queued_in_order();
        let mut keys: Vec<JobKey> = self.jobs.keys().collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let status_ok = |s: JobStatus| filter.status.is_none_or(|f| f == s);
        let since_ok = |t: f64| filter.since.is_none_or(|s| t >= s);
        keys.into_iter()
            .filter_map(|k| self.jobs.get(&k))
            .filter(|j| status_ok(j.wire_status()) && since_ok(j.created_at))
            .take(filter.limit)
            .map(|j| self.job_view_in(now, j, &order))
            .chain(
                self.archive
                    .iter()
                    .filter(|j| status_ok(j.status) && since_ok(j.created_at))
                    .cloned(),
            )
            .take(filter.limit)
            .collect()
    }

    /// Counts of jobs by state.
    pub fn queue_counts(&self) -> QueueCounts {
        let (mut completed, mut failed) = (0, 0);
        for k in &self.ended {
            match self.jobs.get(k).map(|j| j.status) {
                Some(JobStatus::Success) => completed += 1,
                Some(JobStatus::Failed) | Some(JobStatus::Cancelled) => failed += 1,
                _ => {}
            }
        }
        QueueCounts {
            pending: self.queued,
            running: self.running.len(),
            completed,
            failed,
        }
    }

    fn model_view(&self, now: f64, m: &Model) -> ModelView {
        let (job_id, job_status) = match m.job.and_then(|k| self.jobs.get(&k)) {
            Some(j) => (Some(j.id.clone()), Some(j.status)),
            None => (None, None),
        };
        let status = if m.unavailable.is_some() {
            "unavailable"
        } else {
            match job_status {
                Some(JobStatus::Running) => "moving",
                Some(JobStatus::Queued) => "queued",
                _ => "ready",
            }
        };
        let state = self.state();
        let u = &m.usage;
        ModelView {
            model_name: m.name.to_string(),
            size_gb: bytes_to_gb(m.bytes),
            tier: state.tiers[m.tier].name.clone(),
            status: status.to_string(),
            usage: u.count,
            last_access: u.last_access,
            pinned: m.pinned,
            frequency: round6(u.frequency(now, &state.usage_cfg)),
            temperature: u.class(now, &state.usage_cfg).to_string(),
            interarrival_mean_s: (u.gaps > 0).then(|| round6(u.gap_mean)),
            interarrival_stddev_s: (u.gaps > 1).then(|| round6(u.gap_stddev())),
            first_access: u.first_access,
            load_time_s: round6(state.tiers[m.tier].load_seconds(m.bytes)),
            job_id,
            unavailable_reason: m.unavailable.clone(),
            path: m.path.clone(),
            serve_path: self.serve_path(&m.name),
            resident_fraction: self.driver(m.tier).resident_fraction(&m.name, m.files.as_deref()).map(round6),
            fault: self.state.model_id(&m.name).and_then(|id| self.model_faults.get(&id)).cloned(),
        }
    }

    /// `list_models`, optionally for one tier, sorted by name.
    pub fn models(&self, now: f64, tier: Option<&str>) -> Result<Vec<ModelView>, EngineError> {
        let filter = tier.map(|t| self.tier_by_name(t)).transpose()?;
        let mut models: Vec<&Model> = self
            .state()
            .iter_models()
            .map(|(_, m)| m)
            .filter(|m| filter.is_none_or(|t| m.tier == t))
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models.into_iter().map(|m| self.model_view(now, m)).collect())
    }

    /// `model_info`.
    pub fn model(&self, now: f64, name: &str) -> Result<ModelInfoView, EngineError> {
        let id = self.model_by_name(name)?;
        let m = self
            .state()
            .model(id)
            .ok_or_else(|| EngineError::ModelNotFound { model: name.to_string() })?;
        Ok(ModelInfoView {
            model: self.model_view(now, m),
            status_code: "success".into(),
            by_hour: m.usage.by_hour.to_vec(),
            by_weekday: m.usage.by_weekday.to_vec(),
            registered_at: m.registered_at,
            engine_load_time_s: self.load_stats.get(&*m.name).cloned(),
        })
    }

    /// `metrics`.
    pub fn metrics_view(&self, now: f64) -> MetricsView {
        let m = self.metrics();
        let state = self.state();
        let ended = m.moves_succeeded + m.moves_failed;
        MetricsView {
            accesses: m.accesses,
            load_seconds: round6(m.load_seconds),
            accesses_during_promotion: m.accesses_during_promotion,
            promotion_wait_s: round6(m.promotion_wait_s),
            hits_by_tier: state
                .tiers
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), m.hits_by_tier.get(i).copied().unwrap_or(0)))
                .collect(),
            moves_started: m.moves_started,
            moves_succeeded: m.moves_succeeded,
            moves_failed: m.moves_failed,
            moves_cancelled: m.moves_cancelled,
            move_success_rate: (ended > 0).then(|| round6(m.moves_succeeded as f64 / ended as f64)),
            retries: m.retries,
            jobs_submitted: m.jobs_submitted,
            bytes_moved_gb: m.bytes_moved as f64 / crate::config::BYTES_PER_GB,
            tier_utilization: state
                .tiers
                .iter()
                .map(|t| (t.name.clone(), t.limit.map(|_| round6(t.utilization()))))
                .collect(),
            jobs_queued: self.queued,
            jobs_running: self.running.len(),
            models: state.by_name.len(),
            uptime_s: round6(now - self.started_at),
            move_rates: self.move_rates(),
            engine_load_time_s: self.load_stats.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }
}
