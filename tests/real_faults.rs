//! Faults noticed while running, on real files: a copy truncated, rewritten
//! or deleted behind tierd's back, its tier directory removed, an origin
//! deleted under a RAM pin or rewritten with new bytes of the same size, a
//! copy with a flipped byte found corrupt by a move out of it, and a copy
//! changed while tierd was stopped. In each case the model falls back to a
//! complete copy (or becomes unavailable) within a few seconds of ticks,
//! the fault is visible in `model_info` and `tier_status`, and nothing that
//! may be a model's last bytes is deleted.

mod common;
mod real_support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use real_support::*;
use serde_json::{Value, json};
use tierd::tiers::Engine;

/// Longest a fault may take to be noticed: the first look comes a second
/// after the start, then one a second.
const NOTICED_WITHIN: Duration = Duration::from_secs(10);

/// Ticks the engine on wall-clock time until `done` holds of model `name`'s
/// `model_info`; how long that took.
fn tick_until(e: &mut Engine, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        e.tick(now());
        let m = model(e, name);
        if done(&m) {
            return t.elapsed();
        }
        assert!(t.elapsed() < NOTICED_WITHIN, "{what}: not within {NOTICED_WITHIN:?}: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Inverts one byte of `path` at `offset`; with `keep_mtime`, puts the
/// modification time back as it was (as bit rot would leave it).
fn flip_byte(path: &Path, offset: u64, keep_mtime: bool) {
    let before = std::fs::metadata(path).expect("stat").modified().expect("mtime");
    // A later write gets a later time even on a coarse clock.
    std::thread::sleep(Duration::from_millis(30));
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open copy");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&b).expect("write");
    f.sync_all().expect("fsync");
    if keep_mtime {
        f.set_modified(before).expect("restore mtime");
    } else {
        let after = f.metadata().expect("stat").modified().expect("mtime");
        assert_ne!(after, before, "the write moved the modification time");
    }
}

fn fault(m: &Value) -> (&str, &str) {
    (
        m["fault"]["kind"].as_str().unwrap_or_default(),
        m["fault"]["reason"].as_str().unwrap_or_default(),
    )
}

/// The faults `tier_status` lists for tier `tier`.
fn tier_faults(e: &mut Engine, tier: &str) -> Vec<Value> {
    e.status_json(now())["tiers"][tier]["faults"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A registered model of `bytes` at `models/<name>.bin`, moved to `tier`.
fn model_in(e: &mut Engine, root: &Path, name: &str, bytes: u64, seed: u64, tier: &str) -> std::path::PathBuf {
    let file = root.join(format!("models/{name}.bin"));
    make_file(&file, bytes, seed);
    e.register_json(now(), name, None, Some("storage"), Some(&file)).expect("register");
    let st = move_and_wait(e, name, tier);
    assert_eq!(st["status"], json!("success"), "{st}");
    file
}

#[test]
fn a_copy_truncated_while_running_falls_back_within_seconds() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "trunc", 8 * MB, 31, "swap");
    let copy = root.path().join("swap/trunc/trunc.bin");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .expect("open copy")
        .set_len(MB)
        .expect("truncate");
    e.collect_events(true);
    let took = tick_until(&mut e, "trunc", "fallback", |m| m["tier"] == json!("storage"));
    println!("truncated copy noticed and dropped after {took:?} of ticks");
    // Watchers learn that it fell back, and why.
    let events: Vec<Value> = e
        .take_events()
        .iter()
        .map(|ev| serde_json::to_value(ev).expect("event json"))
        .collect();
    let fallback = events
        .iter()
        .find(|ev| ev["event"] == "model_fallback")
        .unwrap_or_else(|| panic!("a model_fallback event: {events:?}"));
    assert_eq!(
        (&fallback["model_name"], &fallback["from_tier"], &fallback["to_tier"]),
        (&json!("trunc"), &json!("swap"), &json!("storage")),
        "{fallback}"
    );
    assert!(
        fallback["reason"]
            .as_str()
            .is_some_and(|r| r.contains("has 1048576 bytes, expected 8388608")),
        "{fallback}"
    );
    let m = model(&mut e, "trunc");
    assert_eq!(m["status"], json!("ready"), "{m}");
    let (kind, reason) = fault(&m);
    assert_eq!(kind, "copy_changed", "{m}");
    assert!(reason.contains("has 1048576 bytes, expected 8388608"), "{m}");
    let listed = tier_faults(&mut e, "swap");
    assert!(
        listed
            .iter()
            .any(|f| f["model_name"] == json!("trunc") && f["kind"] == json!("copy_changed")),
        "{listed:?}"
    );
    // The damaged copy is dropped, the origin untouched.
    let gone = eventually(|| root.path().join("swap/trunc").exists(), |e| !*e);
    assert!(!gone, "the truncated copy is removed");
    assert_eq!(std::fs::metadata(&origin).expect("origin").len(), 8 * MB);
    e.check_invariants().expect("books balance");
    // The next promotion copies it anew, whole.
    assert_eq!(move_and_wait(&mut e, "trunc", "swap")["status"], json!("success"));
    assert_eq!(hash(&copy), hash(&origin));
}

#[test]
fn a_copy_written_to_while_running_is_dropped() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "scribble", 2 * MB, 32, "nvme");
    let copy = root.path().join("nvme/scribble/scribble.bin");
    flip_byte(&copy, 12_345, false);
    tick_until(&mut e, "scribble", "fallback", |m| m["tier"] == json!("storage"));
    let m = model(&mut e, "scribble");
    assert_eq!((m["status"].as_str(), fault(&m).0), (Some("ready"), "copy_changed"), "{m}");
    assert!(fault(&m).1.contains("modified after the copy was made"), "{m}");
    let gone = eventually(|| root.path().join("nvme/scribble").exists(), |e| !*e);
    assert!(!gone, "the changed copy is removed");
    assert_eq!(std::fs::metadata(&origin).expect("origin").len(), 2 * MB);
    e.check_invariants().expect("books balance");
}

#[test]
fn a_flipped_byte_found_by_a_move_out_removes_the_copy_for_good() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "rot", 4 * MB, 33, "nvme");
    save(&mut e, &store);
    let copy = root.path().join("nvme/rot/rot.bin");
    // Bit rot: the content changes, the stamps do not.
    flip_byte(&copy, 3 * MB + 7, true);
    let st = move_and_wait(&mut e, "rot", "swap");
    assert_eq!(st["status"], json!("failed"), "{st}");
    assert!(st["error"].as_str().is_some_and(|m| m.contains("corrupt")), "{st}");
    e.tick(now());
    let m = model(&mut e, "rot");
    assert_eq!(m["tier"], json!("storage"), "the model falls back to its origin: {m}");
    assert_eq!(m["status"], json!("ready"), "{m}");
    let (kind, reason) = fault(&m);
    assert_eq!(kind, "copy_corrupt", "{m}");
    assert!(reason.contains("does not match its recorded checksum"), "{m}");
    assert!(
        tier_faults(&mut e, "nvme").iter().any(|f| f["kind"] == json!("copy_corrupt")),
        "listed in tier_status"
    );
    let gone = eventually(|| root.path().join("nvme/rot").exists(), |e| !*e);
    assert!(!gone, "the corrupt copy is removed");
    assert!(!root.path().join("swap/rot").exists());
    assert!(find(root.path(), ".tierd-partial").is_empty());
    e.check_invariants().expect("books balance");

    // Not served again after a restart either.
    save(&mut e, &store);
    drop(e);
    drop(store);
    let (mut e, _store, _) = engine(&cfg);
    let m = model(&mut e, "rot");
    assert_eq!((m["tier"].as_str(), m["status"].as_str()), (Some("storage"), Some("ready")), "{m}");
    // A new copy is made from the origin.
    assert_eq!(move_and_wait(&mut e, "rot", "nvme")["status"], json!("success"));
    assert_eq!(hash(&copy), hash(&origin));
}

#[test]
fn a_copy_flipped_while_stopped_is_not_served_after_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "offline", 2 * MB, 34, "swap");
    save(&mut e, &store);
    drop(e);
    drop(store);
    let copy = root.path().join("swap/offline/offline.bin");
    flip_byte(&copy, 777, false);
    let (mut e, _store, report) = engine(&cfg);
    let m = model(&mut e, "offline");
    assert_eq!(m["tier"], json!("storage"), "the changed copy does not serve: {m}");
    assert_eq!(m["status"], json!("ready"), "{m}");
    assert!(
        report
            .fell_back
            .iter()
            .any(|(n, why)| n == "offline" && why.contains("modified after the copy was made")),
        "{:?}",
        report.fell_back
    );
    assert!(!root.path().join("swap/offline").exists(), "the changed copy is removed at start");
    assert_eq!(move_and_wait(&mut e, "offline", "swap")["status"], json!("success"));
    assert_eq!(hash(&copy), hash(&origin));
}

#[test]
fn a_pinned_model_whose_origin_vanished_is_unavailable() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "pinned", 4 * MB, 35, "ram");
    assert_eq!(model(&mut e, "pinned")["tier"], json!("ram"));
    std::fs::remove_file(&origin).expect("rm origin");
    let took = tick_until(&mut e, "pinned", "unavailable", |m| m["status"] == json!("unavailable"));
    println!("vanished origin of a pinned model noticed after {took:?} of ticks");
    let m = model(&mut e, "pinned");
    assert!(m["unavailable_reason"].as_str().is_some_and(|r| r.contains("is gone")), "{m}");
    assert_eq!(fault(&m).0, "origin_gone", "{m}");
    assert!(tier_faults(&mut e, "ram").iter().any(|f| f["action"] == json!("unavailable")));
    let err = e.access(now(), "pinned").expect_err("not served");
    assert!(err.to_string().contains("unavailable"), "{err}");
    e.check_invariants().expect("books balance");
}

#[test]
fn a_removed_tier_directory_makes_its_models_fall_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    model_in(&mut e, root.path(), "a", MB, 36, "swap");
    model_in(&mut e, root.path(), "b", 2 * MB, 37, "swap");
    std::fs::remove_dir_all(root.path().join("swap")).expect("rm -r tier");
    for name in ["a", "b"] {
        tick_until(&mut e, name, "fallback", |m| m["tier"] == json!("storage"));
        let m = model(&mut e, name);
        assert_eq!(m["status"], json!("ready"), "{m}");
        assert_eq!(fault(&m).0, "copy_changed", "{m}");
        assert!(fault(&m).1.contains("tier directory"), "{m}");
    }
    let s = e.status_json(now());
    assert_eq!(s["tiers"]["swap"]["models"], json!(0), "{s}");
    assert_eq!(s["tiers"]["storage"]["models"], json!(2), "{s}");
    e.check_invariants().expect("books balance");
}

#[test]
fn an_origin_rewritten_with_the_same_size_invalidates_its_copy() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "fresh", 4 * MB, 38, "swap");
    let copy = root.path().join("swap/fresh/fresh.bin");
    let old = hash(&copy);
    // New bytes, same size, a new modification time.
    std::thread::sleep(Duration::from_millis(30));
    make_file(&origin, 4 * MB, 99);
    let new = hash(&origin);
    assert_ne!(new, old);
    tick_until(&mut e, "fresh", "invalidation", |m| m["tier"] == json!("storage"));
    let m = model(&mut e, "fresh");
    assert_eq!(m["status"], json!("ready"), "{m}");
    assert_eq!(m["size_gb"], json!((4 * MB) as f64 / 1e9));
    let (kind, reason) = fault(&m);
    assert_eq!(kind, "origin_changed", "{m}");
    assert!(reason.contains("rewritten"), "{m}");
    let gone = eventually(|| copy.exists(), |e| !*e);
    assert!(!gone, "the stale copy is removed");
    // Copied anew on the next promotion, from the new bytes.
    assert_eq!(move_and_wait(&mut e, "fresh", "swap")["status"], json!("success"));
    assert_eq!(hash(&copy), new);
    // And it stays: the new copy matches what was recorded.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(model(&mut e, "fresh")["tier"], json!("swap"));
    e.check_invariants().expect("books balance");
}

#[test]
fn an_origin_rewritten_under_a_ram_pin_drops_the_pin() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "repin", 2 * MB, 39, "ram");
    std::thread::sleep(Duration::from_millis(30));
    make_file(&origin, 3 * MB, 40);
    tick_until(&mut e, "repin", "invalidation", |m| m["tier"] == json!("storage"));
    let m = model(&mut e, "repin");
    assert_eq!(m["status"], json!("ready"), "{m}");
    assert_eq!(fault(&m).0, "origin_changed", "{m}");
    assert_eq!(m["size_gb"], json!((3 * MB) as f64 / 1e9), "the new size is recorded: {m}");
    let pinned = e.status_json(now())["tiers"]["ram"]["pinned_models"].clone();
    assert_eq!(pinned, json!([]), "the pin of the old bytes is released");
    assert_eq!(move_and_wait(&mut e, "repin", "ram")["status"], json!("success"));
    e.check_invariants().expect("books balance");
}

#[test]
fn a_damaged_copy_of_a_vanished_origin_is_kept_and_the_model_unavailable() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, store, _) = engine(&cfg);
    let origin = model_in(&mut e, root.path(), "last", 2 * MB, 41, "swap");
    save(&mut e, &store);
    std::fs::remove_file(&origin).expect("rm origin");
    let copy = root.path().join("swap/last/last.bin");
    // With only the origin gone, the intact copy keeps serving.
    tick_until(&mut e, "last", "origin noticed", |m| m["fault"]["kind"] == json!("origin_gone"));
    let m = model(&mut e, "last");
    assert_eq!((m["tier"].as_str(), m["status"].as_str()), (Some("swap"), Some("ready")), "{m}");
    // Then the copy changes: the model is unavailable, the copy kept.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .expect("open")
        .set_len(MB)
        .expect("truncate");
    tick_until(&mut e, "last", "unavailable", |m| m["status"] == json!("unavailable"));
    assert_eq!(model(&mut e, "last")["tier"], json!("swap"));
    std::thread::sleep(Duration::from_millis(1500));
    e.tick(now());
    assert_eq!(std::fs::metadata(&copy).expect("the copy is kept").len(), MB);
    // Nor is it deleted at a restart.
    save(&mut e, &store);
    drop(e);
    drop(store);
    let (mut e, _store, _) = engine(&cfg);
    let m = model(&mut e, "last");
    assert_eq!(
        (m["tier"].as_str(), m["status"].as_str()),
        (Some("swap"), Some("unavailable")),
        "{m}"
    );
    assert!(copy.exists(), "the damaged copy survives the restart");
}

#[test]
fn an_origin_rewritten_during_its_copy_fails_the_move() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let origin = root.path().join("models/moving.bin");
    make_file(&origin, 16 * MB, 42);
    e.register_json(now(), "moving", None, Some("storage"), Some(&origin))
        .expect("register");
    let opts = tierd::tiers::MoveOptions {
        bandwidth_mb_s: Some(8.0),
        ..Default::default()
    };
    let s = e.move_model(now(), "moving", "swap", &opts).expect("move");
    // Once more than the first MiB was copied, it is rewritten in place:
    // same size, new bytes in what the copy already read.
    let t = Instant::now();
    while e.job_json(now(), &s.job_id).expect("status")["progress"].as_f64().unwrap_or(0.0) < 0.15 {
        e.tick(now());
        assert!(t.elapsed() < Duration::from_secs(20), "the copy never progressed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(&origin).expect("open origin");
    f.write_all(&vec![0x5a; MB as usize]).expect("rewrite");
    f.sync_all().expect("fsync");
    drop(f);
    let st = wait(&mut e, &s.job_id, Duration::from_secs(20));
    assert_eq!(st["status"], json!("failed"), "a copy of the old bytes is not kept: {st}");
    assert!(
        st["error"].as_str().is_some_and(|m| m.contains("rewritten during the copy")),
        "{st}"
    );
    assert_eq!(model(&mut e, "moving")["tier"], json!("storage"));
    assert!(!root.path().join("swap/moving").exists());
    assert!(find(root.path(), ".tierd-partial").is_empty());
    // The new stamps are recorded, and the next copy is of the new bytes.
    tick_until(&mut e, "moving", "new stamps", |m| m["fault"]["kind"] == json!("origin_changed"));
    assert_eq!(move_and_wait(&mut e, "moving", "swap")["status"], json!("success"));
    assert_eq!(hash(&root.path().join("swap/moving/moving.bin")), hash(&origin));
    e.check_invariants().expect("books balance");
}

/// The engine's part of a round is handing out the list: cheap even with
/// many models (the `stat`s run on the watcher's thread). Prints the
/// figures; the bound is loose, for a loaded machine.
#[test]
fn a_round_costs_the_engine_little_with_many_models() {
    const MODELS: usize = 2_000;
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let dir = root.path().join("models/many");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..MODELS {
        let p = dir.join(format!("m{i}.bin"));
        std::fs::write(&p, [i as u8; 64]).expect("write");
        e.register_json(now(), &format!("m{i}"), None, Some("storage"), Some(&p))
            .expect("register");
    }
    // One of them vanishes: noticed in a round like any other.
    std::fs::remove_file(dir.join("m7.bin")).expect("rm");
    let (mut ticks, mut longest, mut total) = (0u32, Duration::ZERO, Duration::ZERO);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(3_500) {
        let s = Instant::now();
        e.tick(now());
        let d = s.elapsed();
        longest = longest.max(d);
        total += d;
        ticks += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{MODELS} models: {ticks} ticks over 3.5 s, longest {longest:?}, mean {:?}",
        total / ticks.max(1)
    );
    assert_eq!(model(&mut e, "m7")["status"], json!("unavailable"));
    assert_eq!(model(&mut e, "m8")["status"], json!("ready"));
    assert!(longest < Duration::from_millis(500), "a tick took {longest:?}");
}

/// The daemon notices a fault by itself: no request between the damage
/// and the look; its ticker drives the watcher, and it logs the fault.
#[test]
fn the_daemon_notices_a_truncated_copy_without_a_request() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let weights = r.join("models/served.bin");
    make_file(&weights, 4 * MB, 43);
    let cfg = r.join("tierd.toml");
    let text = format!(
        "state_dir = {state:?}\npolicy = \"usage\"\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 4.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"swap\"\ndriver = \"dir\"\ncreate = true\npath = {swap:?}\nmax_gb = 4.0\naccess_s_per_gb = 0.5\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = r.join("state"),
        swap = r.join("swap"),
    );
    std::fs::write(&cfg, text).expect("write config");
    let sock = r.join("tierd.sock");
    let cfg_arg = cfg.to_str().expect("utf-8");
    let server = common::Server::socket(&sock, &["--config", cfg_arg, "--backend", "real", "--time-scale", "1"]);
    let mut c = common::Client::connect(&sock);
    let reg = c.req(&json!({"register_model": {"model_name": "served", "path": weights, "preferred_tier": "swap"}}).to_string());
    let job = reg["job_id"].as_str().expect("placement job").to_string();
    assert_eq!(common::wait_job(|l| c.req(l), &job)["status"], json!("success"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(r.join("swap/served/served.bin"))
        .expect("open copy")
        .set_len(MB)
        .expect("truncate");
    // No request for a while: the daemon's own ticks notice it (a round
    // a second, acted on at the next tick; slack for a loaded machine).
    std::thread::sleep(Duration::from_secs(5));
    let info = c.req(r#"{"model_info": "served"}"#);
    assert_eq!(info["model"]["tier"], json!("storage"), "{info}");
    assert_eq!(info["model"]["status"], json!("ready"), "{info}");
    assert_eq!(info["model"]["fault"]["kind"], json!("copy_changed"), "{info}");
    let st = c.req(r#"{"tier_status": true}"#);
    assert_eq!(st["tiers"]["swap"]["faults"][0]["model_name"], json!("served"), "{st}");
    let log = server.stderr_with("fault noticed while running");
    assert!(log.contains("fault noticed while running"), "{log}");
}
