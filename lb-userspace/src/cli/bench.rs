//! `sluice bench`: push frames into an interface from inside the kernel and count what
//! arrives where; `sluice bench cost|maglev|random-read|floor` for the other measurements.

use std::{
    net::Ipv4Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use lb_common::{bench::FloorHop, listener::ForwardingMode};
use sluice::{
    bench::{
        cost::{self, CostOptions},
        frame::{self, FrameSpec, Protocol, Sources, TcpKind, Template},
        maglev as maglev_figures,
        pace::{Limit, Schedule, Step},
        programs::{self, Floor, Generator, Sink, SinkSpec},
        random_read,
        report::{Report, SinkReport},
    },
    dataplane::interface,
    maglev,
};

use sluice::daemon::signals::Signals;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    traffic: TrafficArgs,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Per-packet cost of sluice's XDP program on each path (BPF_PROG_TEST_RUN, repeat=1,
    /// minus an empty program), in a private network namespace.
    Cost(CostArgs),
    /// Maglev table build time, slots moved on a change and balance.
    Maglev(MaglevArgs),
    /// What a read costs when its data is in no cache (a chain of dependent reads to random
    /// cache lines of a region mapped in 4 KiB pages): the floor under a flow-table lookup
    /// whose entry is out of the caches.
    RandomRead(RandomReadArgs),
    /// Attach the floor forwarder (MAC rewrite, then out) to an interface until SIGINT/SIGTERM:
    /// the most any XDP forwarder can do on this path.
    Floor(FloorArgs),
}

#[derive(clap::Args)]
struct TrafficArgs {
    /// Interface to send the frames into (they leave it as if sent by this host).
    #[arg(long, value_name = "IF", required = true)]
    iface: Option<String>,
    /// Destination address (IPv4): the listener's virtual IP.
    #[arg(long, value_name = "IPV4", required = true)]
    vip: Option<Ipv4Addr>,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    #[arg(long, value_enum, default_value = "udp")]
    protocol: Protocol,
    /// TCP packets: connection openings (SYN) or packets of established connections (ACK).
    #[arg(long, value_enum, default_value = "established")]
    tcp: TcpKind,
    /// Distinct flows (source address and port pairs), taken in turn.
    #[arg(long, default_value_t = 1000)]
    flows: u64,
    /// Source network of the flows: its addresses first, then the next source port.
    #[arg(long, value_name = "CIDR", default_value = "198.18.0.0/15")]
    sources: Sources,
    /// Frame size on the wire, FCS included (64 to 1518).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Frames to send.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Seconds to send for (default 5 without --count).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Frames per second, 0 = as fast as the kernel can.
    #[arg(long, value_name = "PPS", default_value_t = 0)]
    rate: u64,
    /// Destination MAC (default: the next hop's towards --vip, from the neighbour table).
    #[arg(long, value_name = "MAC")]
    dst_mac: Option<String>,
    /// Count what arrives on this interface ([NETNS:]IFACE, NETNS from `ip netns list`);
    /// repeat for each receiving interface. Sinks drop what they count.
    #[arg(long, value_name = "[NETNS:]IF")]
    sink: Vec<SinkSpec>,
    /// With --sink: also count each flow from this source prefix (at least /16) separately.
    #[arg(long, value_name = "CIDR", requires = "sink")]
    watch: Option<Sources>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CostArgs {
    /// Forwarding modes to measure (default: all).
    #[arg(long, value_parser = ["nat", "dsr", "tunnel"], value_delimiter = ',')]
    mode: Vec<String>,
    /// Interleaved runs; figures are medians over them.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1000))]
    runs: u64,
    /// Frames timed per path and run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    iterations: u64,
    /// Flow-table size (default: sluice run's), and the number of live flows of the "full
    /// table" measurements.
    #[arg(long, default_value_t = lb_common::flow::DEFAULT_FLOWS, value_parser = clap::value_parser!(u32).range(2..=16_777_216))]
    flows: u32,
    /// Live-flow levels at which established flows are measured over that many distinct
    /// flows (capped at --flows).
    #[arg(long, value_delimiter = ',', default_values_t = cost::LIVE_LEVELS)]
    live: Vec<u32>,
    /// Only these paths (default: all), e.g. to profile one with `perf record`.
    #[arg(long, value_parser = ["non-vip", "established", "syn-known", "new-flow"], value_delimiter = ',')]
    path: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct MaglevArgs {
    /// Target counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    targets: Vec<usize>,
    /// Table size (a prime).
    #[arg(long, default_value_t = 65537)]
    table_size: u32,
    /// Builds timed per target count (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RandomReadArgs {
    /// The region's size in bytes (default: about what the default flow table's entries and
    /// buckets take, 128 bytes an entry).
    #[arg(long, default_value_t = u64::from(lb_common::flow::DEFAULT_FLOWS) * 128, value_parser = clap::value_parser!(u64).range(128..=(16 << 30)))]
    bytes: u64,
    /// Reads timed per run.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    reads: u64,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct FloorArgs {
    /// Interface the frames arrive on.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// Where to send them: OUT_IF=DST_MAC (the source MAC becomes OUT_IF's); repeat to
    /// rotate over several, frame by frame.
    #[arg(long, value_name = "IF=MAC", required = true)]
    to: Vec<String>,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Cost(args)) => cost(args),
        Some(BenchCommand::Maglev(args)) => maglev(args),
        Some(BenchCommand::RandomRead(args)) => random_read(args),
        Some(BenchCommand::Floor(args)) => floor(args),
        None => traffic(args.traffic),
    }
}

fn traffic(args: TrafficArgs) -> anyhow::Result<()> {
    let (Some(iface), Some(vip)) = (args.iface, args.vip) else {
        bail!("sluice bench needs --iface and --vip");
    };
    let limit = match (args.count, args.duration) {
        (Some(0), _) => bail!("--count must be at least 1"),
        (Some(n), _) => Limit::Count(n),
        (None, Some(secs)) if !(secs > 0.0 && secs <= 86_400.0) => {
            bail!("--duration must be between 0 and 86400 seconds, not {secs}")
        }
        (None, Some(secs)) => Limit::Duration(Duration::from_secs_f64(secs)),
        (None, None) => Limit::Duration(Duration::from_secs(5)),
    };
    let ifindex = interface::index(&iface)?;
    // Frames and flows first (MACs are in no checksum), so bad sizes and counts are refused
    // before anything is looked up.
    let mut template = Template::new(&FrameSpec {
        src_mac: [0; 6],
        dst_mac: [0; 6],
        dst: vip,
        dst_port: args.port,
        protocol: args.protocol,
        tcp: args.tcp,
        size: args.size,
    })?;
    let patches = frame::patches(&template, args.sources, args.flows)?;
    let dst_mac = match &args.dst_mac {
        Some(text) => parse_mac(text)
            .with_context(|| format!("--dst-mac '{text}' is not a MAC like 02:00:00:00:00:01"))?,
        None => next_hop_mac(vip)?,
    };
    template.set_macs(link_mac(&iface)?, dst_mac);
    let mut generator = Generator::new(ifindex, &template, &patches)?;
    let watch = args.watch.map(|w| (w.net, w.prefix));
    let sinks = args
        .sink
        .iter()
        .map(|spec| {
            Sink::attach(spec.clone(), watch).with_context(|| format!("attaching a sink to {spec}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let schedule = Schedule {
        limit,
        rate: args.rate,
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut last_send_end = start;
    let mut generator_cpu = Duration::ZERO;
    loop {
        match schedule.next(sent, start.elapsed()) {
            Step::Send(n) => {
                let n = n.min(u64::from(u32::MAX)) as u32;
                generator_cpu += generator.send(n)?;
                sent += u64::from(n);
                last_send_end = Instant::now();
            }
            Step::Wait(d) => thread::sleep(d),
            Step::Done => break,
        }
    }
    let elapsed = last_send_end - start;
    programs::settle(&sinks, Duration::from_secs(1))?;
    let sinks = sinks
        .iter()
        .map(|sink| {
            let count = sink.count()?;
            let watched = sink
                .watched()?
                .into_iter()
                .map(|((addr, port), packets)| (addr.to_string(), port, packets))
                .collect();
            Ok(SinkReport {
                name: sink.spec.to_string(),
                packets: count.packets,
                bytes: count.bytes,
                watched,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = Report {
        sent,
        elapsed,
        generator_cpu,
        sinks,
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

fn cost(args: CostArgs) -> anyhow::Result<()> {
    let modes = if args.mode.is_empty() {
        vec![
            ForwardingMode::Nat,
            ForwardingMode::Dsr,
            ForwardingMode::Tunnel,
        ]
    } else {
        args.mode
            .iter()
            .map(|m| match m.as_str() {
                "nat" => ForwardingMode::Nat,
                "dsr" => ForwardingMode::Dsr,
                _ => ForwardingMode::Tunnel,
            })
            .collect()
    };
    let options = CostOptions {
        modes,
        runs: args.runs as usize,
        iterations: args.iterations as usize,
        table_size: args.flows,
        live_levels: args.live,
        paths: args
            .path
            .iter()
            .map(|p| match p.as_str() {
                "non-vip" => cost::Path::NonVip,
                "established" => cost::Path::Established,
                "syn-known" => cost::Path::SynKnown,
                _ => cost::Path::NewFlow,
            })
            .collect(),
    };
    let quiet = args.json;
    if !quiet {
        let figures = cost::program_figures()?;
        println!(
            "program: {} instructions, {} bytes JITed, verifier processed {}",
            figures.instructions,
            figures.jited_bytes,
            figures
                .verifier_processed
                .map_or("(not reported)".to_string(), |n| n.to_string())
        );
    }
    let costs = cost::measure(&options, &|what: &str| {
        if !quiet {
            eprintln!("measuring: {what}");
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&costs)?);
        return Ok(());
    }
    println!(
        "per-packet cost, ns net of the empty program ({} ns), medians of {} runs of {} frames",
        costs.first().map(|c| c.empty_ns.round()).unwrap_or(0.0),
        options.runs,
        options.iterations
    );
    println!(
        "{:<7} {:<12} {:>10} {:>9} {:>8} {:>14}",
        "mode", "path", "live flows", "distinct", "net ns", "min-max ns"
    );
    for c in &costs {
        println!(
            "{:<7} {:<12} {:>10} {:>9} {:>8.0} {:>14}{}",
            c.mode,
            serde_json::to_value(c.path)?.as_str().unwrap_or(""),
            c.live_flows,
            c.distinct_flows,
            c.net_ns,
            format!("{:.0}-{:.0}", c.min_net_ns, c.max_net_ns),
            if c.unexpected > 0 {
                format!("  ({} frames took another path)", c.unexpected)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn maglev(args: MaglevArgs) -> anyhow::Result<()> {
    let size = maglev::TableSize::new(args.table_size)?;
    let mut rows = Vec::new();
    for &n in &args.targets {
        if n < 2 || n * 10 > size.get() as usize {
            bail!(
                "--targets {n}: Maglev figures need 2 to {} targets for a table of {} slots",
                size.get() / 10,
                size.get()
            );
        }
        rows.push(maglev_figures::measure(n, size, args.runs)?);
    }
    if args.json {
        println!("{}", serde_json::to_value(&rows)?);
        return Ok(());
    }
    for f in &rows {
        println!(
            "{} targets, {} slots: build {:.2} ms; one removed: {} slots moved (ideal {}); one added: {} moved (ideal {}); max/mean slots {:.3}",
            f.targets,
            f.table_size,
            f.build_ms,
            f.moved_on_removal,
            f.ideal_on_removal,
            f.moved_on_addition,
            f.ideal_on_addition,
            f.max_over_mean
        );
    }
    Ok(())
}

fn random_read(args: RandomReadArgs) -> anyhow::Result<()> {
    let figure = random_read::measure(args.bytes as usize, args.reads as usize, args.runs as usize);
    if args.json {
        println!("{}", serde_json::to_string(&figure)?);
    } else {
        println!(
            "a random read in {:.1} MiB (4 KiB pages): {:.1} ns (median of {} runs of {} reads)",
            figure.region_bytes as f64 / (1 << 20) as f64,
            figure.ns_per_read,
            args.runs,
            figure.reads
        );
    }
    Ok(())
}

fn floor(args: FloorArgs) -> anyhow::Result<()> {
    let hops = args
        .to
        .iter()
        .map(|to| {
            let (out, mac) = to
                .split_once('=')
                .with_context(|| format!("--to '{to}' is not OUT_IF=DST_MAC"))?;
            let dst_mac = parse_mac(mac)
                .with_context(|| format!("--to '{to}': '{mac}' is not a MAC address"))?;
            Ok(FloorHop {
                ifindex: interface::index(out)?,
                src_mac: link_mac(out)?,
                dst_mac,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if hops.len() > lb_common::bench::BENCH_MAX_FLOOR_HOPS as usize {
        bail!(
            "at most {} --to hops",
            lb_common::bench::BENCH_MAX_FLOOR_HOPS
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut signals = {
        let _runtime = runtime.enter();
        Signals::install()?
    };
    let floor = Floor::attach(&args.iface, &hops)?;
    log::info!(
        "floor forwarder attached to {} ({} next hops); SIGINT or SIGTERM detaches it",
        args.iface,
        hops.len()
    );
    runtime.block_on(async { while !signals.next().await.stops() {} });
    drop(floor);
    log::info!("floor forwarder detached from {}", args.iface);
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `ip -j ARGS` in this network namespace, parsed.
fn ip_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run `ip`")?;
    if !out.status.success() {
        bail!(
            "`ip -j {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
}

fn link_mac(iface: &str) -> anyhow::Result<[u8; 6]> {
    let link = ip_json(&["link", "show", "dev", iface])?;
    link[0]["address"]
        .as_str()
        .and_then(parse_mac)
        .with_context(|| format!("interface {iface} has no Ethernet address"))
}

/// The MAC of the next hop towards `vip`, from the route and the neighbour table.
fn next_hop_mac(vip: Ipv4Addr) -> anyhow::Result<[u8; 6]> {
    let route = ip_json(&["route", "get", &vip.to_string()])
        .with_context(|| format!("no route to {vip} in this network namespace: pass --dst-mac"))?;
    let dev = route[0]["dev"]
        .as_str()
        .with_context(|| format!("no route to {vip}: pass --dst-mac"))?
        .to_string();
    let hop = route[0]["gateway"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| vip.to_string());
    let neigh = ip_json(&["neigh", "show", &hop, "dev", &dev])?;
    neigh[0]["lladdr"].as_str().and_then(parse_mac).with_context(|| {
        format!("no MAC known for the next hop {hop} on {dev}: pass --dst-mac, or let the kernel resolve it first (any packet to {hop})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:5c:00:0a:ff:01"),
            Some([2, 0x5c, 0, 0x0a, 0xff, 1])
        );
        for bad in [
            "",
            "02:5c:00:0a:ff",
            "02:5c:00:0a:ff:01:02",
            "02:5c:00:0a:ff:zz",
            "002:5c:00:0a:ff:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
