//! What a real machine accepts as a model's files and how it copies them:
//! copies keep the origin's permissions (through a symlink too), special
//! and kernel files are refused, the same file cannot be two models, a
//! file that grew fails its move, any bandwidth is safe, and the walk runs
//! off the engine's lock.

mod real_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use real_support::*;
use serde_json::json;
use tierd::error::ErrorCode;
use tierd::requests::{Prepare, Request};
use tierd::server::shared::{Answer, Clock, SharedEngine};
use tierd::tiers::MoveOptions;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

#[test]
fn a_copy_of_a_symlinked_0640_file_is_0640_in_every_tier() {
    let root = tempfile::tempdir().expect("tempdir");
    chmod(root.path(), 0o755);
    let cfg = config(root.path());
    let secret = root.path().join("etc/shadow-like");
    make_file(&secret, MB, 11);
    chmod(secret.parent().expect("parent"), 0o755);
    chmod(&secret, 0o640);
    let _ = std::os::unix::fs::chown(&secret, Some(0), Some(42));
    let link = root.path().join("models/link.bin");
    std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "s", None, Some("storage"), Some(&link)).expect("register");
    let o = std::fs::metadata(&secret).expect("stat");
    for tier in ["swap", "nvme"] {
        let st = move_and_wait(&mut e, "s", tier);
        assert_eq!(st["status"], json!("success"), "{st}");
        let copy = root.path().join(tier).join("s/shadow-like");
        assert_eq!(mode(&copy), 0o640, "{tier}: never 0644");
        if tierd::drivers::sys::uid() == 0 {
            let c = std::fs::metadata(&copy).expect("stat");
            assert_eq!((c.uid(), c.gid()), (o.uid(), o.gid()), "{tier}: owner and group kept");
        }
        assert_eq!(mode(&root.path().join(tier).join("s")) & 0o007, 0, "{tier}: others cannot enter");
    }
}

#[test]
fn special_and_kernel_files_cannot_be_registered() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let (mut e, _store, _) = engine(&cfg);
    let fifo = root.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let sock = root.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let to_proc = root.path().join("to-proc");
    std::os::unix::fs::symlink("/proc/self/mem", &to_proc).expect("symlink");
    let cases: [(&Path, &str); 6] = [
        (Path::new("/proc/self/pagemap"), "/proc"),
        (Path::new("/proc/self/mem"), "/proc"),
        (Path::new("/dev/null"), "/dev"),
        (&fifo, "FIFO"),
        (&sock, "socket"),
        (&to_proc, "/proc"),
    ];
    for (i, (path, why)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        let err = e
            .register_json(now(), &name, None, None, Some(path))
            .expect_err(&path.display().to_string());
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{}: {err}", path.display());
        assert!(err.to_string().contains(why), "{}: {err}", path.display());
    }
    assert_eq!(e.state().iter_models().count(), 0, "nothing registered");
}

#[test]
fn a_file_replaced_by_a_fifo_fails_its_pin_instead_of_hanging() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/f.bin");
    make_file(&file, 0, 12);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "f", None, Some("storage"), Some(&file)).expect("register");
    std::fs::remove_file(&file).expect("rm");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &file,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    for tier in ["swap", "ram"] {
        e.tick(now());
        let s = e.move_model(now(), "f", tier, &MoveOptions::default()).expect("move");
        let st = wait(&mut e, &s.job_id, Duration::from_secs(10));
        assert_eq!(st["status"], json!("failed"), "{st}");
        assert!(st.to_string().contains("no longer a regular file"), "{st}");
    }
    assert!(find(root.path(), ".tierd-partial").is_empty());
}

#[test]
fn a_file_that_grew_since_registration_fails_its_move_with_changed_size() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/g.bin");
    make_file(&file, 2 * MB, 13);
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "g", None, Some("storage"), Some(&file)).expect("register");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&file).expect("open");
        f.write_all(&[0u8; 4096]).expect("append");
    }
    for tier in ["swap", "ram"] {
        let st = move_and_wait(&mut e, "g", tier);
        assert_eq!(st["status"], json!("failed"), "{tier}: {st}");
        assert!(st.to_string().contains("changed size"), "{tier}: {st}");
    }
    assert!(find(root.path(), ".tierd-partial").is_empty(), "no partial left");
    assert!(!root.path().join("swap/g").exists());
    e.check_invariants().expect("books balance");
}

#[test]
fn the_same_file_cannot_be_registered_under_a_second_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/w.bin");
    make_file(&file, MB, 14);
    let hard = root.path().join("models/hard.bin");
    std::fs::hard_link(&file, &hard).expect("hard link");
    let soft = root.path().join("models/soft.bin");
    std::os::unix::fs::symlink(&file, &soft).expect("symlink");
    let dir = root.path().join("models/dir");
    make_file(&dir.join("own.bin"), 1024, 15);
    std::fs::hard_link(&file, dir.join("shared.bin")).expect("hard link");
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "first", None, Some("storage"), Some(&file))
        .expect("register");
    for (name, path) in [("again", &file), ("hard", &hard), ("soft", &soft), ("dir", &dir)] {
        let err = e.register_json(now(), name, None, None, Some(path)).expect_err(name);
        assert_eq!(err.code(), ErrorCode::Conflict, "{name}: {err}");
        assert!(err.to_string().contains("model first"), "{name}: {err}");
        assert_eq!(err.to_json()["details"]["registered_model"], json!("first"), "{name}");
    }
    // Directory models sharing a file, the other way round.
    e.unregister("first").expect("unregister");
    e.register_json(now(), "dir", None, Some("storage"), Some(&dir))
        .expect("register the directory");
    let err = e.register_json(now(), "single", None, None, Some(&hard)).expect_err("in dir");
    assert_eq!(err.code(), ErrorCode::Conflict, "{err}");
    assert!(err.to_string().contains("model dir"), "{err}");
    // Another file is fine.
    let other = root.path().join("models/other.bin");
    make_file(&other, 1024, 16);
    e.register_json(now(), "other", None, Some("storage"), Some(&other))
        .expect("another file");
}

#[test]
fn a_vanishingly_small_bandwidth_waits_and_cancels_cleanly() {
    use std::sync::Arc;
    use tierd::drivers::dir::DirDriver;
    use tierd::drivers::{ModelFiles, MoveEvent, MoveOrder, Source, TierDriver};
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let file = root.path().join("models/b.bin");
    make_file(&file, 4 * MB, 17);
    // The engine refuses such a rate on the wire and from its own callers.
    let (mut e, _store, _) = engine(&cfg);
    e.register_json(now(), "b", None, Some("storage"), Some(&file)).expect("register");
    let opts = MoveOptions {
        bandwidth_mb_s: Some(1e-30),
        ..MoveOptions::default()
    };
    let err = e.move_model(now(), "b", "swap", &opts).expect_err("out of range");
    assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    drop(e);
    // The driver itself takes any rate without panicking: it waits until
    // cancelled, and the cancel leaves nothing behind.
    let mut tier = DirDriver::open(&root.path().join("direct")).expect("open tier");
    let files = Arc::new(ModelFiles::walk(&file, 10).expect("walk"));
    let model: Arc<str> = Arc::from("b");
    let order = MoveOrder {
        job: 1,
        model: &model,
        files: Some(&files),
        bytes: files.bytes,
        from: 1,
        to: 0,
        from_name: "storage",
        to_name: "direct",
        source: Source::Origin,
        expected_s: 1.0,
        bandwidth_mb_s: Some(1e-30),
    };
    tier.start_move(0.0, &order).expect("started");
    std::thread::sleep(Duration::from_millis(300));
    let mut events = Vec::new();
    tier.poll(0.3, &mut events);
    assert!(events.is_empty(), "still waiting: {events:?}");
    tier.cancel_move(0.3, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while events.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        tier.poll(0.4, &mut events);
    }
    assert_eq!(
        events.first().map(|e| &e.event),
        Some(&MoveEvent::Cancelled { job: 1 }),
        "{events:?}"
    );
    assert!(find(root.path(), ".tierd-partial").is_empty(), "no partial left");
}

#[test]
fn registration_walks_its_files_off_the_engine_lock() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = config(root.path());
    let dir = root.path().join("models/many");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..2000 {
        std::fs::write(dir.join(format!("shard-{i:05}")), b"w").expect("write");
    }
    let (e, _store, _) = engine(&cfg);
    let max_files = e.config().max_files_per_model;
    let shared = SharedEngine::new(e, Clock::new(1.0));
    let line = json!({"register_model": {"model_name": "many", "path": dir}}).to_string();
    let mut out = Vec::new();
    let Answer::Prepare(envelope) = shared.answer_line(line.as_bytes(), &mut out) else {
        panic!(
            "a registration with a path is prepared before the lock: {}",
            String::from_utf8_lossy(&out)
        );
    };
    // The walk needs no engine: it completes while another holder has it.
    let guard = shared.lock();
    let mut request = envelope.request;
    let walker = std::thread::spawn(move || {
        let ctx = Prepare {
            walk_files: true,
            max_files,
        };
        request.prepare(&ctx).map(|()| request)
    });
    let t = std::time::Instant::now();
    while !walker.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(20), "the walk waited for the engine");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(guard);
    let request = walker.join().expect("no panic").expect("walked");
    let Request::RegisterModel(r) = &request else {
        panic!("a registration")
    };
    assert_eq!(r.files.as_ref().map(|f| f.files.len()), Some(2000));
    // Over the bound: refused, before the lock, naming the key.
    let mut small = r.clone();
    small.files = None;
    let mut request = Request::RegisterModel(small);
    let err = request
        .prepare(&Prepare {
            walk_files: true,
            max_files: 100,
        })
        .expect_err("over max_files_per_model");
    assert!(err.to_string().contains("max_files_per_model"), "{err}");
}
