//! The Received header the sidecar prepends (RFC 5321 §4.4), naming the client's address and
//! EHLO name (reduced to what a domain or an address literal holds, so that it cannot reopen
//! the clause: a backend trusts this header, the one hop it did not write itself), the
//! protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA...) and the TLS version and cipher, so that a
//! backend without XCLIENT still knows how the message arrived. When a client certificate
//! verified, its subject and issuer follow (as Postfix's `Client CN`/`Issuer` comment), each
//! starting a line of its own: certificate text is reduced to printable ASCII without comment
//! specials and bounded, and folded at spaces so that no line exceeds 998 octets (RFC 5322
//! §2.1.1), so the header stays valid and no CR/LF or control character from a certificate
//! reaches the backend.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use super::{ClientCert, TlsInfo};

/// Octets of a certificate field kept in the header (a DN is rarely over 200).
const MAX_FIELD: usize = 1024;

/// Octets of a header line, CRLF excluded (RFC 5322 §2.1.1).
const MAX_LINE: usize = 998;

/// A run without spaces longer than this is cut: it could not be folded.
const MAX_WORD: usize = 900;

pub(crate) fn header(
    helo: Option<&str>,
    peer: IpAddr,
    hostname: &str,
    tls: Option<&TlsInfo>,
    esmtp: bool,
    authenticated: bool,
    when: SystemTime,
) -> String {
    // One buffer, written in place: the header is built for every message.
    let mut h = String::with_capacity(256);
    h.push_str("Received: from ");
    push_helo(&mut h, helo.unwrap_or("unknown"));
    let _ = match peer {
        IpAddr::V4(ip) => write!(h, " ([{ip}])"),
        IpAddr::V6(ip) => write!(h, " ([IPv6:{ip}])"),
    };
    let _ = write!(h, "\r\n\tby {hostname} (smtp-sidecar) with ");
    h.push_str(if esmtp { "ESMTP" } else { "SMTP" });
    if tls.is_some() {
        h.push('S');
    }
    if authenticated {
        h.push('A');
    }
    if let Some(tls) = tls {
        let _ = write!(h, "\r\n\t(version={} cipher={})", tls.version, tls.cipher);
        if let ClientCert::Verified(cert) = &tls.client_cert {
            h.push_str("\r\n\t(client certificate verified: subject \"");
            push_folded(&mut h, &comment_text(&cert.subject));
            h.push_str("\"\r\n\tissuer \"");
            push_folded(&mut h, &comment_text(&cert.issuer));
            h.push_str("\")");
        }
    }
    let _ = write!(h, ";\r\n\t{}\r\n", crate::date::Rfc5322(when));
    h
}

/// The client's HELO/EHLO name as a domain or an address literal (RFC 5321 §4.4 `Extended-
/// Domain`), whatever it sent: letters, digits, `-`, `.`, `_` and `:` (an IPv6 literal's), and
/// `[` `]` only as the brackets around a whole literal; anything else is `?`. So the name can
/// never open or close a comment (`(` swallowing the address, `by`, `with` and the date that
/// follow), a domain literal or a quoted string, escape (`\`) or end the clause (`;`).
fn push_helo(h: &mut String, helo: &str) {
    let literal = helo.len() >= 2 && helo.starts_with('[') && helo.ends_with(']');
    let last = helo.len().saturating_sub(1);
    h.extend(helo.char_indices().map(|(i, c)| match c {
        c if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':') => c,
        '[' if literal && i == 0 => c,
        ']' if literal && i == last => c,
        _ => '?',
    }));
}

/// Certificate text fit for a quoted string inside a header comment: printable ASCII and
/// spaces only, no `(`, `)`, `"` or `\\` (which would end or escape the comment), at most
/// [`MAX_FIELD`] octets and no run without a space over [`MAX_WORD`].
fn comment_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '(' | ')' | '"' | '\\' => '?',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(MAX_FIELD + 1)
        .collect();
    let mut out = String::with_capacity(clean.len());
    for (i, word) in clean.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if word.len() > MAX_WORD {
            out.push_str(&word[..MAX_WORD - 3]);
            out.push_str("...");
        } else {
            out.push_str(word);
        }
    }
    if out.len() > MAX_FIELD {
        out.truncate(MAX_FIELD - 3);
        out.push_str("...");
    }
    out
}

/// Append `text` (ASCII, words of at most [`MAX_WORD`]), folding at a space (CRLF + tab: the
/// space becomes folding white space, RFC 5322 §3.2.2) where the line would pass
/// [`MAX_LINE`] with room for the closing `")` and `;`.
fn push_folded(h: &mut String, text: &str) {
    for (i, word) in text.split(' ').enumerate() {
        let line = h.len() - h.rfind('\n').map_or(0, |p| p + 1);
        if i > 0 {
            if line + 1 + word.len() + 3 > MAX_LINE {
                h.push_str("\r\n\t");
            } else {
                h.push(' ');
            }
        }
        h.push_str(word);
    }
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
            our_cert: crate::session::OurCert::NotOffered,
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
            client_cert: ClientCert::Verified(cert.clone().into()),
            our_cert: crate::session::OurCert::NotOffered,
        };
        let peer = "192.0.2.7".parse().unwrap();
        let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
        assert!(h.contains(
            "\r\n\t(client certificate verified: subject \"CN=mail.woodgrovebank.com, \
             O=Woodgrove\"\r\n\tissuer \"CN=Woodgrove Issuing CA\");\r\n"
        ));
        // A certificate that did not verify is not vouched for.
        tls.client_cert = ClientCert::Failed {
            cert: cert.into(),
            reason: "expired".into(),
        };
        let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
        assert!(!h.contains("client certificate"));
    }

    #[test]
    fn certificate_text_cannot_inject_or_overflow() {
        let long_dn: Vec<String> = (0..60).map(|i| format!("OU=unit{i:02}")).collect();
        for (subject, issuer) in [
            (
                "CN=x\r\nX-Injected: yes\0 (\"\\)é".to_owned(),
                "O=".to_owned() + &"A".repeat(5000),
            ),
            (long_dn.join(", "), long_dn.join(" ").repeat(4)),
        ] {
            let cert = super::super::PeerCert {
                subject,
                issuer,
                ..Default::default()
            };
            let tls = TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                client_cert: ClientCert::Verified(cert.into()),
                our_cert: crate::session::OurCert::NotOffered,
            };
            let peer = "192.0.2.7".parse().unwrap();
            let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
            assert!(h.ends_with("\r\n") && !h.ends_with("\r\n\r\n"));
            for line in h.trim_end_matches("\r\n").split("\r\n") {
                assert!(line.len() <= 998, "line of {} octets", line.len());
                assert!(
                    line.bytes()
                        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
                    "{line:?}"
                );
            }
            // Every line after the first is a continuation (folded), never a new header.
            assert!(h
                .split("\r\n")
                .skip(1)
                .all(|l| l.is_empty() || l.starts_with('\t')));
        }
        let cert = super::super::PeerCert {
            subject: "CN=x\r\nX-Injected: yes\0 (\"\\)é".into(),
            issuer: "O=".to_owned() + &"A".repeat(5000),
            ..Default::default()
        };
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_cert: ClientCert::Verified(cert.into()),
            our_cert: crate::session::OurCert::NotOffered,
        };
        let peer = "192.0.2.7".parse().unwrap();
        let h = header(Some("c"), peer, "mx", Some(&tls), true, false, UNIX_EPOCH);
        assert!(
            h.contains("subject \"CN=x??X-Injected: yes? ?????\""),
            "{h}"
        );
        assert!(h.contains(&format!("O={}...\")", "A".repeat(MAX_WORD - 5))));
    }

    #[test]
    fn the_helo_name_cannot_open_a_comment_a_literal_or_a_string() {
        let peer = "192.0.2.7".parse().unwrap();
        let from = |helo: &str| {
            let h = header(Some(helo), peer, "mx", None, true, false, UNIX_EPOCH);
            let end = h.find(" ([192.0.2.7])\r\n\tby mx (smtp-sidecar) with ESMTP;\r\n\t");
            h[..end.expect("the rest of the clause intact")].to_owned()
        };
        for (helo, written) in [
            ("client.example", "client.example"),
            ("mail-1.sub_domain.example", "mail-1.sub_domain.example"),
            ("[192.0.2.7]", "[192.0.2.7]"),
            ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
            ("a(", "a?"),
            ("a(b)c", "a?b?c"),
            ("a;b", "a?b"),
            ("\"a\"", "?a?"),
            ("a\\", "a?"),
            ("[a", "?a"),
            ("a]", "a?"),
            ("[a]b]", "[a?b]"),
            ("[[a]]", "[?a?]"),
            ("]a[", "?a?"),
            ("[", "?"),
            ("a,b@c<d>e", "a?b?c?d?e"),
            ("exämple", "ex?mple"),
        ] {
            assert_eq!(from(helo), format!("Received: from {written}"), "{helo:?}");
        }
    }

    #[test]
    fn a_long_dn_is_folded_not_cut() {
        let dn: Vec<String> = (0..84).map(|i| format!("OU=unit{i:03},")).collect();
        let dn = dn.join(" ");
        let mut h = String::from("\t(x \"");
        push_folded(&mut h, &comment_text(&dn));
        assert!(h.contains("\r\n\t"), "folded");
        // Unfolding (RFC 5322 §2.2.3: remove the CRLF) gives the text back, the fold's tab
        // standing for the space.
        let unfolded = h.replace("\r\n", "").replace('\t', " ");
        assert_eq!(unfolded, format!(" (x \"{dn}"));
    }
}
