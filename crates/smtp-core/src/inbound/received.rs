//! The Received header the sidecar prepends (RFC 5321 §4.4), naming the client's address and
//! EHLO name, the protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA...) and the TLS version and
//! cipher, so that a backend without XCLIENT still knows how the message arrived. When a
//! client certificate verified, its subject and issuer follow (as Postfix's `Client CN`/
//! `Issuer` comment), each on its own folded line: certificate text is reduced to printable
//! ASCII without comment specials and bounded, so the header stays valid and no CR/LF or
//! control character from a certificate reaches the backend.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use super::{ClientCert, TlsInfo};

/// Octets of a certificate field kept in the header; with the fixed text around it a line
/// stays far below 998 octets (RFC 5322 §2.1.1).
const MAX_FIELD: usize = 256;

pub(super) fn header(
    helo: Option<&str>,
    peer: IpAddr,
    hostname: &str,
    tls: Option<&TlsInfo>,
    esmtp: bool,
    authenticated: bool,
    when: SystemTime,
) -> String {
    let mut proto = String::from(if esmtp { "ESMTP" } else { "SMTP" });
    if tls.is_some() {
        proto.push('S');
    }
    if authenticated {
        proto.push('A');
    }
    let helo: String = helo
        .unwrap_or("unknown")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let literal = match peer {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let mut h =
        format!("Received: from {helo} ({literal})\r\n\tby {hostname} (smtp-sidecar) with {proto}");
    if let Some(tls) = tls {
        let _ = write!(h, "\r\n\t(version={} cipher={})", tls.version, tls.cipher);
        if let ClientCert::Verified(cert) = &tls.client_cert {
            let _ = write!(
                h,
                "\r\n\t(client certificate verified: subject \"{}\"\r\n\tissuer \"{}\")",
                comment_text(&cert.subject),
                comment_text(&cert.issuer)
            );
        }
    }
    let _ = write!(h, ";\r\n\t{}\r\n", crate::date::format_rfc5322(when));
    h
}

/// Certificate text fit for a quoted string inside a header comment: printable ASCII and
/// spaces only, no `(`, `)`, `"` or `\\` (which would end or escape the comment), at most
/// [`MAX_FIELD`] octets.
fn comment_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            '(' | ')' | '"' | '\\' => '?',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(MAX_FIELD + 1)
        .collect();
    if out.len() > MAX_FIELD {
        out.truncate(MAX_FIELD - 3);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn received_with_tls() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_cert: ClientCert::None,
        };
        let h = header(
            Some("client.example"),
            "192.0.2.7".parse().unwrap(),
            "mx.example.com",
            Some(&tls),
            true,
            false,
            UNIX_EPOCH,
        );
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.7])\r\n\tby mx.example.com (smtp-sidecar) \
             with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256);\r\n\t\
             Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn received_with_a_verified_client_certificate() {
        let cert = super::super::PeerCert {
            subject: "CN=mail.woodgrovebank.com, O=Woodgrove".into(),
            issuer: "CN=Woodgrove Issuing CA".into(),
            ..Default::default()
        };
        let mut tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_cert: ClientCert::Verified(cert.clone()),
        };
        let peer = "192.0.2.7".parse().unwrap();
        let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
        assert!(h.contains(
            "\r\n\t(client certificate verified: subject \"CN=mail.woodgrovebank.com, \
             O=Woodgrove\"\r\n\tissuer \"CN=Woodgrove Issuing CA\");\r\n"
        ));
        // A certificate that did not verify is not vouched for.
        tls.client_cert = ClientCert::Failed {
            cert,
            reason: "expired".into(),
        };
        let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
        assert!(!h.contains("client certificate"));
    }

    #[test]
    fn certificate_text_cannot_inject_or_overflow() {
        let cert = super::super::PeerCert {
            subject: "CN=x\r\nX-Injected: yes\0 (\"\\)é".into(),
            issuer: "O=".to_owned() + &"A".repeat(5000),
            ..Default::default()
        };
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_cert: ClientCert::Verified(cert),
        };
        let peer = "192.0.2.7".parse().unwrap();
        let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
        assert!(
            h.contains("subject \"CN=x??X-Injected: yes? ?????\""),
            "{h}"
        );
        for line in h.split("\r\n") {
            assert!(line.len() <= 998, "line of {} octets", line.len());
            assert!(!line.contains('\n') && !line.contains('\r'));
            assert!(line
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)));
        }
        assert!(h.contains(&format!("O={}...\")", "A".repeat(MAX_FIELD - 5))));
    }
}
