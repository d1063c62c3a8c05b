//! The `llama-server` engine tier against the real router (llama.cpp's
//! `llama-server` in router mode, installed by `scripts/ci-deps.sh`), with
//! tiny GGUFs written by `scripts/tiny_gguf.py`. Each test starts its own
//! router on a free 127.0.0.1 port; without the binary or the venv they
//! say `skipped: <reason>`.

#[path = "real_support/mod.rs"]
mod real_support;
#[path = "skip/mod.rs"]
mod skip;
#[path = "tools/mod.rs"]
mod tools;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use real_support::*;
use serde_json::{Value, json};
use tierd::config::Config;
use tierd::drivers::engine::http::HttpClient;
use tierd::drivers::sys;
use tierd::tiers::{Engine, HistoryFilter, MoveOptions, Origin};

/// What a test needs: the binary and two tiny models.
struct Setup {
    bin: PathBuf,
    root: tempfile::TempDir,
    models: PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    let bin = match tools::llama_server() {
        Ok(b) => b,
        Err(e) => {
            skip::skip(test, &e);
            return None;
        }
    };
    let py = match tools::python_with("gguf") {
        Ok(p) => p,
        Err(e) => {
            skip::skip(test, &e);
            return None;
        }
    };
    let root = tempfile::tempdir().expect("tempdir");
    let models = root.path().join("models");
    std::fs::create_dir_all(&models).expect("models dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tiny_gguf.py");
    for (name, seed) in [("tiny-a", "1"), ("tiny-b", "2")] {
        let st = Command::new(&py)
            .arg(&script)
            .arg(models.join(format!("{name}.gguf")))
            .args(["--seed", seed, "--name", name])
            .status()
            .expect("run tiny_gguf.py");
        assert!(st.success(), "tiny_gguf.py failed");
    }
    Some(Setup { bin, root, models })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The router's argv (router mode: a models dir, no -m).
fn router_args(s: &Setup, port: u16, max: u32) -> Vec<String> {
    [
        s.bin.to_string_lossy().as_ref(),
        "--models-dir",
        s.models.to_string_lossy().as_ref(),
        "--models-max",
        &max.to_string(),
        "--no-models-autoload",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "-c",
        "128",
        "-t",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// A router the test started (its own process group: killed with its
/// children when dropped).
struct Router(Child);

impl Router {
    fn start(args: &[String]) -> Router {
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start llama-server");
        Router(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(port: u16) -> HttpClient {
    HttpClient::new(&format!("http://127.0.0.1:{port}"), false).expect("url")
}

/// Waits until the router answers `GET /models`.
fn wait_up(port: u16) {
    let c = client(port);
    let t = Instant::now();
    while c.get_json("/models", Duration::from_secs(1)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "router on port {port} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The router's status of model `id`.
fn router_status(port: u16, id: &str) -> String {
    let v = client(port).get_json("/models", Duration::from_secs(5)).expect("GET /models");
    v["data"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["id"] == json!(id)))
        .and_then(|m| m["status"]["value"].as_str())
        .unwrap_or("absent")
        .to_string()
}

fn config(s: &Setup, engine_tier: &str) -> Config {
    config_with(s.root.path(), &s.root.path().join("swap"), engine_tier)
}

fn engine_tier(port: u16, extra: &str) -> String {
    format!(
        "[[tiers]]\nname = \"gpu0\"\ndriver = \"llama-server\"\nurl = \"http://127.0.0.1:{port}\"\nmax_gb = 1.0\nmax_models = 4\npoll_s = 0.1\nload_timeout_s = 30\n{extra}"
    )
}

fn register(e: &mut Engine, s: &Setup, name: &str) -> PathBuf {
    let file = s.models.join(format!("{name}.gguf"));
    e.register_json(now(), name, None, Some("storage"), Some(&file)).expect("register");
    file
}

/// Ticks the engine until `done` holds of model `name`'s info (or `limit`).
fn tick_until(e: &mut Engine, name: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        e.tick(now());
        let m = model(e, name);
        if done(&m) || t.elapsed() > limit {
            return m;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tier_json(e: &mut Engine, tier: &str) -> Value {
    e.status_json(now())["tiers"][tier].clone()
}

/// Ticks until the engine tier is available (its first look answered).
fn wait_available(e: &mut Engine) -> Value {
    let t = Instant::now();
    loop {
        e.tick(now());
        let st = tier_json(e, "gpu0");
        if st["available"] == json!(true) || t.elapsed() > Duration::from_secs(20) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the router's children whose memory maps `file`.
fn children_mapping(router: u32, file: &Path) -> Vec<u32> {
    let file = std::fs::canonicalize(file).expect("canonical");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4, after the parenthesised command.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(router) {
            continue;
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.contains(&*file.to_string_lossy()) {
            out.push(pid);
        }
    }
    out
}

fn engine_jobs(e: &Engine, model: &str) -> Vec<tierd::tiers::JobView> {
    jobs_of(e, Origin::Engine, model)
}

/// The ended jobs of `model` with origin `origin`, newest first.
fn jobs_of(e: &Engine, origin: Origin, model: &str) -> Vec<tierd::tiers::JobView> {
    e.history(
        now(),
        &HistoryFilter {
            limit: 100,
            status: None,
            since: None,
        },
    )
    .into_iter()
    .filter(|j| j.origin == origin && j.model_name == model)
    .collect()
}

#[test]
fn a_move_loads_in_the_router_and_demotion_to_ram_unloads_and_keeps_the_file_locked() {
    let Some(s) = setup("real_llama::move_loads") else { return };
    let port = free_port();
    let router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "")));
    let file = register(&mut e, &s, "tiny-a");
    let st = wait_available(&mut e);
    assert_eq!(st["health"]["up"], json!(true), "{st}");

    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert_eq!(router_status(port, "tiny-a"), "loaded");
    let mapping = eventually(|| children_mapping(router.pid(), &file), |v| !v.is_empty());
    assert!(!mapping.is_empty(), "no child of the router maps {}", file.display());
    let m = model(&mut e, "tiny-a");
    assert_eq!(m["tier"], json!("gpu0"), "{m}");
    let info = e.model_json(now(), "tiny-a").expect("model_info")["model"].clone();
    assert_eq!(info["engine_load_time_s"]["count"], json!(1), "{info}");
    assert!(info["engine_load_time_s"]["last"].as_f64().is_some_and(|s| s > 0.0), "{info}");
    let split = info["engine_load_time_s"]["resident"]["count"].as_u64().unwrap_or(0)
        + info["engine_load_time_s"]["not_resident"]["count"].as_u64().unwrap_or(0);
    assert_eq!(split, 1, "{info}");
    let metrics = e.metrics_view(now());
    assert_eq!(metrics.engine_load_time_s.get("tiny-a").map(|l| l.all.count), Some(1));
    let tier = tier_json(&mut e, "gpu0");
    assert_eq!(tier["loaded"][0]["engine_id"], json!("tiny-a"), "{tier}");
    assert_eq!(tier["loaded"][0]["footprint_source"], json!("factor"), "{tier}");

    let locked_loaded = sys::self_status("VmLck").expect("VmLck");
    let st = move_and_wait(&mut e, "tiny-a", "ram");
    assert_eq!(st["status"], json!("success"), "{st}");
    // The move ends only once the router shows the model unloaded: asked
    // right when the job reports success, with no wait.
    assert_eq!(router_status(port, "tiny-a"), "unloaded");
    assert_eq!(model(&mut e, "tiny-a")["tier"], json!("ram"));
    let size = std::fs::metadata(&file).expect("meta").len();
    let locked = sys::self_status("VmLck").expect("VmLck");
    assert!(
        locked >= size,
        "VmLck {locked} < file size {size} after demotion to RAM (loaded: {locked_loaded})"
    );
    let (res, len) = sys::file_resident_fraction(&file).expect("mincore");
    assert_eq!(res, len, "the file stays resident");
    // Not counted as something the engine did on its own.
    assert!(engine_jobs(&e, "tiny-a").is_empty());
}

#[test]
fn a_direct_load_shows_in_tierd_within_two_seconds() {
    let Some(s) = setup("real_llama::direct_load") else { return };
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "")));
    register(&mut e, &s, "tiny-b");
    wait_available(&mut e);
    client(port)
        .post_json("/models/load", Some(&json!({"model": "tiny-b"})), Duration::from_secs(5))
        .expect("direct load");
    let t = Instant::now();
    let m = tick_until(&mut e, "tiny-b", Duration::from_secs(2), |m| m["tier"] == json!("gpu0"));
    assert_eq!(m["tier"], json!("gpu0"), "not followed within 2 s ({:?}): {m}", t.elapsed());
    let jobs = engine_jobs(&e, "tiny-b");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].target_tier.as_deref(), Some("gpu0"));
    e.check_invariants().expect("the books hold after an engine-side load");
}

#[test]
fn the_routers_event_stream_is_followed_between_polls() {
    let Some(s) = setup("real_llama::event_stream") else { return };
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    // A poll a minute: only `/models/sse` can tell tierd within seconds.
    let tier = format!(
        "[[tiers]]\nname = \"gpu0\"\ndriver = \"llama-server\"\nurl = \"http://127.0.0.1:{port}\"\nmax_gb = 1.0\npoll_s = 60\nload_timeout_s = 30\n"
    );
    let (mut e, _store, _) = engine(&config(&s, &tier));
    register(&mut e, &s, "tiny-a");
    wait_available(&mut e);
    let t = Instant::now();
    let st = loop {
        e.tick(now());
        let st = tier_json(&mut e, "gpu0");
        if st["events"]["connected"] == json!(true) || t.elapsed() > Duration::from_secs(10) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st["events"]["connected"], json!(true), "{st}");
    let c = client(port);
    c.post_json("/models/load", Some(&json!({"model": "tiny-a"})), Duration::from_secs(5))
        .expect("direct load");
    let m = tick_until(&mut e, "tiny-a", Duration::from_secs(10), |m| m["tier"] == json!("gpu0"));
    assert_eq!(
        m["tier"],
        json!("gpu0"),
        "an engine-side load not followed from the event stream: {m}"
    );
    c.post_json("/models/unload", Some(&json!({"model": "tiny-a"})), Duration::from_secs(5))
        .expect("direct unload");
    let m = tick_until(&mut e, "tiny-a", Duration::from_secs(10), |m| m["tier"] != json!("gpu0"));
    assert_ne!(
        m["tier"],
        json!("gpu0"),
        "an engine-side unload not followed from the event stream: {m}"
    );
    // A move through tierd ends on the router's events too.
    let m = tick_until(&mut e, "tiny-a", Duration::from_secs(10), |m| m["job_id"].is_null());
    assert!(m["job_id"].is_null(), "{m}");
    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert_eq!(router_status(port, "tiny-a"), "loaded");
    let st = tier_json(&mut e, "gpu0");
    assert!(st["events"]["events"].as_u64().unwrap_or(0) >= 2, "{st}");
    e.check_invariants().expect("the books hold");
}

#[test]
fn the_routers_own_eviction_is_noticed() {
    let Some(s) = setup("real_llama::eviction") else { return };
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 1));
    wait_up(port);
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "")));
    register(&mut e, &s, "tiny-a");
    register(&mut e, &s, "tiny-b");
    wait_available(&mut e);
    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    // Another client loads tiny-b: with --models-max 1 the router evicts
    // tiny-a on its own.
    client(port)
        .post_json("/models/load", Some(&json!({"model": "tiny-b"})), Duration::from_secs(5))
        .expect("direct load");
    // Noticed: out of the engine tier, and on into RAM ("unload to RAM
    // instead of disk"), its file resident.
    let a = tick_until(&mut e, "tiny-a", Duration::from_secs(10), |m| {
        m["tier"] == json!("ram") && m["job_id"].is_null()
    });
    assert_eq!(a["tier"], json!("ram"), "{a}");
    let (res, len) = sys::file_resident_fraction(&s.models.join("tiny-a.gguf")).expect("mincore");
    assert_eq!(res, len);
    let b = tick_until(&mut e, "tiny-b", Duration::from_secs(10), |m| m["tier"] == json!("gpu0"));
    assert_eq!(b["tier"], json!("gpu0"), "{b}");
    let jobs = engine_jobs(&e, "tiny-a");
    let evicted = jobs
        .iter()
        .find(|j| j.source_tier.as_deref() == Some("gpu0"))
        .expect("the eviction's job");
    assert!(evicted.reason.as_deref().is_some_and(|r| r.contains("on its own")), "{jobs:?}");
    assert!(jobs.iter().any(|j| j.target_tier.as_deref() == Some("ram")), "{jobs:?}");
    e.check_invariants().expect("the books hold after the engine's own moves");
}

#[test]
fn an_unload_that_fails_fails_the_move_and_the_model_stays_in_the_engine_tier() {
    let Some(s) = setup("real_llama::unload_fails") else { return };
    let port = free_port();
    let mut router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "")));
    register(&mut e, &s, "tiny-a");
    assert_eq!(wait_available(&mut e)["available"], json!(true));
    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    // The router dies right before the demotion: its unload cannot happen.
    router.kill();
    let st = move_and_wait(&mut e, "tiny-a", "ram");
    assert_eq!(st["status"], json!("failed"), "{st}");
    let msg = st["error"].to_string();
    assert!(msg.contains("gpu0") && msg.contains("let go"), "{st}");
    let m = model(&mut e, "tiny-a");
    assert_eq!(m["tier"], json!("gpu0"), "the model stays where it was: {m}");
    assert!(m["job_id"].is_null(), "{m}");
    let ram = tier_json(&mut e, "ram");
    assert_eq!(ram["models"], json!(0), "{ram}");
    // The RAM tier's pin taken for the move is released (rolled back).
    assert_eq!(ram["pinned_models"], json!([]), "{ram}");
}

#[test]
fn a_killed_router_makes_the_tier_unavailable_and_a_restart_recovers() {
    let Some(s) = setup("real_llama::killed_router") else { return };
    let port = free_port();
    let mut router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "")));
    register(&mut e, &s, "tiny-a");
    assert_eq!(wait_available(&mut e)["available"], json!(true));
    router.kill();
    let t = Instant::now();
    let mut st = tier_json(&mut e, "gpu0");
    while st["available"] != json!(false) && t.elapsed() < Duration::from_secs(10) {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
        st = tier_json(&mut e, "gpu0");
    }
    assert_eq!(st["available"], json!(false), "{st}");
    let reason = st["unavailable_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("down") || reason.contains("unreachable"), "{st}");
    assert!(st["health"]["consecutive_failures"].as_u64().is_some_and(|n| n >= 1), "{st}");
    // A move into it fails clearly.
    let r = e.move_model(now(), "tiny-a", "gpu0", &MoveOptions::default());
    match r {
        Err(err) => assert!(err.to_string().contains("gpu0") || err.to_string().contains("down"), "{err}"),
        Ok(started) => {
            let st = wait(&mut e, &started.job_id, Duration::from_secs(30));
            assert_eq!(st["status"], json!("failed"), "{st}");
        }
    }

    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let st = wait_available(&mut e);
    assert_eq!(st["available"], json!(true), "{st}");
    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert_eq!(router_status(port, "tiny-a"), "loaded");
}

#[test]
fn a_supervised_router_is_started_restarted_and_stopped() {
    let Some(s) = setup("real_llama::supervised") else { return };
    let port = free_port();
    let argv: Vec<String> = router_args(&s, port, 0);
    let cmd = format!("command = {}\n", serde_json::to_string(&argv).expect("argv"));
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, &cmd)));
    register(&mut e, &s, "tiny-a");
    let st = wait_available(&mut e);
    assert_eq!(st["available"], json!(true), "{st}");
    let pid = st["supervised"]["pid"].as_u64().expect("supervised pid") as i32;
    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");

    // SAFETY: kill(2) on the router tierd started for this test.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let t = Instant::now();
    let mut st = tier_json(&mut e, "gpu0");
    while !(st["supervised"]["restarts"].as_u64().is_some_and(|r| r >= 1) && st["available"] == json!(true))
        && t.elapsed() < Duration::from_secs(20)
    {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
        st = tier_json(&mut e, "gpu0");
    }
    assert!(st["supervised"]["restarts"].as_u64().is_some_and(|r| r >= 1), "{st}");
    assert_eq!(st["available"], json!(true), "{st}");
    // The restarted router has nothing loaded: tierd followed.
    let m = tick_until(&mut e, "tiny-a", Duration::from_secs(5), |m| m["tier"] == json!("ram"));
    assert_eq!(m["tier"], json!("ram"), "{m}");
    let new_pid = st["supervised"]["pid"].as_u64().expect("pid") as i32;
    drop(e);
    // Stopped at shutdown.
    let gone = eventually(|| Path::new(&format!("/proc/{new_pid}/stat")).exists(), |alive| !alive);
    assert!(!gone, "router {new_pid} still runs after the tier closed");
}

#[test]
fn failed_loads_roll_back_with_the_engines_message() {
    let Some(s) = setup("real_llama::failed_loads") else { return };
    // Garbage the router lists (a .gguf in its dir) but cannot load, and a
    // model whose file the router does not know.
    make_file(&s.models.join("bad.gguf"), 256 * 1024, 3);
    let outside = s.root.path().join("elsewhere/unknown.gguf");
    make_file(&outside, 64 * 1024, 4);
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "")));
    register(&mut e, &s, "bad");
    e.register_json(now(), "unknown", None, Some("storage"), Some(&outside))
        .expect("register");
    wait_available(&mut e);

    let locked_before = sys::self_status("VmLck").expect("VmLck");
    let st = move_and_wait(&mut e, "bad", "gpu0");
    assert_eq!(st["status"], json!("failed"), "{st}");
    let err = st.to_string();
    assert!(err.contains("exited"), "the router's failure is in the message: {st}");
    assert_eq!(model(&mut e, "bad")["tier"], json!("storage"));
    assert_ne!(router_status(port, "bad"), "loaded");

    let st = move_and_wait(&mut e, "unknown", "gpu0");
    assert_eq!(st["status"], json!("failed"), "{st}");
    assert!(st.to_string().contains("knows no model"), "{st}");
    assert_eq!(model(&mut e, "unknown")["tier"], json!("storage"));
    // The failed loads' pins were let go.
    let locked = eventually(|| sys::self_status("VmLck").expect("VmLck"), |v| *v <= locked_before);
    assert!(
        locked <= locked_before,
        "VmLck {locked} > {locked_before}: a failed load kept its pin"
    );
    // The tier is still up and serving.
    assert_eq!(tier_json(&mut e, "gpu0")["available"], json!(true));
}

#[test]
fn a_restarted_tierd_takes_back_what_the_router_still_has_loaded() {
    let Some(s) = setup("real_llama::restart") else { return };
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let cfg = config(&s, &engine_tier(port, ""));
    {
        let (mut e, store, _) = engine(&cfg);
        register(&mut e, &s, "tiny-a");
        register(&mut e, &s, "tiny-b");
        wait_available(&mut e);
        for m in ["tiny-a", "tiny-b"] {
            let st = move_and_wait(&mut e, m, "gpu0");
            assert_eq!(st["status"], json!("success"), "{st}");
        }
        save(&mut e, &store);
    }
    // While tierd is away, another client unloads tiny-b.
    client(port)
        .post_json("/models/unload", Some(&json!({"model": "tiny-b"})), Duration::from_secs(5))
        .expect("direct unload");
    let t = Instant::now();
    while router_status(port, "tiny-b") != "unloaded" && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        router_status(port, "tiny-a"),
        "loaded",
        "tierd's exit leaves the router's models loaded"
    );

    let (mut e, _store, _) = engine(&cfg);
    let b = tick_until(&mut e, "tiny-b", Duration::from_secs(5), |m| m["tier"] == json!("ram"));
    assert_eq!(b["tier"], json!("ram"), "{b}");
    assert_eq!(model(&mut e, "tiny-a")["tier"], json!("gpu0"));
    let tier = {
        let t = Instant::now();
        loop {
            e.tick(now());
            let st = tier_json(&mut e, "gpu0");
            if st["loaded"].as_array().is_some_and(|l| !l.is_empty()) || t.elapsed() > Duration::from_secs(5) {
                break st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(tier["loaded"][0]["model"], json!("tiny-a"), "{tier}");
    // Held again: a demotion unloads it.
    let st = move_and_wait(&mut e, "tiny-a", "storage");
    assert_eq!(st["status"], json!("success"), "{st}");
    let t = Instant::now();
    while router_status(port, "tiny-a") != "unloaded" && t.elapsed() < Duration::from_secs(10) {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(router_status(port, "tiny-a"), "unloaded");
}

#[test]
fn max_models_and_the_free_floor_unload_the_coldest_to_ram() {
    let Some(s) = setup("real_llama::limits") else { return };
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    // max_models = 1: a second load first unloads the other model to RAM.
    let (mut e, _store, _) = engine(&config(&s, &engine_tier(port, "").replace("max_models = 4", "max_models = 1")));
    let file_a = register(&mut e, &s, "tiny-a");
    register(&mut e, &s, "tiny-b");
    wait_available(&mut e);
    assert_eq!(move_and_wait(&mut e, "tiny-a", "gpu0")["status"], json!("success"));
    // A move over the limit is refused without make_room...
    let r = e.move_model(now(), "tiny-b", "gpu0", &MoveOptions::default());
    assert!(r.is_err_and(|e| e.to_string().contains("max_models") || format!("{e:?}").contains("ModelCountExceeded")));
    // ... and another client's load over it makes tierd unload the colder
    // model to RAM.
    client(port)
        .post_json("/models/load", Some(&json!({"model": "tiny-b"})), Duration::from_secs(5))
        .expect("direct load");
    let b = tick_until(&mut e, "tiny-b", Duration::from_secs(5), |m| m["tier"] == json!("gpu0"));
    assert_eq!(b["tier"], json!("gpu0"), "{b}");
    let a = tick_until(&mut e, "tiny-a", Duration::from_secs(5), |m| m["tier"] == json!("ram"));
    assert_eq!(a["tier"], json!("ram"), "{a}");
    let t = Instant::now();
    while router_status(port, "tiny-a") != "unloaded" && t.elapsed() < Duration::from_secs(10) {
        e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(router_status(port, "tiny-a"), "unloaded");
    assert_eq!(router_status(port, "tiny-b"), "loaded");
    let (res, len) = sys::file_resident_fraction(&file_a).expect("mincore");
    assert_eq!(res, len, "tiny-a stays resident in RAM");
    drop(e);
    // A fresh start: nothing loaded in the router (a new tierd would take
    // tiny-b back, rightly).
    client(port)
        .post_json("/models/unload", Some(&json!({"model": "tiny-b"})), Duration::from_secs(5))
        .expect("unload");
    let t = Instant::now();
    while router_status(port, "tiny-b") != "unloaded" && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }

    // A free floor: two footprints (1.2 x 469 KB each) leave less than
    // min_free_gb of the 1.5 MB budget, so the colder one is unloaded.
    let tier = engine_tier(port, "min_free_gb = 0.0005\n").replace("max_gb = 1.0", "max_gb = 0.0015");
    let root2 = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(root2.path(), &root2.path().join("swap"), &tier);
    let (mut e, _store, _) = engine(&cfg);
    register(&mut e, &s, "tiny-a");
    register(&mut e, &s, "tiny-b");
    wait_available(&mut e);
    // tiny-b is used (warmer) before both load.
    for _ in 0..3 {
        e.access(now(), "tiny-b").expect("access");
    }
    assert_eq!(move_and_wait(&mut e, "tiny-b", "gpu0")["status"], json!("success"));
    assert_eq!(move_and_wait(&mut e, "tiny-a", "gpu0")["status"], json!("success"));
    let a = tick_until(&mut e, "tiny-a", Duration::from_secs(5), |m| m["tier"] == json!("ram"));
    assert_eq!(a["tier"], json!("ram"), "the colder model is unloaded: {a}");
    assert_eq!(model(&mut e, "tiny-b")["tier"], json!("gpu0"));
    e.check_invariants().expect("the books hold under pressure");
}

/// The pins an engine tier keeps for its loaded models are RAM: they count
/// against the RAM tier's budget below it, once.
#[test]
fn the_engine_tiers_pins_count_against_the_ram_budget() {
    let Some(s) = setup("real_llama::ram_budget") else { return };
    let port = free_port();
    let _router = Router::start(&router_args(&s, port, 0));
    wait_up(port);
    let size = std::fs::metadata(s.models.join("tiny-a.gguf")).expect("tiny-a").len();
    // Room in RAM for one tiny model, not two.
    let ram_gb = size as f64 * 1.5 / 1e9;
    let text = format!(
        "state_dir = {state:?}\n{tier}\n[[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = {ram_gb}\nreserved_gb = 0.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = s.root.path().join("state"),
        tier = engine_tier(port, ""),
    );
    let cfg = Config::from_toml(&text).expect("config");
    let (mut e, _store, _) = engine(&cfg);
    register(&mut e, &s, "tiny-a");
    register(&mut e, &s, "tiny-b");
    wait_available(&mut e);

    let st = move_and_wait(&mut e, "tiny-a", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    e.tick(now());
    let ram = tier_json(&mut e, "ram");
    let held = ram["engine_held_gb"].as_f64().expect("engine_held_gb on the RAM tier");
    assert!(
        (held * 1e9 - size as f64).abs() < 2_000.0,
        "held {held} GB for a {size} B model: {ram}"
    );
    // tiny-b does not fit next to tiny-a's pinned pages.
    let r = e.move_model(now(), "tiny-b", "ram", &MoveOptions::default());
    let refused = match r {
        Err(err) => err.to_string(),
        Ok(s) => {
            let st = wait(&mut e, &s.job_id, Duration::from_secs(30));
            assert_ne!(st["status"], json!("success"), "tiny-b went to RAM over its budget: {st}");
            st.to_string()
        }
    };
    assert!(refused.contains("ram") || refused.contains("RAM"), "{refused}");
    assert_eq!(model(&mut e, "tiny-b")["tier"], json!("storage"));

    // tiny-a's own pin is not counted twice when it comes down to RAM.
    let st = move_and_wait(&mut e, "tiny-a", "ram");
    assert_eq!(st["status"], json!("success"), "{st}");
    e.tick(now());
    let ram = tier_json(&mut e, "ram");
    assert_eq!(ram["engine_held_gb"], json!(0.0), "{ram}");

    // Loading tiny-b into the engine from storage pins it: RAM is now over
    // budget, and its coldest model (tiny-a) goes on down.
    let st = move_and_wait(&mut e, "tiny-b", "gpu0");
    assert_eq!(st["status"], json!("success"), "{st}");
    let m = tick_until(&mut e, "tiny-a", Duration::from_secs(20), |m| m["tier"] == json!("storage"));
    assert_eq!(
        m["tier"],
        json!("storage"),
        "RAM over budget was not relieved: {}",
        tier_json(&mut e, "ram")
    );
    let pressure = jobs_of(&e, Origin::Pressure, "tiny-a");
    assert_eq!(pressure.len(), 1, "{pressure:?}");
    e.check_invariants().expect("the books hold");
}
