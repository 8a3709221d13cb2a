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
//! | `listeners` | `listeners[]`: addresses, names, mode, certificate references, backend, next hop |
//! | `policy` | a listener's `policy`, per mode, and domain names |
//! | `session` | the core's per-session configuration of an originate listener |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use smtp_core::data::{BareNewlines, LongLines};
pub use smtp_core::inbound::OnFailure;
pub use smtp_core::outbound::Level;

mod fields;
mod listeners;
pub use listeners::reaches;
mod policy;
mod raw;
mod session;
mod units;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

pub use validate::{load, log_filter, parse, ConfigError};

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
    pub resolver: ResolverConfig,
    pub trust: TrustConfig,
    pub listeners: Vec<Listener>,
}

/// `resolver`: DNS for originate listeners' MX look-ups (`crate::mx::MxResolver::new` takes
/// it as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Asked over UDP, then TCP, the fastest to answer preferred (hickory's default
    /// ordering); empty: the system's (/etc/resolv.conf). Written
    /// `"ip"` (port 53) or `"ip:port"` / `"[v6]:port"`.
    pub nameservers: Vec<SocketAddr>,
    /// Bounds a whole look-up (the MX query and the address queries after it).
    pub timeout: Duration,
    /// Mail servers at a loopback address (127.0.0.0/8, ::1) are delivered to: only for a
    /// test rig on one machine. Otherwise such an address is never a next hop
    /// (`crate::mx::routable`).
    pub allow_loopback: bool,
}

impl Default for ResolverConfig {
    /// SPEC §3: the system's name servers, 5s.
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            allow_loopback: false,
        }
    }
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

/// One entry of `listeners`: what both modes have, and the mode's own part.
///
/// The mode is an enum rather than optional fields so that a terminate listener always has
/// its backend and an originate listener its next hop: code that serves one mode matches once
/// and then reads plain fields.
#[derive(Debug, Clone)]
pub struct Listener {
    /// `name`, or the listen address when none is given; unique.
    pub name: String,
    pub listen: SocketAddr,
    /// `proxy_protocol`: every connection begins with a PROXY v1/v2 header, read within
    /// `policy.timeouts.proxy_header`, whose address is the client's (`crate::proxy`).
    pub proxy_protocol: bool,
    pub mode: ListenerMode,
}

#[derive(Debug, Clone)]
pub enum ListenerMode {
    /// `mode: terminate`: inbound TLS in front of a legacy server.
    Terminate(TerminateListener),
    /// `mode: originate`: the legacy MTA's smart host, delivering over TLS.
    Originate(OriginateListener),
}

impl Listener {
    /// The terminate part, if that is the mode.
    pub fn terminate(&self) -> Option<&TerminateListener> {
        match &self.mode {
            ListenerMode::Terminate(t) => Some(t),
            ListenerMode::Originate(_) => None,
        }
    }

    /// The originate part, if that is the mode.
    pub fn originate(&self) -> Option<&OriginateListener> {
        match &self.mode {
            ListenerMode::Originate(o) => Some(o),
            ListenerMode::Terminate(_) => None,
        }
    }

    /// `mode` as the YAML spells it.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            ListenerMode::Terminate(_) => "terminate",
            ListenerMode::Originate(_) => "originate",
        }
    }

    /// `policy.max_connections`, whichever the mode.
    pub fn max_connections(&self) -> u32 {
        match &self.mode {
            ListenerMode::Terminate(t) => t.policy.max_connections,
            ListenerMode::Originate(o) => o.policy.max_connections,
        }
    }
}

/// The part of a `mode: terminate` listener that originate does not have.
#[derive(Debug, Clone)]
pub struct TerminateListener {
    pub tls: ListenerTls,
    /// `certificate`: which store entry to serve.
    pub certificate: CertificateSelection,
    pub backend: Backend,
    pub policy: Policy,
}

/// The part of a `mode: originate` listener that terminate does not have. The legacy MTA
/// connects to it in plaintext (it has no `tls`); TLS is on the leg to the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginateListener {
    pub next_hop: NextHopConfig,
    /// `client_certificate`: what is presented where mutual TLS is wanted (`domain-secure`).
    /// `Automatic`: the store's default for `hostname`, the one a terminate listener serves a
    /// client without SNI (SNI plays no part on this side).
    pub client_certificate: CertificateSelection,
    pub policy: OriginatePolicy,
}

/// `next_hop` of an originate listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHopConfig {
    /// `mx`: each recipient domain's MX hosts (A/AAAA without MX) on port 25; `mx:PORT`
    /// on another port (a test network, or one that redirects port 25).
    Mx { port: u16 },
    /// `"host:port"`: a fixed relay. `host` is a DNS name (lower case, no trailing dot) or an
    /// IP address (IPv6 without its brackets); it is the name a `verify` policy checks.
    Relay { host: String, port: u16 },
}

impl std::fmt::Display for NextHopConfig {
    /// `mx`, or `host:port` as a connect string (`[v6]:port` for IPv6).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextHopConfig::Mx { port: 25 } => f.write_str("mx"),
            NextHopConfig::Mx { port } => write!(f, "mx:{port}"),
            NextHopConfig::Relay { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            NextHopConfig::Relay { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The `policy` of an originate listener: the TLS level per recipient domain, what a level
/// that cannot be met answers, and the limits and timeouts both modes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginatePolicy {
    /// `default`: the level of every domain not listed (default `may`).
    pub default: Level,
    /// `domains`, in file order: ASCII (A-labels), lower case, no trailing dot, each once.
    pub domains: Vec<(String, Level)>,
    pub on_failure: smtp_core::outbound::OnFailure,
    /// `false`: audit mode; a level that cannot be met is logged and counted, and the
    /// recipient delivered as `may` would.
    pub enforce: bool,
    /// The lowest TLS version offered to the next hop.
    pub tls_min_version: TlsVersion,
    pub bare_newlines: BareNewlines,
    pub long_lines: LongLines,
    pub received_header: bool,
    pub max_message_size: u64,
    pub max_recipients: u32,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    /// Consecutive protocol errors before `421 4.7.0` (SPEC §4).
    pub max_errors: u32,
    /// `tls_handshake` bounds the handshake with the next hop too; the next hop's replies are
    /// awaited for `backend_reply` (as a terminate listener's backend's are).
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `host:port` strings, tried in order.
    pub servers: Vec<String>,
    /// Encrypt the hop to the backend too.
    pub tls: BackendTls,
    /// Check the backend's certificate against `trust` and the server's host name or address
    /// (`false`: any certificate, e.g. a legacy server's self-signed one).
    pub tls_verify: bool,
    /// Pass the client's address with XCLIENT where the backend offers it.
    pub xclient: bool,
    pub connect_timeout: Duration,
    /// How often each server gets an SMTP health check.
    pub health_check_interval: Duration,
}

impl Backend {
    /// What the operator must hear of at start and in `check`: an encrypted hop whose
    /// backend certificate is not checked.
    pub fn tls_warning(&self) -> Option<&'static str> {
        (self.tls != BackendTls::None && !self.tls_verify).then_some(
            "backend.tls_verify is false: the backend's certificate is not checked \
             (the hop is encrypted, but not authenticated)",
        )
    }

    /// `backend.tls` as configured.
    pub fn tls_str(&self) -> &'static str {
        match self.tls {
            BackendTls::None => "none",
            BackendTls::Starttls => "starttls",
            BackendTls::Implicit => "implicit",
        }
    }
}

/// `backend.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTls {
    None,
    /// Plain connection, then the backend's own STARTTLS, used by us and never shown to the
    /// client.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Implicit,
}

/// The `policy` of a terminate listener.
#[derive(Debug, Clone)]
pub struct Policy {
    pub require_tls: bool,
    /// TLS handshakes in progress at once (implicit and STARTTLS): at the bound a new
    /// connection is refused before its handshake, and a handshake waits for a slot.
    pub max_handshakes: u32,
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
    /// Consecutive protocol errors before `421 4.7.0` (SPEC §4).
    pub max_errors: u32,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub greeting: Duration,
    pub command: Duration,
    pub data_block: Duration,
    pub tls_handshake: Duration,
    /// Each reply of the backend (or next hop); default: `command`.
    pub backend_reply: Duration,
    /// Reading the PROXY header of a `proxy_protocol` listener's connection.
    pub proxy_header: Duration,
}
