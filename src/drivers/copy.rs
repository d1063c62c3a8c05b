//! Copying a model into a `dir` tier: each file streamed through blake3
//! into a partial directory, written back and fsynced, read back and
//! compared, then the directory renamed into place atomically and the tier
//! directory fsynced. A failed or cancelled copy removes its partial
//! directory and touches nothing else.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::files::PARTIAL_SUFFIX;
use super::sys::{self, Advice};
use super::work::{MoveShared, Throttle, WorkError};

/// Copy buffer size.
const COPY_BUF: usize = 1 << 20;
/// Copy blocks whose writeback may be in flight before the copy waits.
const WRITEBACK_LAG: usize = 32;

/// One file to copy: where it is read, where it goes (relative to the
/// model's directory in the tier) and, when known, its checksum.
#[derive(Debug, Clone)]
pub struct CopyFile {
    pub src: PathBuf,
    pub rel: PathBuf,
    pub size: u64,
    pub expected: Option<String>,
}

/// Where a model's copy goes in a `dir` tier.
pub fn copy_dir(tier_dir: &Path, model: &str) -> PathBuf {
    tier_dir.join(model)
}

/// The temporary name a copy is built under before its rename.
pub fn partial_dir(tier_dir: &Path, model: &str) -> PathBuf {
    tier_dir.join(format!("{model}{PARTIAL_SUFFIX}"))
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
    shared: &MoveShared,
    bandwidth_mb_s: Option<f64>,
) -> Result<Vec<String>, WorkError> {
    let partial = partial_dir(tier_dir, model);
    let result = copy_into(tier_dir, model, &partial, files, shared, bandwidth_mb_s);
    if result.is_err() {
        if let Err(e) = sys::remove_inside(tier_dir, &partial) {
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
    shared: &MoveShared,
    bandwidth_mb_s: Option<f64>,
) -> Result<Vec<String>, WorkError> {
    let io_err = |what: &str, p: &Path| {
        let p = p.to_path_buf();
        let what = what.to_string();
        move |e: io::Error| WorkError::io(&what, &p, &e)
    };
    sys::remove_inside(tier_dir, partial).map_err(io_err("cannot remove stale", partial))?;
    // The copy's directories take the tier directory's mode.
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tier_dir)
            .map_err(io_err("cannot stat", tier_dir))?
            .permissions()
            .mode()
            & 0o777
    };
    sys::create_dir_mode(partial, mode).map_err(io_err("cannot create", partial))?;
    let throttle = Throttle::new(bandwidth_mb_s);
    let mut hashes = Vec::with_capacity(files.len());
    let mut done = 0u64;
    let mut dirs = vec![partial.to_path_buf()];
    for f in files {
        let dst = partial.join(&f.rel);
        if let Some(parent) = dst.parent()
            && !dirs.iter().any(|d| d == parent)
        {
            sys::create_dir_mode(parent, mode).map_err(io_err("cannot create", parent))?;
            dirs.push(parent.to_path_buf());
        }
        let hash = copy_file(f, &dst, shared, &throttle, &mut done)?;
        hashes.push(hash);
    }
    for d in dirs.iter().rev() {
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
    let src = File::open(&f.src).map_err(io_err("cannot open source", &f.src))?;
    let _ = sys::fadvise(&src, 0, 0, Advice::Sequential);
    let mut out = File::create(dst).map_err(io_err("cannot create", dst))?;
    let back = File::open(dst).map_err(io_err("cannot reopen", dst))?;
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
        let copied = read_pipelined(&src, shared, &f.src, |block| {
            if shared.cancelled() {
                return Err(WorkError::Cancelled);
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
            if copied != f.size {
                return Err(WorkError::failed(format!(
                    "{} changed size during the copy: read {copied} bytes, expected {}",
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
/// read. Stops early on cancel or the first error.
fn read_pipelined(
    src: &File,
    shared: &MoveShared,
    path: &Path,
    mut consume: impl FnMut(&[u8]) -> Result<(), WorkError>,
) -> Result<(Option<String>, u64), WorkError> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(3);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = s.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            loop {
                if shared.cancelled() {
                    return None;
                }
                let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; COPY_BUF]);
                match read_full(src, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        if tx.send(Ok((buf, n))).is_err() {
                            return None;
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
    let f = File::open(path)?;
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
