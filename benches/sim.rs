//! Simulator throughput: accesses replayed per second of wall time through
//! the engine and a policy (target: at least 1,000,000 per second).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tierd::config::Config;
use tierd::sim::replay::build_policy;
use tierd::sim::synth::{Family, GenSpec, generate};
use tierd::sim::{DEFAULT_SIM_CONFIG, MoveMode, replay};

fn bench_replay(c: &mut Criterion) {
    let cfg = Config::from_toml(DEFAULT_SIM_CONFIG).expect("config");
    let spec = GenSpec {
        family: Family::Zipf,
        models: 500,
        accesses: 200_000,
        days: 2.0,
        ..GenSpec::default()
    };
    let (catalog, trace) = generate(&spec).expect("workload");
    let mut group = c.benchmark_group("sim_replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(trace.len() as u64));
    for policy in ["lru", "gdsf", "belady", "tierd"] {
        for moves in [MoveMode::Timed, MoveMode::Instant] {
            group.bench_function(format!("{policy}/{}", moves.as_str()), |b| {
                b.iter(|| {
                    let p = build_policy(policy, &cfg, &catalog, &trace).expect("policy");
                    replay(&cfg, &catalog, &trace, p, moves).expect("replay").total_load_s
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
