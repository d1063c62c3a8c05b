//! The wire: one JSON object per line, holding one request key and an
//! optional `id`; and the shapes every request module shares (flag bodies,
//! name bodies, typed fields, the error and `id` envelopes).
//!
//! Parsing never panics: every malformed line becomes an
//! [`EngineError::BadRequest`] with a message that says what was wrong.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::EngineError;

/// Longest accepted request line, in bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

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

/// Adds the echoed `id` to a response object.
pub fn with_id(mut v: Value, id: &Option<Value>) -> Value {
    if let (Some(id), Value::Object(m)) = (id, &mut v) {
        m.insert("id".into(), id.clone());
    }
    v
}

/// The wire form of an error.
pub fn error_response(e: &EngineError, id: &Option<Value>) -> Value {
    with_id(json!({"status": "error", "error": e.to_json()}), id)
}

/// Appends `v` and a newline to `out`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    if serde_json::to_writer(&mut *out, v).is_err() {
        // Serializing a `Value` into a Vec cannot fail; keep the line valid
        // all the same.
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
