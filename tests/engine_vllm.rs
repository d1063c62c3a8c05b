//! The `vllm` engine tier against the fake vLLM of `tests/engine_fakes`
//! (no vLLM can run on CI: it needs a GPU).

mod engine_fakes;

use engine_fakes::http::request;
use engine_fakes::vllm::{FakeVllm, Weights};
use serde_json::json;

fn is_sleeping(url: &str) -> bool {
    let (status, body) = request(url, "GET", "/is_sleeping", None).expect("is_sleeping");
    assert_eq!(status, 200);
    serde_json::from_str::<tierd::drivers::engine::vllm_wire::IsSleepingResponse>(&body).expect("json").is_sleeping
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
