//! `dir` tiers on real files: verified byte-identical copies, cancel and
//! failure roll back without partial files, name and path checks, the
//! no-GPU path, and state that survives a restart.

mod real_support;

use std::ffi::OsStr;
use std::time::Duration;

use real_support::*;
use serde_json::json;
use tierd::drivers::gpu::GpuProbe;
use tierd::error::ErrorCode;
use tierd::tiers::MoveOptions;

#[test]
fn dir_moves_leave_byte_identical_verified_copies() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    // A directory of shards.
    let origin = root.path().join("models/sharded");
    make_file(&origin.join("model-00001.safetensors"), 40 * MB, 1);
    make_file(&origin.join("sub/model-00002.safetensors"), 24 * MB, 2);
    std::fs::write(origin.join("config.json"), b"{}").expect("write");
    let before = (
        hash(&origin.join("model-00001.safetensors")),
        hash(&origin.join("sub/model-00002.safetensors")),
    );
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "sharded", None, Some("storage"), Some(&origin))
        .expect("register");
    assert_eq!(model(&mut e, "sharded")["size_gb"], json!((64 * MB + 2) as f64 / 1e9));

    let st = move_and_wait(&mut e, "sharded", "swap");
    assert_eq!(st["status"], json!("success"), "{st}");
    let copy = root.path().join("swap/sharded");
    assert_eq!(hash(&copy.join("model-00001.safetensors")), before.0);
    assert_eq!(hash(&copy.join("sub/model-00002.safetensors")), before.1);
    assert_eq!(std::fs::read(copy.join("config.json")).expect("read"), b"{}");
    assert_eq!(model(&mut e, "sharded")["resident_fraction"], json!(1.0));
    let swap = &e.status_json(now())["tiers"]["swap"];
    assert_eq!(swap["driver"], json!("dir"));
    assert!(swap["fs_available_gb"].as_f64().is_some_and(|g| g > 0.0), "{swap}");

    // Copy to copy (checked against the recorded checksums), source removed.
    let st = move_and_wait(&mut e, "sharded", "nvme");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert!(!copy.exists(), "source copy removed after the verified move");
    assert_eq!(hash(&root.path().join("nvme/sharded/sub/model-00002.safetensors")), before.1);

    let st = move_and_wait(&mut e, "sharded", "storage");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert!(!root.path().join("nvme/sharded").exists());
    assert_eq!(
        (
            hash(&origin.join("model-00001.safetensors")),
            hash(&origin.join("sub/model-00002.safetensors"))
        ),
        before,
        "the origin is untouched"
    );
    assert!(find(root.path(), ".tierd-partial").is_empty());
    e.check_invariants().expect("books balance");
}

#[test]
fn cancel_mid_move_leaves_no_partial_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/m.bin");
    make_file(&file, 64 * MB, 3);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "m", None, Some("storage"), Some(&file)).expect("register");
    let opts = MoveOptions {
        bandwidth_mb_s: Some(32.0),
        ..MoveOptions::default()
    };
    let s = e.move_model(now(), "m", "swap", &opts).expect("move");
    // Wait until the copy is under way.
    let t = std::time::Instant::now();
    loop {
        e.tick(now());
        let p = e.job_json(now(), &s.job_id).expect("status")["progress"].as_f64().unwrap_or(0.0);
        if p > 0.1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "copy never progressed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !find(&root.path().join("swap"), ".tierd-partial").is_empty(),
        "the copy is being built"
    );
    e.cancel_job(now(), &s.job_id).expect("cancel");
    let st = wait(&mut e, &s.job_id, Duration::from_secs(20));
    assert_eq!(st["status"], json!("cancelled"), "{st}");
    assert_eq!(model(&mut e, "m")["tier"], json!("storage"));
    let left: Vec<_> = std::fs::read_dir(root.path().join("swap"))
        .expect("read_dir")
        .flatten()
        .map(|d| d.path())
        .filter(|p| !p.ends_with(tierd::drivers::dir::LOCK_FILE))
        .collect();
    assert!(left.is_empty(), "nothing left in the tier but its lock: {left:?}");
    assert!(file.exists());
    e.check_invariants().expect("books balance");
}

#[test]
fn a_vanished_origin_fails_the_move_and_marks_the_model_unavailable() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/gone.bin");
    make_file(&file, MB, 4);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "gone", None, Some("storage"), Some(&file))
        .expect("register");
    std::fs::remove_file(&file).expect("rm");
    let st = move_and_wait(&mut e, "gone", "swap");
    assert_eq!(st["status"], json!("failed"), "{st}");
    assert!(st.to_string().contains("vanished"), "{st}");
    e.tick(now());
    let m = model(&mut e, "gone");
    assert_eq!(m["status"], json!("unavailable"), "{m}");
    assert!(find(&root.path().join("swap"), "gone").is_empty());
}

#[test]
fn names_that_escape_and_bad_paths_are_invalid_requests() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/ok.bin");
    make_file(&file, MB, 5);
    let (mut e, _store, _) = engine(&cfg);
    // Names may hold `/ : @ .` (tiers use their escaped form); these cannot.
    let long = "a".repeat(201);
    for bad in ["x\u{0}y", "ctl\u{7}", "", "nl\n", long.as_str()] {
        let err = e.register_json(now(), bad, None, None, Some(&file)).expect_err(bad);
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{bad:?}: {err}");
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
    let err = e.register_json(now(), "nopath", None, None, None).expect_err("no path");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert!(err.to_string().contains("path"), "{err}");
    let err = e
        .register_json(now(), "missing", None, None, Some(&root.path().join("nope.bin")))
        .expect_err("missing file");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    std::fs::create_dir_all(root.path().join("swap/inside")).expect("mkdir");
    make_file(&root.path().join("swap/inside/w.bin"), 1024, 6);
    let err = e
        .register_json(now(), "inside", None, None, Some(&root.path().join("swap/inside/w.bin")))
        .expect_err("inside a tier");
    assert!(err.to_string().contains("inside tier directory"), "{err}");
    // A good one: measured, placed in storage, then moved by a job.
    let r = e.register_json(now(), "ok", None, Some("swap"), Some(&file)).expect("register");
    assert_eq!(r["tier"], json!("swap"));
    let id = r["job_id"].as_str().expect("a hot-load job").to_string();
    assert_eq!(wait(&mut e, &id, Duration::from_secs(30))["status"], json!("success"));
    assert_eq!(model(&mut e, "ok")["tier"], json!("swap"));
}

#[test]
fn gpu_tiers_without_a_driver_are_unavailable_and_refuse_moves() {
    let root = tempfile::tempdir().expect("tempdir");
    let gpu = "[[tiers]]\nname = \"gpu0\"\ndriver = \"gpu\"\nmax_gb = 24.0\naccess_s_per_gb = 0.01\n";
    let cfg = config_with(root.path(), &root.path().join("swap"), gpu);
    let (mut e, _store, _) =
        try_engine_with_gpu(&cfg, || GpuProbe::open_from(OsStr::new("/nonexistent/libnvidia-ml.so.1"))).expect("opens");
    let s = e.status_json(now());
    let g = &s["tiers"]["gpu0"];
    assert_eq!(g["available"], json!(false), "{g}");
    assert!(
        g["unavailable_reason"]
            .as_str()
            .is_some_and(|r| r.contains("NVIDIA driver not available")),
        "{g}"
    );
    let file = root.path().join("models/g.bin");
    make_file(&file, MB, 8);
    // Registration skips the GPU tier; everything else works.
    let r = e.register_json(now(), "g", None, None, Some(&file)).expect("register");
    assert_eq!(r["tier"], json!("ram"), "{r}");
    let id = r["job_id"].as_str().expect("job").to_string();
    assert_eq!(wait(&mut e, &id, Duration::from_secs(30))["status"], json!("success"));
    let err = e.move_model(now(), "g", "gpu0", &MoveOptions::default()).expect_err("gpu move");
    assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    assert!(err.to_string().contains("GPU memory is not supported"), "{err}");
}

/// With a GPU tier first (as in `fixtures/real.toml`), the policy's moves
/// go to the fastest tier that takes them: before the engine knew which
/// tiers refuse moves, every step targeted the GPU and was skipped.
#[test]
fn policies_place_past_a_gpu_tier_that_refuses_moves() {
    let gpu = "[[tiers]]\nname = \"gpu0\"\ndriver = \"gpu\"\nmax_gb = 24.0\naccess_s_per_gb = 0.01\n";
    type MakePolicy = fn(&tierd::config::Config) -> Box<dyn tierd::tiers::Policy>;
    let policies: [(&str, MakePolicy); 2] = [
        ("usage", |_| Box::new(tierd::optimizer::UsagePolicy)),
        ("tierd", |cfg| {
            Box::new(tierd::optimizer::TierdPolicy::new(tierd::optimizer::TierdParams::for_config(cfg)))
        }),
    ];
    for (name, make) in policies {
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = config_with(root.path(), &root.path().join("swap"), gpu);
        let no_nvml = || GpuProbe::open_from(OsStr::new("/nonexistent/libnvidia-ml.so.1"));
        let (mut e, _store, _) = try_engine_with(&cfg, no_nvml, make(&cfg)).expect("opens");
        let file = root.path().join("models/hot.bin");
        make_file(&file, MB, 21);
        e.register_json(now(), "hot", None, Some("storage"), Some(&file)).expect("register");
        for _ in 0..5 {
            e.access(now(), "hot").expect("access");
        }
        // `tierd` promotes on the accesses themselves, `usage` when asked
        // to optimize: either way the move goes to ram.
        let plan = e.optimize_json(now(), false);
        let steps = plan["plan"].as_array().cloned().unwrap_or_default();
        assert!(steps.iter().all(|s| s["target_tier"] != json!("gpu0")), "{name}: {plan}");
        let jobs = e.jobs_json(now());
        let jobs = jobs["jobs"].as_array().cloned().unwrap_or_default();
        assert!(jobs.iter().all(|j| j["target_tier"] != json!("gpu0")), "{name}: {jobs:?}");
        let hot = jobs.iter().find(|j| j["model_name"] == json!("hot"));
        let hot = hot.unwrap_or_else(|| panic!("{name}: the hot model is not moved: {plan}"));
        assert_eq!(hot["target_tier"], json!("ram"), "{name}: {hot}");
        let id = hot["job_id"].as_str().expect("job id").to_string();
        assert_eq!(wait(&mut e, &id, Duration::from_secs(30))["status"], json!("success"), "{name}");
        assert_eq!(model(&mut e, "hot")["tier"], json!("ram"), "{name}");
    }
}

#[test]
fn placement_usage_and_limits_survive_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let a = root.path().join("models/a.bin");
    let b = root.path().join("models/b.bin");
    make_file(&a, 2 * MB, 9);
    make_file(&b, MB, 10);
    let c = root.path().join("models/c.bin");
    make_file(&c, MB, 13);
    {
        let (mut e, store, _) = engine(&cfg);
        e.register_json(now(), "a", None, Some("storage"), Some(&a)).expect("register");
        e.register_json(now(), "b", None, Some("storage"), Some(&b)).expect("register");
        assert_eq!(move_and_wait(&mut e, "a", "swap")["status"], json!("success"));
        assert_eq!(move_and_wait(&mut e, "b", "ram")["status"], json!("success"));
        e.register_json(now(), "c", None, Some("storage"), Some(&c)).expect("register");
        assert_eq!(move_and_wait(&mut e, "c", "ram")["status"], json!("success"));
        for _ in 0..3 {
            e.access(now(), "a").expect("access");
        }
        e.limits_json(now(), json!({"swap_max_gb": 6.0})).expect("limits");
        e.set_pinned("a", true).expect("pin");
        save(&mut e, &store);
        // A second tierd on the same state directory is refused.
        let err = try_engine(&cfg).err().unwrap_or_default();
        assert!(err.contains("in use by another tierd"), "{err}");
    }
    // b's origin vanishes while tierd is down.
    std::fs::remove_file(&b).expect("rm");
    let (mut e, _store, report) = try_engine(&cfg).expect("reopen");
    assert_eq!(report.unavailable.len(), 1, "{report:?}");
    assert_eq!(report.restoring, vec!["c".to_string()], "{report:?}");
    let history = e.history(
        now(),
        &tierd::tiers::HistoryFilter {
            limit: 100,
            ..Default::default()
        },
    );
    assert!(!history.is_empty(), "the job history survives");
    e.tick(now());
    let ma = model(&mut e, "a");
    assert_eq!(ma["pinned"], json!(true));
    assert_eq!(ma["tier"], json!("swap"));
    assert_eq!(ma["usage"], json!(3));
    assert_eq!(ma["status"], json!("ready"));
    let mb = model(&mut e, "b");
    assert_eq!(mb["tier"], json!("ram"));
    assert_eq!(mb["status"], json!("unavailable"), "{mb}");
    assert_eq!(e.limits_map()["swap_max_gb"], json!(6.0));
    // c is re-pinned in the background.
    let t = std::time::Instant::now();
    while e.status_json(now())["tiers"]["ram"]["pinned_models"] != json!(["c"]) {
        assert!(t.elapsed() < Duration::from_secs(20), "c was not re-pinned");
        e.tick(now());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(model(&mut e, "c")["tier"], json!("ram"));
    assert_eq!(model(&mut e, "c")["resident_fraction"], json!(1.0));
    assert_eq!(hash(&root.path().join("swap/a/a.bin")), hash(&a));
}

#[test]
fn a_copy_whose_origin_vanished_is_never_demoted_to_storage() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/last.bin");
    make_file(&file, MB, 14);
    let want = hash(&file);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "last", None, Some("storage"), Some(&file))
        .expect("register");
    assert_eq!(move_and_wait(&mut e, "last", "swap")["status"], json!("success"));
    std::fs::remove_file(&file).expect("rm origin");
    // The copy in swap is the model's last complete copy: refused, kept.
    let st = move_and_wait(&mut e, "last", "storage");
    assert_eq!(st["status"], json!("failed"), "{st}");
    let msg = st["error"].as_str().unwrap_or_default();
    assert!(msg.starts_with("refusing to demote last to storage: origin file "), "{st}");
    assert!(msg.ends_with("; the copy in swap is its last complete copy"), "{st}");
    assert_eq!(model(&mut e, "last")["tier"], json!("swap"));
    assert_eq!(hash(&root.path().join("swap/last/last.bin")), want);
    e.check_invariants().expect("books balance");
}
