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
        let validity = cert.validity();
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: serial_hex(cert.raw_serial()),
            sans,
            sha1: hex_upper(&Sha1::digest(der)),
            sha256: hex_upper(&Sha256::digest(der)),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// True when `unix_now` lies within notBefore..=notAfter (both ends inclusive, RFC 5280
    /// §4.1.2.5).
    pub fn is_valid_at(&self, unix_now: i64) -> bool {
        self.not_before <= unix_now && unix_now <= self.not_after
    }

    /// notAfter as RFC 3339 UTC, e.g. `2029-05-01T12:00:00Z`.
    pub fn not_after_rfc3339(&self) -> String {
        format_rfc3339_utc(self.not_after)
    }

    /// notBefore as RFC 3339 UTC.
    pub fn not_before_rfc3339(&self) -> String {
        format_rfc3339_utc(self.not_before)
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
fn san_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some((*dns).to_string()),
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

/// Formats unix seconds as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn format_rfc3339_utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
///
/// The calendar repeats every 400 years (146,097 days), so the day is placed within such an
/// era, then within the era's year; years are counted from March 1st so that the leap day
/// falls at the end of a year and month lengths follow the 153-days-per-5-months pattern.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch from 1970-01-01 to 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Month index counted from March = 0.
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both values are small by construction (1..=31, 1..=12).
    (year, day_to_u32(month), day_to_u32(day))
}

fn day_to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(format_rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339_utc(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(format_rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(format_rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(format_rfc3339_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339_utc(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn civil_round_trip_every_day_of_four_centuries() {
        // Walk day by day across 1900 (not leap), 2000 (leap) and 2100 (not leap).
        let mut expected = (1900_i64, 1_u32, 1_u32);
        for days in -25_567..(-25_567 + 146_097) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
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
        };
        assert!(info.matches_thumbprint(&"ab".repeat(20)));
        assert!(info.matches_thumbprint(&"CD:".repeat(32)));
        assert!(!info.matches_thumbprint("AB"));
        assert!(info.has_dns_name("mx1.example.COM"));
        assert!(info.is_valid_at(10) && info.is_valid_at(20));
        assert!(!info.is_valid_at(9) && !info.is_valid_at(21));
    }
}
