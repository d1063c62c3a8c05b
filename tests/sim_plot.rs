//! `tierd sim --plot`: the path is checked before the replay, and both
//! formats are written as valid files carrying the workload's name, the
//! lower bound and the per-tier panel.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn tierd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tierd")
}

fn workload(dir: &Path) -> (String, String) {
    let out = dir.join("zipf-small");
    let o = tierd(&[
        "sim",
        "gen",
        "--family",
        "zipf",
        "--models",
        "30",
        "--accesses",
        "3000",
        "--days",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        out.join("catalog.csv").to_str().unwrap().to_string(),
        out.join("trace.csv").to_str().unwrap().to_string(),
    )
}

#[test]
fn a_bad_plot_path_fails_before_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, trace) = workload(dir.path());
    let missing = dir.path().join("no/such/dir/plot.svg");
    for (plot, why) in [
        (missing.to_str().unwrap(), "does not exist"),
        ("/proc/tierd-plot.svg", "cannot write"),
        (dir.path().join("plot.jpg").to_str().unwrap(), ".svg or .png"),
    ] {
        let o = tierd(&["sim", "--catalog", &catalog, "--trace", &trace, "--plot", plot]);
        assert!(!o.status.success(), "{plot}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{plot}: {err}");
        // The report is printed after the replay: none means no replay ran.
        assert!(
            o.stdout.is_empty(),
            "{plot}: replayed first: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
fn svg_and_png_plots_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, trace) = workload(dir.path());
    let svg = dir.path().join("out.svg");
    let png = dir.path().join("out.png");
    for p in [&svg, &png] {
        let o = tierd(&[
            "sim",
            "--catalog",
            &catalog,
            "--trace",
            &trace,
            "--policy",
            "lru,tierd",
            "--plot",
            p.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "an SVG document"
    );
    for needle in [
        "zipf-small",
        "lower bound (offline)",
        "hours since the first access",
        "Accesses served by each tier",
        "storage",
    ] {
        assert!(text.contains(needle), "{needle:?} in the SVG");
    }
    assert!(!text.contains("5000000.0"), "no raw axis figures");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1100, 900));
    assert!(bytes.ends_with(b"IEND\xaeB`\x82"), "a complete PNG");
}
