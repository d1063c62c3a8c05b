//! Thin, safe wrappers over the Linux calls the real drivers need: page
//! cache advice, residency (`mincore`), memory locking, `statvfs`,
//! `/proc/meminfo`, writeback and directory fsync.
//!
//! Calls go through rustix and memmap2 where they have them. The two that
//! neither has (`mincore`, `sync_file_range`) use libc here, behind
//! functions that take a mapping or a file, never a raw pointer: every
//! `unsafe` block's soundness rests on this module alone.

use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::AsRawFd;
use std::path::Path;

use memmap2::Mmap;

/// The system page size in bytes.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// `posix_fadvise` advice for a whole file or a range of it.
#[derive(Debug, Clone, Copy)]
pub enum Advice {
    /// Drop the (clean) cached pages of the range.
    DontNeed,
    /// Start reading the range into the page cache now.
    WillNeed,
    /// The file is read sequentially (larger readahead).
    Sequential,
}

/// Gives the kernel advice about a byte range of `file` (`len` 0 = to the end).
pub fn fadvise(file: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()> {
    let a = match advice {
        Advice::DontNeed => rustix::fs::Advice::DontNeed,
        Advice::WillNeed => rustix::fs::Advice::WillNeed,
        Advice::Sequential => rustix::fs::Advice::Sequential,
    };
    rustix::fs::fadvise(file, offset, NonZeroU64::new(len), a).map_err(io::Error::from)
}

/// Opens `path` for reading without ever blocking: a FIFO put in place of
/// a model file would block a plain `open` forever (the caller checks what
/// it opened).
///
/// Every open tierd makes of a model file goes through here, so that an
/// inotify open watcher can tell it from another process's
/// ([`super::opens::note_own_open`]).
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    super::opens::note_own_open(path);
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// [`open_nonblocking`], only if `path` is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = open_nonblocking(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

/// Drops the page cache of the file at `path` (its clean pages).
pub fn drop_cache(path: &Path) -> io::Result<()> {
    let f = open_regular(path)?;
    fadvise(&f, 0, 0, Advice::DontNeed)
}

/// How many of the pages of `map` are resident, and how many it has.
pub fn resident_pages(map: &Mmap) -> io::Result<(usize, usize)> {
    if map.is_empty() {
        return Ok((0, 0));
    }
    let pages = map.len().div_ceil(page_size());
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping for the duration of the borrow, page
    // aligned (mmap returns page-aligned addresses) and `map.len()` bytes
    // long; `vec` holds one byte per page of it, as mincore requires.
    // mincore only reads the page tables, never the mapped memory.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((vec.iter().filter(|b| **b & 1 == 1).count(), pages))
}

/// Resident bytes and length of the file at `path` (the page cache's share
/// of it). Maps the file without touching its pages.
pub fn file_resident_fraction(path: &Path) -> io::Result<(u64, u64)> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: a read-only shared mapping that we never read through
    // (mincore only inspects page tables), so a concurrent truncation of
    // the file cannot fault us.
    let map = unsafe { Mmap::map(&f)? };
    let (res, _pages) = resident_pages(&map)?;
    Ok(((res as u64 * page_size() as u64).min(len), len))
}

/// `mlock` of `len` bytes of `map` from `offset`.
pub fn lock_range(map: &Mmap, offset: usize, len: usize) -> io::Result<()> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= map.len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "lock range outside the mapping"))?;
    if len == 0 || offset == end {
        return Ok(());
    }
    // SAFETY: `offset < end <= map.len()`, so the range lies inside the live
    // mapping `map` borrowed for this call. mlock changes only whether the
    // pages may be swapped out (it faults them in, reading the file); it
    // never changes their contents.
    unsafe {
        let ptr = map.as_ptr().add(offset) as *mut std::ffi::c_void;
        rustix::mm::mlock(ptr, len).map_err(io::Error::from)
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
pub fn statvfs_available(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The fields of `/proc/meminfo` the page-cache tier reports, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemInfo {
    pub available: u64,
    pub total: u64,
    pub mlocked: u64,
}

impl MemInfo {
    /// Reads `/proc/meminfo` once.
    pub fn read() -> io::Result<MemInfo> {
        let text = std::fs::read_to_string("/proc/meminfo")?;
        let field =
            |f: &str| parse_kb_field(&text, f).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{f} not in /proc/meminfo")));
        Ok(MemInfo {
            available: field("MemAvailable")?,
            total: field("MemTotal")?,
            mlocked: parse_kb_field(&text, "Mlocked").unwrap_or(0),
        })
    }
}

/// One field of `/proc/meminfo`, in bytes.
pub fn meminfo(field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_kb_field(&text, field).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{field} not in /proc/meminfo")))
}

fn parse_kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// One `kB` field of `/proc/self/status` (`VmLck`), in bytes.
pub fn self_status(field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    parse_kb_field(&text, field).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{field} not in /proc/self/status")))
}

/// Starts writeback of a range of `file` (`wait`: and waits for the range's
/// earlier writeback and its own to end), bounding dirty pages during a
/// streaming copy so the final fsync has little left to do.
pub fn sync_range(file: &File, offset: u64, len: u64, wait: bool) -> io::Result<()> {
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond off64_t"));
    };
    // SAFETY: the descriptor is open for the lifetime of the `file` borrow;
    // the call takes no pointer and reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `fsync` of a directory, making renames and removals in it durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Where `path` is, checked to lie inside the directory `root` (canonical,
/// as a tier keeps it), or an error saying why not; `Ok(None)` when there
/// is nothing there. The check runs on the canonical path: `root` must
/// still canonicalize to itself (a tier directory swapped for a symbolic
/// link is refused), `path`'s parent must canonicalize to a directory
/// inside `root`, and `path`'s last component must be a plain name (no
/// `..`). The returned path is `path` itself when `path` is a symbolic
/// link: the link is what lies inside, not what it points at.
pub fn resolve_inside(root: &Path, path: &Path) -> io::Result<Option<std::path::PathBuf>> {
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing to remove {}: {why}", path.display()),
        ))
    };
    let Some(std::path::Component::Normal(name)) = path.components().next_back() else {
        return refuse(format!("it does not end in a plain name inside {}", root.display()));
    };
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return refuse("it contains \"..\"".into());
    }
    let real_root = root.canonicalize()?;
    if real_root != root {
        return refuse(format!("{} now resolves to {}", root.display(), real_root.display()));
    }
    let parent = match path.parent().map(Path::canonicalize) {
        Some(Ok(p)) => p,
        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Some(Err(e)) => return Err(e),
        None => return refuse("it has no parent directory".into()),
    };
    if !parent.starts_with(&real_root) {
        return refuse(format!("it lies outside {}", root.display()));
    }
    let target = parent.join(name);
    if target == real_root {
        return refuse("it is the tier directory itself".into());
    }
    match std::fs::symlink_metadata(&target) {
        Ok(_) => Ok(Some(target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `path` (a file, a symbolic link or a directory tree) when it
/// lies inside the directory `root` ([`resolve_inside`], checked just
/// before the unlink), and refuses with an error otherwise; `Ok(false)`
/// when there is nothing to remove. A symbolic link is removed itself,
/// never followed, and a directory tree is removed without following the
/// links inside it.
pub fn remove_inside(root: &Path, path: &Path) -> io::Result<bool> {
    let Some(target) = resolve_inside(root, path)? else {
        return Ok(false);
    };
    // `remove_dir_all` does not follow symbolic links, at the top or inside.
    if std::fs::symlink_metadata(&target)?.is_dir() {
        std::fs::remove_dir_all(&target)?;
    } else {
        std::fs::remove_file(&target)?;
    }
    Ok(true)
}

/// Opens `path` for writing without following a symlink in its place,
/// created 0600 if missing (an existing file keeps its mode: see
/// [`make_private`]).
pub fn open_private(path: &Path, truncate: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(truncate)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Sets an open file to mode 0600 (one an older tierd left more open).
pub fn make_private(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// Creates the directory `path` (and missing parents) with permission
/// `mode`; a directory this call creates gets exactly `mode`, whatever the
/// umask. An existing directory is left as it is.
pub fn create_dir_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The real user id of this process.
pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses() {
        let t = "MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n";
        assert_eq!(parse_kb_field(t, "MemAvailable"), Some(1_024_000));
        assert_eq!(parse_kb_field(t, "Mem"), None);
        assert!(meminfo("MemAvailable").is_ok_and(|b| b > 0));
        let m = MemInfo::read().expect("meminfo");
        assert!(m.total >= m.available && m.available > 0, "{m:?}");
    }

    #[test]
    fn residency_of_a_small_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).expect("write");
        let (res, len) = file_resident_fraction(&p).expect("mincore");
        assert_eq!(len, 1 << 20);
        assert!(res <= len);
        assert!(statvfs_available(dir.path()).expect("statvfs") > 0);
    }

    #[test]
    fn removals_never_leave_the_root() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("tier");
        let outside = d.path().join("victimdir");
        std::fs::create_dir_all(root.join("m/sub")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), b"keep").expect("write");
        let root = root.canonicalize().expect("canonical");
        // A `..` name, and a path through a link that leads outside.
        assert!(remove_inside(&root, &root.join("../victimdir")).is_err());
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        assert!(remove_inside(&root, &root.join("link/keep")).is_err());
        assert!(remove_inside(&root, &root).is_err(), "not the root itself");
        // A link inside is removed itself; what it points at stays.
        std::os::unix::fs::symlink(&outside, root.join("m/sub/out")).expect("symlink");
        assert!(remove_inside(&root, &root.join("link")).expect("link removed"));
        assert!(remove_inside(&root, &root.join("m")).expect("tree removed"));
        assert!(!root.join("m").exists() && !root.join("link").exists());
        assert_eq!(std::fs::read(outside.join("keep")).expect("kept"), b"keep");
        assert!(!remove_inside(&root, &root.join("m")).expect("nothing left"));
    }

    #[test]
    fn a_root_swapped_for_a_link_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("tier");
        std::fs::create_dir_all(&root).expect("mkdir");
        let root = root.canonicalize().expect("canonical");
        let victim = d.path().join("victim");
        std::fs::create_dir_all(victim.join("m")).expect("mkdir");
        std::fs::write(victim.join("m/w"), b"w").expect("write");
        std::fs::rename(&root, d.path().join("tier.old")).expect("mv");
        std::os::unix::fs::symlink(&victim, &root).expect("symlink");
        let err = remove_inside(&root, &root.join("m")).expect_err("refused");
        assert!(err.to_string().contains("now resolves to"), "{err}");
        assert!(victim.join("m/w").exists());
    }

    #[test]
    fn directories_get_their_mode_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("a/b");
        create_dir_mode(&p, 0o750).expect("mkdir");
        assert_eq!(std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777, 0o750);
        let q = d.path().join("c");
        create_dir_mode(&q, 0o700).expect("mkdir");
        assert_eq!(std::fs::metadata(&q).expect("stat").permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_lock_range_outside_the_mapping_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![1u8; 8192]).expect("write");
        let f = File::open(&p).expect("open");
        // SAFETY: a read-only mapping of a file this test owns.
        let map = unsafe { Mmap::map(&f) }.expect("map");
        assert!(lock_range(&map, 4096, 8192).is_err());
        assert!(lock_range(&map, usize::MAX, 2).is_err());
        assert!(lock_range(&map, 0, 0).is_ok());
    }
}
