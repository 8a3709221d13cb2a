//! One key at a time: each wrong value gives exactly one problem, with its path.

use std::time::Duration;

use super::{ok, one_listener, problems, secs, term};
use crate::config::{BackendTls, TlsVersion};

/// The backend hop's keys (issue 15): TLS, XCLIENT, the health-check interval, the error
/// limit and the backend reply timeout.
#[test]
fn backend_hop_keys() {
    let yaml = one_listener("").replace(
        "servers:",
        "tls: implicit, tls_verify: false, xclient: true, health_check_interval: 500ms, servers:",
    );
    let config = ok(&yaml);
    let b = &term(&config.listeners[0]).backend;
    assert_eq!(b.tls, BackendTls::Implicit);
    assert!(!b.tls_verify && b.xclient);
    assert_eq!(b.health_check_interval, Duration::from_millis(500));
    assert!(b.tls_warning().is_some());
    for (backend, want) in [
        (
            "tls: tls",
            "tls: expected one of: none, starttls, implicit, found \"tls\"",
        ),
        (
            "xclient: yes",
            "xclient: expected true or false, found \"yes\"",
        ),
        (
            "health_check_interval: 0s",
            "health_check_interval: must be greater than 0s",
        ),
        (
            "health_check_interval: 1ms",
            "health_check_interval: must be at least 100ms",
        ),
        (
            "connect_timeout: 99ms",
            "connect_timeout: must be at least 100ms",
        ),
    ] {
        let yaml = one_listener("").replace("servers:", &format!("{backend}, servers:"));
        assert_eq!(problems(&yaml), [format!("listeners[0].backend.{want}")]);
    }
    let t = |yaml: &str| term(&ok(&one_listener(yaml)).listeners[0]).policy.clone();
    let p = t("    policy: {max_errors: 3, timeouts: {command: 1m}}\n");
    assert_eq!(
        (p.max_errors, p.timeouts.backend_reply),
        (3, Duration::from_secs(60))
    );
    let p = t("    policy: {timeouts: {backend_reply: 10s}}\n");
    assert_eq!(p.timeouts.backend_reply, Duration::from_secs(10));
    assert_eq!(t("    policy: {max_handshakes: 8}\n").max_handshakes, 8);
    assert_eq!(
        problems(&one_listener("    policy: {max_handshakes: 0}\n")),
        ["listeners[0].policy.max_handshakes: expected a whole number from 1 to 4294967295, found 0"]
    );
    assert_eq!(
        problems(&one_listener("    policy: {max_errors: 0}\n")),
        ["listeners[0].policy.max_errors: expected a whole number from 1 to 4294967295, found 0"]
    );
}

/// `trust` without the OS store and without CA files is accepted: nothing needs anchors
/// unless it verifies (then its own check says so).
#[test]
fn trust_without_anchors_is_accepted() {
    ok(&one_listener("trust: {system_roots: false}\n"));
}

/// `proxy_protocol` (either mode) and the deadline of its header, default 10s.
#[test]
fn proxy_protocol_and_its_deadline() {
    let config = ok(&one_listener(
        "    proxy_protocol: true\n    policy: {timeouts: {proxy_header: 3s}}\n",
    ));
    let [l] = config.listeners.as_slice() else {
        panic!("{config:?}")
    };
    assert!(l.proxy_protocol);
    assert_eq!(term(l).policy.timeouts.proxy_header, secs(3));
    let config = ok(&one_listener(""));
    assert!(!config.listeners[0].proxy_protocol);
    assert_eq!(
        term(&config.listeners[0]).policy.timeouts.proxy_header,
        secs(10)
    );
    let outbound = "listeners:\n  - mode: originate\n    listen: 127.0.0.1:10025\n    \
                    next_hop: mx\n    proxy_protocol: true\n";
    assert!(ok(outbound).listeners[0].proxy_protocol);
}

/// A backend server that is one of the sidecar's own terminate listeners (or its admin
/// endpoint) would relay every session back into the sidecar; a server listed twice is a
/// slip. Both refused; an originate listener as a terminate listener's backend is a relay on.
#[test]
fn a_backend_that_leads_back_to_the_sidecar_is_refused() {
    let yaml = |servers: &str, more: &str| {
        format!(
            "{more}listeners:\n  - listen: 0.0.0.0:2525\n    backend: {{servers: [{servers}]}}\n  \
             - mode: originate\n    listen: 127.0.0.1:10025\n    next_hop: mx\n"
        )
    };
    let own = "is the sidecar's own 0.0.0.0:2525 (listeners[0].listen): sessions would be relayed back into the sidecar";
    for (servers, more, want) in [
        ("\"127.0.0.1:2525\"", "", format!("listeners[0].backend.servers[0]: 127.0.0.1:2525 {own}")),
        ("\"192.0.2.1:25\", \"[::ffff:127.0.0.2]:2525\"", "", format!("listeners[0].backend.servers[1]: [::ffff:127.0.0.2]:2525 {own}")),
        ("\"0.0.0.0:2525\"", "", format!("listeners[0].backend.servers[0]: 0.0.0.0:2525 {own}")),
        ("\"127.0.0.1:9725\"", "metrics: {listen: \"127.0.0.1:9725\"}\n", "listeners[0].backend.servers[0]: 127.0.0.1:9725 is the sidecar's own 127.0.0.1:9725 (metrics.listen): sessions would be relayed back into the sidecar".into()),
        ("\"192.0.2.1:25\", \"192.0.2.1:25\"", "", "listeners[0].backend.servers[1]: \"192.0.2.1:25\" is listed twice".into()),
    ] {
        assert_eq!(problems(&yaml(servers, more)), [want], "{servers}");
    }
    let loopback =
        "listeners:\n  - listen: 127.0.0.1:2525\n    backend: {servers: [\"0.0.0.0:2525\"]}\n";
    assert_eq!(
        problems(loopback),
        ["listeners[0].backend.servers[0]: 0.0.0.0:2525 is the sidecar's own 127.0.0.1:2525 (listeners[0].listen): sessions would be relayed back into the sidecar"]
    );
    // Another host on the wildcard listener's port is the usual deployment; an IPv6
    // loopback is not an IPv4 wildcard's.
    for servers in [
        "\"127.0.0.1:10025\"",
        "\"127.0.0.1:2526\"",
        "\"localhost:25\"",
        "\"10.0.0.5:2525\"",
        "\"[::1]:2525\"",
    ] {
        ok(&yaml(servers, ""));
    }
}

/// An originate listener's relay given as one of the sidecar's own listeners (terminate or
/// originate, its own included) or its admin endpoint loops the same way; a relay named by
/// host, or another address, is taken.
#[test]
fn a_relay_that_leads_back_to_the_sidecar_is_refused() {
    let yaml = |relay: &str| {
        format!(
            "metrics: {{listen: \"127.0.0.1:9725\"}}\nlisteners:\n  - listen: 0.0.0.0:2525\n    \
             backend: {{servers: [\"192.0.2.1:25\"]}}\n  - mode: originate\n    \
             listen: 127.0.0.1:10025\n    next_hop: \"{relay}\"\n"
        )
    };
    let own = |used: &str, user: &str, relay: &str| {
        format!(
            "listeners[1].next_hop: {relay} is the sidecar's own {used} ({user}): sessions \
             would be relayed back into the sidecar"
        )
    };
    for (relay, want) in [
        (
            "127.0.0.1:2525",
            own("0.0.0.0:2525", "listeners[0].listen", "127.0.0.1:2525"),
        ),
        (
            "127.0.0.1:10025",
            own("127.0.0.1:10025", "listeners[1].listen", "127.0.0.1:10025"),
        ),
        (
            "0.0.0.0:10025",
            own("127.0.0.1:10025", "listeners[1].listen", "0.0.0.0:10025"),
        ),
        (
            "127.0.0.1:9725",
            own("127.0.0.1:9725", "metrics.listen", "127.0.0.1:9725"),
        ),
    ] {
        assert_eq!(problems(&yaml(relay)), [want], "{relay}");
    }
    for relay in [
        "relay.example.net:2525",
        "192.0.2.1:2525",
        "127.0.0.1:25",
        "[::1]:2525",
    ] {
        ok(&yaml(relay));
    }
}

/// `log.level` is a tracing filter: levels, in any case or as numbers, and target=level
/// directives, taken without the spaces around commas that the filter itself refuses; a
/// directive the filter refuses is refused.
#[test]
fn log_levels_and_directives_are_taken() {
    for (level, taken) in [
        ("warn", "warn"),
        ("DEBUG", "DEBUG"),
        ("off", "off"),
        ("3", "3"),
        ("smtp_sidecar=debug,warn", "smtp_sidecar=debug,warn"),
        (" info, hyper=off ", "info,hyper=off"),
        ("a::b[c]=trace", "a::b[c]=trace"),
    ] {
        let yaml = one_listener(&format!("log: {{level: \"{level}\"}}\n"));
        assert_eq!(ok(&yaml).log.level, taken, "{level}");
    }
    let yaml = one_listener("log: {level: \"smtp_sidecar=verbose\"}\n");
    let refused = problems(&yaml);
    assert!(
        refused.len() == 1 && refused[0].starts_with("log.level: not a valid filter ("),
        "{refused:?}"
    );
}

/// `hostname` is the argument of every EHLO we send (RFC 5321 §4.1.1.1): a domain or an
/// address literal, nothing a strict next hop or backend would refuse.
#[test]
fn hostname_is_an_ehlo_name() {
    for good in [
        "mx.test",
        "localhost",
        "mail_1.example.com",
        "MX1.Example.COM.",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
    ] {
        let yaml = one_listener(&format!("hostname: \"{good}\"\n"));
        assert_eq!(ok(&yaml).hostname, good);
    }
    for bad in [
        "mail.example.com:25",
        "-",
        "a..b",
        "-mx.test",
        "[mail]",
        "mail@example.com",
        "[2001:db8::1]",
        "[IPv6:192.0.2.1]",
        "bücher.test",
    ] {
        let yaml = one_listener(&format!("hostname: \"{bad}\"\n"));
        let refused = problems(&yaml);
        assert!(
            refused.len() == 1
                && refused[0].starts_with(&format!("hostname: {bad:?} is not a usable name")),
            "{bad}: {refused:?}"
        );
    }
}

#[test]
fn invalid_values_name_their_path() {
    let cases: &[(&str, &str)] = &[
        ("hostname: \"mx 1\"", "hostname: \"mx 1\" is not a usable name: it is our EHLO name and the greeting's, so a domain name (letters, digits, '-' and '_' in dot-separated labels, none beginning or ending with '-') or an address literal ([192.0.2.1], [IPv6:2001:db8::1])"),
        ("hostname: \"\"", "hostname: expected a non-empty string, found \"\""),
        ("shutdown_grace: 30", "shutdown_grace: invalid duration 30 (use e.g. 30s, 5m, 1h)"),
        ("metrics: {listen: localhost}", "metrics.listen: expected an address like 127.0.0.1:25 or [::1]:25, found \"localhost\""),
        ("log: {format: xml}", "log.format: expected one of: text, json, found \"xml\""),
        ("log: 3", "log: expected a mapping, found 3"),
        ("log: {level: warning}", "log.level: unknown level \"warning\" (use error, warn, info, debug, trace or off, or target=level directives like smtp_sidecar=debug,warn)"),
        ("log: {level: \"smtp_sidecar=debug,inf\"}", "log.level: unknown level \"inf\" (use error, warn, info, debug, trace or off, or target=level directives like smtp_sidecar=debug,warn)"),
        ("certificates: [{name: a, cert: a.pem}]", "certificates[0].key: missing (required)"),
        ("certificates: [{name: a, cert: a, key: a}, {name: a, cert: b, key: b}]", "certificates[1].name: duplicate certificate name \"a\""),
        ("    tls: startls", "listeners[0].tls: expected one of: starttls, implicit, found \"startls\""),
        ("    certificate: {thumbprint: AB}", "listeners[0].certificate.thumbprint: invalid thumbprint \"AB\" (expected the SHA-1 (40 hex digits) or SHA-256 (64 hex digits) of the certificate; spaces and colons are ignored)"),
        ("    certificate: {thumbprint: \"G000000000000000000000000000000000000000\"}", "listeners[0].certificate.thumbprint: invalid thumbprint \"G000000000000000000000000000000000000000\" (expected the SHA-1 (40 hex digits) or SHA-256 (64 hex digits) of the certificate; spaces and colons are ignored)"),
        ("    certificate: {name: a, thumbprint: \"AB:CD\"}", "listeners[0].certificate.thumbprint: invalid thumbprint \"AB:CD\" (expected the SHA-1 (40 hex digits) or SHA-256 (64 hex digits) of the certificate; spaces and colons are ignored)"),
        ("    certificate: {name: \" \"}", "listeners[0].certificate.name: expected a non-empty string, found \" \""),
        ("    next_hop: mx", "listeners[0].next_hop: only valid with mode: originate"),
        ("    policy: {require_tls: yes}", "listeners[0].policy.require_tls: expected true or false, found \"yes\""),
        ("    policy: {tls_min_version: 1.1}", "listeners[0].policy.tls_min_version: expected \"1.2\" or \"1.3\", found 1.1"),
        ("    policy: {bare_newlines: strip}", "listeners[0].policy.bare_newlines: expected one of: reject, normalize, found \"strip\""),
        ("    policy: {long_lines: truncate}", "listeners[0].policy.long_lines: expected one of: fold, reject, found \"truncate\""),
        ("    policy: {max_message_size: 0}", "listeners[0].policy.max_message_size: must be greater than 0"),
        ("    policy: {max_recipients: 0}", "listeners[0].policy.max_recipients: expected a whole number from 1 to 4294967295, found 0"),
        ("    policy: {timeouts: {greeting: 0s}}", "listeners[0].policy.timeouts.greeting: must be greater than 0s"),
        ("    policy: {timeouts: {proxy_header: 0s}}", "listeners[0].policy.timeouts.proxy_header: must be greater than 0s"),
        ("    policy: {timeouts: {command: 10000000000000000000s}}", "listeners[0].policy.timeouts.command: must be at most 1d"),
        ("    policy: {timeouts: {data_block: 25h}}", "listeners[0].policy.timeouts.data_block: must be at most 1d"),
        ("    policy: {timeouts: {proxy_header: 10}}", "listeners[0].policy.timeouts.proxy_header: invalid duration 10 (use e.g. 30s, 5m, 1h)"),
        ("    proxy_protocol: yes", "listeners[0].proxy_protocol: expected true or false, found \"yes\""),
        ("    policy: {timeouts: [5m]}", "listeners[0].policy.timeouts: expected a mapping, found a list"),
        ("  - listen: 127.0.0.1:2525\n    backend: {servers: [\"h:1\"]}", "listeners[1].listen: 127.0.0.1:2525 is already used by listeners[0].listen"),
        ("metrics: {listen: \"127.0.0.1:2525\"}", "listeners[0].listen: 127.0.0.1:2525 is already used by metrics.listen"),
        ("  - listen: 0.0.0.0:2525\n    backend: {servers: [\"h:1\"]}", "listeners[1].listen: 0.0.0.0:2525 cannot be bound beside 127.0.0.1:2525 (listeners[0].listen): a wildcard address takes its port on every address of its family, and [::] on IPv4's too"),
        ("  - listen: \"[::]:2525\"\n    backend: {servers: [\"h:1\"]}", "listeners[1].listen: [::]:2525 cannot be bound beside 127.0.0.1:2525 (listeners[0].listen): a wildcard address takes its port on every address of its family, and [::] on IPv4's too"),
        ("  - listen: \"[::ffff:127.0.0.1]:2525\"\n    backend: {servers: [\"h:1\"]}", "listeners[1].listen: [::ffff:127.0.0.1]:2525 is the same address as 127.0.0.1:2525 (listeners[0].listen)"),
        ("metrics: {listen: \"0.0.0.0:2525\"}", "listeners[0].listen: 127.0.0.1:2525 cannot be bound beside 0.0.0.0:2525 (metrics.listen): a wildcard address takes its port on every address of its family, and [::] on IPv4's too"),
    ];
    for (extra, want) in cases {
        assert_eq!(
            problems(&one_listener(&format!("{extra}\n"))),
            [*want],
            "{extra}"
        );
    }
    // Other ports, or a wildcard of the other family, do not clash.
    for extra in [
        "  - listen: 0.0.0.0:2526\n    backend: {servers: [\"h:1\"]}",
        "  - listen: \"[::1]:2525\"\n    backend: {servers: [\"h:1\"]}",
        "  - listen: 127.0.0.2:2525\n    backend: {servers: [\"h:1\"]}",
    ] {
        assert_eq!(ok(&one_listener(&format!("{extra}\n"))).listeners.len(), 2);
    }
    assert_eq!(
        problems("listeners: []"),
        ["listeners: at least one listener is required"]
    );
    assert_eq!(
        problems("listeners: {}"),
        ["listeners: expected a list, found a mapping"]
    );
    assert_eq!(problems("listeners: [{backend: {servers: []}}]").len(), 2);
}

#[test]
fn tls_min_version_accepts_string_or_float() {
    for (text, want) in [
        ("\"1.3\"", TlsVersion::V1_3),
        ("1.3", TlsVersion::V1_3),
        ("1.2", TlsVersion::V1_2),
    ] {
        let config = ok(&one_listener(&format!(
            "    policy: {{tls_min_version: {text}}}\n"
        )));
        assert_eq!(
            term(&config.listeners[0]).policy.tls_min_version,
            want,
            "{text}"
        );
    }
}

#[test]
fn backend_servers_must_be_host_port() {
    for good in [
        "mail.example.com:25",
        "10.0.0.1:2525",
        "[::1]:25",
        "[2001:db8::1]:587",
    ] {
        ok(&one_listener("").replace("192.0.2.1:25", good));
    }
    for bad in [
        "mail",
        ":25",
        "mail:",
        "mail:0",
        "mail:65536",
        "::1:25",
        "[::1]",
        "[zz]:25",
        "a:+25",
    ] {
        let got = problems(&one_listener("").replace("192.0.2.1:25", bad));
        let want = format!(
            "listeners[0].backend.servers[0]: invalid server {bad:?} (expected \"host:port\", IPv6 as \"[::1]:25\")"
        );
        assert_eq!(got, [want], "{bad}");
    }
}

#[test]
fn port_zero_never_clashes() {
    // Port 0 asks the kernel for a free port (tests, and a metrics endpoint for a probe).
    let yaml = "metrics: {listen: \"127.0.0.1:0\"}\nlisteners:\n\
                \x20 - {name: a, listen: \"127.0.0.1:0\", backend: {servers: [\"h:1\"]}}\n\
                \x20 - {name: b, listen: \"127.0.0.1:0\", backend: {servers: [\"h:1\"]}}\n";
    let config = super::ok(yaml);
    assert_eq!(config.listeners.len(), 2);
}
