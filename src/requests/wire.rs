//! The wire: one JSON object per line, holding one request key and an
//! optional `id`; and the shapes every request module shares (flag bodies,
//! name bodies, typed fields, the error and `id` envelopes).
//!
//! Parsing never panics: every malformed line becomes an
//! [`EngineError::BadRequest`] with a message that says what was wrong.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value, json};

use crate::config::{MAX_GB, in_gb_range};
use crate::error::EngineError;

/// Longest accepted request line, in bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

pub use crate::tiers::submit::{MAX_BANDWIDTH_MB_S, MAX_RETRIES, MIN_BANDWIDTH_MB_S, bandwidth_out_of_range, retries_out_of_range};

/// Most jobs one `depends_on` may name.
pub const MAX_DEPENDENCIES: usize = 1024;
/// Most jobs one history answer may hold.
pub const MAX_HISTORY_LIMIT: usize = 100_000;

/// Why a GB figure is refused, if it is: it must be finite, 0 to [`MAX_GB`].
pub fn gb_out_of_range(field: &str, gb: f64) -> Option<String> {
    (!in_gb_range(gb)).then(|| format!("{field} must be a number from 0 to {MAX_GB} GB, got {gb}"))
}

/// An optional JSON number that `read` takes (for `deserialize_with`);
/// anything else, another type included, is refused with `range`'s
/// message, which names the range and what was sent.
fn number_in<'de, D: Deserializer<'de>, T>(
    d: D,
    read: impl FnOnce(&Number) -> Option<T>,
    range: impl FnOnce(&Value) -> String,
) -> Result<Option<T>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match &v {
            Value::Number(n) => read(n).map(Some),
            _ => None,
        }
        .ok_or_else(|| D::Error::custom(range(&v))),
    }
}

/// `size_gb`: a GB figure from 0 to [`MAX_GB`].
pub fn de_size_gb<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number_in(
        d,
        |n| n.as_f64().filter(|gb| in_gb_range(*gb)),
        |v| format!("size_gb must be a number from 0 to {MAX_GB} GB, got {v}"),
    )
}

/// `bandwidth_mb_s`: [`MIN_BANDWIDTH_MB_S`] to [`MAX_BANDWIDTH_MB_S`].
pub fn de_bandwidth<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number_in(
        d,
        |n| n.as_f64().filter(|b| bandwidth_out_of_range(*b).is_none()),
        |v| format!("bandwidth_mb_s must be a number from {MIN_BANDWIDTH_MB_S} to {MAX_BANDWIDTH_MB_S} MB/s, got {v}"),
    )
}

/// `max_retries`: an integer from 0 to [`MAX_RETRIES`].
pub fn de_retries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    number_in(
        d,
        |n| {
            n.as_u64()
                .filter(|r| retries_out_of_range(*r).is_none())
                .and_then(|r| u32::try_from(r).ok())
        },
        |v| format!("max_retries must be an integer from 0 to {MAX_RETRIES}, got {v}"),
    )
}

/// A history `limit`: an integer from 0 to [`MAX_HISTORY_LIMIT`].
pub fn de_history_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    number_in(
        d,
        |n| n.as_u64().and_then(|l| usize::try_from(l).ok()).filter(|l| *l <= MAX_HISTORY_LIMIT),
        |v| format!("limit must be an integer from 0 to {MAX_HISTORY_LIMIT}, got {v}"),
    )
}

/// A request body's JSON type, in words.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserializes a request body into `T`, with the request's name in errors.
pub fn fields<T: DeserializeOwned>(key: &str, body: Value) -> Result<T, EngineError> {
    if !body.is_object() {
        return Err(EngineError::bad_request(format!("{key} takes an object, got {}", kind(&body))));
    }
    serde_json::from_value(body).map_err(|e| EngineError::bad_request(format!("{key}: {e}")))
}

/// A flag request (`"health": true`): `true` or `{}`.
pub fn flag(key: &str, body: &Value) -> Result<(), EngineError> {
    match body {
        Value::Bool(true) => Ok(()),
        Value::Object(m) if m.is_empty() => Ok(()),
        other => Err(EngineError::bad_request(format!("{key} takes true (or {{}}), got {}", kind(other)))),
    }
}

/// A request naming one thing: `"name"` or `{"<field>": "name"}`.
pub fn name_arg(key: &str, field: &str, body: Value) -> Result<String, EngineError> {
    let bad = |m: String| Err(EngineError::bad_request(m));
    match body {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Object(mut m) => {
            let v = m.remove(field);
            if let Some(extra) = m.keys().next() {
                return bad(format!("{key}: unknown field `{extra}`, expected `{field}`"));
            }
            match v {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                Some(other) => bad(format!("{key}: `{field}` must be a non-empty string, got {}", kind(&other))),
                None => bad(format!("{key}: missing field `{field}`")),
            }
        }
        other => bad(format!(
            "{key} takes a {field} string (or {{\"{field}\": ...}}), got {}",
            kind(&other)
        )),
    }
}

/// An object body with exactly the fields in `allowed` (each optional).
pub fn only_fields(key: &str, body: Value, allowed: &[&str]) -> Result<Map<String, Value>, EngineError> {
    let Value::Object(m) = body else {
        return Err(EngineError::bad_request(format!("{key} takes an object, got {}", kind(&body))));
    };
    if let Some(extra) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        let expected: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
        return Err(EngineError::bad_request(format!(
            "{key}: unknown field `{extra}`, expected {}",
            expected.join(" or ")
        )));
    }
    Ok(m)
}

/// A request's `id`, kept as the exact JSON text the line carried (a
/// number's digits, a string's escapes, an object's spacing), so that the
/// answer echoes it byte for byte.
#[derive(Debug, Clone)]
pub struct Id(Box<RawValue>);

impl Id {
    /// The id of a decoded value (callers without a line: the text is the
    /// value's own serialization).
    pub fn from_value(v: &Value) -> Id {
        match serde_json::value::to_raw_value(v) {
            Ok(raw) => Id(raw),
            // A `Value` always serializes; keep a valid id all the same.
            Err(_) => Id(RawValue::NULL.to_owned()),
        }
    }

    /// The id's JSON text as received.
    pub fn raw(&self) -> &str {
        self.0.get()
    }

    /// The id decoded (`null` if it is nested too deep to decode).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.raw()).unwrap_or(Value::Null)
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.raw() == other.raw()
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Id {
    /// The id's text, refused unless it also decodes: the raw text is
    /// taken without reading its numbers, and an id tierd echoes must be one
    /// any JSON reader (tierd's own client included) can read back, so a
    /// number out of `f64`'s range or nesting past the decoder's depth makes
    /// the line invalid JSON, as it would be anywhere else in the line.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        if let Err(e) = serde_json::from_str::<Value>(raw.get()) {
            return Err(D::Error::custom(format!("id: {e}")));
        }
        Ok(Id(raw))
    }
}

/// An answer and the `id` it echoes: serialized as the answer object with
/// `"id"` first, the id's text written as it was received.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub body: Value,
    pub id: Option<Id>,
}

impl Reply {
    /// The answer as a `Value` (the id decoded: a `Value` cannot keep its
    /// text; the wire, through [`write_value`], does).
    pub fn into_value(self) -> Value {
        let Reply { mut body, id } = self;
        if let (Some(id), Value::Object(m)) = (id, &mut body) {
            m.insert("id".into(), id.to_value());
        }
        body
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.id, &self.body) {
            (Some(id), Value::Object(m)) => {
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("id", id)?;
                for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "id") {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            _ => self.body.serialize(s),
        }
    }
}

/// Adds the echoed `id` to a response object.
pub fn with_id(v: Value, id: &Option<Id>) -> Reply {
    Reply { body: v, id: id.clone() }
}

/// The wire form of an error.
pub fn error_response(e: &EngineError, id: &Option<Id>) -> Reply {
    with_id(json!({"status": "error", "error": e.to_json()}), id)
}

/// Appends `v` and a newline to `out`.
pub fn write_value(out: &mut Vec<u8>, v: &impl Serialize) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, v).is_err() {
        // Serializing a `Value` into a Vec cannot fail; keep the line valid
        // all the same.
        out.truncate(start);
        out.extend_from_slice(
            br#"{"status":"error","error":{"code":"INTERNAL_ERROR","message":"response not serializable","details":{}}}"#,
        );
    }
    out.push(b'\n');
}

/// The response to a line over the size limit.
pub fn too_long_response(bytes: usize, out: &mut Vec<u8>) {
    let mut details = Map::new();
    details.insert("bytes".into(), bytes.into());
    details.insert("limit".into(), MAX_LINE_BYTES.into());
    let e = EngineError::BadRequest {
        message: format!("request line of {bytes} bytes exceeds the {MAX_LINE_BYTES} byte limit; it was skipped"),
        details,
    };
    write_value(out, &error_response(&e, &None));
}
