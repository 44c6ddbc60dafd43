//! The embedded XDP program: loading it into the kernel and attaching it to an interface.

use std::{io, path::Path};

use aya::{
    maps::MapType,
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};

/// The XDP object built from `lb-ebpf` by `build.rs`. Empty when the eBPF toolchain was
/// missing at build time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-xdp"));

/// The XDP program's function name in `lb-ebpf`.
pub const PROGRAM_NAME: &str = "sluice";

/// The decapsulating XDP program in the same object, for targets of `tunnel` listeners
/// (`sluice decap`).
pub const DECAP_PROGRAM_NAME: &str = "sluice_decap";

/// How to attach: `auto` tries native (driver) mode and falls back to generic mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
    Offload,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("this sluice binary was built without its XDP program (the eBPF toolchain was missing at build time); rebuild it with `cargo xtask build`")]
    NotBuilt,
    #[error("permission denied by the kernel: loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    PermissionDenied,
    #[error("the map {name} pinned in {dir} was made by another sluice release ({found}; this one needs {expected}); run `sluice down --pin-dir {dir}` (this drops established flows) and start again")]
    PinnedMapMismatch {
        name: &'static str,
        dir: String,
        found: String,
        expected: String,
    },
    #[error("the kernel refused sluice's XDP program: {reason}")]
    Rejected {
        reason: String,
        verifier_log: String,
    },
    #[error("the embedded XDP object is unusable: {0}")]
    Object(#[source] Box<EbpfError>),
    #[error("cannot attach XDP to '{iface}' in {mode} mode: {reason}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
    },
}

/// Load-time sizes of the data plane's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries of the flow table (`FLOWS`) and of `nat` translations (`NAT_REPLIES`).
    pub flows: u32,
    /// Listener ids (`MAGLEV`, `LISTENER_STATS`; `LISTENERS` holds twice as many entries,
    /// for each address's ICMP entry).
    pub listeners: u32,
    /// Target ids (`TARGETS`, `TARGET_STATS`).
    pub targets: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            flows: lb_common::flow::DEFAULT_FLOWS,
            listeners: lb_common::listener::MAX_LISTENERS,
            targets: lb_common::target::MAX_TARGETS,
        }
    }
}

/// Loads the object and its XDP program into the kernel (not attached yet).
///
/// `log_level` becomes the program's `AYA_LOG_LEVEL`, so records above it cost one compare.
pub fn load(log_level: log::LevelFilter) -> Result<Ebpf, DatapathError> {
    load_with(log_level, MapSizes::default())
}

/// [`load`] with map sizes other than the compiled-in defaults.
pub fn load_with(log_level: log::LevelFilter, sizes: MapSizes) -> Result<Ebpf, DatapathError> {
    load_program(log_level, sizes, PROGRAM_NAME)
}

/// The maps that hold the data plane's state, pinned in the daemon's pin directory under
/// their own names: a restarted daemon reuses them (hitless restart). The per-CPU scratch
/// maps hold nothing between packets and the log ring is the process's own.
pub const PINNED_MAPS: &[&str] = &[
    "STATS",
    "CONFIG",
    "STATE",
    "LISTENERS",
    "ADDRESSES",
    "MAGLEV",
    "TARGETS",
    "FLOWS",
    "NAT_REPLIES",
    "LISTENER_STATS",
    "TARGET_STATS",
    "FLOOD_GATE",
    "LISTENERS_GENERATION",
];

/// The layout of each pinned map as this build's program expects it: type, key and value
/// sizes. A pinned map of another layout is refused before the program is loaded (the
/// verifier's complaint would not say what to do, and a map type change, LRU to plain hash,
/// would not be noticed at all).
fn pinned_layouts() -> [(&'static str, MapType, usize, usize); 13] {
    use lb_common::{
        config::Config,
        flow::{Flow, FlowKey, NatOrigin},
        listener::{Listener, ListenerKey},
        state::STATE_CHUNK,
        stats::CounterValue,
        target::{Target, Traffic},
    };
    use std::mem::size_of;
    const INDEX: usize = size_of::<u32>();
    [
        (
            "STATS",
            MapType::PerCpuArray,
            INDEX,
            size_of::<CounterValue>(),
        ),
        ("CONFIG", MapType::Array, INDEX, size_of::<Config>()),
        ("STATE", MapType::Array, INDEX, STATE_CHUNK),
        (
            "LISTENERS",
            MapType::Hash,
            size_of::<ListenerKey>(),
            size_of::<Listener>(),
        ),
        // Class bits (u32) by address bucket.
        ("ADDRESSES", MapType::Array, INDEX, INDEX),
        ("MAGLEV", MapType::ArrayOfMaps, INDEX, INDEX),
        ("TARGETS", MapType::Array, INDEX, size_of::<Target>()),
        (
            "FLOWS",
            MapType::Hash,
            size_of::<FlowKey>(),
            size_of::<Flow>(),
        ),
        (
            "NAT_REPLIES",
            MapType::Hash,
            size_of::<FlowKey>(),
            size_of::<NatOrigin>(),
        ),
        (
            "LISTENER_STATS",
            MapType::PerCpuArray,
            INDEX,
            size_of::<Traffic>(),
        ),
        (
            "TARGET_STATS",
            MapType::PerCpuArray,
            INDEX,
            size_of::<Traffic>(),
        ),
        // lb-ebpf's `select::FloodGate`: two u64.
        ("FLOOD_GATE", MapType::PerCpuArray, INDEX, 16),
        // A count of changes to LISTENERS (u64).
        ("LISTENERS_GENERATION", MapType::Array, INDEX, 8),
    ]
}

/// Refuses pinned maps whose layout differs from [`pinned_layouts`].
fn check_pinned(dir: &Path) -> Result<(), DatapathError> {
    for (name, map_type, key, value) in pinned_layouts() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        // A pin that cannot be read is left to the loader, which reports it.
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let found_type = info.map_type().ok();
        let found = (
            found_type,
            info.key_size() as usize,
            info.value_size() as usize,
        );
        if found != (Some(map_type), key, value) {
            return Err(DatapathError::PinnedMapMismatch {
                name,
                dir: dir.display().to_string(),
                found: format!(
                    "{}, key {} bytes, value {} bytes",
                    found_type.map_or("an unknown type".to_string(), |t| format!("{t:?}")),
                    found.1,
                    found.2
                ),
                expected: format!("{map_type:?}, key {key} bytes, value {value} bytes"),
            });
        }
    }
    Ok(())
}

/// [`load_with`], with the maps of [`PINNED_MAPS`] taken from `pin_dir` where pinned there
/// (by a previous daemon) and created and pinned there otherwise. A reused map keeps its
/// size, whatever `sizes` says.
pub fn load_pinned(
    log_level: log::LevelFilter,
    sizes: MapSizes,
    pin_dir: &Path,
) -> Result<Ebpf, DatapathError> {
    load_from(log_level, sizes, &[], PROGRAM_NAME, Some(pin_dir))
}

/// [`load_with`] for the object's XDP program named `program` ([`PROGRAM_NAME`] or
/// [`DECAP_PROGRAM_NAME`]); the object's other programs are not loaded, its maps all are.
pub fn load_program(
    log_level: log::LevelFilter,
    sizes: MapSizes,
    program: &str,
) -> Result<Ebpf, DatapathError> {
    load_from(log_level, sizes, &[], program, None)
}

/// [`load_program`] that also sizes maps the data plane does not size itself (the benchmark
/// programs' maps): `(map name, max entries)`.
pub fn load_program_sized(
    log_level: log::LevelFilter,
    sizes: MapSizes,
    extra_sizes: &[(&str, u32)],
    program: &str,
) -> Result<Ebpf, DatapathError> {
    load_from(log_level, sizes, extra_sizes, program, None)
}

fn load_from(
    log_level: log::LevelFilter,
    sizes: MapSizes,
    extra_sizes: &[(&str, u32)],
    program: &str,
    pin_dir: Option<&Path>,
) -> Result<Ebpf, DatapathError> {
    if XDP_OBJECT.is_empty() {
        return Err(DatapathError::NotBuilt);
    }
    let level = log_level as u8;
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pin_dir {
        check_pinned(dir)?;
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    for &(name, entries) in extra_sizes {
        loader.map_max_entries(name, entries);
    }
    let mut ebpf = loader
        .override_global("AYA_LOG_LEVEL", &level, false)
        .map_max_entries("FLOWS", sizes.flows)
        .map_max_entries("NAT_REPLIES", sizes.flows)
        .map_max_entries("LISTENERS", 2 * sizes.listeners)
        .map_max_entries("MAGLEV", sizes.listeners)
        .map_max_entries("LISTENER_STATS", sizes.listeners)
        .map_max_entries("TARGETS", sizes.targets)
        .map_max_entries("TARGET_STATS", sizes.targets)
        .map_max_entries("NEXT_HOPS", sizes.targets)
        .load(XDP_OBJECT)
        .map_err(object_error)?;
    load_verified(program_mut_named(&mut ebpf, program))?;
    Ok(ebpf)
}

/// How often a verification interrupted by a signal is retried (libbpf's number).
const LOAD_ATTEMPTS: usize = 5;

/// Loads `program`, retrying when the verifier was interrupted: it gives up with EAGAIN when a
/// signal arrives during a long verification (a SIGHUP to the daemon, a child exiting).
fn load_verified(program: &mut Xdp) -> Result<(), DatapathError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Ok(()) => return Ok(()),
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                log::debug!("verification interrupted (attempt {attempt}); retrying");
                attempt += 1;
            }
            Err(e) => return Err(program_error(e)),
        }
    }
}

/// The loaded object's XDP program.
pub fn program_mut(ebpf: &mut Ebpf) -> &mut Xdp {
    program_mut_named(ebpf, PROGRAM_NAME)
}

/// The loaded object's XDP program named `name` ([`PROGRAM_NAME`] or [`DECAP_PROGRAM_NAME`]).
pub fn program_mut_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("the embedded object has an XDP program named `{name}`"))
}

/// Attaches the loaded program to `ifindex`, returning the mode it runs in.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode), DatapathError> {
    attach_named(ebpf, PROGRAM_NAME, iface, ifindex, mode)
}

/// [`attach`] for the loaded program named `program`.
pub fn attach_named(
    ebpf: &mut Ebpf,
    program: &str,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode), DatapathError> {
    let program = program_mut_named(ebpf, program);
    let try_mode = |program: &mut Xdp, mode: AttachMode| {
        program
            .attach_to_if_index(ifindex, xdp_mode(mode))
            .map_err(|e| DatapathError::Attach {
                iface: iface.to_string(),
                mode: mode_name(mode),
                reason: program_error_reason(&e),
            })
    };
    match mode {
        AttachMode::Auto => match try_mode(program, AttachMode::Native) {
            Ok(link) => Ok((link, AttachMode::Native)),
            Err(native) => {
                log::warn!("{native}; falling back to generic mode, which runs later in the stack and is slower");
                Ok((try_mode(program, AttachMode::Generic)?, AttachMode::Generic))
            }
        },
        mode => Ok((try_mode(program, mode)?, mode)),
    }
}

pub fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Auto => "auto",
        AttachMode::Native => "native",
        AttachMode::Generic => "generic",
        AttachMode::Offload => "offload",
    }
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Auto => XdpMode::Default,
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
        AttachMode::Offload => XdpMode::Hardware,
    }
}

fn is_permission_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Walks an error's sources looking for a permission error from a syscall.
fn caused_by_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if is_permission_error(io) {
                return true;
            }
        }
        current = err.source();
    }
    false
}

fn object_error(e: EbpfError) -> DatapathError {
    if caused_by_permission(&e) {
        DatapathError::PermissionDenied
    } else {
        DatapathError::Object(Box::new(e))
    }
}

fn program_error(e: ProgramError) -> DatapathError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            // The verifier refuses some programs with EACCES too; then its log says why.
            if is_permission_error(&io_error) && log.trim().is_empty() {
                return DatapathError::PermissionDenied;
            }
            log::debug!("verifier output:\n{log}");
            let reason = verifier_reason(&log, &io_error);
            DatapathError::Rejected {
                reason,
                verifier_log: log,
            }
        }
        other if caused_by_permission(&other) => DatapathError::PermissionDenied,
        other => DatapathError::Rejected {
            reason: other.to_string(),
            verifier_log: String::new(),
        },
    }
}

/// The verifier's reason for refusing a program: the last line of its log that is not one of
/// its closing statistics, followed by the syscall's error.
fn verifier_reason(log: &str, io_error: &io::Error) -> String {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .map(|l| format!("{l} ({io_error})"))
        .unwrap_or_else(|| io_error.to_string())
}

fn program_error_reason(e: &ProgramError) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_layout() {
        let named: Vec<&str> = pinned_layouts().iter().map(|l| l.0).collect();
        assert_eq!(named, PINNED_MAPS);
    }

    #[test]
    fn verifier_reason_is_the_last_meaningful_line() {
        let log = "0: R1=ctx() R10=fp0\n; 0: (61) r2 = *(u32 *)(r1 +4)\n\
                   invalid access to packet, off=14 size=2, R3(id=0,off=14,r=0)\n\
                   R3 offset is outside of the packet\n\
                   processed 17 insns (limit 1000000) max_states_per_insn 0\n\
                   stack depth 496+0\n\
                   verification time 12 usec\n";
        let reason = verifier_reason(log, &io::Error::from_raw_os_error(libc::EACCES));
        assert!(
            reason.starts_with("R3 offset is outside of the packet ("),
            "{reason}"
        );
    }

    #[test]
    fn without_a_log_the_errno_is_the_reason() {
        let reason = verifier_reason("", &io::Error::from_raw_os_error(libc::EINVAL));
        assert!(reason.contains("Invalid argument"), "{reason}");
    }

    #[test]
    fn permission_errors_are_recognised() {
        assert!(is_permission_error(&io::Error::from_raw_os_error(
            libc::EPERM
        )));
        assert!(!is_permission_error(&io::Error::from_raw_os_error(
            libc::EINVAL
        )));
    }
}
