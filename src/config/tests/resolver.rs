//! `resolver`: name servers as socket addresses (port 53 unless given), the timeout bounded.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ok, one_listener, problems};
use crate::config::ResolverConfig;

fn addr(text: &str) -> SocketAddr {
    match text.parse() {
        Ok(addr) => addr,
        Err(err) => panic!("{text}: {err}"),
    }
}

#[test]
fn typed() {
    let cases: &[(&str, &[&str], Duration, bool)] = &[
        ("", &[], Duration::from_secs(5), false),
        ("resolver:\n", &[], Duration::from_secs(5), false),
        ("resolver: {nameservers: []}\n", &[], Duration::from_secs(5), false),
        (
            "resolver: {nameservers: [\"127.0.0.1:53\"], timeout: 2s, allow_loopback: true}\n",
            &["127.0.0.1:53"],
            Duration::from_secs(2),
            true,
        ),
        (
            "resolver:\n  nameservers: [192.0.2.53, \"192.0.2.54:5353\", \"2001:db8::53\", \"[2001:db8::54]\", \"[2001:db8::55]:5353\", \" 10.0.0.1 \"]\n  timeout: 100ms\n",
            &[
                "192.0.2.53:53",
                "192.0.2.54:5353",
                "[2001:db8::53]:53",
                "[2001:db8::54]:53",
                "[2001:db8::55]:5353",
                "10.0.0.1:53",
            ],
            Duration::from_millis(100),
            false,
        ),
        ("resolver: {timeout: 1m}\n", &[], Duration::from_secs(60), false),
        ("resolver: {allow_loopback: false}\n", &[], Duration::from_secs(5), false),
    ];
    for (yaml, nameservers, timeout, allow_loopback) in cases {
        let config = ok(&format!("{}{yaml}", one_listener("")));
        let want = ResolverConfig {
            nameservers: nameservers.iter().map(|a| addr(a)).collect(),
            timeout: *timeout,
            allow_loopback: *allow_loopback,
        };
        assert_eq!(config.resolver, want, "{yaml}");
    }
}

#[test]
fn problems_with_their_paths() {
    let bad = |text: &str, i: usize| {
        format!(
            "resolver.nameservers[{i}]: invalid name server \"{text}\" (expected an IP address \
             a server answers at, not unspecified, multicast or broadcast, optionally with a \
             port: 192.0.2.53, 192.0.2.53:5353, 2001:db8::53 or [2001:db8::53]:5353)"
        )
    };
    let bounds = "resolver.timeout: must be from 100ms to 60s (the whole MX and address look-up)";
    let cases: &[(&str, Vec<String>)] = &[
        (
            "resolver: {nameservers: [\"127.0.0.1:53\", dns.example.net, \"192.0.2.1:0\", \"192.0.2.1:99999\", \"[192.0.2.1]:53\"]}",
            vec![
                bad("dns.example.net", 1),
                bad("192.0.2.1:0", 2),
                bad("192.0.2.1:99999", 3),
                bad("[192.0.2.1]:53", 4),
            ],
        ),
        (
            "resolver: {nameservers: [\"0.0.0.0:53\", \"[::]:53\", \"224.0.0.1\", \"255.255.255.255\", \"[::ffff:0.0.0.0]:53\"]}",
            vec![
                bad("0.0.0.0:53", 0),
                bad("[::]:53", 1),
                bad("224.0.0.1", 2),
                bad("255.255.255.255", 3),
                bad("[::ffff:0.0.0.0]:53", 4),
            ],
        ),
        (
            "resolver: {nameservers: \"127.0.0.1\"}",
            vec!["resolver.nameservers: expected a list of strings, found \"127.0.0.1\"".into()],
        ),
        (
            "resolver: {nameservers: [53]}",
            vec!["resolver.nameservers[0]: expected a non-empty string, found 53".into()],
        ),
        ("resolver: {timeout: 99ms}", vec![bounds.into()]),
        ("resolver: {timeout: 61s}", vec![bounds.into()]),
        (
            "resolver: {timeout: 0s}",
            vec!["resolver.timeout: must be greater than 0s".into()],
        ),
        (
            "resolver: {timeout: 5}",
            vec!["resolver.timeout: invalid duration 5 (use e.g. 30s, 5m, 1h)".into()],
        ),
        (
            "resolver: {timout: 5s}",
            vec!["resolver.timout: unknown key (expected one of: nameservers, timeout, allow_loopback)".into()],
        ),
        (
            "resolver: {allow_loopback: yes please}",
            vec!["resolver.allow_loopback: expected true or false, found \"yes please\"".into()],
        ),
        (
            "resolver: [127.0.0.1]",
            vec!["resolver: expected a mapping, found a list".into()],
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(
            problems(&format!("{}{yaml}\n", one_listener(""))),
            *want,
            "{yaml}"
        );
    }
}
