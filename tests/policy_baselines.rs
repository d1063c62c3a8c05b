//! Each policy on small hand-made traces, with the costs worked out by hand.
//! The policies are built for the timed configuration (so `lru` uses the
//! committed-bytes cascade that timed moves need) and run with instant
//! moves, so every move completes before the next access. The exact LRU of
//! `--moves instant` is checked in `tests/lru_reference.rs`.
//!
//! Tiers: ram 12 GB (0.1 s/GB), swap 12 GB (0.5 s/GB), storage (2.0 s/GB);
//! models A, B, C, D of 6 GB. A 6 GB access costs 0.6 s from ram, 3 s from
//! swap and 12 s from storage.

use tierd::config::Config;
use tierd::sim::replay::build_policy;
use tierd::sim::{Catalog, MoveMode, RunResult, Trace, replay};

const CONFIG: &str = r#"
max_single_model_gb = 64.0
[[tiers]]
name = "ram"
max_gb = 12.0
access_s_per_gb = 0.1
[[tiers]]
name = "swap"
max_gb = 12.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
access_s_per_gb = 2.0
[moves]
promote_s_per_gb = 0.3
demote_s_per_gb = 0.2
max_concurrent = 2
"#;

fn workload(models: &[(&str, f64)], seq: &str) -> (Config, Catalog, Trace) {
    let cfg = Config::from_toml(CONFIG).expect("config");
    let catalog = Catalog {
        names: models.iter().map(|m| m.0.to_string()).collect(),
        sizes_gb: models.iter().map(|m| m.1).collect(),
    };
    let models: Vec<u32> = seq
        .split_whitespace()
        .map(|n| catalog.names.iter().position(|c| c == n).expect("known model") as u32)
        .collect();
    let trace = Trace {
        times: (1..=models.len()).map(|i| i as f64 * 100.0).collect(),
        models,
    };
    (cfg, catalog, trace)
}

fn run(policy: &str, seq: &str) -> RunResult {
    let (cfg, catalog, trace) = workload(&[("A", 6.0), ("B", 6.0), ("C", 6.0), ("D", 6.0)], seq);
    let p = build_policy(policy, &cfg, &catalog, &trace).expect("policy");
    replay(&cfg, &catalog, &trace, p, MoveMode::Instant).expect("replay")
}

fn assert_cost(r: &RunResult, expected: f64) {
    assert!(
        (r.total_load_s - expected).abs() < 1e-9,
        "{}: cost {} expected {expected}",
        r.policy,
        r.total_load_s
    );
}

#[test]
fn lru_cascades_least_recently_used_models_down() {
    // A 12 ram[A] | B 12 ram[A,B] | C 12: A->swap | A 3: B->swap |
    // D 12: C->swap | B 3: A->swap, swap full so C->storage.
    let r = run("lru", "A B C A D B");
    assert_cost(&r, 12.0 + 12.0 + 12.0 + 3.0 + 12.0 + 3.0);
    assert_eq!(r.hits_by_tier, vec![("ram".into(), 0), ("swap".into(), 2), ("storage".into(), 4)]);
    // Moves: 1 + 1 + 2 + 2 + 2 + 3.
    assert_eq!(r.move_count, 11);
    assert!((r.bytes_moved_gb - 66.0).abs() < 1e-9);
}

#[test]
fn lru_hits_in_ram_cost_the_ram_rate() {
    let r = run("lru", "A A B A B");
    assert_cost(&r, 12.0 + 0.6 + 12.0 + 0.6 + 0.6);
}

#[test]
fn lfu_evicts_least_frequent_with_recency_ties() {
    // A 12 | A 0.6 | B 12 | C 12: B(1)->swap | D 12: C(1)->swap |
    // B 3: D(1)->swap, swap over: C->storage | C 12: A and B have 2, A older -> swap.
    let r = run("lfu", "A A B C D B C");
    assert_cost(&r, 12.0 + 0.6 + 12.0 + 12.0 + 12.0 + 3.0 + 12.0);
    // LRU on the same trace keeps C in swap: 54.6.
    assert_cost(&run("lru", "A A B C D B C"), 54.6);
}

#[test]
fn belady_evicts_the_furthest_next_use() {
    // ... D 12: C (next use 7) leaves, not B (next use 6) | B 0.6 | C 3.
    let r = run("belady", "A A B C D B C");
    assert_cost(&r, 12.0 + 0.6 + 12.0 + 12.0 + 12.0 + 0.6 + 3.0);
}

#[test]
fn gdsf_ages_with_the_inflation_value() {
    // H = L + F x 2. D's arrival pushes A (H 4, older than C's 4) to swap;
    // B's return (H 8) pushes C to swap and A to storage; C is then in swap.
    let r = run("gdsf", "A A B C D B C");
    assert_cost(&r, 12.0 + 0.6 + 12.0 + 12.0 + 12.0 + 3.0 + 3.0);
}

#[test]
fn tierd_does_not_let_a_large_one_off_flush_ram() {
    let (cfg, catalog, trace) = workload(&[("A", 6.0), ("B", 6.0), ("E", 12.0)], "A B A B A B E A B A B");
    let cost = |name: &str| {
        // Timed moves (each ends long before the next access): tierd's
        // admission is for moves that cost time.
        let p = build_policy(name, &cfg, &catalog, &trace).expect("policy");
        replay(&cfg, &catalog, &trace, p, MoveMode::Timed).expect("replay")
    };
    let tierd = cost("tierd");
    let lru = cost("lru");
    // tierd: A, B from storage once, then ram; E from storage (to swap, which is free).
    assert_cost(&tierd, 12.0 + 12.0 + 4.0 * 0.6 + 24.0 + 4.0 * 0.6);
    // lru: E flushes A and B to swap; they come back from there.
    assert_cost(&lru, 12.0 + 12.0 + 4.0 * 0.6 + 24.0 + 3.0 + 3.0 + 0.6 + 0.6);
    assert!(tierd.total_load_s < lru.total_load_s);
}

#[test]
fn timed_moves_serve_from_the_source_until_the_move_ends() {
    // A promotion of 6 GB takes 1.8 s: an access 1 s later still pays storage.
    let (cfg, catalog, _) = workload(&[("A", 6.0)], "A");
    let trace = Trace {
        times: vec![0.0, 1.0, 2.0],
        models: vec![0, 0, 0],
    };
    let p = build_policy("lru", &cfg, &catalog, &trace).expect("policy");
    let r = replay(&cfg, &catalog, &trace, p, MoveMode::Timed).expect("replay");
    assert_cost(&r, 12.0 + 12.0 + 0.6);
    let p = build_policy("lru", &cfg, &catalog, &trace).expect("policy");
    let r = replay(&cfg, &catalog, &trace, p, MoveMode::Instant).expect("replay");
    assert_cost(&r, 12.0 + 0.6 + 0.6);
}

#[test]
fn tierd_prefetches_before_a_models_busy_hour() {
    // B and C are used all day; A only from 10:00 to 10:30, for four days.
    // RAM holds two of the three. From day 3 on, A's hour-of-day profile
    // has two days of history: tierd brings it to RAM on the 09:50 tick.
    let (cfg, catalog, _) = workload(&[("A", 6.0), ("B", 6.0), ("C", 6.0)], "A");
    let mut events: Vec<(f64, u32)> = Vec::new();
    for day in 0..4 {
        let d = day as f64 * 86_400.0;
        let mut t = 0.0;
        while t < 86_400.0 {
            events.push((d + t, 1));
            events.push((d + t + 30.0, 2));
            t += 60.0;
        }
        let mut t = 10.0 * 3600.0;
        while t < 10.5 * 3600.0 {
            events.push((d + t + 5.0, 0));
            t += 20.0;
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let trace = Trace {
        times: events.iter().map(|e| e.0).collect(),
        models: events.iter().map(|e| e.1).collect(),
    };
    let run = |overrides: Option<&str>| {
        let p = tierd::sim::replay::build_policy_with("tierd", &cfg, &catalog, &trace, overrides).expect("policy");
        replay(&cfg, &catalog, &trace, p, MoveMode::Timed).expect("replay")
    };
    let with = run(None);
    let without = run(Some("min_history_s=1e12"));
    assert!(
        with.total_load_s < without.total_load_s,
        "prediction {} vs none {}",
        with.total_load_s,
        without.total_load_s
    );
}

#[test]
fn accesses_during_a_promotion_pay_the_source_tier_and_count_as_waiting() {
    // A in storage at t=1 (12 s) starts its promotion to ram: 6 GB x 0.3 s/GB
    // = 1.8 s. At t=2 A is still in storage (12 s, 0.6 s at its target: 11.4 s
    // of waiting); at t=4 it is in ram (0.6 s).
    let (cfg, catalog, _) = workload(&[("A", 6.0)], "A");
    let trace = Trace {
        times: vec![1.0, 2.0, 4.0],
        models: vec![0, 0, 0],
    };
    let timed = replay(
        &cfg,
        &catalog,
        &trace,
        build_policy("lru", &cfg, &catalog, &trace).expect("policy"),
        MoveMode::Timed,
    )
    .expect("replay");
    assert_cost(&timed, 12.0 + 12.0 + 0.6);
    assert_eq!(timed.accesses_during_promotion, 1);
    assert!((timed.promotion_wait_s - 11.4).abs() < 1e-9, "wait {}", timed.promotion_wait_s);
    // With instant moves nothing waits.
    let instant = replay(
        &cfg,
        &catalog,
        &trace,
        build_policy("lru", &cfg, &catalog, &trace).expect("policy"),
        MoveMode::Instant,
    )
    .expect("replay");
    assert_cost(&instant, 12.0 + 0.6 + 0.6);
    assert_eq!(instant.accesses_during_promotion, 0);
    assert_eq!(instant.promotion_wait_s, 0.0);
}
