//! Restarting in place (SIGUSR2): the daemon starts its successor itself, the binary at the
//! path it was started from (after an upgrade, the new one there) with its own arguments and
//! `--take-over`; the successor takes the listening sockets and the data plane over, and the
//! old daemon drains ([`super::handover`]). If the successor fails to start, the old daemon
//! has not stepped down and runs on. Under systemd the successor tells the service manager
//! it is the service's main process now ([`super::systemd::ready_as_main`]), so
//! `systemctl kill -s USR2 sluice` upgrades the service without a gap.

use std::{
    ffi::OsString,
    io,
    path::PathBuf,
    process::{Command, Stdio},
};

/// The argument that makes a new daemon take over from a running one.
pub const TAKE_OVER: &str = "--take-over";

/// How to start this daemon again.
#[derive(Clone, Debug)]
pub struct Successor {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Successor {
    /// This process's binary (its path, read now: a later upgrade puts the new binary
    /// there) and arguments.
    pub fn of_this_process() -> io::Result<Successor> {
        let program = std::env::current_exe()?;
        let mut args: Vec<OsString> = std::env::args_os()
            .skip(1)
            .filter(|a| a != TAKE_OVER)
            .collect();
        args.push(TAKE_OVER.into());
        Ok(Successor { program, args })
    }

    /// Starts it, with this daemon's standard output and error; a thread reaps it and logs
    /// how it ended if it ends while this daemon still runs.
    pub fn spawn(&self) -> io::Result<u32> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .spawn()?;
        let pid = child.id();
        std::thread::Builder::new()
            .name("successor".into())
            .spawn(move || match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => log::error!("the successor (pid {pid}) exited: {status}"),
                Err(e) => log::error!("waiting for the successor (pid {pid}): {e}"),
            })?;
        Ok(pid)
    }

    pub fn program(&self) -> &std::path::Path {
        &self.program
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_takes_over_with_the_same_arguments() {
        let successor = Successor::of_this_process().unwrap();
        assert_eq!(successor.args.last().unwrap(), TAKE_OVER);
        assert_eq!(successor.args.iter().filter(|a| *a == TAKE_OVER).count(), 1);
    }
}
