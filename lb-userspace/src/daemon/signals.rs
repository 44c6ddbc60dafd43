//! Signal handling shared by the daemon and the other long-running subcommands.

use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler: {source}")]
pub struct SignalError {
    signal: &'static str,
    source: std::io::Error,
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment they are installed: a daemon installs
/// them before attaching anything, so a signal during start-up still leads to a clean stop.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Stop,
    Reload,
}

impl Signals {
    /// Must be called inside a tokio runtime's context.
    pub fn install() -> Result<Signals, SignalError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SignalError {
                signal: name,
                source,
            })
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next request (SIGINT/SIGTERM: stop; SIGHUP: reload).
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.interrupt.recv() => Request::Stop,
            _ = self.terminate.recv() => Request::Stop,
            _ = self.hangup.recv() => Request::Reload,
        }
    }
}
