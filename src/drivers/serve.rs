//! The serve paths: one stable path per model, `<serve_dir>/<component>`
//! (the component from [`name_component`]), that always leads to the
//! model's fastest complete copy. A loader opens it
//! (`llama-server -m "$(tierd path m)"`) and never needs to know which tier
//! holds the model.
//!
//! - A one-file model's serve path is a symlink to the file itself: its
//!   copy in a `dir` tier, or its origin (also when it is pinned in RAM,
//!   which pins the origin's pages).
//! - A sharded model's serve path is a symlink to the directory that holds
//!   its shards under their original relative names: its copy directory in
//!   a `dir` tier (which holds exactly the model's files), else its origin
//!   directory. Every file `f` of a model lies at `<dir>/<f.rel>` in both,
//!   so `model-00001-of-00002.safetensors` and `config.json` sit side by
//!   side as the loader expects. (A separate directory of one symlink per
//!   shard would give the same names, but costs a `symlink` call per file
//!   under the engine's lock: 1.5 s for a model of 20,000 files here.)
//!
//! A link is replaced atomically: the new link is made under a temporary
//! name and renamed over the old one, so that a loader sees either the old
//! target or the new one, never a missing path. The engine repoints a link
//! when a move commits and before the old copy is released (and the release
//! waits, with a state file, until the new placement is durable): a loader
//! that opened the old target keeps reading it, unlinked but valid, and one
//! that opens the serve path after the commit gets the new copy.
//!
//! Each change is one `symlink` and one `rename` on a local directory,
//! whatever the model's number of files, done under the engine's lock (the
//! ordering above needs it done by the time the release is queued).

use std::path::{Path, PathBuf};

use super::Source;
use super::files::{ModelFiles, name_component};

/// The directory inside `serve_dir` that holds tierd's own bookkeeping (the
/// temporary links, one directory per model). Model names cannot start
/// with a dot, so no model's serve path can be this name.
pub const INNER_DIR: &str = ".tierd";

/// What a start-up check of the serve directory did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeReport {
    /// Serve paths (re)made for the known models.
    pub linked: usize,
    /// Links of models tierd no longer knows, removed.
    pub removed: Vec<PathBuf>,
    /// Entries tierd did not make (not symlinks), left alone.
    pub unknown: Vec<PathBuf>,
    /// Models whose link could not be made, with the reason.
    pub failed: Vec<(String, String)>,
}

/// The serve directory of a real machine.
#[derive(Debug)]
pub struct ServeLinks {
    dir: PathBuf,
}

impl ServeLinks {
    /// Opens (creating it, and its bookkeeping directory) the serve
    /// directory `dir`.
    pub fn open(dir: &Path) -> Result<ServeLinks, String> {
        std::fs::create_dir_all(dir.join(INNER_DIR)).map_err(|e| format!("serve_dir {}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| format!("serve_dir {}: {e}", dir.display()))?;
        Ok(ServeLinks { dir })
    }

    /// The serve directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A model's serve path (whether or not it exists yet).
    pub fn path_of(&self, model: &str) -> PathBuf {
        self.dir.join(name_component(model))
    }

    fn inner_of(&self, model: &str) -> PathBuf {
        self.dir.join(INNER_DIR).join(name_component(model))
    }

    /// Points `model`'s serve path at the copy `source` (as the tier that
    /// holds the model gives it), atomically: one symlink made under a
    /// temporary name and renamed over the old one.
    pub fn point(&self, model: &str, files: &ModelFiles, source: &Source) -> Result<PathBuf, String> {
        let link = self.path_of(model);
        let inner = self.inner_of(model);
        let err = |what: &str, p: &Path, e: std::io::Error| format!("serve path of {model}: {what} {}: {e}", p.display());
        std::fs::create_dir_all(&inner).map_err(|e| err("mkdir", &inner, e))?;
        let target = match (source, files.single, files.files.first()) {
            (Source::Copy(dir), true, Some(f)) => dir.join(&f.rel),
            (Source::Origin, true, _) => files.origin.clone(),
            // A sharded model: file `f` lies at `<dir>/<f.rel>` in its copy
            // and at `<origin>/<f.rel>` at its origin, so the directory is
            // the directory of its shards under their original names.
            (Source::Copy(dir), _, _) => dir.clone(),
            (Source::Origin, _, _) => files.origin.clone(),
        };
        let tmp = inner.join("link.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| err("symlink", &tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| err("rename onto", &link, e))?;
        Ok(link)
    }

    /// Removes `model`'s serve path (it was unregistered).
    pub fn remove(&self, model: &str) {
        let link = self.path_of(model);
        if link.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&link);
        }
        let _ = std::fs::remove_dir_all(self.inner_of(model));
    }

    /// At start: makes the serve path of every known model anew (`point`
    /// gives each its target) and removes the links of models no longer
    /// known. Entries that are not symlinks were not made by tierd and are
    /// left alone.
    pub fn reconcile(&self, models: &[(String, ModelFiles, Source)]) -> ServeReport {
        let mut report = ServeReport::default();
        let known: std::collections::HashSet<std::ffi::OsString> = models.iter().map(|(name, _, _)| name_component(name).into()).collect();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name == INNER_DIR || known.contains(&name) {
                    continue;
                }
                let p = e.path();
                if p.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) && std::fs::remove_file(&p).is_ok() {
                    report.removed.push(p);
                } else {
                    report.unknown.push(p);
                }
            }
        }
        let inner = self.dir.join(INNER_DIR);
        if let Ok(rd) = std::fs::read_dir(&inner) {
            for e in rd.flatten() {
                if !known.contains(&e.file_name()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        for (name, files, source) in models {
            match self.point(name, files, source) {
                Ok(_) => report.linked += 1,
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(root: &Path, single: bool) -> ModelFiles {
        let origin = root.join(if single { "m.gguf" } else { "m" });
        if single {
            std::fs::write(&origin, b"one").expect("write");
        } else {
            std::fs::create_dir_all(origin.join("sub")).expect("mkdir");
            std::fs::write(origin.join("a.safetensors"), b"a").expect("write");
            std::fs::write(origin.join("sub/b.json"), b"b").expect("write");
        }
        ModelFiles::walk(&origin, 100).expect("walk")
    }

    #[test]
    fn a_one_file_model_links_to_its_file_and_follows_a_copy() {
        let d = tempfile::tempdir().expect("tempdir");
        let files = model(d.path(), true);
        let s = ServeLinks::open(&d.path().join("serve")).expect("open");
        let p = s.point("m", &files, &Source::Origin).expect("point");
        assert_eq!(std::fs::read(&p).expect("read"), b"one");
        let copy = d.path().join("tier/m");
        std::fs::create_dir_all(&copy).expect("mkdir");
        std::fs::write(copy.join("m.gguf"), b"copy").expect("write");
        s.point("m", &files, &Source::Copy(copy.clone())).expect("repoint");
        assert_eq!(std::fs::read_link(&p).expect("link"), copy.join("m.gguf"));
        s.remove("m");
        assert!(p.symlink_metadata().is_err());
    }

    #[test]
    fn a_sharded_model_is_a_directory_of_its_shards() {
        let d = tempfile::tempdir().expect("tempdir");
        let files = model(d.path(), false);
        let s = ServeLinks::open(&d.path().join("serve")).expect("open");
        let p = s.point("m", &files, &Source::Origin).expect("point");
        assert_eq!(std::fs::read(p.join("a.safetensors")).expect("read"), b"a");
        assert_eq!(std::fs::read(p.join("sub/b.json")).expect("read"), b"b");
        // A copy in a tier: the link follows it, shards under their names.
        let copy = d.path().join("tier/m");
        std::fs::create_dir_all(copy.join("sub")).expect("mkdir");
        std::fs::write(copy.join("a.safetensors"), b"A").expect("write");
        std::fs::write(copy.join("sub/b.json"), b"B").expect("write");
        s.point("m", &files, &Source::Copy(copy)).expect("again");
        assert_eq!(std::fs::read(p.join("a.safetensors")).expect("read"), b"A");
        assert_eq!(std::fs::read(p.join("sub/b.json")).expect("read"), b"B");
    }

    #[test]
    fn reconcile_removes_stale_links_and_keeps_foreign_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let files = model(d.path(), true);
        let s = ServeLinks::open(&d.path().join("serve")).expect("open");
        s.point("gone", &files, &Source::Origin).expect("point");
        std::fs::write(d.path().join("serve/notes.txt"), b"mine").expect("write");
        let r = s.reconcile(&[("m".into(), files, Source::Origin)]);
        assert_eq!(r.linked, 1);
        assert_eq!(r.removed.len(), 1, "{r:?}");
        assert_eq!(r.unknown.len(), 1, "{r:?}");
        assert!(d.path().join("serve/notes.txt").exists());
        assert!(d.path().join("serve/m").exists());
        assert!(!d.path().join("serve/.tierd/gone").exists());
    }
}
