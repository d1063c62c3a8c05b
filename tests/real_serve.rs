//! `tierd serve --backend real` end to end over its socket: a real file is
//! registered, promoted to a directory tier (verified copy) and pinned in
//! RAM; after a restart the placement, usage and job history are still there.

mod common;

use std::path::Path;

use common::{Client, Server, code, wait_job};
use serde_json::json;

fn config(root: &Path) -> String {
    format!(
        r#"
state_dir = "{root}/state"
# No on-access moves: this test is about the backend, not the policy; and
# its own reads of the copy are not accesses (tests/real_opens.rs).
policy = "usage"
observe_opens = false
[[tiers]]
name = "ram"
driver = "pagecache"
max_gb = 4.0
reserved_gb = 0.5
access_s_per_gb = 0.1
[[tiers]]
name = "swap"
driver = "dir"
create = true
path = "{root}/swap"
max_gb = 4.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
driver = "storage"
access_s_per_gb = 2.0
"#,
        root = root.display()
    )
}

#[test]
fn real_backend_serves_moves_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("swap")).unwrap();
    std::fs::create_dir_all(root.join("models")).unwrap();
    let weights = root.join("models/tiny.gguf");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&weights, &data).unwrap();
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, config(root)).unwrap();
    let sock = root.join("tierd.sock");
    let args = ["--config", cfg.to_str().unwrap(), "--backend", "real", "--time-scale", "1"];

    let job = {
        let server = Server::socket(&sock, &args);
        let mut c = Client::connect(&sock);
        let h = c.req(r#"{"health": true}"#);
        assert_eq!(h["backend"], "real", "{h}");
        let bad = c.req(r#"{"register_model": {"model_name": "bad\u0007name", "path": "/etc/hostname"}}"#);
        assert_eq!(code(&bad), "INVALID_REQUEST");
        let r = c.req(&json!({"register_model": {"model_name": "tiny", "path": weights, "preferred_tier": "swap"}}).to_string());
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["tier"], "swap");
        assert!((r["size_gb"].as_f64().unwrap() - 0.008388608).abs() < 1e-9, "{r}");
        // The model starts at its origin; a job carries it to the chosen tier.
        let job = r["job_id"].as_str().expect("placement job").to_string();
        let st = wait_job(|l| c.req(l), &job);
        assert_eq!(st["status"], "success", "{st}");
        let copies: Vec<_> = walk(&root.join("swap"));
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(std::fs::read(&copies[0]).unwrap(), data, "byte-identical copy");
        for _ in 0..3 {
            assert_eq!(c.req(r#"{"access_model": "tiny"}"#)["tier"], "swap");
        }
        let st = c.req(r#"{"tier_status": true}"#);
        assert!(st["tiers"]["ram"]["available_gb"].as_f64().unwrap() > 0.0, "{st}");
        drop(c);
        server.terminate();
        let mut server = server;
        assert!(server.wait_exit().success(), "{}", server.stderr());
        job
    };
    assert_eq!(std::fs::read(&weights).unwrap(), data, "the origin is never modified");

    let _server = Server::socket(&sock, &args);
    let mut c = Client::connect(&sock);
    let info = c.req(r#"{"model_info": "tiny"}"#);
    assert_eq!(info["model"]["tier"], "swap", "{info}");
    assert_eq!(info["model"]["usage"], json!(3), "{info}");
    let st = c.req(&format!(r#"{{"tier_job_status": "{job}"}}"#));
    assert_eq!(st["status"], "success", "history survives a restart: {st}");
    let h = c.req(r#"{"queue_history": {"limit": 10}}"#);
    assert!(h["history"].as_array().unwrap().iter().any(|j| j["job_id"] == json!(job)), "{h}");
}

/// The files under `dir`, the tier's lock file left out.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.ends_with(tierd::drivers::dir::LOCK_FILE) {
            continue;
        }
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A registration walks its model's files before the engine is locked: a
/// directory of 20,000 files takes the registering client a while, and
/// another client's requests are answered all along, as fast as before.
#[test]
fn a_large_registration_does_not_hold_up_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("swap")).unwrap();
    let model = root.join("models/many");
    for d in 0..200 {
        let sub = model.join(format!("shard-{d:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("part-{f:03}.bin")), b"x").unwrap();
        }
    }
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, format!("max_files_per_model = 30000\n{}", config(root))).unwrap();
    let sock = root.join("tierd.sock");
    let args = ["--config", cfg.to_str().unwrap(), "--backend", "real", "--time-scale", "1"];
    let _server = Server::socket(&sock, &args);
    let mut b = Client::connect(&sock);
    // Round trips on an idle server, for reference.
    let idle: Vec<f64> = (0..50)
        .map(|_| {
            let t = std::time::Instant::now();
            assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let registering = {
        let (sock, model, done) = (sock.clone(), model.clone(), done.clone());
        std::thread::spawn(move || {
            let mut a = Client::connect(&sock);
            let t = std::time::Instant::now();
            let r = a.req(&json!({"register_model": {"model_name": "many", "path": model}}).to_string());
            let took = t.elapsed().as_secs_f64();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (r, took)
        })
    };
    let mut during = Vec::new();
    // Every request sent before the registration was answered counts.
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let t = std::time::Instant::now();
        assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true);
        during.push(t.elapsed().as_secs_f64());
    }
    let (r, took) = registering.join().unwrap();
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["size_gb"], json!(20_000.0 / 1e9), "{r}");
    let worst = during.iter().copied().fold(0.0, f64::max);
    let idle_worst = idle.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "registration of 20,000 files: {:.1} ms; {} other requests answered meanwhile, the slowest in {:.2} ms (idle: {:.2} ms)",
        took * 1e3,
        during.len(),
        worst * 1e3,
        idle_worst * 1e3
    );
    // Had the walk held the engine's lock, the requests made during it
    // would have waited for all of it.
    assert!(
        during.len() >= 10,
        "only {} requests answered during a {took} s registration",
        during.len()
    );
    assert!(worst < took / 2.0, "a request waited {worst} s during a {took} s registration");
}

/// A directory with more entries than `max_files_per_model` is refused
/// with a message that says so, and the server goes on serving.
#[test]
fn a_registration_over_the_file_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("swap")).unwrap();
    let model = root.join("models/wide");
    std::fs::create_dir_all(&model).unwrap();
    for f in 0..60 {
        std::fs::write(model.join(format!("f{f}")), b"x").unwrap();
    }
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, format!("max_files_per_model = 50\n{}", config(root))).unwrap();
    let sock = root.join("tierd.sock");
    let args = ["--config", cfg.to_str().unwrap(), "--backend", "real"];
    let _server = Server::socket(&sock, &args);
    let mut c = Client::connect(&sock);
    let r = c.req(&json!({"register_model": {"model_name": "wide", "path": model}}).to_string());
    assert_eq!(code(&r), "INVALID_REQUEST", "{r}");
    let msg = common::message(&r);
    assert!(msg.contains("more than 50 entries") && msg.contains("max_files_per_model"), "{msg}");
    assert_eq!(c.req(r#"{"health": true}"#)["models"], json!(0));
}
