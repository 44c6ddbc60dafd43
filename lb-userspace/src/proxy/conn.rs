//! Per-connection state the watchdog reads: when data last moved, whether a request head is
//! being received, how many requests are in flight, and the bytes of a head that never became
//! a request. [`TrackedIo`] updates it from every read and write, so idle and header-read
//! timeouts, and the accounting of heads hyper refuses itself, need no cooperation from hyper.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last_activity: AtomicU64,
    /// Milliseconds since `epoch` + 1 when the first byte of a request head arrived while no
    /// request was in flight; 0 when none is being received.
    head_started: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests waiting for their target's response head (timed by the 504 timeout instead).
    awaiting_target: AtomicUsize,
    /// Bytes read and written since the pending request head started (see
    /// [`ConnState::pending_bytes`]).
    pending_read: AtomicU64,
    pending_written: AtomicU64,
    /// Where the pending head's request line ended (its length, newline included), 0 while
    /// it has not: a head refused as too large whose request line alone is longer than
    /// `max_request_line` gets 414, any other 431.
    line_length: AtomicU64,
    max_request_line: AtomicU64,
}

/// What the watchdog should do with a connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// A request head has been arriving for longer than the header read timeout: 408.
    HeaderTimeout,
    /// No data either way for the idle timeout: close.
    Idle,
}

impl ConnState {
    pub fn new() -> ConnState {
        ConnState {
            epoch: Instant::now(),
            last_activity: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            awaiting_target: AtomicUsize::new(0),
            pending_read: AtomicU64::new(0),
            pending_written: AtomicU64::new(0),
            line_length: AtomicU64::new(0),
            max_request_line: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read(&self, bytes: &[u8]) {
        let now = self.now_ms();
        self.last_activity.store(now, Relaxed);
        if self.in_flight.load(Relaxed) == 0 {
            if self.head_started.load(Relaxed) == 0 {
                self.head_started.store(now + 1, Relaxed);
                self.pending_read.store(0, Relaxed);
                self.pending_written.store(0, Relaxed);
                self.line_length.store(0, Relaxed);
            }
            let before = self.pending_read.fetch_add(bytes.len() as u64, Relaxed);
            if self.line_length.load(Relaxed) == 0 {
                if let Some(at) = bytes.iter().position(|&b| b == b'\n') {
                    self.line_length.store(before + at as u64 + 1, Relaxed);
                }
            }
        }
    }

    /// Request lines longer than `bytes` are too long a URI (414) rather than too large a
    /// head (431); the listener's `max_header_bytes`.
    pub fn limit_request_line(&self, bytes: usize) {
        self.max_request_line.store(bytes as u64, Relaxed);
    }

    /// Whether the head being received has a request line longer than the limit (or one
    /// that has not ended).
    pub fn request_line_too_long(&self) -> bool {
        let length = self.line_length.load(Relaxed);
        length == 0 || length > self.max_request_line.load(Relaxed)
    }

    /// `write` is hyper's 431 to a pending head whose request line is too long.
    fn refusing_a_long_request_line(&self, write: &[u8]) -> bool {
        self.in_flight.load(Relaxed) == 0
            && self.head_started.load(Relaxed) != 0
            && self.request_line_too_long()
            && write.starts_with(HEAD_TOO_LARGE)
    }

    fn wrote_some(&self, n: usize) {
        self.last_activity.store(self.now_ms(), Relaxed);
        if self.in_flight.load(Relaxed) == 0 && self.head_started.load(Relaxed) != 0 {
            self.pending_written.fetch_add(n as u64, Relaxed);
        }
    }

    /// Bytes read and written since a request head started arriving that has not become a
    /// request (yet): what a client sent of a head hyper refused, and what hyper answered it
    /// (nothing written: hyper closed without an answer).
    pub fn pending_bytes(&self) -> (u64, u64) {
        if self.head_started.load(Relaxed) == 0 {
            return (0, 0);
        }
        (
            self.pending_read.load(Relaxed),
            self.pending_written.load(Relaxed),
        )
    }

    /// A complete request head arrived.
    pub fn request_started(&self) {
        self.head_started.store(0, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.last_activity.store(self.now_ms(), Relaxed);
    }

    pub fn awaiting_target(&self, waiting: bool) {
        if waiting {
            self.awaiting_target.fetch_add(1, Relaxed);
        } else {
            self.awaiting_target.fetch_sub(1, Relaxed);
        }
    }

    /// How long since data last moved.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_activity.load(Relaxed)),
        )
    }

    /// When the watchdog should look at this connection next: the earliest moment
    /// [`ConnState::verdict`] could change from `Continue` without the watchdog being told.
    /// A head that has started: its header read timeout. Otherwise the idle timeout, or the
    /// header read timeout if shorter (a head can start with any read, and its timeout ends
    /// no earlier than that from the last activity). Never before `after`: a connection
    /// waiting for its target stays `Continue` however long it is idle, and is looked at
    /// again a period later. Rounded up to [`CHECK_GRID`], so that the deadlines of many idle
    /// connections fall together and wake the proxy a few times a second at most.
    pub fn next_check(
        &self,
        header_read_timeout: Duration,
        idle_timeout: Duration,
        after: Instant,
    ) -> Instant {
        let started = self.head_started.load(Relaxed);
        let at = if started != 0 {
            self.epoch + Duration::from_millis(started - 1) + header_read_timeout
        } else {
            self.epoch
                + Duration::from_millis(self.last_activity.load(Relaxed))
                + header_read_timeout.min(idle_timeout)
        };
        let at = if at <= after {
            after + header_read_timeout.min(idle_timeout).max(CHECK_GRID)
        } else {
            at
        };
        on_grid(at)
    }

    pub fn verdict(&self, header_read_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now_ms();
        let started = self.head_started.load(Relaxed);
        if started != 0 {
            return if Duration::from_millis(now.saturating_sub(started - 1)) >= header_read_timeout
            {
                Verdict::HeaderTimeout
            } else {
                Verdict::Continue
            };
        }
        if self.awaiting_target.load(Relaxed) > 0 {
            return Verdict::Continue;
        }
        if self.idle_for() >= idle_timeout {
            Verdict::Idle
        } else {
            Verdict::Continue
        }
    }
}

/// What the watchdog's deadlines are rounded up to.
pub const CHECK_GRID: Duration = Duration::from_millis(250);

/// `at` rounded up to the next multiple of [`CHECK_GRID`] since a moment shared by the
/// whole process.
pub fn on_grid(at: Instant) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let since = at.saturating_duration_since(origin).as_nanos();
    let grid = CHECK_GRID.as_nanos();
    let rounded = since.div_ceil(grid) * grid;
    origin + Duration::from_nanos(rounded as u64)
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState::new()
    }
}

/// A stream that reports its reads and writes to a [`ConnState`].
pub struct TrackedIo<T> {
    inner: T,
    state: std::sync::Arc<ConnState>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, state: std::sync::Arc<ConnState>) -> TrackedIo<T> {
        TrackedIo { inner, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.read(&buf.filled()[before..]);
        }
        polled
    }
}

/// hyper's own answer to a head larger than the limit, and what sluice sends instead when
/// the request line alone was too long (hyper cannot tell them apart under the limit): the
/// same length, so that hyper's count of written bytes stays right.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large";
const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long (the request line)";

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = if this.state.refusing_a_long_request_line(buf) {
            let mut answer = buf.to_vec();
            answer[..URI_TOO_LONG.len()].copy_from_slice(URI_TOO_LONG);
            Pin::new(&mut this.inner).poll_write(cx, &answer)
        } else {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        };
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.state.wrote_some(n);
            }
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.first().map_or(&[][..], |b| &b[..]);
        let polled = if this.state.refusing_a_long_request_line(first) {
            let mut first = bufs[0].to_vec();
            first[..URI_TOO_LONG.len()].copy_from_slice(URI_TOO_LONG);
            let mut slices = vec![io::IoSlice::new(&first)];
            slices.extend(bufs[1..].iter().map(|b| io::IoSlice::new(b)));
            Pin::new(&mut this.inner).poll_write_vectored(cx, &slices)
        } else {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        };
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.state.wrote_some(n);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_that_started_is_timed_and_a_request_clears_it() {
        let state = ConnState::new();
        let (header, idle) = (Duration::ZERO, Duration::from_secs(60));
        assert_eq!(state.verdict(header, idle), Verdict::Continue);
        state.read(&[0; 10]);
        assert_eq!(state.verdict(header, idle), Verdict::HeaderTimeout);
        state.request_started();
        assert_eq!(state.verdict(header, idle), Verdict::Continue);
        // Body bytes while the request is in flight start no head.
        state.read(&[0; 10]);
        assert_eq!(state.verdict(header, idle), Verdict::Continue);
        state.request_finished();
        assert_eq!(state.verdict(header, Duration::ZERO), Verdict::Idle);
        state.awaiting_target(true);
        assert_eq!(state.verdict(header, Duration::ZERO), Verdict::Continue);
    }

    #[test]
    fn a_refused_heads_bytes_are_counted_from_its_first_byte() {
        let state = ConnState::new();
        state.read(&[0; 100]);
        state.request_started();
        // The response to it, and its body, are not a pending head's.
        state.wrote_some(50);
        state.read(&[0; 7]);
        assert_eq!(state.pending_bytes(), (0, 0));
        state.request_finished();
        state.read(&[0; 30]);
        state.read(&[0; 12]);
        state.wrote_some(75);
        assert_eq!(state.pending_bytes(), (42, 75));
        state.request_started();
        assert_eq!(state.pending_bytes(), (0, 0));
    }

    #[test]
    fn the_watchdog_is_due_at_the_deadline_that_can_change_its_verdict() {
        let state = ConnState::new();
        let (header, idle) = (Duration::from_secs(5), Duration::from_secs(60));
        let now = Instant::now();
        // Idle: due once the shorter timeout has passed since the last activity, not sooner.
        let due = state.next_check(header, idle, now);
        assert!(due >= state.epoch + header, "{due:?}");
        assert!(due <= state.epoch + header + CHECK_GRID, "{due:?}");
        assert_eq!(on_grid(due), due);
        // A head started: due at its header read timeout.
        state.read(b"GET / HTTP/1.1\r\n");
        let started = state.epoch + Duration::from_millis(state.head_started.load(Relaxed) - 1);
        let due = state.next_check(header, idle, now);
        assert!(due >= started + header && due <= started + header + CHECK_GRID);
        // A deadline already passed (a request waiting for its target): a period later.
        let later = now + Duration::from_secs(100);
        let due = state.next_check(header, idle, later);
        assert!(due >= later + header && due <= later + header + CHECK_GRID);
        // With a long idle timeout and no head, a quiet connection is due only after it.
        let state = ConnState::new();
        let due = state.next_check(Duration::from_secs(600), Duration::from_secs(300), now);
        assert!(due >= state.epoch + Duration::from_secs(300));
    }

    #[test]
    fn the_414_replaces_the_431_byte_for_byte() {
        assert_eq!(HEAD_TOO_LARGE.len(), URI_TOO_LONG.len());
    }

    #[test]
    fn a_request_line_is_too_long_until_it_ends_within_the_limit() {
        let state = ConnState::new();
        state.limit_request_line(30);
        state.read(b"GET /aaaa");
        assert!(state.request_line_too_long(), "not ended yet");
        state.read(b"aaaa HTTP/1.1\r\nHost: x");
        assert!(!state.request_line_too_long(), "a 24-byte line");
        state.request_started();
        state.request_finished();
        state.read(b"GET /aaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n");
        assert!(
            state.request_line_too_long(),
            "a new head starts over: 40 bytes"
        );
    }
}
