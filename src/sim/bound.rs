//! The offline lower bound on a trace's total load seconds.
//!
//! An access served from tier `k` costs `size x c[k]`, which splits as
//! `c[1] x size` plus `(c[j+1] - c[j]) x size` for every `j < k`: one term for
//! each "cache" made of tiers `1..=j` that the access missed. So the total is
//! at least `c[1] x B + sum_j (c[j+1] - c[j]) x LB(C[1] + ... + C[j])`, where
//! `B` is all bytes accessed and `LB(X)` a lower bound on the bytes missed by
//! any single cache of capacity `X`.
//!
//! `LB` is the PFOO-L relaxation (Berger, Beckmann, Harchol-Balter,
//! SIGMETRICS 2018) in logical time (request index): each first access
//! misses; the interval between two accesses of the same model, `L` requests
//! long, costs `size x L` of space-time and saves `size` bytes if kept;
//! intervals are taken shortest first until `X x` (number of accesses) of
//! space-time is used, the last one fractionally.
//!
//! It holds for every policy that only brings a model into a faster tier when
//! it is accessed (lru, lfu, gdsf, belady, and tierd's on-access decisions);
//! a prefetch on a prediction is outside the relaxation's model.

use super::workload::{Catalog, Trace};
use crate::config::Config;

/// Bytes (GB) missed by a cache of `capacity_gb`, at least, and all bytes accessed.
pub struct Pfoo {
    /// Interval lengths with the size of the model kept over them, shortest first.
    intervals: Vec<(u32, f64)>,
    accesses: usize,
    total_gb: f64,
}

impl Pfoo {
    pub fn new(catalog: &Catalog, trace: &Trace) -> Pfoo {
        let mut last = vec![u32::MAX; catalog.names.len()];
        let mut raw: Vec<(u32, u32)> = Vec::with_capacity(trace.len());
        let mut total_gb = 0.0;
        for (i, &m) in trace.models.iter().enumerate() {
            let i = i as u32;
            total_gb += catalog.sizes_gb[m as usize];
            let prev = std::mem::replace(&mut last[m as usize], i);
            if prev != u32::MAX {
                raw.push((i - prev, m));
            }
        }
        raw.sort_unstable();
        let intervals = raw.into_iter().map(|(l, m)| (l, catalog.sizes_gb[m as usize])).collect();
        Pfoo {
            intervals,
            accesses: trace.len(),
            total_gb,
        }
    }

    /// All bytes accessed, GB.
    pub fn total_gb(&self) -> f64 {
        self.total_gb
    }

    /// `LB(capacity)`: GB that any cache of `capacity_gb` must miss.
    pub fn missed_gb(&self, capacity_gb: f64) -> f64 {
        let mut budget = capacity_gb * self.accesses as f64;
        let mut saved = 0.0;
        for &(len, size) in &self.intervals {
            let cost = size * len as f64;
            if cost <= budget {
                budget -= cost;
                saved += size;
            } else {
                saved += budget / len as f64;
                break;
            }
        }
        (self.total_gb - saved).max(0.0)
    }
}

/// `lower_bound_s` of `trace` on the configured tiers.
pub fn lower_bound_s(cfg: &Config, catalog: &Catalog, trace: &Trace) -> f64 {
    let pfoo = Pfoo::new(catalog, trace);
    let c: Vec<f64> = cfg.tiers.iter().map(|t| t.access_s_per_gb).collect();
    let Some(&c1) = c.first() else { return 0.0 };
    let mut bound = c1 * pfoo.total_gb();
    let mut capacity = 0.0;
    for k in 0..c.len().saturating_sub(1) {
        capacity += cfg.tiers[k].max_gb.unwrap_or(0.0);
        bound += (c[k + 1] - c[k]) * pfoo.missed_gb(capacity);
    }
    bound
}
