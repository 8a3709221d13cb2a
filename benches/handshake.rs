//! What a client certificate costs a terminating listener: full TLS 1.3 handshakes in memory
//! (one rustls `ClientConnection` and one `ServerConnection`, records moved between them by
//! hand, no sockets) against the server configuration the binary builds, i.e.
//! `smtp_sidecar::tls::server_config` with the certificate resolver of a `certificate.name`
//! listener and the verifier of `ClientAuth::new(policy.client_certificates, &Trust)`, and after
//! each handshake the `ClientAuth::client_cert` call every session makes (for `request` that is
//! where the chain is verified).
//!
//! The server certificate is ECDSA P-256. The partner PKI is made with rcgen at start: a root
//! (in `trust.ca_files`), an intermediate, the partner's leaf (sent as leaf + intermediate), and
//! the intermediate's CRL (in `trust.crl_files`) revoking another certificate; one case loads a
//! CRL with 10,000 entries instead. The files are written to a scratch directory, loaded with
//! `CertStore::load` and `Trust::load` as `run` loads them, then removed.
//!
//! The client offers TLS 1.3 with X25519 and AES-128-GCM only and does not check the server's
//! certificate or signature, like the load generator of `../shared/bench`; resumption is off
//! unless the case says `resumed`.
//!
//! Groups:
//! - `handshake/both/CASE`: wall time of one whole exchange, both sides' CPU, on one thread:
//!   ClientHello to the client reading the server's session ticket, plus `client_cert`.
//! - `handshake/server/CASE`: the same loop, timing only the server's calls
//!   (`ServerConnection::new`, `read_tls`, `process_new_packets`, `write_tls`, `client_cert`).
//! - `client_cert/CASE`: `ClientAuth::client_cert` alone on a finished connection (parsing the
//!   leaf for the session, plus the WebPki chain and CRL check where the mode does it there).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup, ServerConfig,
    ServerConnection, SignatureScheme,
};
use smtp_core::inbound::ClientCert;
use smtp_sidecar::config::{
    CertificateConfig, CertificateSelection, ClientCertificates, TlsVersion, TrustConfig,
};
use smtp_sidecar::tls::{server_config, CertPlan, CertStore, ClientAuth, Trust};
use std::hint::black_box;

const HOST: &str = "mx.bench.test";

/// Revoked entries in the large CRL.
const BIG_CRL: usize = 10_000;

/// The PKI of the bench, loaded the way `run` loads it.
struct Pki {
    /// The listener's certificate (ECDSA P-256), as `certificate.name` selects it.
    server_cert: CertPlan,
    /// Root anchored, the intermediate's CRL with one entry.
    trust: Trust,
    /// The same root, the intermediate's CRL with `BIG_CRL` entries.
    trust_big_crl: Trust,
    /// The partner's leaf and the intermediate, and the leaf's key.
    client_chain: Vec<CertificateDer<'static>>,
    client_key: Vec<u8>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Bench Partner");
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

fn leaf_params(name: &str, serial: u32, client: bool) -> CertificateParams {
    let mut p = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(SerialNumber::from(u64::from(serial)));
    p.use_authority_key_identifier_extension = true;
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2090, 1, 1);
    p
}

/// The intermediate's CRL revoking `entries` serials, none of them the partner's.
fn crl(issuer: &Issuer<'_, KeyPair>, entries: usize) -> String {
    let revoked_certs = (0..entries)
        .map(|i| RevokedCertParams {
            serial_number: SerialNumber::from(1_000_000 + i as u64),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2089, 6, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .expect("sign CRL")
    .pem()
    .expect("CRL PEM")
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "smtp-sidecar-bench-handshake-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let write = |name: &str, contents: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("write PKI file");
            path
        };

        // The listener's own certificate: ECDSA P-256 (rcgen's default algorithm).
        let server_key = KeyPair::generate().expect("server key");
        let server = leaf_params(HOST, 1, false)
            .self_signed(&server_key)
            .expect("server cert");
        let store = CertStore::load(&[CertificateConfig {
            name: "bench".to_owned(),
            cert: write("server.pem", &server.pem()),
            key: write("server.key", &server_key.serialize_pem()),
        }])
        .expect("certificate store");
        let server_cert = CertPlan::new(
            &store,
            &CertificateSelection::Name("bench".to_owned()),
            HOST,
        );

        let root_key = KeyPair::generate().expect("root key");
        let root_params = ca_params("Bench Partner Root CA");
        let root_cert = root_params.self_signed(&root_key).expect("root cert");
        let root = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate().expect("intermediate key");
        let mut inter_params = ca_params("Bench Partner Issuing CA");
        inter_params.use_authority_key_identifier_extension = true;
        let inter_cert = inter_params
            .signed_by(&inter_key, &root)
            .expect("intermediate cert");
        let inter = Issuer::new(inter_params, inter_key);
        let client_key = KeyPair::generate().expect("client key");
        let client = leaf_params("mail.partner.test", 2, true)
            .signed_by(&client_key, &inter)
            .expect("client cert");

        let root_file = write("root.pem", &root_cert.pem());
        let trust_with = |crl_file: PathBuf| {
            Trust::load(&TrustConfig {
                system_roots: false,
                ca_files: vec![root_file.clone()],
                crl_files: vec![crl_file],
            })
            .expect("trust")
        };
        let trust = trust_with(write("small.crl.pem", &crl(&inter, 1)));
        let trust_big_crl = trust_with(write("big.crl.pem", &crl(&inter, BIG_CRL)));
        let _ = std::fs::remove_dir_all(&dir);
        for (what, t) in [("small", &trust), ("large", &trust_big_crl)] {
            let sizes: Vec<usize> = t.crls.iter().map(|c| c.as_ref().len()).collect();
            println!("{what} CRL: {sizes:?} bytes DER");
        }
        Pki {
            server_cert,
            trust,
            trust_big_crl,
            client_chain: vec![client.der().clone(), inter_cert.der().clone()],
            client_key: client_key.serialize_der(),
        }
    }
}

/// Accepts the server's certificate and handshake signature unchecked, as the load generator
/// does by default, so the client's share of the time is small.
#[derive(Debug)]
struct AcceptAny(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// A TLS 1.3 client (X25519, AES-128-GCM) presenting `identity` when asked, if given.
fn client(pki: &Pki, with_cert: bool, resume: bool) -> Arc<ClientConfig> {
    let mut provider = (*smtp_sidecar::tls::provider()).clone();
    provider
        .kx_groups
        .retain(|g| g.name() == NamedGroup::X25519);
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("client versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)));
    let mut config = if with_cert {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.client_key.clone()));
        builder
            .with_client_auth_cert(pki.client_chain.clone(), key)
            .expect("client identity")
    } else {
        builder.with_no_client_auth()
    };
    config.resumption = if resume {
        Resumption::in_memory_sessions(16)
    } else {
        Resumption::disabled()
    };
    Arc::new(config)
}

/// One listener configuration and one kind of client.
struct Case {
    name: &'static str,
    auth: ClientAuth,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The client presents the partner's chain when asked.
    with_cert: bool,
    resumed: bool,
}

impl Case {
    fn new(
        pki: &Pki,
        name: &'static str,
        mode: ClientCertificates,
        big_crl: bool,
        with_cert: bool,
        resumed: bool,
    ) -> Case {
        let trust = if big_crl {
            &pki.trust_big_crl
        } else {
            &pki.trust
        };
        let auth = ClientAuth::new(mode, trust).expect("client auth");
        let resolver = pki.server_cert.resolver().expect("resolver");
        let server = server_config(resolver, TlsVersion::V1_2, auth.verifier()).expect("server");
        Case {
            name,
            auth,
            server,
            client: client(pki, with_cert, resumed),
            with_cert,
            resumed,
        }
    }
}

/// Where the server's time goes in one exchange.
#[derive(Default)]
struct ServerTime(Duration);

impl ServerTime {
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0 += start.elapsed();
        out
    }
}

/// The bytes each side wrote in one exchange.
#[derive(Default, Debug, Clone, Copy)]
struct Wire {
    client: usize,
    server: usize,
}

/// One handshake to completion, the session ticket delivered, then `client_cert`.
fn exchange(case: &Case, time: &mut ServerTime) -> (ServerConnection, ClientCert, Wire) {
    let name = ServerName::try_from(HOST).expect("server name");
    let mut c = ClientConnection::new(Arc::clone(&case.client), name).expect("client");
    let mut s = time
        .run(|| ServerConnection::new(Arc::clone(&case.server)))
        .expect("server");
    let mut wire = Wire::default();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut moved = false;
        while c.wants_write() {
            buf.clear();
            c.write_tls(&mut buf).expect("client write_tls");
            wire.client += buf.len();
            moved = true;
            let mut rd = buf.as_slice();
            time.run(|| {
                while !rd.is_empty() {
                    s.read_tls(&mut rd).expect("server read_tls");
                }
                s.process_new_packets().expect("server handshake");
            });
        }
        while time.run(|| s.wants_write()) {
            buf.clear();
            time.run(|| s.write_tls(&mut buf))
                .expect("server write_tls");
            wire.server += buf.len();
            moved = true;
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("client read_tls");
            }
            c.process_new_packets().expect("client handshake");
        }
        if !moved {
            break;
        }
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake stalled"
    );
    let cert = time.run(|| case.auth.client_cert(&s));
    (s, cert, wire)
}

fn handshakes(c: &mut Criterion) {
    let pki = Pki::new();
    use ClientCertificates::{None as Off, Request, Require};
    let cases = [
        Case::new(&pki, "none", Off, false, false, false),
        Case::new(&pki, "request_no_cert", Request, false, false, false),
        Case::new(&pki, "request_cert", Request, false, true, false),
        Case::new(&pki, "require_cert", Require, false, true, false),
        Case::new(&pki, "require_cert_crl10k", Require, true, true, false),
        Case::new(&pki, "request_cert_crl10k", Request, true, true, false),
        Case::new(&pki, "none_resumed", Off, false, false, true),
        Case::new(&pki, "request_cert_resumed", Request, false, true, true),
    ];

    // Each case once first: it does what its name says, and what it puts on the wire.
    for case in &cases {
        let mut t = ServerTime::default();
        let (s, cert, wire) = exchange(case, &mut t);
        let (s, cert, wire) = if case.resumed {
            // The first exchange stored a ticket; this one uses it.
            let (s2, cert2, wire2) = exchange(case, &mut t);
            assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full));
            (s2, cert2, wire2)
        } else {
            (s, cert, wire)
        };
        let expected = if case.resumed {
            HandshakeKind::Resumed
        } else {
            HandshakeKind::Full
        };
        assert_eq!(s.handshake_kind(), Some(expected), "{}", case.name);
        assert_eq!(
            s.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3),
            "{}",
            case.name
        );
        assert_eq!(
            matches!(cert, ClientCert::Verified(_)),
            case.with_cert,
            "{}: {cert:?}",
            case.name
        );
        assert!(!matches!(cert, ClientCert::Failed { .. }), "{}", case.name);
        println!(
            "handshake {}: client sent {} bytes, server sent {} bytes (ticket included)",
            case.name, wire.client, wire.server
        );
    }

    let mut group = c.benchmark_group("handshake/both");
    for case in &cases {
        // Resumed cases: the client config holds the ticket of the previous exchange.
        let mut t = ServerTime::default();
        let _ = exchange(case, &mut t);
        group.bench_function(case.name, |b| {
            b.iter(|| black_box(exchange(case, &mut ServerTime::default())));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("handshake/server");
    for case in &cases {
        let _ = exchange(case, &mut ServerTime::default());
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| {
                let mut t = ServerTime::default();
                for _ in 0..iters {
                    black_box(exchange(case, &mut t));
                }
                t.0
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("client_cert");
    for case in cases.iter().filter(|c| c.with_cert) {
        let (s, _, _) = exchange(case, &mut ServerTime::default());
        group.bench_function(case.name, |b| {
            b.iter(|| black_box(case.auth.client_cert(&s)));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = handshakes
}
criterion_main!(benches);
