//! How a node reaches a secured etcd, as `etcdctl` does: TLS verified against a CA
//! (`--store-cacert`, for etcd's `--cert-file`), a client certificate (`--store-cert` and
//! `--store-key`, for etcd's `--client-cert-auth`), a user (`--store-user` with
//! `--store-password-file`, for etcd's `auth enable`). Every file is read and checked when
//! `sluice run` starts, before anything is loaded, so a missing file, a file without a
//! certificate or key, a key that is not the certificate's, or a password file others may read
//! makes it refuse to start with a sentence naming the file. Then they are read again every
//! few seconds ([`Rotation`]): a certificate, key or password renewed in place is used as soon
//! as the store accepts it, and until then the node keeps reaching the store as before.

use std::path::{Path, PathBuf};

use crate::{
    model::{files, CertificateFiles},
    proxy::tls::{self, TlsError},
};

/// The files `sluice run` was given for the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreAccess {
    /// The CA certificates that sign the etcd members' certificates: TLS on.
    pub cacert: Option<PathBuf>,
    /// This node's client certificate and key.
    pub client: Option<CertificateFiles>,
    /// An etcd user and the file holding its password.
    pub user: Option<(String, PathBuf)>,
}

/// What the files hold, checked: what the etcd client is built with.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The CA certificates (PEM) when TLS is on.
    pub cacert: Option<Vec<u8>>,
    /// The client certificate chain and key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The user and password.
    pub user: Option<(String, String)>,
}

impl Credentials {
    /// `https` when TLS is on, `http` otherwise.
    pub fn scheme(&self) -> &'static str {
        if self.cacert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.cacert.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("--store-cacert: {0}")]
    Cacert(TlsError),
    #[error("--store-cert/--store-key: {0}")]
    Client(TlsError),
    #[error("--store-password-file: cannot read {}: {source}; check the path and that sluice may read it", path.display())]
    PasswordUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--store-password-file: {} may be read by others (mode {mode:o}); run chmod 600 {}", path.display(), path.display())]
    PasswordExposed { path: PathBuf, mode: u32 },
    #[error("--store-password-file: {} holds no password (one line of UTF-8 text)", path.display())]
    NoPassword { path: PathBuf },
}

/// The largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

impl StoreAccess {
    /// Reads and checks every file.
    pub fn load(&self) -> Result<Credentials, AccessError> {
        let cacert = match &self.cacert {
            Some(path) => {
                tls::read_certificates(path, "CA certificate").map_err(AccessError::Cacert)?;
                Some(read(path, "CA certificate").map_err(AccessError::Cacert)?)
            }
            None => None,
        };
        let identity = match &self.client {
            Some(files) => {
                tls::check_pair(files).map_err(AccessError::Client)?;
                let cert = read(&files.cert, "certificate").map_err(AccessError::Client)?;
                let key = read(&files.key, "key").map_err(AccessError::Client)?;
                Some((cert, key))
            }
            None => None,
        };
        let user = match &self.user {
            Some((name, path)) => Some((name.clone(), password(path)?)),
            None => None,
        };
        Ok(Credentials {
            cacert,
            identity,
            user,
        })
    }
}

/// Credential files renewed in place (a certificate rotated before it expires, a password
/// changed), as rules: the files are read again now and then; what differs from the
/// credentials in use is tried, and used once the store accepted it; a failure is reported
/// once for each content of the files, and the credentials in use stay until others work.
#[derive(Debug)]
pub struct Rotation {
    in_use: Credentials,
    /// Credentials whose failure was reported.
    reported: Option<Credentials>,
    /// The files' last error, reported.
    unusable: Option<String>,
}

/// What a new read of the files calls for.
#[derive(Debug)]
pub enum Rotated {
    /// The credentials in use, or files whose error was reported already.
    Unchanged,
    /// New credentials: try them on the store.
    Try(Credentials),
    /// The files changed and cannot be used (half written, a key that is not the
    /// certificate's): report it; the credentials in use stay.
    Unusable(AccessError),
}

impl Rotation {
    pub fn new(in_use: Credentials) -> Rotation {
        Rotation {
            in_use,
            reported: None,
            unusable: None,
        }
    }

    /// The files as [`StoreAccess::load`] read them now.
    pub fn read(&mut self, read: Result<Credentials, AccessError>) -> Rotated {
        match read {
            Err(e) => {
                let text = e.to_string();
                if self.unusable.as_ref() == Some(&text) {
                    return Rotated::Unchanged;
                }
                self.unusable = Some(text);
                Rotated::Unusable(e)
            }
            Ok(credentials) => {
                self.unusable = None;
                if credentials == self.in_use {
                    self.reported = None;
                    Rotated::Unchanged
                } else {
                    Rotated::Try(credentials)
                }
            }
        }
    }

    /// Whether the files, as last read, are the credentials in use (nothing to report).
    pub fn settled(&self) -> bool {
        self.unusable.is_none() && self.reported.is_none()
    }

    /// The store accepted `credentials`: they are the ones in use.
    pub fn taken(&mut self, credentials: Credentials) {
        self.in_use = credentials;
        self.reported = None;
    }

    /// The store did not accept `credentials` (they are tried again at the next read):
    /// whether to report it, the first time only.
    pub fn failed(&mut self, credentials: Credentials) -> bool {
        if self.reported.as_ref() == Some(&credentials) {
            return false;
        }
        self.reported = Some(credentials);
        true
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    files::read_regular(path, files::MAX_READ).map_err(|source| TlsError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The file's first line, without its line end; the file must be root's only.
fn password(path: &Path) -> Result<String, AccessError> {
    let bytes = files::read_private(path, MAX_PASSWORD_FILE).map_err(|e| match e {
        files::PrivateFileError::Read(source) => AccessError::PasswordUnreadable {
            path: path.to_path_buf(),
            source,
        },
        files::PrivateFileError::Exposed { mode } => AccessError::PasswordExposed {
            path: path.to_path_buf(),
            mode,
        },
    })?;
    let text = String::from_utf8(bytes).map_err(|_| AccessError::NoPassword {
        path: path.to_path_buf(),
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(AccessError::NoPassword {
            path: path.to_path_buf(),
        });
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A scratch directory, removed when dropped.
    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap())
        }

        fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    fn pair(name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (cert.pem(), key_pair.serialize_pem())
    }

    #[test]
    fn nothing_given_is_plain_etcd() {
        let credentials = StoreAccess::default().load().unwrap();
        assert_eq!(credentials.scheme(), "http");
        assert!(credentials.identity.is_none() && credentials.user.is_none());
    }

    #[test]
    fn a_ca_a_client_certificate_and_a_user_are_read() {
        let dir = Dir::new();
        let (ca, _) = pair("ca.example");
        let (cert, key) = pair("node1");
        let access = StoreAccess {
            cacert: Some(dir.write("ca.pem", &ca, 0o644)),
            client: Some(CertificateFiles {
                cert: dir.write("node1.pem", &cert, 0o644),
                key: dir.write("node1.key", &key, 0o600),
            }),
            user: Some(("sluice".into(), dir.write("password", "s3cret\n", 0o600))),
        };
        let credentials = access.load().unwrap();
        assert_eq!(credentials.scheme(), "https");
        assert_eq!(credentials.cacert.as_deref(), Some(ca.as_bytes()));
        assert_eq!(
            credentials.identity,
            Some((cert.into_bytes(), key.into_bytes()))
        );
        assert_eq!(
            credentials.user,
            Some(("sluice".to_string(), "s3cret".to_string())),
            "the line end is not part of the password"
        );
        assert!(
            !format!("{credentials:?}").contains("s3cret"),
            "the password is never printed"
        );
    }

    #[test]
    fn renewed_files_are_tried_until_taken_and_failures_reported_once() {
        let dir = Dir::new();
        let password = dir.write("password", "first\n", 0o600);
        let access = StoreAccess {
            user: Some(("sluice".into(), password.clone())),
            ..StoreAccess::default()
        };
        let first = access.load().unwrap();
        let mut rotation = Rotation::new(first.clone());
        assert!(matches!(rotation.read(access.load()), Rotated::Unchanged));

        // Renewed: tried at every read until the store takes it; its failure reported once.
        dir.write("password", "second\n", 0o600);
        let Rotated::Try(second) = rotation.read(access.load()) else {
            panic!("a new password is tried");
        };
        assert_eq!(second.user.as_ref().unwrap().1, "second");
        assert!(
            rotation.failed(second.clone()),
            "the first failure is reported"
        );
        let Rotated::Try(again) = rotation.read(access.load()) else {
            panic!("tried again at the next read");
        };
        assert!(!rotation.failed(again), "not reported twice");

        // Files that cannot be used are reported once, and the credentials in use stay.
        dir.write("password", "\n", 0o600);
        assert!(matches!(
            rotation.read(access.load()),
            Rotated::Unusable(AccessError::NoPassword { .. })
        ));
        assert!(matches!(rotation.read(access.load()), Rotated::Unchanged));
        dir.write("password", "second\n", 0o600);
        assert!(matches!(rotation.read(access.load()), Rotated::Try(_)));
        assert!(!rotation.settled());
        rotation.taken(second);
        assert!(matches!(rotation.read(access.load()), Rotated::Unchanged));
        assert!(rotation.settled());

        // Back to the first: a change like any other, reported afresh when it fails.
        dir.write("password", "first\n", 0o600);
        let Rotated::Try(back) = rotation.read(access.load()) else {
            panic!("a change back is tried");
        };
        assert_eq!(back, first);
        assert!(rotation.failed(back));
    }

    #[test]
    fn bad_files_are_refused_naming_flag_and_file() {
        let dir = Dir::new();
        let (cert, key) = pair("node1");
        let (_, other_key) = pair("node2");
        let missing = dir.0.path().join("missing.pem");
        let not_pem = dir.write("not.pem", "hello\n", 0o644);
        let cert = dir.write("node1.pem", &cert, 0o644);
        let key = dir.write("node1.key", &key, 0o600);
        let other_key = dir.write("node2.key", &other_key, 0o600);
        let refusal = |access: StoreAccess| access.load().unwrap_err().to_string();

        let said = refusal(StoreAccess {
            cacert: Some(missing.clone()),
            ..StoreAccess::default()
        });
        assert!(
            said.starts_with("--store-cacert: cannot read the CA certificate file")
                && said.contains("missing.pem"),
            "{said}"
        );
        let said = refusal(StoreAccess {
            cacert: Some(not_pem.clone()),
            ..StoreAccess::default()
        });
        assert!(
            said.starts_with("--store-cacert: ")
                && said.contains("not.pem holds no PEM certificate"),
            "{said}"
        );
        let said = refusal(StoreAccess {
            client: Some(CertificateFiles {
                cert: cert.clone(),
                key: other_key,
            }),
            ..StoreAccess::default()
        });
        assert!(
            said.starts_with("--store-cert/--store-key: the private key in")
                && said.contains("does not belong to the certificate"),
            "{said}"
        );
        let said = refusal(StoreAccess {
            client: Some(CertificateFiles {
                cert: cert.clone(),
                key: not_pem,
            }),
            ..StoreAccess::default()
        });
        assert!(said.contains("holds no private key"), "{said}");

        let user = |path: PathBuf| StoreAccess {
            user: Some(("sluice".into(), path)),
            ..StoreAccess::default()
        };
        let said = refusal(user(dir.write("open", "s3cret\n", 0o644)));
        assert!(
            said.contains("may be read by others (mode 644); run chmod 600"),
            "{said}"
        );
        let said = refusal(user(dir.write("empty", "\n", 0o600)));
        assert!(said.contains("holds no password"), "{said}");
        let said = refusal(user(missing));
        assert!(
            said.starts_with("--store-password-file: cannot read"),
            "{said}"
        );
        assert!(StoreAccess {
            client: Some(CertificateFiles { cert, key }),
            ..StoreAccess::default()
        }
        .load()
        .is_ok());
    }
}
