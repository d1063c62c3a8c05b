//! A bounded property-based fuzz of the whole request path: parse, engine,
//! answer. The seeds are every request line of docs/PROTOCOL.md (read at
//! test time); each generated line is a seed mutated by proptest: numbers
//! set to extremes, strings to adversarial names, fields dropped, added
//! and retyped, the request key and the `id` changed, then the text cut,
//! spliced with random bytes or number-like tokens JSON does not allow.
//!
//! Every line must get exactly one answer line, a JSON object with a
//! `status` (never `INTERNAL_ERROR`), echoing the `id` byte for byte when
//! the line was readable; after every line the engine's books must pass
//! [`Engine::check_invariants`]. Half of the cases go through the server's
//! own [`SharedEngine::answer_line`] (wall-clock time, sped up), half
//! through the same calls on engine time the test advances (so a failure
//! reproduces exactly), some of those with moves that complete at once;
//! each case runs one of the server's policies on the seed configuration.
//!
//! `TIERD_FUZZ_CASES` sets the number of lines (default 50,000; the
//! `#[ignore]`d long run defaults to 2,000,000):
//! `TIERD_FUZZ_CASES=2000000 cargo test --release --test fuzz -- --ignored`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tierd::config::Config;
use tierd::drivers::sim::simulated_machine;
use tierd::optimizer::{POLICY_NAMES, UsagePolicy, policy_by_name};
use tierd::requests::tier_status::{StatusCache, write_tier_status};
use tierd::requests::wire::{error_response, with_id, write_value};
use tierd::requests::{Outcome, REQUEST_KEYS, Request, execute, parse_line};
use tierd::server::shared::{Answer, Clock, SharedEngine};
use tierd::tiers::Engine;

/// Lines of one case (one fresh engine).
const LINES_PER_CASE: usize = 100;
const T0: f64 = 1_700_000_000.0;

// ------------------------------------------------------------- the seeds

/// Every one-line request of docs/PROTOCOL.md: the one-line JSON blocks
/// that are objects without a `status` (answers have one).
fn protocol_seeds() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    let text = std::fs::read_to_string(path).expect("docs/PROTOCOL.md");
    let mut seeds = Vec::new();
    let mut rest = text.as_str();
    // One-line `json` blocks, and the request lines of `tierd-session`
    // blocks (docs/PROTOCOL.md's replayed sessions: requests alternate
    // with answers, which all carry `status`).
    while let Some(start) = rest.find("```") {
        rest = &rest[start + 3..];
        let Some(header_end) = rest.find('\n') else { break };
        let info = rest[..header_end].trim();
        rest = &rest[header_end + 1..];
        let Some(end) = rest.find("```") else { break };
        let block = rest[..end].trim();
        rest = &rest[end + 3..];
        let lines: Vec<&str> = match info {
            "json" if !block.contains('\n') => vec![block],
            _ if info.contains("tierd-session") => block.lines().collect(),
            _ => continue,
        };
        for line in lines {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(line.trim())
                && v.get("status").is_none()
            {
                seeds.push(v);
            }
        }
    }
    seeds
}

// ------------------------------------------------------ the mutations

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "-1",
    "1",
    "0.1",
    "0.09",
    "0.5",
    "1.5",
    "2",
    "7",
    "7.0000001",
    "100",
    "101",
    "1024",
    "1025",
    "100000",
    "100001",
    "1000000",
    "1000000.0001",
    "1e7",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e15",
    "1e300",
    "-1e300",
    "1e308",
    "1.7976931348623157e308",
    "2.2250738585072014e-308",
    "5e-324",
    "1e-30",
    "-1e-30",
    "1700000000",
];

/// Strings: names tierd knows, names it must refuse, job ids of the case
/// (`$JOBn`, filled in at run time), words of the protocol.
const STRINGS: &[&str] = &[
    "",
    " ",
    "ram",
    "swap",
    "storage",
    "gpu",
    "nope",
    "gpt-j-6b",
    "llama-7b",
    "llama-13b",
    "t5-base",
    "bert-large",
    "gpt2-medium",
    "gpt2-large",
    "whisper-small",
    "fz-0",
    "fz-1",
    "fz-2",
    "$JOB0",
    "$JOB1",
    "$JOB2",
    "$JOB3",
    "tier_promote_x_1",
    "../etc",
    "..",
    ".",
    "a/b",
    "/",
    "/etc/passwd",
    "/proc/self/mem",
    "\u{0}",
    "ctl\u{7}",
    "é😀",
    "\u{202e}evil",
    "critical",
    "high",
    "normal",
    "low",
    "urgent",
    "queued",
    "running",
    "cancelling",
    "success",
    "failed",
    "cancelled",
    "true",
    "1e-30",
    "NaN",
    "$LONG",
];

const FIELDS: &[&str] = &[
    "model_name",
    "target_tier",
    "make_room",
    "wait",
    "priority",
    "depends_on",
    "max_retries",
    "bandwidth_mb_s",
    "size_gb",
    "preferred_tier",
    "path",
    "limit",
    "status",
    "since",
    "dry_run",
    "tier",
    "job_id",
    "ram_max_gb",
    "swap_max_gb",
    "ram_reserved_gb",
    "swap_reserved_gb",
    "storage_max_gb",
    "max_concurrent_tasks",
    "id",
    "unknown_x",
];

/// Text JSON does not allow where a number goes (and some it does).
const TOKENS: &[&str] = &[
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "-",
    "01",
    "1e-400",
    "0x10",
    "1_000",
    "+1",
    ".5",
    "1.",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "\u{0}",
];

/// A JSON value to put somewhere.
#[derive(Debug, Clone)]
enum Leaf {
    Null,
    Bool(bool),
    Number(usize),
    Str(usize),
    EmptyArray,
    EmptyObject,
    Strings(Vec<usize>),
    Object(usize, Box<Leaf>),
}

impl Leaf {
    fn value(&self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => Value::Bool(*b),
            Leaf::Number(i) => number(*i),
            Leaf::Str(i) => string(*i),
            Leaf::EmptyArray => json!([]),
            Leaf::EmptyObject => json!({}),
            Leaf::Strings(v) => Value::Array(v.iter().map(|i| string(*i)).collect()),
            Leaf::Object(f, v) => {
                let mut m = Map::new();
                m.insert(FIELDS[f % FIELDS.len()].into(), v.value());
                Value::Object(m)
            }
        }
    }
}

fn number(i: usize) -> Value {
    serde_json::from_str(NUMBERS[i % NUMBERS.len()]).unwrap_or(Value::Null)
}

fn string(i: usize) -> Value {
    Value::String(STRINGS[i % STRINGS.len()].to_string())
}

fn leaf() -> impl Strategy<Value = Leaf> {
    let flat = prop_oneof![
        Just(Leaf::Null),
        any::<bool>().prop_map(Leaf::Bool),
        any::<usize>().prop_map(Leaf::Number),
        any::<usize>().prop_map(Leaf::Str),
        Just(Leaf::EmptyArray),
        Just(Leaf::EmptyObject),
        prop::collection::vec(any::<usize>(), 0..4).prop_map(Leaf::Strings),
    ];
    flat.prop_recursive(2, 4, 1, |inner| {
        (any::<usize>(), inner).prop_map(|(f, v)| Leaf::Object(f, Box::new(v)))
    })
}

/// One change of a seed's JSON tree; `at` picks a node (pre-order, modulo
/// the node count).
#[derive(Debug, Clone)]
enum Mutation {
    /// The node becomes an extreme number.
    Number { at: usize, n: usize },
    /// The node becomes an adversarial string.
    Str { at: usize, s: usize },
    /// The node is removed from its object or array.
    Drop { at: usize },
    /// A field is added to the node, if it is an object.
    Add { at: usize, field: usize, value: Leaf },
    /// The node becomes a value of another type.
    Retype { at: usize, value: Leaf },
    /// The request key becomes another (or an unknown one).
    Key { key: usize },
    /// The line gets this `id` (or loses it).
    Id { id: Option<Leaf> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>()).prop_map(|(at, n)| Mutation::Number { at, n }),
        4 => (any::<usize>(), any::<usize>()).prop_map(|(at, s)| Mutation::Str { at, s }),
        2 => any::<usize>().prop_map(|at| Mutation::Drop { at }),
        2 => (any::<usize>(), any::<usize>(), leaf()).prop_map(|(at, field, value)| Mutation::Add { at, field, value }),
        2 => (any::<usize>(), leaf()).prop_map(|(at, value)| Mutation::Retype { at, value }),
        1 => any::<usize>().prop_map(|key| Mutation::Key { key }),
        2 => prop::option::of(leaf()).prop_map(|id| Mutation::Id { id }),
    ]
}

/// A change of the line's text.
#[derive(Debug, Clone)]
enum RawMutation {
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Overwrite(usize, u8),
    Token(usize, usize),
    Replace(Vec<u8>),
    Pad(usize),
}

fn raw_mutation() -> impl Strategy<Value = RawMutation> {
    prop_oneof![
        2 => any::<usize>().prop_map(RawMutation::Truncate),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(p, b)| RawMutation::Insert(p, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| RawMutation::Overwrite(p, b)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(p, t)| RawMutation::Token(p, t)),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(RawMutation::Replace),
        1 => (0usize..4).prop_map(RawMutation::Pad),
    ]
}

/// One generated line: a seed, its mutations, and how far engine time
/// moves before it.
#[derive(Debug, Clone)]
struct LineSpec {
    seed: usize,
    mutations: Vec<Mutation>,
    raw: Vec<RawMutation>,
    dt: usize,
}

fn line_spec() -> impl Strategy<Value = LineSpec> {
    (
        any::<usize>(),
        prop::collection::vec(mutation(), 0..4),
        prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(raw_mutation(), 1..3)],
        any::<usize>(),
    )
        .prop_map(|(seed, mutations, raw, dt)| LineSpec { seed, mutations, raw, dt })
}

/// Engine seconds between two lines.
const STEPS: &[f64] = &[0.0, 0.0, 0.001, 0.05, 0.3, 1.0, 5.0, 60.0, 3600.0];

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn pick(v: &Value, at: usize) -> Vec<Seg> {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    all.swap_remove(at % all.len())
}

fn mutate(v: &mut Value, m: &Mutation) {
    match m {
        Mutation::Number { at, n } => {
            let p = pick(v, *at);
            if let Some(x) = node(v, &p) {
                *x = number(*n);
            }
        }
        Mutation::Str { at, s } => {
            let p = pick(v, *at);
            if let Some(x) = node(v, &p) {
                *x = string(*s);
            }
        }
        Mutation::Drop { at } => {
            let mut p = pick(v, *at);
            let Some(last) = p.pop() else { return };
            match (last, node(v, &p)) {
                (Seg::Key(k), Some(Value::Object(m))) => {
                    m.remove(&k);
                }
                (Seg::Index(i), Some(Value::Array(a))) if i < a.len() => {
                    a.remove(i);
                }
                _ => {}
            }
        }
        Mutation::Add { at, field, value } => {
            let p = pick(v, *at);
            if let Some(Value::Object(m)) = node(v, &p) {
                m.insert(FIELDS[field % FIELDS.len()].into(), value.value());
            }
        }
        Mutation::Retype { at, value } => {
            let p = pick(v, *at);
            if let Some(x) = node(v, &p) {
                *x = value.value();
            }
        }
        Mutation::Key { key } => {
            if let Value::Object(m) = v
                && let Some(old) = m.keys().find(|k| *k != "id").cloned()
                && let Some(body) = m.remove(&old)
            {
                let keys: Vec<&str> = REQUEST_KEYS.iter().copied().chain(["teleport", "", "ID"]).collect();
                m.insert(keys[key % keys.len()].to_string(), body);
            }
        }
        Mutation::Id { id } => {
            if let Value::Object(m) = v {
                match id {
                    Some(l) => m.insert("id".into(), l.value()),
                    None => m.remove("id"),
                };
            }
        }
    }
}

/// Fills the placeholders: `$JOBn` with the case's job ids, `$LONG` with a
/// long name.
fn fill(v: &mut Value, jobs: &[String]) {
    match v {
        Value::String(s) if s.starts_with("$JOB") => {
            let n: usize = s[4..].parse().unwrap_or(0);
            *s = match jobs.len() {
                0 => "tier_promote_none_1".into(),
                len => jobs[len - 1 - n % len].clone(),
            };
        }
        Value::String(s) if s == "$LONG" => *s = "x".repeat(5000),
        Value::Object(m) => m.values_mut().for_each(|c| fill(c, jobs)),
        Value::Array(a) => a.iter_mut().for_each(|c| fill(c, jobs)),
        _ => {}
    }
}

fn raw_mutate(line: &mut Vec<u8>, m: &RawMutation) {
    let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
    match m {
        RawMutation::Truncate(p) => line.truncate(at(*p, line.len())),
        RawMutation::Insert(p, bytes) => {
            let i = at(*p, line.len());
            line.splice(i..i, bytes.iter().copied());
        }
        RawMutation::Overwrite(p, b) => {
            if !line.is_empty() {
                let i = p % line.len();
                line[i] = *b;
            }
        }
        RawMutation::Token(p, t) => {
            let i = at(*p, line.len());
            line.splice(i..i, TOKENS[t % TOKENS.len()].bytes());
        }
        RawMutation::Replace(bytes) => *line = bytes.clone(),
        RawMutation::Pad(n) => {
            line.splice(0..0, std::iter::repeat_n(b' ', *n));
            line.extend(std::iter::repeat_n(b'\t', *n));
        }
    }
}

/// The line `spec` makes, and the engine seconds before it.
fn build(seeds: &[Value], spec: &LineSpec, jobs: &[String]) -> (Vec<u8>, f64) {
    let mut v = seeds[spec.seed % seeds.len()].clone();
    for m in &spec.mutations {
        mutate(&mut v, m);
    }
    fill(&mut v, jobs);
    let mut line = v.to_string().into_bytes();
    for m in &spec.raw {
        raw_mutate(&mut line, m);
    }
    // One line: the framing splits at newlines before a line is parsed.
    for b in &mut line {
        if *b == b'\n' {
            *b = b' ';
        }
    }
    (line, STEPS[spec.dt % STEPS.len()])
}

// ---------------------------------------------------------- the checks

/// Checks the answer `out` to `line`; collects the job ids it names.
fn check_answer(line: &[u8], out: &[u8], jobs: &mut Vec<String>) -> Result<(), TestCaseError> {
    let show = || String::from_utf8_lossy(line).chars().take(300).collect::<String>();
    if line.iter().all(u8::is_ascii_whitespace) {
        prop_assert!(out.is_empty(), "a blank line is not answered: {:?}", show());
        return Ok(());
    }
    prop_assert!(
        out.last() == Some(&b'\n') && out.iter().filter(|b| **b == b'\n').count() == 1,
        "exactly one answer line to {:?}: {:?}",
        show(),
        String::from_utf8_lossy(out)
    );
    let answer: Value = serde_json::from_slice(out).map_err(|e| TestCaseError::fail(format!("answer to {:?} is not JSON: {e}", show())))?;
    prop_assert!(answer.is_object(), "answer is an object: {answer}");
    let status = answer["status"].as_str().unwrap_or_default();
    prop_assert!(!status.is_empty(), "answer has a status: {answer}");
    if status == "error" {
        let code = answer["error"]["code"].as_str().unwrap_or_default();
        prop_assert!(
            [
                "INVALID_REQUEST",
                "MODEL_NOT_FOUND",
                "CONFLICT",
                "RESOURCE_UNAVAILABLE",
                "DEPENDENCY_FAILED"
            ]
            .contains(&code),
            "error code {code:?} for {:?}: {answer}",
            show()
        );
    }
    // The id comes back byte for byte when the line was readable.
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    if !message.starts_with("invalid JSON") && !message.starts_with("request is not valid UTF-8") {
        let sent: Option<BTreeMap<String, Box<RawValue>>> = serde_json::from_slice(line).ok();
        if let Some(id) = sent.as_ref().and_then(|m| m.get("id")) {
            let want = format!("{{\"id\":{}", id.get());
            prop_assert!(
                out.starts_with(want.as_bytes()),
                "id {} echoed first, byte for byte: {}",
                id.get(),
                String::from_utf8_lossy(out)
            );
        }
    }
    let mut add = |v: &Value| {
        if let Some(j) = v.as_str()
            && !j.is_empty()
            && !jobs.iter().any(|k| k == j)
        {
            jobs.push(j.to_string());
        }
    };
    add(&answer["job_id"]);
    for list in ["make_room", "jobs", "rebalance"] {
        for j in answer[list].as_array().into_iter().flatten() {
            add(j);
            add(&j["job_id"]);
        }
    }
    if jobs.len() > 64 {
        jobs.drain(..jobs.len() - 64);
    }
    Ok(())
}

/// How a case's engine is made: which policy, and whether its simulated
/// moves complete the moment they start (`--moves instant`, where the
/// policies' exchange batches run).
#[derive(Debug, Clone, Copy)]
struct Setup {
    via_server: bool,
    policy: usize,
    instant: bool,
}

fn seed_engine(now: f64, setup: Setup) -> Engine {
    let cfg = Config::seed_default();
    let (machine, _) = simulated_machine(&cfg, setup.instant);
    let name = POLICY_NAMES[setup.policy % POLICY_NAMES.len()];
    let policy = policy_by_name(name, &cfg).unwrap_or_else(|| Box::new(UsagePolicy));
    Engine::new(cfg, machine, policy, now).expect("engine")
}

/// The server's answer path on engine time `now` (what
/// [`SharedEngine::answer_line`] does, without its clock): `false` for a
/// blank line.
fn answer_at(engine: &mut Engine, now: f64, line: &[u8], cache: &mut StatusCache, out: &mut Vec<u8>) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let env = match parse_line(line) {
        Ok(env) => env,
        Err(f) => return write_value(out, &error_response(&f.error, &f.id)),
    };
    if let Request::TierStatus(_) = env.request {
        engine.tick(now);
        let start = out.len();
        if write_tier_status(engine, &env.id, cache, out).is_ok() {
            out.push(b'\n');
        } else {
            out.truncate(start);
        }
        return;
    }
    match execute(engine, now, env.request) {
        Ok(Outcome::Reply(v)) => write_value(out, &with_id(v, &env.id)),
        Ok(Outcome::WaitForJob(job)) => match engine.job(now, &job) {
            Ok(v) => write_value(out, &with_id(serde_json::to_value(v).unwrap_or(Value::Null), &env.id)),
            Err(e) => write_value(out, &error_response(&e, &env.id)),
        },
        Err(e) => write_value(out, &error_response(&e, &env.id)),
    }
}

static LINES: AtomicUsize = AtomicUsize::new(0);

/// One case: a fresh engine, then its lines, checked one by one.
fn run_case(seeds: &[Value], specs: &[LineSpec], setup: Setup) -> Result<(), TestCaseError> {
    let mut jobs: Vec<String> = Vec::new();
    let mut out = Vec::new();
    if setup.via_server {
        let shared = SharedEngine::new(seed_engine(T0, setup), Clock::new(1000.0));
        for spec in specs {
            let (line, _) = build(seeds, spec, &jobs);
            out.clear();
            match shared.answer_line(&line, &mut out) {
                Answer::Written | Answer::Nothing => {}
                Answer::Wait { job_id, id } => match shared.poll_wait(&job_id, &id) {
                    Ok(reply) => write_value(&mut out, &reply),
                    Err(_) => {
                        let reply = shared.with(|e, now| match e.job(now, &job_id) {
                            Ok(v) => with_id(serde_json::to_value(v).unwrap_or(Value::Null), &id),
                            Err(err) => error_response(&err, &id),
                        });
                        write_value(&mut out, &reply);
                    }
                },
                Answer::Prepare(_) => prop_assert!(false, "the simulated machine prepares nothing"),
                // A connection would start streaming here: answered as its
                // acknowledgement, the stream itself is tests/watch.rs'.
                Answer::Watch { id, .. } => write_value(&mut out, &with_id(serde_json::json!({"status": "success"}), &id)),
            }
            LINES.fetch_add(1, Ordering::Relaxed);
            check_answer(&line, &out, &mut jobs)?;
            shared
                .with(|e, _| e.check_invariants())
                .map_err(|e| TestCaseError::fail(format!("after {:?}: {e}", String::from_utf8_lossy(&line))))?;
        }
    } else {
        let mut now = T0;
        let mut engine = seed_engine(now, setup);
        let mut cache = StatusCache::default();
        for spec in specs {
            let (line, dt) = build(seeds, spec, &jobs);
            now += dt;
            out.clear();
            answer_at(&mut engine, now, &line, &mut cache, &mut out);
            LINES.fetch_add(1, Ordering::Relaxed);
            check_answer(&line, &out, &mut jobs)?;
            engine
                .check_invariants()
                .map_err(|e| TestCaseError::fail(format!("after {:?}: {e}", String::from_utf8_lossy(&line))))?;
        }
    }
    Ok(())
}

fn lines_wanted(default: usize) -> usize {
    std::env::var("TIERD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn fuzz(lines: usize) {
    let seeds = protocol_seeds();
    let keys: Vec<&str> = seeds
        .iter()
        .filter_map(|s| s.as_object()?.keys().find(|k| *k != "id").map(String::as_str))
        .collect();
    for k in REQUEST_KEYS {
        assert!(keys.contains(k), "docs/PROTOCOL.md has no example line of {k}");
    }
    let cases = lines.div_ceil(LINES_PER_CASE).max(1);
    let before = LINES.load(Ordering::Relaxed);
    let started = Instant::now();
    let config = PropConfig {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..PropConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let setup = (any::<bool>(), any::<usize>(), any::<bool>()).prop_map(|(via_server, policy, instant)| Setup {
        via_server,
        policy,
        // The server's clock runs moves in wall time.
        instant: instant && !via_server,
    });
    let strategy = (prop::collection::vec(line_spec(), LINES_PER_CASE), setup);
    let result = runner.run(&strategy, |(specs, setup)| run_case(&seeds, &specs, setup));
    let done = LINES.load(Ordering::Relaxed) - before;
    println!(
        "fuzz: {done} lines in {cases} cases of {LINES_PER_CASE} ({} seeds from docs/PROTOCOL.md), {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz found a failure: {e}");
    }
    assert!(done >= lines, "{done} lines run, {lines} wanted");
}

#[test]
fn fuzz_the_request_path() {
    fuzz(lines_wanted(50_000));
}

/// The long run: `TIERD_FUZZ_CASES=2000000 cargo test --release --test fuzz -- --ignored`.
#[test]
#[ignore = "long run: TIERD_FUZZ_CASES=2000000 cargo test --release --test fuzz -- --ignored"]
fn fuzz_the_request_path_long() {
    fuzz(lines_wanted(2_000_000));
}
