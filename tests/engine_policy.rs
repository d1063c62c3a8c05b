//! Pins and the default policy across engine tiers, against the fake Ollama
//! of `tests/engine_fakes`: a pinned model is never unloaded by pressure,
//! make-room or the policy, nor moved to another engine tier; a pinned model
//! the engine drops on its own is loaded back; and the `tierd` policy's
//! hour-of-day prediction pre-warms an engine tier like any other tier.

mod engine_fakes;
mod real_support;

use std::time::{Duration, Instant};

use engine_fakes::http::Fault;
use engine_fakes::ollama::{FakeOllama, full_name};
use serde_json::{Value, json};
use tierd::drivers::gpu::GpuProbe;
use tierd::store::StateStore;
use tierd::tiers::{Engine, MoveOptions};

use real_support::{MB as MIB, Wire, make_file};

const MB: u64 = 1_000_000;
/// The models: Ollama's names are tierd's.
const A: &str = "llama3.2:latest";
const B: &str = "qwen:0.5b";
const C: &str = "phi3:mini";

/// The engine's clock: wall time plus an offset that only grows (the
/// hour-of-day test jumps days ahead; the fakes keep wall time, which only
/// their keep_alive expiry reads, and tierd pins forever).
struct Clock {
    offset: f64,
}

impl Clock {
    fn now(&self) -> f64 {
        real_support::now() + self.offset
    }
    /// Jumps so that [`Clock::now`] reads `t` (never backwards).
    fn jump_to(&mut self, t: f64) {
        let d = t - self.now();
        assert!(d >= 0.0, "the clock only moves forward");
        self.offset += d;
    }
}

/// A real machine with one `ollama` tier per fake (`gpu0`, `gpu1`, ...,
/// fastest first) above `ram` (pagecache) and `storage`, under the default
/// `tierd` policy, every model registered from storage.
struct Rig {
    _root: tempfile::TempDir,
    fakes: Vec<FakeOllama>,
    e: Engine,
    store: StateStore,
    clock: Clock,
    cfg: tierd::config::Config,
}

/// `engine_tiers`: each engine tier's extra TOML (e.g. `max_models = 1`).
fn rig(engine_tiers: &[&str], models: &[(&str, u64)], extra: &str) -> Rig {
    rig_at(engine_tiers, models, extra, 0.0)
}

fn rig_at(engine_tiers: &[&str], models: &[(&str, u64)], extra: &str, offset: f64) -> Rig {
    let root = tempfile::tempdir().expect("tempdir");
    let fakes: Vec<FakeOllama> = engine_tiers.iter().map(|_| FakeOllama::start(models)).collect();
    let mut text = format!(
        "state_dir = {state:?}\nmax_single_model_gb = 100.0\npolicy = \"tierd\"\n{extra}\n",
        state = root.path().join("state")
    );
    for (i, (tier, fake)) in engine_tiers.iter().zip(&fakes).enumerate() {
        text.push_str(&format!(
            "[[tiers]]\nname = \"gpu{i}\"\ndriver = \"ollama\"\nurl = {url:?}\nmax_gb = 4.0\npoll_s = 0.05\n\
             load_timeout_s = 5.0\n{tier}\n",
            url = fake.url()
        ));
    }
    text.push_str(
        "[[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 4.0\nreserved_gb = 0.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
    );
    let cfg = tierd::config::Config::from_toml(&text).expect("config parses");
    assert_eq!(cfg.policy, tierd::config::DEFAULT_POLICY);
    let (mut e, store) = open(&cfg);
    let clock = Clock { offset };
    for (i, (name, _)) in models.iter().enumerate() {
        let file = root.path().join("blobs").join(name.replace(':', "-"));
        make_file(&file, 2 * MIB, i as u64 + 3);
        e.register_json(clock.now(), &full_name(name), None, Some("storage"), Some(&file))
            .expect("register");
    }
    Rig {
        _root: root,
        fakes,
        e,
        store,
        clock,
        cfg,
    }
}

/// The engine under the configured policy, with what the state file holds.
fn open(cfg: &tierd::config::Config) -> (Engine, StateStore) {
    let policy = tierd::optimizer::policy_by_name(&cfg.policy, cfg).expect("the default policy");
    let (e, store, _) = real_support::try_engine_with(cfg, GpuProbe::open, policy).expect("real machine opens");
    (e, store)
}

fn models() -> Vec<(&'static str, u64)> {
    vec![("llama3.2", 100 * MB), ("qwen:0.5b", 50 * MB), ("phi3:mini", 30 * MB)]
}

impl Rig {
    fn now(&self) -> f64 {
        self.clock.now()
    }
    /// One tick and a save, as the server does.
    fn tick(&mut self) {
        let now = self.now();
        self.e.tick(now);
        let snap = self.e.snapshot(now);
        self.store.save(&snap, now).expect("save state");
        self.e.saved(snap.epoch);
    }
    /// Saves, stops the engine and starts a new one on the same state
    /// directory, as a restart of the server does.
    fn restart(&mut self) {
        self.tick();
        let (e, store) = {
            let placeholder = tempfile::tempdir().expect("tempdir");
            let empty = tierd::config::Config::from_toml(&format!(
                "state_dir = {:?}\n[[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 1.0\n\
                 [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\n",
                placeholder.path().join("state")
            ))
            .expect("config");
            let stand_in = open(&empty);
            // The old engine and its lock on the state directory go first.
            drop(std::mem::replace(&mut self.e, stand_in.0));
            drop(std::mem::replace(&mut self.store, stand_in.1));
            open(&self.cfg)
        };
        self.e = e;
        self.store = store;
    }
    /// Ticks until `done` holds (at most 10 s of wall time); whether it did.
    fn until(&mut self, done: impl Fn(&mut Rig) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            self.tick();
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
    /// Ticks for `d` of wall time.
    fn tick_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.tick();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn model(&mut self, name: &str) -> Value {
        let now = self.now();
        self.e.model_json(now, name).expect("model_info")["model"].clone()
    }
    fn tier_of(&mut self, name: &str) -> String {
        self.model(name)["tier"].as_str().unwrap_or_default().to_string()
    }
    fn idle(&mut self, name: &str) -> bool {
        self.model(name)["job_id"].is_null()
    }
    fn tier(&mut self, tier: &str) -> Value {
        let now = self.now();
        self.e.status_json(now)["tiers"][tier].clone()
    }
    /// Waits for `name` to be idle, moves it and waits for the move's end;
    /// the job's final status.
    fn move_wait(&mut self, name: &str, to: &str, opts: &MoveOptions) -> Value {
        assert!(self.until(|r| r.idle(name)), "{name} is still moving");
        let now = self.now();
        let s = self.e.move_model(now, name, to, opts).expect("move accepted");
        let id = s.job_id.clone();
        assert!(self.until(|r| r.e.job_ended(&id) != Some(false)), "job {id} did not end");
        let now = self.now();
        self.e.job_json(now, &id).expect("job status")
    }
    fn move_to(&mut self, name: &str, to: &str) {
        let st = self.move_wait(name, to, &MoveOptions::default());
        assert_eq!(st["status"], "success", "{st}");
    }
    fn pin(&mut self, name: &str, pinned: bool) {
        self.e.set_pinned(name, pinned).expect("pin_model");
    }
    /// The fake's `/api/ps`, not tierd's books.
    fn loaded(&self, engine: usize) -> Vec<String> {
        let (status, body) = engine_fakes::http::request(&self.fakes[engine].url(), "GET", "/api/ps", None).expect("ps");
        assert_eq!(status, 200, "{body}");
        let ps: tierd::drivers::engine::ollama_wire::PsResponse = serde_json::from_str(&body).expect("ps json");
        let mut names: Vec<String> = ps.models.into_iter().map(|m| m.name).collect();
        names.sort();
        names
    }
    /// Every job in the history (and queue) of `name`.
    fn jobs_of(&mut self, name: &str) -> Vec<Value> {
        let now = self.now();
        let jobs = self.e.jobs_json(now);
        jobs["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|j| j["model_name"] == name)
            .collect()
    }
    fn access(&mut self, name: &str, times: usize) {
        for _ in 0..times {
            let now = self.now();
            self.e.access(now, name).expect("access");
        }
    }
}

fn make_room() -> MoveOptions {
    MoveOptions {
        make_room: true,
        ..MoveOptions::default()
    }
}

// ------------------------------------------------------------ pins and room

/// An engine tier that holds one model: the pinned one is never unloaded to
/// make room, by a move with make-room, the policy or `auto_optimize`; an
/// unpinned one goes to RAM (its files locked there) for the newcomer.
#[test]
fn a_pinned_model_holds_its_engine_slot_against_make_room_and_the_policy() {
    let mut r = rig(&["max_models = 1"], &models(), "");
    r.move_to(A, "gpu0");
    r.pin(A, true);
    assert_eq!(r.loaded(0), vec![A.to_string()]);

    // A move with make-room into the full tier: refused, clearly.
    let now = r.now();
    let err = r.e.move_model(now, B, "gpu0", &make_room()).expect_err("no room");
    assert_eq!(err.to_string(), "GPU0 limit exceeded: gpu0 may hold at most 1 models", "{err:?}");
    // The policy: B is hot, A never accessed; neither an access nor
    // auto_optimize unloads A.
    r.access(B, 20);
    let now = r.now();
    let plan = r.e.optimize(now, false);
    for s in &plan.steps {
        assert!(s.model_name != A, "the pinned model is not in the plan: {:?}", plan.steps);
        if s.model_name == B && s.target_tier == "gpu0" {
            assert!(s.job_id.is_none(), "B cannot get in: {:?}", plan.steps);
        }
    }
    r.tick_for(Duration::from_millis(300));
    assert!(r.until(|r| r.idle(B)));
    assert_eq!(r.tier_of(A), "gpu0");
    assert_ne!(r.tier_of(B), "gpu0");
    assert_eq!(r.loaded(0), vec![A.to_string()], "A is still loaded in the engine");
    assert!(
        r.jobs_of(A)
            .iter()
            .all(|j| j["target_tier"] != "ram" && j["target_tier"] != "storage"),
        "no job took A out: {:?}",
        r.jobs_of(A)
    );

    // Unpinned: the same move makes room, A goes to RAM and stays resident.
    r.pin(A, false);
    let st = r.move_wait(B, "gpu0", &make_room());
    assert_eq!(st["status"], "success", "{st}");
    assert!(r.until(|r| r.idle(A)));
    assert_eq!(
        r.loaded(0),
        vec![B.to_string()],
        "{:?} {:?}",
        r.jobs_of(A),
        r.fakes[0].generate_requests()
    );
    assert_eq!(r.tier_of(A), "ram");
    let ram = r.tier("ram");
    assert!(
        ram["pinned_models"].as_array().is_some_and(|p| p.contains(&json!(A))),
        "A's files are locked in RAM: {ram}"
    );
    let out = r.jobs_of(A);
    assert!(
        out.iter()
            .any(|j| j["origin"] == "make_room" && j["target_tier"] == "ram" && j["status"] == "success"),
        "{out:?}"
    );
}

/// Two pinned models and one unpinned: pressure picks only the unpinned
/// one, and once only pinned models are left the tier refuses.
#[test]
fn make_room_in_an_engine_tier_takes_only_the_coldest_unpinned_model() {
    let mut r = rig(&["max_models = 2"], &models(), "");
    r.move_to(A, "gpu0");
    r.move_to(B, "gpu0");
    r.pin(A, true);
    // B (unpinned) is the only candidate, though A is colder (never used).
    r.access(B, 5);
    let st = r.move_wait(C, "gpu0", &make_room());
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(r.loaded(0), vec![A.to_string(), full_name(C)]);
    assert!(r.until(|r| r.idle(B)));
    assert_eq!(r.tier_of(B), "ram");
    // Now C pinned too: nothing may leave.
    r.pin(C, true);
    let now = r.now();
    let err = r.e.move_model(now, B, "gpu0", &make_room()).expect_err("only pinned models");
    assert_eq!(err.to_string(), "GPU0 limit exceeded: gpu0 may hold at most 2 models", "{err:?}");
    r.tick_for(Duration::from_millis(200));
    assert_eq!(r.loaded(0), vec![A.to_string(), full_name(C)]);
}

// ---------------------------------------------------- two engine tiers

/// A model pinned in one engine tier stays there: the policy does not move
/// it to the other (up on its accesses, or down for a hotter model), and
/// pressure on its tier leaves it loaded.
#[test]
fn pins_hold_across_two_engine_tiers() {
    let mut r = rig(&["max_models = 1", "max_models = 1"], &models(), "");
    // A pinned in the slower engine tier, gpu1; gpu0 is empty.
    r.move_to(A, "gpu1");
    r.pin(A, true);
    // Heavy use of A: an unpinned model would be promoted to gpu0.
    r.access(A, 30);
    let now = r.now();
    r.e.optimize(now, false);
    r.tick_for(Duration::from_millis(300));
    assert_eq!(r.tier_of(A), "gpu1", "{:?}", r.jobs_of(A));
    assert!(r.loaded(0).is_empty(), "nothing was loaded into gpu0");
    assert_eq!(r.loaded(1), vec![A.to_string()]);

    // B hot and pinned in gpu0: C, hotter still, cannot push either out.
    r.move_to(B, "gpu0");
    r.pin(B, true);
    r.access(C, 60);
    let now = r.now();
    r.e.optimize(now, false);
    assert!(r.until(|r| r.idle(C)));
    assert_eq!(r.tier_of(C), "ram", "C could get no engine tier: {:?}", r.jobs_of(C));
    for tier in ["gpu0", "gpu1"] {
        let now = r.now();
        let err = r.e.move_model(now, C, tier, &make_room()).expect_err("only a pinned model there");
        assert!(err.to_string().contains(&format!("{tier} may hold at most 1 models")), "{err}");
    }
    r.tick_for(Duration::from_millis(300));
    assert!(r.until(|r| r.idle(C)));
    assert_eq!(r.tier_of(A), "gpu1");
    assert_eq!(r.tier_of(B), "gpu0");
    assert_eq!(r.loaded(0), vec![B.to_string()]);
    assert_eq!(r.loaded(1), vec![A.to_string()]);

    // Unpinned, the policy may rebalance them again: C gets in somewhere.
    r.pin(B, false);
    let now = r.now();
    r.e.optimize(now, false);
    assert!(r.until(|r| r.idle(B) && r.idle(C)));
    assert!(
        r.tier_of(C) == "gpu0" || r.tier_of(C) == "gpu1",
        "C, the hottest, got an engine tier: {:?}",
        r.jobs_of(C)
    );
    assert_eq!(r.tier_of(A), "gpu1", "A is still pinned there");
}

// ------------------------------------- a pinned model the engine dropped

/// The `/api/generate` loads (`keep_alive: -1`, no prompt) of `name`.
fn loads_of(fake: &FakeOllama, name: &str) -> usize {
    fake.generate_requests()
        .iter()
        .filter(|b| b["model"] == name && b["keep_alive"] == json!(-1))
        .count()
}

/// Ollama drops a pinned model on its own (eviction, expiry, a crashed
/// runner): tierd books it down, as it must, and loads it back into the
/// engine tier, a job of its own in the history; an unpinned one goes to RAM.
#[test]
fn a_pinned_model_the_engine_dropped_is_loaded_back() {
    let mut r = rig(&["max_models = 3"], &models(), "");
    r.move_to(A, "gpu0");
    r.move_to(B, "gpu0");
    r.pin(A, true);
    r.fakes[0].evict(A);
    r.fakes[0].evict(B);
    assert!(
        r.until(|r| r.loaded(0) == vec![A.to_string()] && r.idle(A) && r.idle(B) && r.tier_of(A) == "gpu0"),
        "A loaded back: {:?} {:?}",
        r.loaded(0),
        r.jobs_of(A)
    );
    assert_eq!(r.tier_of(B), "ram", "the unpinned one went to RAM: {:?}", r.jobs_of(B));
    let jobs = r.jobs_of(A);
    assert!(
        jobs.iter()
            .any(|j| j["origin"] == "engine" && j["target_tier"] == "storage" && j["status"] == "success"),
        "the drop is recorded: {jobs:?}"
    );
    let back = jobs
        .iter()
        .find(|j| j["origin"] == "engine" && j["target_tier"] == "gpu0")
        .unwrap_or_else(|| panic!("a reload job: {jobs:?}"));
    assert_eq!(back["status"], "success", "{back}");
    assert!(back["reason"].as_str().unwrap_or_default().contains("pinned in gpu0"), "{back}");
    assert!(
        r.fakes[0].expires_at(A).unwrap() > r.now() + 100.0 * 365.0 * 86400.0,
        "pinned forever again"
    );
    assert_eq!(r.model(A)["pinned"], true);

    // Expiry (a native client's short keep_alive that ran out): the same.
    r.fakes[0].set_expiry(A, 0.0);
    r.tick_for(Duration::from_millis(100));
    assert!(r.until(|r| r.loaded(0) == vec![A.to_string()] && r.idle(A) && r.tier_of(A) == "gpu0"));
}

/// An engine that refuses the reload: one failed load, then the model waits
/// in RAM (its files locked) rather than being loaded again and again.
#[test]
fn a_pinned_model_the_engine_refuses_to_load_back_waits_in_ram() {
    let mut r = rig(&["max_models = 3"], &models(), "");
    r.move_to(A, "gpu0");
    r.pin(A, true);
    let before = loads_of(&r.fakes[0], A);
    r.fakes[0].fail_next(
        "/api/generate",
        Fault::Status(
            500,
            r#"{"error":"model requires more system memory (7.1 GiB) than is available (3.2 GiB)"}"#.into(),
        ),
        1000,
    );
    r.fakes[0].evict(A);
    assert!(r.until(|r| r.tier_of(A) == "ram" && r.idle(A)), "A went to RAM: {:?}", r.jobs_of(A));
    let jobs = r.jobs_of(A);
    let failed = jobs
        .iter()
        .find(|j| j["origin"] == "engine" && j["target_tier"] == "gpu0")
        .unwrap_or_else(|| panic!("a reload job: {jobs:?}"));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap_or_default().contains("requires more system memory"),
        "{failed}"
    );
    let to_ram = jobs
        .iter()
        .find(|j| j["origin"] == "engine" && j["target_tier"] == "ram")
        .unwrap_or_else(|| panic!("a move to RAM: {jobs:?}"));
    assert!(
        to_ram["reason"].as_str().unwrap_or_default().contains("loading it back failed"),
        "{to_ram}"
    );
    let ram = r.tier("ram");
    assert!(ram["pinned_models"].as_array().is_some_and(|p| p.contains(&json!(A))), "{ram}");
    // No more tries: the load count stays where it is.
    let tried = loads_of(&r.fakes[0], A);
    assert!(tried > before, "the reload was tried");
    r.tick_for(Duration::from_millis(500));
    assert_eq!(loads_of(&r.fakes[0], A), tried, "not loaded again and again");
    assert_eq!(r.model(A)["pinned"], true, "still pinned");
    // Once the engine takes it again, a move_tier puts it back.
    r.fakes[0].server.clear_faults();
    r.move_to(A, "gpu0");
    assert_eq!(r.loaded(0), vec![A.to_string()]);
}

/// An engine that keeps dropping the pinned model right after each reload:
/// tierd loads it back with the retry backoff, a bounded number of times,
/// then leaves it in RAM and says why.
#[test]
fn an_engine_that_keeps_dropping_a_pinned_model_is_not_fought_forever() {
    let mut r = rig(&["max_models = 3"], &models(), "[moves]\nretry_base_s = 0.05\nretry_cap_s = 0.2\n");
    r.move_to(A, "gpu0");
    r.pin(A, true);
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && !(r.tier_of(A) == "ram" && r.idle(A)) {
        // Dropped once tierd has it back (not in the middle of its load).
        if r.idle(A) && r.tier_of(A) == "gpu0" && r.fakes[0].loaded().contains(&A.to_string()) {
            r.fakes[0].evict(A);
        }
        r.tick();
        std::thread::sleep(Duration::from_millis(5));
    }
    let jobs = r.jobs_of(A);
    assert_eq!(r.tier_of(A), "ram", "{jobs:?}");
    let reloads: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["origin"] == "engine" && j["target_tier"] == "gpu0")
        .collect();
    assert_eq!(reloads.len(), 5, "{jobs:?}");
    let to_ram = jobs
        .iter()
        .find(|j| j["origin"] == "engine" && j["target_tier"] == "ram")
        .unwrap_or_else(|| panic!("a move to RAM: {jobs:?}"));
    assert!(
        to_ram["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("dropped it 6 times in a row"),
        "{to_ram}"
    );
    let loads = loads_of(&r.fakes[0], A);
    r.tick_for(Duration::from_millis(500));
    assert_eq!(loads_of(&r.fakes[0], A), loads, "no more loads");
}

// ------------------------------------------- hour-of-day pre-warming

/// The default policy's hour-of-day prediction warms an engine tier like
/// any other: A was used at the same hour on each of the last two days, so
/// on the policy tick shortly before that hour it is loaded into the
/// engine, without an access; B, used at that hour only yesterday, is not.
/// The engine's clock runs two days behind wall time and jumps ahead (the
/// server's clock is the engine's; the fake reads wall time only for
/// keep_alive, and tierd pins forever).
#[test]
fn the_default_policy_prewarms_an_engine_tier_before_a_models_busy_hour() {
    prewarms(false);
}

/// The same across a restart of tierd just before the busy hour: the
/// policy's hour-by-hour history is in the state file.
#[test]
fn the_prewarming_history_survives_a_restart() {
    prewarms(true);
}

fn prewarms(restart: bool) {
    // T: the next whole hour of wall time; the busy hour is [T, T + 1 h).
    let hour = 3600.0;
    let day = 24.0 * hour;
    let t = ((real_support::now() / hour).floor() + 1.0) * hour;
    let start = t - 2.0 * day - 3.0 * hour;
    let offset = start - real_support::now();
    let mut r = rig_at(&["max_models = 1"], &models(), "", offset);
    let accesses = |r: &mut Rig, name: &str, at: f64| {
        for i in 0..3 {
            r.clock.jump_to(at + 10.0 * i as f64);
            r.access(name, 1);
            r.tick();
        }
        assert!(r.until(|r| r.idle(name)), "{:?}", r.jobs_of(name));
    };
    // B's first access: its history is as long as A's.
    accesses(&mut r, B, t - 2.0 * day - 2.0 * hour);
    // Two days ago and yesterday at the busy hour: A; yesterday only: B.
    accesses(&mut r, A, t - 2.0 * day + 10.0);
    accesses(&mut r, A, t - day + 10.0);
    accesses(&mut r, B, t - day + 100.0);
    // Ten minutes before the hour, both wait in RAM, nothing in the engine.
    r.clock.jump_to(t - 600.0);
    if restart {
        r.restart();
        assert_eq!(r.model(A)["usage"], 6, "the usage came back: {}", r.model(A));
    }
    for m in [A, B] {
        if r.tier_of(m) != "ram" {
            r.move_to(m, "ram");
        }
    }
    assert!(r.until(|r| r.loaded(0).is_empty() && r.idle(A) && r.idle(B)));
    let usage = r.model(A)["usage"].clone();
    assert_eq!(usage, 6, "{}", r.model(A));
    // A policy tick whose look-ahead does not reach the hour: nothing.
    let now = r.now();
    let steps = r.e.policy_tick(now);
    assert!(steps.is_empty(), "{steps:?}");
    r.tick_for(Duration::from_millis(200));
    assert!(r.loaded(0).is_empty());
    // The tick just before the hour: A is loaded into the engine.
    r.clock.jump_to(t - 30.0);
    r.tick();
    let now = r.now();
    let steps = r.e.policy_tick(now);
    assert!(
        steps
            .iter()
            .any(|s| s.model_name == A && s.target_tier == "gpu0" && s.job_id.is_some()),
        "{steps:?}"
    );
    assert!(r.until(|r| r.idle(A) && r.tier_of(A) == "gpu0"), "{:?}", r.jobs_of(A));
    assert_eq!(r.loaded(0), vec![A.to_string()], "loaded in the engine");
    assert!(r.fakes[0].expires_at(A).unwrap() > real_support::now() + 100.0 * 365.0 * 86400.0);
    let prewarm = r
        .jobs_of(A)
        .into_iter()
        .find(|j| j["target_tier"] == "gpu0" && j["origin"] == "policy")
        .expect("the policy's job");
    assert!(
        prewarm["reason"].as_str().unwrap_or_default().contains("busy hour ahead"),
        "{prewarm}"
    );
    assert_eq!(r.model(A)["usage"], usage, "no access in the busy hour");
    assert_eq!(r.tier_of(B), "ram");
    // auto_optimize keeps it there for its hour (its predicted rate is a
    // floor): B does not take the one slot.
    let now = r.now();
    r.e.optimize(now, false);
    assert!(r.until(|r| r.idle(A) && r.idle(B)));
    r.tick_for(Duration::from_millis(200));
    assert_eq!(r.tier_of(A), "gpu0");
    assert_eq!(r.loaded(0), vec![A.to_string()]);
}
