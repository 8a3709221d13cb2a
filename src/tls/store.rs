//! The certificate store of SPEC §3 `certificates`: each entry's PEM chain (leaf first) and
//! PEM key (PKCS#8, PKCS#1 or SEC1) loaded into a rustls [`CertifiedKey`], with every problem
//! of every entry reported at once. Which one a listener serves is `select.rs`'s business.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{InconsistentKeys, SignatureAlgorithm};

use super::certinfo::CertInfo;
use crate::clock::unix_now;
use crate::config::CertificateConfig;

/// One usable certificate: chain and key checked to belong together.
#[derive(Clone)]
pub struct LoadedCert {
    /// The store entry's name (`"self-signed"` for the generated default).
    pub name: String,
    /// Facts about the leaf certificate.
    pub info: CertInfo,
    /// Chain (leaf first) and signing key, ready for rustls.
    pub certified_key: Arc<CertifiedKey>,
}

impl fmt::Debug for LoadedCert {
    // The signing key's Debug says nothing useful; the facts do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("name", &self.name)
            .field("info", &self.info)
            .field("chain_len", &self.certified_key.cert.len())
            .finish()
    }
}

impl LoadedCert {
    /// Loads one certificate/key pair. Errors name the file they are about; `label` prefixes
    /// each of them (e.g. `certificates[0] "internet"`).
    pub(crate) fn from_files(
        name: &str,
        cert_path: &Path,
        key_path: &Path,
        label: &str,
    ) -> Result<LoadedCert, Vec<String>> {
        let chain = read_chain(cert_path)
            .map_err(|e| format!("{label}: certificate file {}: {e}", cert_path.display()));
        let key = read_key(key_path)
            .map_err(|e| format!("{label}: key file {}: {e}", key_path.display()));
        let (chain, info, key) = match (chain, key) {
            (Ok((chain, info)), Ok(key)) => (chain, info, key),
            (chain, key) => return Err(chain.err().into_iter().chain(key.err()).collect()),
        };
        let certified_key = CertifiedKey::new(chain, key);
        match certified_key.keys_match() {
            // Unknown: the key cannot tell its public half; rustls itself accepts that case.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(vec![format!(
                    "{label}: key file {} does not match the certificate in {}{}",
                    key_path.display(),
                    cert_path.display(),
                    misordered_hint(&certified_key)
                )]);
            }
            Err(e) => {
                return Err(vec![format!(
                    "{label}: certificate file {}: cannot check the key against it: {e}",
                    cert_path.display()
                )]);
            }
        }
        Ok(LoadedCert {
            name: name.to_string(),
            info,
            certified_key: Arc::new(certified_key),
        })
    }

    /// Multi-line description for `smtp-sidecar check`, judged against the current time.
    /// Lines are unindented and the entry's name is left to the caller's heading.
    pub fn describe(&self) -> String {
        self.describe_at(unix_now())
    }

    /// [`LoadedCert::describe`] with an explicit clock.
    pub fn describe_at(&self, unix_now: i64) -> String {
        let i = &self.info;
        let state = if unix_now > i.not_after {
            "expired!"
        } else if unix_now < i.not_before {
            "not yet valid!"
        } else {
            "valid"
        };
        let sans = if i.sans.is_empty() {
            "(none)".to_string()
        } else {
            i.names_shown(", ")
        };
        format!(
            "subject:    {}\nissuer:     {}\nserial:     {}\nSANs:       {}\n\
             key:        {}\nchain:      {} certificate(s)\nSHA-1:      {}\n\
             SHA-256:    {}\nnot before: {}\nnot after:  {} ({})",
            i.subject,
            i.issuer,
            i.serial,
            sans,
            key_kind(&self.certified_key),
            self.certified_key.cert.len(),
            i.sha1,
            i.sha256,
            i.not_before_rfc3339(),
            i.not_after_rfc3339(),
            state
        )
    }
}

impl fmt::Display for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// All certificates of the configuration, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    pub certs: Vec<LoadedCert>,
}

impl CertStore {
    /// Loads every entry; on failure returns every problem found, one line each, naming the
    /// entry and the file.
    pub fn load(configs: &[CertificateConfig]) -> Result<CertStore, Vec<String>> {
        let mut certs = Vec::with_capacity(configs.len());
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for (index, entry) in configs.iter().enumerate() {
            let label = format!("certificates[{index}] {:?}", entry.name);
            if !seen.insert(entry.name.as_str()) {
                // Selection is by name, so a second entry of the same name could never be used.
                problems.push(format!("{label}: duplicate certificate name"));
            }
            match LoadedCert::from_files(&entry.name, &entry.cert, &entry.key, &label) {
                Ok(cert) => certs.push(cert),
                Err(mut errs) => problems.append(&mut errs),
            }
        }
        if problems.is_empty() {
            Ok(CertStore { certs })
        } else {
            Err(problems)
        }
    }

    /// The entry whose SHA-1 or SHA-256 thumbprint is `thumbprint` (SPEC §3
    /// `certificate.thumbprint`).
    pub fn by_thumbprint(&self, thumbprint: &str) -> Option<&LoadedCert> {
        self.certs
            .iter()
            .find(|c| c.info.matches_thumbprint(thumbprint))
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read: {e}"),
    })
}

/// The chain in file order (leaf first) and the leaf's facts.
fn read_chain(path: &Path) -> Result<(Vec<CertificateDer<'static>>, CertInfo), String> {
    let bytes = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(if looks_like_der(&bytes) {
            "not PEM (DER?): convert with `openssl x509 -inform der`".to_string()
        } else {
            "no certificate found (expected a -----BEGIN CERTIFICATE----- block)".to_string()
        });
    };
    let info = CertInfo::from_der(leaf)?;
    for (i, cert) in chain.iter().enumerate().skip(1) {
        CertInfo::from_der(cert)
            .map_err(|e| format!("certificate #{} of the chain: {e}", i + 1))?;
    }
    Ok((chain, info))
}

/// The signing key of a PEM key file, limited to the kinds SMTP peers can all verify.
fn read_key(path: &Path) -> Result<Arc<dyn SigningKey>, String> {
    let bytes = read_file(path)?;
    let der = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(der) => der,
        Err(pem::Error::NoItemsFound) => {
            return Err(if contains(&bytes, b"ENCRYPTED") {
                "the private key is encrypted: store it decrypted (`openssl pkey -in KEY -out \
                 KEY.plain`) and protect the file by its permissions"
                    .to_string()
            } else if looks_like_der(&bytes) {
                "not PEM (DER?): convert with `openssl pkey -inform der`".to_string()
            } else {
                "no private key found (expected BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or \
                 BEGIN EC PRIVATE KEY)"
                    .to_string()
            });
        }
        Err(e) => return Err(format!("invalid PEM: {e}")),
    };
    let encoding = match &der {
        PrivateKeyDer::Pkcs1(_) => "PKCS#1 RSA",
        PrivateKeyDer::Sec1(_) => "SEC1 EC",
        PrivateKeyDer::Pkcs8(_) => "PKCS#8",
        _ => "private",
    };
    let key = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| {
            format!(
                "invalid or unsupported {encoding} key ({e}); supported: ECDSA P-256, P-384 \
                 or RSA 2048+"
            )
        })?;
    match key.algorithm() {
        SignatureAlgorithm::ECDSA | SignatureAlgorithm::RSA => Ok(key),
        // Ed25519 and newer kinds load, but many MTAs (TLS 1.2 stacks) cannot verify them,
        // so serving one would fail handshakes that an ECDSA or RSA key would pass.
        other => Err(format!(
            "unsupported key type {other:?}; use ECDSA (P-256, P-384) or RSA"
        )),
    }
}

/// When the key matches a later certificate of the file, the chain is out of order.
fn misordered_hint(ck: &CertifiedKey) -> String {
    let Some(spki) = ck.key.public_key() else {
        return String::new();
    };
    let position = ck.cert.iter().skip(1).position(|der| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c.public_key().raw == spki.as_ref())
            .unwrap_or(false)
    });
    match position {
        Some(i) => format!(
            " (it matches certificate #{} of the file: put the server certificate first)",
            i + 2
        ),
        None => String::new(),
    }
}

/// "ECDSA P-256", "RSA 2048-bit"...: what `check` shows, since the key kind decides which
/// clients can complete a handshake and how fast (DESIGN §5).
fn key_kind(ck: &CertifiedKey) -> String {
    use rustls::SignatureScheme as S;
    match ck.key.algorithm() {
        SignatureAlgorithm::ECDSA => {
            let offered = [
                S::ECDSA_NISTP256_SHA256,
                S::ECDSA_NISTP384_SHA384,
                S::ECDSA_NISTP521_SHA512,
            ];
            match ck.key.choose_scheme(&offered).map(|s| s.scheme()) {
                Some(S::ECDSA_NISTP256_SHA256) => "ECDSA P-256".to_string(),
                Some(S::ECDSA_NISTP384_SHA384) => "ECDSA P-384".to_string(),
                Some(S::ECDSA_NISTP521_SHA512) => "ECDSA P-521".to_string(),
                _ => "ECDSA".to_string(),
            }
        }
        SignatureAlgorithm::RSA => {
            let bits = ck
                .cert
                .first()
                .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
                .and_then(|(_, c)| c.public_key().parsed().ok().map(|k| k.key_size()))
                .unwrap_or(0);
            if bits > 0 {
                format!("RSA {bits}-bit")
            } else {
                "RSA".to_string()
            }
        }
        other => format!("{other:?}"),
    }
}

/// A DER SEQUENCE starts with 0x30; PEM is text.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
