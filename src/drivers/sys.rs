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

/// Opens `path` for reading without ever blocking (a FIFO put in place of
/// a model file would block a plain `open` forever) and only if it is a
/// regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
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
