//! Who may connect to the socket, and how many at once.
//!
//! - [`PeerPolicy`]: each socket peer's credentials (`SO_PEERCRED`) are
//!   checked on accept. The server's own uid and root are admitted, plus the
//!   configuration's `allowed_uids` and `allowed_gids`; anyone else gets one
//!   `PERMISSION_DENIED` line naming its uid and is closed.
//! - [`Registry`]: at most `max_connections` connections. At the cap, the
//!   connection that has gone longest without completing a request (none in
//!   flight, no `wait` under way) is closed with one error line to make room;
//!   only when every connection is busy is the newcomer refused, with one
//!   `RESOURCE_UNAVAILABLE` line ("too many connections").
//!
//! The lines are written without waiting (a fresh socket's buffer is empty),
//! so the accept loop never blocks on a peer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ErrorCode;

use super::framing::PartialBudget;

/// The connection limits of the configuration, as the server uses them.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub line_timeout: Duration,
    pub budget: PartialBudget,
    pub peers: PeerPolicy,
}

impl ConnLimits {
    /// From the configuration; `max_connections` overrides its cap.
    pub fn from_config(cfg: &Config, max_connections: Option<usize>) -> ConnLimits {
        let line_timeout = Duration::try_from_secs_f64(cfg.line_timeout_s).unwrap_or(Duration::from_secs(30));
        ConnLimits {
            max_connections: max_connections.unwrap_or(cfg.max_connections).max(1),
            line_timeout,
            budget: PartialBudget::new(cfg.max_partial_line_bytes),
            peers: PeerPolicy::new(cfg),
        }
    }
}

/// Which socket peers are admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The server's effective uid.
    pub own_uid: u32,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl PeerPolicy {
    pub fn new(cfg: &Config) -> PeerPolicy {
        PeerPolicy {
            own_uid: rustix::process::geteuid().as_raw(),
            uids: cfg.allowed_uids.clone(),
            gids: cfg.allowed_gids.clone(),
        }
    }

    /// Whether a peer running as `uid` with primary group `gid` may talk.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == self.own_uid || uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// [`PeerPolicy::allows`], or one of the peer's supplementary groups
    /// (asked for only when that can decide) is allowed.
    pub fn admits(&self, uid: u32, gid: u32, groups: impl FnOnce() -> Vec<u32>) -> bool {
        self.allows(uid, gid) || (!self.gids.is_empty() && groups().iter().any(|g| self.gids.contains(g)))
    }

    /// The line a refused peer gets.
    pub fn refusal(&self, uid: u32, gid: u32) -> Vec<u8> {
        let mut allowed = vec![0, self.own_uid];
        allowed.extend(&self.uids);
        allowed.sort_unstable();
        allowed.dedup();
        let mut details = Map::new();
        details.insert("uid".into(), uid.into());
        details.insert("gid".into(), gid.into());
        details.insert("allowed_uids".into(), json!(allowed));
        details.insert("allowed_gids".into(), json!(self.gids));
        let message = format!(
            "uid {uid} (gid {gid}) may not use this tierd: the socket admits the server's own uid, root, and the configuration's allowed_uids / allowed_gids"
        );
        error_line(ErrorCode::PermissionDenied, &message, details)
    }
}

/// The supplementary groups of the process at the other end of a Unix
/// socket, as they were at connect() (`SO_PEERGROUPS`, Linux 4.13+);
/// empty where the kernel cannot say.
pub fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let gid_size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    // A second try with the size the kernel asked for (NGROUPS_MAX at most).
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(groups.len() * gid_size).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` holds `len` writable bytes; the fd is borrowed,
        // so open, for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = usize::try_from(len).unwrap_or(0) / gid_size;
        if rc == 0 {
            groups.truncate(len.min(groups.len()));
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || len <= groups.len() || len > 65_536 {
            break;
        }
        groups = vec![0; len];
    }
    Vec::new()
}

/// One error line (no `id`: it answers no request), newline included.
pub fn error_line(code: ErrorCode, message: &str, details: Map<String, Value>) -> Vec<u8> {
    let v = json!({"status": "error", "error": {"code": code.as_str(), "message": message, "details": Value::Object(details)}});
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The line a newcomer gets when every connection is busy.
pub fn too_many_line(max: usize) -> Vec<u8> {
    let mut details = Map::new();
    details.insert("max_connections".into(), max.into());
    error_line(
        ErrorCode::ResourceUnavailable,
        &format!("too many connections: all {max} (max_connections) have a request in flight; try again later"),
        details,
    )
}

/// The line a connection closed to make room gets (`watching`: it was
/// watching events, closed because no connection was merely idle).
pub fn evicted_line(max: usize, idle: Duration, watching: bool) -> Vec<u8> {
    let idle_s = (idle.as_secs_f64() * 10.0).round() / 10.0;
    let mut details = Map::new();
    details.insert("max_connections".into(), max.into());
    details.insert("idle_s".into(), idle_s.into());
    details.insert("watching".into(), watching.into());
    let why = if watching {
        format!("no connection was idle, and this one had watched events longest ({idle_s} s)")
    } else {
        format!("this connection had gone longest without a request ({idle_s} s)")
    };
    error_line(
        ErrorCode::ResourceUnavailable,
        &format!("connection closed to make room for a new one: the server is at max_connections ({max}) and {why}"),
        details,
    )
}

/// The open socket connections, and which of them may be closed to make room.
///
/// A request marks its connection busy and idle again through the
/// connection's own [`Slot`] (atomics, no lock shared with the other
/// connections); only admitting and closing a connection take the
/// registry's mutex.
#[derive(Debug)]
pub struct Registry {
    max: usize,
    /// What `last_done` stamps count from.
    epoch: Instant,
    inner: Mutex<Conns>,
}

#[derive(Debug, Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, Entry>,
}

/// A connection's state, shared by its [`Ticket`] and the registry.
#[derive(Debug)]
struct Slot {
    /// [`IDLE`], [`BUSY`] (a request is being answered, a `wait`
    /// included) or [`EVICTED`] (chosen to close; it never leaves it).
    state: AtomicU8,
    /// When the connection last completed a request (or was accepted), in
    /// microseconds since the registry's epoch.
    last_done_us: AtomicU64,
    /// Whether it is watching events: idle as far as requests go, but a
    /// client is reading it. Closed to make room only when no connection
    /// that is merely idle is left.
    watching: AtomicBool,
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const EVICTED: u8 = 2;

#[derive(Debug)]
struct Entry {
    slot: Arc<Slot>,
    evict: CancellationToken,
}

impl Conns {
    /// Closes the connection that has gone longest without completing a
    /// request and has none in flight, one that watches events only when
    /// no other qualifies. A connection that starts a request while it is
    /// being chosen wins: the next idle one is taken instead.
    fn evict_one(conns: &mut Conns) -> bool {
        let mut idle: Vec<(bool, u64, u64)> = conns
            .open
            .iter()
            .filter(|(_, e)| e.slot.state.load(Ordering::Acquire) == IDLE)
            .map(|(id, e)| {
                let s = &e.slot;
                (s.watching.load(Ordering::Acquire), s.last_done_us.load(Ordering::Acquire), *id)
            })
            .collect();
        idle.sort_unstable();
        for (_, _, id) in idle {
            let Some(e) = conns.open.get(&id) else { continue };
            if e.slot
                .state
                .compare_exchange(IDLE, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                && let Some(e) = conns.open.remove(&id)
            {
                e.evict.cancel();
                return true;
            }
        }
        false
    }
}

impl Registry {
    pub fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            max: max.max(1),
            epoch: Instant::now(),
            inner: Mutex::new(Conns::default()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.conns().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a newcomer. At the cap, the connection that has gone longest
    /// without completing a request, and has none in flight, is told to
    /// close (its slot is free at once); `None` when none qualifies.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        self.admit_under(self.max)
    }

    /// [`Registry::admit`] when the process is out of file descriptors:
    /// the open connections are the cap, whatever `max_connections` says.
    pub fn admit_making_room(self: &Arc<Self>) -> Option<Ticket> {
        let n = self.len();
        self.admit_under(n.clamp(1, self.max))
    }

    /// Tells the connection idle longest to close; false when none qualifies.
    pub fn evict_one(&self) -> bool {
        Conns::evict_one(&mut self.conns())
    }

    fn admit_under(self: &Arc<Self>, cap: usize) -> Option<Ticket> {
        let slot = Arc::new(Slot {
            state: AtomicU8::new(IDLE),
            last_done_us: AtomicU64::new(self.now_us()),
            watching: AtomicBool::new(false),
        });
        let mut conns = self.conns();
        if conns.open.len() >= cap && !Conns::evict_one(&mut conns) {
            return None;
        }
        let id = conns.next;
        conns.next += 1;
        let evict = CancellationToken::new();
        conns.open.insert(
            id,
            Entry {
                slot: Arc::clone(&slot),
                evict: evict.clone(),
            },
        );
        Some(Ticket {
            id,
            slot,
            registry: Arc::clone(self),
            evict,
        })
    }
}

/// A connection's place in the [`Registry`]; frees it when dropped.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    slot: Arc<Slot>,
    registry: Arc<Registry>,
    evict: CancellationToken,
}

impl Ticket {
    /// Cancelled when the connection is closed to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// A request starts: the connection may not be closed to make room
    /// until [`Ticket::done`]. False when it was already chosen to close.
    pub fn begin(&self) -> bool {
        match self.slot.state.compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(state) => state == BUSY,
        }
    }

    /// The request has been answered.
    pub fn done(&self) {
        self.slot.last_done_us.store(self.registry.now_us(), Ordering::Release);
        // Only this connection leaves BUSY; an evicted one stays evicted.
        let _ = self.slot.state.compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The connection starts or stops watching events (see `Slot::watching`).
    pub fn watching(&self, on: bool) {
        self.slot.watching.store(on, Ordering::Release);
    }

    pub fn max(&self) -> usize {
        self.registry.max
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.registry.conns().open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_goes_and_busy_ones_stay() {
        let r = Registry::new(2);
        let a = r.admit().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = r.admit().unwrap();
        assert_eq!(r.len(), 2);
        // a is idle longest: it is told to close.
        let c = r.admit().unwrap();
        assert!(a.evicted().is_cancelled() && !b.evicted().is_cancelled());
        assert!(!a.begin(), "an evicted connection starts no request");
        assert_eq!(r.len(), 2);
        // Both busy: the newcomer is refused.
        assert!(b.begin() && c.begin());
        assert!(r.admit().is_none());
        c.done();
        let d = r.admit().unwrap();
        assert!(c.evicted().is_cancelled() && !b.evicted().is_cancelled());
        drop((a, b, c, d));
        assert!(r.is_empty());
    }

    #[test]
    fn at_the_cap_a_watcher_goes_only_when_no_connection_is_merely_idle() {
        let r = Registry::new(2);
        let w = r.admit().unwrap();
        w.watching(true);
        std::thread::sleep(Duration::from_millis(2));
        let a = r.admit().unwrap();
        let b = r.admit().unwrap();
        assert!(a.evicted().is_cancelled() && !w.evicted().is_cancelled());
        assert!(b.begin());
        let c = r.admit().unwrap();
        assert!(w.evicted().is_cancelled(), "only the watcher was idle");
        drop((w, a, b, c));
        assert!(r.is_empty());
    }

    #[test]
    fn peers_own_uid_root_and_the_configured_ones() {
        let p = PeerPolicy {
            own_uid: 1000,
            uids: vec![1001],
            gids: vec![50],
        };
        assert!(p.allows(1000, 1000) && p.allows(0, 0) && p.allows(1001, 7) && p.allows(65534, 50));
        assert!(!p.allows(65534, 65534));
        assert!(p.admits(65534, 65534, || vec![7, 50]) && !p.admits(65534, 65534, || vec![7]));
        let no_gids = PeerPolicy { gids: vec![], ..p.clone() };
        assert!(!no_gids.admits(65534, 65534, || unreachable!("groups are not asked for without allowed_gids")));
        let line: Value = serde_json::from_slice(&p.refusal(65534, 65534)).unwrap();
        assert_eq!(line["error"]["code"], "PERMISSION_DENIED");
        assert!(line["error"]["message"].as_str().unwrap().contains("uid 65534"));
        assert_eq!(line["error"]["details"]["allowed_uids"], json!([0, 1000, 1001]));
    }
}
