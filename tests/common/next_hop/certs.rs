//! The certificates a test next hop presents. `Valid`, `WrongName` and `Expired` come from the
//! test root CA of `common::pki`; `Revoked` from a second trusted CA whose CRL lists it;
//! `Untrusted` from a CA nobody is told about. The sidecar trusts `root_file` and
//! `revoking_ca_file` and loads `crl_file` (see `trust_yaml`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::pki::{Pki, Spec};

/// Which certificate a next hop presents after STARTTLS; all but `Valid` fail a verifying client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// The next hop's host name, issued by the test root CA (`root_file`).
    Valid,
    /// The host name, issued by "Untrusted Next Hop CA" (in no trust file): `UnknownIssuer`.
    Untrusted,
    /// [`WRONG_NAME`], issued by the test root CA: `NotValidForName`.
    WrongName,
    /// The host name, issued by the test root CA, valid 2015 to 1 January 2016: `Expired`.
    Expired,
    /// The host name, issued by "Next Hop Revoking CA" (`revoking_ca_file`) and listed in its
    /// CRL (`crl_file`): `Revoked` once the CRL is loaded, valid without it.
    Revoked,
}

/// The only name in a [`Cert::WrongName`] certificate.
pub const WRONG_NAME: &str = "wrong-name.other.test";

/// Every leaf of the two extra CAs carries this serial; the revoking CA's CRL lists it.
const REVOKED_SERIAL: [u8; 2] = [0x0b, 0xad];

/// The CAs behind the next hops' certificates, written to a scratch directory.
pub struct NextHopPki {
    /// The test root CA ("Sidecar Test Root CA"); `root.leaf(..)` makes client certificates.
    pub root: Pki,
    /// PEM of the test root CA, for `trust.ca_files` and `ClientAuth::Require`.
    pub root_file: PathBuf,
    /// PEM of "Next Hop Revoking CA", for `trust.ca_files`.
    pub revoking_ca_file: PathBuf,
    /// PEM CRL of the revoking CA listing every `Cert::Revoked` leaf, for `trust.crl_files`.
    pub crl_file: PathBuf,
    revoking: (Issuer<'static, KeyPair>, Certificate),
    untrusted: (Issuer<'static, KeyPair>, Certificate),
}

impl NextHopPki {
    pub fn new() -> NextHopPki {
        let root = Pki::new("next-hop-pki");
        let root_file = root.dir.0.join("root.pem");
        std::fs::write(&root_file, &root.ca_pem).unwrap();
        let revoking = ca("Next Hop Revoking CA");
        let revoking_ca_file = root.dir.0.join("revoking-ca.pem");
        std::fs::write(&revoking_ca_file, revoking.1.pem()).unwrap();
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2089, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&REVOKED_SERIAL),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&revoking.0)
        .unwrap();
        let crl_file = root.dir.0.join("revoking-ca.crl.pem");
        std::fs::write(&crl_file, crl.pem().unwrap()).unwrap();
        NextHopPki {
            root,
            root_file,
            revoking_ca_file,
            crl_file,
            revoking,
            untrusted: ca("Untrusted Next Hop CA"),
        }
    }

    /// The sidecar's `trust` section: both trusted CAs and the CRL, no OS store.
    pub fn trust_yaml(&self) -> String {
        format!(
            "trust:\n  system_roots: false\n  ca_files: [\"{}\", \"{}\"]\n  crl_files: [\"{}\"]\n",
            self.root_file.display(),
            self.revoking_ca_file.display(),
            self.crl_file.display()
        )
    }

    /// A fresh chain (leaf first) and key of the given kind for `host`.
    pub(super) fn server_cert(
        &self,
        kind: Cert,
        host: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        static N: AtomicU32 = AtomicU32::new(0);
        let file = format!("next-hop-{}", N.fetch_add(1, Ordering::Relaxed));
        let leaf = match kind {
            Cert::Valid => self.root.leaf(&file, Spec::ca(&[host])),
            Cert::WrongName => self.root.leaf(&file, Spec::ca(&[WRONG_NAME])),
            Cert::Expired => self.root.leaf(&file, Spec::ca(&[host]).years(2015, 2016)),
            Cert::Revoked => return issue(&self.revoking, host),
            Cert::Untrusted => return issue(&self.untrusted, host),
        };
        (load_chain(&leaf.cert), load_key(&leaf.key))
    }
}

/// Every certificate in a PEM file.
pub fn load_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn ca(cn: &str) -> (Issuer<'static, KeyPair>, Certificate) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert)
}

fn issue(
    (issuer, ca_cert): &(Issuer<'static, KeyPair>, Certificate),
    host: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(vec![host.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, host);
    params.serial_number = Some(SerialNumber::from_slice(&REVOKED_SERIAL));
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let chain = vec![cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (chain, key)
}
