//! What the engine makes of engine tiers' news ([`crate::drivers::engine`]):
//! loads and unloads the engine did on its own, its activity, and each
//! load's wall time.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::engine::Engine;
use crate::drivers::MoveEvent;

/// Most load times kept per model and residency (the p95 is over these).
pub const LOAD_SAMPLES: usize = 100;

/// Load times of one model (all loads, or those of one residency).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadTimes {
    pub count: u64,
    pub last: Option<f64>,
    pub mean: Option<f64>,
    pub p95: Option<f64>,
    /// The most recent samples, oldest first (not on the wire).
    #[serde(skip)]
    samples: Vec<f64>,
    #[serde(skip)]
    sum: f64,
}

impl LoadTimes {
    pub fn add(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        self.last = Some(seconds);
        self.mean = Some(self.sum / self.count as f64);
        if self.samples.len() == LOAD_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(seconds);
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample at or above 95% of them.
        let rank = ((sorted.len() as f64) * 0.95).ceil() as usize;
        self.p95 = sorted.get(rank.saturating_sub(1)).copied();
    }
}

/// A model's `load_time_s`: every load into an engine tier, and split by
/// whether its files were all RAM-resident when the load started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadStats {
    #[serde(flatten)]
    pub all: LoadTimes,
    pub resident: LoadTimes,
    pub not_resident: LoadTimes,
    /// The footprint the last load measured, bytes.
    pub footprint_bytes: Option<u64>,
}

/// Load statistics by model name (they outlive a model's moves).
pub type LoadBook = HashMap<Arc<str>, LoadStats>;

impl Engine {
    /// Applies an engine tier's event (the driver's tier stamped on it).
    pub(crate) fn engine_event(&mut self, now: f64, event: MoveEvent) {
        match event {
            MoveEvent::LoadTimed {
                model,
                seconds,
                resident,
                footprint,
                ..
            } => {
                let Some(id) = self.state.model_id(&model) else { return };
                let Some(name) = self.state.model(id).map(|m| m.name.clone()) else {
                    return;
                };
                let stats = self.load_stats.entry(name).or_default();
                stats.all.add(seconds);
                if resident {
                    stats.resident.add(seconds);
                } else {
                    stats.not_resident.add(seconds);
                }
                stats.footprint_bytes = Some(footprint);
            }
            MoveEvent::EngineActivity { model, .. } => {
                if let Some(id) = self.state.model_id(&model) {
                    // An access like a client's: usage and the policy.
                    let _ = self.access_id(now, id);
                }
            }
            MoveEvent::EngineLoaded { tier, id, path, .. } => self.engine_loaded(now, tier, &id, path.as_deref()),
            MoveEvent::EngineUnloaded { tier, model, .. } => self.engine_unloaded(now, tier, &model),
            other => tracing::info!(event = ?other, "engine tier event"),
        }
    }

    /// A model's load statistics, where it was ever loaded in an engine.
    pub fn load_stats(&self, model: &str) -> Option<&LoadStats> {
        self.load_stats.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_times_keep_last_mean_and_p95() {
        let mut t = LoadTimes::default();
        for s in 1..=20 {
            t.add(s as f64);
        }
        assert_eq!(t.count, 20);
        assert_eq!(t.last, Some(20.0));
        assert_eq!(t.mean, Some(10.5));
        assert_eq!(t.p95, Some(19.0));
    }
}
