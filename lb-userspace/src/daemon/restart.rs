//! Restarting in place (SIGUSR2): the daemon starts its successor itself, the binary at the
//! path it was started from (after an upgrade, the new one there) with its own arguments and
//! `--take-over`; the successor takes the listening sockets and the data plane over, and the
//! old daemon drains ([`super::handover`]). If the successor fails to start, the old daemon
//! has not stepped down and runs on. Under systemd the successor tells the service manager
//! it is the service's main process now ([`notify`]), so `ExecReload=kill -USR2 $MAINPID`
//! makes `systemctl reload` a hitless restart.

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

/// Tells the service manager `state` (`READY=1`, `MAINPID=...`) when sluice runs under
/// systemd with `Type=notify` (`$NOTIFY_SOCKET` set); does nothing otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notification(&path, state) {
        log::warn!("telling systemd {state:?}: {e}");
    }
}

fn send_notification(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::{linux::net::SocketAddrExt, unix::net::SocketAddr};
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // A name starting with '@' is in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_systemd_names() {
        let path = std::env::temp_dir().join(format!("sluice-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send_notification(path.as_os_str(), "READY=1\nMAINPID=42").unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_successor_takes_over_with_the_same_arguments() {
        let successor = Successor::of_this_process().unwrap();
        assert_eq!(successor.args.last().unwrap(), TAKE_OVER);
        assert_eq!(successor.args.iter().filter(|a| *a == TAKE_OVER).count(), 1);
    }
}
