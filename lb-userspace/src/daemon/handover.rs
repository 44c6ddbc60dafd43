//! How a daemon hands its L7 listeners to the next one, and drains.
//!
//! A running daemon listens for successors on its hand-over socket ([`Successors`]). A
//! successor that asks to take over (`sluice run --take-over`) makes it step down; one that
//! only asks a stopping daemon is refused while it runs. A daemon that stops (SIGTERM, or a
//! successor taking over; SIGINT stops at once) then [`drain`]s:
//!
//! 1. its control loop is over (the caller saved the state and released the control socket,
//!    so the successor can adopt the data plane and bind the socket);
//! 2. the proxy stops accepting but keeps its listening sockets open: a connection attempt
//!    waits in the kernel's accept queue instead of being refused. Connections finish the
//!    request in flight and close; upgraded ones (WebSockets, tunnels) go on;
//! 3. a successor that asks gets the listening sockets ([`crate::proxy::handover`]), and
//!    this daemon closes its copies once the successor confirmed: from then on only the
//!    successor accepts;
//! 4. the daemon exits when its last connection closed and the sockets were handed over
//!    (or nobody asked for them within [`SUCCESSOR_WAIT`]), or at the drain deadline, when
//!    the remaining tunnels are closed with a FIN to both sides. A second SIGTERM or SIGINT
//!    exits at once.

use std::{
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::io::AsyncBufReadExt;

use super::signals::{Request as Signal, Signals};
use crate::{
    api::server::SocketFile,
    proxy::{
        handover::{self, Answer, Request, STEP_TIMEOUT},
        Proxy,
    },
};

/// How long a stopping daemon whose connections are all closed keeps its listening sockets
/// for a successor: a restart (`systemctl stop` then `start`, or a script) starts the next
/// daemon well within it.
pub const SUCCESSOR_WAIT: Duration = Duration::from_secs(10);

/// How often a draining daemon looks at its connections.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// After the drain deadline, how long the last tunnels get to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Successors knocking on the hand-over socket, each with what it asked.
pub struct Successors {
    path: PathBuf,
    file: Option<SocketFile>,
    asks: tokio::sync::mpsc::UnboundedReceiver<(Request, UnixStream)>,
    accept: tokio::task::JoinHandle<()>,
}

impl Successors {
    /// Listens on `listener` (bound at `path`, removed with `file`); must run inside a
    /// `LocalSet`.
    pub fn listen(
        path: &Path,
        listener: UnixListener,
        file: SocketFile,
    ) -> std::io::Result<Successors> {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let (tx, asks) = tokio::sync::mpsc::unbounded_channel();
        let accept = tokio::task::spawn_local(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                tokio::task::spawn_local(async move {
                    match read_request(stream).await {
                        Ok(asked) => {
                            let _ = tx.send(asked);
                        }
                        Err(e) => log::debug!("a hand-over request that was not one: {e}"),
                    }
                });
            }
        });
        Ok(Successors {
            path: path.to_path_buf(),
            file: Some(file),
            asks,
            accept,
        })
    }

    /// The next successor's request.
    pub async fn next(&mut self) -> (Request, UnixStream) {
        match self.asks.recv().await {
            Some(asked) => asked,
            // The accept task holds a sender for as long as it runs, which is until drop.
            None => std::future::pending().await,
        }
    }

    /// Stops listening and removes the socket file, so the successor can bind its own.
    fn close(&mut self) {
        self.accept.abort();
        self.file = None;
    }

    /// Listens again after a hand-over that failed.
    fn reopen(&mut self) {
        match crate::api::server::bind(&self.path) {
            Ok((listener, file)) => match Successors::listen(&self.path, listener, file) {
                Ok(again) => *self = again,
                Err(e) => log::error!("listening for a successor again: {e}"),
            },
            Err(e) => log::error!("listening for a successor again: {e}"),
        }
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads a successor's request line (bounded in size and time) and returns the stream,
/// blocking again, for the answer.
async fn read_request(stream: tokio::net::UnixStream) -> std::io::Result<(Request, UnixStream)> {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    let mut bounded = tokio::io::AsyncReadExt::take(&mut reader, 64);
    let read = bounded.read_until(b'\n', &mut line);
    tokio::time::timeout(STEP_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("no request within the step timeout"))??;
    let request = Request::parse(&line).ok_or_else(|| {
        std::io::Error::other(format!(
            "unknown request {:?}",
            String::from_utf8_lossy(&line)
        ))
    })?;
    let stream = reader.into_inner().into_std()?;
    stream.set_nonblocking(false)?;
    Ok((request, stream))
}

/// Refuses a successor that asked only if this daemon is stopping.
pub fn refuse(mut stream: UnixStream) {
    // Debug: a new daemon asks again for a few seconds before it gives up and says why.
    log::debug!("a sluice run on the same --socket asked for the listening sockets; this daemon runs on (start it with --take-over to replace this one)");
    if let Err(e) = handover::answer(&mut stream, Answer::Running) {
        log::debug!("answering a successor: {e}");
    }
}

/// How a drain ended, for the last log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// No proxy ran: nothing to drain.
    Nothing,
    /// The listening sockets went to a successor; every connection ended.
    HandedOver,
    /// Nobody took the sockets over; every connection ended.
    Closed,
    /// The drain deadline passed (or a second signal came) with connections open.
    CutShort { open: usize },
}

/// Drains `proxy` as the module documentation says; `successor` is one that already asked
/// (a take-over that ended the control loop).
pub async fn drain(
    proxy: Option<&mut Proxy>,
    successors: &mut Successors,
    mut successor: Option<UnixStream>,
    signals: &mut Signals,
    deadline: Duration,
) -> Drained {
    let started = Instant::now();
    let mut empty = None;
    let proxy = match proxy {
        Some(proxy) => {
            proxy.drain();
            proxy
        }
        None => {
            // Nothing to drain; a successor that asked still hears that it may go on.
            if let Some(stream) = successor.take() {
                successors.close();
                hand_over(&mut empty, stream);
            }
            return Drained::Nothing;
        }
    };
    let mut proxy = Some(proxy);
    let mut handed_over = false;
    if let Some(stream) = successor.take() {
        successors.close();
        handed_over = hand_over(&mut proxy, stream);
        if !handed_over {
            successors.reopen();
        }
    }
    let proxy = proxy.expect("kept");
    // A proxy without listeners (all removed) keeps nothing for a successor.
    let listening = !proxy.listening().is_empty();
    log::info!(
        "draining: {} connection(s) open; the listening sockets wait for the next sluice run (up to {:?} after the last connection, {:?} in all)",
        proxy.open_connections(),
        SUCCESSOR_WAIT,
        deadline
    );
    let mut check = tokio::time::interval(DRAIN_CHECK);
    loop {
        tokio::select! {
            (request, stream) = successors.next(), if !handed_over => {
                log::info!("a successor asked for the listening sockets ({request:?})");
                successors.close();
                let mut held = Some(&mut *proxy);
                handed_over = hand_over(&mut held, stream);
                if !handed_over {
                    successors.reopen();
                }
            }
            signal = signals.next() => match signal {
                Signal::Stop | Signal::Interrupt => {
                    log::info!("stopping now, as asked again");
                    break;
                }
                Signal::Reload | Signal::Restart => {
                    log::info!("stopping: neither a reload nor a restart is done now");
                }
            },
            _ = check.tick() => {
                let open = proxy.open_connections();
                let waited = started.elapsed();
                if open == 0 && (handed_over || !listening || waited >= SUCCESSOR_WAIT) {
                    break;
                }
                if waited >= deadline {
                    log::info!("drain deadline ({deadline:?}) reached with {open} connection(s) open: closing them");
                    proxy.close_tunnels();
                    let closing = Instant::now();
                    while proxy.open_connections() > 0 && closing.elapsed() < CLOSE_GRACE {
                        tokio::time::sleep(DRAIN_CHECK).await;
                    }
                    break;
                }
            }
        }
    }
    let open = proxy.open_connections();
    proxy.close_listening();
    match (open, handed_over) {
        (0, true) => Drained::HandedOver,
        (0, false) => Drained::Closed,
        (open, _) => Drained::CutShort { open },
    }
}

/// Gives the listening sockets to the successor on `stream`; true once it confirmed (the
/// proxy's copies are closed then: only the successor accepts from here on).
fn hand_over(proxy: &mut Option<&mut Proxy>, mut stream: UnixStream) -> bool {
    let sockets = proxy.as_ref().map(|p| p.listening()).unwrap_or_default();
    let count = sockets.len();
    match handover::answer(&mut stream, Answer::Sockets(&sockets)) {
        Ok(()) => {
            drop(sockets);
            if let Some(proxy) = proxy.as_mut() {
                proxy.close_listening();
            }
            log::info!("handed {count} listening socket(s) to the next daemon");
            true
        }
        Err(e) => {
            log::error!(
                "handing the listening sockets to the next daemon failed ({e}); keeping them"
            );
            false
        }
    }
}
