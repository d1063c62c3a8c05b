//! Line framing over a byte stream: one request per `\n`-terminated line.
//!
//! Written on `fill_buf`/`consume` rather than tokio-util's `LinesCodec`:
//! that codec yields a spurious end of stream after an over-long line, and
//! wants UTF-8, while the protocol must answer both cases with one error line
//! and keep the connection. Here an over-long line is skipped to its newline
//! (never buffered whole) and reported as [`Frame::TooLong`]; UTF-8 is checked
//! later by `requests::parse_line`, so non-UTF-8 bytes become an ordinary
//! parse error.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::requests::MAX_LINE_BYTES;

/// What [`LineReader::next_frame`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A line is in [`LineReader::line`] (newline and any `\r` removed).
    Line,
    /// A line longer than the limit was skipped; it had this many bytes.
    TooLong(usize),
    /// The peer closed its side and every line has been returned.
    Eof,
}

/// Reads lines into one reused buffer.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    /// The current line; reused so a steady stream of requests does not
    /// allocate per line.
    line: Vec<u8>,
    /// Longest line accepted, in bytes (without its newline).
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader with the protocol's 1 MiB limit.
    pub fn new(inner: R) -> LineReader<R> {
        LineReader::with_limit(inner, MAX_LINE_BYTES)
    }

    /// A reader with another limit (tests).
    pub fn with_limit(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner,
            line: Vec::with_capacity(1024),
            max,
        }
    }

    /// The line of the last [`Frame::Line`].
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Whether more input is already buffered (the caller may then delay
    /// flushing its answers until it has answered that input too).
    pub fn has_buffered_input(&self) -> bool
    where
        R: HasBuffer,
    {
        self.inner.buffered_len() > 0
    }

    /// Reads the next line. Cancel-safe only between lines: a cancelled call
    /// may lose a partly read line (used only at shutdown).
    pub async fn next_frame(&mut self) -> std::io::Result<Frame> {
        self.line.clear();
        // Bytes of the current line seen so far, kept or not.
        let mut seen = 0usize;
        let mut too_long = false;
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                // End of stream: a last line without its newline still counts.
                return Ok(if too_long {
                    Frame::TooLong(seen)
                } else if seen > 0 {
                    self.trim_cr();
                    Frame::Line
                } else {
                    Frame::Eof
                });
            }
            let (chunk, found) = match memchr(available) {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            seen = seen.saturating_add(chunk.len());
            if !too_long {
                if seen > self.max.saturating_add(1) {
                    // One byte of slack for a `\r` before the newline.
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let used = chunk.len() + usize::from(found);
            self.inner.consume(used);
            if found {
                if too_long {
                    return Ok(Frame::TooLong(seen));
                }
                self.trim_cr();
                if self.line.len() > self.max {
                    let n = self.line.len();
                    self.line.clear();
                    return Ok(Frame::TooLong(n));
                }
                return Ok(Frame::Line);
            }
        }
    }

    fn trim_cr(&mut self) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// Readers that can say how much input they hold already.
pub trait HasBuffer {
    fn buffered_len(&self) -> usize;
}

impl<R: tokio::io::AsyncRead> HasBuffer for tokio::io::BufReader<R> {
    fn buffered_len(&self) -> usize {
        self.buffer().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn frames(input: &[u8], max: usize) -> Vec<(Frame, Vec<u8>)> {
        let mut r = LineReader::with_limit(BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        loop {
            match r.next_frame().await {
                Ok(Frame::Eof) | Err(_) => break,
                Ok(f) => out.push((f, r.line().to_vec())),
            }
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_skips_long_ones() {
        let got = frames(b"ab\r\n0123456789\ncd\n\nlast", 5).await;
        assert_eq!(
            got,
            vec![
                (Frame::Line, b"ab".to_vec()),
                (Frame::TooLong(10), Vec::new()),
                (Frame::Line, b"cd".to_vec()),
                (Frame::Line, Vec::new()),
                (Frame::Line, b"last".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn limit_is_exact() {
        assert_eq!(frames(b"12345\n", 5).await, vec![(Frame::Line, b"12345".to_vec())]);
        assert_eq!(frames(b"123456\n", 5).await, vec![(Frame::TooLong(6), Vec::new())]);
        assert_eq!(frames(b"12345\r\n", 5).await, vec![(Frame::Line, b"12345".to_vec())]);
        assert_eq!(frames(b"1234567", 5).await, vec![(Frame::TooLong(7), Vec::new())]);
        assert_eq!(frames(b"\xff\xfe\n", 5).await, vec![(Frame::Line, b"\xff\xfe".to_vec())]);
    }
}
