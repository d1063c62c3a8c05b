//! The simulator's `lru` with instant moves is the plain exclusive
//! multi-tier LRU: checked against a small reference written here, on
//! random catalogs and traces (many equal timestamps, models too large for
//! the fast tiers, a tier with a model cap), and on a hand-made case.
//!
//! The reference: every model starts in the last tier; an access costs the
//! model's size times the access cost of its tier; the accessed model then
//! leaves its tier for the fastest tier that can hold it (its size within
//! the tier's limit and, but for the last tier, the largest single model);
//! each tier from there down, while over its limit (bytes, or model count),
//! pushes its least recently accessed model to the next tier that can hold
//! it. Recency is the order of accesses.

use proptest::prelude::*;
use tierd::config::{Config, gb_to_bytes};
use tierd::sim::replay::{build_policy, mode_config};
use tierd::sim::{Catalog, MoveMode, Trace, replay};

/// The reference's total load seconds.
fn reference(cfg: &Config, catalog: &Catalog, trace: &Trace) -> f64 {
    let n = cfg.tiers.len();
    let limit: Vec<Option<u64>> = cfg
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| if i + 1 == n { None } else { t.max_gb.map(gb_to_bytes) })
        .collect();
    let cap: Vec<Option<usize>> = cfg.tiers.iter().map(|t| t.max_models).collect();
    let single = gb_to_bytes(cfg.max_single_model_gb);
    let size: Vec<u64> = catalog.sizes_gb.iter().map(|&g| gb_to_bytes(g)).collect();
    let holds = |s: u64, k: usize| k + 1 == n || (s <= single && limit[k].is_none_or(|l| s <= l));
    let mut tier = vec![n - 1; size.len()];
    // Last access, as (sequence number); never accessed: 0, by catalog order.
    let mut last = vec![0u64; size.len()];
    let mut total = 0.0;
    for (i, &m) in trace.models.iter().enumerate() {
        let m = m as usize;
        total += size[m] as f64 / 1e9 * cfg.tiers[tier[m]].access_s_per_gb;
        last[m] = i as u64 + 1;
        let Some(first) = (0..n).find(|&k| holds(size[m], k)) else {
            continue;
        };
        if first >= tier[m] {
            continue;
        }
        tier[m] = first;
        for k in first..n - 1 {
            loop {
                let members: Vec<usize> = (0..size.len()).filter(|&x| tier[x] == k).collect();
                let bytes: u64 = members.iter().map(|&x| size[x]).sum();
                let over = limit[k].is_some_and(|l| bytes > l) || cap[k].is_some_and(|c| members.len() > c);
                if !over {
                    break;
                }
                let Some(&victim) = members.iter().filter(|&&x| x != m).min_by_key(|&&x| (last[x], x)) else {
                    break;
                };
                let Some(dest) = (k + 1..n).find(|&d| holds(size[victim], d)) else {
                    break;
                };
                tier[victim] = dest;
            }
        }
    }
    total
}

fn lru_instant(cfg: &Config, catalog: &Catalog, trace: &Trace) -> f64 {
    let p = build_policy("lru", &mode_config(cfg, MoveMode::Instant), catalog, trace).expect("policy");
    replay(cfg, catalog, trace, p, MoveMode::Instant).expect("replay").total_load_s
}

fn config(ram_gb: f64, swap_gb: f64, single_gb: f64, swap_cap: Option<usize>) -> Config {
    let cap = swap_cap.map(|c| format!("max_models = {c}\n")).unwrap_or_default();
    let text = format!(
        "max_single_model_gb = {single_gb}\n\
         [[tiers]]\nname = \"ram\"\nmax_gb = {ram_gb}\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"swap\"\nmax_gb = {swap_gb}\naccess_s_per_gb = 0.5\n{cap}\
         [[tiers]]\nname = \"storage\"\naccess_s_per_gb = 2.0\n\
         [moves]\npromote_s_per_gb = 0.3\ndemote_s_per_gb = 0.2\nmax_concurrent = 2\n"
    );
    Config::from_toml(&text).expect("config")
}

#[test]
fn the_accessed_model_leaves_its_tier_before_the_cascade() {
    // Four 6 GB models, ram and swap 12 GB each. The last access, B, comes
    // up from swap: ram's LRU (A) goes down into the room B leaves in swap,
    // so nothing goes to storage (the committed-bytes cascade of timed
    // moves would push C out as well).
    let cfg = config(12.0, 12.0, 64.0, None);
    let catalog = Catalog {
        names: ["A", "B", "C", "D"].map(String::from).to_vec(),
        sizes_gb: vec![6.0; 4],
    };
    let seq = [0u32, 1, 2, 0, 3, 1];
    let trace = Trace {
        times: (1..=seq.len()).map(|i| i as f64 * 100.0).collect(),
        models: seq.to_vec(),
    };
    let p = build_policy("lru", &mode_config(&cfg, MoveMode::Instant), &catalog, &trace).expect("policy");
    let r = replay(&cfg, &catalog, &trace, p, MoveMode::Instant).expect("replay");
    assert!(
        (r.total_load_s - (12.0 + 12.0 + 12.0 + 3.0 + 12.0 + 3.0)).abs() < 1e-9,
        "{}",
        r.total_load_s
    );
    // Moves: A, B, C (+A down), A (+B down), D (+C down), B (+A down).
    assert_eq!(r.move_count, 10);
    assert!((r.bytes_moved_gb - 60.0).abs() < 1e-9, "{}", r.bytes_moved_gb);
    assert!((r.total_load_s - reference(&cfg, &catalog, &trace)).abs() < 1e-9);
    // Then C is still in swap: an access to it costs swap's 3 s.
    let mut seq = seq.to_vec();
    seq.push(2);
    let trace = Trace {
        times: (1..=seq.len()).map(|i| i as f64 * 100.0).collect(),
        models: seq,
    };
    assert!((lru_instant(&cfg, &catalog, &trace) - (54.0 + 3.0)).abs() < 1e-9);
}

#[test]
fn accesses_at_one_time_are_ordered_by_the_trace() {
    // A, B, C at the same instant; ram holds two: A, accessed first, is the
    // least recent and goes down, whatever the model ids say.
    let cfg = config(12.0, 12.0, 64.0, None);
    let catalog = Catalog {
        names: ["C", "B", "A"].map(String::from).to_vec(),
        sizes_gb: vec![6.0; 3],
    };
    let trace = Trace {
        times: vec![5.0, 5.0, 5.0, 5.0, 5.0],
        models: vec![2, 1, 0, 1, 0],
    };
    let got = lru_instant(&cfg, &catalog, &trace);
    assert!((got - reference(&cfg, &catalog, &trace)).abs() < 1e-9, "{got}");
    // B and C are hits in ram.
    assert!((got - (3.0 * 12.0 + 2.0 * 0.6)).abs() < 1e-9, "{got}");
}

/// A random workload: up to 12 models of 1-24 GB, up to 300 accesses,
/// most of them at the same time as the one before.
fn workload() -> impl Strategy<Value = (Config, Catalog, Trace)> {
    (
        prop::collection::vec(1u32..=24, 2..12),
        prop::collection::vec((any::<prop::sample::Index>(), prop::bool::weighted(0.6)), 1..300),
        (8u32..=30, 12u32..=60, 10u32..=30, prop::option::of(2usize..=5)),
    )
        .prop_map(|(sizes, accesses, (ram, swap, single, cap))| {
            let cfg = config(ram as f64, swap as f64, single as f64, cap);
            let catalog = Catalog {
                names: (0..sizes.len()).map(|i| format!("m{i}")).collect(),
                sizes_gb: sizes.iter().map(|&s| s as f64).collect(),
            };
            let mut t = 0.0;
            let mut times = Vec::with_capacity(accesses.len());
            let mut models = Vec::with_capacity(accesses.len());
            for (idx, same) in accesses {
                if !same {
                    t += 1.0;
                }
                times.push(t);
                models.push(idx.index(sizes.len()) as u32);
            }
            (cfg, catalog, Trace { times, models })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn instant_lru_is_the_exclusive_lru((cfg, catalog, trace) in workload()) {
        let want = reference(&cfg, &catalog, &trace);
        let got = lru_instant(&cfg, &catalog, &trace);
        prop_assert!((got - want).abs() <= 1e-9 * want.max(1.0), "lru {got}, reference {want}");
    }
}
