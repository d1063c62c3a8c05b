//! Connection limits and who may connect, against the real binary: the cap
//! that closes the longest-idle connection to make room, the refusal when
//! all are busy, the line timeout, the shared partial-line budget, the
//! SO_PEERCRED check, the private default socket directory, and the
//! client's check of the socket's owner.

mod common;
mod skip;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, DEADLINE, Server, code, message};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// A configuration file: `top` keys before the seed configuration.
fn config(dir: &Path, top: &str) -> PathBuf {
    let path = dir.join("tierd.toml");
    std::fs::write(&path, format!("{top}\n{}", tierd::config::DEFAULT_CONFIG_TOML)).unwrap();
    path
}

fn server_with(dir: &Path, top: &str, extra: &[&str]) -> (Server, PathBuf) {
    let cfg = config(dir, top);
    let sock = dir.join("tierd.sock");
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Server::socket(&sock, &args), sock)
}

/// Reads one line; `None` at the end of the stream (or a reset after it).
fn read_line(r: &mut BufReader<UnixStream>) -> Option<Value> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))),
        _ => None,
    }
}

fn connect(path: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

/// After its last line, the server closes the connection.
fn assert_closed(r: &mut BufReader<UnixStream>) {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after the last line: {:?}", String::from_utf8_lossy(&rest)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A raw connection: its reader and writer.
struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn open(path: &Path) -> Conn {
        let (r, w) = connect(path);
        Conn { r, w }
    }

    fn req(&mut self, line: &str) -> Value {
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
        read_line(&mut self.r).expect("an answer")
    }

    /// The next line the server sends, which must be its last.
    fn last_line(&mut self) -> Value {
        let v = read_line(&mut self.r).expect("one error line before closing");
        assert_closed(&mut self.r);
        v
    }
}

#[test]
fn at_the_cap_the_longest_idle_connection_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server_with(dir.path(), "max_connections = 2", &[]);
    let mut a = Conn::open(&sock);
    assert_eq!(a.req(r#"{"health": true}"#)["healthy"], true);
    std::thread::sleep(Duration::from_millis(20));
    let mut b = Conn::open(&sock);
    assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true);
    // A third connection: a has gone longest without a request; it is
    // closed with one line, and the newcomer is answered at once.
    let started = Instant::now();
    let mut c = Conn::open(&sock);
    assert_eq!(c.req(r#"{"health": true}"#)["healthy"], true);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let v = a.last_line();
    assert_eq!(code(&v), "RESOURCE_UNAVAILABLE");
    assert!(message(&v).contains("make room"), "{v}");
    assert_eq!(v["error"]["details"]["max_connections"], 2);
    assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true, "b stays");
    // Now c is idle longest: the next newcomer closes it, not b.
    std::thread::sleep(Duration::from_millis(20));
    let mut d = Conn::open(&sock);
    assert_eq!(d.req(r#"{"health": true}"#)["healthy"], true);
    assert_eq!(code(&c.last_line()), "RESOURCE_UNAVAILABLE");
    assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true);
}

/// A connection watching events is not idle to its client: at the cap an
/// idle connection goes first, however recent, and a watcher only when no
/// connection is merely idle.
#[test]
fn at_the_cap_a_watching_connection_goes_last() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server_with(dir.path(), "max_connections = 2", &[]);
    let mut a = Conn::open(&sock);
    assert!(a.req(r#"{"watch": true}"#).get("watching").is_some());
    std::thread::sleep(Duration::from_millis(20));
    let mut b = Conn::open(&sock);
    assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true);
    // a has gone longer without a request, but it watches: b goes.
    let mut c = Conn::open(&sock);
    assert!(c.req(r#"{"watch": true}"#).get("watching").is_some());
    let v = b.last_line();
    assert_eq!(code(&v), "RESOURCE_UNAVAILABLE");
    assert_eq!(v["error"]["details"]["watching"], false, "{v}");
    // Both watch now: the one watching longest (a) makes room, and says so.
    let mut d = Conn::open(&sock);
    assert_eq!(d.req(r#"{"health": true}"#)["healthy"], true);
    let v = a.last_line();
    assert_eq!(code(&v), "RESOURCE_UNAVAILABLE");
    assert_eq!(v["error"]["details"]["watching"], true, "{v}");
    assert!(message(&v).contains("watched events longest"), "{v}");
    // c still watches, and goes back to requests when it asks.
    c.w.write_all(b"{\"unwatch\": true}\n").unwrap();
    let answer = (0..100)
        .map_while(|_| read_line(&mut c.r))
        .find(|v| v.get("unwatched").is_some())
        .expect("the unwatch answer, after any events");
    assert_eq!(answer["unwatched"], true);
    assert_eq!(c.req(r#"{"health": true}"#)["healthy"], true);
}

#[test]
fn the_command_line_cap_overrides_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server_with(dir.path(), "max_connections = 5", &["--max-connections", "1"]);
    let mut a = Conn::open(&sock);
    assert_eq!(a.req(r#"{"health": true}"#)["healthy"], true);
    let mut b = Conn::open(&sock);
    assert_eq!(b.req(r#"{"health": true}"#)["healthy"], true);
    let v = a.last_line();
    assert_eq!(v["error"]["details"]["max_connections"], 1, "{v}");
}

#[test]
fn out_of_file_descriptors_idle_connections_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tierd.sock");
    let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(&sock)
        .args(["serve", "--time-scale", "50"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    let until = Instant::now() + DEADLINE;
    while UnixStream::connect(&sock).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(Instant::now() < until, "the socket never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    // 48 descriptors hold far fewer than max_connections (1024): each
    // newcomer past them is still answered, an idle one closed for it.
    let mut conns = Vec::new();
    for i in 0..100 {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut c = Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        c.w.write_all(b"{\"health\": true}\n").unwrap();
        let v = read_line(&mut c.r).unwrap_or_else(|| panic!("connection {i} got no answer"));
        assert_eq!(v["healthy"], true, "connection {i}: {v}");
        conns.push(c);
    }
    let mut evicted = 0;
    for c in &mut conns {
        c.r.get_ref().set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        if let Some(v) = read_line(&mut c.r) {
            assert_eq!(code(&v), "RESOURCE_UNAVAILABLE", "{v}");
            evicted += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(evicted >= 100 - 48, "only {evicted} closed to make room");
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.contains("out of file descriptors"), "{err}");
}

#[test]
fn a_newcomer_is_refused_only_when_every_connection_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    // A quarter of real time: the moves below take seconds.
    let (_server, sock) = server_with(dir.path(), "max_connections = 2", &["--time-scale", "0.25"]);
    let mut a = Conn::open(&sock);
    let mut b = Conn::open(&sock);
    for (c, model) in [(&mut a, "gpt-j-6b"), (&mut b, "t5-base")] {
        let line = format!(r#"{{"move_tier": {{"model_name": "{model}", "target_tier": "storage", "wait": true}}}}"#);
        c.w.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    // Both waits are under way: neither may be closed, so the newcomer is
    // refused with one line, at once.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut n = Conn::open(&sock);
    let v = n.last_line();
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(code(&v), "RESOURCE_UNAVAILABLE");
    assert!(message(&v).contains("too many connections"), "{v}");
    // The CLI says so too, and does not hang.
    let out = Command::new(BIN).arg("--socket").arg(&sock).arg("health").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too many connections"), "{err}");
    // The waits are answered when their moves end; then there is room.
    for c in [&mut a, &mut b] {
        let v = read_line(&mut c.r).expect("the wait's answer");
        assert_eq!(v["status"], "success", "{v}");
    }
    let mut m = Conn::open(&sock);
    assert_eq!(m.req(r#"{"health": true}"#)["healthy"], true);
}

#[test]
fn a_partial_line_must_end_within_line_timeout_s() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server_with(dir.path(), "line_timeout_s = 1.0", &[]);
    let mut idle = Conn::open(&sock);
    let mut slow = Conn::open(&sock);
    slow.w.write_all(br#"{"health": tr"#).unwrap();
    let started = Instant::now();
    let v = slow.last_line();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(code(&v), "INVALID_REQUEST");
    assert!(message(&v).contains("line_timeout_s"), "{v}");
    assert_eq!(v["error"]["details"]["bytes"], 13);
    // A connection that sends nothing is not timed out.
    assert_eq!(idle.req(r#"{"health": true}"#)["healthy"], true);
    // Nor is a line that ends in time, though it came in pieces.
    idle.w.write_all(br#"{"health""#).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(idle.req(r#": true}"#)["healthy"], true);
}

/// Writes `bytes` to `w` from a thread, ignoring the server closing it.
fn send_in_background(mut w: UnixStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    })
}

#[test]
fn partial_lines_of_all_connections_share_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server_with(dir.path(), "max_partial_line_bytes = 1000000", &[]);
    let mut a = Conn::open(&sock);
    let t = send_in_background(a.w.try_clone().unwrap(), vec![b'x'; 600_000]);
    t.join().unwrap();
    // The server has read a's 600 kB (it reads until the line is complete).
    std::thread::sleep(Duration::from_millis(300));
    let mut b = Conn::open(&sock);
    let t = send_in_background(b.w.try_clone().unwrap(), vec![b'y'; 600_000]);
    let v = b.last_line();
    t.join().unwrap();
    assert_eq!(code(&v), "RESOURCE_UNAVAILABLE");
    assert!(message(&v).contains("max_partial_line_bytes"), "{v}");
    assert_eq!(v["error"]["details"]["max_partial_line_bytes"], 1_000_000);
    // a is unharmed: its line completes (it is not JSON) and it goes on.
    assert_eq!(code(&a.req("")), "INVALID_REQUEST");
    assert_eq!(a.req(r#"{"health": true}"#)["healthy"], true);
    // Its bytes went back to the budget: another 600 kB line fits.
    let mut c = Conn::open(&sock);
    let mut line = vec![b' '; 600_000];
    line.extend_from_slice(b"{\"health\": true}\n");
    let t = send_in_background(c.w.try_clone().unwrap(), line);
    let v = read_line(&mut c.r).expect("answer");
    t.join().unwrap();
    assert_eq!(v["healthy"], true, "{v}");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `tierd --socket SOCK ARGS` run as `uid`/`gid`.
fn cli_as(uid: u32, gid: u32, sock: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A directory everyone may enter, holding a socket everyone may open.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn socket_peers_are_checked_with_so_peercred() {
    if !is_root() {
        skip::skip("socket_peers_are_checked_with_so_peercred", "needs root to run a client as nobody");
        return;
    }
    let dir = open_dir();
    let (server, sock) = server_with(dir.path(), "", &[]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // nobody can reach the socket, but is not admitted.
    let out = cli_as(NOBODY, NOBODY, &sock, &["request", r#"{"update_limits": {"ram_max_gb": 6}}"#]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    assert_eq!(code(&v), "PERMISSION_DENIED");
    assert!(message(&v).contains("uid 65534"), "{v}");
    assert_eq!(v["error"]["details"]["uid"], NOBODY);
    let log = server.stderr_with("refused a socket connection");
    assert!(log.contains("refused a socket connection") && log.contains("65534"), "{log}");
    // Nothing changed; root is admitted.
    let mut c = Conn::open(&sock);
    assert_eq!(c.req(r#"{"tier_status": true}"#)["tiers"]["ram"]["limit_gb"], 5.0);
    drop(server);

    // allowed_uids admits nobody.
    let dir = open_dir();
    let (_server, sock) = server_with(dir.path(), &format!("allowed_uids = [{NOBODY}]"), &[]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli_as(NOBODY, NOBODY, &sock, &["health"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy: true"));

    // So does allowed_gids, by the peer's group.
    let dir = open_dir();
    let (_server, sock) = server_with(dir.path(), &format!("allowed_gids = [{NOBODY}]"), &[]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = cli_as(NOBODY, NOBODY, &sock, &["health"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Another uid in another group is still refused.
    let out = cli_as(NOBODY - 1, NOBODY - 1, &sock, &["health"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    drop(_server);

    // A supplementary group counts too (SO_PEERGROUPS).
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip::skip(
            "socket_peers_are_checked_with_so_peercred (supplementary groups)",
            "setpriv is not installed",
        );
        return;
    }
    let dir = open_dir();
    let (_server, sock) = server_with(dir.path(), "allowed_gids = [4242]", &[]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let setpriv = |groups: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"]);
        match groups {
            "" => cmd.arg("--clear-groups"),
            g => cmd.arg(format!("--groups={g}")),
        };
        cmd.arg(BIN)
            .arg("--socket")
            .arg(&sock)
            .arg("health")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = setpriv("4242");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = setpriv("");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
}

#[test]
fn the_client_refuses_a_socket_or_server_owned_by_someone_else() {
    if !is_root() {
        skip::skip(
            "the_client_refuses_a_socket_or_server_owned_by_someone_else",
            "needs root to chown the socket and run a server as nobody",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, sock) = server_with(dir.path(), "", &[]);
    std::os::unix::fs::chown(&sock, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = Command::new(BIN).arg("--socket").arg(&sock).arg("health").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to talk") && err.contains("owned by uid 65534"), "{err}");
    assert!(out.stdout.is_empty());

    // A server running as nobody, its socket file made to look like root's:
    // the server's own credentials give it away.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let sock = dir.path().join("fake.sock");
    let mut fake = Command::new(BIN)
        .arg("--socket")
        .arg(&sock)
        .args(["serve", "--time-scale", "50"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < until, "the fake server never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::os::unix::fs::chown(&sock, Some(0), Some(0)).unwrap();
    let out = Command::new(BIN).arg("--socket").arg(&sock).arg("health").output().unwrap();
    let _ = fake.kill();
    let _ = fake.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the server process is owned by uid 65534"), "{err}");
}

/// `tierd serve --socket` (no path) with `XDG_RUNTIME_DIR=run`.
fn serve_default(run: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--socket", "--time-scale", "50"])
        .env("XDG_RUNTIME_DIR", run)
        .env_remove("TIERD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn the_default_socket_lives_in_a_private_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = serve_default(&run);
    let private = run.join("tierd");
    let sock = private.join("tierd.sock");
    let until = Instant::now() + DEADLINE;
    while UnixStream::connect(&sock).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("server exited ({st}): {err}");
        }
        assert!(Instant::now() < until, "the default socket never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let meta = std::fs::symlink_metadata(&private).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    // The client finds it by the same rule.
    let out = Command::new(BIN)
        .arg("health")
        .env("XDG_RUNTIME_DIR", &run)
        .env_remove("TIERD_SOCKET")
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // An existing directory open to others is refused, and left as it is.
    let _ = std::fs::remove_file(&sock);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = serve_default(&run).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 0777") && err.contains("0700"), "{err}");
    assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o7777, 0o777);
    assert!(!sock.exists());

    if is_root() {
        // One owned by someone else is refused.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&private, Some(NOBODY), Some(NOBODY)).unwrap();
        let out = serve_default(&run).wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert!(!sock.exists());
    }

    // A symlink in its place is refused.
    std::fs::remove_dir(&private).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &private).unwrap();
    let out = serve_default(&run).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!elsewhere.join("tierd.sock").exists());
}
