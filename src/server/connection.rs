//! One connection: read a line, answer it, repeat. Responses go out in
//! request order; the next request is read only after the last one was
//! answered (a client that does not read its answers gets backpressure).

use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::requests::wire::too_long_response;

use super::framing::{Frame, HasBuffer, LineReader};
use super::shared::{Answer, SharedEngine};

/// Serves one peer until it closes its side, an I/O error occurs, or
/// `shutdown` fires between two requests. A request already read is always
/// answered, including a `wait` for a move (shutdown drives moves to an end).
pub async fn serve_connection<R, W>(shared: SharedEngine, reader: R, mut writer: W, shutdown: CancellationToken) -> std::io::Result<()>
where
    R: AsyncBufRead + HasBuffer + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = LineReader::new(reader);
    // Responses waiting to be written; reused for the life of the connection.
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // Registered once: polling it again per request costs nothing.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        // Shutdown first: a peer that keeps sending must not hold it off.
        let frame = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            frame = lines.next_frame() => frame?,
        };
        match frame {
            Frame::Eof => break,
            Frame::TooLong(bytes) => too_long_response(bytes, &mut out),
            Frame::Line => {
                let mut answer = shared.answer_line(lines.line(), &mut out);
                if let Answer::Prepare(envelope) = answer {
                    // Blocking work off the engine's lock and off this loop.
                    answer = shared.answer_prepared(*envelope, &mut out).await;
                }
                if let Answer::Wait { job_id, id } = answer {
                    // Answers before this one go out first, so the peer sees
                    // them while the move runs.
                    flush(&mut writer, &mut out).await?;
                    shared.wait_for_job(&job_id, &id, &mut out).await;
                }
            }
        }
        // Batch the answers to pipelined requests: write once the input
        // already received has been answered.
        if !lines.has_buffered_input() || out.len() >= 64 * 1024 {
            flush(&mut writer, &mut out).await?;
        }
    }
    flush(&mut writer, &mut out).await?;
    writer.shutdown().await.or_else(ignore_not_connected)
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
