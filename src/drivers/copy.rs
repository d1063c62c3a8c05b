//! Copying a model into a `dir` tier: each file streamed through blake3
//! into a partial directory, written back and fsynced, read back and
//! compared, then the directory renamed into place atomically and the tier
//! directory fsynced. A failed or cancelled copy removes its partial
//! directory and touches nothing else; so does a copy whose worker panics.
//!
//! Permissions: a copied file keeps its origin's mode bits (`0o777`; the
//! origin of a symlink is its target) and, where tierd may (root), its
//! owner and group. Where it may not, the copy is tierd's own: its group
//! bits are cleared unless its group is the origin's, and its owner bits
//! are `rw` for tierd (who read the origin). Files are created `0600` in a
//! `0700` partial directory and get their final mode before a byte is
//! written. The directories of a sharded model mirror the origin's; the
//! copy's top directory (for a one-file model: the file's mode with `x`
//! beside each `r`) loses the group and other bits that the origin's
//! parent directories do not let through, and so does a file reached
//! through a symlink, with its target's parents. No one reads a copy
//! whom the origin would not let read it.

use std::fs::{File, Metadata, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::files::{PARTIAL_SUFFIX, name_component};
use super::sys::{self, Advice};
use super::work::{MoveShared, Throttle, WorkError, open_source, run_caught};

/// Copy buffer size.
const COPY_BUF: usize = 1 << 20;
/// Copy blocks whose writeback may be in flight before the copy waits.
const WRITEBACK_LAG: usize = 32;

/// One file to copy: where it is read, where it goes (relative to the
/// model's directory in the tier), its size as registered (a copy never
/// writes more) and, when known, its checksum.
#[derive(Debug, Clone)]
pub struct CopyFile {
    pub src: PathBuf,
    pub rel: PathBuf,
    pub size: u64,
    pub expected: Option<String>,
    /// The file at the model's origin, whose permissions the copy takes
    /// (`src` itself when the copy is made from the origin).
    pub origin: PathBuf,
}

/// The model's origin, whose permissions the copy takes: the origin path
/// and whether it is a single file (else a directory of shards).
#[derive(Debug, Clone)]
pub struct CopyOrigin {
    pub path: PathBuf,
    pub single: bool,
}

/// Mode bits, owner and group a copied file or directory gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Perm {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Perm {
    fn of(m: &Metadata) -> Perm {
        Perm {
            mode: m.mode() & 0o777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }

    /// The intersection of two sources' permissions (a copy made from a
    /// copy takes no more than either allows).
    fn and(self, other: Perm) -> Perm {
        Perm {
            mode: self.mode & other.mode,
            ..self
        }
    }

    /// A directory that whoever may read a file with this mode may enter.
    fn for_dir_of_file(self) -> Perm {
        Perm {
            mode: self.mode | ((self.mode & 0o444) >> 2),
            ..self
        }
    }

    /// Without the group and other bits that the parents of `path` (from
    /// its parent up to `/`) do not let through.
    fn behind_parents_of(self, path: &Path) -> Perm {
        let mut mask = 0o777;
        for dir in path.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(dir) else {
                // Unknown: the owner only.
                mask &= 0o700;
                break;
            };
            let mode = m.mode();
            if mode & 0o001 == 0 {
                mask &= !0o007;
                if !(mode & 0o010 != 0 && m.gid() == self.gid) {
                    mask &= !0o070;
                }
            }
        }
        Perm {
            mode: self.mode & mask,
            ..self
        }
    }

    /// Gives the open file or directory `f` these permissions: the owner
    /// and group where tierd may, then the mode (see the module docs).
    fn apply(self, f: &File) -> io::Result<()> {
        let mut mode = self.mode;
        if std::os::unix::fs::fchown(f, Some(self.uid), Some(self.gid)).is_err() {
            let now = f.metadata()?;
            if now.gid() != self.gid {
                mode &= !0o070;
            }
            mode |= if now.is_dir() { 0o700 } else { 0o600 };
        }
        f.set_permissions(Permissions::from_mode(mode))
    }
}

/// Creates the directory `path` (and any missing parents) `0700`.
fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// The permissions of the file at the origin `origin` (following a
/// symlink, with its target's parents' restrictions), or `None` where it
/// cannot be read (a copy whose origin is gone keeps its source's).
fn origin_file_perm(origin: &Path) -> Option<Perm> {
    let meta = std::fs::metadata(origin).ok()?;
    let p = Perm::of(&meta);
    let linked = std::fs::symlink_metadata(origin)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if linked {
        let target = origin.canonicalize().ok()?;
        return Some(p.behind_parents_of(&target));
    }
    Some(p)
}

/// The permissions of the directory `rel` (relative to the copy's top,
/// `""` being the top itself) of a copy of `origin` whose source is
/// `source_root`.
fn dir_perm(origin: &CopyOrigin, source_root: &Path, rel: &Path, files: &[CopyFile]) -> Option<Perm> {
    if origin.single {
        let file_perm = files
            .first()
            .and_then(|f| std::fs::metadata(&f.origin).or_else(|_| std::fs::metadata(&f.src)).ok())
            .map(|m| Perm::of(&m))?;
        return Some(file_perm.for_dir_of_file().behind_parents_of(&origin.path));
    }
    let at_origin = origin.path.join(rel);
    let meta = std::fs::metadata(&at_origin)
        .or_else(|_| std::fs::metadata(source_root.join(rel)))
        .ok()?;
    let p = Perm::of(&meta);
    Some(if rel.as_os_str().is_empty() {
        p.behind_parents_of(&origin.path)
    } else {
        p
    })
}

/// Where a model's copy goes in a `dir` tier: one entry named by the
/// model's escaped name ([`name_component`]), whatever the name holds.
pub fn copy_dir(tier_dir: &Path, model: &str) -> PathBuf {
    tier_dir.join(name_component(model))
}

/// The temporary name a copy is built under before its rename.
pub fn partial_dir(tier_dir: &Path, model: &str) -> PathBuf {
    tier_dir.join(format!("{}{PARTIAL_SUFFIX}", name_component(model)))
}

/// Copies `files` into `<tier_dir>/<model>`: streams each file through
/// blake3 into a partial directory, fsyncs, re-reads and compares the
/// checksums, renames the directory into place and fsyncs the tier
/// directory. Returns the checksums. On any failure or cancel the partial
/// directory is removed and nothing else is touched.
pub fn copy_model(
    tier_dir: &Path,
    model: &str,
    files: &[CopyFile],
    origin: &CopyOrigin,
    shared: &MoveShared,
    bandwidth_mb_s: Option<f64>,
) -> Result<Vec<String>, WorkError> {
    let partial = partial_dir(tier_dir, model);
    cleaned_up(tier_dir, &partial, || {
        copy_into(tier_dir, model, &partial, files, origin, shared, bandwidth_mb_s)
    })
}

/// Runs `work`, which builds `partial` in `tier_dir`; where it fails,
/// is cancelled or panics, removes `partial` (a panic becomes a failure).
fn cleaned_up<T>(tier_dir: &Path, partial: &Path, work: impl FnOnce() -> Result<T, WorkError>) -> Result<T, WorkError> {
    let result = run_caught("copy", work);
    if result.is_err() {
        if let Err(e) = sys::remove_inside(tier_dir, partial) {
            tracing::warn!(path = %partial.display(), error = %e, "cannot remove a partial copy");
        }
        let _ = sys::fsync_dir(tier_dir);
    }
    result
}

fn copy_into(
    tier_dir: &Path,
    model: &str,
    partial: &Path,
    files: &[CopyFile],
    origin: &CopyOrigin,
    shared: &MoveShared,
    bandwidth_mb_s: Option<f64>,
) -> Result<Vec<String>, WorkError> {
    let io_err = |what: &str, p: &Path| {
        let p = p.to_path_buf();
        let what = what.to_string();
        move |e: io::Error| WorkError::io(&what, &p, &e)
    };
    sys::remove_inside(tier_dir, partial).map_err(io_err("cannot remove stale", partial))?;
    // The copy's directories are never more open than the tier directory.
    let tier_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tier_dir)
            .map_err(io_err("cannot stat", tier_dir))?
            .permissions()
            .mode()
            & 0o777
    };
    create_private_dir(partial).map_err(io_err("cannot create", partial))?;
    let throttle = Throttle::new(bandwidth_mb_s);
    let mut hashes = Vec::with_capacity(files.len());
    let mut done = 0u64;
    let mut dirs = vec![partial.to_path_buf()];
    for f in files {
        let dst = partial.join(&f.rel);
        if let Some(parent) = dst.parent()
            && !dirs.iter().any(|d| d == parent)
        {
            create_private_dir(parent).map_err(io_err("cannot create", parent))?;
            // Parents made on the way count too (for their permissions).
            for a in parent.ancestors().take_while(|a| *a != partial) {
                if !dirs.iter().any(|d| d == a) {
                    dirs.push(a.to_path_buf());
                }
            }
        }
        let hash = copy_file(f, &dst, shared, &throttle, &mut done)?;
        hashes.push(hash);
    }
    // The directories take their final permissions, deepest first, the
    // top last (until then nobody but tierd can enter the partial copy).
    let source_root = files
        .first()
        .map(|f| {
            let depth = f.rel.components().count();
            f.src.ancestors().nth(depth).map(Path::to_path_buf).unwrap_or_default()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        let rel = d.strip_prefix(partial).unwrap_or(Path::new(""));
        if let Some(p) = dir_perm(origin, &source_root, rel, files) {
            let p = p.and(Perm { mode: tier_mode, ..p });
            let dir = File::open(d).map_err(io_err("cannot open", d))?;
            p.apply(&dir).map_err(io_err("cannot set the permissions of", d))?;
        }
    }
    for d in &dirs {
        sys::fsync_dir(d).map_err(io_err("cannot fsync", d))?;
    }
    if shared.cancelled() {
        return Err(WorkError::Cancelled);
    }
    let target = copy_dir(tier_dir, model);
    sys::remove_inside(tier_dir, &target).map_err(io_err("cannot replace stale", &target))?;
    std::fs::rename(partial, &target).map_err(io_err("cannot rename into place", &target))?;
    sys::fsync_dir(tier_dir).map_err(io_err("cannot fsync", tier_dir))?;
    Ok(hashes)
}

/// Copies one file to `dst` and verifies it; returns its checksum.
///
/// Three threads overlap: a reader reads and hashes the source; this thread
/// writes each block and starts its writeback at once, and a few blocks
/// behind waits for that writeback to end and hands the range to a
/// verifier, which reads it back through the kernel, hashes it and drops
/// its pages (a `dir` tier is not memory; dirty pages stay bounded). After the final fsync the last ranges are verified too, and
/// the two checksums (and the recorded one, when the source is a copy) must
/// agree.
fn copy_file(f: &CopyFile, dst: &Path, shared: &MoveShared, throttle: &Throttle, done: &mut u64) -> Result<String, WorkError> {
    let io_err = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| WorkError::io(what, &p, &e)
    };
    // A regular file of the registered size, or the move fails here.
    let src = open_source(&f.src, f.size)?;
    let _ = sys::fadvise(&src, 0, 0, Advice::Sequential);
    let src_perm = Perm::of(&src.metadata().map_err(io_err("cannot stat", &f.src))?);
    let perm = if f.origin == f.src {
        origin_file_perm(&f.origin).unwrap_or(src_perm)
    } else {
        // From a copy: no more than the copy allows, nor than the origin.
        origin_file_perm(&f.origin).map(|o| o.and(src_perm)).unwrap_or(src_perm)
    };
    // Owner-only until its permissions are set, before any byte is written.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(io_err("cannot create", dst))?;
    let back = File::open(dst).map_err(io_err("cannot reopen", dst))?;
    perm.apply(&out).map_err(io_err("cannot set the permissions of", dst))?;
    std::thread::scope(|s| {
        let (vtx, vrx) = std::sync::mpsc::channel::<(u64, u64)>();
        let verifier = s.spawn(move || -> io::Result<(String, u64)> {
            use std::os::unix::fs::FileExt;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; COPY_BUF];
            let mut total = 0u64;
            while let Ok((off, len)) = vrx.recv() {
                let mut pos = 0u64;
                while pos < len {
                    if shared.cancelled() {
                        return Err(io::Error::other("cancelled"));
                    }
                    let want = (len - pos).min(buf.len() as u64) as usize;
                    let n = back.read_at(&mut buf[..want], off + pos)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "copy shorter than written"));
                    }
                    hasher.update(&buf[..n]);
                    pos += n as u64;
                    total += n as u64;
                    shared.add(n as u64);
                }
                let _ = sys::fadvise(&back, off, len, Advice::DontNeed);
            }
            Ok((hasher.finalize().to_hex().to_string(), total))
        });
        let mut in_flight: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
        let mut written = 0u64;
        let lag = WRITEBACK_LAG;
        let copied = read_pipelined(&src, f.size, shared, &f.src, |block| {
            if shared.cancelled() {
                return Err(WorkError::Cancelled);
            }
            // Never more than registered: a file that grew fails here.
            if written + block.len() as u64 > f.size {
                return Err(WorkError::failed(format!(
                    "{} changed size during the copy: it holds more than the {} bytes registered",
                    f.src.display(),
                    f.size
                )));
            }
            out.write_all(block).map_err(io_err("cannot write", dst))?;
            let start = written;
            written += block.len() as u64;
            if lag > 0 {
                let _ = sys::sync_range(&out, start, block.len() as u64, false);
            }
            in_flight.push_back((start, block.len() as u64));
            if lag > 0
                && in_flight.len() > lag
                && let Some((o, n)) = in_flight.pop_front()
            {
                sys::sync_range(&out, o, n, true).map_err(io_err("cannot write", dst))?;
                let _ = vtx.send((o, n));
            }
            *done += block.len() as u64;
            shared.add(block.len() as u64);
            throttle.wait(*done, shared)
        })
        .and_then(|(hash, copied)| {
            // Read to its end, or grown after its end was read: either way
            // not the file registered.
            let now = src.metadata().map(|m| m.len()).unwrap_or(copied);
            if copied != f.size || now != f.size {
                return Err(WorkError::failed(format!(
                    "{} changed size during the copy: read {copied} bytes, now {now}, expected {}",
                    f.src.display(),
                    f.size
                )));
            }
            out.sync_all().map_err(io_err("cannot fsync", dst))?;
            for (o, n) in in_flight.drain(..) {
                let _ = vtx.send((o, n));
            }
            Ok(hash.unwrap_or_default())
        });
        drop(vtx);
        let verified = verifier.join();
        let hash = copied?;
        let (got, total) = match verified {
            Ok(Ok(v)) => v,
            Ok(Err(_)) if shared.cancelled() => return Err(WorkError::Cancelled),
            Ok(Err(e)) => return Err(WorkError::io("cannot read back", dst, &e)),
            Err(_) => return Err(WorkError::failed(format!("verifier of {} panicked", dst.display()))),
        };
        if total != f.size || got != hash {
            return Err(WorkError::Failed {
                message: format!(
                    "verification of {} failed: read back {total} bytes with checksum {got}, wrote {} with {hash}",
                    dst.display(),
                    f.size
                ),
                retryable: true,
                vanished: false,
            });
        }
        if let Some(expected) = &f.expected
            && *expected != hash
        {
            return Err(WorkError::failed(format!(
                "source {} does not match its recorded checksum (expected {expected}, read {hash}); it is corrupt",
                f.src.display()
            )));
        }
        // The source's pages were only needed for this copy.
        let _ = sys::fadvise(&src, 0, 0, Advice::DontNeed);
        Ok(hash)
    })
}

/// Reads until `buf` is full or the file ends.
fn read_full(mut f: impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads `src` from the start on a helper thread (which also hashes it with
/// blake3) and hands each block to `consume` on this thread, so reading,
/// hashing and the consumer's work overlap. Returns the hash and the bytes
/// read. Stops early on cancel or the first error, and once more than
/// `limit` bytes were read (the consumer says what that means).
fn read_pipelined(
    src: &File,
    limit: u64,
    shared: &MoveShared,
    path: &Path,
    mut consume: impl FnMut(&[u8]) -> Result<(), WorkError>,
) -> Result<(Option<String>, u64), WorkError> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(3);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = s.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            let mut read = 0u64;
            loop {
                if shared.cancelled() {
                    return None;
                }
                let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; COPY_BUF]);
                match read_full(src, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        read += n as u64;
                        if tx.send(Ok((buf, n))).is_err() {
                            return None;
                        }
                        if read > limit {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return None;
                    }
                }
            }
            Some(hasher.finalize().to_hex().to_string())
        });
        let mut total = 0u64;
        let mut err = None;
        while let Ok(msg) = rx.recv() {
            match msg {
                Ok((buf, n)) => {
                    if let Err(e) = consume(&buf[..n]) {
                        err = Some(e);
                        break;
                    }
                    total += n as u64;
                    let _ = back_tx.send(buf);
                }
                Err(e) => {
                    err = Some(WorkError::io("cannot read", path, &e));
                    break;
                }
            }
        }
        drop(rx);
        let hash = reader
            .join()
            .map_err(|_| WorkError::failed(format!("reader of {} panicked", path.display())))?;
        if let Some(e) = err {
            return Err(e);
        }
        if shared.cancelled() {
            return Err(WorkError::Cancelled);
        }
        Ok((hash, total))
    })
}

/// blake3 of a whole file (verification at start and in tests).
pub fn hash_file(path: &Path) -> io::Result<String> {
    let f = sys::open_regular(path)?;
    let mut buf = vec![0u8; COPY_BUF];
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = read_full(&f, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }

    fn write(p: &Path, bytes: usize) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, vec![7u8; bytes]).expect("write");
    }

    fn one(src: &Path, rel: &str) -> CopyFile {
        CopyFile {
            src: src.to_path_buf(),
            rel: rel.into(),
            size: std::fs::metadata(src).expect("stat").len(),
            expected: None,
            origin: src.to_path_buf(),
        }
    }

    fn single(path: &Path) -> CopyOrigin {
        CopyOrigin {
            path: path.canonicalize().expect("canonical"),
            single: true,
        }
    }

    /// A world-readable place for origins (a tempdir itself is 0700).
    fn open_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        chmod(d.path(), 0o755);
        d
    }

    #[test]
    fn a_copy_keeps_the_mode_and_owner_of_its_origin_through_a_symlink() {
        let d = open_dir();
        let tier = d.path().join("tier");
        std::fs::create_dir(&tier).expect("mkdir");
        let secret = d.path().join("secret");
        write(&secret, 4096);
        chmod(&secret, 0o640);
        // Group other than ours where we may (root): it must be kept.
        let _ = std::os::unix::fs::chown(&secret, Some(0), Some(42));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        for (name, src) in [("via-link", &link), ("plain", &secret)] {
            let shared = MoveShared::new(8192);
            copy_model(&tier, name, &[one(src, "secret")], &single(src), &shared, None).expect("copy");
            let copy = tier.join(name).join("secret");
            assert_eq!(mode(&copy), 0o640, "{name}: the origin's mode, never 0644");
            let (o, c) = (std::fs::metadata(&secret).expect("stat"), std::fs::metadata(&copy).expect("stat"));
            if sys::uid() == 0 {
                assert_eq!((c.uid(), c.gid()), (o.uid(), o.gid()), "{name}: owner and group kept");
            }
            // The model's directory: whoever may read the file may enter.
            assert_eq!(mode(&tier.join(name)), 0o750, "{name}");
        }
        for m in [0o600, 0o400, 0o644, 0o604] {
            chmod(&secret, m);
            let name = format!("m{m:o}");
            let shared = MoveShared::new(8192);
            copy_model(&tier, &name, &[one(&secret, "secret")], &single(&secret), &shared, None).expect("copy");
            let got = mode(&tier.join(&name).join("secret"));
            if sys::uid() == 0 {
                assert_eq!(got, m);
            } else {
                assert_eq!(got & 0o077, m & 0o007, "never more open than the origin");
            }
        }
    }

    #[test]
    fn a_sharded_copy_mirrors_its_directories_and_hides_what_the_origin_hides() {
        let d = open_dir();
        let tier = d.path().join("tier");
        std::fs::create_dir(&tier).expect("mkdir");
        // A 0644 model in a 0700 home: others cannot read it at the origin.
        let home = d.path().join("home");
        let origin = home.join("model");
        write(&origin.join("a.bin"), 100);
        write(&origin.join("sub/b.bin"), 200);
        chmod(&origin.join("a.bin"), 0o644);
        chmod(&origin.join("sub/b.bin"), 0o600);
        chmod(&origin.join("sub"), 0o750);
        chmod(&origin, 0o755);
        chmod(&home, 0o700);
        let files: Vec<CopyFile> = ["a.bin", "sub/b.bin"]
            .iter()
            .map(|r| CopyFile {
                origin: origin.join(r),
                ..one(&origin.join(r), r)
            })
            .collect();
        let o = CopyOrigin {
            path: origin.clone(),
            single: false,
        };
        let shared = MoveShared::new(600);
        copy_model(&tier, "m", &files, &o, &shared, None).expect("copy");
        let copy = tier.join("m");
        assert_eq!(mode(&copy.join("a.bin")), 0o644, "file modes are kept");
        assert_eq!(mode(&copy.join("sub/b.bin")), 0o600);
        assert_eq!(mode(&copy.join("sub")), 0o750, "directories mirror the origin's");
        assert_eq!(mode(&copy), 0o700, "what the 0700 home hides stays hidden");
        chmod(&home, 0o755);
        let shared = MoveShared::new(600);
        copy_model(&tier, "open", &files, &o, &shared, None).expect("copy");
        assert_eq!(mode(&tier.join("open")), 0o755);
    }

    #[test]
    fn the_partial_file_is_never_more_open_than_the_origin() {
        let d = open_dir();
        let tier = d.path().join("tier");
        std::fs::create_dir(&tier).expect("mkdir");
        let src = d.path().join("w.bin");
        write(&src, 4 << 20);
        chmod(&src, 0o640);
        let shared = MoveShared::new(8 << 20);
        let (t, s, f, o) = (tier.clone(), shared.clone(), one(&src, "w.bin"), single(&src));
        let worker = std::thread::spawn(move || copy_model(&t, "m", &[f], &o, &s, Some(1.0)));
        let partial = partial_dir(&tier, "m");
        let file = partial.join("w.bin");
        let t0 = Instant::now();
        while !file.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "the copy never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        // From its creation on: owner-only, then the origin's mode.
        let m = mode(&file);
        assert_eq!(m & !0o640, 0, "partial file mode {m:o}");
        assert_eq!(mode(&partial) & 0o077, 0, "the partial directory is private");
        shared.cancel.store(true, Ordering::Relaxed);
        let out = worker.join().expect("no panic");
        assert!(matches!(out, Err(WorkError::Cancelled)), "{out:?}");
        assert!(!partial.exists());
    }

    #[test]
    fn a_panicking_copy_leaves_no_partial() {
        let d = tempfile::tempdir().expect("tempdir");
        let partial = partial_dir(d.path(), "m");
        let out: Result<(), WorkError> = cleaned_up(d.path(), &partial, || {
            write(&partial.join("half.bin"), 1000);
            panic!("injected in the middle of a copy");
        });
        match out {
            Err(WorkError::Failed { message, .. }) => assert!(message.contains("injected"), "{message}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(!partial.exists(), "the partial copy is removed");
    }

    #[test]
    fn a_file_that_grew_fails_and_the_copy_never_writes_more_than_registered() {
        let d = open_dir();
        let tier = d.path().join("tier");
        std::fs::create_dir(&tier).expect("mkdir");
        let src = d.path().join("w.bin");
        write(&src, 1 << 20);
        let f = one(&src, "w.bin");
        // Grown before the move: refused at once.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&src)
            .and_then(|mut h| h.write_all(&[1u8; 100]))
            .expect("append");
        let shared = MoveShared::new(2 << 20);
        let err = copy_model(&tier, "m", std::slice::from_ref(&f), &single(&src), &shared, None).expect_err("grew");
        assert!(
            matches!(&err, WorkError::Failed { message, .. } if message.contains("changed size")),
            "{err:?}"
        );
        assert!(!partial_dir(&tier, "m").exists() && !copy_dir(&tier, "m").exists());

        // Growing while it is copied (slowly): it stops at the registered size.
        write(&src, 8 << 20);
        let f = one(&src, "w.bin");
        let shared = MoveShared::new(16 << 20);
        let (t, s, o) = (tier.clone(), shared.clone(), single(&src));
        let worker = std::thread::spawn(move || copy_model(&t, "g", &[f], &o, &s, Some(8.0)));
        let partial = partial_dir(&tier, "g").join("w.bin");
        let t0 = Instant::now();
        while !partial.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "the copy never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut h = std::fs::OpenOptions::new().append(true).open(&src).expect("open");
        h.write_all(&vec![2u8; 16 << 20]).expect("grow");
        let mut largest = 0;
        while !worker.is_finished() {
            largest = largest.max(std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0));
            assert!(t0.elapsed() < Duration::from_secs(20), "the copy never ended");
            std::thread::sleep(Duration::from_millis(2));
        }
        let err = worker.join().expect("no panic").expect_err("grew during the copy");
        assert!(
            matches!(&err, WorkError::Failed { message, .. } if message.contains("changed size")),
            "{err:?}"
        );
        assert!(largest <= 8 << 20, "wrote {largest} bytes of an 8 MiB registration");
        assert!(!partial_dir(&tier, "g").exists());
    }
}
