//! Files on disk and filesystem admission of the real backend: tier
//! directories are private (or take the configured mode), a state file
//! record is checked like a request before anything is cleaned by its name,
//! a tier directory belongs to one server, and moves into a filesystem are
//! admitted against its free space net of the copies already running into
//! it. The tmpfs tests are skipped (reported as such, see `tests/skip`)
//! where mounting is not allowed.

mod real_support;
mod skip;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use real_support::*;
use serde_json::json;
use tierd::config::Config;
use tierd::tiers::{Engine, MoveOptions};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Why the real backend refuses to start on `cfg` (it must refuse).
fn refused(cfg: &Config) -> String {
    match try_engine(cfg) {
        Ok(_) => panic!("the start was not refused"),
        Err(e) => e,
    }
}

fn tier_mut<'a>(cfg: &'a mut Config, name: &str) -> &'a mut tierd::config::TierConfig {
    cfg.tiers.iter_mut().find(|t| t.name == name).expect("tier")
}

#[test]
fn tier_and_copy_directories_are_private_or_take_the_configured_mode() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(root.path());
    tier_mut(&mut cfg, "nvme").mode = Some(0o750);
    let origin = root.path().join("models/m");
    make_file(&origin.join("sub/w.bin"), MB, 3);
    make_file(&origin.join("top.bin"), MB, 4);
    let (mut e, store, _) = engine(&cfg);
    let (swap, nvme) = (root.path().join("swap"), root.path().join("nvme"));
    assert_eq!(mode(&swap), 0o700, "default mode");
    assert_eq!(mode(&nvme), 0o750, "configured mode");
    assert_eq!(mode(&swap.join(".tierd-lock")), 0o600);
    e.register_json(now(), "m", None, Some("storage"), Some(&origin)).expect("register");
    assert_eq!(move_and_wait(&mut e, "m", "swap")["status"], json!("success"));
    assert_eq!(mode(&swap.join("m")), 0o700);
    assert_eq!(mode(&swap.join("m/sub")), 0o700);
    assert_eq!(move_and_wait(&mut e, "m", "nvme")["status"], json!("success"));
    // The origin is open (0755 everywhere): the tier's mode is the bound.
    assert_eq!(mode(&origin.join("sub")), 0o755);
    assert_eq!(mode(&nvme.join("m")), 0o750);
    assert_eq!(mode(&nvme.join("m/sub")), 0o750);
    save(&mut e, &store);
    let state = root.path().join("state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("tierd-state.json")), 0o600);
    assert_eq!(mode(&state.join("tierd.lock")), 0o600);
}

/// Writes a state file with one model record named `name` in tier `tier`.
fn plant_record(state: &Path, name: &str, origin: &Path, rel: &str, bytes: u64, tier: &str) {
    std::fs::create_dir_all(state).expect("mkdir");
    let file = json!({
        "version": 1,
        "models": { name: {
            "origin": origin, "single": false,
            "files": [{"rel": rel, "size": bytes}],
            "bytes": bytes, "tier": tier,
        }},
    });
    std::fs::write(state.join("tierd-state.json"), file.to_string()).expect("write state");
}

#[test]
fn a_planted_dotdot_record_deletes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    // A model named `../victimdir` is the entry `%2E.%2Fvictimdir` inside
    // each tier (names are escaped), never `<nvme>/../victimdir`: the
    // record starts, and cleaning nvme of leftovers touches nothing outside.
    let victim = root.path().join("victimdir");
    make_file(&victim.join("w.bin"), 4096, 1);
    plant_record(&root.path().join("state"), "../victimdir", &victim, "w.bin", 4096, "swap");
    let (mut e, store, _) = try_engine(&cfg).expect("an escaped name starts");
    assert!(victim.join("w.bin").exists(), "nothing outside the tiers is deleted");
    let m = model(&mut e, "../victimdir");
    assert_eq!(m["tier"], json!("storage"), "no copy in swap: served from its origin: {m}");
    drop((e, store));
    // A record whose file escapes its model's directory is refused.
    plant_record(&root.path().join("state"), "m", &victim, "../../w.bin", 4096, "swap");
    let err = refused(&cfg);
    assert!(err.contains("\"m\"") && err.contains("../../w.bin"), "{err}");
    assert!(victim.join("w.bin").exists());
}

#[test]
fn start_up_cleanup_never_follows_a_link_out_of_the_tier() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let outside = root.path().join("outside");
    make_file(&outside.join("keep.bin"), 4096, 2);
    let swap = root.path().join("swap");
    std::fs::create_dir_all(&swap).expect("mkdir");
    // Links where tierd removes things: a partial copy, an old copy being
    // deleted, and a model's copy that the state file places elsewhere.
    std::os::unix::fs::symlink(&outside, swap.join("m.tierd-partial")).expect("symlink");
    std::os::unix::fs::symlink(&outside, swap.join(".m.tierd-trash-1")).expect("symlink");
    std::os::unix::fs::symlink(&outside, swap.join("m")).expect("symlink");
    let origin = root.path().join("models/m");
    make_file(&origin.join("w.bin"), 4096, 3);
    plant_record(&root.path().join("state"), "m", &origin, "w.bin", 4096, "storage");
    let (e, _store, report) = engine(&cfg);
    assert_eq!(report.removed_partials.len(), 2, "{report:?}");
    assert_eq!(report.removed_orphans.len(), 1, "{report:?}");
    assert!(
        std::fs::read_dir(&swap)
            .expect("ls")
            .all(|d| d.expect("entry").file_name() == ".tierd-lock")
    );
    assert!(outside.join("keep.bin").exists(), "what the links point at stays");
    drop(e);
}

#[test]
fn a_tier_directory_swapped_for_a_link_loses_nothing_outside_when_a_copy_is_released() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let origin = root.path().join("models/m.bin");
    make_file(&origin, MB, 6);
    let (mut e, store, _) = engine(&cfg);
    e.register_json(now(), "m", None, Some("storage"), Some(&origin)).expect("register");
    assert_eq!(move_and_wait(&mut e, "m", "swap")["status"], json!("success"));
    save(&mut e, &store);
    // Behind tierd's back, the tier directory becomes a link to a
    // directory that holds a `m` of its own.
    let (swap, victim) = (root.path().join("swap"), root.path().join("victim"));
    make_file(&victim.join("m/keep.bin"), 4096, 7);
    std::fs::rename(&swap, root.path().join("swap.old")).expect("mv");
    std::os::unix::fs::symlink(&victim, &swap).expect("symlink");
    e.unregister("m").expect("unregister");
    save(&mut e, &store);
    e.tick(now());
    std::thread::sleep(Duration::from_millis(300));
    assert!(victim.join("m/keep.bin").exists(), "the release followed the link out of the tier");
    assert_eq!(std::fs::read_dir(&victim).expect("ls").count(), 1, "nothing renamed outside");
}

#[test]
fn a_second_server_over_the_same_tier_directory_refuses_and_touches_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let origin = root.path().join("models/slow.bin");
    make_file(&origin, 8 * MB, 5);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "slow", None, Some("storage"), Some(&origin))
        .expect("register");
    let opts = MoveOptions {
        bandwidth_mb_s: Some(4.0),
        ..MoveOptions::default()
    };
    let s = e.move_model(now(), "slow", "swap", &opts).expect("move accepted");
    let swap = root.path().join("swap");
    let t = Instant::now();
    while find(&swap, ".tierd-partial").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "no partial copy appeared");
        e.tick(now());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Another server, another state directory, the same tier directories.
    let mut other = cfg.clone();
    other.state_dir = Some(root.path().join("state2"));
    tier_mut(&mut other, "nvme").mode = Some(0o777);
    let err = refused(&other);
    assert!(err.contains("in use by another tierd") && err.contains(".tierd-lock"), "{err}");
    assert!(!find(&swap, ".tierd-partial").is_empty(), "the live partial copy survives");
    assert_eq!(mode(&root.path().join("nvme")), 0o700, "the live tier's mode is not changed");
    let st = wait(&mut e, &s.job_id, Duration::from_secs(20));
    assert_eq!(st["status"], json!("success"), "{st}");
    assert_eq!(hash(&swap.join("slow/slow.bin")), hash(&origin));
}

// ------------------------------------------------------------ tmpfs

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        // A background deletion may still hold the filesystem for a moment.
        for _ in 0..50 {
            let quiet = Command::new("umount").arg(&self.0).stderr(std::process::Stdio::null()).status();
            if quiet.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Result<Mounted, String> {
    std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(Mounted(at.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Two 20 MiB models and an engine whose `first` and `second` tiers are on
/// one 32 MiB tmpfs; `None` when mounting is refused (reported).
fn two_models_on_a_small_filesystem(test: &str, root: &Path, same_tier: bool) -> Option<(Engine, Mounted)> {
    small_filesystem(test, root, same_tier, |_| {})
}

/// As [`two_models_on_a_small_filesystem`], with the configuration edited by `edit`.
fn small_filesystem(test: &str, root: &Path, same_tier: bool, edit: impl FnOnce(&mut Config)) -> Option<(Engine, Mounted)> {
    let small = root.join("small");
    let mounted = match mount_tmpfs(&small, "32m") {
        Ok(m) => m,
        Err(why) => {
            skip::skip(test, &format!("cannot mount a tmpfs ({why})"));
            return None;
        }
    };
    let mut cfg = config_with(root, &small.join("swap"), "");
    if !same_tier {
        tier_mut(&mut cfg, "nvme").path = Some(small.join("nvme"));
    }
    edit(&mut cfg);
    let (mut e, _store, _) = engine(&cfg);
    for (name, seed) in [("a", 21), ("b", 22)] {
        let origin = root.join(format!("models/{name}.bin"));
        make_file(&origin, 20 * MB, seed);
        e.register_json(now(), name, None, Some("storage"), Some(&origin))
            .expect("register");
    }
    Some((e, mounted))
}

/// Moves `a` into `first` slowly and, once it runs, asks for `b` into
/// `second`: refused for lack of room, or queued and never started into
/// ENOSPC. `a` completes.
fn second_move_is_held_back(e: &mut Engine, first: &str, second: &str) {
    let opts = MoveOptions {
        bandwidth_mb_s: Some(10.0),
        ..MoveOptions::default()
    };
    let a = e.move_model(now(), "a", first, &opts).expect("a fits");
    let t = Instant::now();
    while e.job_json(now(), &a.job_id).expect("status")["status"] != json!("running") {
        assert!(t.elapsed() < Duration::from_secs(10), "a did not start");
        e.tick(now());
        std::thread::sleep(Duration::from_millis(2));
    }
    // 20 MiB fit in what statvfs shows (32 MiB less what a wrote so far),
    // but not next to the rest of a.
    match e.move_model(now(), "b", second, &opts) {
        Err(err) => {
            let text = err.to_string();
            assert!(text.starts_with("Insufficient"), "{text}");
        }
        Ok(b) => {
            let st = wait(e, &b.job_id, Duration::from_secs(20));
            assert!(!st.to_string().contains("no space left"), "b was started into ENOSPC: {st}");
        }
    }
    let st = wait(e, &a.job_id, Duration::from_secs(20));
    assert_eq!(st["status"], json!("success"), "{st}");
    e.check_invariants().expect("books balance");
}

#[test]
fn two_moves_that_together_overfill_a_filesystem_are_not_both_admitted() {
    let root = tempfile::tempdir().expect("tempdir");
    let test = "two_moves_that_together_overfill_a_filesystem_are_not_both_admitted";
    let Some((mut e, _m)) = two_models_on_a_small_filesystem(test, root.path(), true) else {
        return;
    };
    second_move_is_held_back(&mut e, "swap", "swap");
    // With a in place there is no room for b at all.
    assert!(e.move_model(now(), "b", "swap", &MoveOptions::default()).is_err());
    drop(e);
}

#[test]
fn a_copy_into_one_tier_counts_against_another_on_the_same_filesystem() {
    let root = tempfile::tempdir().expect("tempdir");
    let test = "a_copy_into_one_tier_counts_against_another_on_the_same_filesystem";
    let Some((mut e, _m)) = two_models_on_a_small_filesystem(test, root.path(), false) else {
        return;
    };
    second_move_is_held_back(&mut e, "nvme", "swap");
    drop(e);
}

#[test]
fn a_queued_move_starts_only_while_it_fits_the_filesystem() {
    let root = tempfile::tempdir().expect("tempdir");
    let test = "a_queued_move_starts_only_while_it_fits_the_filesystem";
    // One move at a time, so both copies are admitted while they wait.
    let Some((mut e, _m)) = small_filesystem(test, root.path(), false, |c| c.moves.max_concurrent = 1) else {
        return;
    };
    let origin = root.path().join("models/c.bin");
    make_file(&origin, 2 * MB, 23);
    e.register_json(now(), "c", None, Some("storage"), Some(&origin)).expect("register");
    let slow = MoveOptions {
        bandwidth_mb_s: Some(4.0),
        ..MoveOptions::default()
    };
    let c = e.move_model(now(), "c", "ram", &slow).expect("c");
    // nvme and swap share the filesystem; neither sees the other's queue.
    let a = e.move_model(now(), "a", "nvme", &MoveOptions::default()).expect("a admitted");
    let b = e.move_model(now(), "b", "swap", &MoveOptions::default()).expect("b admitted");
    assert_eq!(wait(&mut e, &c.job_id, Duration::from_secs(20))["status"], json!("success"));
    assert_eq!(wait(&mut e, &a.job_id, Duration::from_secs(20))["status"], json!("success"));
    let st = wait(&mut e, &b.job_id, Duration::from_secs(20));
    assert_eq!(st["status"], json!("failed"), "{st}");
    let text = st.to_string();
    assert!(!text.contains("no space left"), "b was started into ENOSPC: {st}");
    assert!(text.contains("no room for b"), "{st}");
    assert!(text.contains("Insufficient SWAP"), "the disk is short, not the limit: {st}");
    assert!(find(&root.path().join("small"), ".tierd-partial").is_empty());
    e.check_invariants().expect("books balance");
    drop(e);
}

#[test]
fn making_room_on_a_full_filesystem_still_works() {
    let root = tempfile::tempdir().expect("tempdir");
    let test = "making_room_on_a_full_filesystem_still_works";
    let Some((mut e, _m)) = two_models_on_a_small_filesystem(test, root.path(), true) else {
        return;
    };
    assert_eq!(move_and_wait(&mut e, "a", "swap")["status"], json!("success"));
    // b fits only once a's copy is gone: a is demoted first, and b's copy
    // starts while a's old copy is deleted in the background.
    for _ in 0..3 {
        let opts = MoveOptions {
            make_room: true,
            ..MoveOptions::default()
        };
        let (x, y) = if model(&mut e, "a")["tier"] == json!("swap") {
            ("b", "a")
        } else {
            ("a", "b")
        };
        let s = e.move_model(now(), x, "swap", &opts).expect("admitted with room made");
        let st = wait(&mut e, &s.job_id, Duration::from_secs(20));
        assert_eq!(st["status"], json!("success"), "{st}");
        assert_eq!(model(&mut e, y)["tier"], json!("storage"));
    }
    e.check_invariants().expect("books balance");
    drop(e);
}
