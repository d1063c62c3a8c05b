//! Helpers for the integration tests: spawn the real `tierd` binary and talk
//! raw protocol bytes to it over stdio or its Unix socket.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tierd");

/// How long any single answer may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running `tierd serve`.
pub struct Server {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub stderr: Arc<Mutex<String>>,
    pub socket: Option<PathBuf>,
}

/// Spawns `tierd ARGS` with pipes on its stdio.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tierd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let stdin = child.stdin.take();
    Server {
        child,
        stdin,
        lines: rx,
        stderr,
        socket: None,
    }
}

impl Server {
    /// `tierd serve` on stdio at time scale 50, plus `extra` arguments.
    pub fn stdio(extra: &[&str]) -> Server {
        Server::stdio_env(extra, &[])
    }

    pub fn stdio_env(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut args = vec!["serve"];
        if !extra.contains(&"--time-scale") {
            args.extend_from_slice(&["--time-scale", "50"]);
        }
        args.extend_from_slice(extra);
        spawn(&args, envs)
    }

    /// `tierd serve --socket PATH` at time scale 50; waits until it accepts.
    pub fn socket(path: &Path, extra: &[&str]) -> Server {
        let p = path.to_str().expect("utf-8 path");
        let mut args = vec!["--socket", p, "serve"];
        if !extra.contains(&"--time-scale") {
            args.extend_from_slice(&["--time-scale", "50"]);
        }
        args.extend_from_slice(extra);
        let mut s = spawn(&args, &[]);
        s.socket = Some(path.to_path_buf());
        let until = Instant::now() + DEADLINE;
        while UnixStream::connect(path).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("tierd exited early ({status}): {}", s.stderr());
            }
            assert!(Instant::now() < until, "socket never came up: {}", s.stderr());
            std::thread::sleep(Duration::from_millis(5));
        }
        s
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// stderr once it contains `needle` (it is read by a thread, so a line
    /// the server just logged may take a moment to arrive), or as it is at
    /// the deadline.
    pub fn stderr_with(&self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let s = self.stderr();
            if s.contains(needle) || Instant::now() >= until {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes raw bytes to stdin.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Next stdout line, which must be one JSON object.
    pub fn recv(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?}; stderr: {}", self.stderr()));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        assert!(v.is_object(), "not an object: {line}");
        v
    }

    /// Sends one request line and returns its answer.
    pub fn req(&mut self, line: &str) -> Value {
        self.send_raw(format!("{line}\n").as_bytes());
        self.recv()
    }

    /// Sends one request line and returns its answer line as sent.
    pub fn req_line(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\n").as_bytes());
        self.lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?}; stderr: {}", self.stderr()))
    }

    /// No further stdout line arrives within `wait`.
    pub fn assert_silent(&mut self, wait: Duration) {
        if let Ok(line) = self.lines.recv_timeout(wait) {
            panic!("unexpected extra line: {line}");
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < until, "tierd did not exit; stderr: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The remaining stdout lines, until the process closes stdout.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            out.push(line);
        }
        out
    }

    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line client of the socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Client {
            reader: BufReader::new(stream),
            writer,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read answer: {e} ({:?}); read so far: {line:?}", e.kind()));
        assert!(n > 0, "server closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}"))
    }

    pub fn req(&mut self, line: &str) -> Value {
        self.send_raw(format!("{line}\n").as_bytes());
        self.recv()
    }
}

/// Polls `tier_job_status` until the job ends; returns its last status.
pub fn wait_job(mut ask: impl FnMut(&str) -> Value, job_id: &str) -> Value {
    let until = Instant::now() + DEADLINE;
    loop {
        let st = ask(&format!(r#"{{"tier_job_status": "{job_id}"}}"#));
        match st["status"].as_str() {
            Some("success" | "failed" | "cancelled") => return st,
            Some("queued" | "running") => {}
            other => panic!("unexpected job status {other:?}: {st}"),
        }
        assert!(Instant::now() < until, "job {job_id} did not end: {st}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The error code of an error answer (panics on a success).
pub fn code(v: &Value) -> &str {
    assert_eq!(v["status"], "error", "expected an error: {v}");
    v["error"]["code"].as_str().expect("code")
}

pub fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().expect("message")
}
