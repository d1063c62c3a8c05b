//! Fixed-bucket histograms of the engine's durations (how long moves ran,
//! how long accesses waited for their loads), kept in engine seconds so the
//! simulator and the server count alike. Prometheus' exposition
//! (`requests::exposition`) writes them as cumulative `_bucket` series.

/// Upper bounds of the move duration buckets, in seconds: a move of a small
/// model from RAM takes a fraction of a second, one of a 70 GB model from a
/// network origin several minutes.
pub const MOVE_BUCKETS_S: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// Upper bounds of the load time buckets, in seconds: from a model already
/// in GPU memory (milliseconds) to one read from storage (a minute or more).
pub const LOAD_BUCKETS_S: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Counts of observations per bucket, their sum and their number.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending (the `+Inf` bucket is `count`).
    bounds: &'static [f64],
    /// Observations at most `bounds[i]` and above `bounds[i - 1]` (not
    /// cumulative: the exposition sums them up).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one observation; a NaN or negative one (a clock that stepped
    /// back) is counted as 0 so the sum stays meaningful.
    pub fn observe(&mut self, v: f64) {
        // (NaN > 0 is false; +Inf stays, in the +Inf bucket only.)
        let v = if v > 0.0 { v } else { 0.0 };
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        if v.is_finite() {
            self.sum += v;
        }
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` for each finite bucket, ascending.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0;
        self.bounds.iter().zip(&self.counts).map(move |(b, c)| {
            acc += c;
            (*b, acc)
        })
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_is_the_count() {
        let mut h = Histogram::new(&[1.0, 2.0, 5.0]);
        for v in [0.5, 1.0, 1.5, 4.0, 9.0, -3.0, f64::NAN] {
            h.observe(v);
        }
        let c: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(c, vec![(1.0, 4), (2.0, 5), (5.0, 6)]);
        assert_eq!(h.count(), 7);
        assert!((h.sum() - 16.0).abs() < 1e-9);
    }
}
