//! TLS for the end-to-end tests of https listeners: self-signed certificates written to a
//! temporary directory (rcgen), and `curl` over TLS with `--resolve` and `--cacert`.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::netns::Namespace;

/// A temporary directory of certificates and keys, removed on drop.
pub struct CertDir {
    dir: PathBuf,
}

/// One self-signed certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The DNS names the certificate covers.
    pub names: Vec<String>,
    /// The certificate in DER, to compare with what a client was given.
    pub der: Vec<u8>,
}

impl CertFiles {
    /// The model's inline table for this pair: `{ cert = "...", key = "..." }`.
    pub fn toml(&self) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl CertDir {
    pub fn new() -> CertDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluicet-certs-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        CertDir { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `STEM.pem` and `STEM.key`: a self-signed ECDSA P-256 certificate for `names`
    /// (DNS names, wildcards like `*.example.com` allowed) and its PKCS#8 key.
    pub fn self_signed(&self, stem: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(names.clone())
                .unwrap_or_else(|e| panic!("generating a certificate for {names:?}: {e}"));
        let cert_path = self.write(&format!("{stem}.pem"), &cert.pem());
        let key_path = self.write(&format!("{stem}.key"), &key_pair.serialize_pem());
        CertFiles {
            cert: cert_path,
            key: key_path,
            names,
            der: cert.der().to_vec(),
        }
    }

    /// Writes `STEM.pem` and `STEM.key`: a self-signed certificate authority.
    pub fn ca(&self, stem: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("sluice test CA {stem}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = CertFiles {
            cert: self.write(&format!("{stem}.pem"), &cert.pem()),
            key: self.write(&format!("{stem}.key"), &key.serialize_pem()),
            names: Vec::new(),
            der: cert.der().to_vec(),
        };
        TestCa { cert, key, files }
    }

    /// Writes `STEM.pem` and `STEM.key`: a certificate issued by `ca` to `common_name` for
    /// `names` (DNS names or IP addresses), for a server or a client.
    pub fn issued(
        &self,
        ca: &TestCa,
        stem: &str,
        common_name: &str,
        names: &[&str],
        usage: Usage,
    ) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![match usage {
            Usage::Server => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        CertFiles {
            cert: self.write(&format!("{stem}.pem"), &cert.pem()),
            key: self.write(&format!("{stem}.key"), &key.serialize_pem()),
            names,
            der: cert.der().to_vec(),
        }
    }

    /// Writes `FILE` with all of `certs`' certificates: a CA bundle for `curl --cacert` that
    /// trusts each of these self-signed certificates.
    pub fn bundle(&self, file: &str, certs: &[&CertFiles]) -> PathBuf {
        let pems: Vec<String> = certs
            .iter()
            .map(|c| {
                fs::read_to_string(&c.cert)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", c.cert.display()))
            })
            .collect();
        self.write(file, &pems.concat())
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(file);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

/// A certificate authority made by [`CertDir::ca`]; its certificate is `files.cert`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub files: CertFiles,
}

/// What an issued certificate is for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

impl Default for CertDir {
    fn default() -> Self {
        CertDir::new()
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Which HTTP version curl asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// `--http1.1`: ALPN offers only http/1.1.
    Http1,
    /// `--http2`: ALPN offers h2 first.
    Http2,
}

/// What curl got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurlResponse {
    pub status: u16,
    /// curl's `%{http_version}`: "1.1" or "2".
    pub http_version: String,
    pub body: String,
}

/// A curl's `-w` line after the body; the marker keeps it apart from any body.
const WRITE_OUT_MARKER: &str = "@@sluice-curl";

/// `curl https://HOST:PORT/PATH` from `ns` with `HOST:PORT` resolved to `addr` (so the SNI and
/// Host are `host` whatever the address), trusting only the certificates in `ca_bundle`.
///
/// A failure (connection, TLS handshake, certificate not valid for `host`, timeout) is an
/// `Err` with curl's message.
pub fn curl_https(
    ns: &Namespace,
    host: &str,
    addr: SocketAddr,
    path: &str,
    ca_bundle: &Path,
    version: HttpVersion,
    timeout: Duration,
) -> Result<CurlResponse, String> {
    let ip = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let port = addr.port();
    let output = ns
        .command("curl")
        .args(["--silent", "--show-error", "--max-time"])
        .arg(format!("{:.3}", timeout.as_secs_f64()))
        .arg("--cacert")
        .arg(ca_bundle)
        .args(["--resolve", &format!("{host}:{port}:{ip}")])
        .arg(match version {
            HttpVersion::Http1 => "--http1.1",
            HttpVersion::Http2 => "--http2",
        })
        .args([
            "--write-out",
            &format!("\n{WRITE_OUT_MARKER} %{{http_code}} %{{http_version}}"),
        ])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .map_err(|e| format!("cannot run curl (is it installed?): {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "curl https://{host}:{port}{path} via {addr} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse_write_out(&stdout).ok_or_else(|| format!("unexpected curl output: {stdout:?}"))
}

fn parse_write_out(stdout: &str) -> Option<CurlResponse> {
    let (body, tail) = stdout.rsplit_once(&format!("\n{WRITE_OUT_MARKER} "))?;
    let mut words = tail.split_whitespace();
    let status = words.next()?.parse().ok()?;
    let http_version = words.next()?.to_string();
    Some(CurlResponse {
        status,
        http_version,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_written_and_removed() {
        let dir = CertDir::new();
        let path = dir.path().to_path_buf();
        let a = dir.self_signed("a", &["a.example.com"]);
        let b = dir.self_signed("b", &["*.b.example.com", "b.example.com"]);
        let pem = fs::read_to_string(&a.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let key = fs::read_to_string(&b.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let bundle = fs::read_to_string(dir.bundle("ca.pem", &[&a, &b])).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert_ne!(a.der, b.der);
        assert_eq!(
            a.toml(),
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                a.cert.display(),
                a.key.display()
            )
        );
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn curl_write_out_is_parsed() {
        assert_eq!(
            parse_write_out("target0\n\n@@sluice-curl 200 2"),
            Some(CurlResponse {
                status: 200,
                http_version: "2".into(),
                body: "target0\n".into()
            })
        );
        assert_eq!(
            parse_write_out("\n@@sluice-curl 404 1.1").map(|r| (r.status, r.body)),
            Some((404, String::new()))
        );
        assert_eq!(parse_write_out("no marker"), None);
    }
}
