//! `requests::execute` (the server's per-request work under its lock) and
//! `requests::parse_line` (the work before it), on the seed configuration.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tierd::config::Config;
use tierd::drivers::sim::simulated_machine;
use tierd::optimizer::UsagePolicy;
use tierd::requests::cancel_job::CancelJob;
use tierd::requests::tier_status::{StatusCache, write_tier_status};
use tierd::requests::{self as protocol, Outcome, Request};
use tierd::tiers::Engine;

const T0: f64 = 1_700_000_000.0;

fn seed_engine() -> Engine {
    let cfg = Config::seed_default();
    let (machine, _) = simulated_machine(&cfg, false);
    match Engine::new(cfg, machine, Box::new(UsagePolicy), T0) {
        Ok(e) => e,
        Err(e) => panic!("seed engine: {e}"),
    }
}

fn request(line: &str) -> Request {
    match protocol::parse_line(line.as_bytes()) {
        Ok(env) => env.request,
        Err(f) => panic!("{line}: {}", f.error),
    }
}

fn benches(c: &mut Criterion) {
    let mut engine = seed_engine();
    let status = request(r#"{"tier_status": true}"#);
    c.bench_function("execute tier_status", |b| {
        b.iter(|| black_box(protocol::execute(&mut engine, T0, status.clone())))
    });

    // The server's own tier_status path: the typed view, served from the
    // cache when nothing changed (the common case for a polling client).
    let mut engine = seed_engine();
    let mut cache = StatusCache::default();
    let mut out = Vec::with_capacity(4096);
    let id = Some(tierd::requests::Id::from_value(&serde_json::json!(1)));
    c.bench_function("write_tier_status (server path)", |b| {
        b.iter(|| {
            out.clear();
            engine.tick(T0);
            black_box(write_tier_status(&engine, &id, &mut cache, &mut out).is_ok())
        })
    });

    // A demotion started and cancelled (rolled back) each iteration, so the
    // engine returns to the same state. One engine second apart, so every
    // job id is new without a same-second suffix.
    let mut engine = seed_engine();
    let demote = request(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage"}}"#);
    let mut now = T0;
    c.bench_function("execute move_tier + cancel_job", |b| {
        b.iter(|| {
            now += 1.0;
            let Ok(Outcome::Reply(v)) = protocol::execute(&mut engine, now, demote.clone()) else {
                panic!("move_tier refused")
            };
            let id = v["job_id"].as_str().unwrap_or_default().to_string();
            black_box(protocol::execute(&mut engine, now, Request::CancelJob(CancelJob { job_id: id })).is_ok())
        })
    });

    // move_tier alone, on a fresh engine each time (built outside the timing).
    c.bench_function("execute move_tier (fresh engine)", |b| {
        b.iter_batched(
            seed_engine,
            |mut e| {
                let ok = protocol::execute(&mut e, T0, demote.clone()).is_ok();
                black_box(ok);
                e
            },
            BatchSize::SmallInput,
        )
    });

    let lines: [(&str, &[u8]); 3] = [
        ("parse_line tier_status", br#"{"tier_status": true}"#),
        (
            "parse_line move_tier",
            br#"{"id": 7, "move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram", "make_room": true}}"#,
        ),
        ("parse_line invalid JSON", br#"{"tier_status": tru"#),
    ];
    for (name, line) in lines {
        c.bench_function(name, |b| b.iter(|| black_box(protocol::parse_line(black_box(line)).is_ok())));
    }
}

criterion_group!(handle_request, benches);
criterion_main!(handle_request);
