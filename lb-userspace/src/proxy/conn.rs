//! Per-connection state the watchdog reads: when data last moved, whether a request head is
//! being received, how many requests are in flight, and the bytes of a head that never became
//! a request. [`TrackedIo`] updates it from every read and write, so idle and header-read
//! timeouts, and the accounting of heads hyper refuses itself, need no cooperation from hyper.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
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
    /// Requests whose response has ended, since the connection opened.
    finished: AtomicU64,
    /// The last request's body has not been read to its end: hyper may still be reading it
    /// (or give up and close), so the connection is not between requests yet.
    body_unread: AtomicBool,
    /// A request asked for the connection to close after its response (HTTP/1.0, or
    /// `Connection: close`): hyper closes it, so it is never between requests again.
    closing: AtomicBool,
    /// The connection is being taken out of hyper: its shutdown must not reach the socket.
    parking: AtomicBool,
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
            finished: AtomicU64::new(0),
            body_unread: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            parking: AtomicBool::new(false),
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
        self.body_unread.store(false, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// The request that just started asks for the connection to close after its response.
    pub fn request_closes(&self) {
        self.closing.store(true, Relaxed);
    }

    /// The request that just started has a body, not read yet.
    pub fn request_body_unread(&self) {
        self.body_unread.store(true, Relaxed);
    }

    /// The request's body has been read to its end (not merely dropped: then hyper reads
    /// the rest, or closes the connection, and only a next request shows which).
    pub fn request_body_read(&self) {
        self.body_unread.store(false, Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.finished.fetch_add(1, Relaxed);
        self.last_activity.store(self.now_ms(), Relaxed);
    }

    /// Requests whose response has ended since the connection opened.
    pub fn finished(&self) -> u64 {
        self.finished.load(Relaxed)
    }

    /// Whether nothing is in flight, no request head has started and the last request's
    /// body has been read: between requests.
    fn between_requests(&self) -> bool {
        self.in_flight.load(Relaxed) == 0
            && self.head_started.load(Relaxed) == 0
            && !self.body_unread.load(Relaxed)
    }

    /// Whether hyper's HTTP/1 connection, waiting (its poll pending), may be taken apart now
    /// to hold the connection without hyper's buffers: no request in flight, the last one's
    /// body read, no head started, keep-alive not refused, and a request ended since hyper
    /// was given the connection (`finished_before`: [`ConnState::finished`] then). Then
    /// hyper is idle (its keep-alive state `Idle`, reading and writing `Init`), and a
    /// graceful shutdown closes it at once, once it has flushed what it wrote, with its read
    /// buffer holding nothing but the start of a next request. A connection hyper has not
    /// ended a request on is not idle to hyper (it would serve one more and close), nor is
    /// one whose request body it is still reading or draining, or that it means to close.
    pub fn park_due(&self, finished_before: u64) -> bool {
        self.between_requests()
            && !self.closing.load(Relaxed)
            && self.finished.load(Relaxed) > finished_before
    }

    /// While set, a [`TrackedIo`]'s shutdown does not reach the socket: hyper ends a
    /// connection it was asked to give back by shutting it down.
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Relaxed);
    }

    /// Whether the connection is being given back between requests (see `set_parking`).
    pub fn parking(&self) -> bool {
        self.parking.load(Relaxed)
    }

    /// When the connection will have been idle (no data either way) for `idle`, unless data
    /// moves before; on [`CHECK_GRID`].
    pub fn idle_deadline(&self, idle: Duration) -> Instant {
        on_grid(self.epoch + Duration::from_millis(self.last_activity.load(Relaxed)) + idle)
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
    /// Under hyper's HTTP/1 server, which may give it back between requests (see
    /// [`ConnState::set_parking`]).
    parkable: bool,
    /// Bytes hyper had read but not parsed when it gave the connection back, or the bytes
    /// `server` read for a request it left to hyper: read first.
    unread: bytes::Bytes,
    /// `unread` was counted in [`ConnState`] when first read (`server`'s), not to be again.
    unread_counted: bool,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, state: std::sync::Arc<ConnState>) -> TrackedIo<T> {
        TrackedIo {
            inner,
            state,
            parkable: false,
            unread: bytes::Bytes::new(),
            unread_counted: false,
        }
    }

    /// A stream directly under hyper's HTTP/1 server, which may take it back between
    /// requests.
    pub fn parkable(inner: T, state: std::sync::Arc<ConnState>) -> TrackedIo<T> {
        TrackedIo {
            parkable: true,
            ..TrackedIo::new(inner, state)
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes to be read again before the stream's: hyper's, read while a request was in
    /// flight, so counted again when read again (a next request head starting).
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
        self.unread_counted = false;
    }

    /// Bytes read through this stream (so counted), to be read again first: a request head
    /// `server` read and leaves to hyper's server.
    pub fn give_back(&mut self, bytes: bytes::Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
        self.unread_counted = true;
    }

    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            let bytes = this.unread.split_to(n);
            if !this.unread_counted {
                this.state.read(&bytes);
            }
            buf.put_slice(&bytes);
            return Poll::Ready(Ok(()));
        }
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
        if self.parkable && self.state.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
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

    /// Polls a read of `io` once: the bytes read, or None if it would wait.
    fn read_once<T: AsyncRead + Unpin>(io: &mut TrackedIo<T>) -> Option<Vec<u8>> {
        let mut storage = [0u8; 64];
        let mut buf = ReadBuf::new(&mut storage);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(io).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Some(buf.filled().to_vec()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_connection_is_due_to_park_between_requests_once_hyper_ended_one() {
        let state = ConnState::new();
        assert!(
            !state.park_due(0),
            "no request ended: hyper is not idle yet"
        );
        state.read(b"GET / HTTP/1.1\r\n");
        assert!(!state.park_due(0), "a head has started");
        state.request_started();
        assert!(!state.park_due(0), "a request is in flight");
        state.request_finished();
        assert!(
            !state.park_due(1),
            "no request ended since hyper had the connection"
        );
        assert!(state.park_due(0));
        // A request whose body has not been read to its end: hyper may still be reading it,
        // or drain it, or give up and close.
        state.request_started();
        state.request_body_unread();
        state.request_finished();
        assert!(!state.park_due(0), "the body is unread");
        state.request_body_read();
        assert!(state.park_due(0));
        // One that asks to close: hyper closes after its response.
        state.request_started();
        state.request_closes();
        state.request_finished();
        assert!(!state.park_due(0), "closing");
    }

    #[tokio::test]
    async fn a_parked_stream_reads_what_hyper_gave_back_first_and_is_not_shut_down() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let state = std::sync::Arc::new(ConnState::new());
        let mut io = TrackedIo::parkable(server, std::sync::Arc::clone(&state));
        client.write_all(b" HTTP/1.1\r\n").await.unwrap();
        io.unread(bytes::Bytes::from_static(b"GET /next"));
        assert!(io.has_unread());
        let mut read = Vec::new();
        while read.len() < 20 {
            read.extend(read_once(&mut io).expect("bytes"));
        }
        assert_eq!(read, b"GET /next HTTP/1.1\r\n");
        assert!(!io.has_unread());
        // Given back between requests, they are the start of the next request head.
        assert_eq!(state.pending_bytes().0, 20);
        // hyper's shutdown while parking does not reach the stream; afterwards it does.
        state.set_parking(true);
        io.shutdown().await.unwrap();
        io.write_all(b"still open").await.unwrap();
        let mut got = [0u8; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still open");
        state.set_parking(false);
        io.shutdown().await.unwrap();
        assert_eq!(client.read(&mut got).await.unwrap(), 0, "shut down");
    }
}
