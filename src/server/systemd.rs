//! systemd integration (`packaging/tierd.service`, `packaging/tierd.socket`):
//! socket activation and readiness notification.
//!
//! - Socket activation: systemd binds the socket (`tierd.socket`), starts
//!   `tierd serve` on the first connection (or at boot) and passes the
//!   listening socket as descriptor 3, with `LISTEN_FDS=1` and `LISTEN_PID`
//!   set to tierd's pid ([`inherited_listener`]). tierd serves it instead of
//!   binding a path, and leaves the socket file alone at exit (systemd owns
//!   it, and keeps it across restarts, so no connection is refused while
//!   tierd restarts).
//! - `Type=notify`: `READY=1` once the engine is built and the socket is
//!   served, `STOPPING=1` when the shutdown begins ([`notify_ready`],
//!   [`notify_stopping`]), to `$NOTIFY_SOCKET`; nothing when it is unset.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Set once descriptor 3 has been taken.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Whether systemd passed this process sockets (`LISTEN_PID` is our pid
/// and `LISTEN_FDS` is at least 1). Reads the environment only.
pub fn activated() -> bool {
    sd_notify::listen_fds().map(|fds| fds.len() > 0).unwrap_or(false)
}

/// The listening socket systemd passed, if it passed one: checked to be a
/// listening Unix stream socket, so a misconfigured unit (a datagram or TCP
/// socket, several `ListenStream=`) is refused with what to change.
pub fn inherited_listener() -> Result<Option<std::os::unix::net::UnixListener>, String> {
    let fds = sd_notify::listen_fds().map_err(|e| format!("socket activation: {e}"))?;
    let n = fds.len();
    // Descriptor 3 becomes a listener at most once per process, so it never
    // has two owners (each would close it).
    if n == 0 || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    if n > 1 {
        return Err(format!(
            "socket activation: systemd passed {n} sockets; tierd serves one: give tierd.socket a single ListenStream="
        ));
    }
    // SAFETY: descriptor 3 is open for as long as the process lives (systemd
    // passed it, LISTEN_PID names us) and nothing else in tierd uses it; it
    // is only borrowed for the checks.
    let fd = unsafe { BorrowedFd::borrow_raw(LISTEN_FDS_START) };
    check_listening_unix_stream(fd)?;
    // SAFETY: as above; from here the listener owns the descriptor, and
    // `TAKEN` makes this the only owner it ever has.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FDS_START) };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket activation: cannot make the socket non-blocking: {e}"))?;
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
    debug!(path = ?path, "serving the socket systemd passed");
    Ok(Some(listener))
}

/// Refuses a descriptor that is not a listening Unix stream socket.
fn check_listening_unix_stream(fd: BorrowedFd<'_>) -> Result<(), String> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let bad = |what: String| {
        Err(format!(
            "socket activation: descriptor 3 is {what}; tierd.socket must be a ListenStream= on a path (a Unix stream socket)"
        ))
    };
    match sockopt::socket_domain(fd.as_fd()) {
        Ok(AddressFamily::UNIX) => {}
        Ok(other) => return bad(format!("a socket of address family {other:?}")),
        Err(e) => return bad(format!("not a socket ({e})")),
    }
    match sockopt::socket_type(fd) {
        Ok(SocketType::STREAM) => {}
        Ok(other) => return bad(format!("a Unix socket of type {other:?}, not a stream")),
        Err(e) => return bad(format!("unreadable ({e})")),
    }
    match sockopt::socket_acceptconn(fd) {
        Ok(true) => Ok(()),
        Ok(false) => bad("a Unix stream socket that is not listening".into()),
        Err(e) => bad(format!("unreadable ({e})")),
    }
}

/// Tells systemd the server is ready (`Type=notify`): the engine is built
/// and its socket served. `status` is shown by `systemctl status`.
pub fn notify_ready(status: &str) {
    send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
}

/// Tells systemd the shutdown has begun (moves are being drained).
pub fn notify_stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining moves and saving state"),
    ]);
}

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}
