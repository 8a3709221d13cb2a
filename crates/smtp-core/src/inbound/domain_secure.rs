//! Domain Security inbound (Exchange's `TLSReceiveDomainSecureList`): mail whose MAIL FROM
//! domain is listed in `domain_secure` is accepted only over TLS with a client certificate
//! that verified and whose names cover that domain. Decided here, at MAIL FROM, from what the
//! driver reported of the handshake ([`ClientCert`]); the session answers `450 4.7.1` or
//! `550 5.7.1` (`on_failure`) and goes on, and each transaction is judged on its own.

use super::{ClientCert, Event, OnFailure, PeerCert, Session, TlsInfo};
use crate::session::Refusal;

/// What a listed sender's session lacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    NoTls,
    NoClientCertificate,
    /// The certificate did not verify; the reason (`expired`, `revoked`, `untrusted`...).
    NotVerified(String),
    /// It verified, but none of its names is the domain or a host inside it.
    NameMismatch,
}

impl Missing {
    /// The `reason` label of `smtp_sidecar_policy_rejections_total`.
    pub fn reason(&self) -> Refusal {
        match self {
            Missing::NoTls => Refusal::DomainSecureNoTls,
            Missing::NoClientCertificate => Refusal::DomainSecureNoClientCertificate,
            Missing::NotVerified(_) => Refusal::DomainSecureCertificateUnverified,
            Missing::NameMismatch => Refusal::DomainSecureNameMismatch,
        }
    }
}

/// A refused (or, in audit mode, let through) transaction from a listed domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSecureRefusal {
    /// The listed domain, as configured.
    pub domain: String,
    pub missing: Missing,
    /// The subject of the certificate presented, if any, for the log.
    pub subject: Option<String>,
}

impl DomainSecureRefusal {
    /// The reply text after the codes: names the domain and what was missing.
    pub fn text(&self) -> String {
        let what = match &self.missing {
            Missing::NoTls => "no TLS".to_owned(),
            Missing::NoClientCertificate => "no client certificate".to_owned(),
            Missing::NotVerified(why) => {
                format!("client certificate did not verify ({})", printable(why))
            }
            Missing::NameMismatch => format!("client certificate not valid for {}", self.domain),
        };
        format!(
            "Domain Security: mail from {} requires mutual TLS; {what}",
            self.domain
        )
    }
}

impl Session {
    /// Domain Security at MAIL FROM. `Some(secure)`: go on (`secure` is the listed domain's
    /// index when the session met it); `None`: refused, the reply is written.
    pub(super) fn domain_security(&mut self, from: &str) -> Option<Option<usize>> {
        let list = &self.cfg.domain_secure;
        let Some(domain) = listed_domain(list, from) else {
            return Some(None);
        };
        let index = list.iter().position(|d| d == domain);
        let missing = match judge(domain, self.tls.as_ref()) {
            Ok(()) => return Some(index),
            Err(missing) => missing,
        };
        let refusal = DomainSecureRefusal {
            domain: domain.to_owned(),
            subject: self
                .tls
                .as_ref()
                .and_then(|t| t.client_cert.cert())
                .map(|c| c.subject.clone()),
            missing,
        };
        let enforced = self.tls_policy_rejection(refusal.missing.reason());
        let text = refusal.text();
        self.conn.event(Event::DomainSecureRefused(refusal));
        if !enforced {
            // Audit mode: through, but never counted as domain-secure.
            return Some(None);
        }
        let code = match self.cfg.on_failure {
            OnFailure::Defer => "450 4.7.1",
            OnFailure::Reject => "550 5.7.1",
        };
        // The session goes on and the next transaction is judged on its own; the refusal
        // counts toward the error limit, so a client cannot repeat it (and its log line)
        // without end.
        self.send(&format!("{code} {text}"));
        self.count_error();
        None
    }
}

/// The listed domain `sender` (a MAIL FROM path) belongs to, if any: its domain exactly,
/// compared ASCII case-insensitively. A subdomain is not the domain unless listed itself.
///
/// Where a legacy backend could read the path otherwise, it counts as listed (fail closed):
/// a listed domain after any `@` of the path (`a@bank.test@evil.test`), a non-ASCII
/// (internationalised) domain that maps to a listed one ([`crate::idn::ascii_forms`]:
/// `bücher.test` is `xn--bcher-kva.test`, full-width `ｂａｎｋ.test` is `bank.test`), and the
/// path as an MTA that takes RFC 822 syntax in envelopes reads it ([`as_rfc822_reads`]:
/// `a@(x)bank.test` is `a@bank.test` to Postfix by default, and to sendmail).
pub(super) fn listed_domain<'a>(list: &'a [String], sender: &str) -> Option<&'a str> {
    listed_as_written(list, sender).or_else(|| {
        sender
            .contains(['(', '\\', '"'])
            .then(|| listed_as_written(list, &as_rfc822_reads(sender)))
            .flatten()
    })
}

/// `sender` with RFC 822 comments (nested) left out, and quoted pairs and quotes undone.
fn as_rfc822_reads(sender: &str) -> String {
    let mut read = String::with_capacity(sender.len());
    let mut depth = 0u32;
    let mut chars = sender.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(quoted) = chars.next().filter(|_| depth == 0) {
                    read.push(quoted);
                }
            }
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            '"' => {}
            _ if depth == 0 => read.push(c),
            _ => {}
        }
    }
    read
}

fn listed_as_written<'a>(list: &'a [String], sender: &str) -> Option<&'a str> {
    let (_, domain) = sender.rsplit_once('@')?;
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return None;
    }
    let bare = |listed: &'a String| listed.strip_suffix('.').unwrap_or(listed);
    let exact = list.iter().find(|l| bare(l).eq_ignore_ascii_case(domain));
    let sender = sender.to_ascii_lowercase();
    let after_an_at = || {
        list.iter().find(|l| {
            let needle = format!("@{}", bare(l).to_ascii_lowercase());
            sender.match_indices(&needle).any(|(at, _)| {
                let next = sender[at + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
        })
    };
    let idn = || {
        crate::idn::ascii_forms(domain)
            .iter()
            .find_map(|form| list.iter().find(|l| bare(l).eq_ignore_ascii_case(form)))
    };
    exact.or_else(after_an_at).or_else(idn).map(|l| l.as_str())
}

/// Whether the session meets Domain Security for `domain`.
pub(super) fn judge(domain: &str, tls: Option<&TlsInfo>) -> Result<(), Missing> {
    let Some(tls) = tls else {
        return Err(Missing::NoTls);
    };
    match &tls.client_cert {
        ClientCert::None => Err(Missing::NoClientCertificate),
        ClientCert::Failed { reason, .. } => Err(Missing::NotVerified(reason.clone())),
        ClientCert::Verified(cert) if cert_names_domain(cert, domain) => Ok(()),
        ClientCert::Verified(_) => Err(Missing::NameMismatch),
    }
}

/// The certificate's DNS SANs (its CN only when it has none) name `domain` or a host inside it.
pub fn cert_names_domain(cert: &PeerCert, domain: &str) -> bool {
    if cert.dns_names.is_empty() {
        return cert
            .common_name
            .as_deref()
            .is_some_and(|cn| name_covers(cn, domain));
    }
    cert.dns_names.iter().any(|name| name_covers(name, domain))
}

/// One certificate name against the domain: `woodgrovebank.com` and `mail.woodgrovebank.com`
/// cover `woodgrovebank.com`. A wildcard (RFC 6125 §6.4.3: `*` as the whole left-most label
/// only, matching exactly one label) covers it when a name it matches is the domain or inside
/// it; `*.com`-style wildcards over a single label match nothing.
pub fn name_covers(name: &str, domain: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if domain.is_empty() || !name.is_ascii() {
        return false;
    }
    let inside = |host: &str| host == domain || host.ends_with(&format!(".{domain}"));
    match name.strip_prefix("*.") {
        None => !name.contains('*') && inside(&name),
        Some(rest) => {
            // At least two labels under the wildcard, no other wildcard.
            if rest.contains('*') || !rest.contains('.') || rest.split('.').any(str::is_empty) {
                return false;
            }
            // `*.rest` names `label.rest`: the domain itself when the domain is one label
            // above `rest`, or hosts inside the domain when `rest` is the domain or inside it.
            inside(rest)
                || domain
                    .split_once('.')
                    .is_some_and(|(_, parent)| parent == rest)
        }
    }
}

/// Reply and log text from certificate-derived data: printable ASCII only, bounded.
fn printable(text: &str) -> String {
    crate::reply::printable_text(text, 120).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_domain_and_hosts_inside_it() {
        let d = "woodgrovebank.com";
        for (name, covers) in [
            ("woodgrovebank.com", true),
            ("WoodgroveBank.COM", true),
            ("mail.woodgrovebank.com", true),
            ("a.b.woodgrovebank.com", true),
            ("woodgrovebank.com.", true),
            ("evilwoodgrovebank.com", false),
            ("woodgrovebank.com.evil.test", false),
            ("com", false),
            ("*.woodgrovebank.com", true),
            ("*.mail.woodgrovebank.com", true),
            ("*.com", false),
            ("*.*.com", false),
            ("m*.woodgrovebank.com", false),
            ("*woodgrovebank.com", false),
            ("*.evil.test", false),
            ("", false),
        ] {
            assert_eq!(name_covers(name, d), covers, "{name}");
        }
        // A wildcard one label up names the domain itself (it is a host of the parent zone).
        assert!(name_covers("*.bank.example", "woodgrove.bank.example"));
        assert!(!name_covers("*.example", "bank.example"));
    }

    #[test]
    fn cn_only_without_dns_sans() {
        let mut cert = PeerCert {
            common_name: Some("mail.woodgrovebank.com".into()),
            ..PeerCert::default()
        };
        assert!(cert_names_domain(&cert, "woodgrovebank.com"));
        cert.dns_names = vec!["other.test".into()];
        assert!(!cert_names_domain(&cert, "woodgrovebank.com"));
    }

    #[test]
    fn listed_domain_is_exact_and_case_insensitive() {
        let list = vec!["WoodgroveBank.com".to_owned(), "fabrikam.test".to_owned()];
        assert_eq!(
            listed_domain(&list, "alice@woodgrovebank.COM"),
            Some("WoodgroveBank.com")
        );
        assert_eq!(
            listed_domain(&list, "@relay.test:bob@fabrikam.test"),
            Some("fabrikam.test")
        );
        assert_eq!(listed_domain(&list, "alice@sub.woodgrovebank.com"), None);
        assert_eq!(listed_domain(&list, ""), None);
        assert_eq!(listed_domain(&list, "postmaster"), None);
    }
}
