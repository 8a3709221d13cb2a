//! Test helpers for the TLS module: unique temporary directories, real certificates made with
//! rcgen or the `openssl` command, and an in-memory handshake between a rustls client and our
//! server configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    SignatureAlgorithm,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

use crate::config::CertificateConfig;

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("smtp-sidecar-tls-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn entry(name: &str, cert: &Path, key: &Path) -> CertificateConfig {
    CertificateConfig {
        name: name.to_string(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    }
}

/// A CA of a test PKI: its certificate, and what signs with it. The test modules add the
/// certificates they need it to issue.
pub struct Ca {
    pub der: CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root named `name` (CN).
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("ca").der().clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    /// A store with this CA as its one anchor.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("anchor");
        Arc::new(roots)
    }
}

/// Leaf parameters for `host` (CN and DNS SAN).
pub fn leaf_params(host: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![host.to_string()]).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    params.distinguished_name = dn;
    params
}

/// A self-signed certificate and its PKCS#8 key, both PEM.
pub fn self_signed_pem(
    params: &CertificateParams,
    alg: &'static SignatureAlgorithm,
) -> (String, String) {
    let key = KeyPair::generate_for(alg).expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// An ECDSA P-256 self-signed certificate for `host`.
pub fn ec_cert(host: &str) -> (String, String) {
    self_signed_pem(&leaf_params(host), &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// Runs `openssl` with `args`, returning its standard output.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An RSA 2048 key (PKCS#8 PEM, as OpenSSL 3 writes it) and a self-signed certificate for
/// `host`, both written to `dir`; returns (cert path, key path).
pub fn rsa_files(dir: &TempDir, host: &str) -> (PathBuf, PathBuf) {
    let key = dir.path("rsa.key");
    let cert = dir.path("rsa.crt");
    let key_s = key.to_str().expect("utf-8 path");
    openssl(&["genrsa", "-out", key_s, "2048"]);
    let subj = format!("/CN={host}");
    let san = format!("subjectAltName=DNS:{host}");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key_s,
        "-subj",
        &subj,
        "-addext",
        &san,
        "-days",
        "30",
        "-out",
        cert.to_str().expect("utf-8 path"),
    ]);
    (cert, key)
}

/// Rewrites a PKCS#8 key file in the traditional encoding (PKCS#1 for RSA, SEC1 for EC).
pub fn to_traditional(dir: &TempDir, pkcs8: &Path, name: &str) -> PathBuf {
    let out = dir.path(name);
    openssl(&[
        "pkey",
        "-in",
        pkcs8.to_str().expect("utf-8 path"),
        "-traditional",
        "-out",
        out.to_str().expect("utf-8 path"),
    ]);
    out
}

/// `openssl x509 -fingerprint -<digest>` of a PEM file, as upper-case hex without colons.
pub fn openssl_fingerprint(cert: &Path, digest: &str) -> String {
    let out = openssl(&[
        "x509",
        "-in",
        cert.to_str().expect("utf-8 path"),
        "-noout",
        "-fingerprint",
        digest,
    ]);
    let hex = out.trim().rsplit('=').next().expect("fingerprint line");
    hex.replace(':', "").to_ascii_uppercase()
}

/// Accepts exactly one server certificate, but checks handshake signatures for real (as
/// originate mode's verifier does).
#[derive(Debug)]
struct AcceptOnly {
    cert: CertificateDer<'static>,
    signatures: super::client::RecordOnly,
}

impl ServerCertVerifier for AcceptOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() != self.cert.as_ref() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        }
        let signatures = &self.signatures;
        signatures.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// A client that speaks `versions` and trusts only `cert`.
pub fn client_config(
    cert: &CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    client_config_with(super::provider(), cert, versions)
}

/// [`client_config`] with another crypto provider (its cipher suites in its own order).
pub fn client_config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    cert: &CertificateDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("client versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptOnly {
            cert: cert.clone(),
            signatures: super::client::RecordOnly(provider),
        }))
        .with_no_client_auth()
}

/// Connects a client to a server in memory and runs the handshake (and the post-handshake
/// ticket messages) to completion; the error is the first side's failure.
pub fn connect(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from("mx.test").expect("server name");
    let mut c = ClientConnection::new(client.clone(), name)?;
    let mut s = ServerConnection::new(server.clone())?;
    pump(&mut c, &mut s)?;
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake stalled"
    );
    Ok((c, s))
}

/// Moves TLS records both ways until neither side has anything left to send.
pub fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    // Each round moves one flight each way; a handshake needs a handful.
    for _ in 0..16 {
        let mut moved = false;
        while c.wants_write() {
            buf.clear();
            c.write_tls(&mut buf).expect("client write_tls");
            moved = true;
            feed(&buf, |rd| s.read_tls(rd));
            s.process_new_packets()?;
        }
        while s.wants_write() {
            buf.clear();
            s.write_tls(&mut buf).expect("server write_tls");
            moved = true;
            feed(&buf, |rd| c.read_tls(rd));
            c.process_new_packets()?;
        }
        if !moved {
            break;
        }
    }
    Ok(())
}

fn feed(mut bytes: &[u8], mut read: impl FnMut(&mut &[u8]) -> std::io::Result<usize>) {
    while !bytes.is_empty() {
        read(&mut bytes).expect("read_tls");
    }
}

/// A resolver that serves `cert` whatever the client asks (an explicit selection).
pub fn fixed(cert: &super::LoadedCert) -> Arc<dyn rustls::server::ResolvesServerCert> {
    super::CertPlan::Explicit(cert.clone())
        .resolver()
        .expect("an explicit plan has a resolver")
}
