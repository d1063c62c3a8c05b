//! The `id` of a request comes back byte for byte as it was sent, whatever
//! its JSON: numbers a float would round (`1e-30`), integers past `u64`,
//! `-0`, `1.0`, strings with escapes, nested values with their spacing; on
//! answers, errors and the `tier_status` fast path alike.

use serde_json::Value;
use tierd::config::Config;
use tierd::drivers::sim::simulated_machine;
use tierd::optimizer::UsagePolicy;
use tierd::server::shared::{Answer, Clock, SharedEngine};
use tierd::tiers::Engine;

fn shared() -> SharedEngine {
    let cfg = Config::seed_default();
    let (machine, _) = simulated_machine(&cfg, false);
    let engine = Engine::new(cfg, machine, Box::new(UsagePolicy), 1_700_000_000.0).expect("engine");
    SharedEngine::new(engine, Clock::new(1.0))
}

/// The answer line to `line`, as bytes.
fn answer(s: &SharedEngine, line: &str) -> String {
    let mut out = Vec::new();
    let a = s.answer_line(line.as_bytes(), &mut out);
    assert_eq!(a, Answer::Written, "{line}");
    let text = String::from_utf8(out).expect("UTF-8 answer");
    assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "one line: {text:?}");
    let v: Value = serde_json::from_str(&text).expect("the answer is JSON");
    assert!(v.is_object(), "{text}");
    text
}

/// The id's text in an answer line: it is written first, `{"id":<text>,`.
fn echoed_id(answer: &str) -> &str {
    let rest = answer.strip_prefix("{\"id\":").unwrap_or_else(|| panic!("id first: {answer}"));
    // The id's own text is what follows up to the answer's next key; find
    // it by parsing the longest prefix that is one JSON value.
    let mut de = serde_json::Deserializer::from_str(rest).into_iter::<serde::de::IgnoredAny>();
    de.next().expect("an id").expect("a JSON id");
    &rest[..de.byte_offset()]
}

const IDS: &[&str] = &[
    "1e-30",
    "1.0",
    "1E5",
    "-0",
    "-0.0",
    "0.1",
    "12345678901234567890123456789",
    "18446744073709551616",
    "-9223372036854775809",
    "1.7976931348623157e308",
    "5e-324",
    "123.4560",
    "7",
    r#""plain""#,
    r#""tab\tand \"quote\" and \u00e9 and \ud83d\ude00""#,
    r#""\u0041\/\\""#,
    r#""é😀 raw""#,
    "null",
    "true",
    "[]",
    r#"{"a": [1, 2.50, "x"],  "b" : {}}"#,
    r#"[1e-30, {"k":"\u0000"}]"#,
];

#[test]
fn ids_are_echoed_byte_for_byte() {
    let s = shared();
    for id in IDS {
        for body in [
            r#""health": true"#,
            r#""tier_status": true"#,
            r#""model_info": "nope""#,
            r#""list_models": {"tier": "ram"}"#,
            r#""teleport": 1"#,
            r#""move_tier": {"model_name": 5}"#,
            r#""health": true, "metrics": true"#,
        ] {
            for line in [format!(r#"{{"id": {id}, {body}}}"#), format!(r#"{{{body},"id":{id}}}"#)] {
                let a = answer(&s, &line);
                assert_eq!(echoed_id(&a), *id, "{line} -> {a}");
            }
        }
    }
}

#[test]
fn ids_of_waited_moves_are_echoed_byte_for_byte() {
    let s = shared();
    let line = r#"{"id": 1e-30, "move_tier": {"model_name": "t5-base", "target_tier": "storage", "wait": true}}"#;
    let mut out = Vec::new();
    let Answer::Wait { job_id, id } = s.answer_line(line.as_bytes(), &mut out) else {
        panic!("a wait")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(s.wait_for_job(&job_id, &id, &mut out));
    let text = String::from_utf8(out).expect("UTF-8");
    assert_eq!(echoed_id(&text), "1e-30", "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["status"], serde_json::json!("success"), "{v}");
}

#[test]
fn a_repeated_id_echoes_the_last_as_json_objects_read() {
    let s = shared();
    let a = answer(&s, r#"{"id": 1, "health": true, "id": 2.50}"#);
    assert_eq!(echoed_id(&a), "2.50", "{a}");
}

/// An id tierd would echo must read back: a number out of `f64`'s range
/// (which the raw text alone does not check) makes the line invalid JSON,
/// as anywhere else in the line; the answer is still one JSON line.
#[test]
fn an_id_that_does_not_read_back_is_invalid_json() {
    let s = shared();
    for id in [
        "1e99999",
        r#"{"a": -170000001e99900}"#,
        &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
    ] {
        let line = format!(r#"{{"id": {id}, "health": true}}"#);
        let a = answer(&s, &line);
        let v: Value = serde_json::from_str(&a).expect("JSON");
        assert_eq!(v["error"]["code"], serde_json::json!("INVALID_REQUEST"), "{a}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.starts_with("invalid JSON")), "{a}");
    }
}
