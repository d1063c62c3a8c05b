//! `metrics`: the engine's counters since it started: accesses and their
//! load seconds (and the part that moves' time cost, `promotion_wait_s`),
//! hits per tier, moves started, succeeded, failed and cancelled, retries,
//! bytes moved, utilization per tier, queue depth, models and uptime.
//!
//! `{"metrics": true}` (or `{"format": "json"}`) answers them as JSON;
//! `{"metrics": {"format": "prometheus"}}` answers the Prometheus text
//! exposition ([`super::exposition`]) as a string, the same text that
//! `serve --metrics-listen` serves over HTTP.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, MetricsView};

use super::exposition;
use super::wire::{kind, only_fields};
use super::{Command, Outcome};

/// How the metrics are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// A JSON object of the counters (the default).
    #[default]
    Json,
    /// Prometheus' text exposition format 0.0.4, as a string.
    Prometheus,
}

/// `{"metrics": true}` or `{"metrics": {"format": "json" | "prometheus"}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub format: Format,
}

/// The JSON answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResponse {
    pub status: String,
    pub metrics: MetricsView,
}

/// The Prometheus answer: the exposition text and its Content-Type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrometheusResponse {
    pub status: String,
    pub format: String,
    pub content_type: String,
    pub text: String,
}

impl Command for Metrics {
    const KEY: &'static str = "metrics";

    fn parse(body: Value) -> Result<Self, EngineError> {
        let usage = "metrics takes true or {\"format\": \"json\" | \"prometheus\"}";
        match body {
            Value::Bool(true) => Ok(Metrics::default()),
            body @ Value::Object(_) => match only_fields(Self::KEY, body, &["format"])?.remove("format") {
                None => Ok(Metrics::default()),
                Some(Value::String(s)) => match s.as_str() {
                    "json" => Ok(Metrics { format: Format::Json }),
                    "prometheus" => Ok(Metrics {
                        format: Format::Prometheus,
                    }),
                    other => Err(EngineError::bad_request(format!(
                        "metrics: unknown format {other:?}; known formats: json, prometheus"
                    ))),
                },
                Some(other) => Err(EngineError::bad_request(format!(
                    "metrics: format must be a string (\"json\" or \"prometheus\"), got {}",
                    kind(&other)
                ))),
            },
            other => Err(EngineError::bad_request(format!("{usage}, got {}", kind(&other)))),
        }
    }

    fn body(&self) -> Value {
        match self.format {
            Format::Json => Value::Bool(true),
            Format::Prometheus => serde_json::json!({ "format": "prometheus" }),
        }
    }

    fn apply(self, engine: &mut Engine, now: f64) -> Result<Outcome, EngineError> {
        match self.format {
            Format::Json => Outcome::reply(&MetricsResponse {
                status: "success".into(),
                metrics: engine.metrics_view(now),
            }),
            Format::Prometheus => Outcome::reply(&PrometheusResponse {
                status: "success".into(),
                format: "prometheus".into(),
                content_type: exposition::CONTENT_TYPE.into(),
                text: exposition::render(engine, now),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_parse_and_bad_ones_are_explained() {
        assert_eq!(Metrics::parse(json!(true)).unwrap().format, Format::Json);
        assert_eq!(Metrics::parse(json!({})).unwrap().format, Format::Json);
        assert_eq!(Metrics::parse(json!({"format": "json"})).unwrap().format, Format::Json);
        let p = Metrics::parse(json!({"format": "prometheus"})).unwrap();
        assert_eq!(p.format, Format::Prometheus);
        assert_eq!(Metrics::parse(p.body()).unwrap(), p);
        let e = Metrics::parse(json!({"format": "xml"})).unwrap_err().to_string();
        assert!(e.contains("unknown format \"xml\"") && e.contains("prometheus"), "{e}");
        let e = Metrics::parse(json!({"format": 3})).unwrap_err().to_string();
        assert!(e.contains("must be a string"), "{e}");
        let e = Metrics::parse(json!({"fromat": "json"})).unwrap_err().to_string();
        assert!(e.contains("fromat"), "{e}");
        let e = Metrics::parse(json!(5)).unwrap_err().to_string();
        assert!(e.contains("metrics takes true"), "{e}");
    }
}
