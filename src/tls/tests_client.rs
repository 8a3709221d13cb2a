//! [`ClientTls`] against in-memory rustls servers with rcgen PKIs: the handshake completes
//! whatever certificate the next hop serves (the verifier only records), the handshake
//! signature is still checked, the chain is judged afterwards with the exact reasons the core
//! classifies, and the client certificate is presented only when asked for.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
    KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::version::TLS12;
use rustls::{ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection};
use smtp_core::session::ClientCert;

use super::test_util::{leaf_params, pump, Ca, TempDir};
use super::{server_name, session_tls_info, ClientAuth, ClientTls, LoadedCert, Trust};
use crate::config::{ClientCertificates, TlsVersion};

const MX: &str = "mx.example.net";
const DOMAIN: &str = "example.net";
const NAMES: [&str; 2] = [MX, DOMAIN];

impl Ca {
    /// A CA allowed to issue only for names under `permitted` (nameConstraints): a root, or
    /// with `parent`, an intermediate it signed (and its PEM, for a chain).
    fn constrained(name: &str, permitted: &str, parent: Option<&Ca>) -> (Ca, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName(permitted.into())],
            excluded_subtrees: Vec::new(),
        });
        let key = KeyPair::generate().expect("key");
        let cert = match parent {
            None => params.self_signed(&key),
            Some(parent) => params.signed_by(&key, &parent.issuer),
        }
        .expect("ca");
        let ca = Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        };
        (ca, cert.pem())
    }

    /// A leaf with no subjectAltName, only the common name `cn`, followed in its chain by
    /// `above` (PEM).
    fn common_name_only(&self, cn: &str, above: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            chain: vec![cert.der().clone()],
            pem: cert.pem() + above,
            key,
        }
    }

    /// A leaf for `host` with serial `serial`, valid from `from` to `until` (years).
    fn leaf_valid(&self, host: &str, serial: u64, from: i32, until: i32) -> Leaf {
        let mut params = leaf_params(host);
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            chain: vec![cert.der().clone()],
            pem: cert.pem(),
            key,
        }
    }

    fn leaf(&self, host: &str, serial: u64) -> Leaf {
        self.leaf_valid(host, serial, 2020, 2090)
    }

    /// A CRL of this CA revoking `serials`.
    fn crl(&self, serials: &[u64]) -> CertificateRevocationListDer<'static> {
        let revoked_certs = serials
            .iter()
            .map(|&s| RevokedCertParams {
                serial_number: SerialNumber::from(s),
                revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 6, 1),
            next_update: rcgen::date_time_ymd(2089, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("crl");
        crl.der().clone()
    }
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    pem: String,
    key: KeyPair,
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// As the store loads a `client_certificate`.
    fn loaded(&self, dir: &TempDir) -> LoadedCert {
        let cert = dir.write("client.crt", &self.pem);
        let key = dir.write("client.key", self.key.serialize_pem());
        LoadedCert::from_files("internet", &cert, &key, "test").expect("client certificate")
    }
}

fn trust(cas: &[&Ca], crls: Vec<CertificateRevocationListDer<'static>>) -> Trust {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).expect("anchor");
    }
    Trust {
        roots: Arc::new(roots),
        crls,
        hints: Vec::new(),
        summary: Default::default(),
    }
}

/// A next hop serving `leaf`, with client authentication by `client_auth`.
fn server(leaf: &Leaf, client_auth: Option<Arc<dyn ClientCertVerifier>>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &TLS12])
        .expect("versions");
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(v),
    };
    Arc::new(
        builder
            .with_single_cert(leaf.chain.clone(), leaf.key_der())
            .expect("server cert"),
    )
}

/// One handshake in memory, the client naming `host` (SNI).
fn connect(
    client: Arc<rustls::ClientConfig>,
    server: &Arc<ServerConfig>,
    host: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = server_name(host).expect("server name");
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(Arc::clone(server))?;
    pump(&mut c, &mut s)?;
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake stalled"
    );
    Ok((c, s))
}

fn now() -> UnixTime {
    UnixTime::now()
}

/// Handshake (which must succeed) and judgement of `leaf` served by a next hop, trusting `trust`.
fn judge(trust: &Trust, leaf: &Leaf, names: &[&str]) -> ClientCert {
    let tls = ClientTls::new(trust, None, TlsVersion::V1_2).expect("client tls");
    let (c, _s) = connect(tls.config(false), &server(leaf, None), MX)
        .expect("the handshake does not fail for certificate reasons");
    let judged = tls.judge_server_cert(&c, names, now());
    let cert = judged.cert().expect("a certificate is reported");
    assert_eq!(cert.dns_names, leaf_names(leaf));
    judged
}

fn leaf_names(leaf: &Leaf) -> Vec<String> {
    super::peer_cert(&leaf.chain[0])
        .expect("peer cert")
        .dns_names
}

fn reason(judged: &ClientCert) -> &str {
    match judged {
        ClientCert::Failed { reason, .. } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_cert_for_the_mx_host_verifies() {
    let ca = Ca::new("Test CA");
    let judged = judge(&trust(&[&ca], Vec::new()), &ca.leaf(MX, 1), &NAMES);
    assert!(matches!(judged, ClientCert::Verified(_)), "{judged:?}");
}

#[test]
fn a_cert_for_the_recipient_domain_only_verifies() {
    let ca = Ca::new("Test CA");
    let judged = judge(&trust(&[&ca], Vec::new()), &ca.leaf(DOMAIN, 1), &NAMES);
    assert!(matches!(judged, ClientCert::Verified(_)), "{judged:?}");
    // The domain is a name only when the caller gives it.
    let judged = judge(&trust(&[&ca], Vec::new()), &ca.leaf(DOMAIN, 1), &[MX]);
    assert_eq!(reason(&judged), "name mismatch");
}

#[test]
fn a_wrong_name_from_a_trusted_ca_is_a_name_mismatch() {
    let ca = Ca::new("Test CA");
    let judged = judge(
        &trust(&[&ca], Vec::new()),
        &ca.leaf("mail.other.test", 1),
        &NAMES,
    );
    assert_eq!(reason(&judged), "name mismatch");
    // No usable name at all (not a DNS name, not an IP): still the name, not the chain.
    let judged = judge(
        &trust(&[&ca], Vec::new()),
        &ca.leaf(MX, 1),
        &["not a name", ""],
    );
    assert_eq!(reason(&judged), "name mismatch");
    // A trailing dot, as MX answers carry it, is the same name.
    let judged = judge(
        &trust(&[&ca], Vec::new()),
        &ca.leaf(MX, 1),
        &["mx.example.net."],
    );
    assert!(matches!(judged, ClientCert::Verified(_)), "{judged:?}");
}

#[test]
fn an_expired_or_future_cert_says_so() {
    let ca = Ca::new("Test CA");
    let t = trust(&[&ca], Vec::new());
    assert_eq!(
        reason(&judge(&t, &ca.leaf_valid(MX, 1, 2019, 2020), &NAMES)),
        "expired"
    );
    assert_eq!(
        reason(&judge(&t, &ca.leaf_valid(MX, 1, 2080, 2090), &NAMES)),
        "not yet valid"
    );
    // The chain's fault wins over a wrong name.
    assert_eq!(
        reason(&judge(
            &t,
            &ca.leaf_valid("wrong.test", 1, 2019, 2020),
            &NAMES
        )),
        "expired"
    );
}

#[test]
fn an_untrusted_ca_is_an_untrusted_issuer() {
    let ca = Ca::new("Test CA");
    let other = Ca::new("Other CA");
    let judged = judge(&trust(&[&ca], Vec::new()), &other.leaf(MX, 1), &NAMES);
    assert_eq!(reason(&judged), "untrusted issuer");
    // No anchors at all: nothing verifies, for the same reason.
    let judged = judge(&trust(&[], Vec::new()), &ca.leaf(MX, 1), &NAMES);
    assert_eq!(reason(&judged), "untrusted issuer");
}

#[test]
fn a_revoked_cert_is_revoked_and_a_ca_without_crl_is_unchecked() {
    let ca = Ca::new("Test CA");
    let other = Ca::new("Other CA");
    let t = trust(&[&ca, &other], vec![ca.crl(&[7])]);
    assert_eq!(reason(&judge(&t, &ca.leaf(MX, 7), &NAMES)), "revoked");
    let judged = judge(&t, &ca.leaf(MX, 8), &NAMES);
    assert!(matches!(judged, ClientCert::Verified(_)), "{judged:?}");
    // `other` has no CRL here: its certificates are not "unknown status" failures.
    let judged = judge(&t, &other.leaf(MX, 7), &NAMES);
    assert!(matches!(judged, ClientCert::Verified(_)), "{judged:?}");
}

#[test]
fn judged_at_the_given_time() {
    let ca = Ca::new("Test CA");
    let t = trust(&[&ca], Vec::new());
    let leaf = ca.leaf_valid(MX, 1, 2019, 2020);
    let tls = ClientTls::new(&t, None, TlsVersion::V1_2).expect("client tls");
    let (c, _s) = connect(tls.config(false), &server(&leaf, None), MX).expect("handshake");
    let mid_2019 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_561_939_200));
    let judged = tls.judge_server_cert(&c, &NAMES, mid_2019);
    assert!(matches!(judged, ClientCert::Verified(_)), "{judged:?}");
}

#[test]
fn the_handshake_signature_is_still_checked() {
    let ca = Ca::new("Test CA");
    let good = ca.leaf(MX, 1);
    let impostor = ca.leaf(MX, 2);
    // The right certificate, someone else's key: the server cannot prove it holds the key.
    let lying = Leaf {
        key: impostor.key,
        ..good
    };
    let key = super::provider()
        .key_provider
        .load_private_key(lying.key_der())
        .expect("key");
    let certified = Arc::new(rustls::sign::CertifiedKey::new(lying.chain.clone(), key));
    let tls = ClientTls::new(&trust(&[&ca], Vec::new()), None, TlsVersion::V1_2).expect("tls");
    for version in [&rustls::version::TLS13, &TLS12] {
        let server = Arc::new(
            ServerConfig::builder_with_provider(super::provider())
                .with_protocol_versions(&[version])
                .expect("versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(Arc::clone(
                    &certified,
                )))),
        );
        let err = connect(tls.config(false), &server, MX).expect_err("a forged signature fails");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature),
            "{version:?}"
        );
    }
}

#[test]
fn the_client_certificate_is_presented_only_when_asked() {
    let dir = TempDir::new("client-cert");
    let server_ca = Ca::new("Next hop CA");
    let client_ca = Ca::new("Our CA");
    let ours = client_ca.leaf("relay.contoso.test", 3);
    let loaded = ours.loaded(&dir);
    let their_trust = trust(&[&client_ca], Vec::new());
    let require = ClientAuth::new(ClientCertificates::Require, &their_trust)
        .expect("require")
        .verifier();
    let request = ClientAuth::new(ClientCertificates::Request, &their_trust)
        .expect("request")
        .verifier();
    let leaf = server_ca.leaf(MX, 1);
    let tls = ClientTls::new(
        &trust(&[&server_ca], Vec::new()),
        Some(&loaded),
        TlsVersion::V1_2,
    )
    .expect("client tls");
    assert!(tls.has_client_certificate());

    let (c, s) = connect(tls.config(true), &server(&leaf, require.clone()), MX)
        .expect("mutual TLS handshake");
    let presented = s.peer_certificates().expect("the server got a certificate");
    assert_eq!(presented, ours.chain.as_slice());
    assert!(matches!(
        tls.judge_server_cert(&c, &NAMES, now()),
        ClientCert::Verified(_)
    ));

    let (_c, s) = connect(tls.config(false), &server(&leaf, request), MX).expect("handshake");
    assert!(s.peer_certificates().is_none());
    // A next hop that requires one refuses us without it.
    let err = connect(tls.config(false), &server(&leaf, require.clone()), MX)
        .expect_err("no client certificate");
    // (the first failure is the server's)
    assert_eq!(err, rustls::Error::NoCertificatesPresented);

    // Without a configured certificate, config(true) presents none.
    let bare = ClientTls::new(&trust(&[&server_ca], Vec::new()), None, TlsVersion::V1_2)
        .expect("client tls");
    assert!(!bare.has_client_certificate());
    assert!(Arc::ptr_eq(&bare.config(true), &bare.config(false)));
    let err = connect(bare.config(true), &server(&leaf, require), MX).expect_err("none sent");
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
}

#[test]
fn sni_versions_no_alpn_and_resumption() {
    let ca = Ca::new("Test CA");
    let t = trust(&[&ca], Vec::new());
    let leaf = ca.leaf("wrong.test", 1);
    let next_hop = server(&leaf, None);
    let tls = ClientTls::new(&t, None, TlsVersion::V1_2).expect("client tls");
    let (c, s) = connect(tls.config(false), &next_hop, MX).expect("handshake");
    assert_eq!(s.server_name(), Some(MX));
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
    assert!(c.alpn_protocol().is_none());
    assert_eq!(session_tls_info(&c).0, "TLSv1.3");
    assert_eq!(session_tls_info(&c), session_tls_info(&s));
    // Resumed: the chain of the first handshake is still there to judge.
    let (c, _s) = connect(tls.config(false), &next_hop, MX).expect("resumption");
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(
        reason(&tls.judge_server_cert(&c, &NAMES, now())),
        "name mismatch"
    );
    // An IP next hop: no SNI.
    let (_c, s) = connect(tls.config(false), &next_hop, "192.0.2.1").expect("handshake");
    assert_eq!(s.server_name(), None);

    // A 1.3 floor refuses a 1.2-only next hop.
    let old = Arc::new(
        ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain.clone(), leaf.key_der())
            .expect("cert"),
    );
    let (c, _s) = connect(tls.config(false), &old, MX).expect("TLS 1.2");
    assert_eq!(session_tls_info(&c).0, "TLSv1.2");
    let floor = ClientTls::new(&t, None, TlsVersion::V1_3).expect("client tls");
    assert!(connect(floor.config(false), &old, MX).is_err());
}

#[test]
fn server_names() {
    let dns = |s: &str| Some(ServerName::try_from(s.to_owned()).expect("name"));
    assert_eq!(server_name("mx.example.net."), dns("mx.example.net"));
    assert_eq!(server_name("mx.example.net"), dns("mx.example.net"));
    assert_eq!(server_name("192.0.2.1"), dns("192.0.2.1"));
    assert_eq!(server_name("[2001:db8::1]"), dns("2001:db8::1"));
    assert!(matches!(
        server_name("2001:db8::1"),
        Some(ServerName::IpAddress(_))
    ));
    assert_eq!(server_name("not a name"), None);
    assert_eq!(server_name(""), None);
}

/// RFC 6125's fallback to the common name of a certificate without a subjectAltName is not
/// taken when a CA of its chain is name-constrained: webpki checks the constraints against
/// the subjectAltName only, so a CA fenced to `partner.test` could otherwise vouch for
/// `CN=bank.test` (a domain_secure partner). Unconstrained, the name is kept.
#[test]
fn a_name_constrained_chain_gives_no_common_name() {
    let server_ca = Ca::new("Server CA");
    let leaf = server_ca.leaf(MX, 1);
    let open = Ca::new("Partner CA");
    let (fenced_root, _) = Ca::constrained("Fenced CA", "partner.test", None);
    let (fenced_sub, sub_pem) = Ca::constrained("Fenced Sub CA", "partner.test", Some(&open));
    let cases: [(&Ca, &Ca, &str, Option<&str>); 3] = [
        (&open, &open, "", Some("bank.test")),
        (&fenced_root, &fenced_root, "", None),
        (&fenced_sub, &open, &sub_pem, None),
    ];
    for (i, (issuer, anchor, above, want)) in cases.into_iter().enumerate() {
        let dir = TempDir::new(&format!("cn-constrained-{i}"));
        let client = issuer.common_name_only("bank.test", above).loaded(&dir);
        let auth = ClientAuth::new(ClientCertificates::Require, &trust(&[anchor], Vec::new()))
            .expect("require");
        let tls = ClientTls::new(
            &trust(&[&server_ca], Vec::new()),
            Some(&client),
            TlsVersion::V1_2,
        )
        .expect("client tls");
        let (_c, s) = connect(tls.config(true), &server(&leaf, auth.verifier()), MX)
            .expect("the chain verifies");
        match auth.client_cert(&s) {
            ClientCert::Verified(cert) => {
                assert_eq!(cert.common_name.as_deref(), want, "case {i}");
                assert!(cert.dns_names.is_empty());
            }
            other => panic!("case {i}: {other:?}"),
        }
    }
}
