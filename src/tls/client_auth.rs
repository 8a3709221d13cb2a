//! Client certificates of a terminating listener (`policy.client_certificates`):
//! - `none`: no verifier at all, so no CertificateRequest (the configuration of before);
//! - `require`: rustls's `WebPkiClientVerifier` over `trust` (anchors and CRLs); a client
//!   without a certificate that verifies fails the handshake with an alert;
//! - `request`: a CertificateRequest is sent, but at the TLS layer any certificate (or none)
//!   is accepted, the signature proving the client holds its key still checked. The chain is
//!   verified with the same WebPki verifier right after the handshake ([`client_cert`]), so a
//!   partner whose certificate does not verify still delivers its non-domain-secure mail and
//!   the session learns why: [`ClientCert::Failed`].

use std::cell::RefCell;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use smtp_core::inbound::{ClientCert, PeerCert};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::trust::Trust;
use super::CertInfo;
use crate::config::ClientCertificates;

/// The client-certificate side of one listener: what rustls is given, and how the session
/// learns the outcome.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    mode: ClientCertificates,
    /// The WebPki verifier over `trust`; `None` for `none`.
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    /// The subjects of the anchors of `trust` that are name-constrained ([`fenced`]).
    fenced_anchors: Arc<[Vec<u8>]>,
}

impl ClientAuth {
    /// No client certificates (`none`).
    pub fn none() -> Self {
        ClientAuth {
            mode: ClientCertificates::None,
            webpki: None,
            fenced_anchors: Arc::new([]),
        }
    }

    pub fn new(mode: ClientCertificates, trust: &Trust) -> Result<Self, String> {
        if mode == ClientCertificates::None {
            return Ok(Self::none());
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&trust.roots),
            super::provider(),
        )
        .clear_root_hint_subjects()
        .add_root_hint_subjects(trust.hints.clone())
        .with_crls(trust.crls.clone())
        // A CRL speaks for its issuer only: a certificate from a CA without a CRL here is
        // not "unknown status" but unchecked, as with any MTA that has no CRL for it.
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| match e {
            rustls::server::VerifierBuilderError::NoRootAnchors => {
                "client_certificates needs trust anchors (trust.system_roots or trust.ca_files)"
                    .to_owned()
            }
            other => format!("client certificate verifier: {other}"),
        })?;
        let fenced_anchors = trust
            .roots
            .roots
            .iter()
            .filter(|anchor| anchor.name_constraints.is_some())
            .map(|anchor| anchor.subject.as_ref().to_vec())
            .collect();
        Ok(ClientAuth {
            mode,
            webpki: Some(webpki),
            fenced_anchors,
        })
    }

    /// The verifier for the rustls `ServerConfig`; `None`: no client authentication.
    pub fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let webpki = self.webpki.as_ref()?;
        match self.mode {
            ClientCertificates::None => None,
            mode => Some(Arc::new(Verifier {
                webpki: Arc::clone(webpki),
                mandatory: mode == ClientCertificates::Require,
            })),
        }
    }

    /// `client_certificates: require`: a client without a certificate that verifies is not
    /// served.
    pub fn required(&self) -> bool {
        self.mode == ClientCertificates::Require
    }

    /// What the session learns of the client certificate after a completed handshake.
    pub fn client_cert(&self, conn: &rustls::CommonState) -> ClientCert {
        let Some((leaf, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first())
        else {
            return ClientCert::None;
        };
        let Some(webpki) = &self.webpki else {
            return ClientCert::None;
        };
        let mut cert = match peer_cert(leaf) {
            Ok(cert) => Box::new(cert),
            Err(reason) => {
                return ClientCert::Failed {
                    cert: Box::default(),
                    reason,
                }
            }
        };
        if cert.common_name.is_some() && fenced(leaf, intermediates, &self.fenced_anchors) {
            cert.common_name = None;
        }
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        if self.mode == ClientCertificates::Require && !resumed {
            // rustls verified it during this handshake, or the handshake failed. A resumed
            // session carries the chain of its first handshake unverified: checked below
            // against today's time and CRLs, like every chain under `request`.
            return ClientCert::Verified(cert);
        }
        match webpki.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => ClientCert::Verified(cert),
            Err(e) => ClientCert::Failed {
                cert,
                reason: failure_reason(&e).to_owned(),
            },
        }
    }
}

/// A server handshake that failed on the client's certificate, with that certificate: rustls
/// keeps none of a failed handshake, and the protocol log records every certificate
/// received. The server stream returns it inside its `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CertificateRefused {
    pub error: rustls::Error,
    /// The client's leaf certificate.
    pub leaf: CertificateDer<'static>,
}

thread_local! {
    /// The leaf certificate the `require` verifier refused in the handshake step this thread
    /// is running: rustls calls the verifier inside `process_tls_records`, with no
    /// connection of its own to tell, and the server stream takes it right after that call
    /// returns the failure, with no wait in between ([`take_refused_certificate`]).
    static REFUSED: RefCell<Option<CertificateDer<'static>>> = const { RefCell::new(None) };
}

/// The certificate the `require` verifier last refused on this thread, if any (see
/// [`CertificateRefused`]); taken, so the next handshake starts with none.
pub fn take_refused_certificate() -> Option<CertificateDer<'static>> {
    REFUSED.with_borrow_mut(Option::take)
}

/// The client certificate a handshake that ended in `e` refused, when it is known.
pub fn refused_leaf(e: &std::io::Error) -> Option<&CertificateDer<'static>> {
    Some(&e.get_ref()?.downcast_ref::<CertificateRefused>()?.leaf)
}

/// Why a handshake that ended in `e` refused the peer's certificate ([`failure_reason`]), or
/// `None` when it failed for anything else.
pub fn refused_certificate(e: &std::io::Error) -> Option<&'static str> {
    let inner = e.get_ref()?;
    let error = match inner.downcast_ref::<CertificateRefused>() {
        Some(refused) => &refused.error,
        None => inner.downcast_ref::<rustls::Error>()?,
    };
    match error {
        err @ (rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            Some(failure_reason(err))
        }
        _ => None,
    }
}

/// Why a peer certificate did not verify, in a word or two for the reply and the log:
/// `expired`, `not yet valid`, `revoked`, `untrusted issuer`, `name mismatch` (a server
/// certificate valid but not for the next hop's names)...
pub fn failure_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::NoCertificatesPresented => "no client certificate",
        rustls::Error::InvalidCertificate(ce) => {
            match ce {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not yet valid"
                }
                CertificateError::Revoked => "revoked",
                CertificateError::UnknownIssuer => "untrusted issuer",
                CertificateError::BadSignature => "bad signature",
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => "not for client authentication",
                CertificateError::BadEncoding => "malformed",
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "name mismatch",
                _ => "invalid",
            }
        }
        _ => "invalid",
    }
}

/// The verifier rustls is given, around the WebPki one over `trust`, which checks the
/// handshake signature either way (the client proves it holds the certificate's key):
/// - `require` (`mandatory`): a certificate that verifies is required; one it refuses is
///   kept for the protocol log ([`CertificateRefused`]);
/// - `request`: offered, optional, any chain accepted at the TLS layer (judged after the
///   handshake, [`ClientAuth::client_cert`]).
#[derive(Debug)]
struct Verifier {
    webpki: Arc<dyn ClientCertVerifier>,
    mandatory: bool,
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !self.mandatory {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now);
        if verified.is_err() {
            let leaf = end_entity.clone().into_owned();
            REFUSED.with_borrow_mut(|refused| *refused = Some(leaf));
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether a CA above `leaf` may be name-constrained: an intermediate of the chain carries
/// nameConstraints, or a cert of it was issued by one of the `fenced_anchors` (subjects of
/// name-constrained anchors), or a cert of it cannot be read. webpki checks the constraints
/// against the subjectAltName only, so the common name of a leaf without one is nothing such
/// a CA vouched for: a CA fenced to `partner.test` could otherwise name `bank.test` there.
/// Erring towards "fenced" only costs the fallback.
fn fenced(leaf: &[u8], intermediates: &[CertificateDer<'_>], fenced_anchors: &[Vec<u8>]) -> bool {
    // An anchor's subject is the Name's contents; a certificate's issuer, the whole Name.
    let by_fenced_anchor = |issuer: &[u8]| {
        fenced_anchors.iter().any(|subject| {
            issuer == subject.as_slice()
                || (issuer.ends_with(subject) && issuer.len() - subject.len() <= 5)
        })
    };
    let chain = std::iter::once(leaf).chain(intermediates.iter().map(|c| c.as_ref()));
    chain.enumerate().any(|(i, der)| {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return true;
        };
        let constrained = i > 0
            && cert
                .extensions()
                .iter()
                .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS);
        constrained || by_fenced_anchor(cert.issuer().as_raw())
    })
}

/// The facts of a client's leaf certificate, as plain data for the core.
pub fn peer_cert(der: &[u8]) -> Result<PeerCert, String> {
    let info = CertInfo::from_der(der)?;
    let (_, x509) = X509Certificate::from_der(der).map_err(|e| format!("malformed: {e}"))?;
    // Only names a DNS name can be: anything with a control character or over 253 octets
    // names nothing (and must not reach a log or a reply).
    let dns_name =
        |s: &str| (s.len() <= 253 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_owned());
    let san = x509.subject_alternative_name();
    let dns_names = match &san {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => dns_name(dns),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    // RFC 6125 §6.4.4: the CN only when there is no subjectAltName at all (one with only
    // e-mail or URI names is no licence to fall back on it).
    let common_name = match san {
        Ok(None) => x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .and_then(dns_name),
        _ => None,
    };
    Ok(PeerCert {
        subject: info.subject,
        issuer: info.issuer,
        serial: info.serial,
        sha1: info.sha1,
        sha256: info.sha256,
        dns_names,
        common_name,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}
