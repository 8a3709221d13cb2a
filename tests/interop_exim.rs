//! Interoperability with Exim 4 as the legacy backend: the real `smtp-sidecar` binary in front
//! of a real Exim daemon (Debian's exim4-daemon-light, built with GnuTLS, unpacked under
//! target/interop-tools/exim4 by scripts/test.sh) that offers STARTTLS and implicit TLS with a
//! certificate from a test CA and delivers every message to a Maildir, one file per message.
//! What Exim stores is what the client sent, LF line ends, under the Received header fields on
//! top (Exim's, and the sidecar's where a test asks for it), which are checked apart. The client
//! is the tests' own, on STARTTLS (tests/common/legacy_backend.rs). A missing Exim is a failure,
//! never a skip.
//!
//! - delivery: leading dots unstuffed exactly once, Exim's STARTTLS, CHUNKING, PRDR and
//!   PIPECONNECT never shown to the client, the hop plaintext (`with esmtp`), both Received
//!   headers;
//! - smuggling under `bare_newlines: reject` (each attempt refused, nothing stored, the clean
//!   message after them delivered alone) and `normalize`;
//! - the sidecar's encrypted hop to it, STARTTLS and implicit (`tls_on_connect_ports`),
//!   verified against the test CA and 127.0.0.1: `with esmtps (TLS1.3)` in Exim's Received
//!   header, `X=TLS1.3` in its log;
//! - Exim as the next hop of an originate listener that requires a client certificate
//!   (`tls_verify_hosts`): `domain-secure` delivers, Exim logging our certificate as verified
//!   (`CV=yes`, its DN) and the sidecar counting the message as domain-secure; `verify`, which
//!   presents none, is refused by Exim after the TLS 1.3 handshake (its `certificate_required`
//!   alert) and the RCPT deferred as the policy's failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
#[path = "common/originate.rs"]
mod support;

use common::binary::{start_binary, Binary};
use common::config_yaml;
use common::legacy_backend::{
    assert_received, ca_file, checked_session, ehlo, encrypted_hops, ids_masked, lf,
    received_header_yaml, replies, smuggling_attempts, spawn_logged, stuffed, MESSAGE, NORMALIZED,
    REFUSED, SMUGGLES,
};
use common::next_hop::NextHopPki;
use common::pki::{Leaf, Pki, Spec};
use common::process::{exactly, free_port, wait_accepting, Guard, TempDir};
use support::{assert_series, legacy, m, our_leaf, quit, send, start_with, Conf};

/// Exim as a foreground daemon on 127.0.0.1 as legacy.test, with `leaf` for its TLS: STARTTLS
/// on `port`, implicit TLS on `implicit_port`, every message delivered at once to a Maildir (as
/// Debian-exim, one file per message, nothing added but its Received header). Its log is
/// printed when a test fails.
struct Exim {
    port: u16,
    implicit_port: u16,
    dir: TempDir,
    _child: Guard,
}

impl Exim {
    fn start(leaf: &Leaf) -> Exim {
        Exim::start_with(leaf, "")
    }

    /// With `main` added to the main section of its configuration.
    fn start_with(leaf: &Leaf, main: &str) -> Exim {
        let exim = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-tools/exim4");
        let exim = exim.join("usr/sbin/exim4");
        // Debian's build looks its user up before reading any configuration.
        let user = Command::new("getent")
            .args(["passwd", "Debian-exim"])
            .output();
        assert!(
            exim.is_file() && user.unwrap().status.success(),
            "{} or the Debian-exim user missing: run scripts/test.sh (it unpacks Debian's \
             exim4-daemon-light there and creates the user)",
            exim.display()
        );
        let dir = TempDir::new("exim");
        let (spool, out) = (dir.open_subdir("spool"), dir.open_subdir("out"));
        let conf_path = dir.0.join("exim.conf");
        let log = dir.0.join("exim.log");
        for _attempt in 0..3 {
            let (port, implicit_port) = (free_port(), free_port());
            let conf = format!(
                "primary_hostname = legacy.test\nqualify_domain = legacy.test\n\
                 exim_path = {exim}\nspool_directory = {spool}\nlog_file_path = {spool}/%slog\n\
                 keep_environment =\nhost_lookup =\nrfc1413_hosts =\n\
                 local_interfaces = 127.0.0.1\n\
                 daemon_smtp_ports = {port} : {implicit_port}\n\
                 tls_on_connect_ports = {implicit_port}\n\
                 tls_advertise_hosts = *\ntls_certificate = {cert}\ntls_privatekey = {key}\n\
                 prdr_enable = true\nacl_smtp_rcpt = rcpt\n{main}\
                 begin acl\nrcpt:\n  accept hosts = 127.0.0.1\n  deny\n\
                 begin routers\nall:\n  driver = accept\n  transport = maildir\n\
                 begin transports\nmaildir:\n  driver = appendfile\n  \
                 directory = {out}/maildir\n  maildir_format\n  user = Debian-exim\n",
                exim = exim.display(),
                spool = spool.display(),
                out = out.display(),
                cert = leaf.cert.display(),
                key = leaf.key.display(),
            );
            std::fs::write(&conf_path, conf).unwrap();
            // -bdf: daemon in the foreground; -odi: deliver at once, no queue runner.
            let mut cmd = Command::new(&exim);
            cmd.arg("-C").arg(&conf_path).args(["-bdf", "-odi"]);
            let mut child = Guard(spawn_logged(&mut cmd, &log));
            // The daemon binds both ports before it accepts on either; a probe of the implicit
            // one would leave an aborted handshake in its log.
            if wait_accepting(&mut child.0, port) {
                return Exim {
                    port,
                    implicit_port,
                    dir,
                    _child: child,
                };
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("exim exited (port {port} or {implicit_port} taken?):\n{log}");
        }
        panic!("exim did not start");
    }

    /// Its STARTTLS port.
    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The messages delivered so far, by file name.
    fn delivered(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(self.dir.0.join("out/maildir/new")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// The messages delivered once there are `n` (10 s at most), and no more.
    fn delivered_when(&self, n: usize) -> Vec<Vec<u8>> {
        exactly(n, "messages delivered", Duration::from_secs(10), || {
            self.delivered()
        })
    }

    fn mainlog(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("spool/mainlog")).unwrap_or_default()
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let read = |p: &str| std::fs::read_to_string(self.dir.0.join(p)).unwrap_or_default();
            let (exim, main) = (read("exim.log"), read("spool/mainlog"));
            eprintln!("--- exim ---\n{exim}--- exim mainlog ---\n{main}");
        }
    }
}

/// Exim's EHLO reply (but for its first line), and what the client is shown of it through the
/// sidecar, before STARTTLS and after it: no PIPECONNECT, CHUNKING, PRDR or Exim's STARTTLS,
/// SIZE capped at the sidecar's.
const EHLO: &str = "250-SIZE 52428800\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n\
                    250-CHUNKING\r\n250-STARTTLS\r\n250-PRDR\r\n250-SMTPUTF8\r\n250 HELP\r\n";
const SHOWN: [&str; 2] = [
    "250-mx.test\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n\
     250-HELP\r\n250 STARTTLS\r\n",
    "250-mx.test\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n\
     250 HELP\r\n",
];

/// Replies to a transaction Exim accepts, its message id masked.
const ACCEPTED: [&str; 4] = [
    "250 OK\r\n",
    "250 Accepted\r\n",
    "354 Enter message, ending with \".\" on a line by itself\r\n",
    "250 OK id=<id>\r\n",
];

/// Exim's Received header on a message from the shared client over a plaintext hop, and over
/// TLS 1.3 (the cipher, GnuTLS's, in the name of the IANA suite), as
/// [`common::legacy_backend::matches`] patterns.
const EXIM_RECEIVED: &str = "Received: from [127.0.0.1] (helo=client.test)\n\
    \tby legacy.test with esmtp (Exim 4.*)\n\
    \t(envelope-from <a@x.test>)\n\tid *\n\tfor b@y.test;\n\t* +0000";
const EXIM_RECEIVED_TLS: &str = "Received: from [127.0.0.1] (helo=client.test)\n\
    \tby legacy.test with esmtps  (TLS1.3) tls TLS_*\n\t(Exim 4.*)\n\
    \t(envelope-from <a@x.test>)\n\tid *\n\tfor b@y.test;\n\t* +0000";

/// A STARTTLS session through `sidecar` to Exim, shown [`SHOWN`]: the replies, Exim's message
/// ids masked.
async fn session(sidecar: &Binary, data: &[Vec<u8>], what: &str) -> Vec<String> {
    let addr = sidecar.addr("inbound").unwrap();
    let replies = checked_session(addr, SHOWN, data, what).await;
    ids_masked(&replies, "250 OK id=", "\r\n")
}

/// Exim (with a certificate for legacy.test and 127.0.0.1 from a test CA) and the sidecar in
/// front of it on a plaintext hop, with these policy lines and the sidecar's Received header
/// when `received`.
fn setup(policy: &str, received: bool) -> (Exim, Binary, Pki) {
    let pki = Pki::new("exim-pki");
    let exim = Exim::start(&pki.leaf("legacy", Spec::ca(&["legacy.test", "127.0.0.1"])));
    let yaml = match received {
        true => received_header_yaml(exim.addr(), "starttls", policy),
        false => config_yaml(exim.addr(), "starttls", policy),
    };
    (exim, start_binary(&yaml), pki)
}

/// The lines of Exim's log that record a message received (`<=`).
fn received_lines(exim: &Exim) -> Vec<String> {
    let log = exim.mainlog();
    log.lines()
        .filter(|l| l.contains(" <= "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn exim_backend_starttls_delivery() {
    let (exim, sidecar, _pki) = setup("", true);
    // Exim offers STARTTLS, PIPECONNECT, CHUNKING and PRDR itself: what the client must never
    // be shown.
    let direct = format!("250-legacy.test Hello client.test [127.0.0.1]\r\n{EHLO}");
    assert_eq!(ehlo(exim.addr()).await, direct);

    let replies_seen = session(&sidecar, &[stuffed(MESSAGE)], "delivery").await;
    assert_eq!(replies_seen, replies(ACCEPTED, &[ACCEPTED[3]]));
    // Both Received headers, the hop plaintext (no `X=`, TLS, in the log line either).
    assert_received(
        &exim.delivered_when(1)[0],
        &lf(MESSAGE),
        EXIM_RECEIVED,
        true,
    );
    let received = received_lines(&exim);
    assert!(
        received.len() == 1 && received[0].contains(" P=esmtp S="),
        "{received:?}"
    );
}

#[tokio::test]
async fn exim_backend_smuggling_refused() {
    let (exim, sidecar, _pki) = setup("      bare_newlines: reject\n", false);
    let mut data = smuggling_attempts();
    data.push(stuffed(MESSAGE));
    let ends = [REFUSED, REFUSED, REFUSED, ACCEPTED[3]];
    assert_eq!(
        session(&sidecar, &data, "reject").await,
        replies(ACCEPTED, &ends)
    );
    // Only the clean message: nothing of the refused ones, smuggled or not.
    assert_received(
        &exim.delivered_when(1)[0],
        &lf(MESSAGE),
        EXIM_RECEIVED,
        false,
    );
    let received = received_lines(&exim);
    let clean = " <= a@x.test H=(client.test) [127.0.0.1] P=esmtp ";
    let only = received.len() == 1 && received[0].contains(clean);
    assert!(
        only && received[0].ends_with(" id=legacy-backend@x.test"),
        "{received:?}"
    );
}

#[tokio::test]
async fn exim_backend_smuggling_normalized_into_body() {
    let (exim, sidecar, _pki) = setup("      bare_newlines: normalize\n", false);
    let ends = [ACCEPTED[3]; SMUGGLES.len()];
    let replies_seen = session(&sidecar, &smuggling_attempts(), "normalize").await;
    assert_eq!(replies_seen, replies(ACCEPTED, &ends));
    for stored in exim.delivered_when(SMUGGLES.len()) {
        assert_received(&stored, &lf(NORMALIZED), EXIM_RECEIVED, false);
    }
}

/// The sidecar's encrypted hop to Exim (GnuTLS), STARTTLS and implicit TLS
/// (`tls_on_connect_ports`), verified against the test CA and the server's IP address: the
/// message arrives byte for byte, and Exim records the hop as TLS 1.3 (`with esmtps (TLS1.3)`
/// in its Received header, `P=esmtps X=TLS1.3:` in its log).
#[tokio::test]
async fn sidecar_encrypted_hop_to_exim() {
    let pki = Pki::new("exim-hop-pki");
    let ca = ca_file(&pki);
    let exim = Exim::start(&pki.leaf("legacy", Spec::ca(&["legacy.test", "127.0.0.1"])));
    for (n, hop, sidecar) in encrypted_hops(exim.port, exim.implicit_port, &ca) {
        let replies_seen = session(&sidecar, &[stuffed(MESSAGE)], hop).await;
        assert_eq!(replies_seen, replies(ACCEPTED, &[ACCEPTED[3]]), "{hop}");
        let stored = &exim.delivered_when(n + 1)[n];
        assert_received(stored, &lf(MESSAGE), EXIM_RECEIVED_TLS, false);
        let received = received_lines(&exim);
        assert_eq!(received.len(), n + 1, "{hop}: {received:?}");
        assert!(
            received[n].contains(" P=esmtps X=TLS1.3:"),
            "{hop}: {received:?}"
        );
    }
}

/// Exim as the next hop of an originate listener, with a certificate from the next hops' test
/// root for legacy.test and 127.0.0.1, requiring a client certificate from that root of
/// every connection (`tls_verify_hosts`) and logging what it verified.
fn exim_requiring_client_certificates(pki: &NextHopPki) -> Exim {
    let leaf = pki
        .root
        .leaf("exim-hop", Spec::ca(&["legacy.test", "127.0.0.1"]));
    let main = format!(
        "tls_verify_certificates = {}\ntls_verify_hosts = 127.0.0.1\n\
         log_selector = +tls_certificate_verified +tls_peerdn\n",
        pki.root_file.display()
    );
    Exim::start_with(&leaf, &main)
}

/// The originate policy lines: y.test at `level`, the rest `may`.
fn y_test_at(level: &str) -> String {
    format!("      default: may\n      domains:\n        y.test: {level}\n")
}

/// Outbound Domain Security with a real MTA: the sidecar relays to Exim (GnuTLS), which
/// requires a client certificate. At `domain-secure` the sidecar presents ours, verifies
/// Exim's against the root and 127.0.0.1, and the message arrives byte for byte (unstuffed
/// once); Exim logs the session as TLS 1.3 with our certificate verified (`CV=yes`, its DN),
/// and the sidecar counts one domain-secure message sent to y.test.
#[tokio::test]
async fn sidecar_delivers_domain_secure_to_exim() {
    let pki = NextHopPki::new();
    let exim = exim_requiring_client_certificates(&pki);
    let conf = Conf::new(&pki, exim.addr().to_string(), &y_test_at("domain-secure"));
    let sidecar = start_with(&conf, &our_leaf(&pki)).await;
    let mut client = legacy(&sidecar).await;
    // Exim's replies, passed through.
    assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, ACCEPTED[1]);
    assert_eq!(client.cmd("DATA").await, ACCEPTED[2]);
    client.send(support::BODY).await;
    let eod = client.reply().await;
    assert!(eod.starts_with("250 OK id="), "{eod}");
    quit(client).await;
    let theirs = EXIM_RECEIVED_TLS.replace("helo=client.test", "helo=mx.test");
    let stored = &exim.delivered_when(1)[0];
    assert_received(stored, b"Subject: t\n\n.dot\nbody\n", &theirs, false);
    let received = received_lines(&exim);
    assert_eq!(received.len(), 1, "{received:?}");
    for field in [" P=esmtps X=TLS1.3:", " CV=yes ", " DN=\"CN=mx.test\" "] {
        assert!(received[0].contains(field), "{field}: {received:?}");
    }
    let counted = [
        m::messages("accepted", true, 1),
        m::handshake_ok(1),
        m::ds_sent("y.test", 1),
    ];
    assert_series(&sidecar, &counted, "a domain-secure delivery").await;
}

/// At `verify` the sidecar presents no client certificate; Exim, requiring one, ends the
/// session with TLS 1.3's `certificate_required` alert after the client's handshake is done.
/// The sidecar takes that as the TLS policy unmet (not a lost connection): the RCPT is
/// deferred with `450 4.7.5`, nothing is delivered, and nothing is counted as domain-secure.
#[tokio::test]
async fn exim_refusing_a_session_without_client_certificate_defers_the_rcpt() {
    let pki = NextHopPki::new();
    let exim = exim_requiring_client_certificates(&pki);
    let conf = Conf::new(&pki, exim.addr().to_string(), &y_test_at("verify"));
    let sidecar = start_with(&conf, &our_leaf(&pki)).await;
    let mut client = legacy(&sidecar).await;
    let (rcpt, eod) = send(&mut client, "b@y.test").await;
    assert_eq!(
        rcpt,
        "450 4.7.5 TLS policy verify for y.test not met: TLS handshake with 127.0.0.1 \
         failed: alert certificate_required\r\n"
    );
    assert_eq!(eod, None);
    quit(client).await;
    assert!(exim.delivered().is_empty());
    // Our side of a TLS 1.3 handshake was done when Exim refused it: counted as one, then
    // as the policy's failure.
    let counted = [
        m::handshake_ok(1),
        m::rejection("handshake_failed", true, 1),
        m::next_hop_failures("policy", 1),
    ];
    assert_series(&sidecar, &counted, "a session Exim refused").await;
}
