//! Hand-built model stores in the real layouts, for the sources tests and
//! the discovery benchmark (`benches/sources.rs` includes this file):
//! - an Ollama store: `manifests/<host>/<ns>/<model>/<tag>` JSON with the
//!   real media types, layers in `blobs/sha256-<hex>` named by the real
//!   sha256 of their bytes;
//! - a Hugging Face hub cache: `models--<org>--<name>/` with `refs/main`,
//!   `blobs/<sha256>` and `snapshots/<commit>/<file>` symlinks to
//!   `../../blobs/<sha256>` (deeper files: one `../` more per folder).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const MODEL: &str = "application/vnd.ollama.image.model";
pub const PROJECTOR: &str = "application/vnd.ollama.image.projector";
pub const ADAPTER: &str = "application/vnd.ollama.image.adapter";
pub const TEMPLATE: &str = "application/vnd.ollama.image.template";
pub const LICENSE: &str = "application/vnd.ollama.image.license";
pub const PARAMS: &str = "application/vnd.ollama.image.params";

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that differ by `seed` (so every blob has its own digest).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a blob of `store` and returns its layer JSON.
pub fn ollama_blob(store: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(data);
    let blobs = store.join("blobs");
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");
    std::fs::write(blobs.join(format!("sha256-{hex}")), data).expect("write blob");
    serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
}

/// An Ollama model: its manifest at `manifests/<host>/<ns>/<model>/<tag>`,
/// with the given layers (media type, bytes) plus a config blob. Returns
/// the manifest's path.
pub fn ollama_model(store: &Path, host: &str, ns: &str, model: &str, tag: &str, layers: &[(&str, &[u8])]) -> PathBuf {
    let config = ollama_blob(
        store,
        "application/vnd.docker.container.image.v1+json",
        br#"{"model_format":"gguf"}"#,
    );
    let layers: Vec<_> = layers.iter().map(|(t, d)| ollama_blob(store, t, d)).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config,
        "layers": layers,
    });
    let dir = store.join("manifests").join(host).join(ns).join(model);
    std::fs::create_dir_all(&dir).expect("mkdir manifests");
    let path = dir.join(tag);
    // As ollama writes it: a temporary file renamed into place.
    let tmp = dir.join(format!(".{tag}.tmp"));
    std::fs::write(&tmp, manifest.to_string()).expect("write manifest");
    std::fs::rename(&tmp, &path).expect("rename manifest");
    path
}

/// A library model (`registry.ollama.ai/library/<model>:<tag>`) of one
/// weights layer of `len` bytes, a template and a license.
pub fn ollama_library_model(store: &Path, model: &str, tag: &str, len: usize, seed: u64) -> PathBuf {
    let w = bytes(len, seed);
    ollama_model(
        store,
        "registry.ollama.ai",
        "library",
        model,
        tag,
        &[(MODEL, &w), (TEMPLATE, b"{{ .Prompt }}"), (LICENSE, b"license text")],
    )
}

/// A repository `org/name` (or `name`) in the hub cache at `cache`, with
/// `files` (relative path, bytes) at commit `commit`, `refs/main` pointing
/// at it. Returns the repository folder.
pub fn hf_repo(cache: &Path, repo_id: &str, commit: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");
    std::fs::create_dir_all(&snapshot).expect("mkdir snapshot");
    for (rel, data) in files {
        let hex = sha256_hex(data);
        std::fs::write(blobs.join(&hex), data).expect("write blob");
        let link = snapshot.join(rel);
        let depth = Path::new(rel).components().count() - 1;
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let target = PathBuf::from(format!("{}../../blobs/{hex}", "../".repeat(depth)));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("symlink");
    }
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir refs");
    std::fs::write(repo.join("refs/main"), commit).expect("write ref");
    repo
}

/// A 40-hex commit id made from `seed`.
pub fn commit(seed: u64) -> String {
    sha256_hex(&seed.to_le_bytes())[..40].to_string()
}
