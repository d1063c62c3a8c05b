//! Ollama's HTTP API, as its own documentation spells it:
//! <https://github.com/ollama/ollama/blob/main/docs/api.md> ("Generate a
//! completion": "Load a model", "Unload a model"; "List Running Models";
//! "List Local Models"). Field names are Ollama's own, so that the driver
//! ([`super::ollama`]) and the test suite's fake Ollama are built from the
//! same types.
//!
//! What tierd relies on:
//! - `POST /api/generate {"model": M}` with no prompt loads M and answers one
//!   object with `"done": true`; with `"keep_alive": 0` it unloads M and the
//!   answer carries `"done_reason": "unload"`.
//! - `keep_alive` is a number of seconds or a Go duration string (`"5m"`,
//!   `"1h30m"`); a negative value keeps the model loaded until it is
//!   unloaded or the server restarts. The default is 5 minutes.
//! - `GET /api/ps` lists the loaded models with `size` (bytes in memory),
//!   `size_vram` (of which on the GPU) and `expires_at` (RFC 3339, when the
//!   model will be unloaded; a model kept forever shows a date centuries
//!   away, because Ollama adds its largest duration to the time of the
//!   last request).
//! - `GET /api/tags` lists the models the server has locally.
//! - Errors answer an HTTP status with `{"error": "..."}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /api/generate` (only the fields a load or an unload uses, plus the
/// prompt a native client sends).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    pub model: String,
    /// Absent (or empty) for a load or an unload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Seconds (a number) or a Go duration (a string); see [`KeepAlive`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
    /// Runtime model parameters (`num_ctx`, `num_gpu`, ...). A load sends
    /// the same ones the clients use: a request whose options change the
    /// runner's (`num_ctx` among them) makes Ollama reload the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Map<String, Value>>,
    /// `false`: one answer object instead of a stream of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

/// The (last) answer object of `POST /api/generate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GenerateResponse {
    pub model: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub response: String,
    pub done: bool,
    /// `"unload"` on the answer to an unload (`"stop"`, `"length"` after a
    /// generation; absent after a plain load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    /// Nanoseconds spent loading the model, where Ollama reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
}

/// What every Ollama error answer carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorResponse {
    pub error: String,
}

/// `details` of a model in `/api/ps` and `/api/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelDetails {
    pub parent_model: String,
    pub format: String,
    pub family: String,
    pub families: Option<Vec<String>>,
    pub parameter_size: String,
    pub quantization_level: String,
}

/// `GET /api/ps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PsResponse {
    pub models: Vec<RunningModel>,
}

/// One loaded model in `GET /api/ps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunningModel {
    pub name: String,
    pub model: String,
    /// Bytes the loaded model takes (weights, context, graph), GPU and CPU.
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub details: ModelDetails,
    /// RFC 3339; see the module docs.
    pub expires_at: String,
    /// Of `size`, the bytes on the GPU.
    #[serde(default)]
    pub size_vram: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
}

/// `GET /api/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TagsResponse {
    pub models: Vec<LocalModel>,
}

/// One local model in `GET /api/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LocalModel {
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub modified_at: String,
    /// Bytes of the model's files on disk.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub details: ModelDetails,
}

/// How long Ollama keeps a model loaded after a request, as `keep_alive`
/// says it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepAlive {
    /// A negative value: until unloaded or the server restarts.
    Forever,
    /// This long after the request (zero: unload now).
    For(Duration),
}

/// What Ollama does without a `keep_alive`: 5 minutes.
pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::For(Duration::from_secs(300));

impl KeepAlive {
    /// Reads `keep_alive` the way Ollama does: a JSON number is seconds, a
    /// string is a Go duration (`"5m"`, `"-1m"`, `"1h30m"`, `"0"`); anything
    /// negative is forever.
    pub fn from_json(value: &Value) -> Result<KeepAlive, String> {
        match value {
            Value::Number(n) => {
                let secs = n.as_f64().ok_or_else(|| format!("keep_alive {n} is not a number"))?;
                if secs < 0.0 {
                    Ok(KeepAlive::Forever)
                } else if secs.is_finite() && secs < 1e12 {
                    Ok(KeepAlive::For(Duration::from_secs_f64(secs)))
                } else {
                    Err(format!("keep_alive {n} is out of range"))
                }
            }
            Value::String(s) => parse_go_duration(s),
            other => Err(format!("unsupported keep_alive type: {other}")),
        }
    }
}

/// Parses a Go `time.ParseDuration` string (units ns, us, µs, ms, s, m, h;
/// a bare `0` is allowed); negative durations are [`KeepAlive::Forever`].
pub fn parse_go_duration(s: &str) -> Result<KeepAlive, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(KeepAlive::For(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            unit => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    if negative && total > 0.0 {
        return Ok(KeepAlive::Forever);
    }
    if !total.is_finite() || total >= 1e12 {
        return Err(bad());
    }
    Ok(KeepAlive::For(Duration::from_secs_f64(total)))
}

// ------------------------------------------------------------- timestamps

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Formats Unix seconds as RFC 3339 in UTC with nanoseconds, as Go's
/// `time.Time` marshals to JSON (`2024-06-04T14:38:31.83753-07:00` in
/// local time; tierd's fake answers in UTC).
pub fn format_rfc3339(unix_s: f64) -> String {
    let whole = unix_s.floor();
    let secs = whole as i64;
    let nanos = (((unix_s - whole) * 1e9).round() as i64).clamp(0, 999_999_999);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Parses an RFC 3339 timestamp (`Z` or a `±hh:mm` offset, optional
/// fraction) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<f64, String> {
    let bad = || format!("not an RFC 3339 time: {s:?}");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut frac = 0f64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        frac = format!("0.{}", &s[start..i]).parse::<f64>().map_err(|_| bad())?;
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let mins = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' { mins * 60 } else { -mins * 60 }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    Ok((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_reads_numbers_and_go_durations() {
        assert_eq!(KeepAlive::from_json(&json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_json(&json!(0)), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(KeepAlive::from_json(&json!(30)), Ok(KeepAlive::For(Duration::from_secs(30))));
        assert_eq!(KeepAlive::from_json(&json!("5m")), Ok(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(KeepAlive::from_json(&json!("1h30m")), Ok(KeepAlive::For(Duration::from_secs(5400))));
        assert_eq!(
            KeepAlive::from_json(&json!("1.5s")),
            Ok(KeepAlive::For(Duration::from_millis(1500)))
        );
        assert_eq!(KeepAlive::from_json(&json!("-1m")), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_json(&json!("0")), Ok(KeepAlive::For(Duration::ZERO)));
        // Go's ParseDuration refuses a bare number other than 0, and so does Ollama.
        assert!(KeepAlive::from_json(&json!("-1")).is_err());
        assert!(KeepAlive::from_json(&json!("5x")).is_err());
        assert!(KeepAlive::from_json(&json!(true)).is_err());
    }

    #[test]
    fn timestamps_round_trip_and_read_offsets() {
        let t = 1_717_511_911.5;
        let s = format_rfc3339(t);
        assert_eq!(s, "2024-06-04T14:38:31.500000000Z");
        assert_eq!(parse_rfc3339(&s), Ok(t));
        assert_eq!(parse_rfc3339("2024-06-04T07:38:31.5-07:00"), Ok(t));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0.0));
        // A model kept forever: Ollama's expires_at centuries away.
        assert!(parse_rfc3339("2318-02-22T08:44:33.110811Z").unwrap() > 1e10);
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2024-13-04T14:38:31Z").is_err());
    }

    #[test]
    fn ps_answer_parses_with_the_documented_fields() {
        let ps: PsResponse = serde_json::from_value(json!({"models": [{
            "name": "mistral:latest", "model": "mistral:latest", "size": 5137025024u64,
            "digest": "2ae6f6dd7a3dd734790bbbf58b8909a606e0e7e97e94b7604e0aa7ae4490e6d8",
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": "7.2B", "quantization_level": "Q4_0"},
            "expires_at": "2024-06-04T14:38:31.83753-07:00", "size_vram": 5137025024u64}]}))
        .unwrap();
        assert_eq!(ps.models[0].size_vram, 5_137_025_024);
        assert_eq!(ps.models[0].details.quantization_level, "Q4_0");
        let unload: GenerateResponse = serde_json::from_value(json!({"model": "llama3.2",
            "created_at": "2024-09-12T03:54:03.516566Z", "response": "", "done": true, "done_reason": "unload"}))
        .unwrap();
        assert_eq!(unload.done_reason.as_deref(), Some("unload"));
    }
}
