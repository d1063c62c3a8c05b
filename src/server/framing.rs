//! Line framing over a byte stream: one request per `\n`-terminated line.
//!
//! Written on `fill_buf`/`consume` rather than tokio-util's `LinesCodec`:
//! that codec yields a spurious end of stream after an over-long line, and
//! wants UTF-8, while the protocol must answer both cases with one error line
//! and keep the connection. Here an over-long line is skipped to its newline
//! (never buffered whole) and reported as [`Frame::TooLong`]; UTF-8 is checked
//! later by `requests::parse_line`, so non-UTF-8 bytes become an ordinary
//! parse error.
//!
//! On the socket a reader is also bounded in time and memory: a partial
//! line must reach its newline within the line timeout of its first byte
//! ([`Frame::TimedOut`]), and the bytes every connection holds in partial
//! lines come out of one [`PartialBudget`] ([`Frame::OverBudget`] when it is
//! spent).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::requests::MAX_LINE_BYTES;

/// Lines up to this size are held in a reused heap buffer; a longer one
/// moves to an anonymous mapping of the longest line's size, unmapped after
/// the line. Only touched pages count in RSS, and unmapping gives them back
/// to the system at once (a freed heap block may stay with the allocator):
/// memory returns to its baseline when long-line senders go.
const SMALL_LINE: usize = 4 * 1024;

/// The current line's bytes.
#[derive(Debug)]
enum LineBuf {
    Small(Vec<u8>),
    Big { map: memmap2::MmapMut, len: usize },
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf::Small(Vec::with_capacity(1024))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            LineBuf::Small(v) => v,
            LineBuf::Big { map, len } => &map[..*len],
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Empties the buffer; a mapping is unmapped.
    fn clear(&mut self) {
        match self {
            LineBuf::Small(v) => {
                v.clear();
                if v.capacity() > SMALL_LINE {
                    *v = Vec::with_capacity(1024);
                }
            }
            LineBuf::Big { .. } => *self = LineBuf::new(),
        }
    }

    /// Appends `chunk`; a line that outgrows [`SMALL_LINE`] moves to a
    /// mapping of `max` bytes (the longest line kept). False when no
    /// mapping could be made.
    fn extend(&mut self, chunk: &[u8], max: usize) -> bool {
        match self {
            LineBuf::Small(v) if v.len() + chunk.len() <= SMALL_LINE.max(v.capacity()) || max <= SMALL_LINE => {
                v.extend_from_slice(chunk);
            }
            LineBuf::Small(v) => {
                let Ok(mut map) = memmap2::MmapMut::map_anon(max.max(v.len() + chunk.len())) else {
                    return false;
                };
                let len = v.len();
                map[..len].copy_from_slice(v);
                map[len..len + chunk.len()].copy_from_slice(chunk);
                *self = LineBuf::Big {
                    map,
                    len: len + chunk.len(),
                };
            }
            LineBuf::Big { map, len } => {
                let end = *len + chunk.len();
                if end > map.len() {
                    return false;
                }
                map[*len..end].copy_from_slice(chunk);
                *len = end;
            }
        }
        true
    }

    fn pop(&mut self) {
        match self {
            LineBuf::Small(v) => {
                v.pop();
            }
            LineBuf::Big { len, .. } => *len = len.saturating_sub(1),
        }
    }
}

/// The bytes all connections together may hold in lines not yet complete
/// (`max_partial_line_bytes`). Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct PartialBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    used: AtomicU64,
    limit: u64,
}

impl PartialBudget {
    pub fn new(limit: u64) -> PartialBudget {
        PartialBudget {
            inner: Arc::new(BudgetInner {
                used: AtomicU64::new(0),
                limit,
            }),
        }
    }

    /// Takes `n` bytes if they fit under the limit.
    fn take(&self, n: usize) -> bool {
        let n = n as u64;
        let limit = self.inner.limit;
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= limit))
            .is_ok()
    }

    fn give(&self, n: usize) {
        let n = n as u64;
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.inner.limit
    }
}

/// What [`LineReader::next_frame`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A line is in [`LineReader::line`] (newline and any `\r` removed).
    Line,
    /// A line longer than the limit was skipped; it had this many bytes.
    TooLong(usize),
    /// The peer closed its side and every line has been returned.
    Eof,
    /// A partial line of this many bytes did not reach its newline within
    /// the line timeout of its first byte.
    TimedOut(usize),
    /// Buffering more of the current line would exceed the [`PartialBudget`]
    /// shared by all connections; the line had this many bytes so far.
    OverBudget(usize),
}

/// Reads lines into one reused buffer.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    /// The current line; reused so a steady stream of requests does not
    /// allocate per line.
    line: LineBuf,
    /// Longest line accepted, in bytes (without its newline).
    max: usize,
    /// Shared bound on partial-line bytes, and how much of it `line` holds.
    budget: Option<PartialBudget>,
    held: usize,
    /// Time a line may take from its first byte to its newline.
    timeout: Option<Duration>,
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
            line: LineBuf::new(),
            max,
            budget: None,
            held: 0,
            timeout: None,
        }
    }

    /// Draws the bytes of partial lines from `budget`.
    pub fn with_budget(mut self, budget: PartialBudget) -> LineReader<R> {
        self.budget = Some(budget);
        self
    }

    /// Gives each line `timeout` from its first byte to its newline.
    pub fn with_timeout(mut self, timeout: Duration) -> LineReader<R> {
        self.timeout = Some(timeout);
        self
    }

    /// Empties the line buffer, returns its bytes to the budget and frees
    /// a large buffer.
    fn reset(&mut self) {
        self.line.clear();
        if let Some(b) = &self.budget
            && self.held > 0
        {
            b.give(self.held);
        }
        self.held = 0;
    }

    /// The byte budget's limit, when the reader draws on one.
    pub fn budget_limit(&self) -> Option<u64> {
        self.budget.as_ref().map(PartialBudget::limit)
    }

    /// The line of the last [`Frame::Line`].
    pub fn line(&self) -> &[u8] {
        self.line.as_slice()
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
        self.reset();
        // Bytes of the current line seen so far, kept or not.
        let mut seen = 0usize;
        let mut too_long = false;
        // Set by the line's first byte.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let available = match deadline {
                Some(at) => match tokio::time::timeout_at(at, self.inner.fill_buf()).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(Frame::TimedOut(seen)),
                },
                None => self.inner.fill_buf().await?,
            };
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
                    if let Some(b) = &self.budget {
                        b.give(self.held);
                    }
                    self.held = 0;
                } else {
                    // One byte of slack for a `\r` before the newline.
                    if !self.line.extend(chunk, self.max.saturating_add(1)) {
                        return Ok(Frame::OverBudget(seen - chunk.len()));
                    }
                    // Bytes are drawn from the shared budget only when the
                    // line stays partial across a wait for more input: a
                    // line whose newline is already buffered (the common
                    // case) touches no shared counter.
                    if !found && let Some(b) = &self.budget {
                        let add = self.line.len() - self.held;
                        if !b.take(add) {
                            return Ok(Frame::OverBudget(seen - chunk.len()));
                        }
                        self.held += add;
                    }
                }
            }
            if deadline.is_none() && seen > 0 && !found {
                deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
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
        if self.line.as_slice().last() == Some(&b'\r') {
            self.line.pop();
        }
    }
}

impl<R> Drop for LineReader<R> {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.held);
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
    async fn a_line_already_buffered_whole_draws_nothing_from_the_budget() {
        let budget = PartialBudget::new(16);
        let mut input = vec![b'x'; 1000];
        input.push(b'\n');
        input.extend_from_slice(b"partial");
        let mut r = LineReader::new(BufReader::with_capacity(4096, &input[..])).with_budget(budget.clone());
        assert_eq!(r.next_frame().await.unwrap(), Frame::Line);
        assert_eq!(r.line().len(), 1000);
        assert_eq!(budget.used(), 0, "the line never waited for input");
        // A line that waits for more input draws its bytes.
        assert_eq!(r.next_frame().await.unwrap(), Frame::Line);
        assert_eq!(budget.used(), 7);
    }

    #[tokio::test]
    async fn partial_lines_draw_on_the_shared_budget_and_give_it_back() {
        let budget = PartialBudget::new(64 * 1024);
        let big = vec![b'x'; 40 * 1024];
        let mut a = LineReader::new(BufReader::with_capacity(4096, &big[..])).with_budget(budget.clone());
        // At the end of input the line counts as complete; it held its bytes.
        assert_eq!(a.next_frame().await.unwrap(), Frame::Line);
        assert!(budget.used() >= 40 * 1024, "{}", budget.used());
        // A second line of the same size does not fit beside it.
        let mut b = LineReader::new(BufReader::with_capacity(4096, &big[..])).with_budget(budget.clone());
        assert!(matches!(b.next_frame().await.unwrap(), Frame::OverBudget(n) if n < 40 * 1024));
        drop(b);
        // The next frame frees the first line: its buffer and its budget.
        assert_eq!(a.next_frame().await.unwrap(), Frame::Eof);
        assert_eq!(budget.used(), 0);
        assert!(matches!(&a.line, LineBuf::Small(v) if v.capacity() <= SMALL_LINE));
        let mut c = LineReader::new(BufReader::with_capacity(4096, &big[..])).with_budget(budget.clone());
        assert_eq!(c.next_frame().await.unwrap(), Frame::Line);
        drop(c);
        assert_eq!(budget.used(), 0, "dropping a reader returns its bytes");
    }

    #[tokio::test]
    async fn a_partial_line_must_end_within_the_timeout() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        let timeout = Duration::from_millis(200);
        let mut r = LineReader::new(BufReader::new(server)).with_timeout(timeout);
        client.write_all(b"{\"health\": true}\n").await.unwrap();
        assert_eq!(r.next_frame().await.unwrap(), Frame::Line);
        // Silence without a partial line is not timed out.
        let waited = tokio::time::timeout(timeout * 2, r.next_frame()).await;
        assert!(waited.is_err(), "an idle reader waits");
        client.write_all(b"{\"hea").await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(r.next_frame().await.unwrap(), Frame::TimedOut(5));
        let took = started.elapsed();
        assert!(took >= timeout && took < timeout * 5, "{took:?}");
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
