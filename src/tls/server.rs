//! The rustls server configuration of a terminating listener (SPEC §3 `tls_min_version`,
//! DESIGN §5 resumption) and the TLS facts a session reports in its Received header and logs.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use rustls::{CommonState, ProtocolVersion, ServerConfig, SupportedProtocolVersion};

use super::TlsError;
use crate::config::TlsVersion;

/// Stateful resumption entries (TLS 1.2 session IDs) kept per listener. An entry holds the
/// master secret and a few fields, a few hundred bytes, so the cache is bounded at about a MB
/// and covers thousands of recently seen sending MTAs.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// TLS 1.3 tickets sent after each full or resumed handshake. SMTP senders keep one cached
/// session per next hop and get a fresh ticket on every connection, so one is enough; each
/// ticket costs an encryption and a record on the wire.
const TLS13_TICKETS: usize = 1;

/// The rustls configuration of one listener, serving what `certificates` picks (see
/// `select.rs`): client authentication by `client_auth` (`None`: none, no CertificateRequest
/// at all), TLS 1.2 and 1.3 (or 1.3 only), resumption by session cache and by stateless
/// tickets, no ALPN (SMTP has none), the cipher suite chosen by [`super::provider`]'s order.
///
/// Each call makes its own cache and ticket keys: rustls warns against sharing resumption
/// state between configurations whose client authentication differs, and a reload therefore
/// starts with fresh keys (resumption attempts from before it fall back to full handshakes).
pub fn server_config(
    certificates: Arc<dyn ResolvesServerCert>,
    min_version: TlsVersion,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(protocol_versions(min_version))?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(certificates);
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = super::crypto::Ticketer::new()?;
    config.send_tls13_tickets = TLS13_TICKETS;
    // An implicit-TLS listener's greeting may leave with the handshake (`ServerTls::accept`).
    // rustls does not send it in a full handshake that asks for a client certificate; a
    // resumed one has its client authenticated by the ticket already.
    config.send_half_rtt_data = true;
    config.alpn_protocols = Vec::new();
    // The suite by our order, AES-128-GCM first (see `provider`), not the client's: most
    // clients list AES-256 first, and it costs every handshake and record more.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The protocol versions from `tls_min_version` up, for servers and clients alike.
pub(crate) fn protocol_versions(
    min_version: TlsVersion,
) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min_version {
        TlsVersion::V1_2 => &BOTH,
        TlsVersion::V1_3 => &ONLY_13,
    }
}

/// The negotiated protocol (`"TLSv1.2"`, `"TLSv1.3"`) and cipher suite as rustls names it
/// (`"TLS13_AES_128_GCM_SHA256"`), for the Received header (RFC 8314 §4.3 style) and logs.
/// Before the handshake has chosen them, both are `"unknown"`. Either side's connection will
/// do (a `ServerConnection` or `ClientConnection` derefs to its `CommonState`).
pub fn session_tls_info(conn: &CommonState) -> (String, String) {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let suite = match conn.negotiated_cipher_suite() {
        Some(s) => s
            .suite()
            .as_str()
            .map_or_else(|| format!("{:?}", s.suite()), str::to_string),
        None => "unknown".to_string(),
    };
    (version, suite)
}
