//! Converts ServeGen's per-client rate traces (Alibaba Bailian, 14 days in
//! 10-minute windows; `data/<category>/<model>/chunk-<client>-trace.csv`
//! inside the tarball, rows `window_start_s,rate_rps,cv,dist,p1,p2`) into a
//! catalog and a trace. Each client is one model (a per-customer fine-tune,
//! say), named `<model>-<client>`. Inside each window, gaps come from a Gamma
//! process with the window's rate and CV, carried across windows (see
//! [`super::synth::arrivals`]). Rates are rescaled so the expected number of
//! accesses over the chosen days is `accesses`; sizes come from
//! [`super::synth::SIZE_MIX`], drawn in name order from the seed.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::synth::{RateProfile, arrivals, draw_size, merge};
use super::workload::{Catalog, SimError, Trace};

/// Where the ServeGen data lives on this machine (never in the repository).
pub const DEFAULT_INPUT: &str = "/work/shared/data/servegen/servegen_client_rate_traces.tar.gz";

const WINDOW_S: f64 = 600.0;
const DAY_S: f64 = 86_400.0;

/// What to convert.
#[derive(Debug, Clone)]
pub struct ServegenSpec {
    pub input: PathBuf,
    /// First and last day, 1-based, inclusive.
    pub days: (u32, u32),
    /// Expected number of accesses over those days after rescaling.
    pub accesses: f64,
    pub seed: u64,
}

/// One client's windows within the chosen days.
struct Client {
    name: String,
    rates: Vec<f64>,
    cvs: Vec<f64>,
}

/// Parses `a-b` or `a` into an inclusive 1-based day range.
pub fn parse_days(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let a: u32 = a.parse().map_err(|_| format!("bad day {a:?} in {s:?}; expected e.g. 1-7"))?;
    let b: u32 = b.parse().map_err(|_| format!("bad day {b:?} in {s:?}; expected e.g. 1-7"))?;
    if a == 0 || b < a {
        return Err(format!("day range {s:?} must be 1-based and ascending"));
    }
    Ok((a, b))
}

fn client_name(path: &str) -> Option<String> {
    // data/<category>/<model>/chunk-<client>-trace.csv
    let mut parts = path.rsplit('/');
    let file = parts.next()?;
    let model = parts.next()?;
    let client = file.strip_prefix("chunk-")?.strip_suffix("-trace.csv")?;
    Some(format!("{model}-{client}"))
}

fn parse_client(path: &Path, entry: &str, text: &str, spec: &ServegenSpec) -> Result<(Vec<f64>, Vec<f64>), SimError> {
    let first = (spec.days.0 - 1) as f64 * DAY_S;
    let end = spec.days.1 as f64 * DAY_S;
    let windows = ((end - first) / WINDOW_S).round() as usize;
    let mut rates = vec![0.0; windows];
    let mut cvs = vec![1.0; windows];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: String| SimError::Parse {
            path: path.join(entry),
            line: i + 1,
            message: m,
        };
        let mut f = line.split(',');
        let (Some(ws), Some(rate), Some(cv)) = (f.next(), f.next(), f.next()) else {
            return Err(bad(format!("expected `window_start_s,rate_rps,cv,...`, found `{line}`")));
        };
        let ws: f64 = ws
            .trim()
            .parse()
            .map_err(|_| bad(format!("window_start_s `{ws}` is not a number")))?;
        let rate: f64 = rate.trim().parse().map_err(|_| bad(format!("rate_rps `{rate}` is not a number")))?;
        let cv: f64 = cv.trim().parse().map_err(|_| bad(format!("cv `{cv}` is not a number")))?;
        if ws < first || ws >= end {
            continue;
        }
        let w = ((ws - first) / WINDOW_S).floor() as usize;
        if w < windows && rate.is_finite() && rate > 0.0 {
            rates[w] = rate;
            cvs[w] = if cv.is_finite() && cv > 0.0 { cv } else { 1.0 };
        }
    }
    Ok((rates, cvs))
}

/// Reads the tarball and converts it.
pub fn convert(spec: &ServegenSpec) -> Result<(Catalog, Trace), SimError> {
    if spec.days.0 == 0 || spec.days.1 < spec.days.0 || spec.days.1 > 14 {
        return Err(SimError::Invalid(format!(
            "days {}-{} are outside ServeGen's 14 days",
            spec.days.0, spec.days.1
        )));
    }
    if !(spec.accesses.is_finite() && spec.accesses > 0.0) {
        return Err(SimError::Invalid("accesses must be positive".into()));
    }
    let path = spec.input.as_path();
    let file = std::fs::File::open(path).map_err(|e| SimError::io(path, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut clients: Vec<Client> = Vec::new();
    let entries = archive.entries().map_err(|e| SimError::io(path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| SimError::io(path, e))?;
        let name = entry.path().map_err(|e| SimError::io(path, e))?.to_string_lossy().into_owned();
        let Some(client) = client_name(&name) else { continue };
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| SimError::io(&path.join(&name), e))?;
        let (rates, cvs) = parse_client(path, &name, &text, spec)?;
        clients.push(Client { name: client, rates, cvs });
    }
    if clients.is_empty() {
        return Err(SimError::Invalid(format!("{}: no ServeGen client traces found", path.display())));
    }
    // Idle clients over the chosen days are left out; the rest in name order.
    clients.retain(|c| c.rates.iter().any(|r| *r > 0.0));
    clients.sort_by(|a, b| a.name.cmp(&b.name));
    let expected: f64 = clients.iter().map(|c| c.rates.iter().sum::<f64>() * WINDOW_S).sum();
    let scale = spec.accesses / expected.max(f64::MIN_POSITIVE);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let catalog = Catalog {
        names: clients.iter().map(|c| c.name.clone()).collect(),
        sizes_gb: clients.iter().map(|_| draw_size(&mut rng)).collect(),
    };
    let start = (spec.days.0 - 1) as f64 * DAY_S;
    let mut per_model = Vec::with_capacity(clients.len());
    for c in &clients {
        let rates: Vec<f64> = c.rates.iter().map(|r| r * scale).collect();
        let mut out = Vec::new();
        arrivals(
            &RateProfile {
                start,
                window_s: WINDOW_S,
                rates: &rates,
                cvs: &c.cvs,
            },
            &mut rng,
            &mut out,
        );
        per_model.push(out);
    }
    Ok((catalog, merge(per_model)))
}
