//! Configurations that used to be traps: real-only keys under the
//! simulator, `backend = "real"` in the file, a missing `dir` tier path,
//! and a rejected configuration that had already created directories.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Server};

/// `tierd serve` with `args`, its stdin closed, XDG_RUNTIME_DIR under
/// `root` (so `--socket` alone would create `root/xdg/tierd`).
fn serve(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", root.join("xdg"))
        .env_remove("TIERD_SOCKET")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tierd serve")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(root: &Path, text: &str) -> String {
    let p = root.join("tierd.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

const TIERS: &str = "[[tiers]]\nname = \"ram\"\nmax_gb = 4.0\n[[tiers]]\nname = \"storage\"\n";

#[test]
fn real_only_keys_under_the_simulator_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    let cfg = write(
        root,
        &format!(
            "state_dir = {state:?}\n[[tiers]]\nname = \"ram\"\nmax_gb = 4.0\n[[tiers]]\nname = \"nvme\"\ndriver = \"dir\"\npath = \"/mnt/nvme\"\nmax_gb = 8.0\n[[tiers]]\nname = \"storage\"\n"
        ),
    );
    let o = serve(root, &["serve", "--config", &cfg]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for needle in [
        "state_dir",
        "tiers[1].driver (tier \"nvme\")",
        "tiers[1].path",
        "--backend real",
        "backend = \"real\"",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert!(!state.exists(), "nothing created");
    // The plain simulated config still serves.
    let cfg = write(root, TIERS);
    let mut s = Server::stdio(&["--config", &cfg]);
    assert_eq!(s.req(r#"{"health": true}"#)["backend"], "sim");
}

#[test]
fn backend_key_selects_the_real_backend_and_the_flag_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = write(
        root,
        &format!(
            "backend = \"real\"\nstate_dir = {:?}\n[[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 1.0\n[[tiers]]\nname = \"storage\"\ndriver = \"storage\"\n",
            root.join("state")
        ),
    );
    let mut s = Server::stdio(&["--config", &cfg]);
    let h = s.req(r#"{"health": true}"#);
    assert_eq!(h["backend"], "real", "{h}");
    assert_eq!(h["config"].as_str(), Some(cfg.as_str()), "{h}");
    drop(s);
    // `--backend sim` overrides the key, and then the real-only keys are an error.
    let o = serve(root, &["serve", "--config", &cfg, "--backend", "sim"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("state_dir"), "{}", stderr(&o));
    let bad = write(root, &format!("backend = \"rael\"\n{TIERS}"));
    let o = serve(root, &["serve", "--config", &bad]);
    assert!(stderr(&o).contains("backend must be \"sim\" or \"real\""), "{}", stderr(&o));
}

fn real_config(root: &Path, nvme: &Path, create: bool, model: &Path) -> String {
    format!(
        "backend = \"real\"\nstate_dir = {state:?}\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 1.0\n\
         [[tiers]]\nname = \"nvme\"\ndriver = \"dir\"\npath = {nvme:?}\ncreate = {create}\nmax_gb = 1.0\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\n\
         [[models]]\nname = \"m\"\nsize_gb = 0.001\npath = {model:?}\n",
        state = root.join("state"),
    )
}

#[test]
fn a_missing_dir_tier_path_is_an_error_unless_create_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = root.join("m.bin");
    std::fs::write(&model, vec![7u8; 4096]).unwrap();
    let nvme = root.join("mnt/nvme");
    let cfg = write(root, &real_config(root, &nvme, false, &model));
    let o = serve(root, &["serve", "--config", &cfg]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("does not exist") && err.contains("create = true"), "{err}");
    assert!(err.contains(nvme.to_str().unwrap()), "{err}");
    // create = true makes one directory, never a chain of parents.
    let cfg = write(root, &real_config(root, &nvme, true, &model));
    let o = serve(root, &["serve", "--config", &cfg]);
    assert!(stderr(&o).contains("its parent"), "{}", stderr(&o));
    assert!(!root.join("mnt").exists());
    std::fs::create_dir(root.join("mnt")).unwrap();
    let mut s = Server::stdio(&["--config", &cfg]);
    assert_eq!(s.req(r#"{"health": true}"#)["backend"], "real");
    assert!(nvme.is_dir(), "created with create = true");
}

#[test]
fn a_rejected_config_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("mnt")).unwrap();
    let nvme = root.join("mnt/nvme");
    // Everything fine but the model's path, which is checked last.
    let cfg = write(root, &real_config(root, &nvme, true, &root.join("missing.bin")));
    let o = serve(root, &["serve", "--config", &cfg, "--socket"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.bin"), "{}", stderr(&o));
    for p in [root.join("state"), nvme.clone(), root.join("xdg")] {
        assert!(!p.exists(), "{} was created by a rejected config", p.display());
    }
    // A config the parser refuses after the tiers creates nothing either.
    let cfg = write(
        root,
        &format!("auto_optimize_interval_s = -5\n{}", real_config(root, &nvme, true, &root.join("m"))),
    );
    let o = serve(root, &["serve", "--config", &cfg, "--socket"]);
    assert!(stderr(&o).contains("auto_optimize_interval_s"), "{}", stderr(&o));
    for p in [root.join("state"), nvme, root.join("xdg")] {
        assert!(!p.exists(), "{} was created by a rejected config", p.display());
    }
}
