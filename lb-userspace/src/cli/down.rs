//! `sluice down`: stop forwarding on purpose. A plain stop of `sluice run` leaves the XDP
//! program attached with its last state (so a restart is hitless); this detaches it and
//! removes the pins. A running daemon is asked to do it and stop; without one on the socket,
//! the pins are removed here, unless a daemon still holds the pin directory's lock (see
//! `dataplane::pin_lock`): then nothing is touched.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use hyper::Method;
use sluice::{
    api::{self, client::Client, ClientError},
    dataplane::{bpffs, pin_lock::PinDirLock, pins},
};

#[derive(clap::Args)]
pub struct DownArgs {
    /// The daemon's pin directory (`sluice run --pin-dir`).
    #[arg(long, value_name = "DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The daemon's control socket (`sluice run --socket`).
    #[arg(long, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// How long a daemon asked to go down may take to detach and exit.
const DAEMON_EXIT: Duration = Duration::from_secs(10);

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let client = Client::new(&args.socket);
    match runtime.block_on(client.send(Method::POST, api::DOWN_PATH, None::<&()>)) {
        Ok(_) => {
            // The daemon removes the pins after its last request; wait for that, bounded.
            let deadline = Instant::now() + DAEMON_EXIT;
            while pins::has_data_plane(&args.pin_dir) || runtime.block_on(client.stats()).is_ok() {
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "the daemon on {} accepted `down` but had not stopped after {} seconds; see its log",
                        args.socket.display(),
                        DAEMON_EXIT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!(
                "sluice stopped: the daemon on {} detached the XDP program and removed {}",
                args.socket.display(),
                args.pin_dir.display()
            );
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            // Only pins are removed: a directory elsewhere is a mistaken argument.
            if args.pin_dir.exists() && !bpffs::is_bpffs(&args.pin_dir) {
                return Err(bpffs::BpffsError::NotBpffs {
                    path: args.pin_dir.clone(),
                }
                .into());
            }
            // No daemon on this socket; one on another socket may still own these pins.
            let _lock = if args.pin_dir.exists() {
                match PinDirLock::try_acquire(&args.pin_dir)? {
                    Some(lock) => Some(lock),
                    None => anyhow::bail!(
                        "the pins in {} belong to a running sluice daemon whose control socket is not {}; nothing was detached: run `sluice down --socket <its socket>`, or stop it first",
                        args.pin_dir.display(),
                        args.socket.display()
                    ),
                }
            } else {
                None
            };
            let removed = pins::remove_all(&args.pin_dir)?;
            if removed.detached.is_empty() && removed.maps == 0 {
                println!(
                    "nothing to take down: no daemon on {} and no pins in {}",
                    args.socket.display(),
                    args.pin_dir.display()
                );
            } else {
                println!("sluice stopped: {}", removed.describe(&args.pin_dir));
            }
            Ok(())
        }
        Err(ClientError::Status { message, .. }) => Err(anyhow::anyhow!(message)),
        Err(e) => Err(e.into()),
    }
}
