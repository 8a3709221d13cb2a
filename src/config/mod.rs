//! Configuration: `raw` mirrors the YAML of SPEC §3 exactly (serde, unknown keys refused),
//! `validate` turns it into the typed [`Config`] below, collecting every problem with its key
//! path. Keys whose behaviour a later issue builds are accepted only at their default value.
//!
//! | file | owns |
//! |---|---|
//! | `yaml` | lenient serde pieces: any value, mapping/list sections, unknown-key capture |
//! | `raw` | the structs of SPEC §3 and their defaults |
//! | `units` | duration and size syntax |
//! | `fields` | typing one value, recording a path-prefixed problem on failure |
//! | `validate` | [`parse`], [`load`], [`ConfigError`], the top-level sections |
//! | `listeners` | `listeners[]`: addresses, names, certificate references, backend |
//! | `policy` | a listener's `policy` (terminate typed, originate spell-checked) |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use smtp_core::data::{BareNewlines, LongLines};
pub use smtp_core::inbound::OnFailure;

mod fields;
mod listeners;
mod policy;
mod raw;
mod units;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

pub use validate::{load, parse, ConfigError};

/// A validated configuration: everything here is supported and consistent.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    pub state_dir: PathBuf,
    pub shutdown_grace: Duration,
    /// `metrics.listen`; `None` when the key is absent (no admin endpoint).
    pub metrics_listen: Option<SocketAddr>,
    pub log: LogConfig,
    pub certificates: Vec<CertificateConfig>,
    pub trust: TrustConfig,
    pub listeners: Vec<Listener>,
}

/// `trust`: the anchors and revocation lists peer certificates are verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    /// The operating system's store (rustls-native-certs).
    pub system_roots: bool,
    /// PEM bundles of extra anchors (a partner's private CA).
    pub ca_files: Vec<PathBuf>,
    /// PEM or DER CRLs.
    pub crl_files: Vec<PathBuf>,
}

/// `policy.client_certificates` of a terminate listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// No CertificateRequest is sent.
    None,
    /// Asked for; a client without one, or with one that does not verify, continues.
    Request,
    /// The handshake fails without a certificate that verifies.
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive: `info`, `debug`, `smtp_sidecar=debug,warn`...
    pub level: String,
    /// Every command and reply line, and the certificates of each handshake, logged at info
    /// under the target `smtp_sidecar::protocol`.
    pub protocol_log: bool,
}

/// One entry of the certificate store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A listener's `certificate` (SPEC §3). Whether the name or thumbprint matches a loaded
/// certificate is decided when the store is loaded (`src/tls/select.rs`), not here: a miss
/// fails `check` but only costs `run` that listener's STARTTLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CertificateSelection {
    /// No key given: by the client's SNI, else `hostname`, in Exchange's order.
    #[default]
    Automatic,
    /// `certificate.name`: the store entry of that name.
    Name(String),
    /// `certificate.thumbprint`: SHA-1 (40 hex) or SHA-256 (64 hex) of the leaf, normalised
    /// to upper case without separators.
    Thumbprint(String),
    /// Both keys: the entry of that name, and only if it has that thumbprint (a pin, so that
    /// a certificate file replaced by mistake is noticed instead of served).
    NameAndThumbprint { name: String, thumbprint: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerTls {
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// A `mode: terminate` listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: ListenerTls,
    /// `certificate`: which store entry to serve.
    pub certificate: CertificateSelection,
    pub backend: Backend,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// `host:port` strings, tried in order.
    pub servers: Vec<String>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub require_tls: bool,
    pub auth_requires_tls: bool,
    pub client_certificates: ClientCertificates,
    /// Listed sender domains, as configured (lower-cased, no trailing dot).
    pub domain_secure: Vec<String>,
    pub on_failure: OnFailure,
    /// `false`: audit mode for the TLS policy's refusals.
    pub enforce: bool,
    pub tls_min_version: TlsVersion,
    pub bare_newlines: BareNewlines,
    pub long_lines: LongLines,
    pub received_header: bool,
    pub max_message_size: u64,
    pub max_recipients: u32,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub greeting: Duration,
    pub command: Duration,
    pub data_block: Duration,
    pub tls_handshake: Duration,
}
