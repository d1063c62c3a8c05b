//! The wire protocol: one JSON object per line, parsed into one [`Request`].
//!
//! This file is the list of requests. Parsing is kept apart from carrying a
//! request out (`dispatch`), and never panics: every malformed line becomes
//! an [`EngineError::BadRequest`] with a message that says what was wrong.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::EngineError;
use crate::tiers::Priority;

/// Longest accepted request line, in bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// `move_tier`'s fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveTier {
    pub model_name: String,
    pub target_tier: String,
    /// Demote the least valuable models of the target first if it lacks room.
    #[serde(default)]
    pub make_room: bool,
    /// Answer only when the job has ended.
    #[serde(default)]
    pub wait: bool,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Rate cap for this move (real backend; the simulation honours it too).
    #[serde(default)]
    pub bandwidth_mb_s: Option<f64>,
}

/// `register_model`'s fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    pub model_name: String,
    #[serde(default)]
    pub size_gb: Option<f64>,
    #[serde(default)]
    pub preferred_tier: Option<String>,
    /// Weights file or directory (real backend).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// `queue_history`'s filters.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueueHistory {
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub since: Option<f64>,
}

/// Every request the server answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    TierStatus,
    MoveTier(MoveTier),
    TierJobStatus(String),
    UpdateLimits(Map<String, Value>),
    AutoOptimize { dry_run: bool },
    RegisterModel(RegisterModel),
    UnregisterModel(String),
    ListModels { tier: Option<String> },
    ModelInfo(String),
    AccessModel(String),
    PinModel(String),
    UnpinModel(String),
    CancelJob(String),
    ListJobs,
    QueueStatus,
    QueueHistory(QueueHistory),
    Health,
    Metrics,
}

/// The request keys, in the order `list_requests` and errors show them.
pub const REQUEST_KEYS: &[&str] = &[
    "tier_status",
    "move_tier",
    "tier_job_status",
    "update_limits",
    "auto_optimize",
    "register_model",
    "unregister_model",
    "list_models",
    "model_info",
    "access_model",
    "pin_model",
    "unpin_model",
    "cancel_job",
    "list_jobs",
    "queue_status",
    "queue_history",
    "health",
    "metrics",
];

/// A parsed line: the request and the `id` to echo.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<Value>,
    pub request: Request,
}

/// A line that could not be parsed, with the `id` if one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseFailure {
    pub id: Option<Value>,
    pub error: EngineError,
}

fn fail(id: &Option<Value>, message: String) -> ParseFailure {
    ParseFailure {
        id: id.clone(),
        error: EngineError::bad_request(message),
    }
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Envelope, ParseFailure> {
    let none = None;
    if line.len() > MAX_LINE_BYTES {
        return Err(fail(
            &none,
            format!("request line of {} bytes exceeds the {} byte limit", line.len(), MAX_LINE_BYTES),
        ));
    }
    let text = std::str::from_utf8(line).map_err(|e| fail(&none, format!("request is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| fail(&none, format!("invalid JSON: {e}")))?;
    parse_value(value)
}

/// Parses one decoded JSON value.
pub fn parse_value(value: Value) -> Result<Envelope, ParseFailure> {
    let Value::Object(mut obj) = value else {
        return Err(fail(
            &None,
            format!(
                "a request must be a JSON object with one request key, one of: {}",
                REQUEST_KEYS.join(", ")
            ),
        ));
    };
    let id = obj.remove("id");
    let mut keys = obj.keys();
    let (Some(key), None) = (keys.next().cloned(), keys.next()) else {
        let found: Vec<&String> = obj.keys().collect();
        return Err(if found.is_empty() {
            fail(
                &id,
                format!("empty request: give one request key, one of: {}", REQUEST_KEYS.join(", ")),
            )
        } else {
            fail(
                &id,
                format!(
                    "a request holds exactly one request key (plus an optional \"id\"), found {}: {found:?}",
                    found.len()
                ),
            )
        });
    };
    let body = obj.remove(&key).unwrap_or(Value::Null);
    match parse_request(&key, body) {
        Ok(request) => Ok(Envelope { id, request }),
        Err(message) => Err(fail(&id, message)),
    }
}

/// Deserializes a request body into `T`, with the request's name in errors.
fn fields<T: DeserializeOwned>(key: &str, body: Value) -> Result<T, String> {
    if !body.is_object() {
        return Err(format!("{key} takes an object, got {}", kind(&body)));
    }
    serde_json::from_value(body).map_err(|e| format!("{key}: {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A flag request (`"health": true`): `true` or `{}`.
fn flag(key: &str, body: &Value) -> Result<(), String> {
    match body {
        Value::Bool(true) => Ok(()),
        Value::Object(m) if m.is_empty() => Ok(()),
        other => Err(format!("{key} takes true (or {{}}), got {}", kind(other))),
    }
}

/// A request naming one thing: `"name"` or `{"<field>": "name"}`.
fn name_arg(key: &str, field: &str, body: Value) -> Result<String, String> {
    match body {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Object(mut m) => {
            let v = m.remove(field);
            if let Some(extra) = m.keys().next() {
                return Err(format!("{key}: unknown field `{extra}`, expected `{field}`"));
            }
            match v {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                Some(other) => Err(format!("{key}: `{field}` must be a non-empty string, got {}", kind(&other))),
                None => Err(format!("{key}: missing field `{field}`")),
            }
        }
        other => Err(format!(
            "{key} takes a {field} string (or {{\"{field}\": ...}}), got {}",
            kind(&other)
        )),
    }
}

fn parse_request(key: &str, body: Value) -> Result<Request, String> {
    Ok(match key {
        "tier_status" => {
            flag(key, &body)?;
            Request::TierStatus
        }
        "move_tier" => {
            let m: MoveTier = fields(key, body)?;
            if let Some(p) = &m.priority
                && Priority::parse(p).is_none()
            {
                return Err(format!("move_tier: unknown priority {p:?}; one of: {}", Priority::NAMES.join(", ")));
            }
            if let Some(b) = m.bandwidth_mb_s
                && !(b.is_finite() && b > 0.0)
            {
                return Err(format!("move_tier: bandwidth_mb_s must be a positive number, got {b}"));
            }
            Request::MoveTier(m)
        }
        "tier_job_status" => Request::TierJobStatus(name_arg(key, "job_id", body)?),
        "update_limits" => match body {
            Value::Object(m) => Request::UpdateLimits(m),
            other => return Err(format!("update_limits takes an object of limits, got {}", kind(&other))),
        },
        "auto_optimize" => match body {
            Value::Bool(true) => Request::AutoOptimize { dry_run: false },
            Value::Object(mut m) => {
                let dry = m.remove("dry_run");
                if let Some(extra) = m.keys().next() {
                    return Err(format!("auto_optimize: unknown field `{extra}`, expected `dry_run`"));
                }
                match dry {
                    None => Request::AutoOptimize { dry_run: false },
                    Some(Value::Bool(b)) => Request::AutoOptimize { dry_run: b },
                    Some(other) => return Err(format!("auto_optimize: dry_run must be a boolean, got {}", kind(&other))),
                }
            }
            other => return Err(format!("auto_optimize takes true or {{\"dry_run\": bool}}, got {}", kind(&other))),
        },
        "register_model" => {
            let r: RegisterModel = fields(key, body)?;
            if r.model_name.is_empty() {
                return Err("register_model: model_name must not be empty".into());
            }
            Request::RegisterModel(r)
        }
        "unregister_model" => Request::UnregisterModel(name_arg(key, "model_name", body)?),
        "list_models" => match body {
            Value::Bool(true) | Value::Null => Request::ListModels { tier: None },
            Value::Object(mut m) => {
                let tier = m.remove("tier");
                if let Some(extra) = m.keys().next() {
                    return Err(format!("list_models: unknown field `{extra}`, expected `tier`"));
                }
                match tier {
                    None | Some(Value::Null) => Request::ListModels { tier: None },
                    Some(Value::String(t)) => Request::ListModels { tier: Some(t) },
                    Some(other) => return Err(format!("list_models: tier must be a string, got {}", kind(&other))),
                }
            }
            other => return Err(format!("list_models takes {{}} or {{\"tier\": ...}}, got {}", kind(&other))),
        },
        "model_info" => Request::ModelInfo(name_arg(key, "model_name", body)?),
        "access_model" => Request::AccessModel(name_arg(key, "model_name", body)?),
        "pin_model" => Request::PinModel(name_arg(key, "model_name", body)?),
        "unpin_model" => Request::UnpinModel(name_arg(key, "model_name", body)?),
        "cancel_job" => Request::CancelJob(name_arg(key, "job_id", body)?),
        "list_jobs" => {
            flag(key, &body)?;
            Request::ListJobs
        }
        "queue_status" => {
            flag(key, &body)?;
            Request::QueueStatus
        }
        "queue_history" => match body {
            Value::Bool(true) => Request::QueueHistory(QueueHistory::default()),
            body => Request::QueueHistory(fields(key, body)?),
        },
        "health" => {
            flag(key, &body)?;
            Request::Health
        }
        "metrics" => {
            flag(key, &body)?;
            Request::Metrics
        }
        other => return Err(format!("unknown request {other:?}; known requests: {}", REQUEST_KEYS.join(", "))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Request, String> {
        parse_line(s.as_bytes()).map(|e| e.request).map_err(|f| f.error.to_string())
    }

    #[test]
    fn seed_requests_parse() {
        assert_eq!(parse(r#"{"tier_status": true}"#), Ok(Request::TierStatus));
        let Ok(Request::MoveTier(m)) = parse(r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram"}}"#) else {
            panic!()
        };
        assert_eq!((m.model_name.as_str(), m.target_tier.as_str(), m.wait), ("gpt-j-6b", "ram", false));
        assert_eq!(
            parse(r#"{"tier_job_status": "tier_promote_x_1"}"#),
            Ok(Request::TierJobStatus("tier_promote_x_1".into()))
        );
        assert!(matches!(
            parse(r#"{"update_limits": {"ram_max_gb": 6.0}}"#),
            Ok(Request::UpdateLimits(_))
        ));
        assert_eq!(parse(r#"{"auto_optimize": true}"#), Ok(Request::AutoOptimize { dry_run: false }));
        assert_eq!(
            parse(r#"{"auto_optimize": {"dry_run": true}}"#),
            Ok(Request::AutoOptimize { dry_run: true })
        );
    }

    #[test]
    fn id_is_kept_even_on_errors() {
        let e = parse_line(br#"{"id": 7, "health": true}"#).unwrap();
        assert_eq!(e.id, Some(json!(7)));
        let f = parse_line(br#"{"id": "x", "nope": 1}"#).unwrap_err();
        assert_eq!(f.id, Some(json!("x")));
        assert!(f.error.to_string().contains("known requests: tier_status"));
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(parse("{").unwrap_err().contains("invalid JSON"));
        assert!(parse_line(b"\xff\xfe").unwrap_err().error.to_string().contains("UTF-8"));
        assert!(parse("[1]").unwrap_err().contains("JSON object"));
        assert!(parse("{}").unwrap_err().contains("empty request"));
        assert!(
            parse(r#"{"health": true, "metrics": true}"#)
                .unwrap_err()
                .contains("exactly one request key")
        );
        assert!(
            parse(r#"{"move_tier": {"model_name": 5, "target_tier": "ram"}}"#)
                .unwrap_err()
                .contains("invalid type")
        );
        assert!(
            parse(r#"{"move_tier": {"target_tier": "ram"}}"#)
                .unwrap_err()
                .contains("missing field `model_name`")
        );
        assert!(
            parse(r#"{"move_tier": {"model_name": "a", "target_tier": "ram", "priority": "urgent"}}"#)
                .unwrap_err()
                .contains("unknown priority")
        );
        assert!(parse(r#"{"health": 3}"#).unwrap_err().contains("takes true"));
        let long = format!("{{\"health\": \"{}\"}}", "x".repeat(MAX_LINE_BYTES));
        assert!(parse(&long).unwrap_err().contains("exceeds"));
    }
}
