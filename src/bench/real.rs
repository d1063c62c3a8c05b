//! The real backend's benchmark: on one generated file with its page cache
//! emptied before every run, promotion to RAM (through the engine and this
//! backend) against `cat FILE > /dev/null` and `vmtouch -t FILE`, and a
//! verified move between two `dir` tiers against `cp` (and `cp` + `sync`).
//!
//! Everything runs in the same process and the same directory; the methods
//! take turns run by run (so outside load falls on all alike), each figure
//! the median of `--reps` runs.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::drivers::{Machine, ModelFiles, sys};
use crate::optimizer::UsagePolicy;
use crate::server::open::open_real;
use crate::tiers::{Engine, JobStatus, MoveOptions, Registration};

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum RealError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    State(String),
}

/// Options of `tierd bench-real`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Directory to work in (a file of --size-mb and two copies of it are
    /// written there; it should be on the disk you want measured).
    #[arg(long, default_value = "/var/tmp/tierd-bench")]
    pub dir: PathBuf,
    /// Size of the generated model file, MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mb: u64,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Keep the work directory afterwards.
    #[arg(long)]
    pub keep: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            dir: PathBuf::from("/var/tmp/tierd-bench"),
            size_mb: 1024,
            reps: 3,
            keep: false,
        }
    }
}

/// One measured line.
#[derive(Debug, Clone)]
pub struct Measure {
    pub name: String,
    /// Median seconds, or why it was not measured.
    pub seconds: Result<f64, String>,
}

/// The results of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub bytes: u64,
    pub reps: usize,
    pub promotion: Vec<Measure>,
    pub copy: Vec<Measure>,
    /// Whether tierd's promotions locked the pages (else populated only).
    pub locked: bool,
    pub notes: Vec<String>,
}

impl BenchReport {
    fn mbs(&self, m: &Measure) -> Option<f64> {
        m.seconds.as_ref().ok().map(|s| self.bytes as f64 / 1e6 / s)
    }

    /// tierd's throughput over the named baseline's, where both were measured.
    pub fn ratio(&self, group: &[Measure], tierd: &str, base: &str) -> Option<f64> {
        let t = group.iter().find(|m| m.name == tierd).and_then(|m| self.mbs(m))?;
        let b = group.iter().find(|m| m.name == base).and_then(|m| self.mbs(m))?;
        Some(t / b)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "file: {} MiB, page cache emptied before each run, median of {} runs",
            self.bytes >> 20,
            self.reps
        )?;
        for (title, group) in [("promotion to RAM", &self.promotion), ("copy between dir tiers", &self.copy)] {
            writeln!(f, "\n{title}:")?;
            writeln!(f, "  {:<34} {:>9} {:>10}", "method", "seconds", "MB/s")?;
            for m in group {
                match &m.seconds {
                    Ok(s) => writeln!(f, "  {:<34} {:>9.3} {:>10.0}", m.name, s, self.bytes as f64 / 1e6 / s)?,
                    Err(why) => writeln!(f, "  {:<34} not measured: {why}", m.name)?,
                }
            }
        }
        writeln!(f)?;
        if let Some(r) = self.ratio(&self.promotion, PROMOTE, "cat FILE > /dev/null") {
            writeln!(f, "promotion / cat:      {r:.2}x (target >= 0.9)")?;
        }
        if let Some(r) = self.ratio(&self.promotion, PROMOTE, "vmtouch -t FILE") {
            writeln!(f, "promotion / vmtouch:  {r:.2}x")?;
        }
        if let Some(r) = self.ratio(&self.copy, COPY, "cp") {
            writeln!(f, "verified copy / cp:   {r:.2}x (target >= 0.9)")?;
        }
        if let Some(r) = self.ratio(&self.copy, COPY, "cp + fsync of the copy") {
            writeln!(f, "verified copy / cp+fsync: {r:.2}x")?;
        }
        writeln!(f, "pages locked by tierd: {}", self.locked)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

const PROMOTE: &str = "tierd promote storage->ram (mlock)";
const COPY: &str = "tierd verified move dir->dir";

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RealError + '_ {
    move |source| RealError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` of incompressible data to `path`, fsyncs it and empties its
/// page cache.
fn generate(path: &Path, bytes: u64) -> Result<(), RealError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n]).map_err(io_err(path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err(path))?;
    sys::drop_cache(path).map_err(io_err(path))
}

/// Flushes everything and empties the page cache of `paths`.
fn cold(paths: &[&Path]) {
    let _ = Command::new("sync").status();
    for p in paths {
        let _ = sys::drop_cache(p);
    }
    // The whole page cache too, where this process may.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// Waits (untimed) until background removals of old copies under `root`
/// have finished, so they do not load the disk during the next run.
fn settle(root: &Path) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        let busy = ["tier-a", "tier-b"].iter().any(|d| {
            std::fs::read_dir(root.join(d))
                .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains(".tierd-trash-")))
                .unwrap_or(false)
        });
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times one run of a shell command after emptying the caches of
/// `cold_paths`; `after` cleans up (untimed).
fn shell_once(script: &str, cold_paths: &[&Path], after: &dyn Fn()) -> Result<f64, String> {
    cold(cold_paths);
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(script).status();
    let dt = t.elapsed().as_secs_f64();
    after();
    match st {
        Ok(s) if s.success() => Ok(dt),
        Ok(s) => Err(format!("`{script}` exited with {s}")),
        Err(e) => Err(format!("cannot run `{script}`: {e}")),
    }
}

/// Per-method run times, collected round-robin so that load from outside
/// the benchmark falls on every method alike.
#[derive(Default)]
struct Series(Vec<(String, Result<Vec<f64>, String>)>);

impl Series {
    fn add(&mut self, name: &str, r: Result<f64, String>) {
        let i = match self.0.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.0.push((name.to_string(), Ok(Vec::new())));
                self.0.len() - 1
            }
        };
        let slot = &mut self.0[i].1;
        match (slot.as_mut(), r) {
            (Ok(v), Ok(t)) => v.push(t),
            (Ok(_), Err(e)) => *slot = Err(e),
            (Err(_), _) => {}
        }
    }

    fn measures(self) -> Vec<Measure> {
        self.0
            .into_iter()
            .map(|(name, r)| Measure {
                name,
                seconds: r.map(median),
            })
            .collect()
    }
}

/// Runs one move through the engine and waits for it; returns its seconds.
fn timed_move(engine: &mut Engine, model: &str, to: &str) -> Result<f64, RealError> {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let t = Instant::now();
    engine.tick(now());
    let started = engine
        .move_model(now(), model, to, &MoveOptions::default())
        .map_err(|e| RealError::State(format!("move of {model} to {to} refused: {e}")))?;
    loop {
        engine.tick(now());
        if engine.job_ended(&started.job_id) != Some(false) {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let dt = t.elapsed().as_secs_f64();
    let st = engine
        .job(now(), &started.job_id)
        .map_err(|e| RealError::State(format!("job vanished: {e}")))?;
    if st.status != JobStatus::Success {
        return Err(RealError::State(format!(
            "move of {model} to {to} did not succeed: {}",
            st.error.unwrap_or_default()
        )));
    }
    Ok(dt)
}

/// Runs the benchmark (see the module docs).
pub fn run(args: &BenchArgs) -> Result<BenchReport, RealError> {
    let reps = args.reps.max(1);
    let root = &args.dir;
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(io_err(root))?;
    }
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let bytes = args.size_mb << 20;
    let origin_dir = root.join("origin");
    std::fs::create_dir_all(&origin_dir).map_err(io_err(&origin_dir))?;
    let file = origin_dir.join("model.bin");
    generate(&file, bytes)?;
    let mut notes = Vec::new();
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok() {
        notes.push("page cache emptied before each run: posix_fadvise(DONTNEED) on the files and echo 1 > /proc/sys/vm/drop_caches".into());
    } else {
        notes.push("page cache emptied per file with posix_fadvise(DONTNEED) (drop_caches not permitted)".into());
    }

    let text = format!(
        "state_dir = {state:?}\nmax_single_model_gb = 1000.0\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 1000.0\nreserved_gb = 0.5\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"nvme\"\ndriver = \"dir\"\ncreate = true\npath = {a:?}\nmax_gb = 1000.0\naccess_s_per_gb = 0.3\n\
         [[tiers]]\nname = \"ssd\"\ndriver = \"dir\"\ncreate = true\npath = {b:?}\nmax_gb = 1000.0\naccess_s_per_gb = 0.5\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = root.join("state"),
        a = root.join("tier-a"),
        b = root.join("tier-b"),
    );
    let cfg = Config::from_toml(&text).map_err(|e| RealError::State(e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let machine = Machine::open(&cfg).map_err(RealError::State)?;
    let (mut engine, _store, _) = open_real(cfg, machine, Box::new(UsagePolicy), now).map_err(RealError::State)?;
    let files = ModelFiles::walk(&file, 16).map_err(RealError::State)?;
    let reg = Registration {
        name: "bench".into(),
        path: Some(file.clone()),
        files: Some(files),
        preferred_tier: Some("storage".into()),
        ..Registration::default()
    };
    engine.register(now, reg).map_err(|e| RealError::State(format!("register: {e}")))?;

    // ---- promotion to RAM, methods interleaved run by run
    let vmtouch_ok = Command::new("sh")
        .arg("-c")
        .arg("command -v vmtouch")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut series = Series::default();
    let mut locked = true;
    let cat = format!("cat '{}' > /dev/null", file.display());
    let vmtouch = format!("vmtouch -q -t '{}'", file.display());
    let evict = || {
        let _ = sys::drop_cache(&file);
    };
    for _ in 0..reps {
        series.add("cat FILE > /dev/null", shell_once(&cat, &[&file], &evict));
        if vmtouch_ok {
            series.add("vmtouch -t FILE", shell_once(&vmtouch, &[&file], &evict));
        } else {
            series.add("vmtouch -t FILE", Err("vmtouch is not installed (apt-get install vmtouch)".into()));
        }
        cold(&[&file]);
        series.add(PROMOTE, Ok(timed_move(&mut engine, "bench", "ram")?));
        let st = engine.tier_status();
        locked &= st.tier("ram").and_then(|t| t.details.get("locked")) == Some(&serde_json::json!(true));
        timed_move(&mut engine, "bench", "storage")?;
    }
    let promotion = series.measures();

    // ---- verified move between two dir tiers, against cp
    timed_move(&mut engine, "bench", "nvme")?;
    settle(root);
    let a_copy = root.join("tier-a").join("bench").join("model.bin");
    let b_copy = root.join("tier-b").join("bench").join("model.bin");
    let cp_dst = root.join("tier-b").join("cp.bin");
    let rm = || {
        let _ = std::fs::remove_file(&cp_dst);
        let _ = Command::new("sync").status();
    };
    let cp = format!("cp '{}' '{}'", a_copy.display(), cp_dst.display());
    let cp_sync = format!("cp '{}' '{}' && sync '{}'", a_copy.display(), cp_dst.display(), cp_dst.display());
    let mut series = Series::default();
    for _ in 0..reps {
        series.add("cp", shell_once(&cp, &[&a_copy], &rm));
        series.add("cp + fsync of the copy", shell_once(&cp_sync, &[&a_copy], &rm));
        cold(&[&a_copy]);
        series.add(COPY, Ok(timed_move(&mut engine, "bench", "ssd")?));
        settle(root);
        cold(&[&b_copy]);
        timed_move(&mut engine, "bench", "nvme")?;
        settle(root);
    }
    let copy = series.measures();
    drop(engine);
    if !args.keep {
        let _ = std::fs::remove_dir_all(root);
    }
    Ok(BenchReport {
        bytes,
        reps,
        promotion,
        copy,
        locked,
        notes,
    })
}
