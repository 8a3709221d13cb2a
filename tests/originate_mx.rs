//! Originate mode with `next_hop: mx` end to end (issue 13, SPEC §3 `resolver`, §4): the
//! sidecar asks a DNS server on 127.0.0.1 (`common::dns`) and delivers to test next hops. MX
//! hosts share one port (`mx:PORT`), so each is told apart by its loopback address: the first
//! next hop listens on 127.0.0.1, the others are reached through forwarders on 127.0.0.2...
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/originate.rs"]
mod support;

use common::dns::{Record, SilentDns, TestDns};
use common::next_hop::{Cert, End, Message, NextHop, NextHopPki, RunningNextHop};
use common::pki::Leaf;
use support::{
    assert_series, legacy, m, our_leaf, quit, rcpt_refused, send, start_with, Conf, Forward, BODY,
};

/// A sidecar whose MX look-ups go to `dns`, next hops on `port`, at `level` for everyone.
async fn sidecar(
    pki: &NextHopPki,
    ours: &Leaf,
    dns: &TestDns,
    port: u16,
    level: &str,
) -> smtp_sidecar::runtime::Running {
    let mut conf = Conf::new(
        pki,
        format!("mx:{port}"),
        &format!("      default: {level}\n"),
    );
    conf.dns = Some(dns.addr);
    start_with(&conf, ours).await
}

async fn tls_hop(pki: &NextHopPki, host: &str, cert: Cert) -> RunningNextHop {
    NextHop::builder()
        .host(host)
        .starttls(pki, cert)
        .start()
        .await
}

fn plain(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn delivery(rcpts: &[&str]) -> String {
    let rcpts: String = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();
    format!(
        "EHLO mx.test\r\nMAIL FROM:<a@x.test>\r\n{rcpts}DATA\r\n{}QUIT\r\n",
        plain(BODY)
    )
}

fn message(rcpts: &[&str]) -> Message {
    Message {
        mail_from: "a@x.test".into(),
        rcpt_to: rcpts.iter().map(|r| (*r).to_owned()).collect(),
        data: b"Subject: t\r\n\r\n..dot\r\nbody\r\n".to_vec(),
    }
}

/// A delivery inside TLS to `hop`, whose name (SNI) is `sni`.
async fn assert_delivered_tls(hop: &RunningNextHop, sni: &str, rcpts: &[&str]) {
    let s = hop.next_session().await;
    assert_eq!(plain(&s.plaintext), "EHLO mx.test\r\nSTARTTLS\r\n");
    assert_eq!(plain(&s.encrypted), delivery(rcpts));
    assert_eq!(s.messages, vec![message(rcpts)]);
    assert_eq!(
        s.tls.unwrap().sni.as_deref(),
        Some(sni),
        "SNI is the MX host"
    );
}

fn mx_queries(dns: &TestDns, domain: &str) -> usize {
    dns.queries()
        .iter()
        .filter(|(n, t)| n == domain && t == "MX")
        .count()
}

/// The preferred MX (listed second) is tried first: it accepts and closes at once; the
/// second one delivers, verified against its own name.
#[tokio::test]
async fn mx_hosts_are_tried_in_preference_order() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = tls_hop(&pki, "mx2.y.test", Cert::Valid).await;
    let port = hop.addr.port();
    let closer = Forward::start("127.0.0.2", port, None).await;
    let dns = TestDns::start(vec![
        Record::mx("y.test", 20, "mx2.y.test"),
        Record::mx("y.test", 10, "mx1.y.test"),
        Record::a("mx2.y.test", "127.0.0.1"),
        Record::a("mx1.y.test", "127.0.0.2"),
    ])
    .await;
    let sidecar = sidecar(&pki, &ours, &dns, port, "verify").await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    quit(client).await;
    assert_delivered_tls(&hop, "mx2.y.test", &["b@y.test"]).await;
    assert_eq!(closer.accepted(), 1, "the preferred MX was tried");
    assert_eq!(hop.accepted(), 1);
    assert_eq!(mx_queries(&dns, "y.test"), 1, "{:?}", dns.queries());
    let want = [
        m::messages("accepted", true, 1),
        m::handshake_ok(1),
        m::next_hop_failures("closed", 1),
    ];
    assert_series(&sidecar, &want, "preference order").await;
}

/// A 4xx greeting at the first MX: the next MX. (Had the second been tried first, it would
/// have delivered and the first would never have been contacted.)
#[tokio::test]
async fn a_4xx_greeting_moves_on_to_the_next_mx() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for greeting in ["421 4.3.2 Busy, try later", "450 4.3.2 Busy, try later"] {
        let busy = NextHop::builder().greeting(greeting).start().await;
        let port = busy.addr.port();
        let good = tls_hop(&pki, "mx2.y.test", Cert::Valid).await;
        let to_good = Forward::start("127.0.0.2", port, Some(good.addr)).await;
        let dns = two_mx("127.0.0.1", "127.0.0.2").await;
        let sidecar = sidecar(&pki, &ours, &dns, port, "verify").await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, eod) = send(&mut client, "b@y.test").await;
        assert_eq!(rcpt, "250 2.1.5 Ok\r\n", "{greeting}");
        assert_eq!(
            eod.as_deref(),
            Some("250 2.0.0 Ok: queued\r\n"),
            "{greeting}"
        );
        quit(client).await;
        assert_delivered_tls(&good, "mx2.y.test", &["b@y.test"]).await;
        let refused = busy.next_session().await;
        assert!(refused.messages.is_empty(), "{greeting}");
        if greeting.starts_with("421") {
            assert_eq!(refused.end, End::ServerClosed);
        } else {
            // Given up on without a command, or with QUIT.
            assert!(
                plain(&refused.plaintext).is_empty() || plain(&refused.plaintext) == "QUIT\r\n",
                "{greeting}: {refused:?}"
            );
        }
        assert_eq!((busy.accepted(), to_good.accepted()), (1, 1), "{greeting}");
        let want = [
            m::messages("accepted", true, 1),
            m::handshake_ok(1),
            m::next_hop_failures("refused", 1),
        ];
        assert_series(&sidecar, &want, greeting).await;
    }
}

/// No MX: the domain's own address (RFC 5321 §5.1), its name the one verified.
#[tokio::test]
async fn no_mx_falls_back_to_the_domains_address() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = tls_hop(&pki, "y.test", Cert::Valid).await;
    let dns = TestDns::start(vec![Record::a("y.test", "127.0.0.1")]).await;
    let sidecar = sidecar(&pki, &ours, &dns, hop.addr.port(), "verify").await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    quit(client).await;
    assert_delivered_tls(&hop, "y.test", &["b@y.test"]).await;
    let queries = dns.queries();
    assert!(
        queries.contains(&("y.test".into(), "MX".into())),
        "{queries:?}"
    );
    assert!(
        queries.contains(&("y.test".into(), "A".into())),
        "{queries:?}"
    );
    assert_series(
        &sidecar,
        &[m::messages("accepted", true, 1), m::handshake_ok(1)],
        "implicit MX",
    )
    .await;
}

/// What DNS says about the recipient domain, answered on its RCPT; nothing is contacted.
#[tokio::test]
async fn dns_answers_become_rcpt_replies() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder().start().await;
    for (records, reply) in [
        (
            vec![Record::null_mx("y.test")],
            "550 5.1.10 Recipient domain does not accept mail (null MX)\r\n",
        ),
        (
            vec![Record::servfail("y.test")],
            "451 4.4.3 Temporary DNS failure for the recipient domain\r\n",
        ),
        (
            vec![Record::a("other.test", "127.0.0.1")],
            "550 5.1.2 Recipient domain does not exist\r\n",
        ),
    ] {
        let dns = TestDns::start(records).await;
        let sidecar = sidecar(&pki, &ours, &dns, hop.addr.port(), "may").await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, eod) = send(&mut client, "b@y.test").await;
        assert_eq!(rcpt, reply);
        assert_eq!(eod, None);
        // (A SERVFAIL is asked twice: the resolver's own retry.)
        let asked = mx_queries(&dns, "y.test");
        assert!(asked >= 1, "{:?}", dns.queries());
        // Another recipient of the domain: the same answer, without asking again.
        assert_eq!(client.cmd("RCPT TO:<c@y.test>").await, reply);
        assert_eq!(
            mx_queries(&dns, "y.test"),
            asked,
            "{reply}: {:?}",
            dns.queries()
        );
        // The session goes on: a new transaction asks again.
        assert_eq!(client.cmd("RSET").await, "250 2.0.0 OK\r\n");
        assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
        assert_eq!(client.cmd("RCPT TO:<c@y.test>").await, reply);
        quit(client).await;
        assert_series(&sidecar, &[m::next_hop_failures("dns", 2)], reply).await;
    }
    assert_eq!(hop.accepted(), 0);
}

/// Without `resolver.allow_loopback` (the default), a domain whose MX is at a loopback
/// address, where a next hop does listen, is refused on its RCPT (`550 5.4.4`) and nothing is
/// contacted: in production that address is this host, the sidecar's own listeners or the
/// legacy server's, a mail loop.
#[tokio::test]
async fn an_mx_at_a_loopback_address_is_refused_without_allow_loopback() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder().start().await;
    let dns = TestDns::start(vec![
        Record::mx("y.test", 10, "mx.y.test"),
        Record::a("mx.y.test", "127.0.0.1"),
    ])
    .await;
    let mut conf = Conf::new(
        &pki,
        format!("mx:{}", hop.addr.port()),
        "      default: may\n",
    );
    conf.dns = Some(dns.addr);
    conf.allow_loopback = false;
    let sidecar = start_with(&conf, &ours).await;
    let want = "550 5.4.4 Recipient domain's mail servers have no routable address\r\n";
    rcpt_refused(&sidecar, "b@y.test", want).await;
    assert_eq!(hop.accepted(), 0);
    assert_series(&sidecar, &[m::next_hop_failures("dns", 1)], "loopback MX").await;
}

/// A look-up ends with the set-up's budget (9/10 of `timeouts.command`) when that comes
/// before `resolver.timeout`: the legacy MTA hears `451 4.4.3` while it still listens, not
/// after it gave up on its RCPT.
#[tokio::test]
async fn a_silent_name_server_is_given_no_more_than_the_set_ups_budget() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let silent = SilentDns::start().await;
    let policy = "      default: may\n      timeouts: {command: 2s}\n";
    let mut conf = Conf::new(&pki, "mx", policy);
    conf.dns = Some(silent.addr);
    conf.dns_timeout = "60s";
    let sidecar = start_with(&conf, &ours).await;
    let asked = std::time::Instant::now();
    let want = "451 4.4.3 Temporary DNS failure for the recipient domain\r\n";
    rcpt_refused(&sidecar, "b@y.test", want).await;
    // The budget is 1.8 s; the resolver alone would have waited 60.
    let waited = asked.elapsed();
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
}

/// An MX at one of the sidecar's own listeners is a mail loop (the legacy server behind a
/// terminate listener relays back to us): never connected to; with no other address the
/// RCPT is refused for good (`550 5.4.6`), and nothing reaches the terminate listener's
/// backend. Here the
/// terminate listener and the MX share 127.0.0.1 and its port (`allow_loopback`, as every
/// test); the other way a loop is found, a connection from this host to its own address on a
/// wildcard listener's port, is unit-tested (`snapshot::tests`).
#[tokio::test]
async fn an_mx_at_the_sidecars_own_listener_is_never_connected_to() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let (backend, rec) = common::recording_backend().await;
    let port = common::process::free_port();
    let dns = TestDns::start(vec![
        Record::mx("y.test", 10, "mx.y.test"),
        Record::a("mx.y.test", "127.0.0.1"),
    ])
    .await;
    let mut conf = Conf::new(&pki, format!("mx:{port}"), "      default: may\n");
    conf.dns = Some(dns.addr);
    let sidecar = with_a_terminate_listener(&conf, &ours, port, backend).await;
    assert_eq!(sidecar.addr("inbound").unwrap().port(), port);
    let want = "550 5.4.6 Mail for y.test loops back to this relay\r\n";
    rcpt_refused(&sidecar, "b@y.test", want).await;
    assert!(rec.messages().is_empty());
    let metrics = support::scrape(&sidecar).await;
    let inbound = "smtp_sidecar_connections_total{listener=\"inbound\"} 0";
    assert!(metrics.contains(inbound), "{metrics}");
    // Every non-zero series: a loop, not an unreachable next hop.
    let counted = [m::next_hop_failures("loop", 1)];
    assert_series(&sidecar, &counted, "a mail loop").await;
}

/// The same for a fixed relay given by a host name (`localhost`), which `check` cannot tell
/// is ours: found once connected, refused for good as a loop (`550 5.4.6`), counted as one.
#[tokio::test]
async fn a_relay_named_localhost_at_the_sidecars_own_listener_is_a_loop() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let (backend, rec) = common::recording_backend().await;
    let port = common::process::free_port();
    let conf = Conf::new(&pki, format!("localhost:{port}"), "      default: may\n");
    let sidecar = with_a_terminate_listener(&conf, &ours, port, backend).await;
    let want = "550 5.4.6 Mail for y.test loops back to this relay\r\n";
    rcpt_refused(&sidecar, "b@y.test", want).await;
    assert!(rec.messages().is_empty());
    let counted = [m::next_hop_failures("loop", 1)];
    assert_series(&sidecar, &counted, "a mail loop").await;
}

/// The originate listener of `conf`, and a terminate listener at 127.0.0.1:`port` in front of
/// `backend`: where a next hop that loops back arrives.
async fn with_a_terminate_listener(
    conf: &Conf<'_>,
    ours: &Leaf,
    port: u16,
    backend: std::net::SocketAddr,
) -> smtp_sidecar::runtime::Running {
    let yaml = format!(
        "{}\x20 - name: inbound\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:{port}\n\
         \x20   backend: {{servers: [\"{backend}\"]}}\n",
        conf.yaml()
    );
    let config =
        smtp_sidecar::config::parse(&yaml).unwrap_or_else(|e| panic!("{:?}\n{yaml}", e.problems));
    let store = common::pki::Pki::store(&[ours]);
    smtp_sidecar::runtime::start(&config, &store).await.unwrap()
}

/// Every MX unreachable (one refuses the connection, one closes at once): `451 4.4.1`.
#[tokio::test]
async fn all_mx_unreachable_is_451_4_4_1() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let closer = Forward::start("127.0.0.4", 0, None).await;
    let port = closer.addr.port();
    let dns = two_mx("127.0.0.3", "127.0.0.4").await;
    let sidecar = sidecar(&pki, &ours, &dns, port, "may").await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, _) = send(&mut client, "b@y.test").await;
    assert_eq!(
        rcpt,
        "451 4.4.1 No next hop for y.test could be reached\r\n"
    );
    quit(client).await;
    assert_eq!(closer.accepted(), 1);
    assert_series(
        &sidecar,
        &[
            m::next_hop_failures("unreachable", 1),
            m::next_hop_failures("closed", 1),
        ],
        "unreachable",
    )
    .await;
}

/// A level not met at the first MX is a reason to try the next one; when none meets it, the
/// policy's reply names the last one tried.
#[tokio::test]
async fn a_level_not_met_tries_the_next_mx() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for second in [Cert::Valid, Cert::Untrusted] {
        let first = tls_hop(&pki, "mx1.y.test", Cert::Untrusted).await;
        let port = first.addr.port();
        let other = tls_hop(&pki, "mx2.y.test", second).await;
        let _to_other = Forward::start("127.0.0.2", port, Some(other.addr)).await;
        let dns = two_mx("127.0.0.1", "127.0.0.2").await;
        let sidecar = sidecar(&pki, &ours, &dns, port, "verify").await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, eod) = send(&mut client, "b@y.test").await;
        let mut want = vec![m::handshake_ok(2)];
        if second == Cert::Valid {
            assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
            assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
            quit(client).await;
            assert_delivered_tls(&other, "mx2.y.test", &["b@y.test"]).await;
            want.extend([
                m::messages("accepted", true, 1),
                m::rejection("certificate_untrusted", true, 1),
                m::next_hop_failures("policy", 1),
            ]);
        } else {
            assert_eq!(
                rcpt,
                "450 4.7.5 TLS policy verify for y.test not met: certificate of mx2.y.test \
                 did not verify (untrusted issuer)\r\n"
            );
            quit(client).await;
            assert!(other.next_session().await.messages.is_empty());
            want.extend([
                m::rejection("certificate_untrusted", true, 2),
                m::next_hop_failures("policy", 2),
            ]);
        }
        assert!(first.next_session().await.messages.is_empty());
        assert_eq!((first.accepted(), other.accepted()), (1, 1), "{second:?}");
        assert_series(&sidecar, &want, &format!("second MX {second:?}")).await;
    }
}

/// `verify` through MX: the certificate may name the MX host or the recipient domain;
/// anything else is a name mismatch naming both.
#[tokio::test]
async fn verify_accepts_the_mx_host_or_the_domain_name() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    for (cert_name, cert, reply) in [
        ("mx1.y.test", Cert::Valid, None),
        ("y.test", Cert::Valid, None),
        (
            "mx1.y.test",
            Cert::WrongName,
            Some(
                "450 4.7.5 TLS policy verify for y.test not met: certificate of mx1.y.test is \
                 not valid for mx1.y.test or y.test\r\n",
            ),
        ),
    ] {
        let hop = tls_hop(&pki, cert_name, cert).await;
        let dns = TestDns::start(vec![
            Record::mx("y.test", 10, "mx1.y.test"),
            Record::a("mx1.y.test", "127.0.0.1"),
        ])
        .await;
        let sidecar = sidecar(&pki, &ours, &dns, hop.addr.port(), "verify").await;
        let mut client = legacy(&sidecar).await;
        let (rcpt, _) = send(&mut client, "b@y.test").await;
        match reply {
            None => {
                assert_eq!(rcpt, "250 2.1.5 Ok\r\n", "{cert_name}");
                quit(client).await;
                assert_delivered_tls(&hop, "mx1.y.test", &["b@y.test"]).await;
            }
            Some(reply) => {
                assert_eq!(rcpt, reply);
                quit(client).await;
            }
        }
    }
}

/// With MX, a recipient of a second domain waits for a transaction of its own: `452 4.5.3`,
/// then delivered in the next one (a next hop session per transaction).
#[tokio::test]
async fn a_second_domain_is_452_4_5_3_then_delivered_in_the_next_transaction() {
    let pki = NextHopPki::new();
    let ours = our_leaf(&pki);
    let hop = NextHop::builder().start().await;
    let dns = TestDns::start(vec![
        Record::mx("y.test", 10, "mx.y.test"),
        Record::mx("z.test", 10, "mx.z.test"),
        Record::a("mx.y.test", "127.0.0.1"),
        Record::a("mx.z.test", "127.0.0.1"),
    ])
    .await;
    let sidecar = sidecar(&pki, &ours, &dns, hop.addr.port(), "may").await;
    let mut client = legacy(&sidecar).await;
    assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        client.cmd("RCPT TO:<c@z.test>").await,
        "452 4.5.3 Too many recipients\r\n"
    );
    assert_eq!(client.cmd("RCPT TO:<d@Y.TEST>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        client.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    client.send(BODY).await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    // The legacy MTA retries the deferred recipient in a new transaction.
    assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    let (rcpt, eod) = send(&mut client, "c@z.test").await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    quit(client).await;
    let first = hop.next_session().await;
    assert_eq!(plain(&first.plaintext), delivery(&["b@y.test", "d@Y.TEST"]));
    assert_eq!(first.messages, vec![message(&["b@y.test", "d@Y.TEST"])]);
    let second = hop.next_session().await;
    assert_eq!(plain(&second.plaintext), delivery(&["c@z.test"]));
    assert_eq!(hop.accepted(), 2);
    assert_series(
        &sidecar,
        &[m::messages("accepted", false, 2)],
        "two domains",
    )
    .await;
}

/// y.test with two MX hosts, mx1 (preference 10) at `first` and mx2 (20) at `second`.
async fn two_mx(first: &str, second: &str) -> TestDns {
    TestDns::start(vec![
        Record::mx("y.test", 10, "mx1.y.test"),
        Record::mx("y.test", 20, "mx2.y.test"),
        Record::a("mx1.y.test", first),
        Record::a("mx2.y.test", second),
    ])
    .await
}
