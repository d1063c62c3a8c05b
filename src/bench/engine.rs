//! `tierd bench-engine`: the llama-server engine tier against the router
//! itself, in one run.
//!
//! 1. Overhead: a load through tierd (`move_model` into the engine tier,
//!    until the job succeeds) against a direct `POST /models/load` polled
//!    on `GET /models` until `loaded` (polled every [`LOAD_POLL`], as
//!    tierd's load does), on the same router and the same tiny model,
//!    turns alternating; medians of `--reps`.
//! 2. The point of tierd: time to `loaded` (direct load, same polling) of a
//!    generated ~`--size-mib` GGUF with its file pinned in RAM by tierd
//!    (the model in the `ram` tier), against after its page cache was
//!    emptied (`posix_fadvise(DONTNEED)`, the model in storage); `--reps`
//!    each, alternating; medians and their ratio.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::Config;
use crate::drivers::engine::LOAD_POLL;
use crate::drivers::engine::http::HttpClient;
use crate::drivers::{Machine, ModelFiles, sys};
use crate::optimizer::UsagePolicy;
use crate::server::open::open_real;
use crate::tiers::{Engine, JobStatus, MoveOptions, Registration};

/// Options of `tierd bench-engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchArgs {
    /// The llama-server binary (router mode).
    #[arg(long)]
    pub llama_server: PathBuf,
    /// A Python with `gguf` and `numpy` (the CI venv's).
    #[arg(long, default_value = "/var/cache/tierd-ci/venv/bin/python")]
    pub python: PathBuf,
    /// The GGUF writer.
    #[arg(long, default_value = "scripts/tiny_gguf.py")]
    pub script: PathBuf,
    /// Work directory (models, state).
    #[arg(long, default_value = "/var/tmp/tierd-bench-engine")]
    pub dir: PathBuf,
    /// Size of the large model, MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Runs of each measurement.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Router port on 127.0.0.1.
    #[arg(long, default_value_t = 18977)]
    pub port: u16,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct EngineBenchReport {
    pub reps: usize,
    pub direct_s: Vec<f64>,
    pub tierd_s: Vec<f64>,
    pub big_bytes: u64,
    pub pinned_s: Vec<f64>,
    pub cold_s: Vec<f64>,
    pub pinned_locked: bool,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl fmt::Display for EngineBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, t) = (median(&self.direct_s), median(&self.tierd_s));
        writeln!(f, "llama-server engine tier, medians of {} runs", self.reps)?;
        writeln!(f, "load of a tiny model, direct POST /models/load: {:.2} ms", d * 1e3)?;
        writeln!(f, "the same load through tierd (move into the tier): {:.2} ms", t * 1e3)?;
        writeln!(f, "overhead: {:+.2} ms (target <= 5 ms)", (t - d) * 1e3)?;
        let (p, c) = (median(&self.pinned_s), median(&self.cold_s));
        writeln!(f, "time to loaded, {} MiB model:", self.big_bytes >> 20)?;
        writeln!(
            f,
            "  files pinned in RAM by tierd{}: {:.1} ms",
            if self.pinned_locked {
                " (mlocked)"
            } else {
                " (populated, not locked)"
            },
            p * 1e3
        )?;
        writeln!(f, "  after emptying the page cache: {:.1} ms", c * 1e3)?;
        writeln!(f, "  cold / pinned: {:.2}x", c / p)?;
        writeln!(f, "raw direct ms: {:?}", self.direct_s.iter().map(|s| s * 1e3).collect::<Vec<_>>())?;
        writeln!(f, "raw tierd ms: {:?}", self.tierd_s.iter().map(|s| s * 1e3).collect::<Vec<_>>())?;
        writeln!(f, "raw pinned ms: {:?}", self.pinned_s.iter().map(|s| s * 1e3).collect::<Vec<_>>())?;
        writeln!(f, "raw cold ms: {:?}", self.cold_s.iter().map(|s| s * 1e3).collect::<Vec<_>>())
    }
}

/// The router, killed when dropped.
struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(c: &HttpClient, id: &str) -> Result<String, String> {
    let v = c.get_json("/models", Duration::from_secs(5)).map_err(|e| e.to_string())?;
    Ok(v["data"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["id"] == json!(id)))
        .and_then(|m| m["status"]["value"].as_str())
        .unwrap_or("absent")
        .to_string())
}

fn wait_status(c: &HttpClient, id: &str, want: &str) -> Result<(), String> {
    let t = Instant::now();
    while status(c, id)? != want {
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("{id} not {want} after 120 s"));
        }
        std::thread::sleep(LOAD_POLL);
    }
    Ok(())
}

/// A direct load, timed until the router says `loaded`.
fn direct_load(c: &HttpClient, id: &str) -> Result<f64, String> {
    let t = Instant::now();
    c.post_json("/models/load", Some(&json!({ "model": id })), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    wait_status(c, id, "loaded")?;
    Ok(t.elapsed().as_secs_f64())
}

fn direct_unload(c: &HttpClient, id: &str) -> Result<(), String> {
    c.post_json("/models/unload", Some(&json!({ "model": id })), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    wait_status(c, id, "unloaded")
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Moves `model` to `to` and ticks until the job ends; its wall time.
fn tierd_move(e: &mut Engine, model: &str, to: &str) -> Result<f64, String> {
    let t = Instant::now();
    e.tick(now());
    let s = e.move_model(now(), model, to, &MoveOptions::default()).map_err(|e| e.to_string())?;
    loop {
        e.tick(now());
        if e.job_ended(&s.job_id) == Some(true) {
            let view = e.job(now(), &s.job_id).map_err(|e| e.to_string())?;
            if view.status == JobStatus::Success {
                return Ok(t.elapsed().as_secs_f64());
            }
            return Err(format!("move of {model} to {to}: {:?} {:?}", view.status, view.error));
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("move of {model} to {to} did not end"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Lets the tier's poller (every 0.1 s) take a look after a direct load
/// and unload before the engine ticks again: the load it may have seen is
/// then stale and dropped, and tierd's books stay where they were.
fn settle(e: &mut Engine) {
    std::thread::sleep(Duration::from_millis(250));
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(50) {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Tier `name`'s `tier_status` line as JSON.
fn tier_details(e: &Engine, name: &str) -> serde_json::Map<String, Value> {
    let view = e.tier_status();
    view.tiers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, t)| serde_json::to_value(t).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
}

fn gguf(args: &EngineBenchArgs, path: &Path, size_mib: u64, seed: u32) -> Result<(), String> {
    let mut cmd = Command::new(&args.python);
    cmd.arg(&args.script).arg(path).args(["--seed", &seed.to_string()]);
    if size_mib > 0 {
        cmd.args(["--size-mib", &size_mib.to_string()]);
    }
    let st = cmd.status().map_err(|e| format!("{}: {e}", args.python.display()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {st}", args.script.display()))
    }
}

/// Runs the benchmark.
pub fn run(args: &EngineBenchArgs) -> Result<EngineBenchReport, String> {
    let reps = args.reps.max(1);
    let models = args.dir.join("models");
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&models).map_err(|e| format!("{}: {e}", models.display()))?;
    let (tiny, big) = (models.join("tiny.gguf"), models.join("big.gguf"));
    gguf(args, &tiny, 0, 1)?;
    gguf(args, &big, args.size_mib, 2)?;
    let big_bytes = std::fs::metadata(&big).map_err(|e| e.to_string())?.len();

    let router = Router(
        Command::new(&args.llama_server)
            .args(["--models-dir"])
            .arg(&models)
            .args(["--models-max", "0", "--no-models-autoload", "--host", "127.0.0.1"])
            .args(["--port", &args.port.to_string(), "-c", "128", "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", args.llama_server.display()))?,
    );
    let url = format!("http://127.0.0.1:{}", args.port);
    let c = HttpClient::new(&url, false)?;
    let t = Instant::now();
    while c.get_json("/models", Duration::from_secs(1)).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("router did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = format!(
        "state_dir = {state:?}\nmax_single_model_gb = 100.0\n\
         [[tiers]]\nname = \"gpu0\"\ndriver = \"llama-server\"\nurl = \"{url}\"\nmax_gb = 100.0\npoll_s = 0.1\nload_timeout_s = 120\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 100.0\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\n",
        state = args.dir.join("state"),
    );
    let cfg = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let machine = Machine::open(&cfg)?;
    let (mut e, _store, _) = open_real(cfg.clone(), machine, Box::new(UsagePolicy), now())?;
    for (name, path) in [("tiny", &tiny), ("big", &big)] {
        let files = ModelFiles::walk(path, 16)?;
        let reg = Registration {
            name: name.into(),
            path: Some(path.clone()),
            files: Some(files),
            preferred_tier: Some("storage".into()),
            ..Registration::default()
        };
        e.register(now(), reg).map_err(|e| format!("register {name}: {e}"))?;
    }
    // Wait for the tier's first look at the router.
    let t = Instant::now();
    loop {
        e.tick(now());
        if tier_details(&e, "gpu0").get("available") == Some(&Value::Bool(true)) {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err("the engine tier did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // 1. Overhead. A warm-up of each first.
    direct_load(&c, "tiny")?;
    direct_unload(&c, "tiny")?;
    settle(&mut e);
    let (mut direct_s, mut tierd_s) = (Vec::new(), Vec::new());
    tierd_move(&mut e, "tiny", "ram")?;
    for _ in 0..=reps {
        settle(&mut e);
        tierd_s.push(tierd_move(&mut e, "tiny", "gpu0")?);
        tierd_move(&mut e, "tiny", "ram")?;
        wait_status(&c, "tiny", "unloaded")?;
        settle(&mut e);
        direct_s.push(direct_load(&c, "tiny")?);
        direct_unload(&c, "tiny")?;
    }
    // The first of each was the warm-up.
    tierd_s.remove(0);
    direct_s.remove(0);

    // 2. Pinned against cold.
    let (mut pinned_s, mut cold_s) = (Vec::new(), Vec::new());
    let mut pinned_locked = true;
    for _ in 0..reps {
        tierd_move(&mut e, "big", "ram")?;
        let tier = tier_details(&e, "ram");
        pinned_locked &= tier.get("locked") == Some(&Value::Bool(true));
        pinned_s.push(direct_load(&c, "big")?);
        direct_unload(&c, "big")?;
        settle(&mut e);
        tierd_move(&mut e, "big", "storage")?;
        // The unpin runs on a thread of its own: wait until the pages can go.
        std::thread::sleep(Duration::from_millis(300));
        sys::drop_cache(&big).map_err(|e| e.to_string())?;
        cold_s.push(direct_load(&c, "big")?);
        direct_unload(&c, "big")?;
        settle(&mut e);
    }
    drop(e);
    drop(router);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(EngineBenchReport {
        reps,
        direct_s,
        tierd_s,
        big_bytes,
        pinned_s,
        cold_s,
        pinned_locked,
    })
}
