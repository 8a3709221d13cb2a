//! Tests of the certificate store with real certificates: every key encoding, chains,
//! each kind of problem report, thumbprints against `openssl`, and selection.

use rustls::SignatureAlgorithm;

use super::test_util::*;
use super::{CertPlan, CertStore};
use crate::clock::unix_now;
use crate::config::CertificateSelection;

fn load_one(cert: &std::path::Path, key: &std::path::Path) -> Result<CertStore, Vec<String>> {
    CertStore::load(&[entry("internet", cert, key)])
}

fn one_error(result: Result<CertStore, Vec<String>>) -> String {
    let errs = result.expect_err("load must fail");
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.into_iter().next().unwrap_or_default()
}

#[test]
fn ecdsa_p256_pkcs8_and_sec1() {
    let dir = TempDir::new("ec");
    let (cert_pem, key_pem) = ec_cert("mx.test");
    let cert = dir.write("ec.crt", &cert_pem);
    let key = dir.write("ec.key", &key_pem);
    assert!(key_pem.contains("BEGIN PRIVATE KEY"));
    let store = load_one(&cert, &key).expect("PKCS#8 EC key");
    let loaded = &store.certs[0];
    assert_eq!(loaded.name, "internet");
    assert_eq!(loaded.info.sans, vec!["mx.test".to_string()]);
    assert_eq!(loaded.info.subject, "CN=mx.test");
    assert_eq!(
        loaded.certified_key.key.algorithm(),
        SignatureAlgorithm::ECDSA
    );

    let sec1 = to_traditional(&dir, &key, "ec-sec1.key");
    let text = std::fs::read_to_string(&sec1).expect("read sec1");
    assert!(text.contains("BEGIN EC PRIVATE KEY"), "{text}");
    let store = load_one(&cert, &sec1).expect("SEC1 EC key");
    assert!(store.certs[0].describe().contains("ECDSA P-256"));
}

#[test]
fn ecdsa_p384() {
    let dir = TempDir::new("p384");
    let (cert_pem, key_pem) =
        self_signed_pem(&leaf_params("mx.test"), &rcgen::PKCS_ECDSA_P384_SHA384);
    let cert = dir.write("c.pem", cert_pem);
    let key = dir.write("k.pem", key_pem);
    let store = load_one(&cert, &key).expect("P-384");
    assert!(store.certs[0].describe().contains("ECDSA P-384"));
}

#[test]
fn rsa_pkcs8_and_pkcs1() {
    let dir = TempDir::new("rsa");
    let (cert, key) = rsa_files(&dir, "rsa.test");
    let store = load_one(&cert, &key).expect("PKCS#8 RSA key");
    assert_eq!(
        store.certs[0].certified_key.key.algorithm(),
        SignatureAlgorithm::RSA
    );
    assert!(store.certs[0].describe().contains("RSA 2048-bit"));

    let pkcs1 = to_traditional(&dir, &key, "rsa-pkcs1.key");
    let text = std::fs::read_to_string(&pkcs1).expect("read pkcs1");
    assert!(text.contains("BEGIN RSA PRIVATE KEY"), "{text}");
    load_one(&cert, &pkcs1).expect("PKCS#1 RSA key");
}

#[test]
fn chain_leaf_first_signed_by_a_ca() {
    let dir = TempDir::new("chain");
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = leaf_params("Test CA");
    ca_params.subject_alt_names.clear();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let leaf = leaf_params("mx.test")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");

    let chain = dir.write("chain.pem", format!("{}{}", leaf.pem(), ca_cert.pem()));
    let key = dir.write("leaf.key", leaf_key.serialize_pem());
    let store = load_one(&chain, &key).expect("chain");
    let loaded = &store.certs[0];
    assert_eq!(loaded.certified_key.cert.len(), 2);
    assert_eq!(loaded.certified_key.cert[0].as_ref(), leaf.der().as_ref());
    assert_eq!(loaded.info.issuer, "CN=Test CA");
    assert_eq!(loaded.info.subject, "CN=mx.test");

    // CA first: the key matches the second certificate, and the message says so.
    let wrong = dir.write("wrong.pem", format!("{}{}", ca_cert.pem(), leaf.pem()));
    let err = one_error(load_one(&wrong, &key));
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("put the server certificate first"), "{err}");
}

#[test]
fn mismatched_key_names_both_files() {
    let dir = TempDir::new("mismatch");
    let (cert_pem, _) = ec_cert("mx.test");
    let (_, other_key) = ec_cert("other.test");
    let cert = dir.write("a.crt", cert_pem);
    let key = dir.write("b.key", other_key);
    let err = one_error(load_one(&cert, &key));
    assert!(err.starts_with("certificates[0] \"internet\""), "{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(!err.contains("put the server certificate first"), "{err}");
}

#[test]
fn every_problem_is_collected() {
    let dir = TempDir::new("problems");
    let (cert_pem, key_pem) = ec_cert("mx.test");
    let good_cert = dir.write("good.crt", cert_pem);
    let good_key = dir.write("good.key", key_pem);
    let empty = dir.write("empty.pem", "");
    let missing = dir.path("missing.pem");
    let der = dir.write("der.crt", [0x30, 0x82, 0x01, 0x00]);
    let (_, ed_key) = self_signed_pem(&leaf_params("ed.test"), &rcgen::PKCS_ED25519);
    let ed_key = dir.write("ed.key", ed_key);
    let encrypted = dir.write(
        "enc.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let configs = [
        entry("a", &missing, &missing),
        entry("b", &empty, &good_key),
        entry("c", &good_cert, &empty),
        entry("d", &der, &good_key),
        entry("e", &good_cert, &ed_key),
        entry("f", &good_cert, &encrypted),
        entry("ok", &good_cert, &good_key),
        entry("ok", &good_cert, &good_key),
    ];
    let errs = CertStore::load(&configs).expect_err("must fail");
    let expect = [
        ("certificates[0] \"a\": certificate file", "file not found"),
        ("certificates[0] \"a\": key file", "file not found"),
        (
            "certificates[1] \"b\": certificate file",
            "no certificate found",
        ),
        ("certificates[2] \"c\": key file", "no private key found"),
        ("certificates[3] \"d\": certificate file", "DER"),
        (
            "certificates[4] \"e\": key file",
            "unsupported key type ED25519",
        ),
        ("certificates[5] \"f\": key file", "encrypted"),
        ("certificates[7] \"ok\"", "duplicate certificate name"),
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for ((prefix, reason), err) in expect.iter().zip(&errs) {
        assert!(err.starts_with(prefix) && err.contains(reason), "{err}");
    }
    assert!(errs[0].contains(&missing.display().to_string()));
    assert!(errs[2].contains(&empty.display().to_string()));
}

#[test]
fn thumbprints_and_serial_match_openssl() {
    let dir = TempDir::new("thumb");
    let (cert_pem, key_pem) = ec_cert("mx.test");
    let ec_cert_path = dir.write("ec.crt", cert_pem);
    let ec_key_path = dir.write("ec.key", key_pem);
    let (rsa_cert, rsa_key) = rsa_files(&dir, "rsa.test");
    for (cert, key) in [(&ec_cert_path, &ec_key_path), (&rsa_cert, &rsa_key)] {
        let store = load_one(cert, key).expect("load");
        let info = &store.certs[0].info;
        assert_eq!(info.sha1, openssl_fingerprint(cert, "-sha1"));
        assert_eq!(info.sha256, openssl_fingerprint(cert, "-sha256"));
        assert_eq!(info.sha1.len(), 40);
        let serial = openssl(&[
            "x509",
            "-in",
            cert.to_str().expect("utf-8"),
            "-noout",
            "-serial",
        ]);
        assert_eq!(format!("serial={}", info.serial), serial.trim());
        let not_after = openssl(&[
            "x509",
            "-in",
            cert.to_str().expect("utf-8"),
            "-noout",
            "-enddate",
            "-dateopt",
            "iso_8601",
        ]);
        // OpenSSL prints `notAfter=2025-01-31 12:00:00Z`.
        let ours = info.not_after_rfc3339().replace('T', " ");
        assert_eq!(format!("notAfter={ours}"), not_after.trim());
        assert!(store
            .by_thumbprint(&info.sha1.to_ascii_lowercase())
            .is_some());
        assert!(store.by_thumbprint(&info.sha256).is_some());
    }
}

#[test]
fn select_by_name_first_valid_and_skips_expired() {
    let dir = TempDir::new("select");
    let mut old = leaf_params("old.test");
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let (old_cert, old_key) = self_signed_pem(&old, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (new_cert, new_key) = ec_cert("new.test");
    let (second_cert, second_key) = ec_cert("second.test");
    let configs = [
        entry(
            "old",
            &dir.write("o.crt", old_cert),
            &dir.write("o.key", old_key),
        ),
        entry(
            "new",
            &dir.write("n.crt", new_cert),
            &dir.write("n.key", new_key),
        ),
        entry(
            "second",
            &dir.write("s.crt", second_cert),
            &dir.write("s.key", second_key),
        ),
    ];
    let store = CertStore::load(&configs).expect("load, expired included");
    let now = unix_now();
    let plan = |selection: CertificateSelection| match CertPlan::new(&store, &selection, "mx.test")
    {
        CertPlan::Explicit(cert) => Ok(cert.name),
        CertPlan::NoMatch(why) => Err(why),
        other => panic!("{other:?}"),
    };
    let CertPlan::Automatic(auto) = CertPlan::new(&store, &CertificateSelection::Automatic, "x")
    else {
        panic!("automatic")
    };
    // No name matches: the best of all, valid first, then configuration order.
    assert_eq!(auto.choose(None, now).map(|c| c.name.as_str()), Some("new"));
    assert_eq!(
        plan(CertificateSelection::Name("second".into())),
        Ok("second".into())
    );
    // Named explicitly, an expired certificate is still served (and `check` says expired!).
    assert_eq!(
        plan(CertificateSelection::Name("old".into())),
        Ok("old".into())
    );
    assert_eq!(
        plan(CertificateSelection::Name("nope".into())),
        Err("certificate.name \"nope\": no certificate of that name".into())
    );
    // Back in 2020 the old one was valid, and the newest.
    assert_eq!(
        auto.choose(None, 1_590_000_000).map(|c| c.name.as_str()),
        Some("old")
    );
    // Far in the future nothing is valid: still the best of all, never nothing.
    assert_eq!(
        auto.choose(None, now + 400 * 86_400 * 10_000)
            .map(|c| c.name.as_str()),
        Some("old")
    );

    let old = &store.certs[0];
    let text = old.describe_at(now);
    assert!(text.contains("expired!"), "{text}");
    assert!(
        text.contains("\nnot after:  2021-01-01T00:00:00Z"),
        "{text}"
    );
    let text = store.certs[1].describe_at(now);
    for needle in [
        "subject:    CN=new.test",
        "SANs:       new.test",
        "SHA-1:",
        "SHA-256:",
        "(valid)",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert!(text.contains(&store.certs[1].info.sha256));
}
