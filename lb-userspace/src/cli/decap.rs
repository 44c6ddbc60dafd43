//! `sluice decap`: on a target of a `tunnel` listener, attach the decapsulating XDP program
//! (`sluice_decap`) so that IPIP / IP6IP6 / 4in6 / 6in4 packets from the load balancer reach
//! the local stack without an ipip or ip6_tunnel driver; detach on SIGINT/SIGTERM.

use anyhow::Context;
use aya::maps::PerCpuArray;
use lb_common::{decap::DecapCounter, stats::CounterValue};
use sluice::dataplane::{
    interface,
    load::{self, AttachMode, MapSizes, DECAP_PROGRAM_NAME},
};

use sluice::daemon::signals::{Request, Signals};

/// The decap program's counters (`lb_common::decap`).
const DECAP_STATS_MAP: &str = "DECAP_STATS";

#[derive(clap::Args)]
pub struct DecapArgs {
    /// Interface the tunnelled packets arrive on.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// XDP attach mode: `auto` tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
}

pub fn decap(args: DecapArgs) -> anyhow::Result<()> {
    let ifindex = interface::index(&args.iface)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Handlers first: a SIGTERM that arrives while the program is being attached must still
    // lead to a clean detach, not to the default action.
    let mut signals = {
        let _runtime = runtime.enter();
        Signals::install()?
    };
    // The object's load-balancer maps are created too, though this program never touches
    // them: keep the big ones (the flow tables) at their minimum.
    let sizes = MapSizes {
        flows: 1,
        listeners: 1,
        targets: 1,
    };
    let mut ebpf = load::load_program(log::max_level(), sizes, DECAP_PROGRAM_NAME)?;
    let (link, mode) = load::attach_named(
        &mut ebpf,
        DECAP_PROGRAM_NAME,
        &args.iface,
        ifindex,
        args.xdp_mode,
    )?;
    log::info!(
        "sluice decap attached to {} (ifindex {ifindex}) in {} mode: IPIP, IP6IP6, 4in6 and 6in4 packets go to the local stack without their outer header",
        args.iface,
        load::mode_name(mode)
    );

    runtime.block_on(async {
        while signals.next().await == Request::Reload {
            log::info!("sluice decap has no configuration to reload");
        }
    });
    log::info!("stopping");

    load::program_mut_named(&mut ebpf, DECAP_PROGRAM_NAME)
        .detach(link)
        .with_context(|| format!("detaching from {}", args.iface))?;
    match summary(&ebpf) {
        Ok(summary) => log::info!("detached from {}; {summary}", args.iface),
        Err(e) => {
            log::info!("detached from {}", args.iface);
            log::warn!("cannot read the decap counters: {e:#}");
        }
    }
    Ok(())
}

/// The counters that moved, as `name=packets` pairs.
fn summary(ebpf: &aya::Ebpf) -> anyhow::Result<String> {
    let map = ebpf
        .map(DECAP_STATS_MAP)
        .context("the XDP object has no DECAP_STATS map")?;
    let stats: PerCpuArray<_, CounterValue> = PerCpuArray::try_from(map)?;
    let mut moved = Vec::new();
    for &counter in DecapCounter::ALL {
        let mut total = CounterValue::default();
        for value in stats.get(&(counter as u32), 0)?.iter() {
            total.add(value);
        }
        if total.packets > 0 {
            moved.push(format!("{}={}", counter.name(), total.packets));
        }
    }
    Ok(if moved.is_empty() {
        "no packets seen".to_string()
    } else {
        format!("packets: {}", moved.join(" "))
    })
}
