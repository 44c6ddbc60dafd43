//! Accepting client connections on a listener and serving them with hyper, under the
//! listener's limits: the header read timeout (slowloris; answered 408), the maximum header
//! size (hyper answers 431), malformed requests (hyper answers 400 before any target sees
//! them), and the idle timeout (the connection is closed).

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::{
    conn::{ConnState, TrackedIo, Verdict},
    forward::{self, ConnCtx, ListenerCtx},
    Shared,
};

/// After a failed accept (e.g. out of file descriptors), before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a client whose request head did not arrive in time gets before the close.
pub const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n";

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, ctx: Arc<ListenerCtx>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, peer, Arc::clone(&shared), Arc::clone(&ctx)));
            }
            Err(e) => {
                log::warn!("listener '{}': accepting a connection: {e}", ctx.name);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, ctx: Arc<ListenerCtx>) {
    let Some(routes) = shared.snapshot.load().listeners.get(&ctx.name).cloned() else {
        return;
    };
    let state = Arc::new(ConnState::new());
    let conn = Arc::new(ConnCtx::new(Arc::clone(&ctx), peer, Arc::clone(&state)));
    // Kept to write a 408 on a connection hyper owns: only while no request is in flight,
    // so hyper is not writing anything then.
    let fd: RawFd = stream.as_raw_fd();
    // TLS hook: an https listener would wrap `stream` here (proxy/tls.rs, negotiating h2 or
    // http/1.1 by ALPN) and record the cipher and protocol in `conn.tls`. Until then, https
    // listeners are refused when they are bound (see `Proxy::update`).
    let io = TrackedIo::new(stream, Arc::clone(&state));
    let service_shared = Arc::clone(&shared);
    let service_conn = Arc::clone(&conn);
    let service = service_fn(move |request| {
        forward::handle(
            Arc::clone(&service_shared),
            Arc::clone(&service_conn),
            request,
        )
    });
    let mut builder = http1::Builder::new();
    builder
        .max_header_size(routes.max_header_bytes)
        .max_buf_size(routes.max_header_bytes.max(8192) + 8192);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let header_timeout = routes.header_read_timeout;
    let idle_timeout = routes.idle_timeout;
    let check = (header_timeout.min(idle_timeout) / 5)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    drop(routes);
    loop {
        tokio::select! {
            done = &mut connection => {
                if let Err(e) = done {
                    log::debug!("connection from {peer}: {e}");
                }
                return;
            }
            _ = tokio::time::sleep(check) => match state.verdict(header_timeout, idle_timeout) {
                Verdict::Continue => {}
                Verdict::HeaderTimeout => {
                    log::debug!("connection from {peer}: no complete request head within {header_timeout:?}: 408");
                    ctx.counters.elb_response(408);
                    // SAFETY: `fd` belongs to the stream `connection` owns, which is alive
                    // until the return below; a non-blocking send of a short response.
                    unsafe {
                        libc::send(
                            fd,
                            REQUEST_TIMEOUT_RESPONSE.as_ptr().cast(),
                            REQUEST_TIMEOUT_RESPONSE.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        );
                        libc::shutdown(fd, libc::SHUT_WR);
                    }
                    return;
                }
                Verdict::Idle => {
                    log::debug!("connection from {peer}: idle for {idle_timeout:?}: closed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
