//! The daemon's event loop: signals, health events, the tick, `sluice down`, and the XDP
//! program's log records.

use std::time::Instant;

use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, sync::mpsc::UnboundedReceiver};

use super::{
    handover::{self, Successors},
    restart::Successor,
    signals::{Request, Signals},
    systemd, Daemon, TICK,
};
use crate::{
    api::Backend,
    dataplane::{saved::Store, Dataplane},
    health::HealthEvent,
    model::TargetKey,
};

/// The XDP program's log channel (aya-log), when the program has one.
pub type ProgramLog = EbpfLogger<&'static dyn log::Log>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("polling the XDP program's log ring buffer: {0}")]
    Logs(std::io::Error),
}

/// Why the control loop ended.
#[derive(Debug)]
pub enum Ending {
    /// SIGTERM: drain, and hand the listeners to the next daemon.
    Stop,
    /// SIGINT: stop now.
    Interrupt,
    /// `sluice down`.
    Down,
    /// A successor asked to take over (`sluice run --take-over`); it waits on this stream.
    TakenOver(std::os::unix::net::UnixStream),
}

/// Runs until SIGINT/SIGTERM, `sluice down` or a successor taking over: forwards the
/// program's log records, reloads the model on SIGHUP, applies health events, ticks (drains,
/// saving, rates), and refuses successors that only take over from a stopping daemon.
pub async fn serve<D: Dataplane, S: Store>(
    daemon: &Daemon<D, S>,
    signals: &mut Signals,
    mut health_events: UnboundedReceiver<HealthEvent<TargetKey>>,
    logger: Option<ProgramLog>,
    mut successors: Option<&mut Successors>,
    restart: Option<Successor>,
) -> Result<Ending, ServeError> {
    let mut logs = match logger {
        // SAFETY: the AsyncFd owns the logger and with it the ring buffer's fd, so the fd stays
        // open for as long as it is registered.
        Some(logger) => Some(
            unsafe { AsyncFd::register(logger) }
                .map_err(|e| ServeError::Logs(std::io::Error::other(e.to_string())))?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut watchdog = systemd::Watchdog::from_env();
    let ending = loop {
        tokio::select! {
            () = daemon.down_requested() => break Ending::Down,
            (request, stream) = async { successors.as_mut().expect("guarded").next().await }, if successors.is_some() => {
                match request {
                    crate::proxy::handover::Request::TakeOver => break Ending::TakenOver(stream),
                    crate::proxy::handover::Request::IfStopping => handover::refuse(stream),
                }
            }
            request = signals.next() => match request {
                Request::Stop => break Ending::Stop,
                Request::Interrupt => break Ending::Interrupt,
                // Logged either way; the control API's `POST /v1/reload` takes the same path.
                Request::Reload => {
                    let _ = daemon.reload(false);
                }
                Request::Restart => match restart.as_ref().map(Successor::spawn) {
                    Some(Ok(pid)) => log::info!("SIGUSR2: started the next daemon (pid {pid}); it takes over when it is ready"),
                    Some(Err(e)) => log::error!("SIGUSR2: cannot start the next daemon: {e}; this one runs on"),
                    None => log::error!("SIGUSR2: this daemon does not know its own binary; it runs on"),
                },
            },
            Some(event) = health_events.recv() => daemon.health_changed(&event),
            _ = tick.tick() => {
                daemon.tick(Instant::now());
                watchdog.tick(Instant::now());
            }
            ready = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                let mut guard = ready.map_err(ServeError::Logs)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    };
    log::info!("stopping");
    systemd::stopping();
    Ok(ending)
}
