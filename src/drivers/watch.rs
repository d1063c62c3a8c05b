//! Faults noticed while running: a cheap look (one `stat` per file: size
//! and modification time) at every origin and every `dir` copy that serves
//! a model, on a thread of its own so the engine's lock only hands it the
//! list and takes back what changed.
//!
//! A round starts at most every [`WATCH_EVERY`] of wall time, and only once
//! the last round came back ([`Watcher::due`]), so each file is looked at
//! at most once a second, whatever the number of models.
//! A round answers only the models with something to say ([`Look::is_news`]):
//! an origin gone or rewritten, a copy changed, deleted or with its tier
//! directory gone, stamps not recorded yet (a state file of an older
//! tierd), or a model marked unavailable whose files are back. What to make
//! of it is the engine's decision (`Engine::apply_look`).
//!
//! What a `stat` cannot see (a flipped byte whose writer restored the
//! modification time, bit rot) is caught by the checksums when the copy is
//! read for a move out of its tier ([`super::dir`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use super::files::{CORRUPT_MTIME, ModelFiles, mtime_ns};

/// Shortest wall time between the starts of two rounds of looks.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// One model for the watcher to look at, as the engine places it now.
#[derive(Debug, Clone)]
pub struct WatchItem {
    pub model: Arc<str>,
    /// The tier serving it.
    pub tier: usize,
    /// Its files with their recorded stamps (the engine's `Arc`: a look at
    /// files the engine has replaced since is stale).
    pub files: Arc<ModelFiles>,
    /// The directory of the copy its tier serves it from, where that tier
    /// serves a copy of its own.
    pub copy: Option<PathBuf>,
    /// The engine has the model as unavailable (so files back in order are news).
    pub unavailable: bool,
}

/// A file's size and modification time, as a `stat` read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
}

/// What the origin looks like next to what was recorded of it.
#[derive(Debug, Clone, PartialEq)]
pub enum OriginLook {
    /// Every file there, with its recorded size and modification time.
    Intact,
    /// Every file there with its recorded size, and some modification
    /// times were never recorded (a model of an older state file): these
    /// are the stamps to record, one per file.
    Unrecorded(Vec<Stamp>),
    /// A file (or the whole origin) is gone or unreadable.
    Gone(String),
    /// Every file is there, and some changed size or modification time:
    /// the origin was rewritten. The new stamps, one per file.
    Changed { stamps: Vec<Stamp>, reason: String },
}

/// What a model's serving `dir` copy looks like.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyLook {
    Intact,
    /// Every file of the right size; the copy's modification times were
    /// never recorded (an older state file): these are, one per file.
    Unrecorded(Vec<i64>),
    /// A file is missing, of another size or modified since the copy was
    /// made; or the copy or its whole tier directory is gone.
    Damaged(String),
}

/// One model's look.
#[derive(Debug, Clone)]
pub struct Look {
    pub item: WatchItem,
    pub origin: OriginLook,
    /// `None` when no copy of its own serves the model.
    pub copy: Option<CopyLook>,
}

impl Look {
    /// Whether the engine has anything to do about it.
    pub fn is_news(&self) -> bool {
        self.item.unavailable || self.origin != OriginLook::Intact || !matches!(self.copy, None | Some(CopyLook::Intact))
    }
}

/// Looks at the origin of `files`: one `stat` per file, following links
/// (an origin's files may be links to the weights).
pub fn look_origin(files: &ModelFiles) -> OriginLook {
    let mut stamps = Vec::with_capacity(files.files.len());
    let (mut changed, mut unrecorded) = (None, false);
    for f in &files.files {
        let p = files.origin_file(f);
        let m = match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return OriginLook::Gone(format!("origin file {} is no longer a regular file", p.display())),
            Err(e) => return OriginLook::Gone(format!("origin file {} is gone ({e})", p.display())),
        };
        let s = Stamp {
            size: m.len(),
            mtime_ns: mtime_ns(&m),
        };
        if changed.is_none() {
            if s.size != f.size {
                changed = Some(format!(
                    "origin file {} changed size ({} bytes, registered with {})",
                    p.display(),
                    s.size,
                    f.size
                ));
            } else if f.mtime_ns.is_some_and(|t| t != s.mtime_ns) {
                changed = Some(format!("origin file {} was rewritten (its modification time changed)", p.display()));
            }
        }
        unrecorded |= f.mtime_ns.is_none();
        stamps.push(s);
    }
    match changed {
        Some(reason) => OriginLook::Changed { stamps, reason },
        None if unrecorded => OriginLook::Unrecorded(stamps),
        None => OriginLook::Intact,
    }
}

/// Looks at the copy of `files` in directory `copy` (inside the tier
/// directory `copy`'s parent). Links are not followed: tierd's copies are
/// regular files.
pub fn look_copy(files: &ModelFiles, copy: &Path) -> CopyLook {
    let mut mtimes = Vec::with_capacity(files.files.len());
    let mut unrecorded = false;
    for f in &files.files {
        let p = copy.join(&f.rel);
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return CopyLook::Damaged(format!("copy file {} is no longer a regular file", p.display())),
            Err(e) => return CopyLook::Damaged(missing(copy, &p, &e)),
        };
        if m.len() != f.size {
            return CopyLook::Damaged(format!("copy file {} has {} bytes, expected {}", p.display(), m.len(), f.size));
        }
        let t = mtime_ns(&m);
        if f.copy_mtime_ns == Some(CORRUPT_MTIME) {
            return CopyLook::Damaged(format!("copy {} was found corrupt", copy.display()));
        }
        if f.copy_mtime_ns.is_some_and(|r| r != t) {
            return CopyLook::Damaged(format!(
                "copy file {} was modified after the copy was made (its modification time changed)",
                p.display()
            ));
        }
        unrecorded |= f.copy_mtime_ns.is_none();
        mtimes.push(t);
    }
    if unrecorded {
        CopyLook::Unrecorded(mtimes)
    } else {
        CopyLook::Intact
    }
}

/// Why a copy file cannot be read: the file, the copy or the whole tier
/// directory is gone.
fn missing(copy: &Path, p: &Path, e: &std::io::Error) -> String {
    if let Some(root) = copy.parent()
        && !root.exists()
    {
        return format!("tier directory {} is gone", root.display());
    }
    if !copy.exists() {
        return format!("copy {} is gone", copy.display());
    }
    format!("copy file {} is missing ({e})", p.display())
}

/// Looks at one model.
pub fn look(item: WatchItem) -> Look {
    let origin = look_origin(&item.files);
    let copy = item.copy.as_deref().map(|c| look_copy(&item.files, c));
    Look { item, origin, copy }
}

/// The watcher's thread, as the engine holds it.
#[derive(Debug)]
pub struct Watcher {
    tx: Sender<Vec<WatchItem>>,
    rx: Receiver<Vec<Look>>,
    /// A round was handed out and has not come back.
    busy: bool,
    /// When the last round started.
    started: Instant,
    dead: bool,
}

impl Watcher {
    /// Starts the watcher's thread; `None` (with a log line) if it cannot.
    pub fn spawn() -> Option<Watcher> {
        let (tx, work) = channel::<Vec<WatchItem>>();
        let (done, rx) = channel::<Vec<Look>>();
        let spawned = std::thread::Builder::new().name("tierd-watch".into()).spawn(move || {
            // Ends when the engine (and with it the sender) goes.
            while let Ok(items) = work.recv() {
                let news: Vec<Look> = items.into_iter().map(look).filter(Look::is_news).collect();
                if done.send(news).is_err() {
                    return;
                }
            }
        });
        match spawned {
            // The first round comes a while after the start.
            Ok(_) => Some(Watcher {
                tx,
                rx,
                busy: false,
                started: Instant::now(),
                dead: false,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the file watcher; faults are noticed at the next start only");
                None
            }
        }
    }

    /// Whether no round is out (the last one came back).
    pub fn idle(&self) -> bool {
        !self.busy && !self.dead
    }

    /// Whether the next round is due: the last one came back and started
    /// at least [`WATCH_EVERY`] ago.
    pub fn due(&self) -> bool {
        self.idle() && self.started.elapsed() >= WATCH_EVERY
    }

    /// Hands out a round of looks.
    pub fn start(&mut self, items: Vec<WatchItem>) {
        self.started = Instant::now();
        if self.tx.send(items).is_ok() {
            self.busy = true;
        } else {
            self.gone();
        }
    }

    /// The news of the last round, once it came back.
    pub fn results(&mut self) -> Option<Vec<Look>> {
        if !self.busy {
            return None;
        }
        match self.rx.try_recv() {
            Ok(news) => {
                self.busy = false;
                Some(news)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.gone();
                None
            }
        }
    }

    fn gone(&mut self) {
        if !self.dead {
            tracing::warn!("the file watcher stopped; faults are noticed at the next start only");
        }
        self.dead = true;
        self.busy = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::files::DEFAULT_MAX_FILES;

    fn write(p: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    fn set_mtime(p: &Path, secs: u64) {
        let f = std::fs::OpenOptions::new().write(true).open(p).expect("open");
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .expect("set mtime");
    }

    #[test]
    fn an_origin_is_intact_gone_rewritten_or_unrecorded() {
        let d = tempfile::tempdir().expect("tempdir");
        let o = d.path().join("m.bin");
        write(&o, b"12345678");
        set_mtime(&o, 1_000);
        let files = ModelFiles::walk(&o, DEFAULT_MAX_FILES).expect("walk");
        assert_eq!(files.files[0].mtime_ns, Some(1_000 * 1_000_000_000));
        assert_eq!(look_origin(&files), OriginLook::Intact);

        // Same size, new bytes, new modification time: rewritten.
        write(&o, b"87654321");
        set_mtime(&o, 2_000);
        match look_origin(&files) {
            OriginLook::Changed { stamps, reason } => {
                assert_eq!(
                    stamps,
                    vec![Stamp {
                        size: 8,
                        mtime_ns: 2_000 * 1_000_000_000
                    }]
                );
                assert!(reason.contains("rewritten"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        write(&o, b"123");
        assert!(matches!(look_origin(&files), OriginLook::Changed { reason, .. } if reason.contains("changed size")));

        // An older state file recorded no time: adopted, not a change.
        let mut old = files.clone();
        old.files[0].mtime_ns = None;
        write(&o, b"12345678");
        assert!(matches!(look_origin(&old), OriginLook::Unrecorded(s) if s.len() == 1));

        std::fs::remove_file(&o).expect("rm");
        assert!(matches!(look_origin(&files), OriginLook::Gone(r) if r.contains("is gone")));
    }

    #[test]
    fn a_copy_is_intact_changed_missing_or_without_its_tier() {
        let d = tempfile::tempdir().expect("tempdir");
        let o = d.path().join("origin/m.bin");
        write(&o, b"12345678");
        let tier = d.path().join("tier");
        let copy = tier.join("m");
        write(&copy.join("m.bin"), b"12345678");
        let mut files = ModelFiles::walk(&o, DEFAULT_MAX_FILES).expect("walk");
        match look_copy(&files, &copy) {
            CopyLook::Unrecorded(t) => files.files[0].copy_mtime_ns = Some(t[0]),
            other => panic!("{other:?}"),
        }
        assert_eq!(look_copy(&files, &copy), CopyLook::Intact);
        set_mtime(&copy.join("m.bin"), 5);
        assert!(matches!(look_copy(&files, &copy), CopyLook::Damaged(r) if r.contains("modified")));
        write(&copy.join("m.bin"), b"1234");
        assert!(matches!(look_copy(&files, &copy), CopyLook::Damaged(r) if r.contains("has 4 bytes")));
        std::fs::remove_file(copy.join("m.bin")).expect("rm");
        assert!(matches!(look_copy(&files, &copy), CopyLook::Damaged(r) if r.contains("missing")));
        std::fs::remove_dir_all(&tier).expect("rm -r");
        assert!(matches!(look_copy(&files, &copy), CopyLook::Damaged(r) if r.contains("tier directory")));
    }

    #[test]
    fn a_round_answers_only_the_news() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (d.path().join("a.bin"), d.path().join("b.bin"));
        write(&a, b"a");
        write(&b, b"b");
        let item = |p: &Path, name: &str| WatchItem {
            model: name.into(),
            tier: 0,
            files: Arc::new(ModelFiles::walk(p, DEFAULT_MAX_FILES).expect("walk")),
            copy: None,
            unavailable: false,
        };
        let items = vec![item(&a, "a"), item(&b, "b")];
        std::fs::remove_file(&b).expect("rm");
        let mut w = Watcher::spawn().expect("watcher");
        assert!(w.idle());
        w.start(items);
        assert!(!w.idle());
        let t = std::time::Instant::now();
        let news = loop {
            if let Some(n) = w.results() {
                break n;
            }
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "no answer");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(w.idle());
        assert_eq!(news.len(), 1, "{news:?}");
        assert_eq!(&*news[0].item.model, "b");
        assert!(matches!(news[0].origin, OriginLook::Gone(_)));
    }
}
