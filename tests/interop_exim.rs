//! Interoperability with Exim 4: as the legacy backend (below), and as a next hop, a Domain
//! Security partner and a legacy MTA relaying out (the last items). As the backend: the
//! real `smtp-sidecar` binary in front of a real Exim daemon (Debian's exim4-daemon-light,
//! built with GnuTLS, unpacked under target/interop-tools/exim4 by scripts/test.sh) that
//! offers STARTTLS and implicit TLS with a certificate from a test CA and delivers every
//! message to a Maildir, one file per message.
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
//!   alert) and the RCPT deferred as the policy's failure;
//! - inbound Domain Security with Exim as the partner (sending with its `smtp` transport,
//!   `hosts_require_tls`, the partner's certificate): the message reaches the backend byte for
//!   byte under the sidecar's Received header naming the verified certificate, counted as
//!   domain-secure for woodgrovebank.com; without the certificate Exim is deferred at MAIL
//!   FROM with `450 4.7.1` and nothing reaches the backend;
//! - the outbound path with Exim at both ends: a legacy Exim relays through the originate
//!   listener to an Exim next hop at `domain-secure`, the message stored byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;
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
use common::process::{exactly, free_port, wait_listening, Guard, TempDir};
use partner_pki::{
    partner_sidecar, refused_once_for_want_of_a_certificate, PartnerPki, RECEIVED_FROM_PARTNER_1,
};
use support::{
    counted_one_domain_secure, deferred_for_want_of_a_client_certificate, legacy, quit, relaying_to,
};

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
                 prdr_enable = true\nacl_smtp_rcpt = rcpt\ndaemon_startup_retries = 0\n{main}\
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
            // Listening itself (a port taken from `free_port` may have gone to another
            // listener of this test binary meanwhile; then, with no startup retries, it
            // exits), on both ports; no probe, which would leave a session in its log.
            let listening = |child: &mut Guard| {
                wait_listening(&mut child.0, port) && wait_listening(&mut child.0, implicit_port)
            };
            if listening(&mut child) {
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
        mainlog(&self.dir)
    }
}

/// The mainlog of an Exim whose spool is `dir`/spool: `dir`/spool/mainlog.
fn mainlog(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("spool/mainlog")).unwrap_or_default()
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

/// Outbound Domain Security with a real MTA: the sidecar relays to Exim (GnuTLS), which
/// requires a client certificate. At `domain-secure` the sidecar presents ours, verifies
/// Exim's against the root and 127.0.0.1, and the message arrives byte for byte (unstuffed
/// once); Exim logs the session as TLS 1.3 with our certificate verified (`CV=yes`, its DN),
/// and the sidecar counts one domain-secure message sent to y.test.
#[tokio::test]
async fn sidecar_delivers_domain_secure_to_exim() {
    let pki = NextHopPki::new();
    let exim = exim_requiring_client_certificates(&pki);
    let sidecar = relaying_to(&pki, exim.addr(), "domain-secure").await;
    let mut client = legacy(&sidecar).await;
    // Exim's replies, passed through.
    assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, ACCEPTED[1]);
    assert_eq!(client.cmd("DATA").await, ACCEPTED[2]);
    client.send(support::BODY).await;
    let eod = ids_masked(&[client.reply().await], "250 OK id=", "\r\n");
    assert_eq!(eod, [ACCEPTED[3]]);
    quit(client).await;
    let theirs = EXIM_RECEIVED_TLS.replace("helo=client.test", "helo=mx.test");
    let stored = &exim.delivered_when(1)[0];
    assert_received(stored, b"Subject: t\n\n.dot\nbody\n", &theirs, false);
    let received = received_lines(&exim);
    assert_eq!(received.len(), 1, "{received:?}");
    for field in [" P=esmtps X=TLS1.3:", " CV=yes ", " DN=\"CN=mx.test\" "] {
        assert!(received[0].contains(field), "{field}: {received:?}");
    }
    counted_one_domain_secure(&sidecar, "a domain-secure delivery").await;
}

/// At `verify` the sidecar presents no client certificate; Exim, requiring one, ends the
/// session with TLS 1.3's `certificate_required` alert after the client's handshake is done.
/// The sidecar takes that as the TLS policy unmet (not a lost connection): the RCPT is
/// deferred with `450 4.7.5`, and nothing is counted as domain-secure; Exim logs why.
#[tokio::test]
async fn exim_refusing_a_session_without_client_certificate_defers_the_rcpt() {
    let pki = NextHopPki::new();
    let exim = exim_requiring_client_certificates(&pki);
    let sidecar = relaying_to(&pki, exim.addr(), "verify").await;
    deferred_for_want_of_a_client_certificate(&sidecar).await;
    // The refusal was Exim's, for want of a certificate.
    let refused = "TLS error on connection from (mx.test) [127.0.0.1] (gnutls_handshake): \
                   Certificate is required.";
    common::eventually(|| exim.mainlog().contains(refused), refused).await;
}

/// Exim as a sending MTA of its own (as `name`, no daemon): every message it is given goes to
/// 127.0.0.1:`port` with its `smtp` transport, with `transport` (TLS options) added. Its log
/// is printed when a test fails.
struct EximSender {
    exim: PathBuf,
    conf: PathBuf,
    dir: TempDir,
}

impl EximSender {
    fn new(name: &str, port: u16, transport: &str) -> EximSender {
        let exim = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-tools/exim4");
        let exim = exim.join("usr/sbin/exim4");
        assert!(
            exim.is_file(),
            "{} missing: run scripts/test.sh",
            exim.display()
        );
        let dir = TempDir::new("exim-sender");
        let spool = dir.open_subdir("spool");
        let conf = dir.0.join("exim.conf");
        let text = format!(
            "primary_hostname = {name}\n\
             exim_path = {exim}\nspool_directory = {spool}\nlog_file_path = {spool}/%slog\n\
             keep_environment =\nhost_lookup =\nrfc1413_hosts =\n\
             begin routers\nsidecar:\n  driver = manualroute\n  route_list = * 127.0.0.1\n  \
             self = send\n  transport = sidecar\n\
             begin transports\nsidecar:\n  driver = smtp\n  port = {port}\n  allow_localhost\n  \
             hosts_try_dane =\n{transport}\
             begin retry\n* * F,1h,10m\n",
            exim = exim.display(),
            spool = spool.display(),
        );
        std::fs::write(&conf, text).unwrap();
        EximSender { exim, conf, dir }
    }

    /// Give Exim `message` from `from` to `to` (as `sendmail` would be given it) and let it
    /// deliver at once (`-odi`): its mainlog once it is done.
    fn send(&self, from: &str, to: &str, message: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new(&self.exim)
            .arg("-C")
            .arg(&self.conf)
            // -oi: a line of a single dot is text, not the end of the message.
            .args(["-odi", "-oi", "-f", from, to])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "exim: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.mainlog()
        );
        self.mainlog()
    }

    /// [`EximSender::send`] off the runtime's threads, which the sidecar in process needs;
    /// the sender back.
    async fn deliver(
        self,
        from: &'static str,
        to: &'static str,
        message: Vec<u8>,
    ) -> (String, EximSender) {
        let sent = tokio::task::spawn_blocking(move || (self.send(from, to, &message), self));
        sent.await.unwrap()
    }

    /// How many messages are in its queue (`exim -bpc`).
    fn queued(&self) -> usize {
        let out = Command::new(&self.exim)
            .arg("-C")
            .arg(&self.conf)
            .arg("-bpc")
            .output()
            .unwrap();
        let count = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        count
            .parse()
            .unwrap_or_else(|_| panic!("exim -bpc: {count:?}"))
    }

    fn mainlog(&self) -> String {
        mainlog(&self.dir)
    }
}

impl Drop for EximSender {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- exim (sender) mainlog ---\n{}", self.mainlog());
        }
    }
}

/// The partner's transport options: TLS required, the sidecar's certificate verified against
/// the CA file `ca` and 127.0.0.1, `tls` the client certificate lines.
fn partner_transport(ca: &Path, tls: &str) -> String {
    format!(
        "  hosts_require_tls = *\n  tls_verify_hosts = *\n  tls_verify_certificates = {}\n{tls}",
        ca.display()
    )
}

/// A message as its author wrote it (a Date, so that Exim adds no header field but its
/// Received one), with a leading dot and a line of a single dot.
const PARTNER_MESSAGE: &str = "From: someone@woodgrovebank.com\nTo: bob@example.test\n\
    Subject: Exim partner\nDate: Fri, 04 Dec 2026 12:00:00 +0000\n\
    Message-ID: <exim-partner-1@woodgrovebank.com>\n\n\
    first line\n.leading dot\n.\nlast line\n";

/// Inbound Domain Security with Exim (GnuTLS) as the partner: it presents the partner's
/// certificate (leaf and intermediate) when the sidecar asks, which verifies it against the
/// root and woodgrovebank.com; the message reaches the backend byte for byte (dot-stuffed
/// once on the wire) under the sidecar's Received header naming the certificate, and is
/// counted as domain-secure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_partner_with_its_certificate_is_domain_secure() {
    let pki = PartnerPki::new();
    let (sidecar, backend, ca, _ours) = partner_sidecar(&pki).await;
    let port = sidecar.addr("inbound").unwrap().port();
    let tls = format!(
        "  tls_certificate = {}\n  tls_privatekey = {}\n",
        pki.partner.cert_file.display(),
        pki.partner.key_file.display()
    );
    let sender = EximSender::new(
        "mail.woodgrovebank.com",
        port,
        &partner_transport(&ca, &tls),
    );
    let message = PARTNER_MESSAGE.as_bytes().to_vec();
    let (log, _sender) = sender
        .deliver("someone@woodgrovebank.com", "bob@example.test", message)
        .await;
    let delivered = log.lines().find(|l| l.contains(" => bob@example.test "));
    let delivered = delivered.unwrap_or_else(|| panic!("not delivered:\n{log}"));
    // TLS 1.3, our certificate verified by Exim (CV=yes), the backend's reply passed back.
    assert!(delivered.contains(" X=TLS1.3:"), "{delivered}");
    assert!(delivered.contains(" CV=yes "), "{delivered}");
    assert!(delivered.contains(" C=\"250 "), "{delivered}");
    let messages = backend.messages();
    assert_eq!(messages.len(), 1);
    let data = String::from_utf8(messages[0].clone()).unwrap();
    // The sidecar's Received header first, naming the verified certificate, then Exim's own
    // (Exim's envelope says `root`, the user that gave it the message: the tests run as root),
    // then the message as written, dot-stuffed once, and the end of data.
    let ours = format!(
        "{}Received: from root by mail.woodgrovebank.com with local (Exim 4.*)\r\n\
         \t(envelope-from <someone@woodgrovebank.com>)\r\n\tid *\r\n\
         \tfor bob@example.test;\r\n\t* +0000\r\n",
        pki.sidecar_received()
    );
    let (head, rest) = data.split_at(data.find("From: ").unwrap());
    assert!(
        common::legacy_backend::matches(&ours, head),
        "got:\n{head}\nwant:\n{ours}"
    );
    let written = PARTNER_MESSAGE
        .replace('\n', "\r\n")
        .replace("\r\n.", "\r\n..");
    assert_eq!(rest, format!("{written}.\r\n"));
    let metrics = sidecar.metrics.render();
    assert!(
        metrics.lines().any(|l| l == RECEIVED_FROM_PARTNER_1),
        "{metrics}"
    );
}

/// Without a certificate Exim is deferred at MAIL FROM (`450 4.7.1`, naming the domain and
/// what was missing) and keeps the message in its queue; nothing reaches the backend, and
/// the refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_partner_without_a_certificate_is_deferred() {
    let pki = PartnerPki::new();
    let (sidecar, backend, ca, _ours) = partner_sidecar(&pki).await;
    let port = sidecar.addr("inbound").unwrap().port();
    let sender = EximSender::new("mail.woodgrovebank.com", port, &partner_transport(&ca, ""));
    let message = PARTNER_MESSAGE.as_bytes().to_vec();
    let (log, sender) = sender
        .deliver("someone@woodgrovebank.com", "bob@example.test", message)
        .await;
    let deferred = log.lines().find(|l| l.contains(" == bob@example.test "));
    let deferred = deferred.unwrap_or_else(|| panic!("not deferred:\n{log}"));
    let reply = "MAIL FROM:<someone@woodgrovebank.com> SIZE=*: 450 4.7.1 Domain Security: \
                 mail from woodgrovebank.com requires mutual TLS; no client certificate";
    let (_, tail) = deferred.split_once("after pipelined ").unwrap();
    assert!(common::legacy_backend::matches(reply, tail), "{deferred}");
    assert!(!log.contains(" => "), "{log}");
    assert_eq!(sender.queued(), 1, "{log}");
    refused_once_for_want_of_a_certificate(&sidecar, &backend);
}

/// The whole outbound path with Exim at both ends: a legacy Exim relays through the
/// sidecar's originate listener (its smart host, plaintext on loopback), which delivers to an
/// Exim next hop at `domain-secure` (mutual TLS). The body arrives byte for byte (a lone dot,
/// leading dots, a line of 990 octets, UTF-8 octets; the Maildir keeps LF line ends), the
/// legacy Exim is given the next hop's own reply, the next hop logs our certificate
/// verified, and the sidecar counts one domain-secure message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_relays_through_the_sidecar_to_exim_domain_secure() {
    let pki = NextHopPki::new();
    let hop = exim_requiring_client_certificates(&pki);
    let sidecar = relaying_to(&pki, hop.addr(), "domain-secure").await;
    let port = sidecar.addr("outbound").unwrap().port();
    let legacy = EximSender::new("legacy.test", port, "");
    let body = format!(
        "first line\n.\n.leading dot\n..two dots\n{}\nGrüße\nlast line\n",
        "x".repeat(990)
    );
    let message = format!(
        "From: a@x.test\nTo: b@y.test\nSubject: through the sidecar\n\
         Message-ID: <exim-chain-1@x.test>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{body}"
    );
    let (log, _legacy) = legacy
        .deliver("a@x.test", "b@y.test", message.into_bytes())
        .await;
    let delivered = log.lines().find(|l| l.contains(" => b@y.test "));
    let delivered = delivered.unwrap_or_else(|| panic!("not delivered:\n{log}"));
    // The next hop's own end-of-data reply, passed back through the sidecar.
    assert!(delivered.contains(" C=\"250 OK id="), "{delivered}");
    let stored = String::from_utf8(hop.delivered_when(1)[0].clone()).unwrap();
    let (_, stored_body) = stored.split_once("\n\n").unwrap();
    assert_eq!(stored_body, body, "{stored}");
    assert!(
        stored.contains("\nSubject: through the sidecar\n"),
        "{stored}"
    );
    let received = received_lines(&hop);
    assert_eq!(received.len(), 1, "{received:?}");
    for field in [
        " <= a@x.test H=(mx.test) [127.0.0.1] P=esmtps X=TLS1.3:",
        " CV=yes ",
        " DN=\"CN=mx.test\" ",
        " id=exim-chain-1@x.test",
    ] {
        assert!(received[0].contains(field), "{field}: {received:?}");
    }
    counted_one_domain_secure(&sidecar, "Exim through the sidecar to Exim").await;
}
