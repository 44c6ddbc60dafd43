//! Loading and running the benchmark programs of `lb-ebpf/src/bench.rs`: the generator (a
//! live-frames `BPF_PROG_TEST_RUN`), counting sinks on receiving interfaces (possibly in other
//! network namespaces), the floor forwarder and the empty program.

use std::{
    collections::BTreeMap, fs::File, io, net::Ipv4Addr, os::fd::AsRawFd, path::Path, thread,
    time::Duration,
};

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions},
    Ebpf,
};
use lb_common::bench::{
    BenchCount, FloorHop, FlowPatch, FrameHeaders, GeneratorConfig, SinkConfig, WatchedSource,
    BENCH_HEADER_BYTES, BENCH_MAX_FLOOR_HOPS, BENCH_MAX_WATCHED_SOURCES,
};

use crate::dataplane::{
    interface::{self, InterfaceError},
    load::{self, AttachMode, DatapathError, MapSizes},
};

use super::frame::{Protocol, Template};

pub const GENERATOR_PROGRAM: &str = "sluice_bench_generate";
pub const SINK_PROGRAM: &str = "sluice_bench_sink";
pub const FLOOR_PROGRAM: &str = "sluice_bench_floor";
pub const PASS_PROGRAM: &str = "sluice_bench_pass";

/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    #[error("the XDP object's map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] aya::programs::ProgramError),
    #[error("network namespace '{name}' ({NETNS_DIR}/{name}): {source}")]
    Netns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("'{0}' is not a sink: give IFACE or NETNS:IFACE (a namespace from `ip netns list`)")]
    SinkSpec(String),
    #[error("--watch needs an IPv4 prefix of at least /16, not /{0} (a sink counts at most {BENCH_MAX_WATCHED_SOURCES} flows one by one)")]
    WatchTooWide(u8),
}

/// The load balancer's maps are created with every load of the object; keep them tiny.
const TINY: MapSizes = MapSizes {
    flows: 1,
    listeners: 1,
    targets: 1,
};

fn load(program: &'static str, extra: &[(&str, u32)]) -> Result<Ebpf, BenchError> {
    Ok(load::load_program_sized(
        log::LevelFilter::Off,
        TINY,
        extra,
        program,
    )?)
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, BenchError> {
    let map = ebpf.take_map(name).ok_or(BenchError::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    T::try_from(map).map_err(|source| BenchError::Map { name, source })
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> BenchError {
    move |source| BenchError::Map { name, source }
}

/// The traffic generator: each [`send`](Generator::send) pushes frames into the interface
/// from inside the kernel, flow after flow.
pub struct Generator {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

impl Generator {
    /// Loads the generator for frames like `template`, varied over `flows`, sent into
    /// `ifindex` (of the calling thread's network namespace when frames are sent).
    pub fn new(
        ifindex: u32,
        template: &Template,
        flows: &[FlowPatch],
    ) -> Result<Generator, BenchError> {
        let n = flows.len() as u32;
        let mut ebpf = load(GENERATOR_PROGRAM, &[("BENCH_FLOWS", n.max(1))])?;
        let mut config: Array<MapData, GeneratorConfig> = take(&mut ebpf, "BENCH_GENERATOR")?;
        config
            .set(
                0,
                GeneratorConfig {
                    ifindex,
                    flows: n,
                    protocol: match template.protocol {
                        Protocol::Tcp => lb_common::proto::IPPROTO_TCP,
                        Protocol::Udp => lb_common::proto::IPPROTO_UDP,
                    },
                    _pad: [0; 7],
                },
                0,
            )
            .map_err(map_err("BENCH_GENERATOR"))?;
        let mut headers = FrameHeaders { bytes: [0; 64] };
        headers.bytes[..BENCH_HEADER_BYTES].copy_from_slice(&template.bytes[..BENCH_HEADER_BYTES]);
        let mut saved: Array<MapData, FrameHeaders> = take(&mut ebpf, "BENCH_TEMPLATE")?;
        saved
            .set(0, headers, 0)
            .map_err(map_err("BENCH_TEMPLATE"))?;
        let mut patches: Array<MapData, FlowPatch> = take(&mut ebpf, "BENCH_FLOWS")?;
        for (i, patch) in flows.iter().enumerate() {
            patches
                .set(i as u32, patch, 0)
                .map_err(map_err("BENCH_FLOWS"))?;
        }
        Ok(Generator {
            ebpf,
            frame: template.bytes.clone(),
        })
    }

    /// Sends `count` frames (at most `u32::MAX`) and returns when the kernel has sent them,
    /// with the CPU time the calling thread spent on it (the rest of the call's wall time the
    /// generator was idle inside the kernel: dead time that is not the balancer's).
    pub fn send(&mut self, count: u32) -> Result<Duration, BenchError> {
        let program = load::program_mut_named(&mut self.ebpf, GENERATOR_PROGRAM);
        let cpu_before = thread_cpu_time();
        program
            .test_run(TestRunOptions {
                data_in: Some(&self.frame),
                repeat: count,
                // Batch size 0: the kernel's default (64 frames per batch).
                attrs: TestRunAttrs::new().xdp_live_frames(0),
                ..TestRunOptions::default()
            })
            .map_err(BenchError::TestRun)?;
        Ok(thread_cpu_time().saturating_sub(cpu_before))
    }
}

/// The calling thread's CPU time (user and system).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `[NETNS:]IFACE` as given to `--sink`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    pub netns: Option<String>,
    pub iface: String,
}

impl std::str::FromStr for SinkSpec {
    type Err = BenchError;

    fn from_str(text: &str) -> Result<SinkSpec, BenchError> {
        let bad = || BenchError::SinkSpec(text.to_string());
        let (netns, iface) = match text.split_once(':') {
            Some((ns, iface)) => (Some(ns), iface),
            None => (None, text),
        };
        if iface.is_empty() || iface.contains(':') {
            return Err(bad());
        }
        if let Some(ns) = netns {
            if ns.is_empty() || ns.contains(['/', '\0']) || ns == "." || ns == ".." {
                return Err(bad());
            }
        }
        Ok(SinkSpec {
            netns: netns.map(str::to_string),
            iface: iface.to_string(),
        })
    }
}

impl std::fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{ns}:{}", self.iface),
            None => f.write_str(&self.iface),
        }
    }
}

/// Runs `f` on a thread inside the named network namespace (or this one for `None`).
pub fn in_netns<T: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> Result<T, BenchError> + Send,
) -> Result<T, BenchError> {
    let Some(name) = netns else {
        return f();
    };
    let ns_err = |source| BenchError::Netns {
        name: name.to_string(),
        source,
    };
    let file = File::open(Path::new(NETNS_DIR).join(name)).map_err(ns_err)?;
    thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns only reads the fd; CLONE_NEWNET moves this thread's network
                // namespace alone, and the thread ends with the scope.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(ns_err(io::Error::last_os_error()));
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A counting sink attached to one interface; detached on drop (the attachment is a BPF link,
/// so dropping it works from any namespace).
pub struct Sink {
    pub spec: SinkSpec,
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, BenchCount>,
    sources: Option<PerCpuHashMap<MapData, WatchedSource, u64>>,
    link: Option<XdpLinkId>,
}

impl Sink {
    /// Loads a sink and attaches it (native mode, or generic if the driver has none) to the
    /// interface; with `watch`, it also counts every source in that prefix one by one.
    pub fn attach(spec: SinkSpec, watch: Option<(Ipv4Addr, u8)>) -> Result<Sink, BenchError> {
        if let Some((_, prefix)) = watch {
            if prefix < 16 {
                return Err(BenchError::WatchTooWide(prefix));
            }
        }
        let entries = if watch.is_some() {
            BENCH_MAX_WATCHED_SOURCES
        } else {
            1
        };
        let mut ebpf = load(SINK_PROGRAM, &[("BENCH_SINK_SOURCES", entries)])?;
        let stats = take(&mut ebpf, "BENCH_SINK_STATS")?;
        let sources = match watch {
            Some((net, prefix)) => {
                let mut config: Array<MapData, SinkConfig> = take(&mut ebpf, "BENCH_SINK_CONFIG")?;
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix))
                };
                config
                    .set(
                        0,
                        SinkConfig {
                            watch_net_be: (u32::from(net) & mask).to_be_bytes(),
                            watch_mask_be: mask.to_be_bytes(),
                        },
                        0,
                    )
                    .map_err(map_err("BENCH_SINK_CONFIG"))?;
                Some(take(&mut ebpf, "BENCH_SINK_SOURCES")?)
            }
            None => None,
        };
        let iface = spec.iface.clone();
        let (ebpf, link) = in_netns(spec.netns.as_deref(), move || {
            let ifindex = interface::index(&iface)?;
            let (link, _) =
                load::attach_named(&mut ebpf, SINK_PROGRAM, &iface, ifindex, AttachMode::Auto)?;
            Ok((ebpf, link))
        })?;
        Ok(Sink {
            spec,
            ebpf,
            stats,
            sources,
            link: Some(link),
        })
    }

    /// Packets and bytes counted so far, over all CPUs.
    pub fn count(&self) -> Result<BenchCount, BenchError> {
        let mut total = BenchCount::default();
        for value in self
            .stats
            .get(&0, 0)
            .map_err(map_err("BENCH_SINK_STATS"))?
            .iter()
        {
            total.add(value);
        }
        Ok(total)
    }

    /// Packets per watched source so far.
    pub fn watched(&self) -> Result<BTreeMap<(Ipv4Addr, u16), u64>, BenchError> {
        let mut out = BTreeMap::new();
        let Some(sources) = &self.sources else {
            return Ok(out);
        };
        for entry in sources.iter() {
            let (key, values) = entry.map_err(map_err("BENCH_SINK_SOURCES"))?;
            let packets: u64 = values.iter().sum();
            out.insert(
                (Ipv4Addr::from(key.saddr_be), u16::from_be(key.sport_be)),
                packets,
            );
        }
        Ok(out)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = load::program_mut_named(&mut self.ebpf, SINK_PROGRAM).detach(link);
        }
    }
}

/// Waits until the sinks' counts stop moving (frames still in flight through queues when
/// the generator returns), for at most `limit`.
pub fn settle(sinks: &[Sink], limit: Duration) -> Result<(), BenchError> {
    let step = Duration::from_millis(10);
    let mut last: Vec<u64> = Vec::new();
    let mut still = 0;
    for _ in 0..(limit.as_millis() / step.as_millis()).max(1) {
        let now = sinks
            .iter()
            .map(|s| s.count().map(|c| c.packets))
            .collect::<Result<Vec<_>, _>>()?;
        if now == last {
            still += 1;
            // Unchanged for 50 ms: nothing is in flight any more.
            if still >= 5 {
                return Ok(());
            }
        } else {
            still = 0;
            last = now;
        }
        thread::sleep(step);
    }
    Ok(())
}

/// The floor forwarder attached to an interface: MAC rewrite, then out (round robin over
/// `hops`). Detached on drop.
pub struct Floor {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
}

impl Floor {
    pub fn attach(iface: &str, hops: &[FloorHop]) -> Result<Floor, BenchError> {
        assert!(!hops.is_empty() && hops.len() <= BENCH_MAX_FLOOR_HOPS as usize);
        let ifindex = interface::index(iface)?;
        let mut ebpf = load(FLOOR_PROGRAM, &[])?;
        let mut config: Array<MapData, u32> = take(&mut ebpf, "BENCH_FLOOR_CONFIG")?;
        config
            .set(0, hops.len() as u32, 0)
            .map_err(map_err("BENCH_FLOOR_CONFIG"))?;
        let mut table: Array<MapData, FloorHop> = take(&mut ebpf, "BENCH_FLOOR_HOPS")?;
        for (i, hop) in hops.iter().enumerate() {
            table
                .set(i as u32, hop, 0)
                .map_err(map_err("BENCH_FLOOR_HOPS"))?;
        }
        let (link, _) =
            load::attach_named(&mut ebpf, FLOOR_PROGRAM, iface, ifindex, AttachMode::Auto)?;
        Ok(Floor {
            ebpf,
            link: Some(link),
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = load::program_mut_named(&mut self.ebpf, FLOOR_PROGRAM).detach(link);
        }
    }
}

/// The empty program (`XDP_PASS`), loaded for timing runs.
pub fn load_pass() -> Result<Ebpf, BenchError> {
    load(PASS_PROGRAM, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_specs_name_an_interface_and_maybe_a_namespace() {
        assert_eq!(
            "eth0".parse::<SinkSpec>().unwrap(),
            SinkSpec {
                netns: None,
                iface: "eth0".into()
            }
        );
        let spec: SinkSpec = "target0:eth1".parse().unwrap();
        assert_eq!(spec.netns.as_deref(), Some("target0"));
        assert_eq!(spec.to_string(), "target0:eth1");
        for bad in ["", ":eth0", "ns:", "a:b:c", "../x:eth0"] {
            assert!(bad.parse::<SinkSpec>().is_err(), "{bad:?}");
        }
    }
}
