//! Validation of `listeners[]`: names and addresses unique, the mode's own part typed (a
//! terminate listener's backend, an originate listener's next hop), certificate rules checked
//! for form (matching them is the store's job), the other mode's keys refused (`policy` has
//! its own file).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::fields::{join, Problems};
use super::policy::{originate_policy, terminate_policy};
use super::raw::{defaults, RawBackend, RawCertificateRef, RawListener};
use super::yaml::{List, Table, Value};
use super::{
    Backend, BackendTls, CertificateSelection, Listener, ListenerMode, ListenerTls, NextHopConfig,
    OriginateListener, TerminateListener,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Terminate,
    Originate,
}

/// All listeners; `taken` holds addresses already in use with the path that uses them.
pub fn listeners(
    p: &mut Problems,
    raw: &List<Table<RawListener>>,
    taken: &mut Vec<(SocketAddr, String)>,
) -> Option<Vec<Listener>> {
    let items = p.list("listeners", raw)?;
    if items.is_empty() {
        p.add("listeners", "at least one listener is required");
        return None;
    }
    let mut names: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    // Each terminate listener's backend servers and each originate listener's relay (given
    // as an address), checked once all addresses are known against those where the
    // connection would come back to us: a terminate listener's (a loop), the admin
    // endpoint's, and for a relay an originate listener's too. (An originate listener as a
    // terminate listener's backend relays on, which is no loop.)
    let mut served = Vec::new();
    let mut loops = vec!["metrics.listen".to_owned()];
    let mut originating = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(raw) = p.table(&path, item) else {
            continue;
        };
        if let Some(listener) = listener(p, &path, raw, taken, &mut names) {
            match &listener.mode {
                ListenerMode::Terminate(t) => {
                    // Host names are not known to be ours.
                    let servers = t.backend.servers.iter().enumerate();
                    served.extend(servers.filter_map(|(j, server)| {
                        let addr = server.parse::<SocketAddr>().ok()?;
                        Some((format!("{path}.backend.servers[{j}]"), addr, false))
                    }));
                    loops.push(format!("{path}.listen"));
                }
                ListenerMode::Originate(o) => {
                    if let NextHopConfig::Relay { host, port } = &o.next_hop {
                        if let Ok(ip) = host.parse::<IpAddr>() {
                            let relay = SocketAddr::new(ip, *port);
                            served.push((format!("{path}.next_hop"), relay, true));
                        }
                    }
                    originating.push(format!("{path}.listen"));
                }
            }
            out.push(listener);
        }
    }
    for (path, addr, relay) in served {
        let ours = taken
            .iter()
            .filter(|(_, user)| loops.contains(user) || (relay && originating.contains(user)))
            .find(|(used, _)| reaches(addr, *used));
        if let Some((used, user)) = ours {
            p.add(
                &path,
                format_args!(
                    "{addr} is the sidecar's own {used} ({user}): sessions would be \
                     relayed back into the sidecar"
                ),
            );
        }
    }
    Some(out)
}

/// A connection to `server` would arrive at the socket listening on `listen`, as far as
/// the configuration tells: the same address, a wildcard listener and a loopback or wildcard
/// server address of a family it takes (`[::]` takes IPv4's too), or a wildcard server address
/// and a loopback listener of its family. Another host's address on the same port is the
/// usual deployment (`0.0.0.0:25` in front of `10.0.0.5:25`); this host's other addresses are
/// not known here.
pub fn reaches(server: SocketAddr, listen: SocketAddr) -> bool {
    let (server_ip, listen_ip) = (server.ip().to_canonical(), listen.ip().to_canonical());
    let local = server_ip.is_loopback() || server_ip.is_unspecified();
    let family = listen_ip.is_ipv6() || server_ip.is_ipv4();
    // A connection to a wildcard address goes to the loopback address of its family.
    let to_loopback = server_ip.is_unspecified()
        && listen_ip.is_loopback()
        && server_ip.is_ipv4() == listen_ip.is_ipv4();
    server.port() == listen.port()
        && (server_ip == listen_ip
            || (listen_ip.is_unspecified() && local && family)
            || to_loopback)
}

fn listener(
    p: &mut Problems,
    path: &str,
    raw: &RawListener,
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
        match taken.iter().find(|(used, _)| clash(*used, addr)) {
            Some((used, user)) if *used == addr => {
                p.add(
                    &listen_path,
                    format_args!("{addr} is already used by {user}"),
                );
                listen_taken = true;
            }
            Some((used, user)) if used.ip().to_canonical() == addr.ip().to_canonical() => {
                p.add(
                    &listen_path,
                    format_args!("{addr} is the same address as {used} ({user})"),
                );
                listen_taken = true;
            }
            Some((used, user)) => {
                p.add(
                    &listen_path,
                    format_args!(
                        "{addr} cannot be bound beside {used} ({user}): a wildcard address \
                         takes its port on every address of its family, and [::] on IPv4's too"
                    ),
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

    let mode = match mode? {
        Mode::Terminate => ListenerMode::Terminate(terminate(p, path, raw)?),
        Mode::Originate => ListenerMode::Originate(originate(p, path, raw)?),
    };
    Some(Listener {
        name: name?,
        listen: listen?,
        proxy_protocol: proxy_protocol?,
        mode,
    })
}

/// Whether two listening addresses cannot both be bound. Port 0 asks the kernel for a free
/// port: two of those never clash. On one port, a wildcard address (`0.0.0.0`, `[::]`) takes
/// every address of its family, and `[::]` IPv4's too: the sidecar's IPv6 listening sockets
/// are dual-stack (`crate::listener::bind`), and a listening socket's port cannot be shared
/// even with `SO_REUSEADDR`. An IPv4-mapped IPv6 address is its IPv4 address.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    };
    x == y || covers(x, y) || covers(y, x)
}

fn terminate(p: &mut Problems, path: &str, raw: &RawListener) -> Option<TerminateListener> {
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
    let tls_value = raw
        .tls
        .clone()
        .unwrap_or_else(|| Value::str(defaults::LISTENER_TLS));
    let tls = p.choice(&join(path, "tls"), &tls_value, &tls_choices);
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
    Some(TerminateListener {
        tls: tls?,
        certificate: certificate?,
        backend: backend?,
        policy: policy?,
    })
}

/// An originate listener. The legacy MTA talks to it in plaintext, so it has no `tls` and no
/// `certificate` to serve; it delivers to `next_hop`, not to a `backend`.
fn originate(p: &mut Problems, path: &str, raw: &RawListener) -> Option<OriginateListener> {
    for (key, given) in [
        ("tls", raw.tls.is_some()),
        ("certificate", raw.certificate.is_some()),
        ("backend", raw.backend.is_some()),
    ] {
        if given {
            p.add(&join(path, key), "only valid with mode: terminate");
        }
    }
    let next_hop_path = join(path, "next_hop");
    let next_hop = match &raw.next_hop {
        Some(value) => next_hop(p, &next_hop_path, value),
        None => {
            p.add(&next_hop_path, "missing (required for mode: originate)");
            None
        }
    };
    let client_certificate = certificate_selection(
        p,
        &join(path, "client_certificate"),
        &raw.client_certificate,
    );
    let policy_path = join(path, "policy");
    let policy = p
        .table(&policy_path, &raw.policy)
        .and_then(|pol| originate_policy(p, &policy_path, pol));
    Some(OriginateListener {
        next_hop: next_hop?,
        client_certificate: client_certificate?,
        policy: policy?,
    })
}

/// `next_hop`: `mx`, or a relay as `"host:port"`.
fn next_hop(p: &mut Problems, path: &str, value: &Value) -> Option<NextHopConfig> {
    let text = p.string(path, value)?.trim();
    if text == "mx" {
        return Some(NextHopConfig::Mx { port: 25 });
    }
    if let Some(port) = text.strip_prefix("mx:") {
        // `mx:PORT`: MX look-ups, next hops contacted on another port than 25.
        return match port.parse::<u16>() {
            Ok(port) if port > 0 => Some(NextHopConfig::Mx { port }),
            _ => {
                p.add(
                    path,
                    format_args!(
                        "invalid next hop {text:?}: the port must be a number from 1 to 65535"
                    ),
                );
                None
            }
        };
    }
    match relay(text) {
        Ok((host, port)) => Some(NextHopConfig::Relay { host, port }),
        Err(why) => {
            p.add(
                path,
                format_args!(
                    "invalid next hop {text:?}: {why} (expected mx, mx:PORT or \"host:port\", IPv6 as \
                     \"[2001:db8::1]:25\")"
                ),
            );
            None
        }
    }
}

/// A relay's `host:port`: the host a DNS name (lower-cased, trailing dot removed) or an IP
/// address, IPv6 in brackets; the port 1-65535. The error says which part is wrong.
fn relay(text: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (v6, port) = rest.split_once(']').ok_or("no closing ]")?;
            let v6: Ipv6Addr = v6.parse().map_err(|_| "not an IPv6 address in brackets")?;
            let port = port.strip_prefix(':').ok_or("no :port")?;
            (v6.to_string(), port)
        }
        None => {
            let (host, port) = text.rsplit_once(':').ok_or("no :port")?;
            if host.contains(':') {
                return Err("an IPv6 address must be in brackets");
            }
            (host.to_owned(), port)
        }
    };
    if port.is_empty() {
        return Err("no port after the colon");
    }
    // Digits only: `u16::from_str` would take `+25`.
    let port = match port.parse::<u16>() {
        Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err("the port must be a number from 1 to 65535"),
    };
    if host.parse::<IpAddr>().is_ok() {
        return Ok((host, port));
    }
    let name = host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase();
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    // All digits and dots but no IPv4 address (`10.0.0.256`, `1.2.3`): a typo, not a name.
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !labels_ok || (numeric && name.parse::<Ipv4Addr>().is_err()) {
        return Err("the host is not a DNS name or an IP address");
    }
    Ok((name, port))
}

/// A terminate listener's `certificate` or an originate listener's `client_certificate`: name
/// or thumbprint, checked for form only; absent is `Automatic`. Whether it matches a
/// certificate is the store's question (`check` fails on a miss), so a name is not looked up
/// in `certificates` here.
fn certificate_selection(
    p: &mut Problems,
    path: &str,
    table: &Option<Table<RawCertificateRef>>,
) -> Option<CertificateSelection> {
    let Some(table) = table else {
        return Some(CertificateSelection::Automatic);
    };
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

/// The shortest `connect_timeout` and `health_check_interval` taken.
const MIN_BACKEND_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

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
            if list[..i].iter().any(|s| s.trim() == server.trim()) {
                p.add(
                    &format!("{servers_path}[{i}]"),
                    format_args!("{server:?} is listed twice"),
                );
            }
            if !is_host_port(server) {
                p.add(
                    &format!("{servers_path}[{i}]"),
                    format_args!(
                        "invalid server {server:?} (expected \"host:port\", IPv6 as \"[::1]:25\")"
                    ),
                );
            }
        }
        let unique = list
            .iter()
            .enumerate()
            .all(|(i, s)| !list[..i].iter().any(|t| t.trim() == s.trim()));
        let valid = !list.is_empty() && unique && list.iter().all(|s| is_host_port(s));
        valid.then(|| list.iter().map(|s| s.trim().to_owned()).collect())
    });

    let tls = p.choice(
        &join(path, "tls"),
        &raw.tls,
        &[
            ("none", BackendTls::None),
            ("starttls", BackendTls::Starttls),
            ("implicit", BackendTls::Implicit),
        ],
    );
    let tls_verify = p.bool(&join(path, "tls_verify"), &raw.tls_verify);
    let xclient = p.bool(&join(path, "xclient"), &raw.xclient);
    // Below a tenth of a second a connect fails before a loaded server can answer (marking
    // it down), and checks follow one another against the legacy server without a pause.
    let at_least = |p: &mut Problems, key: &str, value| {
        let key = join(path, key);
        let d = p.duration(&key, value, true)?;
        if d < MIN_BACKEND_WAIT {
            p.add(&key, "must be at least 100ms");
            return None;
        }
        Some(d)
    };
    let connect_timeout = at_least(p, "connect_timeout", &raw.connect_timeout);
    let health_check_interval = at_least(p, "health_check_interval", &raw.health_check_interval);
    Some(Backend {
        servers: servers?,
        tls: tls?,
        tls_verify: tls_verify?,
        xclient: xclient?,
        connect_timeout: connect_timeout?,
        health_check_interval: health_check_interval?,
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
