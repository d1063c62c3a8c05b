//! Where the lock limit forbids `mlock` (no CAP_IPC_LOCK, RLIMIT_MEMLOCK 0),
//! a promotion to the RAM tier still populates the pages, succeeds, and
//! `tier_status` says the pages are not locked and why.
//!
//! The test re-runs this binary on `unlocked_helper` under
//! `capsh --drop=cap_ipc_lock` with `ulimit -l 0` (skipped and reported as
//! such where capsh is missing).

mod real_support;
mod skip;

use std::path::Path;
use std::process::Command;

use real_support::*;
use serde_json::json;
use tierd::drivers::sys;

const ROOT_ENV: &str = "TIERD_UNLOCKED_ROOT";

#[test]
#[ignore = "helper: run by without_the_lock_privilege_pages_are_populated_and_reported_unlocked"]
fn unlocked_helper() {
    let root = std::env::var(ROOT_ENV).expect("run by the unlocked test, with TIERD_UNLOCKED_ROOT set");
    let root = Path::new(&root);
    let file = root.join("models/u.bin");
    let (mut e, _store, _) = engine(&config(root));
    e.register_json(now(), "u", None, Some("storage"), Some(&file)).expect("register");
    let st = move_and_wait(&mut e, "u", "ram");
    assert_eq!(st["status"], json!("success"), "{st}");
    let ram = &e.status_json(now())["tiers"]["ram"];
    assert_eq!(ram["locked"], json!(false), "{ram}");
    assert!(ram["lock_error"].as_str().is_some_and(|m| m.contains("mlock refused")), "{ram}");
    let (res, len) = sys::file_resident_fraction(&file).expect("mincore");
    assert_eq!(res, len, "populated without locking");
    assert_eq!(sys::self_status("VmLck").expect("VmLck"), 0);
    println!("TIERD_UNLOCKED_OK");
}

#[test]
fn without_the_lock_privilege_pages_are_populated_and_reported_unlocked() {
    if Command::new("capsh").arg("--help").output().is_err() {
        skip::skip(
            "without_the_lock_privilege_pages_are_populated_and_reported_unlocked",
            "capsh is not installed (Debian package libcap2-bin)",
        );
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    make_file(&root.path().join("models/u.bin"), 16 * MB, 21);
    let exe = std::env::current_exe().expect("test binary");
    let script = format!(
        "ulimit -l 0 && exec '{}' --exact unlocked_helper --ignored --nocapture --test-threads=1",
        exe.display()
    );
    let out = Command::new("capsh")
        .args(["--drop=cap_ipc_lock", "--", "-c", &script])
        .env(ROOT_ENV, root.path())
        .output()
        .expect("run capsh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("TIERD_UNLOCKED_OK"), "helper failed:\n{text}");
}
