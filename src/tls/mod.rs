//! TLS: the certificate store, the rustls server configuration of each listener and the
//! client configuration of originate listeners.
//!
//! | file | owns |
//! |---|---|
//! | `certinfo.rs` | what a certificate says (subject, SANs, thumbprints, validity) and UTC date formatting |
//! | `store.rs` | loading PEM chains and keys into [`LoadedCert`]s, the [`CertStore`] and its selection |
//! | `select.rs` | which certificate a listener serves: by name, thumbprint, or per ClientHello by SNI and `hostname` in Exchange's order |
//! | `selfsigned.rs` | the generated default certificate kept in `state_dir` |
//! | `server.rs` | the rustls [`rustls::ServerConfig`] of a listener and what a session reports about TLS |
//! | `trust.rs` | `trust`: anchors (OS store, CA files) and CRLs, loaded once per runtime |
//! | `client_auth.rs` | `client_certificates`: the client verifier, and what a session learns of the client's certificate |
//! | `client.rs` | originate mode's TLS client: the rustls [`rustls::ClientConfig`]s (with and without `client_certificate`) and the next hop's certificate judged against `trust` after the handshake |
//!
//! Every TLS object is built with one explicit crypto provider ([`provider`]) instead of the
//! process-wide default, so the choice is made in one place and no code path can panic because
//! two providers happen to be compiled in.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

mod certinfo;
mod client;
mod client_auth;
mod select;
mod selfsigned;
mod server;
pub mod sni;
mod store;
mod trust;

#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod tests_client;
#[cfg(test)]
mod tests_handshake;
#[cfg(test)]
mod tests_select;
#[cfg(test)]
mod tests_selfsigned;
#[cfg(test)]
mod tests_store;

pub use certinfo::CertInfo;
pub use client::{backend_config, server_name, ClientTls};
pub use client_auth::{
    failure_reason, peer_cert, refused_certificate, refused_leaf, take_refused_certificate,
    CertificateRefused, ClientAuth,
};
pub use select::{take_chosen_certificate, Candidates, CertPlan};
pub use selfsigned::{
    kept_self_signed, load_or_create_self_signed, self_signed, self_signed_in, Unsaved,
    SELF_SIGNED_NAME,
};
pub use server::{server_config, session_tls_info};
pub use store::{CertStore, LoadedCert};
pub use trust::{Trust, TrustSummary};

/// Why a TLS object could not be built; the text is meant for the operator's log.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read, parsed or written.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// rcgen refused to generate the self-signed certificate.
    #[error("generating the self-signed certificate: {0}")]
    Generate(String),
    /// The configuration asks for something the loaded files cannot give.
    #[error("{0}")]
    Unusable(&'static str),
    /// rustls refused the configuration (no usable protocol version, no randomness...).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider every TLS object of the sidecar uses (keys, handshakes, tickets):
/// aws-lc-rs, rustls's default, or *ring* when built with `--features crypto-ring` (kept so
/// that the two can be measured against each other; see the README's performance notes).
///
/// Its cipher suites are the provider's own with AES-128-GCM first, in TLS 1.3 and 1.2: a
/// listener chooses by that order (`server_config`), and a client offers it. AES-128 is as
/// strong as the key exchanges it comes with (X25519 and P-256 are 128-bit), and it is the
/// cheaper one: a TLS 1.3 handshake with it runs its key schedule on SHA-256, which current
/// x86 and ARM cores compute in hardware, where AES-256's SHA-384 runs aws-lc's portable
/// SHA-512 code on many, and each record takes 10 AES rounds instead of 14.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = crypto::default_provider();
            provider
                .cipher_suites
                .sort_by_key(|s| !aes_128_gcm(s.suite()));
            Arc::new(provider)
        })
        .clone()
}

/// The AES-128-GCM suites, which [`provider`] puts first.
fn aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

#[cfg(not(feature = "crypto-ring"))]
pub(crate) use rustls::crypto::aws_lc_rs as crypto;
#[cfg(feature = "crypto-ring")]
pub(crate) use rustls::crypto::ring as crypto;
