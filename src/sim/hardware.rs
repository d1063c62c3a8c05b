//! The simulated machine: tier capacities, moves that take
//! `size x seconds-per-GB` of engine time, and seeded fault injection.
//!
//! Everything happens in the time the engine passes in, so a run is a pure
//! function of its inputs and seed.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use crate::config::{Config, bytes_to_gb, gb_to_bytes};
use crate::tiers::{Backend, Capacity, JobKey, MoveEvent, MoveOrder};

#[derive(Debug, Clone)]
struct SimMove {
    start: f64,
    duration: f64,
    /// When the injected fault strikes, if one does.
    fail_at: Option<f64>,
    cancelled: bool,
}

impl SimMove {
    fn end(&self) -> f64 {
        self.start + self.duration
    }

    /// When this move produces its event.
    fn event_time(&self) -> f64 {
        // A cancel sets `fail_at` to the moment it was asked for.
        self.fail_at.unwrap_or_else(|| self.end())
    }
}

/// Deterministic simulated hardware.
#[derive(Debug, Clone)]
pub struct SimBackend {
    /// Hardware size per tier; `None` = unbounded.
    total: Vec<Option<u64>>,
    /// Bytes taken by the rest of the machine, per tier.
    external: Vec<u64>,
    running: Running,
    /// Scratch of `poll`: the moves due, by time.
    due: Vec<(f64, JobKey)>,
    /// The earliest event time of `running`, kept up to date on each change
    /// (asked on every engine tick, changed once per move).
    next_event: Option<f64>,
    rng: ChaCha8Rng,
    fault_probability: f64,
    /// Moves complete the moment they start (`--moves instant`).
    instant: bool,
}

impl SimBackend {
    /// Hardware as configured: a tier's size is its `hardware_gb`, or its
    /// limit plus reserve when absent; the last tier is unbounded.
    pub fn new(cfg: &Config) -> SimBackend {
        let n = cfg.tiers.len();
        let total = cfg
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i + 1 == n {
                    return t.hardware_gb.map(gb_to_bytes);
                }
                Some(match t.hardware_gb {
                    Some(h) => gb_to_bytes(h),
                    None => gb_to_bytes(t.max_gb.unwrap_or(0.0)) + gb_to_bytes(t.reserved_gb.unwrap_or(0.0)),
                })
            })
            .collect();
        SimBackend {
            total,
            external: vec![0; n],
            running: Running::default(),
            due: Vec::new(),
            next_event: None,
            rng: ChaCha8Rng::seed_from_u64(cfg.sim.seed),
            fault_probability: cfg.sim.fault_probability,
            instant: false,
        }
    }

    /// Moves complete at once instead of taking their modelled time.
    pub fn with_instant_moves(mut self, instant: bool) -> SimBackend {
        self.instant = instant;
        self
    }

    /// Changes the fault probability (tests).
    pub fn set_fault_probability(&mut self, p: f64) {
        self.fault_probability = p.clamp(0.0, 1.0);
    }
}

/// The moves in flight by job key: a sorted vector (there are at most
/// `max_concurrent_tasks`), iterated in key order.
#[derive(Debug, Clone, Default)]
struct Running(Vec<(JobKey, SimMove)>);

impl Running {
    fn insert(&mut self, key: JobKey, m: SimMove) {
        match self.0.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => self.0[i].1 = m,
            Err(i) => self.0.insert(i, (key, m)),
        }
    }

    fn get(&self, key: &JobKey) -> Option<&SimMove> {
        self.0.binary_search_by_key(key, |e| e.0).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, key: &JobKey) -> Option<&mut SimMove> {
        self.0.binary_search_by_key(key, |e| e.0).ok().map(|i| &mut self.0[i].1)
    }

    fn remove(&mut self, key: &JobKey) -> Option<SimMove> {
        self.0.binary_search_by_key(key, |e| e.0).ok().map(|i| self.0.remove(i).1)
    }

    fn iter(&self) -> impl Iterator<Item = (&JobKey, &SimMove)> {
        self.0.iter().map(|(k, m)| (k, m))
    }

    fn values(&self) -> impl Iterator<Item = &SimMove> {
        self.0.iter().map(|(_, m)| m)
    }
}

impl SimBackend {
    fn refresh_next_event(&mut self) {
        self.next_event = self.running.values().map(SimMove::event_time).min_by(f64::total_cmp);
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn capacity(&self, tier: usize) -> Capacity {
        match self.total.get(tier).copied().flatten() {
            Some(t) => Capacity::Total(t.saturating_sub(self.external.get(tier).copied().unwrap_or(0))),
            None => Capacity::Unbounded,
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder) -> Result<(), String> {
        let mut duration = if self.instant { 0.0 } else { order.expected_s.max(0.0) };
        if let Some(cap) = order.bandwidth_mb_s.filter(|c| *c > 0.0)
            && !self.instant
        {
            duration = duration.max(order.bytes as f64 / (cap * 1e6));
        }
        let fail_at = if self.fault_probability > 0.0 && self.rng.random_bool(self.fault_probability) {
            let at: f64 = self.rng.random_range(0.0..1.0);
            Some(now + duration * at)
        } else {
            None
        };
        self.running.insert(
            order.job,
            SimMove {
                start: now,
                duration,
                fail_at,
                cancelled: false,
            },
        );
        self.refresh_next_event();
        Ok(())
    }

    fn cancel_move(&mut self, now: f64, job: JobKey) {
        if let Some(m) = self.running.get_mut(&job) {
            m.cancelled = true;
            // The rollback is immediate in the simulation.
            m.fail_at = Some(now);
        }
        self.refresh_next_event();
    }

    fn progress(&self, now: f64, job: JobKey) -> f64 {
        match self.running.get(&job) {
            Some(m) if m.duration > 0.0 => ((now - m.start) / m.duration).clamp(0.0, 1.0),
            Some(_) => 1.0,
            None => 0.0,
        }
    }

    fn poll(&mut self, now: f64, events: &mut Vec<MoveEvent>) {
        if self.next_event.is_none_or(|t| t > now) {
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        due.extend(
            self.running
                .iter()
                .filter(|(_, m)| m.event_time() <= now)
                .map(|(k, m)| (m.event_time(), *k)),
        );
        due.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(_, job) in &due {
            let Some(m) = self.running.remove(&job) else { continue };
            events.push(if m.cancelled {
                MoveEvent::Cancelled { job }
            } else if let Some(at) = m.fail_at {
                let pct = if m.duration > 0.0 {
                    (at - m.start) / m.duration * 100.0
                } else {
                    0.0
                };
                MoveEvent::Failed {
                    job,
                    message: format!("simulated I/O fault at {pct:.0}%; rolled back"),
                    retryable: true,
                }
            } else {
                MoveEvent::Finished { job }
            });
        }
        self.due = due;
        self.refresh_next_event();
    }

    fn next_event_time(&self) -> Option<f64> {
        self.next_event
    }

    fn tier_details(&self, tier: usize) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(t) = self.total.get(tier).copied().flatten() {
            m.insert("hardware_gb".into(), json!(bytes_to_gb(t)));
        }
        if let Some(e) = self.external.get(tier).copied().filter(|e| *e > 0) {
            m.insert("external_gb".into(), json!(bytes_to_gb(e)));
        }
        m
    }

    fn set_external_use(&mut self, tier: usize, bytes: u64) {
        if let Some(e) = self.external.get_mut(tier) {
            *e = bytes;
        }
    }
}
