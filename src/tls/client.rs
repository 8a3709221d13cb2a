//! The TLS client of an originate listener: the sidecar connects to the next hop and does
//! STARTTLS as the client (SPEC §3, outbound policy levels).
//!
//! The handshake never fails for certificate reasons: rustls is given a verifier that records
//! nothing and accepts any server chain, the handshake signatures still checked with the
//! provider's algorithms (so the peer proves it holds the key of the certificate it sent).
//! Whether that certificate is good enough is the policy's decision (`may` and `encrypt`
//! do not look, `verify` and `domain-secure` do, `enforce: false` logs and goes on), taken by
//! the core after the handshake from what [`ClientTls::judge_server_cert`] reports. So is
//! whether ours went (`domain-secure`, mutual TLS), from what [`CertRecord`] recorded: a
//! TLS client sends its certificate only when the server asks for one.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use smtp_core::session::ClientCert;
use smtp_core::session::OurCert;

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
    /// What a `domain-secure` handshake (mutual TLS) starts from: no resumption. Each uses a
    /// copy whose certificate resolver gives `certified_key` and records whether it went
    /// ([`ClientTls::for_handshake`]).
    mutual: Arc<ClientConfig>,
    /// `client_certificate` as it is presented; `None`: none configured.
    certified_key: Option<Arc<CertifiedKey>>,
    /// The chain verifier over `trust` (anchors and CRLs) used after the handshake; `None`:
    /// `trust` has no anchors, so no chain verifies.
    webpki: Option<Arc<WebPkiServerVerifier>>,
}

impl ClientTls {
    /// The configurations: TLS 1.2 and 1.3 (or 1.3 only), SNI, no ALPN. Without a client
    /// certificate, resumption with rustls's in-memory session cache; with one
    /// (`domain-secure`), no resumption: a resumed handshake sends no certificate (the
    /// server has no CertificateRequest to send in one), so it could never show that the
    /// next hop asked for ours and got it, and a ticket from a session that did not get it
    /// would look the same. Refusing every resumed session instead would fail every
    /// delivery after the first to a next hop; domain-secure partners are few, and a full
    /// handshake each is the price of knowing.
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
                Some(resolver) => {
                    let mut config = builder.with_client_cert_resolver(resolver);
                    config.resumption = Resumption::disabled();
                    config
                }
            };
            config.alpn_protocols = Vec::new();
            config.enable_sni = true;
            Ok::<_, TlsError>(Arc::new(config))
        };
        let anonymous = build(None)?;
        let certified_key = client_cert.map(|cert| Arc::clone(&cert.certified_key));
        // Its resolver is replaced in each handshake's copy.
        let mutual = build(Some(Arc::new(Recording {
            key: None,
            record: CertRecord::new(false),
        })))?;
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
            mutual,
            certified_key,
            webpki,
        })
    }

    /// For tests: the configuration of a handshake, what it records left out; without a
    /// configured certificate the anonymous one either way.
    #[cfg(test)]
    pub fn config(&self, present_certificate: bool) -> Arc<ClientConfig> {
        let present = present_certificate && self.certified_key.is_some();
        self.for_handshake(present).0
    }

    /// The configuration of one next hop handshake. Without `present_certificate`, the shared
    /// anonymous one. With it (`domain-secure`), a configuration of this handshake's own (a
    /// copy: its parts are shared) whose certificate resolver records whether the next hop
    /// asked for a certificate and whether ours went, read with [`CertRecord::our_cert`]
    /// once the handshake is done. rustls sends a client certificate only in reply to a
    /// CertificateRequest, so "configured" is not "presented".
    pub fn for_handshake(
        &self,
        present_certificate: bool,
    ) -> (Arc<ClientConfig>, Option<CertRecord>) {
        if !present_certificate {
            return (Arc::clone(&self.anonymous), None);
        }
        let record = CertRecord::new(self.certified_key.is_some());
        let mut config = ClientConfig::clone(&self.mutual);
        config.client_auth_cert_resolver = Arc::new(Recording {
            key: self.certified_key.clone(),
            record: record.clone(),
        });
        (Arc::new(config), Some(record))
    }

    /// The fatal alert a TLS peer sent, by its RFC 8446 name (`certificate_required`,
    /// `unknown_ca`, `bad_certificate`...), when `e` is the error of a read that failed on
    /// one (tokio-rustls hands rustls's error inside the `io::Error`); `None` for anything
    /// else: a reset, a close without close_notify, a record we could not read. The driver's
    /// test for [`smtp_core::outbound::Session::handle_tls_alert`].
    pub fn received_alert(e: &std::io::Error) -> Option<&'static str> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(alert) => Some(alert_name(u8::from(*alert))),
            _ => None,
        }
    }

    /// For tests: whether a client certificate is configured (what `config(true)` can
    /// present).
    #[cfg(test)]
    pub fn has_client_certificate(&self) -> bool {
        self.certified_key.is_some()
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

/// What a `domain-secure` handshake's certificate resolver saw, shared with the driver that
/// reads it once the handshake is done.
#[derive(Debug, Clone)]
pub struct CertRecord {
    seen: Arc<AtomicU8>,
    /// There was a certificate to give.
    configured: bool,
}

/// The next hop sent a CertificateRequest (rustls asked the resolver).
const ASKED: u8 = 1;
/// Ours went in reply: the resolver gave a certificate whose key can sign with one of the
/// schemes the next hop accepts (what rustls needs to send it rather than an empty one).
const SENT: u8 = 2;

impl CertRecord {
    fn new(configured: bool) -> CertRecord {
        CertRecord {
            seen: Arc::default(),
            configured,
        }
    }

    /// Whether ours went in the handshake, and if not, why. Without a certificate to give,
    /// whether the next hop asked or not, there was none to present (what the operator has
    /// to fix first).
    pub fn our_cert(&self) -> OurCert {
        let seen = self.seen.load(Ordering::Acquire);
        if seen & SENT != 0 {
            OurCert::Sent
        } else if seen & ASKED != 0 || !self.configured {
            OurCert::NoneToPresent
        } else {
            OurCert::NotRequested
        }
    }

    fn note(&self, what: u8) {
        self.seen.fetch_or(what, Ordering::AcqRel);
    }
}

/// The certificate resolver of one `domain-secure` handshake: gives `key` (if any) when the
/// next hop asks, and records that it asked and whether ours went.
#[derive(Debug)]
struct Recording {
    key: Option<Arc<CertifiedKey>>,
    record: CertRecord,
}

impl ResolvesClientCert for Recording {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.record.note(ASKED);
        let key = self.key.as_ref()?;
        // rustls sends the certificate only if its key signs with a scheme the next hop
        // accepts (an empty Certificate otherwise): the same test, so SENT means it went.
        if key.key.choose_scheme(sigschemes).is_some() {
            self.record.note(SENT);
        }
        Some(Arc::clone(key))
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// A TLS alert's name as RFC 8446 §6 (and the IANA registry) spell it.
fn alert_name(code: u8) -> &'static str {
    match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => "unknown",
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

/// What a `domain-secure` handshake records of our certificate, against in-memory rustls next
/// hops: sent only when asked (and configured), no resumption, and the alert a TLS 1.3 next
/// hop refuses ours with after our handshake has completed.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::KeyPair;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
    use smtp_core::session::OurCert;

    use super::{server_name, ClientTls};
    use crate::config::TlsVersion;
    use crate::tls::test_util::{leaf_params, pump, Ca, TempDir};
    use crate::tls::{LoadedCert, Trust};

    impl Ca {
        /// A leaf for `host`: its chain, PEM and key.
        fn leaf_parts(&self, host: &str) -> (Vec<CertificateDer<'static>>, String, KeyPair) {
            let key = KeyPair::generate().expect("key");
            let cert = leaf_params(host)
                .signed_by(&key, &self.issuer)
                .expect("leaf");
            (vec![cert.der().clone()], cert.pem(), key)
        }
    }

    /// How a next hop treats client certificates.
    enum Auth<'a> {
        None,
        /// Asked for, not required.
        Request(&'a Ca),
        Require(&'a Ca),
    }

    fn next_hop(ca: &Ca, auth: Auth<'_>, tls13_only: bool) -> Arc<ServerConfig> {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(versions)
            .expect("versions");
        let verifier = |ca: &Ca| {
            WebPkiClientVerifier::builder_with_provider(ca.roots(), crate::tls::provider())
        };
        let builder = match auth {
            Auth::None => builder.with_no_client_auth(),
            Auth::Request(ca) => builder.with_client_cert_verifier(
                verifier(ca)
                    .allow_unauthenticated()
                    .build()
                    .expect("verifier"),
            ),
            Auth::Require(ca) => {
                builder.with_client_cert_verifier(verifier(ca).build().expect("verifier"))
            }
        };
        let (chain, _, key) = ca.leaf_parts("mx.example.net");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(builder.with_single_cert(chain, key).expect("cert"))
    }

    fn trust(ca: &Ca) -> Trust {
        Trust {
            roots: ca.roots(),
            crls: Vec::new(),
            hints: Vec::new(),
            summary: Default::default(),
        }
    }

    /// Our `client_certificate`, issued by `ca`, as the store loads it.
    fn ours(ca: &Ca, dir: &TempDir) -> (LoadedCert, Vec<CertificateDer<'static>>) {
        let (chain, pem, key) = ca.leaf_parts("relay.contoso.test");
        let cert = dir.write("client.crt", pem);
        let key = dir.write("client.key", key.serialize_pem());
        let loaded = LoadedCert::from_files("internet", &cert, &key, "test").expect("loaded");
        (loaded, chain)
    }

    fn connections(
        client: Arc<ClientConfig>,
        server: &Arc<ServerConfig>,
    ) -> (ClientConnection, ServerConnection) {
        let name = server_name("mx.example.net").expect("name");
        let c = ClientConnection::new(client, name).expect("client");
        let s = ServerConnection::new(Arc::clone(server)).expect("server");
        (c, s)
    }

    /// A handshake that completes on both sides; what the record says of ours.
    fn mutual(
        tls: &ClientTls,
        server: &Arc<ServerConfig>,
    ) -> (OurCert, ServerConnection, ClientConnection) {
        let (config, record) = tls.for_handshake(true);
        let (mut c, mut s) = connections(config, server);
        pump(&mut c, &mut s).expect("handshake");
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let record = record.expect("a domain-secure handshake records");
        (record.our_cert(), s, c)
    }

    #[test]
    fn ours_is_recorded_as_sent_only_when_the_next_hop_asked_for_it() {
        let dir = TempDir::new("our-cert");
        let (them, us) = (Ca::new("Next hop CA"), Ca::new("Our CA"));
        let (loaded, chain) = ours(&us, &dir);
        let tls = ClientTls::new(&trust(&them), Some(&loaded), TlsVersion::V1_2).expect("tls");

        for auth in [Auth::Request(&us), Auth::Require(&us)] {
            let (our_cert, s, _) = mutual(&tls, &next_hop(&them, auth, false));
            assert_eq!(our_cert, OurCert::Sent);
            assert_eq!(s.peer_certificates(), Some(chain.as_slice()));
        }
        // Not asked: none goes, and the record says so.
        let (our_cert, s, _) = mutual(&tls, &next_hop(&them, Auth::None, false));
        assert_eq!(our_cert, OurCert::NotRequested);
        assert!(s.peer_certificates().is_none());

        // No certificate configured: asked or not, none to present.
        let bare = ClientTls::new(&trust(&them), None, TlsVersion::V1_2).expect("tls");
        for auth in [Auth::None, Auth::Request(&us)] {
            let (our_cert, s, _) = mutual(&bare, &next_hop(&them, auth, false));
            assert_eq!(our_cert, OurCert::NoneToPresent);
            assert!(s.peer_certificates().is_none());
        }

        // Other levels: the shared anonymous configuration, nothing recorded.
        let (config, record) = tls.for_handshake(false);
        assert!(record.is_none());
        assert!(Arc::ptr_eq(&config, &tls.config(false)));
    }

    /// A resumed handshake carries no certificate: domain-secure handshakes are never
    /// resumed, so each one shows whether ours went.
    #[test]
    fn domain_secure_handshakes_are_not_resumed() {
        let dir = TempDir::new("our-cert-resumption");
        let (them, us) = (Ca::new("Next hop CA"), Ca::new("Our CA"));
        let (loaded, _) = ours(&us, &dir);
        let tls = ClientTls::new(&trust(&them), Some(&loaded), TlsVersion::V1_2).expect("tls");
        let server = next_hop(&them, Auth::Require(&us), false);
        for _ in 0..3 {
            let (our_cert, _, c) = mutual(&tls, &server);
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
            assert_eq!(our_cert, OurCert::Sent);
        }
    }

    /// TLS 1.3: our side of the handshake completes before the next hop judges our
    /// certificate; its refusal comes as an alert on the next read, which the driver names.
    #[test]
    fn a_tls13_refusal_of_ours_is_an_alert_after_our_handshake() {
        let dir = TempDir::new("our-cert-refused");
        let (them, us, other) = (Ca::new("Next hop CA"), Ca::new("Our CA"), Ca::new("Other"));
        let (loaded, _) = ours(&us, &dir);
        let tls = ClientTls::new(&trust(&them), Some(&loaded), TlsVersion::V1_2).expect("tls");
        let (config, record) = tls.for_handshake(true);
        let server = next_hop(&them, Auth::Require(&other), true);
        let (mut c, mut s) = connections(config, &server);
        let refused = pump(&mut c, &mut s).expect_err("the next hop refuses ours");
        assert!(
            matches!(refused, rustls::Error::InvalidCertificate(_)),
            "{refused:?}"
        );
        assert!(!c.is_handshaking(), "our side of the handshake completed");
        assert_eq!(record.expect("recorded").our_cert(), OurCert::Sent);
        // Its alert, read by us as tokio-rustls reads: the rustls error inside an io::Error.
        let mut alert = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut alert).expect("server write");
        }
        c.read_tls(&mut alert.as_slice()).expect("client read");
        let err = c.process_new_packets().expect_err("an alert");
        let err = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(ClientTls::received_alert(&err), Some("unknown_ca"));

        // Anything else is not an alert.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(ClientTls::received_alert(&reset), None);
        let ours =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(ClientTls::received_alert(&ours), None);
    }

    #[test]
    fn alert_names_are_rfc_8446s() {
        for (alert, name) in [
            (
                rustls::AlertDescription::CertificateRequired,
                "certificate_required",
            ),
            (rustls::AlertDescription::BadCertificate, "bad_certificate"),
            (rustls::AlertDescription::UnknownCA, "unknown_ca"),
            (rustls::AlertDescription::AccessDenied, "access_denied"),
            (
                rustls::AlertDescription::CertificateExpired,
                "certificate_expired",
            ),
            (
                rustls::AlertDescription::HandshakeFailure,
                "handshake_failure",
            ),
            (rustls::AlertDescription::Unknown(200), "unknown"),
        ] {
            let err = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(alert),
            );
            assert_eq!(ClientTls::received_alert(&err), Some(name));
        }
    }
}
