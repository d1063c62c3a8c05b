//! Configuration: the one structure every tier, limit, speed and safety
//! constraint comes from.
//!
//! The server, the simulated hardware, the real backend and the simulation
//! harness all read the same TOML format. Tiers are listed fastest first; the
//! last tier is unbounded (it is where models live when they are not loaded).
//! Adding a tier (GPU, NVMe, disk) is a configuration change, never an engine
//! change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes in one GB as the protocol counts them (decimal, like seed 001's
/// byte figures: 16 GB = 16_000_000_000).
pub const BYTES_PER_GB: f64 = 1e9;

/// The largest GB figure tierd accepts anywhere (sizes, limits, reserves):
/// one million GB (1 PB). Larger figures are refused, never saturated, so
/// sums of them fit the byte books' `u64` by a wide margin.
pub const MAX_GB: f64 = 1_000_000.0;

/// Whether `gb` is a GB figure tierd accepts: finite, 0 to [`MAX_GB`].
pub fn in_gb_range(gb: f64) -> bool {
    gb.is_finite() && (0.0..=MAX_GB).contains(&gb)
}

/// Converts a protocol GB figure to bytes (rounded to the nearest byte).
pub fn gb_to_bytes(gb: f64) -> u64 {
    if gb.is_finite() && gb > 0.0 {
        (gb * BYTES_PER_GB).round() as u64
    } else {
        0
    }
}

/// Converts bytes to the protocol's GB figure.
pub fn bytes_to_gb(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_GB
}

/// The policy of the server and the simulator when the configuration names
/// none.
pub const DEFAULT_POLICY: &str = "tierd";

/// The embedded default: the seed's configuration and example catalog.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../fixtures/default.toml");

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML did not parse or had fields of the wrong type.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values parsed but do not describe a usable set of tiers.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// One tier, as configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Tier name used on the wire (`ram`, `swap`, `storage`, `gpu0`, ...).
    pub name: String,
    /// Hardware driver for the real backend (`pagecache`, `dir`, `gpu`,
    /// `storage`); ignored by the simulated backend.
    #[serde(default)]
    pub driver: Option<String>,
    /// Directory of a `dir` tier (real backend).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Byte budget for models in this tier. `None` means unbounded, which
    /// only the last tier may be.
    #[serde(default)]
    pub max_gb: Option<f64>,
    /// Memory kept free for the rest of the system (RAM tier).
    #[serde(default)]
    pub reserved_gb: Option<f64>,
    /// Safety minimum for `max_gb` when changed at run time.
    #[serde(default)]
    pub min_max_gb: Option<f64>,
    /// Safety minimum for `reserved_gb` when changed at run time.
    #[serde(default)]
    pub min_reserved_gb: Option<f64>,
    /// Seconds per GB to load a model from this tier.
    #[serde(default = "default_access")]
    pub access_s_per_gb: f64,
    /// Simulated backend: total hardware capacity of this tier. The
    /// hardware's `available_gb` is this minus `reserved_gb` minus what the
    /// tier holds. `None` = as large as the limit plus reserve.
    #[serde(default)]
    pub hardware_gb: Option<f64>,
    /// Optional cap on the number of models resident in this tier.
    #[serde(default)]
    pub max_models: Option<usize>,
    /// Memory-pressure floor (seed 004): when the hardware's available
    /// memory for this tier drops below it (other programs grew), the
    /// coldest unpinned models are demoted until it recovers.
    #[serde(default)]
    pub min_free_gb: Option<f64>,
    /// Permission bits of a `dir` tier's directory when tierd creates it
    /// (TOML octal, `mode = 0o700`); 0700 when absent.
    #[serde(default)]
    pub mode: Option<u32>,
    // ------------------------------------------------- engine tiers only
    // (`driver = "llama-server" | "ollama" | "vllm"`; see drivers::engine)
    /// Where the engine answers: `http://127.0.0.1:PORT`,
    /// `http://localhost:PORT` or `unix:/path/to.sock`.
    #[serde(default)]
    pub url: Option<String>,
    /// Accept an engine URL on another host (off: an engine tier drives a
    /// process on this machine, whose files it pins).
    #[serde(default)]
    pub allow_remote_engines: bool,
    /// Seconds between two looks at the engine's loaded set (default 1).
    #[serde(default)]
    pub poll_s: Option<f64>,
    /// Longest a load may take before the move fails and the half-loaded
    /// model is unloaded (default 600 s).
    #[serde(default)]
    pub load_timeout_s: Option<f64>,
    /// A model's footprint in the engine, as a multiple of its file size,
    /// where neither the engine nor NVML measures it (default 1.2: weights
    /// plus a small context and compute buffers).
    #[serde(default)]
    pub footprint_factor: Option<f64>,
    /// Engine options sent with every load (Ollama `options`, such as
    /// `num_ctx`); passed through as JSON.
    #[serde(default)]
    pub options: Option<toml::Table>,
    /// The engine's argv, when tierd starts the engine itself (llama-server:
    /// restarted with backoff when it dies, stopped at shutdown).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// vLLM: one entry per instance (each serves one model).
    #[serde(default)]
    pub instances: Option<Vec<EngineInstance>>,
}

/// One vLLM instance of a `vllm` tier: the model it serves and its URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineInstance {
    pub model: String,
    pub url: String,
}

/// The engine-tier drivers (their tiers take the engine keys above).
pub const ENGINE_DRIVERS: &[&str] = &["llama-server", "ollama", "vllm"];

/// Default seconds between two looks at an engine.
pub const DEFAULT_POLL_S: f64 = 1.0;
/// Default longest load.
pub const DEFAULT_LOAD_TIMEOUT_S: f64 = 600.0;
/// Default footprint multiple of a model's file size.
pub const DEFAULT_FOOTPRINT_FACTOR: f64 = 1.2;

impl TierConfig {
    /// Whether this tier is an inference engine's.
    pub fn is_engine(&self) -> bool {
        self.driver.as_deref().is_some_and(|d| ENGINE_DRIVERS.contains(&d))
    }
}

fn default_access() -> f64 {
    1.0
}

/// Move speeds, concurrency and retry behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MoveConfig {
    /// Seconds per GB to move a model to a faster tier.
    pub promote_s_per_gb: f64,
    /// Seconds per GB to move a model to a slower tier.
    pub demote_s_per_gb: f64,
    /// Moves that may run at once.
    pub max_concurrent: usize,
    /// Retries of a transiently failed move, unless the request says otherwise.
    pub max_retries: u32,
    /// First retry delay in seconds; doubles each attempt.
    pub retry_base_s: f64,
    /// Upper bound on one retry delay.
    pub retry_cap_s: f64,
}

impl Default for MoveConfig {
    fn default() -> Self {
        MoveConfig {
            promote_s_per_gb: 0.3,
            demote_s_per_gb: 0.2,
            max_concurrent: 4,
            max_retries: 2,
            retry_base_s: 0.5,
            retry_cap_s: 30.0,
        }
    }
}

/// Simulated hardware settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of the simulation's one random generator.
    pub seed: u64,
    /// Probability that a move fails (transiently) part way.
    pub fault_probability: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            fault_probability: 0.0,
        }
    }
}

/// Usage tracking settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Half-life of the decayed access frequency, in seconds.
    pub half_life_s: f64,
    /// Decayed frequency at or above which a model is `hot`.
    pub hot_threshold: f64,
    /// Decayed frequency at or above which a model is `warm`.
    pub warm_threshold: f64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            half_life_s: 3600.0,
            hot_threshold: 4.0,
            warm_threshold: 1.0,
        }
    }
}

/// Utilization thresholds of the pressure levels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PressureConfig {
    pub medium: f64,
    pub high: f64,
    pub critical: f64,
}

impl Default for PressureConfig {
    fn default() -> Self {
        // Seed 000: keep RAM utilization below 90%.
        PressureConfig {
            medium: 0.75,
            high: 0.9,
            critical: 0.98,
        }
    }
}

/// One model of a catalog embedded in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub size_gb: f64,
    /// Tier it starts in; the last tier when absent.
    #[serde(default)]
    pub tier: Option<String>,
    /// Usage count it starts with.
    #[serde(default)]
    pub usage: u64,
    /// File or directory of the weights (real backend).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest model any tier but the last may hold.
    #[serde(default = "default_max_single")]
    pub max_single_model_gb: f64,
    /// Tiers, fastest first; the last is unbounded.
    pub tiers: Vec<TierConfig>,
    #[serde(default)]
    pub moves: MoveConfig,
    #[serde(default)]
    pub sim: SimConfig,
    #[serde(default)]
    pub usage: UsageConfig,
    #[serde(default)]
    pub pressure: PressureConfig,
    /// Placement policy name (see `optimizer::POLICY_NAMES`).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Run `auto_optimize` every this many seconds; off when absent.
    #[serde(default)]
    pub auto_optimize_interval_s: Option<f64>,
    /// Ended jobs kept for `tier_job_status` and history.
    #[serde(default = "default_job_history")]
    pub job_history: usize,
    /// Where the real backend keeps its state file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Entries a registration walks at most in a model's directory (before
    /// the engine is locked); a larger directory is refused.
    #[serde(default = "default_max_files")]
    pub max_files_per_model: usize,
    /// Socket connections served at once. At the cap, the connection idle
    /// longest (no request in flight, no watch) is closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a partial request line may take from its first byte to its
    /// newline before the connection is closed.
    #[serde(default = "default_line_timeout")]
    pub line_timeout_s: f64,
    /// Bytes all connections together may hold in partial request lines;
    /// a line that would exceed it is refused.
    #[serde(default = "default_max_partial_bytes")]
    pub max_partial_line_bytes: u64,
    /// Peer uids allowed on the socket besides the server's own and root.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// Peer gids (primary or supplementary) allowed on the socket.
    #[serde(default)]
    pub allowed_gids: Vec<u32>,
    /// Models present at start (the simulated default catalog).
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

fn default_max_single() -> f64 {
    7.0
}
fn default_policy() -> String {
    DEFAULT_POLICY.to_string()
}
fn default_max_files() -> usize {
    10_000
}
fn default_job_history() -> usize {
    1000
}
fn default_max_connections() -> usize {
    1024
}
fn default_line_timeout() -> f64 {
    30.0
}
fn default_max_partial_bytes() -> u64 {
    256 * 1024 * 1024
}

impl Config {
    /// The seed configuration with its example catalog.
    pub fn seed_default() -> Config {
        // The embedded file is part of the binary and covered by tests; a
        // failure here is a build defect, so fall back to a minimal seed.
        Config::from_toml(DEFAULT_CONFIG_TOML).unwrap_or_else(|_| Config::minimal_seed())
    }

    /// The seed's tiers without any models.
    pub fn minimal_seed() -> Config {
        let tier = |name: &str, max: Option<f64>, access: f64| TierConfig {
            name: name.to_string(),
            driver: None,
            path: None,
            max_gb: max,
            reserved_gb: None,
            min_max_gb: None,
            min_reserved_gb: None,
            access_s_per_gb: access,
            hardware_gb: None,
            max_models: None,
            min_free_gb: None,
            mode: None,
            url: None,
            allow_remote_engines: false,
            poll_s: None,
            load_timeout_s: None,
            footprint_factor: None,
            options: None,
            command: None,
            instances: None,
        };
        let mut ram = tier("ram", Some(5.0), 0.1);
        ram.reserved_gb = Some(1.0);
        ram.min_max_gb = Some(1.0);
        ram.min_reserved_gb = Some(0.5);
        let mut swap = tier("swap", Some(10.0), 0.5);
        swap.min_max_gb = Some(2.0);
        Config {
            max_single_model_gb: 7.0,
            tiers: vec![ram, swap, tier("storage", None, 2.0)],
            moves: MoveConfig::default(),
            sim: SimConfig::default(),
            usage: UsageConfig::default(),
            pressure: PressureConfig::default(),
            policy: default_policy(),
            auto_optimize_interval_s: None,
            job_history: default_job_history(),
            state_dir: None,
            max_files_per_model: default_max_files(),
            max_connections: default_max_connections(),
            line_timeout_s: default_line_timeout(),
            max_partial_line_bytes: default_max_partial_bytes(),
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            models: Vec::new(),
        }
    }

    /// Parses and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Checks that the tiers make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.tiers.len() < 2 {
            return bad("at least two tiers are needed (a fast one and the unbounded last one)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            if t.name.is_empty() || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return bad(format!("tier name {:?} must be ASCII letters, digits, '_' or '-'", t.name));
            }
            if !seen.insert(t.name.clone()) {
                return bad(format!("tier {:?} is listed twice", t.name));
            }
            let last = i + 1 == self.tiers.len();
            match t.max_gb {
                None if !last => {
                    return bad(format!("tier {:?} needs max_gb (only the last tier is unbounded)", t.name));
                }
                Some(m) if !in_gb_range(m) => {
                    return bad(format!("tier {:?}: max_gb must be between 0 and {MAX_GB}", t.name));
                }
                _ => {}
            }
            if let Some(mode) = t.mode
                && mode > 0o777
            {
                return bad(format!(
                    "tier {:?}: mode {mode:o} is not a permission mode (0o000 to 0o777)",
                    t.name
                ));
            }
            if !(t.access_s_per_gb.is_finite() && t.access_s_per_gb >= 0.0) {
                return bad(format!("tier {:?}: access_s_per_gb must be a non-negative number", t.name));
            }
            for (what, v) in [
                ("reserved_gb", t.reserved_gb),
                ("min_max_gb", t.min_max_gb),
                ("min_reserved_gb", t.min_reserved_gb),
                ("hardware_gb", t.hardware_gb),
                ("min_free_gb", t.min_free_gb),
            ] {
                if let Some(v) = v
                    && !in_gb_range(v)
                {
                    return bad(format!("tier {:?}: {what} must be between 0 and {MAX_GB}", t.name));
                }
            }
            if !t.is_engine() {
                let stray = [
                    ("url", t.url.is_some()),
                    ("poll_s", t.poll_s.is_some()),
                    ("load_timeout_s", t.load_timeout_s.is_some()),
                    ("footprint_factor", t.footprint_factor.is_some()),
                    ("options", t.options.is_some()),
                    ("command", t.command.is_some()),
                    ("instances", t.instances.is_some()),
                ];
                if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                    return bad(format!(
                        "tier {:?}: {key} is an engine-tier key (driver = {})",
                        t.name,
                        ENGINE_DRIVERS.join(" | ")
                    ));
                }
            }
            for (what, v, min) in [
                ("poll_s", t.poll_s, 0.01),
                ("load_timeout_s", t.load_timeout_s, 0.01),
                ("footprint_factor", t.footprint_factor, 0.01),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && (min..=1e6).contains(&v))
                {
                    return bad(format!("tier {:?}: {what} must be a number between {min} and 1000000", t.name));
                }
            }
            if let Some(cmd) = &t.command
                && cmd.first().is_none_or(|c| c.is_empty())
            {
                return bad(format!("tier {:?}: command needs at least the program", t.name));
            }
            if let (Some(m), Some(min)) = (t.max_gb, t.min_max_gb)
                && m < min
            {
                return bad(format!("tier {:?}: max_gb {m} is under its minimum {min}", t.name));
            }
        }
        let m = &self.moves;
        if !(m.promote_s_per_gb.is_finite() && m.promote_s_per_gb >= 0.0 && m.demote_s_per_gb.is_finite() && m.demote_s_per_gb >= 0.0) {
            return bad("moves: promote_s_per_gb and demote_s_per_gb must be non-negative numbers".into());
        }
        if m.max_concurrent == 0 {
            return bad("moves.max_concurrent must be at least 1".into());
        }
        if !(m.retry_base_s.is_finite() && m.retry_base_s >= 0.0 && m.retry_cap_s.is_finite() && m.retry_cap_s >= 0.0) {
            return bad("moves: retry_base_s and retry_cap_s must be non-negative numbers".into());
        }
        if !(0.0..=1.0).contains(&self.sim.fault_probability) {
            return bad("sim.fault_probability must be between 0 and 1".into());
        }
        if !(in_gb_range(self.max_single_model_gb) && self.max_single_model_gb > 0.0) {
            return bad(format!("max_single_model_gb must be a positive number up to {MAX_GB}"));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if !(self.line_timeout_s.is_finite() && self.line_timeout_s > 0.0 && self.line_timeout_s <= 86_400.0) {
            return bad("line_timeout_s must be between 0 (excluded) and 86400".into());
        }
        if self.max_partial_line_bytes == 0 {
            return bad("max_partial_line_bytes must be at least 1".into());
        }
        if self.max_files_per_model == 0 {
            return bad("max_files_per_model must be at least 1".into());
        }
        if !(self.usage.half_life_s.is_finite() && self.usage.half_life_s > 0.0) {
            return bad("usage.half_life_s must be positive".into());
        }
        let mut names = std::collections::HashSet::new();
        for model in &self.models {
            if !names.insert(model.name.as_str()) {
                return bad(format!("model {:?} is listed twice", model.name));
            }
            if !in_gb_range(model.size_gb) {
                return bad(format!("model {:?}: size_gb must be between 0 and {MAX_GB}", model.name));
            }
            if let Some(tier) = &model.tier
                && !self.tiers.iter().any(|t| &t.name == tier)
            {
                return bad(format!("model {:?}: unknown tier {tier:?}", model.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_matches_the_seed() {
        let cfg = Config::from_toml(DEFAULT_CONFIG_TOML).expect("default config parses");
        assert_eq!(cfg.tiers[0].name, "ram");
        assert_eq!(cfg.tiers[0].max_gb, Some(5.0));
        assert_eq!(cfg.tiers[0].reserved_gb, Some(1.0));
        assert_eq!(cfg.tiers[1].max_gb, Some(10.0));
        assert_eq!(cfg.tiers.last().map(|t| t.max_gb), Some(None));
        assert_eq!(cfg.max_single_model_gb, 7.0);
        let ram: f64 = cfg
            .models
            .iter()
            .filter(|m| m.tier.as_deref() == Some("ram"))
            .map(|m| m.size_gb)
            .sum();
        assert!((ram - 4.8).abs() < 1e-9);
    }

    #[test]
    fn issue_example_config_parses() {
        // fixtures/sim/config.toml is the issue's example, verbatim.
        let cfg = Config::from_toml(include_str!("../fixtures/sim/config.toml")).expect("parses");
        assert_eq!(cfg.tiers.len(), 3);
        assert_eq!(cfg.tiers[0].max_gb, Some(48.0));
        assert_eq!(cfg.tiers[1].max_gb, Some(160.0));
        assert_eq!(cfg.tiers[2].max_gb, None);
        assert_eq!(cfg.max_single_model_gb, 64.0);
        assert_eq!(cfg.moves.max_concurrent, 2);
    }

    #[test]
    fn unbounded_middle_tier_is_refused() {
        let text = "[[tiers]]\nname='a'\n[[tiers]]\nname='b'\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("needs max_gb"), "{err}");
    }

    #[test]
    fn over_range_figures_are_refused_not_saturated() {
        let base = "[[tiers]]\nname='a'\nmax_gb=MAX\n[[tiers]]\nname='b'\n";
        let err = Config::from_toml(&base.replace("MAX", "1e308")).unwrap_err().to_string();
        assert!(err.contains("max_gb must be between 0 and 1000000"), "{err}");
        assert!(Config::from_toml(&base.replace("MAX", "1000000.0")).is_ok());
        let model = format!("{}[[models]]\nname='m'\nsize_gb=1e300\n", base.replace("MAX", "1.0"));
        let err = Config::from_toml(&model).unwrap_err().to_string();
        assert!(err.contains("size_gb must be between"), "{err}");
        let mode = base.replace("MAX", "1.0").replace("name='a'", "name='a'\nmode=0o1777");
        let err = Config::from_toml(&mode).unwrap_err().to_string();
        assert!(err.contains("not a permission mode"), "{err}");
        let ok = base.replace("MAX", "1.0").replace("name='a'", "name='a'\nmode=0o750");
        assert_eq!(Config::from_toml(&ok).map(|c| c.tiers[0].mode).ok(), Some(Some(0o750)));
    }

    #[test]
    fn engine_keys_belong_to_engine_tiers() {
        let engine = "[[tiers]]\nname='gpu0'\ndriver='llama-server'\nurl='http://127.0.0.1:8080'\nmax_gb=8.0\nmax_models=2\n\
                      poll_s=0.5\nload_timeout_s=60\nfootprint_factor=1.3\ncommand=['llama-server','--models-dir','/m']\n\
                      options={num_ctx=4096}\n[[tiers]]\nname='storage'\n";
        let cfg = Config::from_toml(engine).expect("engine tier parses");
        let t = &cfg.tiers[0];
        assert!(t.is_engine());
        assert_eq!(t.poll_s, Some(0.5));
        assert_eq!(t.command.as_ref().map(Vec::len), Some(3));
        assert_eq!(
            t.options.as_ref().and_then(|o| o.get("num_ctx")).and_then(toml::Value::as_integer),
            Some(4096)
        );
        let stray = "[[tiers]]\nname='ram'\ndriver='pagecache'\nmax_gb=1.0\nurl='http://127.0.0.1:1'\n[[tiers]]\nname='s'\n";
        let err = Config::from_toml(stray).unwrap_err().to_string();
        assert!(err.contains("url is an engine-tier key"), "{err}");
        let err = Config::from_toml(&engine.replace("poll_s=0.5", "poll_s=0.0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_s must be"), "{err}");
        let err = Config::from_toml(&engine.replace("['llama-server','--models-dir','/m']", "[]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("command needs at least the program"), "{err}");
    }

    #[test]
    fn gb_conversion_round_trips() {
        assert_eq!(gb_to_bytes(4.8), 4_800_000_000);
        assert_eq!(bytes_to_gb(4_800_000_000), 4.8);
        assert_eq!(gb_to_bytes(-1.0), 0);
        assert_eq!(gb_to_bytes(f64::NAN), 0);
    }
}
