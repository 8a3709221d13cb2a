//! Raw → typed: [`parse`] deserializes the YAML into `raw` structs, then checks every section
//! and collects every problem, each prefixed by its key path, into one [`ConfigError`].
//! Listener sections are checked in `listeners`; this file holds the top-level sections.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fields::{join, Problems};
use super::listeners::listeners;
use super::raw::{RawConfig, RawLog, RawResolver, RawTrust};
use super::yaml::Value;
use super::{CertificateConfig, Config, LogConfig, LogFormat, ResolverConfig, TrustConfig};

/// Why a configuration cannot be used: every problem found, not just the first.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// Every problem found, each starting with its key path
    /// (`listeners[0].policy.timeouts.command: invalid duration "5x" ...`).
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.len() {
            1 => write!(f, "invalid configuration:")?,
            n => write!(f, "invalid configuration ({n} problems):")?,
        }
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(problem: String) -> Self {
        ConfigError {
            problems: vec![problem],
        }
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError::single(format!("{}: cannot read: {err}", path.display())))?;
    parse(&text)
}

/// Validates a configuration given as YAML text.
pub fn parse(yaml: &str) -> Result<Config, ConfigError> {
    // YAML 1.2 booleans only: `yes`/`on` stay strings, so a mistyped flag is reported, not guessed.
    let options = serde_saphyr::options! { strict_booleans: true };
    let raw: RawConfig = serde_saphyr::from_str_with_options(yaml, options)
        .map_err(|err| ConfigError::single(yaml_problem(&err)))?;
    let mut problems = Problems::default();
    let config = config(&mut problems, &raw);
    match config {
        Some(config) if problems.0.is_empty() => Ok(config),
        _ => {
            if problems.0.is_empty() {
                problems.add("(configuration)", "incomplete");
            }
            Err(ConfigError {
                problems: problems.0,
            })
        }
    }
}

/// A YAML syntax (or duplicate key) error: one line, ending with its line and column.
fn yaml_problem(err: &serde_saphyr::Error) -> String {
    let options = serde_saphyr::render_options! {
        formatter: &serde_saphyr::UserMessageFormatter,
        snippets: serde_saphyr::SnippetMode::Off,
    };
    let message = err.render_with_options(options);
    let message = message.lines().next().unwrap_or_default().trim();
    format!("YAML: {message}")
}

fn config(p: &mut Problems, raw: &RawConfig) -> Option<Config> {
    p.unknown_keys("", raw);
    let hostname = hostname(p, raw.hostname.as_ref());
    let state_dir = p.string("state_dir", &raw.state_dir).map(PathBuf::from);
    let shutdown_grace = p.duration("shutdown_grace", &raw.shutdown_grace, false);
    let metrics_listen = metrics(p, raw);
    let log = p.table("log", &raw.log).and_then(|log| log_config(p, log));
    let certificates = certificates(p, raw);
    let resolver = p
        .table("resolver", &raw.resolver)
        .and_then(|raw_resolver| resolver(p, raw_resolver));
    let trust = p
        .table("trust", &raw.trust)
        .and_then(|raw_trust| trust(p, raw_trust));

    // The admin endpoint's address is taken too: a listener on it could never bind.
    let mut taken: Vec<(SocketAddr, String)> = Vec::new();
    if let Some(Some(addr)) = metrics_listen {
        taken.push((addr, "metrics.listen".to_owned()));
    }
    let listeners = listeners(p, &raw.listeners, &mut taken);

    Some(Config {
        hostname: hostname?,
        state_dir: state_dir?,
        shutdown_grace: shutdown_grace?,
        metrics_listen: metrics_listen?,
        log: log?,
        certificates: certificates?,
        resolver: resolver?,
        trust: trust?,
        listeners: listeners?,
    })
}

fn hostname(p: &mut Problems, value: Option<&Value>) -> Option<String> {
    let hostname = match value {
        Some(value) => p.string("hostname", value)?.trim().to_owned(),
        None => machine_hostname(),
    };
    if ehlo_name(&hostname) {
        Some(hostname)
    } else {
        let how = if value.is_some() {
            ""
        } else {
            " (the machine's; set hostname)"
        };
        p.add(
            "hostname",
            format_args!(
                "{hostname:?} is not a usable name{how}: it is our EHLO name and the greeting's, \
                 so a domain name (letters, digits, '-' and '_' in dot-separated labels, none \
                 beginning or ending with '-') or an address literal ([192.0.2.1], [IPv6:2001:db8::1])"
            ),
        );
        None
    }
}

/// Whether `name` can be the argument of our EHLO (RFC 5321 §4.1.1.1: a domain, or an address
/// literal): every next hop and backend is greeted with it, and a strict one refuses another.
fn ehlo_name(name: &str) -> bool {
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ip = literal.strip_prefix("IPv6:").unwrap_or(literal);
        return match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => ip.len() == literal.len(),
            Ok(std::net::IpAddr::V6(_)) => ip.len() != literal.len(),
            Err(_) => false,
        };
    }
    name.is_ascii()
        && smtp_core::idn::routable(name).is_ok()
        && name
            .trim_end_matches('.')
            .split('.')
            .all(|label| !label.starts_with('-') && !label.ends_with('-'))
}

/// The machine's host name: the kernel's, else /etc/hostname, else `localhost`.
pub fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `Some(None)`: no admin endpoint; `None`: a problem was recorded.
fn metrics(p: &mut Problems, raw: &RawConfig) -> Option<Option<SocketAddr>> {
    let metrics = p.table("metrics", &raw.metrics)?;
    match &metrics.listen {
        None => Some(None),
        Some(listen) => p.socket_addr("metrics.listen", listen).map(Some),
    }
}

fn log_config(p: &mut Problems, log: &RawLog) -> Option<LogConfig> {
    let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
    let format = p.choice("log.format", &log.format, &formats);
    let level = p
        .string("log.level", &log.level)
        .and_then(|l| match log_filter(l) {
            Ok(level) => Some(level),
            Err(why) => {
                p.add("log.level", why);
                None
            }
        });
    let protocol_log = p.bool("log.protocol_log", &log.protocol_log);
    Some(LogConfig {
        format: format?,
        level: level?,
        protocol_log: protocol_log?,
    })
}

/// A log filter (`log.level`, or `RUST_LOG`) as the subscriber will take it: its directives
/// without the spaces around commas that it refuses. `Err` says what is wrong with it: a bare
/// word that is not a level, or a directive the subscriber refuses (it would fall back to
/// another filter without a word).
pub fn log_filter(text: &str) -> Result<String, String> {
    let directives: Vec<&str> = text.split(',').map(str::trim).collect();
    let level = directives.join(",");
    if let Some(word) = unknown_level(&level) {
        return Err(format!(
            "unknown level {word:?} (use error, warn, info, debug, trace or off, or \
             target=level directives like smtp_sidecar=debug,warn)"
        ));
    }
    match tracing_subscriber::EnvFilter::try_new(&level) {
        Ok(_) => Ok(level),
        Err(e) => Err(format!(
            "not a valid filter ({e}); e.g. info or smtp_sidecar=debug,warn"
        )),
    }
}

/// A directive of a `log.level` filter that is a bare word but not a level. The filter
/// takes such a word for a module's name, whose lines alone it then shows: `warning` or a
/// misspelt `inf` would silence every line of the sidecar's, errors included.
fn unknown_level(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 12] = [
        "error", "warn", "info", "debug", "trace", "off", "0", "1", "2", "3", "4", "5",
    ];
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains(['=', '[', ':']))
        .find(|d| !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)))
}

/// The store. Entries with problems are left out (the problems fail the parse anyway). The
/// listeners' `certificate` / `client_certificate` names are matched against it when it is
/// loaded, not here (with no entries, the self-signed default is named `self-signed`).
fn certificates(p: &mut Problems, raw: &RawConfig) -> Option<Vec<CertificateConfig>> {
    let items = p.list("certificates", &raw.certificates)?;
    let mut names: Vec<&str> = Vec::with_capacity(items.len());
    let mut out: Vec<CertificateConfig> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("certificates[{i}]");
        let Some(cert) = p.table(&path, item) else {
            continue;
        };
        let name_path = join(&path, "name");
        let name = p.required_string(&name_path, cert.name.as_ref());
        let cert_file = p.required_string(&join(&path, "cert"), cert.cert.as_ref());
        let key_file = p.required_string(&join(&path, "key"), cert.key.as_ref());
        let Some(name) = name else { continue };
        if names.contains(&name) {
            p.add(
                &name_path,
                format_args!("duplicate certificate name {name:?}"),
            );
            continue;
        }
        names.push(name);
        if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
            out.push(CertificateConfig {
                name: name.to_owned(),
                cert: PathBuf::from(cert_file),
                key: PathBuf::from(key_file),
            });
        }
    }
    Some(out)
}

/// The shortest and longest `resolver.timeout`: below 100ms a healthy resolver on another
/// continent times out; past a minute the legacy MTA's own command timeout (RFC 5321 §4.5.3.2:
/// 5 minutes for RCPT) is in sight, and a DNS answer that slow is no answer.
const RESOLVER_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const RESOLVER_TIMEOUT_MAX: Duration = Duration::from_secs(60);

fn resolver(p: &mut Problems, resolver: &RawResolver) -> Option<ResolverConfig> {
    let nameservers = p
        .strings("resolver.nameservers", &resolver.nameservers)
        .and_then(|list| {
            let mut ok = true;
            let mut out = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                match nameserver(text) {
                    Some(addr) => out.push(addr),
                    None => {
                        p.add(
                            &format!("resolver.nameservers[{i}]"),
                            format_args!(
                                "invalid name server {text:?} (expected an IP address a server \
                                 answers at, not unspecified, multicast or broadcast, \
                                 optionally with a port: 192.0.2.53, 192.0.2.53:5353, 2001:db8::53 \
                                 or [2001:db8::53]:5353)"
                            ),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        });
    let timeout = p
        .duration("resolver.timeout", &resolver.timeout, true)
        .and_then(|t| {
            if (RESOLVER_TIMEOUT_MIN..=RESOLVER_TIMEOUT_MAX).contains(&t) {
                Some(t)
            } else {
                p.add(
                    "resolver.timeout",
                    "must be from 100ms to 60s (the whole MX and address look-up)",
                );
                None
            }
        });
    let allow_loopback = p.bool("resolver.allow_loopback", &resolver.allow_loopback);
    Some(ResolverConfig {
        nameservers: nameservers?,
        timeout: timeout?,
        allow_loopback: allow_loopback?,
    })
}

/// A name server: `ip:port` / `[v6]:port`, or a bare address (`[v6]` too) on port 53. No host
/// names: resolving the resolver would need a resolver. Nor an address no server answers at
/// (0.0.0.0, ::, multicast, broadcast): every look-up would fail, each a `451 4.4.3`.
fn nameserver(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let bare = text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or(text);
            SocketAddr::new(bare.parse::<IpAddr>().ok()?, 53)
        }
    };
    let ip = addr.ip().to_canonical();
    let nobody =
        ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
    (addr.port() != 0 && !nobody).then_some(addr)
}

/// `trust`: files are named here and read when the runtime is built (so a reload re-reads
/// them), where a missing or unreadable one is reported with its key path too.
fn trust(p: &mut Problems, trust: &RawTrust) -> Option<TrustConfig> {
    let system_roots = p.bool("trust.system_roots", &trust.system_roots);
    let files = |p: &mut Problems, key: &str, value| {
        p.strings(key, value)
            .map(|list| list.iter().map(|f| PathBuf::from(f.trim())).collect())
    };
    let ca_files = files(p, "trust.ca_files", &trust.ca_files);
    let crl_files = files(p, "trust.crl_files", &trust.crl_files);
    Some(TrustConfig {
        system_roots: system_roots?,
        ca_files: ca_files?,
        crl_files: crl_files?,
    })
}
