//! The requests the server answers: the list (once, in [`requests!`] below)
//! and one module per request, each holding its typed fields, all of its
//! wire validation, what it does on the engine, and its typed response.
//! The CLI client builds and reads the same types.
//!
//! A request's life: a line is parsed ([`parse_line`]) into a [`Request`]
//! outside the engine's lock; blocking work it needs (walking a model's
//! files) is done next, still outside the lock ([`Request::prepare`]); then
//! [`execute`] advances the engine with one tick and applies the request;
//! its answer is serialized after the lock is released.

pub mod exposition;
pub mod wire;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::EngineError;
use crate::tiers::Engine;

pub use wire::{Id, MAX_LINE_BYTES};

/// What carrying a request out produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Answer this now.
    Reply(Value),
    /// A move with `"wait": true`: answer with this job's status once it
    /// has ended.
    WaitForJob(String),
}

impl Outcome {
    /// The answer `response` serializes to.
    pub fn reply(response: &impl Serialize) -> Result<Outcome, EngineError> {
        serde_json::to_value(response)
            .map(Outcome::Reply)
            .map_err(|e| EngineError::Internal(format!("response not serializable: {e}")))
    }
}

/// What preparing a request may do before the engine is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepare {
    /// Registrations walk their model's files (a real machine).
    pub walk_files: bool,
    /// At most this many entries per model (`max_files_per_model`).
    pub max_files: usize,
}

/// One request: its key on the wire, how its body is read and checked,
/// and what it does.
pub trait Command: Sized {
    /// The request's key on the wire.
    const KEY: &'static str;

    /// Reads and checks the request's body.
    fn parse(body: Value) -> Result<Self, EngineError>;

    /// The body as the wire carries it (what the CLI sends).
    fn body(&self) -> Value;

    /// Whether [`Command::prepare`] has work to do.
    fn needs_prepare(&self, _ctx: &Prepare) -> bool {
        false
    }

    /// Blocking work done before the engine is locked.
    fn prepare(&mut self, _ctx: &Prepare) -> Result<(), EngineError> {
        Ok(())
    }

    /// Carries the request out on an engine ticked to `now` just before.
    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError>;
}

/// The request list: each entry is a variant of [`Request`] and the module
/// that holds it. [`REQUEST_KEYS`], parsing and dispatch come from here.
macro_rules! requests {
    ($($variant:ident($module:ident::$ty:ident)),* $(,)?) => {
        $(pub mod $module;)*

        /// Every request the server answers.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $($variant($module::$ty),)*
        }

        /// The request keys, in the order `health` and errors show them.
        pub const REQUEST_KEYS: &[&str] = &[$(<$module::$ty as Command>::KEY),*];

        fn parse_request(key: &str, body: Value) -> Result<Request, EngineError> {
            $(
                if key == <$module::$ty as Command>::KEY {
                    return <$module::$ty as Command>::parse(body).map(Request::$variant);
                }
            )*
            Err(EngineError::bad_request(format!(
                "unknown request {key:?}; known requests: {}",
                REQUEST_KEYS.join(", ")
            )))
        }

        impl Request {
            /// The request's key on the wire.
            pub fn key(&self) -> &'static str {
                match self {
                    $(Request::$variant(_) => <$module::$ty as Command>::KEY,)*
                }
            }

            /// The request's body as the wire carries it.
            pub fn body(&self) -> Value {
                match self {
                    $(Request::$variant(r) => r.body(),)*
                }
            }

            /// Whether [`Request::prepare`] has blocking work to do.
            pub fn needs_prepare(&self, ctx: &Prepare) -> bool {
                match self {
                    $(Request::$variant(r) => r.needs_prepare(ctx),)*
                }
            }

            /// Blocking work done before the engine is locked.
            pub fn prepare(&mut self, ctx: &Prepare) -> Result<(), EngineError> {
                match self {
                    $(Request::$variant(r) => r.prepare(ctx),)*
                }
            }

            fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
                match self {
                    $(Request::$variant(r) => r.apply(engine, now),)*
                }
            }
        }

        $(
            impl From<$module::$ty> for Request {
                fn from(r: $module::$ty) -> Request {
                    Request::$variant(r)
                }
            }
        )*
    };
}

requests! {
    TierStatus(tier_status::TierStatus),
    MoveTier(move_tier::MoveTier),
    TierJobStatus(tier_job_status::TierJobStatus),
    UpdateLimits(update_limits::UpdateLimits),
    AutoOptimize(auto_optimize::AutoOptimize),
    RegisterModel(register_model::RegisterModel),
    UnregisterModel(unregister_model::UnregisterModel),
    ListModels(list_models::ListModels),
    ModelInfo(model_info::ModelInfo),
    AccessModel(access_model::AccessModel),
    PinModel(pin_model::PinModel),
    UnpinModel(unpin_model::UnpinModel),
    CancelJob(cancel_job::CancelJob),
    ListJobs(list_jobs::ListJobs),
    QueueStatus(queue_status::QueueStatus),
    QueueHistory(queue_history::QueueHistory),
    Health(health::Health),
    Metrics(metrics::Metrics),
    Discover(discover::Discover),
    Watch(watch::Watch),
    Unwatch(unwatch::Unwatch),
}

impl Request {
    /// The request as one line of the wire (no newline), with `id` if given.
    pub fn to_line(&self, id: Option<&Value>) -> String {
        let mut m = serde_json::Map::new();
        if let Some(id) = id {
            m.insert("id".into(), id.clone());
        }
        m.insert(self.key().into(), self.body());
        Value::Object(m).to_string()
    }
}

/// A parsed line: the request and the `id` to echo (its text as sent).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<Id>,
    pub request: Request,
}

/// A line that could not be parsed, with the `id` if one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseFailure {
    pub id: Option<Id>,
    pub error: EngineError,
}

fn fail(id: &Option<Id>, error: EngineError) -> ParseFailure {
    ParseFailure { id: id.clone(), error }
}

/// A line's JSON as read in one pass: an object's `id` kept as its raw
/// text, its other entries decoded (a repeated key: the last one counts,
/// as for any JSON object tierd reads); or some other JSON value.
enum Line {
    Object { id: Option<Id>, entries: Map<String, Value> },
    NotObject,
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Line, D::Error> {
        struct LineVisitor;
        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
                let mut id = None;
                let mut entries = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "id" {
                        id = Some(map.next_value::<Id>()?);
                    } else {
                        let v = map.next_value::<Value>()?;
                        entries.insert(key, v);
                    }
                }
                Ok(Line::Object { id, entries })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Line, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Line::NotObject)
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Line, E> {
                Ok(Line::NotObject)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Line, E> {
                Ok(Line::NotObject)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Line, E> {
                Ok(Line::NotObject)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Line, E> {
                Ok(Line::NotObject)
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Line, E> {
                Ok(Line::NotObject)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Line, E> {
                Ok(Line::NotObject)
            }
        }
        d.deserialize_any(LineVisitor)
    }
}

fn not_an_object() -> EngineError {
    EngineError::bad_request(format!(
        "a request must be a JSON object with one request key, one of: {}",
        REQUEST_KEYS.join(", ")
    ))
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Envelope, ParseFailure> {
    let none = None;
    if line.len() > MAX_LINE_BYTES {
        return Err(fail(
            &none,
            EngineError::bad_request(format!(
                "request line of {} bytes exceeds the {} byte limit",
                line.len(),
                MAX_LINE_BYTES
            )),
        ));
    }
    let text = std::str::from_utf8(line).map_err(|e| fail(&none, EngineError::bad_request(format!("request is not valid UTF-8: {e}"))))?;
    match serde_json::from_str::<Line>(text) {
        Ok(Line::Object { id, entries }) => parse_entries(id, entries),
        Ok(Line::NotObject) => Err(fail(&none, not_an_object())),
        Err(e) => Err(fail(&none, EngineError::bad_request(format!("invalid JSON: {e}")))),
    }
}

/// Parses one decoded JSON value (its `id`, if any, is echoed as the
/// value's own serialization).
pub fn parse_value(value: Value) -> Result<Envelope, ParseFailure> {
    let Value::Object(mut obj) = value else {
        return Err(fail(&None, not_an_object()));
    };
    let id = obj.remove("id").map(|v| Id::from_value(&v));
    parse_entries(id, obj)
}

/// The request of an object's entries other than `id`.
fn parse_entries(id: Option<Id>, mut obj: Map<String, Value>) -> Result<Envelope, ParseFailure> {
    let mut keys = obj.keys();
    let (Some(key), None) = (keys.next().cloned(), keys.next()) else {
        let found: Vec<&String> = obj.keys().collect();
        let message = if found.is_empty() {
            format!("empty request: give one request key, one of: {}", REQUEST_KEYS.join(", "))
        } else {
            format!(
                "a request holds exactly one request key (plus an optional \"id\"), found {}: {found:?}",
                found.len()
            )
        };
        return Err(fail(&id, EngineError::bad_request(message)));
    };
    let body = obj.remove(&key).unwrap_or(Value::Null);
    match parse_request(&key, body) {
        Ok(request) => Ok(Envelope { id, request }),
        Err(error) => Err(fail(&id, error)),
    }
}

/// Carries a request out at engine time `now`: one tick, then the request.
/// Synchronous and transport-free: the server calls it under its lock, the
/// benches and tests call it directly.
pub fn execute(engine: &mut Engine, now: f64, request: Request) -> Result<Outcome, EngineError> {
    engine.tick(now);
    request.apply(engine, now)
}

/// A whole request as a JSON value (`{"move_tier": {...}}`, an `id` too if
/// wanted) in, its answer out, errors included: parse, prepare, execute.
/// What tests, benches and embedders use without a transport; a `wait`
/// answers the job as it stands.
pub fn call(engine: &mut Engine, now: f64, request: Value, prepare: &Prepare) -> Value {
    let env = match parse_value(request) {
        Ok(e) => e,
        Err(f) => return wire::error_response(&f.error, &f.id).into_value(),
    };
    let mut req = env.request;
    if let Err(e) = req.prepare(prepare) {
        return wire::error_response(&e, &env.id).into_value();
    }
    let reply = match execute(engine, now, req) {
        Ok(Outcome::Reply(v)) => wire::with_id(v, &env.id),
        Ok(Outcome::WaitForJob(job)) => match engine.job(now, &job) {
            Ok(v) => wire::with_id(serde_json::to_value(v).unwrap_or(Value::Null), &env.id),
            Err(e) => wire::error_response(&e, &env.id),
        },
        Err(e) => wire::error_response(&e, &env.id),
    };
    reply.into_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Request, String> {
        parse_line(s.as_bytes()).map(|e| e.request).map_err(|f| f.error.to_string())
    }

    #[test]
    fn the_list_is_the_keys() {
        assert_eq!(REQUEST_KEYS.len(), 21);
        assert_eq!(REQUEST_KEYS[0], "tier_status");
        assert_eq!(REQUEST_KEYS[17], "metrics");
        assert_eq!(REQUEST_KEYS[18], "discover");
        assert_eq!(REQUEST_KEYS[20], "unwatch");
        for k in REQUEST_KEYS {
            let err = parse(&format!("{{\"{k}\": 12}}"));
            assert!(!err.as_ref().is_err_and(|e| e.contains("unknown request")), "{k}: {err:?}");
        }
    }

    #[test]
    fn seed_requests_parse() {
        assert!(matches!(parse(r#"{"tier_status": true}"#), Ok(Request::TierStatus(_))));
        let Ok(Request::MoveTier(m)) = parse(r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram"}}"#) else {
            panic!()
        };
        assert_eq!((m.model_name.as_str(), m.target_tier.as_str(), m.wait), ("gpt-j-6b", "ram", false));
        let Ok(Request::TierJobStatus(j)) = parse(r#"{"tier_job_status": "tier_promote_x_1"}"#) else {
            panic!()
        };
        assert_eq!(j.job_id, "tier_promote_x_1");
        assert!(matches!(
            parse(r#"{"update_limits": {"ram_max_gb": 6.0}}"#),
            Ok(Request::UpdateLimits(_))
        ));
        let Ok(Request::AutoOptimize(a)) = parse(r#"{"auto_optimize": true}"#) else {
            panic!()
        };
        assert!(!a.dry_run);
        let Ok(Request::AutoOptimize(a)) = parse(r#"{"auto_optimize": {"dry_run": true}}"#) else {
            panic!()
        };
        assert!(a.dry_run);
    }

    #[test]
    fn requests_round_trip_through_their_lines() {
        for line in [
            r#"{"tier_status":true}"#,
            r#"{"move_tier":{"model_name":"a","target_tier":"ram","make_room":true,"wait":true,"priority":"high","depends_on":["j"],"max_retries":1,"bandwidth_mb_s":5.0}}"#,
            r#"{"update_limits":{"ram_max_gb":6.0,"max_concurrent_tasks":2}}"#,
            r#"{"register_model":{"model_name":"m","size_gb":1.5,"preferred_tier":"ram"}}"#,
            r#"{"queue_history":{"limit":3,"status":"failed","since":1.0}}"#,
            r#"{"list_models":{"tier":"swap"}}"#,
            r#"{"auto_optimize":{"dry_run":true}}"#,
            r#"{"cancel_job":"j1"}"#,
        ] {
            let r = parse(line).expect(line);
            let again = parse(&r.to_line(None)).expect("its own line parses");
            assert_eq!(r, again, "{line}");
        }
    }

    #[test]
    fn id_is_kept_even_on_errors() {
        let e = parse_line(br#"{"id": 7, "health": true}"#).unwrap();
        assert_eq!(e.id.as_ref().map(Id::raw), Some("7"));
        let f = parse_line(br#"{"id": "x", "nope": 1}"#).unwrap_err();
        assert_eq!(f.id.as_ref().map(Id::to_value), Some(json!("x")));
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
