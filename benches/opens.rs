//! The open watcher's costs (`src/drivers/opens.rs`), for each mechanism
//! that can run here: `cargo bench --bench opens` (add `-- --files N
//! --samples S` to change the sizes).
//!
//! - Setup: the time to watch `--files` files (10,000 by default; 1,000
//!   models of 10 files) from the hand-over of the list until every watch
//!   is in place, against a baseline in the same run: one `stat` of each
//!   file (what the once-a-second fault look costs). The resident memory
//!   the watcher's books add (RSS delta; the list itself is allocated
//!   before the first reading), and the machine-wide kernel slab delta
//!   (`Slab` in /proc/meminfo, which other processes move too: indicative).
//!   Then the time to drop every watch.
//! - Latency: from a child process's `open()` of a watched file to the
//!   counted access coming out of the watcher (what the engine takes at
//!   its next tick; the server wakes its ticker for it), p50/p99 over
//!   `--samples` opens of random files, against a baseline: the round trip
//!   of one line through a pipe to the same child and back (the cost of
//!   waking a blocked thread of another process, which the notification
//!   path cannot beat). The child stamps `CLOCK_MONOTONIC` just before its
//!   `open()`; the parent stamps the same clock when it receives the access.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tierd::config::OpenWatchMode;
use tierd::drivers::ModelFiles;
use tierd::drivers::opens::{OpenItem, OpenWatcher};

const CHILD_ENV: &str = "TIERD_OPENS_BENCH_CHILD";

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The child: for each path read on stdin, stamps the clock, opens and
/// closes the file, and writes the stamp; a line `ping` is answered with
/// the stamp of its reading (the pipe baseline).
fn child() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        if line == "ping" {
            let _ = writeln!(out, "{}", mono_ns());
        } else {
            let t = mono_ns();
            let _ = std::fs::File::open(&line);
            let _ = writeln!(out, "{t}");
        }
        let _ = out.flush();
    }
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn slab_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn make_models(root: &Path, files: usize) -> Vec<OpenItem> {
    let per_model = 10.min(files.max(1));
    let models = files.div_ceil(per_model);
    let mut items = Vec::with_capacity(models);
    for m in 0..models {
        let dir = root.join(format!("m{m:05}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..per_model.min(files - m * per_model) {
            std::fs::write(dir.join(format!("shard-{f:02}.safetensors")), b"x").expect("write");
        }
        let mf = ModelFiles::walk(&dir, 100).expect("walk");
        items.push(OpenItem {
            model: Arc::from(format!("m{m:05}")),
            files: Arc::new(mf),
            copy: None,
        });
    }
    items
}

fn wait_watched(w: &OpenWatcher, n: usize) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if w.status().watched_files == n {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn run(mode: OpenWatchMode, items: &[OpenItem], paths: &[PathBuf], samples: usize) {
    let name = format!("{mode:?}").to_lowercase();
    let rss0 = rss_bytes();
    let slab0 = slab_bytes();
    let mut w = match OpenWatcher::spawn(mode, 0.0) {
        Ok(w) => w,
        Err(e) => {
            println!("{name}: cannot run here: {e}");
            return;
        }
    };
    // Baseline: one stat of every file.
    let t = Instant::now();
    for p in paths {
        let _ = std::fs::metadata(p);
    }
    let stat_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    w.sync(items.to_vec());
    if !wait_watched(&w, paths.len()) {
        println!("{name}: not every file got watched: {:?}", w.status());
        return;
    }
    let setup_s = t.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0);
    let slab = slab_bytes() as i64 - slab0 as i64;
    println!(
        "{name}: watch {} files: {:.1} ms ({:.2} us/file; {:.1}x one stat of each, {:.1} ms); RSS +{:.2} MiB ({:.0} B/file); machine-wide Slab {:+.2} MiB",
        paths.len(),
        setup_s * 1e3,
        setup_s * 1e6 / paths.len() as f64,
        setup_s / stat_s,
        stat_s * 1e3,
        rss as f64 / 1048576.0,
        rss as f64 / paths.len() as f64,
        slab as f64 / 1048576.0
    );

    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut to = child.stdin.take().expect("stdin");
    let mut from = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut lat = Vec::with_capacity(samples);
    let mut pipe = Vec::with_capacity(samples);
    let mut missed = 0;
    for _ in 0..samples {
        // Baseline round trip.
        let t0 = mono_ns();
        writeln!(to, "ping").expect("write");
        to.flush().expect("flush");
        line.clear();
        from.read_line(&mut line).expect("read");
        pipe.push((mono_ns() - t0) as f64 / 1e3);

        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let p = &paths[(rng % paths.len() as u64) as usize];
        writeln!(to, "{}", p.display()).expect("write");
        to.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            if let Some(_a) = w.take(1).pop() {
                break Some(mono_ns());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::hint::spin_loop();
        };
        line.clear();
        from.read_line(&mut line).expect("read");
        let opened: u64 = line.trim().parse().expect("stamp");
        match got {
            Some(t) => lat.push(t.saturating_sub(opened) as f64 / 1e3),
            None => missed += 1,
        }
    }
    drop(to);
    let _ = child.wait();
    lat.sort_by(f64::total_cmp);
    pipe.sort_by(f64::total_cmp);
    println!(
        "{name}: open() -> counted access over {} opens: p50 {:.1} us, p99 {:.1} us (max {:.1}); pipe round trip p50 {:.1} us, p99 {:.1} us; ratio p50 {:.2}x; missed {missed}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        pct(&pipe, 0.5),
        pct(&pipe, 0.99),
        pct(&lat, 0.5) / pct(&pipe, 0.5)
    );

    let t = Instant::now();
    w.sync(Vec::new());
    wait_watched(&w, 0);
    println!("{name}: unwatch every file: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
}

/// The child process, fed paths on stdin.
struct Child {
    proc: std::process::Child,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
}

impl Child {
    fn spawn() -> Child {
        let exe = std::env::current_exe().expect("current exe");
        let mut proc = Command::new(exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let to = proc.stdin.take().expect("stdin");
        let from = BufReader::new(proc.stdout.take().expect("stdout"));
        Child { proc, to, from }
    }

    /// Has the child open `path`; the stamp it took just before.
    fn open(&mut self, path: &Path) -> u64 {
        writeln!(self.to, "{}", path.display()).expect("write");
        self.to.flush().expect("flush");
        let mut line = String::new();
        self.from.read_line(&mut line).expect("read");
        line.trim().parse().expect("stamp")
    }

    fn end(self) {
        drop(self.to);
        let mut p = self.proc;
        let _ = p.wait();
    }
}

fn e2e(models: usize, samples: usize) {
    use tierd::server::serve::{BackendKind, ServeOptions, build_shared, runtime, serve_with};
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let cfg = root.join("tierd.toml");
    let text = format!(
        "state_dir = {:?}\npolicy = \"usage\"\nopen_debounce_s = 0.0\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 1.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        root.join("state")
    );
    let mut text = text;
    let mut paths = Vec::with_capacity(models);
    for i in 0..models {
        let p = root.join(format!("models/m{i:04}.gguf"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"gguf").expect("write");
        text.push_str(&format!("[[models]]\nname = \"m{i:04}\"\nsize_gb = 0.0\npath = {p:?}\n"));
        paths.push(p);
    }
    std::fs::write(&cfg, text).expect("config");
    let opts = ServeOptions {
        config: Some(cfg),
        backend: Some(BackendKind::Real),
        stdio: false,
        socket: None,
        ..ServeOptions::default()
    };
    let shared = match build_shared(&opts) {
        Ok(s) => s,
        Err(e) => {
            println!("end to end: cannot start the real backend here: {e}");
            return;
        }
    };
    let mech = shared.lock().open_watch_status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_shared = shared.clone();
    let server = std::thread::spawn(move || {
        let rt = runtime().expect("runtime");
        rt.block_on(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            let _ = serve_with(server_shared, None, &opts, stop).await;
        });
    });
    let t = Instant::now();
    while shared.lock().open_watch_status().watched_files < models && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let usage = |i: usize| {
        let e = shared.lock();
        let st = e.state();
        st.model_id(&format!("m{i:04}"))
            .and_then(|id| st.model(id))
            .map(|m| m.usage.count)
            .unwrap_or(0)
    };
    let mut child = Child::spawn();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut lat = Vec::with_capacity(samples);
    let mut missed = 0;
    for _ in 0..samples {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % models as u64) as usize;
        let before = usage(i);
        let opened = child.open(&paths[i]);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if usage(i) > before {
                lat.push(mono_ns().saturating_sub(opened) as f64 / 1e3);
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            // A few microseconds between looks, so the ticker gets the lock.
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(3) {
                std::hint::spin_loop();
            }
        }
    }
    child.end();
    let _ = stop_tx.send(());
    let _ = server.join();
    lat.sort_by(f64::total_cmp);
    println!(
        "end to end ({}, {models} models, through the server): open() -> usage grown in the engine over {} opens: p50 {:.1} us, p99 {:.1} us (max {:.1}); missed {missed}",
        mech.mechanism,
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let files = arg("--files", 10_000);
    let samples = arg("--samples", 2_000);
    let root = tempfile::tempdir().expect("tempdir");
    let items = make_models(root.path(), files);
    let paths: Vec<PathBuf> = items.iter().flat_map(|i| i.paths()).collect();
    for mode in [OpenWatchMode::Fanotify, OpenWatchMode::Inotify] {
        run(mode, &items, &paths, samples);
    }
    e2e(arg("--e2e-models", 100), samples);
}
