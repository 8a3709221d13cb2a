//! Validation of a listener's `policy`: terminate's typed into [`Policy`], originate's checked
//! for spelling only (the mode is refused as not supported yet).

use super::fields::{join, Problems};
use super::raw::{RawPolicy, RawTimeouts};
use super::yaml::{Table, Value};
use super::{BareNewlines, ClientCertificates, LongLines, OnFailure, Policy, Timeouts, TlsVersion};

/// Outbound policy levels (SPEC §3).
const LEVELS: [(&str, ()); 5] = [
    ("none", ()),
    ("may", ()),
    ("encrypt", ()),
    ("verify", ()),
    ("domain-secure", ()),
];

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
    let require_tls = p.bool(&key("require_tls"), &raw.require_tls);
    let auth_requires_tls = p.bool(&key("auth_requires_tls"), &raw.auth_requires_tls);
    let client_certs = [
        ("none", ClientCertificates::None),
        ("request", ClientCertificates::Request),
        ("require", ClientCertificates::Require),
    ];
    let client_certificates = p.choice(
        &key("client_certificates"),
        &raw.client_certificates,
        &client_certs,
    );
    let domain_secure = p
        .strings(&key("domain_secure"), &raw.domain_secure)
        .and_then(|list| domains(p, &key("domain_secure"), &list));
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
    let enforce = p.bool(&key("enforce"), &raw.enforce);
    let timeouts_path = key("timeouts");
    let timeouts = p
        .table(&timeouts_path, &raw.timeouts)
        .and_then(|t| timeouts(p, &timeouts_path, t));
    Some(Policy {
        require_tls: require_tls?,
        auth_requires_tls: auth_requires_tls?,
        client_certificates: client_certificates?,
        domain_secure: domain_secure?,
        on_failure: on_failure?,
        enforce: enforce?,
        tls_min_version: tls_min_version?,
        bare_newlines: bare_newlines?,
        long_lines: long_lines?,
        received_header: received_header?,
        max_message_size: max_message_size?,
        max_recipients: max_recipients?,
        max_connections: max_connections?,
        max_connections_per_ip: per_ip?,
        timeouts: timeouts?,
    })
}

/// `domain_secure`: domain names (letters, digits, hyphens, dots; no wildcard, no address
/// literal), lower-cased, each listed once.
fn domains(p: &mut Problems, path: &str, list: &[&str]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    let mut ok = true;
    for (i, domain) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
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
        if !valid {
            p.add(
                &item,
                format_args!("{domain:?} is not a domain name (e.g. woodgrovebank.com)"),
            );
            ok = false;
        } else if out.contains(&d) {
            p.add(&item, format_args!("{d:?} is listed twice"));
            ok = false;
        } else {
            out.push(d);
        }
    }
    ok.then_some(out)
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
    Some(Timeouts {
        greeting: greeting?,
        command: command?,
        data_block: data_block?,
        tls_handshake: tls_handshake?,
    })
}

/// An originate listener's policy keys, for spelling only.
pub fn originate_policy(p: &mut Problems, path: &str, raw: &Table<RawPolicy>) {
    let Some(policy) = p.table(path, raw) else {
        return;
    };
    let key = |k: &str| join(path, k);
    if let Some(default) = &policy.default {
        p.choice(&key("default"), default, &LEVELS);
    }
    match &policy.domains {
        None | Some(Value::Null) => {}
        Some(Value::Map(domains)) => {
            for (domain, level) in domains {
                p.choice(&join(&key("domains"), domain), level, &LEVELS);
            }
        }
        Some(other) => {
            let found = other.describe();
            p.add(
                &key("domains"),
                format_args!("expected a mapping of domain: level, found {found}"),
            );
        }
    }
    p.choice(
        &key("on_failure"),
        &policy.on_failure,
        &[("defer", ()), ("bounce", ())],
    );
    p.bool(&key("enforce"), &policy.enforce);
}
