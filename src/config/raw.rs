//! The configuration file exactly as SPEC §3 writes it: one struct per YAML mapping, every key
//! of both listener modes, and the defaults SPEC gives, written as the YAML values they stand for.
//!
//! Leaves are untyped [`Value`]s and sections are [`Table`]s / [`List`]s so that deserializing
//! never stops at a wrong type; unknown keys land in each struct's `unknown` (serde `flatten`)
//! instead of failing the parse. `validate` turns all of it into the typed `Config` and reports
//! every problem with its key path. `Option` marks keys whose absence means something other
//! than a fixed default (e.g. `hostname`: the machine's; `metrics.listen`: no endpoint).

use serde::Deserialize;

use super::yaml::{List, Table, UnknownKeys, Value};

/// The keys a raw struct accepts, in SPEC order, for "unknown key (expected one of: ...)".
pub trait Keys {
    const KEYS: &'static [&'static str];
    fn unknown(&self) -> &UnknownKeys;
}

macro_rules! keys {
    ($ty:ty: $($key:literal),+ $(,)?) => {
        impl Keys for $ty {
            const KEYS: &'static [&'static str] = &[$($key),+];
            fn unknown(&self) -> &UnknownKeys {
                &self.unknown
            }
        }
    };
}

/// SPEC §3 defaults that are not written as literals in the `Default` impls below.
pub mod defaults {
    pub const STATE_DIR: &str = "/var/lib/smtp-sidecar";
    pub const SHUTDOWN_GRACE: &str = "30s";
    pub const RESOLVER_TIMEOUT: &str = "5s";
    pub const CONNECT_TIMEOUT: &str = "5s";
    pub const HEALTH_CHECK_INTERVAL: &str = "2s";
    /// Consecutive protocol errors before a session is closed (SPEC §4).
    pub const MAX_ERRORS: i128 = 20;
    pub const MAX_MESSAGE_SIZE: &str = "35MiB";
    pub const GREETING: &str = "5m";
    pub const COMMAND: &str = "5m";
    pub const DATA_BLOCK: &str = "3m";
    pub const TLS_HANDSHAKE: &str = "30s";
    /// A balancer sends its header at once; a connection that has not within this is not one.
    pub const PROXY_HEADER: &str = "10s";
    /// Terminate listeners only (absent keys of an originate listener stay absent).
    pub const LISTENER_TLS: &str = "starttls";
    pub const REQUIRE_TLS: bool = false;
    /// TLS handshakes in progress at once on a terminate listener.
    pub const MAX_HANDSHAKES: i128 = 128;
    pub const AUTH_REQUIRES_TLS: bool = true;
    pub const CLIENT_CERTIFICATES: &str = "none";
    /// Originate listeners only: opportunistic TLS, as Exchange and Postfix's `may`.
    pub const ORIGINATE_DEFAULT_LEVEL: &str = "may";
}

fn s(text: &str) -> Value {
    Value::str(text)
}

fn empty_list() -> Value {
    Value::Seq(Vec::new())
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub hostname: Option<Value>,
    pub state_dir: Value,
    pub shutdown_grace: Value,
    pub metrics: Table<RawMetrics>,
    pub log: Table<RawLog>,
    pub certificates: List<Table<RawCertificate>>,
    pub resolver: Table<RawResolver>,
    pub trust: Table<RawTrust>,
    pub listeners: List<Table<RawListener>>,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawConfig: "hostname", "state_dir", "shutdown_grace", "metrics", "log", "certificates",
    "resolver", "trust", "listeners");

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            hostname: None,
            state_dir: s(defaults::STATE_DIR),
            shutdown_grace: s(defaults::SHUTDOWN_GRACE),
            metrics: Table::default(),
            log: Table::default(),
            certificates: List::default(),
            resolver: Table::default(),
            trust: Table::default(),
            listeners: List::default(),
            unknown: UnknownKeys::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawMetrics {
    pub listen: Option<Value>,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawMetrics: "listen");

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawLog {
    pub format: Value,
    pub level: Value,
    pub protocol_log: Value,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawLog: "format", "level", "protocol_log");

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: s("text"),
            level: s("info"),
            protocol_log: Value::Bool(false),
            unknown: UnknownKeys::default(),
        }
    }
}

/// One entry of `certificates`: all three keys are required.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawCertificate {
    pub name: Option<Value>,
    pub cert: Option<Value>,
    pub key: Option<Value>,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawCertificate: "name", "cert", "key");

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawResolver {
    pub nameservers: Value,
    pub timeout: Value,
    pub allow_loopback: Value,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawResolver: "nameservers", "timeout", "allow_loopback");

impl Default for RawResolver {
    fn default() -> Self {
        Self {
            nameservers: empty_list(),
            timeout: s(defaults::RESOLVER_TIMEOUT),
            allow_loopback: Value::Bool(false),
            unknown: UnknownKeys::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawTrust {
    pub system_roots: Value,
    pub ca_files: Value,
    pub crl_files: Value,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawTrust: "system_roots", "ca_files", "crl_files");

impl Default for RawTrust {
    fn default() -> Self {
        Self {
            system_roots: Value::Bool(true),
            ca_files: empty_list(),
            crl_files: empty_list(),
            unknown: UnknownKeys::default(),
        }
    }
}

/// A listener of either mode. `tls`, `certificate` and `backend` are terminate's (optional
/// here so that originate can refuse them when given at all; their defaults are applied when
/// a terminate listener is typed); `next_hop`, `client_certificate` and the `policy` keys
/// `default`/`domains` are originate's.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawListener {
    pub name: Option<Value>,
    pub mode: Value,
    pub listen: Option<Value>,
    pub tls: Option<Value>,
    pub certificate: Option<Table<RawCertificateRef>>,
    pub proxy_protocol: Value,
    pub backend: Option<Table<RawBackend>>,
    pub next_hop: Option<Value>,
    pub client_certificate: Option<Table<RawCertificateRef>>,
    pub policy: Table<RawPolicy>,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawListener: "name", "mode", "listen", "tls", "certificate", "proxy_protocol", "backend",
    "policy", "next_hop", "client_certificate");

impl Default for RawListener {
    fn default() -> Self {
        Self {
            name: None,
            mode: s("terminate"),
            listen: None,
            tls: None,
            certificate: None,
            proxy_protocol: Value::Bool(false),
            backend: None,
            next_hop: None,
            client_certificate: None,
            policy: Table::default(),
            unknown: UnknownKeys::default(),
        }
    }
}

/// `certificate` / `client_certificate`: pick a store entry by name or by thumbprint.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawCertificateRef {
    pub name: Option<Value>,
    pub thumbprint: Option<Value>,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawCertificateRef: "name", "thumbprint");

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawBackend {
    pub servers: Option<Value>,
    pub tls: Value,
    pub tls_verify: Value,
    pub xclient: Value,
    pub connect_timeout: Value,
    pub health_check_interval: Value,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawBackend: "servers", "tls", "tls_verify", "xclient", "connect_timeout",
    "health_check_interval");

impl Default for RawBackend {
    fn default() -> Self {
        Self {
            servers: None,
            tls: s("none"),
            tls_verify: Value::Bool(true),
            xclient: Value::Bool(false),
            connect_timeout: s(defaults::CONNECT_TIMEOUT),
            health_check_interval: s(defaults::HEALTH_CHECK_INTERVAL),
            unknown: UnknownKeys::default(),
        }
    }
}

/// Both modes' policy keys: terminate's own (`require_tls` to `domain_secure`, optional so that
/// originate can refuse them; their defaults are in [`defaults`]), the shared ones, then
/// originate's `default` and `domains`. `on_failure` is shared with different words per mode.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawPolicy {
    pub require_tls: Option<Value>,
    pub auth_requires_tls: Option<Value>,
    pub client_certificates: Option<Value>,
    pub domain_secure: Option<Value>,
    pub max_handshakes: Option<Value>,
    pub on_failure: Value,
    pub tls_min_version: Value,
    pub bare_newlines: Value,
    pub long_lines: Value,
    pub received_header: Value,
    pub max_message_size: Value,
    pub max_recipients: Value,
    pub max_connections: Value,
    pub max_connections_per_ip: Value,
    pub max_errors: Value,
    pub enforce: Value,
    pub timeouts: Table<RawTimeouts>,
    pub default: Option<Value>,
    pub domains: Option<Value>,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawPolicy: "require_tls", "auth_requires_tls", "client_certificates", "domain_secure",
    "max_handshakes", "on_failure", "tls_min_version", "bare_newlines", "long_lines", "received_header",
    "max_message_size", "max_recipients", "max_connections", "max_connections_per_ip", "max_errors",
    "enforce", "timeouts", "default", "domains");

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            require_tls: None,
            auth_requires_tls: None,
            client_certificates: None,
            domain_secure: None,
            max_handshakes: None,
            on_failure: s("defer"),
            tls_min_version: s("1.2"),
            bare_newlines: s("reject"),
            long_lines: s("fold"),
            received_header: Value::Bool(true),
            max_message_size: s(defaults::MAX_MESSAGE_SIZE),
            max_recipients: Value::Int(100),
            max_connections: Value::Int(1000),
            max_connections_per_ip: Value::Int(20),
            max_errors: Value::Int(defaults::MAX_ERRORS),
            enforce: Value::Bool(true),
            timeouts: Table::default(),
            default: None,
            domains: None,
            unknown: UnknownKeys::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawTimeouts {
    pub greeting: Value,
    pub command: Value,
    pub data_block: Value,
    pub tls_handshake: Value,
    /// Default: `command`'s value.
    pub backend_reply: Option<Value>,
    pub proxy_header: Value,
    #[serde(flatten)]
    pub unknown: UnknownKeys,
}
keys!(RawTimeouts: "greeting", "command", "data_block", "tls_handshake", "backend_reply",
    "proxy_header");

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            greeting: s(defaults::GREETING),
            command: s(defaults::COMMAND),
            data_block: s(defaults::DATA_BLOCK),
            tls_handshake: s(defaults::TLS_HANDSHAKE),
            backend_reply: None,
            proxy_header: s(defaults::PROXY_HEADER),
            unknown: UnknownKeys::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every declared key is a real field: a mapping of all of them leaves `unknown` empty.
    fn all_keys_known<T: Keys + for<'de> Deserialize<'de>>() {
        let yaml: String = T::KEYS.iter().map(|k| format!("{k}: ~\n")).collect();
        let parsed: T = match serde_saphyr::from_str(&yaml) {
            Ok(parsed) => parsed,
            Err(err) => panic!("{yaml}: {err}"),
        };
        assert!(parsed.unknown().0.is_empty(), "{:?}", parsed.unknown());
    }

    #[test]
    fn declared_keys_match_fields() {
        all_keys_known::<RawConfig>();
        all_keys_known::<RawMetrics>();
        all_keys_known::<RawLog>();
        all_keys_known::<RawCertificate>();
        all_keys_known::<RawResolver>();
        all_keys_known::<RawTrust>();
        all_keys_known::<RawListener>();
        all_keys_known::<RawCertificateRef>();
        all_keys_known::<RawBackend>();
        all_keys_known::<RawPolicy>();
        all_keys_known::<RawTimeouts>();
    }

    #[test]
    fn unknown_keys_are_collected_not_fatal() {
        let yaml =
            "hostnme: a\nlisteners: [{listen: '127.0.0.1:25', bogus: 1, policy: {x: [1]}}]\n";
        let raw: RawConfig = match serde_saphyr::from_str(yaml) {
            Ok(raw) => raw,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(raw.unknown.0, ["hostnme"]);
        let List::Given(listeners) = &raw.listeners else {
            panic!("listeners: {:?}", raw.listeners)
        };
        let Some(Table::Given(l)) = listeners.first() else {
            panic!("{listeners:?}")
        };
        assert_eq!(l.unknown.0, ["bogus"]);
        let Table::Given(policy) = &l.policy else {
            panic!("{:?}", l.policy)
        };
        assert_eq!(policy.unknown.0, ["x"]);
    }
}
