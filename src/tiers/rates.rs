//! How fast moves really go on a real machine: one exponentially weighted
//! estimate of throughput per (source driver kind, target driver kind)
//! pair, fed by every move that succeeds and kept in the state file.
//!
//! A move's `estimated_time` is its bytes over the pair's estimate, capped
//! by the move's `bandwidth_mb_s`: `bytes / min(cap, estimate)`. Before a
//! pair's first measurement the estimate is its target driver's default
//! ([`crate::drivers::TierDriver::default_move_mb_s`]). The pair is keyed by
//! the drivers' kinds, not the tiers' names, so that two `dir` tiers on
//! the same kind of disk share what one learnt, and a new kind of driver
//! (an engine's memory, for one) gets estimates of its own by being one.
//!
//! A move capped at a rate tells about the cap, not the hardware: it is
//! measured only if it went well below its cap (then the hardware was the
//! bound). Moves shorter than [`MIN_SAMPLE_S`] are not measured either:
//! their time is mostly the engine's polling.
//!
//! The simulated machine keeps its configured seconds per GB
//! (`moves.promote_s_per_gb`, `moves.demote_s_per_gb`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The weight of a new measurement in the estimate.
pub const EWMA_WEIGHT: f64 = 0.3;

/// Moves shorter than this (engine seconds) are not measured.
pub const MIN_SAMPLE_S: f64 = 0.05;

/// A capped move is measured only if it ran below this share of its cap.
const CAPPED_SHARE: f64 = 0.8;

/// One pair's estimate, as `metrics.move_rates` and the state file show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRate {
    /// The source and target tiers' driver kinds.
    pub from: String,
    pub to: String,
    /// Throughput estimate, MB/s (10^6 bytes per second).
    pub mb_s: f64,
    /// Moves measured so far.
    pub samples: u64,
}

/// The estimates of all pairs measured so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoveRates {
    pairs: BTreeMap<(String, String), (f64, u64)>,
}

impl MoveRates {
    /// Takes back saved estimates (those that are not positive numbers are
    /// dropped: the pair starts from its default again).
    pub fn restore(&mut self, saved: &[MoveRate]) {
        for r in saved {
            if r.mb_s.is_finite() && r.mb_s > 0.0 {
                self.pairs.insert((r.from.clone(), r.to.clone()), (r.mb_s, r.samples));
            }
        }
    }

    /// Every measured pair.
    pub fn list(&self) -> Vec<MoveRate> {
        self.pairs
            .iter()
            .map(|((from, to), (mb_s, samples))| MoveRate {
                from: from.clone(),
                to: to.clone(),
                mb_s: *mb_s,
                samples: *samples,
            })
            .collect()
    }

    /// The pair's estimate in MB/s, or `default` before its first measurement.
    pub fn mb_s(&self, from: &str, to: &str, default: f64) -> f64 {
        self.pairs.get(&(from.to_string(), to.to_string())).map_or(default, |(r, _)| *r)
    }

    /// Seconds a move of `bytes` is expected to take at `mb_s`, under an
    /// optional cap.
    pub fn seconds(bytes: u64, mb_s: f64, cap_mb_s: Option<f64>) -> f64 {
        let rate = match cap_mb_s.filter(|c| c.is_finite() && *c > 0.0) {
            Some(cap) => cap.min(mb_s),
            None => mb_s,
        };
        if rate.is_finite() && rate > 0.0 {
            bytes as f64 / (rate * 1e6)
        } else {
            0.0
        }
    }

    /// Records one successful move of `bytes` that ran `seconds`; returns
    /// whether it was measured (see the module docs).
    pub fn record(&mut self, from: &str, to: &str, bytes: u64, seconds: f64, cap_mb_s: Option<f64>) -> bool {
        if !(seconds.is_finite() && seconds >= MIN_SAMPLE_S) || bytes == 0 {
            return false;
        }
        let measured = bytes as f64 / seconds / 1e6;
        if let Some(cap) = cap_mb_s.filter(|c| c.is_finite() && *c > 0.0)
            && measured >= cap * CAPPED_SHARE
        {
            return false;
        }
        let e = self.pairs.entry((from.to_string(), to.to_string())).or_insert((measured, 0));
        if e.1 > 0 {
            e.0 = EWMA_WEIGHT * measured + (1.0 - EWMA_WEIGHT) * e.0;
        }
        e.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_measurement_replaces_the_default_and_later_ones_blend_in() {
        let mut r = MoveRates::default();
        assert_eq!(r.mb_s("storage", "dir", 400.0), 400.0);
        assert!(r.record("storage", "dir", 100_000_000, 1.0, None));
        assert!((r.mb_s("storage", "dir", 400.0) - 100.0).abs() < 1e-9);
        assert!(r.record("storage", "dir", 200_000_000, 1.0, None));
        assert!((r.mb_s("storage", "dir", 400.0) - 130.0).abs() < 1e-9);
        assert_eq!(r.list()[0].samples, 2);
    }

    #[test]
    fn capped_and_too_short_moves_are_not_measured() {
        let mut r = MoveRates::default();
        assert!(!r.record("a", "b", 10_000_000, 1.0, Some(10.0)), "ran at its cap");
        assert!(!r.record("a", "b", 10_000_000, 0.01, None), "too short");
        assert!(r.record("a", "b", 5_000_000, 1.0, Some(10.0)), "well below its cap");
        assert_eq!(r.list().len(), 1);
    }

    #[test]
    fn a_cap_bounds_the_estimate() {
        assert_eq!(MoveRates::seconds(100_000_000, 400.0, Some(10.0)), 10.0);
        assert_eq!(MoveRates::seconds(100_000_000, 50.0, Some(100.0)), 2.0);
        assert_eq!(MoveRates::seconds(100_000_000, 50.0, None), 2.0);
    }
}
