//! `unwatch`: ends a connection's event stream (see [`super::watch`]); the
//! connection takes requests again. Handled by the server itself; outside a
//! watch it is an error.

use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::Engine;

use super::wire::flag;
use super::{Command, Outcome};

/// `{"unwatch": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unwatch;

impl Command for Unwatch {
    const KEY: &'static str = "unwatch";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| Unwatch)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, _engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        Err(not_watching())
    }
}

/// The answer to `unwatch` on a connection that is not watching.
pub fn not_watching() -> EngineError {
    EngineError::bad_request("unwatch: this connection is not watching; {\"watch\": ...} starts an event stream")
}
