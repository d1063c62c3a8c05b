//! The job scheduler over the socket (issue 5): priorities, dependencies and
//! their refusals, cancellation, retries with backoff, queue status and
//! history, and the `tierd queue` CLI.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Client, Server, code, message, wait_job};
use serde_json::{Value, json};

/// One move slot, roomy tiers, models in storage.
const CONFIG: &str = r#"
[[tiers]]
name = "ram"
max_gb = 100.0
access_s_per_gb = 0.1
[[tiers]]
name = "swap"
max_gb = 100.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
access_s_per_gb = 2.0
[moves]
max_concurrent = 1
max_retries = 2
retry_base_s = 0.5
retry_cap_s = 4.0
[[models]]
name = "big"
size_gb = 6.0
[[models]]
name = "a"
size_gb = 1.0
[[models]]
name = "b"
size_gb = 1.0
[[models]]
name = "c"
size_gb = 1.0
[[models]]
name = "d"
size_gb = 1.0
"#;

fn start(dir: &Path, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let cfg = dir.join("tierd.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let sock = dir.join("tierd.sock");
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    if !extra.contains(&"--time-scale") {
        args.extend_from_slice(&["--time-scale", "10"]);
    }
    args.extend_from_slice(extra);
    (Server::socket(&sock, &args), sock)
}

fn mv(c: &mut Client, model: &str, extra: Value) -> Value {
    let mut body = json!({"model_name": model, "target_tier": "ram"});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    c.req(&json!({ "move_tier": body }).to_string())
}

#[test]
fn priorities_and_dependencies_decide_the_start_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = start(dir.path(), &[]);
    let mut c = Client::connect(&sock);
    // `big` takes the one slot for 1.8 engine seconds (0.18 s of wall time).
    let big = mv(&mut c, "big", json!({}))["job_id"].as_str().unwrap().to_string();
    let low = mv(&mut c, "a", json!({"priority": "low"}))["job_id"].as_str().unwrap().to_string();
    let crit = mv(&mut c, "b", json!({"priority": "critical"}))["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dep = mv(&mut c, "c", json!({"priority": "high", "depends_on": [big.clone()]}));
    assert_eq!(dep["status"], "tier_move_started", "{dep}");
    let dep = dep["job_id"].as_str().unwrap().to_string();

    let q = c.req(r#"{"queue_status": true}"#);
    assert_eq!(q["task_queue"]["running"], json!(1), "{q}");
    assert_eq!(q["task_queue"]["pending"], json!(3), "{q}");
    assert_eq!(q["max_concurrent_tasks"], json!(1));
    let order: Vec<&str> = q["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![big.as_str(), crit.as_str(), dep.as_str(), low.as_str()], "{q}");
    let st = c.req(&format!(r#"{{"tier_job_status": "{crit}"}}"#));
    assert_eq!(st["status"], "queued");
    assert_eq!(st["position"], json!(0));
    assert_eq!(st["priority"], "critical");
    assert!(st["estimated_start"].as_f64().is_some(), "{st}");
    let st = c.req(&format!(r#"{{"tier_job_status": "{dep}"}}"#));
    assert_eq!(st["depends_on"], json!([big.clone()]));

    let mut started = Vec::new();
    for id in [&big, &crit, &dep, &low] {
        let st = wait_job(|l| c.req(l), id);
        assert_eq!(st["status"], "success", "{st}");
        started.push((st["started_at"].as_f64().unwrap(), id.clone()));
    }
    started.sort_by(|a, b| a.0.total_cmp(&b.0));
    let by_start: Vec<&str> = started.iter().map(|(_, id)| id.as_str()).collect();
    // The critical job first, then the high one once its dependency ended, then low.
    assert_eq!(by_start, vec![big.as_str(), crit.as_str(), dep.as_str(), low.as_str()]);

    let h = c.req(r#"{"queue_history": {"limit": 2, "status": "success"}}"#);
    let ids: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![dep.as_str(), crit.as_str()], "newest first: {h}");
    let h = c.req(r#"{"queue_history": {"since": 4102444800}}"#);
    assert_eq!(h["history"], json!([]));
    let bad = c.req(r#"{"queue_history": {"status": "done"}}"#);
    assert_eq!(code(&bad), "INVALID_REQUEST");
}

#[test]
fn unknown_self_and_failed_dependencies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = start(dir.path(), &[]);
    let mut c = Client::connect(&sock);
    let r = mv(&mut c, "a", json!({"depends_on": ["tier_promote_nope_1"]}));
    assert_eq!(code(&r), "INVALID_REQUEST");
    assert!(message(&r).contains("Unknown dependency"), "{r}");
    // A job cannot name itself (or anything not yet submitted), so no cycle
    // can ever form: its own future id is an unknown dependency.
    let now = c.req(r#"{"queue_status": true}"#)["now"].as_f64().unwrap().floor() as u64;
    let r = mv(&mut c, "a", json!({"depends_on": [format!("tier_promote_a_{now}")]}));
    assert_eq!(code(&r), "INVALID_REQUEST", "{r}");

    let big = mv(&mut c, "big", json!({}))["job_id"].as_str().unwrap().to_string();
    let queued = mv(&mut c, "b", json!({}))["job_id"].as_str().unwrap().to_string();
    let dependent = mv(&mut c, "c", json!({"depends_on": [queued.clone()]}))["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let grand = mv(&mut c, "d", json!({"depends_on": [dependent.clone()]}))["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cancelled = c.req(&format!(r#"{{"cancel_job": "{queued}"}}"#));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    for id in [&dependent, &grand] {
        let st = c.req(&format!(r#"{{"tier_job_status": "{id}"}}"#));
        assert_eq!(st["status"], "failed", "{st}");
        assert_eq!(st["error_code"], "DEPENDENCY_FAILED", "{st}");
    }
    let r = mv(&mut c, "a", json!({"depends_on": [queued.clone()]}));
    assert_eq!(code(&r), "DEPENDENCY_FAILED", "{r}");
    // The running job rolls back when cancelled.
    let st = c.req(&format!(r#"{{"cancel_job": "{big}"}}"#));
    assert_eq!(wait_job(|l| c.req(l), &big)["status"], "cancelled", "{st}");
    let info = c.req(r#"{"model_info": "big"}"#);
    assert_eq!(info["model"]["tier"], "storage");
    let again = c.req(&format!(r#"{{"cancel_job": "{big}"}}"#));
    assert_eq!(code(&again), "CONFLICT");
}

#[test]
fn transient_failures_retry_with_backoff_then_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = start(dir.path(), &["--fault-probability", "1"]);
    let mut c = Client::connect(&sock);
    let id = mv(&mut c, "a", json!({"max_retries": 1}))["job_id"].as_str().unwrap().to_string();
    let st = wait_job(|l| c.req(l), &id);
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["attempt"], json!(2));
    let attempts = st["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    // The retry waited the base backoff (0.5 s) after the first failure.
    let gap = attempts[1]["started_at"].as_f64().unwrap() - attempts[0]["ended_at"].as_f64().unwrap();
    assert!(gap >= 0.5 - 1e-6, "retry after {gap} s: {st}");
    assert!(attempts[0]["outcome"].as_str().unwrap().contains("simulated I/O fault"));
    assert_eq!(c.req(r#"{"model_info": "a"}"#)["model"]["tier"], "storage");
    let m = c.req(r#"{"metrics": true}"#);
    assert_eq!(m["metrics"]["retries"], json!(1));
    let r = c.req(r#"{"update_limits": {"max_concurrent_tasks": 3}}"#);
    assert_eq!(r["new_limits"]["max_concurrent_tasks"], json!(3));
    assert_eq!(c.req(r#"{"queue_status": true}"#)["max_concurrent_tasks"], json!(3));
    let r = c.req(r#"{"update_limits": {"max_concurrent_tasks": 0}}"#);
    assert_eq!(code(&r), "INVALID_REQUEST");
}

#[test]
fn queue_cli_shows_status_history_and_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = start(dir.path(), &["--time-scale", "1"]);
    let mut c = Client::connect(&sock);
    let big = mv(&mut c, "big", json!({}))["job_id"].as_str().unwrap().to_string();
    let queued = mv(&mut c, "a", json!({"priority": "low"}))["job_id"].as_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("--socket").arg(&sock).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (status, out) = run(&["queue", "status"]);
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("pending 1  running 1"), "{out}");
    assert!(out.contains(&big) && out.contains(&queued) && out.contains("low"), "{out}");
    let (status, out) = run(&["queue", "cancel", &queued]);
    assert_eq!(status, Some(0));
    assert!(out.contains("cancelled"), "{out}");
    let (status, out) = run(&["queue", "history", "--status", "cancelled"]);
    assert_eq!(status, Some(0));
    assert!(out.contains(&queued) && !out.contains(&big), "{out}");
    // --since: a span back from the server's now, a UTC time, unix seconds.
    for since in ["1h", "10 min ago", "2000-01-01T00:00:00Z", "0"] {
        let (status, out) = run(&["queue", "history", "--status", "cancelled", "--since", since]);
        assert_eq!(status, Some(0), "{since}: {out}");
        assert!(out.contains(&queued), "--since {since}: {out}");
    }
    for since in ["2100-01-01 00:00", "4102444800"] {
        let (status, out) = run(&["queue", "history", "--since", since]);
        assert_eq!(status, Some(0), "{since}: {out}");
        assert!(!out.contains(&queued) && !out.contains(&big), "--since {since}: {out}");
    }
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&sock)
        .args(["queue", "history", "--since", "yesterday-ish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a time") && err.contains("30m"), "{err}");
    let (status, _) = run(&["queue", "cancel", "tier_promote_nope_1"]);
    assert_ne!(status, Some(0));
}
