//! `tier_status` as a typed view that serializes straight to bytes.
//!
//! `tier_status` is what monitoring clients poll, so the server's hot path
//! writes this view directly instead of building a `serde_json::Value` tree
//! (which costs several times more than the bytes themselves). It carries
//! the fields of `tier_status`; [`Engine::tier_status`] is this view as a JSON value.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::config::bytes_to_gb;

use super::engine::Engine;
use super::state::round6;

/// One tier's line of `tier_status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierView {
    pub used_gb: f64,
    /// What the hardware could still take; `null` when unbounded or unavailable.
    pub available_gb: Option<f64>,
    pub limit_gb: Option<f64>,
    pub utilization: Option<f64>,
    pub models: usize,
    pub access_s_per_gb: f64,
    pub reserved_gb: f64,
    pub incoming_gb: f64,
    pub pressure: &'static str,
    pub max_models: Option<usize>,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// The backend's extra facts about the tier (`hardware_gb`, ...).
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// The whole `tier_status` answer.
#[derive(Debug, Serialize)]
pub struct TierStatusView<'a> {
    pub status: &'static str,
    #[serde(serialize_with = "tiers_as_map")]
    pub tiers: Vec<(&'a str, TierView)>,
    pub tier_order: Vec<&'a str>,
}

fn tiers_as_map<S: Serializer>(tiers: &[(&str, TierView)], s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(tiers.len()))?;
    for (name, view) in tiers {
        m.serialize_entry(name, view)?;
    }
    m.end()
}

impl Engine {
    /// `tier_status` as a typed view (see the module docs).
    pub fn tier_status_view(&self) -> TierStatusView<'_> {
        let state = self.state();
        let tiers = state
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let hw = self.hardware_available(i);
                let view = TierView {
                    used_gb: bytes_to_gb(t.used),
                    available_gb: match &hw {
                        Ok(Some(a)) => Some(bytes_to_gb(*a)),
                        _ => None,
                    },
                    limit_gb: t.limit.map(bytes_to_gb),
                    utilization: t.limit.map(|_| round6(t.utilization())),
                    models: t.models,
                    access_s_per_gb: t.access_s_per_gb,
                    reserved_gb: bytes_to_gb(t.reserved),
                    incoming_gb: bytes_to_gb(t.incoming),
                    pressure: t.pressure(&state.pressure_cfg),
                    max_models: t.max_models,
                    available: hw.is_ok(),
                    unavailable_reason: hw.err().map(|e| e.to_string()),
                    details: self.backend().tier_details(i),
                };
                (t.name.as_str(), view)
            })
            .collect();
        TierStatusView {
            status: "success",
            tiers,
            tier_order: state.tiers.iter().map(|t| t.name.as_str()).collect(),
        }
    }
}
