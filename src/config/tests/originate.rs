//! `mode: originate`: the listener typed exactly, the core's session configuration built from
//! it, and every problem of its keys with its path; plus `on_failure`'s words per mode.

use std::time::Duration;

use smtp_core::outbound::{DomainPolicy, NextHop, OnFailure as OutboundOnFailure};

use super::{ok, problems, SPEC_SAMPLE};
use crate::config::{
    BareNewlines, CertificateSelection, Level, Listener, LongLines, NextHopConfig,
    OriginateListener, OriginatePolicy, Timeouts, TlsVersion,
};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The policy keys SPEC §3 does not show for originate, at their defaults.
fn default_policy() -> OriginatePolicy {
    OriginatePolicy {
        default: Level::May,
        domains: Vec::new(),
        on_failure: OutboundOnFailure::Defer,
        enforce: true,
        tls_min_version: TlsVersion::V1_2,
        bare_newlines: BareNewlines::Reject,
        long_lines: LongLines::Fold,
        received_header: true,
        max_message_size: 35 * 1024 * 1024,
        max_recipients: 100,
        max_connections: 1000,
        max_connections_per_ip: 20,
        max_errors: 20,
        timeouts: Timeouts {
            greeting: secs(300),
            command: secs(300),
            data_block: secs(180),
            tls_handshake: secs(30),
            backend_reply: secs(300),
            proxy_header: secs(10),
        },
    }
}

/// SPEC §3's `outbound` listener, as it must be typed.
pub(super) fn spec_sample_outbound() -> OriginateListener {
    OriginateListener {
        next_hop: NextHopConfig::Mx { port: 25 },
        client_certificate: CertificateSelection::Name("internet".into()),
        policy: OriginatePolicy {
            domains: vec![
                ("woodgrovebank.com".into(), Level::DomainSecure),
                ("example.net".into(), Level::Verify),
            ],
            ..default_policy()
        },
    }
}

/// One originate listener; `extra` is spliced in at the listener's indentation.
fn outbound(extra: &str) -> String {
    format!("listeners:\n  - name: outbound\n    mode: originate\n    listen: 127.0.0.1:10025\n    next_hop: mx\n{extra}")
}

fn only_listener(yaml: &str) -> Listener {
    let mut config = ok(yaml);
    assert_eq!(config.listeners.len(), 1, "{config:?}");
    config.listeners.remove(0)
}

fn originate(yaml: &str) -> OriginateListener {
    let listener = only_listener(yaml);
    match listener.originate() {
        Some(o) => o.clone(),
        None => panic!("not originate: {listener:?}"),
    }
}

#[test]
fn every_key_typed() {
    let yaml = outbound(
        "    client_certificate: {thumbprint: \"e8:da:06:27:86:fd:09:7d:d8:d7:9f:f1:0c:58:3c:c2:3a:d6:4f:6c\"}
    policy:
      default: encrypt
      domains:
        WoodgroveBank.COM.: domain-secure
        fabrikam.test: none
        xn--bcher-kva.example: may
      on_failure: bounce
      enforce: false
      tls_min_version: \"1.3\"
      bare_newlines: normalize
      long_lines: reject
      received_header: false
      max_message_size: 10MB
      max_recipients: 50
      max_connections: 200
      max_connections_per_ip: 5
      timeouts: {greeting: 1m, command: 2m, data_block: 90s, tls_handshake: 10s}
",
    )
    .replace("next_hop: mx", "next_hop: \"Relay.Example.NET.:587\"");
    let want = OriginateListener {
        next_hop: NextHopConfig::Relay {
            host: "relay.example.net".into(),
            port: 587,
        },
        client_certificate: CertificateSelection::Thumbprint(
            "E8DA062786FD097DD8D79FF10C583CC23AD64F6C".into(),
        ),
        policy: OriginatePolicy {
            default: Level::Encrypt,
            domains: vec![
                ("woodgrovebank.com".into(), Level::DomainSecure),
                ("fabrikam.test".into(), Level::None),
                ("xn--bcher-kva.example".into(), Level::May),
            ],
            on_failure: OutboundOnFailure::Bounce,
            enforce: false,
            tls_min_version: TlsVersion::V1_3,
            bare_newlines: BareNewlines::Normalize,
            long_lines: LongLines::Reject,
            received_header: false,
            max_message_size: 10_000_000,
            max_recipients: 50,
            max_connections: 200,
            max_connections_per_ip: 5,
            max_errors: 20,
            timeouts: Timeouts {
                greeting: secs(60),
                command: secs(120),
                data_block: secs(90),
                tls_handshake: secs(10),
                // Not given: `command`'s.
                backend_reply: secs(120),
                proxy_header: secs(10),
            },
        },
    };
    let listener = only_listener(&yaml);
    assert_eq!(listener.name, "outbound");
    assert_eq!(listener.max_connections(), 200);
    assert!(listener.terminate().is_none());
    assert_eq!(listener.originate(), Some(&want));
}

#[test]
fn minimal_listener_gets_defaults() {
    let got = originate(&outbound(""));
    let want = OriginateListener {
        next_hop: NextHopConfig::Mx { port: 25 },
        client_certificate: CertificateSelection::Automatic,
        policy: default_policy(),
    };
    assert_eq!(got, want);
    // Empty sections are the same as absent ones.
    let empty = originate(&outbound(
        "    client_certificate: {}\n    policy: {domains: {}}\n",
    ));
    assert_eq!(empty, want);
    let null = originate(&outbound("    policy: {domains: ~}\n"));
    assert_eq!(null, want);
}

#[test]
fn relay_next_hops() {
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "relay.example.net:25",
            "relay.example.net",
            25,
            "relay.example.net:25",
        ),
        (
            "smtp-1.Example.com.:2525",
            "smtp-1.example.com",
            2525,
            "smtp-1.example.com:2525",
        ),
        ("localhost:10026", "localhost", 10026, "localhost:10026"),
        ("192.0.2.1:25", "192.0.2.1", 25, "192.0.2.1:25"),
        ("[2001:db8::1]:587", "2001:db8::1", 587, "[2001:db8::1]:587"),
        ("[::1]:65535", "::1", 65535, "[::1]:65535"),
    ];
    for (text, host, port, shown) in cases {
        let got =
            originate(&outbound("").replace("next_hop: mx", &format!("next_hop: \"{text}\"")));
        let want = NextHopConfig::Relay {
            host: (*host).into(),
            port: *port,
        };
        assert_eq!(got.next_hop, want, "{text}");
        assert_eq!(got.next_hop.to_string(), *shown, "{text}");
    }
    assert_eq!(NextHopConfig::Mx { port: 25 }.to_string(), "mx");
    let got = originate(&outbound("").replace("next_hop: mx", "next_hop: \"mx:2525\""));
    assert_eq!(got.next_hop, NextHopConfig::Mx { port: 2525 });
    assert_eq!(got.next_hop.to_string(), "mx:2525");
}

#[test]
fn invalid_next_hops() {
    let expected = "(expected mx, mx:PORT or \"host:port\", IPv6 as \"[2001:db8::1]:25\")";
    let cases: &[(&str, &str)] = &[
        ("MX", "no :port"),
        ("relay.example.net", "no :port"),
        ("relay.example.net:", "no port after the colon"),
        (
            "relay.example.net:0",
            "the port must be a number from 1 to 65535",
        ),
        (
            "relay.example.net:65536",
            "the port must be a number from 1 to 65535",
        ),
        (
            "relay.example.net:+25",
            "the port must be a number from 1 to 65535",
        ),
        (
            "relay.example.net:smtp",
            "the port must be a number from 1 to 65535",
        ),
        (":25", "the host is not a DNS name or an IP address"),
        (
            "relay_1.example.net:25",
            "the host is not a DNS name or an IP address",
        ),
        (
            "-relay.example.net:25",
            "the host is not a DNS name or an IP address",
        ),
        (
            "relay..example.net:25",
            "the host is not a DNS name or an IP address",
        ),
        (
            "rélay.example.net:25",
            "the host is not a DNS name or an IP address",
        ),
        (
            "10.0.0.256:25",
            "the host is not a DNS name or an IP address",
        ),
        ("1.2.3:25", "the host is not a DNS name or an IP address"),
        ("2001:db8::1:25", "an IPv6 address must be in brackets"),
        ("[2001:db8::1]", "no :port"),
        ("[2001:db8::1:25", "no closing ]"),
        ("[relay.example.net]:25", "not an IPv6 address in brackets"),
    ];
    for (text, why) in cases {
        let yaml = outbound("").replace("next_hop: mx", &format!("next_hop: \"{text}\""));
        let want = format!("listeners[0].next_hop: invalid next hop \"{text}\": {why} {expected}");
        assert_eq!(problems(&yaml), [want], "{text}");
    }
}

/// Each mistake alone gives exactly this one problem.
#[test]
fn problems_with_their_paths() {
    let levels = "one of: none, may, encrypt, verify, domain-secure";
    let cases: &[(&str, String)] = &[
        ("    policy: {default: mayy}", format!("listeners[0].policy.default: expected {levels}, found \"mayy\"")),
        ("    policy: {domains: {example.net: secure}}", format!("listeners[0].policy.domains.example.net: expected {levels}, found \"secure\"")),
        ("    policy: {domains: {example.net: true}}", format!("listeners[0].policy.domains.example.net: expected {levels}, found true")),
        ("    policy: {domains: [example.net]}", "listeners[0].policy.domains: expected a mapping of domain: level, found a list".into()),
        ("    policy: {domains: {\"*.example.net\": verify}}", "listeners[0].policy.domains.*.example.net: \"*.example.net\" is not a domain name (e.g. woodgrovebank.com)".into()),
        ("    policy: {domains: {\"[192.0.2.1]\": verify}}", "listeners[0].policy.domains.[192.0.2.1]: \"[192.0.2.1]\" is not a domain name (e.g. woodgrovebank.com)".into()),
        ("    policy: {domains: {\"example.net..\": verify}}", "listeners[0].policy.domains.example.net..: \"example.net..\" is not a domain name (e.g. woodgrovebank.com)".into()),
        ("    policy: {domains: {bücher.example: verify}}", "listeners[0].policy.domains.bücher.example: \"bücher.example\" is not ASCII: write an internationalised domain as its A-label (xn--..., e.g. xn--bcher-kva.example for bücher.example)".into()),
        ("    policy: {domains: {example.net: verify, Example.NET.: may}}", "listeners[0].policy.domains.Example.NET.: \"example.net\" is listed twice".into()),
        ("    policy: {on_failure: reject}", "listeners[0].policy.on_failure: expected one of: defer, bounce, found \"reject\"".into()),
        ("    policy: {enforce: \"no\"}", "listeners[0].policy.enforce: expected true or false, found \"no\"".into()),
        ("    policy: {max_connections: 0}", "listeners[0].policy.max_connections: expected a whole number from 1 to 4294967295, found 0".into()),
        ("    policy: {timeouts: {tls_handshake: 0s}}", "listeners[0].policy.timeouts.tls_handshake: must be greater than 0s".into()),
        ("    client_certificate: {thumbprint: AB}", "listeners[0].client_certificate.thumbprint: invalid thumbprint \"AB\" (expected the SHA-1 (40 hex digits) or SHA-256 (64 hex digits) of the certificate; spaces and colons are ignored)".into()),
        ("    client_certificate: {name: \"\"}", "listeners[0].client_certificate.name: expected a non-empty string, found \"\"".into()),
        ("    client_certificate: {nmae: internet}", "listeners[0].client_certificate.nmae: unknown key (expected one of: name, thumbprint)".into()),
        ("    client_certificate: internet", "listeners[0].client_certificate: expected a mapping, found \"internet\"".into()),
        // Terminate's keys.
        ("    tls: starttls", "listeners[0].tls: only valid with mode: terminate".into()),
        ("    tls: none", "listeners[0].tls: only valid with mode: terminate".into()),
        ("    certificate: {name: internet}", "listeners[0].certificate: only valid with mode: terminate".into()),
        ("    backend: {servers: [\"127.0.0.1:2525\"]}", "listeners[0].backend: only valid with mode: terminate".into()),
        ("    policy: {require_tls: false}", "listeners[0].policy.require_tls: only valid with mode: terminate".into()),
        ("    policy: {auth_requires_tls: true}", "listeners[0].policy.auth_requires_tls: only valid with mode: terminate".into()),
        ("    policy: {client_certificates: none}", "listeners[0].policy.client_certificates: only valid with mode: terminate".into()),
        ("    policy: {max_handshakes: 10}", "listeners[0].policy.max_handshakes: only valid with mode: terminate".into()),
        ("    policy: {domain_secure: []}", "listeners[0].policy.domain_secure: only valid with mode: terminate".into()),
    ];
    for (extra, want) in cases {
        assert_eq!(
            problems(&outbound(&format!("{extra}\n"))),
            [want.as_str()],
            "{extra}"
        );
    }
    assert_eq!(
        problems(&outbound("").replace("    next_hop: mx\n", "")),
        ["listeners[0].next_hop: missing (required for mode: originate)"]
    );
    assert_eq!(
        problems(&outbound("").replace("next_hop: mx", "next_hop: 25")),
        ["listeners[0].next_hop: expected a non-empty string, found 25"]
    );
}

/// All at once, in file order, none hiding another.
#[test]
fn problems_reported_together() {
    let yaml = outbound(
        "    tls: starttls
    backend: {servers: [\"127.0.0.1:2525\"]}
    policy:
      require_tls: true
      default: secure
      domains: {bücher.example: verify, ok.test: maybe, OK.test: may}
      on_failure: reject
",
    )
    .replace("next_hop: mx", "next_hop: \"relay:0\"");
    assert_eq!(
        problems(&yaml),
        [
            "listeners[0].tls: only valid with mode: terminate",
            "listeners[0].backend: only valid with mode: terminate",
            "listeners[0].next_hop: invalid next hop \"relay:0\": the port must be a number from \
             1 to 65535 (expected mx, mx:PORT or \"host:port\", IPv6 as \"[2001:db8::1]:25\")",
            "listeners[0].policy.require_tls: only valid with mode: terminate",
            "listeners[0].policy.default: expected one of: none, may, encrypt, verify, \
             domain-secure, found \"secure\"",
            "listeners[0].policy.domains.bücher.example: \"bücher.example\" is not ASCII: write \
             an internationalised domain as its A-label (xn--..., e.g. xn--bcher-kva.example for \
             bücher.example)",
            "listeners[0].policy.domains.ok.test: expected one of: none, may, encrypt, verify, \
             domain-secure, found \"maybe\"",
            "listeners[0].policy.domains.OK.test: \"ok.test\" is listed twice",
            "listeners[0].policy.on_failure: expected one of: defer, bounce, found \"reject\"",
        ]
    );
}

/// `on_failure` has each mode's words; the other mode's word names the allowed ones.
#[test]
fn on_failure_words_per_mode() {
    let terminate = "listeners:\n  - listen: 127.0.0.1:2525\n    backend: {servers: [\"192.0.2.1:25\"]}\n    policy: {on_failure: bounce}\n";
    assert_eq!(
        problems(terminate),
        ["listeners[0].policy.on_failure: expected one of: defer, reject, found \"bounce\""]
    );
    for (word, want) in [
        ("defer", OutboundOnFailure::Defer),
        ("bounce", OutboundOnFailure::Bounce),
    ] {
        let got = originate(&outbound(&format!("    policy: {{on_failure: {word}}}\n")));
        assert_eq!(got.policy.on_failure, want);
    }
}

/// Both modes side by side; terminate keeps refusing originate's keys.
#[test]
fn both_modes_in_one_file() {
    let yaml = format!(
        "{}  - name: inbound\n    listen: 127.0.0.1:2525\n    backend: {{servers: [\"192.0.2.1:25\"]}}\n",
        outbound("")
    );
    let config = ok(&yaml);
    assert_eq!(config.listeners[0].mode_name(), "originate");
    assert_eq!(config.listeners[1].mode_name(), "terminate");
    let clash = format!(
        "{}  - name: outbound\n    listen: 127.0.0.1:10025\n    backend: {{servers: [\"192.0.2.1:25\"]}}\n    policy: {{default: verify}}\n",
        outbound("")
    );
    assert_eq!(
        problems(&clash),
        [
            "listeners[1].listen: 127.0.0.1:10025 is already used by listeners[0].listen",
            "listeners[1].name: duplicate listener name \"outbound\" (also listeners[0])",
            "listeners[1].policy.default: only valid with mode: originate",
        ]
    );
}

/// The core's session configuration: every field, so that a new one is a compile error here.
#[test]
fn session_config_carries_the_policy() {
    let config = ok(&SPEC_SAMPLE.replace(
        "      enforce: true\n",
        "      enforce: true\n      timeouts: {command: 2m}\n",
    ));
    let Some(o) = config.listeners[1].originate() else {
        panic!("{:?}", config.listeners[1])
    };
    let smtp_core::outbound::Config {
        hostname,
        next_hop,
        policy,
        on_failure,
        enforce,
        bare_newlines,
        long_lines,
        received_header,
        max_message_size,
        max_recipients,
        max_errors,
        timeouts,
        protocol_log,
    } = o.session_config(&config.hostname, true);
    assert_eq!(hostname, "mx1.example.com");
    assert_eq!(next_hop, NextHop::Mx);
    assert_eq!(
        policy,
        DomainPolicy {
            default: Level::May,
            domains: vec![
                ("woodgrovebank.com".into(), Level::DomainSecure),
                ("example.net".into(), Level::Verify),
            ],
        }
    );
    assert_eq!(
        policy.level("WoodgroveBank.com."),
        (Level::DomainSecure, Some(0))
    );
    assert_eq!(on_failure, OutboundOnFailure::Defer);
    assert!(enforce);
    assert_eq!(bare_newlines, BareNewlines::Reject);
    assert_eq!(long_lines, LongLines::Fold);
    assert!(received_header);
    assert_eq!(max_message_size, 35 * 1024 * 1024);
    assert_eq!(max_recipients, 100);
    assert_eq!(max_errors, 20);
    assert_eq!(
        timeouts,
        smtp_core::session::Timeouts {
            greeting: secs(300),
            command: secs(120),
            data_block: secs(180),
            tls_handshake: secs(30),
            backend_reply: secs(120),
        }
    );
    assert!(protocol_log);

    let relay = originate(&outbound("").replace("next_hop: mx", "next_hop: \"[2001:db8::1]:587\""));
    let session = relay.session_config("mx.test", false);
    assert_eq!(
        session.next_hop,
        NextHop::Relay {
            host: "2001:db8::1".into()
        }
    );
    assert!(!session.protocol_log);
    assert_eq!(session.hostname, "mx.test");
}

/// The commented-out listener of config.yaml.example, once uncommented, is SPEC §3's (without
/// a client certificate rule, since the example's store is empty).
#[test]
fn example_originate_block_uncommented() {
    let example = super::EXAMPLE;
    let Some(start) = example.find("  # - name: outbound") else {
        panic!("config.yaml.example lost its originate listener")
    };
    let block: String = example[start..]
        .lines()
        .map(|line| match line.strip_prefix("  # ") {
            Some(rest) => format!("  {rest}\n"),
            None => format!("{line}\n"),
        })
        .collect();
    let config = ok(&format!("{}{block}", &example[..start]));
    let want = OriginateListener {
        client_certificate: CertificateSelection::Automatic,
        ..spec_sample_outbound()
    };
    assert_eq!(config.listeners[1].name, "outbound");
    assert_eq!(config.listeners[1].originate(), Some(&want));
}
