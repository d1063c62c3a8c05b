//! `llama-server -m "$(tierd path m)"` with a real llama-server: a tiny
//! GGUF model (written by `scripts/tiny_gguf.py`) is registered with
//! `tierd register`, moved into a `dir` tier, and llama-server loads it
//! through its serve path.

mod common;
mod skip;
mod tools;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server};
use serde_json::Value;

fn config(root: &Path) -> String {
    format!(
        r#"
state_dir = "{root}/state"
policy = "usage"
[[tiers]]
name = "ram"
driver = "pagecache"
max_gb = 4.0
reserved_gb = 0.5
[[tiers]]
name = "swap"
driver = "dir"
path = "{root}/swap"
max_gb = 4.0
[[tiers]]
name = "storage"
driver = "storage"
"#,
        root = root.display()
    )
}

fn tierd(sock: &Path, cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tierd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// One HTTP/1.0 GET; the status code and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

#[test]
fn llama_server_loads_a_model_through_its_serve_path() {
    let (py, llama) = match (tools::python_with("gguf"), tools::llama_server()) {
        (Ok(py), Ok(l)) => (py, l),
        (Err(e), _) | (_, Err(e)) => return skip::skip("llama_server_loads_a_model_through_its_serve_path", &e),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canon");
    std::fs::create_dir_all(root.join("models")).expect("mkdir");
    std::fs::create_dir_all(root.join("swap")).expect("mkdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tiny_gguf.py");
    let made = Command::new(&py)
        .arg(&script)
        .arg(root.join("models/tiny.gguf"))
        .status()
        .expect("run tiny_gguf.py");
    assert!(made.success(), "tiny_gguf.py failed");
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, config(&root)).expect("write");
    let sock = root.join("tierd.sock");
    let _server = Server::socket(
        &sock,
        &["--config", cfg.to_str().expect("utf-8"), "--backend", "real", "--time-scale", "1"],
    );
    let (code, out) = tierd(&sock, &root.join("models"), &["register", "tiny", "tiny.gguf", "--tier", "swap"]);
    assert_eq!(code, 0, "{out}");
    // Wait for the move into swap.
    let t = Instant::now();
    loop {
        let (_, info) = tierd(&sock, &root, &["info", "tiny", "--json"]);
        let v: Value = serde_json::from_str(info.trim()).unwrap_or(Value::Null);
        if v["model"]["tier"] == "swap" && v["model"]["status"] == "ready" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never reached swap: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, path) = tierd(&sock, &root, &["path", "tiny"]);
    assert_eq!(code, 0, "{path}");
    let path = path.trim().to_string();
    let target = std::fs::read_link(&path).expect("serve path is a link");
    assert!(target.starts_with(root.join("swap")), "{}", target.display());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let log = std::fs::File::create(root.join("llama.log")).expect("log");
    let mut llama = Command::new(&llama)
        .args([
            "-m",
            &path,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "64",
            "-t",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn llama-server");
    let t = Instant::now();
    let mut health = None;
    while t.elapsed() < Duration::from_secs(60) {
        if let Some(r) = get(port, "/health")
            && r.0 == 200
        {
            health = Some(r);
            break;
        }
        if let Ok(Some(status)) = llama.try_wait() {
            panic!(
                "llama-server exited ({status}): {}",
                std::fs::read_to_string(root.join("llama.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let props = get(port, "/props");
    let _ = llama.kill();
    let _ = llama.wait();
    assert!(
        health.is_some(),
        "llama-server never became healthy: {}",
        std::fs::read_to_string(root.join("llama.log")).unwrap_or_default()
    );
    let (code, body) = props.expect("props");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("props json");
    assert_eq!(v["model_path"], path.as_str(), "llama-server opened the serve path: {v}");
}
