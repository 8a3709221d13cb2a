//! Validation of a listener's `policy`, per mode: the keys only one mode has, `on_failure`
//! with each mode's words, then the keys both share (limits, body handling, timeouts).
//! Domain names (terminate's `domain_secure`, originate's `domains`) are checked here too.

use super::fields::{join, Problems};
use super::raw::{defaults, RawPolicy, RawTimeouts};
use super::yaml::Value;
use super::{
    BareNewlines, ClientCertificates, Level, LongLines, OnFailure, OriginatePolicy, Policy,
    Timeouts, TlsVersion,
};

/// Outbound policy levels (SPEC §3).
const LEVELS: [(&str, Level); 5] = [
    ("none", Level::None),
    ("may", Level::May),
    ("encrypt", Level::Encrypt),
    ("verify", Level::Verify),
    ("domain-secure", Level::DomainSecure),
];

/// The policy keys both modes have, typed the same way.
struct Shared {
    tls_min_version: TlsVersion,
    bare_newlines: BareNewlines,
    long_lines: LongLines,
    received_header: bool,
    max_message_size: u64,
    max_recipients: u32,
    max_connections: u32,
    max_connections_per_ip: u32,
    max_errors: u32,
    enforce: bool,
    timeouts: Timeouts,
}

/// A terminate listener's policy.
pub fn terminate_policy(p: &mut Problems, path: &str, raw: &RawPolicy) -> Option<Policy> {
    let key = |k: &str| join(path, k);
    for (k, given) in [
        ("default", raw.default.is_some()),
        ("domains", raw.domains.is_some()),
    ] {
        if given {
            p.add(&key(k), "only valid with mode: originate");
        }
    }
    let or = |value: &Option<Value>, default: Value| value.clone().unwrap_or(default);
    let require_tls = p.bool(
        &key("require_tls"),
        &or(&raw.require_tls, Value::Bool(defaults::REQUIRE_TLS)),
    );
    let auth_requires_tls = p.bool(
        &key("auth_requires_tls"),
        &or(
            &raw.auth_requires_tls,
            Value::Bool(defaults::AUTH_REQUIRES_TLS),
        ),
    );
    let client_certs = [
        ("none", ClientCertificates::None),
        ("request", ClientCertificates::Request),
        ("require", ClientCertificates::Require),
    ];
    let client_certificates = p.choice(
        &key("client_certificates"),
        &or(
            &raw.client_certificates,
            Value::str(defaults::CLIENT_CERTIFICATES),
        ),
        &client_certs,
    );
    let domain_secure = match &raw.domain_secure {
        None => Some(Vec::new()),
        Some(value) => p
            .strings(&key("domain_secure"), value)
            .and_then(|list| domains(p, &key("domain_secure"), &list)),
    };
    let on_failure = p.choice(
        &key("on_failure"),
        &raw.on_failure,
        &[("defer", OnFailure::Defer), ("reject", OnFailure::Reject)],
    );
    if let (Some(ClientCertificates::None), Some(list)) = (client_certificates, &domain_secure) {
        if !list.is_empty() {
            p.add(
                &key("domain_secure"),
                "needs client_certificates: request or require (no listed domain could ever \
                 pass without a client certificate)",
            );
        }
    }
    let max_handshakes = p.count(
        &key("max_handshakes"),
        &or(&raw.max_handshakes, Value::Int(defaults::MAX_HANDSHAKES)),
        1,
    );
    let shared = shared(p, path, raw);
    let s = shared?;
    Some(Policy {
        require_tls: require_tls?,
        max_handshakes: max_handshakes?,
        auth_requires_tls: auth_requires_tls?,
        client_certificates: client_certificates?,
        domain_secure: domain_secure?,
        on_failure: on_failure?,
        enforce: s.enforce,
        tls_min_version: s.tls_min_version,
        bare_newlines: s.bare_newlines,
        long_lines: s.long_lines,
        received_header: s.received_header,
        max_message_size: s.max_message_size,
        max_recipients: s.max_recipients,
        max_connections: s.max_connections,
        max_connections_per_ip: s.max_connections_per_ip,
        max_errors: s.max_errors,
        timeouts: s.timeouts,
    })
}

/// An originate listener's policy.
pub fn originate_policy(p: &mut Problems, path: &str, raw: &RawPolicy) -> Option<OriginatePolicy> {
    let key = |k: &str| join(path, k);
    for (k, given) in [
        ("require_tls", raw.require_tls.is_some()),
        ("auth_requires_tls", raw.auth_requires_tls.is_some()),
        ("client_certificates", raw.client_certificates.is_some()),
        ("domain_secure", raw.domain_secure.is_some()),
        ("max_handshakes", raw.max_handshakes.is_some()),
    ] {
        if given {
            p.add(&key(k), "only valid with mode: terminate");
        }
    }
    let default = match &raw.default {
        Some(value) => p.choice(&key("default"), value, &LEVELS),
        None => LEVELS
            .iter()
            .find(|(word, _)| *word == defaults::ORIGINATE_DEFAULT_LEVEL)
            .map(|(_, level)| *level),
    };
    let domains = level_map(p, &key("domains"), raw.domains.as_ref());
    let on_failure = p.choice(
        &key("on_failure"),
        &raw.on_failure,
        &[
            ("defer", smtp_core::outbound::OnFailure::Defer),
            ("bounce", smtp_core::outbound::OnFailure::Bounce),
        ],
    );
    let shared = shared(p, path, raw);
    let s = shared?;
    Some(OriginatePolicy {
        default: default?,
        domains: domains?,
        on_failure: on_failure?,
        enforce: s.enforce,
        tls_min_version: s.tls_min_version,
        bare_newlines: s.bare_newlines,
        long_lines: s.long_lines,
        received_header: s.received_header,
        max_message_size: s.max_message_size,
        max_recipients: s.max_recipients,
        max_connections: s.max_connections,
        max_connections_per_ip: s.max_connections_per_ip,
        max_errors: s.max_errors,
        timeouts: s.timeouts,
    })
}

fn shared(p: &mut Problems, path: &str, raw: &RawPolicy) -> Option<Shared> {
    let key = |k: &str| join(path, k);
    let tls_min_version = tls_version(p, &key("tls_min_version"), &raw.tls_min_version);
    let bare = [
        ("reject", BareNewlines::Reject),
        ("normalize", BareNewlines::Normalize),
    ];
    let bare_newlines = p.choice(&key("bare_newlines"), &raw.bare_newlines, &bare);
    let long = [("fold", LongLines::Fold), ("reject", LongLines::Reject)];
    let long_lines = p.choice(&key("long_lines"), &raw.long_lines, &long);
    let received_header = p.bool(&key("received_header"), &raw.received_header);
    let max_message_size = p.size(&key("max_message_size"), &raw.max_message_size);
    let max_recipients = p.count(&key("max_recipients"), &raw.max_recipients, 1);
    let max_connections = p.count(&key("max_connections"), &raw.max_connections, 1);
    let per_ip = p.count(
        &key("max_connections_per_ip"),
        &raw.max_connections_per_ip,
        1,
    );
    let max_errors = p.count(&key("max_errors"), &raw.max_errors, 1);
    let enforce = p.bool(&key("enforce"), &raw.enforce);
    let timeouts_path = key("timeouts");
    let timeouts = p
        .table(&timeouts_path, &raw.timeouts)
        .and_then(|t| timeouts(p, &timeouts_path, t));
    Some(Shared {
        tls_min_version: tls_min_version?,
        bare_newlines: bare_newlines?,
        long_lines: long_lines?,
        received_header: received_header?,
        max_message_size: max_message_size?,
        max_recipients: max_recipients?,
        max_connections: max_connections?,
        max_connections_per_ip: per_ip?,
        max_errors: max_errors?,
        enforce: enforce?,
        timeouts: timeouts?,
    })
}

/// `domain_secure`: domain names, normalised by [`domain_name`], each listed once.
fn domains(p: &mut Problems, path: &str, list: &[&str]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    let mut ok = true;
    for (i, domain) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        match domain_name(domain) {
            Err(why) => {
                p.add(&item, why);
                ok = false;
            }
            Ok(d) if out.contains(&d) => {
                p.add(&item, format_args!("{d:?} is listed twice"));
                ok = false;
            }
            Ok(d) => out.push(d),
        }
    }
    ok.then_some(out)
}

/// `domains` of an originate policy: a mapping of domain name to level, in file order. Each
/// problem's path ends with the domain as written (`policy.domains.Example.NET`).
fn level_map(p: &mut Problems, path: &str, value: Option<&Value>) -> Option<Vec<(String, Level)>> {
    let entries = match value {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Map(entries)) => entries,
        Some(other) => {
            let found = other.describe();
            p.add(
                path,
                format_args!("expected a mapping of domain: level, found {found}"),
            );
            return None;
        }
    };
    let mut out: Vec<(String, Level)> = Vec::with_capacity(entries.len());
    let mut seen: Vec<String> = Vec::with_capacity(entries.len());
    let mut ok = true;
    for (domain, level) in entries {
        let item = join(path, domain);
        let domain = match domain_name(domain) {
            Err(why) => {
                p.add(&item, why);
                None
            }
            Ok(d) if seen.contains(&d) => {
                p.add(&item, format_args!("{d:?} is listed twice"));
                None
            }
            Ok(d) => {
                seen.push(d.clone());
                Some(d)
            }
        };
        match (domain, p.choice(&item, level, &LEVELS)) {
            (Some(domain), Some(level)) => out.push((domain, level)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// A domain name as policies compare it: ASCII letters, digits and hyphens in dot-separated
/// labels (no wildcard, no address literal), lower-cased, without the trailing dot. The sidecar
/// does no IDNA mapping (UTS #46 has several), so an internationalised name must be written as
/// the A-label the wire carries; the error says so.
fn domain_name(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let d = trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    if !d.is_ascii() {
        return Err(format!(
            "{text:?} is not ASCII: write an internationalised domain as its A-label \
             (xn--..., e.g. xn--bcher-kva.example for bücher.example)"
        ));
    }
    let valid = d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(d)
    } else {
        Err(format!(
            "{text:?} is not a domain name (e.g. woodgrovebank.com)"
        ))
    }
}

/// `"1.2"` / `"1.3"`; an unquoted `1.2` arrives as a YAML float and is accepted too.
fn tls_version(p: &mut Problems, path: &str, value: &Value) -> Option<TlsVersion> {
    let text = match value {
        Value::Str(s) => Some(s.trim().to_owned()),
        Value::Float(f) => Some(f.to_string()),
        _ => None,
    };
    match text.as_deref() {
        Some("1.2") => Some(TlsVersion::V1_2),
        Some("1.3") => Some(TlsVersion::V1_3),
        _ => {
            let found = value.describe();
            p.add(
                path,
                format_args!("expected \"1.2\" or \"1.3\", found {found}"),
            );
            None
        }
    }
}

fn timeouts(p: &mut Problems, path: &str, raw: &RawTimeouts) -> Option<Timeouts> {
    let greeting = p.duration(&join(path, "greeting"), &raw.greeting, true);
    let command = p.duration(&join(path, "command"), &raw.command, true);
    let data_block = p.duration(&join(path, "data_block"), &raw.data_block, true);
    let tls_handshake = p.duration(&join(path, "tls_handshake"), &raw.tls_handshake, true);
    let backend_reply = match &raw.backend_reply {
        Some(value) => p.duration(&join(path, "backend_reply"), value, true),
        None => command,
    };
    let proxy_header = p.duration(&join(path, "proxy_header"), &raw.proxy_header, true);
    Some(Timeouts {
        greeting: greeting?,
        command: command?,
        data_block: data_block?,
        tls_handshake: tls_handshake?,
        backend_reply: backend_reply?,
        proxy_header: proxy_header?,
    })
}
