//! Event streams: `{"watch": ...}` over the socket and stdio, the events of
//! a move in order, `unwatch`, a watcher that never reads, bad requests.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{BIN, Client, DEADLINE, Server, message};
use serde_json::Value;

/// Events from `c` until one satisfies `last` (included).
fn events_until(c: &mut Client, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let until = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    loop {
        let v = c.recv();
        let done = last(&v);
        out.push(v);
        if done {
            return out;
        }
        assert!(Instant::now() < until, "no final event: {out:?}");
    }
}

#[test]
fn a_move_is_queued_started_progresses_and_ends_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    // Real time: the 0.9 GB demotion takes 0.18 s, long enough for progress.
    let _s = Server::socket(&sock, &["--time-scale", "1"]);
    let mut w = Client::connect(&sock);
    let ack = w.req(r#"{"id": 1, "watch": {"events": ["jobs", "models"], "progress_interval_s": 0.02}}"#);
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["watching"]["events"], serde_json::json!(["jobs", "models"]));
    let mut c = Client::connect(&sock);
    let r = c.req(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage"}}"#);
    let job = r["job_id"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let events = events_until(&mut w, |v| v["event"] == "model_placed");
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect();
    assert_eq!(names.first(), Some(&"job_queued"), "{names:?}");
    assert_eq!(names.get(1), Some(&"job_started"), "{names:?}");
    let n = names.len();
    assert!(n >= 5, "{names:?}");
    assert_eq!(&names[n - 2..], &["job_ended", "model_placed"], "{names:?}");
    assert!(names[2..n - 2].iter().all(|e| *e == "job_progress"), "{names:?}");
    assert!(names.contains(&"job_progress"), "no progress: {names:?}");
    let mut at = 0.0;
    let mut progress = 0.0;
    for e in &events {
        let t = e["at"].as_f64().expect("at");
        assert!(t >= at, "time went back: {events:?}");
        at = t;
        if e["event"] != "model_placed" {
            assert_eq!(e["job_id"], job.as_str(), "{e}");
        }
        assert_eq!(e["model_name"], "t5-base", "{e}");
        assert!(e.get("dropped").is_none(), "{e}");
        if e["event"] == "job_progress" {
            let p = e["progress"].as_f64().expect("progress");
            assert!((0.0..=1.0).contains(&p) && p >= progress, "{events:?}");
            progress = p;
        }
    }
    let q = &events[0];
    assert_eq!(
        (&q["operation"], &q["source_tier"], &q["target_tier"]),
        (&"demote".into(), &"ram".into(), &"storage".into())
    );
    assert_eq!((&q["priority"], &q["origin"]), (&"normal".into(), &"user".into()));
    assert_eq!(events[1]["attempt"], 1);
    let end = &events[n - 2];
    assert_eq!(end["status"], "success", "{end}");
    assert!(end["error"].is_null() && end["elapsed_s"].as_f64().unwrap_or(0.0) > 0.0, "{end}");
    let placed = &events[n - 1];
    assert_eq!((&placed["tier"], &placed["previous_tier"]), (&"storage".into(), &"ram".into()));

    // Tier events: a limit changed, and the pressure level it moved.
    let ack = w.req(r#"{"unwatch": true}"#);
    assert_eq!(ack["unwatched"], true, "{ack}");
    let ack = w.req(r#"{"watch": {"events": ["tiers", "pressure"]}}"#);
    assert_eq!(ack["status"], "success", "{ack}");
    let r = c.req(r#"{"update_limits": {"ram_max_gb": 4.0}}"#);
    assert_eq!(r["status"], "success", "{r}");
    let lim = w.recv();
    assert_eq!(
        (&lim["event"], &lim["tier"], &lim["limit_gb"]),
        (&"tier_limit_changed".into(), &"ram".into(), &4.0.into()),
        "{lim}"
    );
    // 3.9 GB of 4 GB: from medium (0.78 of 5 GB) to high (0.975).
    let p = w.recv();
    assert_eq!((&p["event"], &p["tier"]), (&"tier_pressure_changed".into(), &"ram".into()), "{p}");
    assert_eq!((&p["previous"], &p["pressure"]), (&"medium".into(), &"high".into()), "{p}");
    assert_eq!(p["utilization"], 0.975, "{p}");
}

#[test]
fn unwatch_returns_the_connection_to_requests() {
    let mut s = Server::stdio(&[]);
    let ack = s.req(r#"{"watch": true}"#);
    assert_eq!(
        ack["watching"]["events"],
        serde_json::json!(["jobs", "models", "tiers", "pressure", "engines"])
    );
    let r = s.req(r#"{"id": "h", "health": true}"#);
    assert_eq!(r["id"], "h");
    assert!(message(&r).contains("send {\"unwatch\": true} first"), "{r}");
    let r = s.req(r#"{"watch": true}"#);
    assert!(message(&r).contains("watching events"), "{r}");
    let r = s.req(r#"{"id": 9, "unwatch": true}"#);
    assert_eq!(
        (&r["status"], &r["unwatched"], &r["id"]),
        (&"success".into(), &true.into(), &9.into()),
        "{r}"
    );
    let r = s.req(r#"{"health": true}"#);
    assert_eq!(r["healthy"], true, "{r}");
    assert!(r["requests"].as_array().expect("requests").iter().any(|k| k == "watch"), "{r}");
    // A move after the unwatch is answered, not streamed.
    let r = s.req(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage", "wait": true}}"#);
    assert_eq!(r["status"], "success", "{r}");
    s.assert_silent(Duration::from_millis(100));
}

#[test]
fn bad_watch_requests_get_clear_errors() {
    let mut s = Server::stdio(&[]);
    for (line, needle) in [
        (r#"{"watch": {"events": ["jobz"]}}"#, "unknown event group \"jobz\""),
        (r#"{"watch": {"events": []}}"#, "events is empty"),
        (r#"{"watch": {"progress_interval_s": -1}}"#, "progress_interval_s must be"),
        (r#"{"watch": {"buffer": 0}}"#, "buffer must be"),
        (r#"{"watch": {"every": 1}}"#, "every"),
        (r#"{"watch": 5}"#, "watch takes true"),
        (r#"{"unwatch": true}"#, "not watching"),
    ] {
        let r = s.req(line);
        assert_eq!(r["status"], "error", "{line}: {r}");
        assert!(message(&r).contains(needle), "{line}: {r}");
    }
    assert_eq!(s.req(r#"{"health": true}"#)["healthy"], true);
}

/// The stdio peer watches and never reads (its pipe shrunk to one page);
/// a socket client moves a model back and forth meanwhile: every move ends,
/// other requests are answered, and once the watcher reads, an event says
/// how many were dropped.
#[test]
fn a_watcher_that_never_reads_blocks_nothing_and_learns_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let mut child = Command::new(BIN)
        .args(["--socket", sock.to_str().unwrap(), "serve", "--stdio", "--time-scale", "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tierd");
    let stdout = child.stdout.take().expect("stdout");
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this process owns.
    let size = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "cannot shrink the pipe");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"watch\": {\"progress_interval_s\": 0.01, \"buffer\": 16}}\n")
        .expect("write");
    stdin.flush().expect("flush");
    let until = Instant::now() + DEADLINE;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < until, "socket never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut c = Client::connect(&sock);
    for i in 0..60 {
        let to = if i % 2 == 0 { "storage" } else { "ram" };
        let r = c.req(&format!(
            r#"{{"move_tier": {{"model_name": "t5-base", "target_tier": "{to}", "wait": true}}}}"#
        ));
        assert_eq!(r["status"], "success", "move {i}: {r}");
    }
    assert_eq!(c.req(r#"{"health": true}"#)["healthy"], true);
    // Now read: the ack, then events, one of them with `dropped`.
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: Value = serde_json::from_str(&rx.recv_timeout(DEADLINE).expect("ack")).expect("JSON");
    assert_eq!(first["status"], "success", "{first}");
    stdin.write_all(b"{\"unwatch\": true}\n").expect("write");
    stdin.flush().expect("flush");
    let mut dropped = 0;
    let mut unwatched = None;
    while unwatched.is_none() {
        let line = rx.recv_timeout(DEADLINE).expect("a line before the unwatch answer");
        let v: Value = serde_json::from_str(&line).expect("JSON");
        dropped += v["dropped"].as_u64().unwrap_or(0);
        if v.get("unwatched").is_some() {
            unwatched = Some(v);
        }
    }
    let u = unwatched.unwrap_or_default();
    assert!(dropped > 0, "no event said it followed dropped ones; {u}");
    assert_eq!(u["events_dropped"].as_u64(), Some(dropped), "{u}");
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
}

/// `tierd watch` (human and JSON) and `tierd move --wait`, whose bar
/// follows the stream; piped, the move prints one final line.
#[test]
fn the_cli_watches_and_waits_on_events() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _s = Server::socket(&sock, &["--fault-probability", "0"]);
    let sock_s = sock.to_str().unwrap();
    let spawn_watch = |extra: &[&str]| {
        let mut args = vec!["--socket", sock_s, "watch", "--events", "jobs,models,tiers"];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tierd watch");
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    let (mut human, human_rx) = spawn_watch(&[]);
    let (mut json, json_rx) = spawn_watch(&["--json"]);
    // A limit change both watchers see says that they are in (they
    // connect on their own time: the change is repeated until then).
    let mut c = Client::connect(&sock);
    let (mut json_in, mut human_in) = (false, false);
    let until = Instant::now() + DEADLINE;
    while !(json_in && human_in) {
        assert!(Instant::now() < until, "the watchers never saw a limit change");
        let r = c.req(r#"{"update_limits": {"ram_max_gb": 5.0}}"#);
        assert_eq!(r["status"], "success", "{r}");
        for (rx, seen) in [(&json_rx, &mut json_in), (&human_rx, &mut human_in)] {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(if *seen { 1 } else { 100 })) {
                assert!(line.contains("tier_limit_changed"), "{line}");
                *seen = true;
            }
        }
    }
    let out = Command::new(BIN)
        .args(["--socket", sock_s, "move", "t5-base", "storage", "--wait"])
        .output()
        .expect("tierd move");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("demote t5-base ram -> storage"), "{stdout}");
    assert!(stdout.lines().last().unwrap_or_default().contains(": success after"), "{stdout}");

    let mut seen = Vec::new();
    while !seen.iter().any(|l: &Value| l["event"] == "model_placed") {
        let line = json_rx.recv_timeout(DEADLINE).expect("a JSON event line");
        seen.push(serde_json::from_str(&line).expect("JSON"));
    }
    let names: Vec<&str> = seen
        .iter()
        .map(|v| v["event"].as_str().unwrap_or("?"))
        .filter(|e| *e != "tier_limit_changed")
        .collect();
    assert_eq!(names.first(), Some(&"job_queued"), "{names:?}");
    assert!(names.ends_with(&["job_ended", "model_placed"]), "{names:?}");
    let mut first = human_rx.recv_timeout(DEADLINE).expect("a human line");
    while first.contains("tier_limit_changed") {
        first = human_rx.recv_timeout(DEADLINE).expect("a human line");
    }
    assert!(
        first.contains("job_queued") && first.contains("queued: demote t5-base ram -> storage (normal, user)"),
        "{first}"
    );
    let _ = human.kill();
    let _ = json.kill();
    let _ = human.wait();
    let _ = json.wait();
}

/// A move that fails, waited on through the stream: piped, one final line
/// on stderr with the reason, exit 1.
#[test]
fn a_failed_move_waited_on_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _s = Server::socket(&sock, &["--fault-probability", "1"]);
    let out = Command::new(BIN)
        .args(["--socket", sock.to_str().unwrap(), "move", "t5-base", "storage", "--wait"])
        .output()
        .expect("tierd move");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("tierd: tier_demote_t5-base_") && last.contains(" failed: "),
        "{stderr}"
    );
}
