//! `tierd mcp`: the official MCP Python SDK (PyPI `mcp`, in the CI venv) as
//! a real client, in its automatic mode (server/discover, the stateless
//! 2026-07-28 revision) and its legacy mode (the initialize handshake),
//! against an embedded engine and forwarding to a running server; and raw
//! JSON-RPC from here for both lifecycles and the error codes.

mod common;
mod skip;
mod tools;

use std::path::Path;
use std::process::Command;

use common::{BIN, Client, Server, spawn};
use serde_json::{Value, json};

/// Runs tests/mcp/client.py in `mode` against `tierd ARGS`; its report.
fn python_client(test: &str, mode: &str, tierd_args: &[&str]) -> Option<Value> {
    let python = match tools::python_with("mcp") {
        Ok(p) => p,
        Err(reason) => {
            skip::skip(test, &reason);
            return None;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(mode)
        .arg(BIN)
        .args(tierd_args)
        .env("TIERD_LOG", "warn")
        .output()
        .expect("run the Python MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client.py {mode} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"));
    Some(report)
}

fn check_report(report: &Value) {
    assert!(report["progress_notifications"].as_u64().is_some_and(|n| n >= 2), "{report}");
    assert_eq!(report["tools"].as_array().map(Vec::len), Some(13), "{report}");
    assert_eq!(report["registered_in"], "storage");
    assert_eq!(report["move"]["status"], "success");
    assert!(
        report["error_text"]
            .as_str()
            .is_some_and(|t| t.contains("MODEL_NOT_FOUND") && t.contains("no-such-model")),
        "{report}"
    );
    assert!(
        report["typo_text"].as_str().is_some_and(|t| t.contains("unknown field `target`")),
        "{report}"
    );
}

#[test]
fn python_sdk_auto_mode_uses_the_stateless_revision() {
    let Some(report) = python_client("python_sdk_auto_mode", "auto", &["mcp", "--time-scale", "50"]) else {
        return;
    };
    check_report(&report);
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");
}

#[test]
fn python_sdk_legacy_mode_uses_the_initialize_handshake() {
    let Some(report) = python_client("python_sdk_legacy_mode", "legacy", &["mcp", "--time-scale", "50"]) else {
        return;
    };
    check_report(&report);
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
}

#[test]
fn python_sdk_through_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("tierd.sock");
    let _server = Server::socket(&sock, &[]);
    let p = sock.to_str().expect("utf-8");
    let Some(report) = python_client("python_sdk_through_a_running_server", "auto", &["--socket", p, "mcp"]) else {
        return;
    };
    check_report(&report);
    // The move happened in the server, not in an engine of the MCP process.
    let mut c = Client::connect(&sock);
    let info = c.req(r#"{"model_info": "mcp-small"}"#);
    assert_eq!(info["model"]["tier"], "ram", "{info}");
}

/// `tierd mcp` driven with raw JSON-RPC lines.
struct Raw {
    s: Server,
}

impl Raw {
    fn start(args: &[&str]) -> Raw {
        let mut all = vec!["mcp", "--time-scale", "50"];
        all.extend_from_slice(args);
        Raw {
            s: spawn(&all, &[("TIERD_LOG", "warn")]),
        }
    }

    fn send(&mut self, v: Value) {
        self.s.send_raw(format!("{v}\n").as_bytes());
    }

    fn call(&mut self, v: Value) -> Value {
        self.send(v);
        self.s.recv()
    }
}

/// What a stateless (2026-07-28) request carries in `_meta` instead of a
/// handshake.
fn inline_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

#[test]
fn raw_initialize_handshake_tools_and_errors() {
    let mut r = Raw::start(&[]);
    let init = r.call(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}));
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "tierd");
    assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
    r.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));

    let list = r.call(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    let tools = list["result"]["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 13);
    let update = tools.iter().find(|t| t["name"] == "update_limits").expect("update_limits");
    assert_eq!(update["inputSchema"]["properties"]["max_concurrent_tasks"]["maximum"], 1024);

    let unknown = r.call(json!({"jsonrpc": "2.0", "id": 3, "method": "no/such_method", "params": {}}));
    assert_eq!(unknown["id"], 3);
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");

    let status = r.call(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "tier_status", "arguments": {}}}));
    assert_eq!(status["result"]["isError"], false, "{status}");
    let text = status["result"]["content"][0]["text"].as_str().expect("text");
    let parsed: Value = serde_json::from_str(text).expect("the text is the JSON answer");
    assert_eq!(parsed, status["result"]["structuredContent"]);
    assert_eq!(parsed["tier_order"], json!(["ram", "swap", "storage"]));

    // A limit below its minimum: an isError result with tierd's message.
    let bad = r.call(json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "update_limits", "arguments": {"ram_max_gb": -1}}}));
    assert_eq!(bad["result"]["isError"], true, "{bad}");
    let message = bad["result"]["content"][0]["text"].as_str().expect("text");
    assert!(message.contains("ram_max_gb must be a number from 0"), "{message}");
    assert_eq!(bad["result"]["structuredContent"]["status"], "error");

    // A tool that does not exist is a protocol error, not a tool result.
    let nope = r.call(json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
        "params": {"name": "format_disk", "arguments": {}}}));
    assert_eq!(nope["error"]["code"], -32602, "{nope}");
    assert!(
        nope["error"]["message"].as_str().is_some_and(|m| m.contains("format_disk")),
        "{nope}"
    );

    // Closing stdin ends the session and the process, cleanly.
    r.s.close_stdin();
    assert!(r.s.wait_exit().success(), "{}", r.s.stderr());
}

#[test]
fn raw_discover_then_stateless_requests() {
    let mut r = Raw::start(&[]);
    let discover = r.call(json!({"jsonrpc": "2.0", "id": "d", "method": "server/discover",
        "params": {"_meta": inline_meta()}}));
    let versions = discover["result"]["supportedVersions"].as_array().expect("supportedVersions");
    for v in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        assert!(versions.contains(&json!(v)), "{discover}");
    }
    // No initialize: each request says its revision and client itself.
    let list = r.call(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": inline_meta()}}));
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(13), "{list}");
    let reg = r.call(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "_meta": inline_meta(), "name": "register_model",
        "arguments": {"model_name": "raw-small", "size_gb": 0.2, "preferred_tier": "storage"}}}));
    assert_eq!(reg["result"]["structuredContent"]["tier"], "storage", "{reg}");
    let moved = r.call(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "_meta": inline_meta(), "name": "move_tier",
        "arguments": {"model_name": "raw-small", "target_tier": "ram", "wait": true}}}));
    assert_eq!(moved["result"]["isError"], false, "{moved}");
    assert_eq!(moved["result"]["structuredContent"]["status"], "success", "{moved}");
    // A stateless request without its _meta is refused, saying what is missing.
    let bare = r.call(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {}}));
    assert_eq!(bare["error"]["code"], -32602, "{bare}");
    assert!(
        bare["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("io.modelcontextprotocol/protocolVersion")),
        "{bare}"
    );
    let unknown = r.call(json!({"jsonrpc": "2.0", "id": 5, "method": "no/such_method",
        "params": {"_meta": inline_meta()}}));
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
}

#[test]
fn forwarding_to_an_absent_server_is_a_readable_tool_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("absent.sock");
    let p = sock.to_str().expect("utf-8");
    let mut r = Raw {
        s: spawn(&["--socket", p, "mcp"], &[("TIERD_LOG", "warn")]),
    };
    r.call(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}));
    r.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let call = r.call(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "tier_status", "arguments": {}}}));
    assert_eq!(call["result"]["isError"], true, "{call}");
    let text = call["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.contains("cannot reach tierd at") && text.contains("absent.sock"), "{text}");
}

/// The embedded engine on the real backend: a registration walks the
/// model's file (the prepare step, off the engine's lock), a waited-for
/// move copies it into a directory tier, and the state is saved at exit.
#[test]
fn raw_real_backend_registers_and_moves_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("nvme")).expect("mkdir");
    std::fs::create_dir_all(root.join("models")).expect("mkdir");
    let weights = root.join("models/tiny.gguf");
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&weights, &data).expect("write weights");
    let cfg = root.join("tierd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "{root}/state"
policy = "usage"
[[tiers]]
name = "nvme"
driver = "dir"
path = "{root}/nvme"
max_gb = 1.0
access_s_per_gb = 0.5
[[tiers]]
name = "storage"
driver = "storage"
access_s_per_gb = 2.0
"#,
            root = root.display()
        ),
    )
    .expect("write config");
    let c = cfg.to_str().expect("utf-8");
    let mut r = Raw {
        s: spawn(&["mcp", "--backend", "real", "--config", c], &[("TIERD_LOG", "warn")]),
    };
    r.call(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}));
    r.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let reg = r.call(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "register_model", "arguments": {"model_name": "tiny", "path": weights, "preferred_tier": "storage"}}}));
    assert_eq!(reg["result"]["isError"], false, "{reg}");
    assert_eq!(reg["result"]["structuredContent"]["tier"], "storage", "{reg}");
    let moved = r.call(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "move_tier", "arguments": {"model_name": "tiny", "target_tier": "nvme", "wait": true}}}));
    assert_eq!(moved["result"]["structuredContent"]["status"], "success", "{moved}");
    let copy = std::fs::read_dir(root.join("nvme"))
        .expect("read the tier")
        .flatten()
        .flat_map(|e| walk_files(&e.path()))
        .find(|p| p.file_name().is_some_and(|n| n == "tiny.gguf"))
        .expect("the copy in the nvme tier");
    assert_eq!(std::fs::read(copy).expect("read the copy"), data, "byte-identical copy");
    // A path that does not exist: the walk's error, readable.
    let missing = r.call(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "register_model", "arguments": {"model_name": "ghost", "path": root.join("models/none.gguf")}}}));
    assert_eq!(missing["result"]["isError"], true, "{missing}");
    assert!(
        missing["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("none.gguf")),
        "{missing}"
    );
    r.s.close_stdin();
    assert!(r.s.wait_exit().success(), "{}", r.s.stderr());
    assert!(root.join("state/tierd-state.json").exists(), "state saved at exit");
}

fn walk_files(p: &Path) -> Vec<std::path::PathBuf> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|d| d.flatten().flat_map(|e| walk_files(&e.path())).collect())
            .unwrap_or_default()
    } else {
        vec![p.to_path_buf()]
    }
}

#[test]
fn engine_options_next_to_socket_are_refused() {
    let out = Command::new(BIN)
        .args([
            "--socket",
            "/nonexistent/tierd.sock",
            "mcp",
            "--config",
            "x.toml",
            "--time-scale",
            "5",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tierd mcp");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--config, --time-scale configure the embedded engine"), "{stderr}");
}
