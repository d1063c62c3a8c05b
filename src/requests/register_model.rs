//! `register_model`: adds a model to the catalog.
//!
//! Fields: `model_name`; `size_gb` (the simulated machine) or `path` (a
//! weights file or a directory of shards: a real machine measures the
//! files); optional `preferred_tier`. On the simulated machine the model is
//! placed in the preferred tier if it has room, else the next slower tier
//! with room, else the last; on a real machine it starts at its origin and
//! a move takes it to that tier ([`Engine::register`]).
//!
//! The checks come in the order: not registered yet, `size_gb` a number
//! from 0 to 1,000,000 GB (`config::MAX_GB`; checked as the line is read,
//! so an over-range size is refused first), the preferred tier exists, then (real machine) the
//! name can name a directory and a path is given, and the files are found.
//! Finding the files is blocking I/O, bounded by `max_files_per_model`,
//! and is done before the engine is locked ([`Command::prepare`]): another
//! client's requests do not wait for it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::gb_to_bytes;
use crate::drivers::MachineKind;
use crate::drivers::files::{ModelFiles, check_model_name};
use crate::error::EngineError;
use crate::tiers::{Engine, Registration};

use super::wire::{de_size_gb, fields, gb_out_of_range};
use super::{Command, Outcome, Prepare};

/// `register_model`'s fields (also the MCP tool's input, its JSON Schema
/// derived from here; `files` is internal and not in it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    /// A new model's name (unique).
    #[schemars(length(min = 1))]
    pub model_name: String,
    /// Its size in GB, 0 to [`crate::config::MAX_GB`] (the simulated
    /// backend; the real one measures the files at `path`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_size_gb")]
    #[schemars(
        range(min = 0.0, max = 1_000_000.0),
        description = "Its size in GB, 0 to 1,000,000 (the simulated backend; the real one measures the files at path)."
    )]
    pub size_gb: Option<f64>,
    /// The tier to place it in (default: the slowest tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_tier: Option<String>,
    /// Weights file or directory (a real machine).
    #[schemars(description = "Its weights file or directory of shards (required by the real backend).")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The files found at `path` before the engine was locked.
    #[serde(skip)]
    pub files: Option<ModelFiles>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterModelResponse {
    pub status: String,
    pub model_name: String,
    pub size_gb: f64,
    /// The tier chosen for it.
    pub tier: String,
    /// The move taking it there (a real machine).
    pub job_id: Option<String>,
    /// Its stable serve path (a real machine; see `model_info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_path: Option<PathBuf>,
}

impl RegisterModel {
    /// The checks that need the engine but no I/O, in the documented order.
    pub fn precheck(&self, engine: &Engine) -> Result<(), EngineError> {
        if engine.state().model_id(&self.model_name).is_some() {
            return Err(EngineError::DuplicateModel {
                model: self.model_name.clone(),
            });
        }
        if let Some(message) = self.size_gb.and_then(|gb| gb_out_of_range("size_gb", gb)) {
            return Err(EngineError::bad_request(message));
        }
        if let Some(t) = &self.preferred_tier
            && engine.state().tier_index(t).is_none()
        {
            return Err(EngineError::UnknownTier {
                tier: t.clone(),
                known: engine.state().tier_names(),
            });
        }
        if engine.machine_kind() == MachineKind::Real {
            check_model_name(&self.model_name).map_err(EngineError::bad_request)?;
            if self.path.is_none() {
                return Err(EngineError::bad_request(
                    "register_model needs \"path\" (a weights file or a directory of shards) with the real backend",
                ));
            }
        }
        Ok(())
    }

    fn walk(&mut self, max_files: usize) -> Result<(), EngineError> {
        if let Some(path) = &self.path {
            self.files = Some(ModelFiles::walk(path, max_files).map_err(EngineError::bad_request)?);
        }
        Ok(())
    }
}

impl Command for RegisterModel {
    const KEY: &'static str = "register_model";

    fn parse(body: Value) -> Result<Self, EngineError> {
        let r: RegisterModel = fields(Self::KEY, body)?;
        if r.model_name.is_empty() {
            return Err(EngineError::bad_request("register_model: model_name must not be empty"));
        }
        Ok(r)
    }

    fn body(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn needs_prepare(&self, ctx: &Prepare) -> bool {
        ctx.walk_files && self.path.is_some() && self.files.is_none()
    }

    fn prepare(&mut self, ctx: &Prepare) -> Result<(), EngineError> {
        if self.needs_prepare(ctx) {
            self.walk(ctx.max_files)?;
        }
        Ok(())
    }

    fn apply(mut self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        self.precheck(engine)?;
        if engine.machine_kind() == MachineKind::Real && self.files.is_none() {
            // Not prepared (a caller without a server): walk now.
            self.walk(engine.config().max_files_per_model)?;
        }
        let reg = Registration {
            name: self.model_name.clone(),
            size_bytes: self.size_gb.map(gb_to_bytes),
            path: self.path,
            files: self.files,
            preferred_tier: self.preferred_tier,
        };
        let r = engine.register(now, reg)?;
        Outcome::reply(&RegisterModelResponse {
            status: "success".into(),
            serve_path: engine.serve_path(&self.model_name),
            model_name: self.model_name,
            size_gb: crate::config::bytes_to_gb(r.bytes),
            tier: r.tier,
            job_id: r.job_id,
        })
    }
}
