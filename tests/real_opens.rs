//! Usage learned from real opens (real backend): another process opening a
//! registered model's files counts as accesses of that model, debounced,
//! and the default policy promotes it; tierd's own reads (a move's copy,
//! a pin, checksum reads) are not counted. Runs with fanotify (where
//! permitted) and with inotify forced.

mod common;
mod real_support;
#[path = "skip/mod.rs"]
mod skip;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierd::config::Config;
use tierd::drivers::gpu::GpuProbe;
use tierd::optimizer::{TierdParams, TierdPolicy};
use tierd::tiers::Engine;

use real_support::*;

/// The test configuration with opens watched by `mechanism` and a short
/// debounce (so the test need not wait 2 s between accesses).
fn opens_config(root: &Path, mechanism: &str, debounce_s: f64) -> Config {
    let extra = format!("open_watch = {mechanism:?}\nopen_debounce_s = {debounce_s}\n");
    config_with(root, &root.join("swap"), &extra)
}

/// An engine under the default policy (`tierd`), or why not.
fn open(cfg: &Config) -> Result<(Engine, tierd::store::StateStore), String> {
    let policy = Box::new(TierdPolicy::new(TierdParams::for_config(cfg)));
    let no_nvml = || GpuProbe::open_from(std::ffi::OsStr::new("/nonexistent/libnvidia-ml.so.1"));
    try_engine_with(cfg, no_nvml, policy).map(|(e, s, _)| (e, s))
}

/// Another process reads the whole file (`cat > /dev/null`).
fn cat(path: &Path) {
    let st = Command::new("cat").arg(path).stdout(Stdio::null()).status().expect("run cat");
    assert!(st.success(), "cat {}", path.display());
}

fn usage(e: &mut Engine, name: &str) -> u64 {
    model(e, name)["usage"].as_u64().unwrap_or(u64::MAX)
}

/// Ticks the engine on wall time for `d` (so counted opens reach it).
fn tick_for(e: &mut Engine, d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ticks until `done` holds or 10 s passed; whether it held.
fn tick_until(e: &mut Engine, done: impl Fn(&mut Engine) -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        e.tick(now());
        if done(e) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Opens the engine with opens watched by `mechanism`; `None` (with the
/// skip reported) where the mechanism cannot run here.
fn engine_watching(test: &str, root: &Path, mechanism: &str, debounce_s: f64) -> Option<(Engine, tierd::store::StateStore)> {
    let cfg = opens_config(root, mechanism, debounce_s);
    let (e, store) = open(&cfg).expect("real machine opens");
    let st = e.open_watch_status();
    if st.mechanism != mechanism {
        skip(test, &format!("{mechanism} cannot run here: {}", st.reason));
        return None;
    }
    Some((e, store))
}

fn skip(test: &str, reason: &str) {
    skip::skip(test, reason);
}

/// Registers `name` from a 1 MB file in storage and waits until its file
/// is watched.
fn register(e: &mut Engine, root: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let file = root.join(format!("models/{name}.bin"));
    make_file(&file, MB, seed);
    e.register_json(now(), name, None, Some("storage"), Some(&file)).expect("register");
    let watched = tick_until(e, |e| e.open_watch_status().watched_files >= 1);
    assert!(watched, "the model's file is never watched: {:?}", e.open_watch_status());
    file
}

fn opens_count_debounce_and_promote(test: &str, mechanism: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let Some((mut e, _store)) = engine_watching(test, root.path(), mechanism, 0.5) else {
        return;
    };
    let file = register(&mut e, root.path(), "m", 3);
    assert_eq!(usage(&mut e, "m"), 0);

    // Three opens in one burst, well within the debounce: one access.
    for _ in 0..3 {
        cat(&file);
    }
    assert!(
        tick_until(&mut e, |e| usage(e, "m") >= 1),
        "opens never counted: {:?}",
        e.open_watch_status()
    );
    tick_for(&mut e, Duration::from_millis(200));
    assert_eq!(usage(&mut e, "m"), 1, "a burst of opens is one access: {:?}", e.open_watch_status());
    let st = e.open_watch_status();
    // inotify merges identical events still unread in its queue, so it may
    // see fewer than three; fanotify keeps one per opening process.
    let least = if mechanism == "fanotify" { 3 } else { 1 };
    assert!(st.opens_seen >= least, "{st:?}");
    assert_eq!(st.accesses_counted, 1, "{st:?}");

    // Each open after the debounce is another access; the default policy
    // reacts to them as to `access_model` and promotes the model.
    for i in 2..=3u64 {
        std::thread::sleep(Duration::from_millis(600));
        cat(&file);
        assert!(tick_until(&mut e, |e| usage(e, "m") >= i), "open {i} not counted");
    }
    let m = model(&mut e, "m");
    assert!(m["last_access"].as_f64().is_some(), "{m}");
    let jobs = e.jobs_json(now());
    let jobs = jobs["jobs"].as_array().cloned().unwrap_or_default();
    let job = jobs
        .iter()
        .find(|j| j["model_name"] == json!("m"))
        .unwrap_or_else(|| panic!("the opened model was not promoted: {jobs:?}"));
    assert_eq!(job["operation"], json!("promote"), "{job}");
    let id = job["job_id"].as_str().expect("job id").to_string();
    assert_eq!(wait(&mut e, &id, Duration::from_secs(30))["status"], json!("success"), "{job}");
    let tier = model(&mut e, "m")["tier"].clone();
    assert_ne!(tier, json!("storage"));

    // The move read the origin (a pin or a copy, with checksums): none of
    // those reads is counted.
    let before = usage(&mut e, "m");
    tick_for(&mut e, Duration::from_millis(700));
    assert_eq!(
        usage(&mut e, "m"),
        before,
        "tierd's own reads were counted: {:?}",
        e.open_watch_status()
    );
}

fn own_copies_are_not_counted_and_copies_are_watched(test: &str, mechanism: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let Some((mut e, _store)) = engine_watching(test, root.path(), mechanism, 0.3) else {
        return;
    };
    register(&mut e, root.path(), "c", 5);
    // A dir-tier copy (read, written, fsynced, verified by checksum), then
    // back to storage (read from the copy) and into RAM (pinned: read and
    // locked), with no open by anyone else.
    for to in ["nvme", "swap", "ram", "nvme"] {
        let s = move_and_wait(&mut e, "c", to);
        assert_eq!(s["status"], json!("success"), "{s}");
        tick_for(&mut e, Duration::from_millis(400));
    }
    assert_eq!(usage(&mut e, "c"), 0, "tierd's own reads were counted: {:?}", e.open_watch_status());
    let st = e.open_watch_status();
    assert_eq!(st.accesses_counted, 0, "{st:?}");

    // The model is served from its nvme copy now: a loader reading the
    // copy (as through a serve path) is an access too.
    let copies = find(&root.path().join("nvme"), "c.bin");
    let copy = copies
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no copy in nvme: {copies:?}"));
    assert!(
        tick_until(&mut e, |e| e.open_watch_status().watched_files >= 2),
        "the copy is never watched"
    );
    cat(copy);
    assert!(
        tick_until(&mut e, |e| usage(e, "c") == 1),
        "the copy's open was not counted: {:?}",
        e.open_watch_status()
    );

    // (The default policy may react to that access with a promotion: let
    // it end first.)
    let jobs = e.jobs_json(now());
    for j in jobs["jobs"].as_array().cloned().unwrap_or_default() {
        if let Some(id) = j["job_id"].as_str() {
            wait(&mut e, id, Duration::from_secs(30));
        }
    }
    // Unregistered, the model's files are no longer watched.
    let un = tierd::requests::unregister_model::UnregisterModel { model_name: "c".into() };
    tierd::requests::Command::apply(un, &mut e, now()).expect("unregister");
    assert!(
        tick_until(&mut e, |e| e.open_watch_status().watched_files == 0),
        "watches outlive the model: {:?}",
        e.open_watch_status()
    );
}

#[test]
fn fanotify_opens_count_debounce_and_promote() {
    opens_count_debounce_and_promote("fanotify_opens_count_debounce_and_promote", "fanotify");
}

#[test]
fn inotify_opens_count_debounce_and_promote() {
    opens_count_debounce_and_promote("inotify_opens_count_debounce_and_promote", "inotify");
}

#[test]
fn fanotify_own_reads_are_not_counted() {
    own_copies_are_not_counted_and_copies_are_watched("fanotify_own_reads_are_not_counted", "fanotify");
}

#[test]
fn inotify_own_reads_are_not_counted() {
    own_copies_are_not_counted_and_copies_are_watched("inotify_own_reads_are_not_counted", "inotify");
}

/// `observe_opens = false` watches nothing, and `health` says so; the
/// simulated backend reports it off with its reason.
#[test]
fn observe_opens_off_is_reported() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(root.path(), &root.path().join("swap"), "observe_opens = false\n");
    let (mut e, _store) = open(&cfg).expect("opens");
    let file = root.path().join("models/x.bin");
    make_file(&file, MB, 7);
    e.register_json(now(), "x", None, Some("storage"), Some(&file)).expect("register");
    cat(&file);
    tick_for(&mut e, Duration::from_millis(300));
    assert_eq!(usage(&mut e, "x"), 0);
    let st = e.open_watch_status();
    assert_eq!(st.mechanism, "off");
    assert!(st.reason.contains("observe_opens = false"), "{st:?}");

    let cfg = Config::seed_default();
    let (machine, _) = tierd::drivers::sim::simulated_machine(&cfg, false);
    let mut sim = Engine::new(cfg, machine, Box::new(tierd::optimizer::UsagePolicy), 0.0).expect("sim engine");
    let h: Value = serde_json::to_value(sim.open_watch_status()).expect("json");
    assert_eq!(h["mechanism"], json!("off"), "{h}");
    assert!(h["reason"].as_str().unwrap_or("").contains("simulated"), "{h}");
    sim.tick(1.0);
}

/// End to end: `tierd serve --backend real` with the default policy and
/// nothing but opens by other processes: `health` names the mechanism,
/// `model_info.usage` grows as `cat` reads the model, and the policy
/// places the model in RAM (the server applies an open at once: the
/// watcher wakes its ticker).
#[test]
fn the_server_counts_opens_and_promotes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let weights = root.join("models/tiny.gguf");
    make_file(&weights, 2 * MB, 11);
    let cfg = root.join("tierd.toml");
    let text = format!(
        "state_dir = {state:?}\nopen_debounce_s = 0.3\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 4.0\nreserved_gb = 0.5\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = root.join("state")
    );
    std::fs::write(&cfg, text).expect("config");
    let sock = root.join("tierd.sock");
    let cfg_arg = cfg.to_string_lossy().to_string();
    let args = ["--config", cfg_arg.as_str(), "--backend", "real", "--time-scale", "1"];
    let server = common::Server::socket(&sock, &args);
    let mut c = common::Client::connect(&sock);
    let h = c.req(r#"{"health": true}"#);
    let mech = h["open_watch"]["mechanism"].as_str().unwrap_or("").to_string();
    assert!(mech == "fanotify" || mech == "inotify", "{h}");
    assert!(!h["open_watch"]["reason"].as_str().unwrap_or("").is_empty(), "{h}");
    let r = c.req(&json!({"register_model": {"model_name": "tiny", "path": weights}}).to_string());
    assert_eq!(r["status"], "success", "{r}");
    let info = |c: &mut common::Client| c.req(r#"{"model_info": "tiny"}"#)["model"].clone();
    let watched = |c: &mut common::Client| c.req(r#"{"health": true}"#)["open_watch"]["watched_files"].as_u64();
    let t = Instant::now();
    while watched(&mut c) != Some(1) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 1..=3u64 {
        cat(&weights);
        let t = Instant::now();
        while info(&mut c)["usage"].as_u64() != Some(i) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            info(&mut c)["usage"].as_u64(),
            Some(i),
            "open {i}: {}",
            c.req(r#"{"health": true}"#)
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    let t = Instant::now();
    while info(&mut c)["tier"] != json!("ram") && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = info(&mut c);
    assert_eq!(m["tier"], json!("ram"), "{m}");
    // Its pin (tierd reading the file) counted nothing.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(info(&mut c)["usage"].as_u64(), Some(3));
    drop(c);
    server.terminate();
}
