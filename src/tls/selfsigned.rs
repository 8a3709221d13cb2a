//! The default certificate of SPEC §3: with no `certificates` configured, a self-signed ECDSA
//! P-256 certificate for `hostname`, valid five years, is generated once and kept in
//! `state_dir`, so STARTTLS works out of the box and the thumbprint stays the same across
//! restarts (peers that pin it, and operators who read it in logs, see one certificate).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::certinfo::CertInfo;
use super::store::LoadedCert;
use super::TlsError;
use crate::clock::unix_now;
use smtp_core::date::civil_from_days;

/// The store name of the generated certificate.
pub const SELF_SIGNED_NAME: &str = "self-signed";
const CERT_FILE: &str = "self-signed.crt";
const KEY_FILE: &str = "self-signed.key";
/// Five years, one of them leap.
const VALIDITY_DAYS: i64 = 5 * 365 + 1;

/// A fresh self-signed certificate for `hostname` (CN and DNS SAN), in memory only.
pub fn self_signed(hostname: &str) -> Result<LoadedCert, TlsError> {
    generate(hostname, unix_now()).map(|g| g.loaded)
}

/// The self-signed certificate kept in `state_dir`: reused when the files parse, belong
/// together, name `hostname` and have not expired (so its thumbprint, which peers may pin,
/// changes only when it must); generated and written (directory 0700, key 0600) otherwise.
pub fn load_or_create_self_signed(
    state_dir: &Path,
    hostname: &str,
) -> Result<LoadedCert, TlsError> {
    let (cert, unsaved) = self_signed_in(state_dir, hostname)?;
    if let Some(unsaved) = unsaved {
        unsaved.save()?;
    }
    Ok(cert)
}

/// A generated self-signed certificate not yet written to its `state_dir`: a reload writes
/// it once it is in force, so that a reload refused later leaves the kept one (and what
/// pins it) alone.
#[derive(Debug)]
pub struct Unsaved {
    dir: PathBuf,
    key_pem: String,
    cert_pem: String,
}

impl Unsaved {
    /// Write it (directory 0700, key 0600), replacing the kept one.
    pub fn save(self) -> Result<(), TlsError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| file_error(&self.dir, "cannot create the directory", &e))?;
        // Key first: a crash between the two writes leaves a mismatching pair, which the next
        // start detects and replaces, never a certificate whose key was lost.
        write_atomically(&self.dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_atomically(&self.dir.join(CERT_FILE), self.cert_pem.as_bytes(), 0o644)
    }
}

/// [`load_or_create_self_signed`] without the write: the certificate, and if it was
/// generated, what is still to be written.
pub fn self_signed_in(
    state_dir: &Path,
    hostname: &str,
) -> Result<(LoadedCert, Option<Unsaved>), TlsError> {
    let cert_path = state_dir.join(CERT_FILE);
    let key_path = state_dir.join(KEY_FILE);
    let now = unix_now();
    let exists = cert_path.exists() || key_path.exists();
    match LoadedCert::from_files(SELF_SIGNED_NAME, &cert_path, &key_path, SELF_SIGNED_NAME) {
        Ok(kept) => match unusable_because(&kept.info, hostname, now) {
            None => return Ok((kept, None)),
            Some(why) => tracing::info!(
                dir = %state_dir.display(),
                "regenerating the self-signed certificate: {why}"
            ),
        },
        Err(problems) if exists => tracing::warn!(
            dir = %state_dir.display(),
            "regenerating the self-signed certificate: {}",
            problems.join("; ")
        ),
        Err(_) => tracing::info!(
            dir = %state_dir.display(),
            hostname,
            "generating a self-signed certificate"
        ),
    }

    let generated = generate(hostname, now)?;
    let unsaved = Unsaved {
        dir: state_dir.to_owned(),
        key_pem: generated.key_pem,
        cert_pem: generated.cert_pem,
    };
    Ok((generated.loaded, Some(unsaved)))
}

/// The certificate kept in `state_dir`, if [`load_or_create_self_signed`] would reuse it;
/// reads only (for `check`, which writes nothing).
pub fn kept_self_signed(state_dir: &Path, hostname: &str) -> Option<LoadedCert> {
    let kept = LoadedCert::from_files(
        SELF_SIGNED_NAME,
        &state_dir.join(CERT_FILE),
        &state_dir.join(KEY_FILE),
        SELF_SIGNED_NAME,
    )
    .ok()?;
    unusable_because(&kept.info, hostname, unix_now())
        .is_none()
        .then_some(kept)
}

/// Why a kept certificate cannot be reused, if it cannot.
fn unusable_because(info: &CertInfo, hostname: &str, now: i64) -> Option<String> {
    if !info.has_dns_name(hostname) {
        Some(format!(
            "it is for {:?}, not {hostname:?}",
            info.names_shown(", ")
        ))
    } else if !info.is_valid_at(now) {
        Some(format!(
            "it is not valid now (not after {})",
            info.not_after_rfc3339()
        ))
    } else {
        None
    }
}

struct Generated {
    loaded: LoadedCert,
    cert_pem: String,
    key_pem: String,
}

fn generate(hostname: &str, now: i64) -> Result<Generated, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    if hostname.is_empty() {
        return Err(TlsError::Generate("the hostname is empty".to_string()));
    }
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::new(vec![hostname.to_string()]).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname);
    params.distinguished_name = dn;
    // Client authentication too: an originate listener's `client_certificate` defaults to
    // it, and a partner that trusts it refuses it for mutual TLS without clientAuth.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let today = now.div_euclid(86_400);
    // Backdated a day so that a peer whose clock runs a little behind still accepts it.
    let (y, m, d) = ymd(today - 1)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(today + VALIDITY_DAYS)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.self_signed(&key_pair).map_err(gen_err)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let key = super::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Generate(format!("rustls refused the generated key: {e}")))?;
    let info = CertInfo::from_der(cert.der()).map_err(TlsError::Generate)?;
    Ok(Generated {
        loaded: LoadedCert {
            name: SELF_SIGNED_NAME.to_string(),
            info,
            certified_key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], key)),
        },
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
    })
}

/// (year, month, day) of a day counted from 1970-01-01, in the integer types of
/// [`rcgen::date_time_ymd`] (which gives midnight UTC of that day).
fn ymd(days: i64) -> Result<(i32, u8, u8), TlsError> {
    let (y, m, d) = civil_from_days(days);
    match (i32::try_from(y), u8::try_from(m), u8::try_from(d)) {
        (Ok(y), Ok(m), Ok(d)) => Ok((y, m, d)),
        _ => Err(TlsError::Generate(format!("date out of range: day {days}"))),
    }
}

/// Writes through a fresh temporary file and a rename, so a reader never sees half a file and
/// the key is never, even briefly, readable by others.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = tmp_path(path);
    // A stale temporary file from an interrupted run would make create_new fail.
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_error(path, "cannot write", &e)
    })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn file_error(path: &Path, what: &str, e: &std::io::Error) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}
