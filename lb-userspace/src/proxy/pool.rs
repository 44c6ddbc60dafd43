//! Keep-alive connections to targets, one pool per worker thread (see [`super::workers`]):
//! a request takes an idle connection to its target or opens one (HTTP/1.1, hyper's
//! `client::conn::http1`, whose connection task runs on the same worker), and gives it back
//! when its response body has ended ([`Lease`]). Nothing is spawned per request, and a pool
//! holds no more connections than were in use at once, less those idle longer than
//! [`IDLE_TIMEOUT`] or beyond [`MAX_IDLE_PER_TARGET`].

use std::{
    cell::RefCell,
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::body::ProxyBody;

/// How long an idle connection is kept: shorter than common application keep-alive timeouts
/// (Node's 5 s is the shortest usual one), so a pooled connection is rarely reused just as
/// the target closes it (that case is retried, see [`super::forward`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per target and worker; more are closed when given back.
pub const MAX_IDLE_PER_TARGET: usize = 1024;
/// How long opening a connection to a target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// A connection to a target, in use by one request.
pub struct Lease {
    /// Some until dropped.
    sender: Option<SendRequest<ProxyBody>>,
    target: SocketAddr,
    /// Taken from the pool (it served a request before): a request it could not send went
    /// nowhere and may be sent again on a fresh connection.
    pub reused: bool,
    /// Given back when dropped: cleared for a connection that was upgraded.
    reusable: bool,
}

impl Lease {
    fn new(sender: SendRequest<ProxyBody>, target: SocketAddr, reused: bool) -> Lease {
        Lease {
            sender: Some(sender),
            target,
            reused,
            reusable: true,
        }
    }

    pub fn sender(&mut self) -> &mut SendRequest<ProxyBody> {
        self.sender.as_mut().expect("some until dropped")
    }

    /// The connection is taken over by an upgrade (or is otherwise done): not given back.
    pub fn discard(&mut self) {
        self.reusable = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.sender.take() {
            Some(sender) if self.reusable && !sender.is_closed() => give_back(self.target, sender),
            _ => {}
        }
    }
}

/// Why no connection to a target could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0}: no connection within {CONNECT_TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("HTTP/1.1 handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

/// An idle connection to `target` from this worker's pool, or a new one.
pub async fn checkout(target: SocketAddr) -> Result<Lease, ConnectError> {
    if let Some(sender) = take_idle(target) {
        return Ok(Lease::new(sender, target, true));
    }
    // On the heap: connecting (and hyper's handshake) would otherwise make every request's
    // future larger, and it is moved whole when hyper takes it.
    Box::pin(connect(target)).await
}

/// A new connection to `target`, not from the pool.
pub async fn connect(target: SocketAddr) -> Result<Lease, ConnectError> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ConnectError::Connect(target, e)),
            Err(_) => return Err(ConnectError::Timeout(target)),
        };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(target, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            log::debug!("connection to target {target}: {e}");
        }
    });
    Ok(Lease::new(sender, target, false))
}

/// The most recently used idle connection to `target` that can take a request now; those
/// closed, expired or still busy are dropped on the way (a busy one is finishing a response
/// its client stopped reading).
fn take_idle(target: SocketAddr) -> Option<SendRequest<ProxyBody>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&target)?;
        while let Some(Idle { sender, since }) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    })
}

fn give_back(target: SocketAddr, sender: SendRequest<ProxyBody>) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(target).or_default();
        if list.len() < MAX_IDLE_PER_TARGET {
            list.push(Idle {
                sender,
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
            list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed());
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
