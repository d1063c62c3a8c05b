//! Synthetic workloads, and the arrival process shared with the ServeGen
//! converter.
//!
//! Every model's accesses come from a Gamma renewal process whose rate is
//! piecewise constant over fixed windows: gaps are drawn in "operational
//! time" (units of the mean gap, Gamma with shape `1 / CV^2` and mean 1) and
//! consumed at the window's rate, so the process carries over window
//! boundaries and idle windows simply pause it. A CV of 1 is Poisson;
//! larger CVs are burstier.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::workload::{Catalog, SimError, Trace};

/// Model sizes (GB) and their weights: a realistic mix of what people serve,
/// from small encoders to quantised 70B models.
pub const SIZE_MIX: &[(f64, f64)] = &[
    (0.5, 0.10),  // embedding and small encoder models
    (1.4, 0.10),  // ~0.7B fp16
    (3.0, 0.12),  // ~1.5B fp16
    (4.5, 0.15),  // 7-8B 4-bit
    (8.0, 0.15),  // 7-8B 8-bit, 4B fp16
    (14.0, 0.18), // 7B fp16
    (16.0, 0.08), // 8B fp16
    (26.0, 0.07), // 13B fp16
    (40.0, 0.05), // 70B 4-bit
];

/// One size from [`SIZE_MIX`], with a little spread (+-10%, 0.1 GB steps).
pub fn draw_size(rng: &mut ChaCha8Rng) -> f64 {
    let total: f64 = SIZE_MIX.iter().map(|x| x.1).sum();
    let mut u = rng.random_range(0.0..total);
    let mut base = SIZE_MIX[SIZE_MIX.len() - 1].0;
    for &(size, w) in SIZE_MIX {
        if u < w {
            base = size;
            break;
        }
        u -= w;
    }
    let jitter: f64 = rng.random_range(0.9..1.1);
    ((base * jitter * 10.0).round() / 10.0).clamp(0.5, 40.0)
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random_range(0.0..1.0); // (0, 1]
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang, 2000).
pub fn gamma(rng: &mut ChaCha8Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.random_range(0.0..1.0);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.random_range(0.0..1.0);
        if u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A gap of mean 1 with coefficient of variation `cv`.
pub fn unit_gap(rng: &mut ChaCha8Rng, cv: f64) -> f64 {
    let cv = if cv.is_finite() && cv > 0.0 { cv.clamp(0.05, 10.0) } else { 1.0 };
    let shape = 1.0 / (cv * cv);
    gamma(rng, shape) / shape
}

/// Piecewise-constant rate of one model: `rates[w]` accesses per second and
/// `cvs[w]` over window `w` = `[start + w x window_s, start + (w+1) x window_s)`.
pub struct RateProfile<'a> {
    pub start: f64,
    pub window_s: f64,
    pub rates: &'a [f64],
    pub cvs: &'a [f64],
}

/// Appends one model's arrivals (times) to `out`.
pub fn arrivals(profile: &RateProfile<'_>, rng: &mut ChaCha8Rng, out: &mut Vec<f64>) {
    let cv0 = profile.cvs.first().copied().unwrap_or(1.0);
    // Start in equilibrium: the first gap is a random part of a full one.
    let mut u = unit_gap(rng, cv0) * rng.random_range(0.0..1.0);
    for (w, &rate) in profile.rates.iter().enumerate() {
        if !(rate.is_finite() && rate > 0.0) {
            continue;
        }
        let ws = profile.start + w as f64 * profile.window_s;
        let we = ws + profile.window_s;
        let cv = profile.cvs.get(w).copied().unwrap_or(1.0);
        let mut pos = ws;
        loop {
            let need = u / rate;
            if pos + need < we {
                pos += need;
                out.push(pos);
                u = unit_gap(rng, cv);
            } else {
                u -= (we - pos) * rate;
                break;
            }
        }
    }
}

/// Merges per-model arrival lists into one trace, rounding times to the
/// millisecond (as the CSV stores them); ties go by model index.
pub fn merge(per_model: Vec<Vec<f64>>) -> Trace {
    let mut all: Vec<(f64, u32)> = Vec::with_capacity(per_model.iter().map(Vec::len).sum());
    for (m, times) in per_model.into_iter().enumerate() {
        all.extend(times.into_iter().map(|t| ((t * 1000.0).round() / 1000.0, m as u32)));
    }
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Trace {
        times: all.iter().map(|x| x.0).collect(),
        models: all.iter().map(|x| x.1).collect(),
    }
}

/// The synthetic families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// Stationary Zipf popularity, Poisson arrivals.
    Zipf,
    /// Zipf popularity; each model busy at its own hour of the day.
    Diurnal,
    /// Zipf popularity with bursty (high-CV Gamma) arrivals.
    Bursty,
    /// Zipf popularity whose ranking is reshuffled every few hours.
    Shift,
    /// Zipf popularity plus periodic scans touching many cold models once.
    Scan,
}

impl Family {
    pub const ALL: [Family; 5] = [Family::Zipf, Family::Diurnal, Family::Bursty, Family::Shift, Family::Scan];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Zipf => "zipf",
            Family::Diurnal => "diurnal",
            Family::Bursty => "bursty",
            Family::Shift => "shift",
            Family::Scan => "scan",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub family: Family,
    pub models: usize,
    /// Expected number of accesses.
    pub accesses: usize,
    pub days: f64,
    /// Zipf exponent of popularity.
    pub zipf_s: f64,
    /// CV of inter-arrival gaps (bursty family; others use 1).
    pub cv: f64,
    /// Hours between popularity reshuffles (shift family).
    pub shift_hours: f64,
    /// Hours between scans, and models per scan (scan family).
    pub scan_every_h: f64,
    pub scan_models: usize,
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            family: Family::Zipf,
            models: 500,
            accesses: 500_000,
            days: 7.0,
            zipf_s: 1.0,
            cv: 4.0,
            shift_hours: 12.0,
            scan_every_h: 6.0,
            scan_models: 100,
            seed: 1,
        }
    }
}

const WINDOW_S: f64 = 600.0;

/// Generates a catalog and a trace.
pub fn generate(spec: &GenSpec) -> Result<(Catalog, Trace), SimError> {
    if spec.models == 0 || !(spec.days.is_finite() && spec.days > 0.0) || !(spec.zipf_s.is_finite() && spec.zipf_s >= 0.0) {
        return Err(SimError::Invalid("gen needs models >= 1, days > 0 and zipf >= 0".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n = spec.models;
    let catalog = Catalog {
        names: (0..n).map(|i| format!("{}-{i:04}", spec.family.as_str())).collect(),
        sizes_gb: (0..n).map(|_| draw_size(&mut rng)).collect(),
    };
    let windows = (spec.days * 86_400.0 / WINDOW_S).ceil() as usize;
    let duration = windows as f64 * WINDOW_S;
    // Zipf weights over a random ranking (so popularity is independent of size).
    let zipf = zipf_weights(n, spec.zipf_s);
    let zsum: f64 = zipf.iter().sum();
    let mut rank: Vec<usize> = (0..n).collect();
    shuffle(&mut rank, &mut rng);
    let per_window_total = spec.accesses as f64 / duration; // accesses per second overall
    let phase: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..24.0)).collect();
    let reshuffle_every = ((spec.shift_hours * 3600.0 / WINDOW_S).round() as usize).max(1);
    let mut rates = vec![vec![0.0; windows]; n];
    for w in 0..windows {
        if spec.family == Family::Shift && w > 0 && w % reshuffle_every == 0 {
            // A part of the catalog changes places: the new favourites rise.
            let k = (n / 5).max(2).min(n);
            let mut idx: Vec<usize> = (0..n).collect();
            shuffle(&mut idx, &mut rng);
            let mut picked: Vec<usize> = idx[..k].iter().map(|&i| rank[i]).collect();
            shuffle(&mut picked, &mut rng);
            for (j, &i) in idx[..k].iter().enumerate() {
                rank[i] = picked[j];
            }
        }
        let hour = (w as f64 * WINDOW_S / 3600.0) % 24.0;
        for (m, row) in rates.iter_mut().enumerate() {
            let base = zipf[rank[m]] / zsum * per_window_total;
            row[w] = match spec.family {
                Family::Diurnal => {
                    // Busy for a few hours around its own peak, quiet otherwise.
                    let d = ((hour - phase[m] + 36.0) % 24.0) - 12.0;
                    base * diurnal_factor(d)
                }
                _ => base,
            };
        }
    }
    let cv = if spec.family == Family::Bursty { spec.cv } else { 1.0 };
    let cvs = vec![cv; windows];
    let mut per_model: Vec<Vec<f64>> = Vec::with_capacity(n);
    for r in &rates {
        let mut out = Vec::new();
        let profile = RateProfile {
            start: 0.0,
            window_s: WINDOW_S,
            rates: r,
            cvs: &cvs,
        };
        arrivals(&profile, &mut rng, &mut out);
        per_model.push(out);
    }
    if spec.family == Family::Scan && spec.scan_every_h > 0.0 {
        // A batch job touches many models once each, in a quick sweep.
        let every = spec.scan_every_h * 3600.0;
        let mut t = every / 2.0;
        while t < duration {
            let k = spec.scan_models.min(n);
            let mut idx: Vec<usize> = (0..n).collect();
            shuffle(&mut idx, &mut rng);
            for (j, &m) in idx[..k].iter().enumerate() {
                per_model[m].push(t + j as f64 * 2.0);
            }
            t += every;
        }
    }
    Ok((catalog, merge(per_model)))
}

/// Rate multiplier `d` hours away from a model's peak hour: quiet most of
/// the day, busy for a few hours; averages 1 over a day.
fn diurnal_factor(d: f64) -> f64 {
    // 0.15 + 3.4 x a Gaussian of 2 h spread, whose daily mean is 2 x sqrt(2 pi) / 24.
    let mean = 0.15 + 3.4 * 2.0 * std::f64::consts::TAU.sqrt() / 24.0;
    (0.15 + 3.4 * (-d * d / 8.0).exp()) / mean
}

/// Zipf popularity weights of ranks 1..=n with exponent `s` (not normalised).
pub fn zipf_weights(n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|r| 1.0 / ((r + 1) as f64).powf(s)).collect()
}

/// Fisher-Yates shuffle from the workload's generator.
pub fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_gaps_have_mean_one_and_the_asked_cv() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for cv in [0.5, 1.0, 3.0] {
            let xs: Vec<f64> = (0..200_000).map(|_| unit_gap(&mut rng, cv)).collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
            assert!((mean - 1.0).abs() < 0.03, "cv {cv}: mean {mean}");
            assert!((var.sqrt() / mean - cv).abs() < 0.1 * cv, "cv {cv}: sd {}", var.sqrt());
        }
    }

    #[test]
    fn arrivals_follow_the_rate_and_carry_across_windows() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let rates = [0.5, 0.0, 2.0];
        let cvs = [1.0, 1.0, 1.0];
        let mut out = Vec::new();
        for _ in 0..200 {
            arrivals(
                &RateProfile {
                    start: 0.0,
                    window_s: 100.0,
                    rates: &rates,
                    cvs: &cvs,
                },
                &mut rng,
                &mut out,
            );
        }
        let in_idle = out.iter().filter(|t| (100.0..200.0).contains(*t)).count();
        assert_eq!(in_idle, 0);
        let expected = 200.0 * (50.0 + 200.0);
        assert!((out.len() as f64 - expected).abs() < 0.05 * expected, "{}", out.len());
    }

    #[test]
    fn generation_is_deterministic() {
        let spec = GenSpec {
            models: 20,
            accesses: 2000,
            days: 1.0,
            family: Family::Scan,
            ..GenSpec::default()
        };
        let a = generate(&spec).unwrap();
        let b = generate(&spec).unwrap();
        assert_eq!(a, b);
        assert!(a.1.times.windows(2).all(|w| w[0] <= w[1]));
    }
}
