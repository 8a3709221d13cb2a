//! What the driver reports of a completed TLS handshake: version, cipher and the client
//! certificate with its verification outcome, as plain data (the core knows no rustls or
//! X.509 types).

/// The negotiated TLS parameters of the client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`
    pub version: String,
    /// e.g. `TLS13_AES_128_GCM_SHA256`
    pub cipher: String,
    /// The client certificate, if one was presented, and what its verification said. On the
    /// client side of a handshake (toward a next hop): the server's certificate.
    pub client_cert: ClientCert,
    /// On the client side: whether ours went (mutual TLS, `domain-secure`);
    /// [`OurCert::NotOffered`] on the server side.
    pub our_cert: OurCert,
}

/// Our client certificate in a handshake toward a next hop, as the driver saw it: what
/// decides whether `domain-secure`'s mutual TLS was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OurCert {
    /// None was to be presented (every level but `domain-secure`), or we were the server.
    #[default]
    NotOffered,
    /// The next hop asked for a client certificate and ours went in that handshake.
    Sent,
    /// It did not ask (no CertificateRequest), so none went.
    NotRequested,
    /// We had none it could take: no `client_certificate` at run time (whether or not it
    /// asked), or none for the signature schemes it accepts.
    NoneToPresent,
}

/// The client certificate of a TLS session, as the driver verified it against `trust`. The
/// certificate is boxed: most sessions have none, and each idle session holds this.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientCert {
    /// None was asked for, or the client sent none.
    #[default]
    None,
    /// It chains to a trust anchor, is within its validity and is not revoked.
    Verified(Box<PeerCert>),
    /// It was presented but does not verify; `reason` says why (`expired`, `revoked`,
    /// `untrusted issuer`...).
    Failed { cert: Box<PeerCert>, reason: String },
}

impl ClientCert {
    /// The certificate, verified or not.
    pub fn cert(&self) -> Option<&PeerCert> {
        match self {
            ClientCert::None => None,
            ClientCert::Verified(cert) | ClientCert::Failed { cert, .. } => Some(cert),
        }
    }
}

/// What a peer's (leaf) certificate says, as plain data: the core knows no X.509.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerCert {
    /// Subject distinguished name, e.g. `CN=mail.woodgrovebank.com, O=Woodgrove Bank`.
    pub subject: String,
    pub issuer: String,
    /// Serial number, upper-case hex.
    pub serial: String,
    /// SHA-1 of the DER certificate, upper-case hex.
    pub sha1: String,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub sha256: String,
    /// The DNS names of subjectAltName, in certificate order.
    pub dns_names: Vec<String>,
    /// The subject's common name, if any (used for names only when there is no DNS SAN).
    pub common_name: Option<String>,
    /// notBefore / notAfter, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}
