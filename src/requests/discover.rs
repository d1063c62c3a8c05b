//! `discover`: what every model source (`[[sources]]`) found at its last
//! scan, changing nothing: per source its kind, directory, `register`
//! mode, whether it could be read and what it could not read as a model;
//! per model its name, files (origin paths, as symlinks resolve), size,
//! components (projector, adapter), revision, whether it is registered,
//! and why it is unavailable if it is. `missing` lists the registered
//! models that their source no longer finds (unavailable until it does).
//!
//! The server scans at start and again on every change it is told of
//! (inotify) and every `rescan_s`; `scanned_at` says when (engine time).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::bytes_to_gb;
use crate::error::EngineError;
use crate::sources::Component;
use crate::tiers::Engine;

use super::wire::flag;
use super::{Command, Outcome};

/// `{"discover": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discover;

/// One file of a found model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredFile {
    pub path: PathBuf,
    pub size: u64,
}

/// One model a source found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredModel {
    pub model_name: String,
    pub kind: String,
    pub files: Vec<DiscoveredFile>,
    pub bytes: u64,
    pub size_gb: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Component>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Whether a model of this name is registered.
    pub registered: bool,
    /// Why the registered model is unavailable, if it is.
    pub unavailable: Option<String>,
    /// Why registering it failed (`register = "auto"`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_error: Option<String>,
}

/// One source's scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredSource {
    pub index: usize,
    pub kind: String,
    pub path: PathBuf,
    /// `auto` or `list`.
    pub register: String,
    /// Why the source could not be read at all.
    pub error: Option<String>,
    /// Entries that could not be read as models, with why.
    pub problems: Vec<String>,
    pub models: Vec<DiscoveredModel>,
}

/// A registered model that its source no longer finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingModel {
    pub model_name: String,
    pub reason: String,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoverResponse {
    pub status: String,
    /// Engine time of the scan; `null` when no scan has been made (no
    /// `[[sources]]`, or a server that does not scan).
    pub scanned_at: Option<f64>,
    pub sources: Vec<DiscoveredSource>,
    pub missing: Vec<MissingModel>,
}

impl DiscoverResponse {
    /// Every model found, all sources together.
    pub fn models(&self) -> impl Iterator<Item = &DiscoveredModel> {
        self.sources.iter().flat_map(|s| s.models.iter())
    }
}

/// The answer for `engine` as it stands.
pub fn discovered(engine: &Engine) -> DiscoverResponse {
    let state = engine.state();
    let Some(d) = engine.discovery() else {
        return DiscoverResponse {
            status: "success".into(),
            scanned_at: None,
            sources: Vec::new(),
            missing: Vec::new(),
        };
    };
    let sources = d
        .sources
        .iter()
        .map(|s| DiscoveredSource {
            index: s.index,
            kind: s.kind.as_str().into(),
            path: s.path.clone(),
            register: match s.register {
                crate::config::SourceRegister::Auto => "auto".into(),
                crate::config::SourceRegister::List => "list".into(),
            },
            error: s.error.clone(),
            problems: s.problems.clone(),
            models: s
                .models
                .iter()
                .map(|m| {
                    let reg = state.model_id(&m.name).and_then(|id| state.model(id));
                    DiscoveredModel {
                        model_name: m.name.clone(),
                        kind: s.kind.as_str().into(),
                        files: m
                            .files
                            .files
                            .iter()
                            .map(|f| DiscoveredFile {
                                path: m.files.origin_file(f),
                                size: f.size,
                            })
                            .collect(),
                        bytes: m.files.bytes,
                        size_gb: bytes_to_gb(m.files.bytes),
                        components: m.components.clone(),
                        revision: m.revision.clone(),
                        registered: reg.is_some(),
                        unavailable: reg.and_then(|r| r.unavailable.clone()),
                        register_error: d.register_errors.get(&m.name).cloned(),
                    }
                })
                .collect(),
        })
        .collect();
    let mut missing: Vec<MissingModel> = engine
        .source_missing
        .iter()
        .filter_map(|(id, reason)| {
            state.model(*id).map(|m| MissingModel {
                model_name: m.name.to_string(),
                reason: reason.clone(),
            })
        })
        .collect();
    missing.sort_by(|a, b| a.model_name.cmp(&b.model_name));
    DiscoverResponse {
        status: "success".into(),
        scanned_at: Some(d.scanned_at),
        sources,
        missing,
    }
}

impl Command for Discover {
    const KEY: &'static str = "discover";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| Discover)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&discovered(engine))
    }
}
