//! Support for the originate-mode end-to-end tests (issue 13): the sidecar's YAML and an
//! in-process start with a certificate store of our choosing (a client certificate issued by
//! the next hops' test root, for mutual TLS), /metrics scraped over HTTP, the legacy MTA's
//! side of a relay, TCP forwarders that put a next hop on another loopback address (MX hosts
//! share one port), and a plaintext next hop that holds its end-of-data reply until released.
//!
//! Included with `#[path = "common/originate.rs"] mod support;` next to `mod common;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_sidecar::runtime::Running;
use smtp_sidecar::tls::CertStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::common::next_hop::NextHopPki;
use crate::common::pki::{Leaf, Pki, Spec};
use crate::common::{Client, T};

/// The body every test relays, and what the next hop receives of it (still dot-stuffed).
pub const BODY: &[u8] = b"Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n";
pub const BODY_AT_HOP: &[u8] = b"Subject: t\r\n\r\n..dot\r\nbody\r\n";

/// The store entry name of our client certificate.
pub const OURS: &str = "ours";

/// The metric families an originate listener moves; [`series`] keeps these.
pub const OUTBOUND_FAMILIES: &[&str] = &[
    "smtp_sidecar_messages_total",
    "smtp_sidecar_tls_handshakes_total",
    "smtp_sidecar_policy_rejections_total",
    "smtp_sidecar_domain_secure_messages_sent_total",
    "smtp_sidecar_domain_secure_outbound_session_failures_total",
    "smtp_sidecar_next_hop_failures_total",
];

/// What goes into an originate listener's configuration.
pub struct Conf<'a> {
    pub pki: &'a NextHopPki,
    /// `"127.0.0.1:PORT"`, `"mx:PORT"`...
    pub next_hop: String,
    /// The `policy:` lines (indented 6 spaces), `received_header: false` already in.
    pub policy: String,
    /// A `resolver:` nameserver (the test DNS), for `mx`.
    pub dns: Option<SocketAddr>,
    /// `resolver.allow_loopback` (true by default: every next hop of a test is on 127.0.0.x).
    pub allow_loopback: bool,
    /// `resolver.timeout` (2s by default).
    pub dns_timeout: &'static str,
    /// Top-level lines added as they are (e.g. `log:` or `certificates:`).
    pub top: String,
    /// `client_certificate: {name: ours}` on the listener.
    pub client_certificate: bool,
    /// `metrics: listen:`, by default port 0 of a loopback address of its own (the same
    /// address as `listen` would clash in `check`; a "free" port may be taken by then).
    pub metrics: Option<String>,
}

impl<'a> Conf<'a> {
    pub fn new(pki: &'a NextHopPki, next_hop: impl Into<String>, policy: &str) -> Conf<'a> {
        Conf {
            pki,
            next_hop: next_hop.into(),
            policy: policy.to_owned(),
            dns: None,
            allow_loopback: true,
            dns_timeout: "2s",
            top: String::new(),
            client_certificate: true,
            metrics: Some("127.0.0.250:0".into()),
        }
    }

    pub fn yaml(&self) -> String {
        let metrics = self
            .metrics
            .as_ref()
            .map(|a| format!("metrics:\n  listen: {a}\n"))
            .unwrap_or_default();
        let resolver = self
            .dns
            .map(|a| {
                format!(
                    "resolver:\n  nameservers: [\"{a}\"]\n  timeout: {}\n  allow_loopback: {}\n",
                    self.dns_timeout, self.allow_loopback
                )
            })
            .unwrap_or_default();
        let client_cert = if self.client_certificate {
            format!("\x20   client_certificate: {{name: {OURS}}}\n")
        } else {
            String::new()
        };
        format!(
            "hostname: mx.test\n\
             shutdown_grace: 2s\n\
             {metrics}{resolver}{top}{trust}\
             listeners:\n\
             \x20 - name: outbound\n\
             \x20   mode: originate\n\
             \x20   listen: 127.0.0.1:0\n\
             \x20   next_hop: \"{next_hop}\"\n\
             {client_cert}\
             \x20   policy:\n\
             \x20     received_header: false\n\
             {policy}",
            top = self.top,
            trust = self.pki.trust_yaml(),
            next_hop = self.next_hop,
            policy = self.policy,
        )
    }
}

/// Our client certificate: `mx.test`, issued by the next hops' test root CA (so a next hop
/// requiring `pki.root_file` accepts it).
pub fn our_leaf(pki: &NextHopPki) -> Leaf {
    pki.root.leaf(OURS, Spec::ca(&["mx.test"]))
}

/// The sidecar in process, its store holding `leaf` only.
pub async fn start_with(conf: &Conf<'_>, leaf: &Leaf) -> Running {
    let yaml = conf.yaml();
    let config =
        smtp_sidecar::config::parse(&yaml).unwrap_or_else(|e| panic!("{:?}\n{yaml}", e.problems));
    let store: CertStore = Pki::store(&[leaf]);
    smtp_sidecar::runtime::start(&config, &store).await.unwrap()
}

/// `GET /metrics` over HTTP on the admin endpoint; the body.
pub async fn scrape(running: &Running) -> String {
    let addr = running.metrics_addr.expect("metrics.listen configured");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut all))
        .await
        .expect("metrics in time")
        .unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The series of [`OUTBOUND_FAMILIES`] with a non-zero value, as exposed, sorted.
pub fn series(body: &str) -> Vec<String> {
    let mut out: Vec<String> = body
        .lines()
        .filter(|l| {
            OUTBOUND_FAMILIES
                .iter()
                .any(|f| l.starts_with(&format!("{f}{{")))
        })
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// Scrape and compare the outbound series with `expected` (any order).
pub async fn assert_series(running: &Running, expected: &[String], context: &str) {
    let got = series(&scrape(running).await);
    let mut want: Vec<String> = expected.to_vec();
    want.sort();
    assert_eq!(got, want, "metrics of {context}");
}

/// Metric lines, labels in the order Prometheus renders them (alphabetical).
pub mod m {
    /// `tls`: whether the message went to the next hop over TLS.
    pub fn messages(result: &str, tls: bool, n: u64) -> String {
        let tls = if tls { "yes" } else { "no" };
        format!(
            "smtp_sidecar_messages_total{{listener=\"outbound\",result=\"{result}\",tls=\"{tls}\"}} {n}"
        )
    }
    pub fn handshake_ok(n: u64) -> String {
        format!(
            "smtp_sidecar_tls_handshakes_total{{listener=\"outbound\",result=\"ok\",side=\"client\",version=\"TLSv1.3\"}} {n}"
        )
    }
    pub fn handshake_error(n: u64) -> String {
        format!(
            "smtp_sidecar_tls_handshakes_total{{listener=\"outbound\",result=\"error\",side=\"client\",version=\"\"}} {n}"
        )
    }
    pub fn rejection(reason: &str, enforced: bool, n: u64) -> String {
        format!(
            "smtp_sidecar_policy_rejections_total{{enforced=\"{enforced}\",listener=\"outbound\",reason=\"{reason}\"}} {n}"
        )
    }
    pub fn ds_sent(domain: &str, n: u64) -> String {
        format!(
            "smtp_sidecar_domain_secure_messages_sent_total{{domain=\"{domain}\",listener=\"outbound\"}} {n}"
        )
    }
    pub fn ds_failure(domain: &str, reason: &str, n: u64) -> String {
        format!(
            "smtp_sidecar_domain_secure_outbound_session_failures_total{{domain=\"{domain}\",listener=\"outbound\",reason=\"{reason}\"}} {n}"
        )
    }
    pub fn next_hop_failures(kind: &str, n: u64) -> String {
        format!("smtp_sidecar_next_hop_failures_total{{kind=\"{kind}\",listener=\"outbound\"}} {n}")
    }
}

/// The legacy MTA's side up to MAIL: greeting, EHLO, `MAIL FROM:<a@x.test>`.
pub async fn legacy(running: &Running) -> Client {
    let mut client = Client::connect(running.addr("outbound").unwrap()).await;
    assert_eq!(client.reply().await, "220 mx.test ESMTP\r\n");
    assert_eq!(
        client.cmd("EHLO legacy.test").await,
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SMTPUTF8\r\n"
    );
    assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    client
}

/// RCPT, then (if it was accepted) DATA and [`BODY`]: the RCPT reply and the end-of-data one.
pub async fn send(client: &mut Client, rcpt: &str) -> (String, Option<String>) {
    let rcpt_reply = client.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !rcpt_reply.starts_with("250") {
        return (rcpt_reply, None);
    }
    assert_eq!(
        client.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    client.send(BODY).await;
    (rcpt_reply, Some(client.reply().await))
}

/// A whole session whose one RCPT (`rcpt`) the sidecar answers with `want`, not 250: no
/// DATA, then QUIT.
pub async fn rcpt_refused(running: &Running, rcpt: &str, want: &str) {
    let mut client = legacy(running).await;
    let (reply, eod) = send(&mut client, rcpt).await;
    assert_eq!(reply, want);
    assert_eq!(eod, None);
    quit(client).await;
}

/// Policy lines: y.test at `level`, every other domain `may`.
pub fn y_test_at(level: &str) -> String {
    format!("      default: may\n      domains:\n        y.test: {level}\n")
}

/// The sidecar relaying to the next hop at `hop`, y.test at `level` ([`y_test_at`]), our
/// client certificate ([`our_leaf`]) in its store.
pub async fn relaying_to(pki: &NextHopPki, hop: SocketAddr, level: &str) -> Running {
    start_with(
        &Conf::new(pki, hop.to_string(), &y_test_at(level)),
        &our_leaf(pki),
    )
    .await
}

/// One message accepted by the next hop over TLS 1.3, counted as domain-secure for y.test,
/// and nothing else counted.
pub async fn counted_one_domain_secure(running: &Running, context: &str) {
    let counted = [
        m::messages("accepted", true, 1),
        m::handshake_ok(1),
        m::ds_sent("y.test", 1),
    ];
    assert_series(running, &counted, context).await;
}

/// A message to y.test at `verify` (which presents no client certificate) through a next hop
/// that requires one: it ends the session with TLS 1.3's `certificate_required` alert once our
/// side of the handshake is done, and the sidecar takes that as the TLS policy unmet, not as a
/// lost connection: the RCPT is deferred with `450 4.7.5` naming the alert, the handshake
/// counted as ours completed, then the policy's failure.
pub async fn deferred_for_want_of_a_client_certificate(running: &Running) {
    let want = "450 4.7.5 TLS policy verify for y.test not met: TLS handshake with 127.0.0.1 \
                failed: alert certificate_required\r\n";
    rcpt_refused(running, "b@y.test", want).await;
    let counted = [
        m::handshake_ok(1),
        m::rejection("handshake_failed", true, 1),
        m::next_hop_failures("policy", 1),
    ];
    assert_series(
        running,
        &counted,
        "a session refused for want of a certificate",
    )
    .await;
}

/// QUIT, and wait until the sidecar closed the session (every event of it recorded).
pub async fn quit(mut client: Client) {
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(client.closed().await, "the sidecar closes after QUIT");
}

/// Nothing arrives from the sidecar within `within` (nothing is lost if nothing came).
pub async fn silent_for(client: &mut Client, within: Duration) -> bool {
    tokio::time::timeout(within, client.reply()).await.is_err()
}

/// A loopback TCP listener on `ip:port` (port 0: any) that forwards each connection to `to`,
/// or with `to == None` accepts and closes at once; counts what it accepted.
pub struct Forward {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Forward {
    pub async fn start(ip: &str, port: u16, to: Option<SocketAddr>) -> Forward {
        let ip: IpAddr = ip.parse().unwrap();
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let Some(to) = to else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Forward {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plaintext next hop (no STARTTLS) that answers everything at once except the end of
/// data, whose `250 2.0.0 Ok: held` waits for [`HeldHop::release`]. Records every byte.
pub struct HeldHop {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<u8>>>,
    /// Notified when the end of data has arrived (and is being held).
    pub at_end_of_data: Arc<Notify>,
    release: Arc<Notify>,
    task: JoinHandle<()>,
}

impl HeldHop {
    pub async fn start() -> HeldHop {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (at_eod, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (rec, eod, rel) = (received.clone(), at_eod.clone(), release.clone());
        let task = tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let mut io = BufReader::new(tcp);
            let _ = io.get_mut().write_all(b"220 held.test ESMTP\r\n").await;
            let mut in_data = false;
            loop {
                let mut line = Vec::new();
                match tokio::time::timeout(T, io.read_until(b'\n', &mut line)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                rec.lock().unwrap().extend_from_slice(&line);
                let reply: &[u8] = if in_data {
                    if line != b".\r\n" {
                        continue;
                    }
                    in_data = false;
                    eod.notify_one();
                    rel.notified().await;
                    b"250 2.0.0 Ok: held\r\n"
                } else {
                    let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
                    match upper.get(..4).unwrap_or_default() {
                        "EHLO" => b"250-held.test\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
                            return;
                        }
                        _ => b"250 2.0.0 Ok\r\n",
                    }
                };
                if io.get_mut().write_all(reply).await.is_err() {
                    return;
                }
            }
        });
        HeldHop {
            addr,
            received,
            at_end_of_data: at_eod,
            release,
            task,
        }
    }

    pub fn release(&self) {
        self.release.notify_one();
    }

    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

impl Drop for HeldHop {
    fn drop(&mut self) {
        self.task.abort();
    }
}
