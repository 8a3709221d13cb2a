//! MX look-ups (issue 13, SPEC §3 `resolver`) against a DNS server on 127.0.0.1: preference
//! order, implicit MX, IPv6, null MX, NXDOMAIN, SERVFAIL, a silent server, hosts without
//! addresses, the bounds a hostile zone cannot push us past, and records of other names in an
//! answer (never used; a CNAME chain is followed).

mod common;

use std::time::{Duration, Instant};

use common::dns::{sa, Record, SilentDns, TestDns};
use smtp_sidecar::mx::{MxError, MxResolver, NextHop, MAX_ADDRS_PER_HOST, MAX_MX_HOSTS};

const T: Duration = Duration::from_secs(3);

fn hop(host: &str, addrs: &[(&str, u16)]) -> NextHop {
    NextHop {
        host: host.to_string(),
        addrs: addrs.iter().map(|(ip, port)| sa(ip, *port)).collect(),
    }
}

#[tokio::test]
async fn mx_hosts_in_preference_order() {
    // Listed (and served) with the less preferred first.
    let dns = TestDns::start(vec![
        Record::mx("example.test", 20, "mx2.example.test"),
        Record::mx("example.test", 10, "mx1.example.test"),
        Record::a("mx2.example.test", "192.0.2.2"),
        Record::a("mx1.example.test", "192.0.2.1"),
    ])
    .await;
    let hops = dns.resolver(T).next_hops("example.test", 25).await.unwrap();
    assert_eq!(
        hops,
        vec![
            hop("mx1.example.test", &[("192.0.2.1", 25)]),
            hop("mx2.example.test", &[("192.0.2.2", 25)]),
        ]
    );
}

#[tokio::test]
async fn equal_preferences_are_all_kept_after_the_better_one() {
    let dns = TestDns::start(vec![
        Record::mx("example.test", 20, "b.example.test"),
        Record::mx("example.test", 20, "c.example.test"),
        Record::mx("example.test", 5, "a.example.test"),
        Record::a("a.example.test", "192.0.2.1"),
        Record::a("b.example.test", "192.0.2.2"),
        Record::a("c.example.test", "192.0.2.3"),
    ])
    .await;
    let hops = dns.resolver(T).next_hops("example.test", 25).await.unwrap();
    let mut hosts: Vec<&str> = hops.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts[0], "a.example.test");
    hosts[1..].sort();
    assert_eq!(
        hosts,
        ["a.example.test", "b.example.test", "c.example.test"]
    );
}

#[tokio::test]
async fn no_mx_falls_back_to_the_domains_own_address() {
    // RFC 5321 §5.1: the implicit MX.
    let dns = TestDns::start(vec![Record::a("plain.test", "192.0.2.7")]).await;
    let hops = dns
        .resolver(T)
        .next_hops("Plain.Test.", 2525)
        .await
        .unwrap();
    assert_eq!(hops, vec![hop("plain.test", &[("192.0.2.7", 2525)])]);
    let queries = dns.queries();
    assert!(
        queries.contains(&("plain.test".into(), "MX".into())),
        "{queries:?}"
    );
}

#[tokio::test]
async fn ipv6_and_ipv4_are_interleaved_ipv6_first() {
    let dns = TestDns::start(vec![
        Record::mx("six.test", 10, "mx.six.test"),
        Record::a("mx.six.test", "192.0.2.1"),
        Record::a("mx.six.test", "192.0.2.2"),
        Record::aaaa("mx.six.test", "2001:db8::1"),
        Record::aaaa("v6only.test", "2001:db8::6"),
    ])
    .await;
    let resolver = dns.resolver(T);
    let hops = resolver.next_hops("six.test", 25).await.unwrap();
    assert_eq!(
        hops,
        vec![hop(
            "mx.six.test",
            &[("2001:db8::1", 25), ("192.0.2.1", 25), ("192.0.2.2", 25)]
        )]
    );
    let hops = resolver.next_hops("v6only.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("v6only.test", &[("2001:db8::6", 25)])]);
}

#[tokio::test]
async fn null_mx_is_a_permanent_refusal_without_address_look_ups() {
    let dns = TestDns::start(vec![
        Record::null_mx("nullmx.test"),
        Record::a("nullmx.test", "192.0.2.9"),
    ])
    .await;
    let err = dns
        .resolver(T)
        .next_hops("nullmx.test", 25)
        .await
        .unwrap_err();
    assert_eq!(err, MxError::NullMx);
    assert_eq!(
        err.reply(),
        "550 5.1.10 Recipient domain does not accept mail (null MX)"
    );
    assert_eq!(dns.queries(), vec![("nullmx.test".into(), "MX".into())]);
}

#[tokio::test]
async fn nxdomain_is_no_such_domain() {
    let dns = TestDns::start(vec![Record::a("other.test", "192.0.2.1")]).await;
    let err = dns
        .resolver(T)
        .next_hops("missing.test", 25)
        .await
        .unwrap_err();
    assert_eq!(err, MxError::NoSuchDomain);
    assert_eq!(err.reply(), "550 5.1.2 Recipient domain does not exist");
}

#[tokio::test]
async fn servfail_is_a_temporary_failure_and_no_a_fallback() {
    let dns = TestDns::start(vec![Record::servfail("broken.test")]).await;
    let err = dns
        .resolver(T)
        .next_hops("broken.test", 25)
        .await
        .unwrap_err();
    assert!(matches!(err, MxError::TempFail(_)), "{err:?}");
    assert!(err.reply().starts_with("451 4.4.3 "), "{}", err.reply());
    let types: Vec<String> = dns.queries().into_iter().map(|(_, t)| t).collect();
    assert!(types.iter().all(|t| t == "MX"), "{types:?}");
}

#[tokio::test]
async fn a_silent_name_server_is_a_temporary_failure_within_the_timeout() {
    let silent = SilentDns::start().await;
    let resolver = MxResolver::new(&smtp_sidecar::config::ResolverConfig {
        nameservers: vec![silent.addr],
        timeout: Duration::from_millis(300),
        allow_loopback: false,
    })
    .unwrap();
    let started = Instant::now();
    let err = resolver.next_hops("example.test", 25).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, MxError::TempFail(_)), "{err:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn mx_host_without_address() {
    let dns = TestDns::start(vec![
        // The only MX points to a name that does not exist.
        Record::mx("dangling.test", 10, "nowhere.dangling.test"),
        // The better MX exists but has no address (NODATA); the second one has one.
        Record::mx("half.test", 10, "noaddr.half.test"),
        Record::mx("noaddr.half.test", 10, "elsewhere.test"),
        Record::mx("half.test", 20, "mx2.half.test"),
        Record::a("mx2.half.test", "192.0.2.20"),
        // Neither MX nor A.
        Record::mx("empty.test", 10, "mx.empty.test"),
    ])
    .await;
    let resolver = dns.resolver(T);
    let err = resolver.next_hops("dangling.test", 25).await.unwrap_err();
    assert_eq!(err, MxError::NoAddress);
    assert_eq!(
        err.reply(),
        "550 5.1.2 Recipient domain has no mail server address"
    );
    assert_eq!(
        resolver.next_hops("half.test", 25).await.unwrap(),
        vec![hop("mx2.half.test", &[("192.0.2.20", 25)])]
    );
    assert_eq!(
        resolver.next_hops("empty.test", 25).await,
        Err(MxError::NoAddress)
    );
}

#[tokio::test]
async fn mx_hosts_failing_temporarily_are_skipped_while_one_remains() {
    let dns = TestDns::start(vec![
        Record::mx("mixed.test", 10, "sf.mixed.test"),
        Record::mx("mixed.test", 20, "quiet.mixed.test"),
        Record::mx("mixed.test", 30, "ok.mixed.test"),
        Record::servfail("sf.mixed.test"),
        Record::no_answer("quiet.mixed.test"),
        Record::a("ok.mixed.test", "192.0.2.30"),
        Record::mx("allbad.test", 10, "sf.mixed.test"),
        Record::mx("allbad.test", 20, "quiet.mixed.test"),
    ])
    .await;
    let resolver = dns.resolver(Duration::from_millis(600));
    let started = Instant::now();
    assert_eq!(
        resolver.next_hops("mixed.test", 25).await.unwrap(),
        vec![hop("ok.mixed.test", &[("192.0.2.30", 25)])]
    );
    let err = resolver.next_hops("allbad.test", 25).await.unwrap_err();
    assert!(matches!(err, MxError::TempFail(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_hostile_zone_is_bounded() {
    let mut records = Vec::new();
    for i in 0..30u16 {
        let host = format!("mx{i:02}.big.test");
        records.push(Record::mx("big.test", i, &host));
        for j in 1..=10 {
            records.push(Record::a(&host, &format!("10.{i}.0.{j}")));
        }
    }
    let dns = TestDns::start(records).await;
    let hops = dns.resolver(T).next_hops("big.test", 25).await.unwrap();
    // The first two hosts hold the 5 addresses a session tries (the others are given if
    // they answered by then).
    assert!((2..=MAX_MX_HOSTS).contains(&hops.len()), "{hops:?}");
    assert_eq!(hops[0].host, "mx00.big.test");
    assert_eq!(hops[1].host, "mx01.big.test");
    assert!(hops.iter().all(|h| h.addrs.len() == MAX_ADDRS_PER_HOST));
    // Only the hosts considered were looked up.
    assert!(!dns
        .queries()
        .iter()
        .any(|(name, _)| name == "mx10.big.test"));
}

/// A recipient domain in Unicode (SMTPUTF8 mail) is looked up as its A-labels, as the
/// policy matches it.
#[tokio::test]
async fn a_unicode_domain_is_looked_up_as_its_a_labels() {
    let dns = TestDns::start(vec![
        Record::mx("xn--bcher-kva.test", 10, "mx.xn--bcher-kva.test"),
        Record::a("mx.xn--bcher-kva.test", "192.0.2.1"),
    ])
    .await;
    for domain in ["bücher.test", "BÜCHER.test.", "xn--bcher-kva.test"] {
        let hops = dns.resolver(T).next_hops(domain, 25).await;
        let hops = hops.unwrap_or_else(|e| panic!("{domain}: {e:?} {:?}", dns.queries()));
        assert_eq!(
            hops,
            vec![hop("mx.xn--bcher-kva.test", &[("192.0.2.1", 25)])],
            "{domain}"
        );
    }
}

/// Once the most preferred hosts have answered with as many addresses as a session tries
/// (5), a less preferred one that does not answer is not waited for.
#[tokio::test]
async fn a_silent_spare_mx_is_not_waited_for() {
    let dns = TestDns::start(vec![
        Record::mx("example.test", 10, "mx1.example.test"),
        Record::mx("example.test", 20, "mx2.example.test"),
        Record::mx("example.test", 30, "mx3.example.test"),
        Record::a("mx1.example.test", "192.0.2.1"),
        Record::a("mx1.example.test", "192.0.2.2"),
        Record::aaaa("mx1.example.test", "2001:db8::1"),
        Record::aaaa("mx1.example.test", "2001:db8::2"),
        Record::a("mx2.example.test", "192.0.2.3"),
        Record::no_answer("mx3.example.test"),
    ])
    .await;
    let started = Instant::now();
    let hops = dns
        .resolver(Duration::from_secs(20))
        .next_hops("example.test", 25)
        .await
        .unwrap();
    let took = started.elapsed();
    let hosts: Vec<&str> = hops.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, ["mx1.example.test", "mx2.example.test"]);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn invalid_domains_are_refused_before_any_query() {
    let dns = TestDns::start(vec![]).await;
    let resolver = dns.resolver(T);
    for bad in [
        "",
        "a..test",
        &"x".repeat(300),
        "b\u{fffd}.test",
        "bücher..test",
    ] {
        let err = resolver.next_hops(bad, 25).await.unwrap_err();
        assert!(matches!(err, MxError::InvalidDomain(_)), "{bad:?}: {err:?}");
    }
    assert!(dns.queries().is_empty());
}

/// Whoever controls a recipient domain's DNS chooses its mail servers' addresses: this host's
/// (loopback, the unspecified address, IPv4-mapped loopback: our own listeners, or the legacy
/// server that relays through us, a mail loop), and no host's (link-local, where cloud
/// metadata answers; multicast; broadcast) are never next hops, and a domain with nothing
/// else is refused for good (`550 5.4.4`). Without `allow_loopback`, which the rest of these
/// tests set. A mail server with a routable address beside them is still tried.
#[tokio::test]
async fn addresses_mail_is_never_sent_to_are_not_next_hops() {
    let dns = TestDns::start(vec![
        Record::mx("loop.test", 10, "mx.loop.test"),
        Record::a("mx.loop.test", "127.0.0.1"),
        Record::a("mx.loop.test", "0.0.0.0"),
        Record::aaaa("mx.loop.test", "::ffff:127.0.0.1"),
        Record::aaaa("mx.loop.test", "::"),
        Record::mx("nowhere.test", 10, "mx.nowhere.test"),
        Record::a("mx.nowhere.test", "169.254.169.254"),
        Record::a("mx.nowhere.test", "224.0.0.1"),
        Record::a("mx.nowhere.test", "255.255.255.255"),
        Record::aaaa("mx.nowhere.test", "fe80::1"),
        Record::mx("mixed.test", 10, "mx1.mixed.test"),
        Record::mx("mixed.test", 20, "mx2.mixed.test"),
        Record::a("mx1.mixed.test", "127.0.0.2"),
        Record::a("mx2.mixed.test", "10.0.0.25"),
        Record::a("mx2.mixed.test", "0.1.2.3"),
        Record::mx("local.test", 10, "mx.localhost"),
        Record::mx("crowded.test", 10, "mx.crowded.test"),
        Record::a("mx.crowded.test", "0.0.0.1"),
        Record::a("mx.crowded.test", "0.0.0.2"),
        Record::a("mx.crowded.test", "0.0.0.3"),
        Record::a("mx.crowded.test", "0.0.0.4"),
        Record::a("mx.crowded.test", "0.0.0.5"),
        Record::a("mx.crowded.test", "192.0.2.9"),
    ])
    .await;
    let resolver = dns.resolver_with(T, false);
    for domain in ["loop.test", "nowhere.test", "local.test"] {
        let err = resolver.next_hops(domain, 25).await.unwrap_err();
        assert!(matches!(err, MxError::Unroutable(_)), "{domain}: {err:?}");
        assert_eq!(
            err.reply(),
            "550 5.4.4 Recipient domain's mail servers have no routable address"
        );
    }
    let hops = resolver.next_hops("mixed.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("mx2.mixed.test", &[("10.0.0.25", 25)])]);
    // Set aside before the count of addresses per host: they push out no good one.
    let hops = resolver.next_hops("crowded.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("mx.crowded.test", &[("192.0.2.9", 25)])]);
    // With `allow_loopback`, loopback is a next hop, listed once however written; the
    // unspecified addresses never are.
    let hops = dns.resolver(T).next_hops("loop.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("mx.loop.test", &[("127.0.0.1", 25)])]);
}

/// Only records that answer the name asked are used: an MX of another domain, more preferred,
/// and an address of another host, each slipped into an answer by the server, are not.
#[tokio::test]
async fn records_of_other_names_in_an_answer_are_not_used() {
    let dns = TestDns::start(vec![
        Record::mx("example.test", 10, "mx.example.test"),
        Record::slipped_into(
            "example.test",
            Record::mx("attacker.test", 0, "evil.attacker.test"),
        ),
        Record::a("evil.attacker.test", "192.0.2.66"),
        Record::a("mx.example.test", "192.0.2.1"),
        Record::slipped_into("mx.example.test", Record::a("other.test", "192.0.2.99")),
    ])
    .await;
    let hops = dns.resolver(T).next_hops("example.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("mx.example.test", &[("192.0.2.1", 25)])]);
    let queries = dns.queries();
    assert!(
        !queries.iter().any(|(name, _)| name == "evil.attacker.test"),
        "{queries:?}"
    );
}

/// An MX host that is an alias: its address comes at the end of the CNAME chain in the
/// answer, and is used; another name's address beside it is not.
#[tokio::test]
async fn an_mx_host_behind_a_cname_is_followed() {
    let dns = TestDns::start(vec![
        Record::mx("example.test", 10, "mx.example.test"),
        Record::cname("mx.example.test", "host.provider.test"),
        Record::slipped_into(
            "mx.example.test",
            Record::a("host.provider.test", "192.0.2.5"),
        ),
        Record::slipped_into("mx.example.test", Record::a("unrelated.test", "192.0.2.99")),
    ])
    .await;
    let hops = dns.resolver(T).next_hops("example.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("mx.example.test", &[("192.0.2.5", 25)])]);
}

/// hickory answers a name whose CNAME target it already holds with the target's records
/// alone, without the chain: an MX host that is an alias of a host looked up before (two
/// domains hosted by one provider) is asked for its CNAME, and its address used.
#[tokio::test]
async fn an_alias_of_a_host_looked_up_before_is_followed() {
    let dns = TestDns::start(vec![
        Record::mx("provider.test", 10, "mx1.provider.test"),
        Record::a("mx1.provider.test", "192.0.2.5"),
        Record::mx("example.test", 10, "mx.example.test"),
        Record::cname("mx.example.test", "mx1.provider.test"),
    ])
    .await;
    let resolver = dns.resolver(T);
    let provider = resolver.next_hops("provider.test", 25).await.unwrap();
    assert_eq!(
        provider,
        vec![hop("mx1.provider.test", &[("192.0.2.5", 25)])]
    );
    for _ in 0..2 {
        let hops = resolver.next_hops("example.test", 25).await.unwrap();
        assert_eq!(hops, vec![hop("mx.example.test", &[("192.0.2.5", 25)])]);
    }
    let queries = dns.queries();
    let cname = ("mx.example.test".to_string(), "CNAME".to_string());
    assert!(queries.contains(&cname), "{queries:?}");
}

/// The same through two aliases: the chain is asked for a link at a time.
#[tokio::test]
async fn a_chain_of_aliases_of_a_host_looked_up_before_is_followed() {
    let dns = TestDns::start(vec![
        Record::mx("provider.test", 10, "mx1.provider.test"),
        Record::a("mx1.provider.test", "192.0.2.5"),
        Record::mx("example.test", 10, "mx.example.test"),
        Record::cname("mx.example.test", "mail.example.test"),
        Record::cname("mail.example.test", "mx1.provider.test"),
    ])
    .await;
    let resolver = dns.resolver(T);
    resolver.next_hops("provider.test", 25).await.unwrap();
    let hops = resolver.next_hops("example.test", 25).await.unwrap();
    assert_eq!(hops, vec![hop("mx.example.test", &[("192.0.2.5", 25)])]);
}
