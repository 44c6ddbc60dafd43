//! TLS termination for https listeners: rustls with the `ring` provider, several certificates
//! chosen by SNI, ALPN `h2` and `http/1.1`.
//!
//! A listener lists `{ cert, key }` PEM file pairs. During the handshake the certificate whose
//! DNS subject alternative names match the client's SNI is chosen (exactly, or through a
//! wildcard name such as `*.example.com`, which covers exactly one more label; both
//! case-insensitive). A client that sends no SNI, or one that no certificate covers, gets the
//! first certificate, like ALB's default certificate.
//!
//! Everything is read and checked when the configuration is built, before the model that
//! names the files is applied (`proxy::listener_tls`), so a listener with a missing or
//! unreadable file, a file without a certificate or key, or a key that does not belong to its
//! certificate makes `sluice run` refuse to start, or a reload be refused, with a message
//! naming the file.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::model::CertificateFiles;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ProtocolVersion, ServerConfig, ServerConnection,
};

use crate::model::files;

/// ALPN protocols offered, in the server's order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("an https listener needs at least one certificate: add certificates = [{{ cert = \"/path/cert.pem\", key = \"/path/key.pem\" }}]")]
    NoCertificates,
    #[error("cannot read the {what} file {}: {source}; check the path and that sluice may read it", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} holds no PEM certificate{}; give the certificates in PEM (-----BEGIN CERTIFICATE-----), a chain with its own certificate first", path.display(), detail(reason))]
    NoCertificate {
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("the certificate in {} cannot be parsed ({reason}); give an X.509 certificate in PEM", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{} holds no private key{}; give the key in PEM (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)", path.display(), detail(reason))]
    NoKey {
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("the private key in {} is not supported ({reason}); use an RSA (2048 bits or more), ECDSA P-256 or P-384, or Ed25519 key", path.display())]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error("the private key in {} does not belong to the certificate in {}; give the key the certificate was issued for", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
}

fn detail(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

/// The rustls configuration for an https listener serving `certs`; the first is the default.
pub fn server_config(certs: &[CertificateFiles]) -> Result<Arc<ServerConfig>, TlsError> {
    if certs.is_empty() {
        return Err(TlsError::NoCertificates);
    }
    // An explicit provider, not the process default: that one is ambiguous (and rustls panics)
    // as soon as any crate in the build enables aws-lc-rs as well.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keys = certs
        .iter()
        .map(|files| load(files, &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The negotiated protocol and cipher suite for the access log, in the names ALB's log uses
/// for the protocol (`TLSv1.2`, `TLSv1.3`) and IANA-style names for the suite
/// (`TLS13_AES_128_GCM_SHA256`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`); `-` before the
/// handshake has settled them.
pub fn describe(conn: &ServerConnection) -> (&'static str, &'static str) {
    let protocol = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(other) => other.as_str().unwrap_or("-"),
        None => "-",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|suite| suite.suite().as_str())
        .unwrap_or("-");
    (protocol, cipher)
}

/// Reads and checks one `{ cert, key }` pair (an https listener's, or the client certificate
/// a node shows etcd: `store::access`).
pub fn check_pair(files: &CertificateFiles) -> Result<(), TlsError> {
    load(files, &rustls::crypto::ring::default_provider()).map(|_| ())
}

/// The certificates in the PEM file at `path`, at least one, the first parsed as X.509 (a
/// chain with its end-entity certificate first, or a bundle of CA certificates).
pub fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: path.to_path_buf(),
            reason: Some(e.to_string()),
        })?;
    let Some(first) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
            reason: None,
        });
    };
    webpki::EndEntityCert::try_from(first).map_err(|e| TlsError::BadCertificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(chain)
}

/// Reads and checks one `{ cert, key }` pair.
fn load(files: &CertificateFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&files.cert, "certificate")?;

    let key_pem = read(&files.key, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: files.key.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => None,
            other => Some(other.to_string()),
        },
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the provider cannot derive the public key; the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        }),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    files::read_regular(path, files::MAX_READ).map_err(|source| TlsError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Chooses the certificate for a handshake by SNI; see the module documentation.
struct SniResolver {
    /// Never empty; each chain's end-entity certificate was parsed successfully at load time.
    keys: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The index into `keys` of the certificate for `sni`.
    fn choose(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni.and_then(|s| ServerName::try_from(s).ok()) else {
            return 0;
        };
        self.keys
            .iter()
            .position(|key| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.keys[self.choose(client_hello.server_name())],
        ))
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certificates", &self.keys.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! Real rustls handshakes over an in-memory duplex stream, with certificates made by rcgen.

    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    };

    use rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::UnixTime,
        ClientConfig, DigitallySignedStruct, SignatureScheme,
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use std::fs;

    /// A directory of PEM files, removed on drop.
    struct Pems {
        dir: PathBuf,
    }

    impl Pems {
        fn new() -> Pems {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sluice-tls-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Pems { dir }
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.join(name);
            fs::write(&path, contents).unwrap();
            path
        }

        /// A self-signed certificate for `names`; returns the files and the certificate's DER.
        fn self_signed(&self, file: &str, names: &[&str]) -> (CertificateFiles, Vec<u8>) {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let rcgen::CertifiedKey { cert, key_pair } =
                rcgen::generate_simple_self_signed(names).unwrap();
            let files = CertificateFiles {
                cert: self.write(&format!("{file}.pem"), &cert.pem()),
                key: self.write(&format!("{file}.key"), &key_pair.serialize_pem()),
            };
            (files, cert.der().to_vec())
        }
    }

    impl Drop for Pems {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Accepts any certificate and remembers the one the server presented, so tests see which
    /// certificate was chosen even when it does not cover the name asked for.
    #[derive(Debug)]
    struct Recorder {
        seen: Mutex<Option<Vec<u8>>>,
        provider: CryptoProvider,
    }

    impl ServerCertVerifier for Recorder {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.seen.lock().unwrap() = Some(end_entity.to_vec());
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// What the client saw of one handshake.
    struct Handshake {
        certificate: Vec<u8>,
        alpn: Option<Vec<u8>>,
        /// [`describe`] on the server side.
        described: (&'static str, &'static str),
    }

    /// Handshakes with `server` as a client sending `sni` (none for an IP address) and
    /// offering `alpn`, then checks that data flows both ways.
    async fn handshake(server: Arc<ServerConfig>, sni: &str, alpn: &[&[u8]]) -> Handshake {
        let recorder = Arc::new(Recorder {
            seen: Mutex::new(None),
            provider: rustls::crypto::ring::default_provider(),
        });
        let mut client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(recorder.clone())
                .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = ServerName::try_from(sni.to_string()).unwrap();

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let accept = async {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await.unwrap();
            let described = describe(tls.get_ref().1);
            let mut buf = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut tls, &mut buf)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut tls, b"pong")
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::flush(&mut tls).await.unwrap();
            assert_eq!(&buf, b"ping");
            described
        };
        let connect = async {
            let mut tls = TlsConnector::from(Arc::new(client))
                .connect(server_name, client_io)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut tls, b"ping")
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::flush(&mut tls).await.unwrap();
            let mut buf = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut tls, &mut buf)
                .await
                .unwrap();
            assert_eq!(&buf, b"pong");
            tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
        };
        let (described, alpn) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(accept, connect)
        })
        .await
        .expect("the handshake finishes");
        let certificate = recorder
            .seen
            .lock()
            .unwrap()
            .clone()
            .expect("a certificate");
        Handshake {
            certificate,
            alpn,
            described,
        }
    }

    #[tokio::test]
    async fn certificates_are_chosen_by_sni_with_wildcards_and_a_default() {
        let pems = Pems::new();
        let (a, a_der) = pems.self_signed("a", &["a.example.com"]);
        let (b, b_der) = pems.self_signed("b", &["*.b.example.com"]);
        let config = server_config(&[a, b]).unwrap();
        for (sni, expected, why) in [
            ("a.example.com", &a_der, "exact name"),
            ("A.Example.COM", &a_der, "names are case-insensitive"),
            ("x.b.example.com", &b_der, "wildcard"),
            ("API.B.example.com", &b_der, "wildcard, other case"),
            ("b.example.com", &a_der, "a wildcard needs a label: default"),
            (
                "x.y.b.example.com",
                &a_der,
                "a wildcard is one label: default",
            ),
            (
                "other.example.org",
                &a_der,
                "no certificate covers it: default",
            ),
            ("192.0.2.1", &a_der, "no SNI for an IP address: default"),
        ] {
            let seen = handshake(config.clone(), sni, &[b"http/1.1"]).await;
            assert!(&seen.certificate == expected, "{sni}: {why}");
        }
        // The first listed is the default, whatever the names.
        let (a2, _) = pems.self_signed("a2", &["a.example.com"]);
        let (b2, b2_der) = pems.self_signed("b2", &["*.b.example.com"]);
        let seen = handshake(server_config(&[b2, a2]).unwrap(), "192.0.2.1", &[]).await;
        assert_eq!(seen.certificate, b2_der);
    }

    #[tokio::test]
    async fn alpn_prefers_h2_and_offers_http_1_1() {
        let pems = Pems::new();
        let (a, _) = pems.self_signed("a", &["a.example.com"]);
        let config = server_config(&[a]).unwrap();
        let h2 = handshake(config.clone(), "a.example.com", &[b"http/1.1", b"h2"]).await;
        assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
        let h1 = handshake(config.clone(), "a.example.com", &[b"http/1.1"]).await;
        assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let none = handshake(config, "a.example.com", &[]).await;
        assert_eq!(none.alpn, None);
        assert_eq!(h2.described, ("TLSv1.3", "TLS13_AES_256_GCM_SHA384"));
    }

    #[tokio::test]
    async fn tls_1_2_is_described_too() {
        let pems = Pems::new();
        let (a, _) = pems.self_signed("a", &["a.example.com"]);
        let server = server_config(&[a]).unwrap();
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Recorder {
                    seen: Mutex::new(None),
                    provider: rustls::crypto::ring::default_provider(),
                }))
                .with_no_client_auth();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (server_side, client_side) = tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("a.example.com").unwrap(), client_io)
        );
        client_side.unwrap();
        let (protocol, cipher) = describe(server_side.unwrap().get_ref().1);
        assert_eq!(protocol, "TLSv1.2");
        assert!(cipher.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{cipher}");
    }

    #[test]
    fn describe_says_dash_before_the_handshake() {
        let pems = Pems::new();
        let (a, _) = pems.self_signed("a", &["a.example.com"]);
        let conn = ServerConnection::new(server_config(&[a]).unwrap()).unwrap();
        assert_eq!(describe(&conn), ("-", "-"));
    }

    fn error(certs: &[CertificateFiles]) -> String {
        server_config(certs).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let pems = Pems::new();
        let (a, _) = pems.self_signed("a", &["a.example.com"]);
        let (b, _) = pems.self_signed("b", &["b.example.com"]);

        let message = error(&[]);
        assert!(message.contains("at least one certificate"), "{message}");

        let missing = pems.dir.join("missing.pem");
        let message = error(&[CertificateFiles {
            cert: missing.clone(),
            key: a.key.clone(),
        }]);
        assert!(
            message.starts_with(&format!(
                "cannot read the certificate file {}: ",
                missing.display()
            )) && message.contains("check the path"),
            "{message}"
        );
        let message = error(&[CertificateFiles {
            cert: a.cert.clone(),
            key: missing.clone(),
        }]);
        assert!(
            message.starts_with(&format!("cannot read the key file {}", missing.display())),
            "{message}"
        );

        // The key file given as the certificate: PEM, but no certificate in it.
        let message = error(&[CertificateFiles {
            cert: a.key.clone(),
            key: a.key.clone(),
        }]);
        assert_eq!(
            message,
            format!(
                "{} holds no PEM certificate; give the certificates in PEM (-----BEGIN CERTIFICATE-----), a chain with its own certificate first",
                a.key.display()
            )
        );
        let garbage = pems.write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
        let message = error(&[CertificateFiles {
            cert: garbage.clone(),
            key: a.key.clone(),
        }]);
        assert!(
            message.starts_with(&format!("{} holds no PEM certificate (", garbage.display())),
            "{message}"
        );
        let not_x509 = pems.write(
            "not-x509.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let message = error(&[CertificateFiles {
            cert: not_x509.clone(),
            key: a.key.clone(),
        }]);
        assert!(
            message.starts_with(&format!(
                "the certificate in {} cannot be parsed",
                not_x509.display()
            )),
            "{message}"
        );

        // The certificate given as the key.
        let message = error(&[CertificateFiles {
            cert: a.cert.clone(),
            key: a.cert.clone(),
        }]);
        assert_eq!(
            message,
            format!(
                "{} holds no private key; give the key in PEM (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
                a.cert.display()
            )
        );

        let unsupported = pems.write(
            "unsupported.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let message = error(&[CertificateFiles {
            cert: a.cert.clone(),
            key: unsupported.clone(),
        }]);
        assert!(
            message.starts_with(&format!(
                "the private key in {} is not supported (",
                unsupported.display()
            )) && message
                .ends_with("use an RSA (2048 bits or more), ECDSA P-256 or P-384, or Ed25519 key"),
            "{message}"
        );

        // The second pair is checked too, and named.
        let message = error(&[
            a.clone(),
            CertificateFiles {
                cert: a.cert.clone(),
                key: b.key.clone(),
            },
        ]);
        assert_eq!(
            message,
            format!(
                "the private key in {} does not belong to the certificate in {}; give the key the certificate was issued for",
                b.key.display(),
                a.cert.display()
            )
        );

        server_config(&[a, b]).expect("matching pairs load");
    }

    #[test]
    fn certificate_files_deserialize_strictly() {
        let files: CertificateFiles =
            toml::from_str("cert = \"/etc/sluice/a.pem\"\nkey = \"/etc/sluice/a.key\"").unwrap();
        assert_eq!(files.cert, Path::new("/etc/sluice/a.pem"));
        assert_eq!(files.key, Path::new("/etc/sluice/a.key"));
        let err = toml::from_str::<CertificateFiles>("cert = \"a\"\nkey = \"b\"\nchain = \"c\"")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `chain`"), "{err}");
    }
}
