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

use serde_json::{Map, json};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::{EngineError, ErrorCode};
use crate::requests::watch::Watch;
use crate::requests::wire::{Id, error_response, too_long_response, with_id, write_value};
use crate::requests::{self, Envelope, Request};

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
            _ = &mut evicted => return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed(), false)).await,
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
                    return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed(), false)).await;
                }
                let mut answer = shared.answer_line(lines.line(), &mut out);
                if let Answer::Prepare(envelope) = answer {
                    // Blocking work off the engine's lock and off this loop.
                    answer = shared.answer_prepared(*envelope, &mut out).await;
                }
                if let Answer::Watch { spec, id } = answer {
                    // The connection is busy no more: a watcher waits on
                    // the server, not the other way round.
                    if let Some(t) = &ticket {
                        t.done();
                        t.watching(true);
                    }
                    let end = watch_stream(
                        &shared,
                        &mut lines,
                        &mut writer,
                        &mut out,
                        &spec,
                        &id,
                        &shutdown,
                        &evict,
                        line_timeout,
                    )
                    .await;
                    if let Some(t) = &ticket {
                        t.watching(false);
                    }
                    match end {
                        WatchEnd::Unwatched => {}
                        WatchEnd::Closed(r) => {
                            r?;
                            break;
                        }
                        WatchEnd::Evicted => return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed(), true)).await,
                        WatchEnd::CloseWith(line) => {
                            // A partial line's bytes go back to the budget first.
                            drop(lines);
                            return close_with(&mut writer, &mut out, line).await;
                        }
                    }
                    last_done = Instant::now();
                    continue;
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
                            return close_with(&mut writer, &mut out, evicted_line(max, last_done.elapsed(), false)).await;
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

/// How a watch ended.
enum WatchEnd {
    /// `{"unwatch": true}`: back to requests.
    Unwatched,
    /// The peer closed, the server shuts down, or an I/O error.
    Closed(std::io::Result<()>),
    /// Closed to make room for a newcomer.
    Evicted,
    /// Closed with this error line (a line timed out or over the budget).
    CloseWith(Vec<u8>),
}

/// Events written per batch before the peer's input is looked at again.
const EVENTS_PER_WRITE: usize = 256;

/// A connection in watch mode: the acknowledgement, then the watcher's
/// events as they come, until `unwatch`, the peer's end, or shutdown.
/// Other requests meanwhile get an error line each (the stream stays a
/// stream of events).
#[allow(clippy::too_many_arguments)]
async fn watch_stream<R, W>(
    shared: &SharedEngine,
    lines: &mut LineReader<R>,
    writer: &mut W,
    out: &mut Vec<u8>,
    spec: &Watch,
    id: &Option<Id>,
    shutdown: &CancellationToken,
    evict: &CancellationToken,
    line_timeout: Option<Duration>,
) -> WatchEnd
where
    R: AsyncBufRead + HasBuffer + Unpin,
    W: AsyncWrite + Unpin,
{
    let watcher = shared.watch(spec);
    let ack = json!({
        "status": "success",
        "watching": {
            "events": spec.events.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "progress_interval_s": spec.progress_interval_s,
            "buffer": spec.buffer,
        }
    });
    write_value(out, &with_id(ack, id));
    let end = loop {
        // The next line's read stays pending while events are written (a
        // read cancelled mid-line would lose its start).
        let frame = {
            let mut next = std::pin::pin!(lines.next_frame());
            loop {
                if let Err(e) = flush_or_stop(writer, out, shutdown, evict).await {
                    break Err(e);
                }
                if watcher.drain_into(out, EVENTS_PER_WRITE) > 0 {
                    continue;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Err(WatchEnd::Closed(Ok(()))),
                    _ = evict.cancelled() => break Err(WatchEnd::Evicted),
                    frame = &mut next => break Ok(frame),
                    _ = watcher.ready() => continue,
                }
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(end) => break end,
        };
        match frame {
            Err(e) => break WatchEnd::Closed(Err(e)),
            Ok(Frame::Eof) => break WatchEnd::Closed(Ok(())),
            Ok(Frame::Line) => {
                let line = lines.line();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match requests::parse_line(line) {
                    Ok(Envelope {
                        id,
                        request: Request::Unwatch(_),
                    }) => {
                        let (delivered, dropped) = watcher.counts();
                        let v = json!({"status": "success", "unwatched": true, "events_delivered": delivered, "events_dropped": dropped});
                        write_value(out, &with_id(v, &id));
                        break WatchEnd::Unwatched;
                    }
                    Ok(env) => {
                        let e = EngineError::bad_request(format!(
                            "this connection is watching events: {} is not served here; send {{\"unwatch\": true}} first, or use another connection",
                            env.request.key()
                        ));
                        write_value(out, &error_response(&e, &env.id));
                    }
                    Err(f) => write_value(out, &error_response(&f.error, &f.id)),
                }
            }
            Ok(Frame::TooLong(bytes)) => too_long_response(bytes, out),
            Ok(Frame::TimedOut(bytes)) => break WatchEnd::CloseWith(timed_out_line(bytes, line_timeout)),
            Ok(Frame::OverBudget(bytes)) => break WatchEnd::CloseWith(over_budget_line(bytes, lines.budget_limit().unwrap_or(0))),
        }
    };
    shared.unwatch(&watcher);
    if let WatchEnd::Unwatched = end
        && let Err(e) = flush_or_stop(writer, out, shutdown, evict).await
    {
        return e;
    }
    end
}

/// Writes `out`, unless shutdown or eviction comes first.
async fn flush_or_stop<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut Vec<u8>,
    shutdown: &CancellationToken,
    evict: &CancellationToken,
) -> Result<(), WatchEnd> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(WatchEnd::Closed(Ok(()))),
        _ = evict.cancelled() => Err(WatchEnd::Evicted),
        r = flush(writer, out) => r.map_err(|e| WatchEnd::Closed(Err(e))),
    }
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
