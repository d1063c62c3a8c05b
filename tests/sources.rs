//! Model sources against hand-built stores in their real layouts (see
//! `tests/source_fixtures`): what each kind finds, include/exclude,
//! `register = "auto"` against `"list"`, a model gone from its source made
//! unavailable and back, the Hugging Face scan cross-checked against
//! `huggingface_hub.scan_cache_dir`, and, end to end over the socket, an
//! inotify rescan that picks up a new model and a vanished one.

mod common;
mod real_support;
mod skip;
mod source_fixtures;
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use source_fixtures as fx;
use tierd::config::{SourceConfig, SourceKind, SourceRegister};
use tierd::requests::discover::discovered;
use tierd::server::sources::apply_scan;
use tierd::sources::{Found, Source, Sources};

fn source(kind: SourceKind, path: &Path) -> SourceConfig {
    SourceConfig {
        kind,
        path: Some(path.to_path_buf()),
        include: Vec::new(),
        exclude: Vec::new(),
        register: SourceRegister::Auto,
        revision: "main".into(),
        rescan_s: 60.0,
    }
}

fn scan(cfg: &SourceConfig) -> tierd::sources::SourceScan {
    Source::new(0, cfg, &|_| None, 10_000).expect("source").scan()
}

fn names(models: &[Found]) -> Vec<&str> {
    models.iter().map(|m| m.name.as_str()).collect()
}

fn origin_files(m: &Found) -> Vec<PathBuf> {
    m.files.files.iter().map(|f| m.files.origin_file(f)).collect()
}

#[test]
fn an_ollama_store_is_read_as_ollama_list_shows_it() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = d.path().join("models");
    let weights = fx::bytes(4096, 1);
    let projector = fx::bytes(512, 2);
    fx::ollama_model(
        &store,
        "registry.ollama.ai",
        "library",
        "llama3.2",
        "latest",
        &[
            (fx::MODEL, &weights),
            (fx::TEMPLATE, b"{{ .Prompt }}"),
            (fx::PROJECTOR, &projector),
            (fx::PARAMS, b"{}"),
        ],
    );
    fx::ollama_library_model(&store, "qwen2.5", "0.5b", 2048, 3);
    fx::ollama_model(
        &store,
        "registry.ollama.ai",
        "jmorgan",
        "tiny",
        "v1",
        &[(fx::MODEL, &fx::bytes(100, 4))],
    );
    fx::ollama_model(
        &store,
        "hf.co",
        "bartowski",
        "Llama-GGUF",
        "Q4_K_M",
        &[(fx::MODEL, &fx::bytes(300, 5))],
    );
    // A manifest whose weights blob is missing (a pull in progress) and one that is not JSON.
    let broken = fx::ollama_library_model(&store, "broken", "latest", 64, 6);
    let text = std::fs::read_to_string(&broken).expect("read");
    let m: Value = serde_json::from_str(&text).expect("json");
    let digest = m["layers"][0]["digest"].as_str().expect("digest").replace(':', "-");
    std::fs::remove_file(store.join("blobs").join(digest)).expect("rm blob");
    std::fs::create_dir_all(store.join("manifests/registry.ollama.ai/library/junk")).expect("mkdir");
    std::fs::write(store.join("manifests/registry.ollama.ai/library/junk/latest"), b"not json").expect("write");

    let s = scan(&source(SourceKind::Ollama, &store));
    assert_eq!(s.error, None);
    assert_eq!(
        names(&s.models),
        [
            "hf.co/bartowski/Llama-GGUF:Q4_K_M",
            "jmorgan/tiny:v1",
            "llama3.2:latest",
            "qwen2.5:0.5b"
        ]
    );
    let llama = &s.models[2];
    let blob = store.join("blobs").join(format!("sha256-{}", fx::sha256_hex(&weights)));
    assert_eq!(origin_files(llama), vec![blob.canonicalize().expect("canonical")]);
    assert_eq!(llama.files.bytes, 4096, "only the weights layer counts");
    assert_eq!(llama.components.len(), 1, "{:?}", llama.components);
    assert_eq!(llama.components[0].role, "projector");
    assert_eq!(llama.components[0].size, 512);
    assert!(
        s.problems.iter().any(|p| p.starts_with("broken:latest") && p.contains("blob")),
        "{:?}",
        s.problems
    );
    assert!(
        s.problems
            .iter()
            .any(|p| p.starts_with("junk:latest") && p.contains("not a manifest")),
        "{:?}",
        s.problems
    );
}

/// A cache with a sharded safetensors repository, a GGUF repository of
/// several quantizations with a projector, a repository without
/// `refs/main`, and a dataset (not a model).
fn build_hf_cache(cache: &Path) {
    fx::hf_repo(
        cache,
        "meta-llama/Llama-3.2-1B",
        &fx::commit(1),
        &[
            ("config.json", b"{}"),
            ("model-00001-of-00002.safetensors", &fx::bytes(1000, 11)),
            ("model-00002-of-00002.safetensors", &fx::bytes(500, 12)),
            ("original/consolidated.00.pth", &fx::bytes(10, 13)),
            ("pytorch_model.bin", &fx::bytes(700, 14)),
        ],
    );
    fx::hf_repo(
        cache,
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        &fx::commit(2),
        &[
            ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", &fx::bytes(400, 21)),
            ("Llama-3.2-1B-Instruct-Q8_0.gguf", &fx::bytes(800, 22)),
            ("Llama-3.2-1B-Instruct-f16.gguf", &fx::bytes(1600, 23)),
            ("mmproj-model-f16.gguf", &fx::bytes(64, 24)),
            ("README.md", b"# readme"),
        ],
    );
    fx::hf_repo(cache, "gpt2", &fx::commit(3), &[("pytorch_model.bin", &fx::bytes(300, 31))]);
    let orphan = fx::hf_repo(cache, "org/no-ref", &fx::commit(4), &[("m.safetensors", &fx::bytes(50, 41))]);
    std::fs::remove_file(orphan.join("refs/main")).expect("rm ref");
    std::fs::create_dir_all(cache.join("datasets--org--data/snapshots")).expect("mkdir");
}

#[test]
fn a_hugging_face_cache_yields_repositories_and_quantizations() {
    let d = tempfile::tempdir().expect("tempdir");
    let cache = d.path().join("hub");
    build_hf_cache(&cache);
    let s = scan(&source(SourceKind::Huggingface, &cache));
    assert_eq!(
        names(&s.models),
        [
            "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            "bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0",
            "bartowski/Llama-3.2-1B-Instruct-GGUF:f16",
            "gpt2",
            "meta-llama/Llama-3.2-1B",
        ]
    );
    let llama = &s.models[4];
    assert_eq!(llama.revision.as_deref(), Some(fx::commit(1).as_str()));
    let rels: Vec<String> = llama.files.files.iter().map(|f| f.rel.display().to_string()).collect();
    assert_eq!(
        rels,
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        "safetensors over .bin"
    );
    assert_eq!(llama.files.bytes, 1500);
    for f in &llama.files.files {
        let resolved = llama.files.origin_file(f).canonicalize().expect("resolves");
        assert!(resolved.starts_with(cache.join("models--meta-llama--Llama-3.2-1B/blobs").canonicalize().expect("c")));
    }
    let q4 = &s.models[0];
    assert!(q4.files.single);
    assert_eq!(
        q4.files.files[0].rel,
        PathBuf::from("Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
        "copies keep the file's name"
    );
    assert_eq!(
        q4.files.origin.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()),
        Some("blobs")
    );
    assert_eq!(q4.files.bytes, 400);
    assert_eq!(q4.components.len(), 1);
    assert_eq!(q4.components[0].role, "projector");
    assert_eq!(s.models[3].files.bytes, 300, "a .bin-only repository");
    assert!(
        s.problems.iter().any(|p| p.contains("org/no-ref") && p.contains("refs/main")),
        "{:?}",
        s.problems
    );
    // Another revision: the repositories with that ref, or a snapshot of that commit.
    let mut by_commit = source(SourceKind::Huggingface, &cache);
    by_commit.revision = fx::commit(4);
    let s = scan(&by_commit);
    assert_eq!(names(&s.models), ["org/no-ref"]);
}

#[test]
fn the_hugging_face_scan_agrees_with_huggingface_hub() {
    let py = match tools::python_with("huggingface_hub") {
        Ok(p) => p,
        Err(why) => return skip::skip("the_hugging_face_scan_agrees_with_huggingface_hub", &why),
    };
    let d = tempfile::tempdir().expect("tempdir");
    let cache = d.path().join("hub");
    build_hf_cache(&cache);
    let script = r#"
import json, sys
from huggingface_hub import scan_cache_dir
info = scan_cache_dir(sys.argv[1])
out = {}
for repo in info.repos:
    if repo.repo_type != "model":
        continue
    revs = {}
    for rev in repo.revisions:
        revs[rev.commit_hash] = {
            "refs": sorted(rev.refs),
            "files": {str(f.file_path.relative_to(rev.snapshot_path)): str(f.blob_path) for f in rev.files},
        }
    out[repo.repo_id] = revs
print(json.dumps(out))
"#;
    let o = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(&cache)
        .output()
        .expect("run python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hub: BTreeMap<String, BTreeMap<String, Value>> = serde_json::from_slice(&o.stdout).expect("json");
    let s = scan(&source(SourceKind::Huggingface, &cache));
    // The same repositories with a `main` ref (ours: one or more models each).
    let ours: BTreeSet<String> = s
        .models
        .iter()
        .map(|m| m.name.split(':').next().unwrap_or("").to_string())
        .collect();
    let theirs: BTreeSet<String> = hub
        .iter()
        .filter(|(_, revs)| {
            revs.values()
                .any(|r| r["refs"].as_array().is_some_and(|a| a.contains(&json!("main"))))
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ours, theirs);
    assert!(
        hub.contains_key("org/no-ref"),
        "huggingface_hub sees the unreferenced repository too"
    );
    for m in &s.models {
        let id = m.name.split(':').next().unwrap_or("");
        let rev = m.revision.as_deref().expect("a revision");
        let r = &hub[id][rev];
        assert!(r["refs"].as_array().is_some_and(|a| a.contains(&json!("main"))), "{}: {r}", m.name);
        let files = r["files"].as_object().expect("files");
        for f in &m.files.files {
            let blob = files.get(&f.rel.display().to_string()).and_then(Value::as_str);
            let blob = blob.unwrap_or_else(|| panic!("{}: {} unknown to huggingface_hub", m.name, f.rel.display()));
            let ours = m.files.origin_file(f).canonicalize().expect("resolves");
            assert_eq!(ours, Path::new(blob).canonicalize().expect("blob"), "{}", m.name);
        }
        // Every weight file huggingface_hub lists is in one of our models of the repository.
        let ours_all: BTreeSet<String> = s
            .models
            .iter()
            .filter(|o| o.name.split(':').next() == Some(id))
            .flat_map(|o| o.files.files.iter().map(|f| f.rel.display().to_string()))
            .collect();
        let weights: BTreeSet<String> = files
            .keys()
            .filter(|k| k.ends_with(".gguf") && !k.starts_with("mmproj") || k.ends_with(".safetensors"))
            .cloned()
            .collect();
        assert!(weights.is_subset(&ours_all), "{id}: {weights:?} not all in {ours_all:?}");
    }
}

#[test]
fn a_dir_source_finds_gguf_files_and_shard_directories() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("models");
    std::fs::create_dir_all(root.join("mistral-7b")).expect("mkdir");
    std::fs::create_dir_all(root.join("notes")).expect("mkdir");
    std::fs::write(root.join("phi-3.Q4_K_M.gguf"), fx::bytes(100, 1)).expect("write");
    std::fs::write(root.join("readme.txt"), b"x").expect("write");
    std::fs::write(root.join("mistral-7b/model-00001.safetensors"), fx::bytes(10, 2)).expect("write");
    std::fs::write(root.join("mistral-7b/config.json"), b"{}").expect("write");
    std::fs::write(root.join("notes/a.txt"), b"x").expect("write");
    let s = scan(&source(SourceKind::Dir, &root));
    assert_eq!(names(&s.models), ["mistral-7b", "phi-3.Q4_K_M"]);
    assert_eq!(s.models[0].files.files.len(), 2, "a shard directory is all of its files");
    assert_eq!(s.models[1].files.bytes, 100);
    // include/exclude are globs over the names.
    let mut c = source(SourceKind::Dir, &root);
    c.include = vec!["*7b*".into(), "phi*".into()];
    c.exclude = vec!["phi*".into()];
    assert_eq!(names(&scan(&c).models), ["mistral-7b"]);
    // A missing directory is an error of the source, not an empty store.
    let s = scan(&source(SourceKind::Dir, &d.path().join("nope")));
    assert!(s.error.is_some() && s.models.is_empty());
}

#[test]
fn auto_registers_list_reports_and_a_vanished_model_is_unavailable_until_it_returns() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path();
    let store = root.join("ollama");
    let cache = root.join("hub");
    fx::ollama_library_model(&store, "llama3.2", "latest", 4096, 1);
    let second = fx::ollama_library_model(&store, "qwen2.5", "0.5b", 2048, 2);
    build_hf_cache(&cache);
    let cfg = real_support::config(root);
    let mut hf = source(SourceKind::Huggingface, &cache);
    hf.register = SourceRegister::List;
    let sources = Sources::new(&[source(SourceKind::Ollama, &store), hf], &|_| None, 10_000).expect("sources");
    let (mut e, _store, _) = real_support::engine(&cfg);
    let t = real_support::now();
    let applied = apply_scan(&mut e, t, sources.scan());
    assert_eq!(applied.registered, ["llama3.2:latest", "qwen2.5:0.5b"]);
    let d1 = discovered(&e);
    let reg: BTreeMap<&str, bool> = d1.models().map(|m| (m.model_name.as_str(), m.registered)).collect();
    assert!(reg["llama3.2:latest"]);
    assert!(!reg["meta-llama/Llama-3.2-1B"], "register = list only reports");
    assert_eq!(d1.models().count(), 7);
    let info = real_support::model(&mut e, "llama3.2:latest");
    assert_eq!(info["size_gb"], json!(4096.0 / 1e9), "{info}");
    // Rescanning changes nothing.
    assert_eq!(apply_scan(&mut e, t + 1.0, sources.scan()), Default::default());
    // The manifest goes (the blob stays, as `ollama rm` of a shared blob leaves it).
    let kept = root.join("kept-manifest");
    std::fs::rename(&second, &kept).expect("mv manifest");
    let applied = apply_scan(&mut e, t + 2.0, sources.scan());
    assert_eq!(applied.missing, ["qwen2.5:0.5b"]);
    let info = real_support::model(&mut e, "qwen2.5:0.5b");
    assert_eq!(info["status"], json!("unavailable"), "{info}");
    assert!(
        info["unavailable_reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer found by the ollama source")),
        "{info}"
    );
    let err = e
        .move_model(t + 2.0, "qwen2.5:0.5b", "ram", &tierd::tiers::MoveOptions::default())
        .expect_err("an unavailable model does not move");
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert_eq!(discovered(&e).missing.len(), 1);
    // It stays registered (never deleted), and comes back with its manifest.
    std::fs::rename(&kept, &second).expect("mv back");
    let applied = apply_scan(&mut e, t + 3.0, sources.scan());
    assert_eq!(applied.found_again, ["qwen2.5:0.5b"]);
    assert_eq!(real_support::model(&mut e, "qwen2.5:0.5b")["status"], json!("ready"));
    assert!(discovered(&e).missing.is_empty());
    // A newer pull: the tag names another blob, the old one is removed.
    let st = real_support::move_and_wait(&mut e, "llama3.2:latest", "swap");
    assert_eq!(st["status"], json!("success"), "{st}");
    let old = real_support::model(&mut e, "llama3.2:latest")["path"]
        .as_str()
        .expect("path")
        .to_string();
    fx::ollama_library_model(&store, "llama3.2", "latest", 8192, 77);
    std::fs::remove_file(&old).expect("ollama prunes the old blob");
    let applied = apply_scan(&mut e, t + 4.0, sources.scan());
    assert_eq!(applied.replaced, ["llama3.2:latest"]);
    let info = real_support::model(&mut e, "llama3.2:latest");
    assert_eq!(
        (&info["status"], &info["tier"], &info["size_gb"]),
        (&json!("ready"), &json!("storage"), &json!(8192.0 / 1e9)),
        "{info}"
    );
    assert_ne!(info["path"].as_str(), Some(old.as_str()));
    assert!(
        real_support::find(&root.join("swap"), "llama3.2").is_empty() || {
            // The old copy goes in the background.
            real_support::eventually(|| real_support::find(&root.join("swap"), "llama3.2").len(), |n| *n == 0) == 0
        }
    );
    let st = real_support::move_and_wait(&mut e, "llama3.2:latest", "swap");
    assert_eq!(st["status"], json!("success"), "the new files copy: {st}");
    assert_eq!(apply_scan(&mut e, t + 5.0, sources.scan()), Default::default(), "and stay");
}

#[test]
fn a_model_named_with_slashes_and_colons_is_copied_under_its_escaped_name() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path();
    let cache = root.join("hub");
    build_hf_cache(&cache);
    let cfg = real_support::config(root);
    let sources = Sources::new(&[source(SourceKind::Huggingface, &cache)], &|_| None, 10_000).expect("sources");
    let (mut e, _store, _) = real_support::engine(&cfg);
    let t = real_support::now();
    apply_scan(&mut e, t, sources.scan());
    let name = "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M";
    let st = real_support::move_and_wait(&mut e, name, "swap");
    assert_eq!(st["status"], json!("success"), "{st}");
    let copy = root.join("swap/bartowski%2FLlama-3.2-1B-Instruct-GGUF:Q4_K_M/Llama-3.2-1B-Instruct-Q4_K_M.gguf");
    assert_eq!(std::fs::read(&copy).expect("the copy"), fx::bytes(400, 21));
    let entries: Vec<_> = std::fs::read_dir(root.join("swap"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(entries.iter().all(|n| !n.to_string_lossy().contains('/')), "{entries:?}");
    let st = real_support::move_and_wait(&mut e, "meta-llama/Llama-3.2-1B", "nvme");
    assert_eq!(st["status"], json!("success"), "{st}");
    assert!(
        root.join("nvme/meta-llama%2FLlama-3.2-1B/model-00002-of-00002.safetensors")
            .is_file()
    );
}

fn serve_config(root: &Path, store: &Path, cache: &Path) -> String {
    format!(
        r#"
state_dir = "{root}/state"
policy = "usage"
[[tiers]]
name = "swap"
driver = "dir"
path = "{root}/swap"
max_gb = 4.0
[[tiers]]
name = "storage"
driver = "storage"

[[sources]]
kind = "ollama"
path = "{store}"
rescan_s = 600

[[sources]]
kind = "huggingface"
path = "{cache}"
register = "list"
rescan_s = 600
"#,
        root = root.display(),
        store = store.display(),
        cache = cache.display()
    )
}

/// Asks `discover` until `done` holds (at most 10 s).
fn discover_until(c: &mut common::Client, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v = c.req(r#"{"discover": true}"#);
        if done(&v) || t.elapsed() > Duration::from_secs(10) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn model<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["sources"]
        .as_array()?
        .iter()
        .flat_map(|s| s["models"].as_array().into_iter().flatten())
        .find(|m| m["model_name"] == name)
}

#[test]
fn the_server_scans_at_start_and_rescans_on_change() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path();
    let (store, cache) = (root.join("ollama"), root.join("hub"));
    fx::ollama_library_model(&store, "llama3.2", "latest", 4096, 1);
    build_hf_cache(&cache);
    std::fs::create_dir_all(root.join("swap")).expect("mkdir");
    let cfg = root.join("tierd.toml");
    std::fs::write(&cfg, serve_config(root, &store, &cache)).expect("write config");
    let sock = root.join("t.sock");
    let args = ["--config", cfg.to_str().expect("utf-8"), "--backend", "real"];
    let _server = common::Server::socket(&sock, &args);
    let mut c = common::Client::connect(&sock);
    // At start: registered before the first answer.
    let v = c.req(r#"{"list_models": {}}"#);
    let listed: Vec<&str> = v["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["model_name"].as_str())
        .collect();
    assert_eq!(listed, ["llama3.2:latest"], "{v}");
    let v = c.req(r#"{"discover": true}"#);
    assert_eq!(v["sources"][0]["kind"], "ollama", "{v}");
    assert_eq!(v["sources"][1]["register"], "list", "{v}");
    assert_eq!(model(&v, "gpt2").map(|m| m["registered"].clone()), Some(json!(false)), "{v}");
    // A pull: inotify on the manifest tree, no rescan_s (600 s) involved.
    fx::ollama_library_model(&store, "qwen2.5", "0.5b", 2048, 2);
    let v = discover_until(&mut c, |v| model(v, "qwen2.5:0.5b").is_some_and(|m| m["registered"] == true));
    assert_eq!(model(&v, "qwen2.5:0.5b").map(|m| m["registered"].clone()), Some(json!(true)), "{v}");
    // A new namespace directory appearing later is watched too.
    fx::ollama_model(
        &store,
        "registry.ollama.ai",
        "jmorgan",
        "tiny",
        "v1",
        &[(fx::MODEL, &fx::bytes(100, 4))],
    );
    let v = discover_until(&mut c, |v| model(v, "jmorgan/tiny:v1").is_some());
    assert!(model(&v, "jmorgan/tiny:v1").is_some(), "{v}");
    // A new repository in the hub cache.
    fx::hf_repo(&cache, "org/new", &fx::commit(9), &[("m.safetensors", &fx::bytes(10, 9))]);
    let v = discover_until(&mut c, |v| model(v, "org/new").is_some());
    assert!(model(&v, "org/new").is_some(), "{v}");
    // `ollama rm`: the manifest goes; the model is unavailable, not gone.
    std::fs::remove_file(store.join("manifests/registry.ollama.ai/library/llama3.2/latest")).expect("rm");
    let v = discover_until(&mut c, |v| v["missing"].as_array().is_some_and(|m| !m.is_empty()));
    assert_eq!(v["missing"][0]["model_name"], "llama3.2:latest", "{v}");
    let info = c.req(r#"{"model_info": "llama3.2:latest"}"#);
    assert_eq!(info["model"]["status"], "unavailable", "{info}");
    // Pulled again: available again.
    fx::ollama_library_model(&store, "llama3.2", "latest", 4096, 1);
    let v = discover_until(&mut c, |v| v["missing"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(v["missing"], json!([]), "{v}");
    let info = c.req(r#"{"model_info": "llama3.2:latest"}"#);
    assert_eq!(info["model"]["status"], "ready", "{info}");
    // The CLI: a table, and the same as JSON.
    let out = std::process::Command::new(common::BIN)
        .args(["--socket", sock.to_str().expect("utf-8"), "discover"])
        .output()
        .expect("run tierd discover");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("source 0 ollama") && table.contains("qwen2.5:0.5b") && table.contains("REGISTERED"),
        "{table}"
    );
    let out = std::process::Command::new(common::BIN)
        .args(["--socket", sock.to_str().expect("utf-8"), "discover", "--json"])
        .output()
        .expect("run tierd discover --json");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(model(&v, "meta-llama/Llama-3.2-1B").is_some(), "{v}");
}

#[test]
fn the_simulated_backend_registers_found_models_by_their_measured_size() {
    let d = tempfile::tempdir().expect("tempdir");
    let root = d.path().join("models");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("phi-3.Q4_K_M.gguf"), fx::bytes(5000, 1)).expect("write");
    let cfg = tierd::config::Config::seed_default();
    let policy = tierd::optimizer::policy_by_name("usage", &cfg).expect("policy");
    let (machine, _) = tierd::drivers::sim::simulated_machine(&cfg, false);
    let mut e = tierd::tiers::Engine::new(cfg, machine, policy, 0.0).expect("engine");
    let sources = Sources::new(&[source(SourceKind::Dir, &root)], &|_| None, 10_000).expect("sources");
    let applied = apply_scan(&mut e, 1.0, sources.scan());
    assert_eq!(applied.registered, ["phi-3.Q4_K_M"]);
    let v = tierd::requests::call(
        &mut e,
        1.0,
        json!({"model_info": "phi-3.Q4_K_M"}),
        &tierd::requests::Prepare {
            walk_files: false,
            max_files: 10,
        },
    );
    assert_eq!(
        (&v["model"]["size_gb"], &v["model"]["tier"]),
        (&json!(5000.0 / 1e9), &json!("storage")),
        "{v}"
    );
    // The file goes: unavailable, then back.
    std::fs::rename(root.join("phi-3.Q4_K_M.gguf"), d.path().join("aside")).expect("mv");
    assert_eq!(apply_scan(&mut e, 2.0, sources.scan()).missing, ["phi-3.Q4_K_M"]);
    std::fs::rename(d.path().join("aside"), root.join("phi-3.Q4_K_M.gguf")).expect("mv back");
    assert_eq!(apply_scan(&mut e, 3.0, sources.scan()).found_again, ["phi-3.Q4_K_M"]);
}
