//! The daemon's event loop: signals, health events, the tick, `sluice down`, and the XDP
//! program's log records.

use std::time::Instant;

use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, sync::mpsc::UnboundedReceiver};

use super::{
    signals::{Request, Signals},
    Daemon, TICK,
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

/// Runs until SIGINT/SIGTERM or `sluice down`: forwards the program's log records, reloads
/// the model on SIGHUP, applies health events, and ticks (drains, saving, rates).
pub async fn serve<D: Dataplane, S: Store>(
    daemon: &Daemon<D, S>,
    mut signals: Signals,
    mut health_events: UnboundedReceiver<HealthEvent<TargetKey>>,
    logger: Option<ProgramLog>,
) -> Result<(), ServeError> {
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
    loop {
        tokio::select! {
            () = daemon.down_requested() => break,
            request = signals.next() => match request {
                Request::Stop => break,
                // Logged either way; the control API's `POST /v1/reload` takes the same path.
                Request::Reload => {
                    let _ = daemon.reload();
                }
            },
            Some(event) = health_events.recv() => daemon.health_changed(&event),
            _ = tick.tick() => daemon.tick(Instant::now()),
            ready = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                let mut guard = ready.map_err(ServeError::Logs)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    log::info!("stopping");
    Ok(())
}
