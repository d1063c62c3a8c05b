//! Numbers on the wire are range-checked: an out-of-range figure is an
//! `INVALID_REQUEST` that names the range, never clamped or saturated; and
//! the byte books refuse, with a clear error, bytes they could not count.

use serde_json::{Value, json};
use tierd::config::{Config, MAX_GB};
use tierd::drivers::sim::simulated_machine;
use tierd::optimizer::UsagePolicy;
use tierd::requests::{Prepare, call};
use tierd::tiers::Engine;

const T0: f64 = 1_700_000_000.0;
const PREPARE: Prepare = Prepare {
    walk_files: false,
    max_files: 10_000,
};

fn engine() -> Engine {
    let cfg = Config::seed_default();
    let (machine, _) = simulated_machine(&cfg, false);
    Engine::new(cfg, machine, Box::new(UsagePolicy), T0).expect("engine")
}

/// The catalog's bytes, recounted (checked: a wrapped book would show here).
fn catalog_bytes(e: &Engine) -> u64 {
    e.state()
        .iter_models()
        .try_fold(0u64, |sum, (_, m)| sum.checked_add(m.bytes))
        .expect("the catalog's bytes fit a u64")
}

fn ask(e: &mut Engine, line: &str) -> Value {
    let v: Value = serde_json::from_str(line).expect("test line is JSON");
    let answer = call(e, T0, v, &PREPARE);
    e.check_invariants().unwrap_or_else(|err| panic!("after {line}: {err}"));
    answer
}

/// The answer is an INVALID_REQUEST whose message holds every `needles`.
fn assert_refused(answer: &Value, needles: &[&str], line: &str) {
    assert_eq!(answer["status"], json!("error"), "{line}: {answer}");
    assert_eq!(answer["error"]["code"], json!("INVALID_REQUEST"), "{line}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    for n in needles {
        assert!(message.contains(n), "{line}: message {message:?} lacks {n:?}");
    }
}

#[test]
fn sizes_out_of_range_are_refused_naming_the_range() {
    let mut e = engine();
    let before = ask(&mut e, r#"{"tier_status": true}"#);
    for size in ["1e300", "1e7", "1000000.001", "-1", "-0.5", "1.7976931348623157e308"] {
        let line = format!(r#"{{"register_model": {{"model_name": "big", "size_gb": {size}}}}}"#);
        assert_refused(&ask(&mut e, &line), &["size_gb", "from 0 to 1000000 GB"], &line);
    }
    assert_eq!(ask(&mut e, r#"{"tier_status": true}"#), before, "nothing registered");
    // The edges are accepted.
    let ok = ask(&mut e, r#"{"register_model": {"model_name": "edge", "size_gb": 1000000}}"#);
    assert_eq!(ok["status"], json!("success"), "{ok}");
    let ok = ask(&mut e, r#"{"register_model": {"model_name": "zero", "size_gb": 0}}"#);
    assert_eq!(ok["status"], json!("success"), "{ok}");
}

#[test]
fn limits_and_reserves_out_of_range_are_refused_not_saturated() {
    let mut e = engine();
    let before = e.limits();
    for (key, v) in [
        ("ram_max_gb", "1e308"),
        ("ram_max_gb", "1e7"),
        ("swap_max_gb", "-1"),
        ("ram_reserved_gb", "1e300"),
        ("ram_reserved_gb", "-0.1"),
        ("ram_max_gb", "\"6\""),
    ] {
        let line = format!(r#"{{"update_limits": {{"{key}": {v}}}}}"#);
        assert_refused(&ask(&mut e, &line), &[key, "from 0 to 1000000 GB"], &line);
        assert_eq!(e.limits(), before, "{line}: nothing changed");
    }
    // A good key before a bad one changes nothing either.
    let line = r#"{"update_limits": {"ram_max_gb": 6.0, "swap_max_gb": 1e308}}"#;
    assert_refused(&ask(&mut e, line), &["swap_max_gb", "from 0 to"], line);
    assert_eq!(e.limits(), before);
    for v in ["0", "1025", "-1", "1.5", "1e300"] {
        let line = format!(r#"{{"update_limits": {{"max_concurrent_tasks": {v}}}}}"#);
        assert_refused(&ask(&mut e, &line), &["from 1 to 1024"], &line);
    }
    // In range still works, at the top too.
    let ok = ask(&mut e, r#"{"update_limits": {"swap_max_gb": 1000000}}"#);
    assert_eq!(ok["status"], json!("success"), "{ok}");
    assert_eq!(e.limits().to_map()["swap_max_gb"], json!(MAX_GB));
}

#[test]
fn move_numbers_out_of_range_are_refused_naming_the_range() {
    let mut e = engine();
    let mv = |extra: &str| format!(r#"{{"move_tier": {{"model_name": "t5-base", "target_tier": "storage", {extra}}}}}"#);
    for b in ["1e-30", "0", "0.09", "-5", "1e7", "1000000.5", "1e308"] {
        let line = mv(&format!(r#""bandwidth_mb_s": {b}"#));
        assert_refused(&ask(&mut e, &line), &["bandwidth_mb_s", "from 0.1 to 1000000 MB/s"], &line);
    }
    for r in ["-1", "101", "4294967296", "1e10", "1.5"] {
        let line = mv(&format!(r#""max_retries": {r}"#));
        assert_refused(&ask(&mut e, &line), &["max_retries", "from 0 to 100"], &line);
    }
    let many: Vec<String> = (0..1025).map(|i| format!("\"j{i}\"")).collect();
    let line = mv(&format!(r#""depends_on": [{}]"#, many.join(",")));
    assert_refused(&ask(&mut e, &line), &["depends_on", "1024"], &line);
    assert_eq!(ask(&mut e, r#"{"list_jobs": true}"#)["jobs"], json!([]), "no move started");
    // The edges are accepted.
    let ok = ask(&mut e, &mv(r#""bandwidth_mb_s": 0.1, "max_retries": 100"#));
    assert_eq!(ok["status"], json!("tier_move_started"), "{ok}");
    let ok = ask(
        &mut e,
        r#"{"move_tier": {"model_name": "bert-large", "target_tier": "storage", "bandwidth_mb_s": 1000000, "max_retries": 0}}"#,
    );
    assert_eq!(ok["status"], json!("tier_move_started"), "{ok}");
}

#[test]
fn the_engine_api_checks_move_numbers_too() {
    let mut e = engine();
    for (bandwidth_mb_s, max_retries) in [
        (Some(1e-30), None),
        (Some(f64::NAN), None),
        (Some(f64::INFINITY), None),
        (None, Some(101)),
    ] {
        let opts = tierd::tiers::MoveOptions {
            bandwidth_mb_s,
            max_retries,
            ..Default::default()
        };
        let err = e.move_model(T0, "t5-base", "storage", &opts).expect_err("refused");
        assert_eq!(err.code(), tierd::error::ErrorCode::InvalidRequest, "{err}");
    }
    let changes = [tierd::tiers::LimitChange::Max {
        tier: "ram".into(),
        gb: 1e308,
    }];
    let err = e.update_limits(T0, &changes).expect_err("refused");
    assert!(err.to_string().contains("from 0 to 1000000 GB"), "{err}");
    e.check_invariants().expect("books");
}

#[test]
fn history_limits_out_of_range_are_refused_naming_the_range() {
    let mut e = engine();
    for l in ["-1", "100001", "1e300", "2.5", "\"10\""] {
        let line = format!(r#"{{"queue_history": {{"limit": {l}}}}}"#);
        assert_refused(&ask(&mut e, &line), &["limit", "from 0 to 100000"], &line);
    }
    let ok = ask(&mut e, r#"{"queue_history": {"limit": 100000}}"#);
    assert_eq!(ok["status"], json!("success"), "{ok}");
}

/// 20,000 models of the largest size would sum past `u64::MAX` bytes:
/// without checked books, the tier's `used` wraps (a panic in a debug
/// build). The books refuse the model that would pass their bound, with a
/// clear error, and stay exact.
#[test]
fn many_models_of_the_largest_size_are_refused_before_the_books_overflow() {
    let mut e = engine();
    let seed_bytes = catalog_bytes(&e);
    let mut accepted = 0u64;
    let mut refused = 0u64;
    for i in 0..20_000 {
        let line = format!(r#"{{"register_model": {{"model_name": "huge-{i}", "size_gb": {MAX_GB}}}}}"#);
        let v: Value = serde_json::from_str(&line).expect("json");
        let answer = call(&mut e, T0, v, &PREPARE);
        if answer["status"] == json!("success") {
            accepted += 1;
        } else {
            assert_eq!(answer["error"]["code"], json!("INVALID_REQUEST"), "{answer}");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("tierd's books count"), "{message}");
            refused += 1;
        }
    }
    e.check_invariants().expect("the books balance");
    assert!(refused > 0, "some registrations must be refused");
    assert_eq!(accepted + refused, 20_000);
    let bytes = catalog_bytes(&e);
    assert_eq!(
        bytes,
        seed_bytes + accepted * 1_000_000 * 1_000_000_000,
        "the catalog is counted exactly"
    );
    assert!(bytes <= tierd::tiers::state::MAX_CATALOG_BYTES);
    // tier_status shows the true figure, not a wrapped one.
    let status = ask(&mut e, r#"{"tier_status": true}"#);
    let used: f64 = ["ram", "swap", "storage"]
        .iter()
        .map(|t| status["tiers"][t]["used_gb"].as_f64().unwrap_or(0.0))
        .sum();
    assert!((used - bytes as f64 / 1e9).abs() / used < 1e-9, "{used} GB vs {bytes} bytes");
    // Removing one frees room for exactly one more.
    let ok = ask(&mut e, r#"{"unregister_model": "huge-0"}"#);
    assert_eq!(ok["status"], json!("success"), "{ok}");
    let ok = ask(
        &mut e,
        &format!(r#"{{"register_model": {{"model_name": "again", "size_gb": {MAX_GB}}}}}"#),
    );
    assert_eq!(ok["status"], json!("success"), "{ok}");
}

/// The moved-bytes counter outlives any run: 20,000 moves of the largest
/// model move 2e10 GB, more than a `u64` of bytes holds (a debug build
/// panicked on the overflow, a release build wrapped).
#[test]
fn moved_bytes_are_counted_past_u64() {
    let cfg = Config::from_toml(
        "max_single_model_gb = 1000000.0\n\
         [[tiers]]\nname = \"fast\"\nmax_gb = 1000000.0\naccess_s_per_gb = 0.1\n\
         [[tiers]]\nname = \"slow\"\naccess_s_per_gb = 1.0\n",
    )
    .expect("config");
    let (machine, _) = simulated_machine(&cfg, false);
    let mut e = Engine::new(cfg, machine, Box::new(UsagePolicy), T0).expect("engine");
    let ok = ask(
        &mut e,
        &format!(r#"{{"register_model": {{"model_name": "huge", "size_gb": {MAX_GB}, "preferred_tier": "slow"}}}}"#),
    );
    assert_eq!(ok["status"], json!("success"), "{ok}");
    let mut now = T0;
    let moves = 20_000u32;
    for i in 0..moves {
        let to = if i % 2 == 0 { "fast" } else { "slow" };
        let s = match e.move_model(now, "huge", to, &tierd::tiers::MoveOptions::default()) {
            Ok(s) => s,
            Err(err) => panic!("move {i} to {to}: {err}"),
        };
        // Long enough for a 1 PB move at the default rates.
        now += 1e6;
        e.tick(now);
        assert_eq!(e.job_ended(&s.job_id), Some(true), "move {i} ended");
    }
    e.check_invariants().expect("books");
    let m = ask(&mut e, r#"{"metrics": true}"#);
    let gb = m["metrics"]["bytes_moved_gb"].as_f64().expect("bytes_moved_gb");
    assert_eq!(gb, f64::from(moves) * MAX_GB, "{m}");
}
