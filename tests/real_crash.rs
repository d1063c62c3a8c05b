//! Crash safety: a process running the engine on the real backend is killed
//! with SIGKILL in the middle of a copy between two `dir` tiers; the next
//! start removes the partial copy and finds the model intact in the tier it
//! was in before the move.
//!
//! The killed process is this test binary itself, re-run on the ignored
//! `crash_helper` test with `TIERD_CRASH_ROOT` set.

mod real_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use real_support::*;
use serde_json::json;
use tierd::tiers::MoveOptions;

const ROOT_ENV: &str = "TIERD_CRASH_ROOT";

/// Run in the child: register, move to `swap`, then start a slow move to
/// `nvme` and report its progress until killed. Its state is saved as the
/// server saves it: durable placement, a snapshot after each change.
#[test]
#[ignore = "helper: run by kill_9_mid_copy_then_restart_keeps_the_model_in_its_previous_tier"]
fn crash_helper() {
    let root = std::env::var(ROOT_ENV).expect("run by the crash test, with TIERD_CRASH_ROOT set");
    let root = Path::new(&root);
    let cfg = config(root);
    let (mut e, store, _) = engine(&cfg);
    e.set_durable(true);
    e.register_json(now(), "m", None, Some("storage"), Some(&root.join("models/m.bin")))
        .expect("register");
    save(&mut e, &store);
    assert_eq!(move_and_wait(&mut e, "m", "swap")["status"], json!("success"));
    save(&mut e, &store);
    println!("TIERD_IN_SWAP");
    let opts = MoveOptions {
        bandwidth_mb_s: Some(16.0),
        ..MoveOptions::default()
    };
    let s = e.move_model(now(), "m", "nvme", &opts).expect("move");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        e.tick(now());
        save(&mut e, &store);
        let p = e.job_json(now(), &s.job_id).expect("status")["progress"].as_f64().unwrap_or(0.0);
        println!("TIERD_PROGRESS {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_mid_copy_then_restart_keeps_the_model_in_its_previous_tier() {
    let root = tempfile::tempdir().expect("tempdir");
    let origin = root.path().join("models/m.bin");
    make_file(&origin, 64 * MB, 11);
    let want = hash(&origin);
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_helper", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROOT_ENV, root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn helper");
    let stdout = child.stdout.take().expect("stdout");
    let mut in_swap = false;
    let t = Instant::now();
    // The pipe stays open until after the kill, so the helper never sees a
    // broken pipe: it dies of SIGKILL in the middle of the copy.
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("line");
        in_swap |= line.contains("TIERD_IN_SWAP");
        if let Some((_, p)) = line.split_once("TIERD_PROGRESS ")
            && p.parse::<f64>().is_ok_and(|p| p > 0.1)
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "helper never got into the copy");
    }
    assert!(in_swap, "the helper moved the model to swap first");
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    drop(lines);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    assert!(!status.success(), "killed: {status:?}");
    let partials = find(root.path(), ".tierd-partial");
    assert!(!partials.is_empty(), "the kill left a partial copy behind");

    // Restart: reconcile.
    let cfg = config(root.path());
    let (mut e, _store, report) = engine(&cfg);
    assert_eq!(report.removed_partials.len(), 1, "{report:?}");
    assert!(find(root.path(), ".tierd-partial").is_empty(), "no partial files left");
    let m = model(&mut e, "m");
    assert_eq!(m["tier"], json!("swap"), "{m}");
    assert_eq!(m["status"], json!("ready"), "{m}");
    assert_eq!(hash(&root.path().join("swap/m/m.bin")), want, "the swap copy is intact");
    assert_eq!(hash(&origin), want, "the origin is intact");
    assert!(!root.path().join("nvme/m").exists());
    // And the interrupted move can be done now.
    assert_eq!(move_and_wait(&mut e, "m", "nvme")["status"], json!("success"));
    assert_eq!(hash(&root.path().join("nvme/m/m.bin")), want);
}
