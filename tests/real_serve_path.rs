//! The serve path: `<serve_dir>/<model>` leads to the model's fastest
//! complete copy, is repointed when a move commits (before the old copy is
//! released), goes with the model, and is rebuilt at start.

mod real_support;

use std::io::Read;
use std::path::{Path, PathBuf};

use real_support::*;
use tierd::drivers::ModelFiles;
use tierd::tiers::{Engine, Registration};

fn register(e: &mut Engine, name: &str, path: &Path) -> PathBuf {
    let files = ModelFiles::walk(path, 100).expect("walk");
    e.register(
        now(),
        Registration {
            name: name.into(),
            path: Some(path.to_path_buf()),
            files: Some(files),
            // Left in storage: the moves are the test's.
            preferred_tier: Some("storage".into()),
            ..Registration::default()
        },
    )
    .expect("register");
    serve_path(e, name)
}

fn serve_path(e: &mut Engine, name: &str) -> PathBuf {
    let m = model(e, name);
    PathBuf::from(m["serve_path"].as_str().unwrap_or_else(|| panic!("serve_path in {m}")))
}

fn read_all(mut f: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).expect("read");
    v
}

#[test]
fn a_loader_that_opened_the_old_copy_keeps_valid_bytes_after_a_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let weights = root.join("models/m.gguf");
    make_file(&weights, 4 * MB, 11);
    let original = std::fs::read(&weights).expect("read");
    let cfg = config(root);
    let (mut e, store, _) = engine(&cfg);
    e.set_durable(true);
    let serve = register(&mut e, "m", &weights);
    let listed = e.models(now(), None).expect("list_models");
    assert_eq!(listed[0].serve_path.as_ref(), Some(&serve), "list_models answers it too");
    assert_eq!(serve.file_name().and_then(|n| n.to_str()), Some("m"));
    assert_eq!(serve.parent().map(Path::to_path_buf), root.join("state/serve").canonicalize().ok());
    assert_eq!(std::fs::read_link(&serve).expect("link"), weights.canonicalize().expect("canon"));

    let done = move_and_wait(&mut e, "m", "nvme");
    assert_eq!(done["status"], "success", "{done}");
    save(&mut e, &store);
    let nvme_copy = std::fs::read_link(&serve).expect("link");
    assert!(nvme_copy.starts_with(root.join("nvme")), "{}", nvme_copy.display());
    // A loader opens the serve path and reads half of it...
    let mut loader = std::fs::File::open(&serve).expect("open serve path");
    let mut head = vec![0u8; 2 * MB as usize];
    loader.read_exact(&mut head).expect("read head");

    // ...and the model moves on to swap.
    let done = move_and_wait(&mut e, "m", "swap");
    assert_eq!(done["status"], "success", "{done}");
    // Committed but not yet durable: the link leads to the new copy while
    // the old one is still there.
    let swap_copy = std::fs::read_link(&serve).expect("link");
    assert!(swap_copy.starts_with(root.join("swap")), "{}", swap_copy.display());
    assert!(
        nvme_copy.exists(),
        "the old copy is released only once the new placement is durable"
    );
    save(&mut e, &store);
    // The removal runs on the driver's thread.
    let t = std::time::Instant::now();
    while nvme_copy.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
        e.tick(now());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!nvme_copy.exists(), "the old copy was removed");
    // The loader's file is unlinked but still whole.
    let rest = read_all(&mut loader);
    head.extend_from_slice(&rest);
    assert_eq!(head, original, "the loader read valid bytes through the move");
    // A new open gets the new copy.
    assert_eq!(std::fs::read(&serve).expect("read"), original);

    // Back to storage: the serve path is the origin again.
    let done = move_and_wait(&mut e, "m", "storage");
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(std::fs::read_link(&serve).expect("link"), weights.canonicalize().expect("canon"));
    // Unregistered: the serve path goes, the origin stays.
    e.unregister("m").expect("unregister");
    assert!(serve.symlink_metadata().is_err(), "serve path removed");
    assert!(weights.exists());
}

#[test]
fn a_sharded_model_is_served_as_a_directory_of_its_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let model_dir = root.join("models/shards");
    make_file(&model_dir.join("model-00001-of-00002.safetensors"), MB, 1);
    make_file(&model_dir.join("model-00002-of-00002.safetensors"), MB, 2);
    std::fs::write(model_dir.join("config.json"), b"{}").expect("write");
    let cfg = config(root);
    let (mut e, store, _) = engine(&cfg);
    let serve = register(&mut e, "s", &model_dir);
    assert!(serve.is_dir());
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "config.json",
    ] {
        assert_eq!(
            std::fs::read(serve.join(f)).expect("read"),
            std::fs::read(model_dir.join(f)).expect("read"),
            "{f}"
        );
    }
    let done = move_and_wait(&mut e, "s", "nvme");
    assert_eq!(done["status"], "success", "{done}");
    save(&mut e, &store);
    let copy = std::fs::read_link(&serve).expect("link");
    assert!(copy.starts_with(root.join("nvme")), "{}", copy.display());
    assert_eq!(std::fs::read(serve.join("config.json")).expect("read"), b"{}");
}

#[test]
fn serve_paths_are_rebuilt_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let weights = root.join("models/m.gguf");
    make_file(&weights, MB, 3);
    let cfg = config(root);
    let serve = {
        let (mut e, store, _) = engine(&cfg);
        let serve = register(&mut e, "m", &weights);
        let done = move_and_wait(&mut e, "m", "nvme");
        assert_eq!(done["status"], "success", "{done}");
        save(&mut e, &store);
        serve
    };
    // While tierd was down: the link was lost, and a stale one appeared.
    std::fs::remove_file(&serve).expect("rm");
    let stale = serve.with_file_name("old-model");
    std::os::unix::fs::symlink("/nonexistent", &stale).expect("symlink");
    let (mut e, _store, _) = engine(&cfg);
    assert_eq!(serve_path(&mut e, "m"), serve);
    let target = std::fs::read_link(&serve).expect("rebuilt");
    assert!(target.starts_with(root.join("nvme")), "{}", target.display());
    assert!(stale.symlink_metadata().is_err(), "stale link removed");
}

#[test]
fn a_serve_dir_inside_a_tier_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut cfg = config(root);
    cfg.serve_dir = Some(root.join("nvme/serve"));
    let err = try_engine(&cfg).expect_err("refused");
    assert!(err.contains("serve_dir") && err.contains("nvme"), "{err}");
    assert!(!root.join("nvme/serve").exists(), "nothing made in the tier");
}
