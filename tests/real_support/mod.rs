//! Shared helpers of the real-backend tests: configurations on temporary
//! directories, generated model files, and driving the engine on wall-clock
//! time.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tierd::config::Config;
use tierd::drivers::Machine;
use tierd::drivers::gpu::GpuProbe;
use tierd::drivers::machine::ReconcileReport;
use tierd::optimizer::UsagePolicy;
use tierd::server::open::open_real;
use tierd::store::StateStore;
use tierd::tiers::{Engine, MoveOptions, Policy};

#[path = "../engine_api/mod.rs"]
mod engine_api;
pub use engine_api::Wire;

pub const MB: u64 = 1 << 20;

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A config with `ram` (pagecache), `nvme` and `swap` (dir tiers under
/// `root`) and `storage`, state in `root/state`.
pub fn config(root: &Path) -> Config {
    config_with(root, &root.join("swap"), "")
}

/// As [`config`], with the swap tier at `swap` and extra TOML appended.
pub fn config_with(root: &Path, swap: &Path, extra_tiers: &str) -> Config {
    let text = format!(
        "state_dir = {state:?}\nmax_single_model_gb = 100.0\n{extra_tiers}\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 8.0\nreserved_gb = 0.5\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"nvme\"\ndriver = \"dir\"\ncreate = true\npath = {nvme:?}\nmax_gb = 8.0\naccess_s_per_gb = 0.3\n\
         [[tiers]]\nname = \"swap\"\ndriver = \"dir\"\ncreate = true\npath = {swap:?}\nmax_gb = 8.0\naccess_s_per_gb = 0.5\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = root.join("state"),
        nvme = root.join("nvme"),
    );
    Config::from_toml(&text).expect("test config parses")
}

/// An engine on the real backend, with the state store and what start-up
/// reconciliation did.
pub fn engine(cfg: &Config) -> (Engine, StateStore, ReconcileReport) {
    try_engine(cfg).expect("real machine opens")
}

/// As [`engine`], or why it could not open.
pub fn try_engine(cfg: &Config) -> Result<(Engine, StateStore, ReconcileReport), String> {
    try_engine_with_gpu(cfg, GpuProbe::open)
}

/// As [`try_engine`], with NVML opened by `gpu`.
pub fn try_engine_with_gpu(
    cfg: &Config,
    gpu: impl FnOnce() -> GpuProbe + 'static,
) -> Result<(Engine, StateStore, ReconcileReport), String> {
    try_engine_with(cfg, gpu, Box::new(UsagePolicy))
}

/// As [`try_engine_with_gpu`], under `policy`.
pub fn try_engine_with(
    cfg: &Config,
    gpu: impl FnOnce() -> GpuProbe + 'static,
    policy: Box<dyn Policy>,
) -> Result<(Engine, StateStore, ReconcileReport), String> {
    let machine = Machine::open_with_gpu(cfg, gpu)?;
    open_real(cfg.clone(), machine, policy, now())
}

/// Saves the engine's state as the server does (snapshot, write, then the
/// releases it allows).
pub fn save(e: &mut Engine, store: &StateStore) {
    let snap = e.snapshot(now());
    store.save(&snap, now()).expect("save state");
    e.saved(snap.epoch);
}

/// Writes a file of `bytes` pseudo-random bytes (seeded), fsynced.
pub fn make_file(path: &Path, bytes: u64, seed: u64) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    let mut f = std::fs::File::create(path).expect("create model file");
    let mut buf = vec![0u8; 4 << 20];
    let mut x = seed | 1;
    let mut left = bytes;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n]).expect("write model file");
        left -= n as u64;
    }
    f.sync_all().expect("fsync model file");
}

pub fn hash(path: &Path) -> String {
    tierd::drivers::copy::hash_file(path).expect("hash")
}

/// Ticks the engine on wall-clock time until job `id` ends; its status.
pub fn wait(e: &mut Engine, id: &str, timeout: Duration) -> Value {
    let t = Instant::now();
    loop {
        e.tick(now());
        if e.job_ended(id) != Some(false) {
            return e.job_json(now(), id).expect("job status");
        }
        assert!(
            t.elapsed() < timeout,
            "job {id} did not end in {timeout:?}: {}",
            e.job_json(now(), id).expect("status")
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Ticks the engine on wall-clock time, saving its state as the server
/// does, until `done` holds of it (at most `limit`); whether it did.
pub fn tick_until(e: &mut Engine, store: &StateStore, limit: Duration, done: impl Fn(&mut Engine) -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        e.tick(now());
        save(e, store);
        if done(e) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The tier that serves `model` now.
pub fn tier_of(e: &mut Engine, model: &str) -> String {
    e.model_json(now(), model).expect("model_info")["model"]["tier"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits until a move tierd started of its own of `model` ended (a model an
/// engine dropped goes on to the RAM tier), then moves it to `to` and ticks
/// (saving) until that move ends; the job's final status.
pub fn move_when_idle(e: &mut Engine, store: &StateStore, limit: Duration, model: &str, to: &str) -> Value {
    assert!(
        tick_until(e, store, limit, |e| e
            .model_json(now(), model)
            .is_ok_and(|v| v["model"]["job_id"].is_null())),
        "{model} is still moving"
    );
    let s = e.move_model(now(), model, to, &MoveOptions::default()).expect("move accepted");
    let id = s.job_id.clone();
    assert!(
        tick_until(e, store, limit, |e| e.job_ended(&id) != Some(false)),
        "job {id} did not end"
    );
    e.job_json(now(), &id).expect("job status")
}

/// Starts a move and waits for it.
pub fn move_and_wait(e: &mut Engine, model: &str, to: &str) -> Value {
    e.tick(now());
    let s = e.move_model(now(), model, to, &MoveOptions::default()).expect("move accepted");
    wait(e, &s.job_id, Duration::from_secs(120))
}

pub fn model(e: &mut Engine, name: &str) -> Value {
    e.model_json(now(), name).expect("model_info")["model"].clone()
}

/// Every entry (recursively) under `dir` whose name contains `needle`.
pub fn find(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().contains(needle)) {
                out.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Reads `read` until `done` holds of it or 10 s passed; the last reading.
pub fn eventually<T>(read: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let t = Instant::now();
    loop {
        let v = read();
        if done(&v) || t.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
