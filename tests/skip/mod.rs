//! Skipping a test that cannot run on this machine, out loud: the reason
//! goes to the real stderr (not the captured one, so `cargo test` shows it)
//! as `skipped: <test>: <reason>`, and into `target/tmp/skipped.txt`, which
//! `.ci/run` counts in its closing summary. A skipped test never passes
//! silently.
#![allow(dead_code)]

use std::io::Write;

/// Reports that test `test` is skipped because of `reason`.
pub fn skip(test: &str, reason: &str) {
    let line = format!("skipped: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("skipped.txt")) {
        let _ = f.write_all(line.as_bytes());
    }
}
