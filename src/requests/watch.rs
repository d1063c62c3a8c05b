//! `watch`: turns the connection into an event stream. The server answers
//! one acknowledgement line, then one JSON line per event (`event`, `at`
//! and the event's fields; `tiers::events`), until `{"unwatch": true}`.
//!
//! `{"watch": true}` watches everything; `{"watch": {"events": ["jobs",
//! "models", "tiers", "pressure", "engines"], "progress_interval_s": 0.5,
//! "buffer": 1024}}` chooses. A watcher that reads slower than events come
//! loses the oldest progress events first (then the oldest others) once
//! `buffer` events wait; the next event it gets says how many in `dropped`.
//!
//! Only a connection can watch: the server handles this request itself
//! (`server::shared`); carried out on a bare engine ([`crate::requests::call`])
//! it answers an error.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::error::EngineError;
use crate::tiers::{Category, Engine};

use super::wire::{kind, only_fields};
use super::{Command, Outcome};

/// Default `progress_interval_s`: twice a second, enough for a bar.
pub const DEFAULT_PROGRESS_INTERVAL_S: f64 = 0.5;
/// Default and largest `buffer`.
pub const DEFAULT_BUFFER: usize = 1024;
pub const MAX_BUFFER: usize = 65_536;
/// Smallest `progress_interval_s` (a faster bar is noise on the wire).
pub const MIN_PROGRESS_INTERVAL_S: f64 = 0.01;

/// `{"watch": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// The groups of events sent.
    pub events: BTreeSet<Category>,
    /// Wall seconds between two progress events of a move.
    pub progress_interval_s: f64,
    /// Events kept waiting for a slow reader before some are dropped.
    pub buffer: usize,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            events: Category::ALL.into_iter().collect(),
            progress_interval_s: DEFAULT_PROGRESS_INTERVAL_S,
            buffer: DEFAULT_BUFFER,
        }
    }
}

fn bad(m: String) -> EngineError {
    EngineError::bad_request(m)
}

fn known() -> String {
    Category::ALL.map(Category::as_str).join(", ")
}

impl Command for Watch {
    const KEY: &'static str = "watch";

    fn parse(body: Value) -> Result<Self, EngineError> {
        let mut w = Watch::default();
        let mut fields = match body {
            Value::Bool(true) => return Ok(w),
            body @ Value::Object(_) => only_fields(Self::KEY, body, &["events", "progress_interval_s", "buffer"])?,
            other => {
                return Err(bad(format!(
                    "watch takes true or {{\"events\": [...], \"progress_interval_s\": S, \"buffer\": N}}, got {}",
                    kind(&other)
                )));
            }
        };
        match fields.remove("events") {
            None => {}
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err(bad(format!("watch: events is empty; give some of: {}", known())));
                }
                w.events.clear();
                for v in list {
                    let Some(s) = v.as_str() else {
                        return Err(bad(format!("watch: events holds strings (one of: {}), got {}", known(), kind(&v))));
                    };
                    let c = Category::parse(s).ok_or_else(|| bad(format!("watch: unknown event group {s:?}; known: {}", known())))?;
                    w.events.insert(c);
                }
            }
            Some(other) => return Err(bad(format!("watch: events must be a list of: {}; got {}", known(), kind(&other)))),
        }
        match fields.remove("progress_interval_s") {
            None => {}
            Some(v) => match v.as_f64() {
                Some(s) if s.is_finite() && (MIN_PROGRESS_INTERVAL_S..=3600.0).contains(&s) => w.progress_interval_s = s,
                _ => {
                    return Err(bad(format!(
                        "watch: progress_interval_s must be a number of seconds from {MIN_PROGRESS_INTERVAL_S} to 3600, got {v}"
                    )));
                }
            },
        }
        match fields.remove("buffer") {
            None => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_BUFFER as u64).contains(&n) => w.buffer = n as usize,
                _ => return Err(bad(format!("watch: buffer must be a whole number of events from 1 to {MAX_BUFFER}, got {v}"))),
            },
        }
        Ok(w)
    }

    fn body(&self) -> Value {
        json!({
            "events": self.events.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "progress_interval_s": self.progress_interval_s,
            "buffer": self.buffer,
        })
    }

    fn apply(self, _engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        Err(bad("watch turns a connection into an event stream: send it to a server (stdio or its socket)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        Watch::parse(v).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_round_trips() {
        assert_eq!(Watch::parse(json!(true)).unwrap(), Watch::default());
        let w = Watch::parse(json!({"events": ["jobs", "pressure"], "progress_interval_s": 0.1, "buffer": 8})).unwrap();
        assert_eq!(w.events, [Category::Jobs, Category::Pressure].into_iter().collect());
        assert_eq!((w.progress_interval_s, w.buffer), (0.1, 8));
        assert_eq!(Watch::parse(w.body()).unwrap(), w);
    }

    #[test]
    fn bad_watches_are_explained() {
        assert!(err(json!({"events": ["jobz"]})).contains("unknown event group \"jobz\"; known: jobs, models"));
        assert!(err(json!({"events": []})).contains("events is empty"));
        assert!(err(json!({"events": "jobs"})).contains("must be a list"));
        assert!(err(json!({"events": [3]})).contains("holds strings"));
        assert!(err(json!({"progress_interval_s": 0})).contains("progress_interval_s must be"));
        assert!(err(json!({"progress_interval_s": "fast"})).contains("progress_interval_s must be"));
        assert!(err(json!({"buffer": 0})).contains("buffer must be"));
        assert!(err(json!({"evnts": ["jobs"]})).contains("evnts"));
        assert!(err(json!(1)).contains("watch takes true"));
    }
}
