//! HTTP/1.1 to targets, written for the proxy's one use of it (replacing hyper's
//! `client::conn::http1`): the request head written from the request's parts into the
//! connection's reused buffer, the response head parsed with `httparse`, and the response
//! body read from the socket by the body itself ([`Body`]), which gives the connection back
//! to the worker's pool when it ends cleanly. No task per connection, no channel.
//!
//! `encode` and `response` are the codec (pure); this module is the I/O around them.

pub mod encode;
pub mod pool;
pub mod response;

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    body::{Body as _, Frame, SizeHint},
    Method, Request, Response,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use self::{
    encode::RequestFraming,
    response::{Chunked, Decoded, Framing, ParseError},
};
use super::body::{BoxError, ProxyBody};

/// Bytes read from a target at once (the read buffer grows by this much when full).
const READ_CHUNK: usize = 8 * 1024;
/// A request body's bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// The most buffer room an idle connection keeps, each way ([`Conn::trim`]).
const KEEP_WHILE_IDLE: usize = 2 * READ_CHUNK;

/// A connection to a target, idle in the pool or carrying one request.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet parsed; kept with the connection (its allocation is reused).
    read: BytesMut,
    /// The request head (and small bodies) being written; kept, cleared per request.
    write: Vec<u8>,
    pub target: SocketAddr,
    /// It carried a request before (taken from the pool).
    pub reused: bool,
}

impl Conn {
    pub fn new(stream: TcpStream, target: SocketAddr) -> Conn {
        Conn {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            target,
            reused: false,
        }
    }

    /// Lets go of buffers an uncommon message grew (a large upload, a large response head):
    /// an idle connection in the pool keeps only what a common request needs.
    pub fn trim(&mut self) {
        if self.write.capacity() > KEEP_WHILE_IDLE {
            self.write = Vec::new();
        }
        if self.read.is_empty() && self.read.capacity() > KEEP_WHILE_IDLE {
            self.read = BytesMut::new();
        }
    }

    /// Whether the target closed this idle connection (or sent bytes nobody asked for):
    /// seen without waiting, from what the socket already has.
    pub fn closed_while_idle(&mut self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing to the target: {0}")]
    Write(io::Error),
    #[error("reading from the target: {0}")]
    Read(io::Error),
    #[error("the target closed the connection before its response head")]
    ClosedBeforeHead,
    #[error("the target's response: {0}")]
    Parse(#[from] ParseError),
    #[error("the request: {0}")]
    Encode(#[from] encode::EncodeError),
    #[error("the request body ended after {sent} bytes of {length}")]
    ShortBody { sent: u64, length: u64 },
    #[error("the request body is longer than its Content-Length {0}")]
    LongBody(u64),
    #[error("the request body: {0}")]
    RequestBody(BoxError),
}

/// A request that did not get a response head.
pub enum SendError {
    /// The reused connection was found closed before anything was taken from the request:
    /// it may go again on another connection.
    Unsent(Box<Request<ProxyBody>>),
    Failed(Error),
}

/// Sends `request` on `conn` and reads the response head (informational responses other
/// than 101 skipped). The response's body owns the connection.
pub async fn send(
    mut conn: Conn,
    request: Request<ProxyBody>,
) -> Result<Response<Body>, SendError> {
    if conn.reused && conn.closed_while_idle() {
        return Err(SendError::Unsent(Box::new(request)));
    }
    let (parts, mut body) = request.into_parts();
    let to_head_request = parts.method == Method::HEAD;
    let fail = |e: Error| SendError::Failed(e);
    let framing = encode::request_framing(
        &parts.headers,
        body.is_end_stream(),
        body.size_hint().exact(),
    )
    .map_err(|e| fail(e.into()))?;
    conn.write.clear();
    encode::request_head(
        &mut conn.write,
        &parts.method,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        &parts.headers,
        framing,
    );
    drop(parts);
    conn.read.clear();
    let Conn {
        stream,
        read,
        write,
        ..
    } = &mut conn;
    let (head, body_sent) = if framing == RequestFraming::Empty {
        stream
            .write_all(write)
            .await
            .map_err(|e| fail(Error::Write(e)))?;
        (read_head(stream, read).await.map_err(fail)?, true)
    } else {
        let (mut reader, mut writer) = stream.split();
        let sending = write_body(&mut writer, write, &mut body, framing);
        let receiving = read_head(&mut reader, read);
        tokio::pin!(sending, receiving);
        let mut sent = false;
        let mut write_failed = None;
        let head = loop {
            tokio::select! {
                biased;
                head = &mut receiving => break head,
                done = &mut sending, if !sent && write_failed.is_none() => match done {
                    Ok(()) => sent = true,
                    Err(e @ Error::RequestBody(_)) => return Err(fail(e)),
                    // The target may have answered and stopped reading: its answer counts.
                    Err(e) => write_failed = Some(e),
                },
            }
        };
        match (head, write_failed) {
            (Ok(head), _) => (head, sent),
            (Err(_), Some(e)) | (Err(e), None) => return Err(fail(e)),
        }
    };
    drop(body);
    let mut head = head;
    let framing = response::framing(&head, to_head_request).map_err(|e| fail(e.into()))?;
    // Transfer-Encoding beside Content-Length: the length is not the body's, so it is not
    // passed on, and the connection is not trusted with another request (RFC 9112 6.3).
    let smuggled = head.headers.contains_key(hyper::header::TRANSFER_ENCODING)
        && head.headers.remove(hyper::header::CONTENT_LENGTH).is_some();
    // A connection is reused only when both messages were whole and nothing else is
    // pending on it.
    let reusable = body_sent
        && !smuggled
        && response::keeps_alive(&head)
        && head.status != hyper::StatusCode::SWITCHING_PROTOCOLS
        && framing != Framing::Close;
    let state = match framing {
        Framing::Empty => State::Done,
        Framing::Length(left) => State::Length(left),
        Framing::Chunked => State::Chunked(Chunked::default()),
        Framing::Close => State::Close,
    };
    let mut response = Response::new(Body {
        conn: Some(conn),
        state,
        reusable,
    });
    *response.status_mut() = head.status;
    // The proxy's own version, whatever the target's (RFC 9110 6.2: an intermediary sends its
    // own HTTP-version); the target's decided the framing and the reuse above. hyper's server
    // still answers an HTTP/1.0 client in HTTP/1.0.
    *response.version_mut() = hyper::Version::HTTP_11;
    *response.headers_mut() = head.headers;
    // Nothing to read: the connection is free at once, unless it is about to be a tunnel's
    // (`Body::upgrade`; otherwise closed when the body is dropped).
    if matches!(response.body().state, State::Done) && reusable {
        response.body_mut().end();
    }
    Ok(response)
}

/// Reads until a final response head has arrived (1xx other than 101 are skipped).
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    read: &mut BytesMut,
) -> Result<response::Head, Error> {
    loop {
        if let Some(head) = response::parse_head(read)? {
            let code = head.status.as_u16();
            if (100..200).contains(&code) && code != 101 {
                continue;
            }
            return Ok(head);
        }
        if read.capacity() - read.len() < READ_CHUNK / 2 {
            read.reserve(READ_CHUNK);
        }
        match reader.read_buf(read).await {
            Ok(0) => return Err(Error::ClosedBeforeHead),
            Ok(_) => {}
            Err(e) => return Err(Error::Read(e)),
        }
    }
}

/// Writes the head in `write`, then the body as `framing` says, batching what is ready.
async fn write_body<W: AsyncWrite + Unpin>(
    writer: &mut W,
    write: &mut Vec<u8>,
    body: &mut ProxyBody,
    framing: RequestFraming,
) -> Result<(), Error> {
    let mut sent: u64 = 0;
    loop {
        // A frame at hand goes with what is gathered; otherwise what is gathered goes first
        // (the head must not wait for a body the client has yet to send).
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !write.is_empty() {
                    writer.write_all(write).await.map_err(Error::Write)?;
                    write.clear();
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    // Trailers are not passed on (nor were they by hyper: `Trailer`, which
                    // declares them, is hop-by-hop).
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                match framing {
                    RequestFraming::Length(length) if sent > length => {
                        return Err(Error::LongBody(length))
                    }
                    RequestFraming::Chunked => {
                        encode::chunk_size(write, data.len());
                        write.extend_from_slice(&data);
                        write.extend_from_slice(b"\r\n");
                    }
                    _ => write.extend_from_slice(&data),
                }
                if write.len() >= WRITE_BATCH {
                    writer.write_all(write).await.map_err(Error::Write)?;
                    write.clear();
                }
            }
            Some(Err(e)) => return Err(Error::RequestBody(e)),
            None => break,
        }
    }
    match framing {
        RequestFraming::Length(length) if sent < length => {
            return Err(Error::ShortBody { sent, length })
        }
        RequestFraming::Chunked => write.extend_from_slice(encode::LAST_CHUNK),
        _ => {}
    }
    writer.write_all(write).await.map_err(Error::Write)?;
    write.clear();
    writer.flush().await.map_err(Error::Write)
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// A response body read straight from the target's connection; the connection goes back
/// to the pool when the body has ended cleanly, and is closed if it is dropped before.
#[derive(Debug)]
pub struct Body {
    /// Some until the body has ended or the connection was taken for an upgrade.
    conn: Option<Conn>,
    state: State,
    reusable: bool,
}

impl Body {
    /// The body has been read whole: the connection goes back to the pool if it can carry
    /// another request.
    fn end(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.read.is_empty() {
                pool::give_back(conn);
            }
        }
    }

    /// The connection after a `101 Switching Protocols`, with any bytes the target sent
    /// after the head.
    pub fn upgrade(&mut self) -> Option<Upgraded> {
        let conn = self.conn.take()?;
        self.state = State::Done;
        // Copied out, if any: the read buffer (8 KiB or more) is not kept for the tunnel's
        // life, which a frozen slice of it would do.
        let early = if conn.read.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&conn.read)
        };
        Some(Upgraded {
            stream: conn.stream,
            early,
        })
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if matches!(self.state, State::Done) {
            self.end();
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => {
                    this.end();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !conn.read.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.read.len());
                        let data = conn.read.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(fields)) => {
                        return Poll::Ready(Some(Ok(Frame::trailers(fields))))
                    }
                    Ok(Decoded::End) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                State::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            // Nothing buffered: read more.
            if conn.read.capacity() - conn.read.len() < READ_CHUNK / 2 {
                conn.read.reserve(READ_CHUNK);
            }
            // Through `poll_read`, which takes a short read as the socket drained (no
            // extra `recvfrom` that would only say so).
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.read
            ));
            match read {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.reusable = false;
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the target closed the connection before its response body ended",
                    ))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

/// A target's connection after `101 Switching Protocols`: the bytes it sent after the head
/// are read first.
pub struct Upgraded {
    stream: TcpStream,
    early: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if this.early.is_empty() {
                // Let go of the allocation: the tunnel may idle for hours.
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    /// A target on loopback that answers each request it reads (up to its blank line, and
    /// `body` more bytes) with the next of `answers`, then closes.
    async fn target(
        answers: Vec<(&'static [u8], usize)>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for (answer, body) in answers {
                let start = seen.len();
                loop {
                    if let Some(end) = seen[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                        if seen.len() >= start + end + 4 + body {
                            break;
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    let n = socket.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    seen.extend_from_slice(&chunk[..n]);
                }
                // In two pieces, so that the proxy reads across them.
                let half = answer.len() / 2;
                socket.write_all(&answer[..half]).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
                socket.write_all(&answer[half..]).await.unwrap();
            }
            seen
        });
        (addr, task)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        let mut request = Request::new(super::super::body::empty());
        *request.uri_mut() = path.parse().unwrap();
        request
            .headers_mut()
            .insert("host", hyper::header::HeaderValue::from_static("t"));
        request
    }

    async fn body_of(response: Response<Body>) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn responses_of_each_framing_are_read_and_the_connection_goes_back_to_the_pool() {
        let (addr, target) = target(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 0),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", 0),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", 0),
            (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", 0),
        ])
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let response = send(Conn::new(stream, addr), get("/one"))
            .await
            .ok()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(body_of(response).await, b"hello");
        let mut response = None;
        for (path, want, status) in [("/two", &b"abcde"[..], 200), ("/three", b"", 204)] {
            let conn = pool::checkout(addr).await.unwrap();
            assert!(conn.reused, "{path} on the pooled connection");
            let answer = send(conn, get(path)).await.ok().unwrap();
            assert_eq!(answer.status(), status);
            assert_eq!(body_of(answer).await, want);
            response = Some(path);
        }
        assert_eq!(response, Some("/three"));
        // HEAD: the length is the resource's, no body follows.
        let conn = pool::checkout(addr).await.unwrap();
        let mut head = get("/four");
        *head.method_mut() = Method::HEAD;
        let answer = send(conn, head).await.ok().unwrap();
        assert_eq!(answer.headers()["content-length"], "3");
        assert_eq!(body_of(answer).await, b"");
        // Close-delimited: read to the end, and the connection is not kept.
        let conn = pool::checkout(addr).await.unwrap();
        assert!(conn.reused);
        let answer = send(conn, get("/five")).await.ok().unwrap();
        assert_eq!(
            answer.version(),
            hyper::Version::HTTP_11,
            "the proxy's own version"
        );
        assert_eq!(body_of(answer).await, b"until the end");
        assert_eq!(pool::idle_count(), 0);
        let seen = String::from_utf8(target.await.unwrap()).unwrap();
        assert!(
            seen.starts_with("GET /one HTTP/1.1\r\nhost: t\r\n\r\nGET /two"),
            "{seen}"
        );
        assert!(seen.contains("HEAD /four HTTP/1.1\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn bodies_are_sent_with_their_framing() {
        let (addr, target) = target(vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 22),
        ])
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut post = Request::new(super::super::body::full("hello"));
        *post.method_mut() = Method::POST;
        let answer = send(Conn::new(stream, addr), post).await.ok().unwrap();
        assert_eq!(body_of(answer).await, b"");
        // A body of unknown length: chunked.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut upload = Request::new(Channel(rx).boxed_unsync());
        *upload.method_mut() = Method::PUT;
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        tx.send(Bytes::from_static(b"defghijk")).await.unwrap();
        drop(tx);
        let conn = pool::checkout(addr).await.unwrap();
        let answer = send(conn, upload).await.ok().unwrap();
        assert_eq!(body_of(answer).await, b"");
        let seen = String::from_utf8(target.await.unwrap()).unwrap();
        assert_eq!(
            seen,
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
             PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n8\r\ndefghijk\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_no_large_buffers() {
        const UPLOAD: usize = 200 * 1024;
        let (addr, _target) = target(vec![(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            UPLOAD,
        )])
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut post = Request::new(super::super::body::full(vec![b'x'; UPLOAD]));
        *post.method_mut() = Method::POST;
        let answer = send(Conn::new(stream, addr), post).await.ok().unwrap();
        assert_eq!(body_of(answer).await, b"");
        let conn = pool::checkout(addr).await.unwrap();
        assert!(conn.reused, "kept in the pool");
        assert!(
            conn.write.capacity() <= KEEP_WHILE_IDLE && conn.read.capacity() <= KEEP_WHILE_IDLE,
            "write {} read {}",
            conn.write.capacity(),
            conn.read.capacity()
        );
    }

    /// A body of unknown length: the receiver's bytes.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl hyper::body::Body for Channel {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|bytes| bytes.map(|bytes| Ok(Frame::data(bytes))))
        }
    }

    #[tokio::test]
    async fn a_length_beside_chunked_is_dropped_and_the_connection_not_kept() {
        let (addr, _target) = target(vec![(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            0,
        )])
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let response = send(Conn::new(stream, addr), get("/")).await.ok().unwrap();
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(body_of(response).await, b"hello");
        assert_eq!(pool::idle_count(), 0);
    }

    #[tokio::test]
    async fn malformed_and_cut_responses_are_errors_and_upgrades_keep_early_bytes() {
        for (answer, expect_head_error) in [
            (&b"HTTP/1.1 2xx OK\r\n\r\n"[..], true),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", false),
            (b"HTTP/1.1 200 O", true),
        ] {
            let (addr, _target) = target(vec![(answer, 0)]).await;
            let stream = TcpStream::connect(addr).await.unwrap();
            match send(Conn::new(stream, addr), get("/")).await {
                Err(SendError::Failed(_)) => assert!(expect_head_error, "{answer:?}"),
                Err(SendError::Unsent(_)) => panic!("unsent"),
                Ok(response) => {
                    assert!(!expect_head_error, "{answer:?}");
                    assert!(response.into_body().collect().await.is_err(), "{answer:?}");
                }
            }
        }
        let (addr, _target) = target(vec![(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nearly",
            0,
        )])
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut response = send(Conn::new(stream, addr), get("/ws"))
            .await
            .ok()
            .unwrap();
        assert_eq!(response.status(), 101);
        let mut upgraded = response.body_mut().upgrade().expect("the connection");
        let mut early = [0u8; 5];
        upgraded.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
    }
}
