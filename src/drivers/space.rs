//! Free space of the filesystem under `dir` tiers, net of the copies
//! already running into it.
//!
//! `statvfs` only shows the bytes a running copy has written so far; the
//! rest of it is still to come. A `dir` tier therefore reports as free
//! ([`Capacity::Free`](super::Capacity::Free)) the filesystem's available
//! bytes, less what its running copies have still to write, plus what the
//! old copies being deleted in the background will give back. The books
//! are kept per filesystem (`st_dev`) and shared by all `dir` tiers of one
//! machine on it ([`FsSpaces`]), so a copy into one tier also counts
//! against another tier on the same filesystem.
//!
//! A reading is cached for at most [`STATVFS_MAX_AGE`] and dropped whenever
//! the set of running copies changes; the bytes a copy has written are
//! sampled before `statvfs`, the bytes being deleted after it, so a race
//! between them can only make the figure smaller than the truth, never larger.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::JobKey;
use super::sys;
use super::work::MoveShared;

/// Longest a `statvfs` reading is used for before it is read again.
pub const STATVFS_MAX_AGE: Duration = Duration::from_millis(200);

/// The books of every filesystem that `dir` tiers of one machine use.
#[derive(Debug, Default)]
pub struct FsSpaces(Mutex<HashMap<u64, Arc<FsSpace>>>);

impl FsSpaces {
    /// The books of the filesystem holding `dir` (shared with every other
    /// tier on the same filesystem).
    pub fn for_dir(&self, dir: &Path) -> Result<Arc<FsSpace>, String> {
        let dev = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?.dev();
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map.entry(dev).or_default().clone())
    }
}

/// One copy writing into the filesystem.
#[derive(Debug)]
struct Writing {
    /// Bytes the copy writes in all.
    bytes: u64,
    /// Its progress: written plus verified bytes (verified never exceeds
    /// written, so half of it is a lower bound of what is written).
    shared: Arc<MoveShared>,
}

impl Writing {
    fn written_at_least(&self) -> u64 {
        (self.shared.done.load(Ordering::Relaxed) / 2).min(self.bytes)
    }
}

#[derive(Debug)]
struct Reading {
    at: Instant,
    /// `statvfs` available bytes, or why they could not be read.
    available: Result<u64, String>,
    /// Bytes the running copies had written (at least) before it was read.
    written: u64,
    /// Bytes of old copies still being deleted when it had been read.
    freeing: u64,
}

#[derive(Debug, Default)]
struct Books {
    writing: HashMap<(usize, JobKey), Writing>,
    /// Bytes of old copies being deleted in the background.
    freeing: u64,
    reading: Option<Reading>,
}

/// The books of one filesystem. See the module docs.
#[derive(Debug, Default)]
pub struct FsSpace(Mutex<Books>);

impl FsSpace {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes a new copy can take on this filesystem: available bytes (read
    /// through `dir`) less what the running copies have still to write,
    /// plus what deletions under way give back.
    pub fn free(&self, dir: &Path) -> Result<u64, String> {
        self.free_by(|| sys::statvfs_available(dir).map_err(|e| format!("{}: {e}", dir.display())))
    }

    /// As [`FsSpace::free`], with the available bytes read by `statvfs`.
    fn free_by(&self, statvfs: impl FnOnce() -> Result<u64, String>) -> Result<u64, String> {
        let mut b = self.books();
        let fresh = b.reading.as_ref().is_some_and(|r| r.at.elapsed() < STATVFS_MAX_AGE);
        if !fresh {
            let written = b.writing.values().map(Writing::written_at_least).sum();
            let available = statvfs();
            b.reading = Some(Reading {
                at: Instant::now(),
                available,
                written,
                freeing: b.freeing,
            });
        }
        let to_write: u64 = b.writing.values().map(|w| w.bytes).sum();
        let r = b.reading.as_ref().ok_or_else(|| "no statvfs reading".to_string())?;
        let available = r.available.clone()?;
        Ok(available
            .saturating_add(r.written)
            .saturating_add(r.freeing)
            .saturating_sub(to_write))
    }

    /// The filesystem's available bytes as last read (for `tier_status`).
    pub fn available(&self, dir: &Path) -> Result<u64, String> {
        self.free(dir)?;
        self.books()
            .reading
            .as_ref()
            .map(|r| r.available.clone())
            .unwrap_or_else(|| Err("no statvfs reading".into()))
    }

    /// A copy of `bytes` into tier `tier` started, progressing in `shared`.
    pub fn start(&self, tier: usize, job: JobKey, bytes: u64, shared: Arc<MoveShared>) {
        let mut b = self.books();
        b.writing.insert((tier, job), Writing { bytes, shared });
        b.reading = None;
    }

    /// The copy of `job` into `tier` ended (its bytes are on disk or gone).
    pub fn end(&self, tier: usize, job: JobKey) {
        let mut b = self.books();
        b.writing.remove(&(tier, job));
        b.reading = None;
    }

    /// `bytes` of an old copy are being deleted; call [`FsSpace::freed`]
    /// with the same figure when the deletion ended.
    pub fn freeing(&self, bytes: u64) {
        let mut b = self.books();
        b.freeing = b.freeing.saturating_add(bytes);
        b.reading = None;
    }

    /// A deletion announced with [`FsSpace::freeing`] ended.
    pub fn freed(&self, bytes: u64) {
        let mut b = self.books();
        b.freeing = b.freeing.saturating_sub(bytes);
        b.reading = None;
    }

    /// Forgets the last reading (something changed on disk).
    pub fn invalidate(&self) {
        self.books().reading = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_copies_count_against_every_tier_of_their_filesystem() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        let spaces = FsSpaces::default();
        let (sa, sb) = (spaces.for_dir(&a).expect("a"), spaces.for_dir(&b).expect("b"));
        assert!(Arc::ptr_eq(&sa, &sb), "one filesystem, one book");
        assert!(sb.free(&b).expect("statvfs") > 0);
        const G: u64 = 1 << 30;
        // The filesystem as statvfs shows it: 3 GiB available.
        let disk = std::cell::Cell::new(3 * G);
        let free = || {
            sb.invalidate();
            sb.free_by(|| Ok(disk.get())).expect("free")
        };
        assert_eq!(free(), 3 * G);
        let shared = MoveShared::new(2 * G);
        sa.start(1, 7, G, shared.clone());
        assert_eq!(free(), 2 * G, "nothing written yet: the whole copy is to come");
        // Half written (and a quarter verified): statvfs shows the half.
        shared.add(G / 2 + G / 4);
        disk.set(3 * G - G / 2);
        assert!(free() <= 2 * G, "what is written is not counted twice");
        shared.add(G / 2 + 3 * G / 4);
        disk.set(2 * G);
        assert_eq!(free(), 2 * G);
        sa.end(1, 7);
        assert_eq!(free(), 2 * G);
        // An old copy of 1 GiB being deleted gives its bytes back.
        sb.freeing(G);
        assert_eq!(free(), 3 * G);
        disk.set(3 * G);
        sb.freed(G);
        assert_eq!(free(), 3 * G);
        // A cached reading is used while fresh, and dropped when a copy starts.
        sb.free_by(|| Ok(disk.get())).expect("free");
        disk.set(0);
        assert_eq!(sb.free_by(|| Ok(disk.get())).expect("cached"), 3 * G);
        sb.start(2, 8, G, MoveShared::new(2 * G));
        assert_eq!(sb.free_by(|| Ok(disk.get())).expect("read again"), 0);
    }
}
