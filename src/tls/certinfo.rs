//! What a certificate says, in the shape operators, logs and metrics use: subject, issuer,
//! serial, alternate names, SHA-1 / SHA-256 thumbprints (upper-case hex, as Exchange and
//! Windows print them) and validity as unix seconds, plus UTC date formatting without a
//! date-time dependency.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use sha1::{Digest, Sha1};
use sha2::Sha256;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The facts about one certificate (the leaf of a chain) that the sidecar reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=mx1.example.com, O=Example`.
    pub subject: String,
    pub issuer: String,
    /// Serial number as upper-case hex without separators.
    pub serial: String,
    /// DNS names and IP addresses of the subjectAltName extension, in certificate order.
    pub sans: Vec<String>,
    /// SHA-1 of the DER certificate, upper-case hex (the "thumbprint" of Windows tools).
    pub sha1: String,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub sha256: String,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// Whether it may authenticate a TLS client: no extendedKeyUsage, or one that lists
    /// clientAuth. A partner's verifier refuses a client certificate without it (rustls's
    /// and OpenSSL's purpose check alike; neither takes anyExtendedKeyUsage for it).
    pub client_auth: bool,
}

impl CertInfo {
    /// Reads the facts from a DER certificate; the error says what is wrong with it.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the X.509 certificate".to_string());
        }
        let sans = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(san_text)
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("invalid subjectAltName extension: {e}")),
        };
        let client_auth = match cert.extended_key_usage() {
            Ok(None) => true,
            Ok(Some(eku)) => eku.value.client_auth,
            Err(_) => false,
        };
        let validity = cert.validity();
        Ok(CertInfo {
            subject: display_safe(&cert.subject().to_string()),
            issuer: display_safe(&cert.issuer().to_string()),
            serial: serial_hex(cert.raw_serial()),
            sans,
            sha1: hex_upper(&Sha1::digest(der)),
            sha256: hex_upper(&Sha256::digest(der)),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            client_auth,
        })
    }

    /// The certificate's names joined by `sep` as logs and listings show them: the first
    /// [`MAX_NAMES_SHOWN`], within [`MAX_NAMES_TEXT`] characters, then how many more there
    /// are. A certificate may carry thousands of names (a client's under `request` is not
    /// even verified), and each is a line's worth of text.
    pub fn names_shown(&self, sep: &str) -> String {
        let mut out = String::new();
        let mut shown = 0;
        for name in self.sans.iter().take(MAX_NAMES_SHOWN) {
            if shown > 0 && out.len() + sep.len() + name.len() > MAX_NAMES_TEXT {
                break;
            }
            if shown > 0 {
                out.push_str(sep);
            }
            out.push_str(name);
            shown += 1;
        }
        if shown < self.sans.len() {
            let _ = write!(out, "{sep}(+{} more)", self.sans.len() - shown);
        }
        out
    }

    /// True when `unix_now` lies within notBefore..=notAfter (both ends inclusive, RFC 5280
    /// §4.1.2.5).
    pub fn is_valid_at(&self, unix_now: i64) -> bool {
        self.not_before <= unix_now && unix_now <= self.not_after
    }

    /// notAfter as RFC 3339 UTC, e.g. `2029-05-01T12:00:00Z`.
    pub fn not_after_rfc3339(&self) -> String {
        smtp_core::date::format_rfc3339(self.not_after)
    }

    /// notBefore as RFC 3339 UTC.
    pub fn not_before_rfc3339(&self) -> String {
        smtp_core::date::format_rfc3339(self.not_before)
    }

    /// True when `thumbprint` is this certificate's SHA-1 (40 hex) or SHA-256 (64 hex).
    /// Case and `:`/space separators are ignored, since operators paste thumbprints from
    /// `openssl x509 -fingerprint` (colons) and from Windows (spaces, lower case).
    pub fn matches_thumbprint(&self, thumbprint: &str) -> bool {
        let wanted: String = thumbprint
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        wanted == self.sha1 || wanted == self.sha256
    }

    /// True when `host` is one of the DNS alternate names (ASCII case-insensitive).
    /// Exact match only: wildcard matching belongs to the SNI resolver, not here.
    pub fn has_dns_name(&self, host: &str) -> bool {
        self.sans.iter().any(|san| san.eq_ignore_ascii_case(host))
    }
}

/// The text of one alternate name; kinds the sidecar never matches on are left out.
/// A certificate's text as logs, replies, headers and metric labels may show it: whoever
/// made the certificate chose it (an unverified client certificate is anyone's), so control
/// characters, line separators and bidirectional controls become `?` (no forged log lines:
/// [`smtp_core::session::unsafe_in_log`]) and at most [`MAX_DISPLAY`] characters are kept (a
/// subject can be tens of kilobytes).
pub fn display_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_DISPLAY)
        .map(|c| match smtp_core::session::unsafe_in_log(c) {
            true => '?',
            false => c,
        })
        .collect();
    if text.chars().nth(MAX_DISPLAY).is_some() {
        out.push_str("...");
    }
    out
}

/// See [`display_safe`]; a DNS name is at most 253 characters, a long DN a few hundred.
const MAX_DISPLAY: usize = 256;

/// See [`CertInfo::names_shown`]: a multi-domain certificate lists a few dozen names at most.
const MAX_NAMES_SHOWN: usize = 32;

/// See [`CertInfo::names_shown`]: four of the longest names.
const MAX_NAMES_TEXT: usize = 1024;

fn san_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(display_safe(dns)),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| Ipv4Addr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| Ipv6Addr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The serial's DER integer content without the sign-padding zero bytes, as OpenSSL and
/// Windows print it.
fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex_upper(raw.get(first..).unwrap_or(raw))
}

/// Upper-case hex without separators.
pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02X}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with `cn` as its subject and `sans` as its subjectAltName
    /// (none at all when `None`).
    fn certificate(cn: &str, sans: Option<Vec<rcgen::SanType>>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = sans.unwrap_or_default();
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn certificate_text_cannot_forge_or_flood_a_log_line() {
        let der = certificate(&format!("a\r\nforged line {}", "x".repeat(20_000)), None);
        let info = CertInfo::from_der(&der).expect("parse");
        assert!(
            info.subject.starts_with("CN=a??forged line x"),
            "{}",
            info.subject
        );
        assert!(!info.subject.contains(['\r', '\n']));
        assert!(info.subject.chars().count() <= MAX_DISPLAY + 3);
        assert!(info.subject.ends_with("..."));
        // Line separators and bidirectional controls too.
        let der = certificate("a\u{2028}b\u{202E}c", None);
        let info = CertInfo::from_der(&der).expect("parse");
        assert_eq!(info.subject, "CN=a?b?c");
    }

    /// Thousands of names, as an unverified client certificate may carry, are shown as the
    /// first ones and a count, within a kilobyte.
    #[test]
    fn a_certificate_with_many_names_shows_the_first_and_a_count() {
        let many: Vec<rcgen::SanType> = (0..4000)
            .map(|i| rcgen::SanType::DnsName(format!("a{i}.x").try_into().expect("ia5")))
            .collect();
        let info = CertInfo::from_der(&certificate("many", Some(many))).expect("parse");
        let first: Vec<String> = (0..32).map(|i| format!("a{i}.x")).collect();
        assert_eq!(
            info.names_shown(","),
            format!("{},(+3968 more)", first.join(","))
        );
        let long: Vec<rcgen::SanType> = (0..10)
            .map(|i| {
                let name = format!("{i}{}.test", "l".repeat(240));
                rcgen::SanType::DnsName(name.try_into().expect("ia5"))
            })
            .collect();
        let info = CertInfo::from_der(&certificate("long", Some(long))).expect("parse");
        let shown = info.names_shown(", ");
        assert!(shown.ends_with(", (+6 more)"), "{shown}");
        assert!(shown.len() <= MAX_NAMES_TEXT + 20, "{}", shown.len());
        let one = CertInfo::from_der(&certificate(
            "one",
            Some(vec![rcgen::SanType::DnsName(
                "mx.test".try_into().expect("ia5"),
            )]),
        ))
        .expect("parse");
        assert_eq!(one.names_shown(","), "mx.test");
    }

    /// A client certificate must allow client authentication: no extendedKeyUsage, or one
    /// with clientAuth (anyExtendedKeyUsage is not enough for webpki or OpenSSL).
    #[test]
    fn client_auth_is_read_from_the_extended_key_usage() {
        use rcgen::ExtendedKeyUsagePurpose::{Any, ClientAuth, EmailProtection, ServerAuth};
        for (ekus, want) in [
            (vec![], true),
            (vec![ServerAuth], false),
            (vec![ServerAuth, ClientAuth], true),
            (vec![EmailProtection, Any], false),
            (vec![ClientAuth, Any], true),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).expect("p");
            params.extended_key_usages = ekus.clone();
            let key = rcgen::KeyPair::generate().expect("key");
            let der = params.self_signed(&key).expect("sign").der().to_vec();
            let info = CertInfo::from_der(&der).expect("parse");
            assert_eq!(info.client_auth, want, "{ekus:?}");
        }
    }

    #[test]
    fn the_cn_counts_as_a_name_only_without_any_subject_alt_name() {
        let email_only = certificate(
            "woodgrovebank.com",
            Some(vec![rcgen::SanType::Rfc822Name(
                "a@fabrikam.test".try_into().expect("ia5"),
            )]),
        );
        let peer = crate::tls::peer_cert(&email_only).expect("peer");
        assert_eq!((peer.dns_names.len(), peer.common_name), (0, None));
        let no_san = certificate("woodgrovebank.com", None);
        let peer = crate::tls::peer_cert(&no_san).expect("peer");
        assert_eq!(peer.common_name.as_deref(), Some("woodgrovebank.com"));
        let bad_cn = certificate("woodgrove\nbank.com", None);
        assert_eq!(
            crate::tls::peer_cert(&bad_cn).expect("peer").common_name,
            None
        );
    }

    #[test]
    fn hex_and_thumbprint_matching() {
        assert_eq!(hex_upper(&[0x00, 0xab, 0x7f]), "00AB7F");
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x00]), "00");
        let info = CertInfo {
            subject: String::new(),
            issuer: String::new(),
            serial: String::new(),
            sans: vec!["Mx1.Example.com".into()],
            sha1: "AB".repeat(20),
            sha256: "CD".repeat(32),
            not_before: 10,
            not_after: 20,
            client_auth: true,
        };
        assert!(info.matches_thumbprint(&"ab".repeat(20)));
        assert!(info.matches_thumbprint(&"CD:".repeat(32)));
        assert!(!info.matches_thumbprint("AB"));
        assert!(info.has_dns_name("mx1.example.COM"));
        assert!(info.is_valid_at(10) && info.is_valid_at(20));
        assert!(!info.is_valid_at(9) && !info.is_valid_at(21));
    }
}
