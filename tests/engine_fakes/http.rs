//! The fakes' HTTP/1.1 server and a tiny client (see the parent module).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string's pairs, in order (a key may repeat: `tags`).
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client sent `connection: close`.
    pub close: bool,
}

impl Request {
    /// The first value of query key `key`.
    pub fn query_get(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    /// Every value of query key `key`.
    pub fn query_all(&self, key: &str) -> Vec<&str> {
        self.query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json; charset=utf-8",
            body: value.to_string().into_bytes(),
        }
    }
    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
        }
    }
    pub fn empty() -> Response {
        Response {
            status: 200,
            content_type: "application/json",
            body: Vec::new(),
        }
    }
}

/// A fault injected into the next answers to a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status and body instead.
    Status(u16, String),
    /// Answer 200 with bytes that are not JSON.
    Garbage,
    /// Hold the request this long (or until the server goes down), then
    /// handle it normally.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
}

/// What the handler of a fake implements.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request, server: &ServerState) -> Response;
}

/// The server's shared state, which handlers may consult (to sleep in a way
/// that ends when the server goes down).
pub struct ServerState {
    /// Whether the port is open.
    up: AtomicBool,
    /// Bumped each time the server goes down: answers prepared for an older
    /// generation are never sent (the engine died while working on them).
    generation: AtomicU64,
    /// Set when the fake is dropped: every thread ends.
    stop: AtomicBool,
    faults: Mutex<VecDeque<(String, Fault)>>,
    /// Every request received, in order: (method, path with query, body).
    pub log: Mutex<Vec<(String, String, String)>>,
}

impl ServerState {
    /// Sleeps `d`, or less if the server goes down meanwhile; returns whether
    /// it is still up (in the same generation).
    pub fn sleep(&self, d: Duration) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        let end = Instant::now() + d;
        loop {
            if !self.up.load(Ordering::SeqCst) || self.generation.load(Ordering::SeqCst) != generation || self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            thread::sleep((end - now).min(Duration::from_millis(5)));
        }
    }
    fn take_fault(&self, path: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults.iter().position(|(p, _)| p == path)?;
        faults.remove(i).map(|(_, f)| f)
    }
}

/// A running fake server on 127.0.0.1.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
}

impl HttpServer {
    /// Binds a free port and serves `handler`.
    pub fn start(handler: Arc<dyn Handler>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(ServerState {
            up: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
        });
        let st = Arc::clone(&state);
        thread::spawn(move || accept_loop(Some(listener), addr, st, handler));
        HttpServer { addr, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The engine dies: the port refuses connections, open connections are
    /// closed and answers in flight are never sent.
    pub fn go_down(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.up.store(false, Ordering::SeqCst);
    }

    /// The engine is back on the same port.
    pub fn come_back(&self) {
        self.state.up.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Wait until the accept loop has the port again.
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        panic!("fake could not rebind {}", self.addr);
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::SeqCst)
    }

    /// The next `count` requests to `path` (without query) get `fault`.
    pub fn fail_next(&self, path: &str, fault: Fault, count: usize) {
        let mut faults = self.state.faults.lock().unwrap();
        for _ in 0..count {
            faults.push_back((path.to_string(), fault.clone()));
        }
    }

    /// Removes the faults not yet used.
    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// The requests received so far: (method, path with query, body).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn accept_loop(mut listener: Option<TcpListener>, addr: SocketAddr, state: Arc<ServerState>, handler: Arc<dyn Handler>) {
    if let Some(l) = &listener {
        let _ = l.set_nonblocking(true);
    }
    while !state.stop.load(Ordering::SeqCst) {
        if !state.up.load(Ordering::SeqCst) {
            listener = None;
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        let Some(l) = &listener else {
            // std sets SO_REUSEADDR, so the same port binds again at once.
            if let Ok(l) = TcpListener::bind(addr) {
                let _ = l.set_nonblocking(true);
                listener = Some(l);
            } else {
                thread::sleep(Duration::from_millis(5));
            }
            continue;
        };
        match l.accept() {
            Ok((stream, _)) => {
                let st = Arc::clone(&state);
                let h = Arc::clone(&handler);
                thread::spawn(move || serve_connection(stream, st, h));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve_connection(stream: TcpStream, state: Arc<ServerState>, handler: Arc<dyn Handler>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let generation = state.generation.load(Ordering::SeqCst);
    let Ok(write_half) = stream.try_clone() else { return };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader, &state, generation) {
        let path_q = if req.query.is_empty() {
            req.path.clone()
        } else {
            format!(
                "{}?{}",
                req.path,
                req.query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
            )
        };
        state.log.lock().unwrap().push((req.method.clone(), path_q, req.body_str()));
        let response = match state.take_fault(&req.path) {
            Some(Fault::Status(code, body)) => {
                if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
                    Response {
                        status: code,
                        content_type: "application/json",
                        body: body.into_bytes(),
                    }
                } else {
                    Response::text(code, &body)
                }
            }
            Some(Fault::Garbage) => Response::text(200, "<html>\u{fffd} not json {{"),
            Some(Fault::Drop) => break,
            Some(Fault::Delay(d)) => {
                if !state.sleep(d) {
                    break;
                }
                handler.handle(&req, &state)
            }
            None => handler.handle(&req, &state),
        };
        if state.generation.load(Ordering::SeqCst) != generation || state.stop.load(Ordering::SeqCst) {
            break; // went down while working: the answer is lost
        }
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&response.body).is_err() {
            break;
        }
        let _ = writer.flush();
        if req.close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request; `None` at the end of the connection, when the server
/// went down, or on a malformed request.
fn read_request(reader: &mut BufReader<TcpStream>, state: &ServerState, generation: u64) -> Option<Request> {
    let alive = || state.generation.load(Ordering::SeqCst) == generation && !state.stop.load(Ordering::SeqCst);
    let mut line = String::new();
    // Wait for the request line, waking up to notice the server going down.
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) if line.ends_with('\n') => break,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if !alive() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut content_length = 0usize;
    let mut close = false;
    let mut h = String::new();
    loop {
        match reader.read_line(&mut h) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if !alive() {
                    return None;
                }
                continue;
            }
            Err(_) => return None,
        }
        if !h.ends_with('\n') {
            continue; // a partial line: read on
        }
        let line = h.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().ok()?;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("connection")
            && v.trim().eq_ignore_ascii_case("close")
        {
            close = true;
        }
        h.clear();
    }
    let mut body = vec![0u8; content_length];
    let mut got = 0;
    while got < content_length {
        match reader.read(&mut body[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if !alive() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target, Vec::new()),
    };
    Some(Request {
        method,
        path,
        query,
        body,
        close,
    })
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// A native client's request (or a test's look): one request on a fresh
/// connection; `Err` when the server cannot be reached.
pub fn request(url: &str, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<(u16, String), String> {
    request_within(url, method, path, body, Duration::from_secs(30))
}

/// As [`request`], giving up after `timeout`.
pub fn request_within(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let host = url.strip_prefix("http://").ok_or("only http:// urls")?;
    let mut stream = TcpStream::connect(host).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    stream.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok((status, body.to_string()))
}
