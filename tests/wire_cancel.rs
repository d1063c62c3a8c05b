//! A cancel that its driver confirms later answers `"status":
//! "cancelling"` (never `running`), and the job shows `cancelling` until it
//! ends `cancelled`; a rollback at shutdown is recorded as "rolled back at
//! shutdown", not "cancelled by request".

mod common;
mod real_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;
use real_support::*;
use serde_json::{Map, Value, json};
use tierd::config::Config;
use tierd::drivers::sim::simulated_machine;
use tierd::drivers::{Capacity, DriverEvent, JobKey, ModelFiles, MoveOrder, Source, TierDriver};
use tierd::optimizer::UsagePolicy;
use tierd::requests::{Prepare, call};
use tierd::tiers::{Engine, MoveOptions};

const T0: f64 = 1_700_000_000.0;

/// A tier whose cancels take effect `delay` engine seconds after they are
/// asked for (as a real copy's rollback does), around the simulated tier.
struct LateCancel {
    inner: Box<dyn TierDriver>,
    delay: f64,
    pending: Vec<(JobKey, f64)>,
}

impl TierDriver for LateCancel {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn accepts_moves(&self) -> Result<(), String> {
        self.inner.accepts_moves()
    }
    fn instant(&self) -> bool {
        self.inner.instant()
    }
    fn capacity(&self) -> Capacity {
        self.inner.capacity()
    }
    fn start_move(&mut self, now: f64, order: &MoveOrder<'_>) -> Result<(), String> {
        self.inner.start_move(now, order)
    }
    fn cancel_move(&mut self, now: f64, job: JobKey) {
        self.pending.push((job, now + self.delay));
    }
    fn progress(&self, now: f64, job: JobKey) -> f64 {
        self.inner.progress(now, job)
    }
    fn poll(&mut self, now: f64, events: &mut Vec<DriverEvent>) {
        let (due, later): (Vec<_>, Vec<_>) = self.pending.iter().partition(|(_, at)| *at <= now);
        self.pending = later;
        for (job, _) in due {
            self.inner.cancel_move(now, job);
        }
        self.inner.poll(now, events);
    }
    fn next_event_time(&self) -> Option<f64> {
        let pending = self.pending.iter().map(|(_, at)| *at);
        self.inner.next_event_time().into_iter().chain(pending).min_by(f64::total_cmp)
    }
    fn release(&mut self, model: &str, files: Option<&ModelFiles>) {
        self.inner.release(model, files)
    }
    fn source_of(&self, model: &str) -> Source {
        self.inner.source_of(model)
    }
    fn details(&self) -> Map<String, Value> {
        self.inner.details()
    }
}

/// The seed engine, its `storage` tier's cancels confirmed 0.5 s late.
fn late_cancel_engine() -> Engine {
    let cfg = Config::seed_default();
    let (mut machine, _) = simulated_machine(&cfg, false);
    let last = machine.drivers.len() - 1;
    let inner = machine.drivers.remove(last);
    machine.drivers.push(Box::new(LateCancel {
        inner,
        delay: 0.5,
        pending: Vec::new(),
    }));
    Engine::new(cfg, machine, Box::new(UsagePolicy), T0).expect("engine")
}

fn ask(e: &mut Engine, now: f64, line: &str) -> Value {
    let v: Value = serde_json::from_str(line).expect("test line is JSON");
    let prepare = Prepare {
        walk_files: false,
        max_files: 10_000,
    };
    let answer = call(e, now, v, &prepare);
    e.check_invariants().unwrap_or_else(|err| panic!("after {line}: {err}"));
    answer
}

#[test]
fn a_cancel_confirmed_later_answers_cancelling_until_it_is_cancelled() {
    let mut e = late_cancel_engine();
    // 6 GB demoted at 0.2 s/GB: 1.2 s, longer than the cancel's delay.
    let started = ask(&mut e, T0, r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "storage"}}"#);
    let job = started["job_id"].as_str().expect("job id").to_string();
    let status = |e: &mut Engine, now: f64| ask(e, now, &format!(r#"{{"tier_job_status": "{job}"}}"#));
    assert_eq!(status(&mut e, T0 + 0.1)["status"], json!("running"));

    let cancel = format!(r#"{{"cancel_job": "{job}"}}"#);
    let answer = ask(&mut e, T0 + 0.1, &cancel);
    assert_eq!(answer["status"], json!("cancelling"), "{answer}");
    assert_eq!(answer["error"], Value::Null, "{answer}");
    for now in [T0 + 0.2, T0 + 0.5] {
        let st = status(&mut e, now);
        assert_eq!(st["status"], json!("cancelling"), "{st}");
    }
    let listed = ask(&mut e, T0 + 0.5, r#"{"list_jobs": true}"#);
    assert_eq!(listed["jobs"][0]["status"], json!("cancelling"), "{listed}");
    let history = ask(&mut e, T0 + 0.5, r#"{"queue_history": {"status": "cancelling"}}"#);
    assert_eq!(history["history"].as_array().map(Vec::len), Some(1), "{history}");
    // A second cancel while it rolls back is no error and changes nothing.
    let again = ask(&mut e, T0 + 0.55, &cancel);
    assert_eq!(again["status"], json!("cancelling"), "{again}");

    let st = status(&mut e, T0 + 0.7);
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(st["error"], json!("cancelled by request; rolled back"), "{st}");
    let model = ask(&mut e, T0 + 0.7, r#"{"model_info": "gpt-j-6b"}"#);
    assert_eq!(model["model"]["tier"], json!("swap"), "{model}");
}

#[test]
fn a_shutdown_cancel_is_recorded_as_such() {
    let mut e = late_cancel_engine();
    e.update_limits(T0, &[tierd::tiers::LimitChange::Concurrency(1)]).expect("one slot");
    let running = e
        .move_model(T0, "gpt-j-6b", "storage", &MoveOptions::default())
        .expect("move")
        .job_id;
    let queued = e
        .move_model(T0, "llama-7b", "storage", &MoveOptions::default())
        .expect("move")
        .job_id;
    e.tick(T0 + 0.1);
    let q = e.cancel_job_at_shutdown(T0 + 0.1, &queued).expect("cancel queued");
    assert_eq!(q.error.as_deref(), Some("cancelled at shutdown (never started)"), "{q:?}");
    let r = e.cancel_job_at_shutdown(T0 + 0.1, &running).expect("cancel running");
    assert_eq!(r.status.as_str(), "cancelling");
    e.tick(T0 + 0.7);
    let st = ask(&mut e, T0 + 0.7, &format!(r#"{{"tier_job_status": "{running}"}}"#));
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(st["error"], json!("rolled back at shutdown"), "{st}");
    assert_eq!(st["attempts"][0]["outcome"], json!("rolled back at shutdown"), "{st}");
}

#[test]
fn a_real_copy_cancel_answers_cancelling() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/m.bin");
    make_file(&file, 64 * MB, 7);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "m", None, Some("storage"), Some(&file)).expect("register");
    let opts = MoveOptions {
        bandwidth_mb_s: Some(16.0),
        ..MoveOptions::default()
    };
    let s = e.move_model(now(), "m", "swap", &opts).expect("move");
    let t = Instant::now();
    loop {
        e.tick(now());
        let p = e.job_json(now(), &s.job_id).expect("status")["progress"].as_f64().unwrap_or(0.0);
        if p > 0.05 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "copy never progressed");
        std::thread::sleep(Duration::from_millis(10));
    }
    e.tick(now());
    let answer = e.cancel_json(now(), &s.job_id).expect("cancel");
    assert_eq!(answer["status"], json!("cancelling"), "{answer}");
    let st = e.job_json(now(), &s.job_id).expect("status");
    assert!(st["status"] == json!("cancelling") || st["status"] == json!("cancelled"), "{st}");
    let st = wait(&mut e, &s.job_id, Duration::from_secs(20));
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(st["error"], json!("cancelled by request; rolled back"), "{st}");
    e.check_invariants().expect("books balance");
}

fn serve_config(root: &Path) -> String {
    format!(
        "state_dir = {state:?}\npolicy = \"usage\"\n\
         [[tiers]]\nname = \"swap\"\ndriver = \"dir\"\ncreate = true\npath = {swap:?}\nmax_gb = 4.0\naccess_s_per_gb = 0.5\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = root.join("state"),
        swap = root.join("swap"),
    )
}

/// The server's own shutdown: a queued move is cancelled and a running
/// one, past the drain deadline, rolled back; after a restart the history
/// says so.
#[test]
fn the_server_records_rollbacks_at_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("swap")).expect("mkdir");
    let (a, b) = (root.join("models/a.bin"), root.join("models/b.bin"));
    make_file(&a, 16 * MB, 1);
    make_file(&b, 4 * MB, 2);
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, serve_config(root)).expect("config");
    let args = ["--config", cfg.to_str().expect("utf-8"), "--backend", "real", "--time-scale", "1"];
    let mut extra: Vec<&str> = args.to_vec();
    extra.extend_from_slice(&["--drain-timeout", "0.3"]);

    let mut server = Server::stdio(&extra);
    for (name, path) in [("a", &a), ("b", &b)] {
        let r = server.req(&json!({"register_model": {"model_name": name, "path": path, "preferred_tier": "storage"}}).to_string());
        assert_eq!(r["status"], json!("success"), "{r}");
    }
    let r = server.req(r#"{"update_limits": {"max_concurrent_tasks": 1}}"#);
    assert_eq!(r["status"], json!("success"), "{r}");
    // 16 MiB at 1 MB/s: still running when the server stops.
    let slow = server.req(r#"{"move_tier": {"model_name": "a", "target_tier": "swap", "bandwidth_mb_s": 1.0}}"#);
    assert_eq!(slow["status"], json!("tier_move_started"), "{slow}");
    let running = slow["job_id"].as_str().expect("job").to_string();
    let next = server.req(r#"{"move_tier": {"model_name": "b", "target_tier": "swap"}}"#);
    let queued = next["job_id"].as_str().expect("job").to_string();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let st = server.req(&format!(r#"{{"tier_job_status": "{running}"}}"#));
        if st["progress"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(Instant::now() < until, "the move never started: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.close_stdin();
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.stderr());
    drop(server);

    let mut server = Server::stdio(&args);
    let st = server.req(&format!(r#"{{"tier_job_status": "{running}"}}"#));
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(st["error"], json!("rolled back at shutdown"), "{st}");
    let st = server.req(&format!(r#"{{"tier_job_status": "{queued}"}}"#));
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(st["error"], json!("cancelled at shutdown (never started)"), "{st}");
    let m = server.req(r#"{"model_info": "a"}"#);
    assert_eq!(m["model"]["tier"], json!("storage"), "{m}");
}
