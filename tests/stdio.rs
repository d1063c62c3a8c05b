//! The real binary over stdio: every request, every error, every bad input.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Server, code, message, wait_job};
use serde_json::{Value, json};
use tierd::requests::{MAX_LINE_BYTES, REQUEST_KEYS};

/// Sends `line`, records its request key in `seen`, returns the answer.
fn ask(s: &mut Server, seen: &mut BTreeSet<String>, line: &str) -> Value {
    let v: Value = serde_json::from_str(line).expect("test request is JSON");
    if let Some(m) = v.as_object() {
        seen.extend(m.keys().filter(|k| *k != "id").cloned());
    }
    s.req(line)
}

#[test]
fn seed_requests_answer_with_the_seed_shapes() {
    let mut s = Server::stdio(&[]);
    let mut seen = BTreeSet::new();

    let st = ask(&mut s, &mut seen, r#"{"tier_status": true}"#);
    assert_eq!(st["status"], "success");
    let ram = &st["tiers"]["ram"];
    assert_eq!(ram["used_gb"], json!(4.8));
    assert_eq!(ram["available_gb"], json!(2.6));
    assert_eq!(ram["limit_gb"], json!(5.0));
    assert_eq!(ram["utilization"], json!(0.96));
    assert_eq!(ram["models"], json!(4));
    let swap = &st["tiers"]["swap"];
    assert_eq!(
        (
            &swap["used_gb"],
            &swap["available_gb"],
            &swap["limit_gb"],
            &swap["utilization"],
            &swap["models"]
        ),
        (&json!(13.0), &json!(8.0), &json!(10.0), &json!(1.3), &json!(2))
    );

    let opt = ask(&mut s, &mut seen, r#"{"auto_optimize": {"dry_run": true}}"#);
    assert_eq!(opt["status"], "success");
    let list: Vec<&str> = opt["optimizations"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(list.contains(&"Promoting gpt2-large to RAM (usage: 12)"), "{opt}");

    let lim = ask(
        &mut s,
        &mut seen,
        r#"{"update_limits": {"ram_max_gb": 7.0, "swap_max_gb": 12.0, "ram_reserved_gb": 1.0}}"#,
    );
    assert_eq!(lim["status"], "success");
    assert_eq!(lim["old_limits"]["ram_max_gb"], json!(5.0));
    assert_eq!(lim["old_limits"]["swap_max_gb"], json!(10.0));
    assert_eq!(lim["old_limits"]["ram_reserved_gb"], json!(1.0));
    assert_eq!(lim["new_limits"]["ram_max_gb"], json!(7.0));
    assert_eq!(lim["new_limits"]["swap_max_gb"], json!(12.0));

    let mv = ask(
        &mut s,
        &mut seen,
        r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram", "make_room": true}}"#,
    );
    assert_eq!(mv["status"], "tier_move_started", "{mv}");
    let job_id = mv["job_id"].as_str().unwrap().to_string();
    let secs = job_id.strip_prefix("tier_promote_gpt-j-6b_").expect("job id format");
    assert!(secs.parse::<u64>().is_ok_and(|t| t > 1_600_000_000), "{job_id}");
    assert_eq!(mv["model_name"], "gpt-j-6b");
    assert_eq!(mv["operation"], "promote");
    assert_eq!(mv["source_tier"], "swap");
    assert_eq!(mv["target_tier"], "ram");

    let js = ask(&mut s, &mut seen, &format!(r#"{{"tier_job_status": "{job_id}"}}"#));
    for field in [
        "job_id",
        "model_name",
        "operation",
        "source_tier",
        "target_tier",
        "progress",
        "status",
        "elapsed_time",
        "estimated_time",
        "error",
    ] {
        assert!(js.get(field).is_some(), "missing {field}: {js}");
    }
    assert_eq!(js["estimated_time"], json!(1.8));
    let end = wait_job(|l| s.req(l), &job_id);
    assert_eq!(end["status"], "success", "{end}");
    assert_eq!(end["progress"], json!(1.0));
    assert!(end["error"].is_null());
    let info = s.req(r#"{"model_info": "gpt-j-6b"}"#);
    assert_eq!(info["model"]["tier"], "ram");

    for key in ["tier_status", "move_tier", "tier_job_status", "update_limits", "auto_optimize"] {
        assert!(seen.contains(key));
    }
}

#[test]
fn every_request_answers() {
    let mut s = Server::stdio(&[]);
    let mut seen = BTreeSet::new();
    let ok = |v: &Value| assert_eq!(v["status"], "success", "{v}");

    let r = ask(
        &mut s,
        &mut seen,
        r#"{"register_model": {"model_name": "phi-2", "size_gb": 2.7, "preferred_tier": "swap"}}"#,
    );
    ok(&r);
    assert_eq!((&r["tier"], &r["size_gb"]), (&json!("storage"), &json!(2.7)), "{r}");
    let r = ask(
        &mut s,
        &mut seen,
        r#"{"register_model": {"model_name": "huge", "size_gb": 9.0, "preferred_tier": "ram"}}"#,
    );
    assert_eq!(r["tier"], "storage", "over the max single size: {r}");

    let r = ask(&mut s, &mut seen, r#"{"list_models": {"tier": "ram"}}"#);
    ok(&r);
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    for f in ["model_name", "size_gb", "tier", "status", "usage", "last_access"] {
        assert!(models[0].get(f).is_some(), "missing {f}");
    }
    let all = ask(&mut s, &mut seen, r#"{"list_models": {}}"#);
    assert_eq!(all["models"].as_array().unwrap().len(), 11);

    let r = ask(&mut s, &mut seen, r#"{"model_info": "bert-large"}"#);
    ok(&r);
    assert_eq!((&r["model"]["tier"], &r["model"]["usage"]), (&json!("ram"), &json!(8)));

    let r = ask(&mut s, &mut seen, r#"{"access_model": {"model_name": "gpt-j-6b"}}"#);
    ok(&r);
    assert_eq!(
        (&r["tier"], &r["usage"], &r["load_time_s"]),
        (&json!("swap"), &json!(5), &json!(3.0)),
        "{r}"
    );

    ok(&ask(&mut s, &mut seen, r#"{"pin_model": "t5-base"}"#));
    ok(&ask(&mut s, &mut seen, r#"{"unpin_model": "t5-base"}"#));
    ok(&ask(&mut s, &mut seen, r#"{"unregister_model": "phi-2"}"#));
    assert_eq!(code(&s.req(r#"{"model_info": "phi-2"}"#)), "MODEL_NOT_FOUND");

    // A queued job (its dependency runs first) to cancel.
    let first = s.req(r#"{"move_tier": {"model_name": "llama-7b", "target_tier": "storage"}}"#);
    let first_id = first["job_id"].as_str().unwrap().to_string();
    let second = s.req(&format!(
        r#"{{"move_tier": {{"model_name": "whisper-small", "target_tier": "storage", "depends_on": ["{first_id}"]}}}}"#
    ));
    let second_id = second["job_id"].as_str().unwrap().to_string();
    let c = ask(&mut s, &mut seen, &format!(r#"{{"cancel_job": "{second_id}"}}"#));
    assert_eq!(c["status"], "cancelled", "{c}");

    let r = ask(&mut s, &mut seen, r#"{"list_jobs": true}"#);
    ok(&r);
    assert!(r["jobs"].as_array().unwrap().len() >= 2);
    ok(&ask(&mut s, &mut seen, r#"{"queue_status": true}"#));
    let r = ask(&mut s, &mut seen, r#"{"queue_history": {"limit": 1}}"#);
    assert_eq!(r["history"].as_array().unwrap().len(), 1);
    let r = ask(&mut s, &mut seen, r#"{"health": true}"#);
    assert_eq!((&r["healthy"], &r["backend"]), (&json!(true), &json!("sim")));
    let r = ask(&mut s, &mut seen, r#"{"metrics": true}"#);
    for f in [
        "accesses",
        "moves_started",
        "moves_succeeded",
        "moves_failed",
        "moves_cancelled",
        "tier_utilization",
    ] {
        assert!(r["metrics"].get(f).is_some(), "missing {f}: {r}");
    }
    assert_eq!(r["metrics"]["accesses"], json!(1));
    // No [[sources]] in the embedded config: nothing scanned, nothing found.
    let r = ask(&mut s, &mut seen, r#"{"discover": true}"#);
    assert_eq!((&r["scanned_at"], &r["sources"]), (&json!(null), &json!([])), "{r}");
    let r = ask(&mut s, &mut seen, r#"{"watch": {"events": ["pressure"]}}"#);
    ok(&r);
    let r = ask(&mut s, &mut seen, r#"{"unwatch": true}"#);
    assert_eq!(r["unwatched"], json!(true), "{r}");

    // The seed requests are covered by the test above; together all keys.
    for key in ["tier_status", "move_tier", "tier_job_status", "update_limits", "auto_optimize"] {
        seen.insert(key.to_string());
    }
    let missing: Vec<&&str> = REQUEST_KEYS.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(missing.is_empty(), "requests never exercised: {missing:?}");
}

#[test]
fn issue_errors_have_their_codes_and_phrases() {
    let mut s = Server::stdio(&[]);
    let e = s.req(r#"{"move_tier": {"model_name": "nope", "target_tier": "ram"}}"#);
    assert_eq!(code(&e), "MODEL_NOT_FOUND");
    assert!(message(&e).contains("Model not found"));
    let e = s.req(r#"{"move_tier": {"model_name": "llama-7b", "target_tier": "gpu"}}"#);
    assert_eq!(code(&e), "INVALID_REQUEST");
    let e = s.req(r#"{"move_tier": {"model_name": "llama-7b", "target_tier": "swap"}}"#);
    assert_eq!(code(&e), "CONFLICT");
    assert!(message(&e).contains("Model already in target tier"));
    let e = s.req(r#"{"move_tier": {"model_name": "llama-13b", "target_tier": "ram"}}"#);
    assert_eq!(code(&e), "INVALID_REQUEST", "over 7 GB: {e}");
    let e = s.req(r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram"}}"#);
    assert_eq!(code(&e), "RESOURCE_UNAVAILABLE");
    assert!(message(&e).contains("RAM limit exceeded"), "{e}");
    assert_eq!(e["error"]["details"]["required"], json!(6.0));
    assert_eq!(e["error"]["details"]["limit"], json!(5.0));
    assert!(e["error"]["details"].get("available").is_some());
    assert_eq!(s.req(r#"{"update_limits": {"ram_max_gb": 11.0}}"#)["status"], "success");
    let e = s.req(r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram"}}"#);
    assert_eq!(code(&e), "RESOURCE_UNAVAILABLE");
    assert!(message(&e).contains("Insufficient RAM"), "{e}");
    for (limit, min) in [
        (r#"{"ram_max_gb": 0.5}"#, 1.0),
        (r#"{"swap_max_gb": 1.0}"#, 2.0),
        (r#"{"ram_reserved_gb": 0.1}"#, 0.5),
    ] {
        let e = s.req(&format!(r#"{{"update_limits": {limit}}}"#));
        assert_eq!(code(&e), "INVALID_REQUEST", "{limit}");
        assert_eq!(e["error"]["details"]["minimum"], json!(min), "{e}");
    }
    // Nothing changed by a rejected update, even with a valid key beside it.
    let e = s.req(r#"{"update_limits": {"swap_max_gb": 20.0, "ram_max_gb": 0.2}}"#);
    assert_eq!(code(&e), "INVALID_REQUEST");
    assert_eq!(s.req(r#"{"tier_status": true}"#)["tiers"]["swap"]["limit_gb"], json!(10.0));
    let e = s.req(r#"{"register_model": {"model_name": "bert-large", "size_gb": 1.0}}"#);
    assert_eq!(code(&e), "CONFLICT");
    let e = s.req(r#"{"tier_job_status": "tier_promote_nope_1"}"#);
    assert_eq!(code(&e), "INVALID_REQUEST");
    assert!(message(&e).contains("Job not found"), "{e}");
}

#[test]
fn already_moving_and_cancel_roll_back() {
    // Slow time: the 1.2 s demotion takes 6 s of wall time, so it is surely
    // still running when we ask again, even on a busy machine.
    let mut s = Server::stdio(&["--time-scale", "0.2"]);
    let mv = s.req(r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "storage"}}"#);
    let job = mv["job_id"].as_str().unwrap().to_string();
    let e = s.req(r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "ram"}}"#);
    assert_eq!(code(&e), "CONFLICT");
    assert_eq!(e["error"]["details"]["job_id"], json!(job));
    let running = s.req(&format!(r#"{{"tier_job_status": "{job}"}}"#));
    assert_eq!(running["status"], "running", "{running}");
    s.req(&format!(r#"{{"cancel_job": "{job}"}}"#));
    let end = wait_job(|l| s.req(l), &job);
    assert_eq!(end["status"], "cancelled", "{end}");
    assert_eq!(s.req(r#"{"model_info": "gpt-j-6b"}"#)["model"]["tier"], "swap");
    let st = s.req(r#"{"tier_status": true}"#);
    assert_eq!(st["tiers"]["swap"]["used_gb"], json!(13.0));
    assert_eq!(st["tiers"]["storage"]["incoming_gb"], json!(0.0));
    let e = s.req(&format!(r#"{{"cancel_job": "{job}"}}"#));
    assert_eq!(code(&e), "CONFLICT", "cancelling an ended job");
}

#[test]
fn bad_input_gets_one_error_line_and_the_connection_goes_on() {
    let mut s = Server::stdio(&[]);
    let long = format!("{{\"health\": \"{}\"}}\n", "x".repeat(MAX_LINE_BYTES + 10));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("invalid JSON", b"{\"health\": tru\n".to_vec(), "invalid JSON"),
        ("non-UTF-8", b"{\"health\": \"\xff\xfe\"}\n".to_vec(), "UTF-8"),
        (
            "unknown key",
            b"{\"teleport\": true}\n".to_vec(),
            "known requests: tier_status, move_tier",
        ),
        (
            "wrong type",
            br#"{"move_tier": {"model_name": 5, "target_tier": "ram"}}"#.to_vec(),
            "invalid type",
        ),
        (
            "missing field",
            br#"{"move_tier": {"target_tier": "ram"}}"#.to_vec(),
            "missing field `model_name`",
        ),
        (
            "two keys",
            br#"{"health": true, "metrics": true}"#.to_vec(),
            "exactly one request key",
        ),
        ("not an object", b"[1, 2]".to_vec(), "JSON object"),
        ("over 1 MiB", long.into_bytes(), "exceeds"),
    ];
    for (i, (what, mut bytes, phrase)) in cases.into_iter().enumerate() {
        if bytes.last() != Some(&b'\n') {
            bytes.push(b'\n');
        }
        s.send_raw(&bytes);
        let e = s.recv();
        assert_eq!(code(&e), "INVALID_REQUEST", "{what}: {e}");
        assert!(message(&e).contains(phrase), "{what}: {e}");
        let next = s.req(&format!(r#"{{"health": true, "id": {i}}}"#));
        assert_eq!(
            (&next["status"], &next["id"]),
            (&json!("success"), &json!(i)),
            "after {what}: {next}"
        );
    }
    // Blank lines are ignored; an id is echoed on errors it could be read from.
    s.send_raw(b"\n   \n\r\n");
    let e = s.req(r#"{"id": "abc", "nope": 1}"#);
    assert_eq!(e["id"], "abc");
    s.assert_silent(Duration::from_millis(50));
}

#[test]
fn ids_are_echoed_and_wait_answers_when_the_move_ends() {
    let mut s = Server::stdio(&[]);
    for id in [json!(1), json!("req-7"), json!({"k": [1, 2]}), json!(null)] {
        let v = s.req(&json!({"id": id, "tier_status": true}).to_string());
        assert_eq!(v["id"], id);
        let v = s.req(&json!({"id": id, "model_info": "missing"}).to_string());
        assert_eq!((&v["id"], code(&v)), (&id, "MODEL_NOT_FOUND"));
    }
    let v = s.req(r#"{"id": 9, "move_tier": {"model_name": "t5-base", "target_tier": "storage", "wait": true}}"#);
    assert_eq!(
        (&v["id"], &v["status"], &v["progress"]),
        (&json!(9), &json!("success"), &json!(1.0)),
        "{v}"
    );
    assert_eq!(v["model_name"], "t5-base");
    assert_eq!(s.req(r#"{"model_info": "t5-base"}"#)["model"]["tier"], "storage");
    // Requests behind a waiting one are answered after it, in order.
    s.send_raw(b"{\"id\": 1, \"move_tier\": {\"model_name\": \"whisper-small\", \"target_tier\": \"storage\", \"wait\": true}}\n{\"id\": 2, \"health\": true}\n");
    assert_eq!(s.recv()["id"], 1);
    assert_eq!(s.recv()["id"], 2);
}

#[test]
fn lowering_a_limit_below_use_rebalances() {
    let mut s = Server::stdio(&[]);
    let r = s.req(r#"{"update_limits": {"ram_max_gb": 3.0}}"#);
    assert_eq!(r["status"], "success");
    let jobs: Vec<String> = r["rebalance"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j.as_str().map(String::from))
        .collect();
    assert!(!jobs.is_empty(), "{r}");
    for j in &jobs {
        assert!(j.starts_with("tier_demote_"), "{j}");
        assert_eq!(wait_job(|l| s.req(l), j)["status"], "success");
    }
    let st = s.req(r#"{"tier_status": true}"#);
    assert!(st["tiers"]["ram"]["used_gb"].as_f64().unwrap() <= 3.0, "{st}");
}

#[test]
fn stdout_carries_only_json_and_eof_ends_the_server() {
    let mut s = Server::stdio_env(&[], &[("TIERD_LOG", "debug")]);
    // Pipelined, unread, then EOF: every request is still answered.
    s.send_raw(b"{\"id\": 1, \"health\": true}\n{\"id\": 2, \"tier_status\": true}\n{oops\n{\"id\": 3, \"move_tier\": {\"model_name\": \"t5-base\", \"target_tier\": \"storage\", \"wait\": true}}\n");
    s.close_stdin();
    let status = s.wait_exit();
    assert!(status.success(), "{status}");
    let lines = s.drain_lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.is_object());
    }
    assert!(lines[3].contains("\"success\""), "{}", lines[3]);
    let err = s.stderr_with("stopped");
    assert!(err.contains("tierd serving") && err.contains("stopped"), "{err}");
}

#[test]
fn moves_progress_without_requests() {
    let mut s = Server::stdio(&[]);
    let mv = s.req(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage"}}"#);
    let job = mv["job_id"].as_str().unwrap().to_string();
    // 0.18 s of engine time is 3.6 ms of wall time at --time-scale 50; stay
    // quiet for 200 ms (10 engine seconds).
    std::thread::sleep(Duration::from_millis(200));
    let st = s.req(&format!(r#"{{"tier_job_status": "{job}"}}"#));
    assert_eq!(st["status"], "success", "{st}");
    let elapsed = st["elapsed_time"].as_f64().unwrap();
    assert!(elapsed < 5.0, "ended by the background ticker, not by this query: {st}");
}
