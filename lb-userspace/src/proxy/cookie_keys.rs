//! The keys stickiness cookies are authenticated with, kept in a key file readable by root
//! only (`sluice run --stickiness-keys`, default [`DEFAULT_KEY_FILE`]): a restart, an
//! upgrade, or another node given a copy of the file accepts the cookies clients already
//! hold, so they keep their targets.
//!
//! The file holds one key per line, 64 hex digits, and `#` comments. The first key signs new
//! cookies; every key verifies them. `sluice stickiness rotate-key` puts a fresh key first
//! and keeps the one before (cookies it signed stay valid until they expire or the next
//! rotation); the daemon takes the file up at start and at every reload. A file that does not
//! exist is created (mode 0600) with one fresh key; one that others may read is refused.
//!
//! What a cookie holds is [`super::sticky`]'s business; this module only keeps the keys.

use std::{
    fmt::Write as _,
    io::{self, Write as _},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::sticky::{Pins, StickyError, StickyKey};
use crate::model::files;

/// Where `sluice run` keeps the keys unless told otherwise.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/sluice/stickiness.keys";

/// Keys kept besides the signing one after a rotation: cookies signed before the last
/// rotation stay valid; older ones are refused (their clients are pinned afresh).
pub const PREVIOUS_KEPT: usize = 1;

const HEADER: &str = "# sluice stickiness keys: the first signs cookies, every one verifies them.\n# Root's only (mode 0600). Rotate with `sluice stickiness rotate-key`, then `sluice reload`.\n";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the stickiness key file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the stickiness key file {} may be read by others (mode {mode:o}); run chmod 600 {}", path.display(), path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the stickiness key file {}, line {line}: not a key (64 hex digits)", path.display())]
    Malformed { path: PathBuf, line: usize },
    #[error("the stickiness key file {} holds no key; remove it to have a fresh one made", path.display())]
    Empty { path: PathBuf },
    #[error("cannot write the stickiness key file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("drawing a stickiness key: {0}")]
    Random(io::Error),
}

/// The signing key first, then the previous ones.
#[derive(Clone, Debug)]
pub struct CookieKeys(Vec<StickyKey>);

impl CookieKeys {
    /// One fresh key, kept nowhere (until a model with stickiness names a key file).
    pub fn ephemeral() -> Result<CookieKeys, KeyFileError> {
        Ok(CookieKeys(vec![
            StickyKey::random().map_err(KeyFileError::Random)?
        ]))
    }

    /// The key new cookies are signed with.
    pub fn signing(&self) -> &StickyKey {
        &self.0[0]
    }

    /// The target a cookie pins to, if one of the keys signed it and it is for `group` and
    /// not expired at `now`. When none did, the signing key's verdict.
    pub fn verify(&self, value: &str, group: &str, now: u64) -> Result<SocketAddr, StickyError> {
        let mut first = None;
        for key in &self.0 {
            match key.verify(value, group, now) {
                Ok(target) => return Ok(target),
                // Signed by this key, but not valid: no other key makes it valid.
                Err(e) if e != StickyError::Forged => return Err(e),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or(StickyError::Forged))
    }

    /// The unexpired pins of a cookie value, if one of the keys sealed it; none otherwise.
    pub fn pins(&self, value: &str, now: u64) -> Pins {
        self.0
            .iter()
            .find_map(|key| key.open(value, now).ok())
            .unwrap_or_default()
    }

    /// `fresh` first, then the signing key and up to [`PREVIOUS_KEPT`] keys in all after it.
    pub fn rotated(&self, fresh: StickyKey) -> CookieKeys {
        let mut keys = vec![fresh];
        keys.extend(self.0.iter().take(PREVIOUS_KEPT).cloned());
        CookieKeys(keys)
    }

    fn parse(text: &str, path: &Path) -> Result<CookieKeys, KeyFileError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_key(line).ok_or_else(|| KeyFileError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(CookieKeys(keys))
    }

    fn to_text(&self) -> String {
        let mut text = HEADER.to_string();
        for key in &self.0 {
            for b in key.to_bytes() {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\n');
        }
        text
    }

    /// The keys in `path`, which is made (with one fresh key, mode 0600, its directory 0700)
    /// if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<CookieKeys, KeyFileError> {
        match read(path) {
            Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let keys = CookieKeys::ephemeral()?;
                keys.write(path)?;
                log::info!("stickiness keys: made {} with a fresh key", path.display());
                Ok(keys)
            }
            read => read,
        }
    }

    /// Puts a fresh signing key first in `path` (made if missing), keeping the previous one.
    pub fn rotate_file(path: &Path) -> Result<CookieKeys, KeyFileError> {
        let keys = match read(path) {
            Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                CookieKeys::ephemeral()?
            }
            read => read?,
        };
        let rotated = keys.rotated(StickyKey::random().map_err(KeyFileError::Random)?);
        rotated.write(path)?;
        Ok(rotated)
    }

    /// Replaces `path` in one step (a new file renamed over it), so a daemon reading it
    /// meanwhile sees the old keys or the new ones, never half.
    fn write(&self, path: &Path) -> Result<(), KeyFileError> {
        let failed = |source| KeyFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(failed)?;
            }
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.new", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| {
                file.write_all(self.to_text().as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(failed(e));
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<CookieKeys, KeyFileError> {
    let failed = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A regular file of a few keys: bounded and non-blocking like every file the daemon reads.
    let bytes = files::read_private(path, 64 << 10).map_err(|e| match e {
        files::PrivateFileError::Read(source) => failed(source),
        files::PrivateFileError::Exposed { mode } => KeyFileError::Exposed {
            path: path.to_path_buf(),
            mode,
        },
    })?;
    let text = String::from_utf8(bytes).map_err(|_| KeyFileError::Malformed {
        path: path.to_path_buf(),
        line: 1,
    })?;
    CookieKeys::parse(&text, path)
}

fn parse_key(text: &str) -> Option<StickyKey> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(StickyKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn is_private(path: &Path) -> io::Result<bool> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o077 == 0)
    }

    fn target() -> SocketAddr {
        "10.0.1.10:3000".parse().unwrap()
    }

    #[test]
    fn a_missing_file_is_made_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/stickiness.keys");
        let made = CookieKeys::load_or_create(&path).unwrap();
        assert!(is_private(&path).unwrap());
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let read = CookieKeys::load_or_create(&path).unwrap();
        let cookie = made.signing().sign("web", target(), 100);
        assert_eq!(read.verify(&cookie, "web", 1), Ok(target()));
        assert_eq!(read.0.len(), 1);
    }

    #[test]
    fn a_rotation_still_accepts_the_previous_key_and_refuses_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join("keys");
        let first = CookieKeys::load_or_create(&path).unwrap();
        let old = first.signing().sign("web", target(), 100);
        let second = CookieKeys::rotate_file(&path).unwrap();
        assert_eq!(CookieKeys::load_or_create(&path).unwrap().0.len(), 2);
        let newer = second.signing().sign("web", target(), 100);
        assert_ne!(old, newer);
        assert_eq!(second.verify(&old, "web", 1), Ok(target()));
        assert_eq!(second.verify(&newer, "web", 1), Ok(target()));
        // A cookie a previous key signed is still checked for its group and expiry.
        assert_eq!(second.verify(&old, "api", 1), Err(StickyError::OtherGroup));
        assert_eq!(second.verify(&old, "web", 100), Err(StickyError::Expired));
        let third = CookieKeys::rotate_file(&path).unwrap();
        assert_eq!(third.0.len(), 1 + PREVIOUS_KEPT);
        assert_eq!(third.verify(&old, "web", 1), Err(StickyError::Forged));
        assert_eq!(third.verify(&newer, "web", 1), Ok(target()));
        assert!(is_private(&path).unwrap());
    }

    #[test]
    fn exposed_malformed_and_empty_files_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join("keys");
        CookieKeys::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            CookieKeys::load_or_create(&path).unwrap_err().to_string(),
            format!(
                "the stickiness key file {} may be read by others (mode 644); run chmod 600 {}",
                path.display(),
                path.display()
            )
        );
        let write_private = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write_private(&format!("# comment\n{}\nnot a key\n", "ab".repeat(32)));
        assert_eq!(
            CookieKeys::load_or_create(&path).unwrap_err().to_string(),
            format!(
                "the stickiness key file {}, line 3: not a key (64 hex digits)",
                path.display()
            )
        );
        write_private("# nothing\n\n");
        assert!(matches!(
            CookieKeys::load_or_create(&path),
            Err(KeyFileError::Empty { .. })
        ));
        // A directory where the file should be.
        assert!(matches!(
            CookieKeys::load_or_create(dir.path()),
            Err(KeyFileError::Read { .. })
        ));
    }
}
