//! Carries a parsed [`Request`] out on the engine and shapes the response.
//!
//! Synchronous and transport-free: the server calls it under its lock, the
//! benches and tests call it directly.

use serde_json::{Value, json};

use crate::error::EngineError;
use crate::tiers::{Engine, MoveOptions, Origin, Priority, TierStatusView, TierView};

use super::protocol::{REQUEST_KEYS, Request};

/// What a request needs from its transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Answer this now.
    Reply(Value),
    /// A move with `"wait": true`: answer with this job's status once it
    /// has ended.
    WaitForJob(String),
}

/// Executes one request at engine time `now`.
pub fn execute(engine: &mut Engine, now: f64, request: Request) -> Result<Outcome, EngineError> {
    use Request::*;
    engine.tick(now);
    let v = match request {
        TierStatus => engine.tier_status(now),
        MoveTier(m) => {
            let opts = MoveOptions {
                priority: m.priority.as_deref().and_then(Priority::parse).unwrap_or(Priority::Normal),
                depends_on: m.depends_on,
                make_room: m.make_room,
                max_retries: m.max_retries,
                bandwidth_mb_s: m.bandwidth_mb_s,
                origin: Origin::User,
                reason: None,
            };
            let started = engine.move_tier(now, &m.model_name, &m.target_tier, &opts)?;
            if m.wait {
                return Ok(Outcome::WaitForJob(started.job_id));
            }
            started.to_json()
        }
        TierJobStatus(id) => engine.job_status(now, &id)?,
        UpdateLimits(changes) => engine.update_limits(now, &changes)?,
        AutoOptimize { dry_run } => engine.auto_optimize(now, dry_run),
        RegisterModel(r) => engine.register(now, &r.model_name, r.size_gb, r.preferred_tier.as_deref(), r.path.as_deref())?,
        UnregisterModel(name) => engine.unregister(now, &name)?,
        ListModels { tier } => engine.list_models(now, tier.as_deref())?,
        ModelInfo(name) => engine.model_info(now, &name)?,
        AccessModel(name) => engine.access(now, &name)?,
        PinModel(name) => engine.set_pinned(&name, true)?,
        UnpinModel(name) => engine.set_pinned(&name, false)?,
        CancelJob(id) => engine.cancel_job(now, &id)?,
        ListJobs => engine.list_jobs(now),
        QueueStatus => {
            let (pending, running, completed, failed) = engine.queue_counts();
            let jobs = engine.list_jobs(now).get("jobs").cloned().unwrap_or(json!([]));
            json!({
                "status": "success",
                "task_queue": {"pending": pending, "running": running, "completed": completed, "failed": failed},
                "max_concurrent_tasks": engine.max_concurrent(),
                "now": now,
                "jobs": jobs,
            })
        }
        QueueHistory(q) => {
            if let Some(s) = &q.status
                && !["queued", "running", "success", "failed", "cancelled"].contains(&s.as_str())
            {
                return Err(EngineError::bad_request(format!(
                    "queue_history: unknown status {s:?}; one of: queued, running, success, failed, cancelled"
                )));
            }
            let history = engine.history(now, q.limit.unwrap_or(100), q.status.as_deref(), q.since);
            json!({"status": "success", "history": history})
        }
        Health => json!({
            "status": "success",
            "healthy": true,
            "backend": engine.backend().name(),
            "policy": engine.policy_name(),
            "version": env!("CARGO_PKG_VERSION"),
            "models": engine.state().by_name.len(),
            "tiers": engine.state().tier_names(),
            "requests": REQUEST_KEYS,
        }),
        Metrics => engine.metrics_json(now),
    };
    Ok(Outcome::Reply(v))
}

/// The last `tier_status` answer, serialized, and the view it came from.
///
/// `tier_status` is what monitoring clients poll, and serializing it is most
/// of its cost. The engine's typed view is cheap to build and compare, so an
/// answer whose view equals the cached one reuses the cached bytes: the key
/// is the answer's whole content, so a cached answer is never stale.
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
/// same content as [`execute`] answers, without building a `Value` tree, and
/// from `cache` when nothing in it changed.
pub fn write_tier_status(
    engine: &mut Engine,
    now: f64,
    id: &Option<Value>,
    cache: &mut StatusCache,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    engine.tick(now);
    let view = engine.tier_status_view();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::optimizer::UsagePolicy;
    use crate::sim::SimBackend;

    const T0: f64 = 1_700_000_000.0;

    fn status_line(e: &mut Engine, cache: &mut StatusCache, id: &Option<Value>) -> Value {
        let mut out = Vec::new();
        write_tier_status(e, T0, id, cache, &mut out).expect("serializes");
        serde_json::from_slice(&out).expect("one JSON object")
    }

    #[test]
    fn cached_tier_status_matches_execute_and_follows_changes() {
        let cfg = Config::seed_default();
        let backend = Box::new(SimBackend::new(&cfg));
        let mut e = Engine::new(cfg, backend, Box::new(UsagePolicy), T0).expect("engine");
        let mut cache = StatusCache::default();
        let expected = |e: &mut Engine, id: &Option<Value>| match execute(e, T0, Request::TierStatus) {
            Ok(Outcome::Reply(v)) => with_id(v, id),
            other => panic!("{other:?}"),
        };
        for id in [None, Some(json!(1)), Some(json!({"a": [1, "x"]})), Some(Value::Null)] {
            assert_eq!(status_line(&mut e, &mut cache, &id), expected(&mut e, &id));
        }
        let before = status_line(&mut e, &mut cache, &None);
        let opts = MoveOptions::default();
        e.move_tier(T0, "t5-base", "storage", &opts).expect("move");
        let after = status_line(&mut e, &mut cache, &None);
        assert_ne!(before, after, "a reservation changes the answer");
        assert_eq!(after, expected(&mut e, &None));
    }
}
