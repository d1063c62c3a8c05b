//! Scheduling cost at scale (issue 5): 10,000 jobs with random dependencies
//! submitted to one engine, then run to completion in virtual time.
//! Target: submit + schedule <= 10 us per job.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tierd::config::Config;
use tierd::drivers::sim::simulated_machine;
use tierd::optimizer::UsagePolicy;
use tierd::tiers::{Engine, MoveOptions, Priority};

const JOBS: usize = 10_000;

fn engine() -> Engine {
    let mut text = String::from(
        "[[tiers]]\nname='ram'\nmax_gb=100000.0\naccess_s_per_gb=0.1\n\
         [[tiers]]\nname='swap'\nmax_gb=100000.0\naccess_s_per_gb=0.5\n\
         [[tiers]]\nname='storage'\naccess_s_per_gb=2.0\n",
    );
    for i in 0..JOBS {
        text.push_str(&format!("[[models]]\nname='m{i}'\nsize_gb=1.0\n"));
    }
    let mut cfg = Config::from_toml(&text).expect("bench config");
    cfg.moves.max_concurrent = 8;
    let (machine, _) = simulated_machine(&cfg, false);
    Engine::new(cfg, machine, Box::new(UsagePolicy), 0.0).expect("engine")
}

/// Submits every job (0-3 random dependencies on earlier jobs, random
/// priority), then drives virtual time until all have ended.
fn submit_and_run(mut e: Engine) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let prios = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];
    let mut ids: Vec<String> = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let ndeps = if ids.is_empty() { 0 } else { rng.random_range(0..4usize) };
        let depends_on = (0..ndeps).map(|_| ids[rng.random_range(0..ids.len())].clone()).collect();
        let opts = MoveOptions {
            priority: prios[rng.random_range(0..4usize)],
            depends_on,
            ..MoveOptions::default()
        };
        let target = if i % 2 == 0 { "ram" } else { "swap" };
        if let Ok(s) = e.move_model(0.0, &format!("m{i}"), target, &opts) {
            ids.push(s.job_id);
        }
    }
    let mut now = 0.0;
    while e.active_jobs() > 0 {
        now = e.next_wakeup().unwrap_or(now + 1.0).max(now);
        e.tick(now);
    }
    ids.len()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    g.throughput(Throughput::Elements(JOBS as u64));
    g.bench_function("submit_and_run_10k_jobs_with_deps", |b| {
        b.iter_batched(engine, |e| black_box(submit_and_run(e)), BatchSize::LargeInput)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
