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
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read_some(&self, n: usize) {
        let now = self.now_ms();
        self.last_activity.store(now, Relaxed);
        if self.in_flight.load(Relaxed) == 0 {
            if self.head_started.load(Relaxed) == 0 {
                self.head_started.store(now + 1, Relaxed);
                self.pending_read.store(0, Relaxed);
                self.pending_written.store(0, Relaxed);
            }
            self.pending_read.fetch_add(n as u64, Relaxed);
        }
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
            this.state.read_some(buf.filled().len() - before);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
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
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
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
        state.read_some(10);
        assert_eq!(state.verdict(header, idle), Verdict::HeaderTimeout);
        state.request_started();
        assert_eq!(state.verdict(header, idle), Verdict::Continue);
        // Body bytes while the request is in flight start no head.
        state.read_some(10);
        assert_eq!(state.verdict(header, idle), Verdict::Continue);
        state.request_finished();
        assert_eq!(state.verdict(header, Duration::ZERO), Verdict::Idle);
        state.awaiting_target(true);
        assert_eq!(state.verdict(header, Duration::ZERO), Verdict::Continue);
    }

    #[test]
    fn a_refused_heads_bytes_are_counted_from_its_first_byte() {
        let state = ConnState::new();
        state.read_some(100);
        state.request_started();
        // The response to it, and its body, are not a pending head's.
        state.wrote_some(50);
        state.read_some(7);
        assert_eq!(state.pending_bytes(), (0, 0));
        state.request_finished();
        state.read_some(30);
        state.read_some(12);
        state.wrote_some(75);
        assert_eq!(state.pending_bytes(), (42, 75));
        state.request_started();
        assert_eq!(state.pending_bytes(), (0, 0));
    }
}
