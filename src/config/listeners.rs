//! Validation of `listeners[]`: names and addresses unique, certificate rules checked for form
//! (matching them is the store's job), backend typed (`policy` has its own file).
//! `mode: originate` is recognised and its keys checked for syntax, but the listener itself is
//! refused as not supported yet.

use std::net::{Ipv6Addr, SocketAddr};

use super::fields::{join, Problems};
use super::policy::{originate_policy, terminate_policy};
use super::raw::{RawBackend, RawCertificateRef, RawListener};
use super::yaml::{List, Table};
use super::{Backend, CertificateSelection, Listener, ListenerTls, Policy};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Terminate,
    Originate,
}

/// All listeners; `taken` holds addresses already in use with the path that uses them.
pub fn listeners(
    p: &mut Problems,
    raw: &List<Table<RawListener>>,
    cert_names: &[String],
    taken: &mut Vec<(SocketAddr, String)>,
) -> Option<Vec<Listener>> {
    let items = p.list("listeners", raw)?;
    if items.is_empty() {
        p.add("listeners", "at least one listener is required");
        return None;
    }
    let mut names: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(raw) = p.table(&path, item) else {
            continue;
        };
        if let Some(listener) = listener(p, &path, raw, cert_names, taken, &mut names) {
            out.push(listener);
        }
    }
    Some(out)
}

fn listener(
    p: &mut Problems,
    path: &str,
    raw: &RawListener,
    cert_names: &[String],
    taken: &mut Vec<(SocketAddr, String)>,
    names: &mut Vec<(String, String)>,
) -> Option<Listener> {
    let modes = [
        ("terminate", Mode::Terminate),
        ("originate", Mode::Originate),
    ];
    let mode = p.choice(&join(path, "mode"), &raw.mode, &modes);

    let listen_path = join(path, "listen");
    let listen = match &raw.listen {
        Some(value) => p.socket_addr(&listen_path, value),
        None => {
            p.add(&listen_path, "missing (required)");
            None
        }
    };
    let mut listen_taken = false;
    if let Some(addr) = listen {
        match taken.iter().find(|(used, _)| *used == addr) {
            Some((_, user)) => {
                p.add(
                    &listen_path,
                    format_args!("{addr} is already used by {user}"),
                );
                listen_taken = true;
            }
            None => taken.push((addr, listen_path.clone())),
        }
    }

    // Metrics labels and logs name the listener; without a name, its address does (and a
    // clash of such names is the address clash already reported).
    let name_path = join(path, "name");
    let name = match &raw.name {
        Some(value) => p.string(&name_path, value).map(|n| n.trim().to_owned()),
        None => listen.map(|addr| addr.to_string()),
    };
    if let Some(name) = name
        .as_ref()
        .filter(|_| raw.name.is_some() || !listen_taken)
    {
        match names.iter().find(|(used, _)| used == name) {
            Some((_, user)) => p.add(
                &name_path,
                format_args!("duplicate listener name {name:?} (also {user})"),
            ),
            None => names.push((name.clone(), path.to_owned())),
        }
    }

    let proxy_protocol = p.bool(&join(path, "proxy_protocol"), &raw.proxy_protocol);
    p.only_default(
        &join(path, "proxy_protocol"),
        proxy_protocol,
        |on| !on,
        "false",
    );

    match mode? {
        Mode::Originate => {
            p.add(&join(path, "mode"), "originate is not supported yet");
            originate(p, path, raw, cert_names);
            None
        }
        Mode::Terminate => {
            let terminate = terminate(p, path, raw);
            let (tls, certificate, backend, policy) = terminate?;
            Some(Listener {
                name: name?,
                listen: listen?,
                tls,
                certificate,
                backend,
                policy,
            })
        }
    }
}

type Terminate = (ListenerTls, CertificateSelection, Backend, Policy);

fn terminate(p: &mut Problems, path: &str, raw: &RawListener) -> Option<Terminate> {
    for (key, given) in [
        ("next_hop", raw.next_hop.is_some()),
        ("client_certificate", raw.client_certificate.is_some()),
    ] {
        if given {
            p.add(&join(path, key), "only valid with mode: originate");
        }
    }
    let tls_choices = [
        ("starttls", ListenerTls::Starttls),
        ("implicit", ListenerTls::Implicit),
    ];
    let tls = p.choice(&join(path, "tls"), &raw.tls, &tls_choices);
    let certificate = certificate_selection(p, &join(path, "certificate"), &raw.certificate);
    let backend_path = join(path, "backend");
    let backend = match &raw.backend {
        Some(table) => p
            .table(&backend_path, table)
            .and_then(|b| backend(p, &backend_path, b)),
        None => {
            p.add(&backend_path, "missing (required for mode: terminate)");
            None
        }
    };
    let policy_path = join(path, "policy");
    let policy = p
        .table(&policy_path, &raw.policy)
        .and_then(|pol| terminate_policy(p, &policy_path, pol));
    Some((tls?, certificate?, backend?, policy?))
}

/// A terminate listener's `certificate`: name or thumbprint, checked for form only. Whether
/// it matches a certificate is the store's question (`check` fails on a miss; `run` serves the
/// listener without STARTTLS), so a name is not looked up in `certificates` here.
fn certificate_selection(
    p: &mut Problems,
    path: &str,
    table: &Table<RawCertificateRef>,
) -> Option<CertificateSelection> {
    let raw = p.table(path, table)?;
    let name = match &raw.name {
        Some(value) => Some(p.string(&join(path, "name"), value)?.trim()),
        None => None,
    };
    let thumbprint_path = join(path, "thumbprint");
    let thumbprint = match &raw.thumbprint {
        Some(value) => {
            let text = p.string(&thumbprint_path, value)?;
            let Some(normalised) = normalise_thumbprint(text) else {
                p.add(
                    &thumbprint_path,
                    format_args!(
                        "invalid thumbprint {text:?} (expected the SHA-1 (40 hex digits) or \
                         SHA-256 (64 hex digits) of the certificate; spaces and colons are ignored)"
                    ),
                );
                return None;
            };
            Some(normalised)
        }
        None => None,
    };
    match (name, thumbprint) {
        (Some(name), None) => Some(CertificateSelection::Name(name.to_owned())),
        (None, Some(t)) => Some(CertificateSelection::Thumbprint(t)),
        (Some(name), Some(thumbprint)) => Some(CertificateSelection::NameAndThumbprint {
            name: name.to_owned(),
            thumbprint,
        }),
        (None, None) => Some(CertificateSelection::Automatic),
    }
}

/// A thumbprint as upper-case hex without separators, if it is 40 or 64 hex digits once
/// spaces and colons are dropped (operators paste them from Windows and from `openssl`).
fn normalise_thumbprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = matches!(hex.len(), 40 | 64) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some(hex)
}

/// `client_certificate` of an originate listener: `Some(name)` if the name is valid and in
/// the store.
fn certificate_ref(
    p: &mut Problems,
    path: &str,
    table: &Table<RawCertificateRef>,
    certs: &[String],
) -> Option<Option<String>> {
    let raw = p.table(path, table)?;
    let Some(value) = &raw.name else {
        return Some(None);
    };
    let name_path = join(path, "name");
    let name = p.string(&name_path, value)?;
    if !certs.iter().any(|known| known == name) {
        p.add(
            &name_path,
            format_args!("no certificate named {name:?} in certificates"),
        );
        return None;
    }
    Some(Some(name.to_owned()))
}

fn backend(p: &mut Problems, path: &str, raw: &RawBackend) -> Option<Backend> {
    let servers_path = join(path, "servers");
    let servers = match &raw.servers {
        Some(value) => p.strings(&servers_path, value),
        None => {
            p.add(&servers_path, "missing (required)");
            None
        }
    };
    let servers = servers.and_then(|list| {
        if list.is_empty() {
            p.add(&servers_path, "at least one \"host:port\" is required");
        }
        for (i, server) in list.iter().enumerate() {
            if !is_host_port(server) {
                p.add(
                    &format!("{servers_path}[{i}]"),
                    format_args!(
                        "invalid server {server:?} (expected \"host:port\", IPv6 as \"[::1]:25\")"
                    ),
                );
            }
        }
        let valid = !list.is_empty() && list.iter().all(|s| is_host_port(s));
        valid.then(|| list.iter().map(|s| s.trim().to_owned()).collect())
    });

    let tls_path = join(path, "tls");
    let tls = p.choice(
        &tls_path,
        &raw.tls,
        &[("none", true), ("starttls", false), ("implicit", false)],
    );
    p.only_default(&tls_path, tls, |none| *none, "none");
    let verify_path = join(path, "tls_verify");
    let tls_verify = p.bool(&verify_path, &raw.tls_verify);
    p.only_default(&verify_path, tls_verify, |on| *on, "true");
    let xclient_path = join(path, "xclient");
    let xclient = p.bool(&xclient_path, &raw.xclient);
    p.only_default(&xclient_path, xclient, |on| !on, "false");
    let connect_timeout = p.duration(&join(path, "connect_timeout"), &raw.connect_timeout, true);
    Some(Backend {
        servers: servers?,
        connect_timeout: connect_timeout?,
    })
}

/// `host:port` with a numeric port 1-65535 and a non-empty host; IPv6 in brackets.
fn is_host_port(text: &str) -> bool {
    let text = text.trim();
    let split = match text.strip_prefix('[') {
        Some(rest) => rest
            .split_once("]:")
            .filter(|(host, _)| host.parse::<Ipv6Addr>().is_ok()),
        None => text
            .rsplit_once(':')
            .filter(|(host, _)| !host.contains(':')),
    };
    let Some((host, port)) = split else {
        return false;
    };
    !host.is_empty()
        && host.chars().all(|c| c.is_ascii_graphic())
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port > 0)
}

/// An originate listener's own keys, for spelling and references only: the mode itself has
/// already been refused, so nothing here says "not supported yet".
fn originate(p: &mut Problems, path: &str, raw: &RawListener, certs: &[String]) {
    if let Some(next_hop) = &raw.next_hop {
        let next_hop_path = join(path, "next_hop");
        if let Some(hop) = p.string(&next_hop_path, next_hop) {
            if hop != "mx" && !is_host_port(hop) {
                let message = format!("invalid next hop {hop:?} (expected mx or \"host:port\")");
                p.add(&next_hop_path, message);
            }
        }
    }
    if let Some(table) = &raw.client_certificate {
        let _ = certificate_ref(p, &join(path, "client_certificate"), table, certs);
    }
    originate_policy(p, &join(path, "policy"), &raw.policy);
}
