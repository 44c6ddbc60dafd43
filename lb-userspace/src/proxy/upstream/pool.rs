//! Keep-alive connections to targets, one pool per worker thread (see [`crate::proxy::workers`]):
//! a request takes an idle connection to its target or opens one, and the response body
//! gives it back when it has ended ([`super::Body`]). Nothing is spawned per request
//! or per connection, and a pool holds no more connections than were in use at once, less
//! those idle longer than [`IDLE_TIMEOUT`] or beyond [`MAX_IDLE_PER_TARGET`].

use std::{
    cell::RefCell,
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::Conn;

/// How long an idle connection is kept: shorter than common application keep-alive timeouts
/// (Node's 5 s is the shortest usual one), so a pooled connection is rarely reused just as
/// the target closes it (that case is retried, see [`crate::proxy::forward`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per target and worker; more are closed when given back.
pub const MAX_IDLE_PER_TARGET: usize = 1024;
/// How long opening a connection to a target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Why no connection to a target could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0}: no connection within {CONNECT_TIMEOUT:?}")]
    Timeout(SocketAddr),
}

/// An idle connection to `target` from this worker's pool, or a new one.
pub async fn checkout(target: SocketAddr) -> Result<Conn, ConnectError> {
    if let Some(conn) = take_idle(target) {
        return Ok(conn);
    }
    // On the heap: connecting would otherwise make every request's future larger.
    Box::pin(connect(target)).await
}

/// A new connection to `target`, not from the pool.
pub async fn connect(target: SocketAddr) -> Result<Conn, ConnectError> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ConnectError::Connect(target, e)),
            Err(_) => return Err(ConnectError::Timeout(target)),
        };
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream, target))
}

/// The most recently used idle connection to `target` that has not expired; expired ones
/// are dropped on the way. Whether the target closed it is seen when it is used
/// ([`super::send`]).
fn take_idle(target: SocketAddr) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&target)?;
        while let Some(Idle { conn, since }) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    })
}

/// Keeps a connection whose last response ended cleanly, for the next request to its target.
pub fn give_back(mut conn: Conn) {
    conn.reused = true;
    conn.trim();
    // `try_with`: a body dropped while its worker's thread ends finds no pool.
    let _ = IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(conn.target).or_default();
        if list.len() < MAX_IDLE_PER_TARGET {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    });
}

/// Closes this worker's connections idle longer than [`IDLE_TIMEOUT`] (those given back
/// and never taken again); run every [`IDLE_TIMEOUT`] by [`sweep_forever`].
fn sweep() {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain_mut(|c| c.since.elapsed() < IDLE_TIMEOUT && !c.conn.closed_while_idle());
            !list.is_empty()
        });
    });
}

/// The sweep of this worker's pool, as a task of the worker.
pub async fn sweep_forever() {
    let mut ticks = tokio::time::interval(IDLE_TIMEOUT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        sweep();
    }
}

/// Idle connections in this worker's pool, to every target.
pub fn idle_count() -> usize {
    IDLE.with(|idle| idle.borrow().values().map(Vec::len).sum())
}
