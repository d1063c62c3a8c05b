//! Usage learned from real opens: every file tierd serves (each model's
//! origin files and the files of the `dir` copy it is served from; a serve
//! path is a symlink to one of these, so opening it opens a watched file)
//! is watched for `open()`, on a thread of its own. An open by another
//! process counts as an access of its model; opens of one model's files
//! within `open_debounce_s` of its last counted access are the same access
//! (a loader opening four shards is one load). The engine takes the counted
//! accesses at its next tick and records them exactly as `access_model`
//! does, so they feed the same usage statistics and policy.
//!
//! Two kernel mechanisms, chosen by `open_watch` (`auto` tries them in
//! this order):
//! - **fanotify** (`FAN_OPEN` notifications on each file's inode, no
//!   permission events, so no open ever waits on tierd). It needs
//!   `CAP_SYS_ADMIN`. Each event carries the opener's process id: tierd's
//!   own opens (its movers, pinners and checksum reads, on any of its
//!   threads) are left out exactly.
//! - **inotify** (`IN_OPEN`), for everyone else. Its events do not say who
//!   opened the file, so tierd's own opens are left out by bookkeeping:
//!   every open tierd makes of a model file goes through
//!   [`super::sys::open_nonblocking`], which first notes the path here
//!   ([`note_own_open`]); the watcher discards one open event of that path
//!   per note, within [`OWN_OPEN_WINDOW`]. Residual error: a note whose
//!   open produced no event (the open failed, or the file was not watched
//!   yet) discards an open by another process of the same path in the next
//!   [`OWN_OPEN_WINDOW`]; and inotify merges identical events still unread
//!   in its queue, so an open by another process right after one of
//!   tierd's own (before the watcher read the first, microseconds) is
//!   merged into it and discarded with it. With the open debounce, either
//!   costs at most one access.
//!
//! The watch set follows the engine: the engine hands the watcher the list
//! of its models and where each is served from whenever that changes
//! (registration, a committed move, unregistration: at the next tick, at
//! most every [`SYNC_GAP`];
//! files replaced after a fault: within [`SYNC_EVERY`]); the thread adds
//! and removes watches itself,
//! so the engine's lock never waits on the kernel.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::config::OpenWatchMode;

use super::files::{FileId, ModelFiles};

/// How long a note of tierd's own open discards an open event of its path
/// (inotify only). The event follows the open within microseconds; the
/// window only bounds how long a note whose open produced no event lives.
pub const OWN_OPEN_WINDOW: Duration = Duration::from_secs(2);

/// The engine hands over its list at once when its placement changed (its
/// placement epoch moved: a registration, a committed move, a removal),
/// and otherwise this often (files replaced after a fault); a list that
/// did not change is not handed over at all.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Shortest gap between two hand-overs even while the placement keeps
/// changing (each builds the list of every model under the engine's lock).
pub const SYNC_GAP: Duration = Duration::from_millis(50);

/// The longest the watcher's thread sleeps (it wakes at once for an open
/// and for a new watch list; this only bounds the pruning of old notes).
const POLL_MS: i32 = 1000;

/// The mechanism that is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Fanotify,
    Inotify,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Fanotify => "fanotify",
            Mechanism::Inotify => "inotify",
        }
    }
}

/// One model for the watcher, as the engine serves it now.
#[derive(Debug, Clone)]
pub struct OpenItem {
    pub model: Arc<str>,
    pub files: Arc<ModelFiles>,
    /// The directory of the copy its tier serves it from, if any.
    pub copy: Option<PathBuf>,
}

impl OpenItem {
    /// Every path to watch: the origin files, and the copy's files.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.files.files.iter().map(|f| self.files.origin_file(f)).collect();
        if let Some(dir) = &self.copy {
            out.extend(self.files.files.iter().map(|f| dir.join(&f.rel)));
        }
        out
    }
}

/// A counted access, as the watcher hands it to the engine.
#[derive(Debug, Clone)]
pub struct OpenAccess {
    pub model: Arc<str>,
    /// The opener (fanotify only).
    pub pid: Option<u32>,
    /// When the watcher read the open event.
    pub seen: Instant,
}

/// What the watcher reports in `health` (`open_watch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenWatchStatus {
    /// `fanotify`, `inotify`, or `off`.
    pub mechanism: String,
    /// Why this mechanism (and not the other, or none).
    pub reason: String,
    /// Files watched now.
    pub watched_files: usize,
    /// Files that could not be watched in the last hand-over, and the last
    /// error (a file gone, the inotify watch limit).
    pub unwatched_files: usize,
    pub last_error: Option<String>,
    /// Opens by other processes seen, and those counted as accesses (the
    /// rest fell within the debounce of an earlier one). inotify merges
    /// identical open events of one file still unread in its queue, so it
    /// may see fewer opens than were made (never fewer accesses: merged
    /// opens are within microseconds of each other).
    pub opens_seen: u64,
    pub accesses_counted: u64,
    /// tierd's own opens seen and left out.
    pub own_opens_ignored: u64,
    /// Times the kernel's event queue overflowed (opens lost).
    pub overflows: u64,
    pub open_debounce_s: f64,
}

/// Set while an inotify watcher runs: only then are tierd's own opens noted.
static NOTING: AtomicBool = AtomicBool::new(false);

/// tierd's own opens not yet matched with their event: path -> when noted.
fn own_opens() -> &'static Mutex<HashMap<PathBuf, Vec<Instant>>> {
    static OWN: OnceLock<Mutex<HashMap<PathBuf, Vec<Instant>>>> = OnceLock::new();
    OWN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Notes that tierd is about to open `path` (called by every open of a
/// model file tierd makes; a no-op unless an inotify watcher runs).
pub fn note_own_open(path: &Path) {
    if !NOTING.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut own) = own_opens().lock() else { return };
    own.entry(path.to_path_buf()).or_default().push(Instant::now());
}

/// Whether an open event of `path` is tierd's own (and consumes its note).
fn take_own_open(path: &Path, now: Instant) -> bool {
    let Ok(mut own) = own_opens().lock() else { return false };
    let Some(notes) = own.get_mut(path) else { return false };
    notes.retain(|t| now.saturating_duration_since(*t) < OWN_OPEN_WINDOW);
    let mine = !notes.is_empty();
    if mine {
        notes.remove(0);
    }
    if notes.is_empty() {
        own.remove(path);
    }
    mine
}

/// Drops notes too old to match anything (their opens made no event).
fn prune_own_opens(now: Instant) {
    let Ok(mut own) = own_opens().lock() else { return };
    own.retain(|_, notes| {
        notes.retain(|t| now.saturating_duration_since(*t) < OWN_OPEN_WINDOW);
        !notes.is_empty()
    });
}

/// Calls the server back when an access is waiting (so that it ticks the
/// engine at once instead of at its idle pace).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The watcher's thread, as the engine holds it.
pub struct OpenWatcher {
    mechanism: Mechanism,
    items: Sender<Vec<OpenItem>>,
    accesses: Receiver<OpenAccess>,
    status: Arc<Mutex<OpenWatchStatus>>,
    waker: Arc<OnceLock<Waker>>,
    /// Wakes the thread for a new list (and at drop, to end it).
    bell: Arc<Bell>,
    /// The last list handed over, as a fingerprint, and when.
    handed: Option<(u64, Instant)>,
    /// The engine's placement epoch at the last hand-over.
    epoch: Option<u64>,
}

/// An `eventfd` the watcher's thread polls next to the kernel's queue.
struct Bell(std::os::fd::OwnedFd);

impl Bell {
    fn new() -> std::io::Result<Bell> {
        use std::os::fd::FromRawFd;
        // SAFETY: takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by the kernel and is owned by nothing else.
        Ok(Bell(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn ring(&self) {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an open eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an open eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl std::fmt::Debug for OpenWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenWatcher").field("mechanism", &self.mechanism).finish()
    }
}

impl OpenWatcher {
    /// Starts watching with `mode`; an `Err` says why no mechanism could
    /// start (the server runs on without observing opens).
    pub fn spawn(mode: OpenWatchMode, debounce_s: f64) -> Result<OpenWatcher, String> {
        let (kernel, reason) = match mode {
            OpenWatchMode::Fanotify => (
                Kernel::fanotify().map_err(|e| format!("fanotify: {e}"))?,
                "open_watch = \"fanotify\": tierd's own opens are left out by process id".to_string(),
            ),
            OpenWatchMode::Inotify => (
                Kernel::inotify().map_err(|e| format!("inotify: {e}"))?,
                "open_watch = \"inotify\": tierd's own opens are left out by noting them".to_string(),
            ),
            OpenWatchMode::Auto => match Kernel::fanotify() {
                Ok(k) => (k, "permitted (CAP_SYS_ADMIN): tierd's own opens are left out by process id".into()),
                Err(fe) => {
                    let k = Kernel::inotify().map_err(|ie| format!("fanotify: {fe}; inotify: {ie}"))?;
                    (
                        k,
                        format!("fanotify not permitted ({fe}): tierd's own opens are left out by noting them"),
                    )
                }
            },
        };
        let mechanism = kernel.mechanism();
        if mechanism == Mechanism::Inotify {
            // Stays on once any inotify watcher ran (several engines may
            // run in one process, as in tests): off, a note costs one look
            // at an atomic.
            NOTING.store(true, Ordering::Relaxed);
        }
        let debounce = Duration::from_secs_f64(if debounce_s.is_finite() { debounce_s.max(0.0) } else { 0.0 });
        let status = Arc::new(Mutex::new(OpenWatchStatus {
            mechanism: mechanism.as_str().into(),
            reason,
            open_debounce_s: debounce.as_secs_f64(),
            ..OpenWatchStatus::default()
        }));
        let waker: Arc<OnceLock<Waker>> = Arc::new(OnceLock::new());
        let bell = Arc::new(Bell::new().map_err(|e| format!("eventfd: {e}"))?);
        let (items_tx, items_rx) = channel();
        let (acc_tx, acc_rx) = channel();
        let mut run = Run {
            kernel,
            items: items_rx,
            out: acc_tx,
            status: status.clone(),
            waker: waker.clone(),
            bell: bell.clone(),
            debounce,
            models: HashMap::new(),
            by_key: HashMap::new(),
            last_counted: HashMap::new(),
            me: std::process::id(),
        };
        std::thread::Builder::new()
            .name("tierd-opens".into())
            .spawn(move || run.run())
            .map_err(|e| format!("cannot start the open watcher's thread: {e}"))?;
        Ok(OpenWatcher {
            mechanism,
            items: items_tx,
            accesses: acc_rx,
            status,
            waker,
            bell,
            handed: None,
            epoch: None,
        })
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Sets who to wake when an access waits (once; later calls are ignored).
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    /// Whether the engine should hand over its list now: its placement
    /// `epoch` changed since, or [`SYNC_EVERY`] passed.
    pub fn sync_due(&mut self, epoch: u64) -> bool {
        let since = self.handed.map(|(_, at)| at.elapsed());
        let due = match since {
            None => true,
            Some(s) => s >= SYNC_EVERY || (self.epoch != Some(epoch) && s >= SYNC_GAP),
        };
        if due {
            self.epoch = Some(epoch);
        }
        due
    }

    /// Hands over the engine's current list, if it differs from the last.
    pub fn sync(&mut self, items: Vec<OpenItem>) {
        let print = fingerprint(&items);
        if self.handed.is_some_and(|(p, _)| p == print) {
            self.handed = Some((print, Instant::now()));
            return;
        }
        self.handed = Some((print, Instant::now()));
        let _ = self.items.send(items);
        self.bell.ring();
    }

    /// The accesses counted since the last call (at most `max`).
    pub fn take(&mut self, max: usize) -> Vec<OpenAccess> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.accesses.try_recv() {
                Ok(a) => out.push(a),
                Err(_) => break,
            }
        }
        out
    }

    pub fn status(&self) -> OpenWatchStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for OpenWatcher {
    fn drop(&mut self) {
        // The thread sees the list's channel closed and ends, closing its
        // kernel descriptor (and so every watch).
        self.bell.ring();
    }
}

/// A cheap fingerprint of a watch list: the identity of each model's files
/// (the engine replaces the `Arc` when they change) and its copy.
fn fingerprint(items: &[OpenItem]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for i in items {
        i.model.hash(&mut h);
        (Arc::as_ptr(&i.files) as usize).hash(&mut h);
        i.copy.hash(&mut h);
    }
    items.len().hash(&mut h);
    h.finish()
}

/// What one watch is keyed by: fanotify events name the inode, inotify
/// events the watch descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Inode(FileId),
    Wd(inotify::WatchDescriptor),
}

/// One open read from the kernel.
struct Open {
    key: Key,
    pid: Option<u32>,
    /// The watch is gone (its file was deleted; inotify may reuse its
    /// descriptor for another file).
    gone: bool,
}

/// The kernel side.
enum Kernel {
    Fan(std::os::fd::OwnedFd),
    Ino(inotify::Inotify),
}

impl Kernel {
    fn fanotify() -> std::io::Result<Kernel> {
        use std::os::fd::FromRawFd;
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as libc::c_uint;
        // SAFETY: takes no pointers; the result is checked below.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned open by the kernel and is owned
        // by nothing else.
        Ok(Kernel::Fan(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn inotify() -> std::io::Result<Kernel> {
        inotify::Inotify::init().map(Kernel::Ino)
    }

    fn mechanism(&self) -> Mechanism {
        match self {
            Kernel::Fan(_) => Mechanism::Fanotify,
            Kernel::Ino(_) => Mechanism::Inotify,
        }
    }

    fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        match self {
            Kernel::Fan(fd) => fd.as_raw_fd(),
            Kernel::Ino(i) => i.as_raw_fd(),
        }
    }

    /// Starts watching `path`; the key its events will carry.
    fn add(&mut self, path: &Path) -> std::io::Result<Key> {
        match self {
            Kernel::Fan(fd) => {
                let id = FileId::of(path).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
                fan_mark(fd, libc::FAN_MARK_ADD, path)?;
                Ok(Key::Inode(id))
            }
            Kernel::Ino(i) => i.watches().add(path, inotify::WatchMask::OPEN).map(Key::Wd),
        }
    }

    /// Stops watching (an error is fine: the file is gone, and so is its
    /// watch).
    fn remove(&mut self, key: &Key, path: &Path) {
        match (self, key) {
            (Kernel::Fan(fd), _) => {
                let _ = fan_mark(fd, libc::FAN_MARK_REMOVE, path);
            }
            (Kernel::Ino(i), Key::Wd(wd)) => {
                let _ = i.watches().remove(wd.clone());
            }
            (Kernel::Ino(_), Key::Inode(_)) => {}
        }
    }

    /// Reads what the kernel has; `overflow` counts lost events.
    fn read(&mut self, buf: &mut [u8], out: &mut Vec<Open>, overflow: &mut u64) {
        match self {
            Kernel::Fan(fd) => fan_read(fd, buf, out, overflow),
            Kernel::Ino(i) => {
                let Ok(events) = i.read_events(buf) else { return };
                for e in events {
                    if e.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                        *overflow += 1;
                    } else if e.mask.contains(inotify::EventMask::OPEN) || e.mask.contains(inotify::EventMask::IGNORED) {
                        out.push(Open {
                            key: Key::Wd(e.wd.clone()),
                            pid: None,
                            gone: e.mask.contains(inotify::EventMask::IGNORED),
                        });
                    }
                }
            }
        }
    }
}

fn fan_mark(fd: &std::os::fd::OwnedFd, flags: libc::c_uint, path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is an open fanotify descriptor; `c` is a NUL-terminated
    // string that outlives the call.
    let rc = unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, libc::FAN_OPEN, libc::AT_FDCWD, c.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Reads fanotify events: each carries a descriptor of the opened file
/// (identified by `fstat`, then closed) and the opener's pid.
fn fan_read(fd: &std::os::fd::OwnedFd, buf: &mut [u8], out: &mut Vec<Open>, overflow: &mut u64) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let Ok(n) = usize::try_from(n) else { return };
    let size = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut at = 0;
    while at + size <= n {
        // SAFETY: `at + size <= n` bytes were written by the kernel; the
        // read is unaligned-safe.
        let m: libc::fanotify_event_metadata = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
        let len = m.event_len as usize;
        if m.vers != libc::FANOTIFY_METADATA_VERSION || len < size {
            return;
        }
        at += len;
        if m.mask & libc::FAN_Q_OVERFLOW != 0 {
            *overflow += 1;
        }
        if m.fd == libc::FAN_NOFD || m.fd < 0 {
            continue;
        }
        // SAFETY: the kernel opened `m.fd` for us; owning it closes it.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(m.fd) });
        if m.mask & libc::FAN_OPEN == 0 {
            continue;
        }
        if let Ok(meta) = file.metadata() {
            out.push(Open {
                key: Key::Inode(FileId::of_meta(&meta)),
                pid: u32::try_from(m.pid).ok(),
                gone: false,
            });
        }
    }
}

/// The watcher thread's state.
struct Run {
    kernel: Kernel,
    items: Receiver<Vec<OpenItem>>,
    out: Sender<OpenAccess>,
    status: Arc<Mutex<OpenWatchStatus>>,
    waker: Arc<OnceLock<Waker>>,
    bell: Arc<Bell>,
    debounce: Duration,
    /// Per model: what was watched for it (the item's identity) and its
    /// watches.
    models: HashMap<Arc<str>, Watched>,
    /// Per watch: the models with a file there (two models may share a
    /// file) and the path watched.
    by_key: HashMap<Key, (Vec<Arc<str>>, PathBuf)>,
    last_counted: HashMap<Arc<str>, Instant>,
    me: u32,
}

struct Watched {
    files: Arc<ModelFiles>,
    copy: Option<PathBuf>,
    keys: Vec<Key>,
    /// Some file could not be watched: try again at the next hand-over.
    incomplete: bool,
}

impl Run {
    fn run(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut opens = Vec::new();
        let mut last_prune = Instant::now();
        loop {
            // The newest list only: older ones are superseded.
            let mut latest = None;
            loop {
                match self.items.try_recv() {
                    Ok(items) => latest = Some(items),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if let Some(items) = latest {
                self.apply(items);
            }
            use std::os::fd::AsRawFd;
            let mut pfd = [
                libc::pollfd {
                    fd: self.kernel.raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.bell.0.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds, for the duration of the call.
            let rc = unsafe { libc::poll(pfd.as_mut_ptr(), 2, POLL_MS) };
            if rc > 0 && pfd[1].revents != 0 {
                self.bell.clear();
            }
            if rc <= 0 || pfd[0].revents == 0 {
                if last_prune.elapsed() >= OWN_OPEN_WINDOW {
                    prune_own_opens(Instant::now());
                    last_prune = Instant::now();
                }
                continue;
            }
            let mut overflow = 0;
            opens.clear();
            self.kernel.read(&mut buf, &mut opens, &mut overflow);
            let now = Instant::now();
            let mut counted = 0;
            let (mut seen, mut own) = (0u64, 0u64);
            for o in opens.drain(..) {
                if o.gone {
                    self.by_key.remove(&o.key);
                    continue;
                }
                let Some((models, path)) = self.by_key.get(&o.key) else { continue };
                let mine = match o.pid {
                    Some(pid) => pid == self.me,
                    None => take_own_open(path, now),
                };
                if mine {
                    own += 1;
                    continue;
                }
                seen += 1;
                for m in models.clone() {
                    let fresh = self
                        .last_counted
                        .get(&m)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= self.debounce);
                    if fresh {
                        self.last_counted.insert(m.clone(), now);
                        let _ = self.out.send(OpenAccess {
                            model: m,
                            pid: o.pid,
                            seen: now,
                        });
                        counted += 1;
                    }
                }
            }
            if let Ok(mut s) = self.status.lock() {
                s.opens_seen += seen;
                s.own_opens_ignored += own;
                s.accesses_counted += counted;
                s.overflows += overflow;
            }
            if counted > 0
                && let Some(w) = self.waker.get()
            {
                w();
            }
            if now.duration_since(last_prune) >= OWN_OPEN_WINDOW {
                prune_own_opens(now);
                last_prune = now;
            }
        }
    }

    /// Brings the watches in line with the engine's list.
    fn apply(&mut self, items: Vec<OpenItem>) {
        let wanted: HashSet<Arc<str>> = items.iter().map(|i| i.model.clone()).collect();
        let gone: Vec<Arc<str>> = self.models.keys().filter(|m| !wanted.contains(*m)).cloned().collect();
        for m in gone {
            self.unwatch(&m);
            self.last_counted.remove(&m);
        }
        let mut unwatched = 0;
        let mut last_error = None;
        for item in items {
            if let Some(w) = self.models.get(&item.model)
                && Arc::ptr_eq(&w.files, &item.files)
                && w.copy == item.copy
                && !w.incomplete
            {
                continue;
            }
            self.unwatch(&item.model);
            let mut keys = Vec::new();
            let mut incomplete = false;
            for p in item.paths() {
                match self.kernel.add(&p) {
                    Ok(k) => {
                        let e = self.by_key.entry(k.clone()).or_insert_with(|| (Vec::new(), p.clone()));
                        if !e.0.contains(&item.model) {
                            e.0.push(item.model.clone());
                        }
                        keys.push(k);
                    }
                    Err(e) => {
                        incomplete = true;
                        unwatched += 1;
                        last_error = Some(format!("{}: {e}", p.display()));
                    }
                }
            }
            self.models.insert(
                item.model.clone(),
                Watched {
                    files: item.files,
                    copy: item.copy,
                    keys,
                    incomplete,
                },
            );
        }
        if let Ok(mut s) = self.status.lock() {
            s.watched_files = self.by_key.len();
            s.unwatched_files = unwatched;
            if last_error.is_some() {
                s.last_error = last_error;
            }
        }
    }

    fn unwatch(&mut self, model: &Arc<str>) {
        let Some(w) = self.models.remove(model) else { return };
        for k in w.keys {
            let Some((models, path)) = self.by_key.get_mut(&k) else { continue };
            models.retain(|m| m != model);
            if models.is_empty() {
                let path = path.clone();
                self.by_key.remove(&k);
                self.kernel.remove(&k, &path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_discards_one_open_event_of_its_path() {
        NOTING.store(true, Ordering::Relaxed);
        let p = Path::new("/nonexistent/tierd-opens-test/a.bin");
        note_own_open(p);
        note_own_open(p);
        let now = Instant::now();
        assert!(take_own_open(p, now));
        assert!(take_own_open(p, now));
        assert!(!take_own_open(p, now), "two notes discard two events, not three");
        assert!(!take_own_open(Path::new("/nonexistent/tierd-opens-test/b.bin"), now));
        // A note too old to be an event's discards nothing.
        note_own_open(p);
        assert!(!take_own_open(p, now + OWN_OPEN_WINDOW + Duration::from_millis(1)));
    }

    fn item(name: &str, path: &Path) -> OpenItem {
        OpenItem {
            model: Arc::from(name),
            files: Arc::new(ModelFiles::walk(path, 10).expect("walk")),
            copy: None,
        }
    }

    fn wait_for(w: &mut OpenWatcher, n: usize) -> Vec<OpenAccess> {
        let t = Instant::now();
        let mut got = Vec::new();
        while got.len() < n && t.elapsed() < Duration::from_secs(5) {
            got.extend(w.take(16));
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    }

    /// inotify (it runs for anyone): every open of a file two models share
    /// counts for both, with no debounce; tierd's own open counts nothing;
    /// a model dropped from the list is no longer watched.
    #[test]
    fn opens_count_for_every_model_of_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("w.gguf");
        std::fs::write(&f, b"weights").expect("write");
        let mut w = OpenWatcher::spawn(OpenWatchMode::Inotify, 0.0).expect("inotify starts");
        w.sync(vec![item("a", &f), item("b", &f)]);
        let t = Instant::now();
        while w.status().watched_files != 1 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(w.status().watched_files, 1, "one file, one watch");
        drop(super::super::sys::open_nonblocking(&f).expect("own open"));
        // (Let the watcher read that event first: inotify merges identical
        // events still unread.)
        std::thread::sleep(Duration::from_millis(50));
        let st = std::process::Command::new("cat")
            .arg(&f)
            .stdout(std::process::Stdio::null())
            .status();
        assert!(st.is_ok_and(|s| s.success()));
        let mut got: Vec<String> = wait_for(&mut w, 2).iter().map(|a| a.model.to_string()).collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(w.take(16).is_empty(), "tierd's own open was counted");
        assert_eq!(w.status().own_opens_ignored, 1);

        w.sync(vec![item("b", &f)]);
        w.sync(Vec::new());
        let t = Instant::now();
        while w.status().watched_files != 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(w.status().watched_files, 0);
    }
}
