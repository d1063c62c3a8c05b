//! Errors a request can end in, with their wire codes (seed 001's list) and the
//! numbers that explain them.
//!
//! Each variant's message is what the user reads; `code()` is the stable
//! machine-readable code and `details()` the figures behind the message.

use serde_json::{Map, Value, json};

/// Seed 001's error codes of error answers. (A move that fails after it
/// was accepted ends its job with an `error_code` instead, such as
/// `TASK_FAILED`: no request answers with that one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ResourceUnavailable,
    ModelNotFound,
    DependencyFailed,
    InvalidRequest,
    Conflict,
    Internal,
    /// A socket peer whose uid/gid the server does not admit (sent by the
    /// connection gate, never by a request).
    PermissionDenied,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ResourceUnavailable => "RESOURCE_UNAVAILABLE",
            ErrorCode::ModelNotFound => "MODEL_NOT_FOUND",
            ErrorCode::DependencyFailed => "DEPENDENCY_FAILED",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
        }
    }
}

fn gb(bytes: u64) -> Value {
    json!(crate::config::bytes_to_gb(bytes))
}

/// Everything the engine can refuse or fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    /// The request could not be understood (bad JSON, wrong types, ...).
    #[error("{message}")]
    BadRequest { message: String, details: Map<String, Value> },
    #[error("Model not found: {model}")]
    ModelNotFound { model: String },
    #[error("Unknown tier {tier:?}; known tiers: {}", known.join(", "))]
    UnknownTier { tier: String, known: Vec<String> },
    #[error("Model already in target tier: {model} is in {tier}")]
    AlreadyInTier { model: String, tier: String },
    #[error("Model {model} already has a pending move ({job_id})")]
    AlreadyMoving { model: String, job_id: String },
    #[error("Model {model} ({} GB) exceeds the maximum single model size of {} GB for tier {tier}", crate::human::sig3(*size_gb), crate::human::sig3(*max_gb))]
    ModelTooLarge {
        model: String,
        size_gb: f64,
        max_gb: f64,
        tier: String,
    },
    #[error("{} limit exceeded: {model} needs {} GB, {} GB free of the {} GB limit", tier.to_uppercase(), crate::human::bytes_gb(*required), crate::human::bytes_gb(*available), crate::human::bytes_gb(*limit))]
    LimitExceeded {
        tier: String,
        model: String,
        required: u64,
        available: u64,
        limit: u64,
    },
    #[error("{} limit exceeded: {tier} may hold at most {max_models} models", tier.to_uppercase())]
    ModelCountExceeded { tier: String, max_models: usize },
    #[error("Insufficient {}: {model} needs {} GB, the hardware has {} GB available", tier.to_uppercase(), crate::human::bytes_gb(*required), crate::human::bytes_gb(*available))]
    Insufficient {
        tier: String,
        model: String,
        required: u64,
        available: u64,
    },
    #[error("Model {model} is already registered")]
    DuplicateModel { model: String },
    #[error(
        "{} is the same file (device and inode) as {} of model {other}, already registered; a file can belong to one model only",
        paths.0,
        paths.1
    )]
    SharedFile {
        model: String,
        other: String,
        /// This model's path of the file, and the registered model's.
        paths: Box<(String, String)>,
    },
    #[error("Job not found: {job_id}")]
    JobNotFound { job_id: String },
    #[error("Job {job_id} has already ended ({status})")]
    JobEnded { job_id: String, status: String },
    #[error("{message}")]
    InvalidLimit {
        key: String,
        value: f64,
        minimum: Option<f64>,
        message: String,
    },
    #[error("Model {model} has a pending move ({job_id}); cancel it or wait for it first")]
    ModelBusy { model: String, job_id: String },
    #[error("{message}")]
    PinnedConflict { tier: String, message: String },
    #[error("Unknown dependency job: {job_id}")]
    UnknownDependency { job_id: String },
    #[error("Dependency {job_id} did not succeed ({status})")]
    DependencyFailed { job_id: String, status: String },
    #[error("Tier {tier} cannot take models: {reason}")]
    TierUnavailable { tier: String, reason: String },
    #[error("Model {model} is unavailable: {reason}")]
    ModelUnavailable { model: String, reason: String },
    #[error("Internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Shorthand for a request that could not be understood.
    pub fn bad_request(message: impl Into<String>) -> EngineError {
        EngineError::BadRequest {
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Seed 001's code for this error.
    pub fn code(&self) -> ErrorCode {
        use EngineError::*;
        match self {
            BadRequest { .. } | UnknownTier { .. } | ModelTooLarge { .. } | InvalidLimit { .. } | UnknownDependency { .. } => {
                ErrorCode::InvalidRequest
            }
            TierUnavailable { .. } => ErrorCode::InvalidRequest,
            ModelNotFound { .. } => ErrorCode::ModelNotFound,
            AlreadyInTier { .. }
            | AlreadyMoving { .. }
            | DuplicateModel { .. }
            | SharedFile { .. }
            | JobEnded { .. }
            | ModelBusy { .. }
            | PinnedConflict { .. } => ErrorCode::Conflict,
            LimitExceeded { .. } | ModelCountExceeded { .. } | Insufficient { .. } | ModelUnavailable { .. } => {
                ErrorCode::ResourceUnavailable
            }
            // Seed 001 has no generic not-found code: an unknown job id is a
            // request naming something that does not exist.
            JobNotFound { .. } => ErrorCode::InvalidRequest,
            DependencyFailed { .. } => ErrorCode::DependencyFailed,
            Internal(_) => ErrorCode::Internal,
        }
    }

    /// The figures behind the message.
    pub fn details(&self) -> Map<String, Value> {
        use EngineError::*;
        let v = match self {
            BadRequest { details, .. } => return details.clone(),
            ModelNotFound { model } => json!({ "model_name": model }),
            UnknownTier { tier, known } => json!({ "tier": tier, "known_tiers": known }),
            AlreadyInTier { model, tier } => json!({ "model_name": model, "tier": tier }),
            AlreadyMoving { model, job_id } | ModelBusy { model, job_id } => json!({ "model_name": model, "job_id": job_id }),
            ModelTooLarge {
                model,
                size_gb,
                max_gb,
                tier,
            } => {
                json!({ "model_name": model, "required": size_gb, "limit": max_gb, "tier": tier })
            }
            LimitExceeded {
                tier,
                model,
                required,
                available,
                limit,
            } => json!({
                "tier": tier, "model_name": model, "required": gb(*required), "available": gb(*available), "limit": gb(*limit), "unit": "GB"
            }),
            ModelCountExceeded { tier, max_models } => json!({ "tier": tier, "max_models": max_models }),
            Insufficient {
                tier,
                model,
                required,
                available,
            } => json!({
                "tier": tier, "model_name": model, "required": gb(*required), "available": gb(*available), "unit": "GB"
            }),
            DuplicateModel { model } => json!({ "model_name": model }),
            SharedFile { model, other, paths } => {
                json!({ "model_name": model, "registered_model": other, "path": paths.0, "registered_path": paths.1 })
            }
            JobNotFound { job_id } => json!({ "job_id": job_id }),
            JobEnded { job_id, status } => json!({ "job_id": job_id, "status": status }),
            InvalidLimit { key, value, minimum, .. } => json!({ "key": key, "value": value, "minimum": minimum }),
            PinnedConflict { tier, .. } => json!({ "tier": tier }),
            UnknownDependency { job_id } => json!({ "job_id": job_id }),
            DependencyFailed { job_id, status } => json!({ "job_id": job_id, "status": status }),
            TierUnavailable { tier, reason } => json!({ "tier": tier, "reason": reason }),
            ModelUnavailable { model, reason } => json!({ "model_name": model, "reason": reason }),
            Internal(_) => json!({}),
        };
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The wire form: `{"code","message","details"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code().as_str(),
            // Figures that reached a message raw (a reason passed through)
            // read as three significant digits too; `details` keeps them whole.
            "message": crate::human::round_gb_in(&self.to_string()),
            "details": Value::Object(self.details()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_seed_phrases() {
        let e = EngineError::LimitExceeded {
            tier: "ram".into(),
            model: "m".into(),
            required: 6_000_000_000,
            available: 200_000_000,
            limit: 5_000_000_000,
        };
        assert!(e.to_string().starts_with("RAM limit exceeded"), "{e}");
        assert_eq!(e.code(), ErrorCode::ResourceUnavailable);
        assert_eq!(e.details()["required"], json!(6.0));
        let e = EngineError::Insufficient {
            tier: "ram".into(),
            model: "m".into(),
            required: 1,
            available: 0,
        };
        assert!(e.to_string().starts_with("Insufficient RAM"), "{e}");
        let e = EngineError::ModelNotFound { model: "x".into() };
        assert!(e.to_string().contains("Model not found"));
        let e = EngineError::AlreadyInTier {
            model: "x".into(),
            tier: "ram".into(),
        };
        assert!(e.to_string().contains("Model already in target tier"));
        assert_eq!(e.to_json()["code"], "CONFLICT");
    }
}
