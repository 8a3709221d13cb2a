//! A partner PKI made with rcgen for the client-certificate and Domain Security tests: a root
//! and an intermediate CA (Woodgrove Bank's), the partner's certificate for
//! `mail.woodgrovebank.com` + `woodgrovebank.com` issued by the intermediate (sent as a chain),
//! one revoked with a CRL listing it, an expired one, one for another domain, and one from an
//! untrusted CA. Files are written to a scratch directory for `trust.ca_files`/`crl_files`
//! and for `openssl s_client -cert/-key`; a rustls client can present any of them and record
//! whether the server asked for a certificate at all.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::common::process::TempDir;

/// One client identity: its chain (leaf first) and key, in PEM files and for rustls.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    /// PEM chain (leaf, then intermediate) and PKCS#8 key, for openssl/swaks.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub subject: String,
    pub issuer: String,
}

pub struct PartnerPki {
    pub dir: TempDir,
    /// The root CA (PEM), for `trust.ca_files`.
    pub root_file: PathBuf,
    /// The intermediate CA (PEM), for clients that take the chain apart (`-cert_chain`).
    pub intermediate_file: PathBuf,
    /// The intermediate's CRL listing `revoked` (PEM) and the same CRL in DER.
    pub crl_pem: PathBuf,
    pub crl_der: PathBuf,
    /// A CRL of the intermediate that revokes nothing (PEM), for a revocation that comes later.
    pub crl_none_revoked: PathBuf,
    /// `mail.woodgrovebank.com`, `woodgrovebank.com`; issued by the intermediate.
    pub partner: Identity,
    pub revoked: Identity,
    pub expired: Identity,
    /// `mail.fabrikam.test`: verifies, but names another domain.
    pub other_domain: Identity,
    /// Names the partner's domain, issued by a CA nobody trusts.
    pub untrusted: Identity,
    /// Names the partner's domain and verifies, but is for servers only (no clientAuth EKU).
    pub server_only: Identity,
    /// The partner's, valid until [`PartnerPki::EXPIRING`] after the PKI was made.
    pub expiring: Identity,
    /// When `expiring` expires.
    pub expiring_at: std::time::SystemTime,
}

const ROOT_CN: &str = "Woodgrove Root CA";
const INTERMEDIATE_CN: &str = "Woodgrove Issuing CA";

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Woodgrove Bank");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2090, 1, 1);
    p
}

fn leaf_params(names: &[&str], serial: u8) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut p = CertificateParams::new(names.clone()).unwrap();
    p.distinguished_name.push(DnType::CommonName, &names[0]);
    p.distinguished_name
        .push(DnType::OrganizationName, "Woodgrove Bank");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(SerialNumber::from_slice(&[0x10, serial]));
    p.use_authority_key_identifier_extension = true;
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2090, 1, 1);
    p
}

impl PartnerPki {
    pub fn new() -> PartnerPki {
        let dir = TempDir::new("partner-pki");
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params(ROOT_CN);
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = Issuer::new(root_params, root_key);

        let inter_key = KeyPair::generate().unwrap();
        let mut inter_params = ca_params(INTERMEDIATE_CN);
        inter_params.use_authority_key_identifier_extension = true;
        let inter_cert = inter_params.signed_by(&inter_key, &root).unwrap();
        let inter = Issuer::new(inter_params, inter_key);
        let inter_der = inter_cert.der().clone();

        let issue = |name: &str,
                     params: CertificateParams,
                     issuer: &Issuer<'_, KeyPair>,
                     chain_with: Option<&CertificateDer<'static>>,
                     issuer_cn: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            let mut chain = vec![cert.der().clone()];
            let mut pem = cert.pem();
            if let Some(extra) = chain_with {
                chain.push(extra.clone());
                pem.push_str(&pem_of(extra));
            }
            let cert_file = dir.0.join(format!("{name}.pem"));
            let key_file = dir.0.join(format!("{name}.key"));
            std::fs::write(&cert_file, pem).unwrap();
            std::fs::write(&key_file, key.serialize_pem()).unwrap();
            let cn = params
                .distinguished_name
                .get(&DnType::CommonName)
                .map(|v| match v {
                    rcgen::DnValue::Utf8String(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap();
            Identity {
                chain,
                key_der: key.serialize_der(),
                cert_file,
                key_file,
                subject: format!("CN={cn}, O=Woodgrove Bank"),
                issuer: format!("CN={issuer_cn}, O=Woodgrove Bank"),
            }
        };

        let partner = issue(
            "partner",
            leaf_params(&["mail.woodgrovebank.com", "woodgrovebank.com"], 1),
            &inter,
            Some(&inter_der),
            INTERMEDIATE_CN,
        );
        let revoked_serial = 2;
        let revoked = issue(
            "revoked",
            leaf_params(
                &["revoked.woodgrovebank.com", "woodgrovebank.com"],
                revoked_serial,
            ),
            &inter,
            Some(&inter_der),
            INTERMEDIATE_CN,
        );
        let mut expired_params = leaf_params(&["old.woodgrovebank.com", "woodgrovebank.com"], 3);
        expired_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = issue(
            "expired",
            expired_params,
            &inter,
            Some(&inter_der),
            INTERMEDIATE_CN,
        );
        let mut server_only_params = leaf_params(&["mail.woodgrovebank.com"], 6);
        server_only_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_only = issue(
            "server-only",
            server_only_params,
            &inter,
            Some(&inter_der),
            INTERMEDIATE_CN,
        );
        let expiring_at = std::time::SystemTime::now() + PartnerPki::EXPIRING;
        let mut expiring_params = leaf_params(&["mail.woodgrovebank.com"], 7);
        let since_epoch = expiring_at.duration_since(std::time::UNIX_EPOCH).unwrap();
        expiring_params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
        let expiring = issue(
            "expiring",
            expiring_params,
            &inter,
            Some(&inter_der),
            INTERMEDIATE_CN,
        );
        let other_domain = issue(
            "other-domain",
            leaf_params(&["mail.fabrikam.test"], 4),
            &inter,
            Some(&inter_der),
            INTERMEDIATE_CN,
        );
        let evil_key = KeyPair::generate().unwrap();
        let mut evil_params = ca_params("Untrusted CA");
        evil_params.distinguished_name = rcgen::DistinguishedName::new();
        evil_params
            .distinguished_name
            .push(DnType::CommonName, "Untrusted CA");
        evil_params
            .distinguished_name
            .push(DnType::OrganizationName, "Woodgrove Bank");
        let evil = Issuer::new(evil_params, evil_key);
        let untrusted = issue(
            "untrusted",
            leaf_params(&["mail.woodgrovebank.com", "woodgrovebank.com"], 5),
            &evil,
            None,
            "Untrusted CA",
        );

        let crl_listing = |number: u64, revoked_certs| {
            CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(2089, 6, 1),
                crl_number: SerialNumber::from(number),
                issuing_distribution_point: None,
                revoked_certs,
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&inter)
            .unwrap()
        };
        let crl = crl_listing(
            7,
            vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[0x10, revoked_serial]),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
        );
        let crl_none_revoked = dir.0.join("intermediate.none-revoked.crl.pem");
        std::fs::write(&crl_none_revoked, crl_listing(6, Vec::new()).pem().unwrap()).unwrap();
        let intermediate_file = dir.0.join("intermediate.pem");
        std::fs::write(&intermediate_file, pem_of(&inter_der)).unwrap();
        let root_file = dir.0.join("root.pem");
        std::fs::write(&root_file, root_cert.pem()).unwrap();
        let crl_pem = dir.0.join("intermediate.crl.pem");
        std::fs::write(&crl_pem, crl.pem().unwrap()).unwrap();
        let crl_der = dir.0.join("intermediate.crl");
        std::fs::write(&crl_der, crl.der().as_ref()).unwrap();
        PartnerPki {
            dir,
            root_file,
            intermediate_file,
            crl_pem,
            crl_der,
            crl_none_revoked,
            partner,
            revoked,
            expired,
            other_domain,
            untrusted,
            server_only,
            expiring,
            expiring_at,
        }
    }

    /// How long `expiring` is valid for from when the PKI is made.
    pub const EXPIRING: std::time::Duration = std::time::Duration::from_secs(8);

    /// The `trust` section: this PKI's root, its CRL, no OS store.
    pub fn trust_yaml(&self) -> String {
        format!(
            "trust:\n  system_roots: false\n  ca_files: [\"{}\"]\n  crl_files: [\"{}\"]\n",
            self.root_file.display(),
            self.crl_pem.display()
        )
    }
}

impl PartnerPki {
    /// A sidecar's configuration for the interop tests with a real MTA as the partner: this
    /// PKI trusted, the listener `inbound` (STARTTLS) in front of `backend` asking clients for
    /// a certificate and holding woodgrovebank.com to Domain Security (`defer`), its Received
    /// header on.
    pub fn partner_listener_yaml(&self, backend: std::net::SocketAddr) -> String {
        let policy = "      client_certificates: request\n      \
                      domain_secure: [woodgrovebank.com]\n      on_failure: defer\n";
        format!(
            "{}{}",
            self.trust_yaml(),
            crate::common::config_yaml(backend, "starttls", policy)
                .replace("received_header: false", "received_header: true")
        )
    }

    /// The sidecar's Received header field on a message from the partner over TLS 1.3 with
    /// its certificate verified, as a `matches` pattern (CRLF line ends; the cipher and the
    /// date left open).
    pub fn sidecar_received(&self) -> String {
        format!(
            "Received: from mail.woodgrovebank.com ([127.0.0.1])\r\n\tby mx.test (smtp-sidecar) \
             with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_*)\r\n\t(client certificate \
             verified: subject \"{}\"\r\n\tissuer \"{}\");\r\n\t* +0000\r\n",
            self.partner.subject, self.partner.issuer
        )
    }

    /// The `trust` section with the intermediate anchored as well, for clients that send
    /// their certificate without its chain (swaks).
    pub fn trust_yaml_anchoring_intermediate(&self) -> String {
        self.trust_yaml().replace(
            &format!("[\"{}\"]", self.root_file.display()),
            &format!(
                "[\"{}\", \"{}\"]",
                self.root_file.display(),
                self.intermediate_file.display()
            ),
        )
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use std::fmt::Write as _;
    let b64 = base64_encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(chunk).unwrap());
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the server's CertificateRequest said, as the client saw it.
#[derive(Debug, Default)]
pub struct Asked {
    /// The server sent a CertificateRequest.
    pub asked: AtomicBool,
    /// The CA names it hinted.
    pub hints: Mutex<Vec<Vec<u8>>>,
}

impl Asked {
    pub fn was_asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Presenting {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    asked: Arc<Asked>,
}

impl rustls::client::ResolvesClientCert for Presenting {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.asked.store(true, Ordering::SeqCst);
        *self.asked.hints.lock().unwrap() = root_hint_subjects.iter().map(|h| h.to_vec()).collect();
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// A client TLS configuration that presents `identity` (or nothing) when asked, accepts any
/// server certificate, and records whether it was asked.
pub fn client_config(identity: Option<&Identity>) -> (Arc<rustls::ClientConfig>, Arc<Asked>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = identity.map(|id| {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()));
        Arc::new(rustls::sign::CertifiedKey::from_der(id.chain.clone(), der, &provider).unwrap())
    });
    let asked = Arc::new(Asked::default());
    let base = crate::common::client_tls_config();
    let mut config = (*base).clone();
    config.client_auth_cert_resolver = Arc::new(Presenting {
        key,
        asked: Arc::clone(&asked),
    });
    (Arc::new(config), asked)
}

/// The sidecar in process with [`PartnerPki::partner_listener_yaml`] in front of a recording
/// backend; its own certificate for mx.test and 127.0.0.1 from a test CA, whose file is
/// returned (for the partner to verify it).
pub async fn partner_sidecar(
    pki: &PartnerPki,
) -> (
    smtp_sidecar::runtime::Running,
    crate::common::Recorder,
    PathBuf,
    crate::common::pki::Pki,
) {
    use crate::common::pki::{Pki, Spec};
    let (backend, recorder) = crate::common::recording_backend().await;
    let yaml = pki.partner_listener_yaml(backend);
    let config = smtp_sidecar::config::parse(&yaml).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let ours = Pki::new("partner-mta-server");
    let leaf = ours.leaf("mx", Spec::ca(&["mx.test", "127.0.0.1"]));
    let running = smtp_sidecar::runtime::start(&config, &Pki::store(&[&leaf]))
        .await
        .unwrap();
    let ca = crate::common::legacy_backend::ca_file(&ours);
    (running, recorder, ca, ours)
}

/// The sidecar's count of domain-secure messages from woodgrovebank.com on `inbound`, at one.
pub const RECEIVED_FROM_PARTNER_1: &str = "smtp_sidecar_domain_secure_messages_received_total\
    {domain=\"woodgrovebank.com\",listener=\"inbound\"} 1";

/// The sidecar's count of refusals for want of a client certificate on `inbound`, at one.
const REFUSED_WITHOUT_CERTIFICATE_1: &str = "smtp_sidecar_policy_rejections_total\
    {enforced=\"true\",listener=\"inbound\",reason=\"domain_secure_no_client_certificate\"} 1";

/// What a [`partner_sidecar`] shows after refusing one message from a partner without its
/// certificate: the refusal counted once, no domain-secure message, nothing at the backend.
#[track_caller]
pub fn refused_once_for_want_of_a_certificate(
    sidecar: &smtp_sidecar::runtime::Running,
    backend: &crate::common::Recorder,
) {
    let metrics = sidecar.metrics.render();
    let received = RECEIVED_FROM_PARTNER_1.replace("} 1", "} 0");
    for line in [REFUSED_WITHOUT_CERTIFICATE_1, received.as_str()] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(backend.messages().is_empty());
}
