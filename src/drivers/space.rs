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
        let mut b = self.books();
        let fresh = b.reading.as_ref().is_some_and(|r| r.at.elapsed() < STATVFS_MAX_AGE);
        if !fresh {
            let written = b.writing.values().map(Writing::written_at_least).sum();
            let available = sys::statvfs_available(dir).map_err(|e| format!("{}: {e}", dir.display()));
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
        let before = sb.free(&b).expect("free");
        let shared = MoveShared::new(2 << 30);
        sa.start(1, 7, 1 << 30, shared.clone());
        let during = sb.free(&b).expect("free");
        // Nothing is written yet: the whole copy is still to come (other
        // writers on the machine may move the figure a little).
        assert!(during + (1 << 30) <= before + (64 << 20), "before {before}, during {during}");
        // Bytes written so far are in statvfs already: not counted twice.
        shared.add(1 << 29);
        sb.invalidate();
        let later = sb.free(&b).expect("free");
        assert!(later + (1 << 30) <= before + (64 << 20) + (1 << 28), "{later}");
        sa.end(1, 7);
        let after = sb.free(&b).expect("free");
        assert!(after + (64 << 20) >= before && after > during, "after {after}, before {before}");
        sb.freeing(1 << 20);
        assert!(sb.free(&b).expect("free") >= after + (1 << 20) - (64 << 20));
        sb.freed(1 << 20);
    }
}
