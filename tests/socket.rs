//! The real binary over its Unix socket: many clients, socket file
//! handling, signals, and the CLI client.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Client, DEADLINE, Server, code};
use serde_json::{Value, json};

fn cli(socket: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run tierd client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn thirty_two_clients_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    let _server = Server::socket(&path, &[]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                for round in 0..5 {
                    let id = json!(format!("{i}-{round}"));
                    let st = c.req(&json!({"id": id, "tier_status": true}).to_string());
                    assert_eq!((&st["id"], &st["status"]), (&id, &json!("success")));
                    assert_eq!(st["tiers"]["ram"]["limit_gb"], json!(5.0));
                    let m = c.req(&json!({"id": i, "access_model": {"model_name": "bert-large"}}).to_string());
                    assert_eq!((&m["id"], &m["tier"]), (&json!(i), &json!("ram")), "{m}");
                    let e = c.req("{not json");
                    assert_eq!(code(&e), "INVALID_REQUEST");
                    // Pipelined: answered in order.
                    c.send_raw(b"{\"id\": \"a\", \"health\": true}\n{\"id\": \"b\", \"list_models\": {\"tier\": \"swap\"}}\n");
                    assert_eq!(c.recv()["id"], "a");
                    let b = c.recv();
                    assert_eq!((&b["id"], b["models"].as_array().map(Vec::len)), (&json!("b"), Some(2)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut c = Client::connect(&path);
    let info = c.req(r#"{"model_info": "bert-large"}"#);
    assert_eq!(info["model"]["usage"], json!(8 + 32 * 5), "every access counted once");
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::socket(&path, &[]);
    assert_eq!(Client::connect(&path).req(r#"{"health": true}"#)["healthy"], true);
    let err = server.stderr_with("stale");
    assert!(err.contains("stale"), "{err}");

    let out = Command::new(BIN)
        .args(["--socket", path.to_str().unwrap(), "serve"])
        .output()
        .expect("second server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    assert!(out.stdout.is_empty());
    // The first server is untouched.
    assert_eq!(Client::connect(&path).req(r#"{"health": true}"#)["healthy"], true);

    // A regular file is not replaced.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = Command::new(BIN)
        .args(["--socket", file.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn sigterm_answers_in_flight_requests_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    // Real time: the 1.2 s demotion is in flight when the signal arrives.
    let mut server = Server::socket(&path, &["--time-scale", "1"]);
    let mut c = Client::connect(&path);
    let mut idle = Client::connect(&path);
    assert_eq!(idle.req(r#"{"health": true}"#)["status"], "success");
    c.send_raw(b"{\"id\": 1, \"move_tier\": {\"model_name\": \"gpt-j-6b\", \"target_tier\": \"storage\", \"wait\": true}}\n");
    // The move is running before the signal.
    let until = Instant::now() + DEADLINE;
    loop {
        let jobs = idle.req(r#"{"list_jobs": true}"#);
        if jobs["jobs"].as_array().is_some_and(|j| j.iter().any(|j| j["status"] == "running")) {
            break;
        }
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(5));
    }
    server.terminate();
    let v = c.recv();
    assert_eq!((&v["id"], &v["status"]), (&json!(1), &json!("success")), "{v}");
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.stderr());
    assert!(!path.exists(), "socket file removed on shutdown");
    let err = server.stderr_with("SIGTERM");
    assert!(err.contains("SIGTERM"), "{err}");
}

#[test]
fn stdio_and_socket_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    let mut server = Server::socket(&path, &["--stdio"]);
    let mut c = Client::connect(&path);
    let m = c.req(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage", "wait": true}}"#);
    assert_eq!(m["status"], "success");
    // Both transports see the same engine.
    let v = server.req(r#"{"model_info": "t5-base"}"#);
    assert_eq!(v["model"]["tier"], "storage");
    server.close_stdin();
    assert!(server.wait_exit().success());
    assert!(!path.exists());
}

#[test]
fn cli_commands_talk_to_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    let _server = Server::socket(&path, &[]);

    let (rc, out, _) = cli(&path, &["status"]);
    assert_eq!(rc, 0);
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains("serving a simulated machine") && l.contains("policy tierd")),
        "status says which machine it serves: {out}"
    );
    assert!(
        out.contains("TIER") && out.contains("96%") && out.contains("bert-large") && out.contains("gpt-j-6b"),
        "{out}"
    );

    let (rc, out, _) = cli(&path, &["request", r#"{"health": true, "id": 3}"#]);
    assert_eq!(rc, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["id"], 3);
    let (rc, out, _) = cli(&path, &["request", r#"{"teleport": true}"#]);
    assert_eq!(rc, 1);
    assert!(out.contains("INVALID_REQUEST"), "{out}");

    let (rc, out, err) = cli(&path, &["move", "t5-base", "storage", "--wait"]);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("tier_demote_t5-base_"), "{out}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("tier_demote_t5-base_") && l.contains(": success after ")),
        "a piped wait ends with its outcome: {out}"
    );
    let (rc, _, err) = cli(&path, &["move", "nope", "ram"]);
    assert_eq!(rc, 1);
    assert!(err.contains("MODEL_NOT_FOUND"), "{err}");

    let (rc, out, _) = cli(&path, &["limits", "--ram-max", "6", "--swap-max", "12", "--ram-reserved", "1.5"]);
    assert_eq!(rc, 0);
    assert!(out.contains("ram_max_gb") && out.contains("changed"), "{out}");
    let (rc, _, err) = cli(&path, &["limits", "--set", "ram_max_gb=0.1"]);
    assert_eq!(rc, 1, "under the safety minimum");
    assert!(err.contains("INVALID_REQUEST"), "{err}");

    let (rc, out, _) = cli(&path, &["optimize", "--dry-run"]);
    assert_eq!(rc, 0);
    assert!(out.contains("gpt2-large"), "{out}");
    let (rc, out, _) = cli(&path, &["jobs"]);
    assert_eq!(rc, 0);
    assert!(out.contains("tier_demote_t5-base_") && out.contains("success"), "{out}");
    let (rc, out, _) = cli(&path, &["models", "--tier", "swap"]);
    assert_eq!(rc, 0);
    assert!(out.contains("gpt-j-6b") && !out.contains("bert-large"), "{out}");
    let (rc, out, _) = cli(&path, &["health"]);
    assert_eq!(rc, 0);
    assert!(out.contains("healthy: true"), "{out}");

    let missing = path.with_file_name("nobody.sock");
    let (rc, _, err) = cli(&missing, &["status"]);
    assert_eq!(rc, 1);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn serve_socket_without_a_path_uses_tierd_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.sock");
    let p = path.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--socket", "--time-scale", "50"])
        .env("TIERD_SOCKET", p)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(Instant::now() < until, "socket never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = Command::new(BIN).args(["health"]).env("TIERD_SOCKET", p).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy: true"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn config_file_interval_optimizes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tierd.toml");
    let text = format!("auto_optimize_interval_s = 1.0\n{}", tierd::config::DEFAULT_CONFIG_TOML);
    std::fs::write(&cfg, text).unwrap();
    let path = dir.path().join("tierd.sock");
    let _server = Server::socket(&path, &["--config", cfg.to_str().unwrap()]);
    let mut c = Client::connect(&path);
    let until = Instant::now() + DEADLINE;
    loop {
        let jobs = c.req(r#"{"list_jobs": true}"#);
        if jobs["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["origin"] == "auto_optimize"))
        {
            break;
        }
        assert!(Instant::now() < until, "no background optimization: {jobs}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn injected_faults_fail_and_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    let _server = Server::socket(&path, &["--fault-probability", "1"]);
    let mut c = Client::connect(&path);
    let v = c.req(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage", "wait": true, "max_retries": 1}}"#);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].is_string(), "{v}");
    assert_eq!(c.req(r#"{"model_info": "t5-base"}"#)["model"]["tier"], "ram");
    let (rc, _, err) = cli(&path, &["move", "whisper-small", "storage", "--wait"]);
    assert_eq!(rc, 1, "a failed move fails the CLI");
    // Piped (no terminal, so no bar): one final line with the outcome and its reason.
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tierd: tier_demote_whisper-small_") && last.contains(" failed: ") && last.contains("fault"),
        "{err}"
    );

    let out = Command::new(BIN).args(["serve", "--fault-probability", "2"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fault-probability"));
}

#[test]
fn ctrl_c_during_a_wait_says_the_move_continues_and_how_to_cancel_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierd.sock");
    // Slow moves: t5-base's 0.9 GB demotion takes about 3.6 s of wall time.
    let _server = Server::socket(&path, &["--time-scale", "0.05"]);
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&path)
        .args(["move", "t5-base", "storage", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first line comes once the move started, after the handler is in place.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("tier_demote_t5-base_"), "{first}");
    let job_id = first.trim().rsplit(' ').next().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sends SIGINT to the child we spawned (its pid is live until we wait on it).
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!("the move {job_id} continues")) && err.contains(&format!("tierd queue cancel {job_id}")),
        "{err}"
    );
    // The move does go on.
    let mut c = Client::connect(&path);
    let st = c.req(&format!(r#"{{"tier_job_status": "{job_id}"}}"#));
    assert!(st["status"] == "running" || st["status"] == "success", "{st}");
}
