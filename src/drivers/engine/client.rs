//! A small blocking HTTP/1.1 JSON client for engine tiers: one request per
//! connection (`connection: close`), every step under the caller's
//! timeout, run on the engine tier's own threads (never under the engine's
//! lock). Engines listen on loopback or a Unix socket, so this needs no TLS.
//!
//! URLs: `http://127.0.0.1:PORT`, `http://localhost:PORT`, `http://[::1]:PORT`,
//! or `unix:/path/to.sock` (HTTP over a Unix socket). Another host is
//! refused unless the configuration sets `allow_remote_engines = true`: the
//! engines' APIs have no authentication, and tierd sends them load and
//! unload orders.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ollama::Exchange;

/// Largest answer body read (an engine's model lists are small).
pub const MAX_BODY: usize = 16 << 20;

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` and the host header.
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses an engine URL, refusing other hosts unless `allow_remote`.
    pub fn parse(url: &str, allow_remote: bool) -> Result<Endpoint, String> {
        if let Some(path) = url.strip_prefix("unix:") {
            let path = path.trim_start_matches("//");
            if !path.starts_with('/') {
                return Err(format!(
                    "engine url {url:?}: a Unix socket needs an absolute path (unix:/run/ollama.sock)"
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("engine url {url:?}: only http:// and unix: URLs are supported (engines serve plain HTTP locally)"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if rest.len() > authority.len() && rest[authority.len()..] != *"/" {
            return Err(format!("engine url {url:?}: give the server's root, without a path"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, p.parse::<u16>().map_err(|_| format!("engine url {url:?}: bad port {p:?}"))?),
            _ => return Err(format!("engine url {url:?}: give the port (http://127.0.0.1:11434)")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !local && !allow_remote {
            return Err(format!(
                "engine url {url:?}: only 127.0.0.1, localhost and Unix sockets are accepted unless allow_remote_engines = true"
            ));
        }
        Ok(Endpoint::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

/// The client of one engine.
#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    /// The URL as configured (for messages).
    pub url: String,
}

impl Client {
    pub fn new(url: &str, allow_remote: bool) -> Result<Client, String> {
        Ok(Client {
            endpoint: Endpoint::parse(url, allow_remote)?,
            url: url.to_string(),
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
        let deadline = Instant::now() + timeout;
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| "timed out".to_string())
        };
        let body = body.map(Value::to_string).unwrap_or_default();
        let host = match &self.endpoint {
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: tierd\r\naccept: application/json\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut raw = Vec::new();
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                let addr = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| format!("{}: {e}", self.url))?
                    .next()
                    .ok_or_else(|| format!("{}: no address", self.url))?;
                let mut s = TcpStream::connect_timeout(&addr, left()?).map_err(|e| format!("{}: {e}", self.url))?;
                let _ = s.set_nodelay(true);
                exchange_on(&mut s, &head, &body, &mut raw, &left, |s, d| {
                    s.set_read_timeout(Some(d))?;
                    s.set_write_timeout(Some(d))
                })
                .map_err(|e| format!("{}: {e}", self.url))?;
            }
            Endpoint::Unix(p) => {
                let mut s = UnixStream::connect(p).map_err(|e| format!("{}: {e}", self.url))?;
                exchange_on(&mut s, &head, &body, &mut raw, &left, |s, d| {
                    s.set_read_timeout(Some(d))?;
                    s.set_write_timeout(Some(d))
                })
                .map_err(|e| format!("{}: {e}", self.url))?;
            }
        }
        parse_response(&raw).map_err(|e| format!("{}: {e}", self.url))
    }
}

fn exchange_on<S: Read + Write>(
    s: &mut S,
    head: &str,
    body: &str,
    raw: &mut Vec<u8>,
    left: &dyn Fn() -> Result<Duration, String>,
    set_timeouts: impl Fn(&S, Duration) -> std::io::Result<()>,
) -> Result<(), String> {
    set_timeouts(s, left()?).map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        set_timeouts(s, left()?).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_BODY {
                    return Err(format!("answer larger than {MAX_BODY} bytes"));
                }
                if response_complete(raw) {
                    return Ok(());
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("timed out".into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

fn chunked(head: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"))
    })
}

/// Whether `raw` holds a whole answer (so the read need not wait for EOF).
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = header_end(raw) else { return false };
    let head = String::from_utf8_lossy(&raw[..end]);
    if let Some(n) = content_length(&head) {
        return raw.len() >= end + n;
    }
    chunked(&head) && decode_chunked(&raw[end..]).is_ok()
}

fn decode_chunked(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Status and body of a raw answer.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = header_end(raw).ok_or_else(|| {
        if raw.is_empty() {
            "the connection closed without an answer".to_string()
        } else {
            "answer is not HTTP".to_string()
        }
    })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.").and_then(|r| r.split_whitespace().nth(1)))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {:?}", head.lines().next().unwrap_or("")))?;
    let body = &raw[end..];
    let body = if let Some(n) = content_length(&head) {
        body.get(..n).ok_or("truncated answer")?.to_vec()
    } else if chunked(&head) {
        decode_chunked(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

impl Exchange for Client {
    fn exchange(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
        self.request(method, path, body, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_engines_unless_allowed() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:11434", false),
            Ok(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 11434
            })
        );
        assert!(Endpoint::parse("http://localhost:8000/", false).is_ok());
        assert!(Endpoint::parse("http://[::1]:8000", false).is_ok());
        assert_eq!(
            Endpoint::parse("unix:/run/ollama.sock", false),
            Ok(Endpoint::Unix("/run/ollama.sock".into()))
        );
        let e = Endpoint::parse("http://10.0.0.5:11434", false).unwrap_err();
        assert!(e.contains("allow_remote_engines"), "{e}");
        assert!(Endpoint::parse("http://10.0.0.5:11434", true).is_ok());
        assert!(Endpoint::parse("https://127.0.0.1:1", false).is_err());
        assert!(Endpoint::parse("http://127.0.0.1", false).is_err());
        assert!(Endpoint::parse("unix:relative.sock", false).is_err());
        assert!(Endpoint::parse("http://127.0.0.1:1/api", false).is_err());
    }

    #[test]
    fn answers_by_length_chunks_or_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!(r, (200, b"{}".to_vec()));
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert!(response_complete(raw));
        assert_eq!(parse_response(raw).unwrap(), (404, b"{\"a\":1}".to_vec()));
        assert_eq!(parse_response(b"HTTP/1.0 500 x\r\n\r\noops").unwrap(), (500, b"oops".to_vec()));
        assert!(parse_response(b"").unwrap_err().contains("without an answer"));
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
