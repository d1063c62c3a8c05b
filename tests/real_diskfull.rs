//! A `dir` tier on a small filesystem (a 32 MiB tmpfs mounted by the test)
//! runs out of space mid-copy: the move fails cleanly with the cause, is not
//! retried, leaves no partial file, and loses nothing. Skipped (reported as
//! such, see `tests/skip`) where mounting is not allowed.

mod real_support;
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use real_support::*;
use serde_json::json;
use tierd::tiers::MoveOptions;

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Result<Mounted, String> {
    std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(Mounted(at.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn disk_full_fails_the_move_cleanly_and_loses_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let small = root.path().join("small");
    let _mount = match mount_tmpfs(&small) {
        Ok(m) => m,
        Err(why) => {
            skip::skip(
                "disk_full_fails_the_move_cleanly_and_loses_nothing",
                &format!("cannot mount a tmpfs ({why})"),
            );
            return;
        }
    };
    let cfg = config_with(root.path(), &small, "");
    let origin = root.path().join("models/big.bin");
    make_file(&origin, 24 * MB, 12);
    let want = hash(&origin);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "big", None, Some("storage"), Some(&origin))
        .expect("register");
    let opts = MoveOptions {
        bandwidth_mb_s: Some(8.0),
        ..MoveOptions::default()
    };
    // 24 MiB fit in 32 MiB when the move is accepted ...
    let s = e.move_model(now(), "big", "swap", &opts).expect("move accepted");
    // ... then something else fills the filesystem.
    let _ = std::fs::write(small.join("filler"), vec![1u8; 20 * MB as usize]);
    let st = wait(&mut e, &s.job_id, Duration::from_secs(60));
    assert_eq!(st["status"], json!("failed"), "{st}");
    let text = st.to_string();
    assert!(text.contains("no space left"), "the cause is reported: {st}");
    assert_eq!(e.metrics().retries, 0, "ENOSPC is not retried");
    assert_eq!(model(&mut e, "big")["tier"], json!("storage"));
    assert!(find(&small, ".tierd-partial").is_empty(), "no partial copy left");
    assert!(!small.join("big").exists());
    assert_eq!(hash(&origin), want, "the origin is intact");
    // With room again, the same move succeeds.
    std::fs::remove_file(small.join("filler")).expect("rm filler");
    assert_eq!(move_and_wait(&mut e, "big", "swap")["status"], json!("success"));
    assert_eq!(hash(&small.join("big/big.bin")), want);
    e.check_invariants().expect("books balance");
}
