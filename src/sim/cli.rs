//! `tierd sim ...`: the simulator's command line. `src/main.rs` embeds
//! [`SimArgs`] as its `sim` subcommand and calls [`run`].
//!
//! - `tierd sim --config FILE --catalog C --trace T --policy all [--moves timed|instant] [--report json|table] [--plot out.svg]`
//! - `tierd sim gen --family zipf --out DIR ...`
//! - `tierd sim convert servegen --days 1-7 --out DIR ...`
//! - `tierd sim convert azure --hours 24 --out DIR ...`

use std::path::{Path, PathBuf};

use super::azure::AzureSpec;
use super::replay::MoveMode;
use super::servegen::{DEFAULT_INPUT, ServegenSpec, convert, parse_days};
use super::synth::{Family, GenSpec, generate};
use super::workload::{Catalog, SimError, Trace, write_workload};
use super::{DEFAULT_SIM_CONFIG, compare_with};
use crate::config::Config;
use crate::optimizer::{SIM_POLICY_NAMES, TierdParams};

/// `tierd sim`: replay a trace, or make one.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: Option<SimCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Replay a trace against placement policies.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Server configuration (tiers and moves); default: the issue's
    /// 48 GB RAM / 160 GB swap configuration (fixtures/sim/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Catalog CSV: `model_name,size_gb`.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Trace CSV: `timestamp_s,model_name`, ascending.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// lru, lfu, gdsf, belady, tierd, a comma-separated list, or all.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Whether moves take their modelled time or complete at once.
    #[arg(long, value_enum, default_value_t = MoveMode::Timed)]
    pub moves: MoveMode,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub report: ReportFormat,
    /// Also draw the comparison to this file (.svg or .png): cumulative
    /// load seconds with the lower bound, and hits per tier. Checked
    /// before the replay starts.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Tunables of the tierd policy, `key=value,...` (half_life_s,
    /// short_half_life_s, short_weight, margin_log2, min_history_s, tick_s,
    /// prefetch_ratio, prefetch_per_tick).
    #[arg(long)]
    pub tierd_params: Option<String>,
    /// Print each replay's wall time and accesses per second to stderr.
    #[arg(long)]
    pub timing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Json,
    Table,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimCommand {
    /// Write a synthetic catalog.csv and trace.csv.
    Gen(GenArgs),
    /// Convert a real trace into catalog.csv and trace.csv.
    Convert {
        #[command(subcommand)]
        source: ConvertSource,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConvertSource {
    /// ServeGen per-client rate traces (each client becomes a model).
    Servegen(ServegenArgs),
    /// The Azure LLM inference trace 2023 (each service's real arrivals,
    /// thinned at random into its models by Zipf popularity).
    Azure(AzureArgs),
}

/// `tierd sim gen`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    #[arg(long, value_enum, default_value_t = Family::Zipf)]
    pub family: Family,
    #[arg(long, default_value_t = 500)]
    pub models: usize,
    /// Expected number of accesses.
    #[arg(long, default_value_t = 500_000)]
    pub accesses: usize,
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Zipf exponent of popularity.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// CV of inter-arrival gaps (bursty family).
    #[arg(long, default_value_t = 4.0)]
    pub cv: f64,
    /// Hours between popularity reshuffles (shift family).
    #[arg(long, default_value_t = 12.0)]
    pub shift_hours: f64,
    /// Hours between scans (scan family).
    #[arg(long, default_value_t = 6.0)]
    pub scan_every_h: f64,
    /// Models touched by each scan (scan family).
    #[arg(long, default_value_t = 100)]
    pub scan_models: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for catalog.csv and trace.csv.
    #[arg(long)]
    pub out: PathBuf,
}

/// `tierd sim convert servegen`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServegenArgs {
    /// The ServeGen tarball.
    #[arg(long, default_value = DEFAULT_INPUT)]
    pub input: PathBuf,
    /// Days to take, 1-based and inclusive (`1-7`, `3`).
    #[arg(long, default_value = "1-7", value_parser = parse_days)]
    pub days: (u32, u32),
    /// Expected number of accesses over those days (rates are rescaled to it).
    #[arg(long, default_value_t = 1_000_000.0)]
    pub accesses: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for catalog.csv and trace.csv.
    #[arg(long)]
    pub out: PathBuf,
}

/// `tierd sim convert azure`.
#[derive(Debug, Clone, clap::Args)]
pub struct AzureArgs {
    /// One CSV per service (`TIMESTAMP,ContextTokens,GeneratedTokens`);
    /// default: both files of the trace in /work/shared/data/azure_llm_2023.
    #[arg(long, value_delimiter = ',')]
    pub input: Vec<PathBuf>,
    /// Models per service.
    #[arg(long, default_value_t = 100)]
    pub models: usize,
    /// Zipf exponent of the models' popularity within a service.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Times the trace's hour is replayed in a row.
    #[arg(long, default_value_t = 24)]
    pub hours: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for catalog.csv and trace.csv.
    #[arg(long)]
    pub out: PathBuf,
}

/// The policies named by `--policy`.
pub fn policy_list(s: &str) -> Result<Vec<String>, SimError> {
    if s == "all" {
        return Ok(SIM_POLICY_NAMES.iter().map(|p| p.to_string()).collect());
    }
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !SIM_POLICY_NAMES.contains(&p) {
            return Err(SimError::Invalid(format!(
                "unknown policy {p:?}; known: {}, all",
                SIM_POLICY_NAMES.join(", ")
            )));
        }
        out.push(p.to_string());
    }
    if out.is_empty() {
        return Err(SimError::Invalid("--policy names no policy".into()));
    }
    Ok(out)
}

/// Loads `--config`, or the embedded simulation default.
pub fn load_config(path: Option<&Path>) -> Result<Config, SimError> {
    match path {
        Some(p) => Config::load(p).map_err(|e| SimError::Invalid(format!("{}: {e}", p.display()))),
        None => Config::from_toml(DEFAULT_SIM_CONFIG).map_err(|e| SimError::Invalid(format!("embedded sim config: {e}"))),
    }
}

/// Runs `tierd sim ...`, printing its result to stdout.
pub fn run(args: SimArgs) -> Result<(), SimError> {
    match args.command {
        Some(SimCommand::Gen(g)) => {
            let spec = GenSpec {
                family: g.family,
                models: g.models,
                accesses: g.accesses,
                days: g.days,
                zipf_s: g.zipf,
                cv: g.cv,
                shift_hours: g.shift_hours,
                scan_every_h: g.scan_every_h,
                scan_models: g.scan_models,
                seed: g.seed,
            };
            let (catalog, trace) = generate(&spec)?;
            save(&g.out, &catalog, &trace)
        }
        Some(SimCommand::Convert {
            source: ConvertSource::Servegen(s),
        }) => {
            let spec = ServegenSpec {
                input: s.input,
                days: s.days,
                accesses: s.accesses,
                seed: s.seed,
            };
            let (catalog, trace) = convert(&spec)?;
            save(&s.out, &catalog, &trace)
        }
        Some(SimCommand::Convert {
            source: ConvertSource::Azure(a),
        }) => {
            let spec = AzureSpec {
                inputs: if a.input.is_empty() {
                    super::azure::default_inputs()
                } else {
                    a.input
                },
                models: a.models,
                zipf_s: a.zipf,
                hours: a.hours,
                seed: a.seed,
            };
            let (catalog, trace) = super::azure::convert(&spec)?;
            save(&a.out, &catalog, &trace)
        }
        None => {
            let r = args.run;
            let (Some(catalog), Some(trace)) = (r.catalog.as_deref(), r.trace.as_deref()) else {
                return Err(SimError::Invalid(
                    "tierd sim needs --catalog FILE and --trace FILE (or a subcommand: gen, convert)".into(),
                ));
            };
            if let Some(p) = &r.plot {
                super::report::check_plot_path(p)?;
            }
            let cfg = load_config(r.config.as_deref())?;
            let policies = policy_list(&r.policy)?;
            let catalog = Catalog::load(catalog)?;
            let trace_path = trace;
            let trace = Trace::load(trace, &catalog)?;
            if let Some(spec) = &r.tierd_params {
                TierdParams::default()
                    .with_overrides(spec)
                    .map_err(|e| SimError::Invalid(format!("--tierd-params: {e}")))?;
            }
            let tierd = r.tierd_params.as_deref();
            let report = if r.timing {
                let mut runs = Vec::new();
                for p in &policies {
                    let start = std::time::Instant::now();
                    let cpu0 = thread_cpu_s();
                    let mode_cfg = super::replay::mode_config(&cfg, r.moves);
                    let policy = super::replay::build_policy_with(p, &mode_cfg, &catalog, &trace, tierd)?;
                    let run = super::replay(&cfg, &catalog, &trace, policy, r.moves)?;
                    let secs = start.elapsed().as_secs_f64();
                    let cpu = thread_cpu_s() - cpu0;
                    eprintln!(
                        "{p}: {} accesses replayed in {secs:.3} s wall ({:.0}/s), {cpu:.3} s CPU ({:.0}/s)",
                        trace.len(),
                        trace.len() as f64 / secs,
                        trace.len() as f64 / cpu.max(1e-9)
                    );
                    runs.push(run);
                }
                let start = std::time::Instant::now();
                let lower_bound_s = super::bound::lower_bound_s(&cfg, &catalog, &trace);
                eprintln!("lower bound: {:.3} s", start.elapsed().as_secs_f64());
                super::Report {
                    accesses: trace.len(),
                    lower_bound_s,
                    runs,
                }
            } else {
                compare_with(&cfg, &catalog, &trace, &policies, r.moves, tierd)?
            };
            match r.report {
                ReportFormat::Json => println!("{}", report.to_json()),
                ReportFormat::Table => print!("{}", report.to_table()),
            }
            if let Some(p) = &r.plot {
                report.plot(p, &workload_name(trace_path))?;
            }
            Ok(())
        }
    }
}

/// The name a plot is titled with: the trace's directory for a
/// `trace.csv` (as `tierd sim gen --out DIR` writes), else its file stem.
fn workload_name(trace: &Path) -> String {
    let stem = trace.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem == "trace"
        && let Some(dir) = trace.parent().and_then(|p| p.file_name())
    {
        return dir.to_string_lossy().into_owned();
    }
    stem
}

/// Writes a made workload to `out` and says so.
fn save(out: &Path, catalog: &Catalog, trace: &Trace) -> Result<(), SimError> {
    write_workload(out, catalog, trace)?;
    println!(
        "wrote {} models and {} accesses to {}",
        catalog.names.len(),
        trace.len(),
        out.display()
    );
    Ok(())
}

/// CPU seconds this thread has used (for `--timing` on a busy machine,
/// where wall time also counts other processes' turns).
fn thread_cpu_s() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
