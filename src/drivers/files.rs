//! A model's files: the name checks that keep a model inside a tier
//! directory, the list of files (with sizes and, once verified, checksums)
//! that make up its origin, and the walk that finds them.
//!
//! The walk does blocking I/O and is bounded (`max_files_per_model`): the
//! server runs it before taking the engine's lock, never under it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Suffix of a copy in progress inside a `dir` tier; anything carrying it is
/// a leftover of an interrupted move and is removed at start.
pub const PARTIAL_SUFFIX: &str = ".tierd-partial";

/// Entries a registration walks at most, unless the configuration says
/// otherwise (`max_files_per_model`).
pub const DEFAULT_MAX_FILES: usize = 10_000;

/// Checks that `name` can be used as a directory name inside a tier without
/// escaping it or colliding with tierd's own files.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("model name {name:?} is not allowed: {why}"));
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
    /// The origin file's modification time (ns since the epoch) when it was
    /// measured; a change means the origin was rewritten ([`super::watch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// The modification time of the file in the `dir` copy that serves the
    /// model, as read once the copy was in place (`None` when no copy
    /// serves it): a copy whose file has another is no longer that copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_mtime_ns: Option<i64>,
}

/// The `copy_mtime_ns` of a copy found corrupt and kept (it may hold the
/// last bytes of a model whose origin is gone): no file has it, so the copy
/// never counts as intact again.
pub const CORRUPT_MTIME: i64 = i64::MIN;

/// A file's modification time in nanoseconds since the epoch.
pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

/// Where a model's weights are: its origin (a file, or a directory of
/// shards; never modified by tierd) and the files that make it up.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    /// The origin, canonical.
    pub origin: PathBuf,
    /// Whether the origin is a single file (else a directory of shards).
    pub single: bool,
    /// The files, sorted by relative path.
    pub files: Vec<ModelFile>,
    /// Their total size in bytes.
    pub bytes: u64,
}

impl ModelFiles {
    /// Finds the files of the model at `path` (a file, or a directory
    /// searched recursively for regular files), walking at most
    /// `max_files` entries. Blocking I/O: call it outside the engine's lock.
    pub fn walk(path: &Path, max_files: usize) -> Result<ModelFiles, String> {
        let origin = path.canonicalize().map_err(|e| format!("model path {}: {e}", path.display()))?;
        let single = std::fs::metadata(&origin).map(|m| m.is_file()).unwrap_or(false);
        let files = list_files(&origin, max_files)?;
        let bytes = files.iter().map(|f| f.size).sum();
        Ok(ModelFiles {
            origin,
            single,
            files,
            bytes,
        })
    }

    /// Where file `f` lives at the origin.
    pub fn origin_file(&self, f: &ModelFile) -> PathBuf {
        origin_file(&self.origin, self.single, f)
    }

    /// The origin paths of every file, with their expected sizes.
    pub fn origin_paths(&self) -> Vec<(PathBuf, u64)> {
        self.files.iter().map(|f| (self.origin_file(f), f.size)).collect()
    }

    /// What is wrong with the origin, if anything: a file gone or of
    /// another size than registered.
    pub fn origin_problem(&self) -> Option<String> {
        for f in &self.files {
            let p = self.origin_file(f);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => {
                    return Some(format!(
                        "origin file {} changed size ({} bytes, expected {})",
                        p.display(),
                        m.len(),
                        f.size
                    ));
                }
                Err(e) => return Some(format!("origin file {} is gone ({e})", p.display())),
            }
        }
        None
    }
}

/// The files of the model at `origin` (a file, or a directory searched
/// recursively for regular files), sorted by relative path; at most
/// `max_files` entries are looked at.
pub fn list_files(origin: &Path, max_files: usize) -> Result<Vec<ModelFile>, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let meta = std::fs::metadata(origin).map_err(|e| io(origin, e))?;
    if meta.is_file() {
        let rel = origin
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} has no file name", origin.display()))?;
        return Ok(vec![ModelFile {
            rel,
            size: meta.len(),
            blake3: None,
            mtime_ns: Some(mtime_ns(&meta)),
            copy_mtime_ns: None,
        }]);
    }
    if !meta.is_dir() {
        return Err(format!("{} is neither a file nor a directory", origin.display()));
    }
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = origin.join(&rel_dir);
        let entries = std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(&dir, e))?;
            seen += 1;
            if seen > max_files {
                return Err(format!(
                    "{} holds more than {max_files} entries (max_files_per_model); register a smaller directory",
                    origin.display()
                ));
            }
            let ft = entry.file_type().map_err(|e| io(&entry.path(), e))?;
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
                        mtime_ns: Some(mtime_ns(&m)),
                        copy_mtime_ns: None,
                    }),
                    _ => {}
                }
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{} holds no files", origin.display()));
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
        let files = list_files(d.path(), DEFAULT_MAX_FILES).expect("list");
        let rels: Vec<_> = files.iter().map(|f| f.rel.to_string_lossy().to_string()).collect();
        assert_eq!(rels, vec!["b.safetensors", "sub/a.bin"]);
        assert_eq!(files.iter().map(|f| f.size).sum::<u64>(), 6);
        assert!(list_files(&d.path().join("missing"), DEFAULT_MAX_FILES).is_err());
        let m = ModelFiles::walk(d.path(), DEFAULT_MAX_FILES).expect("walk");
        assert_eq!((m.bytes, m.single), (6, false));
        assert_eq!(m.origin_problem(), None);
    }

    #[test]
    fn the_walk_is_bounded() {
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..12 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").expect("write");
        }
        let err = list_files(d.path(), 10).expect_err("over the bound");
        assert!(err.contains("more than 10 entries") && err.contains("max_files_per_model"), "{err}");
        assert_eq!(list_files(d.path(), 12).expect("at the bound").len(), 12);
    }
}
