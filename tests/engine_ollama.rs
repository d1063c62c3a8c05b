//! The `ollama` engine tier against the fake Ollama of `tests/engine_fakes`
//! (no Ollama binary can be installed on CI).

mod engine_fakes;

use std::time::Duration;

use engine_fakes::http::{Fault, request};
use engine_fakes::ollama::FakeOllama;
use serde_json::{Value, json};
use tierd::drivers::engine::ollama_wire::{KeepAlive, PsResponse, parse_rfc3339};

const MB: u64 = 1_000_000;

fn ps(url: &str) -> PsResponse {
    let (status, body) = request(url, "GET", "/api/ps", None).expect("ps");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("ps json")
}

/// The fake keeps the documented behaviours the driver relies on.
#[test]
fn fake_ollama_follows_the_documented_api() {
    let fake = FakeOllama::start(&[("llama3.2", 100 * MB), ("qwen:0.5b", 50 * MB)]);
    let url = fake.url();
    // Load: empty prompt, keep_alive -1 -> listed, expires centuries away.
    let (status, body) = request(
        &url,
        "POST",
        "/api/generate",
        Some(&json!({"model": "llama3.2", "keep_alive": -1, "stream": false})),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["done"], true);
    let listed = ps(&url);
    assert_eq!(listed.models.len(), 1);
    assert_eq!(listed.models[0].name, "llama3.2:latest");
    assert_eq!(listed.models[0].size_vram, 125 * MB);
    let expires = parse_rfc3339(&listed.models[0].expires_at).unwrap();
    assert!(
        expires > engine_fakes::unix_now() + 100.0 * 365.0 * 86400.0,
        "{}",
        listed.models[0].expires_at
    );
    // A native client's "5m" overrides the pin.
    let (status, _) = request(
        &url,
        "POST",
        "/api/generate",
        Some(&json!({"model": "llama3.2", "prompt": "hi", "keep_alive": "5m"})),
    )
    .unwrap();
    assert_eq!(status, 200);
    let expires = fake.expires_at("llama3.2").unwrap();
    assert!(expires < engine_fakes::unix_now() + 301.0);
    // Unload: done_reason "unload" at once, gone from /api/ps a little later.
    let (_, body) = request(&url, "POST", "/api/generate", Some(&json!({"model": "llama3.2", "keep_alive": 0}))).unwrap();
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["done_reason"], "unload");
    std::thread::sleep(Duration::from_millis(80));
    assert!(ps(&url).models.is_empty());
    // Unknown model: 404 with Ollama's message.
    let (status, body) = request(&url, "POST", "/api/generate", Some(&json!({"model": "nope"}))).unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("not found"), "{body}");
    // keep_alive of 1s expires on its own.
    request(
        &url,
        "POST",
        "/api/generate",
        Some(&json!({"model": "qwen:0.5b", "keep_alive": "1s"})),
    )
    .unwrap();
    assert_eq!(fake.loaded(), vec!["qwen:0.5b".to_string()]);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(fake.loaded().is_empty());
    // Tags list both.
    let (_, body) = request(&url, "GET", "/api/tags", None).unwrap();
    let tags: tierd::drivers::engine::ollama_wire::TagsResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(tags.models.len(), 2);
    // Faults, eviction, down and back.
    fake.fail_next("/api/ps", Fault::Garbage, 1);
    let (_, body) = request(&url, "GET", "/api/ps", None).unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err());
    fake.external_load("qwen:0.5b", KeepAlive::Forever);
    fake.set_max_loaded(Some(1));
    request(
        &url,
        "POST",
        "/api/generate",
        Some(&json!({"model": "llama3.2", "keep_alive": "10m"})),
    )
    .unwrap();
    assert_eq!(
        fake.loaded(),
        vec!["llama3.2:latest".to_string()],
        "the load evicted the other model"
    );
    fake.go_down();
    assert!(request(&url, "GET", "/api/ps", None).is_err());
    fake.come_back();
    assert!(ps(&url).models.is_empty(), "a restarted Ollama has nothing loaded");
}

/// The driver's operations, run straight against the fake.
struct Direct(String);

impl tierd::drivers::engine::ollama::Exchange for Direct {
    fn exchange(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
        engine_fakes::http::request_within(&self.0, method, path, body, timeout).map(|(s, b)| (s, b.into_bytes()))
    }
}

#[test]
fn the_operations_wait_for_api_ps() {
    use std::time::Instant;
    use tierd::drivers::engine::ollama as op;
    let fake = FakeOllama::start(&[("llama3.2", 100 * MB)]);
    let http = Direct(fake.url());
    let mut options = serde_json::Map::new();
    options.insert("num_ctx".into(), json!(2048));
    fake.set_load_s("llama3.2", 0.2);
    let r = op::load(&http, "llama3.2:latest", &options, Instant::now() + Duration::from_secs(5), &|| {
        false
    })
    .expect("load");
    assert_eq!(r.bytes, 125 * MB);
    assert!(!op::pin_overridden(r.expires_at, engine_fakes::unix_now()));
    assert_eq!(fake.options_of("llama3.2").unwrap()["num_ctx"], 2048);
    // Ollama takes a while to drop it from /api/ps: unload waits for that.
    fake.state.lock().unwrap().unload_s = 0.2;
    op::unload(&http, "llama3.2:latest", Instant::now() + Duration::from_secs(5)).expect("unload");
    assert!(fake.loaded().is_empty());
    // A load slower than its deadline times out.
    fake.set_load_s("llama3.2", 2.0);
    let e = op::load(
        &http,
        "llama3.2:latest",
        &options,
        Instant::now() + Duration::from_millis(300),
        &|| false,
    )
    .unwrap_err();
    assert!(e.contains("timed out"), "{e}");
    let e = op::load(&http, "nope", &options, Instant::now() + Duration::from_secs(5), &|| false).unwrap_err();
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn the_engine_state_reasserts_pins_and_unloads_abandoned_loads() {
    use tierd::drivers::engine::ollama::Ollama;
    let fake = FakeOllama::start(&[("llama3.2", 100 * MB), ("qwen:0.5b", 50 * MB)]);
    let mut options = serde_json::Map::new();
    options.insert("num_ctx".into(), json!(8192));
    let api = Ollama::new(Box::new(Direct(fake.url())), options, Duration::from_secs(5));
    assert_eq!(api.resolve("llama3.2").unwrap(), M);
    assert!(api.resolve("mistral").unwrap_err().contains("not found"));
    assert_eq!(api.load(M, Duration::from_secs(5), &|| false).unwrap(), 125 * MB);
    let first = api.observe(engine_fakes::unix_now()).unwrap();
    assert_eq!(first.running.len(), 1);
    assert!(first.accessed.is_empty(), "tierd's own load is not an access");
    // A client's "5m" request: an access, and the pin is re-asserted.
    request(
        &fake.url(),
        "POST",
        "/api/generate",
        Some(&json!({"model": M, "prompt": "hi", "keep_alive": "5m", "options": {"num_ctx": 8192}})),
    )
    .unwrap();
    let seen = api.observe(engine_fakes::unix_now()).unwrap();
    assert_eq!(seen.accessed, vec![M.to_string()]);
    assert!(
        fake.expires_at(M).unwrap() > engine_fakes::unix_now() + 100.0 * 365.0 * 86400.0,
        "pinned again"
    );
    assert_eq!(fake.state.lock().unwrap().loads_done, 1, "same options: no reload");
    assert!(
        api.observe(engine_fakes::unix_now()).unwrap().accessed.is_empty(),
        "the re-assertion is not an access"
    );
    // A model another client loaded is not tierd's to pin.
    fake.external_load("qwen:0.5b", KeepAlive::For(Duration::from_secs(60)));
    api.observe(engine_fakes::unix_now()).unwrap();
    assert!(fake.expires_at("qwen:0.5b").unwrap() < engine_fakes::unix_now() + 61.0);
    // A load that timed out and that Ollama finished later is unloaded.
    api.unload(M).unwrap();
    fake.set_load_s(M, 0.6);
    assert!(
        api.load(M, Duration::from_millis(200), &|| false)
            .unwrap_err()
            .contains("timed out")
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(fake.loaded().contains(&M.to_string()), "Ollama finished the load");
    let seen = api.observe(engine_fakes::unix_now()).unwrap();
    assert!(seen.running.iter().all(|r| r.name != M), "not adopted");
    std::thread::sleep(Duration::from_millis(80));
    assert!(!fake.loaded().contains(&M.to_string()), "unloaded");
}

// ------------------------------------------------------ tierd's ollama tier

mod real_support;

use real_support::{MB as MIB, Wire, engine, make_file, now};
use tierd::store::StateStore;
use tierd::tiers::{Engine, MoveOptions};

/// The model every test moves: Ollama's name is tierd's.
const M: &str = "llama3.2:latest";

/// A real machine with an `ollama` tier (`gpu0`) above `ram` (pagecache)
/// and `storage`, the model registered from storage, and the fake.
struct Rig {
    _root: tempfile::TempDir,
    fake: FakeOllama,
    e: Engine,
    store: StateStore,
}

fn rig_with(extra: &str, models: &[(&str, u64)]) -> Rig {
    let root = tempfile::tempdir().expect("tempdir");
    let fake = FakeOllama::start(models);
    let text = format!(
        "state_dir = {state:?}\nmax_single_model_gb = 100.0\n\
         [[tiers]]\nname = \"gpu0\"\ndriver = \"ollama\"\nurl = {url:?}\nmax_gb = 4.0\nmax_models = 3\npoll_s = 0.05\n\
         load_timeout_s = 5.0\noptions = {{ num_ctx = 8192 }}\n{extra}\n\
         [[tiers]]\nname = \"ram\"\ndriver = \"pagecache\"\nmax_gb = 4.0\nreserved_gb = 0.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"storage\"\ndriver = \"storage\"\naccess_s_per_gb = 2.0\n",
        state = root.path().join("state"),
        url = fake.url(),
    );
    let cfg = tierd::config::Config::from_toml(&text).expect("config parses");
    let (mut e, store, _) = engine(&cfg);
    for (name, _) in models {
        let file = root.path().join("blobs").join(name.replace(':', "-"));
        make_file(&file, 2 * MIB, 3);
        e.register_json(now(), &ollama_full(name), None, Some("storage"), Some(&file))
            .expect("register");
    }
    Rig {
        _root: root,
        fake,
        e,
        store,
    }
}

fn ollama_full(name: &str) -> String {
    engine_fakes::ollama::full_name(name)
}

fn rig() -> Rig {
    rig_with("", &[("llama3.2", 100 * MB), ("qwen:0.5b", 50 * MB)])
}

impl Rig {
    fn tick_for(&mut self, d: Duration) {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            self.e.tick(now());
            real_support::save(&mut self.e, &self.store);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    /// Ticks until `done` holds of the engine (at most 10 s); whether it did.
    fn until(&mut self, done: impl Fn(&mut Engine) -> bool) -> bool {
        real_support::tick_until(&mut self.e, &self.store, Duration::from_secs(10), done)
    }
    fn tier_of(&mut self, model: &str) -> String {
        real_support::tier_of(&mut self.e, model)
    }
    fn tier(&mut self, tier: &str) -> Value {
        self.e.status_json(now())["tiers"][tier].clone()
    }
    /// Moves and waits; the job's final status.
    fn move_wait(&mut self, model: &str, to: &str) -> Value {
        real_support::move_when_idle(&mut self.e, &self.store, Duration::from_secs(10), model, to)
    }
    /// The jobs recorded with `origin: "engine"` for `model`.
    fn engine_jobs(&mut self, model: &str) -> Vec<Value> {
        let jobs = self.e.jobs_json(now());
        let list = jobs["jobs"].as_array().cloned().unwrap_or_default();
        list.into_iter()
            .filter(|j| j["origin"] == "engine" && j["model_name"] == model)
            .collect()
    }
}

#[test]
fn a_move_loads_with_the_pin_and_options_and_a_demotion_unloads() {
    let mut r = rig();
    let st = r.move_wait(M, "gpu0");
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(r.fake.loaded(), vec![M.to_string()]);
    let load = r
        .fake
        .generate_requests()
        .into_iter()
        .find(|b| b["keep_alive"] == json!(-1))
        .expect("a load request");
    assert_eq!(load["model"], M);
    assert_eq!(load["options"]["num_ctx"], 8192, "the configured options go with the load");
    assert!(load.get("prompt").is_none_or(|p| p == ""), "no prompt: {load}");
    assert!(r.fake.expires_at(M).unwrap() > now() + 100.0 * 365.0 * 86400.0, "pinned forever");
    let info = r.e.model_json(now(), M).expect("model_info");
    assert_eq!(info["model"]["tier"], "gpu0", "{info}");
    // The footprint is what /api/ps reports (size_vram = 125 MB).
    assert!(r.until(|e| e.status_json(now())["tiers"]["gpu0"]["engine_loaded"][0]["id"] == M));
    let gpu = r.tier("gpu0");
    assert_eq!(gpu["models"], 1, "{gpu}");
    assert_eq!(gpu["loaded"][0]["model"], M, "{gpu}");
    assert_eq!(gpu["loaded"][0]["footprint_gb"], 0.125, "{gpu}");
    assert_eq!(gpu["loaded"][0]["footprint_source"], "engine", "{gpu}");
    assert_eq!(gpu["health"]["up"], true, "{gpu}");

    let st = r.move_wait(M, "ram");
    assert_eq!(st["status"], "success", "{st}");
    // The RAM tier pinned the files, and the move ended only once
    // /api/ps no longer listed the model: asked right at success.
    assert!(r.fake.loaded().is_empty(), "unloaded");
    assert!(
        r.fake
            .generate_requests()
            .iter()
            .any(|b| b["keep_alive"] == json!(0) && b["model"] == M)
    );
    assert_eq!(r.tier_of(M), "ram");
}

#[test]
fn loads_and_unloads_by_others_move_the_model_in_the_books() {
    let mut r = rig();
    r.fake.external_load("qwen:0.5b", KeepAlive::For(Duration::from_secs(300)));
    assert!(
        r.until(|e| e.model_json(now(), "qwen:0.5b").unwrap()["model"]["tier"] == "gpu0"),
        "external load noticed"
    );
    assert!(
        !r.engine_jobs("qwen:0.5b").is_empty(),
        "recorded with origin engine: {}",
        r.e.jobs_json(now())
    );
    r.fake.evict("qwen:0.5b");
    assert!(
        r.until(|e| e.model_json(now(), "qwen:0.5b").unwrap()["model"]["tier"] != "gpu0"),
        "eviction noticed"
    );
    assert!(r.engine_jobs("qwen:0.5b").len() >= 2, "{}", r.e.jobs_json(now()));
}

/// A native client's request with keep_alive "5m" and no options: Ollama
/// reloads the model (it leaves `/api/ps` for the load) and lets it expire
/// in 5 minutes. tierd follows the model out and back in, and re-asserts
/// keep_alive -1. `tick_during_reload`: whether tierd's engine ticks while
/// the reload runs (else the drop and the return reach it in one tick,
/// while the RAM move the drop started is still under way).
fn a_clients_keep_alive_is_overridden(tick_during_reload: bool) {
    let mut r = rig();
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    // Long enough for the poller (every 50 ms) to see the gap.
    r.fake.set_load_s(M, 0.4);
    let url = r.fake.url();
    let client = std::thread::spawn(move || {
        request(
            &url,
            "POST",
            "/api/generate",
            Some(&json!({"model": M, "prompt": "hi", "keep_alive": "5m"})),
        )
    });
    if tick_during_reload {
        while !client.is_finished() {
            r.tick_for(Duration::from_millis(10));
        }
    }
    let (status, _) = client.join().expect("client").expect("client request");
    assert_eq!(status, 200);
    if !tick_during_reload {
        // The poller saw the model leave and come back; no tick yet.
        std::thread::sleep(Duration::from_millis(200));
    }
    let fake_expiry = |r: &mut Rig| r.fake.expires_at(M).unwrap_or(0.0);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while fake_expiry(&mut r) < now() + 365.0 * 86400.0 && std::time::Instant::now() < end {
        r.tick_for(Duration::from_millis(20));
    }
    assert!(
        fake_expiry(&mut r) > now() + 100.0 * 365.0 * 86400.0,
        "tierd re-asserted keep_alive -1; jobs: {}",
        r.e.jobs_json(now())
    );
    assert!(
        r.until(|e| e.model_json(now(), M).unwrap()["model"]["tier"] == "gpu0"),
        "the books follow the model back: {}",
        r.e.jobs_json(now())
    );
    assert!(r.fake.loaded().contains(&M.to_string()));
}

#[test]
fn a_native_clients_keep_alive_is_overridden_by_the_pin() {
    a_clients_keep_alive_is_overridden(true);
}

/// The flake CI found: the engine's drop started a move to RAM, and the
/// engine's reload, seen in the same tick, was dropped while that move ran.
#[test]
fn a_reload_seen_while_the_model_moves_to_ram_is_taken_into_the_books() {
    a_clients_keep_alive_is_overridden(false);
}

/// The engine drops a model while tierd's move of it out of the engine
/// waits in the queue; the move is then cancelled. The drop still applies:
/// the books do not keep a model in the engine tier that the engine let go.
#[test]
fn a_drop_while_a_move_out_is_queued_applies_when_the_move_ends() {
    let mut r = rig();
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    // One move at a time, and that one slow: qwen into RAM at 1 MB/s.
    r.e.update_limits(now(), &[tierd::tiers::LimitChange::Concurrency(1)])
        .expect("limits");
    let slow = MoveOptions {
        bandwidth_mb_s: Some(1.0),
        ..MoveOptions::default()
    };
    let q = ollama_full("qwen:0.5b");
    let busy = r.e.move_model(now(), &q, "ram", &slow).expect("slow move");
    r.tick_for(Duration::from_millis(50));
    let queued = r.e.move_model(now(), M, "ram", &MoveOptions::default()).expect("move out");
    assert_eq!(r.e.job_json(now(), &queued.job_id).unwrap()["status"], "queued");
    r.fake.evict(M);
    // The poller (50 ms) sees it gone, while the move out still waits.
    r.tick_for(Duration::from_millis(300));
    assert_eq!(r.e.job_json(now(), &queued.job_id).unwrap()["status"], "queued");
    r.e.cancel_job(now(), &queued.job_id).expect("cancel");
    assert!(
        r.until(|e| {
            let m = &e.model_json(now(), M).unwrap()["model"];
            m["tier"] != "gpu0" && m["job_id"].is_null()
        }),
        "the drop applied: {}",
        r.e.jobs_json(now())
    );
    assert!(r.fake.loaded().is_empty());
    let _ = real_support::wait(&mut r.e, &busy.job_id, Duration::from_secs(20));
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success", "and it loads again");
}

#[test]
fn an_engine_down_makes_the_tier_unavailable_and_its_state_is_read_again() {
    let mut r = rig();
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    r.fake.go_down();
    assert!(
        r.until(|e| e.status_json(now())["tiers"]["gpu0"]["available"] == false),
        "{}",
        r.tier("gpu0")
    );
    let gpu = r.tier("gpu0");
    assert!(gpu.to_string().contains("127.0.0.1"), "the reason names the engine: {gpu}");
    // A move into it fails clearly (or waits) rather than hanging.
    let answer = r.e.move_model(now(), "qwen:0.5b", "gpu0", &MoveOptions::default());
    if let Ok(s) = answer {
        let st = real_support::wait(&mut r.e, &s.job_id, Duration::from_secs(20));
        assert_ne!(st["status"], "success", "{st}");
    }
    // Back, without the model (a restarted Ollama has nothing loaded): re-read.
    r.fake.come_back();
    assert!(
        r.until(|e| e.status_json(now())["tiers"]["gpu0"]["available"] == true),
        "{}",
        r.tier("gpu0")
    );
    // It leaves the tier, and its move on to RAM (origin engine) ends.
    assert!(
        r.until(|e| {
            let m = &e.model_json(now(), M).unwrap()["model"];
            m["tier"] != "gpu0" && m["job_id"].is_null()
        }),
        "the lost model left the tier"
    );
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
}

#[test]
fn a_load_that_times_out_fails_and_the_late_model_is_unloaded() {
    let mut r = rig_with("", &[("llama3.2", 100 * MB)]);
    // This test's timeout: 5 s configured; the load takes 8 s.
    r.fake.set_load_s(M, 8.0);
    let st = r.move_wait(M, "gpu0");
    assert_eq!(st["status"], "failed", "{st}");
    let err = st["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains("timed out") || err.contains("timeout"), "{st}");
    assert_eq!(r.tier_of(M), "storage", "rolled back");
    // The engine finished the abandoned load later; tierd unloads it.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end && (r.fake.is_loading(M) || !r.fake.loaded().is_empty()) {
        r.tick_for(Duration::from_millis(50));
    }
    assert!(r.fake.loaded().is_empty(), "the half-loaded model was unloaded");
    assert_eq!(r.tier_of(M), "storage");
}

#[test]
fn an_unload_that_fails_or_times_out_fails_the_move_and_the_model_stays_loaded() {
    let mut r = rig();
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    // Ollama refuses the keep_alive 0 request: a failed move with its
    // message, the model still in the engine tier (and still loaded).
    r.fake.fail_next(
        "/api/generate",
        Fault::Status(500, r#"{"error":"llama runner process has terminated"}"#.into()),
        1,
    );
    let st = r.move_wait(M, "ram");
    assert_eq!(st["status"], "failed", "{st}");
    let err = st["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("llama runner process has terminated") && err.contains("gpu0"), "{st}");
    assert_eq!(r.tier_of(M), "gpu0");
    assert_eq!(r.fake.loaded(), vec![M.to_string()]);
    let ram = r.tier("ram");
    assert_eq!(ram["models"], 0, "{ram}");
    assert_eq!(ram["incoming_models"].as_u64().unwrap_or(0), 0, "{ram}");
    // The RAM tier's pin taken for the move is released (rolled back).
    assert_eq!(ram["pinned_models"], json!([]), "{ram}");
    // The books still match the engine a few polls later (no external
    // unload is recorded).
    r.tick_for(Duration::from_millis(200));
    assert_eq!(r.tier_of(M), "gpu0");
    assert!(r.engine_jobs(M).is_empty());
    // An unload that /api/ps does not confirm within load_timeout_s (5 s).
    r.fake.state.lock().unwrap().unload_s = 7.0;
    let st = r.move_wait(M, "storage");
    assert_eq!(st["status"], "failed", "{st}");
    let err = st["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("/api/ps") && err.contains("gpu0"), "{st}");
    assert_eq!(r.tier_of(M), "gpu0", "{st}");
    // The engine finishes the unload late: noticed as the engine's own.
    r.fake.state.lock().unwrap().unload_s = 0.05;
    assert!(r.until(|e| e.model_json(now(), M).expect("model_info")["model"]["tier"] != "gpu0"));
    assert!(r.fake.loaded().is_empty());
}

/// While Ollama unloads a model, `/api/ps` lists it expiring now: that is
/// no native client's keep_alive to override, and re-asserting tierd's pin
/// then would load the model again.
#[test]
fn a_model_being_unloaded_is_not_pinned_again() {
    let mut r = rig();
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    let loads = |f: &FakeOllama| f.generate_requests().iter().filter(|b| b["keep_alive"] != json!(0)).count();
    let before = loads(&r.fake);
    let usage = |r: &mut Rig| r.e.model_json(now(), M).expect("model_info")["model"]["usage"].clone();
    let used = usage(&mut r);
    // Listed for 1 s after the unload's answer: 20 polls see it leaving.
    r.fake.state.lock().unwrap().unload_s = 1.0;
    let st = r.move_wait(M, "ram");
    assert_eq!(st["status"], "success", "{st}");
    r.tick_for(Duration::from_millis(300));
    // Its expires_at set to now by tierd's own unload is no client's access.
    assert_eq!(usage(&mut r), used);
    assert!(r.fake.loaded().is_empty(), "loaded again: {:?}", r.fake.generate_requests());
    assert_eq!(loads(&r.fake), before, "{:?}", r.fake.generate_requests());
    assert_eq!(r.tier_of(M), "ram");
}

#[test]
fn a_cancel_during_the_unload_completes_if_the_engine_let_go_else_cancels() {
    let mut r = rig();
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    // The unload takes 1 s: the cancel comes while it runs, too late.
    r.fake.state.lock().unwrap().unload_s = 1.0;
    r.e.tick(now());
    let id =
        r.e.move_model(now(), M, "ram", &MoveOptions::default())
            .expect("move accepted")
            .job_id;
    let state = r.fake.state.clone();
    assert!(
        r.until(|_| state.lock().unwrap().loaded.get(M).is_some_and(|l| l.leaving_at.is_some())),
        "the unload started"
    );
    let v = r.e.cancel_job(now(), &id).expect("cancel");
    assert_eq!(v.status.as_str(), "cancelling", "{v:?}");
    assert!(r.until(|e| e.job_ended(&id) != Some(false)));
    let st = r.e.job_json(now(), &id).expect("job");
    assert_eq!(st["status"], "success", "the engine let go: too late to cancel: {st}");
    assert_eq!(r.tier_of(M), "ram");
    assert!(r.fake.loaded().is_empty());
    // Back in, then an unload that fails while a cancel waits: cancelled.
    r.fake.state.lock().unwrap().unload_s = 0.05;
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
    let unloads = |f: &FakeOllama| f.generate_requests().iter().filter(|b| b["keep_alive"] == json!(0)).count();
    let before = unloads(&r.fake);
    r.fake.fail_next("/api/generate", Fault::Delay(Duration::from_millis(1000)), 1);
    r.e.tick(now());
    let id =
        r.e.move_model(now(), M, "ram", &MoveOptions::default())
            .expect("move accepted")
            .job_id;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while unloads(&r.fake) <= before && std::time::Instant::now() < end {
        r.e.tick(now());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(unloads(&r.fake) > before, "the unload started");
    // /api/ps fails from now on: the unload cannot be confirmed.
    r.fake.fail_next("/api/ps", Fault::Status(500, r#"{"error":"boom"}"#.into()), 400);
    let v = r.e.cancel_job(now(), &id).expect("cancel");
    assert_eq!(v.status.as_str(), "cancelling", "{v:?}");
    assert!(r.until(|e| e.job_ended(&id) != Some(false)));
    let st = r.e.job_json(now(), &id).expect("job");
    assert_eq!(st["status"], "cancelled", "{st}");
    r.fake.server.clear_faults();
    assert_eq!(r.tier_of(M), "gpu0", "{st}");
}

#[test]
fn garbage_and_http_errors_fail_the_move_with_the_engines_message() {
    let mut r = rig();
    r.fake.fail_next(
        "/api/generate",
        Fault::Status(
            500,
            r#"{"error":"model requires more system memory (7.1 GiB) than is available (3.2 GiB)"}"#.into(),
        ),
        10,
    );
    let st = r.move_wait(M, "gpu0");
    assert_eq!(st["status"], "failed", "{st}");
    assert!(
        st["error"].as_str().unwrap_or_default().contains("requires more system memory"),
        "{st}"
    );
    assert_eq!(r.tier_of(M), "storage");
    r.fake.server.clear_faults();
    r.fake.fail_next("/api/generate", Fault::Garbage, 10);
    let st = r.move_wait(M, "gpu0");
    assert_eq!(st["status"], "failed", "{st}");
    assert!(st["error"].as_str().unwrap_or_default().contains("garbage"), "{st}");
    assert_eq!(r.tier_of(M), "storage");
    r.fake.server.clear_faults();
    // Unknown to Ollama: a clear failure, not a hang.
    let file = r._root.path().join("blobs/unknown");
    make_file(&file, MIB, 9);
    r.e.register_json(now(), "mistral:7b", None, Some("storage"), Some(&file))
        .expect("register");
    let st = r.move_wait("mistral:7b", "gpu0");
    assert_eq!(st["status"], "failed", "{st}");
    assert!(st["error"].as_str().unwrap_or_default().contains("not found"), "{st}");
    // And the tier still works.
    assert_eq!(r.move_wait(M, "gpu0")["status"], "success");
}

// ------------------------------------------------------------ the property

mod props {
    use super::*;
    use proptest::prelude::*;

    /// What Ollama (or its other clients) may do between two polls.
    #[derive(Debug, Clone)]
    enum Op {
        /// Another client loads model `i` with this keep_alive (seconds).
        Load(usize, u64),
        /// Ollama unloads model `i` on its own.
        Evict(usize),
        /// A client shortens model `i`'s keep_alive (it stays loaded).
        Touch(usize),
    }

    const NAMES: [&str; 3] = ["llama3.2:latest", "qwen:0.5b", "phi3:mini"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..NAMES.len(), 60u64..600).prop_map(|(i, k)| Op::Load(i, k)),
            (0..NAMES.len()).prop_map(Op::Evict),
            (0..NAMES.len()).prop_map(Op::Touch),
        ]
    }

    fn books(e: &mut Engine) -> Vec<String> {
        let mut v: Vec<String> = NAMES
            .iter()
            .filter(|n| e.model_json(now(), n).ok().is_some_and(|m| m["model"]["tier"] == "gpu0"))
            .map(|n| n.to_string())
            .collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, max_shrink_iters: 16, ..ProptestConfig::default() })]

        /// Whatever Ollama does on its own, after the next poll tierd's
        /// books hold exactly the engine's loaded set, and the engine's
        /// invariants hold.
        #[test]
        fn the_books_follow_the_engine(ops in proptest::collection::vec(op(), 1..7)) {
            let mut r = rig_with("", &[(NAMES[0], 60 * MB), (NAMES[1], 40 * MB), (NAMES[2], 30 * MB)]);
            for op in ops {
                match op {
                    Op::Load(i, k) => r.fake.external_load(NAMES[i], KeepAlive::For(Duration::from_secs(k))),
                    Op::Evict(i) => r.fake.evict(NAMES[i]),
                    Op::Touch(i) => r.fake.set_expiry(NAMES[i], 120.0),
                }
                let mut engine_set = r.fake.loaded();
                engine_set.sort();
                let matched = r.until(|e| books(e) == engine_set);
                prop_assert!(matched, "books {:?} engine {:?}", books(&mut r.e), engine_set);
                r.e.check_invariants().map_err(|e| TestCaseError::fail(format!("invariants: {e}")))?;
            }
        }
    }

    /// What tierd's users, Ollama and its other clients may do, with no
    /// pause for tierd to settle in between.
    #[derive(Debug, Clone)]
    enum Mixed {
        Engine(Op),
        /// tierd moves model `i` to `TIERS[t]`.
        Move(usize, usize),
        /// A client's request without tierd's options: Ollama reloads the
        /// model (it leaves `/api/ps` for the load), keep_alive 5m.
        Reload(usize),
        /// Time for tierd, in ms.
        Tick(u64),
    }

    const TIERS: [&str; 3] = ["gpu0", "ram", "storage"];

    fn mixed() -> impl Strategy<Value = Mixed> {
        prop_oneof![
            2 => op().prop_map(Mixed::Engine),
            3 => (0..NAMES.len(), 0..TIERS.len()).prop_map(|(i, t)| Mixed::Move(i, t)),
            1 => (0..NAMES.len()).prop_map(Mixed::Reload),
            2 => (0u64..150).prop_map(Mixed::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10, max_shrink_iters: 16, ..ProptestConfig::default() })]

        /// tierd's own moves racing the engine's loads, evictions and
        /// reloads: once the moves are over and the engine is left alone,
        /// the books hold exactly the engine's loaded set, and the engine's
        /// invariants held all along.
        #[test]
        fn the_books_follow_the_engine_through_tierds_own_moves(ops in proptest::collection::vec(mixed(), 1..12)) {
            let mut r = rig_with("", &[(NAMES[0], 60 * MB), (NAMES[1], 40 * MB), (NAMES[2], 30 * MB)]);
            for name in NAMES {
                r.fake.set_load_s(name, 0.12);
            }
            let mut clients = Vec::new();
            for op in ops {
                match op {
                    Mixed::Engine(Op::Load(i, k)) => r.fake.external_load(NAMES[i], KeepAlive::For(Duration::from_secs(k))),
                    Mixed::Engine(Op::Evict(i)) => r.fake.evict(NAMES[i]),
                    Mixed::Engine(Op::Touch(i)) => r.fake.set_expiry(NAMES[i], 120.0),
                    Mixed::Move(i, t) => {
                        let _ = r.e.move_model(now(), NAMES[i], TIERS[t], &MoveOptions::default());
                    }
                    Mixed::Reload(i) => {
                        let url = r.fake.url();
                        clients.push(std::thread::spawn(move || {
                            request(&url, "POST", "/api/generate", Some(&json!({"model": NAMES[i], "prompt": "hi", "keep_alive": "5m"})))
                        }));
                    }
                    Mixed::Tick(ms) => r.tick_for(Duration::from_millis(ms)),
                }
                r.e.tick(now());
                r.e.check_invariants().map_err(|e| TestCaseError::fail(format!("invariants: {e}")))?;
            }
            for c in clients {
                let _ = c.join();
            }
            let url = r.fake.url();
            let settled = r.until(|e| {
                let idle = NAMES.iter().all(|n| e.model_json(now(), n).is_ok_and(|m| m["model"]["job_id"].is_null()));
                let mut loaded: Vec<String> = ps(&url).models.into_iter().map(|m| m.name).collect();
                loaded.sort();
                idle && books(e) == loaded
            });
            let mut engine_set = r.fake.loaded();
            engine_set.sort();
            prop_assert!(settled, "books {:?} engine {:?}; jobs {}", books(&mut r.e), engine_set, r.e.jobs_json(now()));
            r.e.check_invariants().map_err(|e| TestCaseError::fail(format!("invariants: {e}")))?;
        }
    }
}
