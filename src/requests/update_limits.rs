//! `update_limits`: changes tier limits at run time. Any subset of
//! `<tier>_max_gb` (tiers with a limit), `<tier>_reserved_gb` (tiers with a
//! reserve) and `max_concurrent_tasks`.
//!
//! The body is read into [`LimitChange`]s here, once, in key order, each
//! checked as it comes (a number from 0 to 1,000,000 GB, `config::MAX_GB`,
//! never clamped; or an integer from 1 to 1024 for `max_concurrent_tasks`; a limit the engine has; at or above its
//! minimum): the first refusal is the answer and nothing changes. Then
//! [`Engine::update_limits`] applies them; a limit lowered below use
//! demotes until the tier fits (`rebalance` lists those jobs).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{MAX_GB, in_gb_range};
use crate::error::EngineError;
use crate::tiers::limits::MAX_CONCURRENT_TASKS;
use crate::tiers::{Engine, LimitChange, Limits};

use super::wire::kind;
use super::{Command, Outcome};

/// `{"update_limits": {"ram_max_gb": 6.0, ...}}`: the wire entries, in key
/// order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateLimits {
    pub entries: Map<String, Value>,
}

/// The answer: the limits before and after, and the rebalancing jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateLimitsResponse {
    pub status: String,
    pub old_limits: Limits,
    pub new_limits: Limits,
    pub rebalance: Vec<String>,
}

/// The MCP tool's input schema, written by hand because the keys depend
/// on the tiers: what [`read_change`] accepts, `<tier>_max_gb` and
/// `<tier>_reserved_gb` as numbers from 0 to [`MAX_GB`], and
/// `max_concurrent_tasks` as an integer from 1 to [`MAX_CONCURRENT_TASKS`].
/// Which tiers have a limit or a reserve is the engine's to say (an unknown
/// one is refused naming the known keys).
impl schemars::JsonSchema for UpdateLimits {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UpdateLimits".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "Limits to change, in GB: any of <tier>_max_gb (the tiers with a limit, e.g. ram_max_gb, swap_max_gb), <tier>_reserved_gb (tiers with a reserve, e.g. ram_reserved_gb), and max_concurrent_tasks. tier_status shows the current limits.",
            "properties": {
                "max_concurrent_tasks": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_CONCURRENT_TASKS,
                    "description": "Moves run at once."
                }
            },
            "patternProperties": {
                "^.+_(max|reserved)_gb$": {"type": "number", "minimum": 0.0, "maximum": MAX_GB}
            },
            "additionalProperties": false
        })
    }
}

impl UpdateLimits {
    /// Sets `key` (a wire key) to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.entries.insert(key.to_string(), value.into());
    }

    /// The entries as typed changes, in key order, each checked against the
    /// engine's limits as it comes: the first refusal is the error.
    pub fn changes(&self, engine: &Engine) -> Result<Vec<LimitChange>, EngineError> {
        let mut out = Vec::with_capacity(self.entries.len());
        for (key, value) in &self.entries {
            match read_change(key, value) {
                Ok(Some(c)) => out.push(c),
                // Errors of the keys before this one come first.
                Ok(None) => {
                    engine.check_limits(&out)?;
                    return Err(engine.unknown_limit(key));
                }
                Err(e) => {
                    engine.check_limits(&out)?;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// One wire entry as a change; `None` when the key is no limit at all.
fn read_change(key: &str, value: &Value) -> Result<Option<LimitChange>, EngineError> {
    if key == "max_concurrent_tasks" {
        let n = value
            .as_u64()
            .filter(|n| (1..=MAX_CONCURRENT_TASKS as u64).contains(n))
            .ok_or_else(|| EngineError::InvalidLimit {
                key: key.to_string(),
                value: value.as_f64().unwrap_or(f64::NAN),
                minimum: Some(1.0),
                message: format!("max_concurrent_tasks must be an integer from 1 to {MAX_CONCURRENT_TASKS}, got {value}"),
            })?;
        return Ok(Some(LimitChange::Concurrency(n as usize)));
    }
    let (tier, is_max) = match (key.strip_suffix("_max_gb"), key.strip_suffix("_reserved_gb")) {
        (Some(tier), _) => (tier, true),
        (None, Some(tier)) => (tier, false),
        (None, None) => return Ok(None),
    };
    // Refused, never clamped: a figure out of range changes nothing.
    let Some(gb) = value.as_f64().filter(|gb| in_gb_range(*gb)) else {
        return Err(EngineError::InvalidLimit {
            key: key.to_string(),
            value: value.as_f64().unwrap_or(f64::NAN),
            minimum: None,
            message: format!("{key} must be a number from 0 to {MAX_GB} GB, got {value}"),
        });
    };
    let tier = tier.to_string();
    Ok(Some(if is_max {
        LimitChange::Max { tier, gb }
    } else {
        LimitChange::Reserved { tier, gb }
    }))
}

impl Command for UpdateLimits {
    const KEY: &'static str = "update_limits";

    fn parse(body: Value) -> Result<Self, EngineError> {
        match body {
            Value::Object(entries) => Ok(UpdateLimits { entries }),
            other => Err(EngineError::bad_request(format!(
                "update_limits takes an object of limits, got {}",
                kind(&other)
            ))),
        }
    }

    fn body(&self) -> Value {
        Value::Object(self.entries.clone())
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        let changes = self.changes(engine)?;
        let done = engine.update_limits(now, &changes)?;
        Outcome::reply(&UpdateLimitsResponse {
            status: "success".into(),
            old_limits: done.old,
            new_limits: done.new,
            rebalance: done.rebalance,
        })
    }
}
