//! A model's files: the name checks that keep a model inside a tier
//! directory, and the list of files (with sizes) that make up its origin.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RealError;

/// Suffix of a copy in progress inside a `dir` tier; anything carrying it is
/// a leftover of an interrupted move and is removed at start.
pub const PARTIAL_SUFFIX: &str = ".tierd-partial";

/// Checks that `name` can be used as a directory name inside a tier without
/// escaping it or colliding with tierd's own files.
pub fn check_model_name(name: &str) -> Result<(), RealError> {
    let bad = |why: &str| Err(RealError::BadModelName(format!("model name {name:?} is not allowed: {why}")));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 200 {
        return bad("it is longer than 200 bytes");
    }
    if name == "." || name == ".." || name.contains("..") {
        return bad("it contains \"..\"");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("it contains a path separator");
    }
    if name.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    if name.starts_with('.') {
        return bad("it starts with '.' (reserved for tierd's temporary files)");
    }
    if name.ends_with(PARTIAL_SUFFIX) {
        return bad("it ends with tierd's temporary suffix");
    }
    Ok(())
}

/// One file of a model, relative to the model's root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFile {
    /// Path relative to the origin root (the file name for a one-file model).
    pub rel: PathBuf,
    pub size: u64,
    /// blake3 of the content, hex, once a copy has verified it.
    #[serde(default)]
    pub blake3: Option<String>,
}

/// The files of the model at `origin` (a file, or a directory searched
/// recursively for regular files), sorted by relative path.
pub fn list_files(origin: &Path) -> Result<Vec<ModelFile>, RealError> {
    let io = |source| RealError::Io {
        path: origin.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(origin).map_err(io)?;
    if meta.is_file() {
        let rel = origin
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| RealError::BadPath(format!("{} has no file name", origin.display())))?;
        return Ok(vec![ModelFile {
            rel,
            size: meta.len(),
            blake3: None,
        }]);
    }
    if !meta.is_dir() {
        return Err(RealError::BadPath(format!(
            "{} is neither a file nor a directory",
            origin.display()
        )));
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = origin.join(&rel_dir);
        let entries = std::fs::read_dir(&dir).map_err(|source| RealError::Io { path: dir.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| RealError::Io { path: dir.clone(), source })?;
            let ft = entry.file_type().map_err(|source| RealError::Io {
                path: entry.path(),
                source,
            })?;
            let rel = rel_dir.join(entry.file_name());
            if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_file() || ft.is_symlink() {
                // Symlinks count when they point at a regular file; linked
                // directories are not followed (no loops).
                match std::fs::metadata(entry.path()) {
                    Ok(m) if m.is_file() => out.push(ModelFile {
                        rel,
                        size: m.len(),
                        blake3: None,
                    }),
                    _ => {}
                }
            }
        }
    }
    if out.is_empty() {
        return Err(RealError::BadPath(format!("{} holds no files", origin.display())));
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Where file `f` of a model whose origin is `origin` lives at the origin.
pub fn origin_file(origin: &Path, single: bool, f: &ModelFile) -> PathBuf {
    if single { origin.to_path_buf() } else { origin.join(&f.rel) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_names_are_refused() {
        for n in ["", "..", "a/../b", "a/b", "x\0y", "tab\there", ".hidden", "m.tierd-partial", "nl\n"] {
            assert!(check_model_name(n).is_err(), "{n:?} accepted");
        }
        for n in ["llama-3-8b", "gpt2.Q4_K_M", "model v2", "é"] {
            assert!(check_model_name(n).is_ok(), "{n:?} refused");
        }
    }

    #[test]
    fn lists_shards_of_a_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("b.safetensors"), b"12345").expect("write");
        std::fs::write(d.path().join("sub/a.bin"), b"1").expect("write");
        let files = list_files(d.path()).expect("list");
        let rels: Vec<_> = files.iter().map(|f| f.rel.to_string_lossy().to_string()).collect();
        assert_eq!(rels, vec!["b.safetensors", "sub/a.bin"]);
        assert_eq!(files.iter().map(|f| f.size).sum::<u64>(), 6);
        assert!(list_files(&d.path().join("missing")).is_err());
    }
}
