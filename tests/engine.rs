//! Engine behaviour on the seed configuration, driven without any runtime.
//! Every behaviour test runs under the seed's simple policy (`usage`) and
//! under the default policy (`tierd`): see `under_both_policies!` at the end.

mod engine_api;

use engine_api::{Wire, sim_engine};
use serde_json::json;
use tierd::config::Config;
use tierd::optimizer::{TierdParams, TierdPolicy, UsagePolicy};
use tierd::tiers::{Engine, MoveOptions, Policy};

const T0: f64 = 1_700_000_000.0;

/// Builds the policy a test runs under.
type MakePolicy = fn(&Config) -> Box<dyn Policy>;

fn usage(_cfg: &Config) -> Box<dyn Policy> {
    Box::new(UsagePolicy)
}

fn tierd(cfg: &Config) -> Box<dyn Policy> {
    Box::new(TierdPolicy::new(TierdParams::for_config(cfg)))
}

fn engine_with(cfg: Config, policy: MakePolicy) -> (Engine, tierd::drivers::sim::SimControl) {
    let p = policy(&cfg);
    sim_engine(cfg, p, T0)
}

fn seed_engine(policy: MakePolicy) -> Engine {
    engine_with(Config::seed_default(), policy).0
}

fn tier_status_reproduces_the_seed_example(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let s = e.status_json(T0);
    let ram = &s["tiers"]["ram"];
    assert_eq!(ram["used_gb"], json!(4.8));
    assert_eq!(ram["available_gb"], json!(2.6));
    assert_eq!(ram["limit_gb"], json!(5.0));
    assert_eq!(ram["utilization"], json!(0.96));
    assert_eq!(ram["models"], json!(4));
    let swap = &s["tiers"]["swap"];
    assert_eq!(swap["used_gb"], json!(13.0));
    assert_eq!(swap["available_gb"], json!(8.0));
    assert_eq!(swap["limit_gb"], json!(10.0));
    assert_eq!(swap["utilization"], json!(1.3));
    assert_eq!(swap["models"], json!(2));
    e.check_invariants().unwrap();
}

fn make_room_demotes_least_used_then_promotes_in_seed_time(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let err = e.move_model(T0, "gpt-j-6b", "ram", &MoveOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("RAM limit exceeded"), "{err}");
    e.limits_json(T0, json!({"ram_max_gb": 11.0})).unwrap();
    let err = e.move_model(T0, "gpt-j-6b", "ram", &MoveOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("Insufficient RAM"), "{err}");
    let opts = MoveOptions {
        make_room: true,
        ..MoveOptions::default()
    };
    let started = e.move_model(T0, "gpt-j-6b", "ram", &opts).unwrap();
    // Least used first: whisper-small (2), t5-base (3), gpt2-medium (5) free 3.5 GB.
    assert_eq!(started.make_room_jobs.len(), 3, "{:?}", started.make_room_jobs);
    assert!(started.job_id.starts_with("tier_promote_gpt-j-6b_"));
    e.check_invariants().unwrap();
    // Demotions take at most 1.5 GB x 0.2 s = 0.3 s; then 6 GB x 0.3 s/GB = 1.8 s.
    e.tick(T0 + 0.3);
    let st = e.job_json(T0 + 0.3, &started.job_id).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["estimated_time"], json!(1.8));
    e.tick(T0 + 2.0);
    assert_eq!(e.job_json(T0 + 2.0, &started.job_id).unwrap()["status"], "running");
    e.tick(T0 + 2.2);
    e.check_invariants().unwrap();
    let st = e.job_json(T0 + 2.2, &started.job_id).unwrap();
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(e.model_json(T0, "gpt-j-6b").unwrap()["model"]["tier"], "ram");
    assert_eq!(e.model_json(T0, "bert-large").unwrap()["model"]["tier"], "ram");
}

fn move_job_runs_to_success_in_virtual_time(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let err = e.move_model(T0, "t5-base", "swap", &MoveOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("SWAP limit exceeded"), "{err}");
    let started = e.move_model(T0, "t5-base", "storage", &MoveOptions::default()).unwrap();
    assert!(started.job_id.starts_with("tier_demote_t5-base_1700000000"));
    let st = e.job_json(T0 + 0.09, &started.job_id).unwrap();
    assert_eq!(st["status"], "running");
    assert!((st["progress"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{st}");
    e.tick(T0 + 0.2);
    let st = e.job_json(T0 + 0.2, &started.job_id).unwrap();
    assert_eq!(st["status"], "success");
    assert_eq!(st["progress"], json!(1.0));
    assert_eq!(e.model_json(T0, "t5-base").unwrap()["model"]["tier"], "storage");
    e.check_invariants().unwrap();
}

fn job_ids_are_unique_within_one_second(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let a = e.move_model(T0, "t5-base", "storage", &MoveOptions::default()).unwrap();
    let c = e.cancel_json(T0, &a.job_id).unwrap();
    assert_eq!(c["status"], "cancelled");
    let b = e.move_model(T0 + 0.5, "t5-base", "storage", &MoveOptions::default()).unwrap();
    assert_ne!(a.job_id, b.job_id);
    assert!(b.job_id.starts_with(&a.job_id), "{} / {}", a.job_id, b.job_id);
}

fn move_checks_come_in_the_documented_order(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let o = MoveOptions::default();
    let code = |r: Result<tierd::tiers::MoveStarted, tierd::error::EngineError>| r.unwrap_err().code().as_str();
    assert_eq!(code(e.move_model(T0, "nope", "nowhere", &o)), "MODEL_NOT_FOUND");
    assert_eq!(code(e.move_model(T0, "t5-base", "nowhere", &o)), "INVALID_REQUEST");
    assert_eq!(code(e.move_model(T0, "t5-base", "ram", &o)), "CONFLICT");
    e.move_model(T0, "t5-base", "storage", &o).unwrap();
    let err = e.move_model(T0, "t5-base", "swap", &o).unwrap_err();
    assert_eq!(err.code().as_str(), "CONFLICT");
    assert!(err.to_string().contains("pending move"), "{err}");
    let err = e.move_model(T0, "llama-13b", "swap", &o).unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_REQUEST");
    assert!(err.to_string().contains("maximum single model size"), "{err}");
}

fn update_limits_validates_everything_before_changing_anything(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let err = e.limits_json(T0, json!({"ram_max_gb": 6.0, "swap_max_gb": 1.0})).unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_REQUEST");
    assert!(err.to_string().contains("minimum"), "{err}");
    assert_eq!(e.limits_map()["ram_max_gb"], json!(5.0), "nothing changed");
    let err = e.limits_json(T0, json!({"ram_reserved_gb": 0.2})).unwrap_err();
    assert!(err.to_string().contains("0.5"), "{err}");
    let err = e.limits_json(T0, json!({"gpu_max_gb": 2.0})).unwrap_err();
    assert!(err.to_string().contains("known limits"), "{err}");
    let ok = e
        .limits_json(T0, json!({"ram_max_gb": 6.0, "swap_max_gb": 12.0, "ram_reserved_gb": 1.5}))
        .unwrap();
    assert_eq!(
        ok["old_limits"],
        json!({"ram_max_gb": 5.0, "swap_max_gb": 10.0, "ram_reserved_gb": 1.0, "max_concurrent_tasks": 4})
    );
    assert_eq!(ok["new_limits"]["ram_max_gb"], json!(6.0));
    assert_eq!(ok["new_limits"]["ram_reserved_gb"], json!(1.5));
}

fn lowered_limit_demotes_least_used_until_the_tier_fits(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let r = e.limits_json(T0, json!({"ram_max_gb": 2.5})).unwrap();
    let jobs: Vec<&str> = r["rebalance"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // 4.8 GB in RAM, 2.5 allowed: whisper-small (usage 2), t5-base (3), gpt2-medium (5) go.
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(jobs.iter().all(|j| j.starts_with("tier_demote_")));
    assert!(jobs[0].contains("whisper-small"));
    e.tick(T0 + 5.0);
    let s = e.status_json(T0 + 5.0);
    assert_eq!(s["tiers"]["ram"]["used_gb"], json!(1.3));
    // Swap is over its own limit, so the demoted models went to storage.
    assert_eq!(e.model_json(T0, "whisper-small").unwrap()["model"]["tier"], "storage");
    e.check_invariants().unwrap();
}

fn pinned_models_block_a_limit_they_cannot_fit_and_are_never_victims(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    e.set_pinned("bert-large", true).unwrap();
    e.set_pinned("gpt2-medium", true).unwrap();
    let err = e.limits_json(T0, json!({"ram_max_gb": 2.0})).unwrap_err();
    assert_eq!(err.code().as_str(), "CONFLICT");
    assert!(err.to_string().contains("pinned"), "{err}");
    let r = e.limits_json(T0, json!({"ram_max_gb": 3.0})).unwrap();
    for j in r["rebalance"].as_array().unwrap() {
        let j = j.as_str().unwrap();
        assert!(!j.contains("bert-large") && !j.contains("gpt2-medium"), "{j}");
    }
}

fn register_places_by_preference_and_room(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let r = e.register_json(T0, "tiny", Some(0.1), Some("ram"), None).unwrap();
    assert_eq!(r["tier"], "ram");
    // RAM now has 0.1 GB left; swap is over its limit: storage.
    let r = e.register_json(T0, "mid", Some(1.0), Some("ram"), None).unwrap();
    assert_eq!(r["tier"], "storage");
    let r = e.register_json(T0, "huge", Some(8.0), Some("ram"), None).unwrap();
    assert_eq!(r["tier"], "storage");
    let err = e.register_json(T0, "tiny", Some(0.1), None, None).unwrap_err();
    assert_eq!(err.code().as_str(), "CONFLICT");
    let err = e.register_json(T0, "x", Some(0.1), Some("gpu9"), None).unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_REQUEST");
    e.check_invariants().unwrap();
}

fn auto_optimize_explains_in_the_seed_words_and_dry_run_moves_nothing(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let dry = e.optimize_json(T0, true);
    let opts: Vec<&str> = dry["optimizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(opts.contains(&"Promoting gpt2-large to RAM (usage: 12)"), "{opts:?}");
    assert!(dry["jobs"].as_array().unwrap().is_empty());
    assert_eq!(e.active_jobs(), 0);
    let run = e.optimize_json(T0, false);
    eprintln!("{run:#}");
    assert!(!run["jobs"].as_array().unwrap().is_empty(), "{run}");
    for _ in 0..100 {
        if e.active_jobs() == 0 {
            break;
        }
        let t = e.next_wakeup().unwrap();
        e.tick(t);
    }
    assert_eq!(e.model_json(T0, "gpt2-large").unwrap()["model"]["tier"], "ram");
    e.check_invariants().unwrap();
}

fn faults_retry_with_backoff_and_a_final_failure_rolls_back(policy: MakePolicy) {
    let mut cfg = Config::seed_default();
    cfg.sim.fault_probability = 1.0;
    cfg.moves.max_retries = 2;
    let (mut e, _) = engine_with(cfg, policy);
    let s = e.move_model(T0, "t5-base", "storage", &MoveOptions::default()).unwrap();
    let mut now = T0;
    while e.active_jobs() > 0 {
        now = e.next_wakeup().unwrap();
        e.tick(now);
    }
    let st = e.job_json(now, &s.job_id).unwrap();
    assert_eq!(st["status"], "failed");
    assert_eq!(st["attempt"], json!(3));
    assert_eq!(st["attempts"].as_array().unwrap().len(), 3);
    assert!(st["error"].as_str().unwrap().contains("simulated I/O fault"));
    assert_eq!(e.model_json(now, "t5-base").unwrap()["model"]["tier"], "ram");
    assert_eq!(e.metrics().retries, 2);
    e.check_invariants().unwrap();
}

fn memory_pressure_demotes_the_coldest_until_the_floor_is_met(policy: MakePolicy) {
    let mut cfg = Config::seed_default();
    cfg.tiers[0].min_free_gb = Some(1.0);
    let (mut e, control) = engine_with(cfg, policy);
    e.set_pinned("whisper-small", true).unwrap();
    e.tick(T0);
    assert_eq!(e.active_jobs(), 0, "2.6 GB available: no pressure");
    // Other programs take 2 GB: 0.6 GB available, 0.4 GB under the floor.
    control.set_external_use(0, 2_000_000_000);
    e.tick(T0 + 1.0);
    let jobs = e.jobs_json(T0 + 1.0);
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    // whisper-small (usage 2) is pinned; the next coldest is t5-base (3).
    assert_eq!(jobs[0]["model_name"], "t5-base");
    assert_eq!(jobs[0]["origin"], "pressure");
    assert!(jobs[0]["reason"].as_str().unwrap().contains("under its 1 GB floor"), "{}", jobs[0]);
    e.tick(T0 + 10.0);
    assert_eq!(e.model_json(T0, "t5-base").unwrap()["model"]["tier"], "storage");
    let avail = e.status_json(T0 + 10.0)["tiers"]["ram"]["available_gb"].as_f64().unwrap();
    assert!(avail >= 1.0 - 1e-9, "recovered: {avail}");
    e.tick(T0 + 20.0);
    assert_eq!(e.active_jobs(), 0, "no further demotions once the floor is met");
    e.check_invariants().unwrap();
}

fn many_moves_of_one_model_in_one_second_get_distinct_ids(policy: MakePolicy) {
    let mut e = seed_engine(policy);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..2000 {
        let s = e.move_model(T0, "t5-base", "storage", &MoveOptions::default()).unwrap();
        e.cancel_job(T0, &s.job_id).unwrap();
        assert!(ids.insert(s.job_id));
    }
    assert!(ids.contains("tier_demote_t5-base_1700000000_2000"));
}

/// A policy that, on an access to `s1`, asks for `s1` in ram making room
/// there, then for `r2` in swap, counting on the room `s1` leaves in swap.
struct MakeRoomPolicy;

impl Policy for MakeRoomPolicy {
    fn name(&self) -> &'static str {
        "make-room-test"
    }
    fn eviction_rank(&self, _now: f64, state: &tierd::tiers::State, model: tierd::tiers::ModelId) -> f64 {
        state.model(model).and_then(|m| m.usage.last_access).unwrap_or(f64::NEG_INFINITY)
    }
    fn on_access(&mut self, _now: f64, state: &tierd::tiers::State, model: tierd::tiers::ModelId, out: &mut Vec<tierd::tiers::Desire>) {
        let (Some(s1), Some(r2)) = (state.model_id("s1"), state.model_id("r2")) else {
            return;
        };
        if model != s1 {
            return;
        }
        let desire = |model, target, make_room| tierd::tiers::Desire {
            model,
            target,
            reason: "test".into(),
            make_room,
        };
        out.extend([desire(s1, 0, true), desire(r2, 1, false)]);
    }
    fn plan(&mut self, _now: f64, _state: &tierd::tiers::State, _out: &mut Vec<tierd::tiers::Desire>) {}
}

#[test]
fn a_policy_move_that_makes_room_joins_its_batch_on_the_simulators_path() {
    // ram and swap full (10 GB each, two 5 GB models). s1 to ram makes room:
    // r1 (least recently used) goes to storage, swap being full. r2 to swap
    // then fits only on the room s1 frees there, which the batch must know
    // of, also on the simulator's access path, where jobs have no ids.
    let text = r#"
[[tiers]]
name = "ram"
max_gb = 10.0
access_s_per_gb = 0.1
[[tiers]]
name = "swap"
max_gb = 10.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
access_s_per_gb = 2.0
[[models]]
name = "r1"
size_gb = 5.0
tier = "ram"
[[models]]
name = "r2"
size_gb = 5.0
tier = "ram"
[[models]]
name = "s1"
size_gb = 5.0
tier = "swap"
[[models]]
name = "s2"
size_gb = 5.0
tier = "swap"
"#;
    let cfg = Config::from_toml(text).expect("config");
    let (mut e, _) = sim_engine(cfg, Box::new(MakeRoomPolicy), T0);
    let id = |e: &Engine, n: &str| e.state().model_id(n).expect("model");
    let (s1, r1, r2) = (id(&e, "s1"), id(&e, "r1"), id(&e, "r2"));
    e.access_load(T0, s1).expect("access");
    let mut now = T0;
    while let Some(w) = e.next_wakeup() {
        now = w.max(now);
        e.tick(now);
    }
    let tier = |e: &Engine, m| e.state().model(m).map(|m| m.tier);
    assert_eq!(tier(&e, s1), Some(0), "s1 reached ram");
    assert_eq!(tier(&e, r1), Some(2), "r1 made room, to storage");
    assert_eq!(tier(&e, r2), Some(1), "r2 moved into the room s1 left in swap");
    e.check_invariants().unwrap();
}

/// Each behaviour test above, once under each policy.
macro_rules! under_both_policies {
    ($($name:ident),* $(,)?) => {
        mod usage_policy {
            $(#[test] fn $name() { super::$name(super::usage) })*
        }
        mod tierd_policy {
            $(#[test] fn $name() { super::$name(super::tierd) })*
        }
    };
}

under_both_policies!(
    tier_status_reproduces_the_seed_example,
    make_room_demotes_least_used_then_promotes_in_seed_time,
    move_job_runs_to_success_in_virtual_time,
    job_ids_are_unique_within_one_second,
    move_checks_come_in_the_documented_order,
    update_limits_validates_everything_before_changing_anything,
    lowered_limit_demotes_least_used_until_the_tier_fits,
    pinned_models_block_a_limit_they_cannot_fit_and_are_never_victims,
    register_places_by_preference_and_room,
    auto_optimize_explains_in_the_seed_words_and_dry_run_moves_nothing,
    faults_retry_with_backoff_and_a_final_failure_rolls_back,
    memory_pressure_demotes_the_coldest_until_the_floor_is_met,
    many_moves_of_one_model_in_one_second_get_distinct_ids,
);
