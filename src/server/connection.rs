//! One connection: read a line, answer it, repeat. Responses go out in
//! request order; the next request is read only after the last one was
//! answered (a client that does not read its answers gets backpressure,
//! and stalls only its own connection).
//!
//! A socket connection also carries a [`Bounds`]: its partial lines draw on
//! the shared byte budget and must end within the line timeout, and it may
//! be closed to make room for a newcomer while it has no request in flight.
//! Each of these ends the connection with one error line.

use std::time::{Duration, Instant};

use serde_json::Map;
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;
use crate::requests::wire::too_long_response;

use super::framing::{Frame, HasBuffer, LineReader, PartialBudget};
use super::gate::{Ticket, error_line, evicted_line};
use super::shared::{Answer, SharedEngine};

/// How long a closing connection tries to write its last error line.
const LAST_LINE_WAIT: Duration = Duration::from_secs(1);

/// The limits a socket connection is served under; [`Bounds::none`] for
/// stdio (the server's own peer).
#[derive(Debug, Default)]
pub struct Bounds {
    /// Its place among the open connections (closing to make room).
    pub ticket: Option<Ticket>,
    /// Shared bound on bytes held in partial lines.
    pub budget: Option<PartialBudget>,
    /// Time from a line's first byte to its newline.
    pub line_timeout: Option<Duration>,
}

impl Bounds {
    pub fn none() -> Bounds {
        Bounds::default()
    }
}

/// Serves one peer until it closes its side, an I/O error occurs, or
/// `shutdown` fires between two requests. A request already read is always
/// answered, including a `wait` for a move (shutdown drives moves to an end).
pub async fn serve_connection<R, W>(
    shared: SharedEngine,
    reader: R,
    mut writer: W,
    shutdown: CancellationToken,
    bounds: Bounds,
) -> std::io::Result<()>
where
    R: AsyncBufRead + HasBuffer + Unpin,
    W: AsyncWrite + Unpin,
{
    let Bounds {
        ticket,
        budget,
        line_timeout,
    } = bounds;
    let mut lines = LineReader::new(reader);
    if let Some(b) = budget {
        lines = lines.with_budget(b);
    }
    if let Some(t) = line_timeout {
        lines = lines.with_timeout(t);
    }
    // Responses waiting to be written; reused for the life of the connection.
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // Registered once: polling it again per request costs nothing.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    // Never cancelled without a ticket.
    let never = CancellationToken::new();
    let evict = ticket.as_ref().map(Ticket::evicted).unwrap_or(&never).clone();
    let evicted = evict.cancelled();
    tokio::pin!(evicted);
    let mut last_done = Instant::now();
    let max = ticket.as_ref().map(Ticket::max).unwrap_or(0);
    loop {
        // Shutdown first: a peer that keeps sending must not hold it off.
        let frame = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            _ = &mut evicted => return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed())).await,
            frame = lines.next_frame() => frame?,
        };
        match frame {
            Frame::Eof => break,
            Frame::TooLong(bytes) => too_long_response(bytes, &mut out),
            Frame::TimedOut(bytes) => return close_with(&mut writer, &mut out, timed_out_line(bytes, line_timeout)).await,
            Frame::OverBudget(bytes) => {
                let limit = lines.budget_limit().unwrap_or(0);
                // Its bytes go back to the budget before the last line.
                drop(lines);
                return close_with(&mut writer, &mut out, over_budget_line(bytes, limit)).await;
            }
            Frame::Line => {
                if let Some(t) = &ticket
                    && !t.begin()
                {
                    // Chosen to make room just before this line arrived.
                    return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed())).await;
                }
                let mut answer = shared.answer_line(lines.line(), &mut out);
                if let Answer::Prepare(envelope) = answer {
                    // Blocking work off the engine's lock and off this loop.
                    answer = shared.answer_prepared(*envelope, &mut out).await;
                }
                if let Answer::Wait { job_id, id } = answer {
                    // Answers before this one go out first, so the peer sees
                    // them while the move runs. A peer that does not read
                    // them is not waiting for anything: it may be closed to
                    // make room meanwhile.
                    if !out.is_empty() {
                        if let Some(t) = &ticket {
                            t.done();
                        }
                        tokio::select! {
                            biased;
                            _ = &mut evicted => return Ok(()),
                            r = flush(&mut writer, &mut out) => r?,
                        }
                        if let Some(t) = &ticket
                            && !t.begin()
                        {
                            return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed())).await;
                        }
                    }
                    shared.wait_for_job(&job_id, &id, &mut out).await;
                }
                if let Some(t) = &ticket {
                    t.done();
                }
                last_done = Instant::now();
            }
        }
        // One unit of the task's cooperative budget per request: a peer
        // with a long pipeline of buffered requests (answered without
        // touching the socket) yields its loop to the other connections
        // every 128 requests.
        tokio::task::coop::consume_budget().await;
        // Batch the answers to pipelined requests: write once the input
        // already received has been answered. A peer that does not read
        // may be closed to make room meanwhile.
        if !lines.has_buffered_input() || out.len() >= 64 * 1024 {
            tokio::select! {
                biased;
                _ = &mut evicted => return Ok(()),
                r = flush(&mut writer, &mut out) => r?,
            }
        }
    }
    flush(&mut writer, &mut out).await?;
    writer.shutdown().await.or_else(ignore_not_connected)
}

/// Writes what is pending and one last error line (bounded in time: the
/// peer may not be reading), then closes.
async fn close_with<W: AsyncWrite + Unpin>(writer: &mut W, out: &mut Vec<u8>, line: Vec<u8>) -> std::io::Result<()> {
    out.extend_from_slice(&line);
    let _ = tokio::time::timeout(LAST_LINE_WAIT, async {
        flush(writer, out).await?;
        writer.shutdown().await
    })
    .await;
    Ok(())
}

fn timed_out_line(bytes: usize, timeout: Option<Duration>) -> Vec<u8> {
    let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0);
    let mut details = Map::new();
    details.insert("bytes".into(), bytes.into());
    details.insert("line_timeout_s".into(), secs.into());
    error_line(
        ErrorCode::InvalidRequest,
        &format!(
            "request line not completed within {secs} s (line_timeout_s) of its first byte ({bytes} bytes, no newline); closing the connection"
        ),
        details,
    )
}

fn over_budget_line(bytes: usize, limit: u64) -> Vec<u8> {
    let mut details = Map::new();
    details.insert("bytes".into(), bytes.into());
    details.insert("max_partial_line_bytes".into(), limit.into());
    error_line(
        ErrorCode::ResourceUnavailable,
        &format!(
            "partial request lines of all connections would exceed the server's {limit} byte buffer (max_partial_line_bytes); this line ({bytes} bytes so far) is refused and the connection closed"
        ),
        details,
    )
}

async fn flush<W: AsyncWrite + Unpin>(writer: &mut W, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        writer.write_all(out).await?;
        out.clear();
        writer.flush().await?;
    }
    Ok(())
}

fn ignore_not_connected(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::NotConnected | std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    }
}
