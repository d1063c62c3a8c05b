//! Model sources: where models are discovered. One file per kind of store:
//! - [`ollama`]: Ollama's store (`manifests/` naming blobs in `blobs/`);
//! - [`huggingface`]: the Hugging Face hub cache (`models--org--name/`);
//! - [`dir`]: a directory of `*.gguf` files and subdirectories of shards.
//!
//! A source only reads: [`Sources::scan`] lists what every source holds
//! now ([`Discovery`]), with each model's name, files and size, and the
//! directories whose changes mean a rescan ([`Sources::watch_dirs`]). The
//! server scans at start and on change, registers what `register = "auto"`
//! sources find through `register_model`, and marks models that vanished
//! from their source unavailable (`crate::server::sources`).
//!
//! Adding a kind of store is one new file with a `scan` and a
//! `watch_dirs`, and one line in [`Source::scan`] and [`Source::watch_dirs`].

pub mod dir;
pub mod huggingface;
pub mod ollama;

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

pub use crate::config::{SourceConfig, SourceKind, SourceRegister};
use crate::drivers::files::{ModelFiles, check_model_name};

/// A file of a model that is not its weights: an Ollama projector or
/// adapter layer, a GGUF repository's `mmproj` file. Listed, not moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// `projector`, `adapter`, ...
    pub role: String,
    pub path: PathBuf,
    pub size: u64,
}

/// One model a source found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The name it is registered under (`llama3.2:latest`, `org/name`,
    /// `org/name:Q4_K_M`, a file stem).
    pub name: String,
    /// Its weight files: what registration records and moves carry.
    pub files: ModelFiles,
    /// Other files it comes with (see [`Component`]).
    pub components: Vec<Component>,
    /// The revision it was read from (Hugging Face: the snapshot's commit).
    pub revision: Option<String>,
}

/// What one source holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceScan {
    /// The source's position in `[[sources]]`.
    pub index: usize,
    pub kind: SourceKind,
    pub path: PathBuf,
    pub register: SourceRegister,
    /// Found models that pass `include`/`exclude`, sorted by name.
    pub models: Vec<Found>,
    /// Why the source could not be read at all (its directory is missing):
    /// then it found nothing, and nothing it found before is marked gone.
    pub error: Option<String>,
    /// Entries that could not be read as models (a broken manifest, a
    /// missing blob, a name tierd refuses), each with why.
    pub problems: Vec<String>,
}

/// What every source holds now, in `[[sources]]` order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Discovery {
    /// Engine time of the scan (set by whoever scans).
    pub scanned_at: f64,
    pub sources: Vec<SourceScan>,
    /// Why a found model could not be registered (`register = "auto"`),
    /// by name: its registration is tried again at each scan.
    pub register_errors: std::collections::BTreeMap<String, String>,
}

impl Discovery {
    /// The model named `name`, the first source that has it.
    pub fn find(&self, name: &str) -> Option<(&SourceScan, &Found)> {
        self.sources
            .iter()
            .find_map(|s| s.models.iter().find(|m| m.name == name).map(|m| (s, m)))
    }
}

/// A source ready to scan: its configuration, the directory it reads and
/// its compiled patterns.
#[derive(Debug, Clone)]
pub struct Source {
    pub index: usize,
    pub cfg: SourceConfig,
    pub path: PathBuf,
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// Entries a directory model is walked for at most (`max_files_per_model`).
    max_files: usize,
}

/// The environment a default path is read from (a function, so tests can
/// give their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment, empty values counting as unset.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The directory a source reads: its `path`, else its kind's default (see
/// [`SourceConfig::path`]). Ollama's fallbacks are tried in order, the
/// first that exists counting (the last when none does).
pub fn source_path(cfg: &SourceConfig, env: Env<'_>) -> Result<PathBuf, String> {
    if let Some(p) = &cfg.path {
        return Ok(p.clone());
    }
    let home = env("HOME").map(PathBuf::from);
    match cfg.kind {
        SourceKind::Ollama => {
            if let Some(p) = env("OLLAMA_MODELS") {
                return Ok(PathBuf::from(p));
            }
            let system = PathBuf::from("/usr/share/ollama/.ollama/models");
            match home.map(|h| h.join(".ollama/models")) {
                Some(user) if user.exists() || !system.exists() => Ok(user),
                _ => Ok(system),
            }
        }
        SourceKind::Huggingface => {
            if let Some(p) = env("HF_HUB_CACHE") {
                return Ok(PathBuf::from(p));
            }
            if let Some(p) = env("HF_HOME") {
                return Ok(PathBuf::from(p).join("hub"));
            }
            home.map(|h| h.join(".cache/huggingface/hub"))
                .ok_or_else(|| "no path given and neither HF_HUB_CACHE, HF_HOME nor HOME is set".to_string())
        }
        SourceKind::Dir => Err("a dir source needs a path".to_string()),
    }
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| format!("pattern {p:?}: {e}"))?);
    }
    b.build().map_err(|e| e.to_string())
}

impl Source {
    /// Compiles a `[[sources]]` entry (the `index`-th).
    pub fn new(index: usize, cfg: &SourceConfig, env: Env<'_>, max_files: usize) -> Result<Source, String> {
        let path = source_path(cfg, env).map_err(|e| format!("sources[{index}] ({}): {e}", cfg.kind.as_str()))?;
        let include = if cfg.include.is_empty() {
            None
        } else {
            Some(glob_set(&cfg.include)?)
        };
        Ok(Source {
            index,
            cfg: cfg.clone(),
            path,
            include,
            exclude: glob_set(&cfg.exclude)?,
            max_files,
        })
    }

    /// Whether `include`/`exclude` keep the model named `name`.
    pub fn keeps(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(name)) && !self.exclude.is_match(name)
    }

    /// What the source holds now. Blocking I/O.
    pub fn scan(&self) -> SourceScan {
        let mut out = SourceScan {
            index: self.index,
            kind: self.cfg.kind,
            path: self.path.clone(),
            register: self.cfg.register,
            models: Vec::new(),
            error: None,
            problems: Vec::new(),
        };
        if !self.path.is_dir() {
            out.error = Some(format!("{} is not a directory", self.path.display()));
            return out;
        }
        let (found, problems) = match self.cfg.kind {
            SourceKind::Ollama => ollama::scan(&self.path),
            SourceKind::Huggingface => huggingface::scan(&self.path, &self.cfg.revision),
            SourceKind::Dir => dir::scan(&self.path, self.max_files),
        };
        out.problems = problems;
        for m in found {
            if !self.keeps(&m.name) {
                continue;
            }
            match check_model_name(&m.name) {
                Ok(()) => out.models.push(m),
                Err(e) => out.problems.push(e),
            }
        }
        out.models.sort_by(|a, b| a.name.cmp(&b.name));
        out.models.dedup_by(|b, a| {
            let dup = a.name == b.name;
            if dup {
                out.problems.push(format!("{}: found twice; the first is kept", a.name));
            }
            dup
        });
        out
    }

    /// The directories whose changes may change what the source holds.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        if !self.path.is_dir() {
            // Created later: its parent says when.
            return self
                .path
                .parent()
                .filter(|p| p.is_dir())
                .map(Path::to_path_buf)
                .into_iter()
                .collect();
        }
        match self.cfg.kind {
            SourceKind::Ollama => ollama::watch_dirs(&self.path),
            SourceKind::Huggingface => huggingface::watch_dirs(&self.path),
            SourceKind::Dir => dir::watch_dirs(&self.path),
        }
    }
}

/// Every configured source.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub sources: Vec<Source>,
}

impl Sources {
    /// Compiles the configuration's `[[sources]]`.
    pub fn new(cfgs: &[SourceConfig], env: Env<'_>, max_files: usize) -> Result<Sources, String> {
        let sources = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| Source::new(i, c, env, max_files))
            .collect::<Result<_, _>>()?;
        Ok(Sources { sources })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// What every source holds now (`scanned_at` left 0). Blocking I/O.
    pub fn scan(&self) -> Discovery {
        Discovery {
            scanned_at: 0.0,
            sources: self.sources.iter().map(Source::scan).collect(),
            register_errors: Default::default(),
        }
    }

    /// Every directory to watch, each once.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self.sources.iter().flat_map(Source::watch_dirs).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The shortest `rescan_s` of the sources.
    pub fn rescan_s(&self) -> Option<f64> {
        self.sources.iter().map(|s| s.cfg.rescan_s).reduce(f64::min)
    }
}

/// The subdirectories of `dir` (not following symlinks), sorted; none when
/// it cannot be read.
pub(crate) fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// The file name of `p` as text (lossy).
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: SourceKind) -> SourceConfig {
        SourceConfig {
            kind,
            path: None,
            include: Vec::new(),
            exclude: Vec::new(),
            register: SourceRegister::Auto,
            revision: "main".into(),
            rescan_s: 60.0,
        }
    }

    #[test]
    fn default_paths_follow_the_environment() {
        let env =
            |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let hf = cfg(SourceKind::Huggingface);
        let p = |c: &SourceConfig, e: &dyn Fn(&str) -> Option<String>| source_path(c, e).expect("path");
        assert_eq!(p(&hf, &env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")])), PathBuf::from("/c"));
        assert_eq!(p(&hf, &env(&[("HF_HOME", "/h"), ("HOME", "/home/u")])), PathBuf::from("/h/hub"));
        assert_eq!(
            p(&hf, &env(&[("HOME", "/home/u")])),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert!(source_path(&hf, &env(&[])).is_err());
        let ol = cfg(SourceKind::Ollama);
        assert_eq!(p(&ol, &env(&[("OLLAMA_MODELS", "/o"), ("HOME", "/home/u")])), PathBuf::from("/o"));
        let home_default = p(&ol, &env(&[("HOME", "/nonexistent-home")]));
        let system = Path::new("/usr/share/ollama/.ollama/models");
        if system.exists() {
            assert_eq!(home_default, system);
        } else {
            assert_eq!(home_default, PathBuf::from("/nonexistent-home/.ollama/models"));
        }
        let mut given = cfg(SourceKind::Dir);
        assert!(source_path(&given, &env(&[])).is_err());
        given.path = Some("/models".into());
        assert_eq!(p(&given, &env(&[("HOME", "/x")])), PathBuf::from("/models"));
    }

    #[test]
    fn include_and_exclude_are_globs_over_names() {
        let mut c = cfg(SourceKind::Dir);
        c.path = Some("/m".into());
        c.include = vec!["llama*".into(), "meta-llama/*".into()];
        c.exclude = vec!["*:Q2_K".into()];
        let s = Source::new(0, &c, &|_| None, 10).expect("source");
        assert!(s.keeps("llama3.2:latest"));
        assert!(s.keeps("meta-llama/Llama-3.2-1B"));
        assert!(!s.keeps("llama3.2:Q2_K"));
        assert!(!s.keeps("qwen2:7b"));
        c.include.clear();
        let s = Source::new(0, &c, &|_| None, 10).expect("source");
        assert!(s.keeps("qwen2:7b") && !s.keeps("x:Q2_K"));
        c.exclude = vec!["[".into()];
        assert!(Source::new(0, &c, &|_| None, 10).is_err());
    }
}
