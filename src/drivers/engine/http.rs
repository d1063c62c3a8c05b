//! A small HTTP/1.1 JSON client for engine APIs (hyper 1 over tokio, on a
//! runtime of its own so that callers on plain threads can block on it).
//!
//! Engine URLs take three forms:
//! - `http://127.0.0.1:PORT` (or `http://[::1]:PORT`),
//! - `http://localhost:PORT`,
//! - `unix:/path/to/engine.sock` (HTTP over a Unix socket; the request's
//!   `Host` header is `localhost`).
//!
//! Any other host is refused unless the tier sets
//! `allow_remote_engines = true`: an engine tier pins the model's files on
//! this machine for the engine to read, which only makes sense for a local
//! engine, and tierd should not be turned into a client of arbitrary hosts.
//! Every request has a timeout; an error carries the engine's HTTP status
//! and the start of its body, so a failed move says what the engine said.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest body an engine answer may have (a `/models` list of thousands
/// of models fits many times over).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How much of an error body a message quotes.
const EXCERPT_CHARS: usize = 300;

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` over TCP, and the `Host` header to send.
    Tcp { addr: String, host: String },
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses an engine URL (see the module docs).
    pub fn parse(url: &str, allow_remote: bool) -> Result<Endpoint, String> {
        if let Some(path) = url.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(format!("engine URL {url:?}: a Unix socket URL is unix:/absolute/path.sock"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "engine URL {url:?}: use http://127.0.0.1:PORT, http://localhost:PORT or unix:/path.sock (https is not supported)"
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('@') || authority.is_empty() {
            return Err(format!("engine URL {url:?}: give only scheme, host and port (no path or user)"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p),
            _ => (authority, "80"),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("engine URL {url:?}: port {port:?} is not a number from 0 to 65535"))?;
        let local = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
        if !local && !allow_remote {
            return Err(format!(
                "engine URL {url:?}: only 127.0.0.1, localhost and Unix sockets are accepted unless the tier sets allow_remote_engines = true"
            ));
        }
        let connect_host = if host == "localhost" { "127.0.0.1" } else { host };
        Ok(Endpoint::Tcp {
            addr: format!("{connect_host}:{port}"),
            host: format!("{host}:{port}"),
        })
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The engine could not be reached (refused, reset, timed out).
    #[error("engine unreachable: {0}")]
    Unreachable(String),
    /// The engine answered with an error status.
    #[error("engine answered HTTP {status}: {excerpt}")]
    Status { status: u16, excerpt: String },
    /// The engine answered something that is not the JSON expected.
    #[error("engine answered garbage: {0}")]
    Garbage(String),
}

impl HttpError {
    /// Whether the failure says the engine is down (rather than that it
    /// refused this one request).
    pub fn is_down(&self) -> bool {
        matches!(self, HttpError::Unreachable(_))
    }
}

/// The one runtime every engine client shares (one worker thread: engine
/// requests are few and small).
fn runtime() -> Result<&'static tokio::runtime::Runtime, HttpError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tierd-engine-http")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| HttpError::Unreachable(format!("cannot start the HTTP runtime: {e}")))
}

/// A client of one engine.
#[derive(Debug, Clone)]
pub struct HttpClient {
    endpoint: Endpoint,
}

/// An engine's answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (an empty body is `null`).
    pub fn json(&self) -> Result<Value, HttpError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Garbage(format!("{e}: {}", excerpt(&self.body))))
    }
}

/// The start of a body, for messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

impl HttpClient {
    /// A client of the engine at `url` (see [`Endpoint::parse`]).
    pub fn new(url: &str, allow_remote: bool) -> Result<HttpClient, String> {
        Ok(HttpClient {
            endpoint: Endpoint::parse(url, allow_remote)?,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET path`, answer as JSON; an error status is an error.
    pub fn get_json(&self, path: &str, timeout: Duration) -> Result<Value, HttpError> {
        self.call("GET", path, None, timeout)?.json()
    }

    /// `POST path` with a JSON body (or none), answer as JSON; an error
    /// status is an error.
    pub fn post_json(&self, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, HttpError> {
        self.call("POST", path, body, timeout)?.json()
    }

    /// One request; an error status is an [`HttpError::Status`].
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Answer, HttpError> {
        let answer = self.request(method, path, body, timeout)?;
        if !(200..300).contains(&answer.status) {
            return Err(HttpError::Status {
                status: answer.status,
                excerpt: error_message(&answer.body),
            });
        }
        Ok(answer)
    }

    /// One request, whatever its status. Blocks the calling thread (never
    /// call it on a runtime's thread or under the engine's lock).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Answer, HttpError> {
        let rt = runtime()?;
        let fut = self.send(method, path, body);
        rt.block_on(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(HttpError::Unreachable(format!(
                    "{method} {path}: no answer within {:.1} s",
                    timeout.as_secs_f64()
                ))),
            }
        })
    }

    /// `GET path` as a stream of lines (a server-sent event stream):
    /// calls `on_open` once the engine accepted the stream, then `on_line` with each line as it arrives, until the engine ends
    /// the stream, `on_line` answers `false`, or `stop` is set (checked
    /// every `check` while the stream is silent). Connecting and the
    /// answer's head are bounded by `connect_timeout`; an error status is
    /// an [`HttpError::Status`]. Blocks the calling thread.
    pub fn stream_lines(
        &self,
        path: &str,
        connect_timeout: Duration,
        check: Duration,
        stop: &std::sync::atomic::AtomicBool,
        on_open: impl FnOnce(),
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), HttpError> {
        use std::sync::atomic::Ordering;
        let rt = runtime()?;
        let what = format!("GET {path}");
        rt.block_on(async {
            let head = tokio::time::timeout(connect_timeout, self.start("GET", path, None, "text/event-stream"))
                .await
                .map_err(|_| HttpError::Unreachable(format!("{what}: no answer within {:.1} s", connect_timeout.as_secs_f64())))??;
            let (status, mut body, conn) = head;
            if !(200..300).contains(&status) {
                let bytes = Limited::new(body, EXCERPT_CHARS * 4)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                conn.abort();
                return Err(HttpError::Status {
                    status,
                    excerpt: error_message(&bytes),
                });
            }
            on_open();
            let mut pending: Vec<u8> = Vec::new();
            let result = loop {
                if stop.load(Ordering::Relaxed) {
                    break Ok(());
                }
                let frame = match tokio::time::timeout(check, body.frame()).await {
                    Err(_) => continue,
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(HttpError::Unreachable(format!("{what}: reading the stream: {e}"))),
                    Ok(Some(Ok(f))) => f,
                };
                let Ok(data) = frame.into_data() else { continue };
                pending.extend_from_slice(&data);
                if pending.len() > MAX_BODY_BYTES {
                    break Err(HttpError::Garbage(format!("{what}: a stream line over {MAX_BODY_BYTES} bytes")));
                }
                let mut go_on = true;
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line);
                    if !on_line(text.trim_end_matches(['\r', '\n'])) {
                        go_on = false;
                        break;
                    }
                }
                if !go_on {
                    break Ok(());
                }
            };
            conn.abort();
            result
        })
    }

    /// Connects and sends one request; answers the status, the body as it
    /// comes, and the connection's task (abort it once the body is read).
    async fn start(&self, method: &str, path: &str, body: Option<&Value>, accept: &str) -> Result<Started, HttpError> {
        let what = format!("{method} {path}");
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| HttpError::Garbage(e.to_string()))?),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host_header())
            .header("accept", accept);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(payload))
            .map_err(|e| HttpError::Garbage(format!("bad request {what}: {e}")))?;
        match &self.endpoint {
            Endpoint::Tcp { addr, .. } => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| HttpError::Unreachable(format!("{what}: connect {addr}: {e}")))?;
                let _ = s.set_nodelay(true);
                send_on(s, req, &what).await
            }
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| HttpError::Unreachable(format!("{what}: connect {}: {e}", p.display())))?;
                send_on(s, req, &what).await
            }
        }
    }

    /// The `Host` header for this engine.
    fn host_header(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp { host, .. } => host.clone(),
            Endpoint::Unix(_) => "localhost".to_string(),
        }
    }

    /// One request on a fresh connection, its whole answer read.
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, HttpError> {
        let (status, incoming, conn) = self.start(method, path, body, "application/json").await?;
        let body = Limited::new(incoming, MAX_BODY_BYTES).collect().await;
        conn.abort();
        let body = body
            .map_err(|e| HttpError::Unreachable(format!("{method} {path}: reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// A request under way: status, body to come, connection task.
type Started = (u16, hyper::body::Incoming, tokio::task::JoinHandle<()>);

/// Sends `req` on a fresh connection over `stream`.
async fn send_on<S>(stream: S, req: Request<Full<Bytes>>, what: &str) -> Result<Started, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Unreachable(format!("{what}: {e}")))?;
    // Ends when the answer has been read, or when aborted.
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(req).await {
        Ok(res) => Ok((res.status().as_u16(), res.into_body(), conn)),
        Err(e) => {
            conn.abort();
            Err(HttpError::Unreachable(format!("{what}: {e}")))
        }
    }
}

/// The engine's own message from an error body: `error.message`, `error`
/// or `detail` when it is JSON, else the start of the body.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let found = v
            .pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("message"));
        if let Some(m) = found {
            return match m.as_str() {
                Some(s) => s.to_string(),
                None => excerpt(m.to_string().as_bytes()),
            };
        }
    }
    excerpt(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_local_unless_allowed() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080", false),
            Ok(Endpoint::Tcp {
                addr: "127.0.0.1:8080".into(),
                host: "127.0.0.1:8080".into()
            })
        );
        assert!(matches!(Endpoint::parse("http://localhost:1/", false), Ok(Endpoint::Tcp { .. })));
        assert_eq!(Endpoint::parse("unix:/run/e.sock", false), Ok(Endpoint::Unix("/run/e.sock".into())));
        assert!(Endpoint::parse("unix:rel.sock", false).is_err());
        let err = Endpoint::parse("http://10.0.0.2:80", false).unwrap_err();
        assert!(err.contains("allow_remote_engines"), "{err}");
        assert!(Endpoint::parse("http://10.0.0.2:80", true).is_ok());
        assert!(Endpoint::parse("https://127.0.0.1:1", true).is_err());
        assert!(Endpoint::parse("http://127.0.0.1:1/api", false).is_err());
        assert!(Endpoint::parse("http://127.0.0.1:99999", false).is_err());
    }

    #[test]
    fn error_messages_quote_the_engine() {
        assert_eq!(
            error_message(br#"{"error":{"message":"model not found","code":404}}"#),
            "model not found"
        );
        assert_eq!(error_message(br#"{"error":"bad"}"#), "bad");
        assert_eq!(error_message(b"plain text"), "plain text");
    }

    /// Serves one canned answer per connection on a Unix socket.
    fn unix_server(path: &std::path::Path, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        use std::io::{Read, Write};
        let l = std::os::unix::net::UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for a in answers {
                let (mut c, _) = l.accept().expect("accept");
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap_or(0);
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                let _ = c.write_all(a.as_bytes());
            }
            seen
        })
    }

    #[test]
    fn event_streams_come_line_by_line_and_stop_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("engine.sock");
        let server = unix_server(
            &sock,
            vec![
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n: ping\n\ndata: {\"event\":\"a\"}\n\ndata: {\"event\":\"b\"}\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{\"error\":\"no route\"}",
            ],
        );
        let c = HttpClient::new(&format!("unix:{}", sock.display()), false).expect("url");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut opened, mut lines) = (false, Vec::new());
        let t = Duration::from_secs(5);
        let r = c.stream_lines(
            "/models/sse",
            t,
            Duration::from_millis(50),
            &stop,
            || opened = true,
            |l| {
                lines.push(l.to_string());
                true
            },
        );
        assert_eq!(r, Ok(()));
        assert!(opened);
        assert_eq!(lines, [": ping", "", "data: {\"event\":\"a\"}", "", "data: {\"event\":\"b\"}", ""]);
        let r = c.stream_lines(
            "/models/sse",
            t,
            Duration::from_millis(50),
            &stop,
            || panic!("not opened"),
            |_| true,
        );
        assert!(
            matches!(r, Err(HttpError::Status { status: 404, ref excerpt }) if excerpt == "no route"),
            "{r:?}"
        );
        server.join().expect("server");
    }

    #[test]
    fn a_stream_stops_when_asked_while_the_engine_is_silent() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("engine.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            // Silent from here on; held open until the client goes.
            let _ = c.read(&mut buf);
        });
        let c = HttpClient::new(&format!("unix:{}", sock.display()), false).expect("url");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let r = c.stream_lines(
                "/models/sse",
                Duration::from_secs(5),
                Duration::from_millis(20),
                &stop,
                || {},
                |_| true,
            );
            assert_eq!(r, Ok(()));
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        server.join().expect("server");
    }

    #[test]
    fn unix_socket_urls_carry_json_and_the_engines_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("engine.sock");
        let server = unix_server(
            &sock,
            vec![
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}",
                "HTTP/1.1 404 Not Found\r\nContent-Length: 39\r\nConnection: close\r\n\r\n{\"error\":{\"message\":\"model not found\"}}",
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!",
            ],
        );
        let c = HttpClient::new(&format!("unix:{}", sock.display()), false).expect("url");
        let t = Duration::from_secs(5);
        assert_eq!(
            c.post_json("/models/load", Some(&serde_json::json!({"model": "m"})), t),
            Ok(serde_json::json!({"ok": true}))
        );
        assert_eq!(
            c.get_json("/models", t),
            Err(HttpError::Status {
                status: 404,
                excerpt: "model not found".into()
            })
        );
        assert!(matches!(c.get_json("/models", t), Err(HttpError::Garbage(_))));
        let seen = server.join().expect("server");
        assert!(seen[0].starts_with("POST /models/load HTTP/1.1"), "{}", seen[0]);
        assert!(seen[0].contains("{\"model\":\"m\"}"), "{}", seen[0]);
    }

    #[test]
    fn a_silent_engine_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let c = HttpClient::new(&format!("http://127.0.0.1:{port}"), false).expect("url");
        let e = c.get_json("/models", Duration::from_millis(200)).unwrap_err();
        assert!(e.is_down() && e.to_string().contains("no answer within"), "{e}");
        drop(l);
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let c = HttpClient::new(&format!("http://127.0.0.1:{port}"), false).expect("url");
        let e = c.get_json("/models", Duration::from_secs(2)).unwrap_err();
        assert!(e.is_down(), "{e}");
    }
}
