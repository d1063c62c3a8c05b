//! systemd: the units in packaging/ verify with no output at all, and
//! `tierd serve` serves a socket passed the way systemd passes it
//! (descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` = its pid) and sends
//! `READY=1` and `STOPPING=1` to the `NOTIFY_SOCKET` this test listens on.

mod common;
mod skip;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, DEADLINE};
use serde_json::Value;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn units_verify_without_any_output() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        skip::skip("units_verify_without_any_output", "systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    // verify checks that ExecStart= exists: a copy of the units points it
    // at the binary under test; nothing else changes.
    let dir = tempfile::tempdir().expect("tempdir");
    let service = read(&packaging().join("tierd.service"));
    assert!(service.contains("ExecStart=/usr/local/bin/tierd serve"), "the installed path");
    std::fs::write(dir.path().join("tierd.service"), service.replace("/usr/local/bin/tierd", BIN)).expect("write");
    std::fs::copy(packaging().join("tierd.socket"), dir.path().join("tierd.socket")).expect("copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("tierd.socket"))
        .arg(dir.path().join("tierd.service"))
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify failed ({}): {stderr}{stdout}", out.status);
    assert!(stderr.is_empty(), "verify wrote to stderr: {stderr}");
    assert!(stdout.is_empty(), "verify wrote to stdout: {stdout}");
}

#[test]
fn units_keep_activation_notify_and_hardening() {
    let service = read(&packaging().join("tierd.service"));
    let socket = read(&packaging().join("tierd.socket"));
    let has = |text: &str, line: &str| text.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "Requires=tierd.socket",
        "User=tierd",
        "StateDirectory=tierd",
        "LimitMEMLOCK=infinity",
        "AmbientCapabilities=CAP_IPC_LOCK",
        "CapabilityBoundingSet=CAP_IPC_LOCK",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "IPAddressAllow=localhost",
    ] {
        assert!(has(&service, line), "tierd.service lacks {line}");
    }
    assert!(
        service.lines().any(|l| l.starts_with("ReadWritePaths=/var/lib/tierd")),
        "the state directory is writable"
    );
    for line in ["ListenStream=/run/tierd/tierd.sock", "Accept=no", "WantedBy=sockets.target"] {
        assert!(has(&socket, line), "tierd.socket lacks {line}");
    }
}

/// A `tierd serve` started as systemd starts it: `fd` as descriptor 3,
/// `LISTEN_PID` its own pid (a shell sets it to `$$` and execs tierd, which
/// keeps the pid), stdin /dev/null, `NOTIFY_SOCKET` set.
fn spawn_activated(fd: RawFd, notify: &Path, extra: &[&str]) -> Child {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve --time-scale 50 "$@""#)
        .arg(BIN)
        .args(extra)
        .env("NOTIFY_SOCKET", notify)
        .env("TIERD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // Already descriptor 3: keep it open across exec.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn tierd")
}

/// Notification datagrams until one contains `want`.
fn await_notify(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let until = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(msg.clone());
                if msg.lines().any(|l| l == want) {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {want} within {DEADLINE:?}; got {seen:?}");
}

fn ask(path: &Path, line: &str) -> Value {
    let mut s = UnixStream::connect(path).expect("connect to the activated socket");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(format!("{line}\n").as_bytes()).expect("write");
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).expect("read the answer");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            panic!("tierd did not exit; stderr: {}", stderr_of(child));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn serves_the_inherited_socket_and_notifies_ready_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let sock_path = dir.path().join("tierd.sock");
    let listener = UnixListener::bind(&sock_path).expect("bind the socket systemd would");
    let mut child = spawn_activated(listener.as_raw_fd(), &notify_path, &[]);
    // Only tierd holds the socket now, as with systemd after the hand-over.
    drop(listener);

    let mut seen = Vec::new();
    await_notify(&notify, "READY=1", &mut seen);
    // stdin is /dev/null, as under systemd: tierd did not take its end as
    // a reason to stop, and answers on the passed socket.
    let status = ask(&sock_path, r#"{"tier_status": true}"#);
    assert_eq!(status["status"], "success", "{status}");
    let moved = ask(
        &sock_path,
        r#"{"move_tier": {"model_name": "gpt-j-6b", "target_tier": "storage", "wait": true}}"#,
    );
    assert_eq!(moved["status"], "success", "{moved}");
    assert!(child.try_wait().expect("try_wait").is_none(), "tierd is still serving");

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    await_notify(&notify, "STOPPING=1", &mut seen);
    let exit = wait_exit(&mut child);
    let stderr = stderr_of(&mut child);
    assert!(exit.success(), "{exit}: {stderr}");
    assert!(seen.iter().any(|m| m.contains("STATUS=serving the socket")), "{seen:?}");
    // The socket file is systemd's: tierd leaves it in place.
    assert!(sock_path.exists(), "tierd removed the socket file it did not create");
}

#[test]
fn a_passed_socket_that_is_not_a_listening_stream_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let datagram = UnixDatagram::bind(dir.path().join("dgram.sock")).expect("bind a datagram socket");
    let mut child = spawn_activated(datagram.as_raw_fd(), &notify_path, &[]);
    let exit = wait_exit(&mut child);
    let stderr = stderr_of(&mut child);
    assert!(!exit.success(), "tierd served a datagram socket: {stderr}");
    assert!(
        stderr.contains("descriptor 3") && stderr.contains("not a stream") && stderr.contains("ListenStream="),
        "{stderr}"
    );
    // It never said it was ready.
    let mut buf = [0u8; 512];
    if let Ok(n) = notify.recv(&mut buf) {
        assert!(!String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    }
}
