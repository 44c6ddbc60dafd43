//! What outlives the daemon in its pin directory, so that forwarding goes on while no daemon
//! runs (a restart, an upgrade) and a new daemon takes it over: the data plane's maps
//! (`load::PINNED_MAPS`, including the controller's saved state) and one XDP link per
//! interface (`link_<iface>`). Removing a link's pin detaches the program once no process
//! holds the link; `sluice down` removes everything.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
    Ebpf,
};

use super::load::{self, AttachMode, DatapathError};

const LINK_PREFIX: &str = "link_";

#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("cannot pin the XDP link of {iface} at {path}: {reason}")]
    PinLink {
        iface: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot read the pin directory {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Whether `pin_dir` holds a data plane left by an earlier daemon.
pub fn has_data_plane(pin_dir: &Path) -> bool {
    pin_dir.join("STATE").exists()
}

pub fn link_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{iface}"))
}

/// The interfaces with a pinned link, and the pins' paths.
pub fn pinned_links(pin_dir: &Path) -> Result<Vec<(String, PathBuf)>, PinsError> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PinsError::Read {
                path: pin_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut links = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix(LINK_PREFIX) {
            links.push((iface.to_string(), entry.path()));
        }
    }
    links.sort();
    Ok(links)
}

/// How the program came to run on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Attached afresh in this mode.
    New(AttachMode),
    /// Replaced the previous daemon's program on its pinned link, in one atomic update:
    /// no packet is missed and none sees a mix.
    Replaced,
}

/// Runs the loaded program on `iface`: on the link a previous daemon pinned if there is a
/// live one (atomic replacement), else attached afresh and pinned.
pub fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<Attached, AttachError> {
    let path = link_path(pin_dir, iface);
    if path.exists() {
        match replace(ebpf, &path) {
            Ok(()) => return Ok(Attached::Replaced),
            Err(reason) => {
                // The interface went away (and maybe came back): its link is dead.
                log::warn!(
                    "the pinned XDP link of {iface} is not usable ({reason}); attaching afresh"
                );
                fs::remove_file(&path).map_err(|source| PinsError::Remove {
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    let (id, mode) = load::attach(ebpf, iface, ifindex, mode)?;
    pin_new_link(ebpf, id, iface, &path)?;
    Ok(Attached::New(mode))
}

fn replace(ebpf: &mut Ebpf, path: &Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let program = load::program_mut(ebpf);
    let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
    // The pin holds the link; the program must not (its drop would close our fd only, but
    // `sluice down` expects no process to keep the link alive).
    drop(program.take_link(id).map_err(|e| e.to_string())?);
    Ok(())
}

fn pin_new_link(ebpf: &mut Ebpf, id: XdpLinkId, iface: &str, path: &Path) -> Result<(), PinsError> {
    let failed = |reason: String| PinsError::PinLink {
        iface: iface.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let program = load::program_mut(ebpf);
    let link = program.take_link(id).map_err(|e| failed(e.to_string()))?;
    // A netlink attachment (kernels before 5.9) cannot be pinned.
    let fd_link = FdLink::try_from(link).map_err(|e| failed(e.to_string()))?;
    // The pin holds the link from now on; the fd closes when `_pinned` drops.
    let _pinned = fd_link.pin(path).map_err(|e| failed(e.to_string()))?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Pins(#[from] PinsError),
}

/// Detaches from `iface` by removing its link's pin.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<(), PinsError> {
    let path = link_path(pin_dir, iface);
    fs::remove_file(&path).map_err(|source| PinsError::Remove { path, source })
}

/// `BPF_OBJ_GET` and `BPF_LINK_DETACH`, which aya does not offer for a pinned link.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the XDP link pinned at `path` from its interface at once (`BPF_LINK_DETACH`); the
/// link itself lives on until its last reference goes.
fn detach_link_now(path: &Path) -> io::Result<()> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0u64; 4];
    attr[0] = name.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr prefix of the size passed, naming a valid C string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just gave this process; closed when `link` drops.
    let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // union bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let mut attr = [0u64; 4];
    attr[0] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&link) as u32);
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`remove_all`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Interfaces the program was detached from.
    pub detached: Vec<String>,
    pub maps: usize,
}

impl Removed {
    /// "detached from eth0, eth1; removed 11 pinned map(s) in DIR".
    pub fn describe(&self, pin_dir: &Path) -> String {
        format!(
            "detached from {}; removed {} pinned map(s) in {}",
            if self.detached.is_empty() {
                "no interface".to_string()
            } else {
                self.detached.join(", ")
            },
            self.maps,
            pin_dir.display()
        )
    }
}

/// Detaches every pinned link, then removes the maps' pins (the kernel frees the maps once
/// no program or process uses them) and the directory. A missing directory is nothing to do.
pub fn remove_all(pin_dir: &Path) -> Result<Removed, PinsError> {
    let mut removed = Removed::default();
    for (iface, path) in pinned_links(pin_dir)? {
        // Removing the pin alone frees the link (and detaches the program) later, from a
        // kernel work queue: detach it first, so that "detached" is true when it is said.
        if let Err(e) = detach_link_now(&path) {
            log::debug!(
                "{}: cannot detach the link before unpinning it: {e}",
                path.display()
            );
        }
        fs::remove_file(&path).map_err(|source| PinsError::Remove { path, source })?;
        removed.detached.push(iface);
    }
    for name in load::PINNED_MAPS {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.maps += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PinsError::Remove { path, source }),
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // Something else lives there (a user's own pins): leave the directory.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
        Err(source) => {
            return Err(PinsError::Remove {
                path: pin_dir.to_path_buf(),
                source,
            })
        }
    }
    Ok(removed)
}
