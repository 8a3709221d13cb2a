//! The outbound TLS policy decision: what a recipient domain's level demands of a next hop
//! connection, and what the legacy MTA is told when it cannot be had (SPEC §4: `450 4.7.5`
//! or `550 5.7.5` on that RCPT, the text saying why).

use super::{Level, OnFailure};
use crate::session::{ClientCert, OurCert, Refusal, TlsInfo};

/// Why a next hop connection did not meet the recipient domain's level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The next hop did not offer STARTTLS.
    NoStartTls,
    /// It offered STARTTLS and then refused it.
    StartTlsRefused,
    /// The TLS handshake failed.
    Handshake,
    /// The certificate chain did not verify against `trust`; why, as the driver put it
    /// (`expired`, `revoked`, `untrusted issuer`...).
    Certificate(String),
    /// The chain verifies but names neither the next hop nor the recipient domain.
    NameMismatch,
    /// `domain-secure`: the next hop did not ask for a client certificate, so ours did not
    /// go (a TLS client sends one only in reply to a CertificateRequest): no mutual TLS.
    ClientCertNotRequested,
    /// `domain-secure`: it asked, but we had none to present (no `client_certificate` at run
    /// time, or none for the signature schemes it accepts).
    NoClientCert,
    /// The next hop ended TLS with this fatal alert (its RFC 8446 name, e.g. `unknown_ca`)
    /// after our side of the handshake was done and before its first reply: in TLS 1.3 a
    /// server judges the client's certificate after the client's handshake has completed,
    /// so a refused certificate arrives then, not as a failed handshake.
    Alert(String),
}

impl TlsFailure {
    /// The policy refusal it is (the metrics' `reason`).
    pub fn reason(&self) -> Refusal {
        match self {
            TlsFailure::NoStartTls => Refusal::NoStartTls,
            TlsFailure::StartTlsRefused => Refusal::StartTlsRefused,
            TlsFailure::Handshake => Refusal::HandshakeFailed,
            TlsFailure::Certificate(why) => match why.as_str() {
                "expired" | "not yet valid" => Refusal::CertificateExpired,
                "revoked" => Refusal::CertificateRevoked,
                "untrusted issuer" => Refusal::CertificateUntrusted,
                _ => Refusal::CertificateInvalid,
            },
            TlsFailure::NameMismatch => Refusal::NameMismatch,
            // No mutual TLS was had: the handshake the level needs did not happen. (The
            // reasons are a closed list, the metrics' labels; the text says which.)
            TlsFailure::ClientCertNotRequested
            | TlsFailure::NoClientCert
            | TlsFailure::Alert(_) => Refusal::HandshakeFailed,
        }
    }

    fn text(&self, host: &str, domain: &str) -> String {
        match self {
            TlsFailure::NoStartTls => format!("{host} did not offer STARTTLS"),
            TlsFailure::StartTlsRefused => format!("{host} refused STARTTLS"),
            TlsFailure::Handshake => format!("TLS handshake with {host} failed"),
            TlsFailure::Certificate(why) => {
                format!("certificate of {host} did not verify ({why})")
            }
            TlsFailure::NameMismatch => {
                format!("certificate of {host} is not valid for {host} or {domain}")
            }
            TlsFailure::ClientCertNotRequested => {
                format!("{host} did not ask for our client certificate")
            }
            TlsFailure::NoClientCert => format!("no client certificate to present to {host}"),
            TlsFailure::Alert(alert) => {
                format!(
                    "TLS handshake with {host} failed: alert {}",
                    printable(alert)
                )
            }
        }
    }
}

/// A TLS policy that was not met, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailureReport {
    /// The recipient domain (ASCII, lower case): for the log only, never a metric label.
    pub domain: String,
    /// The listed domain as configured, when the domain is listed: a bounded label.
    pub listed: Option<String>,
    pub level: Level,
    pub host: String,
    pub failure: TlsFailure,
    /// `false`: audit mode, the recipient was delivered as `may` would.
    pub enforced: bool,
}

/// What the level still demands once the next hop's capabilities are known.
pub(super) fn wants_tls(level: Level) -> bool {
    level >= Level::May
}

/// Whether TLS is a must (a plaintext fallback is a failure).
pub(super) fn needs_tls(level: Level) -> bool {
    level >= Level::Encrypt
}

/// Whether the certificate is checked.
pub(super) fn verifies(level: Level) -> bool {
    level >= Level::Verify
}

/// The check after a handshake (the next hop's certificate; for `domain-secure`, that ours
/// went too): `None` if the level is met.
pub(super) fn judge(level: Level, tls: &TlsInfo) -> Option<TlsFailure> {
    if !verifies(level) {
        return None;
    }
    let theirs = match &tls.client_cert {
        ClientCert::Verified(_) => None,
        ClientCert::Failed { reason, .. } if reason == "name mismatch" => {
            Some(TlsFailure::NameMismatch)
        }
        ClientCert::Failed { reason, .. } => Some(TlsFailure::Certificate(reason.clone())),
        ClientCert::None => Some(TlsFailure::Certificate("no certificate".into())),
    };
    if theirs.is_some() || level != Level::DomainSecure {
        return theirs;
    }
    match tls.our_cert {
        OurCert::Sent => None,
        OurCert::NotRequested => Some(TlsFailure::ClientCertNotRequested),
        OurCert::NoneToPresent | OurCert::NotOffered => Some(TlsFailure::NoClientCert),
    }
}

/// The reply on the RCPT when a domain's level cannot be met: one line within RFC 5321's 512
/// octets (§4.5.3.1.5) with its CRLF, however long the names in it (an MX host is named by
/// the domain's DNS, and a certificate's mismatch names it twice).
pub(super) fn reply(
    on_failure: OnFailure,
    level: Level,
    domain: &str,
    host: &str,
    failure: &TlsFailure,
) -> String {
    let code = match on_failure {
        OnFailure::Defer => "450 4.7.5",
        OnFailure::Bounce => "550 5.7.5",
    };
    let (host, domain) = (printable(host), printable(domain));
    let text = failure.text(&host, &domain);
    let level = level.as_str();
    let mut line = format!("{code} TLS policy {level} for {domain} not met: {text}");
    // ASCII (`printable`), so cut anywhere.
    line.truncate(super::hop::MAX_RELAYED_LINE - 2);
    line
}

/// A name from DNS or from the client, safe inside a reply line: printable ASCII, bounded.
pub(super) fn printable(name: &str) -> String {
    name.chars()
        .take(255)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
