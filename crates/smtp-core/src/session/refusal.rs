//! Why a policy refused something: one closed list for both directions, so that a metric
//! label can only ever be one of these (DESIGN.md rule 9) and a dashboard can list them.

/// A policy refusal's reason (`smtp_sidecar_policy_rejections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `530 5.7.0` before STARTTLS under `require_tls`.
    TlsRequired,
    /// `538 5.7.11`: AUTH before TLS.
    AuthRequiresTls,
    /// `552 5.3.4`: declared or actual size over the limit.
    MessageSize,
    /// `452 4.5.3`: recipients over `max_recipients`.
    MaxRecipients,
    /// `550 5.6.11`.
    BareNewline,
    NulByte,
    /// `550 5.6.0`.
    LongLine,
    /// Inbound Domain Security (`450 4.7.1` / `550 5.7.1`): what the listed sender lacked.
    DomainSecureNoTls,
    DomainSecureNoClientCertificate,
    DomainSecureCertificateUnverified,
    DomainSecureNameMismatch,
    /// Outbound TLS levels (`450 4.7.5` / `550 5.7.5`): what the next hop lacked.
    NoStartTls,
    StartTlsRefused,
    HandshakeFailed,
    CertificateExpired,
    CertificateRevoked,
    CertificateUntrusted,
    CertificateInvalid,
    NameMismatch,
}

impl Refusal {
    /// Every reason, for creating their series up front.
    pub const ALL: [Refusal; 19] = [
        Refusal::TlsRequired,
        Refusal::AuthRequiresTls,
        Refusal::MessageSize,
        Refusal::MaxRecipients,
        Refusal::BareNewline,
        Refusal::NulByte,
        Refusal::LongLine,
        Refusal::DomainSecureNoTls,
        Refusal::DomainSecureNoClientCertificate,
        Refusal::DomainSecureCertificateUnverified,
        Refusal::DomainSecureNameMismatch,
        Refusal::NoStartTls,
        Refusal::StartTlsRefused,
        Refusal::HandshakeFailed,
        Refusal::CertificateExpired,
        Refusal::CertificateRevoked,
        Refusal::CertificateUntrusted,
        Refusal::CertificateInvalid,
        Refusal::NameMismatch,
    ];

    /// Why an outbound session could not meet its level.
    pub const OUTBOUND: [Refusal; 8] = [
        Refusal::NoStartTls,
        Refusal::StartTlsRefused,
        Refusal::HandshakeFailed,
        Refusal::CertificateExpired,
        Refusal::CertificateRevoked,
        Refusal::CertificateUntrusted,
        Refusal::CertificateInvalid,
        Refusal::NameMismatch,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TlsRequired => "tls_required",
            Refusal::AuthRequiresTls => "auth_requires_tls",
            Refusal::MessageSize => "message_size",
            Refusal::MaxRecipients => "max_recipients",
            Refusal::BareNewline => "bare_newline",
            Refusal::NulByte => "nul_byte",
            Refusal::LongLine => "long_line",
            Refusal::DomainSecureNoTls => "domain_secure_no_tls",
            Refusal::DomainSecureNoClientCertificate => "domain_secure_no_client_certificate",
            Refusal::DomainSecureCertificateUnverified => "domain_secure_certificate_unverified",
            Refusal::DomainSecureNameMismatch => "domain_secure_name_mismatch",
            Refusal::NoStartTls => "no_starttls",
            Refusal::StartTlsRefused => "starttls_refused",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::CertificateExpired => "certificate_expired",
            Refusal::CertificateRevoked => "certificate_revoked",
            Refusal::CertificateUntrusted => "certificate_untrusted",
            Refusal::CertificateInvalid => "certificate_invalid",
            Refusal::NameMismatch => "name_mismatch",
        }
    }

    /// Its position in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a backend (or next hop) connection failed: a bounded label, the detail goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegFailure {
    /// The connection could not be opened.
    Unreachable,
    /// Its greeting, EHLO or HELO was refused.
    Refused,
    /// It closed or broke.
    Closed,
    /// It did not answer in time.
    Timeout,
    /// It broke the protocol: a malformed reply, one that answers no command outstanding.
    Protocol,
    /// A replacement connection could not be brought back to where the client is.
    Replay,
    /// A next hop did not meet the recipient domain's TLS level.
    Policy,
    /// A recipient domain's next hops could not be found (DNS).
    Dns,
    /// The encrypted hop to a backend could not be set up: no STARTTLS offered, STARTTLS
    /// refused, or the handshake failed (certificate included).
    Tls,
    /// The next hop is the sidecar's own listener: a mail loop, not tried (or closed once
    /// connected).
    Loop,
}

impl LegFailure {
    pub const ALL: [LegFailure; 10] = [
        LegFailure::Unreachable,
        LegFailure::Refused,
        LegFailure::Closed,
        LegFailure::Timeout,
        LegFailure::Protocol,
        LegFailure::Replay,
        LegFailure::Policy,
        LegFailure::Dns,
        LegFailure::Tls,
        LegFailure::Loop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LegFailure::Unreachable => "unreachable",
            LegFailure::Refused => "refused",
            LegFailure::Closed => "closed",
            LegFailure::Timeout => "timeout",
            LegFailure::Protocol => "protocol",
            LegFailure::Replay => "replay",
            LegFailure::Policy => "policy",
            LegFailure::Dns => "dns",
            LegFailure::Tls => "tls",
            LegFailure::Loop => "loop",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{LegFailure, Refusal};

    /// `ALL` lists each kind at its index (the metrics' arrays are indexed so), with labels
    /// that differ.
    fn in_order_with_unique_labels(all: impl ExactSizeIterator<Item = (usize, &'static str)>) {
        let n = all.len();
        let mut labels = Vec::with_capacity(n);
        for (i, (index, label)) in all.enumerate() {
            assert_eq!(index, i, "{label}");
            labels.push(label);
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), n);
    }

    #[test]
    fn leg_failures_are_in_declaration_order_and_labels_are_unique() {
        in_order_with_unique_labels(LegFailure::ALL.iter().map(|k| (k.index(), k.as_str())));
    }

    #[test]
    fn all_is_in_declaration_order_and_labels_are_unique() {
        in_order_with_unique_labels(Refusal::ALL.iter().map(|r| (r.index(), r.as_str())));
    }
}
