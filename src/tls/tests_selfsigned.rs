//! Tests of the generated default certificate: its contents, persistence across restarts,
//! file modes, and replacement when it no longer fits.

use std::os::unix::fs::PermissionsExt;

use super::test_util::*;
use super::{load_or_create_self_signed, self_signed};
use crate::clock::unix_now;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn self_signed_contents() {
    let cert = self_signed("mx1.example.com").expect("generate");
    assert_eq!(cert.name, "self-signed");
    assert_eq!(cert.info.subject, "CN=mx1.example.com");
    assert_eq!(cert.info.issuer, cert.info.subject);
    assert_eq!(cert.info.sans, vec!["mx1.example.com".to_string()]);
    let now = unix_now();
    assert!(cert.info.is_valid_at(now));
    let years = (cert.info.not_after - now) as f64 / (365.25 * 86_400.0);
    assert!((4.99..5.01).contains(&years), "{years} years");
    assert!(cert.describe().contains("ECDSA P-256"));
    assert!(cert.info.client_auth, "usable as a client certificate too");
    cert.certified_key.keys_match().expect("key matches");
    assert!(self_signed("").is_err());
}

#[test]
fn persisted_reused_and_regenerated() {
    let tmp = TempDir::new("selfsigned");
    let state = tmp.path("state/nested");
    let first = load_or_create_self_signed(&state, "mx1.example.com").expect("create");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("self-signed.key")), 0o600);
    assert!(state.join("self-signed.crt").exists());
    assert!(!state.join("self-signed.key.tmp").exists());

    let second = load_or_create_self_signed(&state, "mx1.example.com").expect("reuse");
    assert_eq!(second.info.sha256, first.info.sha256);
    // Host names are case-insensitive.
    let third = load_or_create_self_signed(&state, "MX1.example.com").expect("reuse");
    assert_eq!(third.info.sha256, first.info.sha256);

    let renamed = load_or_create_self_signed(&state, "mx2.example.com").expect("regen");
    assert_ne!(renamed.info.sha256, first.info.sha256);
    assert_eq!(renamed.info.sans, vec!["mx2.example.com".to_string()]);
    let again = load_or_create_self_signed(&state, "mx2.example.com").expect("reuse");
    assert_eq!(again.info.sha256, renamed.info.sha256);
    assert_eq!(mode(&state.join("self-signed.key")), 0o600);
}

#[test]
fn replaces_broken_or_expired_files() {
    let tmp = TempDir::new("selfsigned-broken");
    let state = tmp.path("state");
    let first = load_or_create_self_signed(&state, "mx.test").expect("create");

    // A key that does not match the kept certificate (e.g. a crash between the two writes).
    let (_, other_key) = ec_cert("mx.test");
    std::fs::write(state.join("self-signed.key"), other_key).expect("overwrite key");
    let fixed = load_or_create_self_signed(&state, "mx.test").expect("regen");
    assert_ne!(fixed.info.sha256, first.info.sha256);
    fixed.certified_key.keys_match().expect("new pair matches");

    // An expired certificate for the right name.
    let mut params = leaf_params("mx.test");
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let (cert_pem, key_pem) = self_signed_pem(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    std::fs::write(state.join("self-signed.crt"), cert_pem).expect("write cert");
    std::fs::write(state.join("self-signed.key"), key_pem).expect("write key");
    let renewed = load_or_create_self_signed(&state, "mx.test").expect("renew");
    assert!(renewed.info.is_valid_at(unix_now()));

    // Garbage in place of the certificate.
    std::fs::write(state.join("self-signed.crt"), "garbage").expect("write garbage");
    let replaced = load_or_create_self_signed(&state, "mx.test").expect("replace");
    assert_ne!(replaced.info.sha256, renewed.info.sha256);
}

#[test]
fn reused_until_it_has_expired() {
    let tmp = TempDir::new("selfsigned-late");
    let state = tmp.path("state");
    std::fs::create_dir_all(&state).expect("state dir");
    // Ten days left: still valid, so still the same certificate (peers may pin it).
    let now = unix_now();
    let day = |offset: i64| {
        let (y, m, d) = smtp_core::date::civil_from_days(now.div_euclid(86_400) + offset);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    let mut params = leaf_params("mx.test");
    params.not_before = day(-1000);
    params.not_after = day(10);
    let (cert_pem, key_pem) = self_signed_pem(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    std::fs::write(state.join("self-signed.crt"), &cert_pem).expect("write cert");
    std::fs::write(state.join("self-signed.key"), key_pem).expect("write key");
    let kept = load_or_create_self_signed(&state, "mx.test").expect("load");
    assert_eq!(kept.info.not_after, params.not_after.unix_timestamp());
    assert_eq!(
        std::fs::read_to_string(state.join("self-signed.crt")).expect("read"),
        cert_pem
    );
    assert!(crate::tls::kept_self_signed(&state, "mx.test").is_some());
    assert!(crate::tls::kept_self_signed(&state, "other.test").is_none());
}
