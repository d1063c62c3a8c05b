//! `tier_status`: every tier's books (used, limit, utilization, pressure,
//! models, reserved, incoming), what its hardware can still take, and its
//! driver's own facts; the tiers fastest first.
//!
//! Monitoring clients poll it, so the server writes it straight from the
//! engine's typed view ([`write_tier_status`]), reusing the bytes of the
//! last answer while nothing in it changed.

use serde_json::Value;

use crate::error::EngineError;
use crate::tiers::{Engine, TierStatusView, TierView};

use super::wire::{Id, flag};
use super::{Command, Outcome};

/// `{"tier_status": true}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierStatus;

/// The answer: [`TierStatusView`] (`status`, `tiers`, `tier_order`).
pub type TierStatusResponse = TierStatusView<'static>;

impl Command for TierStatus {
    const KEY: &'static str = "tier_status";

    fn parse(body: Value) -> Result<Self, EngineError> {
        flag(Self::KEY, &body).map(|()| TierStatus)
    }

    fn body(&self) -> Value {
        Value::Bool(true)
    }

    fn apply(self, engine: &mut Engine, _now: f64) -> Result<Outcome, EngineError> {
        Outcome::reply(&engine.tier_status())
    }
}

/// The last `tier_status` answer, serialized, and the view it came from.
///
/// Serializing the answer is most of its cost. The engine's typed view is
/// cheap to build and compare, so an answer whose view equals the cached
/// one reuses the cached bytes: the key is the answer's whole content, so a
/// cached answer is never stale.
#[derive(Debug, Default)]
pub struct StatusCache {
    key: Vec<(String, TierView)>,
    /// The serialized view, `{...}`, without `id`.
    body: Vec<u8>,
}

impl StatusCache {
    fn matches(&self, view: &TierStatusView<'_>) -> bool {
        !self.body.is_empty()
            && self.key.len() == view.tiers.len()
            && self.key.iter().zip(&view.tiers).all(|((kn, kv), (n, v))| kn == n && kv == v)
    }
}

/// Writes the `tier_status` answer (with the echoed `id`) into `out`: the
/// same content as [`TierStatus`] answers, without building a `Value` tree,
/// and from `cache` when nothing in it changed. The engine must have been
/// ticked to now.
pub fn write_tier_status(engine: &Engine, id: &Option<Id>, cache: &mut StatusCache, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let view = engine.tier_status();
    if !cache.matches(&view) {
        cache.body.clear();
        serde_json::to_writer(&mut cache.body, &view)?;
        cache.key = view.tiers.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    }
    match (id, cache.body.split_first()) {
        (Some(id), Some((b'{', rest))) => {
            out.extend_from_slice(b"{\"id\":");
            serde_json::to_writer(&mut *out, id)?;
            if rest != b"}" {
                out.push(b',');
            }
            out.extend_from_slice(rest);
        }
        _ => out.extend_from_slice(&cache.body),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::drivers::sim::simulated_machine;
    use crate::optimizer::UsagePolicy;
    use crate::requests::wire::with_id;
    use crate::requests::{Request, execute};
    use crate::tiers::MoveOptions;
    use serde_json::json;

    const T0: f64 = 1_700_000_000.0;

    fn status_line(e: &Engine, cache: &mut StatusCache, id: &Option<Id>) -> Value {
        let mut out = Vec::new();
        write_tier_status(e, id, cache, &mut out).expect("serializes");
        serde_json::from_slice(&out).expect("one JSON object")
    }

    #[test]
    fn cached_tier_status_matches_execute_and_follows_changes() {
        let cfg = Config::seed_default();
        let (machine, _) = simulated_machine(&cfg, false);
        let mut e = Engine::new(cfg, machine, Box::new(UsagePolicy), T0).expect("engine");
        let mut cache = StatusCache::default();
        let expected = |e: &mut Engine, id: &Option<Id>| match execute(e, T0, Request::TierStatus(TierStatus)) {
            Ok(Outcome::Reply(v)) => with_id(v, id).into_value(),
            other => panic!("{other:?}"),
        };
        for id in [None, Some(json!(1)), Some(json!({"a": [1, "x"]})), Some(Value::Null)] {
            let id = id.as_ref().map(Id::from_value);
            assert_eq!(status_line(&e, &mut cache, &id), expected(&mut e, &id));
        }
        let before = status_line(&e, &mut cache, &None);
        e.move_model(T0, "t5-base", "storage", &MoveOptions::default()).expect("move");
        let after = status_line(&e, &mut cache, &None);
        assert_ne!(before, after, "a reservation changes the answer");
        assert_eq!(after, expected(&mut e, &None));
        let typed: TierStatusResponse = serde_json::from_value(after).expect("the client reads it back");
        assert_eq!(typed.tier_order, ["ram", "swap", "storage"]);
        assert_eq!(typed.tier("ram").map(|t| t.used_gb), Some(4.8));
    }
}
