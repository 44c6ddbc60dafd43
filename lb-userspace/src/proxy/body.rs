//! Bodies passed through: counted, and with work to do when they end (the access log line,
//! outstanding-request counters), whether they complete or the client goes away.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
// tokio's clock, so that tests can pause it; the same as std's otherwise.
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body that counts its data bytes and, once, when it ends or is dropped, runs `on_end`
/// with their count.
pub struct Tracked<B, F: FnOnce(u64) + Send> {
    inner: B,
    count: u64,
    on_end: Option<F>,
}

impl<B, F: FnOnce(u64) + Send> Tracked<B, F> {
    pub fn new(inner: B, on_end: F) -> Tracked<B, F> {
        Tracked {
            inner,
            count: 0,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.count);
        }
    }
}

impl<B, F: FnOnce(u64) + Send> Drop for Tracked<B, F> {
    fn drop(&mut self) {
        self.end();
    }
}

// `on_end` is never pinned: it is only moved out and called.
impl<B: Unpin, F: FnOnce(u64) + Send> Unpin for Tracked<B, F> {}

impl<B, F> Body for Tracked<B, F>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    F: FnOnce(u64) + Send,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that runs `on_read` once it has been read to its end (not when dropped before).
pub struct ReadToEnd<B, F: FnOnce()> {
    inner: B,
    on_read: Option<F>,
}

impl<B, F: FnOnce()> ReadToEnd<B, F> {
    pub fn new(inner: B, on_read: F) -> ReadToEnd<B, F> {
        ReadToEnd {
            inner,
            on_read: Some(on_read),
        }
    }
}

// `on_read` is never pinned: it is only moved out and called.
impl<B: Unpin, F: FnOnce()> Unpin for ReadToEnd<B, F> {}

impl<B: Body + Unpin, F: FnOnce()> Body for ReadToEnd<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // A body with a length ends with its last byte, which its reader may not poll past.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(on_read) = this.on_read.take() {
                on_read();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a request body is doing on its way to the target: when it last moved, and whether
/// the client broke it (a malformed chunk, a reset). The wait for the target's response
/// counts inactivity from the last move, as ALB's idle timeout does, and a broken upload is
/// the client's error (400), not the target's.
#[derive(Debug)]
pub struct Upload {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last frame.
    moved_ms: AtomicU64,
    /// Data bytes that went through.
    received: AtomicU64,
    broken: AtomicBool,
}

impl Upload {
    pub fn new() -> Upload {
        Upload {
            epoch: Instant::now(),
            moved_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }
    }

    /// When a frame last went through (the request's start before the first).
    pub fn last_moved(&self) -> Instant {
        self.epoch + Duration::from_millis(self.moved_ms.load(Relaxed))
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Relaxed)
    }

    /// The body's data bytes that went through so far.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Wraps the request body so that it reports here.
    pub fn watch<B>(self: &Arc<Self>, inner: B) -> ProxyBody
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Uploading {
            inner,
            upload: Arc::clone(self),
        }
        .boxed_unsync()
    }
}

impl Default for Upload {
    fn default() -> Upload {
        Upload::new()
    }
}

struct Uploading<B> {
    inner: B,
    upload: Arc<Upload>,
}

impl<B> Body for Uploading<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let ms = self.upload.epoch.elapsed().as_millis() as u64;
                self.upload.moved_ms.store(ms, Relaxed);
                if let Some(data) = frame.data_ref() {
                    self.upload.received.fetch_add(data.len() as u64, Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.upload.broken.store(true, Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits for `response` until neither it nor the request body has moved for `idle`:
/// `None` then. A slow upload that keeps sending is never cut short.
pub async fn until_idle<F: std::future::Future>(
    response: F,
    upload: &Upload,
    idle: Duration,
) -> Option<F::Output> {
    tokio::pin!(response);
    loop {
        let deadline = upload.last_moved() + idle;
        match tokio::time::timeout_at(deadline, &mut response).await {
            Ok(output) => return Some(output),
            Err(_) if upload.last_moved() + idle <= Instant::now() => return None,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_moving_upload_is_waited_for_and_a_still_one_times_out() {
        let upload = Arc::new(Upload::new());
        let idle = Duration::from_secs(10);
        // The target answers after 25 s while the body moves every 5 s.
        let mover = {
            let upload = Arc::clone(&upload);
            tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let ms = upload.epoch.elapsed().as_millis() as u64;
                    upload.moved_ms.store(ms, Relaxed);
                }
            })
        };
        let answer = tokio::time::sleep(Duration::from_secs(25));
        assert_eq!(until_idle(answer, &upload, idle).await, Some(()));
        mover.await.unwrap();
        // Nothing moves and the target never answers: given up 10 s after the last move.
        let still = Arc::new(Upload::new());
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(until_idle(never, &still, idle).await, None);
        assert_eq!(started.elapsed(), idle);
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_says_so_and_one_dropped_before_does_not() {
        let read = Arc::new(AtomicU64::new(0));
        let counting = || {
            let read = Arc::clone(&read);
            move || {
                read.fetch_add(1, Relaxed);
            }
        };
        // A body with a length ends with its last byte, whether or not polled again.
        let mut full = ReadToEnd::new(Full::new(Bytes::from_static(b"abc")), counting());
        let frame = full.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().as_ref(), b"abc");
        assert_eq!(read.load(Relaxed), 1);
        assert!(full.frame().await.is_none());
        assert_eq!(read.load(Relaxed), 1, "once");
        // An empty one at its first poll.
        let mut empty = ReadToEnd::new(Empty::<Bytes>::new(), counting());
        assert!(empty.frame().await.is_none());
        assert_eq!(read.load(Relaxed), 2);
        // Dropped before its end: not read.
        drop(ReadToEnd::new(
            Full::new(Bytes::from_static(b"abc")),
            counting(),
        ));
        assert_eq!(read.load(Relaxed), 2);
    }
}
