//! Per-packet cost of sluice's XDP program (`sluice bench cost`), measured the way the issue's
//! Katran anchors were: `BPF_PROG_TEST_RUN` with repeat=1 in a loop (a program that rewrites
//! a frame would see its own output with repeat > 1), minus an empty program's cost measured
//! the same way, interleaved, medians over runs.
//!
//! The program runs with its maps programmed (one listener, eight targets, a full-size Maglev
//! table) inside a private network namespace of the measuring thread, whose routes and
//! neighbours are fixed so that every forwarded frame finds its next hop:
//!
//! ```text
//!  lb0 (10.200.0.1/24) ── veth ── peer0        targets 10.200.0.10-41 (permanent neighbours)
//!  clients 10.201.0.0/16 via 10.200.0.254      listener 10.210.0.1:80/tcp
//! ```
//! The namespace disappears with the thread; nothing is visible from the host's network.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    thread,
};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{
    addr::{ip_to_bytes, FAMILY_V4},
    config::Config,
    flow::FlowKey,
    listener::{ForwardingMode, HashKey, Listener, ListenerKey},
    target::{Target, TARGET_ACTIVE},
};
use serde::Serialize;

use crate::{
    dataplane::{
        load::{self, MapSizes, PROGRAM_NAME},
        maps::Maps,
    },
    maglev::{self, MaglevTarget, TableSize},
};

use super::{
    frame::{FrameSpec, Protocol, Sources, TcpKind, Template},
    programs::{self, BenchError, PASS_PROGRAM},
    report::median,
};

const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const LB_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0x01];
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);
const GATEWAY_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0xfe];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(10, 220, 0, 1);
const PORT: u16 = 80;
/// Enough targets that a full table of `nat` flows finds free ports: each target has its
/// own range of 64,512 source ports, so 1,048,576 flows over 32 targets fill half of each.
const TARGETS: u8 = 32;
const CLIENTS: Sources = Sources {
    net: Ipv4Addr::new(10, 201, 0, 0),
    prefix: 16,
};
/// New flows use flow indexes from here on, far from the known and the filler flows.
const NEW_FLOWS_FROM: u32 = 1 << 24;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The paths through the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// A packet to no listener: passed to the kernel.
    NonVip,
    /// A packet of a flow in the flow table: with `distinct_flows` 1 always the same (hot)
    /// flow, otherwise each frame belongs to another of that many live flows, in an order that
    /// spreads them over the table as real traffic does.
    Established,
    /// A SYN whose 5-tuple is in the flow table (a client reconnecting, a retransmitted SYN).
    SynKnown,
    /// A SYN of a flow not in the table: Maglev, then a flow-table insert.
    NewFlow,
}

/// One measured path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathCost {
    pub mode: String,
    pub path: Path,
    /// Flows in the flow table while measuring; for `new_flow`, 1 means an (almost) empty
    /// table and the table's size a full one (nothing is evicted: `nat` refuses the new flow,
    /// `dsr` and `tunnel` forward it without an entry).
    pub live_flows: u32,
    /// How many different flows the timed frames belong to (1: one hot flow).
    pub distinct_flows: u32,
    /// Median over runs of (path - empty program), nanoseconds.
    pub net_ns: f64,
    /// Median over runs of the path's own time and of the empty program's.
    pub gross_ns: f64,
    pub empty_ns: f64,
    /// Smallest and largest per-run net figure: the spread.
    pub min_net_ns: f64,
    pub max_net_ns: f64,
    /// Frames whose action was not the expected one (a nat port not found, ...): their time
    /// is in the figures, and a non-zero count means the path was not always the one named.
    pub unexpected: u64,
}

#[derive(Clone, Debug)]
pub struct CostOptions {
    pub modes: Vec<ForwardingMode>,
    /// Interleaved runs; the figures are medians over them.
    pub runs: usize,
    /// Frames timed per path and run (repeat=1 each).
    pub iterations: usize,
    /// The flow table's size and the "full table" level.
    pub table_size: u32,
    /// Live-flow levels at which established flows are measured over that many distinct
    /// flows (each at most `table_size`), in increasing order.
    pub live_levels: Vec<u32>,
    /// Only these paths (all when empty): to profile one path alone (`perf record` beside
    /// `sluice bench cost --path established`).
    pub paths: Vec<Path>,
}

impl CostOptions {
    /// `paths` without those the options leave out.
    fn chosen(&self, paths: &[Path]) -> Vec<Path> {
        paths
            .iter()
            .copied()
            .filter(|p| self.paths.is_empty() || self.paths.contains(p))
            .collect()
    }
}

/// The default levels of distinct live flows for the established path.
pub const LIVE_LEVELS: [u32; 3] = [1_000, 100_000, 1_000_000];

pub fn mode_name(mode: ForwardingMode) -> &'static str {
    match mode {
        ForwardingMode::Nat => "nat",
        ForwardingMode::Dsr => "dsr",
        ForwardingMode::Tunnel => "tunnel",
    }
}

/// Measures every path for every mode; `progress` is told each (mode, phase) as it starts.
pub fn measure(
    options: &CostOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<PathCost>, BenchError> {
    in_private_netns(|| {
        let ifindex = setup_namespace()?;
        let mut pass = programs::load_pass()?;
        let mut out = Vec::new();
        for &mode in &options.modes {
            let mut bench = Bench::new(mode, options, ifindex)?;
            progress(&format!("{} mode, 1 live flow", mode_name(mode)));
            let first = options.chosen(&[
                Path::NonVip,
                Path::Established,
                Path::SynKnown,
                Path::NewFlow,
            ]);
            if !first.is_empty() {
                out.extend(bench.phase(&mut pass, options, 1, 1, &first)?);
            }
            let mut levels: Vec<u32> = options
                .live_levels
                .iter()
                .map(|&l| l.min(options.table_size))
                .collect();
            levels.push(options.table_size);
            levels.dedup();
            for &live in &levels {
                let paths = options.chosen(if live == options.table_size {
                    &[Path::Established, Path::SynKnown, Path::NewFlow]
                } else {
                    &[Path::Established]
                });
                if paths.is_empty() {
                    continue;
                }
                progress(&format!(
                    "{} mode, filling the flow table to {live} live flows",
                    mode_name(mode)
                ));
                bench.fill(live)?;
                progress(&format!("{} mode, {live} live flows", mode_name(mode)));
                out.extend(bench.phase(&mut pass, options, live, live, &paths)?);
                // The full table again, with the frames over as few flows as the smallest
                // level: what a full table costs by itself, apart from how many flows the
                // traffic touches (which decides how much of the table is out of the caches).
                let working_set = levels[0];
                if live == options.table_size
                    && working_set < live
                    && paths.contains(&Path::Established)
                {
                    progress(&format!(
                        "{} mode, {live} live flows, frames over {working_set} of them",
                        mode_name(mode)
                    ));
                    // Its flows were filled long ago: traffic that keeps touching them keeps
                    // them in the caches, so they are touched before timing.
                    for _ in 0..2 * working_set {
                        let frame = bench.distinct_established_frame(working_set);
                        bench.run(&frame)?;
                    }
                    out.extend(bench.phase(
                        &mut pass,
                        options,
                        live,
                        working_set,
                        &[Path::Established],
                    )?);
                }
            }
        }
        Ok(out)
    })
}

/// The size of sluice's XDP program as loaded and what verifying it cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramFigures {
    /// BPF instructions after the verifier's rewrites (`bytes_xlated` / 8).
    pub instructions: u32,
    pub jited_bytes: u32,
    /// Instructions the verifier processed walking every path.
    pub verifier_processed: Option<u32>,
}

/// Loads sluice's program (default map sizes) and reads its size and verification cost.
/// Logging at info, as `sluice run` loads it by default: the log calls live at that level are
/// paths the verifier walks, and they can multiply its count (one variant of the `nat`
/// checksum code: 292,000 with logging off, over a million at info; docs/performance/l4.md,
/// step 7).
pub fn program_figures() -> Result<ProgramFigures, BenchError> {
    let mut ebpf = load::load_program_sized(
        log::LevelFilter::Info,
        MapSizes::default(),
        &[],
        PROGRAM_NAME,
    )?;
    let info = load::program_mut_named(&mut ebpf, PROGRAM_NAME)
        .info()
        .map_err(|e| BenchError::Netns {
            name: "(none)".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(ProgramFigures {
        instructions: info.size_translated().unwrap_or(0) / 8,
        jited_bytes: info.size_jitted(),
        verifier_processed: info.verified_instruction_count(),
    })
}

/// Runs `f` on a thread in a fresh network namespace of its own, gone when the thread ends.
fn in_private_netns<T: Send>(
    f: impl FnOnce() -> Result<T, BenchError> + Send,
) -> Result<T, BenchError> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare affects this thread alone (CLONE_NEWNET needs no
                // single-threaded process), and the thread ends with the scope.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(BenchError::Netns {
                        name: "(private)".into(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) -> Result<(), BenchError> {
    // `ip` inherits the calling thread's network namespace.
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| BenchError::Netns {
            name: "(private)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Netns {
            name: "(private)".into(),
            source: std::io::Error::other(format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(())
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn target_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + i)
}

/// Builds the namespace's interfaces, routes and neighbours; returns lb0's index.
fn setup_namespace() -> Result<u32, BenchError> {
    ip(&[
        "link", "add", "name", "lb0", "type", "veth", "peer", "name", "peer0",
    ])?;
    ip(&["link", "set", "lb0", "address", &mac(LB_MAC)])?;
    ip(&["link", "set", "lb0", "up"])?;
    ip(&["link", "set", "peer0", "up"])?;
    ip(&["addr", "add", &format!("{LB_V4}/24"), "dev", "lb0"])?;
    // /proc/sys/net belongs to the network namespace of the thread that opens it.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| BenchError::Netns {
        name: "(private)".into(),
        source,
    })?;
    let mut neighbours = vec![(GATEWAY_V4, GATEWAY_MAC)];
    neighbours.extend((0..TARGETS).map(|i| (target_v4(i), [0x02, 0x5c, 0, 0, 0x10, i])));
    for (addr, lladdr) in neighbours {
        ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac(lladdr),
            "nud",
            "permanent",
            "dev",
            "lb0",
        ])?;
    }
    ip(&[
        "route",
        "add",
        &CLIENTS.to_string(),
        "via",
        &GATEWAY_V4.to_string(),
    ])?;
    Ok(crate::dataplane::interface::index("lb0")?)
}

/// sluice's program with its maps programmed for one mode.
struct Bench {
    mode: ForwardingMode,
    ebpf: Ebpf,
    maps: Maps,
    /// `xdp_md` with lb0 as the ingress interface.
    ctx: Vec<u8>,
    syn: Template,
    established: Template,
    non_vip: Vec<u8>,
    next_new_flow: u32,
    /// Flow indexes whose SYN was forwarded with an entry (index 0, the known flow, first).
    live: Vec<u32>,
    /// The next flow index `fill` tries.
    next_fill: u32,
    /// Which live flow the next distinct-flow frame belongs to (see `Path::Established`).
    cursor: u64,
}

impl Bench {
    fn new(mode: ForwardingMode, options: &CostOptions, ifindex: u32) -> Result<Bench, BenchError> {
        let sizes = MapSizes {
            flows: options.table_size,
            listeners: 4,
            targets: u32::from(TARGETS),
        };
        let mut ebpf = load::load_program_sized(log::LevelFilter::Off, sizes, &[], PROGRAM_NAME)?;
        let mut maps = Maps::take(&mut ebpf).map_err(maps_error)?;
        // No flood gate: new flows must be inserted however fast they come. The whole port
        // range, so that a full table of `nat` flows finds ports (see `TARGETS`).
        maps.set_config(&Config {
            max_new_flows_per_cpu: 0,
            nat_port_max: u16::MAX,
            ..Config::default()
        })
        .map_err(maps_error)?;
        let (addr, family) = ip_to_bytes(VIP.into());
        maps.set_listener(
            &ListenerKey {
                addr,
                port_be: PORT.to_be(),
                protocol: lb_common::proto::IPPROTO_TCP,
                family,
            },
            &Listener {
                id: 0,
                mode: mode as u8,
                hash_key: HashKey::FiveTuple as u8,
                idle_timeout_s: 0,
            },
        )
        .map_err(maps_error)?;
        let mut table_targets = Vec::new();
        for i in 0..TARGETS {
            let addr = target_v4(i);
            maps.set_target(
                u32::from(i),
                &Target {
                    addr: ip_to_bytes(addr.into()).0,
                    snat_addr: ip_to_bytes(LB_V4.into()).0,
                    port_be: PORT.to_be(),
                    family: FAMILY_V4,
                    state: TARGET_ACTIVE,
                    _pad: [0; 4],
                },
            )
            .map_err(maps_error)?;
            table_targets.push(MaglevTarget {
                key: maglev::target_key((IpAddr::from(addr), PORT).into()),
                id: u32::from(i),
                weight: 1,
            });
        }
        let table = maglev::build(&table_targets, TableSize::DEFAULT)
            .expect("32 equal targets fit the default table");
        maps.set_maglev_table(0, &table).map_err(maps_error)?;

        let spec = |tcp, dst, protocol| FrameSpec {
            src_mac: GATEWAY_MAC,
            dst_mac: LB_MAC,
            dst,
            dst_port: PORT,
            protocol,
            tcp,
            size: 64,
        };
        let template = |s| Template::new(&s).expect("64-byte frames are valid");
        let syn = template(spec(TcpKind::Syn, VIP, Protocol::Tcp));
        let established = template(spec(TcpKind::Established, VIP, Protocol::Tcp));
        let (src, port) = CLIENTS.flow(0);
        let non_vip = template(spec(TcpKind::Syn, NOT_A_VIP, Protocol::Udp)).frame(src, port);
        let ctx = [0, 60, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let mut bench = Bench {
            mode,
            ebpf,
            maps,
            ctx,
            syn,
            established,
            non_vip,
            next_new_flow: NEW_FLOWS_FROM,
            live: Vec::new(),
            next_fill: 0,
            cursor: 0,
        };
        // The known flow, index 0.
        bench.fill(1)?;
        Ok(bench)
    }

    fn syn_frame(&self, flow: u32) -> Vec<u8> {
        let (src, port) = CLIENTS.flow(flow);
        self.syn.frame(src, port)
    }

    fn program(&mut self) -> &mut Xdp {
        load::program_mut_named(&mut self.ebpf, PROGRAM_NAME)
    }

    /// One run of sluice's program on `frame`: (action, nanoseconds).
    fn run(&mut self, frame: &[u8]) -> Result<(u32, u64), BenchError> {
        let ctx = self.ctx.clone();
        time(self.program(), frame, &ctx)
    }

    /// Sends SYNs of new flows (in `nat` mode followed by the client's ACK) through the
    /// program until `n` flows are live. A `nat` SYN whose port probes all meet taken ports is
    /// refused; its flow is skipped, at most `n` times in all.
    fn fill(&mut self, n: u32) -> Result<(), BenchError> {
        let mut refused = 0;
        while (self.live.len() as u32) < n {
            let flow = self.next_fill;
            self.next_fill += 1;
            let frame = self.syn_frame(flow);
            if self.run(&frame)?.0 == XDP_TX {
                if self.mode == ForwardingMode::Nat {
                    // The handshake's ACK: an unanswered translation is reclaimable after
                    // 10 s (`HALF_OPEN_TIMEOUT_NS`), and filling a large table takes longer,
                    // so later SYNs would take earlier flows' ports.
                    let (src, port) = CLIENTS.flow(flow);
                    let ack = self.established.frame(src, port);
                    self.run(&ack)?;
                }
                self.live.push(flow);
            } else {
                refused += 1;
                if refused > n {
                    return Err(BenchError::Netns {
                        name: "(private)".into(),
                        source: std::io::Error::other(format!(
                            "the flow table took only {} of {n} flows",
                            self.live.len()
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    /// The next frame of the distinct-flow established path: `distinct` live flows, spread
    /// evenly over the order they were made in (old and new flows alike: in a full table
    /// newer entries stand before older ones in a bucket's chain), visited in a
    /// multiplicative-hash order, so consecutive frames hit unrelated parts of the table.
    fn distinct_established_frame(&mut self, distinct: u32) -> Vec<u8> {
        let i = self.cursor.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        self.cursor += 1;
        let n = (distinct as usize).clamp(1, self.live.len());
        let stride = self.live.len() / n;
        let flow = self.live[(i % n as u64) as usize * stride];
        let (src, port) = CLIENTS.flow(flow);
        self.established.frame(src, port)
    }

    /// Interleaved runs over the empty program and `paths`, with `live` flows in the table and
    /// established frames over `distinct` of them.
    fn phase(
        &mut self,
        pass: &mut Ebpf,
        options: &CostOptions,
        live: u32,
        distinct: u32,
        paths: &[Path],
    ) -> Result<Vec<PathCost>, BenchError> {
        let mut empty = Vec::new();
        let mut gross: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut unexpected = vec![0u64; paths.len()];
        let (src, port) = CLIENTS.flow(0);
        let known_ack = self.established.frame(src, port);
        let known_syn = self.syn.frame(src, port);
        for _ in 0..options.runs {
            let pass_prog = load::program_mut_named(pass, PASS_PROGRAM);
            empty.push(mean_ns(options.iterations, |_| {
                time(pass_prog, &known_ack, &self.ctx).map(|(_, ns)| ns)
            })?);
            for (i, &path) in paths.iter().enumerate() {
                let mut odd = 0;
                let mut new_keys = Vec::new();
                let ns = mean_ns(options.iterations, |_| {
                    let frame = match path {
                        Path::NonVip => self.non_vip.clone(),
                        Path::Established if distinct > 1 => {
                            self.distinct_established_frame(distinct)
                        }
                        Path::Established => known_ack.clone(),
                        Path::SynKnown => known_syn.clone(),
                        Path::NewFlow => {
                            let flow = self.next_new_flow;
                            self.next_new_flow += 1;
                            let (src, port) = CLIENTS.flow(flow);
                            new_keys.push(flow_key(src, port));
                            self.syn.frame(src, port)
                        }
                    };
                    let (action, ns) = self.run(&frame)?;
                    let expected = match path {
                        Path::NonVip => XDP_PASS,
                        // A full table evicts nothing: `nat` refuses the new connection.
                        Path::NewFlow if live > 1 && self.mode == ForwardingMode::Nat => XDP_DROP,
                        _ => XDP_TX,
                    };
                    odd += u64::from(action != expected);
                    Ok(ns)
                })?;
                gross[i].push(ns);
                unexpected[i] += odd;
                // "Empty table": take the new flows out again so the table stays as it was.
                if live == 1 {
                    self.forget(&new_keys);
                }
            }
        }
        let empty_median = median(&empty).unwrap_or(0.0);
        Ok(paths
            .iter()
            .enumerate()
            .map(|(i, &path)| {
                let net: Vec<f64> = gross[i].iter().zip(&empty).map(|(g, e)| g - e).collect();
                PathCost {
                    mode: mode_name(self.mode).to_string(),
                    path,
                    live_flows: live,
                    distinct_flows: if path == Path::Established {
                        distinct
                    } else {
                        1
                    },
                    net_ns: median(&net).unwrap_or(0.0),
                    gross_ns: median(&gross[i]).unwrap_or(0.0),
                    empty_ns: empty_median,
                    min_net_ns: net.iter().copied().fold(f64::INFINITY, f64::min),
                    max_net_ns: net.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    unexpected: unexpected[i],
                }
            })
            .collect())
    }

    /// Removes flows (and in `nat` mode every translation but the known flow's).
    fn forget(&mut self, keys: &[FlowKey]) {
        for key in keys {
            let _ = self.maps.flows.remove(key);
        }
        if self.mode == ForwardingMode::Nat {
            // By address and port: new flows from NEW_FLOWS_FROM on reuse the known
            // flow's source address every 65,536 flows.
            let (known, known_port) = CLIENTS.flow(0);
            let known = ip_to_bytes(known.into()).0;
            let stale: Vec<FlowKey> = self
                .maps
                .nat_replies
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, origin)| {
                    (origin.client, origin.client_port_be) != (known, known_port.to_be())
                })
                .map(|(k, _)| k)
                .collect();
            for key in stale {
                let _ = self.maps.nat_replies.remove(&key);
            }
        }
    }
}

fn flow_key(src: Ipv4Addr, port: u16) -> FlowKey {
    FlowKey {
        src: ip_to_bytes(src.into()).0,
        dst: ip_to_bytes(VIP.into()).0,
        src_port_be: port.to_be(),
        dst_port_be: PORT.to_be(),
        protocol: lb_common::proto::IPPROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

fn maps_error(e: crate::dataplane::maps::MapsError) -> BenchError {
    BenchError::Netns {
        name: "(private)".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// One repeat=1 run: (action, nanoseconds the kernel measured).
fn time(program: &mut Xdp, frame: &[u8], ctx: &[u8]) -> Result<(u32, u64), BenchError> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .map_err(BenchError::TestRun)?;
    Ok((result.return_value, result.duration.as_nanos() as u64))
}

/// The mean of `n` timings.
fn mean_ns(
    n: usize,
    mut f: impl FnMut(usize) -> Result<u64, BenchError>,
) -> Result<f64, BenchError> {
    let mut total = 0u64;
    for i in 0..n.max(1) {
        total += f(i)?;
    }
    Ok(total as f64 / n.max(1) as f64)
}
