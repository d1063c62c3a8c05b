//! Pinning a model's files in the page cache: each file mapped, advised
//! sequential and locked (`mlock`) in pieces, so progress, cancel and a rate
//! cap work between pieces; where locking is refused the pages are
//! populated unlocked and the [`Pin`] says why.

use std::path::PathBuf;

use memmap2::{Advice as MapAdvice, Mmap};

use super::sys::{self, Advice};
use super::work::{MoveShared, Throttle, WorkError, open_source};

/// Chunk of a mapping locked at a time (progress and cancel granularity).
pub const PIN_CHUNK: usize = 64 << 20;

/// One file held in memory by a pin.
#[derive(Debug)]
struct PinnedFile {
    /// Kept alive for the lock: unmapping unlocks.
    map: Mmap,
    path: PathBuf,
}

/// A model's files held in the page cache: mapped, and locked where the
/// system allows it.
#[derive(Debug)]
pub struct Pin {
    files: Vec<PinnedFile>,
    /// Whether every page is locked (`mlock`); false = populated only.
    pub locked: bool,
    /// Why locking was not possible, when it was not.
    pub lock_error: Option<String>,
    pub bytes: u64,
}

impl Pin {
    /// Unlocks and unmaps the files, then drops their pages from the page
    /// cache (pages other processes still map stay).
    pub fn release(self) {
        let paths: Vec<PathBuf> = self.files.iter().map(|f| f.path.clone()).collect();
        drop(self.files);
        for p in paths {
            let _ = sys::drop_cache(&p);
        }
    }

    /// [`Pin::release`] on a thread of its own: unmapping a large locked
    /// mapping and dropping its pages takes a while.
    pub fn release_in_background(self) {
        // Where no thread can be started, the closure (and the pin in it)
        // is dropped here: the files are unmapped at once, only their pages
        // stay cached.
        if let Err(e) = std::thread::Builder::new().name("tierd-unpin".into()).spawn(move || self.release()) {
            tracing::warn!(error = %e, "cannot start a thread to release a pin; unmapped in place");
        }
    }

    /// Measured resident bytes of the pinned mappings.
    pub fn resident_bytes(&self) -> u64 {
        let page = sys::page_size() as u64;
        self.files
            .iter()
            .map(|f| {
                sys::resident_pages(&f.map)
                    .map(|(r, _)| (r as u64 * page).min(f.map.len() as u64))
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// Pins `paths` (the expected sizes beside them) in memory: maps each file,
/// marks the mapping sequential and locks it in [`PIN_CHUNK`] pieces (so
/// progress, cancel and a bandwidth cap work between pieces). Where `mlock`
/// is refused (RLIMIT_MEMLOCK), falls back to populating the pages without
/// locking and says why in the returned [`Pin`].
///
/// Locking a sequential mapping lets the kernel's readahead fetch the file
/// in large requests while the pages are mapped and pinned in the same pass.
/// On a 1 GiB file with a cold cache this is as fast as `cat` (`tierd
/// bench-real`); reading the file with `read` on a helper thread and locking
/// behind it was up to 2x slower on the same disk.
pub fn pin_files(paths: &[(PathBuf, u64)], shared: &MoveShared, bandwidth_mb_s: Option<f64>) -> Result<Pin, WorkError> {
    let throttle = Throttle::new(bandwidth_mb_s);
    let mut pin = Pin {
        files: Vec::with_capacity(paths.len()),
        locked: true,
        lock_error: None,
        bytes: 0,
    };
    let mut done = 0u64;
    // Under a bandwidth cap, pieces of about a tenth of a second keep the
    // rate smooth; otherwise large pieces keep the kernel's readahead busy.
    let page = sys::page_size();
    let chunk = match bandwidth_mb_s {
        Some(mb) if mb > 0.0 => ((mb * 1e6 / 10.0) as usize).clamp(1 << 20, PIN_CHUNK) / page * page,
        _ => PIN_CHUNK,
    };
    for (path, expected) in paths {
        // A regular file on a disk, of the registered size (never a FIFO to
        // block on, nor a /proc file that only looks like one).
        let file = open_source(path, *expected)?;
        let len = *expected;
        if len == 0 {
            continue;
        }
        let changed = || -> Result<(), WorkError> {
            let now = file.metadata().map_err(|e| WorkError::io("cannot stat", path, &e))?.len();
            if now != len {
                return Err(WorkError::failed(format!("{} changed size while being pinned", path.display())));
            }
            Ok(())
        };
        // SAFETY: a read-only shared mapping of a regular file. We never form
        // Rust references into it: it is only handed to mlock/madvise/mincore
        // as an address range, so a concurrent change of the file cannot
        // break Rust's aliasing rules.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WorkError::io("cannot map", path, &e))?;
        let _ = sys::fadvise(&file, 0, 0, Advice::Sequential);
        let map_len = map.len();
        let _ = map.advise(MapAdvice::Sequential);
        let mut at = 0usize;
        while at < map_len {
            if shared.cancelled() {
                return Err(WorkError::Cancelled);
            }
            let n = chunk.min(map_len - at);
            if pin.locked
                && let Err(e) = sys::lock_range(&map, at, n)
            {
                // A file cut short under us faults past its end: that is
                // not a lock limit.
                changed()?;
                pin.locked = false;
                pin.lock_error = Some(format!(
                    "mlock refused ({e}); pages populated without locking (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)"
                ));
            }
            if !pin.locked {
                // Read the pages in and map them (kernels before 5.14 lack
                // POPULATE_READ; WILLNEED at least starts the reads).
                if map.advise_range(MapAdvice::PopulateRead, at, n).is_err() {
                    changed()?;
                    let _ = map.advise_range(MapAdvice::WillNeed, at, n);
                }
            }
            at += n;
            done += n as u64;
            shared.add(n as u64);
            throttle.wait(done, shared)?;
        }
        // Back to normal advice: sequential mappings are reclaimed first,
        // which matters for pages that are populated but not locked.
        let _ = map.advise(MapAdvice::Normal);
        // A file that shrank under us leaves pages past its end: refuse.
        changed()?;
        pin.bytes += len;
        pin.files.push(PinnedFile { map, path: path.clone() });
    }
    Ok(pin)
}
