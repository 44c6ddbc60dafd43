//! Files the model names (the configuration itself, certificates, access logs), opened so that
//! none of them can stall the daemon's control loop: only regular files are accepted (a FIFO
//! would block an open or a read until another program writes to it; a device may never end),
//! every open is non-blocking, and reads are bounded in size. The type is checked on the open
//! descriptor, so a path swapped for something else between a check and the open cannot slip
//! through.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// The largest file [`read_regular`] reads: far above any configuration or PEM chain, far
/// below what would take a noticeable time to read.
pub const MAX_READ: u64 = 16 << 20;

/// Reads a regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_regular_with_mode(path, max).map(|(bytes, _)| bytes)
}

/// [`read_regular`], with the file's mode (permission bits and more) as it was opened.
pub fn read_regular_with_mode(path: &Path, max: u64) -> io::Result<(Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    let length = check_regular(&file)?;
    if length > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{length} bytes, more than the {max} a file named here may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(length as usize);
    // Bounded even if the file grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("grew past the {max} bytes a file named here may have while it was read"),
        ));
    }
    Ok((bytes, mode))
}

/// Why a file that must be its owner's only was not read.
#[derive(Debug)]
pub enum PrivateFileError {
    Read(io::Error),
    /// Group or others may read or write it: its permission bits.
    Exposed {
        mode: u32,
    },
}

/// Reads a regular file of at most `max` bytes that only its owner may read or write (mode
/// 0600 or stricter), as a key or a password must be kept.
pub fn read_private(path: &Path, max: u64) -> Result<Vec<u8>, PrivateFileError> {
    let (bytes, mode) = read_regular_with_mode(path, max).map_err(PrivateFileError::Read)?;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Exposed {
            mode: mode & 0o7777,
        });
    }
    Ok(bytes)
}

/// Reads a regular UTF-8 text file of at most [`MAX_READ`] bytes.
pub fn read_regular_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path, MAX_READ)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Opens a regular file for appending, creating it (mode 0640) if missing.
pub fn open_append_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        // A FIFO without a reader then fails with ENXIO instead of blocking.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    check_regular(&file)?;
    // Appends to a regular file never block; clear the flag anyway so that writes behave
    // as every other file's.
    set_blocking(&file)?;
    Ok(file)
}

/// The file's length, if it is a regular file.
fn check_regular(file: &File) -> io::Result<u64> {
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(metadata.len());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}; give a regular file"),
    ))
}

fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns, reading and writing only its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Replaces `path` with `contents` in one step: a temporary file in the same directory, with
/// the mode and owner of the file it replaces, written and synced, then renamed over it (and
/// the directory synced). A symbolic link is followed, so the file it names is replaced and
/// the link stays. A missing file is created with mode `mode_if_new` if given; without it,
/// a missing file is an error (`NotFound`) and nothing is created.
pub fn replace(path: &Path, contents: &[u8], mode_if_new: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (path, owner, mode) = match std::fs::canonicalize(path) {
        Ok(real) => {
            let meta = std::fs::metadata(&real)?;
            (real, Some((meta.uid(), meta.gid())), meta.mode() & 0o7777)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => match mode_if_new {
            Some(mode) => (path.to_path_buf(), None, mode),
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.sluice-{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The owner first: chown clears set-id bits, which the mode then restores.
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        io::Write::write_all(&mut file, contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        // The rename itself is durable once the directory is.
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn regular_files_are_read_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "hello").unwrap();
        assert_eq!(read_regular_text(&path).unwrap(), "hello");
        assert_eq!(
            read_regular(&path, 4).unwrap_err().to_string(),
            "5 bytes, more than the 4 a file named here may have"
        );
        let log = dir.path().join("new.log");
        use std::io::Write;
        writeln!(open_append_regular(&log).unwrap(), "one").unwrap();
        writeln!(open_append_regular(&log).unwrap(), "two").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
    }

    #[test]
    fn fifos_directories_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        // Neither blocks: no other program opens the FIFO.
        let read = read_regular(&fifo, MAX_READ).unwrap_err();
        assert_eq!(read.to_string(), "a FIFO; give a regular file");
        let append = open_append_regular(&fifo).unwrap_err();
        assert_eq!(append.raw_os_error(), Some(libc::ENXIO), "{append}");
        assert_eq!(
            read_regular(dir.path(), MAX_READ).unwrap_err().to_string(),
            "a directory; give a regular file"
        );
        assert!(open_append_regular(dir.path()).is_err());
        assert_eq!(
            read_regular(Path::new("/dev/zero"), MAX_READ)
                .unwrap_err()
                .to_string(),
            "a device; give a regular file"
        );
        assert_eq!(
            open_append_regular(Path::new("/dev/null"))
                .unwrap_err()
                .to_string(),
            "a device; give a regular file"
        );
    }

    #[test]
    fn a_fifo_with_a_reader_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        // Another party holds the read end, so the open succeeds; the type check refuses it.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert_eq!(
            open_append_regular(&fifo).unwrap_err().to_string(),
            "a FIFO; give a regular file"
        );
    }
}
