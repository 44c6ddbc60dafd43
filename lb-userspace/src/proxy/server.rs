//! Accepting client connections on a listener and serving them with hyper, under the
//! listener's limits: the header read timeout (slowloris; answered 408), the maximum header
//! size (hyper answers 431), malformed requests (hyper answers 400 before any target sees
//! them), and the idle timeout (the connection is closed). https listeners terminate TLS
//! here (certificates chosen by SNI, HTTP/2 when the client offers `h2` by ALPN).
//!
//! hyper's HTTP/1 parser writes its 400, 414 and 431 itself and then ends the connection with
//! the parse error; the watchdog recognises that error and, when [`ConnState`] saw hyper write
//! while the refused head was pending, counts and logs the answer like any other.
//!
//! A plain HTTP/1.1 keep-alive connection is held without hyper while it idles: between
//! requests hyper is asked to end the connection (at once when idle, without shutting the
//! socket down), the socket is taken back with the bytes hyper had read but not parsed, and
//! hyper gets it again once it is readable. An idle connection then holds no buffer (hyper's
//! are 8 KiB each way); see `serve_plain`. TLS and HTTP/2 connections stay with hyper.
//!
//! On a plain connection the common request, a GET without a body, is served without hyper
//! (`serve_common`, with `h1`'s parser and response head), under the same watchdog; a head
//! that is anything else goes to hyper with none of its bytes consumed, and is answered by
//! hyper as before (400, 414, 431, bodies, 100-continue, upgrades, HTTP/1.0).

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime},
};

use bytes::BytesMut;
use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use super::{
    access_log::Record,
    admission::{self, Permit},
    conn::{ConnState, TrackedIo, Verdict},
    context::{ConnCtx, ListenerSlot},
    forward,
    h1::{self, Parsed},
    resets::{self, StreamResets},
    Shared,
};

/// After a failed accept (e.g. out of file descriptors), before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a client whose request head did not arrive in time gets before the close.
pub const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n";

/// What the workers accepting on one listening socket share: its connections (for the
/// listener's `max_connections`), and what is logged about it.
pub struct Accepting {
    open: Arc<admission::Gate>,
    refusals: admission::Throttle,
    failures: admission::Throttle,
}

impl Default for Accepting {
    fn default() -> Self {
        Accepting {
            open: Arc::default(),
            refusals: admission::Throttle::new(admission::LOG_INTERVAL),
            failures: admission::Throttle::new(admission::LOG_INTERVAL),
        }
    }
}

/// Accepts connections on `listener` (one worker's registration of a listening socket) for
/// as long as the task runs; each is served by the listener in `slot` at the time it was
/// accepted, if the connection limits admit it (else it is reset at once and counted).
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    slot: Arc<ListenerSlot>,
    accepting: Arc<Accepting>,
) {
    let Accepting {
        open,
        refusals,
        failures,
    } = &*accepting;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = slot.load();
                match admission::admit(
                    &shared.admitted,
                    shared.max_connections,
                    open,
                    ctx.max_connections,
                ) {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        let (shared, slot) = (Arc::clone(&shared), Arc::clone(&slot));
                        tokio::spawn(serve(stream, peer, shared, slot, permit));
                    }
                    Err(refusal) => {
                        ctx.counters.rejected_connections.fetch_add(1, Relaxed);
                        // A reset, at once: the client learns now, and no descriptor waits
                        // in TIME_WAIT or for the client's FIN.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        drop(stream);
                        if let Some(count) = refusals.event() {
                            log::warn!(
                                "listener '{}': reset {count} new connection(s) in the last {}s or less: {refusal}",
                                ctx.name,
                                admission::LOG_INTERVAL.as_secs()
                            );
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(count) = failures.event() {
                    log::warn!(
                        "listener '{}': accepting a connection failed {count} time(s) in the last {}s or less: {e}",
                        slot.load().name,
                        admission::LOG_INTERVAL.as_secs()
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: Arc<ListenerSlot>,
    permit: Permit,
) {
    let ctx = slot.load_full();
    let Some(routes) = shared.snapshot.load().listeners.get(&ctx.name).cloned() else {
        return;
    };
    let limits = Limits {
        header_timeout: routes.header_read_timeout,
        idle_timeout: routes.idle_timeout,
        max_header_bytes: routes.max_header_bytes,
    };
    drop(routes);
    let state = Arc::new(ConnState::new());
    state.limit_request_line(limits.max_header_bytes);
    // Kept to write a 408 on a plain connection hyper owns: only while no request is in
    // flight, so hyper is not writing anything then.
    let fd: RawFd = stream.as_raw_fd();
    let Some(config) = ctx.tls.clone() else {
        let io = TrackedIo::parkable(stream, Arc::clone(&state));
        let census = Arc::clone(&shared.connections);
        let conn = Arc::new(ConnCtx::new(ctx, slot, peer, state, None, census, permit));
        return serve_plain(io, fd, conn, shared, limits).await;
    };
    // On the heap: the TLS handshake and HTTP/2 would make every connection's task (plain
    // ones too) several KiB larger.
    let tls = Tls {
        stream,
        peer,
        ctx,
        slot,
        state,
        config,
        permit,
    };
    Box::pin(serve_tls(tls, shared, limits)).await;
}

/// What a TLS connection is served with, accepted (see `serve`).
struct Tls {
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<super::context::ListenerCtx>,
    slot: Arc<ListenerSlot>,
    state: Arc<ConnState>,
    config: Arc<rustls::ServerConfig>,
    permit: Permit,
}

async fn serve_tls(tls: Tls, shared: Arc<Shared>, limits: Limits) {
    let Tls {
        stream,
        peer,
        ctx,
        slot,
        state,
        config,
        permit,
    } = tls;
    let io = TrackedIo::new(stream, Arc::clone(&state));
    // The handshake is part of the request head for the header read timeout (a client that
    // stalls in it is a slowloris too).
    let accepted = tokio::time::timeout(
        limits.header_timeout,
        tokio_rustls::TlsAcceptor::from(config).accept(io),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            log::debug!("connection from {peer}: TLS handshake failed: {e}");
            ctx.counters.tls_negotiation_errors.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            log::debug!(
                "connection from {peer}: no TLS handshake within {:?}",
                limits.header_timeout
            );
            ctx.counters.tls_negotiation_errors.fetch_add(1, Relaxed);
            return;
        }
    };
    let session = tls.get_ref().1;
    let (protocol, cipher) = super::tls::describe(session);
    let h2 = session.alpn_protocol() == Some(b"h2");
    let conn = Arc::new(ConnCtx::new(
        ctx,
        slot,
        peer,
        state,
        Some((cipher.to_string(), protocol.to_string())),
        Arc::clone(&shared.connections),
        permit,
    ));
    serve_http(tls, h2, conn, shared, limits).await;
}

#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
}

/// What hyper's HTTP/1 server of one listener is built with.
fn http1_builder(limits: Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192);
    builder
}

/// Serves HTTP/1.1 (with upgrades) on a plain connection, holding hyper's connection (and
/// its read and write buffers, 8 KiB each) only while there is a request to read or answer:
/// hyper gets the socket once it is readable, and gives it back once it waits for the next
/// request with none in flight. An idle keep-alive connection then costs its socket, its
/// task and its [`ConnState`], as nginx's cost its socket and a small structure.
/// `fd`: the socket, for a 408 to a slow request head.
async fn serve_plain(
    mut io: TrackedIo<TcpStream>,
    fd: RawFd,
    conn: Arc<ConnCtx>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let draining = shared.draining.subscribe();
    let (service_conn, service_shared) = (Arc::clone(&conn), Arc::clone(&shared));
    let mut service = service_fn(move |request| {
        forward::handle(
            Arc::clone(&service_shared),
            Arc::clone(&service_conn),
            request,
        )
    });
    // A new connection's request has usually arrived by the time it is accepted: looking
    // (a peek) saves a turn of the event loop.
    let mut readable = has_bytes(io.get_ref());
    // hyper's connection is taken apart at once after the connection's first request (many
    // connections serve one or two, then idle), later only once it has been idle for
    // PARK_AFTER: taking it apart and building it again costs about 10 µs of CPU (mostly
    // glibc's work on hyper's 8 KiB buffers), 25% more per request when done after each.
    let mut at_once = true;
    loop {
        if !readable
            && !io.has_unread()
            && !until_readable(&io, draining.clone(), &conn, limits).await
        {
            return;
        }
        readable = false;
        // Boxed: a connection waiting between requests keeps no room for the watchdog.
        let common = Box::pin(serve_common(
            &mut io,
            fd,
            &conn,
            &shared,
            draining.clone(),
            limits,
            at_once,
        ));
        at_once = false;
        match common.await {
            Served::Idle => continue,
            Served::Close => return,
            Served::Hyper(bytes) => {
                if !bytes.is_empty() {
                    io.give_back(bytes.freeze());
                }
            }
        }
        let finished_before = conn.state.finished();
        at_once |= finished_before == 0;
        // On the heap, so that the task of a parked connection does not keep room for it.
        // Made here: an idle connection's task keeps no room for hyper's settings.
        let mut connection = Box::new(
            http1_builder(limits)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let stop = |c: std::pin::Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
        let park = Park {
            finished_before,
            state: &conn.state,
            at_once,
        };
        at_once = false;
        // hyper's connection is Unpin: it boxes what it polls. The watchdog is boxed too, so
        // that a parked connection's task does not keep room for it (about 300 bytes).
        let parked = Box::pin(watch(
            std::pin::Pin::new(&mut *connection),
            stop,
            draining.clone(),
            &conn,
            Some(fd),
            limits,
            Kind::Http1(Some(park)),
        ))
        .await;
        conn.state.set_parking(false);
        if !parked {
            return;
        }
        // Not upgraded: hyper gave the connection back between requests.
        let Some(parts) = (*connection).into_parts() else {
            return;
        };
        io = parts.io.into_inner();
        if !parts.read_buf.is_empty() {
            io.unread(parts.read_buf);
        }
        service = parts.service;
    }
}

/// How [`serve_common`] left a connection.
enum Served {
    /// Between requests, nothing read: to wait for the next one holding no buffer.
    Idle,
    /// A request head that is not the common case starts with these bytes (read, none
    /// consumed): hyper's server is to serve it.
    Hyper(BytesMut),
    /// Done: closed, or to be closed.
    Close,
}

/// The bytes read from a client at once, at first (the buffer grows if a head needs more).
const READ_CHUNK: usize = 4096;

/// Serves the common requests of a plain HTTP/1.1 connection without hyper (see `h1`),
/// under the same watchdog as hyper's connection (header read timeout with its 408, idle
/// timeout, draining), until a request head is not one `h1` takes (that one goes to hyper,
/// before any of its bytes is consumed), or the connection is to be held without a buffer
/// between requests: as with hyper, at once after its first request (`at_once`), else once
/// it has been idle for PARK_AFTER.
async fn serve_common(
    io: &mut TrackedIo<TcpStream>,
    fd: RawFd,
    conn: &Arc<ConnCtx>,
    shared: &Arc<Shared>,
    draining: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
    at_once: bool,
) -> Served {
    let stopping = AtomicBool::new(false);
    let park = Park {
        finished_before: conn.state.finished(),
        state: &conn.state,
        at_once,
    };
    let mut served = Served::Close;
    {
        let serving = async {
            served = serve_requests(io, conn, shared, limits, &stopping).await;
            Ok::<(), hyper::Error>(())
        };
        // On the heap: the request's future is large, and a connection waiting for its next
        // request does not keep room for it.
        let mut serving = Box::pin(serving);
        let stop = |_: std::pin::Pin<&mut _>| stopping.store(true, Relaxed);
        watch(
            serving.as_mut(),
            stop,
            draining,
            conn,
            Some(fd),
            limits,
            Kind::Http1(Some(park)),
        )
        .await;
    }
    conn.state.set_parking(false);
    served
}

/// The loop of [`serve_common`]: requests read, forwarded and answered, as hyper's server
/// would (the response head as it writes it, `connection: close` when the client asked
/// or the proxy is draining, the connection closed when the client half-closes while its
/// request is in flight). `stopping`: the watchdog asks to stop, draining or to give the
/// connection back between requests (then [`ConnState::parking`]).
async fn serve_requests(
    io: &mut TrackedIo<TcpStream>,
    conn: &Arc<ConnCtx>,
    shared: &Arc<Shared>,
    limits: Limits,
    stopping: &AtomicBool,
) -> Served {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    use tokio::io::AsyncWriteExt;
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut served_one = false;
    loop {
        let request = loop {
            match h1::parse_request(
                &mut buf,
                limits.max_header_bytes,
                http_body_util::Empty::<bytes::Bytes>::new(),
            ) {
                Parsed::Request(request) => break request,
                Parsed::Hyper => return Served::Hyper(buf),
                Parsed::Partial => {}
            }
            make_room(&mut buf);
            // Between requests, until bytes arrive or the watchdog asks to stop.
            let between = served_one && buf.is_empty();
            let read = std::future::poll_fn(|cx| {
                if between && stopping.load(Relaxed) {
                    return std::task::Poll::Ready(None);
                }
                tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *io), cx, &mut buf).map(Some)
            })
            .await;
            let Some(read) = read else {
                return Served::Idle;
            };
            match read {
                Ok(0) if buf.is_empty() => return Served::Close,
                // A head cut by the client's end: hyper's, as before.
                Ok(0) => return Served::Hyper(buf),
                Ok(_) => {}
                Err(e) => {
                    log::debug!("connection from {}: {e}", conn.peer);
                    return Served::Close;
                }
            }
        };
        served_one = true;
        let mut close = h1::asks_to_close(request.headers());
        let handled = forward::handle(Arc::clone(shared), Arc::clone(conn), request);
        tokio::pin!(handled);
        // While the request is in flight, a client that ends its side is gone (hyper's
        // server without half-close): the request is dropped. Bytes that arrive meanwhile
        // are the next request's.
        let response = loop {
            tokio::select! {
                biased;
                Ok(response) = &mut handled => break response,
                read = read_more(io, &mut buf), if buf.is_empty() => match read {
                    Ok(0) => return Served::Close,
                    Ok(_) => {}
                    Err(e) => {
                        log::debug!("connection from {}: {e}", conn.peer);
                        return Served::Close;
                    }
                },
            }
        };
        close |= stopping.load(Relaxed) && !conn.state.parking();
        let (mut head, mut body) = response.into_parts();
        let length = h1::BodyLength::of(body.is_end_stream(), &body.size_hint());
        out.clear();
        let Ok(framing) =
            h1::response_head(&mut out, head.status, &mut head.headers, length, close)
        else {
            log::debug!(
                "connection from {}: a response with an invalid Content-Length: closed",
                conn.peer
            );
            return Served::Close;
        };
        drop(head);
        let mut left = match framing {
            h1::Framing::Length(len) => len,
            h1::Framing::Chunked => u64::MAX,
        };
        // Frames at hand are written with the head; the head goes out before any wait.
        while left > 0 {
            let frame = match poll_now(&mut body) {
                std::task::Poll::Ready(frame) => frame,
                std::task::Poll::Pending => {
                    if !out.is_empty() {
                        if let Err(e) = io.write_all(&out).await {
                            log::debug!("connection from {}: {e}", conn.peer);
                            return Served::Close;
                        }
                        out.clear();
                    }
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    log::debug!("connection from {}: the response body: {e}", conn.peer);
                    // What there is goes out (the head and the bytes before the error, as
                    // hyper's server sends them), then the end of the connection tells the
                    // client that the response is cut.
                    let _ = io.write_all(&out).await;
                    return Served::Close;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: never sent (see `h1::LAST_CHUNK`).
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            match framing {
                h1::Framing::Length(_) => {
                    // More than the length: cut there, as hyper does.
                    let take = (data.len() as u64).min(left) as usize;
                    out.extend_from_slice(&data[..take]);
                    left -= take as u64;
                }
                h1::Framing::Chunked => {
                    h1::chunk_size(&mut out, data.len());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
            }
            if out.len() >= WRITE_BATCH {
                if let Err(e) = io.write_all(&out).await {
                    log::debug!("connection from {}: {e}", conn.peer);
                    return Served::Close;
                }
                out.clear();
            }
        }
        let whole = match framing {
            h1::Framing::Length(_) => left == 0,
            h1::Framing::Chunked => {
                out.extend_from_slice(h1::LAST_CHUNK);
                true
            }
        };
        // A body with a length is not read past it; the rest of the response goes now.
        drop(body);
        if let Err(e) = io.write_all(&out).await {
            log::debug!("connection from {}: {e}", conn.peer);
            return Served::Close;
        }
        if !whole {
            // The body ended before its length: the client must see the connection end.
            log::debug!(
                "connection from {}: the response body ended early",
                conn.peer
            );
            return Served::Close;
        }
        if close {
            let _ = io.shutdown().await;
            return Served::Close;
        }
        if out.capacity() > WRITE_BATCH {
            out = Vec::new();
        }
    }
}

/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Reads what the client sends into `buf`.
async fn read_more(io: &mut TrackedIo<TcpStream>, buf: &mut BytesMut) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    make_room(buf);
    io.read_buf(buf).await
}

/// Room to read into `buf`: its allocation reused while it has room (the heads split off
/// it share it), a new one only when it is nearly full.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// The body's next frame if it is there without waiting (`Pending` otherwise).
fn poll_now(
    body: &mut super::body::ProxyBody,
) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, super::body::BoxError>>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    hyper::body::Body::poll_frame(std::pin::Pin::new(body), &mut cx)
}

/// Whether `stream` has bytes (or an end, or an error) to read now, without waiting.
fn has_bytes(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::uninit(); 1];
    !matches!(
        socket2::SockRef::from(stream).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// Waits, holding no buffer, until `io` has bytes (or an end) to read: true. False when the
/// connection is to be closed instead: idle for the idle timeout, or the proxy is draining.
async fn until_readable(
    io: &TrackedIo<TcpStream>,
    mut draining: tokio::sync::watch::Receiver<bool>,
    conn: &ConnCtx,
    limits: Limits,
) -> bool {
    let idle_timeout = limits.idle_timeout;
    // No head can start before the socket is readable: only the idle timeout applies, and
    // the only wake-up before data or a drain is at its end.
    let idle = tokio::time::sleep_until(conn.state.idle_deadline(idle_timeout).into());
    // A request that has arrived is served, even when draining has begun (then with
    // `Connection: close`), rather than reset unread.
    tokio::select! {
        biased;
        ready = io.get_ref().readable() => ready.is_ok(),
        _ = draining.wait_for(|d| *d) => false,
        () = idle => {
            log::debug!("connection from {}: idle for {idle_timeout:?}: closed", conn.peer);
            false
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) or, when ALPN chose it, HTTP/2 on a TLS stream `io`,
/// under the listener's limits.
async fn serve_http<I>(io: I, h2: bool, conn: Arc<ConnCtx>, shared: Arc<Shared>, limits: Limits)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let draining = shared.draining.subscribe();
    let service_conn = Arc::clone(&conn);
    let service_shared = Arc::clone(&shared);
    let handle = move |request| {
        forward::handle(
            Arc::clone(&service_shared),
            Arc::clone(&service_conn),
            request,
        )
    };
    // No raw 408 under TLS: bytes written beside rustls would break the stream.
    let fd = None;
    if h2 {
        let resets = Arc::new(StreamResets::default());
        let streams = Arc::clone(&resets);
        let service = service_fn(move |request| {
            let stream = streams.stream();
            let handled = handle(request);
            async move {
                let response = handled.await;
                stream.answered();
                response
            }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_concurrent_streams(resets::MAX_CONCURRENT_STREAMS);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let stop = |c: std::pin::Pin<&mut _>| http2::Connection::graceful_shutdown(c);
        let kind = Kind::Http2(&resets, &shared);
        watch(connection, stop, draining, &conn, fd, limits, kind).await;
    } else {
        let connection = http1_builder(limits)
            .serve_connection(TokioIo::new(io), service_fn(handle))
            .with_upgrades();
        tokio::pin!(connection);
        let stop = |c: std::pin::Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
        watch(
            connection,
            stop,
            draining,
            &conn,
            fd,
            limits,
            Kind::Http1(None),
        )
        .await;
    }
}

/// How long a plain HTTP/1.1 connection must be idle before hyper gives it back, after its
/// first request (see `serve_plain`): longer than the gaps of clients that send a request
/// every few hundred milliseconds, so that they do not pay for it on every request.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// When hyper's HTTP/1 connection may give a plain connection back between requests.
#[derive(Clone, Copy)]
struct Park<'a> {
    /// Requests ended on the connection before hyper was given it.
    finished_before: u64,
    state: &'a ConnState,
    /// As soon as it is between requests; else once it has been idle for [`PARK_AFTER`].
    at_once: bool,
}

/// The protocol a connection speaks, for its watchdog.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// hyper's HTTP/1, whose parser answers refused heads itself; it gives the connection
    /// back between requests if it may.
    Http1(Option<Park<'a>>),
    /// HTTP/2: too many streams reset by the client end the connection with GOAWAY.
    Http2(&'a StreamResets, &'a Shared),
}

/// Drives `connection` until it ends, a request head takes longer than the header read
/// timeout (408, or a close under TLS), or nothing moves for the idle timeout. When
/// `draining` turns true, or an HTTP/2 client resets too many streams, `stop` asks hyper to
/// finish the requests in flight and close (HTTP/2: GOAWAY).
///
/// With [`Park`], once hyper waits between requests (idle, see [`ConnState::park_due`]),
/// `stop` asks it to end the connection, which it does at once, after flushing what it has
/// written, and without shutting the socket down (see [`ConnState::set_parking`]): true when
/// it ended so, and the caller may serve the socket again.
async fn watch<C, F>(
    mut connection: std::pin::Pin<&mut C>,
    stop: F,
    mut draining: tokio::sync::watch::Receiver<bool>,
    conn: &ConnCtx,
    fd: Option<RawFd>,
    limits: Limits,
    kind: Kind<'_>,
) -> bool
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
    F: Fn(std::pin::Pin<&mut C>),
{
    // Flags shared by the branches below (atomics only for `Send`: one task uses them).
    let stopping = AtomicBool::new(false);
    // When the connection was asked to give the socket back: the requests ended by then
    // (NOT_PARKING: it was not).
    const NOT_PARKING: u64 = u64::MAX;
    let parking = AtomicU64::new(NOT_PARKING);
    // Between requests: to be given back once idle for PARK_AFTER.
    let park_later = AtomicBool::new(false);
    let park = match kind {
        Kind::Http1(park) => park,
        Kind::Http2(..) => None,
    };
    let give_back = |connection: &mut std::pin::Pin<&mut C>, park: Park| {
        stopping.store(true, Relaxed);
        parking.store(park.state.finished(), Relaxed);
        park.state.set_parking(true);
        stop(connection.as_mut());
    };
    // hyper's connection, polled; when it waits between requests, given back now or later.
    let drive = |cx: &mut std::task::Context<'_>, connection: &mut std::pin::Pin<&mut C>| {
        let polled = connection.as_mut().poll(cx);
        if polled.is_pending() && !stopping.load(Relaxed) {
            if let Some(park) = park {
                if park.state.park_due(park.finished_before) {
                    if park.at_once {
                        give_back(connection, park);
                        return connection.as_mut().poll(cx);
                    }
                    park_later.store(true, Relaxed);
                }
            }
        }
        polled
    };
    let Limits {
        header_timeout,
        idle_timeout,
        ..
    } = limits;
    let peer = conn.peer;
    // A deadline, not a period: an idle connection wakes nobody until its verdict can change.
    let mut due = conn
        .state
        .next_check(header_timeout, idle_timeout, std::time::Instant::now());
    let timer = tokio::time::sleep_until(due.into());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            done = std::future::poll_fn(|cx| drive(cx, &mut connection)) => {
                if let Err(e) = done {
                    log::debug!("connection from {peer}: {e}");
                    let (received, sent) = conn.state.pending_bytes();
                    match parser_answer(&e, conn.state.request_line_too_long()) {
                        Some((status, reason)) if matches!(kind, Kind::Http1(_)) && sent > 0 => {
                            refused(conn, status, reason, received, sent);
                        }
                        _ => {}
                    }
                    return false;
                }
                // Idle when asked, hyper closed without reading or answering anything more.
                let parked_at = parking.load(Relaxed);
                return park.is_some_and(|park| {
                    parked_at != NOT_PARKING
                        && park.state.park_due(park.finished_before)
                        && park.state.finished() == parked_at
                });
            }
            Ok(_) = draining.wait_for(|d| *d), if !stopping.load(Relaxed) => {
                stopping.store(true, Relaxed);
                stop(connection.as_mut());
            }
            _ = abusive(kind), if !stopping.load(Relaxed) => {
                if let Kind::Http2(resets, shared) = kind {
                    if let Some(count) = shared.reset_abuse_log.event() {
                        log::warn!(
                            "{count} HTTP/2 connection(s) sent GOAWAY in the last {}s or less for resetting at least {} streams before their response, more than half of their streams (the latest from {peer}, {} resets)",
                            admission::LOG_INTERVAL.as_secs(),
                            resets::MAX_CLIENT_RESETS,
                            resets.resets()
                        );
                    }
                }
                stopping.store(true, Relaxed);
                stop(connection.as_mut());
            }
            () = std::future::poll_fn(|cx| {
                // The watchdog's deadline or, while hyper waits between requests to be given
                // back, when the connection will have been idle for PARK_AFTER (on the grid:
                // it moves only when the last activity moves to another grid step).
                let at = if park_later.load(Relaxed) && !stopping.load(Relaxed) {
                    due.min(conn.state.idle_deadline(PARK_AFTER))
                } else {
                    due
                };
                let at = tokio::time::Instant::from_std(at);
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                std::future::Future::poll(timer.as_mut(), cx)
            }) => {
                let now = std::time::Instant::now();
                if park_later.swap(false, Relaxed) && !stopping.load(Relaxed) {
                    if let Some(park) = park.filter(|p| p.state.park_due(p.finished_before)) {
                        if now >= conn.state.idle_deadline(PARK_AFTER) {
                            give_back(&mut connection, park);
                            continue;
                        }
                        park_later.store(true, Relaxed);
                    }
                }
                if now < due {
                    continue;
                }
                match conn.state.verdict(header_timeout, idle_timeout) {
                Verdict::Continue => {
                    due = conn.state.next_check(header_timeout, idle_timeout, std::time::Instant::now());
                }
                Verdict::HeaderTimeout => {
                    log::debug!("connection from {peer}: no complete request head within {header_timeout:?}: 408");
                    let (received, _) = conn.state.pending_bytes();
                    let sent = if fd.is_some() { REQUEST_TIMEOUT_RESPONSE.len() as u64 } else { 0 };
                    refused(conn, 408, "RequestHeaderTimeout", received, sent);
                    if let Some(fd) = fd {
                        // SAFETY: `fd` belongs to the stream `connection` owns, which is
                        // alive until the return below; a non-blocking send of a short
                        // response.
                        unsafe {
                            libc::send(
                                fd,
                                REQUEST_TIMEOUT_RESPONSE.as_ptr().cast(),
                                REQUEST_TIMEOUT_RESPONSE.len(),
                                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                            );
                            libc::shutdown(fd, libc::SHUT_WR);
                        }
                    }
                    return false;
                }
                Verdict::Idle => {
                    log::debug!("connection from {peer}: idle for {idle_timeout:?}: closed");
                    return false;
                }
                }
            }
        }
    }
}

/// Resolves when an HTTP/2 client reset too many streams; never for HTTP/1.
async fn abusive(kind: Kind<'_>) {
    match kind {
        Kind::Http2(resets, _) => resets.abusive.notified().await,
        Kind::Http1(_) => std::future::pending().await,
    }
}

/// The answer hyper's HTTP/1 parser wrote for the error it ended a connection with (see
/// `Server::on_error` in hyper's `proto::h1::role`), and the access log's error_reason.
/// `long_line`: the refused head's request line alone is over the limit (see
/// [`ConnState`], which then turns hyper's 431 into a 414).
fn parser_answer(e: &hyper::Error, long_line: bool) -> Option<(u16, &'static str)> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    if e.is_parse_too_large() {
        // TooLarge and UriTooLong share the predicate; only the kind (in Debug) tells.
        return Some(if long_line || format!("{e:?}").contains("UriTooLong") {
            (414, "RequestUriTooLong")
        } else {
            (431, "RequestHeaderTooLarge")
        });
    }
    if format!("{e:?}").contains("Internal") {
        return None;
    }
    Some((400, "MalformedRequest"))
}

/// Counts and logs a request head that never became a request: hyper's parser refused it, or
/// it did not arrive within the header read timeout.
fn refused(conn: &ConnCtx, status: u16, reason: &'static str, received: u64, sent: u64) {
    conn.listener().counters.elb_response(status);
    let record = Record {
        kind: conn.proto(),
        time: Some(SystemTime::now()),
        listener: conn.listener().name.clone(),
        client: Some(conn.peer),
        elb_status: status,
        received_bytes: received,
        sent_bytes: sent,
        request: "- - -".to_string(),
        ssl_cipher: conn.tls.as_ref().map(|t| t.0.clone()),
        ssl_protocol: conn.tls.as_ref().map(|t| t.1.clone()),
        action: "-",
        error_reason: Some(reason),
        ..Record::default()
    };
    conn.listener().sink.record(&record);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `bytes` to hyper's HTTP/1 server with the listener's limits for
    /// `max_header_bytes`: the error it ends the connection with, and what it wrote.
    async fn refuse(bytes: &[u8], max_header_bytes: usize) -> (hyper::Error, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut builder = http1::Builder::new();
        builder
            .max_header_size(max_header_bytes)
            .max_buf_size(max_header_bytes.max(8192) + 8192);
        let service = service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(super::super::body::empty()))
        });
        let connection = builder.serve_connection(TokioIo::new(server), service);
        client.write_all(bytes).await.unwrap();
        let error = connection.await.unwrap_err();
        let mut answer = Vec::new();
        drop(client.shutdown().await);
        client.read_to_end(&mut answer).await.unwrap();
        (error, String::from_utf8_lossy(&answer).into_owned())
    }

    #[tokio::test]
    async fn the_parsers_own_answers_are_recognised() {
        let (error, answer) = refuse(b"GET /not a request line\r\nHost: x\r\n\r\n", 4096).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(
            parser_answer(&error, false),
            Some((400, "MalformedRequest"))
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(8000)
        );
        let (error, answer) = refuse(big.as_bytes(), 4096).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert_eq!(
            parser_answer(&error, false),
            Some((431, "RequestHeaderTooLarge"))
        );
    }

    #[test]
    fn the_408_response_is_well_formed() {
        let text = std::str::from_utf8(super::REQUEST_TIMEOUT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{text}"
        );
    }
}
