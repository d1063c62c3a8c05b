//! Converts the Azure LLM inference trace 2023 (Patel et al., "Splitwise",
//! ISCA 2024; `AzureLLMInferenceTrace_{code,conv}.csv`, rows
//! `TIMESTAMP,ContextTokens,GeneratedTokens`) into a catalog and a trace.
//!
//! The trace has no model column: each file is one service's real arrival
//! process over one hour. Each service becomes `models` models
//! (`<service>-<i>`, the service named after the file: `code`, `conv`), and
//! each request goes to one of them, drawn from a Zipf popularity over a
//! random ranking: every model's arrivals are a random thinning of its
//! service's real arrivals, so the service's bursts and lulls reach its
//! models as they happened. The hour is replayed `hours` times in a row
//! (each time with fresh draws) for a longer trace. Sizes come from
//! [`super::synth::SIZE_MIX`], drawn in name order from the seed.

use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::synth::{draw_size, merge, shuffle, zipf_weights};
use super::workload::{Catalog, SimError, Trace};

/// Where the Azure trace lives on this machine (never in the repository).
pub const DEFAULT_DIR: &str = "/work/shared/data/azure_llm_2023";

/// The two files of the trace, in the order their services are numbered.
pub const FILES: [&str; 2] = ["AzureLLMInferenceTrace_code.csv", "AzureLLMInferenceTrace_conv.csv"];

/// What to convert.
#[derive(Debug, Clone)]
pub struct AzureSpec {
    /// One CSV per service.
    pub inputs: Vec<PathBuf>,
    /// Models per service.
    pub models: usize,
    /// Zipf exponent of the models' popularity within a service.
    pub zipf_s: f64,
    /// Times the trace's span is replayed in a row.
    pub hours: usize,
    pub seed: u64,
}

/// The default inputs: both services' files in [`DEFAULT_DIR`].
pub fn default_inputs() -> Vec<PathBuf> {
    FILES.iter().map(|f| Path::new(DEFAULT_DIR).join(f)).collect()
}

/// The service name of a file: `code` for `AzureLLMInferenceTrace_code.csv`,
/// else the file's stem.
pub fn service_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    match stem.rsplit_once('_') {
        Some((_, service)) if !service.is_empty() => service.to_string(),
        _ => stem,
    }
}

/// Days from 1970-01-01 to the civil date `y-m-d` (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since 1970-01-01 of `YYYY-MM-DD HH:MM:SS[.fraction]`.
pub fn parse_timestamp(s: &str) -> Result<f64, String> {
    let bad = || format!("timestamp `{s}` is not `YYYY-MM-DD HH:MM:SS.fraction`");
    let (date, time) = s.trim().split_once(' ').ok_or_else(bad)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (Some(y), Some(mo), Some(day), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    let (y, mo, day) = (y?, mo?, day?);
    let mut t = time.split(':');
    let (Some(h), Some(mi), Some(sec), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err(bad());
    };
    let h: i64 = h.parse().map_err(|_| bad())?;
    let mi: i64 = mi.parse().map_err(|_| bad())?;
    let sec: f64 = sec.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0.0..61.0).contains(&sec)
    {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

/// The arrival times of one file, in seconds from its first request, ascending.
pub fn parse_arrivals(path: &Path, text: &str) -> Result<Vec<f64>, SimError> {
    let mut times = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("TIMESTAMP")) {
            continue;
        }
        let stamp = line.split(',').next().unwrap_or_default();
        let t = parse_timestamp(stamp).map_err(|message| SimError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?;
        times.push(t);
    }
    if times.is_empty() {
        return Err(SimError::Invalid(format!("{}: no requests", path.display())));
    }
    times.sort_by(f64::total_cmp);
    let first = times[0];
    for t in &mut times {
        *t -= first;
    }
    Ok(times)
}

/// Reads the files and converts them.
pub fn convert(spec: &AzureSpec) -> Result<(Catalog, Trace), SimError> {
    if spec.inputs.is_empty() || spec.models == 0 || spec.hours == 0 || !(spec.zipf_s.is_finite() && spec.zipf_s >= 0.0) {
        return Err(SimError::Invalid(
            "convert azure needs an input, models >= 1, hours >= 1 and zipf >= 0".into(),
        ));
    }
    let mut services = Vec::with_capacity(spec.inputs.len());
    for path in &spec.inputs {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
        services.push((service_name(path), parse_arrivals(path, &text)?));
    }
    // One span for every service: the longest file's, so replays line up.
    let span = services.iter().filter_map(|(_, t)| t.last().copied()).fold(0.0, f64::max) + 1.0;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut names = Vec::new();
    for (service, _) in &services {
        names.extend((0..spec.models).map(|i| format!("{service}-{i}")));
    }
    let catalog = Catalog {
        sizes_gb: names.iter().map(|_| draw_size(&mut rng)).collect(),
        names,
    };
    // Zipf weights as a cumulative table; each service ranks its models at random.
    let weights = zipf_weights(spec.models, spec.zipf_s);
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut per_model: Vec<Vec<f64>> = vec![Vec::new(); catalog.names.len()];
    for (s, (_, times)) in services.iter().enumerate() {
        let mut ranking: Vec<usize> = (0..spec.models).collect();
        shuffle(&mut ranking, &mut rng);
        for rep in 0..spec.hours {
            let offset = rep as f64 * span;
            for &t in times {
                let u: f64 = rng.random_range(0.0..1.0);
                let rank = cumulative.partition_point(|&c| c < u).min(spec.models - 1);
                per_model[s * spec.models + ranking[rank]].push(offset + t);
            }
        }
    }
    Ok((catalog, merge(per_model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_seconds() {
        let a = parse_timestamp("2023-11-16 18:17:03.9799600").expect("a");
        let b = parse_timestamp("2023-11-16 18:17:04.0319600").expect("b");
        assert!((b - a - 0.052).abs() < 1e-6);
        // Across midnight and a month's end.
        let c = parse_timestamp("2023-11-30 23:59:59.5").expect("c");
        let d = parse_timestamp("2023-12-01 00:00:00.5").expect("d");
        assert!((d - c - 1.0).abs() < 1e-6);
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").expect("epoch"), 0.0);
        for bad in [
            "2023-11-16",
            "2023-13-01 00:00:00",
            "2023-11-16 25:00:00",
            "x y",
            "2023-11-16 18:17",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arrivals_are_relative_sorted_and_bad_lines_named() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:01.5,10,1\n2023-11-16 18:00:00.5,10,1\n\n";
        let t = parse_arrivals(Path::new("x.csv"), text).expect("arrivals");
        assert_eq!(t, vec![0.0, 1.0]);
        let err = parse_arrivals(Path::new("x.csv"), "TIMESTAMP,a,b\n2023-11-16 18:00:00,1,1\nnot a time,1,1\n")
            .expect_err("bad line")
            .to_string();
        assert!(err.contains("x.csv") && err.contains('3'), "{err}");
        assert!(parse_arrivals(Path::new("x.csv"), "TIMESTAMP,a,b\n").is_err());
    }

    #[test]
    fn conversion_thins_each_service_into_its_models() {
        let dir = std::env::temp_dir().join(format!("tierd-azure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let code = dir.join("AzureLLMInferenceTrace_code.csv");
        let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
        for i in 0..1000 {
            text.push_str(&format!("2023-11-16 18:{:02}:{:02}.{:03},1,1\n", i / 60 % 60, i % 60, i % 1000));
        }
        std::fs::write(&code, &text).expect("write");
        let spec = AzureSpec {
            inputs: vec![code],
            models: 10,
            zipf_s: 1.0,
            hours: 3,
            seed: 7,
        };
        let (catalog, trace) = convert(&spec).expect("convert");
        assert_eq!(catalog.names.len(), 10);
        assert_eq!(catalog.names[0], "code-0");
        assert_eq!(trace.len(), 3000, "every request, every replay");
        assert!(trace.times.windows(2).all(|w| w[0] <= w[1]));
        let mut counts = [0usize; 10];
        for &m in &trace.models {
            counts[m as usize] += 1;
        }
        counts.sort_unstable();
        // Zipf(1) over 10 models: the most popular takes about a third.
        assert!(counts[9] > 850 && counts[9] < 1200, "{counts:?}");
        assert_eq!(convert(&spec).expect("again").1.models, trace.models, "deterministic");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
