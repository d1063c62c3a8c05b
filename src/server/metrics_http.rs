//! `serve --metrics-listen ADDR`: `GET /metrics` over HTTP/1.x for a
//! Prometheus scraper, in the text exposition format 0.0.4
//! ([`crate::requests::exposition`]).
//!
//! A deliberately small server: one request per connection (answered with
//! `Connection: close`), a request head of at most [`MAX_HEAD`] bytes read
//! within [`HEAD_TIMEOUT`], at most [`MAX_SCRAPERS`] connections at once.
//! The exposition names every model, so the listener is refused on an
//! address other than loopback unless `--metrics-listen-any` says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::requests::exposition;

use super::shared::SharedEngine;

/// Longest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a scraper has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a scraper has to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrape connections served at once; more wait in the kernel's backlog.
pub const MAX_SCRAPERS: usize = 16;

/// Checks that `addr` may be listened on: loopback, or `any` given.
pub fn check_addr(addr: SocketAddr, any: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || any {
        Ok(())
    } else {
        Err(format!(
            "--metrics-listen {addr} is not a loopback address: the metrics (model names included) would be served to the network; \
             use 127.0.0.1:PORT, or add --metrics-listen-any to allow it"
        ))
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr, any: bool) -> Result<TcpListener, String> {
    check_addr(addr, any)?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-listen {addr}: cannot listen: {e}"))
}

/// Serves scrapes on `listener` until `token` is cancelled.
pub async fn serve_metrics(listener: TcpListener, shared: SharedEngine, token: CancellationToken, tracker: TaskTracker) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = token.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = token.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    if let Err(e) = serve_scrape(stream, &shared).await {
                        debug!(%peer, "metrics connection: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// `GET /metrics` (`head`: a HEAD request, no body).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not an HTTP request line.
    Malformed,
}

/// Reads an HTTP request line (`GET /metrics HTTP/1.1`); a query string is
/// ignored, as scrapers may add one.
pub fn parse_request_line(head: &[u8]) -> Asked {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Asked::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Asked::Malformed;
    };
    if !version.starts_with("HTTP/1.") || target.is_empty() {
        return Asked::Malformed;
    }
    let path = target.split('?').next().unwrap_or_default();
    match method {
        "GET" | "HEAD" if path == "/metrics" => Asked::Metrics { head: method == "HEAD" },
        "GET" | "HEAD" => Asked::NotFound,
        _ => Asked::BadMethod,
    }
}

/// Reads one request head and answers it.
async fn serve_scrape(mut stream: TcpStream, shared: &SharedEngine) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(!head.is_empty());
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let response = match read {
        Err(_) => plain(408, "Request Timeout", "request head not received in time\n"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => plain(431, "Request Header Fields Too Large", "request head too large\n"),
        Ok(Ok(true)) => match parse_request_line(&head) {
            Asked::Metrics { head } => {
                let body = shared.with(|engine, now| {
                    engine.tick(now);
                    exposition::render(engine, now)
                });
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                    exposition::CONTENT_TYPE,
                    body.len()
                )
                .into_bytes();
                if !head {
                    r.extend_from_slice(body.as_bytes());
                }
                r
            }
            Asked::NotFound => plain(404, "Not Found", "tierd serves its metrics at /metrics\n"),
            Asked::BadMethod => {
                let mut r = plain(405, "Method Not Allowed", "only GET and HEAD are served\n");
                // Allow goes with the headers: put it before the blank line.
                if let Some(pos) = r.windows(4).position(|w| w == b"\r\n\r\n") {
                    r.splice(pos + 2..pos + 2, b"Allow: GET, HEAD\r\n".iter().copied());
                }
                r
            }
            Asked::Malformed => plain(400, "Bad Request", "not an HTTP/1.x request\n"),
        },
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "scraper did not read the answer")))
}

fn plain(code: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics { head: false }
        );
        assert_eq!(
            parse_request_line(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Asked::Metrics { head: true }
        );
        assert_eq!(parse_request_line(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse_request_line(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::BadMethod);
        assert_eq!(parse_request_line(b"hello\r\n\r\n"), Asked::Malformed);
        assert_eq!(parse_request_line(b"GET /metrics SPDY/3\r\n\r\n"), Asked::Malformed);
    }

    #[test]
    fn only_loopback_without_any() {
        assert!(check_addr("127.0.0.1:9100".parse().unwrap(), false).is_ok());
        assert!(check_addr("[::1]:9100".parse().unwrap(), false).is_ok());
        let e = check_addr("0.0.0.0:9100".parse().unwrap(), false).unwrap_err();
        assert!(e.contains("--metrics-listen-any"), "{e}");
        assert!(check_addr("0.0.0.0:9100".parse().unwrap(), true).is_ok());
    }
}
