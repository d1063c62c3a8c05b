//! Prometheus metrics: `{"metrics": {"format": "prometheus"}}` and `serve
//! --metrics-listen` answering a real TCP `GET /metrics`, the text checked
//! by the parser of the Python package `prometheus-client` (and by
//! `promtool check metrics` where it is installed).

mod common;
mod skip;
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, message, wait_job};
use serde_json::Value;

/// Reads every sample with the official parser; fails on any parse error.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family_type: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of `text` as `prometheus-client` reads them, or `None` (and
/// a skip line) where its parser is not installed.
fn parse_with_python(test: &str, text: &str) -> Option<Vec<Sample>> {
    let py = match tools::python_with("prometheus_client") {
        Ok(p) => p,
        Err(why) => {
            skip::skip(test, &why);
            return None;
        }
    };
    let mut child = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    Some(
        v.into_iter()
            .map(|s| Sample {
                family_type: s["type"].as_str().unwrap_or_default().into(),
                name: s["name"].as_str().unwrap_or_default().into(),
                labels: serde_json::from_value(s["labels"].clone()).unwrap_or_default(),
                value: s["value"].as_f64().unwrap_or(f64::NAN),
            })
            .collect(),
    )
}

/// `promtool check metrics` on `text`, where promtool is installed.
fn promtool(test: &str, text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        skip::skip(
            test,
            "promtool is not installed (Debian package prometheus); checked with prometheus-client only",
        );
        return;
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks what no parser checks: one TYPE per family, no series twice,
/// every sample's family declared before it.
fn check_structure(text: &str) {
    let mut types = BTreeSet::new();
    let mut series = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(types.insert(name.to_string()), "TYPE {name} twice");
        } else if !line.starts_with('#') && !line.is_empty() {
            let key = line.rsplit_once(' ').map(|(k, _)| k).unwrap_or(line);
            assert!(series.insert(key.to_string()), "series {key} twice");
            let name = key.split('{').next().unwrap_or_default();
            assert!(name.starts_with("tierd_"), "{name} lacks the tierd_ prefix");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains(*f)))
                .unwrap_or(name);
            assert!(types.contains(family), "{name} before its TYPE line");
        }
    }
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

/// A raw HTTP/1.1 request to `addr`: (status line, headers, body).
fn http(addr: &str, request: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_ascii_lowercase(), body.to_string())
}

/// The address the server logged for its metrics listener.
fn metrics_addr(s: &Server) -> String {
    let err = s.stderr_with("serving Prometheus metrics at http://");
    let after = err
        .split("serving Prometheus metrics at http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no metrics log line: {err}"));
    after.split("/metrics").next().unwrap_or_default().to_string()
}

/// A move and an access, then the exposition over the wire and over HTTP:
/// both parse, and both say what happened.
#[test]
fn scrape_after_a_move_reports_it() {
    let mut s = Server::stdio(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&s);
    let r = s.req(r#"{"move_tier": {"model_name": "t5-base", "target_tier": "storage"}}"#);
    let job = r["job_id"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let done = wait_job(|l| s.req(l), &job);
    assert_eq!(done["status"], "success", "{done}");
    let a = s.req(r#"{"access_model": "t5-base"}"#);
    assert_eq!(a["tier"], "storage", "{a}");

    // The JSON form stays the default.
    let j = s.req(r#"{"metrics": true}"#);
    assert_eq!(j["metrics"]["moves_succeeded"], 1, "{j}");

    let p = s.req(r#"{"metrics": {"format": "prometheus"}}"#);
    assert_eq!(p["status"], "success", "{p}");
    assert_eq!(p["content_type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = p["text"].as_str().expect("text").to_string();
    check_structure(&text);

    let (status, headers, body) = http(&addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    assert!(headers.contains(&format!("content-length: {}", body.len())), "{headers}");
    check_structure(&body);
    promtool("scrape_after_a_move_reports_it", &body);

    for text in [&text, &body] {
        let Some(samples) = parse_with_python("scrape_after_a_move_reports_it", text) else {
            return;
        };
        assert_eq!(value(&samples, "tierd_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
        assert_eq!(
            value(
                &samples,
                "tierd_moves_total",
                &[("from", "ram"), ("to", "storage"), ("result", "success")]
            ),
            1.0
        );
        assert_eq!(find(&samples, "tierd_moves_total", &[("result", "failed")]).map(|s| s.value), None);
        assert_eq!(
            value(&samples, "tierd_model_tier", &[("model", "t5-base"), ("tier", "storage")]),
            1.0
        );
        assert!(find(&samples, "tierd_model_tier", &[("model", "t5-base"), ("tier", "ram")]).is_none());
        assert_eq!(value(&samples, "tierd_models", &[]), 9.0);
        assert_eq!(value(&samples, "tierd_accesses_total", &[]), 1.0);
        assert_eq!(value(&samples, "tierd_tier_hits_total", &[("tier", "storage")]), 1.0);
        assert_eq!(value(&samples, "tierd_moved_bytes_total", &[]), 900_000_000.0);
        // One access from storage at 2 s/GB of 0.9 GB: 1.8 s, in the 2.5 s bucket.
        assert_eq!(value(&samples, "tierd_load_time_seconds_count", &[("tier", "storage")]), 1.0);
        assert!((value(&samples, "tierd_load_time_seconds_sum", &[("tier", "storage")]) - 1.8).abs() < 1e-9);
        assert_eq!(
            value(&samples, "tierd_load_time_seconds_bucket", &[("tier", "storage"), ("le", "1.0")]),
            0.0
        );
        assert_eq!(
            value(&samples, "tierd_load_time_seconds_bucket", &[("tier", "storage"), ("le", "2.5")]),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "tierd_move_duration_seconds_count",
                &[("to", "storage"), ("result", "success")]
            ),
            1.0
        );
        assert!(
            value(
                &samples,
                "tierd_move_duration_seconds_sum",
                &[("to", "storage"), ("result", "success")]
            ) > 0.0
        );
        let hist = find(&samples, "tierd_move_duration_seconds_bucket", &[("le", "+Inf")]).expect("histogram");
        assert_eq!(hist.family_type, "histogram");
        // The seed's RAM: 5 GB limit, 4.8 GB used before the demotion of 0.9 GB.
        assert_eq!(value(&samples, "tierd_tier_limit_bytes", &[("tier", "ram")]), 5e9);
        assert_eq!(value(&samples, "tierd_tier_used_bytes", &[("tier", "ram")]), 3.9e9);
        assert!((value(&samples, "tierd_tier_pressure", &[("tier", "ram")]) - 0.78).abs() < 1e-9);
        assert!(find(&samples, "tierd_tier_available_bytes", &[("tier", "ram")]).is_some());
        assert!(find(&samples, "tierd_tier_hardware_bytes", &[("tier", "ram")]).is_some());
        assert!(
            find(&samples, "tierd_tier_limit_bytes", &[("tier", "storage")]).is_none(),
            "storage is unbounded"
        );
        assert_eq!(value(&samples, "tierd_queue_depth", &[("state", "queued")]), 0.0);
        assert!(find(&samples, "tierd_promotion_wait_seconds_total", &[]).is_some());
        // No engine tiers in the seed configuration: no engine series.
        assert!(find(&samples, "tierd_engine_up", &[]).is_none());
        for s in &samples {
            if s.family_type == "counter" {
                assert!(s.name.ends_with("_total"), "counter {} lacks _total", s.name);
            }
        }
    }
}

/// The HTTP side answers only `GET`/`HEAD /metrics`, and clearly.
#[test]
fn other_http_requests_get_clear_statuses() {
    let s = Server::stdio(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&s);
    let (status, _, body) = http(&addr, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.contains("/metrics"), "{body}");
    let (status, headers, _) = http(&addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("allow: get, head"), "{headers}");
    let (status, headers, body) = http(&addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    assert!(body.is_empty(), "HEAD has no body: {body}");
    let (status, _, _) = http(&addr, "hello there\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // The server still scrapes after all that.
    let (status, _, body) = http(&addr, "GET /metrics?x=1 HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("tierd_build_info"), "{body}");
}

/// A non-loopback address is refused unless `--metrics-listen-any`.
#[test]
fn non_loopback_needs_metrics_listen_any() {
    let out = Command::new(common::BIN)
        .args(["serve", "--metrics-listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run tierd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--metrics-listen-any"),
        "{err}"
    );

    let s = Server::stdio(&["--metrics-listen", "0.0.0.0:0", "--metrics-listen-any"]);
    let addr = metrics_addr(&s);
    let port = addr.rsplit(':').next().unwrap_or_default();
    let (status, _, _) = http(&format!("127.0.0.1:{port}"), "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// Bad `metrics` bodies are refused with a reason; the server goes on.
#[test]
fn bad_metrics_requests_are_explained() {
    let mut s = Server::stdio(&[]);
    let r = s.req(r#"{"metrics": {"format": "openmetrics"}}"#);
    assert!(message(&r).contains("unknown format \"openmetrics\""), "{r}");
    let r = s.req(r#"{"metrics": {"format": true}}"#);
    assert!(message(&r).contains("must be a string"), "{r}");
    let r = s.req(r#"{"metrics": {"fmt": "json"}}"#);
    assert!(message(&r).contains("fmt"), "{r}");
    let r = s.req(r#"{"metrics": true}"#);
    assert_eq!(r["status"], "success", "{r}");
}
