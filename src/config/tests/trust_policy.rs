//! `trust` and the client-certificate / Domain Security keys of a terminate policy.

use std::path::PathBuf;

use super::{ok, one_listener, problems, term};
use crate::config::{ClientCertificates, OnFailure};

#[test]
fn trust_files_and_domain_security_are_typed() {
    let yaml = format!(
        "trust: {{system_roots: false, ca_files: [/etc/partner-ca.pem], crl_files: [a.crl, b.pem]}}\n{}",
        one_listener(
            "    policy:\n      client_certificates: request\n      \
             domain_secure: [WoodgroveBank.com., fabrikam.test]\n      on_failure: reject\n      \
             enforce: false\n"
        )
    );
    let config = ok(&yaml);
    assert!(!config.trust.system_roots);
    assert_eq!(
        config.trust.ca_files,
        [PathBuf::from("/etc/partner-ca.pem")]
    );
    assert_eq!(
        config.trust.crl_files,
        [PathBuf::from("a.crl"), PathBuf::from("b.pem")]
    );
    let policy = &term(&config.listeners[0]).policy;
    assert_eq!(policy.client_certificates, ClientCertificates::Request);
    assert_eq!(policy.domain_secure, ["woodgrovebank.com", "fabrikam.test"]);
    assert_eq!(policy.on_failure, OnFailure::Reject);
    assert!(!policy.enforce);
}

#[test]
fn bad_values_are_reported_with_their_paths() {
    let yaml = format!(
        "trust: {{system_roots: maybe, ca_files: partner.pem, crl_files: [\"\"]}}\n{}",
        one_listener(
            "    policy:\n      client_certificates: optional\n      \
             domain_secure: [\"*.bank.test\", \"[192.0.2.1]\", ok.test, OK.test]\n      \
             on_failure: bounce\n      enforce: \"no\"\n"
        )
    );
    assert_eq!(
        problems(&yaml),
        [
            "trust.system_roots: expected true or false, found \"maybe\"",
            "trust.ca_files: expected a list of strings, found \"partner.pem\"",
            "trust.crl_files[0]: expected a non-empty string, found \"\"",
            "listeners[0].policy.client_certificates: expected one of: none, request, require, \
             found \"optional\"",
            "listeners[0].policy.domain_secure[0]: \"*.bank.test\" is not a domain name (e.g. \
             woodgrovebank.com)",
            "listeners[0].policy.domain_secure[1]: \"[192.0.2.1]\" is not a domain name (e.g. \
             woodgrovebank.com)",
            "listeners[0].policy.domain_secure[3]: \"ok.test\" is listed twice",
            "listeners[0].policy.on_failure: expected one of: defer, reject, found \
             \"bounce\"",
            "listeners[0].policy.enforce: expected true or false, found \"no\"",
        ]
    );
}

#[test]
fn domain_secure_needs_client_certificates() {
    assert_eq!(
        problems(&one_listener(
            "    policy: {domain_secure: [woodgrovebank.com]}\n"
        )),
        [
            "listeners[0].policy.domain_secure: needs client_certificates: request or require \
          (no listed domain could ever pass without a client certificate)"
        ]
    );
}
