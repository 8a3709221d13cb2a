//! Real in-memory handshakes against [`server_config`]: versions, the 1.3-only floor,
//! resumption by ticket and by session cache, no ALPN, data after the handshake, and the
//! strings [`session_tls_info`] reports.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::version::{TLS12, TLS13};
use rustls::HandshakeKind;

use super::test_util::*;
use super::{self_signed, server_config, session_tls_info, CertStore, LoadedCert};
use crate::config::TlsVersion;

fn client_for(cert: &LoadedCert, tls13: bool, tls12: bool) -> rustls::ClientConfig {
    let mut versions = Vec::new();
    if tls13 {
        versions.push(&TLS13);
    }
    if tls12 {
        versions.push(&TLS12);
    }
    client_config(&cert.certified_key.cert[0], &versions)
}

#[test]
fn tls13_and_tls12_handshakes_report_version_and_suite() {
    let cert = self_signed("mx.test").expect("cert");
    let server = server_config(fixed(&cert), TlsVersion::V1_2, None).expect("server config");

    let client = Arc::new(client_for(&cert, true, true));
    let (c, s) = connect(&client, &server).expect("TLS 1.3 handshake");
    let (version, suite) = session_tls_info(&s);
    assert_eq!(version, "TLSv1.3");
    assert!(
        [
            "TLS13_AES_256_GCM_SHA384",
            "TLS13_AES_128_GCM_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256"
        ]
        .contains(&suite.as_str()),
        "{suite}"
    );
    assert_eq!(session_tls_info(&c), (version, suite));
    assert!(s.alpn_protocol().is_none());

    let client = Arc::new(client_for(&cert, false, true));
    let (_c, s) = connect(&client, &server).expect("TLS 1.2 handshake");
    let (version, suite) = session_tls_info(&s);
    assert_eq!(version, "TLSv1.2");
    assert!(suite.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{suite}");
}

/// A client that lists AES-256 first (rustls' own order, OpenSSL's) gets AES-128-GCM, in
/// TLS 1.3 and 1.2; one that offers AES-256 alone still gets it.
#[test]
fn the_listener_chooses_aes_128_whatever_the_client_lists_first() {
    use crate::tls::crypto;
    let cert = self_signed("mx.test").expect("cert");
    let server = server_config(fixed(&cert), TlsVersion::V1_2, None).expect("server config");
    let leaf = &cert.certified_key.cert[0];
    let theirs = Arc::new(crypto::default_provider());
    assert_eq!(
        theirs.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the client of this test must list AES-256 first"
    );

    let client = Arc::new(client_config_with(theirs.clone(), leaf, &[&TLS13]));
    let (_c, s) = connect(&client, &server).expect("TLS 1.3 handshake");
    assert_eq!(session_tls_info(&s).1, "TLS13_AES_128_GCM_SHA256");

    let client = Arc::new(client_config_with(theirs.clone(), leaf, &[&TLS12]));
    let (_c, s) = connect(&client, &server).expect("TLS 1.2 handshake");
    assert_eq!(
        session_tls_info(&s).1,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    );

    let mut only_256 = crypto::default_provider();
    only_256
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    let client = Arc::new(client_config_with(Arc::new(only_256), leaf, &[&TLS13]));
    let (_c, s) = connect(&client, &server).expect("AES-256 only");
    assert_eq!(session_tls_info(&s).1, "TLS13_AES_256_GCM_SHA384");
}

#[test]
fn session_tls_info_before_the_handshake() {
    let cert = self_signed("mx.test").expect("cert");
    let server = server_config(fixed(&cert), TlsVersion::V1_2, None).expect("server config");
    let conn = rustls::ServerConnection::new(server).expect("connection");
    let expected = ("unknown".to_string(), "unknown".to_string());
    assert_eq!(session_tls_info(&conn), expected);
}

#[test]
fn min_version_13_refuses_a_tls12_only_client() {
    let cert = self_signed("mx.test").expect("cert");
    let server = server_config(fixed(&cert), TlsVersion::V1_3, None).expect("server config");
    let old_client = Arc::new(client_for(&cert, false, true));
    let err = connect(&old_client, &server).expect_err("TLS 1.2 client must be refused");
    assert!(matches!(err, rustls::Error::PeerIncompatible(_)), "{err:?}");
    let client = Arc::new(client_for(&cert, true, true));
    let (_c, s) = connect(&client, &server).expect("TLS 1.3 client");
    assert_eq!(session_tls_info(&s).0, "TLSv1.3");
}

#[test]
fn resumption_tls13_tickets_and_tls12_tickets_and_session_ids() {
    let cert = self_signed("mx.test").expect("cert");
    let server = server_config(fixed(&cert), TlsVersion::V1_2, None).expect("server config");
    let mut id_only = client_for(&cert, false, true);
    id_only.resumption =
        Resumption::in_memory_sessions(16).tls12_resumption(Tls12Resumption::SessionIdOnly);
    let cases = [
        ("TLS 1.3 ticket", client_for(&cert, true, false)),
        ("TLS 1.2 ticket", client_for(&cert, false, true)),
        ("TLS 1.2 session id", id_only),
    ];
    for (what, client) in cases {
        let client = Arc::new(client);
        let (_c, s) = connect(&client, &server).expect(what);
        assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full), "{what}");
        let (_c, s) = connect(&client, &server).expect(what);
        assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed), "{what}");
        // A new configuration (a reload) has fresh ticket keys and an empty cache.
        let reloaded = server_config(fixed(&cert), TlsVersion::V1_2, None).expect("server config");
        let (_c, s) = connect(&client, &reloaded).expect(what);
        assert_eq!(
            s.handshake_kind(),
            Some(HandshakeKind::Full),
            "{what} after reload"
        );
    }
}

#[test]
fn rsa_chain_from_the_store_serves_smtp_bytes() {
    let dir = TempDir::new("hs-rsa");
    let (cert, key) = rsa_files(&dir, "rsa.test");
    let store = CertStore::load(&[entry("rsa", &cert, &key)]).expect("load");
    let loaded = &store.certs[0];
    for min in [TlsVersion::V1_2, TlsVersion::V1_3] {
        let server = server_config(fixed(loaded), min, None).expect("server config");
        let client = Arc::new(client_for(loaded, true, min == TlsVersion::V1_2));
        let (mut c, mut s) = connect(&client, &server).expect("handshake");
        c.writer()
            .write_all(b"EHLO client.test\r\n")
            .expect("client write");
        pump(&mut c, &mut s).expect("pump");
        let mut got = [0u8; 64];
        let n = s.reader().read(&mut got).expect("server read");
        assert_eq!(&got[..n], b"EHLO client.test\r\n");
    }
    let client = Arc::new(client_for(loaded, false, true));
    let server = server_config(fixed(loaded), TlsVersion::V1_2, None).expect("server config");
    let (_c, s) = connect(&client, &server).expect("TLS 1.2 RSA");
    assert!(session_tls_info(&s).1.starts_with("TLS_ECDHE_RSA_WITH_"));
}
