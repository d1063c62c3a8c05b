//! A model's files: the name checks that keep a model inside a tier
//! directory, the list of files (with sizes and, once verified, checksums)
//! that make up its origin, and the walk that finds them.
//!
//! The walk does blocking I/O and is bounded (`max_files_per_model`): the
//! server runs it before taking the engine's lock, never under it.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Suffix of a copy in progress inside a `dir` tier; anything carrying it is
/// a leftover of an interrupted move and is removed at start.
pub const PARTIAL_SUFFIX: &str = ".tierd-partial";

/// Entries a registration walks at most, unless the configuration says
/// otherwise (`max_files_per_model`).
pub const DEFAULT_MAX_FILES: usize = 10_000;

/// The single path component that stands for model `name` in tierd's
/// directories (the serve directory). Names are plain today (see
/// [`check_model_name`]), so this is the name itself; it is replaced by
/// the escaping, reversible form once names may hold `/`, `:` and `@`.
pub fn name_component(name: &str) -> String {
    name.to_string()
}

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

/// Trees of kernel files, not data: nothing under them can be registered.
pub const KERNEL_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Filesystems whose files are views of the kernel, not data (statfs
/// magic numbers, linux/magic.h). `devtmpfs` reports tmpfs's number: files
/// of `/dev` are caught by [`KERNEL_TREES`] and by their file type.
const KERNEL_FILE_SYSTEMS: [(u32, &str); 21] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x1cd1, "devpts"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6265_6570, "configfs"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x6e73_6673, "nsfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x0904_1934, "anon_inode"),
    (0x5049_5045, "pipefs"),
    (0x534f_434b, "sockfs"),
];

/// The kernel filesystem named by a statfs magic number, if it is one.
fn kernel_file_system(magic: u32) -> Option<&'static str> {
    KERNEL_FILE_SYSTEMS.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n)
}

/// Refuses a file on a kernel filesystem (`/proc`, `/sys`, ...): its size
/// says nothing of what reading it gives.
pub fn check_file_system(file: &File) -> Result<(), String> {
    let st = rustix::fs::fstatfs(file).map_err(|e| format!("cannot statfs: {e}"))?;
    match kernel_file_system(st.f_type as u32) {
        Some(fs) => Err(format!(
            "it is on the kernel filesystem {fs}; only regular files on a disk can be registered"
        )),
        None => Ok(()),
    }
}

/// As [`check_file_system`], for a path.
fn check_file_system_at(path: &Path) -> Result<(), String> {
    let st = rustix::fs::statfs(path).map_err(|e| format!("{}: cannot statfs: {e}", path.display()))?;
    match kernel_file_system(st.f_type as u32) {
        Some(fs) => Err(format!(
            "{} is on the kernel filesystem {fs}; only regular files on a disk can be registered",
            path.display()
        )),
        None => Ok(()),
    }
}

/// Refuses a canonical path under `/proc`, `/sys` or `/dev`.
fn check_kernel_tree(canonical: &Path) -> Result<(), String> {
    match KERNEL_TREES.iter().find(|t| canonical.starts_with(t)) {
        Some(t) => Err(format!(
            "{} is under {t}; files of {} cannot be registered",
            canonical.display(),
            KERNEL_TREES.join(", ")
        )),
        None => Ok(()),
    }
}

/// What kind of file `ft` is, in words (for a refusal).
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Checks that the file `path` (canonical: `meta` followed any symlink) is
/// a regular file tierd may register.
fn check_regular(canonical: &Path, meta: &Metadata) -> Result<(), String> {
    check_kernel_tree(canonical)?;
    if !meta.is_file() {
        return Err(format!(
            "{} is {}; only regular files and directories of regular files can be registered",
            canonical.display(),
            kind_of(meta.file_type())
        ));
    }
    check_file_system_at(canonical)
}

/// Which file a path is: its device and inode. Two names of the same file
/// (a hard link, a symlink, the same path twice) have the same id.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of_meta(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// The id of the file at `path` now (following symlinks), if it exists.
    pub fn of(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of_meta(&m))
    }
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
    /// The file's device and inode when it was registered (absent in
    /// records written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<FileId>,
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

impl ModelFile {
    /// The file at `rel` as registration measures it (`meta` is its
    /// metadata, a symlink's target's): size, device and inode, mtime.
    fn measured(rel: PathBuf, meta: &Metadata) -> ModelFile {
        ModelFile {
            rel,
            size: meta.len(),
            blake3: None,
            id: Some(FileId::of_meta(meta)),
            mtime_ns: Some(mtime_ns(meta)),
            copy_mtime_ns: None,
        }
    }
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
    ///
    /// Only a regular file, or a directory of regular files, is a model:
    /// FIFOs, sockets, devices, broken symlinks and anything under `/proc`,
    /// `/sys` or `/dev` (or on a kernel filesystem) are refused with the
    /// path named.
    pub fn walk(path: &Path, max_files: usize) -> Result<ModelFiles, String> {
        let origin = path.canonicalize().map_err(|e| format!("model path {}: {e}", path.display()))?;
        check_kernel_tree(&origin)?;
        let single = std::fs::metadata(&origin).map(|m| m.is_file()).unwrap_or(false);
        let files = list_files(&origin, max_files)?;
        let bytes = files
            .iter()
            .try_fold(0u64, |sum, f| sum.checked_add(f.size))
            .ok_or_else(|| format!("{}: the sizes of its files overflow", origin.display()))?;
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

    /// A file of this model that is also a file of `other` (same device
    /// and inode, as recorded at registration and still true now): its
    /// path here and there.
    pub fn shared_file(&self, mine: &FileIds, other: &ModelFiles) -> Option<(PathBuf, PathBuf)> {
        for f in &other.files {
            let Some(id) = f.id else { continue };
            let Some(rel) = mine.0.get(&id) else { continue };
            let theirs = other.origin_file(f);
            // The record may be old: only a file that is still the same counts.
            if FileId::of(&theirs) == Some(id) {
                let here = if self.single { self.origin.clone() } else { self.origin.join(rel) };
                return Some((here, theirs));
            }
        }
        None
    }

    /// The ids of this model's files, to look for them in other models.
    pub fn ids(&self) -> FileIds {
        FileIds(self.files.iter().filter_map(|f| f.id.map(|id| (id, f.rel.clone()))).collect())
    }

    /// Records the device and inode of each origin file that has none (a
    /// record written before they were kept), so the same-file check of
    /// later registrations covers it; a file that cannot be read keeps none.
    pub fn fill_missing_ids(&mut self) {
        for i in 0..self.files.len() {
            if self.files[i].id.is_none() {
                let id = FileId::of(&self.origin_file(&self.files[i]));
                self.files[i].id = id;
            }
        }
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

/// The ids of a model's files (see [`ModelFiles::ids`]).
#[derive(Debug, Default)]
pub struct FileIds(HashMap<FileId, PathBuf>);

/// The files of the model at `origin` (canonical: a file, or a directory
/// searched recursively for regular files), sorted by relative path; at
/// most `max_files` entries are looked at, and the walk stops at the first
/// one past that bound. Anything but a regular file or a directory (or a
/// symlink to a directory, which is skipped: no loops) is refused.
pub fn list_files(origin: &Path, max_files: usize) -> Result<Vec<ModelFile>, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let meta = std::fs::metadata(origin).map_err(|e| io(origin, e))?;
    if !meta.is_dir() {
        check_regular(origin, &meta)?;
        let rel = origin
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} has no file name", origin.display()))?;
        return Ok(vec![ModelFile::measured(rel, &meta)]);
    }
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![(PathBuf::new(), meta.dev())];
    while let Some((rel_dir, dev)) = stack.pop() {
        let dir = origin.join(&rel_dir);
        // A filesystem mounted inside the tree (a walk of `/` meets /proc).
        check_kernel_tree(&dir)?;
        check_file_system_at(&dir)?;
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
            let path = entry.path();
            let lmeta = entry.metadata().map_err(|e| io(&path, e))?;
            let ft = lmeta.file_type();
            let rel = rel_dir.join(entry.file_name());
            let m = if ft.is_dir() {
                stack.push((rel, lmeta.dev()));
                continue;
            } else if ft.is_file() {
                // A file bind-mounted from elsewhere has a device of its own.
                if lmeta.dev() != dev {
                    check_file_system_at(&path)?;
                }
                lmeta
            } else if ft.is_symlink() {
                // A symlink counts as the file it points at (which must be
                // a regular file on a disk); linked directories are not
                // followed (no loops).
                let target = path
                    .canonicalize()
                    .map_err(|e| format!("{} is a broken symlink ({e})", path.display()))?;
                let m = std::fs::metadata(&target).map_err(|e| io(&target, e))?;
                if m.is_dir() {
                    continue;
                }
                check_regular(&target, &m).map_err(|e| format!("{} links to a file tierd refuses: {e}", path.display()))?;
                m
            } else {
                return Err(format!(
                    "{} is {}; only regular files and directories of regular files can be registered",
                    path.display(),
                    kind_of(ft)
                ));
            };
            out.push(ModelFile::measured(rel, &m));
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
    fn records_without_file_ids_get_them_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.bin");
        std::fs::write(&path, b"weights").expect("write");
        let mut files = ModelFiles::walk(&path, 10).expect("walk");
        let id = files.files[0].id;
        assert!(id.is_some());
        files.files[0].id = None;
        files.fill_missing_ids();
        assert_eq!(files.files[0].id, id);
        std::fs::remove_file(&path).expect("rm");
        files.files[0].id = None;
        files.fill_missing_ids();
        assert_eq!(files.files[0].id, None, "a vanished file has no id");
    }

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

    fn refused(path: &Path, needle: &str) {
        let err = ModelFiles::walk(path, DEFAULT_MAX_FILES).expect_err(&format!("{} registers", path.display()));
        assert!(err.contains(needle), "{}: {err}", path.display());
    }

    #[test]
    fn kernel_files_are_refused() {
        // Both "regular" files by stat: 0 bytes, and reading them gives more.
        refused(Path::new("/proc/self/pagemap"), "under /proc");
        refused(Path::new("/proc/self/mem"), "under /proc");
        refused(Path::new("/proc/self"), "under /proc");
        refused(Path::new("/dev/null"), "under /dev");
        if Path::new("/sys/kernel").exists() {
            refused(Path::new("/sys/kernel"), "under /sys");
        }
        // The filesystem itself, whatever the path says.
        let f = File::open("/proc/self/status").expect("open");
        let err = check_file_system(&f).expect_err("proc");
        assert!(err.contains("proc"), "{err}");
        let ok = tempfile::NamedTempFile::new().expect("tmp");
        assert!(check_file_system(ok.as_file()).is_ok());
        // Through symlinks: as the origin, and inside a directory.
        let d = tempfile::tempdir().expect("tempdir");
        let link = d.path().join("mem");
        std::os::unix::fs::symlink("/proc/self/mem", &link).expect("symlink");
        refused(&link, "under /proc");
        let dir = d.path().join("model");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("a.bin"), b"x").expect("write");
        std::os::unix::fs::symlink("/proc/self/pagemap", dir.join("b.bin")).expect("symlink");
        refused(&dir, "under /proc");
        std::fs::remove_file(dir.join("b.bin")).expect("rm");
        std::os::unix::fs::symlink("/dev/zero", dir.join("z.bin")).expect("symlink");
        refused(&dir, "under /dev");
    }

    #[test]
    fn special_files_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        refused(&fifo, "a FIFO");
        let sock = d.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        refused(&sock, "a socket");
        // In a directory: the whole model is refused, naming the file.
        let dir = d.path().join("model");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("a.bin"), b"x").expect("write");
        std::os::unix::fs::symlink(&fifo, dir.join("f")).expect("symlink");
        refused(&dir, "a FIFO");
        std::fs::remove_file(dir.join("f")).expect("rm");
        std::os::unix::fs::symlink(&sock, dir.join("s")).expect("symlink");
        refused(&dir, "a socket");
        std::fs::remove_file(dir.join("s")).expect("rm");
        std::os::unix::fs::symlink(d.path().join("nowhere"), dir.join("dangling")).expect("symlink");
        refused(&dir, "broken symlink");
        std::fs::remove_file(dir.join("dangling")).expect("rm");
        // A linked directory is skipped (no loops); regular files count.
        std::os::unix::fs::symlink(&dir, dir.join("loop")).expect("symlink");
        let m = ModelFiles::walk(&dir, DEFAULT_MAX_FILES).expect("a directory of regular files");
        assert_eq!(m.files.len(), 1);
        assert!(m.files[0].id.is_some(), "device and inode recorded");
    }

    #[test]
    fn the_walk_stops_at_its_bound_before_looking_further() {
        // 12 entries at the top, a FIFO below: the bound is met first.
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..11 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").expect("write");
        }
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("sub/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        let err = ModelFiles::walk(d.path(), 10).expect_err("over the bound");
        assert!(err.contains("more than 10 entries"), "{err}");
        let err = ModelFiles::walk(d.path(), 100).expect_err("the FIFO");
        assert!(err.contains("a FIFO"), "{err}");
        // The whole system: refused quickly, never walked.
        let t = std::time::Instant::now();
        let err = ModelFiles::walk(Path::new("/"), DEFAULT_MAX_FILES).expect_err("/");
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(
            err.contains("entries") || err.contains("under /") || err.contains("only regular"),
            "{err}"
        );
    }

    #[test]
    fn the_same_file_under_another_name_is_found() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = d.path().join("a.bin");
        std::fs::write(&a, b"weights").expect("write");
        let dir = d.path().join("m");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::hard_link(&a, dir.join("same.bin")).expect("link");
        std::fs::write(dir.join("other.bin"), b"x").expect("write");
        let first = ModelFiles::walk(&a, DEFAULT_MAX_FILES).expect("walk");
        let second = ModelFiles::walk(&dir, DEFAULT_MAX_FILES).expect("walk");
        let (here, there) = second.shared_file(&second.ids(), &first).expect("shared");
        assert_eq!(
            (here, there),
            (dir.canonicalize().expect("c").join("same.bin"), a.canonicalize().expect("c"))
        );
        // A record that no longer holds (the file was replaced) does not count.
        // (Made before the old one goes, so it cannot reuse its inode.)
        std::fs::write(d.path().join("a.new"), b"new").expect("write");
        std::fs::rename(d.path().join("a.new"), &a).expect("rename");
        assert_eq!(second.shared_file(&second.ids(), &first), None);
    }
}
