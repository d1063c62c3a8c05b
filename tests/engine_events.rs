//! The engine's events and metrics for an engine tier: a tier whose driver
//! is not a built-in kind (here a stand-in for llama-server around the
//! simulated RAM tier) and whose capacity turns `Unavailable` while its
//! engine is down gets `tier_unavailable` + `engine_down`, then
//! `tier_available` + `engine_up`, and `tierd_engine_up` /
//! `tierd_engine_load_duration_seconds` in the exposition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};
use tierd::config::Config;
use tierd::drivers::sim::simulated_machine;
use tierd::drivers::{Capacity, DriverEvent, JobKey, ModelFiles, MoveOrder, Source, TierDriver};
use tierd::optimizer::UsagePolicy;
use tierd::requests::exposition::render;
use tierd::requests::{Prepare, call};
use tierd::tiers::{Engine, EventKind};

const T0: f64 = 1_700_000_000.0;

/// An "engine" tier: the simulated tier inside, down while `up` is false.
struct FakeEngine {
    inner: Box<dyn TierDriver>,
    up: Arc<AtomicBool>,
}

impl TierDriver for FakeEngine {
    fn kind(&self) -> &'static str {
        "llama-server"
    }
    fn capacity(&self) -> Capacity {
        if self.up.load(Ordering::SeqCst) {
            self.inner.capacity()
        } else {
            Capacity::Unavailable("llama-server at 127.0.0.1:8080 does not answer".into())
        }
    }
    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.inner.start_move(now, order)
    }
    fn cancel_move(&mut self, now: f64, job: JobKey) {
        self.inner.cancel_move(now, job)
    }
    fn progress(&self, now: f64, job: JobKey) -> f64 {
        self.inner.progress(now, job)
    }
    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        self.inner.poll(now, events)
    }
    fn next_event_time(&self) -> Option<f64> {
        self.inner.next_event_time()
    }
    fn release(&mut self, model: &str, files: Option<&ModelFiles>) {
        self.inner.release(model, files)
    }
    fn source_of(&self, model: &str) -> Source {
        self.inner.source_of(model)
    }
    fn details(&self) -> Map<String, Value> {
        self.inner.details()
    }
}

fn engine() -> (Engine, Arc<AtomicBool>) {
    let cfg = Config::seed_default();
    let (mut machine, _) = simulated_machine(&cfg, false);
    let up = Arc::new(AtomicBool::new(true));
    let inner = machine.drivers.remove(0);
    machine.drivers.insert(
        0,
        Box::new(FakeEngine {
            inner,
            up: Arc::clone(&up),
        }),
    );
    (Engine::new(cfg, machine, Box::new(UsagePolicy), T0).expect("engine"), up)
}

fn names(e: &mut Engine) -> Vec<String> {
    e.take_events()
        .iter()
        .map(|ev| {
            serde_json::to_value(ev).expect("event serializes")["event"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn engine_tiers_report_up_down_and_load_durations() {
    let (mut e, up) = engine();
    // Nobody watches: nothing is kept.
    up.store(false, Ordering::SeqCst);
    e.observe_tiers(T0);
    assert!(e.take_events().is_empty());
    up.store(true, Ordering::SeqCst);

    e.collect_events(true);
    e.observe_tiers(T0);
    assert!(names(&mut e).is_empty(), "no change, no event");
    up.store(false, Ordering::SeqCst);
    e.observe_tiers(T0 + 1.0);
    let evs = e.take_events();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(matches!(&evs[0].kind, EventKind::TierUnavailable { tier, reason } if tier == "ram" && reason.contains("does not answer")));
    assert!(matches!(&evs[1].kind, EventKind::EngineDown { tier, driver, .. } if tier == "ram" && *driver == "llama-server"));
    assert_eq!(evs[1].at, T0 + 1.0);
    let text = render(&e, T0 + 1.0);
    assert_eq!(line(&text, "tierd_engine_up{"), Some(r#"tierd_engine_up{tier="ram"} 0"#), "{text}");
    assert_eq!(
        line(&text, r#"tierd_tier_available{tier="ram"}"#),
        Some(r#"tierd_tier_available{tier="ram"} 0"#)
    );
    // Only the engine tier is an engine.
    assert_eq!(text.lines().filter(|l| l.starts_with("tierd_engine_up{")).count(), 1, "{text}");

    up.store(true, Ordering::SeqCst);
    e.observe_tiers(T0 + 2.0);
    assert_eq!(names(&mut e), ["tier_available", "engine_up"]);
    assert!(render(&e, T0 + 2.0).contains("tierd_engine_up{tier=\"ram\"} 1\n"));

    // A load into the engine: a move into its tier, timed.
    let prepare = Prepare {
        walk_files: false,
        max_files: 10,
    };
    let r = call(
        &mut e,
        T0 + 3.0,
        json!({"move_tier": {"model_name": "gpt2-medium", "target_tier": "storage"}}),
        &prepare,
    );
    assert_eq!(r["status"], "tier_move_started", "{r}");
    let mut now = T0 + 3.0;
    while e.active_jobs() > 0 {
        now += 0.05;
        e.tick(now);
        assert!(now < T0 + 100.0, "the demotion never ended");
    }
    let r = call(
        &mut e,
        now,
        json!({"move_tier": {"model_name": "gpt2-medium", "target_tier": "ram"}}),
        &prepare,
    );
    assert_eq!(r["status"], "tier_move_started", "{r}");
    while e.active_jobs() > 0 {
        now += 0.05;
        e.tick(now);
        assert!(now < T0 + 200.0, "the load never ended");
    }
    let evs = names(&mut e);
    assert!(evs.ends_with(&["job_ended".to_string(), "model_placed".to_string()]), "{evs:?}");
    let text = render(&e, now);
    assert_eq!(
        line(&text, r#"tierd_engine_load_duration_seconds_count{tier="ram"}"#),
        Some(r#"tierd_engine_load_duration_seconds_count{tier="ram"} 1"#),
        "{text}"
    );
    assert_eq!(
        line(&text, r#"tierd_moves_total{from="storage",to="ram",result="success"}"#),
        Some(r#"tierd_moves_total{from="storage",to="ram",result="success"} 1"#)
    );

    // Collection off: the buffer goes, and nothing more is kept.
    e.collect_events(false);
    up.store(false, Ordering::SeqCst);
    e.observe_tiers(now + 1.0);
    assert!(e.take_events().is_empty());
}
