//! The MCP tools: one per request an LLM tool needs, each a name, a
//! description a model can act on, an input schema and the request key it
//! becomes. A tool's arguments object is the request's body as the wire
//! carries it (`{"move_tier": <arguments>}`), so the request's own parser
//! does all the validation and its errors reach the model unchanged; the
//! schemas are derived (schemars) from the same request types.

use std::sync::Arc;

use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::requests::access_model::AccessModel;
use crate::requests::auto_optimize::AutoOptimize;
use crate::requests::cancel_job::CancelJob;
use crate::requests::list_models::ListModels;
use crate::requests::model_info::ModelInfo;
use crate::requests::move_tier::MoveTier;
use crate::requests::pin_model::PinModel;
use crate::requests::register_model::RegisterModel;
use crate::requests::tier_job_status::TierJobStatus;
use crate::requests::unpin_model::UnpinModel;
use crate::requests::update_limits::UpdateLimits;

/// What a tool does to the machine, for the client's hints (MCP tool
/// annotations): whether it only reads, and whether what it changes can
/// make a model slower to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Reads state only.
    Reads,
    /// Changes state, nothing is lost or slowed (pin, register, access).
    Changes,
    /// May demote models or cancel work.
    Destructive,
}

/// Makes a tool's input schema (rmcp's `schema_for_input::<T>`: draft
/// 2020-12, checked to be an object schema).
type SchemaFn = fn() -> Result<Arc<JsonObject>, String>;

/// One tool.
#[derive(Debug, Clone, Copy)]
pub struct ToolDef {
    /// The tool's name (MCP), e.g. `move_tier`.
    pub name: &'static str,
    /// The tierd request it becomes (its wire key).
    pub key: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub effect: Effect,
    /// The input schema; `None`: the tool takes no arguments.
    schema: Option<SchemaFn>,
}

/// Every tool, in the order `tools/list` answers them.
pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "tier_status",
        key: "tier_status",
        title: "Tier status",
        description: "Show every memory tier tierd manages (fastest first: e.g. gpu, ram, swap, storage): \
            its limit, used and available GB, pressure, and the models it holds. Call this first to learn \
            the tier names and where each model is before moving anything.",
        effect: Effect::Reads,
        schema: None,
    },
    ToolDef {
        name: "move_tier",
        key: "move_tier",
        title: "Move a model",
        description: "Move a model's weights to another tier as a background job (promote to a faster tier \
            such as ram before the model is needed, or demote to free room). Answers the job id at once; \
            with wait=true, answers only when the move has ended, with its outcome. If the target lacks \
            room the call fails with the room needed; make_room=true first demotes the target's least \
            used, unpinned models. Follow a job with job_status, stop it with cancel_job.",
        effect: Effect::Destructive,
        schema: Some(schema_for_input::<MoveTier>),
    },
    ToolDef {
        name: "job_status",
        key: "tier_job_status",
        title: "Job status",
        description: "Show one move job by its id (as move_tier answered it): queued, running (with \
            progress), success, failed (with the error) or cancelled, plus its timing.",
        effect: Effect::Reads,
        schema: Some(schema_for_input::<TierJobStatus>),
    },
    ToolDef {
        name: "cancel_job",
        key: "cancel_job",
        title: "Cancel a job",
        description: "Cancel a queued or running move job by its id. A running move is rolled back: the \
            model stays where it was.",
        effect: Effect::Destructive,
        schema: Some(schema_for_input::<CancelJob>),
    },
    ToolDef {
        name: "update_limits",
        key: "update_limits",
        title: "Change limits",
        description: "Change tier limits at run time, in GB: <tier>_max_gb (e.g. ram_max_gb), \
            <tier>_reserved_gb (e.g. ram_reserved_gb), or max_concurrent_tasks. A limit lowered below \
            what the tier holds demotes models until it fits; the answer lists those jobs. tier_status \
            shows the current limits.",
        effect: Effect::Destructive,
        schema: Some(schema_for_input::<UpdateLimits>),
    },
    ToolDef {
        name: "auto_optimize",
        key: "auto_optimize",
        title: "Optimize placement",
        description: "Let the placement policy move models by how they are used (frequently used ones to \
            faster tiers). Use dry_run=true to see the plan, step by step with reasons, without moving \
            anything.",
        effect: Effect::Destructive,
        schema: Some(schema_for_input::<AutoOptimize>),
    },
    ToolDef {
        name: "list_models",
        key: "list_models",
        title: "List models",
        description: "List the registered models with their size, tier, pin state and usage; tier=NAME \
            lists only the models in that tier.",
        effect: Effect::Reads,
        schema: Some(schema_for_input::<ListModels>),
    },
    ToolDef {
        name: "model_info",
        key: "model_info",
        title: "Model info",
        description: "Show one model in detail: size, tier, pinned, usage, last access, files, and any \
            move under way.",
        effect: Effect::Reads,
        schema: Some(schema_for_input::<ModelInfo>),
    },
    ToolDef {
        name: "register_model",
        key: "register_model",
        title: "Register a model",
        description: "Add a model tierd should manage: its name and size in GB (or, on a real machine, \
            the path of its weights file or directory), optionally the tier to place it in.",
        effect: Effect::Changes,
        schema: Some(schema_for_input::<RegisterModel>),
    },
    ToolDef {
        name: "pin_model",
        key: "pin_model",
        title: "Pin a model",
        description: "Pin a model where it is: no policy, make_room or limit change will demote it until \
            unpin_model.",
        effect: Effect::Changes,
        schema: Some(schema_for_input::<PinModel>),
    },
    ToolDef {
        name: "unpin_model",
        key: "unpin_model",
        title: "Unpin a model",
        description: "Unpin a model, so the policy and make_room may demote it again.",
        effect: Effect::Changes,
        schema: Some(schema_for_input::<UnpinModel>),
    },
    ToolDef {
        name: "access_model",
        key: "access_model",
        title: "Record a model access",
        description: "Record that a model was used (loaded for inference): answers the load time from its \
            current tier, and the policy may start moves in reaction (their job ids are listed).",
        effect: Effect::Changes,
        schema: Some(schema_for_input::<AccessModel>),
    },
    ToolDef {
        name: "queue_status",
        key: "queue_status",
        title: "Queue status",
        description: "Show the move-job queue: counts by state, the concurrency limit, and the queued and \
            running jobs in the order they start.",
        effect: Effect::Reads,
        schema: None,
    },
];

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The schema of a tool without arguments: an empty object, as the
/// request's parser takes (`{}`, anything else refused).
fn no_arguments() -> Arc<JsonObject> {
    let mut m = JsonObject::new();
    m.insert("type".into(), json!("object"));
    m.insert("properties".into(), json!({}));
    m.insert("additionalProperties".into(), json!(false));
    Arc::new(m)
}

impl ToolDef {
    /// The tool as `tools/list` describes it.
    pub fn tool(&self) -> Result<Tool, String> {
        let schema = match self.schema {
            Some(f) => f().map_err(|e| format!("tool {}: {e}", self.name))?,
            None => no_arguments(),
        };
        let annotations = ToolAnnotations::with_title(self.title)
            .read_only(self.effect == Effect::Reads)
            .destructive(self.effect == Effect::Destructive)
            .idempotent(self.effect == Effect::Reads)
            // The machine is a closed world: the tools touch only tierd.
            .open_world(false);
        Ok(Tool::new(self.name, self.description, schema)
            .with_title(self.title)
            .with_annotations(annotations))
    }
}

/// The request line of request `key` with `arguments` as its body (a
/// tool's arguments object is the request's body).
pub fn request_line(key: &str, arguments: JsonObject) -> String {
    let mut m = serde_json::Map::new();
    m.insert(key.into(), Value::Object(arguments));
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::{REQUEST_KEYS, parse_line};

    fn parses(key: &str, args: Value) -> Result<(), String> {
        let line = json!({ key: args }).to_string();
        parse_line(line.as_bytes()).map(|_| ()).map_err(|f| f.error.to_string())
    }

    /// A value of the type a property's schema names.
    fn sample(prop: &Value) -> Value {
        let ty = match &prop["type"] {
            Value::Array(types) => types.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null),
            t => t.clone(),
        };
        match ty.as_str() {
            Some("boolean") => json!(true),
            Some("integer") => json!(prop["minimum"].as_u64().unwrap_or(1).max(1)),
            Some("number") => json!(prop["minimum"].as_f64().unwrap_or(1.0).max(0.5)),
            Some("array") => json!([]),
            _ => json!("x"),
        }
    }

    #[test]
    fn every_tool_is_a_request_with_a_description() {
        assert_eq!(TOOLS.len(), 13);
        for t in TOOLS {
            assert!(REQUEST_KEYS.contains(&t.key), "{}", t.name);
            assert!(t.description.len() > 60, "{}: describe it for a model", t.name);
            let tool = t.tool().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tool.input_schema.get("type"), Some(&json!("object")), "{}", t.name);
        }
    }

    /// The schemas and the parsers agree: every property a schema lists is
    /// accepted, a name it does not list is refused, and a required one
    /// missing is refused.
    #[test]
    fn schemas_match_the_parsers() {
        for t in TOOLS {
            let schema = Value::Object(t.tool().unwrap_or_else(|e| panic!("{e}")).input_schema.as_ref().clone());
            let props = schema["properties"].as_object().cloned().unwrap_or_default();
            let required: Vec<String> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let mut all = serde_json::Map::new();
            for (name, prop) in &props {
                all.insert(name.clone(), sample(prop));
            }
            if t.key == "move_tier" {
                all.insert("priority".into(), json!("high"));
            }
            let minimal: serde_json::Map<String, Value> = all
                .iter()
                .filter(|(k, _)| required.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(
                parses(t.key, Value::Object(minimal.clone())),
                Ok(()),
                "{}: its required fields alone",
                t.name
            );
            assert_eq!(parses(t.key, Value::Object(all.clone())), Ok(()), "{}: every field", t.name);
            for r in &required {
                let mut less = minimal.clone();
                less.remove(r);
                assert!(parses(t.key, Value::Object(less)).is_err(), "{}: {r} is required", t.name);
            }
            // update_limits reads its keys against the engine's tiers.
            if t.key != "update_limits" {
                let mut extra = all.clone();
                extra.insert("no_such_argument".into(), json!(1));
                let e = parses(t.key, Value::Object(extra)).expect_err("an unknown argument is refused");
                // (Tools without arguments say what they take instead.)
                assert!(e.contains("no_such_argument") || props.is_empty(), "{}: {e}", t.name);
                assert_eq!(schema["additionalProperties"], json!(false), "{}", t.name);
            }
        }
    }
}
