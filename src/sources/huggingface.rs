//! `kind = "huggingface"`: the Hugging Face hub cache.
//!
//! Layout (as `huggingface_hub` writes it;
//! <https://huggingface.co/docs/huggingface_hub/guides/manage-cache>):
//! - `models--<org>--<name>/refs/<revision>`: the commit hash the revision
//!   (`main`) points at;
//! - `models--<org>--<name>/snapshots/<commit>/<file>`: symlinks, one per
//!   file of the repository at that commit, to `../../blobs/<hash>`;
//! - `models--<org>--<name>/blobs/<hash>`: the bytes.
//!
//! A repository with the configured ref (or a snapshot of that commit) is a
//! model named `org/name` (`--` in the folder name is `/`, as
//! `huggingface_hub.scan_cache_dir` reads it), made of the snapshot's
//! `*.safetensors` files, else its `*.bin` files, resolved through their
//! symlinks. Each `*.gguf` file is a model of its own, `org/name:<quant>`
//! (the quantization from the file name, `Q4_K_M`; the whole stem when it
//! names none); the parts of a split GGUF (`-00001-of-00003.gguf`) make
//! one model, and `mmproj*.gguf` files are the components of every GGUF
//! model of the repository, not models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Component, Found, file_name, subdirs};
use crate::drivers::files::ModelFiles;

/// The cache folder prefix of a model repository.
const MODELS_PREFIX: &str = "models--";
/// Files a snapshot is looked at for at most (a repository is not walked
/// without bound).
const MAX_SNAPSHOT_FILES: usize = 100_000;

/// The repository id of a cache folder name (`models--org--name` →
/// `org/name`), `None` for anything but a model repository.
pub fn repo_id(folder: &str) -> Option<String> {
    let id = folder.strip_prefix(MODELS_PREFIX)?;
    (!id.is_empty()).then(|| id.replace("--", "/"))
}

/// The quantization a GGUF file's stem names (`Llama-3.2-1B-Instruct-Q4_K_M`
/// → `Q4_K_M`): the last `-`/`.`-separated part that reads like one.
pub fn quantization(stem: &str) -> Option<&str> {
    stem.rsplit(['-', '.']).find(|part| {
        let u = part.to_ascii_uppercase();
        let b = u.as_bytes();
        let q = |skip: usize| b.len() > skip && b[skip].is_ascii_digit();
        (u.starts_with('Q') && q(1))
            || (u.starts_with("IQ") && q(2))
            || (u.starts_with("TQ") && q(2))
            || ["F16", "F32", "BF16", "FP16", "FP32", "F64", "MXFP4"].contains(&u.as_str())
    })
}

/// The stem of a split GGUF part without its `-0000N-of-0000M` suffix, or
/// the stem itself.
fn unsplit(stem: &str) -> &str {
    let b = stem.as_bytes();
    // "-00001-of-00003": 15 bytes.
    if b.len() > 15 {
        let tail = &stem[stem.len() - 15..];
        let t = tail.as_bytes();
        let digits = |r: std::ops::Range<usize>| t[r].iter().all(u8::is_ascii_digit);
        if t[0] == b'-' && digits(1..6) && &tail[6..10] == "-of-" && digits(10..15) {
            return &stem[..stem.len() - 15];
        }
    }
    stem
}

/// The commit a revision names in the repository folder `repo`: the
/// content of `refs/<revision>`, or the revision itself when a snapshot of
/// that name exists.
fn commit_of(repo: &Path, revision: &str) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(repo.join("refs").join(revision)) {
        let c = text.trim().to_string();
        return (!c.is_empty() && !c.contains('/') && !c.starts_with('.')).then_some(c);
    }
    repo.join("snapshots").join(revision).is_dir().then(|| revision.to_string())
}

/// The files of a snapshot, relative to it (symlinks as files), sorted.
fn snapshot_files(snapshot: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(snapshot.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            if out.len() >= MAX_SNAPSHOT_FILES {
                return out;
            }
            let r = rel.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(r),
                Ok(_) => out.push(r),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

fn ext_is(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext))
}

/// Every model of the cache at `cache` for `revision`, and the problems met.
pub fn scan(cache: &Path, revision: &str) -> (Vec<Found>, Vec<String>) {
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for repo in subdirs(cache) {
        let Some(id) = repo_id(&file_name(&repo)) else { continue };
        let Some(commit) = commit_of(&repo, revision) else {
            problems.push(format!("{id}: no refs/{revision} and no snapshot of that name"));
            continue;
        };
        let snapshot = repo.join("snapshots").join(&commit);
        if !snapshot.is_dir() {
            problems.push(format!("{id}: refs/{revision} names {commit}, which has no snapshot"));
            continue;
        }
        let mut one = |name: String, rels: Vec<PathBuf>, components: Vec<Component>| {
            let files = match rels.as_slice() {
                [single] => ModelFiles::of_files(&snapshot.join(single), vec![PathBuf::from(file_name(single))]),
                _ => ModelFiles::of_files(&snapshot, rels),
            };
            match files {
                Ok(files) => found.push(Found {
                    name,
                    files,
                    components,
                    revision: Some(commit.clone()),
                }),
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        };
        let files = snapshot_files(&snapshot);
        let safetensors: Vec<PathBuf> = files.iter().filter(|f| ext_is(f, "safetensors")).cloned().collect();
        let weights = if safetensors.is_empty() {
            files.iter().filter(|f| ext_is(f, "bin")).cloned().collect()
        } else {
            safetensors
        };
        if !weights.is_empty() {
            one(id.clone(), weights, Vec::new());
        }
        let (mmproj, ggufs): (Vec<&PathBuf>, Vec<&PathBuf>) = files
            .iter()
            .filter(|f| ext_is(f, "gguf"))
            .partition(|f| file_name(f).to_ascii_lowercase().starts_with("mmproj"));
        let components: Vec<Component> = mmproj
            .iter()
            .filter_map(|f| {
                let size = std::fs::metadata(snapshot.join(f)).ok()?.len();
                Some(Component {
                    role: "projector".into(),
                    path: snapshot.join(f),
                    size,
                })
            })
            .collect();
        // Split parts grouped by their stem without the part suffix.
        let mut groups: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for f in ggufs {
            let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            groups.entry(unsplit(&stem).to_string()).or_default().push(f.clone());
        }
        let mut tags: BTreeMap<String, usize> = BTreeMap::new();
        for stem in groups.keys() {
            *tags.entry(quantization(stem).unwrap_or(stem).to_string()).or_default() += 1;
        }
        for (stem, parts) in groups {
            // Two files naming the same quantization: each by its stem.
            let tag = quantization(&stem).filter(|q| tags.get(*q) == Some(&1)).unwrap_or(&stem);
            one(format!("{id}:{tag}"), parts, components.clone());
        }
    }
    (found, problems)
}

/// The cache (a new repository), and per repository its folder, `refs/`,
/// `snapshots/` and each snapshot (files linked in as a download ends).
pub fn watch_dirs(cache: &Path) -> Vec<PathBuf> {
    let mut out = vec![cache.to_path_buf()];
    for repo in subdirs(cache) {
        if repo_id(&file_name(&repo)).is_none() {
            continue;
        }
        let snapshots = repo.join("snapshots");
        out.extend(subdirs(&snapshots));
        for d in [repo.join("refs"), snapshots] {
            if d.is_dir() {
                out.push(d);
            }
        }
        out.push(repo);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_quantizations() {
        assert_eq!(
            repo_id("models--meta-llama--Llama-3.2-1B").as_deref(),
            Some("meta-llama/Llama-3.2-1B")
        );
        assert_eq!(repo_id("models--gpt2").as_deref(), Some("gpt2"));
        assert_eq!(repo_id("datasets--x--y"), None);
        assert_eq!(quantization("Llama-3.2-1B-Instruct-Q4_K_M"), Some("Q4_K_M"));
        assert_eq!(quantization("qwen2.5-0.5b-instruct-q8_0"), Some("q8_0"));
        assert_eq!(quantization("model.IQ3_XS"), Some("IQ3_XS"));
        assert_eq!(quantization("phi-3-mini-f16"), Some("f16"));
        assert_eq!(quantization("Llama-3.2-1B"), None);
        assert_eq!(unsplit("m-Q8_0-00001-of-00003"), "m-Q8_0");
        assert_eq!(unsplit("m-Q8_0"), "m-Q8_0");
    }
}
