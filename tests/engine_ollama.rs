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
    let (status, body) =
        request(&url, "POST", "/api/generate", Some(&json!({"model": "llama3.2", "keep_alive": -1, "stream": false}))).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["done"], true);
    let listed = ps(&url);
    assert_eq!(listed.models.len(), 1);
    assert_eq!(listed.models[0].name, "llama3.2:latest");
    assert_eq!(listed.models[0].size_vram, 125 * MB);
    let expires = parse_rfc3339(&listed.models[0].expires_at).unwrap();
    assert!(expires > engine_fakes::unix_now() + 100.0 * 365.0 * 86400.0, "{}", listed.models[0].expires_at);
    // A native client's "5m" overrides the pin.
    let (status, _) =
        request(&url, "POST", "/api/generate", Some(&json!({"model": "llama3.2", "prompt": "hi", "keep_alive": "5m"}))).unwrap();
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
    request(&url, "POST", "/api/generate", Some(&json!({"model": "qwen:0.5b", "keep_alive": "1s"}))).unwrap();
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
    request(&url, "POST", "/api/generate", Some(&json!({"model": "llama3.2", "keep_alive": "10m"}))).unwrap();
    assert_eq!(fake.loaded(), vec!["llama3.2:latest".to_string()], "the load evicted the other model");
    fake.go_down();
    assert!(request(&url, "GET", "/api/ps", None).is_err());
    fake.come_back();
    assert!(ps(&url).models.is_empty(), "a restarted Ollama has nothing loaded");
}
