//! `sluice run`: load, attach, serve logs, detach on SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use aya::maps::Map;
use aya_log::EbpfLogger;
use sluice::{
    bpffs,
    datapath::{self, AttachMode},
    interface,
    stats::STATS_MAP,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to attach the XDP program to.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// XDP attach mode: `auto` tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
    /// bpffs directory where maps are pinned for `sluice stats` (one daemon per directory).
    #[arg(long, value_name = "DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let ifindex = interface::index(&args.iface)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Handlers first: a SIGTERM that arrives while the program is being attached must still
    // lead to a clean detach, not to the default action.
    let signals = {
        let _runtime = runtime.enter();
        Signals::install()?
    };
    let mut ebpf = datapath::load(log::max_level())?;
    // The program logs only rare events (and, in debug builds, per packet); without a log
    // call in the object there is no log map, which is fine.
    let logger = match EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::debug!("no log channel from the XDP program: {e}");
            None
        }
    };
    bpffs::prepare_pin_dir(&args.pin_dir)?;
    let stats_pin = args.pin_dir.join(STATS_MAP);
    if stats_pin.exists() {
        log::warn!(
            "replacing a stale pin at {} left by an earlier sluice that did not stop cleanly",
            stats_pin.display()
        );
        bpffs::unpin(&stats_pin).with_context(|| format!("removing {}", stats_pin.display()))?;
    }
    let stats: &Map = ebpf
        .map(STATS_MAP)
        .context("the XDP object has no STATS map")?;
    stats
        .pin(&stats_pin)
        .with_context(|| format!("pinning counters at {}", stats_pin.display()))?;

    let attached = datapath::attach(&mut ebpf, &args.iface, ifindex, args.xdp_mode);
    let (link, mode) = match attached {
        Ok(attached) => attached,
        Err(e) => {
            let _ = bpffs::unpin(&stats_pin);
            return Err(e.into());
        }
    };
    log::info!(
        "sluice attached to {} (ifindex {ifindex}) in {} mode; counters: sluice stats --pin-dir {}",
        args.iface,
        datapath::mode_name(mode),
        args.pin_dir.display()
    );

    let served = runtime.block_on(serve(logger, signals));

    datapath::program_mut(&mut ebpf)
        .detach(link)
        .with_context(|| format!("detaching from {}", args.iface))?;
    bpffs::unpin(&stats_pin).with_context(|| format!("removing {}", stats_pin.display()))?;
    log::info!("detached from {}", args.iface);
    served
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Must be called inside the runtime's context.
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }
}

/// Forwards the program's log records until SIGINT or SIGTERM.
async fn serve(
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let mut logs = match logger {
        // SAFETY: the AsyncFd owns the logger and with it the ring buffer's fd, so the fd stays
        // open for as long as it is registered.
        Some(logger) => Some(
            unsafe { AsyncFd::register(logger) }
                .map_err(|e| anyhow::anyhow!("polling the XDP program's log ring buffer: {e}"))?,
        ),
        None => None,
    };
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break,
            _ = signals.terminate.recv() => break,
            ready = async { logs.as_mut().unwrap().readable_mut().await }, if logs.is_some() => {
                let mut guard = ready.context("waiting for XDP log records")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    log::info!("stopping");
    Ok(())
}
