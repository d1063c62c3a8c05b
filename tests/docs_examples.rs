//! The docs' sessions run as written: every fenced block whose info string
//! holds `tierd-session` in README.md and docs/PROTOCOL.md is replayed
//! against a real `tierd serve` (stdio, the embedded default
//! configuration, `--time-scale 1`), one server per block, and each answer
//! must equal the documented one, times and ids aside.
//!
//! The convention (also stated in docs/PROTOCOL.md): inside such a block,
//! JSON values alternate: a request (one line, sent as written), then its
//! answer as received (one line, or pretty-printed over several).
//! Compared as JSON (key order free), after [`normalize`]: the values of
//! time keys (`created_at`, `started_at`, `ended_at`, `elapsed_time`,
//! `progress`, `now`, `estimated_start`, `registered_at`, `uptime_s`) are
//! not compared, and the unix seconds in job ids
//! (`tier_promote_gpt-j-6b_1796167318`) are replaced by `<T>` wherever they
//! appear, messages included. A job id in a request line is replaced by
//! the one this session's server handed out with the same masked form.
//!
//! After a change to the answers, `TIERD_DOCS_BLESS=1 cargo test --test
//! docs_examples` writes the answers received into the docs (then read the
//! diff: it is what the docs now promise).

mod common;

use std::path::{Path, PathBuf};

use common::Server;
use serde_json::Value;

/// Keys whose values depend on when the session ran.
const TIME_KEYS: &[&str] = &[
    "created_at",
    "started_at",
    "ended_at",
    "elapsed_time",
    "progress",
    "now",
    "estimated_start",
    "registered_at",
    "uptime_s",
];

/// One `tierd-session` block: its request and answer values, each with
/// its byte span in the file (for messages and for blessing).
struct Session {
    pairs: Vec<(Value, std::ops::Range<usize>, Value, std::ops::Range<usize>)>,
    /// The line of the opening fence, for messages.
    line: usize,
}

/// The `tierd-session` blocks of `text`. A block's body is a sequence of
/// JSON values (each on one line, or pretty-printed over several),
/// alternately a request and its answer.
fn sessions(rel: &str, text: &str) -> Vec<Session> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut in_block: Option<(usize, usize)> = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") {
            match in_block.take() {
                Some((start, fence_line)) => {
                    let body = &text[start..offset];
                    let mut values = Vec::new();
                    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<Value>();
                    let mut begin = 0;
                    while let Some(v) = stream.next() {
                        let v = v.unwrap_or_else(|e| panic!("{rel}:{}: a session block holds JSON values: {e}", fence_line + 1));
                        let end = stream.byte_offset();
                        let lead = body[begin..end].len() - body[begin..end].trim_start().len();
                        values.push((v, start + begin + lead..start + end));
                        begin = end;
                    }
                    assert!(
                        values.len() % 2 == 0,
                        "{rel}:{}: a session block holds request/answer pairs",
                        fence_line + 1
                    );
                    let mut it = values.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some((q, qr)), Some((a, ar))) = (it.next(), it.next()) {
                        pairs.push((q, qr, a, ar));
                    }
                    out.push(Session { pairs, line: fence_line });
                }
                None if t.contains("tierd-session") => in_block = Some((offset + line.len(), n)),
                None => {}
            }
        }
        offset += line.len();
    }
    out
}

/// `_` followed by 9 or more digits (a job id's unix seconds) becomes `_<T>`.
fn mask_ids(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j - i > 9 {
                out.push_str("_<T>");
                i = j;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The answer with its times blanked and its job ids masked.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if TIME_KEYS.contains(&k.as_str()) && !v.is_null() {
                        Value::String("<time>".into())
                    } else {
                        normalize(v)
                    };
                    (mask_ids(k), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::String(s) => Value::String(mask_ids(s)),
        other => other.clone(),
    }
}

/// Every string in `v`, by its masked form: the job ids this session's
/// server handed out, so later requests can name them.
fn learn_ids(v: &Value, ids: &mut std::collections::HashMap<String, String>) {
    match v {
        Value::String(s) if s.starts_with("tier_") => {
            ids.insert(mask_ids(s), s.clone());
        }
        Value::Array(a) => a.iter().for_each(|v| learn_ids(v, ids)),
        Value::Object(m) => m.values().for_each(|v| learn_ids(v, ids)),
        _ => {}
    }
}

/// A request line with the documented job ids replaced by this session's.
fn with_ids(req: &str, ids: &std::collections::HashMap<String, String>) -> String {
    fn walk(v: &mut Value, ids: &std::collections::HashMap<String, String>) -> bool {
        match v {
            Value::String(s) => match ids.get(&mask_ids(s)) {
                Some(real) if real != s => {
                    *s = real.clone();
                    true
                }
                _ => false,
            },
            Value::Array(a) => a.iter_mut().fold(false, |c, v| walk(v, ids) | c),
            Value::Object(m) => m.values_mut().fold(false, |c, v| walk(v, ids) | c),
            _ => false,
        }
    }
    match serde_json::from_str::<Value>(req) {
        Ok(mut v) => {
            if walk(&mut v, ids) {
                v.to_string()
            } else {
                req.to_string()
            }
        }
        Err(_) => req.to_string(),
    }
}

fn doc(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Replays every session of `rel`; returns how many there are and the
/// mismatches (and, when blessing, rewrites the answers received into the
/// file: one line stays one line, a pretty-printed answer stays pretty).
fn check(rel: &str) -> (usize, Vec<String>) {
    let path = doc(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bless = std::env::var_os("TIERD_DOCS_BLESS").is_some();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut failures = Vec::new();
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let found = sessions(rel, &text);
    for s in &found {
        let mut server = Server::stdio(&["--time-scale", "1"]);
        let mut ids = std::collections::HashMap::new();
        for (req, req_at, want, want_at) in &s.pairs {
            // A request is sent as written; one spread over lines, compacted.
            let written = &text[req_at.clone()];
            let compact = req.to_string();
            let line = with_ids(if written.contains('\n') { &compact } else { written }, &ids);
            let got_line = server.req_line(&line);
            let got: Value =
                serde_json::from_str(&got_line).unwrap_or_else(|e| panic!("{rel}:{}: {e}: {got_line}", line_of(want_at.start)));
            learn_ids(&got, &mut ids);
            if normalize(&got) != normalize(want) {
                failures.push(format!(
                    "{rel}:{} (session at line {}): {req}\n  documented: {want}\n  received:   {got_line}",
                    line_of(want_at.start),
                    s.line + 1
                ));
                let pretty = text[want_at.clone()].contains('\n');
                let new = if pretty {
                    serde_json::to_string_pretty(&got).unwrap_or(got_line.clone())
                } else {
                    got_line.clone()
                };
                edits.push((want_at.clone(), new));
            }
        }
    }
    if bless && !edits.is_empty() {
        let mut new = text.clone();
        for (range, with) in edits.into_iter().rev() {
            new.replace_range(range, &with);
        }
        std::fs::write(&path, new).expect("bless the docs");
    }
    (found.len(), failures)
}

#[test]
fn readme_session_runs_as_written() {
    let (n, failures) = check("README.md");
    assert!(n >= 1, "README.md has its stdio session marked tierd-session");
    assert!(failures.is_empty(), "README.md drifted from tierd:\n{}", failures.join("\n"));
}

#[test]
fn protocol_examples_run_as_written() {
    let (n, failures) = check("docs/PROTOCOL.md");
    assert!(n >= 3, "docs/PROTOCOL.md has its example sessions marked tierd-session ({n} found)");
    assert!(failures.is_empty(), "docs/PROTOCOL.md drifted from tierd:\n{}", failures.join("\n"));
}

#[test]
fn the_normalization_masks_only_times_and_ids() {
    let a: Value = serde_json::from_str(
        r#"{"job_id":"tier_promote_m_1796167318","created_at":1.5,"progress":0.4,"size_gb":6.0,"error":"Model m already has a pending move (tier_promote_m_1796167318_2)"}"#,
    )
    .unwrap();
    let b: Value = serde_json::from_str(
        r#"{"job_id":"tier_promote_m_1796160000","created_at":9.0,"progress":0.9,"size_gb":6.0,"error":"Model m already has a pending move (tier_promote_m_1796160000_2)"}"#,
    )
    .unwrap();
    assert_eq!(normalize(&a), normalize(&b));
    let c: Value = serde_json::from_str(r#"{"job_id":"tier_promote_m_1796167318","size_gb":7.0}"#).unwrap();
    assert_ne!(normalize(&a), normalize(&c), "figures other than times are compared");
    assert_eq!(mask_ids("gpt2_large v_12"), "gpt2_large v_12");
}

/// Every key path the configuration parser knows: top-level keys, the
/// keys of each section (`moves.x`) and of each table array entry
/// (`tiers[].x`), from the serialized form of a configuration with every
/// optional key set.
fn config_keys() -> Vec<String> {
    let mut cfg = tierd::config::Config::seed_default();
    assert!(!cfg.models.is_empty() && !cfg.tiers.is_empty());
    cfg.state_dir = Some("/x".into());
    let v = serde_json::to_value(&cfg).expect("config serializes");
    let mut keys = Vec::new();
    for (k, v) in v.as_object().expect("an object") {
        match v {
            Value::Array(a) if a.first().is_some_and(Value::is_object) => {
                for sub in a[0].as_object().into_iter().flat_map(|o| o.keys()) {
                    keys.push(format!("{k}[].{sub}"));
                }
            }
            Value::Object(o) => keys.extend(o.keys().map(|sub| format!("{k}.{sub}"))),
            _ => keys.push(k.clone()),
        }
    }
    keys
}

#[test]
fn every_config_key_has_a_row_in_the_readme_reference() {
    let readme = std::fs::read_to_string(doc("README.md")).expect("README.md");
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let keys = config_keys();
    assert!(keys.iter().any(|k| k == "auto_optimize_interval_s"), "{keys:?}");
    assert!(keys.iter().any(|k| k == "tiers[].create"), "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !rows.iter().any(|r| r.starts_with(&format!("| `{k}` |"))))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys without a row in README's Configuration reference: {missing:?}"
    );
}

/// README's CLI block, run line by line with `sh` as written, against one
/// socket server (`--time-scale 1`, so the move the block cancels is still
/// running): each line must exit 0. A job id in a line is replaced by the
/// server's job with the same masked form. `completions` and `man` need no
/// server and write outside the test (a home directory, `man`); they are
/// covered by tests/cli_output.rs.
#[test]
fn readme_cli_block_runs_as_written() {
    let readme = std::fs::read_to_string(doc("README.md")).expect("README.md");
    let at = readme.find("## The CLI").expect("README has a CLI section");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("a sh block") + 6;
    let block = &rest[start..start + rest[start..].find("```").expect("closed")];
    let lines: Vec<&str> = block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(lines.len() >= 10, "{lines:?}");

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _server = Server::socket(&sock, &["--time-scale", "1"]);
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(common::BIN, bin.join("tierd")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for line in lines {
        if line.starts_with("tierd completions") || line.starts_with("tierd man") {
            continue;
        }
        // The job ids the server knows, by their masked form.
        let mut c = common::Client::connect(&sock);
        let mut ids = std::collections::HashMap::new();
        learn_ids(&c.req(r#"{"list_jobs": true}"#), &mut ids);
        drop(c);
        let line_now = line
            .split(' ')
            .map(|w| ids.get(&mask_ids(w)).map(String::as_str).unwrap_or(w))
            .collect::<Vec<_>>()
            .join(" ");
        let o = std::process::Command::new("sh")
            .args(["-c", &line_now])
            .env("PATH", &path)
            .env("TIERD_SOCKET", &sock)
            .env("COLUMNS", "200")
            .output()
            .expect("run sh");
        assert!(
            o.status.success(),
            "README line `{line}` ({line_now}) failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 10);
}
