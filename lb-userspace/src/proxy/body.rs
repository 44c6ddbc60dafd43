//! Bodies passed through: counted, and with work to do when they end (the access log line,
//! outstanding-request counters), whether they complete or the client goes away.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
};

use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};

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

/// A body that counts its data bytes into `count` and runs `on_end` once, when it ends or
/// is dropped.
pub struct Tracked<F: FnOnce() + Send> {
    inner: ProxyBody,
    count: Arc<AtomicU64>,
    on_end: Option<F>,
}

impl<F: FnOnce() + Send> Tracked<F> {
    pub fn new(inner: ProxyBody, count: Arc<AtomicU64>, on_end: F) -> Tracked<F> {
        Tracked {
            inner,
            count,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
    }
}

impl<F: FnOnce() + Send> Drop for Tracked<F> {
    fn drop(&mut self) {
        self.end();
    }
}

// `on_end` is never pinned: it is only moved out and called.
impl<F: FnOnce() + Send> Unpin for Tracked<F> {}

impl<F: FnOnce() + Send> Body for Tracked<F> {
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
                    this.count.fetch_add(data.len() as u64, Relaxed);
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
