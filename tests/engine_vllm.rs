//! The `vllm` engine tier against the fake vLLM of `tests/engine_fakes`
//! (no vLLM can run on CI: it needs a GPU).

mod engine_fakes;

use engine_fakes::http::request;
use engine_fakes::vllm::{FakeVllm, Weights};
use serde_json::json;

fn is_sleeping(url: &str) -> bool {
    let (status, body) = request(url, "GET", "/is_sleeping", None).expect("is_sleeping");
    assert_eq!(status, 200);
    serde_json::from_str::<tierd::drivers::engine::vllm_wire::IsSleepingResponse>(&body)
        .expect("json")
        .is_sleeping
}

/// The fake keeps the documented behaviours the driver relies on.
#[test]
fn fake_vllm_follows_the_documented_api() {
    let fake = FakeVllm::start("Qwen/Qwen3-0.6B");
    let url = fake.url();
    assert!(!is_sleeping(&url));
    // A level in the body is ignored: this sleeps at level 1.
    let (status, _) = request(&url, "POST", "/sleep", Some(&json!({"level": 2}))).unwrap();
    assert_eq!(status, 200);
    assert!(is_sleeping(&url));
    assert_eq!(fake.weights(), Weights::Cpu);
    assert_eq!(fake.last_level(), Some(1));
    request(&url, "POST", "/wake_up", None).unwrap();
    assert!(!is_sleeping(&url));
    // Level 2 from the query string; a plain wake_up on discarded weights fails.
    request(&url, "POST", "/sleep?level=2", None).unwrap();
    assert_eq!(fake.weights(), Weights::Discarded);
    let (status, _) = request(&url, "POST", "/wake_up", None).unwrap();
    assert_eq!(status, 500);
    // kv_cache before reload_weights fails too.
    request(&url, "POST", "/wake_up?tags=weights", None).unwrap();
    assert!(is_sleeping(&url), "still asleep until every tag is awake");
    let (status, _) = request(&url, "POST", "/wake_up?tags=kv_cache", None).unwrap();
    assert_eq!(status, 500);
    let (status, body) = request(&url, "POST", "/collective_rpc", Some(&json!({"method": "reload_weights"}))).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("results"));
    let (status, _) = request(&url, "POST", "/wake_up?tags=kv_cache", None).unwrap();
    assert_eq!(status, 200);
    assert!(!is_sleeping(&url));
    assert_eq!(fake.weights(), Weights::Gpu);
    // collective_rpc without a method: 400 with FastAPI's detail.
    let (status, body) = request(&url, "POST", "/collective_rpc", Some(&json!({}))).unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("Missing 'method'"), "{body}");
    // A level that is not an integer: 500.
    let (status, _) = request(&url, "POST", "/sleep?level=deep", None).unwrap();
    assert_eq!(status, 500);
    // Down and back: a restarted instance is awake.
    fake.external_sleep(2);
    fake.go_down();
    assert!(request(&url, "GET", "/is_sleeping", None).is_err());
    fake.come_back();
    assert!(!is_sleeping(&url));
}

/// The driver's operations, run straight against the fake.
struct Direct(String);

impl tierd::drivers::engine::vllm::Exchange for Direct {
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: std::time::Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        engine_fakes::http::request_within(&self.0, method, path, body, timeout).map(|(s, b)| (s, b.into_bytes()))
    }
}

#[test]
fn the_operations_follow_the_wake_sequence_and_roll_back() {
    use std::time::{Duration, Instant};
    use tierd::drivers::engine::vllm::{self as op, Asleep};
    use tierd::drivers::engine::vllm_wire::SleepLevel;
    let fake = FakeVllm::start("m");
    let http = Direct(fake.url());
    let soon = || Instant::now() + Duration::from_secs(5);
    op::sleep(&http, SleepLevel::Two, soon()).expect("sleep");
    assert_eq!(fake.weights(), Weights::Discarded);
    op::wake(&http, Asleep::Level(SleepLevel::Two), soon()).expect("wake");
    assert_eq!(fake.weights(), Weights::Gpu);
    assert_eq!(fake.reloads(), 1);
    // A failed reload: the wake reports how far it got; the rollback
    // finishes it and sleeps again, so no weights stay on the GPU.
    op::sleep(&http, SleepLevel::Two, soon()).expect("sleep");
    fake.fail_next(
        "/collective_rpc",
        engine_fakes::http::Fault::Status(500, "Internal Server Error".into()),
        1,
    );
    let (e, done) = op::wake(&http, Asleep::Level(SleepLevel::Two), soon()).unwrap_err();
    assert_eq!(done, 1, "{e}");
    assert!(e.contains("HTTP 500"), "{e}");
    assert_eq!(fake.weights(), Weights::Uninitialised);
    op::back_to_sleep(&http, SleepLevel::Two, soon()).expect("rollback");
    assert_eq!(fake.weights(), Weights::Discarded);
    assert!(fake.is_sleeping());
    // A reload slower than the deadline times out.
    fake.set_times(0.05, 2.0);
    let (e, _) = op::wake(&http, Asleep::Unknown, Instant::now() + Duration::from_millis(300)).unwrap_err();
    assert!(e.contains("timed out"), "{e}");
}

#[test]
fn the_engine_state_tracks_levels_and_unknown_sleeps() {
    use std::time::Duration;
    use tierd::drivers::engine::vllm::{Asleep, Instance, Known, Vllm};
    let a = FakeVllm::start("a");
    let b = FakeVllm::start("b");
    let inst = |m: &str, f: &FakeVllm| Instance {
        model: m.into(),
        url: f.url(),
        http: Box::new(Direct(f.url())),
    };
    let api = Vllm::new(vec![inst("qa", &a), inst("qb", &b)], Duration::from_secs(5));
    assert_eq!(api.resolve("qb"), Ok(1));
    assert!(api.resolve("qc").is_err());
    assert_eq!(api.observe(), vec![Ok(true), Ok(true)]);
    api.sleep(0, true).unwrap();
    assert_eq!(a.last_level(), Some(1));
    api.sleep(1, false).unwrap();
    assert_eq!(b.weights(), Weights::Discarded);
    assert_eq!(api.observe(), vec![Ok(false), Ok(false)]);
    api.wake(0, Duration::from_secs(5)).unwrap();
    assert_eq!(a.posts().last().map(String::as_str), Some("/wake_up"));
    api.wake(1, Duration::from_secs(5)).unwrap();
    assert_eq!(b.reloads(), 1);
    // Someone else's sleep: level unknown, the safe wake.
    a.external_sleep(2);
    api.observe();
    assert_eq!(api.state_of(0), Known::Asleep(Asleep::Unknown));
    api.wake(0, Duration::from_secs(5)).unwrap();
    assert_eq!(a.weights(), Weights::Gpu);
    // Down: an error naming the instance.
    b.go_down();
    let seen = api.observe();
    assert!(seen[1].as_ref().unwrap_err().contains(&b.url()), "{seen:?}");
}

// -------------------------------------------------------- tierd's vllm tier

mod real_support;

use std::time::{Duration, Instant};

use engine_fakes::http::Fault;
use real_support::{MB, Wire, engine, make_file, now};
use serde_json::Value;
use tierd::store::StateStore;
use tierd::tiers::Engine;

const A: &str = "qwen3-0.6b";
const B: &str = "llama-3.2-1b";

/// A real machine with a `vllm` tier (`gpu0`, two instances) above `ram`
/// (pagecache) and `storage`; both models registered from storage.
struct Rig {
    root: tempfile::TempDir,
    a: FakeVllm,
    b: FakeVllm,
    e: Engine,
    store: StateStore,
}

fn rig() -> Rig {
    let root = tempfile::tempdir().expect("tempdir");
    let a = FakeVllm::start("Qwen/Qwen3-0.6B");
    let b = FakeVllm::start("meta-llama/Llama-3.2-1B");
    // Both start asleep at level 2, as tierd would leave them.
    a.external_sleep(2);
    b.external_sleep(2);
    let text = format!(
        "state_dir = {state:?}\nmax_single_model_gb = 100.0\n\
         [[tiers]]\nname = \"gpu0\"\ndriver = \"vllm\"\nmax_gb = 4.0\npoll_s = 0.05\nload_timeout_s = 5.0\n\
         instances = [{{ model = {A:?}, url = {ua:?} }}, {{ model = {B:?}, url = {ub:?} }}]\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 4.0\nreserved_gb = 0.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = root.path().join("state"),
        ua = a.url(),
        ub = b.url(),
    );
    let cfg = tierd::config::Config::from_toml(&text).expect("config parses");
    let (mut e, store, _) = engine(&cfg);
    for name in [A, B] {
        let file = root.path().join("models").join(name).join("model.safetensors");
        make_file(&file, 2 * MB, 5);
        e.register_json(now(), name, None, Some("storage"), Some(&file)).expect("register");
    }
    Rig { root, a, b, e, store }
}

impl Rig {
    /// Ticks until `done` holds of the engine (at most 20 s); whether it did.
    fn until(&mut self, done: impl Fn(&mut Engine) -> bool) -> bool {
        real_support::tick_until(&mut self.e, &self.store, Duration::from_secs(20), done)
    }
    fn tier_of(&mut self, model: &str) -> String {
        real_support::tier_of(&mut self.e, model)
    }
    fn move_wait(&mut self, model: &str, to: &str) -> Value {
        real_support::move_when_idle(&mut self.e, &self.store, Duration::from_secs(20), model, to)
    }
    fn engine_jobs(&mut self, model: &str) -> usize {
        let jobs = self.e.jobs_json(now());
        jobs["jobs"].as_array().map_or(0, |l| {
            l.iter().filter(|j| j["origin"] == "engine" && j["model_name"] == model).count()
        })
    }
}

#[test]
fn sleep_levels_follow_the_target_tier_and_the_level_two_wake_is_three_steps() {
    let mut r = rig();
    // From storage (level 2): weights, reload_weights, kv_cache, in order.
    let st = r.move_wait(A, "gpu0");
    assert_eq!(st["status"], "success", "{st}");
    assert!(!r.a.is_sleeping());
    let posts = r.a.posts();
    assert_eq!(
        posts,
        vec!["/wake_up?tags=weights", "/collective_rpc", "/wake_up?tags=kv_cache"],
        "{posts:?}"
    );
    assert_eq!(r.a.reloads(), 1);
    // To RAM: level 1 in the query string; the move ends once
    // /is_sleeping says true (asked right at success).
    let st = r.move_wait(A, "ram");
    assert_eq!(st["status"], "success", "{st}");
    assert!(r.a.is_sleeping(), "{:?} {st}", r.a.posts());
    assert_eq!(r.a.last_level(), Some(1));
    assert_eq!(r.a.weights(), engine_fakes::vllm::Weights::Cpu);
    assert_eq!(r.a.posts().last().map(String::as_str), Some("/sleep?level=1"));
    assert_eq!(r.tier_of(A), "ram");
    // From level 1: a plain wake_up.
    let st = r.move_wait(A, "gpu0");
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(r.a.posts().last().map(String::as_str), Some("/wake_up"));
    assert_eq!(r.a.reloads(), 1, "no reload from level 1");
    // To storage: level 2.
    let st = r.move_wait(A, "storage");
    assert_eq!(st["status"], "success", "{st}");
    assert!(r.a.is_sleeping());
    assert_eq!(r.a.last_level(), Some(2));
    assert_eq!(r.a.weights(), engine_fakes::vllm::Weights::Discarded);
    assert_eq!(r.tier_of(A), "storage");
    assert_eq!(r.tier_of(B), "storage", "the other instance untouched");
    assert!(r.b.posts().is_empty());
}

#[test]
fn wakes_and_sleeps_by_others_move_the_model_in_the_books() {
    let mut r = rig();
    r.b.external_wake();
    assert!(
        r.until(|e| e.model_json(now(), B).unwrap()["model"]["tier"] == "gpu0"),
        "external wake noticed"
    );
    assert!(r.engine_jobs(B) >= 1);
    r.b.external_sleep(1);
    // It leaves the tier, and its move on to RAM (origin engine) ends.
    assert!(
        r.until(|e| {
            let m = &e.model_json(now(), B).unwrap()["model"];
            m["tier"] != "gpu0" && m["job_id"].is_null()
        }),
        "external sleep noticed"
    );
    assert!(r.engine_jobs(B) >= 2);
    // The level of a sleep tierd did not order is unknown: the safe wake.
    let st = r.move_wait(B, "gpu0");
    assert_eq!(st["status"], "success", "{st}");
    let posts = r.b.posts();
    assert_eq!(
        &posts[posts.len() - 3..],
        ["/wake_up?tags=weights", "/collective_rpc", "/wake_up?tags=kv_cache"]
    );
}

#[test]
fn an_instance_down_makes_the_tier_unavailable_and_comes_back_awake() {
    let mut r = rig();
    assert_eq!(r.move_wait(A, "gpu0")["status"], "success");
    r.a.go_down();
    assert!(
        r.until(|e| {
            let t = &e.status_json(now())["tiers"]["gpu0"];
            t["available"] == false || t.to_string().contains("down")
        }),
        "{}",
        r.e.status_json(now())["tiers"]["gpu0"]
    );
    r.a.come_back();
    assert!(r.until(|e| e.status_json(now())["tiers"]["gpu0"]["available"] == true));
    assert!(
        r.until(|e| e.model_json(now(), A).unwrap()["model"]["tier"] == "gpu0"),
        "a restarted instance is awake"
    );
}

#[test]
fn a_sleep_that_fails_fails_the_move_and_the_model_stays_awake() {
    let mut r = rig();
    assert_eq!(r.move_wait(A, "gpu0")["status"], "success");
    r.a.fail_next("/sleep", Fault::Status(500, "CUDA error: out of memory".into()), 1);
    let st = r.move_wait(A, "ram");
    assert_eq!(st["status"], "failed", "{st}");
    let err = st["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("out of memory") && err.contains("gpu0"), "{st}");
    assert_eq!(r.tier_of(A), "gpu0", "the model is where it was");
    assert!(!r.a.is_sleeping(), "still awake");
    // The next try works.
    let st = r.move_wait(A, "ram");
    assert_eq!(st["status"], "success", "{st}");
    assert!(r.a.is_sleeping());
    assert_eq!(r.tier_of(A), "ram");
    let _ = &r.root;
}

#[test]
fn a_failed_wake_step_fails_the_move_and_puts_the_instance_back_to_sleep() {
    let mut r = rig();
    r.a.fail_next("/collective_rpc", Fault::Status(500, "Internal Server Error".into()), 1);
    let st = r.move_wait(A, "gpu0");
    assert_eq!(st["status"], "failed", "{st}");
    assert!(st["error"].as_str().unwrap_or_default().contains("500"), "{st}");
    assert_eq!(r.tier_of(A), "storage", "rolled back");
    // The weights woken for the failed move do not stay on the GPU.
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && r.a.weights() != engine_fakes::vllm::Weights::Discarded {
        r.e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(r.a.is_sleeping(), "the half-woken instance sleeps again");
    assert_eq!(r.a.weights(), engine_fakes::vllm::Weights::Discarded, "{:?}", r.a.posts());
    // A wake slower than load_timeout_s (5 s): failed, and asleep again.
    r.a.set_times(0.05, 5.5);
    let st = r.move_wait(A, "gpu0");
    assert_eq!(st["status"], "failed", "{st}");
    let err = st["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains("timed out") || err.contains("timeout"), "{st}");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !r.a.is_sleeping() {
        r.e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(r.a.is_sleeping());
    assert_eq!(r.tier_of(A), "storage");
    let _ = &r.root;
}

/// The RAM tier's books count what vLLM keeps in CPU memory: an instance
/// asleep at level 1 holds its weights there (counted at the model's
/// size), one at level 2 holds none, and one asleep at a level tierd did
/// not see is counted as level 1 (vLLM's default), on the safe side.
#[test]
fn level_one_copies_count_against_the_ram_budget() {
    let mut r = rig();
    let held = |r: &mut Rig| {
        r.e.tick(now());
        let st = r.e.status_json(now());
        (st["tiers"]["ram"]["engine_held_gb"].as_f64().expect("engine_held_gb") * 1e9).round() as u64
    };
    let bytes = 2 * MB;
    // Both asleep at a level /is_sleeping does not tell.
    assert!(r.until(|e| e.status_json(now())["tiers"]["gpu0"]["available"] == true));
    assert!(r.until(|e| {
        e.tick(now());
        e.status_json(now())["tiers"]["ram"]["engine_held_gb"].as_f64() == Some(2.0 * bytes as f64 / 1e9)
    }));
    let st = r.move_wait(A, "gpu0");
    assert_eq!(st["status"], "success", "{st}");
    // Awake: A's weights are on the GPU; its files pinned by the tier.
    let awake = held(&mut r);
    assert_eq!(awake, 2 * bytes, "A's pin and B's unknown sleep");
    let st = r.move_wait(A, "ram");
    assert_eq!(st["status"], "success", "{st}");
    // Level 1: A's files are booked in RAM, and its CPU copy on top.
    assert_eq!(held(&mut r), 2 * bytes, "A's CPU copy and B's unknown sleep");
    let used = r.e.status_json(now())["tiers"]["ram"]["used_gb"].as_f64().unwrap_or(0.0);
    assert_eq!((used * 1e9).round() as u64, bytes);
    // From RAM to storage: the CPU copy is of no use any more. vLLM
    // ignores a sleep while asleep: tierd wakes A and sleeps it at level 2.
    let st = r.move_wait(A, "storage");
    assert_eq!(st["status"], "success", "{st}");
    let t = std::time::Instant::now();
    while r.a.last_level() != Some(2) && t.elapsed() < Duration::from_secs(20) {
        r.e.tick(now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(r.a.last_level(), Some(2), "{:?}", r.a.posts());
    assert!(r.a.is_sleeping());
    assert_eq!(r.a.weights(), engine_fakes::vllm::Weights::Discarded);
    let posts = r.a.posts();
    assert_eq!(&posts[posts.len() - 2..], ["/wake_up", "/sleep?level=2"], "{posts:?}");
    assert_eq!(held(&mut r), bytes, "level 2 holds no weights; B's unknown sleep still counts");
    assert_eq!(r.tier_of(A), "storage", "the wake on the way is not a load");
    assert_eq!(r.engine_jobs(A), 0);
    assert!(r.b.posts().is_empty(), "an unknown sleep is left alone");
}
