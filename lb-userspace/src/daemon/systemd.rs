//! What the daemon tells systemd when it runs as a `Type=notify` service (`$NOTIFY_SOCKET`
//! set; otherwise every call here does nothing): `READY=1` once its listeners are serving,
//! `RELOADING=1` and `READY=1` again around each reload, `WATCHDOG=1` from the event loop while
//! it turns, and `STOPPING=1` when it begins to stop. A successor started by SIGUSR2 says it
//! is the service's main process now (`MAINPID`), which the unit allows with
//! `NotifyAccess=all` (see `deploy/sluice.service`).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Keeps `$NOTIFY_SOCKET` set: the successor started by SIGUSR2 inherits it to say it is ready.
const KEEP_ENV: bool = false;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(KEEP_ENV, states) {
        let shown: Vec<String> = states.iter().map(ToString::to_string).collect();
        log::warn!("telling systemd {}: {e}", shown.join(" "));
    }
}

/// Started and serving: the service is up, with this process as its main process.
pub fn ready_as_main() {
    notify(&[NotifyState::Ready, NotifyState::MainPid(std::process::id())]);
}

/// A reload, from `RELOADING=1` when it begins to `READY=1` when it is dropped: also when the
/// reload was refused (the old model runs on) or returned early.
pub struct Reloading(());

impl Reloading {
    pub fn begin() -> Reloading {
        let mut states = vec![NotifyState::Reloading];
        // systemd wants the time of the reload with it (sd_notify(3)).
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        Reloading(())
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        notify(&[NotifyState::Ready]);
    }
}

/// Stopping has begun (the drain may take a while).
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// `WatchdogSec=` of the unit: pinged from the event loop at half the interval, so a loop that
/// hangs gets the daemon restarted (the XDP program forwards meanwhile, and the next daemon
/// adopts it).
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// From `$WATCHDOG_USEC`. `$WATCHDOG_PID` is not required to be this process: a successor
    /// started by SIGUSR2 inherits the variables of the daemon it replaces as main process.
    pub fn from_env() -> Watchdog {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&usec| usec > 0);
        Watchdog {
            every: usec.map(|usec| Duration::from_micros(usec) / 2),
            last: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.every.is_some()
    }

    /// Pings if half the interval has passed since the last ping.
    pub fn tick(&mut self, now: Instant) {
        let Some(every) = self.every else {
            return;
        };
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= every)
        {
            notify(&[NotifyState::Watchdog]);
            self.last = Some(now);
        }
    }
}
