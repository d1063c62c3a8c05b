//! Engine behaviour on the seed configuration, driven without any runtime.

use serde_json::{Map, Value, json};
use tierd::config::Config;
use tierd::optimizer::UsagePolicy;
use tierd::sim::SimBackend;
use tierd::tiers::{Engine, MoveOptions};

const T0: f64 = 1_700_000_000.0;

fn seed_engine() -> Engine {
    let cfg = Config::seed_default();
    let backend = Box::new(SimBackend::new(&cfg));
    Engine::new(cfg, backend, Box::new(UsagePolicy), T0).expect("engine")
}

fn limits(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn tier_status_reproduces_the_seed_example() {
    let e = seed_engine();
    let s = e.tier_status(T0);
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

#[test]
fn make_room_demotes_least_used_then_promotes_in_seed_time() {
    let mut e = seed_engine();
    let err = e.move_tier(T0, "gpt-j-6b", "ram", &MoveOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("RAM limit exceeded"), "{err}");
    e.update_limits(T0, &limits(json!({"ram_max_gb": 11.0}))).unwrap();
    let err = e.move_tier(T0, "gpt-j-6b", "ram", &MoveOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("Insufficient RAM"), "{err}");
    let opts = MoveOptions {
        make_room: true,
        ..MoveOptions::default()
    };
    let started = e.move_tier(T0, "gpt-j-6b", "ram", &opts).unwrap();
    // Least used first: whisper-small (2), t5-base (3), gpt2-medium (5) free 3.5 GB.
    assert_eq!(started.make_room_jobs.len(), 3, "{:?}", started.make_room_jobs);
    assert!(started.job_id.starts_with("tier_promote_gpt-j-6b_"));
    e.check_invariants().unwrap();
    // Demotions take at most 1.5 GB x 0.2 s = 0.3 s; then 6 GB x 0.3 s/GB = 1.8 s.
    e.tick(T0 + 0.3);
    let st = e.job_status(T0 + 0.3, &started.job_id).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["estimated_time"], json!(1.8));
    e.tick(T0 + 2.0);
    assert_eq!(e.job_status(T0 + 2.0, &started.job_id).unwrap()["status"], "running");
    e.tick(T0 + 2.2);
    e.check_invariants().unwrap();
    let st = e.job_status(T0 + 2.2, &started.job_id).unwrap();
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(e.model_info(T0, "gpt-j-6b").unwrap()["model"]["tier"], "ram");
    assert_eq!(e.model_info(T0, "bert-large").unwrap()["model"]["tier"], "ram");
}

#[test]
fn move_job_runs_to_success_in_virtual_time() {
    let mut e = seed_engine();
    let err = e.move_tier(T0, "t5-base", "swap", &MoveOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("SWAP limit exceeded"), "{err}");
    let started = e.move_tier(T0, "t5-base", "storage", &MoveOptions::default()).unwrap();
    assert!(started.job_id.starts_with("tier_demote_t5-base_1700000000"));
    let st = e.job_status(T0 + 0.09, &started.job_id).unwrap();
    assert_eq!(st["status"], "running");
    assert!((st["progress"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{st}");
    e.tick(T0 + 0.2);
    let st = e.job_status(T0 + 0.2, &started.job_id).unwrap();
    assert_eq!(st["status"], "success");
    assert_eq!(st["progress"], json!(1.0));
    assert_eq!(e.model_info(T0, "t5-base").unwrap()["model"]["tier"], "storage");
    e.check_invariants().unwrap();
}
