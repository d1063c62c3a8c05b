//! `tierd serve`: builds the engine, serves stdio and/or a Unix socket,
//! ticks the engine in the background, and shuts down gracefully.
//!
//! Shutdown (SIGINT, SIGTERM, or the end of stdin when stdio is served):
//! 1. a [`CancellationToken`] stops the accept loop, and each connection
//!    after the request it is answering;
//! 2. queued moves are cancelled, running ones get a bounded time to
//!    finish, then are cancelled (rolled back);
//! 3. the [`TaskTracker`] waits (bounded) for every connection to write its
//!    last answers; the socket file is removed.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ConfigError;
use crate::error::EngineError;
use crate::tiers::{Engine, JobStatus};

use super::connection::{Bounds, serve_connection};
use super::gate::{ConnLimits, Registry, too_many_line};
use super::shared::SharedEngine;

pub use super::open::{build_shared, load_config};

/// Which hardware carries the moves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// The deterministic simulated machine (the default).
    #[default]
    Sim,
    /// The machine itself: page-cache pinning, directory tiers, NVML
    /// (`tierd::real`); needs `state_dir` and tier drivers in the config.
    Real,
}

/// Options of `tierd serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Configuration file; the embedded seed default when absent.
    pub config: Option<PathBuf>,
    /// Engine seconds per wall second.
    pub time_scale: f64,
    /// Unix socket to listen on.
    pub socket: Option<PathBuf>,
    /// A private directory the socket lives in (the default socket path's):
    /// created with mode 0700, or checked to be owned by the server and
    /// closed to everyone else, before binding.
    pub socket_dir: Option<PathBuf>,
    /// Serve stdin/stdout (also when `socket` is set).
    pub stdio: bool,
    /// Overrides `sim.fault_probability`.
    pub fault_probability: Option<f64>,
    /// The backend; `None`: the config's `backend` key, else the simulator.
    pub backend: Option<BackendKind>,
    /// Wall time running moves get to finish at shutdown before they are
    /// rolled back.
    pub drain_timeout: Duration,
    /// Most socket connections served at once (overrides the
    /// configuration's `max_connections`). At the cap, the one idle longest
    /// is closed to make room; a newcomer is refused only when all are busy.
    pub max_connections: Option<usize>,
    /// Connection loops serving the socket; 0 = connections on the main thread.
    pub workers: usize,
    /// Serve `GET /metrics` (Prometheus) over HTTP on this address.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Allow `metrics_listen` on an address other than loopback.
    pub metrics_listen_any: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            config: None,
            time_scale: 1.0,
            socket: None,
            socket_dir: None,
            stdio: true,
            fault_probability: None,
            backend: None,
            drain_timeout: Duration::from_secs(10),
            max_connections: None,
            workers: default_workers(),
            metrics_listen: None,
            metrics_listen_any: false,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid option: {0}")]
    Option(String),
    #[error("cannot build the engine: {0}")]
    Engine(#[from] EngineError),
    #[error("another tierd is already listening on {0}; stop it or choose another --socket path")]
    SocketInUse(PathBuf),
    #[error("{path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A listening socket: one tierd bound, whose file it removes when dropped
/// if the file is still the one it created; or one systemd passed (socket
/// activation), whose file is systemd's and stays.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    /// The file tierd created: its path, and its device and inode, so
    /// shutdown never removes a file another process put there since.
    /// `None` for an inherited socket.
    owned: Option<(PathBuf, (u64, u64))>,
}

impl BoundSocket {
    /// The socket systemd passed (see [`super::systemd`]).
    pub fn inherited(listener: std::os::unix::net::UnixListener) -> Result<BoundSocket, ServeError> {
        Ok(BoundSocket {
            listener: UnixListener::from_std(listener)?,
            owned: None,
        })
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Some((path, identity)) = &self.owned
            && let Ok(meta) = std::fs::symlink_metadata(path)
            && (meta.dev(), meta.ino()) == *identity
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds `path` with mode 0600, replacing a stale socket file and refusing
/// a live one. Must be called inside a tokio runtime.
pub fn bind_socket(path: &Path) -> Result<BoundSocket, ServeError> {
    let err = |message: String| ServeError::Socket {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path).map_err(|e| err(format!("cannot remove stale socket: {e}")))?;
            }
            Err(e) => return Err(err(format!("exists and cannot be checked: {e}"))),
        },
        Ok(_) => return Err(err("exists and is not a socket; refusing to replace it".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(err(format!("directory {} does not exist", dir.display())));
    }
    // Create the socket with no group/other permissions from the start, so
    // there is no window in which another user could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| err(format!("cannot listen: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(format!("cannot set mode 0600: {e}")))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| err(e.to_string()))?;
    Ok(BoundSocket {
        listener,
        owned: Some((path.to_path_buf(), (meta.dev(), meta.ino()))),
    })
}

/// Creates `dir` with mode 0700, or checks an existing one: it must be a
/// real directory (not a symlink), owned by the server's uid, with no
/// permissions for group or others. Anything else could let another user
/// put their own socket where clients look for tierd's, so it is refused.
pub fn ensure_private_dir(dir: &Path) -> Result<(), ServeError> {
    let err = |message: String| ServeError::Socket {
        path: dir.to_path_buf(),
        message,
    };
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(err(format!("cannot create the socket directory: {e}"))),
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(err(
            "the socket directory is not a directory (a symlink or another file); refusing to use it: remove it, or choose --socket PATH"
                .into(),
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(err(format!(
            "the socket directory is owned by uid {}, not by tierd's uid {me}; another user could control the socket in it. Remove it, or choose --socket PATH",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if created {
        // Exactly 0700, whatever the umask took away.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| err(format!("cannot set mode 0700: {e}")))?;
    } else if mode & 0o077 != 0 {
        return Err(err(format!(
            "the socket directory has mode {mode:04o}; it must be 0700 (no access for group or others). `chmod 700` it, or choose --socket PATH"
        )));
    }
    Ok(())
}

/// Raises the soft open-file limit (to the hard one at most) so that
/// `max_connections` sockets fit; warns when they cannot.
fn raise_nofile_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // The state file, tier files, stdio, the listener and workers.
    let want = (max_connections as u64).saturating_add(256);
    let mut lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    if current >= want {
        return;
    }
    let target = lim.maximum.map_or(want, |max| want.min(max));
    if target > current {
        lim.current = Some(target);
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            warn!("cannot raise the open-file limit to {target}: {e}");
            return;
        }
    }
    if target < want {
        warn!(
            max_connections,
            open_files = target,
            "the open-file limit is below max_connections + 256; connections beyond it wait in the kernel's backlog"
        );
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        warn!("cannot install signal handlers; stop tierd by closing stdin");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}

/// Runs the server until `shutdown` resolves (or stdin ends, when stdio is
/// served), then shuts down gracefully.
pub async fn serve(opts: ServeOptions, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let shared = build_shared(&opts)?;
    // A socket systemd passed (socket activation) is served instead of
    // binding one.
    let inherited = super::systemd::inherited_listener().map_err(ServeError::Option)?;
    let socket = match (inherited, &opts.socket) {
        (Some(listener), path) => {
            if let Some(path) = path {
                warn!(path = %path.display(), "serving the socket systemd passed; --socket is ignored");
            }
            Some(BoundSocket::inherited(listener)?)
        }
        (None, Some(path)) => {
            if let Some(dir) = &opts.socket_dir {
                ensure_private_dir(dir)?;
            }
            Some(bind_socket(path)?)
        }
        (None, None) => None,
    };
    serve_with(shared, socket, &opts, shutdown).await
}

/// [`serve`] with the engine and socket already set up (the load
/// benchmark starts the server in-process this way).
pub async fn serve_with(
    shared: SharedEngine,
    socket: Option<BoundSocket>,
    opts: &ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = match opts.metrics_listen {
        Some(addr) => Some(
            super::metrics_http::bind(addr, opts.metrics_listen_any)
                .await
                .map_err(ServeError::Option)?,
        ),
        None => None,
    };
    let limits = ConnLimits::from_config(shared.lock().config(), opts.max_connections);
    if socket.is_some() {
        raise_nofile_limit(limits.max_connections);
    }
    // Socket connections run on their own loops when workers are asked for.
    let loops = match (&socket, opts.workers) {
        (Some(_), n) if n > 0 => Some(ConnectionLoops::start(n)?),
        _ => None,
    };
    {
        let cfg_interval = shared.lock().config().auto_optimize_interval_s;
        info!(
            backend = shared.lock().machine_kind().as_str(),
            time_scale = shared.clock().scale(),
            socket = ?opts.socket,
            stdio = opts.stdio,
            auto_optimize_interval_s = ?cfg_interval,
            "tierd serving"
        );
    }
    // The model sources: scanned before the first request is read, then
    // watched until shutdown.
    let sources = {
        let engine = shared.lock();
        let cfg = engine.config();
        crate::sources::Sources::new(&cfg.sources, &crate::sources::process_env, cfg.max_files_per_model).map_err(ServeError::Option)?
    };
    let source_watch = if sources.is_empty() {
        None
    } else {
        let (applied, dirs) = super::sources::scan_and_apply(&shared, &sources).await;
        info!(
            sources = sources.sources.len(),
            registered = applied.registered.len(),
            gone = applied.missing.len(),
            watched_dirs = dirs.len(),
            "model sources scanned"
        );
        Some(tokio::spawn(super::sources::watch_sources(
            shared.clone(),
            sources,
            dirs,
            token.clone(),
        )))
    };
    shared.save_state();
    let ticker = tokio::spawn(run_ticker(shared.clone(), token.clone()));
    if opts.stdio {
        start_stdio(&shared, &token, &tracker);
    }
    if let Some(listener) = metrics {
        tracker.spawn(super::metrics_http::serve_metrics(
            listener,
            shared.clone(),
            token.clone(),
            tracker.clone(),
        ));
    }
    let accept = async {
        match &socket {
            Some(sock) => {
                accept_loop(
                    &sock.listener,
                    shared.clone(),
                    token.clone(),
                    tracker.clone(),
                    &limits,
                    loops.as_ref(),
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    super::systemd::notify_ready(&format!(
        "serving {} ({:?} backend)",
        if socket.is_some() { "the socket" } else { "stdio" },
        opts.backend
    ));
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
        _ = token.cancelled() => {}
    }
    super::systemd::notify_stopping();
    token.cancel();
    drain_jobs(&shared, opts.drain_timeout).await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        warn!("some connections did not finish writing within 5 s; closing them");
    }
    let _ = ticker.await;
    if let Some(w) = source_watch {
        let _ = w.await;
    }
    shared.save_state();
    if let Some(loops) = loops {
        // Connections still open after the grace period end with their loop.
        tokio::task::spawn_blocking(move || loops.stop()).await.ok();
    }
    drop(socket);
    info!("tierd stopped");
    Ok(())
}

fn start_stdio(shared: &SharedEngine, token: &CancellationToken, tracker: &TaskTracker) {
    let (shared, token) = (shared.clone(), token.clone());
    tracker.spawn(async move {
        let reader = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
        // stdio is the server's own peer: no credentials, no connection limits.
        if let Err(e) = serve_connection(shared, reader, tokio::io::stdout(), token.clone(), Bounds::none()).await {
            warn!("stdio: {e}");
        }
        if !token.is_cancelled() {
            info!("stdin closed: shutting down");
            token.cancel();
        }
    });
}

async fn serve_stream(stream: tokio::net::UnixStream, shared: SharedEngine, token: CancellationToken, bounds: Bounds) {
    let (r, w) = stream.into_split();
    if let Err(e) = serve_connection(shared, BufReader::with_capacity(16 * 1024, r), w, token, bounds).await {
        debug!("connection ended: {e}");
    }
}

/// Connection loops: `n` current-thread runtimes, each on a thread of its
/// own, that accepted connections are handed to in turn. Each connection
/// lives on one loop, so its reads, engine call and writes never cross a
/// thread; the engine's std mutex is held for microseconds.
struct ConnectionLoops {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: std::sync::atomic::AtomicUsize,
}

impl ConnectionLoops {
    fn start(n: usize) -> std::io::Result<ConnectionLoops> {
        let mut loops = ConnectionLoops {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            loops.handles.push(rt.handle().clone());
            loops.stops.push(tx);
            loops
                .threads
                .push(std::thread::Builder::new().name(format!("tierd-conn-{i}")).spawn(move || {
                    rt.block_on(async {
                        let _ = rx.await;
                    });
                })?);
        }
        Ok(loops)
    }

    /// The loop for the next connection, round robin.
    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }

    /// Stops the loops once their connections have ended (call after the
    /// task tracker has drained).
    fn stop(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The reserve descriptor of the accept loop.
fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Sends `line` to a peer that is refused and closes it, without waiting:
/// the socket is fresh, its send buffer empty.
fn refuse(stream: tokio::net::UnixStream, line: &[u8]) {
    let _ = stream.try_write(line);
    drop(stream);
}

async fn accept_loop(
    listener: &UnixListener,
    shared: SharedEngine,
    token: CancellationToken,
    tracker: TaskTracker,
    limits: &ConnLimits,
    loops: Option<&ConnectionLoops>,
) {
    let registry = Registry::new(limits.max_connections);
    // A descriptor held in reserve: out of descriptors, it is given up to
    // take the newcomer (which then gets a line instead of waiting in the
    // kernel's backlog), and an idle connection is closed to make room.
    let mut spare = open_spare();
    let mut warned_fds = false;
    loop {
        if spare.is_none() {
            spare = open_spare();
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = token.cancelled() => return,
        };
        let (stream, out_of_fds) = match accepted {
            Ok((stream, _)) => (stream, false),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                if !warned_fds {
                    warn!(
                        open = registry.len(),
                        max_connections = registry.max(),
                        "out of file descriptors: closing idle connections to make room; raise the open-file limit or lower max_connections"
                    );
                    warned_fds = true;
                }
                if spare.take().is_none() {
                    // No reserve left: free a descriptor for the next try.
                    registry.evict_one();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                match tokio::time::timeout(Duration::from_millis(50), listener.accept()).await {
                    Ok(Ok((stream, _))) => (stream, true),
                    _ => continue,
                }
            }
            Err(e) => {
                // Back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Who is calling: SO_PEERCRED, taken by the kernel at connect().
        match stream.peer_cred() {
            Ok(cred)
                if limits.peers.admits(cred.uid(), cred.gid(), || {
                    super::gate::peer_groups(std::os::fd::AsFd::as_fd(&stream))
                }) => {}
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    gid = cred.gid(),
                    pid = ?cred.pid(),
                    "refused a socket connection: uid {} is not allowed (allowed: the server's uid, root, allowed_uids, allowed_gids)",
                    cred.uid()
                );
                refuse(stream, &limits.peers.refusal(cred.uid(), cred.gid()));
                continue;
            }
            Err(e) => {
                warn!("refused a socket connection: cannot read its credentials: {e}");
                continue;
            }
        }
        let admitted = if out_of_fds {
            registry.admit_making_room()
        } else {
            registry.admit()
        };
        let Some(ticket) = admitted else {
            warn!(
                max_connections = registry.max(),
                "refused a socket connection: too many connections, all with a request in flight"
            );
            refuse(stream, &too_many_line(registry.max()));
            continue;
        };
        let bounds = Bounds {
            ticket: Some(ticket),
            budget: Some(limits.budget.clone()),
            line_timeout: Some(limits.line_timeout),
        };
        let (shared, token) = (shared.clone(), token.clone());
        match loops {
            None => {
                tracker.spawn(serve_stream(stream, shared, token, bounds));
            }
            Some(loops) => {
                // Re-registered with the chosen loop's reactor, so its
                // readiness events wake that loop only.
                let std_stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("cannot hand a connection over: {e}");
                        continue;
                    }
                };
                loops.pick().spawn(tracker.track_future(async move {
                    match tokio::net::UnixStream::from_std(std_stream) {
                        Ok(stream) => serve_stream(stream, shared, token, bounds).await,
                        Err(e) => warn!("cannot serve a connection: {e}"),
                    }
                }));
            }
        }
    }
}

/// Longest wall pause of the background ticker while moves are under way
/// (a backend may not know when its next event comes).
const TICK_ACTIVE: Duration = Duration::from_millis(20);
/// How often the engine's limits, usage and history are saved (real backend).
const STATE_SAVE_EVERY: Duration = Duration::from_secs(1);
/// Longest pause while nothing moves: the ticker also wakes when a request
/// may have started something ([`SharedEngine::changed`]).
const TICK_IDLE: Duration = Duration::from_secs(1);

/// Ticks the engine so moves progress without requests, and runs
/// `auto_optimize` every `auto_optimize_interval_s` engine seconds.
pub async fn run_ticker(shared: SharedEngine, token: CancellationToken) {
    let interval = shared
        .lock()
        .config()
        .auto_optimize_interval_s
        .filter(|s| s.is_finite() && *s > 0.0);
    let mut next_optimize = interval.map(|i| shared.clock().now() + i);
    let policy_every = shared.lock().policy_tick_interval();
    let mut next_policy = policy_every.map(|i| shared.clock().now() + i);
    let mut last_save = tokio::time::Instant::now();
    loop {
        let (next_event, active, until_optimize) = shared.with(|engine, now| {
            engine.tick(now);
            // Pressure and availability changes, for watchers (a no-op
            // while nobody watches).
            engine.observe_tiers(now);
            if let (Some(at), Some(every)) = (next_optimize, interval)
                && now >= at
            {
                let o = engine.optimize(now, false);
                log_optimizations(&o);
                next_optimize = Some(now + every);
            }
            if let (Some(at), Some(every)) = (next_policy, policy_every)
                && now >= at
            {
                let steps = engine.policy_tick(now);
                if !steps.is_empty() {
                    info!(moves = steps.len(), "policy tick");
                }
                next_policy = Some(now + every);
            }
            let until = [next_optimize, next_policy].into_iter().flatten().map(|t| t - now).reduce(f64::min);
            (engine.next_wakeup().map(|t| t - now), engine.active_jobs() > 0, until)
        });
        // A commit waiting for its placement to be durable is saved at once.
        if last_save.elapsed() >= STATE_SAVE_EVERY || shared.save_pending() {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.save_state()).await;
            last_save = tokio::time::Instant::now();
        }
        let longest = if active { TICK_ACTIVE } else { TICK_IDLE };
        let clock = shared.clock();
        let pause = [next_event, until_optimize]
            .into_iter()
            .flatten()
            .map(|s| clock.wall(s))
            .fold(longest, Duration::min)
            .max(Duration::from_millis(1));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shared.changed().notified() => {}
            _ = token.cancelled() => return,
        }
    }
}

fn log_optimizations(o: &crate::tiers::Optimized) {
    let list: Vec<String> = o.steps.iter().filter(|s| s.skipped.is_none()).map(|s| s.sentence()).collect();
    if !list.is_empty() {
        info!(optimizations = ?list, "auto_optimize");
    }
}

/// Shutdown step 2: cancel queued moves, give running ones `timeout` of wall
/// time, then roll the rest back.
pub async fn drain_jobs(shared: &SharedEngine, timeout: Duration) {
    let cancelled = shared.with(|engine, now| cancel_jobs(engine, now, JobStatus::Queued));
    if cancelled > 0 {
        info!(cancelled, "cancelled queued moves");
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let active = shared.with(|engine, now| {
            engine.tick(now);
            engine.active_jobs()
        });
        if active == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(active, "moves still running at the drain deadline; rolling them back");
            shared.with(|engine, now| {
                cancel_jobs(engine, now, JobStatus::Queued);
                cancel_jobs(engine, now, JobStatus::Running);
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Rollbacks confirm on the next ticks.
    for _ in 0..200 {
        let active = shared.with(|engine, now| {
            engine.tick(now);
            engine.active_jobs()
        });
        if active == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Cancels every job in `status` as the shutdown does (their errors say
/// "cancelled at shutdown" / "rolled back at shutdown", not "by request");
/// returns how many.
fn cancel_jobs(engine: &mut Engine, now: f64, status: JobStatus) -> usize {
    let ids: Vec<String> = engine
        .jobs(now)
        .into_iter()
        .filter(|j| j.status == status)
        .map(|j| j.job_id)
        .collect();
    ids.iter().filter(|id| engine.cancel_job_at_shutdown(now, id).is_ok()).count()
}

/// Sends logs to stderr, filtered by `TIERD_LOG` (default `info`).
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Sends logs to stderr, filtered by `TIERD_LOG`, else `default`.
pub fn init_logging_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIERD_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The blocking entry point of `tierd serve`: its own runtime, signals
/// wired to shutdown.
pub fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let runtime = runtime()?;
    let shutdown = async {
        shutdown_signal().await;
        // A second signal while draining: stop at once.
        tokio::spawn(async {
            shutdown_signal().await;
            warn!("second signal: exiting without finishing the shutdown");
            std::process::exit(130);
        });
    };
    let result = runtime.block_on(serve(opts, shutdown));
    // stdin is read on a blocking thread that may sit in read(2) forever;
    // do not wait for it.
    runtime.shutdown_background();
    result
}

/// The default number of connection loops: one per CPU core, at most 4;
/// 0 (connections on the main thread) on a single core. Measured on a
/// 2-core machine: 2 loops keep up with 8 clients where one thread did not
/// (README, Performance).
pub fn default_workers() -> usize {
    match std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
        1 => 0,
        n => n.min(4),
    }
}

/// The server's main runtime: one thread that accepts, ticks the engine,
/// serves stdio and runs the shutdown. With `workers` > 0, socket
/// connections are served on that many connection loops of their own
/// (`ConnectionLoops`); with 0, on this thread too.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .thread_name("tierd")
        .enable_all()
        .build()
}
