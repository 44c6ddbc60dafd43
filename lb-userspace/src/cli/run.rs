//! `sluice run`: the daemon. Loads the XDP program, attaches it to the given interfaces,
//! applies the model from `--config`, and runs until SIGINT/SIGTERM (SIGHUP re-reads the
//! configuration); then detaches.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::{maps::Map, programs::xdp::XdpLinkId, Ebpf};
use aya_log::EbpfLogger;
use sluice::{
    bpffs,
    controller::{Changes, Controller},
    datapath::{self, AttachMode, MapSizes},
    interface,
    maps::Maps,
    model::Model,
    stats::STATS_MAP,
};
use tokio::io::unix::AsyncFd;

use super::signals::{Request, Signals};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to attach the XDP program to; repeat for several (e.g. the client side and
    /// the target side, so `nat` replies are translated too).
    #[arg(long = "iface", value_name = "IF", required = true)]
    ifaces: Vec<String>,
    /// The model: listeners, target groups, targets (TOML). Without it nothing is balanced
    /// and all traffic passes to the kernel.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// XDP attach mode: `auto` tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
    /// bpffs directory where maps are pinned for `sluice stats` (one daemon per directory).
    #[arg(long, value_name = "DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Flow table size (entries); each costs about 150 bytes of kernel memory, twice in
    /// `nat` mode.
    #[arg(long, value_name = "N", default_value_t = lb_common::flow::DEFAULT_FLOWS,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 27)))]
    flows: u32,
}

/// How often drains are checked for their deregistration delay.
const TICK: Duration = Duration::from_secs(1);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let ifindexes = args
        .ifaces
        .iter()
        .map(|iface| interface::index(iface))
        .collect::<Result<Vec<u32>, _>>()?;
    // The model is read before anything is loaded: a broken file changes nothing.
    let model = match &args.config {
        Some(path) => Model::load(path)?,
        None => Model::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let signals = {
        let _runtime = runtime.enter();
        Signals::install()?
    };

    let mut ebpf = datapath::load_with(log::max_level(), MapSizes { flows: args.flows })?;
    // The program logs only rare events (and, in debug builds, per packet); without a log
    // call in the object there is no log map, which is fine.
    let logger = match EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::debug!("no log channel from the XDP program: {e}");
            None
        }
    };
    let mut controller = Controller::new(Maps::take(&mut ebpf)?);
    let changes = controller.apply(&model, Instant::now())?;
    log_changes(&changes);

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

    let mut links: Vec<(String, XdpLinkId)> = Vec::new();
    for (iface, &ifindex) in args.ifaces.iter().zip(&ifindexes) {
        match datapath::attach(&mut ebpf, iface, ifindex, args.xdp_mode) {
            Ok((link, mode)) => {
                log::info!(
                    "sluice attached to {iface} (ifindex {ifindex}) in {} mode",
                    datapath::mode_name(mode)
                );
                links.push((iface.clone(), link));
            }
            Err(e) => {
                detach(&mut ebpf, links);
                let _ = bpffs::unpin(&stats_pin);
                return Err(e.into());
            }
        }
    }
    log::info!(
        "{} listener(s) from {}; counters: sluice stats --pin-dir {}",
        controller.model().listeners.len(),
        args.config
            .as_ref()
            .map_or("no configuration".into(), |p| p.display().to_string()),
        args.pin_dir.display()
    );

    let served = runtime.block_on(serve(
        logger,
        signals,
        &mut controller,
        args.config.as_ref(),
    ));
    detach(&mut ebpf, links);
    bpffs::unpin(&stats_pin).with_context(|| format!("removing {}", stats_pin.display()))?;
    served
}

fn detach(ebpf: &mut Ebpf, links: Vec<(String, XdpLinkId)>) {
    for (iface, link) in links {
        match datapath::program_mut(ebpf).detach(link) {
            Ok(()) => log::info!("detached from {iface}"),
            Err(e) => log::error!("detaching from {iface}: {e}"),
        }
    }
}

/// Runs until SIGINT/SIGTERM: forwards the program's log records, reloads the model on SIGHUP,
/// and ends drains whose deregistration delay is over.
async fn serve(
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    mut signals: Signals,
    controller: &mut Controller,
    config: Option<&PathBuf>,
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
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            request = signals.next() => match request {
                Request::Stop => break,
                Request::Reload => reload(controller, config),
            },
            _ = tick.tick() => {
                match controller.tick(Instant::now()) {
                    Ok(expired) => for key in expired {
                        log::info!("target {} of '{}': deregistration delay over; its remaining flows move to other targets", key.addr, key.group);
                    },
                    Err(e) => log::error!("ending drains: {e}"),
                }
            }
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

/// Re-reads the model; a file that does not validate changes nothing.
fn reload(controller: &mut Controller, config: Option<&PathBuf>) {
    let Some(path) = config else {
        log::warn!("SIGHUP: no --config to reload");
        return;
    };
    let applied = Model::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|model| Ok(controller.apply(&model, Instant::now())?));
    match applied {
        Ok(changes) if changes.is_empty() => log::info!("reloaded {}: no changes", path.display()),
        Ok(changes) => {
            log::info!("reloaded {}", path.display());
            log_changes(&changes);
        }
        Err(e) => log::error!(
            "reload of {} refused, running configuration kept: {e:#}",
            path.display()
        ),
    }
}

fn log_changes(changes: &Changes) {
    for name in &changes.listeners_added {
        log::info!("listener '{name}' added");
    }
    for name in &changes.listeners_removed {
        log::info!("listener '{name}' removed");
    }
    for name in &changes.tables_rebuilt {
        log::info!("listener '{name}': Maglev table rebuilt");
    }
    for key in &changes.targets_added {
        log::info!("target {} of '{}' registered", key.addr, key.group);
    }
    for key in &changes.targets_draining {
        log::info!("target {} of '{}' draining", key.addr, key.group);
    }
}
