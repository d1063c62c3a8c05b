//! The one-model CLI commands against `tierd serve --backend real`:
//! `register` (a relative path, made absolute by the client), `path` (the
//! serve path a loader opens), `access`, `info`, `pin`/`unpin` and
//! `unregister`, each for people and with `--json`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Server};
use serde_json::Value;

fn config(root: &Path) -> String {
    format!(
        r#"
state_dir = "{root}/state"
policy = "usage"
# The test reads the serve path itself: that open is no access to count.
observe_opens = false
[[tiers]]
name = "ram"
driver = "pagecache"
max_gb = 4.0
reserved_gb = 0.5
access_s_per_gb = 0.1
[[tiers]]
name = "swap"
driver = "dir"
path = "{root}/swap"
max_gb = 4.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
driver = "storage"
access_s_per_gb = 2.0
"#,
        root = root.display()
    )
}

/// Runs `tierd --socket SOCK ARGS` in `cwd`: exit status and stdout, stderr.
fn tierd(sock: &Path, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tierd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(sock: &Path, cwd: &Path, args: &[&str]) -> (i32, Value) {
    let (code, out, err) = tierd(sock, cwd, args);
    let v = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?} {err}"));
    (code, v)
}

#[test]
fn the_model_commands_work_for_people_and_scripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canon");
    std::fs::create_dir_all(root.join("swap")).expect("mkdir");
    std::fs::create_dir_all(root.join("models")).expect("mkdir");
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("models/tiny.gguf"), &data).expect("write");
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, config(&root)).expect("write");
    let sock = root.join("tierd.sock");
    let _server = Server::socket(
        &sock,
        &["--config", cfg.to_str().expect("utf-8"), "--backend", "real", "--time-scale", "1"],
    );
    let models = root.join("models");

    // A relative path, from the client's directory.
    let (code, r) = json(&sock, &models, &["register", "tiny", "tiny.gguf", "--tier", "storage", "--json"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["status"], "success", "{r}");
    let serve = r["serve_path"].as_str().expect("serve_path").to_string();
    assert!(serve.ends_with("/serve/tiny"), "{serve}");

    // `tierd path` prints what a loader opens.
    let (code, out, err) = tierd(&sock, &root, &["path", "tiny"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), serve);
    assert_eq!(std::fs::read(out.trim()).expect("read serve path"), data);
    let (_, p) = json(&sock, &root, &["path", "tiny", "--json"]);
    assert_eq!(p["serve_path"], serve.as_str(), "{p}");

    let (code, out, err) = tierd(&sock, &root, &["access", "tiny"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tiny: served from storage") && out.contains("1 accesses"), "{out}");
    let (_, a) = json(&sock, &root, &["access", "tiny", "--json"]);
    assert_eq!(a["usage"], 2, "{a}");

    let (code, out, err) = tierd(&sock, &root, &["pin", "tiny"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "tiny pinned in storage");
    let (code, out, err) = tierd(&sock, &root, &["info", "tiny"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "tier          storage, pinned",
        &format!("serve path    {serve}"),
        &format!("origin        {}", models.join("tiny.gguf").display()),
        "2 accesses, last just now",
        "registered    just now",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let (_, i) = json(&sock, &root, &["info", "tiny", "--json"]);
    assert_eq!(i["model"]["pinned"], true, "{i}");
    assert_eq!(i["model"]["serve_path"], serve.as_str(), "{i}");
    let (_, u) = json(&sock, &root, &["unpin", "tiny", "--json"]);
    assert_eq!(u["pinned"], false, "{u}");

    // Errors: for people on stderr, for scripts as the error answer.
    let (code, _, err) = tierd(&sock, &root, &["info", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("MODEL_NOT_FOUND"), "{err}");
    let (code, e) = json(&sock, &root, &["path", "nope", "--json"]);
    assert_eq!(code, 1);
    assert_eq!(e["status"], "error", "{e}");

    let (code, out, err) = tierd(&sock, &root, &["unregister", "tiny"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unregistered tiny"), "{out}");
    assert!(Path::new(&serve).symlink_metadata().is_err(), "serve path removed");
    assert!(models.join("tiny.gguf").exists(), "origin untouched");
    // Without --tier: the fastest tier with room, reached by a move.
    let (code, out, err) = tierd(&sock, &models, &["register", "again", "./tiny.gguf"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("registered again (0.00 GB); moving to ram (tier_promote_again_"),
        "{out}"
    );
    assert!(out.contains("serve path: ") && out.contains("/serve/again"), "{out}");
}

/// `tierd info` after a restart of the server: the same usage, decayed by
/// the time that passed (the engine test, `real_usage.rs`, checks the
/// figures exactly).
#[test]
fn info_shows_the_same_usage_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canon");
    std::fs::create_dir_all(root.join("swap")).expect("mkdir");
    std::fs::create_dir_all(root.join("models")).expect("mkdir");
    std::fs::write(root.join("models/m.gguf"), vec![7u8; 4096]).expect("write");
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, config(&root)).expect("write");
    let sock = root.join("tierd.sock");
    let args = ["--config", cfg.to_str().expect("utf-8"), "--backend", "real", "--time-scale", "1"];
    let before = {
        let mut server = Server::socket(&sock, &args);
        let (code, r) = json(&sock, &root, &["register", "m", "models/m.gguf", "--tier", "storage", "--json"]);
        assert_eq!(code, 0, "{r}");
        for _ in 0..3 {
            let (code, _) = json(&sock, &root, &["access", "m", "--json"]);
            assert_eq!(code, 0);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (_, v) = json(&sock, &root, &["info", "m", "--json"]);
        server.terminate();
        let status = server.wait_exit();
        assert!(status.success(), "{status}");
        v["model"].clone()
    };
    let _server = Server::socket(&sock, &args);
    let (_, v) = json(&sock, &root, &["info", "m", "--json"]);
    let after = &v["model"];
    for k in [
        "usage",
        "last_access",
        "first_access",
        "by_hour",
        "by_weekday",
        "temperature",
        "registered_at",
    ] {
        let same = match (after[k].as_f64(), before[k].as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-3,
            _ => after[k] == before[k],
        };
        assert!(same, "{k}: before {before}\nafter {after}");
    }
    let (f0, f1) = (before["frequency"].as_f64().expect("f"), after["frequency"].as_f64().expect("f"));
    assert!(f1 <= f0 && f1 > f0 * 0.99, "decayed a little over the restart: {f0} -> {f1}");
    assert!(after["interarrival_mean_s"].as_f64().is_some_and(|g| g >= 0.1), "{after}");
    let (code, out, _) = tierd(&sock, &root, &["info", "m"]);
    assert_eq!(code, 0);
    assert!(out.contains("3 accesses, last"), "{out}");
}
