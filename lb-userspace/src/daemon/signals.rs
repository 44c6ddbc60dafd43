//! Signal handling shared by the daemon and the other long-running subcommands.

use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler: {source}")]
pub struct SignalError {
    signal: &'static str,
    source: std::io::Error,
}

/// SIGINT, SIGTERM, SIGHUP and SIGUSR2, caught from the moment they are installed: a daemon
/// installs them before attaching anything, so a signal during start-up still leads to a
/// clean stop.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    user2: Signal,
}

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM: stop; a daemon with http/https listeners drains and hands them over.
    Stop,
    /// SIGINT (Ctrl-C): stop now.
    Interrupt,
    Reload,
    /// SIGUSR2: start the next daemon (the binary at this one's path, its arguments), which
    /// takes over without a gap (`sluice run`'s restart in place).
    Restart,
}

impl Request {
    /// SIGTERM or SIGINT.
    pub fn stops(self) -> bool {
        matches!(self, Request::Stop | Request::Interrupt)
    }
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
            user2: install(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }

    /// The next request (SIGTERM: stop; SIGINT: stop now; SIGHUP: reload; SIGUSR2: restart).
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.interrupt.recv() => Request::Interrupt,
            _ = self.terminate.recv() => Request::Stop,
            _ = self.hangup.recv() => Request::Reload,
            _ = self.user2.recv() => Request::Restart,
        }
    }
}
