//! Discovery benchmark: hand-builds an Ollama store and a Hugging Face hub
//! cache of `--models` models each (default 1,000: 2,000 in all) in a
//! temporary directory, in their real layouts (`tests/source_fixtures`),
//! then times `Sources::scan` (every model found, its files measured)
//! against a baseline in the same run: a bare walk of the same trees that
//! only lists every entry and stats every file through its symlinks, the
//! least I/O any discovery does.
//!
//! `cargo bench --bench sources` (`-- --models N --reps R`).

#[path = "../tests/source_fixtures/mod.rs"]
mod fixtures;

use std::path::Path;
use std::time::{Duration, Instant};

use tierd::config::{SourceConfig, SourceKind, SourceRegister};
use tierd::sources::Sources;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lists every entry under `dir` and stats every file, following symlinks.
fn bare_walk(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => {
                    if std::fs::metadata(&p).is_ok() {
                        n += 1;
                    }
                }
                Err(_) => {}
            }
        }
    }
    n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let models = arg("--models", 1000);
    let reps = arg("--reps", 7).max(1);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench failed: tempdir: {e}");
            std::process::exit(1);
        }
    };
    let (store, cache) = (dir.path().join("ollama"), dir.path().join("hub"));
    let t = Instant::now();
    for i in 0..models {
        fixtures::ollama_library_model(&store, &format!("model-{i}"), "latest", 4096, i as u64);
        fixtures::hf_repo(
            &cache,
            &format!("org-{}/model-{i}", i % 50),
            &fixtures::commit(i as u64),
            &[
                ("config.json", b"{}"),
                ("model-00001-of-00002.safetensors", &fixtures::bytes(2048, i as u64)),
                ("model-00002-of-00002.safetensors", &fixtures::bytes(1024, i as u64 + 7)),
            ],
        );
    }
    println!(
        "built {models} Ollama + {models} Hugging Face models in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let cfg = |kind, path: &Path| SourceConfig {
        kind,
        path: Some(path.to_path_buf()),
        include: Vec::new(),
        exclude: Vec::new(),
        register: SourceRegister::List,
        revision: "main".into(),
        rescan_s: 60.0,
    };
    let sources = match Sources::new(
        &[cfg(SourceKind::Ollama, &store), cfg(SourceKind::Huggingface, &cache)],
        &|_| None,
        10_000,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    };
    // One warm-up of each (the page cache holds the trees from then on).
    let found: usize = sources.scan().sources.iter().map(|s| s.models.len()).sum();
    if found != 2 * models {
        eprintln!("bench failed: found {found} models, built {}", 2 * models);
        std::process::exit(1);
    }
    let files = bare_walk(&store) + bare_walk(&cache);
    let (mut scans, mut walks, mut watches) = (Vec::new(), Vec::new(), Vec::new());
    let mut dirs = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let d = sources.scan();
        scans.push(t.elapsed());
        std::hint::black_box(d);
        let t = Instant::now();
        std::hint::black_box(bare_walk(&store) + bare_walk(&cache));
        walks.push(t.elapsed());
        let t = Instant::now();
        dirs = sources.watch_dirs().len();
        watches.push(t.elapsed());
    }
    let (scan, walk, watch) = (median(scans), median(walks), median(watches));
    println!(
        "discovery of {found} models ({files} files): scan {:.1} ms (median of {reps})",
        scan.as_secs_f64() * 1e3
    );
    println!("baseline (bare walk + stat of the same trees): {:.1} ms", walk.as_secs_f64() * 1e3);
    println!("ratio scan / bare walk: {:.2}", scan.as_secs_f64() / walk.as_secs_f64());
    println!("directories to watch: {dirs}, listed in {:.1} ms", watch.as_secs_f64() * 1e3);
    println!("under 1 s: {}", if scan < Duration::from_secs(1) { "yes" } else { "NO" });
}
