//! `tierd bench`: round-trip latency and throughput of `tier_status` over the
//! Unix socket, against the floor this machine allows.
//!
//! In one run it starts tierd's socket server in-process and a minimal
//! blocking line-echo server (one thread per connection, answering each line
//! with a fixed response exactly as long as tierd's `tier_status` answer),
//! then drives each with closed-loop clients (each sends a request, waits for
//! the answer, repeats) on blocking std sockets, for a fixed duration.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::server::serve::{ServeOptions, bind_socket, build_shared, runtime, serve_with};

/// The request every client sends.
pub const REQUEST: &[u8] = b"{\"tier_status\": true}\n";

/// Options of `tierd bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Measured seconds per (server, client count) pair.
    pub seconds: f64,
    /// Client counts to measure.
    pub clients: Vec<usize>,
    /// Unmeasured warm-up before each measurement.
    pub warmup: Duration,
    /// Turns echo and tierd take, alternating, within `seconds` each.
    pub rounds: usize,
    /// tierd's connection loops (0 = connections on the main thread), as `serve --workers`.
    pub workers: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: 3.0,
            clients: vec![1, 8],
            warmup: Duration::from_millis(100),
            rounds: 5,
            workers: ServeOptions::default().workers,
        }
    }
}

/// Figures of one (server, client count) run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadResult {
    pub clients: usize,
    pub requests: u64,
    pub throughput: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start tierd: {0}")]
    Serve(String),
    #[error("{0}")]
    Invalid(String),
}

/// Drives `clients` closed-loop clients against `path` for `seconds`.
pub fn load(path: &Path, clients: usize, seconds: f64, warmup: Duration) -> Result<LoadResult, BenchError> {
    Ok(summarize(clients, seconds, drive(path, clients, seconds, warmup)?))
}

/// Round-trip latencies (ns) of `clients` closed-loop clients against
/// `path`, measured for `seconds` after `warmup`.
pub fn drive(path: &Path, clients: usize, seconds: f64, warmup: Duration) -> Result<Vec<u32>, BenchError> {
    let measure = Duration::from_secs_f64(seconds);
    let start = Instant::now() + Duration::from_millis(50);
    let (begin, end) = (start + warmup, start + warmup + measure);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let path = path.to_path_buf();
            thread::Builder::new()
                .name("bench-client".into())
                .spawn(move || -> std::io::Result<Vec<u32>> {
                    let stream = UnixStream::connect(&path)?;
                    let mut writer = stream.try_clone()?;
                    let mut reader = BufReader::new(stream);
                    let mut line = Vec::with_capacity(4096);
                    let mut lat = Vec::with_capacity(1 << 16);
                    while Instant::now() < start {
                        thread::sleep(Duration::from_millis(1));
                    }
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        writer.write_all(REQUEST)?;
                        line.clear();
                        if reader.read_until(b'\n', &mut line)? == 0 {
                            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed"));
                        }
                        if t0 >= begin {
                            lat.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        }
                    }
                    Ok(lat)
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut all: Vec<u32> = Vec::new();
    for h in handles {
        let lat = h.join().map_err(|_| BenchError::Invalid("a client thread panicked".into()))??;
        all.extend(lat);
    }
    Ok(all)
}

/// Throughput and latency figures of latencies measured over `seconds`.
pub fn summarize(clients: usize, seconds: f64, mut all: Vec<u32>) -> LoadResult {
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    LoadResult {
        clients,
        requests: all.len() as u64,
        throughput: all.len() as f64 / seconds,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        mean_us: all.iter().map(|x| f64::from(*x)).sum::<f64>() / all.len().max(1) as f64 / 1000.0,
    }
}

/// A minimal blocking line-echo server: answers every line with `response`.
/// Stops accepting when `stop` is set (and a connection wakes it).
pub fn echo_server(path: &Path, response: Vec<u8>, stop: Arc<AtomicBool>) -> std::io::Result<thread::JoinHandle<()>> {
    let listener = UnixListener::bind(path)?;
    let response = Arc::new(response);
    thread::Builder::new().name("echo-accept".into()).spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let response = Arc::clone(&response);
            let _ = thread::Builder::new().name("echo".into()).spawn(move || {
                let Ok(mut writer) = stream.try_clone() else { return };
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    line.clear();
                    if writer.write_all(&response).is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// A private temporary directory for the two sockets.
fn temp_dir() -> Result<PathBuf, BenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tierd-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Runs the whole benchmark and prints its report to stdout.
pub fn run(opts: &BenchOptions) -> Result<Vec<(LoadResult, LoadResult)>, BenchError> {
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) || opts.clients.contains(&0) {
        return Err(BenchError::Invalid(
            "--seconds must be positive and client counts at least 1".into(),
        ));
    }
    let dir = temp_dir()?;
    let result = run_in(&dir, opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, opts: &BenchOptions) -> Result<Vec<(LoadResult, LoadResult)>, BenchError> {
    let tierd_path = dir.join("tierd.sock");
    let echo_path = dir.join("echo.sock");

    // tierd, in-process, on its own runtime thread.
    let serve_opts = ServeOptions {
        socket: Some(tierd_path.clone()),
        stdio: false,
        workers: opts.workers,
        ..ServeOptions::default()
    };
    let shared = build_shared(&serve_opts).map_err(|e| BenchError::Serve(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let server_path = tierd_path.clone();
    let server = thread::Builder::new().name("tierd-server".into()).spawn(move || {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let sock = match bind_socket(&server_path) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let stop = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = serve_with(shared, Some(sock), &serve_opts, stop).await {
                tracing::error!("bench server: {e}");
            }
        });
    })?;
    ready_rx
        .recv()
        .map_err(|_| BenchError::Serve("server thread ended".into()))?
        .map_err(BenchError::Serve)?;

    // The echo server answers with a line exactly as long as tierd's.
    let sample = {
        let stream = UnixStream::connect(&tierd_path)?;
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream);
        w.write_all(REQUEST)?;
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        line
    };
    let response_len = sample.len();
    let stop_echo = Arc::new(AtomicBool::new(false));
    let echo = echo_server(&echo_path, sample, Arc::clone(&stop_echo))?;

    println!(
        "tierd bench: closed-loop clients sending {} for {} s per server and client count, in {} alternating rounds ({} ms warm-up each); response {} bytes; tierd workers: {}",
        String::from_utf8_lossy(REQUEST).trim_end(),
        opts.seconds,
        opts.rounds.max(1),
        opts.warmup.as_millis(),
        response_len,
        if opts.workers == 0 {
            "current-thread".to_string()
        } else {
            opts.workers.to_string()
        }
    );
    println!(
        "{:<7} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "server", "clients", "requests", "req/s", "p50 us", "p99 us", "p99.9 us", "mean us"
    );
    // Echo and tierd take turns in short rounds, so both see the same
    // background load (this machine is shared) rather than one getting a
    // quiet stretch and the other a busy one.
    let rounds = opts.rounds.max(1);
    let slice = opts.seconds / rounds as f64;
    let mut results = Vec::new();
    for &n in &opts.clients {
        let (mut echo_lat, mut tierd_lat) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            echo_lat.extend(drive(&echo_path, n, slice, opts.warmup)?);
            tierd_lat.extend(drive(&tierd_path, n, slice, opts.warmup)?);
        }
        let e = summarize(n, opts.seconds, echo_lat);
        print_row("echo", &e);
        let t = summarize(n, opts.seconds, tierd_lat);
        print_row("tierd", &t);
        results.push((t, e));
    }
    println!();
    for (t, e) in &results {
        let thr = t.throughput / e.throughput;
        let p99 = t.p99_us / e.p99_us;
        println!(
            "{} client(s): tierd/echo throughput {:.2} (target >= 0.70: {}), tierd/echo p99 {:.2} (target <= 2.00: {})",
            t.clients,
            thr,
            if thr >= 0.7 { "met" } else { "MISSED" },
            p99,
            if p99 <= 2.0 { "met" } else { "MISSED" }
        );
    }

    stop_echo.store(true, Ordering::Relaxed);
    let _ = UnixStream::connect(&echo_path);
    let _ = echo.join();
    let _ = stop_tx.send(());
    let _ = server.join();
    Ok(results)
}

fn print_row(name: &str, r: &LoadResult) {
    println!(
        "{:<7} {:>7} {:>10} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        name, r.clients, r.requests, r.throughput, r.p50_us, r.p99_us, r.p999_us, r.mean_us
    );
}
