//! The BPF filesystem, where sluice pins its maps so that other `sluice` commands (and later a
//! restarted daemon) can find them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where bpffs is conventionally mounted.
pub const MOUNT_POINT: &str = "/sys/fs/bpf";
/// Default directory for sluice's pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";

const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf {MOUNT_POINT}` or choose --pin-dir under a bpffs mount")]
    NotBpffs { path: PathBuf },
    #[error("cannot mount bpffs at {MOUNT_POINT}: {source}")]
    Mount { source: io::Error },
    #[error("cannot create pin directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs at [`MOUNT_POINT`] first when the
/// directory is below it and nothing is mounted there yet.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<(), BpffsError> {
    let mount_point = Path::new(MOUNT_POINT);
    if pin_dir.starts_with(mount_point) && !is_bpffs(mount_point) {
        mount_bpffs_once(mount_point)?;
    }
    fs::create_dir_all(pin_dir).map_err(|source| BpffsError::CreateDir {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    if !is_bpffs(pin_dir) {
        return Err(BpffsError::NotBpffs {
            path: pin_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether `path` lives on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|fs| fs.f_type == BPF_FS_MAGIC)
}

/// Mounts bpffs unless another process just did. Two daemons starting together must not both
/// mount: the second mount would hide the pins made below the first. The lock is on the mount
/// point directory itself (the underlying directory, which both processes open); it is
/// released when `dir` is closed.
fn mount_bpffs_once(mount_point: &Path) -> Result<(), BpffsError> {
    fs::create_dir_all(mount_point).map_err(|source| BpffsError::Mount { source })?;
    let dir = fs::File::open(mount_point).map_err(|source| BpffsError::Mount { source })?;
    dir.lock().map_err(|source| BpffsError::Mount { source })?;
    if is_bpffs(mount_point) {
        return Ok(());
    }
    rustix::mount::mount(
        "bpf",
        mount_point,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| BpffsError::Mount { source: e.into() })?;
    log::info!("mounted bpffs at {MOUNT_POINT}");
    Ok(())
}

/// Removes a pin if it exists.
pub fn unpin(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
