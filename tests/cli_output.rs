//! The CLI for people and programs: `--json` prints the server's raw
//! answers, tables read relative times and three-digit sizes, `move
//! --bandwidth` reaches the wire, `status` names its config, and
//! `completions` / `man` print what shells and `man` read.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Server};
use serde_json::Value;

fn tierd(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("COLUMNS", "200")
        .output()
        .expect("run tierd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// On a narrow terminal the tables wrap between words, never inside one:
/// a word too long for its share of the width widens its column.
#[test]
fn narrow_tables_wrap_between_words() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _server = Server::socket(&sock, &[]);
    let cases: [(&[&str], &[&str]); 2] = [
        (&["status"], &["PRESSURE", "MODELS", "storage", "critical", "whisper-small"]),
        (&["models"], &["ACCESS", "mixtral-8x7b", "whisper-small", "storage", "never"]),
    ];
    for (args, wholes) in cases {
        let o = Command::new(BIN)
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .env("COLUMNS", "40")
            .output()
            .expect("run tierd");
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        let words: Vec<&str> = out.split_whitespace().collect();
        // Still wrapped: two-word headers take two lines.
        assert!(!out.contains("LAST ACCESS") && !out.contains("USED GB"), "{out}");
        for whole in wholes {
            assert!(words.contains(whole), "{args:?}: {whole:?} cut at 40 columns:\n{out}");
        }
    }
}

#[test]
fn json_flag_prints_the_raw_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _server = Server::socket(&sock, &[]);
    for (args, key) in [
        (&["--json", "health"][..], "healthy"),
        (&["--json", "jobs"][..], "jobs"),
        (&["--json", "models", "--tier", "ram"][..], "models"),
        (&["--json", "limits"][..], "tier_order"),
        (&["--json", "optimize", "--dry-run"][..], "optimizations"),
        (&["--json", "queue", "status"][..], "task_queue"),
        (&["--json", "queue", "history"][..], "history"),
    ] {
        let o = tierd(&sock, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 1, "{args:?}: one line: {out}");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert_eq!(v["status"], "success", "{args:?}: {v}");
        assert!(v.get(key).is_some(), "{args:?}: no {key}: {v}");
    }
    let o = tierd(&sock, &["--json", "status"]);
    let v: Value = serde_json::from_str(&stdout(&o)).expect("status json");
    assert_eq!(v["health"]["backend"], "sim");
    assert!(v["health"]["config"].is_null(), "{v}");
    assert!(v["tier_status"]["tiers"]["ram"]["used_gb"].is_number(), "{v}");
    assert!(v["list_models"]["models"].is_array(), "{v}");

    // The move's answer, then the job's final status, both raw.
    let o = tierd(&sock, &["--json", "move", "t5-base", "storage", "--wait", "--bandwidth", "2000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["model_name"], "t5-base");
    assert_eq!(lines[1]["status"], "success", "{lines:?}");
}

#[test]
fn bandwidth_reaches_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _server = Server::socket(&sock, &[]);
    // Out of the wire's range: the server's own check answers, so the
    // flag is sent as `bandwidth_mb_s`.
    let o = tierd(&sock, &["move", "t5-base", "storage", "--bandwidth", "0.001"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bandwidth_mb_s"), "{}", stderr(&o));
    let o = tierd(&sock, &["move", "t5-base", "storage", "--bandwidth", "500"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn human_output_reads_relative_times_and_three_digit_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("t.sock");
    let _server = Server::socket(&sock, &[]);
    let before = stdout(&tierd(&sock, &["models"]));
    assert!(before.contains("never"), "{before}");
    let o = tierd(&sock, &["request", r#"{"access_model":{"model_name":"bert-large"}}"#]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = stdout(&tierd(&sock, &["models"]));
    let row = after.lines().find(|l| l.contains("bert-large")).expect("row");
    assert!(row.contains("just now") || row.contains(" ago"), "{row}");
    assert!(!row.contains("17"), "no epoch figure: {row}");

    let status = stdout(&tierd(&sock, &["status"]));
    let mut lines = status.lines();
    assert!(lines.next().unwrap_or("").contains("simulated machine"), "{status}");
    assert!(lines.next().unwrap_or("").contains("built-in defaults"), "{status}");

    // The server's error rounds its figures to three significant digits.
    let o = tierd(&sock, &["limits", "--ram-max", "0.471859224"]);
    let err = stderr(&o);
    let o2 = tierd(&sock, &["move", "llama-7b", "ram"]);
    let err2 = stderr(&o2);
    assert!(!o2.status.success());
    assert!(err2.contains("needs 7 GB"), "{err2}");
    for e in [&err, &err2] {
        assert!(!e.contains("0.471859224 GB"), "{e}");
    }
}

#[test]
fn status_names_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tierd.toml");
    std::fs::write(&cfg, "[[tiers]]\nname='ram'\nmax_gb=4.0\n[[tiers]]\nname='storage'\n").unwrap();
    let sock = dir.path().join("t.sock");
    let _server = Server::socket(&sock, &["--config", cfg.to_str().unwrap()]);
    let status = stdout(&tierd(&sock, &["status"]));
    let line = status.lines().nth(1).unwrap_or("");
    assert!(line.contains(cfg.to_str().unwrap()), "{status}");
}

#[test]
fn json_on_sim_is_its_json_report_and_elsewhere_refused() {
    let o = Command::new(BIN).args(["--json", "serve"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--json applies to"), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w");
    let o = Command::new(BIN)
        .args(["sim", "gen", "--models", "10", "--accesses", "200", "--days", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(BIN)
        .args(["--json", "sim", "--policy", "lru", "--catalog"])
        .arg(out.join("catalog.csv"))
        .arg("--trace")
        .arg(out.join("trace.csv"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).expect("the JSON report");
    assert!(v["lower_bound_s"].is_number(), "{v}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let o = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(o.status.success());
    let bash = stdout(&o);
    assert!(bash.contains("_tierd()") && bash.contains("complete -F _tierd"), "{bash}");
    assert!(bash.contains("--bandwidth"), "subcommand flags are completed");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(o.status.success() && !o.stdout.is_empty(), "{shell}");
    }
    let o = Command::new(BIN).arg("man").output().unwrap();
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(page.contains(".TH tierd 1"), "{page}");
    assert!(page.contains("completions"), "subcommands are listed");
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let move_page = std::fs::read_to_string(dir.path().join("tierd-move.1")).expect("tierd-move.1");
    assert!(move_page.contains("bandwidth"), "{move_page}");
    let o = Command::new(BIN).args(["man", "--dir", "/nonexistent/x"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a directory"));
}
