//! Thin, safe wrappers over the Linux calls the real backend needs: page
//! cache advice, residency (`mincore`), memory locking, `statvfs`,
//! `/proc/meminfo` and directory fsync.
//!
//! Every `unsafe` block in the real backend lives here or next to the mapping
//! it concerns, with its `SAFETY:` argument.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The system page size in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a constant of the running system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
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
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
        Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
        Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
    };
    // SAFETY: the descriptor is open for the lifetime of `file`; the call
    // reads no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t, a) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Drops the page cache of the file at `path` (its clean pages).
pub fn drop_cache(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    fadvise(&f, 0, 0, Advice::DontNeed)
}

/// How many of the pages of the region `[ptr, ptr+len)` are resident.
///
/// # Safety contract
/// `ptr` must be the page-aligned start of a live mapping of at least `len`
/// bytes (callers pass a `memmap2::Mmap`'s pointer and length).
pub fn resident_pages(ptr: *const u8, len: usize) -> io::Result<(usize, usize)> {
    if len == 0 {
        return Ok((0, 0));
    }
    let page = page_size();
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: per the contract, `ptr..ptr+len` is a live page-aligned mapping;
    // `vec` holds one byte per page of it, as mincore requires.
    let rc = unsafe { libc::mincore(ptr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((vec.iter().filter(|b| **b & 1 == 1).count(), pages))
}

/// Fraction of the file at `path` that is in the page cache (1.0 for an
/// empty file). Maps the file without touching its pages.
pub fn file_resident_fraction(path: &Path) -> io::Result<(u64, u64)> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: a read-only shared mapping; we never read through it (mincore
    // only inspects page tables), so concurrent truncation cannot fault us.
    let map = unsafe { memmap2::Mmap::map(&f)? };
    let (res, _pages) = resident_pages(map.as_ptr(), map.len())?;
    let page = page_size() as u64;
    Ok(((res as u64 * page).min(len), len))
}

/// `mlock` of a region of a mapping.
pub fn mlock(ptr: *const u8, len: usize) -> io::Result<()> {
    // SAFETY: mlock only changes the locking of the address range; callers
    // pass a range inside a live mapping they own. An invalid range makes the
    // call fail with ENOMEM rather than touch memory.
    let rc = unsafe { libc::mlock(ptr as *const libc::c_void, len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `madvise` of a region of a mapping (`MADV_WILLNEED`, `MADV_POPULATE_READ`).
pub fn madvise(ptr: *const u8, len: usize, advice: i32) -> io::Result<()> {
    // SAFETY: the advice values used here (WILLNEED, POPULATE_READ) never
    // change the contents of the mapping; callers pass a range inside a live
    // mapping they own.
    let rc = unsafe { libc::madvise(ptr as *mut libc::c_void, len, advice) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
pub fn statvfs_available(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path; `st` is a properly sized,
    // writable statvfs buffer that the call fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the structure.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// One field of `/proc/meminfo`, in bytes.
pub fn meminfo(field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo(&text, field).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{field} not in /proc/meminfo")))
}

fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// One `kB` field of `/proc/self/status` (`VmLck`), in bytes.
pub fn self_status(field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    parse_meminfo(&text, field).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{field} not in /proc/self/status")))
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
    // SAFETY: the descriptor is open for the lifetime of `file`; the call
    // reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `fsync` of a directory, making renames and removals in it durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses() {
        let t = "MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n";
        assert_eq!(parse_meminfo(t, "MemAvailable"), Some(1_024_000));
        assert_eq!(parse_meminfo(t, "Mem"), None);
        assert!(meminfo("MemAvailable").is_ok_and(|b| b > 0));
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
}
