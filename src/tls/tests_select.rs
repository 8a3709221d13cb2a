//! Tests of certificate selection with real certificates: explicit rules, SNI (wildcards
//! too), the `hostname` fallback and Exchange's order among candidates, at chosen clocks.

use rcgen::{CertificateParams, Issuer, KeyPair};

use super::test_util::*;
use super::{CertPlan, CertStore};
use crate::config::CertificateSelection;

const ALG: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;
/// 2030-01-01, a clock inside every "valid" certificate below.
const NOW: i64 = 1_893_456_000;

fn params(names: &[&str], from: i32, to: i32) -> CertificateParams {
    let mut p = leaf_params(names[0]);
    p.subject_alt_names.clear();
    for n in names {
        p.subject_alt_names
            .push(rcgen::SanType::DnsName((*n).try_into().expect("dns name")));
    }
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(to, 1, 1);
    p
}

struct Pki {
    dir: TempDir,
    ca: Issuer<'static, KeyPair>,
    entries: Vec<crate::config::CertificateConfig>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate_for(ALG).expect("ca key");
        let mut p = leaf_params("Test Root CA");
        p.subject_alt_names.clear();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Pki {
            dir: TempDir::new("select"),
            ca: Issuer::new(p, key),
            entries: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, params: &CertificateParams, ca_issued: bool) {
        let key = KeyPair::generate_for(ALG).expect("key");
        let cert = if ca_issued {
            params.signed_by(&key, &self.ca).expect("issue")
        } else {
            params.self_signed(&key).expect("self-sign")
        };
        let c = self.dir.write(&format!("{name}.crt"), cert.pem());
        let k = self.dir.write(&format!("{name}.key"), key.serialize_pem());
        self.entries.push(entry(name, &c, &k));
    }

    fn store(&self) -> CertStore {
        CertStore::load(&self.entries).expect("load")
    }
}

fn chosen(store: &CertStore, hostname: &str, sni: Option<&str>, now: i64) -> String {
    match CertPlan::new(store, &CertificateSelection::Automatic, hostname) {
        CertPlan::Automatic(c) => c.choose(sni, now).expect("a choice").name.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sni_then_hostname_then_best_of_all() {
    let mut pki = Pki::new();
    pki.add("mx", &params(&["mx.example.com"], 2029, 2031), true);
    pki.add("wild", &params(&["*.example.org"], 2029, 2031), true);
    pki.add("other", &params(&["other.example.net"], 2028, 2031), true);
    let store = pki.store();
    let at = |sni| chosen(&store, "mx.example.com", sni, NOW);
    assert_eq!(at(Some("mx.example.com")), "mx");
    assert_eq!(at(Some("MX.Example.COM")), "mx");
    assert_eq!(at(Some("other.example.net")), "other");
    assert_eq!(at(Some("a.example.org")), "wild");
    // A wildcard covers one label only; no match falls back to hostname.
    assert_eq!(at(Some("a.b.example.org")), "mx");
    assert_eq!(at(Some("example.org")), "mx");
    assert_eq!(at(None), "mx");
    // No certificate for hostname: the best of all (newest notBefore among valid CA-issued).
    assert_eq!(chosen(&store, "elsewhere.test", None, NOW), "mx");
    let wild_host = chosen(&store, "smtp.example.org", None, NOW);
    assert_eq!(wild_host, "wild");
}

#[test]
fn exchange_order_valid_then_ca_then_newest() {
    let mut pki = Pki::new();
    // All for mx.test, from worst to best.
    pki.add("expired-ca-newest", &params(&["mx.test"], 2028, 2029), true);
    pki.add(
        "self-signed-newest",
        &params(&["mx.test"], 2029, 2031),
        false,
    );
    pki.add("ca-older", &params(&["mx.test"], 2025, 2031), true);
    pki.add("ca-newer", &params(&["mx.test"], 2027, 2031), true);
    let store = pki.store();
    assert_eq!(chosen(&store, "mx.test", Some("mx.test"), NOW), "ca-newer");
    assert_eq!(chosen(&store, "mx.test", None, NOW), "ca-newer");

    // Without the CA-issued valid ones: a valid self-signed beats an expired CA-issued one.
    let mut pki2 = Pki::new();
    pki2.add("expired-ca", &params(&["mx.test"], 2028, 2029), true);
    pki2.add("self-signed", &params(&["mx.test"], 2029, 2031), false);
    let store2 = pki2.store();
    assert_eq!(
        chosen(&store2, "mx.test", Some("mx.test"), NOW),
        "self-signed"
    );
    // In 2028 the CA-issued one was valid too, and CA-issued comes first.
    let y2028_6 = 1_843_000_000;
    assert_eq!(chosen(&store2, "mx.test", None, y2028_6), "expired-ca");
    // Nothing valid at all (2035): still a certificate, the best by the rest of the order.
    assert_eq!(
        chosen(&store2, "mx.test", None, 2_051_222_400),
        "expired-ca"
    );
    // Valid at some point is not enough: a not-yet-valid one also loses to a valid one.
    assert_eq!(chosen(&store, "mx.test", None, 1_830_000_000), "ca-newer");
}

#[test]
fn explicit_rules_and_misses() {
    let mut pki = Pki::new();
    pki.add("a", &params(&["a.test"], 2020, 2031), true);
    pki.add("b", &params(&["b.test"], 2020, 2031), false);
    let store = pki.store();
    let b = &store.certs[1].info;
    let explicit = |s: CertificateSelection| match CertPlan::new(&store, &s, "a.test") {
        CertPlan::Explicit(c) => Ok(c.name),
        CertPlan::NoMatch(why) => Err(why),
        other => panic!("{other:?}"),
    };
    use CertificateSelection::{Name, NameAndThumbprint, Thumbprint};
    assert_eq!(explicit(Name("b".into())), Ok("b".into()));
    assert_eq!(explicit(Thumbprint(b.sha1.clone())), Ok("b".into()));
    assert_eq!(explicit(Thumbprint(b.sha256.clone())), Ok("b".into()));
    let pin = |name: &str, thumbprint: &str| NameAndThumbprint {
        name: name.into(),
        thumbprint: thumbprint.into(),
    };
    assert_eq!(explicit(pin("b", &b.sha1)), Ok("b".into()));
    let miss = explicit(pin("a", &b.sha1)).expect_err("pin mismatch");
    assert!(
        miss.starts_with(&format!("certificate.thumbprint {}", b.sha1)),
        "{miss}"
    );
    let unknown = "0".repeat(40);
    assert_eq!(
        explicit(Thumbprint(unknown.clone())),
        Err(format!(
            "certificate.thumbprint {unknown}: no certificate has it"
        ))
    );
    assert!(matches!(
        CertPlan::new(&CertStore::default(), &CertificateSelection::Automatic, "x"),
        CertPlan::NoCertificate
    ));
}

/// A client that cannot verify the preferred certificate's key gets the other certificate of
/// the same name: an ECDSA-only client the older ECDSA one, an RSA-only client the RSA one.
#[test]
fn the_client_signature_schemes_narrow_the_choice() {
    use rustls::SignatureScheme;
    let mut pki = Pki::new();
    pki.add("ecdsa", &params(&["mx.example.com"], 2025, 2035), false);
    let (rsa_cert, rsa_key) = rsa_files(&pki.dir, "mx.example.com");
    pki.entries.push(entry("rsa", &rsa_cert, &rsa_key));
    let store = pki.store();
    let candidates = super::Candidates::new(&store, "mx.example.com");
    let (sni, now) = (Some("mx.example.com"), crate::clock::unix_now());
    let preferred = candidates.choose(sni, now).expect("cert");
    assert_eq!(
        preferred.name, "rsa",
        "the static order prefers the newer one"
    );
    let ecdsa = [SignatureScheme::ECDSA_NISTP256_SHA256];
    let chosen = candidates.choose_for(sni, now, Some(&ecdsa)).expect("cert");
    assert_eq!(chosen.name, "ecdsa");
    let rsa_only = [
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    let chosen = candidates
        .choose_for(sni, now, Some(&rsa_only))
        .expect("cert");
    assert_eq!(chosen.name, "rsa");
    // Nothing usable: as if unfiltered, and the handshake fails as it must.
    let none = [SignatureScheme::ED448];
    let chosen = candidates.choose_for(sni, now, Some(&none)).expect("cert");
    assert_eq!(chosen.name, "rsa");
}
