//! A test PKI made with rcgen: a root CA issuing leaf certificates, self-signed ones, expired
//! ones, written as PEM files in the three key formats the store loads (PKCS#8, SEC1, RSA
//! PKCS#1: the last two converted with the `openssl` command, as rcgen writes PKCS#8 only);
//! and a TLS client that sends a chosen SNI (or none) and records the certificate it was shown.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::process::TempDir;
use super::T;

/// How the private key file of a leaf is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// ECDSA P-256, `BEGIN PRIVATE KEY`.
    Pkcs8,
    /// ECDSA P-256, `BEGIN EC PRIVATE KEY`.
    Sec1,
    /// RSA 2048, `BEGIN RSA PRIVATE KEY`.
    RsaPkcs1,
}

/// One leaf written to disk.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
    pub not_after: i64,
}

impl Leaf {
    pub fn info(&self) -> smtp_sidecar::tls::CertInfo {
        smtp_sidecar::tls::CertInfo::from_der(&self.der).unwrap()
    }

    /// A `certificates:` entry for this leaf (YAML, indented for the top level list).
    pub fn yaml_entry(&self) -> String {
        format!(
            "  - name: {}\n    cert: {}\n    key: {}\n",
            self.name,
            self.cert.display(),
            self.key.display()
        )
    }
}

/// What a leaf is: its DNS names, validity years (1 January, UTC), issuer and key format.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub names: &'a [&'a str],
    pub from: i32,
    pub to: i32,
    pub ca_issued: bool,
    pub key: KeyFormat,
    /// When set, notAfter is this many days from today instead of 1 January of `to`.
    pub days_left: Option<i64>,
}

impl<'a> Spec<'a> {
    /// CA-issued, ECDSA PKCS#8, valid 2020..2090.
    pub fn ca(names: &'a [&'a str]) -> Spec<'a> {
        Spec {
            names,
            from: 2020,
            to: 2090,
            ca_issued: true,
            key: KeyFormat::Pkcs8,
            days_left: None,
        }
    }

    /// Expiring `days` from today (midnight UTC).
    pub fn days_left(mut self, days: i64) -> Self {
        self.days_left = Some(days);
        self
    }

    pub fn years(mut self, from: i32, to: i32) -> Self {
        self.from = from;
        self.to = to;
        self
    }

    pub fn self_signed(mut self) -> Self {
        self.ca_issued = false;
        self
    }

    pub fn key(mut self, key: KeyFormat) -> Self {
        self.key = key;
        self
    }
}

/// A root CA and a directory of leaves it (or nobody) signed.
pub struct Pki {
    pub dir: TempDir,
    ca: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("Sidecar Test Root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            dir: TempDir::new(tag),
            ca: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Writes `<name>.crt` (leaf, then the CA when CA-issued) and `<name>.key`.
    pub fn leaf(&self, name: &str, spec: Spec<'_>) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(spec.names[0]);
        params.subject_alt_names = spec
            .names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        params.not_before = rcgen::date_time_ymd(spec.from, 1, 1);
        params.not_after = rcgen::date_time_ymd(spec.to, 1, 1);
        if let Some(days) = spec.days_left {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let (y, m, d) = smtp_core::date::civil_from_days(now / 86_400 + days);
            params.not_after = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
        }
        let key = match spec.key {
            KeyFormat::Pkcs8 | KeyFormat::Sec1 => {
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
            }
            KeyFormat::RsaPkcs1 => {
                let pem = openssl(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ]);
                KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
            }
        };
        let cert = if spec.ca_issued {
            params.signed_by(&key, &self.ca).unwrap()
        } else {
            params.self_signed(&key).unwrap()
        };
        let cert_path = self.dir.0.join(format!("{name}.crt"));
        let chain = if spec.ca_issued {
            format!("{}{}", cert.pem(), self.ca_pem)
        } else {
            cert.pem()
        };
        std::fs::write(&cert_path, chain).unwrap();
        let key_path = self.dir.0.join(format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        if spec.key != KeyFormat::Pkcs8 {
            let traditional = openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-traditional"]);
            let marker = match spec.key {
                KeyFormat::Sec1 => "BEGIN EC PRIVATE KEY",
                _ => "BEGIN RSA PRIVATE KEY",
            };
            assert!(traditional.contains(marker), "{traditional}");
            std::fs::write(&key_path, traditional).unwrap();
        }
        Leaf {
            name: name.to_string(),
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
            not_after: params.not_after.unix_timestamp(),
        }
    }

    /// The store the sidecar would load from these leaves.
    pub fn store(leaves: &[&Leaf]) -> smtp_sidecar::tls::CertStore {
        let configs: Vec<_> = leaves
            .iter()
            .map(|l| smtp_sidecar::config::CertificateConfig {
                name: l.name.clone(),
                cert: l.cert.clone(),
                key: l.key.clone(),
            })
            .collect();
        smtp_sidecar::tls::CertStore::load(&configs).unwrap()
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// SHA-256 of a DER certificate, upper-case hex.
pub fn sha256(der: &[u8]) -> String {
    smtp_sidecar::tls::CertInfo::from_der(der).unwrap().sha256
}

/// TLS over `stream` sending `sni` (none when `None`); returns the leaf the server showed.
pub async fn presented<S: AsyncRead + AsyncWrite + Unpin>(stream: S, sni: Option<&str>) -> Vec<u8> {
    let (mut config, seen) = super::showing_client_config(None);
    config.enable_sni = sni.is_some();
    // Without SNI rustls still wants a name to verify against; it is not sent.
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_string()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = tokio::time::timeout(T, connector.connect(name, stream))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let _ = tls.shutdown().await;
    let der = seen.lock().unwrap().take();
    der.expect("a certificate was shown")
}

/// The leaf a STARTTLS listener at `addr` shows to a client sending `sni`.
pub async fn starttls_presented(addr: std::net::SocketAddr, sni: Option<&str>) -> Vec<u8> {
    let mut io = BufReader::new(TcpStream::connect(addr).await.unwrap());
    read_reply(&mut io).await;
    io.get_mut()
        .write_all(b"EHLO client.test\r\n")
        .await
        .unwrap();
    let ehlo = read_reply(&mut io).await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    io.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    assert_eq!(
        read_reply(&mut io).await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    assert!(io.buffer().is_empty());
    presented(io.into_inner(), sni).await
}

/// The leaf an implicit-TLS listener at `addr` shows to a client sending `sni`.
pub async fn implicit_presented(addr: std::net::SocketAddr, sni: Option<&str>) -> Vec<u8> {
    presented(TcpStream::connect(addr).await.unwrap(), sni).await
}

/// One SMTP reply, every line of it.
pub async fn read_reply<R: AsyncRead + Unpin>(io: &mut BufReader<R>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(T, io.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        all.push_str(&line);
        if n == 0 || line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// A path as YAML wants it (tests' temp paths have no quotes or colons).
pub fn path(p: &Path) -> String {
    p.display().to_string()
}
