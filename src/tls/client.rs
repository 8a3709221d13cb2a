//! The TLS client of an originate listener: the sidecar connects to the next hop and does
//! STARTTLS as the client (SPEC §3, outbound policy levels).
//!
//! The handshake never fails for certificate reasons: rustls is given a verifier that records
//! nothing and accepts any server chain, the handshake signatures still checked with the
//! provider's algorithms (so the peer proves it holds the key of the certificate it sent).
//! Whether that certificate is good enough is the policy's decision (`may` and `encrypt`
//! do not look, `verify` and `domain-secure` do, `enforce: false` logs and goes on), taken by
//! the core after the handshake from what [`ClientTls::judge_server_cert`] reports.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use smtp_core::session::ClientCert;

use super::client_auth::{failure_reason, peer_cert};
use super::{LoadedCert, TlsError, Trust};
use crate::config::TlsVersion;

/// A name no certificate is issued for (RFC 2606 `.invalid`): verifies the chain alone when
/// the caller has no usable name, so that the outcome is the chain's fault or "name mismatch".
const NO_NAME: &str = "name.invalid";

/// The client TLS of one originate listener, built once per runtime (start and each reload).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// No client certificate.
    anonymous: Arc<ClientConfig>,
    /// With `client_certificate` (mutual TLS, `domain-secure`); `None`: none configured.
    with_cert: Option<Arc<ClientConfig>>,
    /// The chain verifier over `trust` (anchors and CRLs) used after the handshake; `None`:
    /// `trust` has no anchors, so no chain verifies.
    webpki: Option<Arc<WebPkiServerVerifier>>,
}

impl ClientTls {
    /// Both configurations: TLS 1.2 and 1.3 (or 1.3 only), SNI, no ALPN, resumption with
    /// rustls's in-memory session cache (one per configuration: a session made with a client
    /// certificate is not resumed without one).
    pub fn new(
        trust: &Trust,
        client_cert: Option<&LoadedCert>,
        min_version: TlsVersion,
    ) -> Result<ClientTls, TlsError> {
        let provider = super::provider();
        let build = |resolver: Option<Arc<dyn ResolvesClientCert>>| {
            let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(super::server::protocol_versions(min_version))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RecordOnly(Arc::clone(&provider))));
            let mut config = match resolver {
                None => builder.with_no_client_auth(),
                Some(resolver) => builder.with_client_cert_resolver(resolver),
            };
            config.alpn_protocols = Vec::new();
            config.enable_sni = true;
            Ok::<_, TlsError>(Arc::new(config))
        };
        let anonymous = build(None)?;
        let with_cert = match client_cert {
            None => None,
            Some(cert) => Some(build(Some(Arc::new(
                rustls::sign::SingleCertAndKey::from(Arc::clone(&cert.certified_key)),
            )))?),
        };
        let webpki = if trust.roots.is_empty() {
            None
        } else {
            let verifier = WebPkiServerVerifier::builder_with_provider(
                Arc::clone(&trust.roots),
                Arc::clone(&provider),
            )
            .with_crls(trust.crls.clone())
            // The same rule as for client certificates inbound: a CRL speaks for its issuer
            // only, a chain from a CA without a CRL here is unchecked, not failed.
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
            Some(verifier)
        };
        Ok(ClientTls {
            anonymous,
            with_cert,
            webpki,
        })
    }

    /// The configuration for one upstream handshake. `present_certificate`: offer the
    /// listener's `client_certificate` when the next hop asks for one (`domain-secure`);
    /// without a configured certificate this is the anonymous configuration either way.
    pub fn config(&self, present_certificate: bool) -> Arc<ClientConfig> {
        match (&self.with_cert, present_certificate) {
            (Some(with_cert), true) => Arc::clone(with_cert),
            _ => Arc::clone(&self.anonymous),
        }
    }

    /// Whether a client certificate is configured (what `config(true)` can present).
    pub fn has_client_certificate(&self) -> bool {
        self.with_cert.is_some()
    }

    /// What the next hop's certificate is worth, after the handshake: `Verified` if its chain
    /// verifies against `trust` at `now` (anchors, validity, CRLs) and it is valid for one of
    /// `names` (the MX host first, then the recipient domain; names that are neither a DNS
    /// name nor an IP address are skipped); otherwise `Failed` with one of the reasons of
    /// [`failure_reason`]: `"name mismatch"` only when the chain itself verifies. `None` if
    /// the next hop sent no certificate.
    pub fn judge_server_cert(
        &self,
        conn: &rustls::ClientConnection,
        names: &[&str],
        now: UnixTime,
    ) -> ClientCert {
        let Some((leaf, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first())
        else {
            return ClientCert::None;
        };
        self.judge_chain(leaf, intermediates, names, now)
    }

    /// [`ClientTls::judge_server_cert`] for a chain (leaf first) given directly.
    pub fn judge_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        names: &[&str],
        now: UnixTime,
    ) -> ClientCert {
        let cert = match peer_cert(leaf) {
            Ok(cert) => Box::new(cert),
            Err(_) => {
                return ClientCert::Failed {
                    cert: Box::default(),
                    reason: "malformed".to_owned(),
                }
            }
        };
        let fail = |reason: &str| ClientCert::Failed {
            cert: cert.clone(),
            reason: reason.to_owned(),
        };
        let Some(webpki) = &self.webpki else {
            return fail(failure_reason(&rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )));
        };
        let mut names: Vec<ServerName<'static>> =
            names.iter().filter_map(|n| server_name(n)).collect();
        if names.is_empty() {
            names.push(ServerName::try_from(NO_NAME).expect("a valid DNS name"));
        }
        // rustls checks the chain before the name, so a chain fault is the same whichever
        // name is tried, and a name error means the chain is fine.
        for name in &names {
            match webpki.verify_server_cert(leaf, intermediates, name, &[], now) {
                Ok(_) => return ClientCert::Verified(cert),
                Err(e) if is_name_mismatch(&e) => {}
                Err(e) => return fail(server_failure_reason(&e)),
            }
        }
        fail("name mismatch")
    }
}

/// The rustls name of a next hop, for SNI and for [`ClientTls::judge_server_cert`]: a DNS
/// name (one trailing dot, as DNS answers carry it, removed) or an IP address (bare or in
/// brackets; rustls sends no SNI for one). `None` for anything else.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

fn is_name_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// [`failure_reason`] for a server certificate: the one wording that names a side differs.
fn server_failure_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "not for server authentication",
        other => failure_reason(other),
    }
}

/// The TLS client configuration of a terminate listener's hop to its backend
/// (`backend.tls`): TLS 1.2 or 1.3, no client certificate, no SNI for an address. With
/// `verify`, the handshake itself checks the backend's chain against `trust` (anchors and
/// CRLs) and the server's host name or address from `backend.servers`, and fails otherwise;
/// without, any certificate is taken (a legacy server's self-signed one), its handshake
/// signatures still checked.
pub fn backend_config(trust: &Trust, verify: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(super::server::protocol_versions(TlsVersion::V1_2))?;
    let builder = if verify {
        if trust.roots.is_empty() {
            return Err(TlsError::Unusable(
                "backend.tls_verify needs trust anchors (trust.system_roots or trust.ca_files)",
            ));
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&trust.roots), provider)
                .with_crls(trust.crls.clone())
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordOnly(provider)))
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = Vec::new();
    Ok(Arc::new(config))
}

/// Accepts any server certificate chain at the TLS layer (it is judged after the handshake),
/// but verifies the handshake signatures with the provider's algorithms.
#[derive(Debug)]
pub(crate) struct RecordOnly(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
