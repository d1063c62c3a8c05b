//! The simulated tier: a capacity, moves that take `size x seconds-per-GB`
//! of engine time, and seeded fault injection. Every tier of the simulated
//! machine is one of these ([`simulated_machine`]); they share the machine's
//! one random generator, so a run is a pure function of its inputs and seed.
//!
//! Everything happens in the time the engine passes in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::machine::{Machine, MachineKind};
use super::{Capacity, DriverEvent, JobKey, MoveEvent, MoveOrder, TierDriver};
use crate::config::{Config, bytes_to_gb, gb_to_bytes};

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

/// What the simulated tiers of one machine share: the seeded generator of
/// faults and its probability.
#[derive(Debug)]
struct Faults {
    rng: ChaCha8Rng,
    probability: f64,
}

/// A handle on a simulated machine for tests and demos: the bytes the rest
/// of the machine takes in each tier.
#[derive(Debug, Clone)]
pub struct SimControl {
    external: Vec<Arc<AtomicU64>>,
}

impl SimControl {
    /// Simulated use of tier `tier` by programs outside tierd (memory
    /// pressure), in bytes.
    pub fn set_external_use(&self, tier: usize, bytes: u64) {
        if let Some(e) = self.external.get(tier) {
            e.store(bytes, Ordering::Relaxed);
        }
    }
}

/// One simulated tier. See the module docs.
#[derive(Debug)]
pub struct SimTier {
    /// Hardware size; `None` = unbounded.
    total: Option<u64>,
    /// Bytes taken by the rest of the machine.
    external: Arc<AtomicU64>,
    running: Running,
    /// Scratch of `poll`: the moves due, by time.
    due: Vec<(f64, JobKey)>,
    /// The earliest event time of `running`, kept up to date on each change
    /// (asked on every engine tick, changed once per move).
    next_event: Option<f64>,
    faults: Arc<Mutex<Faults>>,
    /// Whether any fault can strike (the generator is only drawn from then).
    faulty: bool,
    /// Moves complete the moment they start (`--moves instant`).
    instant: bool,
}

/// The simulated machine of `cfg`: a tier's size is its `hardware_gb`, or
/// its limit plus reserve when absent; the last tier is unbounded unless it
/// gives `hardware_gb`. With `instant`, moves complete the moment they start.
pub fn simulated_machine(cfg: &Config, instant: bool) -> (Machine, SimControl) {
    let n = cfg.tiers.len();
    let faults = Arc::new(Mutex::new(Faults {
        rng: ChaCha8Rng::seed_from_u64(cfg.sim.seed),
        probability: cfg.sim.fault_probability,
    }));
    let mut external = Vec::with_capacity(n);
    let mut drivers: Vec<Box<dyn TierDriver>> = Vec::with_capacity(n);
    for (i, t) in cfg.tiers.iter().enumerate() {
        let total = if i + 1 == n {
            t.hardware_gb.map(gb_to_bytes)
        } else {
            Some(match t.hardware_gb {
                Some(h) => gb_to_bytes(h),
                None => gb_to_bytes(t.max_gb.unwrap_or(0.0)) + gb_to_bytes(t.reserved_gb.unwrap_or(0.0)),
            })
        };
        let ext = Arc::new(AtomicU64::new(0));
        external.push(ext.clone());
        drivers.push(Box::new(SimTier {
            total,
            external: ext,
            running: Running::default(),
            due: Vec::new(),
            next_event: None,
            faults: faults.clone(),
            faulty: cfg.sim.fault_probability > 0.0,
            instant,
        }));
    }
    let control = SimControl { external };
    (Machine::new(MachineKind::Simulated, drivers), control)
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

impl SimTier {
    fn refresh_next_event(&mut self) {
        self.next_event = self.running.values().map(SimMove::event_time).min_by(f64::total_cmp);
    }

    /// Whether this move fails, and at which fraction of its duration.
    fn draw_fault(&self) -> Option<f64> {
        if !self.faulty {
            return None;
        }
        let mut f = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let p = f.probability;
        if p > 0.0 && f.rng.random_bool(p) {
            Some(f.rng.random_range(0.0..1.0))
        } else {
            None
        }
    }
}

impl TierDriver for SimTier {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn instant(&self) -> bool {
        self.instant
    }

    fn capacity(&self) -> Capacity {
        match self.total {
            Some(t) => Capacity::Total(t.saturating_sub(self.external.load(Ordering::Relaxed))),
            None => Capacity::Unbounded,
        }
    }

    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        let mut duration = if self.instant { 0.0 } else { order.expected_s.max(0.0) };
        if let Some(cap) = order.bandwidth_mb_s.filter(|c| *c > 0.0)
            && !self.instant
        {
            duration = duration.max(order.bytes as f64 / (cap * 1e6));
        }
        let fail_at = self.draw_fault().map(|at| now + duration * at);
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

    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
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
        for &(at, job) in &due {
            let Some(m) = self.running.remove(&job) else { continue };
            let event = if m.cancelled {
                MoveEvent::Cancelled { job }
            } else if let Some(fail) = m.fail_at {
                let pct = if m.duration > 0.0 {
                    (fail - m.start) / m.duration * 100.0
                } else {
                    0.0
                };
                MoveEvent::Failed {
                    job,
                    message: format!("simulated I/O fault at {pct:.0}%; rolled back"),
                    retryable: true,
                }
            } else {
                MoveEvent::Finished {
                    job,
                    checksums: None,
                    mtimes: None,
                }
            };
            events.push(DriverEvent { at, event });
        }
        self.due = due;
        self.refresh_next_event();
    }

    fn next_event_time(&self) -> Option<f64> {
        self.next_event
    }

    fn details(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(t) = self.total {
            m.insert("hardware_gb".into(), json!(bytes_to_gb(t)));
        }
        let e = self.external.load(Ordering::Relaxed);
        if e > 0 {
            m.insert("external_gb".into(), json!(bytes_to_gb(e)));
        }
        m
    }
}
