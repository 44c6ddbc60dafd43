//! Which daemon owns a pin directory: `sluice run` holds an exclusive `flock` on the directory
//! for as long as it runs. `sluice down` without the daemon's socket finds the owner by this
//! lock, not by a socket path (which may be another one, or gone), and refuses to pull the pins
//! from under a running daemon. The kernel drops the lock when the daemon exits, however it
//! exits, so a crashed daemon never leaves a stale lock.

use std::{
    fs::{File, TryLockError},
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum PinLockError {
    #[error("cannot open the pin directory {path} to lock it: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot lock the pin directory {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
}

/// The lock on a pin directory; released on drop.
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
}

impl PinDirLock {
    /// Takes the lock on `dir`, which must exist; `None` if another process holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<PinDirLock>, PinLockError> {
        // std opens with O_CLOEXEC: processes the daemon starts do not inherit the lock.
        let file = File::open(dir).map_err(|source| PinLockError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        // std's file locks are flock(2) on Linux: the lock `sluice down` tests for.
        match file.try_lock() {
            Ok(()) => Ok(Some(PinDirLock { _dir: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(PinLockError::Lock {
                path: dir.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("sluice-pin-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = PinDirLock::try_acquire(&dir).unwrap();
        assert!(first.is_some());
        // A second open file description, as another process would have.
        assert!(PinDirLock::try_acquire(&dir).unwrap().is_none());
        drop(first);
        assert!(PinDirLock::try_acquire(&dir).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
