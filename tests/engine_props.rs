//! Property tests of the engine (issue 2): random request sequences and time
//! steps on the seed configuration, with injected faults, under the seed's
//! `usage` policy and the default `tierd` policy.

mod engine_api;

use std::collections::HashMap;

use engine_api::{Wire, sim_engine};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tierd::config::Config;
use tierd::optimizer::{TierdParams, TierdPolicy, UsagePolicy};
use tierd::requests::access_model::AccessModel;
use tierd::requests::auto_optimize::AutoOptimize;
use tierd::requests::cancel_job::CancelJob;
use tierd::requests::move_tier::MoveTier;
use tierd::requests::register_model::RegisterModel;
use tierd::requests::unregister_model::UnregisterModel;
use tierd::requests::update_limits::UpdateLimits;
use tierd::requests::{Outcome, Request, execute};
use tierd::tiers::{Engine, Policy};

#[derive(Debug, Clone)]
enum Op {
    Move { model: usize, tier: usize, make_room: bool },
    Cancel { job: usize },
    Limit { tier: usize, gb: f64 },
    Access { model: usize },
    Register { size_tenths: u32, tier: usize },
    Unregister { model: usize },
    Optimize,
    Advance { ms: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12usize, 0..3usize, any::<bool>()).prop_map(|(model, tier, make_room)| Op::Move { model, tier, make_room }),
        1 => (0..20usize).prop_map(|job| Op::Cancel { job }),
        1 => (0..2usize, 10..140u32).prop_map(|(tier, t)| Op::Limit { tier, gb: t as f64 / 10.0 }),
        2 => (0..12usize).prop_map(|model| Op::Access { model }),
        1 => (1..80u32, 0..3usize).prop_map(|(size_tenths, tier)| Op::Register { size_tenths, tier }),
        1 => (0..12usize).prop_map(|model| Op::Unregister { model }),
        1 => Just(Op::Optimize),
        4 => (1..3000u32).prop_map(|ms| Op::Advance { ms }),
    ]
}

const TIERS: [&str; 3] = ["ram", "swap", "storage"];

fn run(engine: &mut Engine, now: f64, req: Request) -> Result<Value, String> {
    match execute(engine, now, req) {
        Ok(Outcome::Reply(v)) => Ok(v),
        Ok(Outcome::WaitForJob(id)) => Ok(json!({ "job_id": id })),
        Err(e) => Err(e.to_string()),
    }
}

/// Physical occupancy of a tier: resident bytes plus copies in flight.
fn occupancy(engine: &Engine, tier: usize) -> u64 {
    let t = &engine.state().tiers[tier];
    t.used + t.incoming_running
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_invariants_hold(ops in proptest::collection::vec(op(), 1..80), fault in 0.0..0.4f64, default_policy in any::<bool>()) {
        let mut cfg = Config::seed_default();
        cfg.sim.fault_probability = fault;
        cfg.moves.max_retries = 1;
        let mut now = 1_000.0;
        let policy: Box<dyn Policy> = if default_policy {
            Box::new(TierdPolicy::new(TierdParams::for_config(&cfg)))
        } else {
            Box::new(UsagePolicy)
        };
        let (mut engine, _) = sim_engine(cfg, policy, now);
        let mut names: Vec<String> = engine.state().iter_models().map(|(_, m)| m.name.to_string()).collect();
        names.sort();
        let mut total: u64 = engine.state().tiers.iter().map(|t| t.used).sum();
        let mut jobs: Vec<String> = Vec::new();
        // Tiers allowed over their limit (initially over, or limit lowered),
        // with the occupancy they may not exceed again.
        let mut over: HashMap<usize, u64> = HashMap::new();
        for i in 0..2 {
            if occupancy(&engine, i) > engine.state().tiers[i].limit.unwrap_or(u64::MAX) {
                over.insert(i, occupancy(&engine, i));
            }
        }
        let mut checked: HashMap<String, bool> = HashMap::new();
        let mut next_name = 0;
        for op in ops {
            match op {
                Op::Move { model, tier, make_room } => {
                    if let Some(name) = names.get(model % names.len().max(1)).cloned() {
                        let mut m = MoveTier::new(&name, TIERS[tier]);
                        m.make_room = make_room;
                        let req = Request::MoveTier(m);
                        if let Ok(v) = run(&mut engine, now, req) {
                            jobs.push(v["job_id"].as_str().unwrap().to_string());
                            for j in v["make_room"].as_array().unwrap() {
                                jobs.push(j.as_str().unwrap().to_string());
                            }
                        }
                    }
                }
                Op::Cancel { job } => {
                    if let Some(id) = jobs.get(job % jobs.len().max(1)).cloned() {
                        let _ = run(&mut engine, now, Request::CancelJob(CancelJob { job_id: id }));
                    }
                }
                Op::Limit { tier, gb } => {
                    let key = format!("{}_max_gb", TIERS[tier]);
                    let before = engine.state().tiers[tier].limit;
                    let mut m = Map::new();
                    m.insert(key, json!(gb));
                    if let Ok(v) = run(&mut engine, now, Request::UpdateLimits(UpdateLimits { entries: m })) {
                        for j in v["rebalance"].as_array().unwrap() {
                            jobs.push(j.as_str().unwrap().to_string());
                        }
                        let limit = engine.state().tiers[tier].limit.unwrap();
                        if before.is_some_and(|b| limit < b) && occupancy(&engine, tier) > limit {
                            over.insert(tier, occupancy(&engine, tier));
                        }
                    }
                }
                Op::Access { model } => {
                    if let Some(name) = names.get(model % names.len().max(1)).cloned() {
                        let req = Request::AccessModel(AccessModel { model_name: name });
                        prop_assert!(run(&mut engine, now, req).is_ok());
                    }
                }
                Op::Register { size_tenths, tier } => {
                    let name = format!("new-{next_name}");
                    next_name += 1;
                    let req = Request::RegisterModel(RegisterModel {
                        model_name: name.clone(), size_gb: Some(size_tenths as f64 / 10.0),
                        preferred_tier: Some(TIERS[tier].into()), path: None, files: None,
                    });
                    let v = run(&mut engine, now, req);
                    prop_assert!(v.is_ok(), "{v:?}");
                    total += size_tenths as u64 * 100_000_000;
                    names.push(name);
                }
                Op::Unregister { model } => {
                    if let Some(name) = names.get(model % names.len().max(1)).cloned() {
                        let size = engine.state().model(engine.state().model_id(&name).unwrap()).unwrap().bytes;
                        if run(&mut engine, now, Request::UnregisterModel(UnregisterModel { model_name: name.clone() })).is_ok() {
                            total -= size;
                            names.retain(|n| n != &name);
                        }
                    }
                }
                Op::Optimize => {
                    let v = run(&mut engine, now, Request::AutoOptimize(AutoOptimize { dry_run: false })).unwrap();
                    for j in v["jobs"].as_array().unwrap() {
                        jobs.push(j.as_str().unwrap().to_string());
                    }
                }
                Op::Advance { ms } => {
                    now += ms as f64 / 1000.0;
                    engine.tick(now);
                }
            }
            prop_assert_eq!(engine.check_invariants(), Ok(()));
            // Bytes are conserved.
            let sum: u64 = engine.state().tiers.iter().map(|t| t.used).sum();
            prop_assert_eq!(sum, total);
            // No tier exceeds its limit, except one over after a lowered
            // limit, whose occupancy then only falls.
            for i in 0..2 {
                let occ = occupancy(&engine, i);
                let limit = engine.state().tiers[i].limit.unwrap();
                match over.get(&i).copied() {
                    Some(prev) => {
                        prop_assert!(occ <= prev.max(limit), "tier {i} rose from {prev} to {occ} while over its limit {limit}");
                        if occ <= limit { over.remove(&i); } else { over.insert(i, occ); }
                    }
                    None => prop_assert!(occ <= limit, "tier {i} occupancy {occ} over limit {limit}"),
                }
            }
            // A move that ended without success left its model where it was.
            for id in &jobs {
                if checked.contains_key(id) { continue; }
                if let Ok(st) = engine.job_json(now, id) {
                    match st["status"].as_str().unwrap() {
                        "failed" | "cancelled" => {
                            let model = st["model_name"].as_str().unwrap();
                            if let Ok(info) = engine.model_json(now, model) {
                                prop_assert_eq!(&info["model"]["tier"], &st["source_tier"], "{}", st);
                            }
                            checked.insert(id.clone(), true);
                        }
                        "success" => { checked.insert(id.clone(), true); }
                        _ => {}
                    }
                }
            }
        }
        // Every job reaches a terminal state.
        for _ in 0..10_000 {
            if engine.active_jobs() == 0 { break; }
            now = engine.next_wakeup().unwrap_or(now + 1.0).max(now + 0.001);
            engine.tick(now);
        }
        prop_assert_eq!(engine.active_jobs(), 0);
        for id in &jobs {
            if let Ok(st) = engine.job_json(now, id) {
                let s = st["status"].as_str().unwrap();
                prop_assert!(["success", "failed", "cancelled"].contains(&s), "{}", st);
            }
        }
        prop_assert_eq!(engine.check_invariants(), Ok(()));
    }
}
