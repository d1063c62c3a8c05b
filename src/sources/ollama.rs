//! `kind = "ollama"`: Ollama's model store.
//!
//! Layout (as `ollama pull` writes it; <https://github.com/ollama/ollama/blob/main/docs/api.md>
//! and `server/manifest.go`, `server/layer.go` in ollama's sources):
//! - `manifests/<host>/<namespace>/<model>/<tag>`: one JSON manifest per
//!   model (`registry.ollama.ai/library/llama3.2/latest`), with `layers`,
//!   each a `mediaType`, a `digest` (`sha256:<hex>`) and a `size`;
//! - `blobs/sha256-<hex>`: the layers' bytes, named by their digest.
//!
//! A manifest is a model, named as `ollama list` shows it: `llama3.2:latest`
//! for the `library` namespace of `registry.ollama.ai`, `namespace/model:tag`
//! for another namespace there, `host/namespace/model:tag` for another host
//! (`hf.co/org/repo:Q4_K_M`). Its weights are the layers of media type
//! `application/vnd.ollama.image.model`; projector and adapter layers are
//! listed as its components.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Component, Found, file_name, subdirs};
use crate::drivers::files::ModelFiles;

/// The media type of a weights layer.
pub const MODEL_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";
/// Layers listed as components, with the role `discover` gives them.
const COMPONENT_MEDIA_TYPES: [(&str, &str); 2] = [
    ("application/vnd.ollama.image.projector", "projector"),
    ("application/vnd.ollama.image.adapter", "adapter"),
];
/// Ollama's default registry and namespace: left out of names.
const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
/// Manifests larger than this are not manifests.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A manifest, as far as tierd reads it (Ollama's own field names).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub layers: Vec<Layer>,
}

/// One layer of a manifest.
#[derive(Debug, Deserialize)]
pub struct Layer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

/// The blob file of a layer's digest (`sha256:<hex>` → `blobs/sha256-<hex>`),
/// refused unless the digest is `sha256:` and 64 hex digits.
pub fn blob_path(store: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("layer digest {digest:?} is not sha256:<64 hex digits>"))?;
    Ok(store.join("blobs").join(format!("sha256-{hex}")))
}

/// The name `ollama list` shows for a manifest's host, namespace, model and tag.
pub fn model_name(host: &str, namespace: &str, model: &str, tag: &str) -> String {
    match (host == DEFAULT_HOST, namespace == DEFAULT_NAMESPACE) {
        (true, true) => format!("{model}:{tag}"),
        (true, false) => format!("{namespace}/{model}:{tag}"),
        _ => format!("{host}/{namespace}/{model}:{tag}"),
    }
}

/// Every model of the store at `store`, and the problems met.
pub fn scan(store: &Path) -> (Vec<Found>, Vec<String>) {
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for host in subdirs(&store.join("manifests")) {
        for ns in subdirs(&host) {
            for model in subdirs(&ns) {
                let Ok(tags) = std::fs::read_dir(&model) else { continue };
                let mut tags: Vec<PathBuf> = tags
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path())
                    .collect();
                tags.sort();
                for tag in tags {
                    let name = model_name(&file_name(&host), &file_name(&ns), &file_name(&model), &file_name(&tag));
                    match read_model(store, &tag, name.clone()) {
                        Ok(m) => found.push(m),
                        Err(e) => problems.push(format!("{name} ({}): {e}", tag.display())),
                    }
                }
            }
        }
    }
    (found, problems)
}

/// One manifest's model.
fn read_model(store: &Path, manifest: &Path, name: String) -> Result<Found, String> {
    let len = std::fs::metadata(manifest).map_err(|e| e.to_string())?.len();
    if len > MAX_MANIFEST_BYTES {
        return Err(format!("manifest of {len} bytes is too large"));
    }
    let text = std::fs::read(manifest).map_err(|e| e.to_string())?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| format!("not a manifest: {e}"))?;
    let mut weights = Vec::new();
    let mut components = Vec::new();
    for layer in &m.layers {
        let role = COMPONENT_MEDIA_TYPES.iter().find(|(t, _)| *t == layer.media_type).map(|(_, r)| *r);
        if layer.media_type != MODEL_MEDIA_TYPE && role.is_none() {
            continue;
        }
        let blob = blob_path(store, &layer.digest)?;
        let size = std::fs::metadata(&blob)
            .map_err(|e| format!("blob {} of layer {}: {e}", blob.display(), layer.media_type))?
            .len();
        if size != layer.size {
            return Err(format!(
                "blob {} has {size} bytes, the manifest says {} (a pull in progress?)",
                blob.display(),
                layer.size
            ));
        }
        match role {
            Some(role) => components.push(Component {
                role: role.to_string(),
                path: blob,
                size,
            }),
            None => weights.push(blob),
        }
    }
    let files = match weights.as_slice() {
        [] => return Err(format!("no layer of media type {MODEL_MEDIA_TYPE}")),
        [one] => ModelFiles::of_files(one, vec![PathBuf::from(file_name(one))])?,
        many => {
            let rels = many.iter().map(|b| PathBuf::from(file_name(b))).collect();
            ModelFiles::of_files(&store.join("blobs"), rels)?
        }
    };
    Ok(Found {
        name,
        files,
        components,
        revision: None,
    })
}

/// The manifest tree's directories (a new tag, model, namespace or host
/// appears in one of them), and the store itself (`manifests/` created).
pub fn watch_dirs(store: &Path) -> Vec<PathBuf> {
    let mut out = vec![store.to_path_buf()];
    let manifests = store.join("manifests");
    if manifests.is_dir() {
        out.push(manifests.clone());
        for host in subdirs(&manifests) {
            for ns in subdirs(&host) {
                out.extend(subdirs(&ns));
                out.push(ns);
            }
            out.push(host);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_those_of_ollama_list() {
        assert_eq!(model_name("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest");
        assert_eq!(model_name("registry.ollama.ai", "jmorgan", "m", "7b"), "jmorgan/m:7b");
        assert_eq!(
            model_name("hf.co", "bartowski", "Llama-GGUF", "Q4_K_M"),
            "hf.co/bartowski/Llama-GGUF:Q4_K_M"
        );
    }

    #[test]
    fn digests_must_be_sha256() {
        let s = Path::new("/s");
        let hex = "a".repeat(64);
        assert_eq!(
            blob_path(s, &format!("sha256:{hex}")).expect("blob"),
            PathBuf::from(format!("/s/blobs/sha256-{hex}"))
        );
        for bad in [
            "sha256:../../etc/passwd",
            "md5:abc",
            &format!("sha256:{}", "g".repeat(64)),
            "sha256:",
        ] {
            assert!(blob_path(s, bad).is_err(), "{bad}");
        }
    }
}
