//! The pagecache (RAM) tier on real files: a promotion leaves the file fully
//! resident and locked; a demotion unlocks it and drops its pages.
//!
//! One test in this binary, so nothing else locks memory in the process
//! while `VmLck` is read.

mod real_support;

use real_support::*;
use serde_json::json;
use tierd::drivers::sys;

#[test]
fn promotion_pins_and_demotion_unpins() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/tiny.gguf");
    make_file(&file, 64 * MB, 7);
    sys::drop_cache(&file).expect("drop cache");
    let (mut e, _store, _) = engine(&cfg);
    let r = e
        .register_json(now(), "tiny", None, Some("storage"), Some(&file))
        .expect("register");
    assert_eq!(r["size_gb"], json!(64.0 * MB as f64 / 1e9));
    let locked_before = sys::self_status("VmLck").expect("VmLck");

    let st = move_and_wait(&mut e, "tiny", "ram");
    assert_eq!(st["status"], json!("success"), "{st}");
    let m = model(&mut e, "tiny");
    assert_eq!(m["tier"], json!("ram"));
    assert_eq!(m["resident_fraction"], json!(1.0), "{m}");
    let (res, len) = sys::file_resident_fraction(&file).expect("mincore");
    assert_eq!(res, len, "every page of the file is in memory");
    let locked = sys::self_status("VmLck").expect("VmLck");
    assert!(
        locked >= locked_before + 64 * MB,
        "VmLck {locked} after pinning 64 MiB (before: {locked_before})"
    );
    let ram = &e.status_json(now())["tiers"]["ram"];
    assert_eq!(ram["driver"], json!("pagecache"));
    assert_eq!(ram["locked"], json!(true), "{ram}");
    assert_eq!(ram["pinned_models"], json!(["tiny"]));

    // Demote to the swap dir tier, then to storage: unlocked and dropped.
    // The pin is released on a thread of its own once the move committed
    // (unmapping a large locked file takes a while): it is gone shortly.
    let st = move_and_wait(&mut e, "tiny", "swap");
    assert_eq!(st["status"], json!("success"), "{st}");
    let unlocked = eventually(|| sys::self_status("VmLck").expect("VmLck"), |v| *v + 64 * MB <= locked);
    assert!(unlocked + 64 * MB <= locked, "VmLck {unlocked} after demotion (pinned: {locked})");
    let res = eventually(|| sys::file_resident_fraction(&file).expect("mincore").0, |r| *r < len / 2);
    assert!(res < len / 2, "origin pages dropped after demotion: {res} of {len} resident");
    assert_eq!(hash(&root.path().join("swap/tiny/tiny.gguf")), hash(&file));

    // Back to RAM from the dir tier: pinned again, the dir copy removed.
    let st = move_and_wait(&mut e, "tiny", "ram");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert!(
        !root.path().join("swap/tiny").exists(),
        "the source copy goes (out of the way at once) once the model is pinned"
    );
    assert!(sys::self_status("VmLck").expect("VmLck") >= locked_before + 64 * MB);
    let st = move_and_wait(&mut e, "tiny", "storage");
    assert_eq!(st["status"], json!("success"), "{st}");
    let after = eventually(|| sys::self_status("VmLck").expect("VmLck"), |v| *v + 64 * MB <= locked);
    assert!(after + 64 * MB <= locked);
    assert_eq!(e.status_json(now())["tiers"]["ram"]["pinned_models"], json!([]));
    assert!(file.exists(), "the origin is never removed");

    // A promotion cancelled half way rolls back: nothing stays locked.
    sys::drop_cache(&file).expect("drop cache");
    let opts = tierd::tiers::MoveOptions {
        bandwidth_mb_s: Some(32.0),
        ..tierd::tiers::MoveOptions::default()
    };
    let s = e.move_model(now(), "tiny", "ram", &opts).expect("move");
    let t = std::time::Instant::now();
    while e.job_json(now(), &s.job_id).expect("status")["progress"].as_f64().unwrap_or(0.0) < 0.1 {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "pin never progressed");
        e.tick(now());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    e.cancel_job(now(), &s.job_id).expect("cancel");
    let st = wait(&mut e, &s.job_id, std::time::Duration::from_secs(20));
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(model(&mut e, "tiny")["tier"], json!("storage"));
    let after = eventually(|| sys::self_status("VmLck").expect("VmLck"), |v| *v + 64 * MB <= locked);
    assert!(after + 64 * MB <= locked, "nothing stays locked");
    e.check_invariants().expect("books balance");
}
