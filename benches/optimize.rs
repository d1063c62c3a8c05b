//! One `auto_optimize` plan of each policy over 1,000 / 10,000 / 100,000
//! models (target: at most 50 ms at 100,000); and what a state save costs
//! the engine's lock: its snapshot, and the `tierd` policy's export.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tierd::config::{Config, ModelConfig};
use tierd::drivers::sim::simulated_machine;
use tierd::optimizer::{GdsfPolicy, LruPolicy, Policy, TierdPolicy, UsagePolicy};
use tierd::sim::DEFAULT_SIM_CONFIG;
use tierd::tiers::Engine;

/// An engine with `n` models in storage, and the policies, all fed the
/// same Zipf-like accesses (two per model on average).
fn setup(n: usize) -> (Engine, Vec<Box<dyn Policy>>) {
    let mut cfg = Config::from_toml(DEFAULT_SIM_CONFIG).expect("config");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    cfg.models = (0..n)
        .map(|i| ModelConfig {
            name: format!("m{i}"),
            size_gb: tierd::sim::synth::draw_size(&mut rng),
            tier: None,
            usage: 0,
            path: None,
        })
        .collect();
    let (machine, _) = simulated_machine(&cfg, false);
    let mut engine = Engine::new(cfg, machine, Box::new(UsagePolicy), 0.0).expect("engine");
    let mut policies: Vec<Box<dyn Policy>> = vec![
        Box::new(TierdPolicy::default()),
        Box::new(LruPolicy::default()),
        Box::new(GdsfPolicy::default()),
        Box::new(UsagePolicy),
    ];
    let mut scratch = Vec::new();
    for i in 0..2 * n {
        let u: f64 = rng.random_range(0.0..1.0);
        let id = ((n as f64).powf(u) as usize).min(n - 1);
        let now = i as f64;
        let _ = engine.access_id(now, id);
        for p in &mut policies {
            p.on_access(now, engine.state(), id, &mut scratch);
            scratch.clear();
        }
    }
    (engine, policies)
}

fn bench_plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("auto_optimize_plan");
    group.sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        let (engine, mut policies) = setup(n);
        for p in &mut policies {
            let name = p.name();
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let mut out = Vec::new();
                    p.plan(2.0 * n as f64, engine.state(), &mut out);
                    out.len()
                });
            });
        }
    }
    group.finish();
}

/// What the state file saves every second: the engine's snapshot (models,
/// usage, job history) against the `tierd` policy's export added to it.
fn bench_export(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_save");
    group.sample_size(10);
    for n in [1_000usize, 10_000] {
        let (engine, policies) = setup(n);
        let now = 2.0 * n as f64;
        group.bench_with_input(BenchmarkId::new("snapshot", n), &n, |b, _| {
            b.iter(|| engine.snapshot(now).models.len())
        });
        group.bench_with_input(BenchmarkId::new("tierd_export", n), &n, |b, _| {
            b.iter(|| policies[0].export(engine.state()).map(|v| v.get().len()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan, bench_export);
criterion_main!(benches);
