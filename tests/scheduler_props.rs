//! Property tests of the job scheduler (issue 5): random job sets with
//! priorities, dependency DAGs, injected failures, cancels and 1..8 slots,
//! run in virtual time; the invariants are checked on the engine's own
//! schedule log.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
mod engine_api;

use engine_api::{Wire, sim_engine};
use tierd::config::Config;
use tierd::optimizer::UsagePolicy;
use tierd::tiers::{JobKey, JobStatus, MoveOptions, Priority, SchedEventKind};

#[derive(Debug, Clone)]
struct JobSpec {
    target: usize,
    priority: usize,
    deps: Vec<usize>,
    max_retries: u32,
    delay_ms: u32,
    cancel: Option<usize>,
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        0..2usize,
        0..4usize,
        proptest::collection::vec(0..64usize, 0..3),
        0..4u32,
        0..400u32,
        proptest::option::weighted(0.15, 0..64usize),
    )
        .prop_map(|(target, priority, deps, max_retries, delay_ms, cancel)| JobSpec {
            target,
            priority,
            deps,
            max_retries,
            delay_ms,
            cancel,
        })
}

const PRIORITIES: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

fn config(n: usize, slots: usize, fault: f64) -> Config {
    let mut text = String::from(
        "[[tiers]]\nname='ram'\nmax_gb=10000.0\naccess_s_per_gb=0.1\n\
         [[tiers]]\nname='swap'\nmax_gb=10000.0\naccess_s_per_gb=0.5\n\
         [[tiers]]\nname='storage'\naccess_s_per_gb=2.0\n",
    );
    for i in 0..n {
        text.push_str(&format!("[[models]]\nname='m{i}'\nsize_gb=1.0\n"));
    }
    let mut cfg = Config::from_toml(&text).unwrap();
    cfg.moves.max_concurrent = slots;
    cfg.moves.retry_base_s = 0.25;
    cfg.moves.retry_cap_s = 1.0;
    cfg.sim.fault_probability = fault;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn scheduler_invariants_hold(specs in proptest::collection::vec(job_spec(), 1..40), slots in 1..=8usize, fault in 0.0..0.5f64) {
        let n = specs.len();
        let cfg = config(n, slots, fault);
        let (base, cap) = (cfg.moves.retry_base_s, cfg.moves.retry_cap_s);
        let mut now = 0.0;
        let (mut engine, _) = sim_engine(cfg, Box::new(UsagePolicy), now);
        engine.record_schedule(true);
        let mut ids: Vec<String> = Vec::new();
        let mut max_retries: HashMap<String, u32> = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            now += s.delay_ms as f64 / 1000.0;
            engine.tick(now);
            let deps: Vec<String> = s.deps.iter().filter(|_| !ids.is_empty()).map(|d| ids[d % ids.len()].clone()).collect();
            let opts = MoveOptions { priority: PRIORITIES[s.priority], depends_on: deps, max_retries: Some(s.max_retries), ..MoveOptions::default() };
            match engine.move_model(now, &format!("m{i}"), ["ram", "swap"][s.target], &opts) {
                Ok(started) => {
                    max_retries.insert(started.job_id.clone(), s.max_retries);
                    ids.push(started.job_id);
                }
                // Only a dependency that already failed may refuse a submission here.
                Err(e) => prop_assert!(e.to_string().contains("did not succeed"), "{e}"),
            }
            if let Some(c) = s.cancel
                && !ids.is_empty()
            {
                let _ = engine.cancel_job(now, &ids[c % ids.len()]);
            }
            prop_assert_eq!(engine.check_invariants(), Ok(()));
        }
        for _ in 0..100_000 {
            if engine.active_jobs() == 0 { break; }
            now = engine.next_wakeup().unwrap_or(now + 1.0).max(now);
            engine.tick(now);
        }
        prop_assert_eq!(engine.active_jobs(), 0, "jobs left active");

        // Job ids and dependencies from the engine's own records.
        let mut key_of: HashMap<JobKey, String> = HashMap::new();
        let mut deps_of: HashMap<String, Vec<String>> = HashMap::new();
        for id in &ids {
            let st = engine.job_json(now, id).unwrap();
            deps_of.insert(id.clone(), st["depends_on"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect());
        }
        let log = engine.schedule_log();
        for e in log {
            if e.kind == SchedEventKind::Submitted {
                key_of.insert(e.job, ids[key_of.len()].clone());
            }
        }
        prop_assert_eq!(key_of.len(), ids.len());

        // Replay the log.
        let mut running: HashSet<JobKey> = HashSet::new();
        let mut submitted: HashSet<JobKey> = HashSet::new();
        let mut ended: HashMap<JobKey, JobStatus> = HashMap::new();
        let mut delayed_until: HashMap<JobKey, f64> = HashMap::new();
        let mut retries: HashMap<JobKey, u32> = HashMap::new();
        let mut prio: HashMap<JobKey, Priority> = HashMap::new();
        let key_by_id: HashMap<&String, JobKey> = key_of.iter().map(|(k, v)| (v, *k)).collect();
        let deps_ok = |k: JobKey, ended: &HashMap<JobKey, JobStatus>| {
            deps_of[&key_of[&k]].iter().all(|d| ended.get(&key_by_id[d]) == Some(&JobStatus::Success))
        };
        for e in log {
            prio.insert(e.job, e.priority);
            match &e.kind {
                SchedEventKind::Submitted => { submitted.insert(e.job); }
                SchedEventKind::Started => {
                    prop_assert!(!ended.contains_key(&e.job), "ended job restarted");
                    prop_assert!(deps_ok(e.job, &ended), "job {} started before its dependencies succeeded", key_of[&e.job]);
                    prop_assert!(delayed_until.get(&e.job).is_none_or(|t| *t <= e.time), "retry started before its backoff ended");
                    // No higher-priority (or earlier same-priority) job was ready
                    // and left waiting (room never binds in this configuration).
                    for k in &submitted {
                        if *k == e.job || running.contains(k) || ended.contains_key(k) { continue; }
                        let ready = deps_ok(*k, &ended) && delayed_until.get(k).is_none_or(|t| *t <= e.time);
                        if ready {
                            prop_assert!((prio[k], *k) > (e.priority, e.job),
                                "{} ({:?}) started while {} ({:?}) was ready", key_of[&e.job], e.priority, key_of[k], prio[k]);
                        }
                    }
                    running.insert(e.job);
                    prop_assert!(running.len() <= slots, "{} running with {} slots", running.len(), slots);
                }
                SchedEventKind::Retrying { not_before } => {
                    prop_assert!(running.remove(&e.job));
                    let n = retries.entry(e.job).or_default();
                    *n += 1;
                    prop_assert!(*n <= max_retries[&key_of[&e.job]], "too many retries");
                    let expected = (base * 2f64.powi(*n as i32 - 1)).min(cap);
                    prop_assert!((not_before - e.time - expected).abs() < 1e-9, "backoff {} != {}", not_before - e.time, expected);
                    delayed_until.insert(e.job, *not_before);
                }
                SchedEventKind::Ended { status } => {
                    running.remove(&e.job);
                    prop_assert!(ended.insert(e.job, *status).is_none(), "job ended twice");
                    if *status == JobStatus::Success {
                        prop_assert!(deps_ok(e.job, &ended));
                    }
                }
            }
        }
        // Every job ends in exactly one terminal state, matching its status.
        for (k, id) in &key_of {
            let st = engine.job_json(now, id).unwrap();
            let status = ended.get(k).map(|s| s.as_str());
            prop_assert_eq!(status, st["status"].as_str(), "{}", st);
            // A job whose dependency failed fails too.
            if deps_of[id].iter().any(|d| matches!(ended.get(&key_by_id[d]), Some(JobStatus::Failed | JobStatus::Cancelled))) {
                prop_assert_ne!(status, Some("success"));
            }
            if st["error_code"] == "DEPENDENCY_FAILED" {
                prop_assert!(st["error"].as_str().unwrap().contains("Dependency"));
            }
        }
    }
}
